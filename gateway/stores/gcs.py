"""Google Cloud Storage (and fake-gcs-server) through google-cloud-storage.

Multipart uploads have no native GCS call: each part is uploaded as a temporary object under the
reserved prefix ``.skyplane-parts/<upload_id>/``, ``complete_multipart`` composes them into the
object (at most 32 sources per compose, so larger uploads are composed in a tree) and deletes the
parts; ``abort_multipart`` deletes them. Listings never show the reserved prefix.

Uploads are single-shot (one request, or one resumable chunk as big as the data): resumable uploads
in many chunks are quadratic on the emulators and buy nothing when a part is already in memory.
ETags are the object's MD5 in hex when GCS reports one (composed objects have only a CRC32C; then
the GCS etag is reported, which is never mistaken for an MD5).
"""

from __future__ import annotations

import base64
import datetime
import http.client
import json
import secrets
import urllib.parse
from typing import Any, Collection

import crc32c

import google.api_core.exceptions as gex
import google.auth.exceptions as aex
import requests
import requests.adapters
from google.cloud import storage
from google.cloud.storage._media.requests import _request_helpers
from google.cloud.storage.exceptions import DataCorruption
from google.cloud.storage.retry import DEFAULT_RETRY

from planner.errors import (AccessDeniedError, ChecksumError, ConflictError, CredentialsError, NotFoundError,
                            SkyplaneError, StoreError, StoreUnavailableError, ThrottledError)

from .base import Capabilities, CopySource, ObjectInfo, ObjectStore, PartInfo
from .common import (CONNECT_TIMEOUT, POOL_SIZE, READ_TIMEOUT, bearer_token, check_range, check_upload_id,
                     download_into, md5_hex, new_upload_id, part_numbers, probe_key, settle_environment, translated)

PARTS_PREFIX = ".skyplane-parts/"
_KEY_METADATA = "skyplane-key"  # on each part: the key its upload is for, so leftovers can be found
MAX_COMPOSE = 32  # sources per compose request (a GCS limit)
_MULTIPART_LIMIT = 8 * 1024**2  # above this the library switches to a resumable upload (we do not: _put)
_TIMEOUT = (CONNECT_TIMEOUT, READ_TIMEOUT)
# The one retry of a GCS call (docs/reliability.md "One retry budget"): attempts for at most 10 s
# (the library default is 120 s), waits from 0.5 s doubling to 4 s; nothing above the store
# retries the call again, only the coordinator re-sends a failed chunk.
_RETRY = DEFAULT_RETRY.with_timeout(10.0).with_delay(initial=0.5, multiplier=2.0, maximum=4.0)
# A download hands its bytes on 8 KiB at a time (the library's _SINGLE_GET_CHUNK_SIZE), a Python loop
# turn and a copy each: 1 MiB halves the CPU of a read (64 MiB from fake-gcs-server: 105 -> 55 ms).
# The library has no public setting; without this constant (another version) reads stay as they are.
if hasattr(_request_helpers, "_SINGLE_GET_CHUNK_SIZE"):
    _request_helpers._SINGLE_GET_CHUNK_SIZE = 1024**2
_CREDENTIALS_HINT = ("set GOOGLE_APPLICATION_CREDENTIALS or run `gcloud auth application-default login`, "
                     "or give a 'gs' entry in the credentials document")
CREDENTIAL_FIELDS = frozenset({"project", "endpoint", "service_account_info", "service_account_file", "access_token",
                               "anonymous", "expiration"})


