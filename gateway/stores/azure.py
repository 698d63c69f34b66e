"""Azure Blob Storage (and Azurite) through the Blob service REST API (``azure_api``: urllib3).

Multipart uploads are staged blocks: ``upload_part`` stages a block whose id is derived from the
upload id and the part number, ``complete_multipart`` commits the block list in part order (the blob
appears only then; Azure discards every block of the key left out of the list). Uncommitted blocks
are never visible, but they are kept (and billed) for a week: ``pending_uploads`` finds the keys that
hold only staged blocks, and ``abort_multipart`` deletes such a key's blob, which takes its staged
blocks with it. Blocks staged for a key that also has a committed blob cannot be discarded without
rewriting that blob: Azure drops them at the key's next write, or after the week.
ETags are the blob's Content-MD5 in hex when Azure keeps one (single-shot uploads), else Azure's etag.
No ``list_parts``: Get Block List reports a staged block's id and size, no digest of its bytes, so a
resumed upload cannot tell a good block from a damaged one and sends again every part its manifest
does not record.
Reads land in the caller's buffer (``read_into``). azure-storage-blob is imported only to sign a
read-only SAS with the account key (``presign``).
"""

from __future__ import annotations

import base64
import datetime
import email.utils
import re
import urllib.parse
import xml.etree.ElementTree as ET
from typing import Any, Iterator

from planner.errors import (AccessDeniedError, BadOptionError, ConflictError, CredentialsError, NotFoundError,
                            SkyplaneError, StoreError, StoreUnavailableError, ThrottledError)

from .azure_api import (CONNECTION_ERRORS, CREDENTIALS_HINT, RETRY, STORAGE_SCOPE, ApiError, AzureClient,  # noqa: F401
                        SharedKey, connection_string_account, make_client, xml_of)
from .base import Capabilities, CopySource, ObjectInfo, ObjectStore, PartInfo
from .common import (byte_range, check_range, check_upload_id, md5_hex, new_upload_id, parse_expiration, part_numbers,
                     probe_key, translated)

MiB = 1024**2
_HEX = re.compile(r"^[0-9a-f]{32}$")
_SYNC_COPY_MAX = 256 * MiB  # Copy Blob From URL copies up to this in one synchronous request
CREDENTIAL_FIELDS = frozenset({"connection_string", "account_url", "account_key", "sas_token", "access_token",
                               "expiration"})


def sas_expiry(settings: dict[str, Any]) -> float | None:
    """When the entry's SAS token stops working: its signed expiry (``se=``), if it has one."""
    token = settings.get("sas_token")
    values = urllib.parse.parse_qs(str(token).lstrip("?")).get("se") if token else None
    if not values:
        return None
    try:
        return parse_expiration(values[0], "sas_token")
    except BadOptionError:
        return None  # Azure will say what it makes of it


