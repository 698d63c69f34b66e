"""Server-side copy in a transfer (#18 item 5): destinations whose stores copy each object from the
source's store themselves (S3 CopyObject / UploadPartCopy, GCS rewrite, Azure copy from URL), so that
no byte passes through a gateway.

Three steps, each a small entry point the transfer calls:

- :func:`probe_ways` (at prepare, before any gateway): which destinations can copy from the source,
  declared by their store (``Capabilities.copy_from``) *and* probed with one real scratch copy of a
  listed object (``ObjectStore.probe_copy_from``), never assumed. The planner then picks, per
  destination region, server-side copy or gateways (:func:`planner.server_side.choose`).
- :func:`split` (at run): each object's copies to a server-side region leave its gateway job.
- :class:`Copier`: copies a batch of objects with the orchestrator's own store handles (the ones it
  lists and verifies with): whole, or in parts (``copy_part_from``) for objects bigger than a chunk
  where the store can, and always for objects bigger than one copy request may be. Each copy is
  verified as it lands: the source's size, and its MD5 / CRC32C where both stores report one.

Copies to a store are atomic (a whole copy appears complete or not at all; parts stay invisible
until the upload completes and are aborted on failure), so a failed job leaves no partial object.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

from gateway.retry import with_retries
from gateway.stores.base import CopySource, ObjectInfo, PartInfo
from planner.errors import BadOptionError, SkyplaneError, TransferError
from planner.store_requests import RequestCounts, requests_usd

from .chunks import ObjectJob, Target, part_size_for
from .endpoints import Destination, Source
from .estimate import copy_requests
from .verify import Verification, check_copy, shared_kinds

log = logging.getLogger(__name__)

#: How long a presigned source URL lives: long enough for the slowest copy of one object.
URL_SECONDS = 6 * 3600
#: Objects copied at once, and parts of one object copied at once.
WORKERS = 8
PART_WORKERS = 4
#: Stats' and manifest's names of the two paths a copy can take.
SERVER_SIDE, GATEWAYS = "server-side", "gateways"


@dataclass(frozen=True)
class Way:
    """How one destination copies from the source: ``by`` its own service reading the source's
    bucket (``"scheme"``) or a presigned URL of the source object (``"url"``); ``parts``: whether it
    copies byte ranges into a multipart upload (probed)."""

    by: str
    parts: bool


def probe_ways(source: Source, dests: list[Destination], objects: list[ObjectJob], *, chunk_size: int,
               mode: str) -> dict[int, Way]:
    """The destinations (by index) that can copy every one of their objects from the source, each
    probed with a real copy. ``mode`` ``"never"`` probes nothing; ``"always"`` raises a
    ``BadOptionError`` naming a destination that cannot, with the store's reason."""
    if mode == "never" or not objects:
        return {}
    ways: dict[int, Way] = {}
    for i, dest in enumerate(dests):
        mine = [o.info for o in objects if any(t.dest_index == i for t in o.targets)]
        if not mine:
            continue
        try:
            ways[i] = _probe(source, dest, mine, chunk_size)
        except SkyplaneError as exc:
            if mode == "always":
                raise BadOptionError(f"{dest.store.root_uri} cannot copy server-side from {source.store.root_uri}: "
                                     f"{exc}", hint="use server_side='auto' (--server-side auto) to route what "
                                                    "cannot be copied server-side through gateways") from exc
            log.info("no server-side copy to %s: %s", dest.store.root_uri, exc)
    return ways


