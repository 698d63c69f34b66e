"""Azure Blob Storage (and Azurite) through azure-storage-blob.

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
"""

from __future__ import annotations

import datetime
import os
import re
import urllib.parse
from typing import Any

import azure.core.exceptions as aze
import requests
import requests.adapters
from azure.core import MatchConditions
from azure.core.credentials import AccessToken, AzureNamedKeyCredential, AzureSasCredential
from azure.storage.blob import BlobBlock, BlobSasPermissions, BlobServiceClient, ExponentialRetry, generate_blob_sas
from azure.storage.blob._shared.response_handlers import process_storage_error, return_response_headers
from urllib3.util.retry import Retry

from planner.errors import (AccessDeniedError, BadOptionError, ConflictError, CredentialsError, NotFoundError,
                            SkyplaneError, StoreError, StoreUnavailableError, ThrottledError)

from .base import Capabilities, CopySource, ObjectInfo, ObjectStore, PartInfo
from .common import (CONNECT_TIMEOUT, POOL_SIZE, READ_TIMEOUT, bearer_token, check_range, check_upload_id,
                     download_into, env_ca_bundle, md5_hex, new_upload_id, parse_expiration, part_numbers,
                     probe_key, settle_environment, translated)

MiB = 1024**2
_HEX = re.compile(r"^[0-9a-f]{32}$")
_SINGLE_PUT = 256 * MiB  # one Put Blob request up to this size; bigger writes are staged blocks
_SYNC_COPY_MAX = 256 * MiB  # Copy Blob From URL copies up to this in one synchronous request
_CREDENTIALS_HINT = ("set AZURE_STORAGE_CONNECTION_STRING, or give an 'az' entry in the credentials document: "
                     "{connection_string} or {account_url, account_key | sas_token | access_token}")
CREDENTIAL_FIELDS = frozenset({"connection_string", "account_url", "account_key", "sas_token", "access_token",
                               "expiration"})
#: What an Entra ID token for Blob Storage is asked for (the resource "https://storage.azure.com").
STORAGE_SCOPE = "https://storage.azure.com/.default"


def make_client(account: str, settings: dict[str, Any]) -> BlobServiceClient:
    """One pooled service client for ``account`` from a credentials entry (see ``gateway.stores``),
    else from ``AZURE_STORAGE_CONNECTION_STRING``. Raises ``CredentialsError`` when there is none, or
    when the connection string is for another account."""
    # The one retry of an Azure call (docs/reliability.md "One retry budget"): 4 attempts, about 9 s
    # of waits in all (the SDK's default waits 15 s + 3^n s, 84 s for an unreachable host); nothing
    # above the store retries the call again, only the coordinator re-sends a failed chunk.
    retry = ExponentialRetry(initial_backoff=0.5, increment_base=1.5, retry_total=3, random_jitter_range=0.5)
    session = _pooled_session()
    options: dict[str, Any] = dict(session=session, connection_timeout=CONNECT_TIMEOUT,
                                   read_timeout=READ_TIMEOUT, retry_policy=retry, max_single_put_size=_SINGLE_PUT,
                                   max_block_size=64 * MiB)
    if env_ca_bundle():  # azure-core passes verify=True with every request: the bundle must be given here
        options["connection_verify"] = env_ca_bundle()
    conn = settings.get("connection_string")
    if not conn and not settings.get("account_url"):
        conn = os.environ.get("AZURE_STORAGE_CONNECTION_STRING")
    client = None
    try:
        if conn:
            named = connection_string_account(conn)
            if named is not None and named != account:
                raise CredentialsError(f"the Azure connection string is for account {named!r}, not {account!r}",
                                       hint=f"give a credentials entry for az://{account}/... or fix the URI's account")
            client = BlobServiceClient.from_connection_string(conn, **options)
        elif settings.get("account_url"):
            credential: Any = None
            if settings.get("account_key"):
                credential = AzureNamedKeyCredential(account, settings["account_key"])
            elif settings.get("sas_token"):
                credential = AzureSasCredential(settings["sas_token"].lstrip("?"))
            elif "access_token" in settings:
                credential = StaticTokenCredential(bearer_token(settings, "az", "an Entra ID access token for "
                                                                                f"{STORAGE_SCOPE}"),
                                                   settings.get("expiration"))
            client = BlobServiceClient(settings["account_url"], credential=credential, **options)
    except ValueError as exc:
        raise CredentialsError(f"unusable Azure credentials for account {account!r}: {exc}",
                               hint=_CREDENTIALS_HINT) from exc
    if client is not None:
        settle_environment(session, client.url)
        return client
    raise CredentialsError(f"no Azure credentials for account {account!r}", hint=_CREDENTIALS_HINT)


