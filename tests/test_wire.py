"""The wire protocol: frames, codec (lz4, AES-256-GCM, checksums) and the per-job handshake on real sockets."""

from __future__ import annotations

import dataclasses
import os
import socket
import struct
import threading
import time

import pytest

from gateway import wire
from gateway.bandwidth import Pacer
from gateway.batch import ChunkMeta, DestStore, SentObject, Target
from gateway.codec import Codec, worth_compressing
from gateway.events import EventLog
from gateway.peers import Peer, PeerLink
from planner.errors import BadOptionError, ChecksumError, ProtocolError

JOB = bytes.fromhex("00112233445566778899aabbccddeeff")
OTHER_JOB = bytes.fromhex("ffeeddccbbaa99887766554433221100")
SECRET = os.urandom(32)
KEY = os.urandom(32)
TEXT = b"id,name,value\n" + b"".join(b"%d,name-%d,%d\n" % (i, i % 97, i * 7) for i in range(40_000))


def codec(**kw) -> Codec:
    return Codec(JOB, **{"key": KEY, "encrypt": True, "compress": True, **kw})


def meta_for(*objects: bytes) -> ChunkMeta:
    return ChunkMeta((DestStore("r", "file:///d"),),
                     tuple(SentObject(i, len(o), (Target(0, f"k{i}"),)) for i, o in enumerate(objects)))


def encode(c: Codec, *objects: bytes, chunk_id: int = 7, partition: int = 0, **kw) -> wire.Frame:
    """A frame of ``objects`` (one piece each) with metadata that lists them."""
    frame, _ = c.encode(chunk_id=chunk_id, partition=partition, meta=meta_for(*objects).encode(),
                        pieces=list(objects), **kw)
    return frame


def flat(frame: wire.Frame) -> bytes:
    return b"".join(bytes(b) for b in frame.body)


def with_body(frame: wire.Frame, body: bytes, header: wire.Header | None = None) -> wire.Frame:
    """``frame`` with another body, split as a receiver splits it (a clear frame's metadata apart)."""
    h = header or frame.header
    parts = (body,) if h.encrypted else (body[:h.meta_length], body[h.meta_length:])
    return wire.Frame(h, h.pack() if header else frame.header_bytes, parts)


def roundtrip(frame: wire.Frame) -> wire.Frame:
    """The frame as a receiver parses it off a real socket pair."""
    a, b = socket.socketpair()
    with a, b:
        t = threading.Thread(target=wire.send_frame, args=(a, frame))
        t.start()
        got = wire.recv_frame(b, job_id=JOB)
        t.join()
    return got


@pytest.mark.parametrize("encrypt", [True, False])
@pytest.mark.parametrize("compress", [True, False])
def test_frame_roundtrip(encrypt, compress):
    c = codec(encrypt=encrypt, compress=compress, key=KEY if encrypt else None)
    frame = encode(c, TEXT, partition=3)
    h = frame.header
    assert (h.chunk_id, h.partition, h.raw_length, h.encrypted, h.compressed) == (7, 3, len(TEXT), encrypt, compress)
    assert len(frame.header_bytes) == wire.HEADER_SIZE == 72
    if compress:
        assert h.wire_length < 0.7 * len(TEXT)  # CSV-like text compresses
    got = roundtrip(frame)
    assert got.header == h and flat(got) == flat(frame)
    decoded = c.decode(got)
    assert (decoded.chunk_id, decoded.meta, decoded.objects, decoded.integrity) == (
        7, meta_for(TEXT), [TEXT], "aead" if encrypt else "crc32c")
    if encrypt:
        assert TEXT[:1000] not in flat(frame) and b"file:///d" not in flat(frame)


@pytest.mark.parametrize("encrypt", [True, False])
@pytest.mark.parametrize("compress", [True, False])
def test_bundle_roundtrip_gives_each_object_its_own_buffer(encrypt, compress):
    """A bundle is sealed (or checksummed) over its scattered objects and opened into one buffer per
    object; an uncompressed encrypted one is decrypted straight into them."""
    c = codec(encrypt=encrypt, compress=compress, key=KEY if encrypt else None)
    objects = [TEXT[:5000], b"", os.urandom(3000), TEXT[5000:9000]]
    got = c.decode(roundtrip(encode(c, *objects)))
    assert [bytes(o) for o in got.objects] == objects and got.meta == meta_for(*objects)
    if encrypt and not compress:
        assert all(isinstance(o, bytearray) for o in got.objects)


