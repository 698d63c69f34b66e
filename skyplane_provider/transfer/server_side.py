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
  lists and verifies with): whole, or in parts of the chunk size (``copy_part_from``) for objects
  bigger than :data:`COPY_CUTOFF` or than one copy request may be (``copy_max``). Each copy is
  verified as it lands, from the store's receipt of it: the source's size, and its MD5 / CRC32C where
  both stores report one.

Copies to a store are atomic (a whole copy appears complete or not at all; parts stay invisible
until the upload completes and are aborted on failure), so a failed job leaves no partial object.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

from gateway.retry import with_retries
from gateway.stores.base import Capabilities, CopySource, ObjectInfo, PartInfo
from planner.errors import BadOptionError, SkyplaneError, TransferError
from planner.store_requests import RequestCounts, requests_usd
from skyplane_provider.coordinator.finish import Verification, check_copy, shared_kinds

from .chunks import ObjectJob, Target, part_size_for
from .endpoints import Destination, Source
from .estimate import copy_requests
from .stats import Progress

log = logging.getLogger(__name__)

#: Objects up to this size are copied whole (where the store's one request may copy that much), bigger
#: ones in parts of the chunk size: rclone's default --s3-copy-cutoff (4.656 GiB, rclone.org/s3). On
#: moto, 8 x 64 MiB copied in 32 MiB parts took 13.7 s, whole 5.7 s (docs/benchmarks.md).
COPY_CUTOFF = int(4.656 * 1024**3)
#: How long a presigned source URL lives: long enough for the slowest copy of one object.
URL_SECONDS = 6 * 3600
#: Objects copied at once (as many as the benchmarks give rclone's --transfers; a copy costs us one
#: thread waiting for the store), and parts of one object copied at once.
WORKERS = 16
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
    want_parts = caps.copy_parts and any(_in_parts(o.size, caps, chunk_size) for o in infos)
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


def _in_parts(size: int, caps: Capabilities, chunk_size: int) -> int | None:
    """The part size to copy an object of ``size`` bytes in, or None to copy it whole."""
    if size <= min(caps.copy_max, COPY_CUTOFF):
        return None
    return part_size_for(size, min(chunk_size, caps.copy_max), [caps]) or min(caps.copy_max, size)


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
                    part = _in_parts(size, caps[t.dest_index], chunk_size) if way.parts else None
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
    ``TransferError``. ``progress`` (optional) gets a :class:`Progress` after each object, at most
    once a second, and after the last."""

    def __init__(self, source: Source, dests: list[Destination], ways: dict[int, Way], *, chunk_size: int,
                 stop: threading.Event, job_id: str = "", progress: Callable[[Progress], None] | None = None) -> None:
        self.source, self.dests, self.ways, self.chunk_size, self.stop = source, dests, ways, chunk_size, stop
        self.job_id, self.progress = job_id, progress
        self.verification = Verification()
        self.bytes_done = self.objects_done = 0
        self._lock = threading.Lock()
        self._total = (0, 0)
        self._started = self._reported = 0.0

    def run(self, objects: list[ObjectJob]) -> list[dict]:
        self._total = (sum(o.info.size for o in objects), len(objects))
        self._started = time.monotonic()
        with ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="server-side") as pool:
            entries = list(pool.map(self._object, objects))
        self._report(force=True)
        return entries

    def _report(self, *, force: bool = False) -> None:
        now = time.monotonic()
        with self._lock:
            if self.progress is None or not (force or now - self._reported >= 1.0):
                return
            self._reported = now
            snapshot = Progress(job_id=self.job_id, bytes_done=self.bytes_done, bytes_total=self._total[0],
                                objects_done=self.objects_done, objects_total=self._total[1],
                                seconds=now - self._started)
        self.progress(snapshot)

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
        copies = []
        for t in obj.targets:
            store = self.dests[t.dest_index].store
            where = f"{store.root_uri}/{t.key}"
            info = self._copy(src, t)  # the store's receipt: the written object as the store reports it
            kinds = shared_kinds(self.source.store, store)
            if kinds and not set(kinds) & set(src.checksums()):
                src = self._source_checksums(src, info)
            method = check_copy(src, info, where, kinds, None, fallback="size")
            with self._lock:
                self.verification.objects += 1
                self.verification.by[method] += 1
            copies.append({"store": store.root_uri, "key": t.key, "path": SERVER_SIDE, "verified_by": method,
                           "checksums": info.checksums()})
        with self._lock:
            self.bytes_done += src.size
            self.objects_done += 1
        self._report()
        return {"key": src.key, "size": src.size, "checksums": src.checksums(), "copies": copies}

    def _source_checksums(self, src: ObjectInfo, copy: ObjectInfo) -> ObjectInfo:
        """The source object with its checksums. A listing may lack them (S3's never says whether an
        ETag is an MD5): a copy whose MD5 equals the source's ETag shows that it is (S3 CopyObject
        keeps a single-part object's ETag); otherwise the source is asked once."""
        if copy.md5 and src.etag and src.etag.strip('"') == copy.md5:
            return replace(src, md5=copy.md5)
        fresh = with_retries(lambda: self.source.store.head(src.key), what=f"checking {src.key} at the source")
        return replace(src, md5=fresh.md5, crc32c=fresh.crc32c)

    def _copy(self, info: ObjectInfo, t: Target) -> ObjectInfo:
        """Copy one object to one destination; returns the store's receipt of the copy."""
        if self.stop.is_set():
            raise TransferError("transfer cancelled", hint="re-run it (sync) to finish what is missing")
        way, store = self.ways[t.dest_index], self.dests[t.dest_index].store
        part = _in_parts(info.size, store.capabilities, self.chunk_size) if way.parts else None
        source = _copy_source(self.source, info, way.by)
        if part is None:
            token = None
            while True:
                receipt, token = with_retries(lambda: store.copy_from(source, t.key, token),
                                              what=f"copying {info.key} to {store.root_uri}", stop=self.stop)
                if receipt is not None:
                    t.done = True
                    return receipt
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
        receipt = with_retries(lambda: store.complete_multipart(t.key, t.upload_id, parts),
                               what=f"completing the copy of {info.key} to {store.root_uri}", stop=self.stop)
        t.done = True
        return receipt
