"""``sky://DATASET/key``: an fsspec filesystem that reads a published dataset from its cheapest replica.

    import fsspec
    with fsspec.open("sky://imagenet/train/0001.tfrecord", "rb", region="aws:us-east-1") as f:
        data = f.read()
        print(f.served_by)            # the replica that answered, e.g. "s3://raw-us-east-1/imagenet/"

The caller's region comes from the ``region`` argument, else ``$SKYPLANE_REGION``, else the
catalogue's ``default_region``; the replicas are ranked by :mod:`skyplane_provider.broker.choice`.
When a replica is missing the object or cannot be reached, the next one serves the read (also in the
middle of a file, if the next replica holds an object of the same size). Read-only: every write raises
:class:`SkyReadOnlyError`.

Airflow's ``ObjectStoragePath("sky://...")`` finds this module through the provider's
``"filesystems"`` entry (``schemes`` and ``get_fs`` below).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any

from fsspec.spec import AbstractBufferedFile, AbstractFileSystem

from gateway.stores.base import ObjectInfo, ObjectStore
from planner.errors import BadOptionError, NotFoundError, SkyplaneError, StoreUnavailableError

from .catalogue import Catalogue, CatalogueState, catalogue_location
from .choice import Ranked, load_grid, rank_replicas
from .manifest import replica_store

log = logging.getLogger(__name__)

ENV_REGION = "SKYPLANE_REGION"

#: For Airflow's object storage: the schemes this module serves (see :func:`get_fs`).
schemes = ["sky"]


class SkyPathNotFoundError(NotFoundError, FileNotFoundError):
    """A dataset, object or prefix that no verified replica holds (a ``FileNotFoundError`` for fsspec)."""


class SkyReadOnlyError(BadOptionError, PermissionError):
    """A write to ``sky://``, which is read-only."""


@dataclass
class _Source:
    """Where one object is read from: a ranked replica, its store and the object's key in it."""

    ranked: Ranked
    store: ObjectStore
    key: str
    info: ObjectInfo


