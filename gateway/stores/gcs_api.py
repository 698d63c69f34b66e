"""The GCS JSON API over one pooled urllib3 pool manager: requests, credentials, the retry budget.

Why not google-cloud-storage: importing it costs a gateway ~230 ms before its first GCS request
(google.cloud.storage, google.api_core with grpc and protobuf, requests, google.oauth2's service
account module with cryptography: ``python -X importtime``, docs/benchmarks.md), and its downloads
hand their bytes on in pieces, a copy each, where ours land straight in the caller's buffer
(:meth:`GCSClient.get_into`). urllib3 is the HTTP client botocore uses too, so a gateway between S3
and GCS imports it once.

Credentials are google-auth's (its core is cheap; ``google.oauth2.service_account`` and
``google.auth.default`` are imported only where a credentials entry or the environment asks for
them). What :func:`make_client` builds for an entry is what google-cloud-storage's ``Client`` built:
``STORAGE_EMULATOR_HOST`` or an entry's ``endpoint`` without credentials is anonymous, an
``access_token`` is sent as it is and never refreshed (:func:`_token_refused`), otherwise service
account keys or application default credentials. google-cloud-storage itself is built only for what
it does that is hard to rewrite (:meth:`GCSClient.library`: V4 URL signing, creating buckets).
"""

from __future__ import annotations

import http.client
import json
import os
import threading
import urllib.parse
from typing import Any

import google.auth.exceptions as aex
import urllib3

from planner.errors import CredentialsError

from .common import CONNECT_TIMEOUT, READ_TIMEOUT, bearer_token, body_into, read_then_release
from .http_pool import CONNECTION_ERRORS as HTTP_ERRORS
from .http_pool import Backoff, pool_manager

DEFAULT_BASE = "https://storage.googleapis.com"
#: google-cloud-storage's ``Client.SCOPE``: what application default credentials are asked for.
SCOPES = ("https://www.googleapis.com/auth/devstorage.full_control",
          "https://www.googleapis.com/auth/devstorage.read_only",
          "https://www.googleapis.com/auth/devstorage.read_write")
_ENTRY_SCOPES = ["https://www.googleapis.com/auth/devstorage.full_control"]  # a service account entry's
CREDENTIALS_HINT = ("set GOOGLE_APPLICATION_CREDENTIALS or run `gcloud auth application-default login`, "
                    "or give a 'gs' entry in the credentials document")
_TIMEOUT = urllib3.Timeout(connect=CONNECT_TIMEOUT, read=READ_TIMEOUT)
#: Errors of a request that got no (whole) answer (http_pool's), and google-auth's failures to reach its token endpoint.
CONNECTION_ERRORS = (*HTTP_ERRORS, aex.TransportError)
#: Bytes asked of a decoded (gzip) body at a time: it cannot be read straight into the caller's buffer.
_DECODED_PIECE = 1024**2


