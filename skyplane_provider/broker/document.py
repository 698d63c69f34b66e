"""One small JSON document at a location of the user's choice, updated atomically by many processes.

``open_document(location)`` accepts a local path (``~/x.json``, ``/abs/x.json``, ``file:///abs/x.json``)
or an object URI with a key (``s3://bucket/meta/catalogue.json``, ``gs://...``, ``az://account/container/...``).

Updates are read-modify-write with a function of the current document, so that concurrent writers
never lose each other's changes:

- local file: an exclusive ``fcntl.flock`` on ``<path>.lock`` serialises writers; the new document
  is written to a temp file in the same directory and renamed over the old one (``os.replace``), so a
  reader (who takes no lock) sees the old document or the new one, never half of either;
- object store with the ``conditional_write`` capability: compare-and-swap on the object's version
  (S3 ETag, GCS generation, Azure etag), retried with a fresh read when another writer got there first;
- any other store: a plain whole-object write (atomic for readers), with a warning that concurrent
  writers may overwrite each other.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import random
import tempfile
import time
from abc import ABC, abstractmethod
from typing import Callable

from gateway.stores import open_store
from gateway.stores.base import ObjectStore
from gateway.stores.uri import parse_uri
from planner.errors import BadURIError, ConflictError, NotFoundError, StoreError

log = logging.getLogger(__name__)

#: Attempts of a compare-and-swap update before giving up (each after a fresh read).
CAS_ATTEMPTS = 50

Change = Callable[[dict | None], dict]


class JsonDocument(ABC):
    """A JSON object stored at ``location``."""

    location: str

    @abstractmethod
    def read(self) -> dict | None:
        """The current document, or None when it does not exist yet."""

    @abstractmethod
    def update(self, change: Change) -> dict:
        """Replace the document by ``change(current)`` atomically and return what was written.

        ``change`` may be called more than once (after a lost race) and must not have side effects.
        """


def open_document(location: str, credentials: dict | None = None) -> JsonDocument:
    """The document at ``location`` (see the module doc); raises ``BadURIError`` for a store URI without a key."""
    text = str(location).strip()
    if "://" not in text:
        return LocalDocument(os.path.abspath(os.path.expanduser(text)))
    uri = parse_uri(text)
    if uri.scheme == "file":
        return LocalDocument(uri.path)
    if not uri.path or uri.path.endswith("/"):
        raise BadURIError(f"{location!r} names a bucket or prefix, not a document",
                          hint=f"give the object key too, e.g. {uri.root_uri}/skyplane/catalogue.json")
    return StoreDocument(open_store(uri.root_uri, credentials), uri.path)


def _decode(raw: bytes | str, where: str) -> dict:
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise StoreError(f"{where} is not valid JSON: {exc}",
                         hint="restore it from a backup or move it away to start a new one") from exc
    if not isinstance(doc, dict):
        raise StoreError(f"{where} holds JSON, but not an object", hint="move it away to start a new one")
    return doc


def _encode(doc: dict) -> bytes:
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()


class LocalDocument(JsonDocument):
    """A file on this host: ``flock`` between writers, ``os.replace`` for readers."""

    def __init__(self, path: str) -> None:
        if path.endswith("/") or os.path.isdir(path):
            raise BadURIError(f"{path!r} is a directory, not a document", hint="give a file name, e.g. catalogue.json")
        self.path = path
        self.location = path

    def read(self) -> dict | None:
        try:
            with open(self.path, "rb") as f:
                return _decode(f.read(), self.path)
        except FileNotFoundError:
            return None

    def update(self, change: Change) -> dict:
        directory = os.path.dirname(self.path)
        os.makedirs(directory, exist_ok=True)
        with open(self.path + ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if we crash
            new = change(self.read())
            fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(self.path)}.", suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(_encode(new))
                    f.flush()
                    os.fsync(f.fileno())
                os.chmod(tmp, 0o644)  # readable by the other processes that read sky:// paths
                os.replace(tmp, self.path)
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
        return new


class StoreDocument(JsonDocument):
    """An object in a bucket: compare-and-swap where the store can, else a plain overwrite."""

    def __init__(self, store: ObjectStore, key: str) -> None:
        self.store = store
        self.key = key
        self.location = f"{store.root_uri}/{key}"

    def read(self) -> dict | None:
        try:
            return _decode(self.store.read(self.key), self.location)
        except NotFoundError:
            return None

    def update(self, change: Change) -> dict:
        if not self.store.capabilities.conditional_write:
            log.warning("%s cannot do conditional writes: concurrent updates of %s may overwrite each other",
                        self.store.root_uri, self.location)
            new = change(self.read())
            self.store.write(self.key, _encode(new))
            return new
        for attempt in range(CAS_ATTEMPTS):
            try:
                raw, version = self.store.read_versioned(self.key)
                current = _decode(raw, self.location)
            except NotFoundError:
                current, version = None, None
            new = change(current)
            try:
                self.store.write_if(self.key, _encode(new), version)
                return new
            except ConflictError:
                # Another writer won; back off a little (jittered) and redo the change on its document.
                log.debug("lost a race on %s (attempt %d); retrying", self.location, attempt + 1)
                time.sleep(random.uniform(0.01, 0.05 * min(attempt + 1, 10)))
        raise ConflictError(f"{self.location} kept changing: {CAS_ATTEMPTS} updates in a row lost the race",
                            hint="too many concurrent writers; retry later")