class StaticTokenCredential:
    """An Entra ID access token the client obtained (``TokenCredential`` protocol of azure-core):
    given as it is, never renewed here; the client pushes the next one before it expires
    (docs/credentials.md)."""

    def __init__(self, token: str, expiration: str | None) -> None:
        self._token = token
        # azure-core only asks for a new token (here: the same one) within 300 s of expires_on
        self._expires_on = int(parse_expiration(expiration, "az")) if expiration else 2**31 - 1

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken(self._token, self._expires_on)

    def __repr__(self) -> str:  # it holds a secret
        return "StaticTokenCredential(<redacted>)"


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


def connection_string_account(conn: str) -> str | None:
    """The ``AccountName`` a connection string names (Azurite's for ``UseDevelopmentStorage``)."""
    fields = dict(part.split("=", 1) for part in conn.strip().rstrip(";").split(";") if "=" in part)
    fields = {k.strip().lower(): v.strip() for k, v in fields.items()}
    if fields.get("usedevelopmentstorage", "").lower() == "true":
        return "devstoreaccount1"
    return fields.get("accountname")


def _pooled_session() -> requests.Session:
    # azure-core retries on its own; the adapter must not (same settings azure-core uses itself).
    adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=POOL_SIZE,
                                            max_retries=Retry(total=False, redirect=False, raise_on_status=False))
    session = requests.Session()
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session


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

    def __init__(self, account: str, container: str, service: BlobServiceClient) -> None:
        self.account, self.container = account, container
        self._service = service
        self._container = service.get_container_client(container)

    @property
    def root_uri(self) -> str:
        return f"az://{self.account}/{self.container}"

    def check(self) -> None:
        try:
            with self._errors():
                self._container.get_container_properties()
        except AccessDeniedError as exc:
            # A container-scoped SAS never grants Get Container Properties (that takes an account SAS
            # or a key), however many blob permissions it has: one listing request tells instead that
            # the container exists and that these credentials reach it.
            try:
                with self._errors():
                    next(self._container.list_blobs(results_per_page=1).by_page(), None)
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
            pages = self._container.list_blobs(name_starts_with=prefix or None,
                                               results_per_page=limit).by_page(continuation_token=token)
            page = [_info(blob.name, blob) for blob in next(pages, [])]
        return page, pages.continuation_token or None

    def head(self, key: str) -> ObjectInfo:
        with self._errors(key):
            return _info(key, self._container.get_blob_client(key).get_blob_properties())

    def read(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        check_range(offset, length)
        if length == 0:
            return b""
        try:
            with self._errors(key):
                ranged = offset > 0 or length is not None
                return self._container.get_blob_client(key).download_blob(offset=offset if ranged else None,
                                                                          length=length).readall()
        except _RangeNotSatisfiable:
            return b""  # the range starts at or past the end: like a slice, nothing

    def read_into(self, key: str, offset: int, view: memoryview) -> int:
        blob = self._container.get_blob_client(key)
        return download_into(view, offset, self._errors(key), _RangeNotSatisfiable,
                             lambda writer: blob.download_blob(offset=offset, length=len(view)).readinto(writer))

    def write(self, key: str, data: bytes | bytearray) -> ObjectInfo:
        with self._errors(key):
            r = _put_blob(self._container.get_blob_client(key), data)
        md5 = r.get("content_md5")
        modified = r.get("last_modified")
        return ObjectInfo(key, len(data), _etag(md5, r.get("etag")), modified.timestamp() if modified else None,
                          md5=md5_hex(md5))

    def delete(self, key: str) -> None:
        try:
            with self._errors(key):
                self._container.get_blob_client(key).delete_blob()
        except _BlobNotFound:
            pass

    def read_versioned(self, key: str) -> tuple[bytes, str]:
        with self._errors(key):
            downloader = self._container.get_blob_client(key).download_blob()
            return downloader.readall(), downloader.properties.etag

    def write_if(self, key: str, data: bytes, expected_version: str | None) -> str:
        # The version is Azure's etag as the SDK returned it; it goes back unchanged in If-Match.
        condition: dict[str, Any] = ({"etag": expected_version, "match_condition": MatchConditions.IfNotModified}
                                     if expected_version else {"overwrite": False})
        with self._errors(key):
            try:
                r = self._container.get_blob_client(key).upload_blob(data, **{"overwrite": True, **condition})
            except aze.HttpResponseError as exc:
                # 412: the etag differs; 409: it exists already; 404: deleted since it was read.
                if exc.status_code in (404, 409, 412) and exc.error_code != "ContainerNotFound":
                    raise ConflictError(f"{self.root_uri}/{key} changed since it was read",
                                        hint="read it again and retry the update") from exc
                raise
        return r["etag"]

    def begin_multipart(self, key: str) -> str:
        return new_upload_id()  # nothing exists on the server until the first block is staged

    def upload_part(self, key: str, upload_id: str, part_number: int, data: bytes | bytearray) -> PartInfo:
        check_upload_id(upload_id)
        block_id = _block_id(upload_id, part_number)
        with self._errors(key):
            # The SDK sends a bytearray as it is here (only its Put Blob path insists on bytes).
            self._container.get_blob_client(key).stage_block(block_id, data, length=len(data))
        return PartInfo(part_number, block_id, len(data))

    def complete_multipart(self, key: str, upload_id: str, parts: list[PartInfo]) -> ObjectInfo:
        check_upload_id(upload_id)
        numbers = part_numbers(parts, f"{self.root_uri}/{key}")  # an empty list would commit an empty blob
        with self._errors(key):
            self._container.get_blob_client(key).commit_block_list(
                [BlobBlock(block_id=_block_id(upload_id, n)) for n in numbers])
        return self.head(key)  # the answer has no size

    def abort_multipart(self, key: str, upload_id: str) -> None:
        check_upload_id(upload_id)
        blob = self._container.get_blob_client(key)
        try:
            with self._errors(key):
                _, staged = blob.get_block_list("uncommitted")
                if not any(_upload_of(b.id) == upload_id for b in staged) or self.exists(key):
                    return  # nothing staged, or a committed blob that holds the blocks until its next write
                blob.delete_blob()  # a blob of staged blocks only: they go with it
        except _BlobNotFound:
            pass  # nothing staged for the key, or deleted meanwhile
        except AccessDeniedError:
            pass  # credentials that may write but not delete: the staged blocks expire after the week

    def pending_uploads(self, prefix: str = "") -> list[tuple[str, str]]:
        """Keys that hold staged blocks and no committed blob, by the upload ids of those blocks. One
        listing that includes such keys (they list with size 0), and a block list per size-0 key."""
        found: set[tuple[str, str]] = set()
        with self._errors():
            empty = [b.name for b in self._container.list_blobs(name_starts_with=prefix or None,
                                                                include=["uncommittedblobs"]) if not b.size]
        for key in empty:
            try:
                with self._errors(key):
                    committed, staged = self._container.get_blob_client(key).get_block_list("all")
            except _BlobNotFound:
                continue
            if not committed and not self.exists(key):
                found.update((key, u) for u in map(_upload_of, (b.id for b in staged)) if u is not None)
        return sorted(found)

    # ---- server-side copy: from a URL -----------------------------------------------------------
    def presign(self, key: str, seconds: int) -> str:
        """A read-only SAS for the blob when the credentials hold the account key, else the
        credentials' own SAS (which must allow reading)."""
        blob = self._container.get_blob_client(key)
        credential = self._service.credential
        account_key = getattr(credential, "account_key", None)
        if account_key:
            expiry = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=seconds)
            sas = generate_blob_sas(self.account, self.container, key, account_key=account_key,
                                    permission=BlobSasPermissions(read=True), expiry=expiry)
            return f"{blob.url}?{sas}"
        if isinstance(credential, AzureSasCredential):
            return f"{blob.url}?{credential.signature}"
        if "sig=" in urllib.parse.urlsplit(blob.url).query:
            return blob.url  # a SAS in the connection string
        raise CredentialsError(f"cannot presign {self.root_uri}/{key}: the credentials hold neither the account "
                               "key nor a SAS", hint="give an account_key or a sas_token in the credentials entry")

    def copy_from(self, source: CopySource, key: str, token: str | None = None) -> tuple[ObjectInfo | None, str | None]:
        if source.url is None or source.size > _SYNC_COPY_MAX:
            raise BadOptionError(f"Azure copies whole objects of up to {_SYNC_COPY_MAX} bytes from a URL",
                                 hint="presign the source; copy bigger objects in parts")
        with self._errors(key):
            self._container.get_blob_client(key).start_copy_from_url(source.url, requires_sync=True)
        return self.head(key), None  # the answer has no size

    def copy_part_from(self, source: CopySource, key: str, upload_id: str, part_number: int, offset: int,
                       length: int) -> PartInfo:
        check_upload_id(upload_id)
        check_range(offset, length)
        if source.url is None:
            raise BadOptionError("Azure copies parts from a URL only", hint="presign the source")
        block_id = _block_id(upload_id, part_number)
        with self._errors(key):
            self._container.get_blob_client(key).stage_block_from_url(block_id, source.url, source_offset=offset,
                                                                      source_length=length)
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
        self._service.close()

    def _errors(self, key: str | None = None):
        return translated(lambda exc: _translate(exc, self.root_uri, key), self.expires_at, sdk_retries=True)


