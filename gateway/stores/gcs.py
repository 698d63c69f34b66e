"""Google Cloud Storage (and fake-gcs-server) through the JSON API (``gcs_api``: urllib3, google-auth).

Multipart uploads have no native GCS call: each part is uploaded as a temporary object under the
reserved prefix ``.skyplane-parts/<upload_id>/``, ``complete_multipart`` composes them into the
object (at most 32 sources per compose, so larger uploads are composed in a tree) and deletes the
parts; ``abort_multipart`` deletes them. Listings never show the reserved prefix.

Uploads are single-shot: one ``uploadType=multipart`` request (metadata and bytes in one body, with
the object's CRC32C): resumable uploads in many chunks are quadratic on the emulators and buy
nothing when a part is already in memory. Reads land in the caller's buffer (``read_into``).
ETags are the object's MD5 in hex when GCS reports one (composed objects have only a CRC32C; then
the GCS etag is reported, which is never mistaken for an MD5). google-cloud-storage is imported
only to sign a URL (``presign``).
"""

from __future__ import annotations

import base64
import datetime
import json
import re
import secrets
from typing import Any, Collection, Iterator

import google.auth.exceptions as aex

from planner.errors import (AccessDeniedError, BadOptionError, ConflictError, CredentialsError, NotFoundError,
                            SkyplaneError, StoreError, StoreUnavailableError, ThrottledError)

from .base import Capabilities, CopySource, ObjectInfo, ObjectStore, PartInfo
from .common import (byte_range, check_range, check_upload_id, md5_hex, new_upload_id, part_numbers, probe_key,
                     translated)
from .gcs_api import (CONNECTION_ERRORS, CREDENTIALS_HINT, RETRY, ApiError, GCSClient, make_client,  # noqa: F401
                      token_of)

PARTS_PREFIX = ".skyplane-parts/"
_KEY_METADATA = "skyplane-key"  # on each part: the key its upload is for, so leftovers can be found
MAX_COMPOSE = 32  # sources per compose request (a GCS limit)
#: A body up to this size is joined into one buffer (one send); a bigger one goes as its pieces (_Pieces).
_JOIN_LIMIT = 1024**2
CREDENTIAL_FIELDS = frozenset({"project", "endpoint", "service_account_info", "service_account_file", "access_token",
                               "anonymous", "expiration"})
_FRACTION = re.compile(r"(\.\d{6})\d+")


