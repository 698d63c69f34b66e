"""Object-store adapters and :func:`open_store`, the one way to get one.

Root URIs (as :attr:`gateway.stores.uri.StoreURI.root_uri` gives them)::

    s3://bucket                 Amazon S3 (its REST API over urllib3; botocore for rare verbs)
    gs://bucket                 Google Cloud Storage (its JSON API over urllib3, google-auth)
    az://account/container      Azure Blob Storage (its REST API over urllib3)
    file:///some/dir            a local directory (keys are paths relative to it)

Credentials document
--------------------
A dict whose keys are store root URIs (most specific: ``"s3://bucket-a"``, ``"az://account/container"``;
``"az://account"`` also matches every container of an account) or schemes (``"s3"``, ``"gs"``, ``"az"``;
``"gcs"`` and ``"azure"`` are aliases). The most specific matching key wins. Values::

    s3: {"aws_access_key_id", "aws_secret_access_key", "aws_session_token", "region_name", "endpoint_url"}
    gs: {"project", "endpoint" (an emulator URL), "service_account_info" (the key file's JSON as a dict),
         "service_account_file", "access_token" (OAuth 2.0), "anonymous" (bool)}
    az: {"connection_string"}  or  {"account_url", "account_key" | "sas_token" | "access_token" (Entra ID)}

Every field is optional; every entry may also carry ``expiration`` (ISO 8601) when its secrets stop
working (an Azure ``sas_token``'s own ``se=`` counts too): a refusal of them from then on is a
retryable ``CredentialsExpiredError``, since the client renews them (docs/credentials.md). An
``access_token`` is used as given, never refreshed by the store; an empty one, or one whose
``expiration`` has passed, is refused when the store is opened. Example::

    {"s3": {"aws_access_key_id": "AKIA...", "aws_secret_access_key": "..."},
     "s3://other-account-bucket": {"aws_access_key_id": "...", "aws_secret_access_key": "..."},
     "gs": {"service_account_file": "/secrets/sa.json"},
     "az://euwest": {"connection_string": "DefaultEndpointsProtocol=https;AccountName=euwest;..."}}

With no matching entry each SDK's standard environment applies: ``AWS_ENDPOINT_URL`` and the AWS
credential chain; ``STORAGE_EMULATOR_HOST`` and Google application default credentials;
``AZURE_STORAGE_CONNECTION_STRING``. An Azure connection string for another account than the URI's
raises :class:`CredentialsError`.

Stores are cached per (root URI, matching credentials entry, relevant environment), and the SDK
clients behind them are shared by every store with the same credentials, so calling
:func:`open_store` per request is cheap and connections are pooled.
"""

from __future__ import annotations

import importlib
import json
import os
import threading
import urllib.parse
from typing import Any

from planner.errors import BadOptionError, BadURIError

from .base import Capabilities, ObjectInfo, ObjectStore, PartInfo
from .common import parse_expiration
from .uri import _ALIASES, parse_uri

__all__ = ["open_store", "credentials_entry", "entry_key", "endpoint", "covers", "narrow", "check_document", "merge_documents",
           "discard", "close_all", "preload",
           "ObjectStore", "ObjectInfo", "PartInfo", "Capabilities"]

_ENV_PREFIXES = {"s3": ("AWS_",), "gs": ("GOOGLE_", "STORAGE_EMULATOR_HOST", "API_ENDPOINT_OVERRIDE", "CLOUDSDK_"),
                 "az": ("AZURE_STORAGE_",), "file": ()}
_lock = threading.Lock()
_stores: dict[tuple, ObjectStore] = {}
_clients: dict[tuple, Any] = {}


def open_store(root_uri: str, credentials: dict | None = None) -> ObjectStore:
    """The store at ``root_uri`` (``s3://bucket``, ``gs://bucket``, ``az://account/container``,
    ``file:///dir``), using the matching entry of the ``credentials`` document (see the module doc).

    Raises ``BadURIError`` for a malformed URI or one with a key path, ``BadOptionError`` for an
    unknown credentials field and ``CredentialsError`` when credentials are missing or inconsistent.
    Opening does not contact the store; call ``check()`` for that.
    """
    uri = parse_uri(root_uri)
    if uri.scheme != "file" and uri.path:
        raise BadURIError(f"{root_uri!r} is not a store root: it has the key path {uri.path!r}",
                          hint=f"open {uri.root_uri} and pass the key to the store's methods")
    entry = _entry(uri.scheme, uri.root_uri, credentials)
    cache_key = _cache_key(uri, entry)
    with _lock:
        store = _stores.get(cache_key)
        if store is None:
            store = _make(uri.scheme, uri.bucket, cache_key[1], entry, cache_key[3])
            store.expires_at = _expiry(uri.scheme, uri.root_uri, entry)
            _stores[cache_key] = store
        return store


