"""S3's REST API over one pooled urllib3 pool manager: SigV4, XML answers, the retry budget.

Why not botocore on a gateway's common path: importing it costs an S3 job's gateway ~115 ms and its
first client ~65 ms before the first request (``benchmarks/cli_timeline.py --from s3 --imports``), and
its request pipeline (serializer, handlers, response parser) is most of a small GET's CPU. The verbs a
copy makes (HeadBucket, ListObjectsV2, HEAD/GET/PUT/DELETE of an object, the multipart ones) are plain
REST requests: they are made here, signed as botocore signs them (:mod:`.s3_sign`), and answered with
the same errors, which the store maps as it maps botocore's (``s3._translate``). What is rare or hard
to rewrite (presigning, server-side copies, listing parts and uploads, bucket location and creation)
stays on botocore, built on first use (``s3.S3Clients.sdk``); so does every setting this client would
not honour faithfully (``s3.light_settings`` decides).

Addressing: an explicit endpoint (an emulator, an S3-compatible server) is addressed path-style, as
the botocore client was told to; AWS itself virtual-host style at the bucket's regional endpoint
(``https://{bucket}.s3.{region}.amazonaws.com``), the region learned from a first HeadBucket's
``x-amz-bucket-region`` (S3 sends it with any answer, whichever region was asked), where botocore
learns it from a redirect.

Retries (docs/reliability.md "One retry budget"): ``attempts`` per call (``s3.sdk_attempts``) with
botocore's standard backoff (waits drawn from 0-1 s doubling to 20 s, at least a ``Retry-After``), on
500/502/503/504, 408/429, throttling codes and requests that got no (whole) answer; a throttled answer also slows
the whole client (:class:`~.http_pool.RateLimiter`, as botocore's adaptive mode did).
"""

from __future__ import annotations

import email.utils
import hashlib
import re
import threading
import urllib.parse
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable

import urllib3

from .common import CONNECT_TIMEOUT, READ_TIMEOUT, body_into, read_then_release, retry_after_of
from .http_pool import CONNECTION_ERRORS, Backoff, RateLimiter, pool_manager
from .s3_sign import EMPTY_SHA256, UNSIGNED_PAYLOAD, Signer, canonical_host, encode_query

#: AWS's regional S3 endpoint of a bucket, virtual-host style.
AWS_BASE = "https://{bucket}.s3.{region}.amazonaws.com"
_DNS_BUCKET = re.compile(r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")
_TIMEOUT = urllib3.Timeout(connect=CONNECT_TIMEOUT, read=READ_TIMEOUT)
_NS = "{*}"  # any namespace or none: S3 answers in its 2006-03-01 one, some compatible servers in none
#: Error codes of throttling (botocore's standard retry's list).
THROTTLING = frozenset({"Throttling", "ThrottlingException", "ThrottledException", "RequestThrottledException",
                        "TooManyRequestsException", "ProvisionedThroughputExceededException",
                        "TransactionInProgressException", "RequestLimitExceeded", "BandwidthLimitExceeded",
                        "LimitExceededException", "RequestThrottled", "SlowDown", "PriorRequestNotComplete",
                        "EC2ThrottledException"})
#: Transient error codes and statuses botocore's standard retry tries again (with 408 and 429).
_TRANSIENT = frozenset({"RequestTimeout", "RequestTimeoutException", "PriorRequestNotComplete"})
_TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})


