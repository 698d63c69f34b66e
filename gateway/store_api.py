"""``POST /store`` (docs/gateway.md): the coordinator's store operations, run by a gateway that holds
the store's credentials, so that the coordinator holds none.

:func:`run` checks the body (a bad one raises :class:`BadOptionError`: 400), calls the store with the
gateway's retries, and returns the answer; a store's refusal propagates as its ``SkyplaneError``
(the control API answers 422 with ``error_type``).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import time
import threading
from typing import Callable

from planner.errors import BadOptionError

from .stores import ObjectStore, check_document, credentials_entry, discard, merge_documents, open_store
from .stores.base import MAX_LIST_PAGE, CopySource, ObjectInfo, PartInfo, capabilities_doc
from .stores.uri import parse_uri

#: Largest object ``write`` accepts (manifests and reports, not data: data travels in chunks).
MAX_WRITE = 16 * 1024 * 1024
#: A presigned URL lives at most this long (S3's limit for SigV4 presigned URLs: 7 days).
MAX_PRESIGN_SECONDS = 7 * 24 * 3600
#: Seconds one ``copy`` call keeps a copy going before it answers with a token to continue.
COPY_WAIT = 20.0


class Stores:
    """``stores(root_uri)``: the gateway's store for a root, opened once. A gateway's environment is
    fixed for its life, and open_store's cache key (a scan of the environment, the credentials as
    JSON) cost a fifth of the gateway's CPU per 4 KiB object. A race only opens the same cached store
    twice. Its credentials change only by :meth:`update` (``POST /credentials``)."""

    def __init__(self, credentials: dict) -> None:
        self._credentials = credentials
        self._stores: dict[str, ObjectStore] = {}
        self._lock = threading.Lock()

    def __call__(self, root_uri: str) -> ObjectStore:
        store = self._stores.get(root_uri)
        if store is None:
            store = self._stores[root_uri] = open_store(root_uri, self._credentials)
        return store

    @property
    def document(self) -> dict:
        """The credentials document as it stands (renewed entries merged in)."""
        return self._credentials

    def update(self, entries: dict) -> list[str]:
        """Merge renewed ``entries`` into the document (``BadOptionError`` if one is malformed); store
        calls that start afterwards use them, calls in progress finish with the old ones. Returns the
        entries' keys, in normal form."""
        with self._lock:
            old = self._credentials
            self._credentials = merge_documents(old, entries)
            stale, self._stores = self._stores, {}
            for root in stale:
                if credentials_entry(root, old) != credentials_entry(root, self._credentials):
                    discard(root, old)
        return sorted(check_document(entries))


def parse_credentials(doc: object) -> dict:
    """The body of ``POST /credentials``, ``{"credentials": {key: entry}}``: its entries (at least one)."""
    entries = doc.get("credentials") if isinstance(doc, dict) else None
    if not isinstance(entries, dict) or not entries:
        raise BadOptionError('the body must be {"credentials": {key: entry, ...}} with at least one entry')
    return entries


def info_dict(info: ObjectInfo) -> dict:
    """``{"key", "size", "etag", "mtime", "md5", "crc32c"}``, nulls where unknown."""
    return info.to_dict()


def run(doc: object, store_for: Callable[[str], ObjectStore], retrying: Callable) -> dict:
    """Run one store operation. ``store_for(root_uri)`` opens a store; ``retrying(call, what)`` runs a
    store call with the gateway's retries."""
    if not isinstance(doc, dict):
        raise BadOptionError('the body must be {"op", "store", ...}')
    op = doc.get("op")
    handler = _OPS.get(op) if isinstance(op, str) else None
    if handler is None:
        raise BadOptionError(f"unknown store op {op!r}", hint=f"one of {sorted(_OPS)}")
    root = _text(doc, "store")
    uri = parse_uri(root)
    if uri.scheme != "file" and uri.path:
        raise BadOptionError(f"store must be a store root URI, not {root!r}")
    store = store_for(root)
    return handler(store, doc, lambda call: retrying(call, f"{op} on {root}"))