class ApiError(Exception):
    """An error answer of the JSON API: its HTTP ``status``, the error document's ``message``, and the
    ``response`` (its headers: ``Retry-After`` for :func:`~.common.retry_after_of`)."""

    def __init__(self, status: int, message: str, response: Any = None) -> None:
        super().__init__(f"{status} {message}")
        self.status, self.message, self.response = status, message, response

    @classmethod
    def of(cls, response: Any) -> "ApiError":
        data = response.data or b""
        try:
            message = json.loads(data)["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = data[:200].decode("utf-8", "replace").strip() or (response.reason or "")
        return cls(response.status, message, response)


def retryable(exc: BaseException) -> bool:
    """What the one retry of a call retries: 408, 429, 5xx, and requests that got no (whole) answer
    (google-cloud-storage's ``DEFAULT_RETRY`` predicate)."""
    if isinstance(exc, ApiError):
        return exc.status in (408, 429) or exc.status >= 500
    return isinstance(exc, CONNECTION_ERRORS)


#: The one retry of a GCS call (docs/reliability.md "One retry budget"): google-api-core's ``Retry``
#: as google-cloud-storage set it (10 s deadline, 0.5 s first wait doubling to 4 s).
RETRY = Backoff(retryable)


def _token_refused(request: Any, scopes: Any) -> Any:
    """google-auth asks for a new token when GCS answers 401: a given token cannot be renewed here."""
    raise aex.RefreshError("GCS refused the access token (expired or revoked), and a gateway cannot renew it")


class _GivenToken:
    """An entry's OAuth 2.0 access token, sent as it is (``.token``, as google-auth's credentials
    hold it); a 401 cannot be answered by renewing it (:func:`_token_refused`)."""

    def __init__(self, token: str) -> None:
        self.token = token

    def before_request(self, request: Any, method: str, url: str, headers: dict) -> None:
        headers["authorization"] = f"Bearer {self.token}"

    def refresh(self, request: Any) -> None:
        _token_refused(request, None)


class _AuthRequest:
    """google-auth's transport ``Request`` (what credentials call to mint or refresh a token) on our
    pool manager: google.auth.transport.urllib3 would import google.oauth2.service_account (~50 ms)."""

    def __init__(self, http: urllib3.PoolManager) -> None:
        self._http = http

    def __call__(self, url: str, method: str = "GET", body: Any = None, headers: dict | None = None,
                 timeout: float | None = None, **kwargs: Any) -> "_AuthResponse":
        try:
            response = self._http.request(method, url, body=body, headers=headers, retries=False,
                                          timeout=timeout or _TIMEOUT, **kwargs)
        except urllib3.exceptions.HTTPError as exc:
            raise aex.TransportError(exc) from exc
        return _AuthResponse(response)


class _AuthResponse:
    """google-auth's transport ``Response``."""

    def __init__(self, response: Any) -> None:
        self.status, self.headers, self.data = response.status, response.headers, response.data


class GCSClient:
    """Requests to the GCS JSON API at ``base`` with ``credentials`` (None: anonymous), shared by every
    store with the same credentials entry; thread-safe. ``library_kwargs``: how to build the
    google-cloud-storage client these settings make (:meth:`library`)."""

    def __init__(self, base: str, credentials: Any, library_kwargs: dict[str, Any]) -> None:
        self.base = base.rstrip("/")
        self._credentials = credentials
        self._library_kwargs = library_kwargs
        self._library: Any = None
        self._auth_lock = threading.Lock()
        self._http = pool_manager(self.base)
        self._auth_request = _AuthRequest(self._http)

    # ---- URLs ---------------------------------------------------------------------------------
    def bucket_url(self, bucket: str) -> str:
        return f"{self.base}/storage/v1/b/{_quote(bucket)}"

    def object_url(self, bucket: str, name: str) -> str:
        return f"{self.bucket_url(bucket)}/o/{_quote(name)}"

    def media_url(self, bucket: str, name: str) -> str:
        return f"{self.base}/download/storage/v1/b/{_quote(bucket)}/o/{_quote(name)}?alt=media"

    def upload_url(self, bucket: str) -> str:
        return f"{self.base}/upload/storage/v1/b/{_quote(bucket)}/o?uploadType=multipart"

    # ---- requests -----------------------------------------------------------------------------
    def send(self, method: str, url: str, *, body: Any = None, headers: dict[str, str] | None = None,
             stream: bool = False) -> Any:
        """One attempt: the urllib3 response of an answer below 300 (its body read, unless ``stream``:
        then the caller reads it and releases the connection). An error answer raises :class:`ApiError`;
        a 401 is answered once by refreshing the credentials (google-auth's ``AuthorizedSession`` does
        the same), whose refusal raises google-auth's ``RefreshError``."""
        refreshed = False
        while True:
            sent = dict(headers or {})
            self._authorize(method, url, sent)
            response = self._http.request(method, url, body=body, headers=sent, preload_content=not stream,
                                          retries=False, redirect=False, timeout=_TIMEOUT)
            if response.status < 300:
                return response
            if stream:
                response.data  # noqa: B018 - read (and kept for ApiError.of), so the connection can be reused
                response.release_conn()
            if response.status == 401 and self._credentials is not None and not refreshed:
                with self._auth_lock:
                    self._credentials.refresh(self._auth_request)
                refreshed = True
                continue
            raise ApiError.of(response)

    def call(self, method: str, url: str, *, body: Any = None, headers: dict[str, str] | None = None,
             params: dict[str, Any] | None = None) -> dict:
        """A JSON API call within the retry budget: its JSON answer (``{}`` for an empty one).
        ``params`` (None values left out) go in the query string; a dict ``body`` is sent as JSON."""
        if params:
            query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
            url = f"{url}{'&' if '?' in url else '?'}{query}" if query else url
        if isinstance(body, dict):
            body, headers = json.dumps(body).encode(), {**(headers or {}), "content-type": "application/json"}
        response = RETRY(lambda: self.send(method, url, body=body, headers=headers))
        return json.loads(response.data) if response.data else {}

    def get_into(self, url: str, headers: dict[str, str], view: memoryview, offset: int = 0) -> int:
        """One media GET read into ``view`` until it is full or the body ends (the bytes read). A body
        GCS does not encode is read with http.client's ``readinto`` straight into ``view`` (no copy,
        as the S3 store reads: ``common.body_into``). A gzip one (an object stored gzip-encoded, served so
        because we accept gzip as google-cloud-storage's downloads do) is decoded, as they decode it.
        ``offset``: where the asked range starts; an answer of 200 (the whole object) is read from there."""
        response = self.send("GET", url, headers=headers, stream=True)
        return read_then_release(response, lambda: _body_into(response, view, offset if response.status == 200 else 0))

    def _authorize(self, method: str, url: str, headers: dict[str, str]) -> None:
        if self._credentials is not None:
            with self._auth_lock:  # google-auth's credentials refresh without a lock of their own
                self._credentials.before_request(self._auth_request, method, url, headers)

    def library(self) -> Any:
        """A google-cloud-storage client for these settings, built (and imported) on first use."""
        if self._library is None:
            from google.cloud import storage

            kwargs = dict(self._library_kwargs)
            if "credentials" in kwargs:
                kwargs["credentials"] = _library_credentials(kwargs["credentials"])
            self._library = storage.Client(**kwargs)
        return self._library

    def create_bucket(self, bucket: str, location: str | None = None) -> Any:
        """Create ``bucket`` (through google-cloud-storage: a client-side step, never a gateway's)."""
        return self.library().create_bucket(bucket, location=location)

    def close(self) -> None:
        """Close the pooled connections (the pool reopens them on the next request)."""
        self._http.clear()


def make_client(settings: dict[str, Any]) -> GCSClient:
    """One GCS client for a credentials entry (see ``gateway.stores``), with a pooled connection manager.

    With no entry google-cloud-storage's rules apply: ``STORAGE_EMULATOR_HOST`` (anonymous), then
    application default credentials. An ``access_token`` (OAuth 2.0, what the client's google-auth
    credentials minted: an impersonated account, workload identity) is used as it is, never refreshed
    here: the client pushes a new one before it expires (docs/credentials.md).
    """
    emulator = os.environ.get("STORAGE_EMULATOR_HOST")
    base = (settings.get("endpoint") or emulator or os.environ.get("API_ENDPOINT_OVERRIDE") or DEFAULT_BASE)
    base = base if "://" in base else f"http://{base}"
    credentials: Any = None  # anonymous
    library: dict[str, Any] = {}  # what make_client handed google-cloud-storage's Client before
    try:
        if settings.get("service_account_info") or settings.get("service_account_file"):
            from google.oauth2 import service_account

            credentials = (service_account.Credentials.from_service_account_info(
                settings["service_account_info"], scopes=_ENTRY_SCOPES) if settings.get("service_account_info")
                else service_account.Credentials.from_service_account_file(
                    settings["service_account_file"], scopes=_ENTRY_SCOPES))
            library["credentials"] = credentials
        elif "access_token" in settings:
            credentials = _GivenToken(token_of(settings))
            library.update(credentials=_LibraryToken(credentials.token), project=settings.get("project"))
        elif settings.get("anonymous") or settings.get("endpoint"):
            library.update(credentials=_ANONYMOUS, project=settings.get("project"))  # None: no project needed
        elif not emulator:  # the emulator's requests go unauthenticated, as the library sends them
            import google.auth

            credentials, _ = google.auth.default(scopes=list(SCOPES))
            library["credentials"] = credentials
    except (aex.DefaultCredentialsError, ValueError, OSError) as exc:
        raise CredentialsError(f"cannot set up Google Cloud credentials: {exc}", hint=CREDENTIALS_HINT) from exc
    if settings.get("project"):
        library["project"] = settings["project"]
    if settings.get("endpoint"):
        library["client_options"] = {"api_endpoint": settings["endpoint"]}
    return GCSClient(base, credentials, library)


def token_of(settings: dict[str, Any]) -> str:
    """The entry's ``access_token``; an empty one, or one past its ``expiration``, is refused here,
    before any request (and, on the client, before any gateway starts)."""
    return bearer_token(settings, "gs", "an OAuth 2.0 access token (google-auth credentials' .token)")


class _LibraryToken:
    """Marks library kwargs whose credentials are google.oauth2's for a given token, built in
    :meth:`GCSClient.library` (google.oauth2.credentials costs ~85 ms to import)."""

    def __init__(self, token: str) -> None:
        self.token = token


_ANONYMOUS = object()  # marks library kwargs whose credentials are google-auth's AnonymousCredentials


def _library_credentials(marker: Any) -> Any:
    """The google-auth credentials a :func:`make_client` marker stands for (others as they are)."""
    if isinstance(marker, _LibraryToken):
        from google.oauth2 import credentials as oauth2

        return oauth2.Credentials(marker.token, refresh_handler=_token_refused)
    if marker is _ANONYMOUS:
        from google.auth.credentials import AnonymousCredentials

        return AnonymousCredentials()
    return marker


def _quote(name: str) -> str:
    return urllib.parse.quote(name, safe="")


def _body_into(response: Any, view: memoryview, skip: int) -> int:
    """See :meth:`GCSClient.get_into`. A body cut off before its Content-Length raises
    ``http.client.IncompleteRead`` (a connection error: retried within the budget)."""
    fp = getattr(response, "_fp", None)
    encoded = response.headers.get("content-encoding", "identity").lower() not in ("", "identity")
    while skip:  # only after a 200 to a ranged GET; ordinary reads never come here
        piece = response.read(min(skip, _DECODED_PIECE), decode_content=True)
        if not piece:
            return 0
        skip -= len(piece)
    if not encoded and isinstance(fp, http.client.HTTPResponse):
        return body_into(fp, view)
    got = 0
    while got < len(view) and (piece := response.read(min(len(view) - got, _DECODED_PIECE), decode_content=True)):
        view[got:got + len(piece)] = piece
        got += len(piece)
    return got