class AzureStore(ObjectStore):
    """One container of one storage account."""

    scheme = "az"
    capabilities = Capabilities(multipart=True, max_parts=50_000, min_part_size=0, max_part_size=4000 * MiB,
                                checksums=frozenset({"md5"}), conditional_write=True,
                                # azure-storage-blob's default max_single_put_size (64 MiB): one Put Blob.
                                single_request_max=64 * MiB,
                                # Copy Blob From URL is synchronous up to 256 MiB; Put Block From URL
                                # copies ranges of bigger ones (Blob service REST API reference).
                                copy_from=("url",), copy_parts=True, copy_max=_SYNC_COPY_MAX,
                                presign=True)

    def __init__(self, account: str, container: str, client: AzureClient) -> None:
        self.account, self.container = account, container
        self._client = client
        self._path = client.container_path(container)

    @property
    def root_uri(self) -> str:
        return f"az://{self.account}/{self.container}"

    def check(self) -> None:
        try:
            with self._errors():
                self._client.call("GET", self._path, params=[("restype", "container")])
        except AccessDeniedError as exc:
            # A container-scoped SAS never grants Get Container Properties (that takes an account SAS
            # or a key), however many blob permissions it has: one listing request tells instead that
            # the container exists and that these credentials reach it.
            try:
                with self._errors():
                    self._list("", None, 1)
            except AccessDeniedError:
                raise AccessDeniedError(
                    f"access denied to {self.root_uri}: these credentials may neither read the container's "
                    "properties nor list it", hint="a container SAS needs list (l) permission, with read (r) to "
                    "copy from the container and write (w) to copy to it; or grant the Storage Blob Data "
                    "Contributor role") from exc

    def region(self) -> str | None:
        return None  # the blob API does not say; callers pass the region explicitly

    def list_page(self, prefix: str = "", token: str | None = None,
                  limit: int = 1000) -> tuple[list[ObjectInfo], str | None]:
        with self._errors():
            answer = self._list(prefix, token, limit)
        return [_listed(blob) for blob in answer.iterfind("Blobs/Blob")], answer.findtext("NextMarker") or None

    def head(self, key: str) -> ObjectInfo:
        with self._errors(key):
            return _info(key, self._client.call("HEAD", self._blob(key)).headers)

    def read(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        check_range(offset, length)
        if length == 0:
            return b""
        asked = byte_range(offset, length)
        headers = {"x-ms-range": asked} if asked else {}
        try:
            with self._errors(key):
                return self._client.call("GET", self._blob(key), headers=headers).data
        except _RangeNotSatisfiable:
            return b""  # the range starts at or past the end: like a slice, nothing

    def read_into(self, key: str, offset: int, view: memoryview, *, whole: bool = False) -> int:
        check_range(offset, len(view))
        if not len(view):
            return 0
        path = self._blob(key)
        try:
            with self._errors(key):
                return RETRY(lambda: self._client.get_into(path, byte_range(offset, len(view), whole=whole), view))
        except _RangeNotSatisfiable:
            return 0

    def write(self, key: str, data: bytes | bytearray) -> ObjectInfo:
        # One Put Blob; any bytes-like body is sent as it is (a bytearray was copied into bytes for
        # the SDK's upload_blob once: 60% of our CPU writing 64 MiB objects, docs/benchmarks.md).
        with self._errors(key):
            answer = self._client.call("PUT", self._blob(key), body=data, headers={"x-ms-blob-type": "BlockBlob"})
        info = _info(key, answer.headers)
        return ObjectInfo(key, len(data), info.etag, info.mtime, md5=info.md5)

    def delete(self, key: str) -> None:
        try:
            with self._errors(key):
                self._client.call("DELETE", self._blob(key))
        except _BlobNotFound:
            pass

    def read_versioned(self, key: str) -> tuple[bytes, str]:
        with self._errors(key):
            answer = self._client.call("GET", self._blob(key))
        return answer.data, answer.headers["etag"]

    def write_if(self, key: str, data: bytes, expected_version: str | None) -> str:
        # The version is Azure's etag as it answered it; it goes back unchanged in If-Match.
        headers = {"x-ms-blob-type": "BlockBlob"}
        headers.update({"if-match": expected_version} if expected_version else {"if-none-match": "*"})
        with self._errors(key):
            try:
                answer = self._client.call("PUT", self._blob(key), body=data, headers=headers)
            except ApiError as exc:
                # 412: the etag differs; 409: it exists already; 404: deleted since it was read.
                if exc.status in (404, 409, 412) and exc.code != "ContainerNotFound":
                    raise ConflictError(f"{self.root_uri}/{key} changed since it was read",
                                        hint="read it again and retry the update") from exc
                raise
        return answer.headers["etag"]

    def begin_multipart(self, key: str) -> str:
        return new_upload_id()  # nothing exists on the server until the first block is staged

    def upload_part(self, key: str, upload_id: str, part_number: int, data: bytes | bytearray) -> PartInfo:
        check_upload_id(upload_id)
        block_id = _block_id(upload_id, part_number)
        with self._errors(key):
            self._client.call("PUT", self._blob(key), params=[("comp", "block"), ("blockid", _b64(block_id))],
                              body=data)
        return PartInfo(part_number, block_id, len(data))

    def complete_multipart(self, key: str, upload_id: str, parts: list[PartInfo]) -> ObjectInfo:
        check_upload_id(upload_id)
        numbers = part_numbers(parts, f"{self.root_uri}/{key}")  # an empty list would commit an empty blob
        blocks = "".join(f"<Latest>{_b64(_block_id(upload_id, n))}</Latest>" for n in numbers)
        body = f'<?xml version="1.0" encoding="utf-8"?><BlockList>{blocks}</BlockList>'.encode()
        with self._errors(key):
            self._client.call("PUT", self._blob(key), params=[("comp", "blocklist")], body=body,
                              headers={"content-type": "application/xml"})
        return self.head(key)  # the answer has no size

    def abort_multipart(self, key: str, upload_id: str) -> None:
        check_upload_id(upload_id)
        try:
            with self._errors(key):
                _, staged = self._block_list(key, "uncommitted")
                if not any(_upload_of(b) == upload_id for b in staged) or self.exists(key):
                    return  # nothing staged, or a committed blob that holds the blocks until its next write
                self._client.call("DELETE", self._blob(key))  # a blob of staged blocks only: they go with it
        except _BlobNotFound:
            pass  # nothing staged for the key, or deleted meanwhile
        except AccessDeniedError:
            pass  # credentials that may write but not delete: the staged blocks expire after the week

    def pending_uploads(self, prefix: str = "") -> list[tuple[str, str]]:
        """Keys that hold staged blocks and no committed blob, by the upload ids of those blocks. One
        listing that includes such keys (they list with size 0), and a block list per size-0 key."""
        found: set[tuple[str, str]] = set()
        with self._errors():
            empty = [info.key for info in self._list_all(prefix, include="uncommittedblobs") if not info.size]
        for key in empty:
            try:
                with self._errors(key):
                    committed, staged = self._block_list(key, "all")
            except _BlobNotFound:
                continue
            if not committed and not self.exists(key):
                found.update((key, u) for u in map(_upload_of, staged) if u is not None)
        return sorted(found)

    # ---- server-side copy: from a URL -----------------------------------------------------------
    def presign(self, key: str, seconds: int) -> str:
        """A read-only SAS for the blob when the credentials hold the account key, else the
        credentials' own SAS (which must allow reading)."""
        if isinstance(self._client.auth, SharedKey):
            from azure.storage.blob import BlobSasPermissions, generate_blob_sas  # rare: not on the copy path

            expiry = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=seconds)
            sas = generate_blob_sas(self.account, self.container, key, account_key=self._client.auth.account_key,
                                    permission=BlobSasPermissions(read=True), expiry=expiry)
            return f"{self._client.base}{self._blob(key)}?{sas}"
        if self._client.sas:
            return self._client.url(self._blob(key))
        raise CredentialsError(f"cannot presign {self.root_uri}/{key}: the credentials hold neither the account "
                               "key nor a SAS", hint="give an account_key or a sas_token in the credentials entry")

    def copy_from(self, source: CopySource, key: str, token: str | None = None) -> tuple[ObjectInfo | None, str | None]:
        if source.url is None or source.size > _SYNC_COPY_MAX:
            raise BadOptionError(f"Azure copies whole objects of up to {_SYNC_COPY_MAX} bytes from a URL",
                                 hint="presign the source; copy bigger objects in parts")
        with self._errors(key):  # Copy Blob From URL: synchronous, done when answered
            self._client.call("PUT", self._blob(key), headers={"x-ms-copy-source": source.url,
                                                               "x-ms-requires-sync": "true"})
        return self.head(key), None  # the answer has no size

    def copy_part_from(self, source: CopySource, key: str, upload_id: str, part_number: int, offset: int,
                       length: int) -> PartInfo:
        check_upload_id(upload_id)
        check_range(offset, length)
        if source.url is None:
            raise BadOptionError("Azure copies parts from a URL only", hint="presign the source")
        block_id = _block_id(upload_id, part_number)
        with self._errors(key):  # Put Block From URL
            self._client.call("PUT", self._blob(key), params=[("comp", "block"), ("blockid", _b64(block_id))],
                              headers={"x-ms-copy-source": source.url,
                                       "x-ms-source-range": byte_range(offset, length)})
        return PartInfo(part_number, block_id, length)

    def probe_copy_from(self, source: CopySource, *, parts: bool = False) -> None:
        key = probe_key()
        if parts:  # a staged block is never visible; discarded at once all the same
            upload_id = new_upload_id()
            try:
                self.copy_part_from(source, key, upload_id, 1, 0, 1)
            finally:
                self.abort_multipart(key, upload_id)
            return
        self.copy_from(source, key)
        self.delete(key)

    def close(self) -> None:
        self._client.close()

    # ---- helpers --------------------------------------------------------------------------------
    def _blob(self, key: str) -> str:
        return self._client.blob_path(self.container, key)

    def _list(self, prefix: str, marker: str | None, limit: int | None, include: str | None = None) -> ET.Element:
        """One List Blobs page."""
        params = [("restype", "container"), ("comp", "list")]
        for name, value in (("prefix", prefix), ("marker", marker), ("maxresults", limit), ("include", include)):
            if value:
                params.append((name, str(value)))
        return xml_of(self._client.call("GET", self._path, params=params))

    def _list_all(self, prefix: str, include: str | None = None) -> Iterator[ObjectInfo]:
        """Every blob under ``prefix``, page after page."""
        marker = None
        while True:
            answer = self._list(prefix, marker, None, include)
            yield from map(_listed, answer.iterfind("Blobs/Blob"))
            marker = answer.findtext("NextMarker")
            if not marker:
                return

    def _block_list(self, key: str, which: str) -> tuple[list[str], list[str]]:
        """Get Block List: the ids of the blob's committed and staged blocks (``which``: ``all``,
        ``committed`` or ``uncommitted``)."""
        answer = xml_of(self._client.call("GET", self._blob(key), params=[("comp", "blocklist"),
                                                                          ("blocklisttype", which)]))
        ids = [[base64.b64decode(name.text or "").decode("utf-8", "replace")
                for name in answer.iterfind(f"{kind}/Block/Name")]
               for kind in ("CommittedBlocks", "UncommittedBlocks")]
        return ids[0], ids[1]

    def _errors(self, key: str | None = None):
        return translated(lambda exc: _translate(exc, self.root_uri, key), self.expires_at, sdk_retries=True)


