"""Turning a chunk into a frame and back: lz4, AES-256-GCM or CRC32C (docs/wire-protocol.md).

A source gateway *encodes* (compress when it pays, then seal metadata and payload with AES-256-GCM,
the fixed header as associated data; or, in the clear, put the CRC32C of the header, the metadata
and the original bytes in the header); a destination gateway *decodes* (authenticate and decrypt,
or recompute the CRC32C; decompress) into one buffer per object. Relays do neither.

Each byte is checked once end to end: the AEAD tag when the frame is encrypted (it authenticates
the compressed bytes, so what decompresses is what the source read: no second hash), the CRC32C
(hardware-accelerated, ``crc32c``: it takes any buffer, where ``google-crc32c`` takes bytes only)
when it is not. And each byte is copied at most once in
user space: the AEAD runs over the scattered metadata and object buffers (no ``meta || payload``
join), in place in the buffers the caller gives up (lz4's output, read buffers nothing else reads),
clear frames go out with ``sendmsg`` as they are, and a destination decrypts a compressed payload in
place in the received body (one it does not relay) and each object of an uncompressed frame straight
into a buffer of its own.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence

import lz4.block
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from planner.errors import BadOptionError, ChecksumError, ProtocolError

from .batch import ChunkMeta
from .lz4raw import decompress_into
from .wire import (CHECKSUM_SIZE, DEFAULT_MAX_CHUNK, FLAG_COMPRESSED, FLAG_ENCRYPTED, NONCE_SIZE, TAG_SIZE, Frame,
                   Header)

#: Chunks below this are compressed without sampling first (sampling would cost as much).
_SAMPLE_BELOW = 256 * 1024
_SAMPLE = 64 * 1024
#: A sample must shrink below this fraction for the whole chunk to be compressed.
_WORTH = 0.9
_NO_CHECKSUM = bytes(CHECKSUM_SIZE)

#: How a decoded chunk's bytes were checked (the ``integrity`` of ``written`` events).
AEAD, CRC32C = "aead", "crc32c"
#: Why lz4 or encryption was not applied to a frame (the ``skipped`` counters).
SKIP_LZ4_INCOMPRESSIBLE = "lz4_incompressible"
SKIP_LZ4_LOOPBACK = "lz4_loopback"
SKIP_ENCRYPTION_LOOPBACK = "encryption_loopback"

Buffer = bytes | bytearray | memoryview


def worth_compressing(data: Buffer) -> bool:
    """Whether lz4 is likely to shrink ``data``: three 64 KiB samples (start, middle, end) are tried."""
    if len(data) < _SAMPLE_BELOW:
        return True
    view = memoryview(data)
    mid = len(data) // 2
    sample = b"".join((view[:_SAMPLE], view[mid:mid + _SAMPLE], view[-_SAMPLE:]))
    return len(lz4.block.compress(sample, store_size=False)) < _WORTH * len(sample)


def crc32c_of(header: Header, meta: Buffer, pieces: Sequence[Buffer]) -> bytes:
    """The checksum field of a clear frame: CRC32C of the header (its checksum field zero), the
    metadata and the original bytes, big-endian, in the first 4 bytes of the field."""
    # Imported here: the package's own import reads its version from the installed distributions
    # (importlib.metadata, ~10 ms of every process's start), and a one-host job frames nothing.
    from crc32c import crc32c

    crc = crc32c(meta, crc32c(dataclasses.replace(header, checksum=_NO_CHECKSUM).pack()))
    for piece in pieces:
        crc = crc32c(piece, crc)
    return crc.to_bytes(4, "big") + bytes(CHECKSUM_SIZE - 4)


@dataclasses.dataclass(frozen=True)
class Decoded:
    """A chunk ready to be written: its metadata, one buffer per object it carries, and how its
    bytes were checked (``aead``, ``crc32c``, or ``local``: read by this gateway, never framed)."""

    chunk_id: int
    meta: ChunkMeta
    objects: list[Buffer]
    integrity: str


class Codec:
    """Encodes and decodes the frames of one job.

    ``key`` (32 bytes) is the job's end-to-end key, or None on a gateway that must not read data
    (a pure relay never builds a codec) or in a job without encryption. ``encrypt`` makes
    :meth:`encode` encrypt and :meth:`decode` refuse frames sent in the clear (except, with
    ``loopback_clear``, those that arrived from a loopback address); ``compress`` makes
    :meth:`encode` compress chunks that shrink. ``alloc`` gives the buffers :meth:`decode` decrypts
    the objects of an uncompressed frame into, and decompresses payloads into.
    """

    def __init__(self, job_id: bytes, *, key: bytes | None, encrypt: bool, compress: bool,
                 max_chunk: int = DEFAULT_MAX_CHUNK, loopback_clear: bool = False,
                 alloc: Callable[[int], bytearray] = bytearray) -> None:
        if encrypt and (key is None or len(key) != 32):
            raise BadOptionError("encryption is on but no 256-bit encryption key was given",
                                 hint="pass encryption_key as 64 hex digits to gateways that read or write")
        self.job_id = job_id
        self.encrypt = encrypt
        self.compress = compress
        self.max_chunk = max_chunk
        self.loopback_clear = loopback_clear
        self._key = key
        self._alloc = alloc  # buffers objects are decrypted or decompressed into (a BufferPool's take)

    def encode(self, *, chunk_id: int, partition: int, meta: bytes, pieces: Sequence[Buffer],
               loopback: bool = False, consume: bool = False) -> tuple[Frame, list[str]]:
        """The frame carrying ``pieces`` (the original bytes, back to back) and ``meta``, and why lz4
        or encryption were skipped. ``loopback``: every next hop is on this host (see
        ``loopback_clear``): the frame then goes without lz4 and encryption, with its CRC32C.
        ``consume``: the caller no longer needs the bytes of ``pieces``, so those that are bytearrays
        are encrypted in place."""
        raw_length = sum(len(p) for p in pieces)
        if raw_length > self.max_chunk:
            raise BadOptionError(f"chunk {chunk_id} has {raw_length} bytes, more than the limit of {self.max_chunk}",
                                 hint="use a smaller chunk size")
        local = loopback and self.loopback_clear
        skipped = []
        flags, payload, ours = 0, list(pieces), consume
        if self.compress and local:
            skipped.append(SKIP_LZ4_LOOPBACK)
        elif self.compress and raw_length:
            data = pieces[0] if len(pieces) == 1 else b"".join(pieces)  # several only when a bundle has holes
            packed = (lz4.block.compress(data, store_size=False, return_bytearray=True) if worth_compressing(data)
                      else None)
            if packed is not None and len(packed) < raw_length:
                flags, payload, ours = FLAG_COMPRESSED, [packed], True
            else:
                skipped.append(SKIP_LZ4_INCOMPRESSIBLE)
        payload_length = sum(len(p) for p in payload)
        if not self.encrypt or local:
            if self.encrypt:
                skipped.append(SKIP_ENCRYPTION_LOOPBACK)
            header = Header(flags, partition, self.job_id, chunk_id, raw_length, len(meta) + payload_length,
                            _NO_CHECKSUM, len(meta))
            header = dataclasses.replace(header, checksum=crc32c_of(header, meta, pieces))
            return Frame(header, header.pack(), (meta, *payload)), skipped
        flags |= FLAG_ENCRYPTED
        wire_length = NONCE_SIZE + len(meta) + payload_length + TAG_SIZE
        header = Header(flags, partition, self.job_id, chunk_id, raw_length, wire_length, _NO_CHECKSUM, len(meta))
        header_bytes = header.pack()
        nonce = os.urandom(NONCE_SIZE)
        encryptor = Cipher(algorithms.AES(self._key), modes.GCM(nonce)).encryptor()
        encryptor.authenticate_additional_data(header_bytes)
        head = bytearray(NONCE_SIZE + len(meta))
        head[:NONCE_SIZE] = nonce
        encryptor.update_into(meta, memoryview(head)[NONCE_SIZE:])
        if ours and all(type(p) is bytearray for p in payload):
            for part in payload:  # in place: no second chunk-sized buffer, no pass to fill one
                encryptor.update_into(part, part)
            sealed = payload
        else:  # the caller's bytes: sealed into one new buffer, scattered parts and all (nothing joined)
            out, at = bytearray(payload_length), 0
            for part in payload:
                at += encryptor.update_into(part, memoryview(out)[at:])
            sealed = [out]
        encryptor.finalize()
        return Frame(header, header_bytes, (head, *sealed, encryptor.tag)), skipped

    def decode(self, frame: Frame, *, in_place: bool = False) -> Decoded:
        """Open a frame: authenticate and decrypt (or check the CRC32C), decompress, and cut the
        payload into its objects as the metadata lists them. ``in_place``: nothing else reads the
        frame's body (it is not relayed), so a compressed payload is decrypted where it lies.

        Raises :class:`ChecksumError` (retryable: the chunk must be sent again) when decryption
        fails authentication, decompression fails or the CRC32C does not match, and
        :class:`ProtocolError` for a frame this gateway must not accept (clear text in a job that
        encrypts, from anywhere but a loopback address with ``loopback_clear``; encrypted without
        our having the key; metadata that does not parse although it arrived intact).
        """
        h = frame.header
        if h.encrypted:
            if self._key is None:
                raise ProtocolError(f"chunk {h.chunk_id} is encrypted but this gateway has no encryption key",
                                    hint="give the job's encryption_key to every gateway that writes")
            return self._open(frame, in_place)
        if self.encrypt and not (self.loopback_clear and frame.via_loopback):
            raise ProtocolError(f"chunk {h.chunk_id} arrived unencrypted in a job that encrypts")
        meta_raw, *parts = frame.body  # as received: (meta, payload); as encoded: the payload may be in pieces
        payload = parts[0] if len(parts) == 1 else b"".join(parts)
        data = self._decompress(h, payload) if h.compressed else payload
        if crc32c_of(h, meta_raw, [data]) != h.checksum:
            raise ChecksumError(f"chunk {h.chunk_id} does not match the CRC32C of the original bytes "
                                "(corrupted on the way)", hint="it will be sent again")
        meta = _meta(h, bytes(meta_raw))
        return Decoded(h.chunk_id, meta, _split(data, meta), CRC32C)

    def _open(self, frame: Frame, in_place: bool) -> Decoded:
        """Decrypt an encrypted frame: a compressed payload in place (``in_place`` and a received
        body), each object of an uncompressed one into a buffer of its own; nothing is used before
        the tag is verified."""
        h = frame.header
        body = frame.body[0] if len(frame.body) == 1 else b"".join(frame.body)  # several: as encoded here
        in_place = in_place and type(body) is bytearray
        view = memoryview(body)
        nonce, tag = bytes(view[:NONCE_SIZE]), bytes(view[-TAG_SIZE:])
        decryptor = Cipher(algorithms.AES(self._key), modes.GCM(nonce, tag)).decryptor()
        decryptor.authenticate_additional_data(frame.header_bytes)
        at = NONCE_SIZE
        meta_raw = bytearray(h.meta_length)
        at += decryptor.update_into(view[at:at + h.meta_length], meta_raw)
        try:
            lengths = ([h.payload_length] if h.compressed
                       else [o.length for o in ChunkMeta.decode(bytes(meta_raw), h.raw_length).objects])
        except BadOptionError:  # unauthenticated so far: a damaged frame, or one from another version
            lengths = [h.payload_length]
        buffers = []
        for n in lengths:
            buf = view[at:at + n] if in_place and h.compressed else self._alloc(n)
            at += decryptor.update_into(view[at:at + n], buf)
            buffers.append(buf)
        try:
            decryptor.finalize()
        except InvalidTag:
            raise ChecksumError(f"chunk {h.chunk_id} failed authentication (tampered or corrupted on the way)",
                                hint="it will be sent again") from None
        meta = _meta(h, bytes(meta_raw))  # authenticated: it parses now, as it did above
        if h.compressed:
            return Decoded(h.chunk_id, meta, _split(self._decompress(h, buffers[0]), meta), AEAD)
        return Decoded(h.chunk_id, meta, buffers, AEAD)

    def _decompress(self, h: Header, payload: Buffer) -> Buffer:
        """The original bytes of a compressed payload, in a buffer of ``alloc`` (python-lz4's own
        where liblz4 cannot be called: see gateway/lz4raw.py)."""
        data = self._alloc(h.raw_length)
        got = decompress_into(payload, data)
        if got is None:
            try:
                data = lz4.block.decompress(payload, uncompressed_size=h.raw_length)
            except lz4.block.LZ4BlockError:
                got = -1
            else:
                got = len(data)
        if got < 0:
            raise ChecksumError(f"chunk {h.chunk_id} does not decompress (corrupted on the way)",
                                hint="it will be sent again")
        if got != h.raw_length:
            raise ChecksumError(f"chunk {h.chunk_id} decompressed to {got} bytes, not {h.raw_length}",
                                hint="it will be sent again")
        return data


def _meta(h: Header, raw: bytes) -> ChunkMeta:
    """The metadata of a frame that arrived intact: one that does not parse comes from a source of
    another version (the AEAD or the CRC32C rules out damage on the way)."""
    try:
        return ChunkMeta.decode(raw, h.raw_length)
    except BadOptionError as exc:
        raise ProtocolError(f"chunk {h.chunk_id}: {exc}",
                            hint="run the same skyplane-provider version on every gateway") from None


def _split(payload: Buffer, meta: ChunkMeta) -> list[Buffer]:
    """One buffer per object: the payload itself for one object, else a copy of each object's bytes
    (stores' SDKs take bytes, not views)."""
    if len(meta.objects) == 1:
        return [payload]
    view, at, out = memoryview(payload), 0, []
    for o in meta.objects:
        out.append(bytes(view[at:at + o.length]))
        at += o.length
    return out
