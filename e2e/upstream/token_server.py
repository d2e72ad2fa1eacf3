#!/usr/bin/env python3
"""Docker token server of the packsmith e2e test bed, for the registry configured with `auth: token`.

Routes:
  /healthz   readiness probe, answers "ok"
  /token     GET ?service=S&scope=repository:NAME:ACTIONS[&scope=...] with basic credentials:
             {"token", "access_token", "expires_in", "issued_at"}, a JWT the registry verifies

Only the user in --user-file with the password in --password-file gets a token; anonymous or
wrong credentials get 401, another service 400. The user is granted pull and push (whatever of
those it asks for) on every repository, nothing else.

Tokens follow distribution 2.x (registry/auth/token): signed ES256 by --key, whose certificate
(--cert) is the registry's `rootcertbundle`, and carried in the header's `x5c` (the registry
checks that chain against its bundle); `iss` is --issuer, `aud` --service, a string as 2.x
parses it.

Every answer to /token is appended to --issued-log as one JSON line {"status", "user", "scopes"},
so tests count the tokens a client fetched per scope.

Python standard library plus the `openssl` command the bed already needs: signing through it keeps
this server free of third-party modules, whichever python3 runs it.
"""

import argparse
import base64
import binascii
import datetime
import hmac
import json
import os
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOKEN_SECONDS = 300
GRANTABLE = ("pull", "push")


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def der_to_raw_signature(der, size=32):
    """openssl writes ECDSA signatures as DER SEQUENCE { INTEGER r, INTEGER s }; JWS wants r || s."""

    def read_length(buf, i):
        first = buf[i]
        if first < 0x80:
            return first, i + 1
        n = first & 0x7F
        return int.from_bytes(buf[i + 1 : i + 1 + n], "big"), i + 1 + n

    if not der or der[0] != 0x30:
        raise ValueError("not a DER sequence")
    _, i = read_length(der, 1)
    out = b""
    for _ in range(2):
        if der[i] != 0x02:
            raise ValueError("not a DER integer")
        length, i = read_length(der, i + 1)
        value = int.from_bytes(der[i : i + length], "big")
        i += length
        out += value.to_bytes(size, "big")
    return out


def pem_to_der_b64(pem_text):
    """The base64 DER of a PEM certificate, as `x5c` wants it (standard base64, not url-safe)."""
    lines = [l.strip() for l in pem_text.splitlines()]
    body = lines[lines.index("-----BEGIN CERTIFICATE-----") + 1 : lines.index("-----END CERTIFICATE-----")]
    der = base64.b64decode("".join(body))
    return base64.b64encode(der).decode()


class TokenServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64

    def __init__(self, addr, args):
        super().__init__(addr, Handler)
        self.key = args.key
        self.issuer = args.issuer
        self.service = args.service
        with open(args.cert, encoding="utf-8") as f:
            self.x5c = [pem_to_der_b64(f.read())]
        with open(args.user_file, encoding="utf-8") as f:
            self.user = f.read().strip()
        with open(args.password_file, encoding="utf-8") as f:
            self.password = f.read().strip()
        self.issued_log = args.issued_log
        self.log_file = open(args.log, "a", encoding="utf-8") if args.log else sys.stderr
        self.lock = threading.Lock()

    def log(self, line):
        with self.lock:
            self.log_file.write(line + "\n")
            self.log_file.flush()

    def record(self, status, user, scopes):
        with self.lock, open(self.issued_log, "a", encoding="utf-8") as f:
            f.write(json.dumps({"status": status, "user": user, "scopes": scopes}) + "\n")

    def sign(self, header, claims):
        signing_input = (
            b64url(json.dumps(header, separators=(",", ":")).encode())
            + "."
            + b64url(json.dumps(claims, separators=(",", ":")).encode())
        )
        der = subprocess.run(
            ["openssl", "dgst", "-sha256", "-sign", self.key],
            input=signing_input.encode(),
            capture_output=True,
            check=True,
        ).stdout
        return signing_input + "." + b64url(der_to_raw_signature(der))

    def token(self, user, scopes):
        access = []
        for scope in scopes:
            parts = scope.split(":")
            # repository:NAME:ACTIONS; NAME never holds ':' (a port belongs to the host, not here).
            if len(parts) != 3 or parts[0] != "repository":
                continue
            actions = [a for a in parts[2].split(",") if a in GRANTABLE]
            if actions:
                access.append({"type": "repository", "name": parts[1], "actions": actions})
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": user,
            "aud": self.service,
            "exp": now + TOKEN_SECONDS,
            "nbf": now,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        return self.sign({"typ": "JWT", "alg": "ES256", "x5c": self.x5c}, claims)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "packsmith-e2e-token/1"
    timeout = 120

    def log_message(self, format, *args):  # noqa: A002 (signature fixed by the base class)
        # The request line carries no secrets (credentials travel in the Authorization header).
        self.server.log("%s - [%s] %s" % (self.client_address[0], self.log_date_time_string(), format % args))

    def reply_json(self, code, value, headers=()):
        body = (json.dumps(value, separators=(",", ":")) + "\n").encode()
        self.send_response(code)
        for name, v in headers:
            self.send_header(name, v)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        if url.path == "/healthz":
            self.reply_json(200, "ok")
            return
        if url.path != "/token":
            self.reply_json(404, {"errors": [{"code": "NOT_FOUND", "message": "no such route"}]})
            return
        query = urllib.parse.parse_qs(url.query)
        scopes = [s for value in query.get("scope", []) for s in value.split(" ") if s]
        user = self.basic_user()
        if user is None:
            self.server.record(401, None, scopes)
            self.reply_json(
                401,
                {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]},
                [("WWW-Authenticate", 'Basic realm="packsmith-e2e-token"')],
            )
            return
        if query.get("service", [""])[0] != self.server.service:
            self.server.record(400, user, scopes)
            self.reply_json(400, {"errors": [{"code": "UNSUPPORTED", "message": "unknown service"}]})
            return
        token = self.server.token(user, scopes)
        self.server.record(200, user, scopes)
        issued_at = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.reply_json(
            200,
            {"token": token, "access_token": token, "expires_in": TOKEN_SECONDS, "issued_at": issued_at},
        )

    def basic_user(self):
        """The user, when the Authorization header carries the right basic credentials."""
        header = self.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        user, sep, password = decoded.partition(":")
        if not sep:
            return None
        ok_user = hmac.compare_digest(user.encode(), self.server.user.encode())
        ok_password = hmac.compare_digest(password.encode(), self.server.password.encode())
        return user if ok_user and ok_password else None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 lets the kernel choose (see --port-file)")
    parser.add_argument("--port-file", help="written with the bound port once the server accepts connections")
    parser.add_argument("--key", required=True, help="EC P-256 private key (PEM) that signs tokens")
    parser.add_argument("--cert", required=True, help="its certificate (PEM), sent as the x5c chain")
    parser.add_argument("--issuer", required=True)
    parser.add_argument("--service", required=True)
    parser.add_argument("--user-file", required=True)
    parser.add_argument("--password-file", required=True)
    parser.add_argument("--issued-log", required=True, help="one JSON line per /token answer")
    parser.add_argument("--log", help="access and error log (default: stderr)")
    args = parser.parse_args()

    server = TokenServer((args.host, args.port), args)
    port = server.server_address[1]
    server.log(f"listening on {args.host}:{port}")
    if args.port_file:
        tmp = args.port_file + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(f"{port}\n")
        os.replace(tmp, args.port_file)
    try:
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
