"""The gateway wire protocol: a per-job handshake, then a stream of framed chunks (docs/wire-protocol.md).

Every data connection starts with a mutual HMAC-SHA256 challenge/response over the job's secret and
id, which the server ends by accepting or by refusing with a reason; only then does the client send
frames, one after the other, never receiving anything back.
A frame is a fixed binary header (:data:`HEADER`) followed by a body of ``wire_length`` bytes:
``meta || payload`` in the clear, or ``nonce || AES-256-GCM(meta || payload)`` when encrypted (see
:mod:`gateway.codec`). The header travels in the clear so that relays can route a frame by its
partition without holding any key; when the frame is encrypted it is the AEAD's associated data,
so any change to it is detected by the writer.

This module only frames bytes on sockets; building and opening bodies is :mod:`gateway.codec`'s job.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import socket
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, NoReturn

from planner.errors import ProtocolError

if TYPE_CHECKING:
    from .bandwidth import Pacer

MAGIC = b"SKYF"
#: One version for the handshake and the frames. 3: the server answers a peer it refuses with a
#: refusal message, so that a connection that ends inside the handshake is told apart from a refusal.
VERSION = 3

FLAG_COMPRESSED = 0x01
FLAG_ENCRYPTED = 0x02
_KNOWN_FLAGS = FLAG_COMPRESSED | FLAG_ENCRYPTED

#: magic, version, flags, reserved, partition, job id, chunk id, raw length, wire length,
#: checksum (a clear frame's CRC32C of its metadata and original bytes; zero when encrypted: the
#: AEAD tag checks it), meta length. Network byte order, 72 bytes.
HEADER = struct.Struct(">4sBBHI16sQQQ16sI")
HEADER_SIZE = HEADER.size

NONCE_SIZE = 12  # AES-GCM nonce, random per frame
TAG_SIZE = 16  # AES-GCM tag
ENCRYPTION_OVERHEAD = NONCE_SIZE + TAG_SIZE
CHECKSUM_SIZE = 16
JOB_ID_SIZE = 16

#: Upper bound of a frame's chunk metadata (a ChunkMeta as JSON: a key and a few numbers per object and
#: destination, up to 1,024 objects of a bundle).
MAX_META = 8 << 20
#: Default upper bound of a frame's raw and wire lengths; a header above it is rejected before
#: anything is allocated.
DEFAULT_MAX_CHUNK = 1 << 30

HANDSHAKE_TIMEOUT = 10.0
_IOV_MAX = 1024  # buffers one sendmsg takes at most (Linux)
_NONCE = 32
_HELLO = struct.Struct(f">4sB{_NONCE}s")  # server -> client: its challenge
_AUTH = struct.Struct(f">4sB{JOB_ID_SIZE}s{_NONCE}s32s")  # client -> server: job, challenge, proof
_ACCEPT = struct.Struct(">4s32s")  # server -> client: its proof
_REFUSE = struct.Struct(">4sB")  # server -> client: why it refuses (a key of _REFUSALS)
_HELLO_MAGIC, _AUTH_MAGIC, _ACCEPT_MAGIC, _REFUSE_MAGIC = b"SKYH", b"SKYA", b"SKYS", b"SKYR"
_MAGIC_SIZE = 4
_MALFORMED, _OTHER_JOB, _BAD_PROOF = 1, 2, 3
#: Refusal reason -> what the refused client is told, and the hint it gives its user.
_REFUSALS = {
    _MALFORMED: ("it did not read a skyplane authentication message of our wire version",
                 "run the same skyplane-provider version on every gateway"),
    _OTHER_JOB: ("it serves another job", "the peer list points at another job's gateway"),
    _BAD_PROOF: ("our proof of the job secret is wrong",
                 "the gateways of one job must share its job_secret: check their configs"),
}
#: What a client sends during the handshake; its first frame follows.
AUTH_SIZE = _AUTH.size


@dataclass(frozen=True)
class Header:
    """The fixed header of one frame."""

    flags: int
    partition: int
    job_id: bytes
    chunk_id: int
    raw_length: int
    wire_length: int
    checksum: bytes
    meta_length: int

    @property
    def compressed(self) -> bool:
        return bool(self.flags & FLAG_COMPRESSED)

    @property
    def encrypted(self) -> bool:
        return bool(self.flags & FLAG_ENCRYPTED)

    @property
    def payload_length(self) -> int:
        """Length of the (possibly compressed) payload inside the body."""
        return self.wire_length - self.meta_length - (ENCRYPTION_OVERHEAD if self.encrypted else 0)

    def pack(self) -> bytes:
        return HEADER.pack(MAGIC, VERSION, self.flags, 0, self.partition, self.job_id, self.chunk_id,
                           self.raw_length, self.wire_length, self.checksum, self.meta_length)

    @classmethod
    def unpack(cls, data: bytes | bytearray | memoryview, *, job_id: bytes,
               max_chunk: int = DEFAULT_MAX_CHUNK) -> "Header":
        """Parse and sanity-check a header; raise :class:`ProtocolError` for anything off.

        Checked before the body is read: magic, version, flags, the job id, and that the lengths are
        consistent and within ``max_chunk`` (so an absurd length never causes an allocation).
        """
        magic, version, flags, _, partition, job, chunk_id, raw, wire, checksum, meta = HEADER.unpack(data)
        if magic != MAGIC:
            raise ProtocolError("not a skyplane frame (bad magic)")
        if version != VERSION:
            raise ProtocolError(f"frame version {version} is not supported (this gateway speaks {VERSION})",
                                hint="run the same skyplane-provider version on every gateway")
        if flags & ~_KNOWN_FLAGS:
            raise ProtocolError(f"frame has unknown flags {flags:#x}")
        if not hmac.compare_digest(job, job_id):
            raise ProtocolError(f"frame of another job ({job.hex()})")
        header = cls(flags, partition, job, chunk_id, raw, wire, checksum, meta)
        overhead = ENCRYPTION_OVERHEAD if header.encrypted else 0
        if meta > MAX_META or raw > max_chunk or wire > max_chunk + MAX_META + overhead:
            raise ProtocolError(f"frame of chunk {chunk_id} is too large ({raw} raw, {wire} on the wire)",
                                hint=f"chunks are limited to {max_chunk} bytes")
        if header.payload_length < 0 or (not header.compressed and header.payload_length != raw):
            raise ProtocolError(f"frame of chunk {chunk_id} has inconsistent lengths")
        return header


class TruncatedFrame(ConnectionError):
    """The stream ended inside the body of a frame whose header was valid: that chunk is lost."""

    def __init__(self, header: Header, message: str) -> None:
        super().__init__(message)
        self.header = header


@dataclass(frozen=True)
class Frame:
    """One frame: its header (parsed and as sent) and its body in one or more buffers (sent back to
    back, never joined), forwarded byte for byte by relays.

    A received clear frame's body is ``(meta, payload)`` (two buffers, so the payload needs no
    slicing), an encrypted one's a single buffer; an encoded encrypted one is
    ``(nonce || sealed meta, sealed payload..., tag)``. ``via_loopback``: it arrived on a connection
    from a loopback address (see :func:`is_loopback`).
    """

    header: Header
    header_bytes: bytes
    body: tuple[bytes | bytearray | memoryview, ...]
    via_loopback: bool = False

    @property
    def size(self) -> int:
        return len(self.header_bytes) + sum(len(b) for b in self.body)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address, or ``localhost``) is this host's loopback: traffic to it never
    leaves the host."""
    if host == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)  # ::ffff:127.0.0.1
    return ip.is_loopback or bool(mapped and mapped.is_loopback)


