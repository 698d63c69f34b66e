"""Small pieces every store adapter shares: error translation, range checks, pool size."""

from __future__ import annotations

import base64
import hashlib
import http.client
import os
import re
import time
import uuid
from datetime import datetime, timezone
from typing import Any, Callable

from planner.errors import (BadOptionError, CredentialsError, CredentialsExpiredError, SkyplaneError,
                            StoreUnavailableError, ThrottledError)

#: HTTP connections each SDK client may keep open: room for ~32 parallel users of one client.
POOL_SIZE = 64

#: Seconds to wait for a TCP connection, and for a response, before calling a store unavailable.
CONNECT_TIMEOUT = 5
READ_TIMEOUT = 120

_UPLOAD_ID = re.compile(r"^[0-9a-f]{32}$")


#: Seconds before an entry's ``expiration`` from which the store's refusal of its credentials is
#: taken for their expiry: the gateway's clock and the store's may differ.
EXPIRY_SKEW = 300.0
EXPIRED_HINT = ("the client that started the job renews temporary credentials and hands them to the gateways "
                "(docs/credentials.md); if it is gone, resume the job with fresh credentials")


class translated:
    """Around an SDK call: re-raise its exception as the error ``translate`` maps it to (unmapped ones
    pass through). ``expires_at``: when the store's credentials stop working (see :func:`expired`).
    ``sdk_retries``: the SDK retries throttled and failed requests itself, so a throttled or unavailable
    store's error comes after its retries and is marked ``retried`` (with the store's ``Retry-After``).

    A plain class, not a generator-based context manager: stores enter one two or three times per
    object, and the generator machinery cost ~3 us each on a small object's write."""

    __slots__ = ("_translate", "_expires_at", "_sdk_retries")

    def __init__(self, translate: Callable[[Exception], SkyplaneError | None],
                 expires_at: float | None = None, *, sdk_retries: bool = False) -> None:
        self._translate, self._expires_at, self._sdk_retries = translate, expires_at, sdk_retries

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, exc, tb) -> bool:
        if exc is None or isinstance(exc, SkyplaneError) or not isinstance(exc, Exception):
            return False
        mapped = self._translate(exc)
        if mapped is None:
            return False
        if self._sdk_retries and isinstance(mapped, (ThrottledError, StoreUnavailableError)):
            mapped.retried = True
            mapped.retry_after = retry_after_of(exc)
        raise expired(mapped, self._expires_at) from exc


def env_ca_bundle() -> str | None:
    """The CA bundle ``requests`` takes from the environment when it trusts it."""
    return os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")


def retry_after_of(exc: BaseException) -> float | None:
    """The ``Retry-After`` seconds of the HTTP answer behind an SDK exception, if it carried one:
    botocore's ``ClientError.response`` (a dict), an azure-core or google-api-core exception's
    ``response`` (an HTTP response with headers), or the error a google ``RetryError`` wraps.
    The HTTP-date form is not read (no store we know sends it)."""
    for candidate in (exc, getattr(exc, "cause", None)):
        response = getattr(candidate, "response", None)
        if isinstance(response, dict):
            headers = response.get("ResponseMetadata", {}).get("HTTPHeaders") or {}
        else:
            headers = getattr(response, "headers", None) or {}
        value = headers.get("retry-after") or headers.get("Retry-After")
        if value is not None:
            try:
                return max(0.0, float(value))
            except (TypeError, ValueError):
                return None
    return None


