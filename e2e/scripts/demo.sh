#!/usr/bin/env bash
# `make demo` / `make demo-down`: packsmith end to end on this machine, nothing from the internet.
#
#   demo.sh up STATE_DIR     installs what is missing (install-deps.sh), builds packsmith, starts
#                            the test bed (up.sh: kube-apiserver + etcd, registries, git server),
#                            installs the CRDs, starts `packsmith controller`, pushes the demo
#                            image, commits examples/demo/upstream to the git server as v1.0.0,
#                            applies examples/demo/packagesource.yaml, waits for Ready and shows
#                            `kubectl get pkgsrc`, the Package, and the pulled bundle's files.
#   demo.sh down STATE_DIR   stops the controller and the bed and removes STATE_DIR.
#
# Everything listens on 127.0.0.1 only; the bed keeps running after `up` so you can explore it
# (the export lines to do so are printed at the end).
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ROOT=$(cd "$E2E_SCRIPTS/../.." && pwd)
CARGO=${CARGO:-cargo}

action=${1:-}
STATE=$(state_dir_arg "${2:-}")
NS=packsmith-demo

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

if [[ $action == down ]]; then
  exec bash "$E2E_SCRIPTS/down.sh" "$STATE"
fi
[[ $action == up ]] || die "usage: demo.sh up|down STATE_DIR"

t0=$(date +%s)
if compgen -G "$STATE/pids/*.pid" >/dev/null; then
  say "a demo is already running in $STATE: stopping it first"
  bash "$E2E_SCRIPTS/down.sh" "$STATE"
fi

say "dependencies (apt packages, kube-apiserver + etcd, helm, kubectl; cached after the first run)"
bash "$E2E_SCRIPTS/install-deps.sh"
tools=$(bash "$E2E_SCRIPTS/install-tools.sh" --no-build)
KUBECTL=$(sed -n 's/^kubectl=//p' <<<"$tools")

say "building packsmith"
(cd "$ROOT" && $CARGO build --bin packsmith)
PACKSMITH=$ROOT/target/debug/packsmith

say "starting the test bed in $STATE"
bash "$E2E_SCRIPTS/up.sh" "$STATE"
set -a
# shellcheck disable=SC1091
source "$STATE/env"
set +a
export KUBECONFIG=$PACKSMITH_E2E_KUBECONFIG
REG=$PACKSMITH_E2E_REGISTRY
k() { "$KUBECTL" "$@"; }

say "installing the CRDs: packsmith's (crds/) and kapp-controller's packaging API stand-ins"
k apply --server-side -f "$ROOT/crds/" -f "$ROOT/e2e/crds/kapp-controller/"
k wait --for condition=Established --timeout 60s crd --all >/dev/null

say "pushing the image the upstream references, quay.io/packsmith-demo/hello:1.0.0, to the local registry $REG"
# A one-layer OCI image built with curl against the registry API: no docker daemon here.
push_blob() { # REPO FILE -> sha256:...
  local repo=$1 file=$2 digest location
  digest="sha256:$(sha256sum "$file" | cut -d' ' -f1)"
  location=$(curl -fsS -X POST -D - -o /dev/null "http://$REG/v2/$repo/blobs/uploads/" |
    sed -n 's/^[Ll]ocation: *\([^[:space:]]*\).*/\1/p')
  [[ $location == http* ]] || location="http://$REG$location"
  case $location in *\?*) sep='&' ;; *) sep='?' ;; esac
  curl -fsS -X PUT -H 'Content-Type: application/octet-stream' --data-binary "@$file" \
    "$location${sep}digest=$digest" -o /dev/null
  printf '%s\n' "$digest"
}
img=$STATE/demo-image
mkdir -p "$img/rootfs"
printf 'hello from the packsmith demo\n' >"$img/rootfs/index.html"
tar --sort=name --owner=0 --group=0 --mtime=@0 -C "$img/rootfs" -czf "$img/layer.tgz" .
diff_id="sha256:$(gzip -dc "$img/layer.tgz" | sha256sum | cut -d' ' -f1)"
printf '{"architecture":"amd64","os":"linux","config":{"Cmd":["/serve"]},"rootfs":{"type":"layers","diff_ids":["%s"]}}' \
  "$diff_id" >"$img/config.json"