class _Pieces:
    """A request body sent as its pieces, one ``sendall`` each, instead of joined into a copy (joining
    a 64 MiB object between the two parts of a multipart body was half of our CPU writing it to
    fake-gcs-server: 0.64 of 1.35 CPU-s per 256 MiB, docs/benchmarks.md). urllib3 sends an iterable
    body's pieces as they are (with our Content-Length, not in chunks) and iterates it again on a retry."""

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

    def __init__(self, bucket: str, client: GCSClient) -> None:
        self.bucket = bucket
        self._client = client
        self._region: str | None = None

    @property
    def root_uri(self) -> str:
        return f"gs://{self.bucket}"

    def check(self) -> None:
        with self._errors():
            self._client.call("GET", self._client.bucket_url(self.bucket))

    def region(self) -> str | None:
        if self._region is None:
            with self._errors():
                location = self._client.call("GET", self._client.bucket_url(self.bucket)).get("location")
            self._region = f"gcp:{location.lower()}" if location else None
        return self._region

    def list_page(self, prefix: str = "", token: str | None = None,
                  limit: int = 1000) -> tuple[list[ObjectInfo], str | None]:
        with self._errors():  # a 404 on a listing can only mean the bucket
            answer = self._list(prefix, token, limit)
        page = [_info(item) for item in answer.get("items", ()) if not item["name"].startswith(PARTS_PREFIX)]
        return page, answer.get("nextPageToken")

    def head(self, key: str) -> ObjectInfo:
        with self._errors(key):
            return _info(self._client.call("GET", self._client.object_url(self.bucket, key)))

    def read(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        check_range(offset, length)
        if length == 0:
            return b""
        headers = {"accept-encoding": "gzip"}  # as the library's downloads: GCS may then serve stored gzip as it is
        if asked := byte_range(offset, length):
            headers["range"] = asked
        url = self._client.media_url(self.bucket, key)
        try:
            with self._errors(key):
                return RETRY(lambda: self._client.send("GET", url, headers=headers)).data
        except _RangeNotSatisfiable:
            return b""  # the range starts at or past the end: like a slice, nothing

    def read_into(self, key: str, offset: int, view: memoryview, *, whole: bool = False) -> int:
        check_range(offset, len(view))
        if not len(view):
            return 0
        # No checksum compared: a ranged download has none, and the copy is checked end to end.
        headers = {"accept-encoding": "gzip"}
        if asked := byte_range(offset, len(view), whole=whole):
            headers["range"] = asked
        url = self._client.media_url(self.bucket, key)
        try:
            with self._errors(key):
                return RETRY(lambda: self._client.get_into(url, headers, view, offset))
        except _RangeNotSatisfiable:
            return 0

    def write(self, key: str, data: bytes | bytearray) -> ObjectInfo:
        with self._errors(key, bucket_level=True):
            return _info(self._upload(key, data))

    def delete(self, key: str) -> None:
        try:
            with self._errors(key):
                self._client.call("DELETE", self._client.object_url(self.bucket, key))
        except NotFoundError:
            pass

    # ---- conditional writes on the object generation ----------------------------------------
    def read_versioned(self, key: str) -> tuple[bytes, str]:
        with self._errors(key):
            try:
                generation = self._client.call("GET", self._client.object_url(self.bucket, key))["generation"]
            except ApiError as exc:
                if exc.status == 404:
                    raise NotFoundError(f"gs://{self.bucket}/{key} does not exist", hint="check the key") from exc
                raise
            url = f"{self._client.media_url(self.bucket, key)}&ifGenerationMatch={generation}"
            try:
                data = RETRY(lambda: self._client.send("GET", url, headers={"accept-encoding": "gzip"})).data
            except ApiError as exc:
                if exc.status == 412:
                    raise ConflictError(f"gs://{self.bucket}/{key} changed while it was read",
                                        hint="read it again") from exc
                raise
        return data, str(generation)

    def write_if(self, key: str, data: bytes, expected_version: str | None) -> str:
        # Generation 0 means "only if no live object exists".
        generation = int(expected_version) if expected_version else 0
        with self._errors(key, bucket_level=True):
            try:
                resource = self._upload(key, data, if_generation_match=generation)
            except ApiError as exc:
                if exc.status == 412:
                    raise ConflictError(f"gs://{self.bucket}/{key} changed since it was read",
                                        hint="read it again and retry the update") from exc
                raise
        return str(resource["generation"])

    # ---- multipart as parts + compose -------------------------------------------------------
    def begin_multipart(self, key: str) -> str:
        return new_upload_id()  # nothing exists on the server until the first part arrives

    def upload_part(self, key: str, upload_id: str, part_number: int, data: bytes | bytearray) -> PartInfo:
        check_upload_id(upload_id)
        with self._errors(key, bucket_level=True):
            resource = self._upload(_part_name(upload_id, part_number), data, metadata={_KEY_METADATA: key})
        return PartInfo(part_number, _etag(resource), len(data))

    def complete_multipart(self, key: str, upload_id: str, parts: list[PartInfo]) -> ObjectInfo:
        check_upload_id(upload_id)
        numbers = part_numbers(parts, f"gs://{self.bucket}/{key}")
        self._check_parts(key, upload_id, numbers)
        sources = [_part_name(upload_id, n) for n in numbers]
        level = 0
        with self._errors(f"{key} (parts of multipart upload {upload_id})"):
            # Compose in a tree: each round turns every 32 sources into one intermediate object.
            while len(sources) > MAX_COMPOSE:
                level += 1
                merged = []
                for i in range(0, len(sources), MAX_COMPOSE):
                    target = f"{PARTS_PREFIX}{upload_id}/c{level}-{i // MAX_COMPOSE:05d}"
                    self._compose(sources[i:i + MAX_COMPOSE], target)
                    merged.append(target)
                sources = merged
            final = self._compose(sources, key)
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
            for item in self._list_all(f"{PARTS_PREFIX}{upload_id}/p"):
                number = item["name"].rsplit("/p", 1)[1]
                if number.isdigit() and (item.get("metadata") or {}).get(_KEY_METADATA) == key:
                    info = _info(item)
                    parts.append(PartInfo(int(number), info.etag, info.size, md5=info.md5, crc32c=info.crc32c))
        return sorted(parts, key=lambda p: p.part_number)

    def pending_uploads(self, prefix: str = "") -> list[tuple[str, str]]:
        """Uploads whose parts are still under the reserved prefix; each part names its key in its metadata."""
        found: dict[str, str] = {}
        with self._errors(PARTS_PREFIX):
            for item in self._list_all(PARTS_PREFIX):
                upload_id = item["name"][len(PARTS_PREFIX):].split("/", 1)[0]
                key = (item.get("metadata") or {}).get(_KEY_METADATA)
                if key is not None and key.startswith(prefix):
                    found.setdefault(upload_id, key)
        return sorted((key, upload_id) for upload_id, key in found.items())

    # ---- server-side copy: objects.rewrite -----------------------------------------------------
    def presign(self, key: str, seconds: int) -> str:
        """A V4 signed GET URL, signed by google-cloud-storage (imported here, on first use)."""
        with self._errors(key):
            blob = self._client.library().bucket(self.bucket).blob(key)
            try:
                return blob.generate_signed_url(expiration=datetime.timedelta(seconds=seconds), version="v4")
            except AttributeError as exc:  # the library's way of saying the credentials hold no private key
                raise CredentialsError(f"these Google credentials cannot sign a URL for gs://{self.bucket}/{key}",
                                       hint="use a service account key (service_account_file or _info)") from exc

    def copy_from(self, source: CopySource, key: str, token: str | None = None) -> tuple[ObjectInfo | None, str | None]:
        if source.scheme != "gs":
            raise BadOptionError(f"GCS cannot copy server-side from {source.store}",
                                 hint="only from GCS buckets its credentials can read")
        src_bucket = source.store.split("://", 1)[1]
        url = (f"{self._client.object_url(src_bucket, source.key)}/rewriteTo/b/"
               f"{self._client.object_url(self.bucket, key).split('/storage/v1/b/', 1)[1]}")
        with translated(lambda exc: _translate(exc, src_bucket, source.key), sdk_retries=True):
            answer = self._client.call("POST", url, body={}, params={"rewriteToken": token})
        if not answer.get("done"):
            return None, answer["rewriteToken"]
        return _info(answer["resource"]), None

    def probe_copy_from(self, source: CopySource, *, parts: bool = False) -> None:
        """A rewrite to a scratch object under the reserved prefix (never listed), then removed; a
        rewrite that needs more calls has created nothing yet and is left."""
        key = PARTS_PREFIX + probe_key()
        self.copy_from(source, key)
        self.delete(key)

    def close(self) -> None:
        self._client.close()

    # ---- helpers ------------------------------------------------------------------------------
    def _upload(self, name: str, data: bytes | bytearray, *, metadata: dict[str, str] | None = None,
                if_generation_match: int | None = None) -> dict:
        """One ``uploadType=multipart`` request (the JSON API's one-request upload: metadata and bytes
        in one ``multipart/related`` body), within the retry budget; the object resource GCS answered.
        google-cloud-storage uploaded bigger objects resumably: two requests, and on fake-gcs-server
        twice the server's CPU (6.2-8.2 -> 3.4-4.6 CPU-s per GiB, docs/benchmarks.md); and it joined
        its body with ``+`` (four copies of the object), where a big object's own buffer is sent
        between the two small pieces of ours (:class:`_Pieces`), no copy. The object's CRC32C goes
        with it, as the library's uploads sent one, so the store checks what it received (GCS does;
        fake-gcs-server takes it unchecked)."""
        from crc32c import crc32c  # a gateway that only reads from GCS never imports it (~15 ms)

        boundary = secrets.token_hex(16)
        resource: dict[str, Any] = {"name": name, "contentType": "application/octet-stream",
                                    "crc32c": base64.b64encode(crc32c(data).to_bytes(4, "big")).decode()}
        if metadata:
            resource["metadata"] = metadata
        head = (f"--{boundary}\r\ncontent-type: application/json; charset=UTF-8\r\n\r\n{json.dumps(resource)}\r\n"
                f"--{boundary}\r\ncontent-type: application/octet-stream\r\n\r\n").encode()
        tail = f"\r\n--{boundary}--\r\n".encode()
        body: Any = b"".join((head, data, tail)) if len(data) <= _JOIN_LIMIT else _Pieces(head, data, tail)
        url = self._client.upload_url(self.bucket)
        if if_generation_match is not None:
            url += f"&ifGenerationMatch={if_generation_match}"
        headers = {"content-type": f"multipart/related; boundary={boundary}", "content-length": str(len(body))}
        return json.loads(RETRY(lambda: self._client.send("POST", url, body=body, headers=headers)).data)

    def _compose(self, sources: list[str], target: str) -> dict:
        return self._client.call("POST", f"{self._client.object_url(self.bucket, target)}/compose",
                                 body={"sourceObjects": [{"name": name} for name in sources],
                                       "destination": {"contentType": "application/octet-stream"}})

    def _list(self, prefix: str, token: str | None, limit: int | None = None) -> dict:
        return self._client.call("GET", f"{self._client.bucket_url(self.bucket)}/o",
                                 params={"prefix": prefix or None, "pageToken": token, "maxResults": limit,
                                         "projection": "noAcl"})

    def _list_all(self, prefix: str) -> Iterator[dict]:
        """Every object resource under ``prefix``, page after page."""
        token = None
        while True:
            answer = self._list(prefix, token)
            yield from answer.get("items", ())
            token = answer.get("nextPageToken")
            if not token:
                return

    def _check_parts(self, key: str, upload_id: str, numbers: list[int]) -> None:
        """One listing instead of a compose that fails without saying which part is missing."""
        with self._errors():
            present = {item["name"] for item in self._list_all(f"{PARTS_PREFIX}{upload_id}/")}
        missing = [n for n in numbers if _part_name(upload_id, n) not in present]
        if missing:
            raise NotFoundError(f"part(s) {missing[:10]} of multipart upload {upload_id} of gs://{self.bucket}/{key} "
                                "do not exist", hint="upload every part before completing; an aborted upload cannot "
                                                     "be completed")

    def _delete_upload(self, upload_id: str) -> None:
        with self._errors(f"{PARTS_PREFIX}{upload_id}/"):
            for item in list(self._list_all(f"{PARTS_PREFIX}{upload_id}/")):
                try:
                    self._client.call("DELETE", self._client.object_url(self.bucket, item["name"]))
                except ApiError as exc:
                    if exc.status != 404:
                        raise

    def _errors(self, key: str | None = None, *, bucket_level: bool = False):
        """Translate API errors; ``bucket_level``: a 404 means the bucket is missing (uploads)."""
        return translated(lambda exc: _translate(exc, self.bucket, key, bucket_level), self.expires_at, sdk_retries=True)


def _part_name(upload_id: str, part_number: int) -> str:
    return f"{PARTS_PREFIX}{upload_id}/p{part_number:05d}"


def _etag(resource: dict) -> str | None:
    return md5_hex(resource.get("md5Hash")) or resource.get("etag")


def _info(resource: dict) -> ObjectInfo:
    """What GCS reported of an object (a listing entry, or an upload's, compose's or rewrite's answer)."""
    crc = base64.b64decode(resource["crc32c"]).hex() if resource.get("crc32c") else None
    updated = resource.get("updated")
    mtime = datetime.datetime.fromisoformat(_FRACTION.sub(r"\1", updated)).timestamp() if updated else None
    return ObjectInfo(resource["name"], int(resource.get("size") or 0), _etag(resource), mtime,
                      md5=md5_hex(resource.get("md5Hash")), crc32c=crc)


class _RangeNotSatisfiable(StoreError):
    """Internal: GCS answered 416 to a ranged GET."""


def _translate(exc: Exception, bucket: str, key: str | None, bucket_level: bool = False) -> SkyplaneError | None:
    where = f"gs://{bucket}/{key}" if key else f"gs://{bucket}"
    if isinstance(exc, aex.DefaultCredentialsError):
        return CredentialsError(f"no usable Google Cloud credentials for {where}: {exc}", hint=CREDENTIALS_HINT)
    if isinstance(exc, aex.RefreshError):
        return CredentialsError(f"GCS rejected the credentials for {where}: {exc}", hint=CREDENTIALS_HINT)
    if isinstance(exc, CONNECTION_ERRORS):
        return StoreUnavailableError(f"cannot reach GCS for {where}: {exc}",
                                     hint="check the network, the endpoint (STORAGE_EMULATOR_HOST) and retry")
    if not isinstance(exc, ApiError):
        return None
    if exc.status == 404:
        if not key or bucket_level:
            return NotFoundError(f"bucket gs://{bucket} does not exist", hint="create it, or check the name and project")
        return NotFoundError(f"{where} does not exist", hint="check the key, and that the bucket exists")
    if exc.status == 416:
        return _RangeNotSatisfiable(f"range not satisfiable on {where}")
    if exc.status == 401:
        return CredentialsError(f"GCS rejected the credentials for {where}: {exc.message}", hint=CREDENTIALS_HINT)
    if exc.status == 403:
        return AccessDeniedError(f"access denied to {where}",
                                 hint="grant these credentials roles/storage.objectAdmin on the bucket")
    if exc.status == 429:
        return ThrottledError(f"GCS is throttling requests to {where}", hint="retry with fewer connections")
    if exc.status >= 500:
        return StoreUnavailableError(f"GCS failed a request on {where}: {exc.message}", hint="retry later")
    return StoreError(f"GCS refused a request on {where}: {exc.message}")
