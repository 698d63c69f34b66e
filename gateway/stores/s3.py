"""Amazon S3 (and S3-compatible servers such as moto) through botocore.

The clients are botocore's own, made without boto3: boto3 adds resources and the managed transfers
(s3transfer), which a store does not use, and importing them cost every S3 job's gateway ~25 ms of
CPU before its first request (10 imports each, load 6: 0.174 against 0.150 CPU-s per process).
Credentials, region and endpoint resolve as boto3's would (the same botocore chain).
"""

from __future__ import annotations

import datetime
import email.utils
import http.client
import os
import threading
import urllib.parse
from typing import Any, Collection

import botocore.exceptions as bex
import botocore.loaders
import botocore.session
from botocore.config import Config
from botocore.utils import parse_timestamp

from planner.errors import (AccessDeniedError, BadOptionError, ConflictError, CredentialsError,
                            CredentialsExpiredError, NotFoundError, SkyplaneError, StoreError, StoreUnavailableError,
                            ThrottledError)

from ..wire import is_loopback
from .base import Capabilities, CopySource, ObjectInfo, ObjectStore, PartInfo
from .common import (CONNECT_TIMEOUT, EXPIRED_HINT, POOL_SIZE, READ_TIMEOUT, body_into, check_range, part_numbers,
                     probe_key, read_then_release, translated)
from .s3_direct import BucketRoute, DirectGet

MiB = 1024**2
_LIST_REQUEST = 1000  # keys per ListObjectsV2 request at most
#: Bytes asked of a response body at a time where it cannot be read straight into our buffer
#: (:func:`_body_into`): urllib3's readinto reads a new buffer of the size asked (http.client: another,
#: and a copy) and copies it into ours, so whole 64 MiB asks cost three fresh, page-faulted 64 MiB
#: buffers; 1 MiB ones are reused by malloc (64 MiB from moto: 80 -> 60 ms CPU).
_READ_PIECE = 1 * MiB
_NOT_FOUND_KEY = {"NoSuchKey", "404", "NotFound"}
_THROTTLED = {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequests",
              "RequestThrottled", "503"}
_BAD_CREDENTIALS = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "AuthorizationHeaderMalformed"}
_EXPIRED = {"ExpiredToken", "TokenRefreshRequired"}
_CREDENTIALS_HINT = ("set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), "
                     "or give an 's3' entry in the credentials document")
CREDENTIAL_FIELDS = frozenset({"aws_access_key_id", "aws_secret_access_key", "aws_session_token", "region_name",
                               "endpoint_url", "expiration"})


#: Attempts botocore makes for one S3 call (the first and its retries), unless the user set their own
#: (:func:`sdk_attempts`).
SDK_ATTEMPTS = 4
#: botocore's JSON data (the S3 service model, endpoints.json, retry rules) loaded once per process and
#: shared by every client's session: a session of its own loads and parses it again for each client,
#: 0.1 CPU-s apiece, and a job's coordinator, each gateway and every ``open_store`` make one
#: (0.013-0.047 CPU-s per client with it shared, measured in one process). The loader only reads files
#: and caches what it parsed, so sessions in several threads may share it.
_DATA_LOADER = botocore.loaders.create_loader()


def make_client(settings: dict[str, Any], *, attempts: int | None = None) -> Any:
    """One botocore S3 client for a credentials entry (see ``gateway.stores``); thread-safe, pooled.
    ``attempts``: the attempts of each call (default :func:`sdk_attempts`).

    Without an ``endpoint_url`` botocore still honours ``AWS_ENDPOINT_URL`` and its usual credential chain.
    """
    return _build(settings, attempts)[0]


def warm() -> None:
    """Load and parse what every client reads (the shared :data:`_DATA_LOADER`'s S3 model, endpoints and
    retry rules) by building one client and dropping it: the first client of a process costs ~0.1
    CPU-s more than the next (~0.01), and a gateway started ahead does this before its first request
    (``gateway.stores.preload``). Contacts nothing: its credentials are placeholders, its endpoint is
    never called."""
    make_client({"aws_access_key_id": "warm", "aws_secret_access_key": "warm", "region_name": "us-east-1",
                 "endpoint_url": "http://127.0.0.1:9"}).close()