def _put_blob(blob: Any, data: bytes | bytearray) -> dict[str, Any]:
    """One Put Blob of ``data`` (overwriting), through the SDK's generated operation, which sends any
    bytes-like body as it is. ``upload_blob`` takes only ``bytes`` (a bytearray is read as an iterable
    of ints): the ``bytes()`` copy it needed was 60% of our CPU writing 64 MiB objects to Azurite
    (0.38 of 0.64 CPU-s per 256 MiB: a fresh buffer's page faults and a copy; docs/benchmarks.md).
    Returns the answer's headers, as ``upload_blob`` does (``etag``, ``content_md5``, ``last_modified``);
    raises the SDK's storage errors as ``upload_blob`` does (``process_storage_error``)."""
    try:
        return blob._client.block_blob.upload(body=data, content_length=len(data),  # noqa: SLF001
                                              cls=return_response_headers)
    except aze.HttpResponseError as exc:
        process_storage_error(exc)
        raise  # not reached: it raises the error it made


def _block_id(upload_id: str, part_number: int) -> str:
    # Every block id of a blob must have the same length; the upload id keeps two concurrent
    # uploads of one key from committing each other's blocks. The SDK base64-encodes it.
    return f"{upload_id}{part_number:06d}"


def _upload_of(block_id: str) -> str | None:
    """The upload id a block id of ours begins with (None for another tool's block)."""
    upload_id = block_id[:32]
    return upload_id if len(block_id) == 38 and block_id[32:].isdigit() and _HEX.match(upload_id) else None


