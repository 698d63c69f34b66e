"""Store operations over a socket a job's client shares with its first local gateway, before that
gateway has its config (docs/gateway.md, "Store channel").

A local job's first gateway process starts while its client still checks the stores and reads the
first listing page (skyplane_provider/provisioners/spares.py). Both need the store SDKs, whose imports
(0.2-0.5 CPU-s each: boto3, azure-storage-blob; google-cloud-storage before the GCS store spoke the
JSON API itself) are most of a small job's client CPU; the gateway imports them anyway for its own
reads and writes. So the client sends its
store operations to that gateway (``--store-fd``: one end of a socket pair, handed down by the
coordinator), which runs them with the client's credentials document and this host's environment
(the gateway inherits the client's), and only one process of the job imports the SDKs.

One request per line: the body of ``POST /store`` (gateway/store_api.py) plus ``"credentials"``;
one answer per line: ``{"ok": answer}``, or the store's error as ``POST /store`` answers it
(control_client.store_error_doc), which :class:`StoreChannel` raises again as the same class.
The gateway retries nothing: the client runs each call under the retries it would give the store.
A channel that breaks (the gateway died, or never started) is not an error: the client then runs
the operation itself, as it did before this channel existed.
"""

from __future__ import annotations

import json
import logging
import socket
import threading

from planner.errors import SkyplaneError, StoreError

from . import store_api
from .control_client import store_error, store_error_doc
from .stores import open_store

log = logging.getLogger(__name__)

#: Seconds one operation may take on the channel before the client runs it itself (a listing page of
#: 1,000 keys on a slow store takes seconds; a stopped gateway never answers).
CHANNEL_TIMEOUT = 120.0


def run(doc: object) -> dict:
    """One request: a ``POST /store`` body with the ``credentials`` document to open the store with."""
    credentials = doc.pop("credentials", None) if isinstance(doc, dict) else None
    if not isinstance(credentials, dict):
        raise StoreError("a store channel request needs its credentials document")
    return store_api.run(doc, lambda root: open_store(root, credentials), lambda call, what: call())


def serve(sock: socket.socket) -> None:
    """Answer the requests on ``sock`` until the other end closes it (the gateway's side)."""
    with sock, sock.makefile("rb") as lines:
        for line in lines:
            try:
                answer = {"ok": run(json.loads(line))}
            except SkyplaneError as exc:
                answer = store_error_doc(exc)
            except Exception as exc:  # noqa: BLE001 - the client raises it; this gateway keeps serving
                log.exception("store channel request failed")
                answer = store_error_doc(StoreError(f"the store operation failed in the gateway: {exc!r}"))
            try:
                sock.sendall(json.dumps(answer, separators=(",", ":")).encode() + b"\n")
            except OSError:
                return  # the client is gone


def start_serving(fd: int) -> None:
    """Serve the socket ``fd`` (the gateway's ``--store-fd``) on a thread of its own."""
    threading.Thread(target=serve, args=(socket.socket(fileno=fd),), name="store-channel", daemon=True).start()


class StoreChannel:
    """The client's end: :meth:`request` runs one operation in the gateway, or here once the channel is
    broken or its socket closed (by coordinator/launcher.py, at the job's launch). Thread-safe (one
    request at a time)."""

    def __init__(self, sock: socket.socket) -> None:
        sock.settimeout(CHANNEL_TIMEOUT)
        self._sock: socket.socket | None = sock  # no makefile(): closing the socket must close its fd
        self._buffer = b""
        self._lock = threading.Lock()

    def request(self, doc: dict, credentials: dict) -> dict:
        """The answer of ``doc`` (a ``POST /store`` body) run with ``credentials``; raises the store's error."""
        body = json.dumps({**doc, "credentials": credentials}, separators=(",", ":")).encode() + b"\n"
        with self._lock:
            if self._sock is not None:
                try:
                    self._sock.sendall(body)
                    line = self._readline()
                except OSError as exc:
                    line = b""
                    log.info("store channel broke (%s): running store operations in this process", exc)
                if line:
                    answer = json.loads(line)
                    if "ok" in answer:
                        return answer["ok"]
                    raise store_error(answer)
                self._close()
        return run({**doc, "credentials": credentials})  # imports the store's SDK here

    def _readline(self) -> bytes:
        """The next answer, or b"" at the end of the channel."""
        while b"\n" not in self._buffer:
            data = self._sock.recv(1 << 16)
            if not data:
                return b""
            self._buffer += data
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    def _close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