def _probe(source: Source, dest: Destination, infos: list[ObjectInfo], chunk_size: int) -> Way:
    caps, src_caps = dest.store.capabilities, source.store.capabilities
    if source.store.scheme in caps.copy_from:
        by = "scheme"
    elif "url" in caps.copy_from and src_caps.presign:
        by = "url"
    else:
        raise BadOptionError(f"the {dest.store.scheme} store does not copy from {source.store.scheme} stores")
    smallest = min(infos, key=lambda o: o.size)
    dest.store.probe_copy_from(_copy_source(source, smallest, by))
    too_big = any(o.size > caps.copy_max for o in infos)
    want_parts = caps.copy_parts and any(part_size_for(o.size, chunk_size, [caps]) for o in infos)
    if not (too_big or want_parts):
        return Way(by, parts=False)
    sample = min((o for o in infos if o.size), key=lambda o: o.size)
    try:
        dest.store.probe_copy_from(_copy_source(source, sample, by), parts=True)
    except SkyplaneError as exc:
        if too_big:
            raise BadOptionError(f"an object is bigger than one copy request may be ({caps.copy_max} bytes) and "
                                 f"copying parts was refused: {exc}") from exc
        log.info("%s copies whole objects only: %s", dest.store.root_uri, exc)
        return Way(by, parts=False)
    return Way(by, parts=True)


def _copy_source(source: Source, info: ObjectInfo, by: str) -> CopySource:
    url = source.store.presign(info.key, URL_SECONDS) if by == "url" else None
    return CopySource(store=source.store.root_uri, key=info.key, size=info.size, url=url)


def candidate_regions(dests: list[Destination], ways: dict[int, Way], objects: list[ObjectJob]) -> list[str]:
    """Destination regions every destination of which can copy server-side, or has nothing to copy
    (the planner decides per region); none when no destination can."""
    if not ways:
        return []
    busy = {t.dest_index for o in objects for t in o.targets}
    regions = dict.fromkeys(d.region for d in dests)
    return [r for r in regions if all(i in ways or i not in busy for i, d in enumerate(dests) if d.region == r)]


def requests_usd_for(source: Source, dests: list[Destination], objects: list[ObjectJob], ways: dict[int, Way],
                     chunk_size: int):
    """``requests_usd(server_side_regions)`` for :func:`planner.server_side.choose`: what the stores'
    requests cost when those regions' destinations copy server-side and the rest go through gateways.
    A copy is one write request per object (or per part, plus begin and complete) at the destination,
    and no read at the source unless it reads a presigned URL; through gateways, the source is read
    once per chunk for all destinations together."""
    caps = [d.store.capabilities for d in dests]

    def usd(server_side) -> float:
        total = 0.0
        for obj in objects:
            size = obj.info.size
            routed = [t for t in obj.targets if dests[t.dest_index].region not in server_side]
            if routed:
                reads, writes = copy_requests(size, part_size_for(size, chunk_size, caps))
                total += requests_usd(source.region, RequestCounts(read=reads))
                total += sum(requests_usd(dests[t.dest_index].region, RequestCounts(write=writes)) for t in routed)
            for t in obj.targets:
                if t not in routed:
                    way = ways[t.dest_index]
                    part = part_size_for(size, chunk_size, [caps[t.dest_index]]) if way.parts else None
                    _, writes = copy_requests(size, part)
                    total += requests_usd(dests[t.dest_index].region, RequestCounts(write=writes))
                    if way.by == "url":
                        total += requests_usd(source.region, RequestCounts(read=1))
        return total

    return usd


def split(objects: list[ObjectJob], dests: list[Destination],
          server_side: tuple[str, ...]) -> tuple[list[ObjectJob], list[ObjectJob]]:
    """``(through gateways, server-side)``: each object's copies to destinations in a server-side
    region go in the second list, the rest in the first (objects left with no copy are dropped)."""
    routed, copied = [], []
    for obj in objects:
        ss = [t for t in obj.targets if dests[t.dest_index].region in server_side]
        rest = [t for t in obj.targets if t not in ss]
        if rest:
            routed.append(ObjectJob(info=obj.info, targets=rest))
        if ss:
            copied.append(ObjectJob(info=obj.info, targets=ss))
    return routed, copied


