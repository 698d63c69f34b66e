"""Turning a chunk into a frame and back: checksum, lz4, AES-256-GCM (docs/wire-protocol.md).

A source gateway *encodes* (checksum of the original bytes, compress when it pays, encrypt
metadata and payload together with the fixed header as associated data); a destination gateway
*decodes* (authenticate and decrypt, decompress, verify the checksum). Relays do neither.

The checksum is the first 128 bits of SHA-256 over the original bytes. When the job encrypts, it
is keyed (HMAC-SHA256 with a key derived from the job's encryption key), because the header
travels in the clear and relays must not be able to confirm guesses of the plaintext.
"""

from __future__ import annotations

import hashlib
import hmac
import os

import lz4.block
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from planner.errors import BadOptionError, ChecksumError, ProtocolError

from .wire import (CHECKSUM_SIZE, DEFAULT_MAX_CHUNK, FLAG_COMPRESSED, FLAG_ENCRYPTED, NONCE_SIZE, TAG_SIZE, Frame,
                   Header)

#: Clear frames carry the first bytes of SHA-256 of their metadata after it (encrypted ones need not).
META_DIGEST_SIZE = 16
#: Chunks below this are compressed without sampling first (sampling would cost as much).
_SAMPLE_BELOW = 256 * 1024
_SAMPLE = 64 * 1024
#: A sample must shrink below this fraction for the whole chunk to be compressed.
_WORTH = 0.9


def worth_compressing(data: bytes) -> bool:
    """Whether lz4 is likely to shrink ``data``: three 64 KiB samples (start, middle, end) are tried."""
    if len(data) < _SAMPLE_BELOW:
        return True
    view = memoryview(data)
    mid = len(data) // 2
    sample = b"".join((view[:_SAMPLE], view[mid:mid + _SAMPLE], view[-_SAMPLE:]))
    return len(lz4.block.compress(sample, store_size=False)) < _WORTH * len(sample)


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
        self._checksum_key = hmac.digest(key, b"skyplane checksum key v1", "sha256") if key is not None else None

    def checksum(self, data: bytes | memoryview) -> bytes:
        if self._checksum_key is not None:
            return hmac.digest(self._checksum_key, data, "sha256")[:CHECKSUM_SIZE]
        return hashlib.sha256(data).digest()[:CHECKSUM_SIZE]

    def encode(self, *, chunk_id: int, partition: int, meta: bytes, data: bytes,
               checksum: bytes | None = None) -> Frame:
        """The frame carrying ``data`` (the original bytes) and ``meta`` (the chunk's metadata)."""
        if len(data) > self.max_chunk:
            raise BadOptionError(f"chunk {chunk_id} has {len(data)} bytes, more than the limit of {self.max_chunk}",
                                 hint="use a smaller chunk size")
        checksum = checksum or self.checksum(data)
        flags, payload = 0, data
        if self.compress and data and worth_compressing(data):
            packed = lz4.block.compress(data, store_size=False)
            if len(packed) < len(data):
                flags, payload = FLAG_COMPRESSED, packed
        if not self.encrypt:
            # Without AEAD, the metadata (where the bytes go) needs a digest of its own.
            meta = meta + hashlib.sha256(meta).digest()[:META_DIGEST_SIZE]
            header = Header(flags, partition, self.job_id, chunk_id, len(data), len(meta) + len(payload),
                            checksum, len(meta))
            return Frame(header, header.pack(), b"".join((meta, payload)))
        flags |= FLAG_ENCRYPTED
        wire_length = NONCE_SIZE + len(meta) + len(payload) + TAG_SIZE
        header = Header(flags, partition, self.job_id, chunk_id, len(data), wire_length, checksum, len(meta))
        header_bytes = header.pack()
        nonce = os.urandom(NONCE_SIZE)
        body = bytearray(wire_length)
        body[:NONCE_SIZE] = nonce
        self._aead.encrypt_into(nonce, b"".join((meta, payload)), header_bytes, memoryview(body)[NONCE_SIZE:])
        return Frame(header, header_bytes, body)

    def decode(self, frame: Frame) -> tuple[bytes, bytes]:
        """``(meta, data)`` of a frame, authenticated and verified.

        Raises :class:`ChecksumError` (retryable: the chunk must be sent again) when decryption
        fails authentication, decompression fails or the checksum does not match, and
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
        if not h.encrypted:
            meta, digest = meta[:-META_DIGEST_SIZE], meta[-META_DIGEST_SIZE:]
            if len(digest) != META_DIGEST_SIZE or hashlib.sha256(meta).digest()[:META_DIGEST_SIZE] != digest:
                raise ChecksumError(f"chunk {h.chunk_id}'s metadata does not match its digest (corrupted on the way)",
                                    hint="it will be sent again")
        if h.compressed:
            try:
                data = lz4.block.decompress(payload, uncompressed_size=h.raw_length)
            except lz4.block.LZ4BlockError:
                raise ChecksumError(f"chunk {h.chunk_id} does not decompress (corrupted on the way)",
                                    hint="it will be sent again") from None
        else:
            data = bytes(payload)
        if len(data) != h.raw_length or not hmac.compare_digest(self.checksum(data), h.checksum):
            raise ChecksumError(f"chunk {h.chunk_id} does not match the checksum of the original bytes",
                                hint="it will be sent again")
        return meta, data
