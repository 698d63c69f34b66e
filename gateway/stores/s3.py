"""Amazon S3 (and S3-compatible servers such as moto).

The verbs of a copy go through the light client (gateway/stores/s3_api.py: SigV4 requests on urllib3,
no botocore imported); the rare ones (presigning, server-side copies, listing parts, creating buckets)
through a botocore client built on their first use (gateway/stores/s3_botocore.py). A store whose
settings the light client would not honour as botocore does (:func:`light_settings`) is botocore's for
every verb, as before. Credentials, region and endpoint resolve as boto3's would (the same precedence:
the credentials entry, then the environment, then the rest of botocore's chain).
"""

from __future__ import annotations

import http.client
import os
import threading
import urllib.parse
from typing import Any, Callable, Collection

from planner.errors import (AccessDeniedError, BadOptionError, ConflictError, CredentialsError,
                            CredentialsExpiredError, NotFoundError, SkyplaneError, StoreError, StoreUnavailableError,
                            ThrottledError)

from ..wire import is_loopback
from .base import Capabilities, CopySource, ObjectInfo, ObjectStore, PartInfo
from .common import EXPIRED_HINT, body_into, byte_range, check_range, part_numbers, probe_key, translated
from .s3_api import CONNECTION_ERRORS, NoCredentials, S3Api, S3Error, http_time

MiB = 1024**2
_LIST_REQUEST = 1000  # keys per ListObjectsV2 request at most
#: Bytes asked of a botocore response body at a time (:func:`_body_into`): urllib3's readinto reads a
#: new buffer of the size asked and copies it into ours, so whole 64 MiB asks cost three fresh,
#: page-faulted 64 MiB buffers; 1 MiB ones are reused by malloc (64 MiB from moto: 80 -> 60 ms CPU).
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

#: Attempts of one S3 call (the first and its retries), unless the user set their own (``AWS_MAX_ATTEMPTS``
#: or ``max_attempts`` in the AWS config file's profile: ``s3_botocore.sdk_attempts``).
SDK_ATTEMPTS = 4
#: Settings of the environment only botocore honours (FIPS and dual-stack endpoints, configured
#: endpoints ignored): where one is set, stores are botocore's.
_BOTOCORE_ONLY_ENV = ("AWS_USE_FIPS_ENDPOINT", "AWS_USE_DUALSTACK_ENDPOINT", "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS")
#: The same settings in a profile of the AWS config file, and its ``s3`` section (addressing style,
#: accelerate, ...) and per-service endpoints.
_BOTOCORE_ONLY_PROFILE = frozenset({"s3", "services", "endpoint_url", "use_fips_endpoint", "use_dualstack_endpoint",
                                    "ignore_configured_endpoint_urls"})


def light_settings(settings: dict[str, Any]) -> dict[str, Any] | None:
    """How the light client (:class:`~.s3_api.S3Api`) is built for a credentials entry, as botocore
    would resolve it; None where botocore must do it all (a setting only it honours). Static keys (the
    entry's, else the environment's: botocore's precedence) need no botocore at all, unless an AWS
    config file exists (it may set the region, the attempts or botocore-only settings: then a botocore
    session reads it, no client is built); other credentials (profiles, SSO, assume-role, process,
    container and instance credentials) are botocore's credential chain's, refreshed as it refreshes
    them, signed with here."""
    if any(os.environ.get(name) for name in _BOTOCORE_ONLY_ENV):
        return None
    keys = tuple(settings.get(k) for k in ("aws_access_key_id", "aws_secret_access_key", "aws_session_token"))
    static: tuple[str, str, str | None] | None = None
    if any(keys):
        if not (keys[0] and keys[1]):
            return None  # partial keys: botocore's own error
        static = keys  # type: ignore[assignment]
    elif os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY"):
        static = (os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"],
                  os.environ.get("AWS_SESSION_TOKEN") or os.environ.get("AWS_SECURITY_TOKEN") or None)
    config_file = os.path.expanduser(os.environ.get("AWS_CONFIG_FILE") or "~/.aws/config")
    endpoint = settings.get("endpoint_url") or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    light: dict[str, Any] = {"endpoint": endpoint, "sign_payloads": payload_signing(endpoint)}
    if static is not None and not os.path.exists(config_file):
        attempts = os.environ.get("AWS_MAX_ATTEMPTS")
        light.update(region=settings.get("region_name") or os.environ.get("AWS_DEFAULT_REGION"),
                     ca_bundle=os.environ.get("AWS_CA_BUNDLE"),
                     credentials=lambda: static,
                     attempts=max(1, int(attempts)) if attempts and attempts.strip().isdigit() else SDK_ATTEMPTS)
        return light
    from . import s3_botocore

    try:
        core = s3_botocore.session(settings)
        if set(core.get_scoped_config()) & _BOTOCORE_ONLY_PROFILE:
            return None
        light.update(region=core.get_config_variable("region"), ca_bundle=core.get_config_variable("ca_bundle"),
                     attempts=s3_botocore.sdk_attempts(core))
        chain = None if static is not None else core.get_credentials()
    except Exception:  # noqa: BLE001 - a profile not found, a bad config file: botocore's client says so, as before
        return None
    if static is not None:
        light["credentials"] = lambda: static
    elif chain is None:
        light["credentials"] = lambda: None
    else:
        def credentials() -> tuple[str, str, str | None]:
            frozen = chain.get_frozen_credentials()
            return frozen.access_key, frozen.secret_key, frozen.token

        light["credentials"] = credentials
    return light