# ---- frames on sockets --------------------------------------------------------------------------
def send_frame(sock: socket.socket, frame: Frame, pace: Pacer | None = None) -> None:
    """Send one frame: header and body buffers in one ``sendmsg`` (again for what a partial send left),
    without joining or copying them. With a ``pace`` (the job's bandwidth cap, gateway/bandwidth.py)
    each ``sendmsg`` sends only the bytes it grants."""
    views = [memoryview(b).cast("B") for b in (frame.header_bytes, *frame.body) if len(b)]
    while views:
        if pace is None:
            sent = sock.sendmsg(views[:_IOV_MAX])
        else:
            sent = _paced_send(sock, views[:_IOV_MAX], pace)
        while views and sent >= len(views[0]):
            sent -= len(views[0])
            views.pop(0)
        if sent:
            views[0] = views[0][sent:]


def _paced_send(sock: socket.socket, views: list[memoryview], pace: Pacer) -> int:
    """One ``sendmsg`` of the first bytes of ``views`` that ``pace`` grants; what was not sent goes back."""
    granted = pace.take(sum(len(v) for v in views))
    batch, n = [], granted
    for v in views:
        if n <= 0:
            break
        batch.append(v[:n])
        n -= len(batch[-1])
    sent = 0
    try:
        sent = sock.sendmsg(batch)
    finally:
        pace.give_back(granted - sent)
    return sent


