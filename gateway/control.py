"""The control API of a gateway (docs/gateway.md): HTTP + JSON, bearer token on every request.

Built on the standard library's ``ThreadingHTTPServer``. Every request is authenticated before its
body is read (401 otherwise, compared in constant time); bodies are size-limited and checked, so a
bad request gets a 4xx answer with a message, never a crash of the daemon.
"""

from __future__ import annotations

import hmac
import json
import logging
import socket
import ssl
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

from planner.errors import BadInputError, SkyplaneError

from .bandwidth import check_rate
from .control_client import store_error_doc
from .events import MAX_WAIT
from .json_reply import reply_json
from .peers import parse_peers

if TYPE_CHECKING:
    from .node import Controlled

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024 * 1024
#: Seconds a connection may send nothing (headers or body) before it is dropped, so idle or
#: half-sent requests cannot pin the server's threads; before authentication too.
IDLE_TIMEOUT = 10.0
_METHODS = ("GET /health, GET /status, POST /peers, POST /chunks, POST /store, POST /credentials, "
            "POST /bwlimit, POST /shutdown")


class _BadRequest(Exception):
    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


class ControlServer(ThreadingHTTPServer):
    """Serves one gateway's control API; ``on_shutdown`` is called after ``POST /shutdown`` answered."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, host: str, port: int, *, node: "Controlled", token: str, on_shutdown,
                 tls: ssl.SSLContext | None = None) -> None:
        self.node = node
        self.token = token.encode()
        self.on_shutdown = on_shutdown
        self.tls = tls
        super().__init__((host, port), _Handler)

    def finish_request(self, request, client_address) -> None:
        # The handshake runs in the request's own thread (not in the accept loop, where one silent
        # client would block every other), bounded by the idle timeout like the request itself.
        if self.tls is None:
            super().finish_request(request, client_address)
            return
        request.settimeout(IDLE_TIMEOUT)
        try:
            wrapped = self.tls.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            log.debug("control: TLS handshake from %s failed: %s", client_address[0], exc)
            return
        try:
            super().finish_request(wrapped, client_address)
        finally:
            self.shutdown_request(wrapped)  # the plain socket it wrapped is detached: closing that is a no-op

    @property
    def port(self) -> int:
        return self.server_address[1]

    def start(self) -> None:
        # 20 idle wake-ups a second cost nothing; shutdown() does not wait for the next one.
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, name="control",
                         daemon=True).start()

    def shutdown(self) -> None:
        """Stop the serve loop now. ``BaseServer.shutdown`` waits for the loop's next poll (up to 50 ms),
        at the end of every job, in every gateway process, while the coordinator waits for them to exit
        before it reports the outcome: a connection to itself wakes the loop at once."""
        stopper = threading.Thread(target=super().shutdown, name="control-stop", daemon=True)
        stopper.start()
        while stopper.is_alive():
            try:
                socket.create_connection(self.server_address[:2], timeout=0.5).close()
            except OSError:
                pass  # not listening any more, or refused: the poll still ends the loop
            stopper.join(0.005)


class _Handler(BaseHTTPRequestHandler):
    server: ControlServer
    server_version = "skyplane-gateway"
    sys_version = ""
    timeout = IDLE_TIMEOUT
    _after = None  # what to do once the answer is sent

    def do_GET(self) -> None:  # noqa: N802 - the http.server naming
        self._dispatch({"/health": self._health, "/status": self._status})

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch({"/peers": self._peers, "/chunks": self._chunks, "/store": self._store,
                        "/credentials": self._credentials, "/bwlimit": self._bwlimit, "/shutdown": self._shutdown})

    def _other_method(self) -> None:
        # http.server would answer 501 with an HTML page; this API answers 405 in JSON, after auth.
        self._dispatch({})

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = do_TRACE = do_CONNECT = _other_method

    def _dispatch(self, routes: dict) -> None:
        try:
            if not self._authorized():
                raise _BadRequest(HTTPStatus.UNAUTHORIZED, "missing or wrong bearer token")
            self.server.node.touch()
            url = urlsplit(self.path)
            route = routes.get(url.path)
            if route is None and self.command not in ("GET", "POST"):
                raise _BadRequest(HTTPStatus.METHOD_NOT_ALLOWED, f"method {self.command} is not used; the API is "
                                  f"{_METHODS}")
            if route is None:
                raise _BadRequest(HTTPStatus.NOT_FOUND, f"no such endpoint: {self.command} {url.path} (the API is "
                                  f"{_METHODS})")
            answer = route(url)
            reply_json(self, HTTPStatus.OK, answer)
        except _BadRequest as exc:
            reply_json(self, exc.status, {"error": str(exc)})
        except BadInputError as exc:
            reply_json(self, HTTPStatus.BAD_REQUEST, {"error": str(exc)})
        except SkyplaneError as exc:  # a store refused or failed (POST /store)
            reply_json(self, HTTPStatus.UNPROCESSABLE_ENTITY, store_error_doc(exc))
        except Exception as exc:  # noqa: BLE001 - answer 500 and keep serving
            log.exception("control API error on %s %s", self.command, self.path)
            reply_json(self, HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"internal error: {exc!r}"})
        if self._after is not None:
            self._after()

    def _authorized(self) -> bool:
        header = self.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self.server.token)

    def _body(self) -> object:
        length = self.headers.get("Content-Length")
        if length is None or not _is_natural(length):
            raise _BadRequest(HTTPStatus.LENGTH_REQUIRED, "a JSON body with Content-Length is required")
        if int(length) > MAX_BODY:
            raise _BadRequest(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body larger than {MAX_BODY} bytes")
        try:
            raw = self.rfile.read(int(length))
        except TimeoutError:
            raise _BadRequest(HTTPStatus.REQUEST_TIMEOUT, f"the body did not arrive within {IDLE_TIMEOUT:.0f} s") \
                from None
        if len(raw) != int(length):
            raise _BadRequest(HTTPStatus.BAD_REQUEST, f"the body ended after {len(raw)} of {length} bytes")
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise _BadRequest(HTTPStatus.BAD_REQUEST, f"body is not JSON: {exc}") from None

    # ---- endpoints ----------------------------------------------------------------------------------
    def _health(self, url) -> dict:
        return self.server.node.health()

    def _status(self, url) -> dict:
        query = parse_qs(url.query)
        values = query.get("since", ["0"])
        if len(values) != 1 or not _is_natural(values[0]):
            raise _BadRequest(HTTPStatus.BAD_REQUEST, "since must be a non-negative integer")
        waits = query.get("wait", ["0"])
        try:
            wait = float(waits[0]) if len(waits) == 1 else -1.0
        except ValueError:
            wait = -1.0
        if not 0.0 <= wait <= MAX_WAIT:  # also refuses nan and inf
            raise _BadRequest(HTTPStatus.BAD_REQUEST, f"wait must be a number of seconds from 0 to {MAX_WAIT:g}")
        return self.server.node.status(int(values[0]), wait)

    def _peers(self, url) -> dict:
        self.server.node.set_peers(parse_peers(self._body()))
        return {"ok": True}

    def _chunks(self, url) -> dict:
        return {"accepted": self.server.node.submit(self._body())}

    def _store(self, url) -> dict:
        return self.server.node.store_op(self._body())

    def _credentials(self, url) -> dict:
        return self.server.node.update_credentials(self._body())

    def _bwlimit(self, url) -> dict:
        body = self._body()
        if not isinstance(body, dict) or set(body) != {"bytes_per_second"}:
            raise _BadRequest(HTTPStatus.BAD_REQUEST, 'the body must be {"bytes_per_second": number or null}')
        self.server.node.set_bwlimit(check_rate(body["bytes_per_second"], "bytes_per_second"))
        return {"ok": True}

    def _shutdown(self, url) -> dict:
        self._after = self.server.on_shutdown
        return {"ok": True}

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the http.server signature
        log.debug("control %s: %s", self.address_string(), format % args)


def _is_natural(text: str) -> bool:
    """ASCII digits only: ``str.isdigit`` also accepts characters like '²' that ``int`` refuses."""
    return text.isascii() and text.isdigit()