def test_empty_chunk():
    c = codec()
    assert c.decode(roundtrip(encode(c, b""))).objects == [b""]


def test_incompressible_chunk_is_sent_raw_and_the_skip_is_said():
    data = os.urandom(1 << 20)
    assert not worth_compressing(data) and worth_compressing(TEXT)
    frame, skipped = codec().encode(chunk_id=1, partition=0, meta=meta_for(data).encode(), pieces=[data])
    assert not frame.header.compressed and skipped == ["lz4_incompressible"]
    assert frame.header.wire_length == len(meta_for(data).encode()) + len(data) + wire.ENCRYPTION_OVERHEAD
    # A small chunk is tried whole, and kept raw when lz4 does not shrink it.
    small = encode(codec(), os.urandom(1000))
    assert not small.header.compressed
    assert codec().encode(chunk_id=1, partition=0, meta=meta_for(TEXT).encode(), pieces=[TEXT])[1] == []


def test_loopback_frames_skip_lz4_and_encryption():
    """A hop that never leaves the host gets a clear, uncompressed frame with its CRC32C, which a
    receiver in an encrypting job accepts only from a loopback connection (and only with
    ``loopback_clear``)."""
    sender = codec(loopback_clear=True)
    frame, skipped = sender.encode(chunk_id=1, partition=0, meta=meta_for(TEXT).encode(), pieces=[TEXT],
                                   loopback=True)
    assert not frame.header.encrypted and not frame.header.compressed
    assert skipped == ["lz4_loopback", "encryption_loopback"]
    got = roundtrip(frame)
    with pytest.raises(ProtocolError, match="unencrypted"):
        codec(loopback_clear=True).decode(got)  # not from a loopback connection
    loopback = dataclasses.replace(got, via_loopback=True)
    assert codec(loopback_clear=True).decode(loopback).integrity == "crc32c"
    with pytest.raises(ProtocolError, match="unencrypted"):
        codec(loopback_clear=False).decode(loopback)
    # Without loopback_clear the sender encrypts even for a loopback hop.
    assert codec().encode(chunk_id=1, partition=0, meta=meta_for(TEXT).encode(), pieces=[TEXT],
                          loopback=True)[0].header.encrypted


@pytest.mark.parametrize("where", ["header", "nonce", "ciphertext", "tag"])
def test_tampered_encrypted_frame_is_rejected(where):
    c = codec()
    frame = encode(c, TEXT, chunk_id=9, partition=1)
    header, body = bytearray(frame.header_bytes), bytearray(flat(frame))
    if where == "header":
        header[wire.HEADER_SIZE - 30] ^= 1  # inside the checksum field: still a well-formed header
    else:
        body[{"nonce": 0, "ciphertext": 100, "tag": -1}[where]] ^= 0x40
    bad = wire.Frame(wire.Header.unpack(bytes(header), job_id=JOB), bytes(header), (body,))
    with pytest.raises(ChecksumError) as info:
        c.decode(bad)
    assert info.value.retryable


def test_tampered_encrypted_bundle_is_rejected_whole():
    c = codec(compress=False)
    frame = encode(c, b"a" * 100, b"b" * 100, b"c" * 100)
    body = bytearray(flat(frame))
    body[-20] ^= 1  # in the last object
    with pytest.raises(ChecksumError):
        c.decode(with_body(frame, bytes(body)))


def test_corrupted_clear_frame_fails_its_checksum():
    c = codec(encrypt=False, key=None)
    for compress in (True, False):
        frame = encode(Codec(JOB, key=None, encrypt=False, compress=compress), TEXT)
        body = bytearray(flat(frame))
        body[frame.header.meta_length + 50] ^= 0xFF
        with pytest.raises(ChecksumError):
            c.decode(with_body(frame, bytes(body)))


