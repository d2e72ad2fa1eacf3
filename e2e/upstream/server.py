#!/usr/bin/env python3
"""Upstream server of the packsmith e2e test bed: everything a PackageSource can point at, on one port.

Routes (STATE is --state-dir):
  /healthz                     readiness probe, answers "ok"
  /files/<path>                static files from STATE/www (ETag, Last-Modified, conditional GET, HEAD)
  /git/<name>.git/...          git smart HTTP through `git http-backend` over STATE/git
  /github/api/repos/{o}/{r}/releases[/latest|/tags/{tag}|/{id}]
                               a fake GitHub releases API over STATE/github/{o}/{r}/releases/*.json

Auth is decided per request, so a test can switch it on and off while the server runs: while
STATE/auth/token exists, /files/private/... and /github/api/... need `Authorization: Bearer <token>`
(or `token <token>`), and /git/private-*.git needs basic auth as user `git` with the token as password.

Python standard library only, so the bed needs nothing beyond python3.
"""

import argparse
import base64
import binascii
import datetime
import email.utils
import hashlib
import hmac
import json
import mimetypes
import os
import re
import stat
import subprocess
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CHUNK = 1 << 16
REALM = "packsmith-e2e"
NOT_FOUND = {"message": "Not Found"}


class Upstream(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, addr, state_dir, log_file):
        super().__init__(addr, Handler)
        self.state_dir = state_dir
        self.www = os.path.join(state_dir, "www")
        self.git_root = os.path.join(state_dir, "git")
        self.github = os.path.join(state_dir, "github")
        self.token_file = os.path.join(state_dir, "auth", "token")
        self.log_file = log_file
        self.log_lock = threading.Lock()
        # Hashing a 50 MiB tarball on every conditional GET would dominate "nothing changed"
        # benchmarks, so content hashes are kept per (inode, size, mtime, ctime).
        self.etags = {}
        self.etags_lock = threading.Lock()

    def log(self, line):
        with self.log_lock:
            self.log_file.write(line + "\n")
            self.log_file.flush()

    def token(self):
        try:
            with open(self.token_file, encoding="utf-8") as f:
                return f.read().strip() or None
        except FileNotFoundError:
            return None


def etag_matches(header, etag):
    if header.strip() == "*":
        return True
    bare = etag.removeprefix("W/")
    return any(t.strip().removeprefix("W/") == bare for t in header.split(","))