class S3Error(Exception):
    """An error answer of S3: its HTTP ``status``, the error document's ``code`` (the status, for answers
    without one: HEAD) and ``message``, and the ``response`` (its headers: ``Retry-After``)."""

    def __init__(self, status: int, code: str, message: str, response: Any = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message, self.response = status, code, message, response

    @classmethod
    def of(cls, response: Any, data: bytes | None = None) -> "S3Error":
        data = response.data if data is None else data
        code = message = None
        try:
            root = ElementTree.fromstring(data) if data else None
        except ElementTree.ParseError:
            root = None
        if root is not None:
            code, message = root.findtext(f"{_NS}Code"), root.findtext(f"{_NS}Message")
        return cls(response.status, code or str(response.status), message or (response.reason or ""), response)

    @property
    def throttling(self) -> bool:
        return self.code in THROTTLING or self.status == 429


class NoCredentials(Exception):
    """No AWS credentials were found for a request that must be signed."""


def retryable(exc: BaseException) -> bool:
    """What a call's attempts retry: 500/502/503/504, 408, 429, throttling and transient codes, and
    requests that got no (whole) answer (botocore's standard retry, with 408 and 429)."""
    if isinstance(exc, S3Error):
        return exc.status in _TRANSIENT_STATUS or exc.code in THROTTLING or exc.code in _TRANSIENT
    return isinstance(exc, CONNECTION_ERRORS)


@dataclass(frozen=True)
class Route:
    """Where one bucket's requests go: ``base`` (its URL, up to the key), the ``path`` of that URL
    (what a key's signed path starts with), and the signer for the host and region."""

    base: str
    path: str
    signer: Signer


class S3Api:
    """Requests to S3 for every bucket of one credentials entry; thread-safe.

    ``endpoint``: an explicit endpoint (path-style), or None for AWS (virtual-host, region learned);
    ``region``: the configured one (signing with an explicit endpoint; where AWS is asked first);
    ``credentials``: gives ``(access_key, secret_key, token)`` for each request, or None (unsigned
    requests are not made: :class:`NoCredentials`); ``attempts``: per call; ``sign_payloads``: whether
    bodies are hashed into the signature (``s3.payload_signing``); ``ca_bundle``: botocore's own
    (``AWS_CA_BUNDLE``, a profile's ``ca_bundle``), if one was set."""

    def __init__(self, endpoint: str | None, region: str | None,
                 credentials: Callable[[], tuple[str, str, str | None] | None], attempts: int,
                 sign_payloads: bool, ca_bundle: str | None = None) -> None:
        self.endpoint = endpoint.rstrip("/") if endpoint else None
        self.region = region
        self._credentials = credentials
        self._sign_payloads = sign_payloads
        self._http = pool_manager(self.endpoint or AWS_BASE.format(bucket="s3", region="us-east-1"), ca_bundle)
        self._routes: dict[str, Route] = {}
        self._routing = threading.Lock()
        self.limiter = RateLimiter()
        self.retry = Backoff(retryable, deadline=float("inf"), initial=1.0, multiplier=2.0, maximum=20.0,
                             attempts=attempts, wait_at_least=retry_after_of)

    # ---- routing ------------------------------------------------------------------------------
    def serves(self, bucket: str) -> bool:
        """Whether this client addresses ``bucket`` as botocore would: any bucket path-style, on AWS
        only names that are a DNS label valid under TLS (no dots; not an ARN, an S3 Express directory
        bucket or an access point alias: those go to botocore)."""
        if self.endpoint:
            return True
        return _DNS_BUCKET.match(bucket) is not None and not bucket.endswith(("--x-s3", "-s3alias", "--ol-s3"))

    def route(self, bucket: str) -> Route:
        found = self._routes.get(bucket)
        if found is None:
            with self._routing:
                found = self._routes.get(bucket)
                if found is None:
                    found = self._routes[bucket] = self._find_route(bucket)
        return found

    def _route_for(self, bucket: str, region: str) -> Route:
        base = f"{self.endpoint}/{_quote_key(bucket)}" if self.endpoint else AWS_BASE.format(bucket=bucket,
                                                                                            region=region)
        return Route(base, urllib.parse.urlsplit(base).path, Signer(canonical_host(base), region))

    def _find_route(self, bucket: str) -> Route:
        if self.endpoint:
            return self._route_for(bucket, self.region or "us-east-1")
        asked = self._route_for(bucket, self.region or "us-east-1")

        def learn() -> str:
            response = self._send(asked, "HEAD", None, "", {}, None, preload=True)
            region = response.headers.get("x-amz-bucket-region")
            if not region:
                raise S3Error.of(response)
            return region

        return self._route_for(bucket, self.retry(learn))

    # ---- requests -----------------------------------------------------------------------------
    def _send(self, route: Route, method: str, key: str | None, query: str, headers: dict[str, str],
              body: bytes | bytearray | memoryview | None, *, preload: bool) -> Any:
        """One attempt, signed; the urllib3 response whatever its status (the body read if ``preload``)."""
        credentials = self._credentials()
        if credentials is None:
            raise NoCredentials("no AWS credentials")
        encoded = "" if key is None else "/" + _quote_key(key)
        path = route.path + encoded if encoded or route.path else "/"
        if body is None or not len(body):
            payload = EMPTY_SHA256 if self._sign_payloads else UNSIGNED_PAYLOAD
        else:
            payload = hashlib.sha256(body).hexdigest() if self._sign_payloads else UNSIGNED_PAYLOAD
        signed = route.signer.sign(method, path, query, headers, payload, *credentials)
        url = route.base + encoded + (f"?{query}" if query else "")
        self.limiter.acquire()
        return self._http.request(method, url, body=body, headers=signed, preload_content=preload,
                                  decode_content=False, retries=False, redirect=False, timeout=_TIMEOUT)

    def call(self, bucket: str, method: str, key: str | None = None, params: dict[str, Any] | None = None,
             headers: dict[str, str] | None = None, body: bytes | bytearray | memoryview | None = None,
             read: Callable[[Any], Any] | None = None) -> Any:
        """A request within the call's attempts: the urllib3 response of an answer below 300, its body
        read; or, with ``read``, what ``read(response)`` returns (it reads the body itself, within the
        attempt: a body cut off is tried again). An error answer raises :class:`S3Error`, and so does a
        200 whose body is an error document (S3 sends one when a long call such as
        CompleteMultipartUpload fails after its answer started), except for an object's own bytes:
        botocore takes it for a 500, retried, for every verb but those with a streaming body."""
        route = self.route(bucket)
        query = encode_query(params) if params else ""
        object_bytes = method == "GET" and key is not None and not params

        def attempt() -> Any:
            response = self._send(route, method, key, query, headers or {}, body, preload=read is None)
            if response.status < 300 and read is None and not object_bytes and _is_error_document(response.data):
                error = S3Error.of(response)
                raise S3Error(500, error.code, error.message, response)
            if response.status >= 300:
                error = S3Error.of(response)
                if read is not None:
                    response.release_conn()
                if error.throttling:
                    self.limiter.throttled()
                raise error
            self.limiter.succeeded()
            return response if read is None else read(response)

        return self.retry(attempt)

    # ---- verbs --------------------------------------------------------------------------------
    def head_bucket(self, bucket: str) -> None:
        self.call(bucket, "HEAD")

    def list_objects(self, bucket: str, prefix: str, start_after: str | None,
                     max_keys: int) -> tuple[list[tuple[str, int, str | None, float]], bool]:
        """One ListObjectsV2 page: ``(key, size, etag, mtime)`` of each object, and whether more follow."""
        response = self.call(bucket, "GET", params={"list-type": "2", "prefix": prefix, "max-keys": max_keys,
                                                    "start-after": start_after, "encoding-type": "url"})
        root = _xml(response)
        encoded = root.findtext(f"{_NS}EncodingType") == "url"
        objects = []
        for item in root.iterfind(f"{_NS}Contents"):
            key = item.findtext(f"{_NS}Key") or ""
            objects.append((urllib.parse.unquote_plus(key) if encoded else key, int(item.findtext(f"{_NS}Size") or 0),
                            item.findtext(f"{_NS}ETag"), iso_time(item.findtext(f"{_NS}LastModified") or "")))
        return objects, root.findtext(f"{_NS}IsTruncated") == "true"

    def head(self, bucket: str, key: str) -> Any:
        """The object's headers (``content-length``, ``etag``, ``last-modified``, ``x-amz-*``)."""
        return self.call(bucket, "HEAD", key).headers

    def get(self, bucket: str, key: str, byte_range: str | None = None) -> Any:
        """The object (or ``byte_range`` of it), as the urllib3 response with its body read, as stored."""
        return self.call(bucket, "GET", key, headers={"Range": byte_range} if byte_range else None)

    def get_into(self, bucket: str, key: str, byte_range: str | None, view: memoryview) -> int:
        """``byte_range`` of the object (None: all of it) read straight into ``view``
        (``common.body_into``: no copy) until it is full or the body ends; the bytes read."""
        return self.call(bucket, "GET", key, headers={"Range": byte_range} if byte_range else None,
                         read=lambda response: read_then_release(response, lambda: body_into(response._fp, view)))

    def put(self, bucket: str, key: str, data: bytes | bytearray | memoryview,
            headers: dict[str, str] | None = None) -> Any:
        """PutObject (``headers``: e.g. a condition); the answer's headers."""
        return self.call(bucket, "PUT", key, headers=headers, body=data).headers

    def delete(self, bucket: str, key: str) -> None:
        self.call(bucket, "DELETE", key)

    def create_multipart(self, bucket: str, key: str) -> str:
        return _xml(self.call(bucket, "POST", key, params={"uploads": ""})).findtext(f"{_NS}UploadId") or ""

    def upload_part(self, bucket: str, key: str, upload_id: str, part_number: int,
                    data: bytes | bytearray | memoryview) -> str | None:
        """One part; its ETag as S3 gave it."""
        return self.call(bucket, "PUT", key, params={"partNumber": part_number, "uploadId": upload_id},
                         body=data).headers.get("etag")

    def complete_multipart(self, bucket: str, key: str, upload_id: str, parts: list[tuple[int, str]]) -> None:
        """CompleteMultipartUpload of ``(part number, ETag)`` in order (an error S3 sends after its 200
        has started is one: :meth:`call`)."""
        body = ("<CompleteMultipartUpload xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">"
                + "".join(f"<Part><ETag>{_escape(etag)}</ETag><PartNumber>{n}</PartNumber></Part>"
                          for n, etag in parts)
                + "</CompleteMultipartUpload>").encode()

        self.call(bucket, "POST", key, params={"uploadId": upload_id}, body=body)

    def abort_multipart(self, bucket: str, key: str, upload_id: str) -> None:
        self.call(bucket, "DELETE", key, params={"uploadId": upload_id})

    def location(self, bucket: str) -> str | None:
        """GetBucketLocation: the bucket's location constraint (None or empty: us-east-1)."""
        return _xml(self.call(bucket, "GET", params={"location": ""})).text

    def list_uploads(self, bucket: str, prefix: str) -> list[tuple[str, str]]:
        """``(key, upload id)`` of every multipart upload in progress under ``prefix`` (every page of
        ListMultipartUploads)."""
        uploads: list[tuple[str, str]] = []
        markers: dict[str, str | None] = {}
        while True:
            root = _xml(self.call(bucket, "GET", params={"uploads": "", "prefix": prefix, "encoding-type": "url",
                                                         **markers}))
            encoded = root.findtext(f"{_NS}EncodingType") == "url"
            for item in root.iterfind(f"{_NS}Upload"):
                key = item.findtext(f"{_NS}Key") or ""
                uploads.append((urllib.parse.unquote_plus(key) if encoded else key, item.findtext(f"{_NS}UploadId") or ""))
            if root.findtext(f"{_NS}IsTruncated") != "true":
                return uploads
            key_marker = root.findtext(f"{_NS}NextKeyMarker") or ""
            markers = {"key-marker": urllib.parse.unquote_plus(key_marker) if encoded else key_marker,
                       "upload-id-marker": root.findtext(f"{_NS}NextUploadIdMarker")}

    def close(self) -> None:
        """Close the pooled connections (the pool reopens them on the next request)."""
        self._http.clear()


def _quote_key(key: str) -> str:
    """A key (or bucket) in a URL path, as botocore's serializer encodes it."""
    return urllib.parse.quote(key, safe="/~")


def _escape(text: str) -> str:
    """XML text, escaped as botocore's serializer (ElementTree) escapes it."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _is_error_document(data: bytes) -> bool:
    """Whether a 200's body is S3's error document (its root element ``Error``)."""
    if b"<Error>" not in data[:512]:
        return False
    try:
        return ElementTree.fromstring(data).tag.rpartition("}")[2] == "Error"
    except ElementTree.ParseError:
        return False


def _xml(response: Any) -> ElementTree.Element:
    return ElementTree.fromstring(response.data)


def iso_time(value: str) -> float:
    """S3's ISO 8601 time (``2026-12-05T16:22:33.000Z``) in seconds since the epoch."""
    return datetime.fromisoformat(value).timestamp()


def http_time(value: str | None) -> float | None:
    """An HTTP date (``Sat, 05 Dec 2026 16:22:33 GMT``) in seconds since the epoch."""
    return email.utils.parsedate_to_datetime(value).timestamp() if value else None
