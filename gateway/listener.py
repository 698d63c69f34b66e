"""The receiving side of a gateway: the data port.

A gateway of one process listens on it itself. A gateway of several workers (gateway/supervisor.py)
listens in its supervisor, whose :class:`HandOver` passes each accepted connection to one worker in
turn over a private Unix socket (``SCM_RIGHTS``); the worker's :class:`DataListener` then serves it
exactly as if it had accepted it.

With a ``budget``, a frame's body is read only once its bytes fit (the frames received and not yet
written or forwarded hold them until they are gone): a burst waits in the socket buffers, as a busy
gateway's, instead of in chunk-sized buffers faulted in afresh.

Every accepted connection must pass the job handshake within a few seconds or it is dropped; then
its frames are read one by one (headers checked before any body is allocated) and handed to
``on_frame``, which may block: a busy gateway stops reading, and TCP slows the sender down.
A frame that breaks the protocol (another job's, absurd lengths) ends the connection, since the
stream cannot be trusted past it; a connection cut inside a frame reports that chunk as failed
(retryable), so it is sent again at once.
"""

from __future__ import annotations

import itertools
import logging
import socket
import threading
import weakref
from typing import Callable

from planner.errors import GatewayError, ProtocolError

from . import wire
from .buffers import ByteBudget
from .events import EventLog

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 1024


class DataListener:
    """Binds at construction (``port`` is then known); ``start()`` begins accepting.

    With ``handoff`` (a supervised worker) it binds nothing: its connections come from the
    supervisor's :class:`HandOver` through that socket, and ``port`` is the gateway's data port."""

    def __init__(self, host: str, port: int, *, job_id: bytes, secret: bytes, max_chunk: int,
                 on_frame: Callable[[wire.Frame], None], events: EventLog, stop: threading.Event,
                 handoff: socket.socket | None = None, alloc: Callable[[int], bytearray] = bytearray,
                 budget: ByteBudget | None = None) -> None:
        self._job_id, self._secret, self._max_chunk, self._alloc = job_id, secret, max_chunk, alloc
        self._budget = budget
        self._on_frame, self._events, self._stop = on_frame, events, stop
        self._handoff = handoff
        self._sock = None if handoff is not None else socket.create_server((host, port), backlog=128)
        self.port: int = port if self._sock is None else self._sock.getsockname()[1]
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()

    def start(self) -> None:
        target = self._accept if self._handoff is None else self._take_over
        threading.Thread(target=target, name="data-accept", daemon=True).start()

    def open_connections(self) -> int:
        """Data connections open now (a peer that may still send)."""
        with self._lock:
            return len(self._conns)

    def close(self) -> None:
        try:
            if self._handoff is not None:
                try:
                    self._handoff.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in recv_fds
                except OSError:
                    pass
            (self._sock or self._handoff).close()
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
            self._serve_in_thread(conn, addr)

    def _take_over(self) -> None:
        """Serve the connections the supervisor passes (one descriptor per message) until it closes."""
        while not self._stop.is_set():
            try:
                msg, fds, _, _ = socket.recv_fds(self._handoff, 1, 1)
            except OSError:
                return  # closed
            if not msg and not fds:
                return  # the supervisor is gone
            for fd in fds:
                conn = socket.socket(fileno=fd)
                try:
                    addr = conn.getpeername()
                except OSError:  # the peer left while the connection was passed on
                    conn.close()
                    continue
                self._serve_in_thread(conn, addr)

    def _serve_in_thread(self, conn: socket.socket, addr: tuple) -> None:
        with self._lock:
            if len(self._conns) >= MAX_CONNECTIONS:
                conn.close()
                log.warning("refused a data connection from %s: %d connections open", addr, MAX_CONNECTIONS)
                return
            self._conns.add(conn)
        threading.Thread(target=self._serve, args=(conn, addr), name=f"recv-{addr[0]}:{addr[1]}",
                         daemon=True).start()

    def _recv_frame(self, conn: socket.socket, loopback: bool) -> wire.Frame | None:
        """The next frame (:func:`wire.recv_frame`), its body read once it fits the budget, which it
        holds until it is gone."""
        if self._budget is None:
            return wire.recv_frame(conn, job_id=self._job_id, max_chunk=self._max_chunk, via_loopback=loopback,
                                   alloc=self._alloc)
        held = 0

        def hold(header: wire.Header) -> None:
            nonlocal held
            if not self._budget.acquire(header.wire_length, self._stop):
                raise ConnectionError("the gateway is stopping")
            held = header.wire_length

        try:
            frame = wire.recv_frame(conn, job_id=self._job_id, max_chunk=self._max_chunk, via_loopback=loopback,
                                    alloc=self._alloc, on_header=hold)
        except BaseException:
            if held:
                self._budget.release(held)
            raise
        if held:
            weakref.finalize(frame, self._budget.release, held).atexit = False
        return frame

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
                    frame = self._recv_frame(conn, loopback)
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
                del frame  # not held while waiting for the next one: it holds the budget (and its buffers)
        except OSError as exc:
            if not self._stop.is_set():
                log.info("data connection from %s ended: %s", peer, exc)
        finally:
            with self._lock:
                self._conns.discard(conn)
            conn.close()


class HandOver:
    """The data port of a gateway of several workers: accepts in the supervisor and passes each
    connection to the next live worker, round robin, over a ``SOCK_SEQPACKET`` pair per worker.

    Why not ``SO_REUSEPORT`` with every worker listening: the kernel picks a listener by a hash of the
    peer's address and port, and with a hop's handful of connections it often gives all of them to
    one worker (seen: 4 of 4 connections on one of two workers about 1 time in 8), which leaves the
    other cores idle and makes a dead worker take every connection down with it."""

    def __init__(self, host: str, port: int, workers: int) -> None:
        self._sock = socket.create_server((host, port), backlog=128)
        self.port: int = self._sock.getsockname()[1]
        self._ends: list[socket.socket | None] = [None] * workers  # the supervisor's end, per worker
        self._turn = itertools.count()
        self._lock = threading.Lock()

    def channel(self, worker: int) -> socket.socket:
        """A new channel to ``worker`` (at each (re)start): returns the worker's end, which the caller
        passes to the worker process and then closes."""
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with self._lock:
            old, self._ends[worker] = self._ends[worker], mine
        if old is not None:
            old.close()
        return theirs

    def start(self) -> None:
        threading.Thread(target=self._accept, name="data-handover", daemon=True).start()

    def close(self) -> None:
        self._sock.close()
        with self._lock:
            ends, self._ends = self._ends, [None] * len(self._ends)
        for end in ends:
            if end is not None:
                end.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, addr = self._sock.accept()
            except OSError:
                return  # closed
            with conn:
                if not self._pass(conn):
                    log.warning("dropped a data connection from %s:%s: no worker is up", addr[0], addr[1])

    def _pass(self, conn: socket.socket) -> bool:
        """Give ``conn`` to the next worker that takes it (a dead worker's channel refuses)."""
        n = len(self._ends)
        for _ in range(n):
            with self._lock:
                end = self._ends[next(self._turn) % n]
            if end is None:
                continue
            try:
                socket.send_fds(end, [b"c"], [conn.fileno()])
                return True
            except OSError:
                continue
        return False
