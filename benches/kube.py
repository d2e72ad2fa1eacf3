#!/usr/bin/env python3
"""Tiny Kubernetes client for benches/controller.sh: plain HTTPS with the kubeconfig's client
certificate (no kubectl here). Standard library + PyYAML only.

usage: kube.py KUBECONFIG COMMAND ARGS...
  apply-crds FILE...              create (or keep) CRDs and wait until they are Established
  namespace NS                    create a namespace (ok if it exists)
  create-sources NS N REGISTRY INTERVAL [THREADS]
                                  create N inline PackageSources bench-0000.. with a thread pool
  ready NS                        print "<ready> <total>" (Ready=True for the current generation)
  release NS                      drop the finalizers of every PackageSource, then delete NS
"""
import atexit
import base64
import http.client
import json
import os
import shutil
import ssl
import sys
import tempfile
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

import yaml

GROUP, VERSION, PLURAL = "packsmith.dev", "v1alpha1", "packagesources"


class Kube:
    def __init__(self, kubeconfig):
        cfg = yaml.safe_load(open(kubeconfig))
        ctx_name = cfg.get("current-context")
        ctx = next((c["context"] for c in cfg["contexts"] if c["name"] == ctx_name), cfg["contexts"][0]["context"])
        cluster = next(c["cluster"] for c in cfg["clusters"] if c["name"] == ctx["cluster"])
        user = next(u["user"] for u in cfg["users"] if u["name"] == ctx["user"])
        base = os.path.dirname(os.path.abspath(kubeconfig))
        # The admin key is written here only for the ssl module to read: removed at exit.
        self._tmp = tempfile.mkdtemp(prefix="packsmith-bench-kube-")
        atexit.register(shutil.rmtree, self._tmp, True)

        def material(data_key, file_key, src):
            if src.get(data_key):
                path = os.path.join(self._tmp, data_key)
                with open(path, "wb") as f:
                    f.write(base64.b64decode(src[data_key]))
                return path
            if src.get(file_key):
                return os.path.join(base, src[file_key])
            return None

        self.ctx = ssl.create_default_context(cafile=material("certificate-authority-data", "certificate-authority", cluster))
        cert = material("client-certificate-data", "client-certificate", user)
        key = material("client-key-data", "client-key", user)
        if cert:
            self.ctx.load_cert_chain(cert, key)
        self.token = user.get("token")
        u = urllib.parse.urlparse(cluster["server"])
        self.host, self.port = u.hostname, u.port or 443

    def request(self, method, path, body=None, content_type="application/json"):
        conn = http.client.HTTPSConnection(self.host, self.port, context=self.ctx, timeout=60)
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = "Bearer " + self.token
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = content_type
        try:
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
        finally:
            conn.close()
        return resp.status, (json.loads(raw) if raw else None)


def must(status, body, ok=(200, 201)):
    if status not in ok:
        raise SystemExit(f"kube.py: HTTP {status}: {json.dumps(body)[:500]}")
    return body


def apply_crds(k, files):
    names = []
    for f in files:
        for doc in yaml.safe_load_all(open(f)):
            if not doc or doc.get("kind") != "CustomResourceDefinition":
                continue
            s, b = k.request("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", doc)
            must(s, b, (200, 201, 409))
            names.append(doc["metadata"]["name"])
    deadline = time.time() + 60
    for n in names:
        while True:
            s, b = k.request("GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{n}")
            conds = (b or {}).get("status", {}).get("conditions", [])
            if any(c["type"] == "Established" and c["status"] == "True" for c in conds):
                break
            if time.time() > deadline:
                raise SystemExit(f"kube.py: CRD {n} not Established after 60 s")
            time.sleep(0.2)
    # The apiserver serves a new group a moment after Established; wait for discovery.
    for group_version in sorted({f"/apis/{GROUP}/{VERSION}", "/apis/packaging.carvel.dev/v1alpha1",
                                 "/apis/data.packaging.carvel.dev/v1alpha1"}):
        while k.request("GET", group_version)[0] != 200:
            if time.time() > deadline:
                raise SystemExit(f"kube.py: {group_version} not served after 60 s")
            time.sleep(0.2)
    print(f"{len(names)} CRDs established")


def namespace(k, ns):
    s, b = k.request("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    must(s, b, (200, 201, 409))


def source(name, ns, registry, interval, shard=None):
    metadata = {"name": name, "namespace": ns}
    if shard is not None:
        metadata["labels"] = {"sharding.packsmith.dev/key": shard}
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "PackageSource",
        "metadata": metadata,
        "spec": {
            "package": {"refName": f"{name}.bench.example.com", "version": "0.1.0"},
            "contents": [{
                "path": "config/app",
                "contents": [{"path": ".", "inline": {"paths": {
                    "app.yaml": f"apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}}}\ndata: {{k: v}}\n"}}}],
            }],
            "images": {"lock": False},
            "bundle": {"repository": f"{registry}/bench/{ns}/{name}", "insecure": True},
            "interval": interval,
        },
    }


def create_sources(k, ns, n, registry, interval, threads, shards=0):
    path = f"/apis/{GROUP}/{VERSION}/namespaces/{ns}/{PLURAL}"

    def one(i):
        shard = f"shard{i % shards + 1}" if shards else None
        s, b = k.request("POST", path, source(f"bench-{i:05d}", ns, registry, interval, shard))
        must(s, b, (201, 409))

    t0 = time.time()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, range(n)))
    print(f"created {n} PackageSources in {time.time() - t0:.1f}s")


def is_ready(obj):
    st = obj.get("status") or {}
    for c in st.get("conditions") or []:
        if c.get("type") == "Ready":
            og = c.get("observedGeneration", st.get("observedGeneration"))
            return c.get("status") == "True" and (og is None or og == obj["metadata"].get("generation"))
    return False


def list_sources(k, ns):
    items, cont = [], ""
    while True:
        q = "?limit=500" + (f"&continue={urllib.parse.quote(cont)}" if cont else "")
        b = must(*k.request("GET", f"/apis/{GROUP}/{VERSION}/namespaces/{ns}/{PLURAL}{q}"))
        items += b.get("items", [])
        cont = b.get("metadata", {}).get("continue")
        if not cont:
            return items


def ready(k, ns):
    items = list_sources(k, ns)
    print(sum(is_ready(o) for o in items), len(items))


def release(k, ns):
    items = list_sources(k, ns)
    path = f"/apis/{GROUP}/{VERSION}/namespaces/{ns}/{PLURAL}/"

    def one(o):
        if o["metadata"].get("finalizers"):
            k.request("PATCH", path + o["metadata"]["name"], {"metadata": {"finalizers": None}},
                      "application/merge-patch+json")

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(one, items))
    k.request("DELETE", f"/api/v1/namespaces/{ns}")


def main():
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    k = Kube(sys.argv[1])
    cmd, args = sys.argv[2], sys.argv[3:]
    if cmd == "apply-crds":
        apply_crds(k, args)
    elif cmd == "namespace":
        namespace(k, args[0])
    elif cmd == "create-sources":
        create_sources(k, args[0], int(args[1]), args[2], args[3],
                       int(args[4]) if len(args) > 4 else 16, int(args[5]) if len(args) > 5 else 0)
    elif cmd == "ready":
        ready(k, args[0])
    elif cmd == "release":
        release(k, args[0])
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