def test_clear_frame_metadata_changed_on_the_way_is_rejected():
    """A change that still parses (one letter of where the bytes go) must not be written where it points."""
    frame = encode(codec(encrypt=False, key=None), TEXT)
    body = bytearray(flat(frame))
    body[flat(frame).index(b"file:///d") + 8] = ord("e")
    with pytest.raises(ChecksumError, match="CRC32C"):
        codec(encrypt=False, key=None).decode(with_body(frame, bytes(body)))


def test_clear_frame_header_changed_on_the_way_is_rejected():
    """The CRC32C covers the header too: a frame cannot be taken for another chunk or partition."""
    c = codec(encrypt=False, key=None)
    frame = encode(c, TEXT, chunk_id=4)
    for field in ("chunk_id", "partition"):
        header = dataclasses.replace(frame.header, **{field: 5})
        with pytest.raises(ChecksumError, match="CRC32C"):
            c.decode(with_body(frame, flat(frame), header))


def test_intact_metadata_that_does_not_parse_is_refused_without_retry():
    """A frame that passed its AEAD but whose metadata is not ours comes from another version."""
    frame, _ = codec().encode(chunk_id=1, partition=0, meta=b'{"not": "ours"}', pieces=[b"data"])
    with pytest.raises(ProtocolError, match="metadata") as info:
        codec().decode(frame)
    assert not isinstance(info.value, ChecksumError)


def test_encrypting_receiver_refuses_clear_frames_and_keyless_receiver_refuses_encrypted():
    clear = encode(Codec(JOB, key=None, encrypt=False, compress=False), b"x")
    with pytest.raises(ProtocolError, match="unencrypted"):
        codec().decode(clear)
    sealed = encode(codec(), b"x")
    with pytest.raises(ProtocolError, match="no encryption key"):
        Codec(JOB, key=None, encrypt=False, compress=False).decode(sealed)
    with pytest.raises(ChecksumError):  # another job's key
        Codec(JOB, key=os.urandom(32), encrypt=True, compress=True).decode(sealed)
    with pytest.raises(BadOptionError):
        Codec(JOB, key=None, encrypt=True, compress=True)


def test_encrypted_frames_carry_no_checksum_for_relays_to_confirm_guesses_with():
    """The AEAD tag is the integrity check of an encrypted frame: its clear header holds no digest of
    the plaintext, so a relay (which has no key) learns nothing by hashing guesses."""
    for data in (b"guess", TEXT):
        assert encode(codec(), data).header.checksum == bytes(16)
    assert encode(Codec(JOB, key=None, encrypt=False, compress=False), b"guess").header.checksum != bytes(16)


def test_bad_headers_are_rejected_before_allocation():
    frame = encode(codec(), b"data", chunk_id=5)
    with pytest.raises(ProtocolError, match="another job"):
        wire.Header.unpack(frame.header_bytes, job_id=OTHER_JOB)
    fields = list(wire.HEADER.unpack(frame.header_bytes))
    for index, value, match in [(0, b"XXXX", "magic"), (1, 99, "version"), (2, 0x80, "flags"),
                                (8, 1 << 62, "too large"), (7, 1 << 62, "too large"), (10, 1 << 30, "too large")]:
        bad = list(fields)
        bad[index] = value
        with pytest.raises(ProtocolError, match=match):
            wire.Header.unpack(wire.HEADER.pack(*bad), job_id=JOB)
    # A receiver reading such a header off a socket raises before reading (or allocating) a body.
    a, b = socket.socketpair()
    with a, b:
        bad = list(fields)
        bad[8] = 1 << 62
        a.sendall(wire.HEADER.pack(*bad))
        with pytest.raises(ProtocolError):
            wire.recv_frame(b, job_id=JOB)
    # Truncated stream inside a frame: a connection error, not a frame.
    a, b = socket.socketpair()
    with a, b:
        a.sendall(frame.header_bytes + flat(frame)[:3])
        a.close()
        with pytest.raises(ConnectionError):
            wire.recv_frame(b, job_id=JOB)


def test_too_large_chunk_is_refused_by_the_encoder():
    with pytest.raises(BadOptionError):
        encode(Codec(JOB, key=KEY, encrypt=True, compress=False, max_chunk=10), b"x" * 11)


