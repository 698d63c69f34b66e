"""Where the data comes from and goes to: stores, key prefixes, regions, and the object list.

Everything here runs before any gateway starts, so bad input (missing bucket, missing credentials,
empty source) fails fast and leaves nothing behind.
"""

from __future__ import annotations

import logging
import os
import posixpath
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from gateway.stores import open_store
from gateway.stores.base import ObjectInfo, ObjectStore
from gateway.stores.uri import StoreURI
from planner.errors import AccessDeniedError, BadOptionError, NotFoundError
from planner.store_requests import RequestCounts
from skyplane_provider.coordinator.deferred_store import DeferredStore
from skyplane_provider.coordinator.gateway_store import capabilities_from
from skyplane_provider.filters import Filter
from skyplane_provider.coordinator.listing import differs as needs_copy  # noqa: F401 - the sync rule, one copy

from .estimate import list_requests

log = logging.getLogger(__name__)

#: ``opener(root_uri, credentials)``: how a cloud store is opened (transfer/channel_stores.py).
Opener = Callable[[str, dict], ObjectStore]

_PROVIDER = {"s3": "aws", "gs": "gcp", "az": "azure", "file": "local"}


@dataclass
class Source:
    """The source side: its store, the key prefix listed, and how a key maps to a relative name."""

    uri: StoreURI
    store: ObjectStore
    prefix: str
    single: bool  # one object, not a prefix
    region: str

    def relative(self, key: str) -> str:
        return posixpath.basename(key) if self.single else key[len(self.prefix):]


@dataclass
class Destination:
    """One destination: its store and the key prefix relative names are written under."""

    uri: StoreURI
    store: ObjectStore
    base: str
    exact_key: str | None  # set when one object is copied to an exact key
    region: str

    def key_for(self, rel: str) -> str:
        if self.exact_key is not None:
            return self.exact_key
        return self.base + rel


def _dir_prefix(path: str) -> str:
    return path if not path or path.endswith("/") else path + "/"


def open_source(uri: StoreURI, *, recursive: bool, credentials: dict, region: str | None,
                found: dict | None = None, opener: Opener = open_store) -> Source:
    """Open the source store (a cloud one by ``opener``) and decide what is listed; raises if it does
    not exist. ``found``: the source as the client that checked it handed it over
    (:meth:`Transfer.handoff`: region and capabilities), so the store is neither asked again nor
    opened until a call needs it."""
    if uri.scheme == "file":
        path = uri.path.rstrip("/") or "/"
        if os.path.isdir(path):
            if not recursive:
                raise BadOptionError(f"source {uri} is a directory", hint="pass recursive (-r) to copy a directory")
            root, prefix, single = path, "", False
        elif os.path.isfile(path):
            root, prefix, single = os.path.dirname(path), os.path.basename(path), True
        else:
            raise NotFoundError(f"source {uri} does not exist", hint="check the path")
        store = open_store("file://" + root, credentials)
    elif found is not None:
        if not recursive and (not uri.path or uri.path.endswith("/")):
            raise BadOptionError(f"source {uri} names a prefix", hint="pass recursive (-r) to copy a prefix")
        store = DeferredStore(uri.root_uri, credentials, capabilities_from(found["capabilities"]))
        prefix, single = (_dir_prefix(uri.path), False) if recursive else (uri.path, True)
        return Source(uri, store, prefix, single, found["region"])
    else:
        store = opener(uri.root_uri, credentials)
        store.check()
        if recursive:
            prefix, single = _dir_prefix(uri.path), False
            if not uri.path:
                prefix = ""
        else:
            if not uri.path or uri.path.endswith("/"):
                raise BadOptionError(f"source {uri} names a prefix", hint="pass recursive (-r) to copy a prefix")
            store.head(uri.path)  # raises NotFoundError naming the key
            prefix, single = uri.path, True
    return Source(uri, store, prefix, single, region or _region_of(store, uri))


def open_destination(uri: StoreURI, *, single_source: bool, credentials: dict, region: str | None,
                     found: dict | None = None, opener: Opener = open_store) -> Destination:
    """Open a destination store (a cloud one by ``opener``); its bucket must exist (we never create
    buckets). ``found``: the destination as the client that checked it handed it over (as for
    :func:`open_source`)."""
    exact = None
    if uri.scheme == "file":
        path = uri.path
        if single_source and not path.endswith("/") and not os.path.isdir(path):
            root, exact = os.path.dirname(path), os.path.basename(path)
        else:
            root = path.rstrip("/") or "/"
        if not os.path.isdir(root):
            raise NotFoundError(f"destination directory {root} does not exist", hint="create it first")
        store = open_store("file://" + root, credentials)
        base = ""
    elif found is not None:
        return Destination(uri, DeferredStore(uri.root_uri, credentials, capabilities_from(found["capabilities"])),
                           found["base"], found["exact_key"], found["region"])
    else:
        store = opener(uri.root_uri, credentials)
        store.check()
        if single_source and uri.path and not uri.path.endswith("/"):
            exact = uri.path
        base = _dir_prefix(uri.path)
    return Destination(uri, store, base, exact, region or _region_of(store, uri))