def make_client(settings: dict[str, Any]) -> storage.Client:
    """One GCS client for a credentials entry (see ``gateway.stores``), with a pooled HTTP session.

    With no entry the library's own rules apply: ``STORAGE_EMULATOR_HOST``, then application
    default credentials. An ``access_token`` (OAuth 2.0, what the client's google-auth credentials
    minted: an impersonated account, workload identity) is used as it is, never refreshed here: the
    client pushes a new one before it expires (docs/credentials.md).
    """
    from google.auth.credentials import AnonymousCredentials
    from google.oauth2 import credentials as oauth2
    from google.oauth2 import service_account

    kwargs: dict[str, Any] = {}
    scopes = ["https://www.googleapis.com/auth/devstorage.full_control"]
    try:
        if settings.get("service_account_info"):
            kwargs["credentials"] = service_account.Credentials.from_service_account_info(
                settings["service_account_info"], scopes=scopes)
        elif settings.get("service_account_file"):
            kwargs["credentials"] = service_account.Credentials.from_service_account_file(
                settings["service_account_file"], scopes=scopes)
        elif "access_token" in settings:
            kwargs["credentials"] = oauth2.Credentials(token_of(settings), refresh_handler=_token_refused)
            kwargs["project"] = settings.get("project")  # None: no project needed for bucket operations
        elif settings.get("anonymous") or settings.get("endpoint"):
            kwargs["credentials"] = AnonymousCredentials()
            kwargs["project"] = settings.get("project")  # None: no project needed for bucket operations
        if settings.get("project"):
            kwargs["project"] = settings["project"]
        if settings.get("endpoint"):
            kwargs["client_options"] = {"api_endpoint": settings["endpoint"]}
        client = storage.Client(**kwargs)
    except (aex.DefaultCredentialsError, ValueError, OSError) as exc:
        raise CredentialsError(f"cannot set up Google Cloud credentials: {exc}", hint=_CREDENTIALS_HINT) from exc
    adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=POOL_SIZE)
    client._http.mount("https://", adapter)  # noqa: SLF001  (the library offers no public pool setting)
    client._http.mount("http://", adapter)  # noqa: SLF001
    settle_environment(client._http, client._connection.API_BASE_URL)  # noqa: SLF001
    return client


def token_of(settings: dict[str, Any]) -> str:
    """The entry's ``access_token``; an empty one, or one past its ``expiration``, is refused here,
    before any request (and, on the client, before any gateway starts)."""
    return bearer_token(settings, "gs", "an OAuth 2.0 access token (google-auth credentials' .token)")


def _token_refused(request: Any, scopes: Any) -> tuple[str, datetime.datetime]:
    """google-auth asks for a new token when GCS answers 401: a given token cannot be renewed here."""
    raise aex.RefreshError("GCS refused the access token (expired or revoked), and a gateway cannot renew it")


class _Pieces:
    """A request body sent as its pieces, one ``sendall`` each, instead of joined into a copy (joining
    a 64 MiB object between the two parts of a multipart body was half of our CPU writing it to
    fake-gcs-server: 0.64 of 1.35 CPU-s per 256 MiB, docs/benchmarks.md). requests takes its length
    from ``len()`` (so it sends a Content-Length, not chunks) and iterates it again on a retry."""

    def __init__(self, *pieces: bytes | bytearray | memoryview) -> None:
        self._pieces = pieces

    def __len__(self) -> int:
        return sum(memoryview(p).nbytes for p in self._pieces)

    def __iter__(self):
        return iter(self._pieces)