def _etag(content_md5: Any, etag: str | None) -> str | None:
    return md5_hex(content_md5) or (etag.strip('"') if etag else None)


def _info(key: str, blob: Any) -> ObjectInfo:
    """A listing entry's or a HEAD's BlobProperties as an ObjectInfo."""
    md5 = blob.content_settings.content_md5
    return ObjectInfo(key, blob.size, _etag(md5, blob.etag),
                      blob.last_modified.timestamp() if blob.last_modified else None, md5=md5_hex(md5))


class _RangeNotSatisfiable(StoreError):
    """Internal: Azure answered 416 to a ranged GET."""


class _BlobNotFound(NotFoundError):
    """The blob (not the container) does not exist."""


def _translate(exc: Exception, root: str, key: str | None) -> SkyplaneError | None:
    where = f"{root}/{key}" if key else root
    if isinstance(exc, (aze.ServiceRequestError, aze.ServiceResponseError)):
        return StoreUnavailableError(f"cannot reach Azure Blob Storage for {where}: {exc}",
                                     hint="check the network and the endpoint in the connection string, and retry")
    if isinstance(exc, aze.ClientAuthenticationError):
        return CredentialsError(f"Azure rejected the credentials for {where}", hint=_CREDENTIALS_HINT)
    if not isinstance(exc, aze.HttpResponseError):
        return None
    code = str(exc.error_code or "")
    status = exc.status_code or 0
    if code == "ContainerNotFound" or (status == 404 and not key):
        return NotFoundError(f"container {root} does not exist", hint="create it, or check the account and container names")
    if code == "CannotVerifyCopySource":
        reason = str(exc.message or code).splitlines()[0]
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
    if code in ("AuthenticationFailed", "InvalidAuthenticationInfo") or "failed to authenticate" in str(exc.message):
        return CredentialsError(f"Azure rejected the credentials for {where}", hint=_CREDENTIALS_HINT)
    if status == 403:
        return AccessDeniedError(f"access denied to {where}",
                                 hint="grant these credentials the Storage Blob Data Contributor role")
    if code == "ServerBusy" or status in (429, 503):
        return ThrottledError(f"Azure is throttling requests to {where} ({code or status})",
                              hint="retry with fewer connections")
    if status >= 500:
        return StoreUnavailableError(f"Azure failed a request on {where}: {code or status}", hint="retry later")
    return StoreError(f"Azure refused a request on {where}: {code or status}: {exc.reason or exc}")