class S3Clients:
    """What the S3 stores of one credentials entry share: the botocore client, and the direct GET path
    for the gateways' reads (None where it does not apply: ``DirectGet.for_client``)."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.sdk, core, attempts = _build(settings, None)
        self.direct = DirectGet.for_client(self.sdk, core.get_credentials(), attempts,
                                           lambda: make_client(settings, attempts=attempts - 1))

    def close(self) -> None:
        self.sdk.close()
        if self.direct is not None:
            self.direct.close()


def _build(settings: dict[str, Any], attempts: int | None) -> tuple[Any, botocore.session.Session, int]:
    """The client of :func:`make_client`, its botocore session and its attempts per call."""
    core = botocore.session.get_session()
    core.register_component("data_loader", _DATA_LOADER)
    core.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=fast_timestamp)
    keys = [settings.get(k) for k in ("aws_access_key_id", "aws_secret_access_key", "aws_session_token")]
    if any(keys):  # as boto3.Session sets them: the session's own, which DirectGet signs with too
        core.set_credentials(*keys)
    if settings.get("region_name") is not None:
        core.set_config_variable("region", settings["region_name"])
    attempts = attempts or sdk_attempts(core)
    endpoint = settings.get("endpoint_url")
    effective = endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    config = Config(
        max_pool_connections=POOL_SIZE,
        connect_timeout=CONNECT_TIMEOUT,
        read_timeout=READ_TIMEOUT,
        # The one retry of an S3 call (docs/reliability.md "One retry budget"): 4 attempts in all
        # (botocore's ``max_attempts`` counts retries, one more attempt: ``total_max_attempts`` does not),
        # and adaptive mode's client-side rate limiter slows every request of this client once S3
        # answers SlowDown. Nothing above the store retries a throttled call again.
        retries={"total_max_attempts": attempts, "mode": "adaptive"},
        # Checksums only where S3 requires them: the transfer verifies every chunk end to end, and
        # the default CRC trailers are not understood by every S3-compatible server.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        s3={
            # Emulators and on-premises servers on an IP address cannot use virtual-host addressing.
            "addressing_style": "path" if effective else "auto",
            "payload_signing_enabled": payload_signing(effective),
        },
    )
    return core.create_client("s3", endpoint_url=endpoint, config=config), core, attempts


def sdk_attempts(core: botocore.session.Session) -> int:
    """Attempts botocore makes for one call: the user's own AWS setting where there is one
    (``AWS_MAX_ATTEMPTS``, or ``max_attempts`` in the profile of the AWS config file; both count the
    first attempt, as the AWS SDKs document them), else :data:`SDK_ATTEMPTS`. A job that should give
    up on a throttling store sooner, or hold on longer, sets it where its gateways run (local
    gateways inherit the orchestrator's environment). An explicit ``Config`` overrides the user's
    setting in botocore, so it is read here."""
    configured = core.get_config_variable("max_attempts")
    return max(1, int(configured)) if configured is not None else SDK_ATTEMPTS


def payload_signing(endpoint: str | None) -> bool:
    """Whether SigV4 should sign request bodies: a SHA-256 of every byte uploaded (0.6-0.9 CPU-s per
    GiB, a third of a gateway's CPU writing big objects to moto), whose only use is that the body
    cannot be altered on its way to the store. Over https (AWS itself: ``endpoint`` None) TLS already
    guarantees that, which is why the AWS SDKs send ``UNSIGNED-PAYLOAD`` on https; to a loopback
    address the body never leaves the host. Plain http to another host keeps the signature."""
    if not endpoint:
        return False
    url = urllib.parse.urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
    return url.scheme != "https" and not is_loopback(url.hostname or "")


def fast_timestamp(value: Any) -> datetime.datetime:
    """botocore's timestamp parser for the two forms S3 sends, without dateutil: ISO 8601 in listings
    (``2026-12-05T16:22:33.000Z``) and HTTP dates in headers (``Sat, 05 Dec 2026 16:22:33 GMT``);
    anything else goes to botocore's own. botocore's takes 100 us per value (dateutil): 9% of a
    gateway's CPU per small object read, 0.1 s per listing page of 1,000 keys; these take 0.1-8 us."""
    if isinstance(value, str):
        try:
            if value.endswith("GMT"):
                return email.utils.parsedate_to_datetime(value)
            if value[:4].isdigit():
                parsed = datetime.datetime.fromisoformat(value)
                if parsed.tzinfo is not None:
                    return parsed
        except (TypeError, ValueError):
            pass
    return parse_timestamp(value)


class S3Store(ObjectStore):
    """One S3 bucket."""

    scheme = "s3"
    capabilities = Capabilities(multipart=True, max_parts=10_000, min_part_size=5 * MiB, max_part_size=5 * 1024**3,
                                checksums=frozenset({"md5"}), conditional_write=True,
                                # AWS: "when your object size reaches 100 MB, you should consider using
                                # multipart uploads" (S3 User Guide, "Uploading and copying objects using
                                # multipart upload"); rclone's --s3-upload-cutoff is 200 MiB.
                                single_request_max=100 * MiB,
                                # CopyObject copies up to 5 GB; UploadPartCopy copies ranges of bigger
                                # objects (S3 API Reference, CopyObject).
                                copy_from=("s3",), copy_parts=True, copy_max=5 * 1000**3, presign=True,
                                # ListParts gives each part's ETag: the MD5 of its bytes, except under
                                # SSE-KMS / SSE-C (then it matches nothing, and the part is sent again).
                                part_checksums=frozenset({"md5"}))

    def __init__(self, bucket: str, client: Any, direct: DirectGet | None = None) -> None:
        self.bucket = bucket
        self._client = client
        self._region: str | None = None
        self._direct = direct
        #: The bucket's route for direct GETs: True until a first read has shown it, None once they
        #: stop (an answer they do not handle sends this store's reads to botocore for good).
        self._route: BucketRoute | bool | None = True if direct is not None else None
        self._learning = threading.Lock()

    @property
    def root_uri(self) -> str:
        return f"s3://{self.bucket}"

    def check(self) -> None:
        with self._errors():
            self._client.head_bucket(Bucket=self.bucket)

    def region(self) -> str | None:
        if self._region is None:
            with self._errors():
                location = self._client.get_bucket_location(Bucket=self.bucket).get("LocationConstraint")
            # S3 reports us-east-1 as no constraint, and the oldest EU buckets as "EU".
            self._region = "aws:" + {None: "us-east-1", "": "us-east-1", "EU": "eu-west-1"}.get(location, location)
        return self._region

    def list_page(self, prefix: str = "", token: str | None = None,
                  limit: int = 1000) -> tuple[list[ObjectInfo], str | None]:
        # The token is the last key listed (StartAfter): S3's own continuation tokens are opaque, and
        # moto's live only in the server's memory.
        objects: list[ObjectInfo] = []
        with self._errors(prefix):
            while True:
                kwargs = {"StartAfter": token} if token else {}
                page = self._client.list_objects_v2(Bucket=self.bucket, Prefix=prefix,
                                                    MaxKeys=min(_LIST_REQUEST, limit - len(objects)), **kwargs)
                objects += [ObjectInfo(o["Key"], o["Size"], _etag(o.get("ETag")), o["LastModified"].timestamp())
                            for o in page.get("Contents", [])]
                token = objects[-1].key if page.get("IsTruncated") and objects else None
                if token is None or len(objects) >= limit:
                    return objects, token

    def head(self, key: str) -> ObjectInfo:
        with self._errors(key):
            r = self._client.head_object(Bucket=self.bucket, Key=key)
        etag = _etag(r.get("ETag"))
        return ObjectInfo(key, r["ContentLength"], etag, r["LastModified"].timestamp(), md5=_md5_of(etag, r))

    def read(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        check_range(offset, length)
        if length == 0:
            return b""
        kwargs: dict[str, Any] = {}
        if offset or length is not None:
            end = "" if length is None else str(offset + length - 1)
            kwargs["Range"] = f"bytes={offset}-{end}"
        try:
            with self._errors(key):
                return self._client.get_object(Bucket=self.bucket, Key=key, **kwargs)["Body"].read()
        except _RangeNotSatisfiable:
            return b""  # the range starts at or past the end: like a slice, nothing

    def read_into(self, key: str, offset: int, view: memoryview) -> int:
        check_range(offset, len(view))
        if not len(view):
            return 0
        byte_range = f"bytes={offset}-{offset + len(view) - 1}"
        client = self._client
        try:
            with self._errors(key):
                route = self._route
                if isinstance(route, BucketRoute):
                    response = self._direct.get(route, key, byte_range)
                    if response is not None:
                        return read_then_release(response.raw, lambda: _body_into(response.raw, view))
                    # Not an answer the direct path handles: botocore makes the call's other attempts,
                    # and this store's reads from now on (its retries, rate limiting, redirects).
                    self._route = None
                    client = self._direct.rest_client()
                elif route is True and self._learning.acquire(blocking=False):
                    try:  # the first read, through botocore, shows the bucket's URL and signing region
                        got, self._route = self._direct.learn(
                            self.bucket, key, lambda: self._botocore_into(client, key, byte_range, view))
                    finally:
                        self._learning.release()
                    return got
                return self._botocore_into(client, key, byte_range, view)
        except _RangeNotSatisfiable:
            return 0

    def _botocore_into(self, client: Any, key: str, byte_range: str, view: memoryview) -> int:
        r = client.get_object(Bucket=self.bucket, Key=key, Range=byte_range)
        with r["Body"] as body:
            return _body_into(body, view)

    def write(self, key: str, data: bytes | bytearray) -> ObjectInfo:
        with self._errors(key):
            r = self._client.put_object(Bucket=self.bucket, Key=key, Body=data)
        etag = _etag(r["ETag"])
        return ObjectInfo(key, len(data), etag, md5=_md5_of(etag, r))

    def delete(self, key: str) -> None:
        with self._errors(key):
            self._client.delete_object(Bucket=self.bucket, Key=key)

    def read_versioned(self, key: str) -> tuple[bytes, str]:
        with self._errors(key):
            r = self._client.get_object(Bucket=self.bucket, Key=key)
            return r["Body"].read(), _etag(r["ETag"])

    def write_if(self, key: str, data: bytes, expected_version: str | None) -> str:
        # S3 conditional writes (2024): If-Match on the ETag, or If-None-Match: * for "only if absent".
        condition = {"IfMatch": f'"{expected_version}"'} if expected_version else {"IfNoneMatch": "*"}
        with self._errors(key):
            try:
                r = self._client.put_object(Bucket=self.bucket, Key=key, Body=data, **condition)
            except bex.ClientError as exc:
                status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
                # 412: the ETag differs; 409: a concurrent conditional write; 404: deleted since read.
                if status in (404, 409, 412) and exc.response.get("Error", {}).get("Code") != "NoSuchBucket":
                    raise ConflictError(f"s3://{self.bucket}/{key} changed since it was read",
                                        hint="read it again and retry the update") from exc
                raise
        return _etag(r["ETag"])

    def begin_multipart(self, key: str) -> str:
        with self._errors(key):
            return self._client.create_multipart_upload(Bucket=self.bucket, Key=key)["UploadId"]

    def upload_part(self, key: str, upload_id: str, part_number: int, data: bytes | bytearray) -> PartInfo:
        with self._errors(key):
            r = self._client.upload_part(Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=part_number,
                                         Body=data)
        return PartInfo(part_number, _etag(r["ETag"]), len(data))

    def complete_multipart(self, key: str, upload_id: str, parts: list[PartInfo]) -> ObjectInfo:
        part_numbers(parts, f"s3://{self.bucket}/{key}")
        ordered = sorted(parts, key=lambda p: p.part_number)
        with self._errors(key):
            self._client.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id,
                MultipartUpload={"Parts": [{"PartNumber": p.part_number, "ETag": f'"{p.etag}"'} for p in ordered]})
        return self.head(key)  # the answer has no size

    def abort_multipart(self, key: str, upload_id: str) -> None:
        try:
            with self._errors(key):
                self._client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except _NoSuchUpload:
            pass  # already completed or aborted: nothing left to discard

    def list_parts(self, key: str, upload_id: str, checksums_of: Collection[int] | None = None) -> list[PartInfo]:
        with self._errors(key):
            pages = self._client.get_paginator("list_parts").paginate(Bucket=self.bucket, Key=key, UploadId=upload_id)
            listed = [p for page in pages for p in page.get("Parts", [])]
        parts = []
        for p in listed:
            etag = _etag(p["ETag"])
            parts.append(PartInfo(p["PartNumber"], etag, p["Size"], md5=_md5_of(etag, {})))
        return sorted(parts, key=lambda p: p.part_number)

    def pending_uploads(self, prefix: str = "") -> list[tuple[str, str]]:
        with self._errors():
            pages = self._client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket, Prefix=prefix)
            return [(u["Key"], u["UploadId"]) for page in pages for u in page.get("Uploads", [])]

    # ---- server-side copy ---------------------------------------------------------------------
    def presign(self, key: str, seconds: int) -> str:
        with self._errors(key):
            return self._client.generate_presigned_url("get_object", Params={"Bucket": self.bucket, "Key": key},
                                                       ExpiresIn=int(seconds))

    def copy_from(self, source: CopySource, key: str, token: str | None = None) -> tuple[ObjectInfo | None, str | None]:
        bucket = self._same_service(source)
        with self._errors(key):
            self._client.copy_object(Bucket=self.bucket, Key=key, CopySource={"Bucket": bucket, "Key": source.key})
        return self.head(key), None  # the answer has no size

    def copy_part_from(self, source: CopySource, key: str, upload_id: str, part_number: int, offset: int,
                       length: int) -> PartInfo:
        bucket = self._same_service(source)
        check_range(offset, length)
        with self._errors(key):
            r = self._client.upload_part_copy(Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=part_number,
                                              CopySource={"Bucket": bucket, "Key": source.key},
                                              CopySourceRange=f"bytes={offset}-{offset + length - 1}")
        return PartInfo(part_number, _etag(r["CopyPartResult"]["ETag"]), length)

    def probe_copy_from(self, source: CopySource, *, parts: bool = False) -> None:
        key = probe_key()
        if not parts:
            self.copy_from(source, key)
            self.delete(key)
            return
        upload_id = self.begin_multipart(key)
        try:
            self.copy_part_from(source, key, upload_id, 1, 0, 1)
        finally:
            self.abort_multipart(key, upload_id)

    def _same_service(self, source: CopySource) -> str:
        if source.scheme != "s3":
            raise BadOptionError(f"S3 cannot copy server-side from {source.store}",
                                 hint="only from S3 buckets its credentials can read")
        return source.store.split("://", 1)[1]

    def close(self) -> None:
        self._client.close()

    def _errors(self, key: str | None = None):
        return translated(lambda exc: _translate(exc, self.bucket, key), self.expires_at, sdk_retries=True)


class _RangeNotSatisfiable(StoreError):
    """Internal: S3 answered 416 to a ranged GET."""


class _NoSuchUpload(NotFoundError):
    """The multipart upload id is unknown to S3."""


def _etag(value: str | None) -> str | None:
    return value.strip('"') if value else None


def _md5_of(etag: str | None, head: dict) -> str | None:
    """The MD5 of the bytes, which S3's ETag is only for single-part objects stored in the clear or
    with SSE-S3 (SSE-KMS and SSE-C ETags are something else, multipart ones end in ``-N``). Only a
    HEAD says how the object is encrypted, so listings report no MD5."""
    if not etag or len(etag) != 32 or any(c not in "0123456789abcdef" for c in etag.lower()):
        return None
    if head.get("SSECustomerAlgorithm") or str(head.get("ServerSideEncryption", "")).startswith("aws:kms"):
        return None
    return etag.lower()


def _body_into(body: Any, view: memoryview) -> int:
    """Read a GetObject body into ``view`` until it is full or the body ends; returns the bytes read.

    A body urllib3 does not decode (no Content-Encoding) is read straight into ``view``
    (:func:`~.common.body_into`). A body cut off before its Content-Length raises
    ``ResponseStreamingError`` (retryable), as botocore's reads do."""
    raw = getattr(body, "_raw_stream", body)  # botocore's StreamingBody, or (as a context) urllib3's response
    fp = getattr(raw, "_fp", None)
    got = 0
    if not isinstance(fp, http.client.HTTPResponse) or raw.headers.get("content-encoding"):
        while got < len(view) and (n := body.readinto(view[got:got + _READ_PIECE])):
            got += n
        return got
    try:
        return body_into(fp, view)
    except (OSError, http.client.HTTPException) as exc:
        raise bex.ResponseStreamingError(error=exc) from exc


def _translate(exc: Exception, bucket: str, key: str | None) -> SkyplaneError | None:
    where = f"s3://{bucket}/{key}" if key else f"s3://{bucket}"
    if isinstance(exc, (bex.NoCredentialsError, bex.PartialCredentialsError)):
        return CredentialsError(f"no AWS credentials for {where}", hint=_CREDENTIALS_HINT)
    if isinstance(exc, bex.ParamValidationError):
        return BadOptionError(f"invalid request for {where}: {exc}")
    if isinstance(exc, (bex.EndpointConnectionError, bex.ConnectionClosedError, bex.ConnectTimeoutError,
                        bex.ReadTimeoutError, bex.HTTPClientError)):
        return StoreUnavailableError(f"cannot reach S3 for {where}: {exc}",
                                     hint="check the network, the endpoint URL (AWS_ENDPOINT_URL) and retry")
    if not isinstance(exc, bex.ClientError):
        return None
    error = exc.response.get("Error", {})
    code = str(error.get("Code", ""))
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    message = error.get("Message") or code
    if code == "NoSuchBucket" or (status == 404 and not key):
        return NotFoundError(f"bucket s3://{bucket} does not exist", hint="create it, or check the name and the account")
    if code == "NoSuchUpload":
        return _NoSuchUpload(f"multipart upload for {where} does not exist",
                             hint="it was completed or aborted; start a new one")
    if code in _NOT_FOUND_KEY or status == 404:
        return NotFoundError(f"{where} does not exist", hint="check the key, and that the bucket exists")
    if code in ("InvalidRange",) or status == 416:
        return _RangeNotSatisfiable(f"range not satisfiable on {where}")
    if code in _EXPIRED:
        return CredentialsExpiredError(f"the credentials for {where} expired: {message}", hint=EXPIRED_HINT)
    if code in _BAD_CREDENTIALS:
        return CredentialsError(f"S3 rejected the credentials for {where}: {message}", hint=_CREDENTIALS_HINT)
    if code in ("AccessDenied", "AllAccessDisabled", "403") or status == 403:
        return AccessDeniedError(f"access denied to {where}",
                                 hint="grant these credentials s3:GetObject/PutObject/ListBucket on the bucket")
    if code in _THROTTLED or status in (429, 503):
        return ThrottledError(f"S3 is throttling requests to {where} ({code})", hint="retry with fewer connections")
    if status >= 500:
        return StoreUnavailableError(f"S3 failed a request on {where}: {code} {message}", hint="retry later")
    return StoreError(f"S3 refused a request on {where}: {code}: {message}")