class GCSStore(ObjectStore):
    """One GCS bucket."""

    scheme = "gs"
    capabilities = Capabilities(multipart=True, max_parts=10_000, min_part_size=0, max_part_size=5 * 1024**3,
                                checksums=frozenset({"md5", "crc32c"}), conditional_write=True,
                                # GCS has no multipart upload: parts are objects composed afterwards (more
                                # requests). gsutil composes above 150 MiB (parallel_composite_upload_threshold).
                                single_request_max=150 * 1024**2,
                                # objects.rewrite copies any size, resumed with a token between calls
                                # (Cloud Storage JSON API, "Objects: rewrite"); signing needs a private key.
                                copy_from=("gs",), presign=True,
                                # a part is an object: a listing gives its MD5 and CRC32C
                                part_checksums=frozenset({"md5", "crc32c"}))

    def __init__(self, bucket: str, client: storage.Client) -> None:
        self.bucket = bucket
        self._client = client
        self._bucket = client.bucket(bucket)
        self._region: str | None = None

    @property
    def root_uri(self) -> str:
        return f"gs://{self.bucket}"

    def check(self) -> None:
        with self._errors():
            self._client.get_bucket(self.bucket, timeout=_TIMEOUT, retry=_RETRY)

    def region(self) -> str | None:
        if self._region is None:
            with self._errors():
                bucket = self._client.get_bucket(self.bucket, timeout=_TIMEOUT, retry=_RETRY)
            self._region = f"gcp:{bucket.location.lower()}" if bucket.location else None
        return self._region

    def list_page(self, prefix: str = "", token: str | None = None,
                  limit: int = 1000) -> tuple[list[ObjectInfo], str | None]:
        with self._errors():  # a 404 on a listing can only mean the bucket
            blobs = self._client.list_blobs(self.bucket, prefix=prefix, page_token=token, max_results=limit,
                                            timeout=_TIMEOUT, retry=_RETRY)
            page = [_info(blob) for blob in blobs if not blob.name.startswith(PARTS_PREFIX)]
        return page, blobs.next_page_token

    def head(self, key: str) -> ObjectInfo:
        with self._errors(key):
            blob = self._bucket.get_blob(key, timeout=_TIMEOUT, retry=_RETRY)
        if blob is None:
            raise NotFoundError(f"gs://{self.bucket}/{key} does not exist", hint="check the key, and that the bucket exists")
        return _info(blob)

    def read(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        check_range(offset, length)
        if length == 0:
            return b""
        end = None if length is None else offset + length - 1
        try:
            with self._errors(key):
                return self._bucket.blob(key).download_as_bytes(start=offset or None, end=end, timeout=_TIMEOUT,
                                                                retry=_RETRY)
        except _RangeNotSatisfiable:
            return b""  # the range starts at or past the end: like a slice, nothing

    def read_into(self, key: str, offset: int, view: memoryview) -> int:
        blob = self._bucket.blob(key)
        # No checksum: a ranged download has none to compare, and the copy is checked end to end.
        return download_into(view, offset, self._errors(key), _RangeNotSatisfiable, lambda writer: blob.download_to_file(
            writer, start=offset, end=offset + len(view) - 1, checksum=None, timeout=_TIMEOUT, retry=_RETRY))

    def write(self, key: str, data: bytes | bytearray) -> ObjectInfo:
        return _info(self._put(key, data))

    def delete(self, key: str) -> None:
        try:
            with self._errors(key):
                self._bucket.delete_blob(key, timeout=_TIMEOUT, retry=_RETRY)
        except NotFoundError:
            pass

    # ---- conditional writes on the object generation ----------------------------------------
    def read_versioned(self, key: str) -> tuple[bytes, str]:
        with self._errors(key):
            blob = self._bucket.get_blob(key, timeout=_TIMEOUT, retry=_RETRY)
            if blob is None:
                raise NotFoundError(f"gs://{self.bucket}/{key} does not exist", hint="check the key")
            try:
                data = blob.download_as_bytes(if_generation_match=blob.generation, timeout=_TIMEOUT, retry=_RETRY)
            except gex.PreconditionFailed as exc:
                raise ConflictError(f"gs://{self.bucket}/{key} changed while it was read",
                                    hint="read it again") from exc
        return data, str(blob.generation)

    def write_if(self, key: str, data: bytes, expected_version: str | None) -> str:
        blob = self._bucket.blob(key)
        # Generation 0 means "only if no live object exists".
        generation = int(expected_version) if expected_version else 0
        with self._errors(key, bucket_level=True):
            try:
                blob.upload_from_string(data, content_type="application/octet-stream",
                                        if_generation_match=generation,
                                        timeout=_TIMEOUT, retry=_RETRY)
            except gex.PreconditionFailed as exc:
                raise ConflictError(f"gs://{self.bucket}/{key} changed since it was read",
                                    hint="read it again and retry the update") from exc
        return str(blob.generation)

    # ---- multipart as parts + compose -------------------------------------------------------
    def begin_multipart(self, key: str) -> str:
        return new_upload_id()  # nothing exists on the server until the first part arrives

    def upload_part(self, key: str, upload_id: str, part_number: int, data: bytes | bytearray) -> PartInfo:
        check_upload_id(upload_id)
        blob = self._put(_part_name(upload_id, part_number), data, what=key, metadata={_KEY_METADATA: key})
        return PartInfo(part_number, _etag(blob), len(data))

    def complete_multipart(self, key: str, upload_id: str, parts: list[PartInfo]) -> ObjectInfo:
        check_upload_id(upload_id)
        numbers = part_numbers(parts, f"gs://{self.bucket}/{key}")
        self._check_parts(key, upload_id, numbers)
        sources = [self._bucket.blob(_part_name(upload_id, n)) for n in numbers]
        level = 0
        with self._errors(f"{key} (parts of multipart upload {upload_id})"):
            # Compose in a tree: each round turns every 32 sources into one intermediate object.
            while len(sources) > MAX_COMPOSE:
                level += 1
                merged = []
                for i in range(0, len(sources), MAX_COMPOSE):
                    target = self._bucket.blob(f"{PARTS_PREFIX}{upload_id}/c{level}-{i // MAX_COMPOSE:05d}")
                    target.compose(sources[i:i + MAX_COMPOSE], timeout=_TIMEOUT, retry=_RETRY)
                    merged.append(target)
                sources = merged
            final = self._bucket.blob(key)
            final.content_type = "application/octet-stream"
            final.compose(sources, timeout=_TIMEOUT, retry=_RETRY)
        self._delete_upload(upload_id)
        return _info(final)

    def abort_multipart(self, key: str, upload_id: str) -> None:
        check_upload_id(upload_id)
        self._delete_upload(upload_id)

    def list_parts(self, key: str, upload_id: str, checksums_of: Collection[int] | None = None) -> list[PartInfo]:
        """The part objects under the upload's prefix that name ``key`` (an upload has nothing at the
        store before its first part: none listed is no error)."""
        check_upload_id(upload_id)
        parts = []
        with self._errors(f"{key} (parts of multipart upload {upload_id})"):
            for blob in self._client.list_blobs(self.bucket, prefix=f"{PARTS_PREFIX}{upload_id}/p", timeout=_TIMEOUT,
                                                retry=_RETRY):
                number = blob.name.rsplit("/p", 1)[1]
                if number.isdigit() and (blob.metadata or {}).get(_KEY_METADATA) == key:
                    info = _info(blob)
                    parts.append(PartInfo(int(number), info.etag, info.size, md5=info.md5, crc32c=info.crc32c))
        return sorted(parts, key=lambda p: p.part_number)

    def pending_uploads(self, prefix: str = "") -> list[tuple[str, str]]:
        """Uploads whose parts are still under the reserved prefix; each part names its key in its metadata."""
        found: dict[str, str] = {}
        with self._errors(PARTS_PREFIX):
            for blob in self._client.list_blobs(self.bucket, prefix=PARTS_PREFIX, timeout=_TIMEOUT, retry=_RETRY):
                upload_id = blob.name[len(PARTS_PREFIX):].split("/", 1)[0]
                key = (blob.metadata or {}).get(_KEY_METADATA)
                if key is not None and key.startswith(prefix):
                    found.setdefault(upload_id, key)
        return sorted((key, upload_id) for upload_id, key in found.items())

    # ---- server-side copy: objects.rewrite -----------------------------------------------------
    def presign(self, key: str, seconds: int) -> str:
        with self._errors(key):
            try:
                return self._bucket.blob(key).generate_signed_url(expiration=datetime.timedelta(seconds=seconds),
                                                                  version="v4")
            except AttributeError as exc:  # the library's way of saying the credentials hold no private key
                raise CredentialsError(f"these Google credentials cannot sign a URL for gs://{self.bucket}/{key}",
                                       hint="use a service account key (service_account_file or _info)") from exc

    def copy_from(self, source: CopySource, key: str, token: str | None = None) -> tuple[ObjectInfo | None, str | None]:
        if source.scheme != "gs":
            raise BadOptionError(f"GCS cannot copy server-side from {source.store}",
                                 hint="only from GCS buckets its credentials can read")
        src = self._client.bucket(source.store.split("://", 1)[1]).blob(source.key)
        target = self._bucket.blob(key)
        with translated(lambda exc: _translate(exc, src.bucket.name, source.key), sdk_retries=True):
            token, _, _ = target.rewrite(src, token=token, timeout=_TIMEOUT, retry=_RETRY)
        return (None, token) if token else (_info(target), None)

    def probe_copy_from(self, source: CopySource, *, parts: bool = False) -> None:
        """A rewrite to a scratch object under the reserved prefix (never listed), then removed; a
        rewrite that needs more calls has created nothing yet and is left."""
        key = PARTS_PREFIX + probe_key()
        self.copy_from(source, key)
        self.delete(key)

    def close(self) -> None:
        self._client._http.close()  # noqa: SLF001  (requests reopens connections on the next call)

    # ---- helpers ------------------------------------------------------------------------------
    def _put(self, name: str, data: bytes | bytearray, *, what: str | None = None,
             metadata: dict[str, str] | None = None) -> storage.Blob:
        """Upload in one request; the blob's properties are then those the server answered."""
        blob = self._bucket.blob(name)
        if metadata:
            blob.metadata = metadata
        with self._errors(what or name, bucket_level=True):
            if len(data) > _MULTIPART_LIMIT:
                blob._set_properties(_RETRY(lambda: self._multipart_upload(name, data, metadata))())  # noqa: SLF001
            else:
                blob.upload_from_string(bytes(data), content_type="application/octet-stream", timeout=_TIMEOUT,
                                        retry=_RETRY)  # the library takes bytes only
        return blob

    def _multipart_upload(self, name: str, data: bytes | bytearray, metadata: dict[str, str] | None) -> dict:
        """One ``uploadType=multipart`` request (the JSON API's one-request upload: metadata and bytes in
        one ``multipart/related`` body) for an object bigger than the library's multipart limit, which
        it would upload resumably instead: two requests, and on fake-gcs-server twice the server's CPU
        (6.2-8.2 -> 3.4-4.6 CPU-s per GiB, docs/benchmarks.md). Built here because the library joins its
        multipart body with ``+`` (four copies of the object); ours sends the object's own buffer between
        the two small pieces of the body (:class:`_Pieces`), no copy. The object's CRC32C
        goes with it, as the library's upload sends one, so the store checks what it received (GCS does;
        fake-gcs-server takes it unchecked).
        Returns the object resource the server answered; an error answer is raised as the API error
        it maps to (the retry and the translation then see what the library would have raised)."""
        boundary = secrets.token_hex(16)
        resource: dict[str, Any] = {"name": name, "contentType": "application/octet-stream",
                                    "crc32c": base64.b64encode(crc32c.crc32c(data).to_bytes(4, "big")).decode()}
        if metadata:
            resource["metadata"] = metadata
        head = (f"--{boundary}\r\ncontent-type: application/json; charset=UTF-8\r\n\r\n{json.dumps(resource)}\r\n"
                f"--{boundary}\r\ncontent-type: application/octet-stream\r\n\r\n").encode()
        body = _Pieces(head, data, f"\r\n--{boundary}--\r\n".encode())
        url = (f"{self._client._connection.API_BASE_URL}/upload/storage/v1/b/"  # noqa: SLF001
               f"{urllib.parse.quote(self.bucket, safe='')}/o?uploadType=multipart")
        response = self._client._http.request(  # noqa: SLF001  (the client's authorized, pooled session)
            "POST", url, data=body, timeout=_TIMEOUT,
            headers={"Content-Type": f"multipart/related; boundary={boundary}"})
        if response.status_code >= 300:
            raise gex.from_http_response(response)
        return response.json()

    def _check_parts(self, key: str, upload_id: str, numbers: list[int]) -> None:
        """One listing instead of a compose that fails without saying which part is missing."""
        with self._errors():
            present = {blob.name for blob in self._client.list_blobs(self.bucket, prefix=f"{PARTS_PREFIX}{upload_id}/",
                                                                     timeout=_TIMEOUT, retry=_RETRY)}
        missing = [n for n in numbers if _part_name(upload_id, n) not in present]
        if missing:
            raise NotFoundError(f"part(s) {missing[:10]} of multipart upload {upload_id} of gs://{self.bucket}/{key} "
                                "do not exist", hint="upload every part before completing; an aborted upload cannot "
                                                     "be completed")

    def _delete_upload(self, upload_id: str) -> None:
        with self._errors(f"{PARTS_PREFIX}{upload_id}/"):
            for blob in self._client.list_blobs(self.bucket, prefix=f"{PARTS_PREFIX}{upload_id}/", timeout=_TIMEOUT,
                                                retry=_RETRY):
                try:
                    blob.delete(timeout=_TIMEOUT, retry=_RETRY)
                except gex.NotFound:
                    pass

    def _errors(self, key: str | None = None, *, bucket_level: bool = False):
        """Translate SDK errors; ``bucket_level``: a 404 means the bucket is missing (uploads)."""
        return translated(lambda exc: _translate(exc, self.bucket, key, bucket_level), self.expires_at, sdk_retries=True)


def _part_name(upload_id: str, part_number: int) -> str:
    return f"{PARTS_PREFIX}{upload_id}/p{part_number:05d}"


def _etag(blob: storage.Blob) -> str | None:
    return md5_hex(blob.md5_hash) or blob.etag


def _info(blob: storage.Blob) -> ObjectInfo:
    """What GCS reported of a blob (a listing entry, or an upload's or compose's answer)."""
    crc = base64.b64decode(blob.crc32c).hex() if blob.crc32c else None
    return ObjectInfo(blob.name, blob.size or 0, _etag(blob), blob.updated.timestamp() if blob.updated else None,
                      md5=md5_hex(blob.md5_hash), crc32c=crc)


class _RangeNotSatisfiable(StoreError):
    """Internal: GCS answered 416 to a ranged GET."""


def _translate(exc: Exception, bucket: str, key: str | None, bucket_level: bool = False) -> SkyplaneError | None:
    where = f"gs://{bucket}/{key}" if key else f"gs://{bucket}"
    if isinstance(exc, gex.RetryError) and exc.cause is not None:
        return _translate(exc.cause, bucket, key, bucket_level) or StoreUnavailableError(f"GCS kept failing on {where}: {exc}")
    if isinstance(exc, aex.DefaultCredentialsError):
        return CredentialsError(f"no usable Google Cloud credentials for {where}: {exc}", hint=_CREDENTIALS_HINT)
    if isinstance(exc, aex.RefreshError):
        return CredentialsError(f"GCS rejected the credentials for {where}: {exc}", hint=_CREDENTIALS_HINT)
    if isinstance(exc, (requests.ConnectionError, requests.Timeout, aex.TransportError, http.client.HTTPException,
                        ConnectionError, TimeoutError)):
        return StoreUnavailableError(f"cannot reach GCS for {where}: {exc}",
                                     hint="check the network, the endpoint (STORAGE_EMULATOR_HOST) and retry")
    if isinstance(exc, DataCorruption):
        return ChecksumError(f"GCS returned corrupt data for {where}", hint="retry the read")
    if not isinstance(exc, gex.GoogleAPICallError):
        return None
    message = getattr(exc, "message", str(exc))
    if isinstance(exc, gex.NotFound):
        if not key or bucket_level:
            return NotFoundError(f"bucket gs://{bucket} does not exist", hint="create it, or check the name and project")
        return NotFoundError(f"{where} does not exist", hint="check the key, and that the bucket exists")
    if isinstance(exc, gex.RequestRangeNotSatisfiable):
        return _RangeNotSatisfiable(f"range not satisfiable on {where}")
    if isinstance(exc, gex.Unauthorized):
        return CredentialsError(f"GCS rejected the credentials for {where}: {message}", hint=_CREDENTIALS_HINT)
    if isinstance(exc, gex.Forbidden):
        return AccessDeniedError(f"access denied to {where}",
                                 hint="grant these credentials roles/storage.objectAdmin on the bucket")
    if isinstance(exc, gex.TooManyRequests):
        return ThrottledError(f"GCS is throttling requests to {where}", hint="retry with fewer connections")
    if exc.code is not None and int(exc.code) >= 500:
        return StoreUnavailableError(f"GCS failed a request on {where}: {message}", hint="retry later")
    return StoreError(f"GCS refused a request on {where}: {message}")
