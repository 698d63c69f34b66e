"""SigV4 headers for the direct path's one request, a bodiless ranged GET (gateway/stores/s3_direct.py),
computed as botocore's ``S3SigV4Auth`` computes them, without its request objects.

Why: signing through botocore (an ``AWSRequest``, its header maps, URL splits and the canonical
request rebuilt twice, then ``prepare()``) was about a quarter of a gateway reader's CPU per small
GET from moto (docs/benchmarks.md, "Scale": ~136 us with the request's preparation). The request
signed here is always the same shape, so its canonical form is a format string: the host, ``range``,
``x-amz-content-sha256`` (the empty body's SHA-256: botocore signs a GET's payload hash so unless
told otherwise), ``x-amz-date`` and, with temporary credentials, ``x-amz-security-token``; the path
as sent (S3 paths are not normalised); no query. The day's signing key of a secret and region is
derived once. tests/test_s3_direct.py checks each header against botocore's for the same request.
"""

from __future__ import annotations

import hashlib
import hmac
import time
import urllib.parse

#: The SHA-256 of an empty body.
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
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


class GetSigner:
    """Signs ranged GETs to one endpoint ``host`` for ``region``; thread-safe (the cache of day keys
    is a dict whose entries are only ever added whole)."""

    def __init__(self, host: str, region: str) -> None:
        self.host, self.region = host, region
        self._keys: dict[tuple[str, str], bytes] = {}

    def headers(self, path: str, byte_range: str, access_key: str, secret_key: str, token: str | None,
                timestamp: str | None = None) -> dict[str, str]:
        """The request's headers (``Range`` and the signature's) for a GET of ``path`` (as sent, already
        encoded). ``timestamp``: ``YYYYMMDDTHHMMSSZ`` (now, if None)."""
        stamp = timestamp or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        day = stamp[:8]
        scope = f"{day}/{self.region}/s3/aws4_request"
        signed = "host;range;x-amz-content-sha256;x-amz-date" + (";x-amz-security-token" if token else "")
        canonical = (f"GET\n{path}\n\nhost:{self.host}\nrange:{' '.join(byte_range.split())}\n"
                     f"x-amz-content-sha256:{EMPTY_SHA256}\nx-amz-date:{stamp}\n"
                     + (f"x-amz-security-token:{' '.join(token.split())}\n" if token else "")
                     + f"\n{signed}\n{EMPTY_SHA256}")
        to_sign = f"{_ALGORITHM}\n{stamp}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        signature = hmac.new(self._key(secret_key, day), to_sign.encode(), hashlib.sha256).hexdigest()
        headers = {"Range": byte_range, "X-Amz-Date": stamp, "X-Amz-Content-SHA256": EMPTY_SHA256,
                   "Authorization": f"{_ALGORITHM} Credential={access_key}/{scope}, SignedHeaders={signed}, "
                                    f"Signature={signature}"}
        if token:
            headers["X-Amz-Security-Token"] = token
        return headers

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