def _block_id(upload_id: str, part_number: int) -> str:
    # Every block id of a blob must have the same length; the upload id keeps two concurrent
    # uploads of one key from committing each other's blocks. The SDK base64-encodes it.
    return f"{upload_id}{part_number:06d}"


def _upload_of(block_id: str) -> str | None:
    """The upload id a block id of ours begins with (None for another tool's block)."""
    upload_id = block_id[:32]
    return upload_id if len(block_id) == 38 and block_id[32:].isdigit() and _HEX.match(upload_id) else None


def _b64(block_id: str) -> str:
    """A block id as the service takes it (base64, as azure-storage-blob encoded ours)."""
    return base64.b64encode(block_id.encode()).decode()


def _etag(content_md5: str | None, etag: str | None) -> str | None:
    return md5_hex(content_md5) or (etag.strip('"') if etag else None)


def _info(key: str, headers: Any) -> ObjectInfo:
    """A HEAD's or a write's answer headers as an ObjectInfo (a write's has no size: 0)."""
    md5 = headers.get("content-md5")
    modified = headers.get("last-modified")
    return ObjectInfo(key, int(headers.get("content-length") or 0), _etag(md5, headers.get("etag")),
                      email.utils.parsedate_to_datetime(modified).timestamp() if modified else None, md5=md5_hex(md5))


