"""The receiving side of a gateway: the data port.

Every accepted connection must pass the job handshake within a few seconds or it is dropped; then
its frames are read one by one (headers checked before any body is allocated) and handed to
``on_frame``, which may block: a busy gateway stops reading, and TCP slows the sender down.
A frame that breaks the protocol (another job's, absurd lengths) ends the connection, since the
stream cannot be trusted past it; a connection cut inside a frame reports that chunk as failed
(retryable), so it is sent again at once.
"""

from __future__ import annotations

import logging
import socket
import threading
from typing import Callable

from planner.errors import GatewayError, ProtocolError

from . import wire
from .events import EventLog

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 1024


class DataListener:
    """Binds at construction (``port`` is then known); ``start()`` begins accepting."""

    def __init__(self, host: str, port: int, *, job_id: bytes, secret: bytes, max_chunk: int,
                 on_frame: Callable[[wire.Frame], None], events: EventLog, stop: threading.Event,
                 shared: bool = False) -> None:
        self._job_id, self._secret, self._max_chunk = job_id, secret, max_chunk
        self._on_frame, self._events, self._stop = on_frame, events, stop
        # shared: the workers of one gateway all listen on its port; the kernel spreads connections.
        self._sock = socket.create_server((host, port), backlog=128, reuse_port=shared)
        self.port: int = self._sock.getsockname()[1]
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()

    def start(self) -> None:
        threading.Thread(target=self._accept, name="data-accept", daemon=True).start()

    def close(self) -> None:
        try:
            self._sock.close()
        finally:
            with self._lock:
                conns = list(self._conns)
            for c in conns:
                try:
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, addr = self._sock.accept()
            except OSError:
                return  # closed
            with self._lock:
                if len(self._conns) >= MAX_CONNECTIONS:
                    conn.close()
                    log.warning("refused a data connection from %s: %d connections open", addr, MAX_CONNECTIONS)
                    continue
                self._conns.add(conn)
            threading.Thread(target=self._serve, args=(conn, addr), name=f"recv-{addr[0]}:{addr[1]}",
                             daemon=True).start()

    def _serve(self, conn: socket.socket, addr: tuple) -> None:
        peer = f"{addr[0]}:{addr[1]}"
        loopback = wire.is_loopback(addr[0])
        try:
            wire.tune(conn)
            try:
                wire.server_handshake(conn, job_id=self._job_id, secret=self._secret)
            except (ProtocolError, OSError) as exc:
                log.warning("refused data connection from %s: %s", peer, exc)
                self._events.error(f"refused data connection from {peer}: {exc}")
                return
            while not self._stop.is_set():
                try:
                    frame = wire.recv_frame(conn, job_id=self._job_id, max_chunk=self._max_chunk, via_loopback=loopback)
                except ProtocolError as exc:
                    self._events.count("frames_rejected")
                    self._events.error(f"dropped connection from {peer}: {exc}")
                    log.warning("dropped data connection from %s: %s", peer, exc)
                    return
                except wire.TruncatedFrame as exc:
                    # The sender believes the frame went out: say so now rather than let the
                    # orchestrator wait for its stall timeout before sending the chunk again.
                    self._events.count("frames_rejected")
                    self._events.failed(exc.header.chunk_id,
                                        GatewayError(f"connection from {peer} ended inside the frame"),
                                        retryable=True)
                    log.warning("data connection from %s ended inside a frame: %s", peer, exc)
                    return
                if frame is None:
                    return
                self._events.count("bytes_received_wire", frame.size)
                self._on_frame(frame)
        except OSError as exc:
            if not self._stop.is_set():
                log.info("data connection from %s ended: %s", peer, exc)
        finally:
            with self._lock:
                self._conns.discard(conn)
            conn.close()
