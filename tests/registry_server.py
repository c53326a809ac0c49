"""A real registry for the tests: the Debian ``docker-registry`` (distribution 2.8) on a free
port of 127.0.0.1, storing into a temporary directory; with htpasswd basic auth, or token auth
backed by a small token server (ES256 JWTs carrying their certificate in ``x5c``, which the
registry's ``rootcertbundle`` trusts)."""

from __future__ import annotations

import base64
import contextlib
import datetime
import http.client
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.parse
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
import urllib3

REGISTRY = shutil.which("docker-registry") or "/usr/bin/docker-registry"
USER, PASSWORD = "tester", "s3cret:pw"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class TokenServer:
    """Issues tokens for ``USER:PASSWORD`` (and anonymous pull when ``anonymous_pull``)."""

    port: int
    key_pem: bytes
    cert_der: bytes
    anonymous_pull: bool = False
    issued: list[list[str]] = field(default_factory=list)  # the scopes of each token
    denied: set[str] = field(default_factory=set)  # repositories nobody may reach any more
    #: Repositories a token request may not name at all: it is answered 403 (as some token
    #: servers answer a scope set they do not grant whole, rather than leave the scope out).
    forbidden: set[str] = field(default_factory=set)
    asked: list[list[str]] = field(default_factory=list)  # the scopes of each token request

    def token(self, scopes: list[str], user: str | None) -> str:
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            allowed = actions.split(",") if user else [a for a in actions.split(",") if a == "pull"]
            if name in self.denied:
                allowed = []
            access.append({"type": kind, "name": name, "actions": allowed})
        now = int(time.time())
        claims = {
            "iss": "layerdiff-test-issuer",
            "sub": user or "",
            "aud": "layerdiff-test",
            "exp": now + 600,
            "nbf": now - 10,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        header = {"typ": "JWT", "alg": "ES256", "x5c": [base64.b64encode(self.cert_der).decode()]}

        def b64(obj: object) -> str:
            raw = json.dumps(obj, separators=(",", ":")).encode()
            return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

        signing_input = f"{b64(header)}.{b64(claims)}".encode()
        key = serialization.load_pem_private_key(self.key_pem, password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
        sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        return signing_input.decode() + "." + base64.urlsafe_b64encode(sig).rstrip(b"=").decode()


def _self_signed(common_name: str, extension: Any) -> tuple[Any, Any]:
    """A new EC key and a certificate it signs for itself, valid a day either side of now."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(extension, critical=isinstance(extension, x509.BasicConstraints))
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _make_cert(directory: Path) -> tuple[bytes, bytes, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    key, cert = _self_signed(
        "layerdiff test token signer", x509.BasicConstraints(ca=True, path_length=None)
    )
    bundle = directory / "token-cert.pem"
    bundle.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return key_pem, cert.public_bytes(serialization.Encoding.DER), bundle


@contextlib.contextmanager
def token_server(directory: Path) -> Iterator[TokenServer]:
    key_pem, cert_der, _ = _make_cert(directory)
    port = free_port()
    server = TokenServer(port=port, key_pem=key_pem, cert_der=cert_der)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
            user = None
            auth = self.headers.get("Authorization", "")
            if auth.startswith("Basic "):
                given = base64.b64decode(auth[6:]).decode()
                if given != f"{USER}:{PASSWORD}":
                    self.send_response(401)
                    self.end_headers()
                    return
                user = USER
            scopes = query.get("scope", [])
            server.asked.append(scopes)
            if any(s.split(":")[1] in server.forbidden for s in scopes if s.count(":") == 2):
                self.send_response(403)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if user is None and not server.anonymous_pull:
                self.send_response(401)
                self.end_headers()
                return
            server.issued.append(scopes)
            body = json.dumps({"token": server.token(scopes, user), "expires_in": 600}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        httpd.shutdown()
        httpd.server_close()


@dataclass
class Registry:
    """A running ``docker-registry``."""

    port: int
    storage: Path
    config: Path
    log: Path
    process: subprocess.Popen[bytes] | None = None
    token: TokenServer | None = None
    scheme: str = "http"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def ref(self, repo_tag: str) -> str:
        return f"docker://{self.host}/{repo_tag}"

    def start(self) -> None:
        log = self.log.open("ab")
        self.process = subprocess.Popen(
            [REGISTRY, "serve", str(self.config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"docker-registry exited: {self.log.read_text()[-2000:]}")
            with contextlib.suppress(requests.RequestException):
                url = f"{self.scheme}://{self.host}/v2/"
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", urllib3.exceptions.InsecureRequestWarning)
                    answer = requests.get(url, timeout=1, verify=False)
                if answer.status_code in (200, 401):
                    return
            time.sleep(0.05)
        raise RuntimeError(f"docker-registry did not answer: {self.log.read_text()[-2000:]}")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.process = None

    def blob_data(self, digest: str) -> Path:
        """Where the registry keeps a blob's bytes (filesystem driver layout)."""
        hex_ = digest.split(":", 1)[1]
        return self.storage / "docker/registry/v2/blobs/sha256" / hex_[:2] / hex_ / "data"


def _write_config(directory: Path, port: int, auth: str) -> Path:
    config = directory / "config.yml"
    storage = directory / "storage"
    lines = [
        "version: 0.1",
        "log:",
        "  level: warn",
        "storage:",
        "  filesystem:",
        f"    rootdirectory: {storage}",
        "  delete:",
        "    enabled: true",
        "http:",
        f"  addr: 127.0.0.1:{port}",
        "  secret: layerdiff-test-secret",
    ]
    lines += auth.splitlines()
    config.write_text("\n".join(lines) + "\n")
    return config


def _make_server_cert(directory: Path) -> str:
    """A self-signed certificate for 127.0.0.1, and its key: the registry's ``http.tls``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    key, cert = _self_signed("127.0.0.1", san)
    (directory / "server.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "server.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return (
        f"  tls:\n    certificate: {directory / 'server.pem'}\n    key: {directory / 'server.key'}"
    )


@contextlib.contextmanager
def running_registry(directory: Path, kind: str = "none") -> Iterator[Registry]:
    """A registry with auth ``none``, ``basic`` (htpasswd) or ``token``; or ``tls``: no auth,
    over https with a self-signed certificate."""
    if not os.path.exists(REGISTRY):
        pytest.skip("docker-registry is not installed (apt-get install docker-registry)")
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    auth = ""
    with contextlib.ExitStack() as stack:
        token: TokenServer | None = None
        if kind == "basic":
            import bcrypt

            hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
            htpasswd = directory / "htpasswd"
            htpasswd.write_text(f"{USER}:{hashed}\n")
            auth = f"auth:\n  htpasswd:\n    realm: basic-realm\n    path: {htpasswd}"
        elif kind == "token":
            token = stack.enter_context(token_server(directory))
            auth = (
                "auth:\n  token:\n"
                f"    realm: http://127.0.0.1:{token.port}/token\n"
                "    service: layerdiff-test\n"
                "    issuer: layerdiff-test-issuer\n"
                f"    rootcertbundle: {directory / 'token-cert.pem'}"
            )
        elif kind == "tls":
            auth = _make_server_cert(directory)
        config = _write_config(directory, port, auth)
        reg = Registry(
            port=port,
            storage=directory / "storage",
            config=config,
            log=directory / "registry.log",
            token=token,
            scheme="https" if kind == "tls" else "http",
        )
        reg.start()
        try:
            yield reg
        finally:
            reg.kill()


#: Headers of one hop only, which a proxy neither forwards nor hands back as they came. (``Host``
#: is forwarded: the registry names the proxy in the Locations it gives, as behind any proxy.)
_HOP_BY_HOP = frozenset({"connection", "content-length", "transfer-encoding", "keep-alive"})


@dataclass
class Proxy:
    """A proxy :func:`forwarding_proxy` runs: where it listens, and the requests it forwarded
    (method, path, request headers)."""

    host: str
    seen: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)


@contextlib.contextmanager
def forwarding_proxy(
    upstream: str,
    *,
    request: Callable[[str, str, dict[str, str]], dict[str, str]] | None = None,
    answer: Callable[[str, str, int, list[tuple[str, str]]], list[tuple[str, str]]] | None = None,
) -> Iterator[Proxy]:
    """A plain-HTTP proxy on a free port of 127.0.0.1 that forwards every request to
    ``upstream`` (``HOST:PORT``, plain HTTP). ``request(method, path, headers)`` gives the
    headers sent on; ``answer(method, path, status, headers)`` the headers of the answer handed
    back (its body goes back as it came)."""
    proxy = Proxy(host="")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _body(self) -> bytes | None:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                out = b""
                while size := int(self.rfile.readline().split(b";")[0], 16):
                    out += self.rfile.read(size)
                    self.rfile.readline()
                self.rfile.readline()
                return out
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else None

        def _forward(self) -> None:
            body = self._body()
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            proxy.seen.append((self.command, self.path, dict(headers)))
            if request is not None:
                headers = request(self.command, self.path, headers)
            if body is not None:
                headers["Content-Length"] = str(len(body))
            conn = http.client.HTTPConnection(upstream, timeout=60)
            try:
                conn.request(self.command, self.path, body=body, headers=headers)
                got = conn.getresponse()
                data = got.read()
                back = got.getheaders()
            finally:
                conn.close()
            if answer is not None:
                back = answer(self.command, self.path, got.status, back)
            self.send_response(got.status)
            for k, v in back:
                if k.lower() not in _HOP_BY_HOP or (
                    self.command == "HEAD" and k.lower() == "content-length"
                ):
                    self.send_header(k, v)
            if self.command != "HEAD":
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    proxy.host = f"127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield proxy
    finally:
        server.shutdown()
        server.server_close()