def _list(store: ObjectStore, doc: dict, retrying) -> dict:
    prefix = doc.get("prefix") or ""
    token, limit = doc.get("token"), doc.get("limit", 1000)
    if not isinstance(prefix, str) or (token is not None and (not isinstance(token, str) or not token)):
        raise BadOptionError("list: prefix must be a string and token a non-empty string or null")
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_LIST_PAGE:
        raise BadOptionError(f"list: limit must be an integer in [1, {MAX_LIST_PAGE}]")
    objects, token = retrying(lambda: store.list_page(prefix, token, limit))
    return {"objects": [info_dict(o) for o in objects], "token": token}


def _head(store: ObjectStore, doc: dict, retrying) -> dict:
    key = _text(doc, "key")
    return {"object": info_dict(retrying(lambda: store.head(key)))}


def _begin(store: ObjectStore, doc: dict, retrying) -> dict:
    key = _text(doc, "key")
    return {"upload_id": retrying(lambda: store.begin_multipart(key))}


def _complete(store: ObjectStore, doc: dict, retrying) -> dict:
    key, upload_id = _text(doc, "key"), _text(doc, "upload_id")
    parts = doc.get("parts")
    if not isinstance(parts, list) or not parts:
        raise BadOptionError("complete_multipart: parts must be a non-empty list of {part_number, etag, size}")
    infos = []
    for i, p in enumerate(parts):
        number, etag, size = (p.get("part_number"), p.get("etag"), p.get("size")) if isinstance(p, dict) else (0,) * 3
        if not (_natural(number) and number >= 1 and isinstance(etag, str) and etag and _natural(size)):
            raise BadOptionError(f"complete_multipart: parts[{i}] must be {{part_number >= 1, etag, size >= 0}}")
        infos.append(PartInfo(number, etag, size))
    return {"object": info_dict(retrying(lambda: store.complete_multipart(key, upload_id, infos)))}


def _abort(store: ObjectStore, doc: dict, retrying) -> dict:
    key, upload_id = _text(doc, "key"), _text(doc, "upload_id")
    retrying(lambda: store.abort_multipart(key, upload_id))
    return {"ok": True}


def _list_parts(store: ObjectStore, doc: dict, retrying) -> dict:
    key, upload_id, wanted = _text(doc, "key"), _text(doc, "upload_id"), doc.get("checksums_of")
    if wanted is not None and not (isinstance(wanted, list) and all(_natural(n) for n in wanted)):
        raise BadOptionError("list_parts: checksums_of must be a list of part numbers or null")
    # every field of each PartInfo, nulls where unknown: the client rebuilds them with PartInfo(**d)
    return {"parts": [dataclasses.asdict(p) for p in retrying(lambda: store.list_parts(key, upload_id, wanted))]}


def _pending(store: ObjectStore, doc: dict, retrying) -> dict:
    prefix = doc.get("prefix") or ""
    if not isinstance(prefix, str):
        raise BadOptionError("pending_uploads: prefix must be a string")
    return {"uploads": [list(u) for u in retrying(lambda: store.pending_uploads(prefix))]}


def _delete(store: ObjectStore, doc: dict, retrying) -> dict:
    key = _text(doc, "key")
    retrying(lambda: store.delete(key))
    return {"ok": True}


def _write(store: ObjectStore, doc: dict, retrying) -> dict:
    key, data = _text(doc, "key"), _data(doc, "write")
    return {"object": info_dict(retrying(lambda: store.write(key, data)))}


def _data(doc: dict, op: str) -> bytes:
    """The bytes of ``data``: base64 of at most :data:`MAX_WRITE` bytes."""
    text = doc.get("data")
    if not isinstance(text, str) or len(text) > (MAX_WRITE + 2) // 3 * 4:
        raise BadOptionError(f"{op}: data must be base64 of at most {MAX_WRITE} bytes")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadOptionError(f"{op}: data is not base64") from None


def _presign(store: ObjectStore, doc: dict, retrying) -> dict:
    key, seconds = _text(doc, "key"), doc.get("seconds")
    if not _natural(seconds) or not 1 <= seconds <= MAX_PRESIGN_SECONDS:
        raise BadOptionError(f"presign: seconds must be an integer in [1, {MAX_PRESIGN_SECONDS}]")
    return {"url": retrying(lambda: store.presign(key, seconds))}