def recv_frame(sock: socket.socket, *, job_id: bytes, max_chunk: int = DEFAULT_MAX_CHUNK,
               via_loopback: bool = False, alloc: Callable[[int], bytearray] = bytearray,
               on_header: Callable[[Header], None] | None = None) -> Frame | None:
    """Read one frame; None on a clean end of stream between frames.

    The body is read with ``recv_into`` into buffers of exactly its size (a clear frame's metadata
    and payload apart), taken from ``alloc`` (a :class:`gateway.buffers.BufferPool`'s ``take``:
    contents undefined, each filled whole) only after the header passed :meth:`Header.unpack` and
    ``on_header`` returned (it may wait, or raise to end the connection). Raises
    :class:`ProtocolError` for a bad header, :class:`TruncatedFrame` when the stream ends inside the
    body and ``ConnectionError`` when it ends inside the header.
    """
    raw = bytearray(HEADER_SIZE)
    if not _recv_exact(sock, memoryview(raw), allow_eof=True):
        return None
    header = Header.unpack(raw, job_id=job_id, max_chunk=max_chunk)
    if on_header is not None:
        on_header(header)
    sizes = (header.wire_length,) if header.encrypted else (header.meta_length, header.payload_length)
    body = tuple(alloc(n) for n in sizes)
    try:
        for buf in body:
            _recv_exact(sock, memoryview(buf))
    except ConnectionError as exc:
        raise TruncatedFrame(header, f"chunk {header.chunk_id}: {exc}") from None
    return Frame(header, bytes(raw), body, via_loopback)


def _recv(sock: socket.socket, n: int) -> bytes:
    """Exactly ``n`` bytes; ``ConnectionError`` if the stream ends first."""
    buf = bytearray(n)
    _recv_exact(sock, memoryview(buf))
    return bytes(buf)


def _recv_exact(sock: socket.socket, view: memoryview, *, allow_eof: bool = False) -> bool:
    """Fill ``view``; False if the peer closed before sending anything and ``allow_eof``."""
    got = 0
    while got < len(view):
        n = sock.recv_into(view[got:])
        if n == 0:
            if got == 0 and allow_eof:
                return False
            raise ConnectionError(f"peer closed the connection after {got} of {len(view)} bytes")
        got += n
    return True


# ---- handshake ----------------------------------------------------------------------------------
def _proof(secret: bytes, role: bytes, job_id: bytes, server_nonce: bytes, client_nonce: bytes) -> bytes:
    # The role label keeps a proof of one direction from being reflected as the other.
    return hmac.new(secret, b"skyplane-" + role + job_id + server_nonce + client_nonce, hashlib.sha256).digest()


