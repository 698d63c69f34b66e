"""The sending side of a gateway: frames to the gateways of next-hop regions.

Per peer gateway a :class:`PeerLink` owns a bounded queue and a few persistent, authenticated TCP
connections (each with its own sender thread, opened on first use and re-opened after a failure;
the chunks sent just before a connection broke are reported failed, so they are sent again).
The :class:`Router` picks, per frame and next-hop region, the region's least-loaded link (ties go
round-robin), so a slow peer gets fewer frames and a full queue blocks the caller: backpressure
reaches the reader or the receiving connection, and memory stays bounded.
"""

from __future__ import annotations

import collections
import itertools
import logging
import math
import queue
import select
import socket
import threading
from dataclasses import dataclass

from planner.errors import BadOptionError, GatewayError, ProtocolError

from . import wire
from .bandwidth import Pacer
from .events import EventLog

log = logging.getLogger(__name__)

SEND_ATTEMPTS = 3
#: How long a frame for a region without known peers waits for ``/peers`` before it fails.
PEER_WAIT = 30.0
#: Bytes a broken connection may have swallowed unseen: our send buffer plus the peer's receive
#: buffer (Linux autotunes each to a few MiB at most by default).
AT_RISK_BYTES = 16 * 1024 * 1024
_POLL = 0.5


@dataclass(frozen=True)
class Peer:
    """A next-hop gateway's data address."""

    gateway_id: str
    host: str
    port: int


def parse_peers(doc: object) -> dict[str, list[Peer]]:
    """Check a ``POST /peers`` body: ``{"peers": {region: [{"gateway_id", "host", "data_port"}]}}``."""
    peers = doc.get("peers") if isinstance(doc, dict) else None
    if not isinstance(peers, dict):
        raise BadOptionError('the body must be {"peers": {region: [{"gateway_id", "host", "data_port"}, ...]}}')
    out: dict[str, list[Peer]] = {}
    for region, entries in peers.items():
        if not isinstance(entries, list):
            raise BadOptionError(f"peers[{region!r}] must be a list")
        parsed = []
        for i, e in enumerate(entries):
            where = f"peers[{region!r}][{i}]"
            if not isinstance(e, dict):
                raise BadOptionError(f"{where} must be an object")
            gid, host, port = e.get("gateway_id"), e.get("host"), e.get("data_port")
            if not isinstance(gid, str) or not gid or not isinstance(host, str) or not host:
                raise BadOptionError(f"{where} needs a gateway_id and a host (strings)")
            if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
                raise BadOptionError(f"{where}.data_port must be a port number, got {port!r}")
            parsed.append(Peer(gid, host, port))
        out[region] = parsed
    return out