layer=$(push_blob packsmith-demo/hello "$img/layer.tgz")
config=$(push_blob packsmith-demo/hello "$img/config.json")
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%d},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"%s","size":%d}]}' \
  "$config" "$(stat -c %s "$img/config.json")" "$layer" "$(stat -c %s "$img/layer.tgz")" >"$img/manifest.json"
curl -fsS -X PUT -H 'Content-Type: application/vnd.oci.image.manifest.v1+json' --data-binary "@$img/manifest.json" \
  "http://$REG/v2/packsmith-demo/hello/manifests/1.0.0" -o /dev/null
echo "pushed $REG/packsmith-demo/hello:1.0.0@sha256:$(sha256sum "$img/manifest.json" | cut -d' ' -f1)"

say "committing examples/demo/upstream to $PACKSMITH_E2E_GIT_URL/hello.git, tagged v1.0.0"
git init -q --bare "$PACKSMITH_E2E_GIT_DIR/hello.git"
work=$STATE/demo-upstream
rm -rf "$work"
cp -r "$ROOT/examples/demo/upstream" "$work"
(
  cd "$work"
  git init -q -b main
  git add -A
  git -c user.name=demo -c user.email=demo@packsmith.invalid commit -q -m "hello 1.0.0"
  git tag v1.0.0
  git push -q "$PACKSMITH_E2E_GIT_DIR/hello.git" main v1.0.0
)

say "starting packsmith controller (log: $STATE/logs/demo-controller.log)"
launch "$STATE" demo-controller "$PACKSMITH" controller --kubeconfig "$KUBECONFIG" \
  --metrics-addr 127.0.0.1:0 --health-addr 127.0.0.1:0 --cache-dir "$STATE/demo-cache"

say "applying examples/demo/packagesource.yaml (with the bed's git URL and registry)"
k create namespace "$NS" >/dev/null
sed -e "s|\${DEMO_GIT_URL}|$PACKSMITH_E2E_GIT_URL|g" -e "s|\${DEMO_REGISTRY}|$REG|g" \
  "$ROOT/examples/demo/packagesource.yaml" | k apply --server-side -f -

say "waiting for the PackageSource to be Ready"
if ! k wait -n "$NS" pkgsrc/hello --for condition=Ready --timeout 180s >/dev/null; then
  k get -n "$NS" pkgsrc/hello -o yaml >&2 || true
  tail -n 30 "$STATE/logs/demo-controller.log" >&2 || true
  die "the demo PackageSource did not become Ready (controller log: $STATE/logs/demo-controller.log)"
fi

say "kubectl get pkgsrc -A -o wide"
k get pkgsrc -A -o wide

say "the published Package (kubectl get packages -n $NS -o yaml)"
k get packages -n "$NS" -o yaml

bundle=$(k get -n "$NS" pkgsrc/hello -o jsonpath='{.status.bundle.image}')
say "packsmith pull -b $bundle"
"$PACKSMITH" pull -b "$bundle" -o "$STATE/demo-pull" --registry-insecure-host "$REG" 2>/dev/null
(cd "$STATE/demo-pull" && find . -type f | sort)
say "its image lock, .imgpkg/images.yml"
cat "$STATE/demo-pull/.imgpkg/images.yml"

say "demo ready in $(($(date +%s) - t0))s; the bed keeps running. To explore it:"
echo "  export KUBECONFIG=$KUBECONFIG"
echo "  kubectl get pkgsrc -A; kubectl describe pkgsrc -n $NS hello"
echo "Stop it with: make demo-down"
