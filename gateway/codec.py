"""Turning a chunk into a frame and back: lz4, AES-256-GCM or CRC32C (docs/wire-protocol.md).

A source gateway *encodes* (compress when it pays, then seal metadata and payload with AES-256-GCM,
the fixed header as associated data; or, in a job without encryption, put the CRC32C of the
metadata and the original bytes in the header); a destination gateway *decodes* (authenticate and
decrypt, or recompute the CRC32C; decompress). Relays do neither.

Each byte is checked once end to end: the AEAD tag when the frame is encrypted (it authenticates
the compressed bytes, so what decompresses is what the source read: no second hash), the CRC32C
(hardware-accelerated, ``google-crc32c``) of the header, the metadata and the original bytes when it
is not.
"""

from __future__ import annotations

import dataclasses
import os

import google_crc32c
import lz4.block
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from planner.errors import BadOptionError, ChecksumError, ProtocolError

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


def worth_compressing(data: bytes) -> bool:
    """Whether lz4 is likely to shrink ``data``: three 64 KiB samples (start, middle, end) are tried."""
    if len(data) < _SAMPLE_BELOW:
        return True
    view = memoryview(data)
    mid = len(data) // 2
    sample = b"".join((view[:_SAMPLE], view[mid:mid + _SAMPLE], view[-_SAMPLE:]))
    return len(lz4.block.compress(sample, store_size=False)) < _WORTH * len(sample)


def crc32c_of(header: Header, meta: bytes, data: bytes | memoryview) -> bytes:
    """The checksum field of a clear frame: CRC32C of the header (its checksum field zero), the
    metadata and the original bytes, big-endian, in the first 4 bytes of the field."""
    crc = google_crc32c.value(dataclasses.replace(header, checksum=_NO_CHECKSUM).pack())
    crc = google_crc32c.extend(google_crc32c.extend(crc, meta), data)
    return crc.to_bytes(4, "big") + bytes(CHECKSUM_SIZE - 4)


class Codec:
    """Encodes and decodes the frames of one job.

    ``key`` (32 bytes) is the job's end-to-end key, or None on a gateway that must not read data
    (a pure relay never builds a codec) or in a job without encryption. ``encrypt`` makes
    :meth:`encode` encrypt and :meth:`decode` refuse frames sent in the clear; ``compress`` makes
    :meth:`encode` compress chunks that shrink.
    """

    def __init__(self, job_id: bytes, *, key: bytes | None, encrypt: bool, compress: bool,
                 max_chunk: int = DEFAULT_MAX_CHUNK) -> None:
        if encrypt and (key is None or len(key) != 32):
            raise BadOptionError("encryption is on but no 256-bit encryption key was given",
                                 hint="pass encryption_key as 64 hex digits to gateways that read or write")
        self.job_id = job_id
        self.encrypt = encrypt
        self.compress = compress
        self.max_chunk = max_chunk
        self._aead = AESGCM(key) if key is not None else None

    def encode(self, *, chunk_id: int, partition: int, meta: bytes, data: bytes) -> Frame:
        """The frame carrying ``data`` (the original bytes) and ``meta`` (the chunk's metadata)."""
        if len(data) > self.max_chunk:
            raise BadOptionError(f"chunk {chunk_id} has {len(data)} bytes, more than the limit of {self.max_chunk}",
                                 hint="use a smaller chunk size")
        flags, payload = 0, data
        if self.compress and data and worth_compressing(data):
            packed = lz4.block.compress(data, store_size=False)
            if len(packed) < len(data):
                flags, payload = FLAG_COMPRESSED, packed
        if not self.encrypt:
            header = Header(flags, partition, self.job_id, chunk_id, len(data), len(meta) + len(payload),
                            _NO_CHECKSUM, len(meta))
            header = dataclasses.replace(header, checksum=crc32c_of(header, meta, data))
            return Frame(header, header.pack(), b"".join((meta, payload)))
        flags |= FLAG_ENCRYPTED
        wire_length = NONCE_SIZE + len(meta) + len(payload) + TAG_SIZE
        header = Header(flags, partition, self.job_id, chunk_id, len(data), wire_length, _NO_CHECKSUM, len(meta))
        header_bytes = header.pack()
        nonce = os.urandom(NONCE_SIZE)
        body = bytearray(wire_length)
        body[:NONCE_SIZE] = nonce
        self._aead.encrypt_into(nonce, b"".join((meta, payload)), header_bytes, memoryview(body)[NONCE_SIZE:])
        return Frame(header, header_bytes, body)

    def decode(self, frame: Frame) -> tuple[bytes, bytes, str]:
        """``(meta, data, integrity)`` of a frame, authenticated or checksummed; ``integrity`` is
        :data:`AEAD` or :data:`CRC32C`.

        Raises :class:`ChecksumError` (retryable: the chunk must be sent again) when decryption
        fails authentication, decompression fails or the CRC32C does not match, and
        :class:`ProtocolError` for a frame this gateway must not accept (clear text in an encrypted
        job, or encrypted without our having the key).
        """
        h = frame.header
        body = memoryview(frame.body)
        if h.encrypted:
            if self._aead is None:
                raise ProtocolError(f"chunk {h.chunk_id} is encrypted but this gateway has no encryption key",
                                    hint="give the job's encryption_key to every gateway that writes")
            plain = bytearray(h.wire_length - NONCE_SIZE - TAG_SIZE)
            try:
                self._aead.decrypt_into(body[:NONCE_SIZE], body[NONCE_SIZE:], frame.header_bytes, plain)
            except InvalidTag:
                raise ChecksumError(f"chunk {h.chunk_id} failed authentication (tampered or corrupted on the way)",
                                    hint="it will be sent again") from None
            body = memoryview(plain)
        elif self.encrypt:
            raise ProtocolError(f"chunk {h.chunk_id} arrived unencrypted in a job that encrypts")
        meta, payload = bytes(body[:h.meta_length]), body[h.meta_length:]
        if h.compressed:
            try:
                data = lz4.block.decompress(payload, uncompressed_size=h.raw_length)
            except lz4.block.LZ4BlockError:
                raise ChecksumError(f"chunk {h.chunk_id} does not decompress (corrupted on the way)",
                                    hint="it will be sent again") from None
        else:
            data = bytes(payload)
        if len(data) != h.raw_length:
            raise ChecksumError(f"chunk {h.chunk_id} decompressed to {len(data)} bytes, not {h.raw_length}",
                                hint="it will be sent again")
        if h.encrypted:
            return meta, data, AEAD
        if crc32c_of(h, meta, data) != h.checksum:
            raise ChecksumError(f"chunk {h.chunk_id} does not match the CRC32C of the original bytes "
                                "(corrupted on the way)", hint="it will be sent again")
        return meta, data, CRC32C
