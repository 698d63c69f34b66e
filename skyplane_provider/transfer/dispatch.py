"""The orchestrator's loop: feed chunks to source gateways, track completion, retry, finish objects.

The orchestrator never touches the data: it submits chunk batches, reads the gateways' events,
re-submits what failed or stalled (a rewrite of identical bytes is harmless), and completes each
multipart upload once every part of it is written.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

from gateway.control_client import GatewayClient
from gateway.retry import MAX_RETRY_AFTER, RetryBudget, with_retries
from gateway.stores.base import PartInfo
from planner.errors import GatewayError, SkyplaneError, TransferError
from planner.plan import Plan
from skyplane_provider.provisioners.base import Fleet

from .chunks import Chunk, ObjectJob, Target, batch_request
from .endpoints import Destination, Source
from .launch import wire_peers
from .stats import Progress

log = logging.getLogger(__name__)

BATCH = 256  # chunk requests per POST: 100k small objects cost ~400 round trips, not 100k
#: Batches per source gateway per tick (50 ms) while it accepts them. One batch a tick capped small
#: objects at ~2,500/s whatever the gateways could do; their queues bound what is outstanding.
BATCHES_PER_TICK = 8
#: Dispatches of one chunk whose own operation failed (a store error, a damaged frame, a stall):
#: the fourth failure fails the transfer. Re-sends after a gateway on the chunk's route died do not
#: count here (the chunk did nothing wrong) but draw on the job's RetryBudget like every re-send.
MAX_ATTEMPTS = 4


class Dispatcher:
    """Runs one transfer's chunks through a started fleet. ``run()`` returns when every object is
    complete at every destination, or raises."""

    def __init__(self, *, job_id: str, plan: Plan, fleet: Fleet, clients: dict[str, GatewayClient],
                 chunks: list[Chunk], objects: list[ObjectJob], source: Source, dests: list[Destination],
                 stop: threading.Event, progress: Callable[[Progress], None] | None = None,
                 stall_seconds: float = 120.0, health_every: float = 2.0) -> None:
        self.job_id, self.plan, self.fleet, self.clients = job_id, plan, fleet, clients
        self.chunks, self.objects, self.source, self.dests = chunks, objects, source, dests
        self.stop, self.progress = stop, progress
        self.stall_seconds, self.health_every = stall_seconds, health_every
        self.queue: deque[int] = deque(range(len(chunks)))
        self.not_before: dict[int, float] = {}
        self.inflight: dict[int, float] = {}  # chunk id -> submit time
        self.attempts: dict[int, int] = {}
        self.cursor: dict[str, int] = {gid: 0 for gid in clients}
        self.counters: dict[str, dict] = {}
        self.retries = 0
        self.budget = RetryBudget.for_chunks(len(chunks))
        self.replaced: list[str] = []  # gateways started in place of dead ones
        self.bytes_done = 0
        self.objects_done = 0
        self.bytes_total = sum(o.info.size for o in objects)
        self._chunks_left = {id(o): len(o.chunk_ids) for o in objects}
        self._finishing: list[Future] = []
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="finish")
        self._rr = 0
        self.started = time.monotonic()

    # -- helpers ---------------------------------------------------------------------------
    def _sources(self) -> list[str]:
        return [g for g in self.clients if g.startswith(self.plan.src + "/")]

    def _requeue(self, cid: int, reason: str, *, failed: bool = True, retry_after: float | None = None) -> None:
        """Send chunk ``cid`` again after a backoff (at least the store's ``retry_after``); ``failed``:
        its own operation failed (counted against MAX_ATTEMPTS), not a gateway on its route."""
        chunk = self.chunks[cid]
        if self._chunk_done(chunk) or cid in self.queue:
            return
        self.inflight.pop(cid, None)
        n = self.attempts.get(cid, 0) + failed
        self.attempts[cid] = n
        if n >= MAX_ATTEMPTS:
            raise TransferError(
                f"chunk {cid} of {chunk.obj.info.key} failed {n} times, last: {reason}",
                hint="see the gateway logs; the destination was left without partial objects")
        if not self.budget.spend():
            raise TransferError(
                f"the job's retry budget is spent ({self.budget.total} re-sent chunks); last: chunk {cid} of "
                f"{chunk.obj.info.key}: {reason}",
                hint="the store or the fleet keeps failing: see the gateway logs, then re-run the transfer "
                     "(sync) to finish what is missing; the destination was left without partial objects")
        self.retries += 1
        backoff = min(10.0, 0.2 * 2**max(n, 1)) * (0.5 + random.random())
        self.not_before[cid] = time.monotonic() + max(backoff, min(retry_after or 0.0, MAX_RETRY_AFTER))
        log.warning("retrying chunk %d (%s), attempt %d: %s", cid, chunk.obj.info.key, n + 1, reason)
        self.queue.append(cid)

    def _chunk_done(self, chunk: Chunk) -> bool:
        return len(chunk.written) == len(chunk.obj.targets)

    # -- the loop --------------------------------------------------------------------------
    def run(self) -> None:
        last_health = last_progress = 0.0
        try:
            while self._chunks_pending() or self._finishing:
                if self.stop.is_set():
                    raise TransferError("transfer cancelled", hint="re-run it (sync) to finish what is missing")
                self._submit()
                self._poll()
                self._reap_finishers()
                now = time.monotonic()
                if now - last_health > self.health_every:
                    self._check_health()
                    self._check_stalls(now)
                    last_health = now
                if self.progress and now - last_progress > 1.0:
                    self.progress(self.snapshot())
                    last_progress = now
                time.sleep(0.05)
            if self.progress:
                self.progress(self.snapshot())
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def _chunks_pending(self) -> bool:
        return bool(self.queue or self.inflight)

    def _submit(self) -> None:
        sources = self._sources()
        if not sources:
            raise TransferError(f"every gateway in the source region {self.plan.src} is gone")
        now = time.monotonic()
        for _ in range(len(sources) * BATCHES_PER_TICK):
            if not self.queue:
                return
            gid = sources[self._rr % len(sources)]
            self._rr += 1
            batch: list[int] = []
            deferred: list[int] = []
            while self.queue and len(batch) < BATCH:
                cid = self.queue.popleft()
                if self._chunk_done(self.chunks[cid]):
                    continue  # a stalled copy that arrived after all
                (deferred if self.not_before.get(cid, 0) > now else batch).append(cid)
            self.queue.extendleft(reversed(deferred))
            if not batch:
                return
            try:
                accepted = self.clients[gid].submit(batch_request([self.chunks[c] for c in batch], self.source,
                                                                  self.dests))
            except GatewayError as exc:
                log.warning("gateway %s refused a batch: %s", gid, exc)
                accepted = 0
            for c in batch[:accepted]:
                self.inflight[c] = now
            self.queue.extendleft(reversed(batch[accepted:]))
            if accepted < len(batch):
                return  # backpressure: the source gateways' queues are full

    def _poll(self) -> None:
        for gid, client in list(self.clients.items()):
            try:
                status = client.status(self.cursor[gid])
            except GatewayError:
                continue  # health check decides whether it is dead
            self.cursor[gid] = status.get("next", self.cursor[gid])
            self.counters[gid] = status.get("counters", {})
            for ev in status.get("events", []):
                self._on_event(gid, ev)

    def _on_event(self, gid: str, ev: dict) -> None:
        cid = ev.get("chunk_id")
        if not isinstance(cid, int) or not 0 <= cid < len(self.chunks):
            return
        chunk = self.chunks[cid]
        if ev.get("type") == "failed":
            if self._chunk_done(chunk):
                return
            if not ev.get("retryable", False):
                raise TransferError(f"gateway {gid} could not move {chunk.obj.info.key}: {ev.get('error')}")
            self._requeue(cid, f"{gid}: {ev.get('error')}", retry_after=ev.get("retry_after"))
        elif ev.get("type") == "written":
            for entry in ev.get("objects") or ():
                for target in chunk.obj.targets:
                    if target.dest_index == entry.get("dest") and target.key == entry.get("key"):
                        self._on_written(chunk, target, ev.get("integrity", ""), entry)

    def _on_written(self, chunk: Chunk, target, integrity: str, entry: dict) -> None:
        if target.dest_index in chunk.written:
            return
        chunk.written.add(target.dest_index)
        target.integrity[chunk.chunk_id] = integrity
        part = entry.get("part")
        if chunk.part_number is not None and part:
            target.parts[chunk.part_number] = {"etag": part["etag"], "size": part.get("size", chunk.length)}
        if self._chunk_done(chunk):
            self.inflight.pop(chunk.chunk_id, None)
            self.bytes_done += chunk.length
            left = self._chunks_left[id(chunk.obj)] = self._chunks_left[id(chunk.obj)] - 1
            if left == 0:
                self._finishing.append(self._pool.submit(self._finish_object, chunk.obj))

    def _finish_object(self, obj: ObjectJob) -> ObjectJob:
        for t in obj.targets:
            if t.multipart:
                store = self.dests[t.dest_index].store
                parts = [PartInfo(n, p["etag"], p["size"]) for n, p in sorted(t.parts.items())]
                with_retries(lambda: store.complete_multipart(t.key, t.upload_id, parts),
                             what=f"completing {store.root_uri}/{t.key}", stop=self.stop)
            t.done = True
        return obj

    def _reap_finishers(self) -> None:
        still = []
        for f in self._finishing:
            if f.done():
                f.result()  # re-raises a failed completion
                self.objects_done += 1
            else:
                still.append(f)
        self._finishing = still

    def _check_health(self) -> None:
        dead = [gid for gid in self.clients if not self.fleet.alive(gid)]
        if not dead:
            return
        for gid in dead:
            log.error("gateway %s died; re-routing its work through the survivors", gid)
            del self.clients[gid]
        alive = set(self.clients)
        living = {g.split("/")[0] for g in alive}
        for region in sorted(set(self.plan.gateways) - living):
            alive.add(self._replace(next(g for g in dead if g.split("/")[0] == region)))
        self.clients = wire_peers(self.fleet, self.plan, alive=alive)
        for gid in self.clients:
            self.cursor.setdefault(gid, 0)
        for cid in list(self.inflight):
            self._requeue(cid, "a gateway on its route died", failed=False)

    def _replace(self, dead: str) -> str:
        """A new gateway for a region that lost all of its own; fails the transfer when none can start."""
        region = dead.split("/")[0]
        if not self.fleet.can_replace:
            raise TransferError(f"every gateway in {region} died",
                                hint="re-run the transfer (sync) to resume, with --gateways-per-region 2 for "
                                     "spares; see the gateway logs")
        try:
            handle = self.fleet.replace(dead)
        except SkyplaneError as exc:
            raise TransferError(f"every gateway in {region} died and no replacement could start: {exc}",
                                hint="re-run the transfer (sync) to resume; see the gateway logs") from exc
        self.replaced.append(handle.gateway_id)
        return handle.gateway_id

    def _check_stalls(self, now: float) -> None:
        for cid, t in list(self.inflight.items()):
            if now - t > self.stall_seconds:
                self._requeue(cid, f"no progress for {self.stall_seconds:.0f}s")

    def snapshot(self) -> Progress:
        return Progress(job_id=self.job_id, bytes_done=self.bytes_done, bytes_total=self.bytes_total,
                        objects_done=self.objects_done, objects_total=len(self.objects),
                        seconds=time.monotonic() - self.started, retries=self.retries)

    def counter_sum(self, name: str, region: str | None = None) -> int:
        return sum(int(c.get(name, 0)) for gid, c in self.counters.items()
                   if region is None or gid.startswith(region + "/"))


def abort_uploads(objects: list[ObjectJob], dests: list[Destination]) -> None:
    """Abort every multipart upload not completed: no partial object becomes visible."""
    for obj in objects:
        for t in obj.targets:
            if t.multipart and t.upload_id and not t.done:
                try:
                    dests[t.dest_index].store.abort_multipart(t.key, t.upload_id)
                except SkyplaneError as exc:
                    log.warning("could not abort upload of %s: %s", t.key, exc)


def abort_stale_uploads(targets: list[Target], dests: list[Destination]) -> int:
    """Abort the unfinished multipart uploads of these targets' keys that an earlier run began and
    could not finish or abort (its orchestrator was killed): the object is uploaded again from its
    first part, and no upload is left dangling. Returns how many were aborted."""
    keys: dict[int, set[str]] = {}
    for t in targets:
        keys.setdefault(t.dest_index, set()).add(t.key)
    aborted = 0
    for i, mine in keys.items():
        store = dests[i].store
        for key, upload_id in store.pending_uploads(os.path.commonprefix(sorted(mine))):
            if key in mine:
                log.info("aborting the unfinished upload %s of %s/%s left by an earlier run", upload_id,
                         store.root_uri, key)
                store.abort_multipart(key, upload_id)
                aborted += 1
    return aborted
