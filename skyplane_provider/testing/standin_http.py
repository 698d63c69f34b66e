"""The HTTP(S) server under the local stand-ins of the GCP and Azure compute APIs (tests only).

No emulator of the Compute Engine or Azure Resource Manager APIs exists, so the provisioner tests
talk to stand-ins written from the public REST references (``gcp_compute.py``, ``azure_arm.py``).
This module is what they share: a threaded server on 127.0.0.1 that dispatches (method, path
pattern) to a handler, optionally over TLS with a self-signed certificate made for the run (the
Azure SDK sends bearer tokens only over https; clients trust it through ``REQUESTS_CA_BUNDLE``),
and :class:`GuestKeys`, which does what a VM's guest agent does with the SSH keys a VM is created
with: writes them to the ``authorized_keys`` of the local sshd the instance stands for.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import re
import ssl
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit


@dataclass
class Request:
    """One request as a handler sees it."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any  # parsed JSON, or None


@dataclass
class Response:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


class HTTPError(Exception):
    """Raised by a handler: answered as ``status`` with ``body``."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__(status)
        self.status, self.body = status, body


Handler = Callable[..., Response]


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        if not isinstance(sys.exc_info()[1], (ConnectionError, ssl.SSLError)):
            super().handle_error(request, client_address)


class StandInServer:
    """``StandInServer(routes, tls=...)``; ``start()`` returns its base URL. Loopback only.

    ``routes``: ``(method, pattern, handler)``; the pattern is a regex over the path (named groups
    become the handler's keyword arguments, after the :class:`Request`). Every request is recorded in
    :attr:`log` as ``(method, path)``.
    """

    def __init__(self, routes: list[tuple[str, str, Handler]], *, tls: bool = False,
                 certificate_dir: Path | None = None, hostnames: tuple[str, ...] = ()) -> None:
        self._routes = [(m, re.compile(p + r"\Z"), h) for m, p, h in routes]
        self._tls = tls
        self._cert_dir = certificate_dir
        self._hostnames = hostnames  # names the certificate is valid for, besides 127.0.0.1 and localhost
        self.ca_file: Path | None = None
        self.key_file: Path | None = None  # the certificate's key: another local https server may serve it too
        self.log: list[tuple[str, str]] = []
        self._server: _Server | None = None
        self.url = ""

    def start(self) -> str:
        outer = self

        class RequestHandler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _serve(self) -> None:
                split = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                outer.log.append((self.command, split.path))
                try:
                    body = json.loads(raw) if raw and "json" in (self.headers.get("Content-Type") or "json") else (
                        raw.decode() or None)
                except ValueError:
                    body = raw.decode(errors="replace")
                request = Request(self.command, split.path, {k: v[-1] for k, v in parse_qs(split.query).items()},
                                  {k.lower(): v for k, v in self.headers.items()}, body)
                try:
                    response = outer._dispatch(request)
                except HTTPError as exc:
                    response = Response(exc.status, exc.body)
                payload = b"" if response.body is None else json.dumps(response.body).encode()
                self.send_response(response.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for k, v in response.headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

        self._server = _Server(("127.0.0.1", 0), RequestHandler)
        scheme = "http"
        if self._tls:
            self.ca_file, self.key_file = self_signed_certificate(self._cert_dir, self._hostnames)
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(self.ca_file, self.key_file)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
            scheme = "https"
        threading.Thread(target=self._server.serve_forever, name="standin-http", daemon=True).start()
        self.url = f"{scheme}://127.0.0.1:{self._server.server_address[1]}"
        return self.url

    def _dispatch(self, request: Request) -> Response:
        allowed = False
        for method, pattern, handler in self._routes:
            match = pattern.match(request.path)
            if match is None:
                continue
            if method != request.method:
                allowed = True
                continue
            return handler(request, **match.groupdict())
        raise HTTPError(405 if allowed else 404, {"error": {"code": 405 if allowed else 404,
                                                            "message": f"no route {request.method} {request.path}"}})

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def self_signed_certificate(directory: Path | None, hostnames: tuple[str, ...] = ()) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1, localhost and ``hostnames`` (and its key), valid one day, written
    as PEM files in ``directory``."""
    import tempfile

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory = Path(directory or tempfile.mkdtemp(prefix="standin-tls-"))
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "skyplane test stand-in")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                        *(x509.DNSName(n) for n in ("localhost", *hostnames))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = directory / "standin-cert.pem", directory / "standin-key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.touch(mode=0o600)
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


class GuestKeys:
    """The guest agent's part: an instance's SSH keys go into an ``authorized_keys`` file while it exists.

    ``files`` are the ``authorized_keys`` of the local sshd servers that instances stand for; every
    instance's keys are added to all of them (tests map instances to those servers with
    ``address_map``) and removed when the last instance holding a key is deleted. Lines that were
    there before are never touched.
    """

    def __init__(self, files: list[Path] | tuple[Path, ...] = ()) -> None:
        self._files = [Path(f) for f in files]
        self._holders: dict[str, set[str]] = {}  # key line -> instances holding it
        self._lock = threading.Lock()

    def add(self, instance: str, keys: list[str]) -> None:
        with self._lock:
            for key in keys:
                holders = self._holders.setdefault(key, set())
                if not holders:
                    for f in self._files:
                        with open(f, "a") as out:
                            out.write(key + "\n")
                holders.add(instance)

    def remove(self, instance: str | None = None) -> None:
        """Drop ``instance``'s keys (every key when ``None``: the stand-in stops)."""
        with self._lock:
            gone = []
            for key, holders in self._holders.items():
                holders.discard(instance) if instance is not None else holders.clear()
                if not holders:
                    gone.append(key)
            for key in gone:
                del self._holders[key]
                for f in self._files:
                    lines = f.read_text().splitlines()
                    f.write_text("".join(line + "\n" for line in lines if line != key))


class StandIn:
    """What both cloud stand-ins share: their server, its URL, and the guest agent's keys."""

    def __init__(self, server: StandInServer, authorized_keys: list[Path] | tuple[Path, ...]) -> None:
        self.server = server
        self.guest = GuestKeys(authorized_keys)
        self.url = ""

    def start(self) -> str:
        self.url = self.server.start()
        return self.url

    def stop(self) -> None:
        """Stop serving and take every key the stand-in's instances installed back out."""
        self.server.stop()
        self.guest.remove()