def make_client(settings: dict[str, Any]) -> Any:
    """A botocore S3 client for a credentials entry (``s3_botocore.make_client``), for client-side
    work that wants one (creating buckets)."""
    from .s3_botocore import make_client as build

    return build(settings)


class S3Clients:
    """What the S3 stores of one credentials entry share: the light client (``api``: None where
    botocore must do it all, see :func:`light_settings`) and the botocore client (``sdk``: built on
    first use)."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self._settings = settings
        light = light_settings(settings)
        self.api = S3Api(**light) if light is not None else None
        self._sdk: Any = None
        self._building = threading.Lock()

    @property
    def sdk(self) -> Any:
        if self._sdk is None:
            with self._building:
                if self._sdk is None:
                    self._sdk = make_client(self._settings)
        return self._sdk

    def close(self) -> None:
        if self.api is not None:
            self.api.close()
        if self._sdk is not None:
            self._sdk.close()


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

    def __init__(self, bucket: str, clients: S3Clients) -> None:
        self.bucket = bucket
        self._clients = clients
        #: The light client, where it serves this bucket; else every verb is botocore's.
        self._api = clients.api if clients.api is not None and clients.api.serves(bucket) else None
        self._region: str | None = None

    @property
    def _client(self) -> Any:
        """The botocore client (built on first use)."""
        return self._clients.sdk

    @property
    def root_uri(self) -> str:
        return f"s3://{self.bucket}"

    def check(self) -> None:
        with self._errors():
            if self._api is not None:
                self._api.head_bucket(self.bucket)
            else:
                self._client.head_bucket(Bucket=self.bucket)

    def region(self) -> str | None:
        if self._region is None:
            with self._errors():
                if self._api is not None:
                    location = self._api.location(self.bucket)
                else:
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
                asked = min(_LIST_REQUEST, limit - len(objects))
                if self._api is not None:
                    listed, truncated = self._api.list_objects(self.bucket, prefix, token, asked)
                    objects += [ObjectInfo(key, size, _etag(etag), mtime) for key, size, etag, mtime in listed]
                else:
                    kwargs = {"StartAfter": token} if token else {}
                    page = self._client.list_objects_v2(Bucket=self.bucket, Prefix=prefix, MaxKeys=asked, **kwargs)
                    objects += [ObjectInfo(o["Key"], o["Size"], _etag(o.get("ETag")), o["LastModified"].timestamp())
                                for o in page.get("Contents", [])]
                    truncated = page.get("IsTruncated")
                token = objects[-1].key if truncated and objects else None
                if token is None or len(objects) >= limit:
                    return objects, token

    def head(self, key: str) -> ObjectInfo:
        with self._errors(key):
            if self._api is not None:
                h = self._api.head(self.bucket, key)
                etag = _etag(h.get("etag"))
                return ObjectInfo(key, int(h.get("content-length") or 0), etag, http_time(h.get("last-modified")),
                                  md5=_md5_of(etag, _encryption(h)))
            r = self._client.head_object(Bucket=self.bucket, Key=key)
        etag = _etag(r.get("ETag"))
        return ObjectInfo(key, r["ContentLength"], etag, r["LastModified"].timestamp(), md5=_md5_of(etag, r))

    def read(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        check_range(offset, length)
        if length == 0:
            return b""
        asked = byte_range(offset, length)
        try:
            with self._errors(key):
                if self._api is not None:
                    return self._api.get(self.bucket, key, asked).data
                kwargs = {"Range": asked} if asked else {}
                return self._client.get_object(Bucket=self.bucket, Key=key, **kwargs)["Body"].read()
        except _RangeNotSatisfiable:
            return b""  # the range starts at or past the end: like a slice, nothing

    def read_into(self, key: str, offset: int, view: memoryview, *, whole: bool = False) -> int:
        check_range(offset, len(view))
        if not len(view):
            return 0
        asked = byte_range(offset, len(view), whole=whole)
        try:
            with self._errors(key):
                if self._api is not None:
                    return self._api.get_into(self.bucket, key, asked, view)
                r = self._client.get_object(Bucket=self.bucket, Key=key, **({"Range": asked} if asked else {}))
                with r["Body"] as body:
                    return _body_into(body, view)
        except _RangeNotSatisfiable:
            return 0

    def write(self, key: str, data: bytes | bytearray) -> ObjectInfo:
        with self._errors(key):
            if self._api is not None:
                h = self._api.put(self.bucket, key, data)
                etag = _etag(h.get("etag"))
                return ObjectInfo(key, len(data), etag, md5=_md5_of(etag, _encryption(h)))
            r = self._client.put_object(Bucket=self.bucket, Key=key, Body=data)
        etag = _etag(r["ETag"])
        return ObjectInfo(key, len(data), etag, md5=_md5_of(etag, r))

    def delete(self, key: str) -> None:
        with self._errors(key):
            if self._api is not None:
                self._api.delete(self.bucket, key)
            else:
                self._client.delete_object(Bucket=self.bucket, Key=key)

    def read_versioned(self, key: str) -> tuple[bytes, str]:
        with self._errors(key):
            if self._api is not None:
                r = self._api.get(self.bucket, key)
                return r.data, _etag(r.headers.get("etag"))
            r = self._client.get_object(Bucket=self.bucket, Key=key)
            return r["Body"].read(), _etag(r["ETag"])

    def write_if(self, key: str, data: bytes, expected_version: str | None) -> str:
        # S3 conditional writes (2024): If-Match on the ETag, or If-None-Match: * for "only if absent".
        with self._errors(key):
            try:
                if self._api is not None:
                    condition = {"If-Match": f'"{expected_version}"'} if expected_version else {"If-None-Match": "*"}
                    return _etag(self._api.put(self.bucket, key, data, condition).get("etag"))
                kwargs = {"IfMatch": f'"{expected_version}"'} if expected_version else {"IfNoneMatch": "*"}
                return _etag(self._client.put_object(Bucket=self.bucket, Key=key, Body=data, **kwargs)["ETag"])
            except Exception as exc:
                code, status, _ = _error_of(exc)
                # 412: the ETag differs; 409: a concurrent conditional write; 404: deleted since read.
                if status in (404, 409, 412) and code != "NoSuchBucket":
                    raise ConflictError(f"s3://{self.bucket}/{key} changed since it was read",
                                        hint="read it again and retry the update") from exc
                raise

    def begin_multipart(self, key: str) -> str:
        with self._errors(key):
            if self._api is not None:
                return self._api.create_multipart(self.bucket, key)
            return self._client.create_multipart_upload(Bucket=self.bucket, Key=key)["UploadId"]

    def upload_part(self, key: str, upload_id: str, part_number: int, data: bytes | bytearray) -> PartInfo:
        with self._errors(key):
            if self._api is not None:
                etag = self._api.upload_part(self.bucket, key, upload_id, part_number, data)
            else:
                etag = self._client.upload_part(Bucket=self.bucket, Key=key, UploadId=upload_id,
                                                PartNumber=part_number, Body=data)["ETag"]
        return PartInfo(part_number, _etag(etag), len(data))

    def complete_multipart(self, key: str, upload_id: str, parts: list[PartInfo]) -> ObjectInfo:
        part_numbers(parts, f"s3://{self.bucket}/{key}")
        ordered = sorted(parts, key=lambda p: p.part_number)
        with self._errors(key):
            if self._api is not None:
                self._api.complete_multipart(self.bucket, key, upload_id,
                                             [(p.part_number, f'"{p.etag}"') for p in ordered])
            else:
                self._client.complete_multipart_upload(
                    Bucket=self.bucket, Key=key, UploadId=upload_id,
                    MultipartUpload={"Parts": [{"PartNumber": p.part_number, "ETag": f'"{p.etag}"'} for p in ordered]})
        return self.head(key)  # the answer has no size

    def abort_multipart(self, key: str, upload_id: str) -> None:
        try:
            with self._errors(key):
                if self._api is not None:
                    self._api.abort_multipart(self.bucket, key, upload_id)
                else:
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
            if self._api is not None:
                return self._api.list_uploads(self.bucket, prefix)
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
                                              CopySourceRange=byte_range(offset, length))
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
        self._clients.close()

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


def _encryption(headers: Any) -> dict[str, str | None]:
    """How a light answer's object is encrypted, under the names botocore's answers give it (:func:`_md5_of`)."""
    return {"ServerSideEncryption": headers.get("x-amz-server-side-encryption"),
            "SSECustomerAlgorithm": headers.get("x-amz-server-side-encryption-customer-algorithm")}


def _body_into(body: Any, view: memoryview) -> int:
    """Read a botocore GetObject body into ``view`` until it is full or the body ends; returns the bytes
    read. A body urllib3 does not decode (no Content-Encoding) is read straight into ``view``
    (:func:`~.common.body_into`). A body cut off before its Content-Length raises
    ``ResponseStreamingError`` (retryable), as botocore's reads do."""
    import botocore.exceptions as bex

    raw = getattr(body, "_raw_stream", body)  # botocore's StreamingBody
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