def server_handshake(sock: socket.socket, *, job_id: bytes, secret: bytes,
                     timeout: float = HANDSHAKE_TIMEOUT) -> None:
    """Authenticate a connecting peer for this job, and prove ourselves to it.

    Raises :class:`ProtocolError` (the caller drops the connection) for a peer of another job, a
    wrong proof, or a malformed message, after telling the peer why in a refusal message (nothing
    else: no proof of ours); ``OSError`` for timeouts and resets.
    """
    sock.settimeout(timeout)
    server_nonce = os.urandom(_NONCE)
    sock.sendall(_HELLO.pack(_HELLO_MAGIC, VERSION, server_nonce))
    magic, version, job, client_nonce, proof = _AUTH.unpack(_recv(sock, _AUTH.size))
    if magic != _AUTH_MAGIC or version != VERSION:
        _refuse(sock, _MALFORMED, "peer did not answer the handshake with a skyplane authentication message")
    if not hmac.compare_digest(job, job_id):
        _refuse(sock, _OTHER_JOB, f"peer belongs to another job ({job.hex()})")
    if not hmac.compare_digest(proof, _proof(secret, b"client", job_id, server_nonce, client_nonce)):
        _refuse(sock, _BAD_PROOF, "peer failed the job-secret challenge")
    sock.sendall(_ACCEPT.pack(_ACCEPT_MAGIC, _proof(secret, b"server", job_id, server_nonce, client_nonce)))
    sock.settimeout(None)


def _refuse(sock: socket.socket, reason: int, message: str) -> NoReturn:
    """Tell the peer why it is refused (best effort: it may be gone), then raise :class:`ProtocolError`."""
    try:
        sock.sendall(_REFUSE.pack(_REFUSE_MAGIC, reason))
    except OSError:
        pass
    raise ProtocolError(message)


def client_handshake(sock: socket.socket, *, job_id: bytes, secret: bytes,
                     timeout: float = HANDSHAKE_TIMEOUT) -> None:
    """Prove to the server that we hold the job's secret, and check that it does too.

    Raises :class:`ProtocolError` when the server refuses us (with its reason) or cannot prove the
    secret: trying again will not help. A connection that ends or breaks inside the handshake raises
    ``ConnectionError`` (an ``OSError``, as timeouts do): network trouble, worth a new connection.
    """
    sock.settimeout(timeout)
    magic, version, server_nonce = _HELLO.unpack(_recv(sock, _HELLO.size))
    if magic != _HELLO_MAGIC:
        raise ProtocolError("the peer is not a skyplane gateway (bad handshake magic)")
    if version != VERSION:
        raise ProtocolError(f"the peer speaks wire version {version}, we speak {VERSION}",
                            hint="run the same skyplane-provider version on every gateway")
    client_nonce = os.urandom(_NONCE)
    proof = _proof(secret, b"client", job_id, server_nonce, client_nonce)
    sock.sendall(_AUTH.pack(_AUTH_MAGIC, VERSION, job_id, client_nonce, proof))
    try:
        magic = _recv(sock, _MAGIC_SIZE)
        if magic == _REFUSE_MAGIC:
            (reason,) = _recv(sock, _REFUSE.size - _MAGIC_SIZE)
            why, hint = _REFUSALS.get(reason, (f"for a reason unknown to us ({reason})", None))
            raise ProtocolError(f"the peer refused our handshake: {why}", hint=hint)
        server_proof = _recv(sock, _ACCEPT.size - _MAGIC_SIZE) if magic == _ACCEPT_MAGIC else b""
    except ConnectionError as exc:
        # Not a refusal (that comes as a message): the peer died or restarted meanwhile, so a new
        # connection may well succeed.
        raise ConnectionError(f"the connection ended inside the handshake: {exc}") from exc
    if magic != _ACCEPT_MAGIC or not hmac.compare_digest(
            server_proof, _proof(secret, b"server", job_id, server_nonce, client_nonce)):
        raise ProtocolError("the peer failed to prove it holds the job secret")
    sock.settimeout(None)


def connect(host: str, port: int, *, job_id: bytes, secret: bytes, timeout: float = HANDSHAKE_TIMEOUT,
            send_timeout: float | None = None) -> socket.socket:
    """An authenticated data connection to a peer gateway, ready for :func:`send_frame`.

    ``send_timeout`` bounds how long a send may make no progress before it raises (a dead peer).
    """
    sock = socket.create_connection((host, port), timeout=timeout)
    try:
        tune(sock)
        client_handshake(sock, job_id=job_id, secret=secret, timeout=timeout)
        sock.settimeout(send_timeout)
    except BaseException:
        sock.close()
        raise
    return sock


def tune(sock: socket.socket) -> None:
    """Socket options of every data connection: no Nagle delay on frame tails, keepalive."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