class SkyFileSystem(AbstractFileSystem):
    """Read-only view of the datasets in a replica catalogue.

    ``region``: the caller's region tag (``aws:us-east-1``); ``catalogue``: its location (see
    :class:`~skyplane_provider.broker.catalogue.Catalogue`); ``credentials``: a credentials document
    for the catalogue and the replicas' stores; ``grid``: a price grid CSV instead of the packaged
    one; ``catalogue_ttl``: seconds a catalogue snapshot is reused.
    """

    protocol = "sky"
    root_marker = ""

    def __init__(self, region: str | None = None, catalogue: str | None = None, credentials: dict | None = None,
                 grid: str | None = None, catalogue_ttl: float = 5.0, **storage_options: Any) -> None:
        super().__init__(region=region, catalogue=catalogue, credentials=credentials, grid=grid,
                         catalogue_ttl=catalogue_ttl, **storage_options)
        self._region = region
        self._catalogue = catalogue
        self._credentials = credentials or {}
        self._grid = grid
        self._ttl = catalogue_ttl
        self._snapshot: tuple[str, float, CatalogueState] | None = None

    # ---- catalogue and replica choice --------------------------------------------------------
    def _state(self) -> CatalogueState:
        location = catalogue_location(self._catalogue)
        snap = self._snapshot
        if snap and snap[0] == location and time.monotonic() - snap[1] < self._ttl:
            return snap[2]
        state = Catalogue(location, credentials=self._credentials).read()
        self._snapshot = (location, time.monotonic(), state)
        return state

    def caller_region(self) -> str | None:
        """The region reads are priced from: the argument, ``$SKYPLANE_REGION``, or the catalogue's default."""
        return self._region or os.environ.get(ENV_REGION) or self._state().default_region

    def replicas(self, name: str) -> list[Ranked]:
        """The verified replicas of dataset ``name``, best first for this caller."""
        try:
            dataset = self._state().dataset(name)
        except NotFoundError as exc:
            raise SkyPathNotFoundError(str(exc)) from None
        readable = dataset.readable()
        if not readable:
            raise SkyPathNotFoundError(f"dataset {name!r} has no verified replica",
                                       hint="publish it again: skyplane-provider publish SRC --dataset NAME --to DST")
        region = self.caller_region()
        return rank_replicas(readable, region, load_grid(self._grid) if region else None)

    @staticmethod
    def _split(path: str) -> tuple[str, str]:
        name, _, key = path.strip("/").partition("/")
        return name, key

    def _locate(self, name: str, key: str, *, skip: frozenset[str] = frozenset(),
                size: int | None = None) -> _Source:
        """The best replica that has ``key`` (of ``size`` bytes, when given); falls back in rank order."""
        failures: list[str] = []
        missing = 0
        for ranked in self.replicas(name):
            if ranked.replica.uri in skip:
                continue
            try:
                store, prefix = replica_store(ranked.replica.uri, self._credentials)
                info = store.head(prefix + key)
            except NotFoundError as exc:
                missing += 1
                failures.append(f"{ranked.replica.uri}: {exc}")
                log.info("sky://%s/%s: not in %s, trying the next replica", name, key, ranked.describe())
                continue
            except SkyplaneError as exc:
                failures.append(f"{ranked.replica.uri}: {exc}")
                log.warning("sky://%s/%s: replica %s failed (%s), trying the next one", name, key,
                            ranked.describe(), exc)
                continue
            if size is not None and info.size != size:
                failures.append(f"{ranked.replica.uri}: {info.size} bytes, not {size}")
                continue
            return _Source(ranked, store, prefix + key, info)
        if missing == len(failures):
            raise SkyPathNotFoundError(f"sky://{name}/{key} is in none of the verified replicas of {name!r}",
                                       hint="check the key: skyplane-provider datasets shows the replicas")
        raise StoreUnavailableError(f"no replica of {name!r} could serve {key!r}: " + "; ".join(failures),
                                    hint="check the network and the credentials of the replicas' stores")

    def _children(self, name: str, key: str) -> list[dict]:
        """The entries right below ``key`` in dataset ``name``, from the best replica that lists any."""
        prefix = f"{key}/" if key else ""
        for ranked in self.replicas(name):
            try:
                store, base = replica_store(ranked.replica.uri, self._credentials)
                objects = list(store.list(base + prefix))
            except SkyplaneError as exc:
                log.warning("sky://%s/%s: cannot list %s (%s), trying the next replica", name, key,
                            ranked.describe(), exc)
                continue
            if not objects:
                continue
            files, dirs = [], set()
            for o in objects:
                rel = o.key[len(base) + len(prefix):]
                head, sep, _ = rel.partition("/")
                if sep:
                    dirs.add(head)
                elif rel:
                    files.append({"name": f"{name}/{prefix}{rel}", "type": "file", "size": o.size,
                                  "etag": o.etag, "mtime": o.mtime, "replica": ranked.replica.uri})
            return sorted(files + [{"name": f"{name}/{prefix}{d}", "type": "directory", "size": 0} for d in dirs],
                          key=lambda e: e["name"])
        return []

    def _file_info(self, name: str, key: str) -> dict:
        src = self._locate(name, key)
        return {"name": f"{name}/{key}", "type": "file", "size": src.info.size, "etag": src.info.etag,
                "mtime": src.info.mtime, "replica": src.ranked.replica.uri}

    # ---- fsspec read API ---------------------------------------------------------------------
    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list:
        path = self._strip_protocol(path).strip("/")
        if not path:
            entries = [{"name": n, "type": "directory", "size": 0} for n in sorted(self._state().datasets)]
        else:
            name, key = self._split(path)
            entries = self._children(name, key)
            if not entries:
                if not key:
                    raise SkyPathNotFoundError(f"no replica of dataset {name!r} lists any object",
                                               hint="its replicas may have been emptied; publish it again")
                entries = [self._file_info(name, key)]
        return entries if detail else [e["name"] for e in entries]

    def info(self, path: str, **kwargs: Any) -> dict:
        path = self._strip_protocol(path).strip("/")
        if not path:
            return {"name": "", "type": "directory", "size": 0}
        name, key = self._split(path)
        if not key:
            replicas = self.replicas(name)
            return {"name": name, "type": "directory", "size": replicas[0].replica.bytes}
        try:
            return self._file_info(name, key)
        except SkyPathNotFoundError:
            if self._children(name, key):
                return {"name": path, "type": "directory", "size": 0}
            raise

    def _open(self, path: str, mode: str = "rb", block_size: int | None = None, autocommit: bool = True,
              cache_options: dict | None = None, **kwargs: Any) -> "SkyFile":
        if mode != "rb":
            self._read_only(path)
        name, key = self._split(self._strip_protocol(path))
        if not key:
            raise SkyPathNotFoundError(f"sky://{name} is a dataset, not an object", hint="open sky://NAME/KEY")
        source = self._locate(name, key)
        log.info("sky://%s/%s served by %s for a reader in %s", name, key, source.ranked.describe(),
                 self.caller_region())
        return SkyFile(self, f"{name}/{key}", source, block_size=block_size, cache_options=cache_options,
                       **kwargs)

    # ---- read-only ---------------------------------------------------------------------------
    def _read_only(self, path: Any, *args: Any, **kwargs: Any) -> None:
        raise SkyReadOnlyError(f"sky://{self._strip_protocol(str(path))} is read-only",
                               hint="write to a store, then publish it: skyplane-provider publish SRC --dataset "
                                    "NAME --to DST")

    pipe_file = put_file = rm_file = _rm = rm = mkdir = makedirs = rmdir = cp_file = mv = touch = _read_only


class SkyFile(AbstractBufferedFile):
    """An object of a sky dataset opened for reading; ``served_by`` names the replica reading it."""

    def __init__(self, fs: SkyFileSystem, path: str, source: _Source, **kwargs: Any) -> None:
        self.source = source
        self._failed: set[str] = set()
        super().__init__(fs, path, mode="rb", size=source.info.size, **kwargs)

    @property
    def served_by(self) -> str:
        """URI of the replica the bytes come from (it changes if a read had to fall back)."""
        return self.source.ranked.replica.uri

    @property
    def served_by_region(self) -> str:
        return self.source.ranked.replica.region

    def _fetch_range(self, start: int, end: int) -> bytes:
        try:
            return self.source.store.read(self.source.key, start, end - start)
        except SkyplaneError as exc:
            name, key = SkyFileSystem._split(self.path)
            log.warning("sky://%s: read from %s failed (%s), falling back", self.path, self.served_by, exc)
            self._failed.add(self.served_by)
            self.source = self.fs._locate(name, key, skip=frozenset(self._failed), size=self.size)
            log.info("sky://%s now served by %s", self.path, self.source.ranked.describe())
            return self.source.store.read(self.source.key, start, end - start)


def get_fs(conn_id: str | None, storage_options: dict | None = None) -> SkyFileSystem:
    """Airflow's filesystem hook: ``storage_options`` are :class:`SkyFileSystem` arguments; the caller
    region and the catalogue otherwise come from ``$SKYPLANE_REGION`` / ``$SKYPLANE_CATALOGUE``.
    ``conn_id`` is not used: replica stores use the SDKs' standard credentials."""
    return SkyFileSystem(**(storage_options or {}))