def _region_of(store: ObjectStore, uri: StoreURI) -> str:
    region = store.region()
    if region:
        return region
    # The API does not say (Azure): a placeholder the direct planner accepts; other solvers
    # ask the user for the region explicitly.
    return f"{_PROVIDER[uri.scheme]}:unknown"


@dataclass
class Listing:
    """What the source listing found: the objects the filters take (in key order), the names
    (relative to the source prefix) of those their rules took but their size or age bounds left
    out (a mirror never deletes a copy whose source still exists), and what it cost: ``requests``
    (listing pages, or the HEAD of a single object)."""

    objects: list[ObjectInfo]
    kept_back: set[str] = field(default_factory=set)
    requests: RequestCounts = field(default_factory=RequestCounts)


def list_source(source: Source, filters: Filter | None = None) -> Listing:
    """Every object to consider, with the filters applied while listing (only the prefixes their
    rules can take are listed). Raises ``NotFoundError`` when an unfiltered source holds nothing; a
    filtered one that yields nothing is a job with nothing to move."""
    filters = filters or Filter()
    listing = Listing([])
    if source.single:
        found = [source.store.head(source.prefix)]
        listing.requests.head += 1
    else:
        found = []
        for head in filters.list_prefixes():
            before = len(found)
            found += [o for o in source.store.list(source.prefix + head) if not o.key.endswith("/")]
            listing.requests.list += list_requests(len(found) - before)
    if not found and not filters.active:
        raise NotFoundError(f"nothing to copy: no object under {source.uri}", hint="check the source prefix")
    for info in found:
        name = source.relative(info.key)
        if not filters.path_included(name):
            continue
        if filters.bounds_pass(info):
            listing.objects.append(info)
        else:
            listing.kept_back.add(name)
    if not listing.objects:
        log.warning("nothing under %s passes the filters (%s)", source.uri, "; ".join(filters.describe()))
    _check_readable(source, listing.objects)
    return listing


#: Keys of the first listing page, the one the client reads before anything starts: one LIST request
#: on S3 and GCS (which return 1,000 keys at most). It is listed, checked, sent to the coordinator in
#: the job document and turned into tasks there before the fleet starts; the rest streams while the
#: data moves. 5,000 (a full page of the feed's) cost 0.05-0.07 CPU-s in the client and as much again
#: in the coordinator ahead of a 20,000-file copy's first byte (2026-12-06, load 12-17).
FIRST_PAGE_LIMIT = 1000


def first_page(source: Source) -> tuple[list[ObjectInfo], str | None]:
    """The first page of an unfiltered source listing (one object for a single-object source) and the
    token of the next; raises ``NotFoundError`` when there is nothing to copy. The rest is listed
    while the data moves (:mod:`skyplane_provider.coordinator.feed`); only this page is checked here
    for local files the process may not read (a later one fails alone, in the report)."""
    if source.single:
        objs, token = [source.store.head(source.prefix)], None
    else:
        objs, token = source.store.list_page(source.prefix, None, FIRST_PAGE_LIMIT)
        objs = [o for o in objs if not o.key.endswith("/")]
    if not objs and token is None:
        raise NotFoundError(f"nothing to copy: no object under {source.uri}", hint="check the source prefix")
    _check_readable(source, objs)
    return objs, token


def _check_readable(source: Source, objs: list[ObjectInfo]) -> None:
    if source.uri.scheme == "file":
        root = source.store.root_uri[len("file://"):]
        unreadable = [o.key for o in objs if not os.access(os.path.join(root, o.key), os.R_OK)]
        if unreadable:
            raise AccessDeniedError(f"cannot read {len(unreadable)} source file(s), e.g. {unreadable[0]}",
                                    hint="fix their permissions or leave them out")


def existing(dest: Destination, heads: Sequence[str] = ("",)) -> dict[str, ObjectInfo]:
    """Objects already under the destination, by key (for sync); ``heads`` confine the listing to
    those prefixes below the destination's (the filters' :meth:`Filter.list_prefixes`)."""
    if dest.exact_key is not None:
        try:
            return {dest.exact_key: dest.store.head(dest.exact_key)}
        except NotFoundError:
            return {}
    return {o.key: o for head in heads for o in dest.store.list(dest.base + head)}