def _listed(blob: ET.Element) -> ObjectInfo:
    """A List Blobs entry as an ObjectInfo (a name the service could not put in XML comes percent-encoded)."""
    name = blob.find("Name")
    key = name.text or "" if name is not None else ""
    if name is not None and name.get("Encoded") == "true":
        key = urllib.parse.unquote(key)
    props = blob.find("Properties")
    md5 = props.findtext("Content-MD5") if props is not None else None
    modified = props.findtext("Last-Modified") if props is not None else None
    size = props.findtext("Content-Length") if props is not None else None
    return ObjectInfo(key, int(size or 0), _etag(md5, props.findtext("Etag") if props is not None else None),
                      email.utils.parsedate_to_datetime(modified).timestamp() if modified else None, md5=md5_hex(md5))


class _RangeNotSatisfiable(StoreError):
    """Internal: Azure answered 416 to a ranged GET."""


class _BlobNotFound(NotFoundError):
    """The blob (not the container) does not exist."""


def _translate(exc: Exception, root: str, key: str | None) -> SkyplaneError | None:
    where = f"{root}/{key}" if key else root
    if isinstance(exc, CONNECTION_ERRORS):
        return StoreUnavailableError(f"cannot reach Azure Blob Storage for {where}: {exc}",
                                     hint="check the network and the endpoint in the connection string, and retry")
    if not isinstance(exc, ApiError):
        return None
    code, status = exc.code, exc.status
    if code == "ContainerNotFound" or (status == 404 and not key):
        return NotFoundError(f"container {root} does not exist", hint="create it, or check the account and container names")
    if code == "CannotVerifyCopySource":
        reason = (exc.message or code).splitlines()[0]
        return StoreError(f"Azure could not read the source of the copy to {where}: {reason}",
                          hint="the source URL must be readable from Azure (a presigned or SAS URL)")
    if status == 404:
        return _BlobNotFound(f"{where} does not exist", hint="check the key, and that the container exists")
    if code == "InvalidBlockList":
        return NotFoundError(f"parts of the multipart upload of {where} are missing",
                             hint="upload every part before completing; an aborted upload cannot be completed")
    if code == "InvalidRange" or status == 416:
        return _RangeNotSatisfiable(f"range not satisfiable on {where}")
    # Azurite reports a bad key as AuthorizationFailure; its message still says "authenticate".
    if (status == 401 or code in ("AuthenticationFailed", "InvalidAuthenticationInfo")
            or "failed to authenticate" in exc.message):
        return CredentialsError(f"Azure rejected the credentials for {where}", hint=CREDENTIALS_HINT)
    if status == 403:
        return AccessDeniedError(f"access denied to {where}",
                                 hint="grant these credentials the Storage Blob Data Contributor role")
    if code == "ServerBusy" or status in (429, 503):
        return ThrottledError(f"Azure is throttling requests to {where} ({code or status})",
                              hint="retry with fewer connections")
    if status >= 500:
        return StoreUnavailableError(f"Azure failed a request on {where}: {code or status}", hint="retry later")
    return StoreError(f"Azure refused a request on {where}: {code or status}: {exc.message}")
