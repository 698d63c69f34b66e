"""A fault-injecting HTTP proxy to put in front of a store emulator (real TCP, for fault tests).

For a configurable fraction of requests it answers like a throttling store (S3 ``503 SlowDown``,
GCS ``429``, Azure ``503 ServerBusy``) or drops the connection without an answer; everything else is
forwarded to the upstream server unchanged, after ``delay`` seconds (a slow store, so that a test can
act at a chosen point of a transfer). ``faults`` caps the faults of its whole life: with a ``seed``,
exactly the first ones its random draws make, whatever the order the requests come in. It counts what it did, so a test can show that faults
really happened. With ``authorization``, it answers 401 (in the store's words) to every request not
carrying exactly that ``Authorization`` header, which the emulators do not check themselves: a test
can show that a store sends the credentials it was given. Loopback only.
"""

from __future__ import annotations

import http.client
import random
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable
from urllib.parse import urlsplit

_THROTTLE = {
    "s3": (503, "application/xml",
           b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>SlowDown</Code>"
           b"<Message>Please reduce your request rate.</Message></Error>"),
    "gcs": (429, "application/json",
            b'{"error": {"code": 429, "message": "rateLimitExceeded", "errors": [{"reason": "rateLimitExceeded"}]}}'),
    "azure": (503, "application/xml",
              b"<?xml version='1.0' encoding='utf-8'?><Error><Code>ServerBusy</Code>"
              b"<Message>The server is busy.</Message></Error>"),
}
_UNAUTHORIZED = {
    "s3": (403, "application/xml", b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>InvalidAccessKeyId</Code>"
                                   b"<Message>The AWS Access Key Id you provided does not exist.</Message></Error>"),
    "gcs": (401, "application/json", b'{"error": {"code": 401, "message": "Invalid Credentials", '
                                     b'"errors": [{"reason": "authError", "message": "Invalid Credentials"}]}}'),
    "azure": (401, "application/xml", b"<?xml version='1.0' encoding='utf-8'?><Error><Code>InvalidAuthenticationInfo"
                                      b"</Code><Message>Authentication information is not given in the correct "
                                      b"format.</Message></Error>"),
}
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade", "te", "trailer"}


class _QuietServer(ThreadingHTTPServer):
    """Clients that reset their connections are part of the game here, not errors worth a traceback."""

    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


@dataclass
class FaultCounts:
    forwarded: int = 0
    throttled: int = 0
    reset: int = 0
    unauthorized: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, what: str) -> None:
        with self.lock:
            setattr(self, what, getattr(self, what) + 1)


class FaultProxy:
    """``FaultProxy(upstream_url, kind="s3", throttle=0.1, reset=0.05).start()`` -> its URL."""

    def __init__(self, upstream: str, *, kind: str, throttle: float = 0.0, reset: float = 0.0,
                 seed: int | None = None, spare_first: int = 0, delay: float = 0.0,
                 match: Callable[[str, str], bool] | None = None, retry_after: str = "0",
                 authorization: str | None = None, faults: int | None = None) -> None:
        """``match(method, path)``: only the requests it accepts may be faulted (all when None);
        ``faults``: at most this many throttles and resets in all, then every request is forwarded
        (no limit when None: a test of a store that keeps throttling);
        ``retry_after``: the ``Retry-After`` header of a throttling answer; ``authorization``: the
        only ``Authorization`` header let through (any when None)."""
        up = urlsplit(upstream)
        if up.hostname not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError("the fault proxy only forwards to loopback")
        self.upstream = (up.hostname, up.port or 80)
        self.kind, self.throttle, self.reset, self.delay = kind, throttle, reset, delay
        self.rng = random.Random(seed)
        self.rng_lock = threading.Lock()
        self.spare_first = spare_first  # setup requests (bucket creation...) pass untouched
        self.match, self.retry_after, self.authorization = match, retry_after, authorization
        self.faults_left = faults
        self.counts = FaultCounts()
        self._server: ThreadingHTTPServer | None = None

    def _roll(self, method: str, path: str) -> str:
        if self.match is not None and not self.match(method, path):
            return "forward"
        with self.rng_lock:
            if self.spare_first > 0:
                self.spare_first -= 1
                return "forward"
            x = self.rng.random()
            if x >= self.throttle + self.reset or self.faults_left == 0:
                return "forward"
            if self.faults_left is not None:
                self.faults_left -= 1
        return "throttle" if x < self.throttle else "reset"

    def start(self) -> str:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = bytearray()
                    while True:
                        size = int(self.rfile.readline().split(b";")[0], 16)
                        if size == 0:
                            self.rfile.readline()
                            return bytes(out)
                        out += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _answer(self, status: int, ctype: str, payload: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(payload)))
                self.send_header("Retry-After", proxy.retry_after)
                self.end_headers()
                self.wfile.write(payload)

            def _handle(self) -> None:
                body = self._body()
                action = proxy._roll(self.command, self.path)
                if action == "reset":
                    proxy.counts.add("reset")
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                if proxy.authorization is not None and self.headers.get("Authorization") != proxy.authorization:
                    proxy.counts.add("unauthorized")
                    self._answer(*_UNAUTHORIZED[proxy.kind])
                    return
                if action == "throttle":
                    proxy.counts.add("throttled")
                    self._answer(*_THROTTLE[proxy.kind])
                    return
                proxy.counts.add("forwarded")
                if proxy.delay:
                    time.sleep(proxy.delay)
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=120)
                # Header names in any case (HTTP's are case-insensitive): a client's own "content-length"
                # next to ours made two, which Azurite's HTTP parser refuses (400, no answer headers).
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in _HOP_BY_HOP and k.lower() != "content-length"}
                headers["Content-Length"] = str(len(body))
                conn.request(self.command, self.path, body=body if body or self.command in ("PUT", "POST") else None,
                             headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status, resp.reason)
                for k, v in resp.getheaders():
                    if k.lower() not in _HOP_BY_HOP and k.lower() != "content-length":
                        self.send_header(k, v)
                # A HEAD answer has no body but the length of the object: passing on len(b"") would
                # report every object as empty (the cause of a "0-byte object" seen in a fault test).
                length = resp.getheader("Content-Length", "0") if self.command == "HEAD" else str(len(data))
                self.send_header("Content-Length", length)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = do_PATCH = _handle

        self._server = _QuietServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, name="faultproxy", daemon=True).start()
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