class PeerLink:
    """Frames to one peer gateway over ``connections`` persistent connections (opened lazily)."""

    def __init__(self, peer: Peer, region: str, connections: int, *, job_id: bytes, secret: bytes,
                 queue_chunks: int, events: EventLog, stop: threading.Event, send_timeout: float = 300.0,
                 encrypted_job: bool = True, pacer: Pacer | None = None) -> None:
        self.peer = peer
        self._pacer = pacer
        self.region = region
        self.loopback = wire.is_loopback(peer.host)
        self._encrypted_job = encrypted_job
        self.connections = connections
        self._job_id, self._secret, self._send_timeout = job_id, secret, send_timeout
        self._queue: queue.Queue[wire.Frame] = queue.Queue(maxsize=queue_chunks)
        self._events = events
        self._stop = stop
        self._closed = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        #: Frames put and not yet sent or failed, under ``_lock``: queued, or in a sender's hands.
        self._unsent = 0

    def load(self) -> int:
        """Frames this link may still send: queued, or being sent. A frame in a sender's hands
        counts: paced by a bandwidth cap it may take seconds, and a gateway draining after its
        orchestrator died (daemon.py) stopped in the middle of it once the queue was empty."""
        with self._lock:
            return self._unsent

    def put(self, frame: wire.Frame) -> bool:
        """Queue a frame (blocking while the queue is full); False if the link closed meanwhile."""
        self._start()
        with self._lock:
            self._unsent += 1  # before it is queued: a sender may take it at once
        while not (self._closed.is_set() or self._stop.is_set()):
            try:
                self._queue.put(frame, timeout=_POLL)
                return True
            except queue.Full:
                continue
        self._done()
        return False

    def _done(self) -> None:
        """A frame :meth:`put` counted is sent, or failed."""
        with self._lock:
            self._unsent -= 1

    def close(self) -> None:
        """Stop the senders; frames still queued are reported as failed (the orchestrator re-sends)."""
        self._closed.set()
        while True:
            try:
                frame = self._queue.get_nowait()
            except queue.Empty:
                break
            self._done()
            self._events.failed(frame.header.chunk_id, GatewayError(
                f"peer {self.peer.gateway_id} was removed before the chunk could be sent to it"), retryable=True)

    def grow(self, connections: int) -> None:
        """Use at least ``connections`` connections (when a region has fewer gateways left)."""
        with self._lock:
            self.connections = max(self.connections, connections)
            started = bool(self._threads)
        if started:
            self._start()

    def _start(self) -> None:
        with self._lock:
            for i in range(len(self._threads), self.connections):
                t = threading.Thread(target=self._run, name=f"send-{self.peer.gateway_id}-{i}", daemon=True)
                t.start()
                self._threads.append(t)

    def _run(self) -> None:
        conn: _Connection | None = None
        try:
            while not (self._closed.is_set() or self._stop.is_set()):
                try:
                    frame = self._queue.get(timeout=_POLL)
                except queue.Empty:
                    if conn is not None and conn.closed_by_peer():
                        self._lost(conn, "the peer closed the connection")
                        conn = None
                    continue
                try:
                    conn = self._send(conn, frame)
                finally:
                    self._done()
                del frame  # not held while waiting for the next one: its buffers may be reused (node.py)
        finally:
            if conn is not None:
                conn.sock.close()

    def _send(self, conn: "_Connection | None", frame: wire.Frame) -> "_Connection | None":
        """Send one frame, (re)connecting as needed; returns the connection to keep using."""
        if self._encrypted_job and not frame.header.encrypted and not self.loopback:
            # Sent in the clear for a loopback hop (codec.encode), but the peers changed since: never
            # let it leave the host. Sent again, the chunk is encrypted.
            self._events.failed(frame.header.chunk_id, GatewayError(
                f"chunk {frame.header.chunk_id} is not encrypted and {self.peer.gateway_id} at {self.peer.host} "
                "is not on this host"), retryable=True)
            return conn
        for attempt in range(1, SEND_ATTEMPTS + 1):
            try:
                if conn is None:
                    conn = _Connection(wire.connect(self.peer.host, self.peer.port, job_id=self._job_id,
                                                    secret=self._secret, send_timeout=self._send_timeout))
                wire.send_frame(conn.sock, frame, self._pacer)
                conn.sent(frame)
                self._events.sent_to(self.region, frame.size)
                return conn
            except (OSError, ProtocolError) as exc:
                if conn is not None:
                    self._lost(conn, str(exc))
                    conn = None
                # A peer that refused us (its refusal message) or could not prove the secret will do so
                # again: only network trouble is retried, a connection cut inside the handshake included.
                final = attempt == SEND_ATTEMPTS or isinstance(exc, ProtocolError) or self._closed.is_set()
                if final:
                    log.warning("could not send chunk %d to %s: %s", frame.header.chunk_id, self.peer.gateway_id, exc)
                    refused = isinstance(exc, ProtocolError)
                    error = (ProtocolError if refused else GatewayError)(
                        f"could not send to {self.peer.gateway_id} at {self.peer.host}:{self.peer.port}: {exc}")
                    self._events.failed(frame.header.chunk_id, error, retryable=not refused)
                    return None
                self._events.count("retries")
                self._stop.wait(0.2 * 2**attempt)
        return conn

    def _lost(self, conn: "_Connection", why: str) -> None:
        """A connection broke: the frames it may have swallowed are reported failed (retryable), so
        the orchestrator re-sends them now instead of after its stall timeout. A copy that did
        arrive is only confirmed again by the writer."""
        conn.sock.close()
        chunks = conn.at_risk()
        if chunks:
            log.warning("connection to %s broke (%s): %d recently sent chunk(s) may be lost", self.peer.gateway_id,
                        why, len(chunks))
        for chunk_id in chunks:
            self._events.failed(chunk_id, GatewayError(f"the connection to {self.peer.gateway_id} broke ({why}) "
                                                       "shortly after the chunk was sent"), retryable=True)