def discard(root_uri: str, credentials: dict | None) -> None:
    """Forget the store :func:`open_store` gave for these credentials (and its SDK client), once they
    were replaced: callers still holding it may finish with it, the next open gets a new one."""
    uri = parse_uri(root_uri)
    entry = _entry(uri.scheme, uri.root_uri, credentials)
    cache_key = _cache_key(uri, entry)
    with _lock:
        _stores.pop(cache_key, None)
        if uri.scheme != "file":
            _clients.pop(_client_key(uri.scheme, uri.bucket, cache_key[2], cache_key[3]), None)


def check_document(document: object) -> dict:
    """A credentials document with its keys in normal form (``"GCS"`` -> ``"gs"``), every entry checked
    against its scheme's fields. Raises ``BadOptionError`` naming what is wrong."""
    if not isinstance(document, dict):
        raise BadOptionError("the credentials document must be a dict", hint="see gateway.stores for its format")
    out = {}
    for name, entry in document.items():
        key = _normal_key(name)
        scheme = parse_uri(key).scheme if "://" in key else key
        if scheme not in ("s3", "gs", "az"):
            raise BadOptionError(f"credentials entry {name!r} names no store and no scheme",
                                 hint="keys are store root URIs (s3://bucket, az://account/container) or s3, gs, az")
        out[key] = _check_entry(scheme, name, entry)
    return out


def merge_documents(document: dict | None, entries: dict) -> dict:
    """``document`` with ``entries`` (checked) put in, each replacing the entry of the same key."""
    return {**{_normal_key(k): v for k, v in (document or {}).items()}, **check_document(entries)}


def _cache_key(uri, entry: dict) -> tuple:
    env = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith(_ENV_PREFIXES[uri.scheme])))
    root = (uri.path.rstrip("/") or "/") if uri.scheme == "file" else uri.root_uri
    return uri.scheme, root, json.dumps(entry, sort_keys=True, default=str), env


def _expiry(scheme: str, root_uri: str, entry: dict) -> float | None:
    if entry.get("expiration"):
        return parse_expiration(entry["expiration"], root_uri)
    if scheme == "az":
        from .azure import sas_expiry

        return sas_expiry(entry)
    return None


def credentials_entry(root_uri: str, credentials: dict | None) -> dict:
    """The entry of the ``credentials`` document that :func:`open_store` uses for ``root_uri`` (``{}``
    when none matches and the SDK's environment applies)."""
    uri = parse_uri(root_uri)
    return _entry(uri.scheme, uri.root_uri, credentials)


def close_all() -> None:
    """Drop every cached store and close every pooled client (e.g. before a fork)."""
    with _lock:
        clients = list(_clients.values())
        _stores.clear()
        _clients.clear()
    for client in clients:
        client.close()


#: The adapter module of each scheme whose store needs an SDK.
_ADAPTERS = {"s3": "s3", "gs": "gcs", "az": "azure"}


def preload(schemes: list[str]) -> None:
    """Import the adapters (with their SDKs) of ``schemes`` (``s3``, ``gcs``, ...; aliases and any case;
    unknown ones are ignored: they may be guessed from a command's words), and let each warm what its
    first client would load (an adapter's ``warm()``, where it has one), so that the first store
    opened does not wait for them. Best effort: what fails here fails again, reported, at that open."""
    for scheme in schemes:
        module = _ADAPTERS.get(_ALIASES.get(scheme.lower(), ""))
        if module is None:
            continue
        try:
            warm = getattr(importlib.import_module(f"{__name__}.{module}"), "warm", None)
            if warm is not None:
                warm()
        except Exception:  # noqa: BLE001 - e.g. an SDK not installed: the store's first open says so, with its hint
            continue


def _make(scheme: str, bucket: str, root: str, entry: dict, env: tuple) -> ObjectStore:
    if scheme == "file":
        from .local import LocalStore

        return LocalStore(root)
    key = _client_key(scheme, bucket, json.dumps(entry, sort_keys=True, default=str), env)
    if scheme == "s3":
        from . import s3

        clients = _client(key, lambda: s3.S3Clients(entry))
        return s3.S3Store(bucket, clients)
    if scheme == "gs":
        from . import gcs

        client = _client(key, lambda: gcs.make_client(entry))
        return gcs.GCSStore(bucket, client)
    from . import azure

    account, container = bucket.split("/", 1)
    client = _client(key, lambda: azure.make_client(account, entry))
    return azure.AzureStore(account, container, client)


def _client_key(scheme: str, bucket: str, entry_key: str, env: tuple) -> tuple:
    """SDK clients are shared by every store of a scheme with the same credentials (Azure: per account)."""
    return (scheme, bucket.split("/", 1)[0], entry_key, env) if scheme == "az" else (scheme, entry_key, env)


def _client(key: tuple, factory) -> Any:
    """Called with ``_lock`` held: SDK clients are built once and shared."""
    client = _clients.get(key)
    if client is None:
        client = _clients[key] = factory()
    return client