def test_a_frame_of_more_buffers_than_one_sendmsg_takes_arrives_whole():
    """A clear bundle of 1,024 objects goes out as 1,026 buffers (header, metadata, objects)."""
    c = Codec(JOB, key=None, encrypt=False, compress=False)
    objects = [bytes([i % 256]) * 10 for i in range(1024)]
    frame = encode(c, *objects)
    assert len(frame.body) == 1025
    assert [bytes(o) for o in c.decode(roundtrip(frame)).objects] == objects


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("127.3.2.1", True), ("::1", True),
                                            ("::ffff:127.0.0.1", True), ("localhost", True), ("10.0.0.1", False),
                                            ("::ffff:10.0.0.1", False), ("gateway.example", False)])
def test_is_loopback(host, loopback):
    assert wire.is_loopback(host) is loopback


# ---- handshake over real TCP ---------------------------------------------------------------------
class Server:
    """A one-connection TCP server on loopback running the server side of the handshake."""

    def __init__(self, job_id: bytes = JOB, secret: bytes = SECRET) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.result: object = None
        self.frames: list[wire.Frame] = []
        self._thread = threading.Thread(target=self._serve, args=(job_id, secret))
        self._thread.start()

    def _serve(self, job_id: bytes, secret: bytes) -> None:
        conn, _ = self.sock.accept()
        with conn:
            try:
                wire.server_handshake(conn, job_id=job_id, secret=secret, timeout=2)
                while (f := wire.recv_frame(conn, job_id=job_id)) is not None:
                    self.frames.append(f)
                self.result = "ok"
            except (ProtocolError, OSError) as exc:
                self.result = exc

    def join(self) -> object:
        self._thread.join(10)
        self.sock.close()
        return self.result


def test_handshake_then_frames():
    server = Server()
    frame = encode(codec(), TEXT, chunk_id=3)
    with wire.connect("127.0.0.1", server.port, job_id=JOB, secret=SECRET) as conn:
        wire.send_frame(conn, frame)
        wire.send_frame(conn, frame)
    assert server.join() == "ok"
    assert [f.header.chunk_id for f in server.frames] == [3, 3]
    assert codec().decode(server.frames[1]).objects == [TEXT]


@pytest.mark.parametrize("client_job, client_secret, match, told", [
    (JOB, os.urandom(32), "challenge", "our proof of the job secret is wrong"),
    (OTHER_JOB, SECRET, "another job", "it serves another job"),
], ids=["wrong secret", "other job"])
def test_wrong_job_or_secret_is_refused_with_the_reason(client_job, client_secret, match, told):
    server = Server()
    with pytest.raises(ProtocolError, match=f"refused our handshake: {told}"):
        wire.connect("127.0.0.1", server.port, job_id=client_job, secret=client_secret)
    result = server.join()
    assert isinstance(result, ProtocolError) and match in str(result)
    assert server.frames == []


class DyingServer:
    """Accepts connections on loopback; the first ``die`` of them end inside the handshake (after the
    client's authentication message, with neither an accept nor a refusal: a gateway worker killed
    there), with a FIN or, ``reset``, an RST. Later ones are served like :class:`Server`'s."""

    def __init__(self, die: int, *, reset: bool = False) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.frames: list[wire.Frame] = []
        self._die, self._reset = die, reset
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed
            with conn:
                if self._die:
                    self._die -= 1
                    conn.sendall(b"SKYH" + bytes([wire.VERSION]) + os.urandom(32))
                    conn.recv(wire.AUTH_SIZE, socket.MSG_WAITALL)
                    if self._reset:
                        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    continue
                wire.server_handshake(conn, job_id=JOB, secret=SECRET, timeout=2)
                while (f := wire.recv_frame(conn, job_id=JOB)) is not None:
                    self.frames.append(f)

    def close(self) -> None:
        self.sock.close()