class _Connection:
    """An authenticated data connection and the frames recently sent on it.

    There are no acknowledgements: a frame whose bytes sit in our send buffer or the peer's receive
    buffer when the connection breaks is lost without a trace. So the newest frames, up to
    :data:`AT_RISK_BYTES`, are remembered for :meth:`PeerLink._lost`.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._recent: collections.deque[tuple[int, int]] = collections.deque()  # (chunk id, bytes)
        self._bytes = 0

    def sent(self, frame: wire.Frame) -> None:
        self._recent.append((frame.header.chunk_id, frame.size))
        self._bytes += frame.size
        while len(self._recent) > 1 and self._bytes - self._recent[0][1] >= AT_RISK_BYTES:
            self._bytes -= self._recent.popleft()[1]

    def at_risk(self) -> list[int]:
        return list(dict.fromkeys(cid for cid, _ in self._recent))

    def closed_by_peer(self) -> bool:
        """The receiver never writes after the handshake: a readable socket means EOF or a reset."""
        try:
            return bool(select.select([self.sock], [], [], 0)[0])
        except (OSError, ValueError):
            return True


class Router:
    """Picks a peer gateway of a next-hop region for each frame and queues the frame on its link.

    ``hops``: next-hop region -> connections this gateway opens towards the region (the program's
    ``Hop.connections``, split evenly over the region's gateways, at least one each). Every link's
    sends take their bytes from ``pacer`` (the gateway's share of the job's bandwidth cap).
    """

    def __init__(self, hops: dict[str, int], *, job_id: bytes, secret: bytes, queue_chunks: int,
                 events: EventLog, stop: threading.Event, encrypted_job: bool = True,
                 pacer: Pacer | None = None) -> None:
        self._hops = hops
        self._pacer = pacer
        self._encrypted_job = encrypted_job
        self._job_id, self._secret, self._queue_chunks = job_id, secret, queue_chunks
        self._events, self._stop = events, stop
        self._links: dict[str, list[PeerLink]] = {}
        self._changed = threading.Condition()
        self._rr = itertools.count()

    def set_peers(self, peers: dict[str, list[Peer]]) -> None:
        """Replace the peers of the given regions; links to peers no longer listed are closed."""
        with self._changed:
            for region, plist in peers.items():
                if region not in self._hops:
                    log.info("ignoring peers of %s: not a next hop of this gateway", region)
                    continue
                old = {link.peer: link for link in self._links.get(region, [])}
                per_peer = max(1, math.ceil(self._hops[region] / max(1, len(plist))))
                links = []
                for p in dict.fromkeys(plist):
                    link = old.pop(p, None)
                    if link is None:
                        link = PeerLink(p, region, per_peer, job_id=self._job_id, secret=self._secret,
                                        queue_chunks=self._queue_chunks, events=self._events, stop=self._stop,
                                        encrypted_job=self._encrypted_job, pacer=self._pacer)
                    else:
                        link.grow(per_peer)
                    links.append(link)
                self._links[region] = links
                for gone in old.values():
                    gone.close()
                log.info("peers of %s: %s", region, ", ".join(f"{p.gateway_id}@{p.host}:{p.port}" for p in plist))
            self._changed.notify_all()

    def loopback(self, region: str) -> bool:
        """Whether every known gateway of next-hop ``region`` is on this host (a loopback address)."""
        with self._changed:
            links = self._links.get(region)
            return bool(links) and all(link.loopback for link in links)

    def send(self, region: str, frame: wire.Frame) -> None:
        """Queue ``frame`` for one gateway of ``region``; blocks while every link is full.

        When the region has no peers for :data:`PEER_WAIT` seconds the chunk is reported failed.
        """
        waited = 0.0
        while not self._stop.is_set():
            with self._changed:
                links = self._links.get(region)
                if not links:
                    if waited >= PEER_WAIT:
                        self._events.failed(frame.header.chunk_id,
                                            GatewayError(f"no gateway of {region} is known to send to"),
                                            retryable=True)
                        return
                    self._changed.wait(_POLL)
                    waited += _POLL
                    continue
                turn = next(self._rr)
                link = min((links[(turn + i) % len(links)] for i in range(len(links))), key=PeerLink.load)
            if link.put(frame):
                return

    def load(self) -> int:
        """Frames queued or being sent on every link."""
        with self._changed:
            return sum(link.load() for links in self._links.values() for link in links)

    def close(self) -> None:
        with self._changed:
            for links in self._links.values():
                for link in links:
                    link.close()
            self._links.clear()