class Copier:
    """Copies objects server-side with the orchestrator's store handles and verifies each copy.

    :meth:`run` copies a batch and returns the manifest entries of its objects (per copy: the
    method that verified it and the path, ``"server-side"``); :meth:`abort` discards the multipart
    uploads a failed batch left open. ``stop`` (the transfer's cancel) ends the batch early with a
    ``TransferError``."""

    def __init__(self, source: Source, dests: list[Destination], ways: dict[int, Way], *, chunk_size: int,
                 stop: threading.Event) -> None:
        self.source, self.dests, self.ways, self.chunk_size, self.stop = source, dests, ways, chunk_size, stop
        self.verification = Verification()
        self.bytes_done = 0
        self._lock = threading.Lock()

    def run(self, objects: list[ObjectJob]) -> list[dict]:
        with ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="server-side") as pool:
            return list(pool.map(self._object, objects))

    def abort(self, objects: list[ObjectJob]) -> None:
        for obj in objects:
            for t in obj.targets:
                if t.multipart and t.upload_id and not t.done:
                    try:
                        self.dests[t.dest_index].store.abort_multipart(t.key, t.upload_id)
                    except SkyplaneError as exc:
                        log.warning("could not abort the copy upload of %s: %s", t.key, exc)

    def _object(self, obj: ObjectJob) -> dict:
        src = obj.info
        kinds = {t.dest_index: shared_kinds(self.source.store, self.dests[t.dest_index].store) for t in obj.targets}
        wanted = {k for ks in kinds.values() for k in ks}
        if wanted and not wanted & set(src.checksums()):
            fresh = with_retries(lambda: self.source.store.head(src.key), what=f"checking {src.key} at the source")
            src = replace(src, md5=fresh.md5, crc32c=fresh.crc32c)
        copies = []
        for t in obj.targets:
            store = self.dests[t.dest_index].store
            where = f"{store.root_uri}/{t.key}"
            self._copy(src, t)
            info = with_retries(lambda: store.head(t.key), what=f"verifying {where}")
            method = check_copy(src, info, where, kinds[t.dest_index], [], fallback="size")
            with self._lock:
                self.verification.objects += 1
                self.verification.by[method] += 1
            copies.append({"store": store.root_uri, "key": t.key, "path": SERVER_SIDE, "verified_by": method,
                           "checksums": info.checksums()})
        with self._lock:
            self.bytes_done += src.size
        return {"key": src.key, "size": src.size, "checksums": src.checksums(), "copies": copies}

    def _copy(self, info: ObjectInfo, t: Target) -> None:
        if self.stop.is_set():
            raise TransferError("transfer cancelled", hint="re-run it (sync) to finish what is missing")
        way, store = self.ways[t.dest_index], self.dests[t.dest_index].store
        part = part_size_for(info.size, self.chunk_size, [store.capabilities]) if way.parts else None
        if part is None and info.size > store.capabilities.copy_max:
            part = store.capabilities.copy_max  # the probe made sure parts work where they must
        source = _copy_source(self.source, info, way.by)
        if part is None:
            token = None
            while True:
                receipt, token = with_retries(lambda: store.copy_from(source, t.key, token),
                                              what=f"copying {info.key} to {store.root_uri}", stop=self.stop)
                if receipt is not None:
                    t.done = True
                    return
                if self.stop.is_set():
                    raise TransferError("transfer cancelled", hint="re-run it (sync) to finish what is missing")
        t.multipart = True
        t.upload_id = store.begin_multipart(t.key)
        ranges = [(n + 1, off, min(part, info.size - off)) for n, off in enumerate(range(0, info.size, part))]

        def one(r: tuple[int, int, int]) -> PartInfo:
            number, offset, length = r
            return with_retries(lambda: store.copy_part_from(source, t.key, t.upload_id, number, offset, length),
                                what=f"copying part {number} of {info.key} to {store.root_uri}", stop=self.stop)

        with ThreadPoolExecutor(max_workers=PART_WORKERS, thread_name_prefix="copy-part") as pool:
            parts = list(pool.map(one, ranges))
        with_retries(lambda: store.complete_multipart(t.key, t.upload_id, parts),
                     what=f"completing the copy of {info.key} to {store.root_uri}", stop=self.stop)
        t.done = True