def test_a_link_counts_the_frame_its_sender_is_still_sending():
    """gateway/peers.py: a link's load is what it may still send, a frame in a sender's hands included.
    A gateway whose orchestrator died drains until its load is 0 for a second (gateway/daemon.py):
    a frame paced over more than that second, the queue empty, was cut when the gateway stopped (a
    part missing at the store after test_resume_stored_parts's kill, under load)."""
    server = Server()
    frame = encode(codec(), os.urandom(1024 * 1024), chunk_id=9)
    seconds = 2.0
    events, stop = EventLog(), threading.Event()
    link = PeerLink(Peer("dst-0", "127.0.0.1", server.port), "dst", 1, job_id=JOB, secret=SECRET,
                    queue_chunks=2, events=events, stop=stop, pacer=Pacer(frame.size / seconds))
    try:
        assert link.put(frame)
        began, loads = time.monotonic(), []
        while time.monotonic() - began < seconds / 2:  # the frame is still being paced out
            loads.append(link.load())
            time.sleep(0.02)
        assert not server.frames and min(loads) == 1, loads
        deadline = time.monotonic() + 30
        while server.frames == [] or link.load():
            assert time.monotonic() < deadline, events.status(0)
            time.sleep(0.02)
    finally:
        stop.set()
        server.join()
    assert [f.header.chunk_id for f in server.frames] == [9] and events.status(0)["events"] == []


@pytest.mark.parametrize("reset", [False, True])
def test_a_connection_that_ends_inside_the_handshake_is_not_a_refusal(reset):
    """Network trouble (an OSError, which senders retry), not a ProtocolError (which they do not)."""
    server = DyingServer(die=1, reset=reset)
    try:
        with pytest.raises(ConnectionError, match="inside the handshake"):
            wire.connect("127.0.0.1", server.port, job_id=JOB, secret=SECRET)
    finally:
        server.close()


