"""A store the coordinator opens only when it first calls it.

The client checked every store and read what the coordinator needs to plan and dispatch (region,
capabilities, the first listing page) and hands it over in the job document. Opening a store means
importing its SDK and building a client: 0.2-0.4 CPU-s per store kind (boto3, google-cloud-storage,
azure-storage-blob), a job's whole fixed cost on a small job, paid again by every gateway that reads
or writes it. A coordinator that never calls a store (a job whose listing fits the first page and
whose objects go in one request each) should not pay it; one that lists further pages opens the
source, one that begins or completes multipart uploads opens that destination, at that call.
"""

from __future__ import annotations

from typing import Any

from gateway.stores import open_store
from gateway.stores.base import Capabilities, ObjectStore
from gateway.stores.uri import parse_uri


class DeferredStore:
    """``root_uri`` (an S3, GCS or Azure store; never ``file://``, whose opening costs nothing) with
    the client's ``credentials`` document, opened by :func:`open_store` at the first attribute that
    needs the store itself. Its root URI, scheme and ``capabilities`` (as the client found them)
    answer without opening it. ``credentials`` is held by reference: entries renewed in it before the
    store opens are the ones it opens with."""

    def __init__(self, root_uri: str, credentials: dict, capabilities: Capabilities) -> None:
        uri = parse_uri(root_uri)
        if uri.scheme == "file":
            raise ValueError("a local directory is opened at once: nothing to defer")
        self._root = uri.root_uri
        self._credentials = credentials
        self.scheme = uri.scheme
        self.capabilities = capabilities
        self._store: ObjectStore | None = None

    def __repr__(self) -> str:
        return f"DeferredStore({self._root!r}, opened={self._store is not None})"

    @property
    def root_uri(self) -> str:
        return self._root

    @property
    def opened(self) -> bool:
        """Whether a call needed the store (its SDK is imported in this process)."""
        return self._store is not None

    def store(self) -> ObjectStore:
        """The store itself, opened now if it was not (open_store caches it: racing calls share one)."""
        if self._store is None:
            self._store = open_store(self._root, self._credentials)
        return self._store

    def reap_orphans(self) -> None:
        # Only local directories leave orphans to reap (ObjectStore.reap_orphans); opening an S3, GCS
        # or Azure store just to call its no-op would import the SDK this class exists to spare.
        if self._store is not None:
            self._store.reap_orphans()

    def __getattr__(self, name: str) -> Any:
        # Only for what the instance lacks: every store verb, at which the store opens.
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.store(), name)
