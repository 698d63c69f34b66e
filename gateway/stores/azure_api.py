"""The Azure Blob service REST API over one pooled urllib3 pool manager: requests, their
authorization, the retry budget.

Why not azure-storage-blob on a gateway's common path: importing it (with azure.core and requests)
costs ~190 ms before the first Azure request (``benchmarks/cli_timeline.py --imports``,
docs/benchmarks.md), and its downloads hand their bytes on in pieces where ours land straight in
the caller's buffer (:meth:`AzureClient.get_into`). urllib3 is the HTTP client the GCS and S3
stores use too.

Every credentials entry the store takes is served here (``gateway.stores`` module doc): an account
key (Shared Key signing, "Authorize with Shared Key" in the Azure Storage REST reference; a
connection string's ``AccountKey``, Azurite's well-known development account for
``UseDevelopmentStorage=true``), a SAS (appended to every URL as given), an Entra ID access token
(sent as a bearer token, never renewed here: the client pushes the next one), or none (anonymous
reads of a public container). Requests carry the ``x-ms-version`` azure-storage-blob sends.
azure-storage-blob is imported only to generate a SAS for a blob with the account key (the
store's ``presign``), what is rare and long to rewrite.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import hmac
import os
import random
import urllib.parse
import xml.etree.ElementTree as ET
from typing import Any, Iterable

import urllib3

from planner.errors import CredentialsError

from .common import CONNECT_TIMEOUT, READ_TIMEOUT, bearer_token, body_into, read_then_release, retry_after_of
from .http_pool import CONNECTION_ERRORS, Backoff, pool_manager

#: The REST API version azure-storage-blob 12.31 sends (its newest): answers have the same shape.
API_VERSION = "2026-10-06"
#: Azurite's development account (documented by Microsoft, not a secret): ``UseDevelopmentStorage=true``.
DEV_ACCOUNT = "devstoreaccount1"
DEV_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
DEV_ENDPOINT = "http://127.0.0.1:10000/devstoreaccount1"
CREDENTIALS_HINT = ("set AZURE_STORAGE_CONNECTION_STRING, or give an 'az' entry in the credentials document: "
                    "{connection_string} or {account_url, account_key | sas_token | access_token}")
#: What an Entra ID token for Blob Storage is asked for (the resource "https://storage.azure.com").
STORAGE_SCOPE = "https://storage.azure.com/.default"
_TIMEOUT = urllib3.Timeout(connect=CONNECT_TIMEOUT, read=READ_TIMEOUT)
#: The headers Shared Key signs by name, in order (the REST reference's string-to-sign; Range stays
#: empty: ranges go in ``x-ms-range``, as azure-storage-blob sends them).
_SIGNED = ("content-encoding", "content-language", "content-length", "content-md5", "content-type", "date",
           "if-modified-since", "if-match", "if-none-match", "if-unmodified-since", "range")


class ApiError(Exception):
    """An error answer of the Blob service: its HTTP ``status``, the error ``code`` (``x-ms-error-code``,
    else the error document's ``Code``), its ``message`` and the ``response`` (its headers:
    ``Retry-After`` for :func:`~.common.retry_after_of`)."""

    def __init__(self, status: int, code: str, message: str, response: Any = None) -> None:
        super().__init__(f"{status} {code}: {message}" if code else f"{status} {message}")
        self.status, self.code, self.message, self.response = status, code, message, response

    @classmethod
    def of(cls, response: Any) -> "ApiError":
        data = response.data or b""
        code = response.headers.get("x-ms-error-code") or ""
        message = ""
        try:
            error = ET.fromstring(data)
            code = code or (error.findtext("Code") or "")
            message = (error.findtext("Message") or "").strip()
        except ET.ParseError:
            message = data[:200].decode("utf-8", "replace").strip()
        return cls(response.status, code, message or (response.reason or ""), response)


def retryable(exc: BaseException) -> bool:
    """What the one retry of a call retries: 408, 429, 500, 502, 503, 504 (throttling is 503
    ServerBusy or 429), and requests that got no (whole) answer."""
    if isinstance(exc, ApiError):
        return exc.status in (408, 429, 500, 502, 503, 504)
    return isinstance(exc, CONNECTION_ERRORS)


def storage_wait(retry: int) -> float:
    """The wait before the ``retry``-th retry as azure-storage-blob's ``ExponentialRetry`` drew it with
    the settings the store gave it (``initial_backoff=0.5, increment_base=1.5, random_jitter_range=0.5``):
    0.5 + 1.5**n s, +-0.5 s; about 2, 2.75, 3.9 s."""
    backoff = 0.5 + 1.5**retry
    return random.uniform(max(0.0, backoff - 0.5), backoff + 0.5)


#: The one retry of an Azure call (docs/reliability.md "One retry budget"): 4 attempts, about 9 s of
#: waits in all (the SDK's default waited 15 s + 3^n s, 84 s for an unreachable host), at least the
#: store's Retry-After; nothing above the store retries the call again, only the coordinator re-sends
#: a failed chunk. A Retry-After is honoured up to 30 s, and the deadline bounds the whole.
RETRY = Backoff(retryable, deadline=30.0, maximum=30.0, attempts=4, wait=storage_wait, wait_at_least=retry_after_of)


class SharedKey:
    """Shared Key authorization with an account key (REST reference, "Authorize with Shared Key")."""

    def __init__(self, account: str, key: str) -> None:
        self.account = account
        try:
            self._key = base64.b64decode(key, validate=True)
        except ValueError as exc:
            raise CredentialsError(f"the account key for Azure account {account!r} is not base64",
                                   hint=CREDENTIALS_HINT) from exc
        self.account_key = key

    def authorization(self, method: str, path: str, params: Iterable[tuple[str, str]],
                      headers: dict[str, str]) -> str:
        """The ``Authorization`` header of a request to ``path`` (as sent: percent-encoded) with the
        query ``params`` (as given, not encoded) and ``headers`` (lowercase names, ``x-ms-date`` among
        them)."""
        length = headers.get("content-length")
        fixed = [method] + [("" if name == "content-length" and length == "0" else headers.get(name, ""))
                            for name in _SIGNED]
        # Sorted by name: the x-ms-* headers we send (lowercase letters and dashes, none a prefix of
        # another up to a dash) sort the same as the service's collation does.
        canonical = "".join(f"{name}:{value.strip()}\n" for name, value in sorted(headers.items())
                            if name.startswith("x-ms-"))
        query: dict[str, list[str]] = {}
        for name, value in params:
            query.setdefault(name.lower(), []).append(value)
        resource = f"/{self.account}{path}" + "".join(f"\n{name}:{','.join(sorted(values))}"
                                                      for name, values in sorted(query.items()))
        to_sign = "\n".join(fixed) + "\n" + canonical + resource
        digest = hmac.new(self._key, to_sign.encode("utf-8"), hashlib.sha256).digest()
        return f"SharedKey {self.account}:{base64.b64encode(digest).decode()}"

    def __repr__(self) -> str:  # it holds a secret
        return f"SharedKey({self.account!r}, <redacted>)"


class Bearer:
    """An Entra ID access token the client obtained, sent as it is (never renewed here)."""

    def __init__(self, token: str) -> None:
        self.token = token

    def __repr__(self) -> str:
        return "Bearer(<redacted>)"


class AzureClient:
    """Requests to one storage account's Blob service at ``base`` (``https://ACCOUNT.blob.core.windows.net``,
    or an emulator's ``http://host:port/ACCOUNT``) with ``auth``: a :class:`SharedKey`, a
    :class:`Bearer`, or None (then ``sas``, a SAS query string appended to every URL, or anonymous).
    Shared by every store of the account with the same credentials entry; thread-safe."""

    def __init__(self, account: str, base: str, auth: SharedKey | Bearer | None, sas: str | None) -> None:
        self.account = account
        self.base = base.rstrip("/")
        self.auth, self.sas = auth, sas
        self._base_path = urllib.parse.urlsplit(self.base).path
        self._http = pool_manager(self.base)

    # ---- paths ----------------------------------------------------------------------------------
    @staticmethod
    def container_path(container: str) -> str:
        return f"/{urllib.parse.quote(container)}"

    @staticmethod
    def blob_path(container: str, key: str) -> str:
        # quoted as azure-storage-blob quotes a blob name ('/' and '~' kept)
        return f"/{urllib.parse.quote(container)}/{urllib.parse.quote(key, safe='~/')}"

    def url(self, path: str, params: Iterable[tuple[str, str]] = ()) -> str:
        """The URL of ``path`` (under the account) with the query ``params`` and the SAS, if any."""
        query = "&".join(f"{urllib.parse.quote(name, safe='')}={urllib.parse.quote(value, safe='')}"
                         for name, value in params)
        if self.sas:
            query = f"{query}&{self.sas}" if query else self.sas
        return f"{self.base}{path}" + (f"?{query}" if query else "")

    # ---- requests -------------------------------------------------------------------------------
    def send(self, method: str, path: str, *, params: list[tuple[str, str]] | None = None, body: Any = None,
             headers: dict[str, str] | None = None, stream: bool = False) -> Any:
        """One attempt: the urllib3 response of an answer below 300 (its body read, unless ``stream``:
        then the caller reads it and releases the connection); an error answer raises :class:`ApiError`.
        ``headers``: lowercase names; ``body``: any bytes-like object, sent as it is."""
        params = params or []
        sent = {"x-ms-version": API_VERSION, "x-ms-date": email.utils.formatdate(usegmt=True), **(headers or {})}
        if body is not None:
            sent["content-length"] = str(memoryview(body).nbytes)
        if isinstance(self.auth, SharedKey):
            sent["authorization"] = self.auth.authorization(method, self._base_path + path, params, sent)
        elif isinstance(self.auth, Bearer):
            sent["authorization"] = f"Bearer {self.auth.token}"
        response = self._http.request(method, self.url(path, params), body=body, headers=sent,
                                      preload_content=not stream, decode_content=False, retries=False,
                                      redirect=False, timeout=_TIMEOUT)
        if response.status < 300:
            return response
        if stream:
            response.data  # noqa: B018 - read (and kept for ApiError.of), so the connection can be reused
            response.release_conn()
        raise ApiError.of(response)

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """:meth:`send` within the retry budget: the answer, its body read."""
        return RETRY(lambda: self.send(method, path, **kwargs))

    def get_into(self, path: str, byte_range: str | None, view: memoryview) -> int:
        """One Get Blob of ``byte_range`` (None: the whole blob) read into ``view`` until it is full or
        the body ends (the bytes read), with http.client's ``readinto`` straight into ``view`` (no
        copy: ``common.body_into``). The bytes are the blob's as stored (a blob stored with a
        Content-Encoding is not decoded)."""
        headers = {"x-ms-range": byte_range} if byte_range else {}
        response = self.send("GET", path, headers=headers, stream=True)
        return read_then_release(response, lambda: body_into(response._fp, view))  # noqa: SLF001

    def create_container(self, container: str) -> None:
        """Create ``container`` (Create Container; a client-side step, never a gateway's)."""
        self.call("PUT", self.container_path(container), params=[("restype", "container")])

    def close(self) -> None:
        """Close the pooled connections (the pool reopens them on the next request)."""
        self._http.clear()


def connection_fields(conn: str) -> dict[str, str]:
    """A connection string's fields, names in lowercase."""
    fields = (part.partition("=") for part in conn.strip().split(";") if "=" in part)
    return {name.strip().lower(): value.strip() for name, _, value in fields}


def connection_string_account(conn: str) -> str | None:
    """The ``AccountName`` a connection string names (Azurite's for ``UseDevelopmentStorage``)."""
    fields = connection_fields(conn)
    if fields.get("usedevelopmentstorage", "").lower() == "true":
        return DEV_ACCOUNT
    return fields.get("accountname")


def make_client(account: str, settings: dict[str, Any]) -> AzureClient:
    """One client for ``account`` from a credentials entry (see ``gateway.stores``), else from
    ``AZURE_STORAGE_CONNECTION_STRING``, read as azure-storage-blob reads them. Raises
    ``CredentialsError`` when there is none, when the connection string is for another account, or
    when it or the key is malformed."""
    conn = settings.get("connection_string")
    if not conn and not settings.get("account_url"):
        conn = os.environ.get("AZURE_STORAGE_CONNECTION_STRING")
    if conn:
        named = connection_string_account(conn)
        if named is not None and named != account:
            raise CredentialsError(f"the Azure connection string is for account {named!r}, not {account!r}",
                                   hint=f"give a credentials entry for az://{account}/... or fix the URI's account")
        return _from_connection_string(account, conn)
    if settings.get("account_url"):
        url = urllib.parse.urlsplit(settings["account_url"])
        if not url.scheme or not url.netloc:
            raise CredentialsError(f"unusable Azure credentials for account {account!r}: the account_url "
                                   f"{settings['account_url']!r} is not a URL", hint=CREDENTIALS_HINT)
        base = urllib.parse.urlunsplit((url.scheme, url.netloc, url.path, "", ""))
        sas = url.query or None  # a SAS in the account URL
        auth: SharedKey | Bearer | None = None
        if settings.get("account_key"):
            auth = SharedKey(account, settings["account_key"])
        elif settings.get("sas_token"):
            sas = settings["sas_token"].lstrip("?")
        elif "access_token" in settings:
            auth = Bearer(bearer_token(settings, "az", f"an Entra ID access token for {STORAGE_SCOPE}"))
            if url.scheme != "https":  # as azure-core refuses: a bearer token is never sent in the clear
                raise CredentialsError(f"an Entra ID access token for account {account!r} is sent over https "
                                       f"only, and the account_url {base!r} is not", hint="give the https endpoint")
        return AzureClient(account, base, auth, sas)
    raise CredentialsError(f"no Azure credentials for account {account!r}", hint=CREDENTIALS_HINT)


def _from_connection_string(account: str, conn: str) -> AzureClient:
    fields = connection_fields(conn)
    if fields.get("usedevelopmentstorage", "").lower() == "true":
        return AzureClient(DEV_ACCOUNT, DEV_ENDPOINT, SharedKey(DEV_ACCOUNT, DEV_KEY), None)
    base = fields.get("blobendpoint")
    if not base:
        if not fields.get("accountname"):
            raise CredentialsError(f"unusable Azure credentials for account {account!r}: the connection string "
                                   "names neither BlobEndpoint nor AccountName", hint=CREDENTIALS_HINT)
        protocol = fields.get("defaultendpointsprotocol", "https")
        suffix = fields.get("endpointsuffix", "core.windows.net")
        base = f"{protocol}://{fields['accountname']}.blob.{suffix}"
    auth = SharedKey(account, fields["accountkey"]) if fields.get("accountkey") else None
    sas = fields.get("sharedaccesssignature", "").lstrip("?") or None if auth is None else None
    return AzureClient(account, base, auth, sas)


def xml_of(response: Any) -> ET.Element:
    """An answer's XML document."""
    return ET.fromstring(response.data)