def test_a_peer_of_the_previous_wire_version_is_told_apart_at_its_first_message():
    """Version 2 ended a refusal without a word: a client of version 3 must not read that as network
    trouble, so it stops at the version 2 challenge (and a version 2 client at ours)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        def old_server() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.sendall(b"SKYH" + bytes([2]) + os.urandom(32))
                conn.recv(1)
        t = threading.Thread(target=old_server)
        t.start()
        with pytest.raises(ProtocolError, match=f"speaks wire version 2, we speak {wire.VERSION}"):
            wire.connect("127.0.0.1", listener.getsockname()[1], job_id=JOB, secret=SECRET)
        t.join(5)


def test_a_sender_reconnects_when_its_peer_dies_inside_the_handshake():
    """gateway/peers.py: the frame goes out on a new connection, nothing is reported failed."""
    server = DyingServer(die=1)
    events, stop = EventLog(), threading.Event()
    link = PeerLink(Peer("dst-0", "127.0.0.1", server.port), "dst", 1, job_id=JOB, secret=SECRET,
                    queue_chunks=2, events=events, stop=stop)
    try:
        assert link.put(encode(codec(), TEXT, chunk_id=5))
        deadline = time.monotonic() + 10
        while not server.frames:
            assert time.monotonic() < deadline, events.status(0)
            time.sleep(0.02)
    finally:
        stop.set()
        server.close()
    status = events.status(0)
    assert [f.header.chunk_id for f in server.frames] == [5]
    assert status["counters"]["retries"] == 1 and status["events"] == []


def test_client_refuses_a_server_without_the_secret():
    server = Server(secret=os.urandom(32))
    with pytest.raises(ProtocolError):
        wire.connect("127.0.0.1", server.port, job_id=JOB, secret=SECRET)
    assert isinstance(server.join(), ProtocolError)


def test_unauthenticated_peer_cannot_send_frames():
    """A peer that skips the handshake and sends a frame straight away is dropped, frame unread."""
    server = Server()
    frame = encode(codec(), b"payload", chunk_id=3)
    with socket.create_connection(("127.0.0.1", server.port)) as conn:
        conn.sendall(frame.header_bytes + flat(frame) + bytes(200))
        assert isinstance(server.join(), ProtocolError)
    assert server.frames == []


def test_silent_peer_times_out():
    server = Server()
    with socket.create_connection(("127.0.0.1", server.port)):
        result = server.join()  # the server gives up after its 2 s handshake timeout
    assert isinstance(result, OSError) and server.frames == []


@pytest.mark.parametrize("compress, data", [(True, TEXT), (False, os.urandom(300_000))])
def test_buffers_the_caller_gives_up_are_sealed_in_place_and_received_bodies_opened_in_place(compress, data):
    """``consume``: the source's read buffer (or lz4's output) is encrypted where it lies, no second
    chunk-sized buffer; without it the caller's bytes are left as they were. A received body is
    decrypted in place only when asked (a frame that is not relayed), and a damaged one is refused
    all the same."""
    c = codec(compress=compress)
    kept = bytearray(data)
    frame = encode(c, kept)
    assert kept == data, "the caller's bytes changed without consume"
    given = bytearray(data)
    frame = encode(c, given, consume=True)
    assert (given == data) == compress, "an uncompressed read buffer is sealed in place"
    assert max(len(b) for b in frame.body) <= len(data) + 100 and sum(map(len, frame.body)) == frame.header.wire_length
    received = roundtrip(frame)
    as_received = bytes(received.body[0])
    assert c.decode(received).objects[0] == data and bytes(received.body[0]) == as_received  # a relayed frame
    assert c.decode(received, in_place=True).objects[0] == data
    assert (bytes(received.body[0]) == as_received) != compress, "a compressed payload is decrypted in place"
    damaged = roundtrip(frame)
    damaged.body[0][len(damaged.body[0]) // 2] ^= 1
    with pytest.raises(ChecksumError, match="failed authentication"):
        c.decode(damaged, in_place=True)


def test_buffers_handed_back_while_still_referred_to_are_kept_only_once_free():
    """A read buffer a frame still carries is offered when the frame goes (``give_when_free``) and
    kept at the next ``take`` only if nothing else refers to it then; ``take`` hands it out once."""
    from gateway.buffers import MIN_POOLED, BufferPool
    reused = []
    pool = BufferPool(4, on_reuse=lambda: reused.append(1))
    held, free = bytearray(MIN_POOLED), bytearray(MIN_POOLED)
    still_used, free_id = [held], id(free)
    pool.give_when_free([held])
    pool.give_when_free([free])
    del free
    taken = pool.take(MIN_POOLED)
    assert id(taken) == free_id and pool.idle == 0 and reused == [1]
    assert pool.take(MIN_POOLED) is not taken and reused == [1], "one buffer handed out twice"
    assert still_used[0] is held


def test_pooled_buffers_are_shared_by_lengths_of_one_size_class_and_cut_in_place():
    """``take`` hands out a buffer of its length's size class cut to that length; handed back, it is
    taken again for any length of that class, in place (no copy: the same memory), and never while a
    view of it is alive or for a length of another class."""
    import ctypes

    from gateway.buffers import MIN_POOLED, BufferPool, size_class
    MiB = 1024**2
    assert size_class(32 * MiB) == 32 * MiB and size_class(32 * MiB + 1) == 34 * MiB
    assert all(n <= size_class(n) <= n * 17 // 16 + 1 for n in (MIN_POOLED, 3 * MiB - 7, 64 * MiB + 1, 10**9))
    pool = BufferPool(2)
    first = [pool.take(32 * MiB + 1)]
    assert len(first[0]) == 32 * MiB + 1 and first[0].__alloc__() - 1 == 34 * MiB
    first[0][:4] = b"old!"
    address = ctypes.addressof(ctypes.c_char.from_buffer(first[0]))
    del first[0][32 * MiB:]  # a whole object's extra byte, dropped after its read
    assert pool.give(first) == 1
    del first
    again = pool.take(33 * MiB)
    assert len(again) == 33 * MiB and ctypes.addressof(ctypes.c_char.from_buffer(again)) == address
    assert again[:4] == b"old!", "handed out as it was: the caller fills it"
    held, view = [again], memoryview(again)
    del again
    assert pool.give(held) == 0, "a buffer a view still has is not kept"
    view.release()
    assert pool.take(16 * MiB).__alloc__() - 1 == 16 * MiB, "another class: a buffer of its own"
    assert pool.give([bytearray(3 * MiB + 5)]) == 0, "not made by take: no take asks for its capacity"