def _error_of(exc: BaseException) -> tuple[str, int, str]:
    """The error code, HTTP status and message of an S3 error answer, from the light client's
    :class:`~.s3_api.S3Error` or botocore's ``ClientError`` (``("", 0, "")`` for anything else)."""
    if isinstance(exc, S3Error):
        return exc.code, exc.status, exc.message
    response = getattr(exc, "response", None)
    if type(exc).__module__.startswith("botocore") and isinstance(response, dict):
        error = response.get("Error", {})
        return (str(error.get("Code", "")), response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0),
                error.get("Message") or "")
    return "", 0, ""


def _translate(exc: Exception, bucket: str, key: str | None) -> SkyplaneError | None:
    where = f"s3://{bucket}/{key}" if key else f"s3://{bucket}"
    unreachable = f"cannot reach S3 for {where}: {exc}"
    unreachable_hint = "check the network, the endpoint URL (AWS_ENDPOINT_URL) and retry"
    if isinstance(exc, NoCredentials):
        return CredentialsError(f"no AWS credentials for {where}", hint=_CREDENTIALS_HINT)
    if isinstance(exc, CONNECTION_ERRORS):
        return StoreUnavailableError(unreachable, hint=unreachable_hint)
    if type(exc).__module__.startswith("botocore"):
        import botocore.exceptions as bex

        if isinstance(exc, (bex.NoCredentialsError, bex.PartialCredentialsError)):
            return CredentialsError(f"no AWS credentials for {where}", hint=_CREDENTIALS_HINT)
        if isinstance(exc, bex.ParamValidationError):
            return BadOptionError(f"invalid request for {where}: {exc}")
        if isinstance(exc, (bex.EndpointConnectionError, bex.ConnectionClosedError, bex.ConnectTimeoutError,
                            bex.ReadTimeoutError, bex.HTTPClientError)):
            return StoreUnavailableError(unreachable, hint=unreachable_hint)
        if not isinstance(exc, bex.ClientError):
            return None
    elif not isinstance(exc, S3Error):
        return None
    code, status, message = _error_of(exc)
    message = message or code
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
