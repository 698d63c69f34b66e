"""SigV4 for the light S3 client's requests (gateway/stores/s3_api.py), computed as botocore's
``S3SigV4Auth`` computes them, without its request objects.

Why: signing through botocore (an ``AWSRequest``, its header maps, URL splits and the canonical
request rebuilt twice, then ``prepare()``) was about a quarter of a gateway reader's CPU per small
GET from moto (docs/benchmarks.md, "Scale": ~136 us with the request's preparation), and importing
botocore with its first client ~180 ms of a gateway's start. Every header the caller passes is signed
(none it sends is on botocore's list of unsigned ones), with ``host``, ``x-amz-content-sha256``,
``x-amz-date`` and, with temporary credentials, ``x-amz-security-token``; the path as sent (S3 paths
are not normalised); the query as sent, its pairs sorted. The day's signing key of a secret and
region is derived once. tests/test_s3_api.py checks each header against botocore's for the same
request.
"""

from __future__ import annotations

import hashlib
import hmac
import time
import urllib.parse

#: The SHA-256 of an empty body.
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
#: The payload hash of a request whose body is not signed (botocore's, with payload signing off).
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
_ALGORITHM = "AWS4-HMAC-SHA256"


def canonical_host(url: str) -> str:
    """The ``host`` SigV4 signs for ``url``: lowercase, without a default port or user info (as
    botocore derives it)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"  # an IPv6 literal
    if parts.port is not None and parts.port != {"http": 80, "https": 443}.get(parts.scheme):
        host = f"{host}:{parts.port}"
    return host


def encode_query(params: dict[str, str | int | None]) -> str:
    """A query string as botocore's serializer writes one (each name and value percent-encoded but for
    ``-_.~``; None values left out), its pairs sorted as SigV4 signs them: the string is both sent and
    signed."""
    return "&".join(f"{_quote(k)}={_quote(str(v))}" for k, v in sorted(params.items()) if v is not None)


def _quote(text: str) -> str:
    return urllib.parse.quote(text, safe="-_.~")


class Signer:
    """Signs S3 requests to one endpoint ``host`` for ``region``; thread-safe (the cache of day keys
    is a dict whose entries are only ever added whole)."""

    def __init__(self, host: str, region: str) -> None:
        self.host, self.region = host, region
        self._keys: dict[tuple[str, str], bytes] = {}

    def sign(self, method: str, path: str, query: str, headers: dict[str, str], payload_hash: str,
             access_key: str, secret_key: str, token: str | None, timestamp: str | None = None) -> dict[str, str]:
        """``headers`` with the signature's added, for a ``method`` request of ``path`` (as sent, already
        encoded) and ``query`` (from :func:`encode_query`) whose body hashes to ``payload_hash`` (its
        SHA-256 in hex, or :data:`UNSIGNED_PAYLOAD`). ``timestamp``: ``YYYYMMDDTHHMMSSZ`` (now, if None)."""
        stamp = timestamp or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        day = stamp[:8]
        scope = f"{day}/{self.region}/s3/aws4_request"
        signed = dict(headers)
        signed.update({"X-Amz-Date": stamp, "X-Amz-Content-SHA256": payload_hash})
        if token:
            signed["X-Amz-Security-Token"] = token
        canonical_headers = sorted([("host", self.host)] + [(k.lower(), " ".join(str(v).split()))
                                                            for k, v in signed.items()])
        names = ";".join(k for k, _ in canonical_headers)
        canonical = "\n".join([method, path, query, "".join(f"{k}:{v}\n" for k, v in canonical_headers), names,
                               payload_hash])
        to_sign = f"{_ALGORITHM}\n{stamp}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        signature = hmac.new(self._key(secret_key, day), to_sign.encode(), hashlib.sha256).hexdigest()
        signed["Authorization"] = (f"{_ALGORITHM} Credential={access_key}/{scope}, SignedHeaders={names}, "
                                   f"Signature={signature}")
        return signed

    def _key(self, secret_key: str, day: str) -> bytes:
        key = self._keys.get((secret_key, day))
        if key is None:
            key = hmac.new(f"AWS4{secret_key}".encode(), day.encode(), hashlib.sha256).digest()
            for part in (self.region, "s3", "aws4_request"):
                key = hmac.new(key, part.encode(), hashlib.sha256).digest()
            if len(self._keys) > 16:  # rotated credentials or days gone by: never grows without bound
                self._keys.clear()
            self._keys[(secret_key, day)] = key
        return key