def expired(error: SkyplaneError, expires_at: float | None) -> SkyplaneError:
    """A refusal of credentials that were due to expire (``expires_at``, seconds since the epoch) is
    their expiry: a retryable :class:`CredentialsExpiredError`, since renewed ones may be on the way."""
    if type(error) is not CredentialsError or expires_at is None or time.time() < expires_at - EXPIRY_SKEW:
        return error
    when = datetime.fromtimestamp(expires_at, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return CredentialsExpiredError(f"{error.message}: these credentials expire(d) at {when}", hint=EXPIRED_HINT)


def parse_expiration(value: object, where: str) -> float:
    """An entry's ``expiration`` (ISO 8601; UTC when it names no zone) as seconds since the epoch."""
    try:
        moment = datetime.fromisoformat(str(value).strip())
    except ValueError:
        raise BadOptionError(f"unreadable expiration {value!r} in credentials entry {where!r}",
                             hint="write it in ISO 8601, e.g. 2026-12-04T02:14:00Z") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp()


def bearer_token(settings: dict, scheme: str, what: str) -> str:
    """An entry's ``access_token`` for a ``scheme`` store, refused when it is empty or its
    ``expiration`` has passed: a store opened with it could only fail, later and less clearly.
    ``what`` says what to give instead."""
    token = settings.get("access_token")
    if not isinstance(token, str) or not token.strip():
        raise CredentialsError(f"the {scheme!r} credentials entry has an empty access_token", hint=f"give {what}")
    if settings.get("expiration"):
        expires_at = parse_expiration(settings["expiration"], scheme)
        if expires_at <= time.time():
            when = datetime.fromtimestamp(expires_at, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
            raise CredentialsExpiredError(f"the access token of the {scheme!r} credentials entry expired at {when}",
                                          hint=f"give a fresh one ({what}), or a source the client can renew: "
                                               "a connection or credentials block rather than a token")
    return token.strip()


def check_range(offset: int, length: int | None) -> None:
    """Reject negative offsets and lengths (``read`` semantics are those of a slice otherwise)."""
    if offset < 0 or (length is not None and length < 0):
        raise BadOptionError(f"bad byte range (offset {offset}, length {length})", hint="offset and length must be >= 0")


def byte_range(offset: int, length: int | None, *, whole: bool = False) -> str | None:
    """The HTTP byte range of ``length`` bytes from ``offset`` (to the object's end when None), as the
    stores' ``Range``, ``x-ms-range`` and copy-source range headers take it; None where the request
    asks for the object from its start instead: no ``length``, or ``whole`` (a whole object read one
    byte past its size, ``ObjectStore.read_into``), from offset 0."""
    if not offset and (length is None or whole):
        return None
    return f"bytes={offset}-{'' if length is None else offset + length - 1}"


#: Where a server-side copy probe puts what it copies for a moment (removed at once).
PROBE_PREFIX = ".skyplane-probe/"


def probe_key() -> str:
    return f"{PROBE_PREFIX}{uuid.uuid4().hex}"


def new_upload_id() -> str:
    return uuid.uuid4().hex


def check_upload_id(upload_id: str) -> None:
    """Upload ids we mint are 32 hex digits; anything else could name a path outside the upload."""
    if not isinstance(upload_id, str) or not _UPLOAD_ID.match(upload_id):
        raise BadOptionError(f"malformed multipart upload id {upload_id!r}", hint="pass the id begin_multipart returned")


def part_numbers(parts: list, what: str) -> list[int]:
    """The sorted part numbers to assemble; an empty or duplicated list is the caller's mistake."""
    numbers = sorted(p.part_number for p in parts)
    if not numbers or len(set(numbers)) != len(numbers):
        raise BadOptionError(f"cannot complete the multipart upload of {what}: the part list is empty or has duplicates",
                             hint="pass each uploaded part once")
    return numbers


def body_into(fp: http.client.HTTPResponse, view: memoryview) -> int:
    """Read an HTTP answer's body that nothing decodes straight into ``view``, with http.client's
    ``readinto``, until ``view`` is full or the body ends; returns the bytes read. The socket's bytes
    land in our buffer once: urllib3's own ``readinto`` reads a fresh buffer (http.client: a zeroed
    one, and a copy of it) and copies that into ours, three user-space passes over every byte (about
    half of what reading from moto cost us: 0.6-0.75 -> 0.3 CPU-s per GiB, docs/benchmarks.md).
    A body cut off before its Content-Length raises ``http.client.IncompleteRead``."""
    got = 0
    while got < len(view) and (n := fp.readinto(view[got:])):
        got += n
    if got < len(view) and fp.length:  # the connection ended before the body's Content-Length
        raise http.client.IncompleteRead(b"", fp.length)
    return got


def read_then_release(response: Any, read: Callable[[], int]) -> int:
    """Run ``read`` (which reads the body of ``response``, a urllib3 response not preloaded) and
    return what it returns; the connection goes back to the pool when the body was read to its end,
    else it is closed: a half-read body (an error, or more body than the caller asked for, not worth
    reading to reuse the connection) must not be the next request's answer."""
    try:
        got = read()
    except BaseException:
        response.close()
        raise
    fp = getattr(response, "_fp", None)
    if fp is None or fp.isclosed():
        response.release_conn()
    else:
        response.close()
    return got


def md5_hex(b64: str | bytes | bytearray | None) -> str | None:
    """An MD5 as stores report it (base64 text or raw bytes) -> 32 hex digits, or None."""
    if not b64:
        return None
    raw = base64.b64decode(b64) if isinstance(b64, str) else bytes(b64)
    return raw.hex() if len(raw) == 16 else None


#: The content checksums :class:`Digest` computes, as stores report them.
DIGEST_KINDS = ("md5", "crc32c")


class Digest:
    """A running content checksum of one kind (``"md5"`` or ``"crc32c"``), in the form stores report it
    (:class:`~.base.ObjectInfo`: lowercase hex, CRC32C big-endian)."""

    def __init__(self, kind: str) -> None:
        if kind not in DIGEST_KINDS:
            raise BadOptionError(f"unknown checksum kind {kind!r}", hint=f"one of {DIGEST_KINDS}")
        self.kind = kind
        self._md5 = hashlib.md5() if kind == "md5" else None
        self._crc = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        if self._md5 is not None:
            self._md5.update(data)
        else:
            from crc32c import crc32c  # not at the module's import: see gateway.codec.crc32c_of

            self._crc = crc32c(data, self._crc)

    def hexdigest(self) -> str:
        return self._md5.hexdigest() if self._md5 is not None else f"{self._crc:08x}"