def _entry(scheme: str, root_uri: str, document: dict | None) -> dict:
    """The most specific entry of ``document`` for this store, checked against its scheme's fields."""
    if not document or scheme == "file":
        return {}
    if not isinstance(document, dict):
        raise BadOptionError("the credentials document must be a dict", hint="see gateway.stores for its format")
    normal = {_normal_key(k): v for k, v in document.items()}
    for candidate in _candidates(scheme, root_uri):
        if candidate in normal:
            return _check_entry(scheme, candidate, normal[candidate])
    return {}


def _candidates(scheme: str, root_uri: str) -> list[str]:
    """The document keys that may hold a store's entry, most specific first."""
    candidates = [root_uri]
    if scheme == "az":
        candidates.append(root_uri.rsplit("/", 1)[0])  # az://account
    return candidates + [scheme]


def endpoint(root_uri: str, credentials: dict | None = None) -> urllib.parse.SplitResult | None:
    """Where the store's SDK sends its requests when that is not the cloud's own service (an emulator,
    an S3-compatible server, Azurite): from the store's entry of ``credentials`` or the SDK's
    environment, as :func:`open_store` reads them. None for the cloud's own endpoint and for a local
    directory. Imports no SDK and checks no entry (opening the store does)."""
    uri = parse_uri(root_uri)
    if uri.scheme == "file":
        return None
    key = entry_key(root_uri, credentials)
    entry = next((v for k, v in (credentials or {}).items() if _normal_key(k) == key), None) if key else None
    entry = entry if isinstance(entry, dict) else {}
    if uri.scheme == "s3":
        url = entry.get("endpoint_url") or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    elif uri.scheme == "gs":
        url = entry.get("endpoint") or os.environ.get("STORAGE_EMULATOR_HOST")
    else:
        conn = entry.get("connection_string")
        url = entry.get("account_url") if not conn else None
        if not conn and not url:
            conn = os.environ.get("AZURE_STORAGE_CONNECTION_STRING")
        if conn:
            fields = {k.strip().lower(): v.strip() for k, _, v in
                      (part.partition("=") for part in conn.split(";") if "=" in part)}
            url = fields.get("blobendpoint") or (
                "http://127.0.0.1:10000" if fields.get("usedevelopmentstorage", "").lower() == "true" else None)
    if not url:
        return None
    return urllib.parse.urlsplit(url if "://" in url else "//" + url)


def entry_key(root_uri: str, credentials: dict | None) -> str | None:
    """The key (in normal form) of the entry of ``credentials`` that :func:`open_store` uses for
    ``root_uri``; None when none matches (a local directory, or the SDK's environment applies)."""
    uri = parse_uri(root_uri)
    if not credentials or uri.scheme == "file":
        return None
    normal = {_normal_key(k) for k in credentials}
    return next((c for c in _candidates(uri.scheme, uri.root_uri) if c in normal), None)


def covers(key: str, root_uri: str) -> bool:
    """Whether a credentials document key (a root URI or a scheme) may hold the entry of ``root_uri``."""
    uri = parse_uri(root_uri)
    return uri.scheme != "file" and _normal_key(key) in _candidates(uri.scheme, uri.root_uri)


def narrow(credentials: dict | None, roots) -> dict:
    """The part of a credentials document that the stores at ``roots`` (root URIs) use: for each, the
    entry :func:`open_store` would take, under its key. A host that opens only these stores gets only
    this (docs/credentials.md, "Who holds what"). Stores that share an entry (a scheme key such as
    ``"s3"``) share it here too: give each store its own root-URI entry to keep them apart."""
    normal = {_normal_key(k): v for k, v in (credentials or {}).items()}
    keys = {entry_key(root, normal) for root in roots} - {None}
    return {k: normal[k] for k in sorted(keys)}


def _check_entry(scheme: str, name: str, entry: object) -> dict:
    if not isinstance(entry, dict):
        raise BadOptionError(f"credentials entry {name!r} must be a dict of settings",
                             hint="see gateway.stores for the fields")
    unknown = set(entry) - _fields(scheme)
    if unknown:
        raise BadOptionError(f"unknown field(s) {sorted(unknown)} in credentials entry {name!r}",
                             hint=f"allowed: {sorted(_fields(scheme))}")
    if entry.get("expiration"):
        parse_expiration(entry["expiration"], name)
    return dict(entry)


def _fields(scheme: str) -> frozenset[str]:
    if scheme == "s3":
        from .s3 import CREDENTIAL_FIELDS
    elif scheme == "gs":
        from .gcs import CREDENTIAL_FIELDS
    else:
        from .azure import CREDENTIAL_FIELDS
    return CREDENTIAL_FIELDS


def _normal_key(key: str) -> str:
    """``"GCS"`` -> ``"gs"``; ``"azure://acct/c/"`` -> ``"az://acct/c"``."""
    key = str(key).strip()
    if "://" in key:
        scheme, rest = key.split("://", 1)
        return f"{_ALIASES.get(scheme.lower(), scheme.lower())}://{rest.strip('/')}"
    return _ALIASES.get(key.lower(), key.lower())
