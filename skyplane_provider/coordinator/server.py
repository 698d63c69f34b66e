"""The coordinator's HTTP API (docs/coordinator.md): bearer token on every request, JSON answers.

| call                | answer                                                                  |
|---------------------|-------------------------------------------------------------------------|
| ``GET /job``        | ``{"job_id", "state", "progress", "error"?, "error_type"?}``            |
| ``GET /job?wait=S`` | the same, once the job has ended or after ``S`` seconds (at most        |
|                     | :data:`MAX_WAIT`): a watcher sees the end at once, not at its next poll |
| ``GET /job/result`` | the stats when succeeded, ``{"error", "error_type", "failed_objects"}`` |
|                     | when failed or cancelled; 409 while the job runs; ``?last=1``: no other |
|                     | client will ask (the coordinator exits without its 2 s grace)           |
| ``POST /job/cancel``| ``{"ok": true}``; the job stops, aborts its uploads, tears down         |
| ``POST /job/credentials`` | ``{"credentials": {key: entry}}`` -> ``{"ok": true, "gateways": n}``: |
|                     | renewed entries, passed on to the gateways holding store credentials;   |
|                     | 400 for a malformed document or entry, 409 once the job has ended       |
|                     | (or takes none yet), with the job's ``state``                           |
| ``GET /health``     | ``{"ok": true, "job_id", "pid"}``                                       |

Every call but ``POST /job/credentials`` is cheap (no store access), so clients may poll them every
few seconds; renewed credentials are held in memory only, never written to the job's files. The token is
compared in constant time; a wrong one answers 401. With a certificate and key the server speaks TLS
(clients pin the certificate).
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import os
import ssl
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable
from urllib.parse import parse_qs, urlsplit

from gateway.events import error_type
from gateway.json_reply import reply_json
from planner.errors import ConflictError, SkyplaneError

from .state import JobState

log = logging.getLogger(__name__)

#: Seconds a connection may stay silent before it is dropped (idle clients cannot pin threads).
IDLE_TIMEOUT = 10.0
_API = "GET /job, GET /job/result, POST /job/cancel, POST /job/credentials, GET /health"
#: The largest request body read (a credentials document of a few entries is a few KiB).
MAX_BODY = 1024 * 1024
#: Seconds ``GET /job?wait=`` holds its answer at most (well below the clients' 10 s timeout).
MAX_WAIT = 5.0


class CoordinatorServer(ThreadingHTTPServer):
    """Serves one job's :class:`JobState` on ``(host, port)`` (port 0: any free one)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, job: JobState, token: str, *, host: str = "127.0.0.1", port: int = 0,
                 tls: ssl.SSLContext | None = None) -> None:
        self.job = job
        self._token = token.encode()
        super().__init__((host, port), _Handler)
        self.scheme = "http"
        if tls is not None:
            self.socket = tls.wrap_socket(self.socket, server_side=True)
            self.scheme = "https"
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return self.url_at(self.server_address[0])

    def url_at(self, host: str) -> str:
        """This server's URL as clients reach it at ``host`` (its own address, or a NAT's that maps onto it)."""
        return f"{self.scheme}://{f'[{host}]' if ':' in host else host}:{self.server_address[1]}"

    def authorized(self, header: str) -> bool:
        scheme, _, token = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self._token)

    def start(self) -> "CoordinatorServer":
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="coordinator-api", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self.shutdown()
            self._thread.join(timeout=5)
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    server: CoordinatorServer
    server_version = "skyplane-coordinator"
    sys_version = ""
    timeout = IDLE_TIMEOUT
    _after_reply: Callable[[], None] | None = None  # what a call does once its answer is written

    def do_GET(self) -> None:  # noqa: N802 - the http.server naming
        self._route({"/job": self._job, "/job/result": self._result, "/health": self._health})

    def do_POST(self) -> None:  # noqa: N802
        self._route({"/job/cancel": self._cancel, "/job/credentials": self._credentials})

    def _other(self) -> None:
        self._route({})

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = do_TRACE = do_CONNECT = _other

    def _route(self, routes: dict) -> None:
        if not self.server.authorized(self.headers.get("Authorization", "")):
            reply_json(self, HTTPStatus.UNAUTHORIZED, {"error": "missing or wrong bearer token"})
            return
        route = routes.get(self.path.split("?", 1)[0])
        if route is None:
            status = HTTPStatus.NOT_FOUND if self.command in ("GET", "POST") else HTTPStatus.METHOD_NOT_ALLOWED
            reply_json(self, status, {"error": f"no such call: {self.command} {self.path} (the API is {_API})"})
            return
        try:
            status, doc = route()
        except Exception as exc:  # noqa: BLE001 - answer 500 and keep serving
            log.exception("coordinator API error on %s %s", self.command, self.path)
            status, doc = HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"internal error: {exc!r}"}
        reply_json(self, status, doc)
        after, self._after_reply = self._after_reply, None  # one connection may carry more calls
        if after is not None:
            after()

    def _job(self) -> tuple[HTTPStatus, dict]:
        wait = parse_qs(urlsplit(self.path).query).get("wait", ["0"])[-1]
        try:
            seconds = float(wait)
        except ValueError:
            seconds = math.nan
        if not 0 <= seconds < math.inf:
            return HTTPStatus.BAD_REQUEST, {"error": f"wait must be a number of seconds >= 0, not {wait!r}"}
        if seconds:
            self.server.job.finished.wait(min(seconds, MAX_WAIT))
        return HTTPStatus.OK, self.server.job.view()

    def _result(self) -> tuple[HTTPStatus, dict]:
        doc = self.server.job.outcome()
        if doc is None:
            return HTTPStatus.CONFLICT, {"error": f"job {self.server.job.job_id} is still {self.server.job.state}"}
        if parse_qs(urlsplit(self.path).query).get("last") == ["1"]:
            # Once the answer is out, not before: the coordinator then exits at once.
            self._after_reply = self.server.job.last_read.set
        return HTTPStatus.OK, doc

    def _cancel(self) -> tuple[HTTPStatus, dict]:
        log.warning("job %s: cancel requested over the API", self.server.job.job_id)
        self.server.job.cancel_requested.set()
        return HTTPStatus.OK, {"ok": True}

    def _credentials(self) -> tuple[HTTPStatus, dict]:
        length = int(self.headers.get("Content-Length") or 0)
        if not 0 < length <= MAX_BODY:
            return HTTPStatus.BAD_REQUEST, {"error": f"send a JSON body of 1 to {MAX_BODY} bytes"}
        try:
            doc = json.loads(self.rfile.read(length))
        except ValueError:
            doc = None
        entries = doc.get("credentials") if isinstance(doc, dict) else None
        if not (isinstance(entries, dict) and entries
                and all(isinstance(k, str) and isinstance(v, dict) for k, v in entries.items())):
            return HTTPStatus.BAD_REQUEST, {"error": 'send {"credentials": {KEY: ENTRY, ...}}, KEY a store root URI '
                                                     'or a scheme as in the credentials document'}
        try:
            gateways = self.server.job.push_credentials(entries)
        except ConflictError as exc:
            # The state tells a job that takes none yet (push again) from one that has ended (stop).
            return HTTPStatus.CONFLICT, {"error": str(exc), "state": self.server.job.state}
        except SkyplaneError as exc:
            return HTTPStatus.BAD_REQUEST, {"error": str(exc), "error_type": error_type(exc)}
        log.info("job %s: renewed credentials for %s passed on to %d gateways", self.server.job.job_id,
                 ", ".join(sorted(entries)), gateways)
        return HTTPStatus.OK, {"ok": True, "gateways": gateways}

    def _health(self) -> tuple[HTTPStatus, dict]:
        return HTTPStatus.OK, {"ok": True, "job_id": self.server.job.job_id, "pid": os.getpid()}

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the http.server signature
        log.debug("api %s: %s", self.address_string(), format % args)
