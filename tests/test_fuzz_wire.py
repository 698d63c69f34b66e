"""Fuzzing the wire format with hypothesis: header parser, frame reader, codec, chunk metadata, handshake.

Every input must end in a result or in one of the documented exceptions (``ProtocolError`` and its
``ChecksumError``, ``BadOptionError`` for metadata, ``ConnectionError``/``OSError`` for streams that
end or stall), in bounded time and without allocating more than the configured chunk limit.
Deterministic: derandomized, no example database.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import tracemalloc

from hypothesis import strategies as st

from gateway import wire
from gateway.batch import ChunkMeta
from gateway.codec import Codec
from planner.errors import BadOptionError, ProtocolError

from .fuzzing import fuzz, json_values

JOB = bytes(range(16))
SECRET = b"s" * 32
KEY = bytes(range(32))
MAX_CHUNK = 64 * 1024
DATA = (b"0123456789abcdef" * 300)[:4000]  # compresses
META = json.dumps({"dests": [["r", "file:///d"]], "objects": [[0, len(DATA), [[0, "k", None, None]]]]}).encode()


def _valid_frames() -> list[wire.Frame]:
    return [Codec(JOB, key=KEY if enc else None, encrypt=enc, compress=comp).encode(
        chunk_id=7, partition=0, meta=META, pieces=[DATA])[0] for enc in (True, False) for comp in (True, False)]


def _flat(frame: wire.Frame) -> bytes:
    return frame.header_bytes + b"".join(bytes(b) for b in frame.body)


FRAMES = _valid_frames()


def _mutate(data: bytes, edits: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for pos, value in edits:
        out[pos % len(out)] = value
    return bytes(out)


edits = st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), min_size=1, max_size=4)


def test_fuzz_header_parser():
    def check(raw: bytes) -> str:
        try:
            h = wire.Header.unpack(raw, job_id=JOB, max_chunk=MAX_CHUNK)
        except ProtocolError:
            return "ProtocolError"
        assert h.raw_length <= MAX_CHUNK and h.meta_length <= wire.MAX_META and h.payload_length >= 0
        return "parsed"

    headers = st.one_of(st.binary(min_size=wire.HEADER_SIZE, max_size=wire.HEADER_SIZE),
                        st.tuples(st.sampled_from(FRAMES), edits).map(lambda fe: _mutate(fe[0].header_bytes, fe[1])))
    fuzz("Header.unpack", headers, check, examples=300, what="random 72-byte headers and valid ones with 1-4 bytes "
          "changed")


def _feed(sock: socket.socket, data: bytes) -> threading.Thread:
    """Send ``data`` then end the stream, from a thread (the reader may stop reading early)."""
    def send() -> None:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the reader hung up first

    t = threading.Thread(target=send, daemon=True)
    t.start()
    return t


def _read_stream(stream: bytes) -> tuple[str, int]:
    """Feed ``stream`` to :func:`wire.recv_frame` until it ends; (how it ended, frames read)."""
    a, b = socket.socketpair()
    with a, b:
        b.settimeout(2)
        writer = _feed(a, stream)
        frames = 0
        try:
            while wire.recv_frame(b, job_id=JOB, max_chunk=MAX_CHUNK) is not None:
                frames += 1
            outcome = "clean end"
        except ProtocolError:
            outcome = "ProtocolError"
        except ConnectionError:  # TruncatedFrame included
            outcome = "ConnectionError"
        writer.join(2)
        return outcome, frames


def test_fuzz_frame_reader():
    def check(stream: bytes) -> str:
        tracemalloc.start()
        started = time.monotonic()
        try:
            outcome, frames = _read_stream(stream)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert time.monotonic() - started < 3
        assert frames * wire.HEADER_SIZE <= len(stream)
        assert peak < 2 * (MAX_CHUNK + wire.MAX_META) + (1 << 20)  # never more than one bounded frame
        return outcome

    streams = st.one_of(
        st.binary(max_size=600),
        st.tuples(st.sampled_from(FRAMES), edits).map(lambda fe: _mutate(_flat(fe[0]), fe[1])),
        st.tuples(st.sampled_from(FRAMES), st.integers(1, 5000)).map(lambda ft: _flat(ft[0])[:ft[1]]))
    fuzz("recv_frame over a socket", streams, check, examples=300,
          what="random bytes, valid frames with 1-4 bytes changed, frames cut short; 64 KiB chunk limit; "
          "each read within 3 s and below 2 frame limits of memory")


def test_fuzz_codec_decode_of_damaged_frames():
    def check(case) -> str:
        which, changes, in_header = case
        frame = FRAMES[which]
        if in_header:
            raw = _mutate(frame.header_bytes, changes)
            try:
                header = wire.Header.unpack(raw, job_id=JOB, max_chunk=MAX_CHUNK)
            except ProtocolError:
                return "header refused"
            if header.wire_length != len(frame.body):
                return "header refused"  # the reader would have read another body: the stream case above
            damaged = wire.Frame(header, raw, frame.body)
        else:
            body = _mutate(_flat(frame)[wire.HEADER_SIZE:], changes)
            h = frame.header
            parts = (body,) if h.encrypted else (body[:h.meta_length], body[h.meta_length:])
            damaged = wire.Frame(frame.header, frame.header_bytes, parts)
        receiver = Codec(JOB, key=KEY if frame.header.encrypted else None, encrypt=frame.header.encrypted,
                         compress=True)
        try:
            decoded = receiver.decode(damaged)
        except ProtocolError as exc:  # ChecksumError included
            return type(exc).__name__
        # Whatever gets through is the original bytes and metadata, never damaged ones (the AEAD or
        # the CRC32C covers the header, the metadata and the data).
        assert (decoded.meta, decoded.objects) == (ChunkMeta.decode(META, len(DATA)), [DATA])
        return "decoded intact (no-op change)"

    cases = st.tuples(st.sampled_from(range(len(FRAMES))), edits, st.booleans())
    fuzz("Codec.decode", cases, check, examples=300,
          what="valid frames (AES-GCM or clear, lz4 or raw) with 1-4 header or body bytes changed")


_GOOD = json.loads(META)
chunk_docs = st.one_of(json_values, st.dictionaries(st.sampled_from(sorted(_GOOD)), json_values).map(
    lambda d: {**_GOOD, **d}))


def test_fuzz_chunk_metadata():
    def check(meta: bytes) -> str:
        try:
            parsed = ChunkMeta.decode(meta, len(DATA))
        except BadOptionError as exc:
            assert str(exc)
            return "BadOptionError"
        assert parsed.objects and parsed.length == len(DATA)
        assert all(0 <= t.dest < len(parsed.dests) for o in parsed.objects for t in o.to)
        return "parsed"

    docs = st.one_of(st.binary(max_size=300), chunk_docs.map(lambda d: json.dumps(d).encode()),
                     st.just(META))
    fuzz("ChunkMeta.decode", docs, check, examples=200,
          what="random bytes, random JSON, a valid chunk metadata with random fields replaced")


def _handshake(case) -> str:
    server_side, incoming = case
    a, b = socket.socketpair()
    started = time.monotonic()
    with a, b:
        a.settimeout(2)
        b.settimeout(2)
        writer = _feed(b, incoming)
        try:
            if server_side:
                wire.server_handshake(a, job_id=JOB, secret=SECRET, timeout=2)
            else:
                wire.client_handshake(a, job_id=JOB, secret=SECRET, timeout=2)
            outcome = "accepted"
        except ProtocolError:
            outcome = "ProtocolError"
        except OSError as exc:
            outcome = type(exc).__name__
        a.shutdown(socket.SHUT_RDWR)
        writer.join(2)
    assert time.monotonic() - started < 3
    assert outcome != "accepted", incoming  # never without the secret
    return outcome


def test_fuzz_handshake():
    incoming = st.one_of(st.binary(max_size=200),
                         st.binary(min_size=wire.AUTH_SIZE - 21, max_size=wire.AUTH_SIZE - 21).map(
                             lambda b: b"SKYA" + bytes([wire.VERSION]) + JOB + b),
                         st.binary(max_size=100).map(lambda b: b"SKYH" + bytes([wire.VERSION]) + b))
    fuzz("server_handshake / client_handshake", st.tuples(st.booleans(), incoming), _handshake, examples=300,
          what="random bytes and near-valid messages (right magic and job id, made-up nonce and proof) to "
          "either side")