def _copy(store: ObjectStore, doc: dict, retrying) -> dict:
    """A server-side copy, for up to :data:`COPY_WAIT` seconds; then ``{"token"}`` to call again with."""
    key, source, token = _text(doc, "key"), _source(doc), doc.get("token")
    if token is not None and (not isinstance(token, str) or not token):
        raise BadOptionError("copy: token must be a non-empty string or null")
    deadline = time.monotonic() + COPY_WAIT
    while True:
        info, token = retrying(lambda: store.copy_from(source, key, token))
        if info is not None:
            return {"object": info_dict(info)}
        if time.monotonic() >= deadline:
            return {"token": token}


def _copy_part(store: ObjectStore, doc: dict, retrying) -> dict:
    key, upload_id, source = _text(doc, "key"), _text(doc, "upload_id"), _source(doc)
    number, offset, length = doc.get("part"), doc.get("offset"), doc.get("length")
    if not (_natural(number) and number >= 1 and _natural(offset) and _natural(length) and length >= 1
            and offset + length <= source.size):
        raise BadOptionError("copy_part: part >= 1, offset >= 0 and length >= 1 must lie within the source's size")
    part = retrying(lambda: store.copy_part_from(source, key, upload_id, number, offset, length))
    return {"part": {"part_number": part.part_number, "etag": part.etag, "size": part.size}}


def _source(doc: dict) -> CopySource:
    """The ``source`` of a copy: ``{"store": root URI, "key", "size", "url": presigned URL or null}``."""
    src = doc.get("source")
    if not isinstance(src, dict):
        raise BadOptionError('the copy needs a source: {"store", "key", "size", "url"}')
    store, key, size, url = src.get("store"), src.get("key"), src.get("size"), src.get("url")
    if not (isinstance(store, str) and store and isinstance(key, str) and key and _natural(size)):
        raise BadOptionError("source: store and key must be non-empty strings and size an integer >= 0")
    root = parse_uri(store)
    if root.scheme == "file" or root.path:
        raise BadOptionError(f"source: {store!r} is not the root of a cloud store")
    if url is not None and (not isinstance(url, str) or not url.startswith(("https://", "http://"))):
        raise BadOptionError("source: url must be an http(s) URL or null")
    return CopySource(store, key, size, url)


def _check(store: ObjectStore, doc: dict, retrying) -> dict:
    retrying(store.check)
    return {"ok": True}


def _region(store: ObjectStore, doc: dict, retrying) -> dict:
    return {"region": retrying(store.region)}


def _capabilities(store: ObjectStore, doc: dict, retrying) -> dict:
    return {"capabilities": capabilities_doc(store.capabilities)}


def _upload_part(store: ObjectStore, doc: dict, retrying) -> dict:
    """A small part (a pre-flight probe's byte): data travels in chunks."""
    key, upload_id, number = _text(doc, "key"), _text(doc, "upload_id"), doc.get("part")
    if not (_natural(number) and number >= 1):
        raise BadOptionError("upload_part: part must be an integer >= 1")
    data = _data(doc, "upload_part")
    return {"part": dataclasses.asdict(retrying(lambda: store.upload_part(key, upload_id, number, data)))}


def _probe_copy(store: ObjectStore, doc: dict, retrying) -> dict:
    source, parts = _source(doc), doc.get("parts", False)
    if not isinstance(parts, bool):
        raise BadOptionError("probe_copy: parts must be true or false")
    retrying(lambda: store.probe_copy_from(source, parts=parts))
    return {"ok": True}


_OPS = {"list": _list, "head": _head, "begin_multipart": _begin, "complete_multipart": _complete,
        "abort_multipart": _abort, "list_parts": _list_parts, "pending_uploads": _pending, "delete": _delete, "write": _write,
        "presign": _presign, "copy": _copy, "copy_part": _copy_part, "check": _check, "region": _region,
        "capabilities": _capabilities, "upload_part": _upload_part, "probe_copy": _probe_copy}


def _text(doc: dict, field: str) -> str:
    v = doc.get(field)
    if not isinstance(v, str) or not v:
        raise BadOptionError(f"{field} must be a non-empty string, got {v!r}")
    return v


def _natural(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0
