"""The dispatch loop: chunks from the listing (:class:`~skyplane_provider.coordinator.feed.Feed`) to the
source gateways, their ``written`` / ``failed`` events back to the objects, each object completed and
verified as its last piece lands, recorded in the manifest and the report, then forgotten.

The orchestrator never touches the data: it submits chunk batches, reads the gateways' events,
re-submits what failed or stalled (a rewrite of identical bytes is harmless; a gateway confirms a
copy it already wrote) and completes each multipart upload once every part of it is written.
Memory is the chunks in flight (at most :data:`MAX_INFLIGHT_CHUNKS` chunks and
:data:`MAX_INFLIGHT_OBJECTS` objects), whatever the size of the job.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

from gateway.control_client import GatewayClient
from gateway.retry import MAX_RETRY_AFTER, RetryBudget
from planner.errors import GatewayError, SkyplaneError, TransferError
from planner.plan import Plan
from skyplane_provider.coordinator.chunker import Chunk, ObjectTask, Piece
from skyplane_provider.coordinator.feed import Feed
from skyplane_provider.coordinator.finish import finish_copies, needs_store, shared_kinds
from skyplane_provider.coordinator.ledger import Ledger
from skyplane_provider.coordinator.manifest import Manifest
from skyplane_provider.provisioners.base import Fleet

from .endpoints import Destination, Source
from .launch import wire_peers
from .news import StatusWatch
from .stats import Progress, region_of
from .stoppable import StoppableCalls, cancelled

log = logging.getLogger(__name__)

BATCH = 256  # chunk requests per POST: 100k small objects cost ~400 round trips, not 100k
#: Objects per POST at most (one chunk more when that chunk alone has more). A gateway reads nothing of
#: a batch before it parsed and checked all of it: a job's first POST, 64 bundles of small objects
#: (~60,000 entries, ~6 MB of JSON), held the first byte back by 0.2 s under load. 4,096 objects cost
#: 25 POSTs per 100,000 small objects, a few ms each. A job's first POST carries its first chunk alone.
BATCH_OBJECTS = 4096
#: Seconds of submitting per round of the loop at most, so that the gateways' events are read in
#: between: under load a POST of 4,096 objects takes ~0.1 s, and a round's eight came before the job's
#: first event.
SUBMIT_SECONDS = 0.1
#: Batches per source gateway per round of the loop while it accepts them. One batch a 50 ms tick
#: capped small objects at ~2,500/s whatever the gateways could do; their queues bound what is outstanding.
BATCHES_PER_TICK = 8
#: Dispatches of one chunk whose own operation failed (a store error, a damaged frame, a stall): the
#: fourth failure fails its objects (reported; the job goes on and fails at the end). Re-sends after a
#: gateway on the chunk's route died do not count here (the chunk did nothing wrong) but draw on the
#: job's RetryBudget like every re-send; a spent budget fails the job.
MAX_ATTEMPTS = 4
#: What the orchestrator holds at most: chunks taken from the listing and not yet settled, and the
#: objects in them (a bundle holds up to 1,024). Enough to keep every gateway queue full.
MAX_INFLIGHT_CHUNKS = 2048
MAX_INFLIGHT_OBJECTS = 65_536
#: Seconds between manifest commits (each commit is one fsync-free WAL append); a tick that recorded a
#: part commits at once.
COMMIT_EVERY = 0.5
#: Seconds the loop waits for news at most when it has nothing to submit: the gateways' answers wake it
#: at once (:mod:`.news`: long polls of their ``GET /status``); while the listing has not caught up, or
#: a finisher thread runs, it looks again this soon.
IDLE_WAIT = 0.25
QUICK_WAIT = 0.01
#: Seconds without news after which a chunk in flight is sent again: news of the chunk, or of any
#: other chunk of the job. A gateway takes every chunk it has read-ahead room for and works through
#: them a few at a time, so a chunk may wait its turn far longer than this while the fleet is busy
#: (100,000 small objects to moto under load: 105 bundles of ~960, 16 written at once, the last ones
#: waited minutes); only a fleet gone quiet tells that a chunk was lost.
STALL_SECONDS = 120.0


class Dispatcher:
    """Runs one transfer's chunks through a started fleet. ``run()`` returns when the listing is
    exhausted and every object it produced is settled (verified, or failed and reported), or raises
    on a failure of the whole job (cancel, no gateway left, a listing error)."""

    def __init__(self, *, job_id: str, plan: Plan, fleet: Fleet, clients: dict[str, GatewayClient], feed: Feed,
                 source: Source, dests: list[Destination], manifest: Manifest, ledger: Ledger,
                 stop: threading.Event, progress: Callable[[Progress], None] | None = None,
                 stall_seconds: float | None = None, health_every: float = 2.0) -> None:
        self.job_id, self.plan, self.fleet, self.clients = job_id, plan, fleet, clients
        self.feed, self.source, self.dests = feed, source, dests
        self.manifest, self.ledger = manifest, ledger
        self.stop, self.progress = stop, progress
        self.stall_seconds = STALL_SECONDS if stall_seconds is None else stall_seconds
        self.health_every = health_every
        self.chunks: dict[int, Chunk] = {}  # taken from the feed and not yet settled
        self.queue: deque[int] = deque()  # chunk ids to submit (new, or to retry)
        self.not_before: dict[int, float] = {}
        self.inflight: dict[int, float] = {}  # chunk id -> last submit or news
        self.last_news = time.monotonic()  # of any chunk of the job (see STALL_SECONDS)
        self.attempts: dict[int, int] = {}  # of chunks in flight
        self.length: dict[int, int] = {}  # bytes of each chunk taken from the feed, summed once
        self.owner: dict[int, str] = {}  # chunk in flight -> the source gateway it was submitted to
        self.load: dict[str, int] = {}  # source gateway -> bytes submitted to it and not settled
        self.most_attempts = 0  # the most any chunk of the job needed
        self.cursor: dict[str, int] = {gid: 0 for gid in clients}
        self.counters: dict[str, dict] = {}
        self.retries = 0
        self.budget = RetryBudget.for_chunks(0)  # grows by one per chunk taken from the listing
        self.replaced: list[str] = []  # gateways started in place of dead ones
        self.bytes_done = 0
        self.objects_done = 0
        self.chunk_count = 0  # chunks taken from the feed
        self.first_written: float | None = None  # monotonic time of the first written event
        self._objects_inflight = 0
        self._feed_done = False
        self._kinds = [shared_kinds(source.store, d.store) for d in dests]
        self._finishing: list[Future] = []
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="finish")
        #: Every call to a gateway goes through it: a cancel is not held up by a gateway that hangs.
        self._call = StoppableCalls(stop)
        self._news = StatusWatch()
        self._rr = 0
        self._posted = False  # whether a batch was submitted yet (the job's first carries one chunk)
        self._cut = False  # whether the last _submit() stopped on SUBMIT_SECONDS with chunks left
        self._full = False  # whether the last _submit() found every source gateway's queue full
        self._suspect = False  # whether a gateway failed to answer since the last health check
        #: Whether a part was recorded since the last commit: then the tick ends with one (a WAL append,
        #: no fsync), so a killed coordinator's manifest misses no part whose event it had read (a
        #: multipart job has a few parts a second, not thousands of objects).
        self._parts_unsaved = False
        self.started = time.monotonic()

    # -- the loop --------------------------------------------------------------------------
    def run(self) -> None:
        last_health = last_progress = last_commit = 0.0
        self._news.follow(self.clients, self.cursor)
        try:
            while not self._feed_done or self.chunks or self._finishing:
                if self.stop.is_set():
                    raise cancelled()
                self._take()
                self._submit()
                self._poll(0.0 if self._busy() else self._idle_wait())
                self._reap_finishers()
                now = time.monotonic()
                if self._parts_unsaved or now - last_commit > COMMIT_EVERY:
                    self.ledger.flush()
                    self.manifest.commit()
                    last_commit, self._parts_unsaved = now, False
                if now - last_health > (0.0 if self._suspect else self.health_every):
                    self._check_health()
                    self._check_stalls(now)
                    last_health, self._suspect = now, False
                if self.progress and now - last_progress > 1.0:
                    self.progress(self.snapshot())
                    last_progress = now
            self._last_counters()
            self.ledger.flush()
            self.manifest.commit()
            if self.progress:
                self.progress(self.snapshot())
        finally:
            self._news.close()
            self._call.close()
            self._pool.shutdown(wait=True, cancel_futures=True)

    def _busy(self) -> bool:
        """Whether chunks wait that there is room for (here and at a source gateway), in the feed or cut
        off by :data:`SUBMIT_SECONDS` (then the loop does not wait for news)."""
        return self._cut or (not self._full and not self.feed.queue.empty() and self._room())

    def _idle_wait(self) -> float:
        """How long the loop may wait for the gateways' news: briefly while the listing may bring
        chunks or a finisher may end (neither wakes it), else until news or :data:`IDLE_WAIT`."""
        if self._finishing or (not self._feed_done and self.feed.queue.empty()):
            return QUICK_WAIT
        return IDLE_WAIT

    def _room(self) -> bool:
        return len(self.chunks) < MAX_INFLIGHT_CHUNKS and self._objects_inflight < MAX_INFLIGHT_OBJECTS

    def _take(self) -> None:
        """Chunks from the listing, while there is room."""
        while not self._feed_done and self._room():
            item = self.feed.take()
            if item is None:
                return
            if item is Feed.DONE:
                self._feed_done = True
                if self.feed.error is not None:
                    raise self.feed.error
            elif isinstance(item, ObjectTask):  # every part recorded by an earlier run
                self._object_settled(item)
            else:
                self.chunks[item.id] = item
                self.length[item.id] = item.length
                self.queue.append(item.id)
                self.chunk_count += 1
                self.budget.total += 1
                self._objects_inflight += len(item.pieces)

    # -- submitting --------------------------------------------------------------------------
    def _sources(self) -> list[str]:
        return [g for g in self.clients if g.startswith(self.plan.src + "/")]

    def _submit(self) -> None:
        """Chunks waiting to the source gateways. Every gateway of a region runs the same program of the
        plan, so the plan gives each source gateway an equal share: each POST goes to the one with the
        least work outstanding (bytes submitted and not settled) and carries at most what brings it to
        an equal share of everything outstanding or waiting. A gateway that drains sooner gets more; one
        whose queue is full waits for the next tick while the others are served. (Handing each POST
        whatever was waiting, up to a gateway's 256 MiB of read-ahead, gave one of two source gateways
        of a small job nearly all of it, and the plan ran at 1/1.5-1/1.7 of its prediction.)"""
        sources = self._sources()
        if not sources:
            raise TransferError(f"every gateway in the source region {self.plan.src} is gone")
        now = time.monotonic()
        self._cut = self._full = False
        full: set[str] = set()
        # bytes outstanding or waiting, for the equal share (not needed, so not summed, for one gateway)
        pending = sum(self.load.get(g, 0) for g in sources) + sum(self.length.get(c, 0) for c in self.queue) \
            if len(sources) > 1 else 0
        for _ in range(len(sources) * BATCHES_PER_TICK):
            if not self.queue:
                return
            if time.monotonic() - now > SUBMIT_SECONDS:
                self._cut = True
                return
            open_ = [g for g in sources if g not in full]
            if not open_:
                self._full = True  # backpressure: the gateways' news (a chunk done) wakes the loop
                return
            gid = self._least_loaded(open_)
            room = pending / len(sources) - self.load.get(gid, 0) if len(sources) > 1 else float("inf")
            batch: list[int] = []
            deferred: list[int] = []
            objects = size = 0
            while self.queue and len(batch) < BATCH:
                cid = self.queue[0]
                if cid not in self.chunks:
                    self.queue.popleft()
                    continue  # settled after all (a stalled copy that arrived)
                if self.not_before.get(cid, 0) > now:
                    deferred.append(self.queue.popleft())
                    continue
                objects += len(self.chunks[cid].pieces)
                size += self.length[cid]
                if batch and (objects > BATCH_OBJECTS or size > room or not self._posted):
                    break
                batch.append(self.queue.popleft())
            self.queue.extendleft(reversed(deferred))
            if not batch:
                return
            self._posted = True
            try:
                accepted = self._call(self.clients[gid].submit, self._batch([self.chunks[c] for c in batch]))
            except GatewayError as exc:
                log.warning("gateway %s refused a batch: %s", gid, exc)
                accepted = 0
            for c in batch[:accepted]:
                self.inflight[c] = now
                self._assign(c, gid)
            self.queue.extendleft(reversed(batch[accepted:]))
            if accepted < len(batch):
                full.add(gid)  # backpressure: its queue is full

    def _least_loaded(self, gateways: list[str]) -> str:
        """The gateway with the fewest bytes outstanding; ties go round-robin."""
        k = self._rr % len(gateways)
        self._rr += 1
        return min(gateways[k:] + gateways[:k], key=lambda g: self.load.get(g, 0))

    def _assign(self, cid: int, gid: str) -> None:
        self._release(cid)
        self.owner[cid] = gid
        self.load[gid] = self.load.get(gid, 0) + self.length[cid]

    def _release(self, cid: int) -> None:
        """The chunk no longer counts as its gateway's work (settled, or to be sent again)."""
        gid = self.owner.pop(cid, None)
        if gid is not None:
            self.load[gid] -= self.length[cid]

    def _batch(self, chunks: list[Chunk]) -> dict:
        """The ``POST /chunks`` body (docs/gateway.md, control API v2)."""
        return {"src": self.source.store.root_uri,
                "dests": [{"region": d.region, "store": d.store.root_uri} for d in self.dests],
                "chunks": [c.spec() for c in chunks]}

    def _requeue(self, cid: int, reason: str, pieces: list[Piece] | None = None, *, failed: bool = True,
                 retry_after: float | None = None) -> None:
        """Send a chunk again after a backoff (at least the store's ``retry_after``); ``failed``: its own
        operation failed (counted against :data:`MAX_ATTEMPTS`, after which its unsettled pieces fail),
        not a gateway on its route."""
        chunk = self.chunks.get(cid)
        if chunk is None or cid in self.queue:
            return
        self.inflight.pop(cid, None)
        self._release(cid)
        n = self.attempts.get(cid, 0) + failed
        self.attempts[cid] = n
        self.most_attempts = max(self.most_attempts, n + 1)
        if n >= MAX_ATTEMPTS:
            self._fail_pieces(chunk, pieces or chunk.pieces, f"failed {n} times, last: {reason}")
            return
        if not self.budget.spend():
            raise TransferError(
                f"the job's retry budget is spent ({self.budget.total} re-sent chunks); last: chunk {cid} of "
                f"{chunk.pieces[0].obj.info.key}: {reason}",
                hint="the store or the fleet keeps failing: see the gateway logs, then resume the job; the "
                     "destination was left without partial objects")
        self.retries += 1
        backoff = min(10.0, 0.2 * 2**max(n, 1)) * (0.5 + random.random())
        self.not_before[cid] = time.monotonic() + max(backoff, min(retry_after or 0.0, MAX_RETRY_AFTER))
        log.warning("retrying chunk %d (%s...), attempt %d: %s", cid, chunk.pieces[0].obj.info.key, n + 1, reason)
        self.queue.append(cid)

    # -- events ------------------------------------------------------------------------------
    def _poll(self, timeout: float) -> None:
        """The gateways' answers (waiting up to ``timeout`` seconds for the first): events, counters."""
        for gid, status in self._news.take(timeout):
            if gid not in self.clients:
                continue  # dropped as dead since
            if status is None:
                self._suspect = True  # the health check decides whether it is dead: at once, not in 2 s
                continue
            self.cursor[gid] = status.get("next", self.cursor[gid])
            self.counters[gid] = status.get("counters", {})
            for ev in status.get("events", []):
                self._on_event(gid, ev)

    def _last_counters(self) -> None:
        """Every gateway's counters as the job ends, for its stats (bytes on the wire, work skipped): a
        gateway with no news for the long poll (a source or relay: the destinations report the writes)
        answered last up to :data:`.news.WAIT` seconds ago, before its last frames went out."""
        self._news.close()
        for gid, client in list(self.clients.items()):
            try:
                self.counters[gid] = self._call(client.status, self.cursor[gid]).get("counters", {})
            except GatewayError as exc:
                log.debug("gateway %s: no last counters: %s", gid, exc)

    def _on_event(self, gid: str, ev: dict) -> None:
        self.last_news = now = time.monotonic()  # the fleet is working: no chunk of the job is stalled
        chunk = self.chunks.get(ev.get("chunk_id"))
        if chunk is None:
            return  # settled already (a late confirmation of a re-send)
        if chunk.id in self.inflight:
            self.inflight[chunk.id] = now  # news: not stalled
        if ev.get("type") == "written":
            if self.first_written is None:
                self.first_written = time.monotonic()
            integrity = ev.get("integrity") or ""
            for entry in ev.get("objects") or ():
                self._on_written(chunk, entry, integrity)
        elif ev.get("type") == "failed":
            which = ev.get("objects")
            pieces = chunk.pieces if which is None else [chunk.pieces[i] for i in which
                                                          if isinstance(i, int) and 0 <= i < len(chunk.pieces)]
            pieces = [p for p in pieces if not p.settled]
            if not pieces:
                return
            error = f"{ev.get('error_type') or 'error'} at {gid}: {ev.get('error')}"
            if ev.get("retryable", False):
                self._requeue(chunk.id, error, pieces, retry_after=ev.get("retry_after"))
            else:
                self._fail_pieces(chunk, pieces, error)
        self._maybe_settled(chunk)

    def _on_written(self, chunk: Chunk, entry: dict, integrity: str) -> None:
        i = entry.get("i")
        if not isinstance(i, int) or not 0 <= i < len(chunk.pieces):
            return
        piece = chunk.pieces[i]
        copies = piece.obj.copies
        dest, key = entry.get("dest"), entry.get("key")
        for c in piece.waiting:
            if copies[c].dest == dest and copies[c].key == key:
                break
        else:
            return
        copy = copies[c]
        copy.note_integrity(integrity)
        part = entry.get("part")
        if piece.part is not None:
            if not part or part.get("part_number") != piece.part:
                return
            copy.parts[piece.part] = (part["etag"], int(part.get("size", piece.length)))
            self.manifest.record_part(copy.dest, copy.key, piece.part, part["etag"],
                                      int(part.get("size", piece.length)), integrity)
            self._parts_unsaved = True
        else:
            copy.receipt = entry.get("receipt")
        piece.waiting.discard(c)
        if not piece.waiting:
            self.bytes_done += piece.length

    def _fail_pieces(self, chunk: Chunk, pieces: list[Piece], error: str) -> None:
        for p in pieces:
            if p.settled:
                continue
            p.failed = True
            for c in p.waiting:
                p.obj.copies[c].error = error
            log.error("%s could not be copied: %s", p.obj.info.key, error)
        self._maybe_settled(chunk)

    def _maybe_settled(self, chunk: Chunk) -> None:
        if chunk.id not in self.chunks or not chunk.settled:
            return
        del self.chunks[chunk.id]
        self.inflight.pop(chunk.id, None)
        self._release(chunk.id)
        del self.length[chunk.id]
        self.attempts.pop(chunk.id, None)
        self.not_before.pop(chunk.id, None)
        self._objects_inflight -= len(chunk.pieces)
        for p in chunk.pieces:
            p.obj.pieces_left -= 1
            if p.obj.pieces_left == 0:
                self._object_settled(p.obj)

    # -- finishing objects ---------------------------------------------------------------------
    def _object_settled(self, obj: ObjectTask) -> None:
        """Every piece of ``obj`` is written or failed: complete, verify, record (in a thread when that
        needs a store call)."""
        if needs_store(obj):
            self._finishing.append(self._pool.submit(
                lambda: (obj, finish_copies(obj, self._stores(), self._kinds, self.stop))))
        else:
            self._record(obj, finish_copies(obj, self._stores(), self._kinds))

    def _stores(self) -> list:
        """The destinations' stores as they are now (renewed credentials reopen them)."""
        return [d.store for d in self.dests]

    def _reap_finishers(self) -> None:
        still = []
        for f in self._finishing:
            if f.done():
                self._record(*f.result())
            else:
                still.append(f)
        self._finishing = still

    def _record(self, obj: ObjectTask, outcomes: list) -> None:
        ok = True
        for copy, method, error in outcomes:
            if method is not None:
                self.manifest.record_copy(obj.info.key, copy.dest, copy.key, obj.info.size, method)
                self.ledger.copied(obj.info, copy.dest, copy.key, method)
            else:
                ok = False
                if copy.upload_id is not None:
                    self.manifest.forget_upload(copy.dest, copy.key)
                self.ledger.failed(obj.info, copy.dest, copy.key, error)
        self.ledger.object_done(obj.info, ok)
        self.objects_done += 1

    # -- gateways ------------------------------------------------------------------------------
    def _check_health(self) -> None:
        dead = [gid for gid in self.clients if not self.fleet.alive(gid)]
        if not dead:
            return
        for gid in dead:
            log.error("gateway %s died; re-routing its work through the survivors", gid)
            del self.clients[gid]
        alive = set(self.clients)
        while True:
            living = {region_of(g) for g in alive}
            for region in sorted(set(self.plan.gateways) - living):
                alive.add(self._replace(next(g for g in reversed(dead) if region_of(g) == region)))
            try:
                self.clients = self._call(wire_peers, self.fleet, self.plan, alive=alive)
                break
            except GatewayError:
                # A gateway (a replacement just started, say) died while the fleet was told its peers:
                # that is one more death, handled as the others, not a control-plane failure.
                gone = sorted(g for g in alive if not self.fleet.alive(g))
                if not gone:
                    raise
                for gid in gone:
                    log.error("gateway %s died while its peers were being set; re-routing again", gid)
                alive.difference_update(gone)
                dead.extend(gone)
        for gid in self.clients:
            self.cursor.setdefault(gid, 0)
        self._news.follow(self.clients, self.cursor)
        for cid in [c for c in self.inflight if self._may_pass(c, dead)]:
            self._requeue(cid, "a gateway on its route died", failed=False)

    def _may_pass(self, cid: int, dead: list[str]) -> bool:
        """Whether chunk ``cid`` may have passed one of the ``dead`` gateways. The dispatcher knows only
        the source gateway it gave the chunk to; the relay and destination gateways on its route are
        picked by the gateways. A gateway sends only to other regions', so a dead gateway of the
        owner's own region that is not the owner was not on the route: a single-region copy whose
        gateway dies sends again only that gateway's chunks, not the survivors'."""
        owner = self.owner.get(cid)
        if owner is None or owner in dead:
            return True
        return any(region_of(g) != region_of(owner) for g in dead)

    def _replace(self, dead: str) -> str:
        """A new gateway for a region that lost all of its own; fails the transfer when none can start."""
        region = region_of(dead)
        if not self.fleet.can_replace:
            raise TransferError(f"every gateway in {region} died",
                                hint="resume the job, with --gateways-per-region 2 for spares; see the gateway logs")
        try:
            handle = self.fleet.replace(dead)
        except SkyplaneError as exc:
            raise TransferError(f"every gateway in {region} died and no replacement could start: {exc}",
                                hint="resume the job; see the gateway logs") from exc
        self.replaced.append(handle.gateway_id)
        return handle.gateway_id

    def _check_stalls(self, now: float) -> None:
        """Send again the chunks in flight that had no news for :data:`STALL_SECONDS`, once the whole
        job had none either (before, a chunk queued behind others at a busy gateway was sent again,
        and failed after :data:`MAX_ATTEMPTS` such rounds, while the fleet was writing at full speed).
        A chunk lost at a gateway that keeps working on others is sent again when that work is done."""
        if now - self.last_news <= self.stall_seconds:
            return
        for cid, t in list(self.inflight.items()):
            if now - t > self.stall_seconds:
                self._requeue(cid, f"no progress for {self.stall_seconds:.0f}s")

    # -- what it reports -------------------------------------------------------------------------
    def snapshot(self) -> Progress:
        feed = self.feed
        return Progress(job_id=self.job_id, bytes_done=self.bytes_done, bytes_total=feed.bytes_listed,
                        objects_done=self.objects_done, objects_total=feed.objects_listed,
                        seconds=time.monotonic() - self.started, retries=self.retries,
                        listing_done=feed.listing_done, objects_failed=self.ledger.objects_failed)

    def counter_sum(self, name: str, region: str | None = None) -> int:
        return sum(int(c.get(name, 0)) for gid, c in self.counters.items()
                   if region is None or gid.startswith(region + "/"))