def release_time(release):
    for key in ("created_at", "published_at"):
        value = release.get(key)
        if isinstance(value, str) and value:
            try:
                return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
            except ValueError:
                pass
    return 0.0


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "packsmith-e2e-upstream/1"
    # Idle keep-alive connections must not pin a thread forever.
    timeout = 120

    # --- plumbing -------------------------------------------------------------------------------

    def log_message(self, format, *args):  # noqa: A002 (signature fixed by the base class)
        self.server.log("%s - [%s] %s" % (self.client_address[0], self.log_date_time_string(), format % args))

    def do_GET(self):
        self.route()

    def do_HEAD(self):
        self.route()

    def do_POST(self):
        self.route()

    def do_PUT(self):
        self.route()

    def do_DELETE(self):
        self.route()

    def has_body(self):
        return "chunked" in self.headers.get("Transfer-Encoding", "").lower() or int(
            self.headers.get("Content-Length") or 0
        ) > 0

    def reply(self, code, body=b"", content_type="text/plain; charset=utf-8", headers=()):
        # reply() never follows a read of the body, and an unread body would be parsed as the
        # next request on this connection.
        if self.has_body():
            self.close_connection = True
        self.send_response(code)
        for name, value in headers:
            self.send_header(name, value)
        if code != 304:
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD" and code != 304:
            self.wfile.write(body)

    def reply_json(self, code, value, headers=()):
        body = (json.dumps(value, separators=(",", ":")) + "\n").encode()
        self.reply(code, body, "application/json; charset=utf-8", headers)

    def route(self):
        url = urllib.parse.urlsplit(self.path)
        path = url.path
        try:
            if path == "/healthz":
                self.reply(200, b"ok\n")
            elif path.startswith("/files/"):
                self.files(path[len("/files/") :])
            elif path.startswith("/git/"):
                self.git(path[len("/git") :], url.query)
            elif path.startswith("/github/api/"):
                self.github(path[len("/github/api") :], url.query)
            else:
                self.reply(404, b"not found\n")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    # --- auth -----------------------------------------------------------------------------------

    def bearer_ok(self, token):
        scheme, _, cred = self.headers.get("Authorization", "").partition(" ")
        return scheme.lower() in ("bearer", "token") and hmac.compare_digest(cred.strip().encode(), token.encode())

    def basic_user(self, token):
        scheme, _, cred = self.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            user, _, password = base64.b64decode(cred.strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        if user == "git" and hmac.compare_digest(password.encode(), token.encode()):
            return user
        return None

    # --- /files ---------------------------------------------------------------------------------

    def files(self, rel):
        if self.command not in ("GET", "HEAD"):
            return self.reply(405, b"method not allowed\n", headers=[("Allow", "GET, HEAD")])
        parts = [p for p in urllib.parse.unquote(rel).split("/") if p not in ("", ".")]
        if not parts or ".." in parts:
            return self.reply(404, b"not found\n")
        token = self.server.token()
        if parts[0] == "private" and token and not self.bearer_ok(token):
            return self.reply(401, b"unauthorized\n", headers=[("WWW-Authenticate", f'Bearer realm="{REALM}"')])
        full = os.path.join(self.server.www, *parts)
        try:
            f = open(full, "rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError):
            return self.reply(404, b"not found\n")
        with f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                return self.reply(404, b"not found\n")
            etag = self.file_etag(f, st)
            last_modified = email.utils.formatdate(st.st_mtime, usegmt=True)
            common = [("ETag", etag), ("Last-Modified", last_modified), ("Cache-Control", "no-cache")]
            if self.not_modified(etag, st.st_mtime):
                return self.reply(304, headers=common)
            self.send_response(200)
            for name, value in common:
                self.send_header(name, value)
            self.send_header("Content-Type", self.guess_type(parts[-1]))
            self.send_header("Content-Length", str(st.st_size))
            self.end_headers()
            if self.command == "GET":
                # Exactly st_size bytes: a file that grows while we send must not break framing.
                remaining = st.st_size
                while remaining > 0:
                    data = f.read(min(CHUNK * 16, remaining))
                    if not data:
                        break
                    self.wfile.write(data)
                    remaining -= len(data)
                if remaining:
                    self.close_connection = True

    def file_etag(self, f, st):
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        with self.server.etags_lock:
            etag = self.server.etags.get(key)
        if etag is None:
            digest = hashlib.sha256()
            for block in iter(lambda: f.read(CHUNK * 16), b""):
                digest.update(block)
            f.seek(0)
            etag = '"%s"' % digest.hexdigest()[:40]
            with self.server.etags_lock:
                self.server.etags[key] = etag
        return etag

    def not_modified(self, etag, mtime):
        inm = self.headers.get("If-None-Match")
        if inm is not None:  # RFC 9110: If-Modified-Since is ignored when If-None-Match is sent
            return etag_matches(inm, etag)
        ims = self.headers.get("If-Modified-Since")
        if ims:
            try:
                since = email.utils.parsedate_to_datetime(ims).timestamp()
            except (TypeError, ValueError):
                return False
            return int(mtime) <= since
        return False

    @staticmethod
    def guess_type(name):
        # Never pass an encoding on as Content-Encoding: clients would transparently gunzip a
        # .tar.gz and the checksum of what they stored would not match the file.
        if name.endswith((".tgz", ".gz")):
            return "application/gzip"
        ctype, _ = mimetypes.guess_type(name)
        return ctype or "application/octet-stream"

    # --- /git (smart HTTP via git http-backend) ---------------------------------------------------

    def git(self, path_info, query):
        if self.command not in ("GET", "POST"):
            return self.reply(405, b"method not allowed\n", headers=[("Allow", "GET, POST")])
        path_info = urllib.parse.unquote(path_info)
        repo = path_info.lstrip("/").split("/", 1)[0]
        if ".." in path_info.split("/"):
            return self.reply(404, b"not found\n")
        token = self.server.token()
        user = None
        if repo.startswith("private-") and token:
            user = self.basic_user(token)
            if user is None:
                return self.reply(401, b"unauthorized\n", headers=[("WWW-Authenticate", f'Basic realm="{REALM}"')])

        config = {
            # Repositories made by a test may belong to another user than the server's.
            "safe.directory": "*",
            "http.receivepack": "true",
            "http.uploadpack": "true",
            "uploadpack.allowFilter": "true",
            # As on GitHub: a client may fetch any reachable commit by its id (shallow pin).
            "uploadpack.allowReachableSHA1InWant": "true",
        }
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": self.server.state_dir,
            # A developer's ~/.gitconfig or /etc/gitconfig must not change what the bed serves.
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": "/dev/null",
            "GIT_CONFIG_COUNT": str(len(config)),
            "GIT_PROJECT_ROOT": self.server.git_root,
            "GIT_HTTP_EXPORT_ALL": "1",
            "GATEWAY_INTERFACE": "CGI/1.1",
            "SERVER_PROTOCOL": self.request_version,
            "SERVER_SOFTWARE": self.server_version,
            "REQUEST_METHOD": self.command,
            "PATH_INFO": path_info,
            "QUERY_STRING": query,
            "REMOTE_ADDR": self.client_address[0],
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
        }
        for i, (key, value) in enumerate(config.items()):
            env[f"GIT_CONFIG_KEY_{i}"] = key
            env[f"GIT_CONFIG_VALUE_{i}"] = value
        if user:
            env["REMOTE_USER"] = user
            env["AUTH_TYPE"] = "Basic"
        if self.headers.get("Git-Protocol"):
            env["GIT_PROTOCOL"] = self.headers["Git-Protocol"]
        if self.headers.get("Content-Encoding"):
            env["HTTP_CONTENT_ENCODING"] = self.headers["Content-Encoding"]
        chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
        length = None
        if not chunked and self.headers.get("Content-Length"):
            length = int(self.headers["Content-Length"])
            env["CONTENT_LENGTH"] = str(length)
        # Without CONTENT_LENGTH, http-backend reads the body until EOF: that is how a chunked
        # request (git sends one for packs above http.postBuffer) reaches it.

        proc = subprocess.Popen(
            ["git", "http-backend"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.server.log_file,
            env=env,
        )
        feeder = threading.Thread(target=self.feed_body, args=(proc.stdin, chunked, length), daemon=True)
        feeder.start()
        try:
            if not self.relay_cgi(proc.stdout):
                self.reply(502, b"git http-backend sent no CGI headers\n")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
            proc.kill()
        finally:
            proc.stdout.close()
            proc.wait()
            feeder.join(timeout=5)
            if feeder.is_alive():
                self.close_connection = True

    def feed_body(self, sink, chunked, length):
        try:
            if chunked:
                for block in self.chunked_body():
                    sink.write(block)
            elif length:
                remaining = length
                while remaining > 0:
                    block = self.rfile.read(min(CHUNK, remaining))
                    if not block:
                        break
                    sink.write(block)
                    remaining -= len(block)
        except (BrokenPipeError, ConnectionResetError, ValueError, OSError):
            # The backend stopped reading (it failed); the rest of the body is unusable anyway.
            self.close_connection = True
        finally:
            try:
                sink.close()
            except OSError:
                pass

    def chunked_body(self):
        while True:
            line = self.rfile.readline(1024)
            if not line:
                raise ConnectionResetError("eof in chunked body")
            size = int(line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass
                return
            remaining = size
            while remaining > 0:
                block = self.rfile.read(min(CHUNK, remaining))
                if not block:
                    raise ConnectionResetError("eof in chunked body")
                yield block
                remaining -= len(block)
            self.rfile.readline(1024)

    def relay_cgi(self, out):
        status, reason, headers = 200, None, []
        while True:
            line = out.readline(65536)
            if not line:
                self.close_connection = True
                return False
            line = line.rstrip(b"\r\n").decode("latin-1")
            if not line:
                break
            name, _, value = line.partition(":")
            value = value.strip()
            if name.lower() == "status":
                code, _, reason = value.partition(" ")
                status = int(code)
            else:
                headers.append((name, value))
        self.send_response(status, reason or None)
        sized = any(n.lower() == "content-length" for n, _ in headers)
        for name, value in headers:
            self.send_header(name, value)
        if not sized:
            self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        while True:
            block = out.read1(CHUNK)
            if not block:
                break
            if sized:
                self.wfile.write(block)
            else:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(block), block))
        if not sized:
            self.wfile.write(b"0\r\n\r\n")
        return True

    # --- /github/api ----------------------------------------------------------------------------

    def github(self, path, query):
        if self.command not in ("GET", "HEAD"):
            return self.reply_json(404, NOT_FOUND)
        token = self.server.token()
        if token and not self.bearer_ok(token):
            message = "Bad credentials" if self.headers.get("Authorization") else "Requires authentication"
            return self.reply_json(401, {"message": message}, [("WWW-Authenticate", f'Bearer realm="{REALM}"')])
        m = re.fullmatch(r"/repos/([^/]+)/([^/]+)/releases(?:/(.+))?", path)
        if not m:
            return self.reply_json(404, NOT_FOUND)
        owner, repo, sub = (urllib.parse.unquote(g) if g else g for g in m.groups())
        if owner in (".", "..") or repo in (".", ".."):
            return self.reply_json(404, NOT_FOUND)
        try:
            releases = self.load_releases(owner, repo)
        except ValueError as err:
            self.log_message("bad release file: %s", err)
            return self.reply_json(500, {"message": f"bad release file: {err}"})
        if sub is None:
            return self.release_page(owner, repo, releases, query)
        if sub == "latest":
            found = next((r for r in releases if not r.get("draft") and not r.get("prerelease")), None)
        elif sub.startswith("tags/"):
            tag = sub[len("tags/") :]
            found = next((r for r in releases if r.get("tag_name") == tag), None)
        elif sub.isdigit():
            found = next((r for r in releases if str(r.get("id")) == sub), None)
        else:
            found = None
        if found is None:
            return self.reply_json(404, NOT_FOUND)
        self.reply_cacheable(found)

    def load_releases(self, owner, repo):
        directory = os.path.join(self.server.github, owner, repo, "releases")
        try:
            names = sorted(n for n in os.listdir(directory) if n.endswith(".json"))
        except (FileNotFoundError, NotADirectoryError):
            return []
        releases = []
        for name in names:
            try:
                with open(os.path.join(directory, name), encoding="utf-8") as f:
                    release = json.load(f)
            except FileNotFoundError:
                continue  # removed by the test between listdir and open
            except json.JSONDecodeError as err:
                raise ValueError(f"{owner}/{repo}/releases/{name}: {err}") from None
            if not isinstance(release, dict):
                raise ValueError(f"{owner}/{repo}/releases/{name}: not a JSON object")
            tag = name[: -len(".json")]
            # Tests write only what they care about; GitHub always sends these.
            release.setdefault("tag_name", tag)
            release.setdefault("name", release["tag_name"])
            release.setdefault("id", int(hashlib.sha256(f"{owner}/{repo}@{release['tag_name']}".encode()).hexdigest()[:7], 16))
            release.setdefault("draft", False)
            release.setdefault("prerelease", False)
            release.setdefault("assets", [])
            for asset in release["assets"]:
                if isinstance(asset, dict):
                    self.describe_asset(asset)
            releases.append(release)
        releases.sort(key=lambda r: (release_time(r), r["id"]), reverse=True)
        return releases

    def describe_asset(self, asset):
        # GitHub gives every asset an id, size and updated_at (and a digest), which change when
        # the asset is replaced under the same tag; filled in from the served file.
        url = urllib.parse.urlsplit(asset.get("browser_download_url") or "")
        name = asset.get("name") or ""
        asset.setdefault("id", int(hashlib.sha256(url.path.encode()).hexdigest()[:7], 16))
        if not url.path.startswith("/files/"):
            return
        parts = [p for p in urllib.parse.unquote(url.path[len("/files/") :]).split("/") if p not in ("", ".")]
        if not parts or ".." in parts:
            return
        try:
            with open(os.path.join(self.server.www, *parts), "rb") as f:
                st = os.fstat(f.fileno())
                digest = self.file_etag(f, st)
        except OSError:
            return
        asset.setdefault("name", name or parts[-1])
        asset.setdefault("size", st.st_size)
        asset.setdefault("updated_at", datetime.datetime.fromtimestamp(st.st_mtime, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
        # The ETag is a prefix of the content's sha256; GitHub's digest is the full one.
        asset.setdefault("digest", "sha256:" + self.content_sha256(os.path.join(self.server.www, *parts), digest))

    def content_sha256(self, path, etag):
        key = ("sha256", path, etag)
        with self.server.etags_lock:
            known = self.server.etags.get(key)
        if known is None:
            h = hashlib.sha256()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(CHUNK * 16), b""):
                    h.update(block)
            known = h.hexdigest()
            with self.server.etags_lock:
                self.server.etags[key] = known
        return known

    def release_page(self, owner, repo, releases, query):
        params = urllib.parse.parse_qs(query)
        try:
            per_page = max(1, min(100, int(params.get("per_page", ["30"])[0])))
            page = max(1, int(params.get("page", ["1"])[0]))
        except ValueError:
            per_page, page = 30, 1
        last = max(1, -(-len(releases) // per_page))
        links = []
        base = f"http://{self.headers.get('Host', 'localhost')}/github/api/repos/{owner}/{repo}/releases"
        if page < last:
            links.append(f'<{base}?per_page={per_page}&page={page + 1}>; rel="next"')
            links.append(f'<{base}?per_page={per_page}&page={last}>; rel="last"')
        if page > 1:
            links.append(f'<{base}?per_page={per_page}&page=1>; rel="first"')
            links.append(f'<{base}?per_page={per_page}&page={min(page - 1, last)}>; rel="prev"')
        chunk = releases[(page - 1) * per_page : page * per_page]
        self.reply_cacheable(chunk, [("Link", ", ".join(links))] if links else [])

    def reply_cacheable(self, value, headers=()):
        # GitHub answers conditional requests with 304, which clients use to poll cheaply.
        body = (json.dumps(value, separators=(",", ":")) + "\n").encode()
        etag = 'W/"%s"' % hashlib.sha256(body).hexdigest()[:40]
        headers = list(headers) + [("ETag", etag), ("Cache-Control", "private, max-age=60, s-maxage=60")]
        inm = self.headers.get("If-None-Match")
        if inm is not None and etag_matches(inm, etag):
            return self.reply(304, headers=headers)
        self.reply(200, body, "application/json; charset=utf-8", headers)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 lets the kernel choose (see --port-file)")
    parser.add_argument("--port-file", help="written with the bound port once the server accepts connections")
    parser.add_argument("--log", help="access and error log (default: stderr)")
    args = parser.parse_args()

    log_file = open(args.log, "a", encoding="utf-8", buffering=1) if args.log else sys.stderr
    server = Upstream((args.host, args.port), os.path.abspath(args.state_dir), log_file)
    port = server.server_address[1]
    server.log(f"listening on http://{args.host}:{port} state-dir={server.state_dir}")
    if args.port_file:
        tmp = args.port_file + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(f"{port}\n")
        os.replace(tmp, args.port_file)  # readers never see a half-written port
    try:
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
