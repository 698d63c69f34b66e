"""A man-in-the-middle for a gateway's data port that damages chosen frames (real TCP, for fault tests).

    proxy = FrameTamperProxy(("127.0.0.1", dst_data_port), corrupt={1, 4}, truncate={7})
    port = proxy.start()        # give peers 127.0.0.1:port instead of the real data port

It relays the handshake untouched (it cannot forge it: it holds no job secret), then reads the
sender's stream frame by frame. Frames are numbered in arrival order across all connections,
from 0; a frame in ``corrupt`` goes on with one byte of its body flipped, a frame in ``truncate``
goes on with half its body and then both sides of that connection are closed, as a network cut
would. Everything else is forwarded byte for byte. ``counts`` tells what it did. Loopback only.
"""

from __future__ import annotations

import dataclasses
import socket
import threading
from dataclasses import dataclass, field

from gateway import wire
from skyplane_provider.provisioners.local import LocalFleet, LocalProvisioner

from .sockets import cut


@dataclass
class FrameCounts:
    frames: int = 0
    corrupted: int = 0
    truncated: int = 0
    connections: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


class FrameTamperProxy:
    """Forwards data connections to ``upstream``, damaging the frames numbered in ``corrupt`` / ``truncate``."""

    def __init__(self, upstream: tuple[str, int], *, corrupt: set[int] = frozenset(),
                 truncate: set[int] = frozenset()) -> None:
        if upstream[0] not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError("the frame proxy only forwards to loopback")
        self.upstream = upstream
        self.corrupt, self.truncate = frozenset(corrupt), frozenset(truncate)
        self.counts = FrameCounts()
        self._server: socket.socket | None = None
        self._stop = threading.Event()

    def start(self) -> int:
        """Listen on a free loopback port and return it."""
        self._server = socket.create_server(("127.0.0.1", 0))
        threading.Thread(target=self._accept, name="frameproxy", daemon=True).start()
        return self._server.getsockname()[1]

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.upstream, timeout=10)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self.counts.lock:
                self.counts.connections += 1
            threading.Thread(target=_pipe, args=(upstream, client), daemon=True).start()
            threading.Thread(target=self._frames, args=(client, upstream), daemon=True).start()

    def _next_frame(self) -> int:
        with self.counts.lock:
            n = self.counts.frames
            self.counts.frames += 1
            return n

    def _frames(self, client: socket.socket, upstream: socket.socket) -> None:
        """Sender -> gateway: the handshake answer as is, then frame by frame."""
        try:
            auth = _read(client, wire.AUTH_SIZE)
            if auth is None:
                return
            upstream.sendall(auth)
            while True:
                header = _read(client, wire.HEADER_SIZE)
                if header is None:
                    return
                wire_length = wire.HEADER.unpack(header)[8]
                body = _read(client, wire_length) if wire_length else b""
                if body is None:
                    return
                n = self._next_frame()
                if n in self.truncate and body:
                    upstream.sendall(header + body[: len(body) // 2])
                    with self.counts.lock:
                        self.counts.truncated += 1
                    return  # the finally below cuts both sides
                if n in self.corrupt and body:
                    damaged = bytearray(body)
                    damaged[len(damaged) // 2] ^= 0x40
                    body = bytes(damaged)
                    with self.counts.lock:
                        self.counts.corrupted += 1
                upstream.sendall(header + body)
        except OSError:
            pass
        finally:
            cut(client, upstream)


def _read(sock: socket.socket, n: int) -> bytes | None:
    """Exactly ``n`` bytes, or None when the stream ends first."""
    buf = bytearray()
    while len(buf) < n:
        got = sock.recv(min(n - len(buf), 1 << 20))
        if not got:
            return None
        buf += got
    return bytes(buf)


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    """Gateway -> sender (only the handshake travels this way)."""
    try:
        while chunk := src.recv(65536):
            dst.sendall(chunk)
    except OSError:
        pass


class TamperingProvisioner(LocalProvisioner):
    """Local gateways, those of the ``regions`` given reached through a :class:`FrameTamperProxy`
    each (their peers get the proxy's port instead of the data port), damaging the frames ``faults``
    name (``corrupt``, ``truncate``). ``proxies`` are the proxies started; stop them after the run."""

    def __init__(self, regions: str | set[str], **faults) -> None:
        super().__init__(one_gateway=False)  # the frames to tamper with cross a hop: a gateway per region
        self.regions = {regions} if isinstance(regions, str) else set(regions)
        self.faults = faults
        self.proxies: list[FrameTamperProxy] = []

    def provision(self, job_id, specs, stop=None) -> LocalFleet:
        fleet = super().provision(job_id, specs, stop)
        handles = []
        for g in fleet.gateways:
            if g.region in self.regions:
                proxy = FrameTamperProxy((g.data_host, g.data_port), **self.faults)
                self.proxies.append(proxy)
                g = dataclasses.replace(g, data_port=proxy.start())
            handles.append(g)
        fleet.gateways = handles
        return fleet
