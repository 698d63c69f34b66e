"""One gateway's data plane: it interprets the :class:`RegionProgram` of its config.

Stages and the bounded queues between them (a slow stage blocks the one before it)::

    POST /chunks -> request queue -> readers: store.read of each object, lz4, AES-GCM (or CRC32C) -> frame
    data port    -> receivers (one thread per connection) ------------------------------------> frame
    frame -> Router: every next hop of the partition (relays forward the bytes untouched)
          -> write queue -> writers: authenticate (or check the CRC32C), decompress, write each object
                                     to every target of this region

The request queue holds requests, not data, so it is bounded by bytes to read ahead (many small
chunks may wait, few big ones); every queue of data holds at most ``queue_chunks`` chunks.
"""

from __future__ import annotations

import collections
import logging
import os
import queue
import socket
import threading
import time
import weakref
from dataclasses import dataclass

from planner.errors import BadOptionError, GatewayError, ProtocolError, SkyplaneError

from . import store_api, wire
from .bandwidth import Pacer, pacing_counters
from .batch import Batch, ChunkMeta, ChunkSpec, DestStore, ObjectSpec, Target
from .buffers import MIN_POOLED, BufferPool, ByteBudget
from .codec import Codec, Decoded
from .config import GatewayConfig
from .events import EventLog
from .listener import DataListener
from .peers import Peer, Router
from .retry import with_retries
from .shared_work import SharedWork
from .stores import ObjectStore

log = logging.getLogger(__name__)

_POLL = 0.5
#: Requests the request queue holds at most, whatever their size.
MAX_QUEUED_REQUESTS = 10_000
#: Finished writes remembered, so that a re-sent chunk is confirmed rather than written again.
WRITE_WINDOW = 65_536
#: The ``integrity`` of a chunk read and written by the same gateway (never framed).
LOCAL = "local"
#: The ``skipped`` reason of a chunk that the source's gateway wrote for another region itself (a fleet
#: on one host, ``RegionProgram.writes_for``): no hop, so no frame, lz4, encryption or second CRC32C.
SKIP_HOP_ONE_HOST = "hop_one_host"


@dataclass(frozen=True)
class SourceChunk:
    """A chunk accepted from a batch, waiting for a reader."""

    src: str
    dests: tuple[DestStore, ...]
    spec: ChunkSpec

    @property
    def length(self) -> int:
        return self.spec.length


class _TargetWrite:
    """The write of one object (or part) to one target, in progress or ``finished``. Both fields, and
    ``waiter``, are read and set under the node's write lock. A copy that arrives while the write is
    in progress (rare: a re-send) waits on ``waiter``, made only then: an Event per write cost more
    than the rest of the bookkeeping of a small object's write."""

    __slots__ = ("finished", "result", "waiter")

    def __init__(self) -> None:
        self.finished = False
        self.result: dict | None = None  # the written event's fields ("part" or "receipt") once written
        self.waiter: threading.Event | None = None


class RequestQueue:
    """Chunks waiting for a reader, bounded by count and by bytes to read; and the bundles being read,
    whose reads an idle reader helps with (:class:`~.shared_work.SharedWork`)."""

    def __init__(self, min_chunks: int, max_bytes: int) -> None:
        self._items: collections.deque[SourceChunk] = collections.deque()
        self._shared: collections.deque[SharedWork] = collections.deque()
        self._bytes = 0
        self._min_chunks, self._max_bytes = min_chunks, max_bytes
        self._cond = threading.Condition()
        self._closed = False

    def offer(self, requests: list[SourceChunk]) -> int:
        """Queue the longest prefix of ``requests`` that fits; returns how many were taken."""
        with self._cond:
            taken = 0
            for r in requests:
                n = len(self._items)
                fits = n < self._min_chunks or self._bytes + r.length <= self._max_bytes
                if n >= MAX_QUEUED_REQUESTS or not fits:
                    break
                self._items.append(r)
                self._bytes += r.length
                taken += 1
            if taken:
                self._cond.notify(taken)
            return taken

    def get(self, timeout: float) -> SourceChunk | SharedWork | None:
        """The oldest chunk; else the oldest shared read with reads left to take; else None after
        ``timeout`` seconds without either, or once the queue is closed."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._items or self._closed or self._open_share(), timeout):
                return None
            if not self._items:
                return None if self._closed else self._open_share()
            r = self._items.popleft()
            self._bytes -= r.length
            return r

    def share(self, work: SharedWork) -> None:
        """Offer ``work`` to the readers that find no chunk waiting."""
        with self._cond:
            self._shared.append(work)
            self._cond.notify_all()

    def unshare(self, work: SharedWork) -> None:
        with self._cond:
            if work in self._shared:
                self._shared.remove(work)

    def _open_share(self) -> SharedWork | None:
        """Called with the lock held: the oldest shared work with steps left (those without are dropped)."""
        while self._shared and not self._shared[0].open:
            self._shared.popleft()
        return next((w for w in self._shared if w.open), None)

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    def close(self) -> None:
        """Wake every reader waiting for a chunk (the gateway is stopping): an idle reader ends at once
        instead of at its next poll, so a stop does not wait out a poll per reader."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()


def check_batch(doc: object, config: GatewayConfig) -> Batch:
    """A ``POST /chunks`` body checked whole: well-formed, and every chunk for a partition ``config``'s
    program reads (else :class:`BadOptionError`: the batch is refused)."""
    batch = Batch.from_dict(doc, max_chunk_bytes=config.max_chunk_bytes)
    for c in batch.chunks:
        pp = config.program.partitions.get(c.partition)
        if pp is None or pp.source != "read":
            raise BadOptionError(f"chunk {c.id}: partition {c.partition} is not read by this gateway",
                                 hint="submit chunks to the gateways of the source region")
    return batch


class InFlight:
    """The chunks a gateway holds (accepted and not yet read, read or received and not yet written), and the
    last few it let go of, whose frames may still wait in its send queues: what a supervisor reports
    failed when this worker dies (a chunk sent again that did arrive is only confirmed)."""

    def __init__(self, recent: int = 256) -> None:
        self._held: collections.Counter[int] = collections.Counter()
        self._recent: collections.deque[int] = collections.deque(maxlen=recent)
        self._lock = threading.Lock()

    def hold(self, chunk_id: int) -> None:
        with self._lock:
            self._held[chunk_id] += 1

    def release(self, chunk_id: int) -> None:
        with self._lock:
            self._held[chunk_id] -= 1
            if self._held[chunk_id] <= 0:
                del self._held[chunk_id]
            self._recent.append(chunk_id)

    def snapshot(self) -> list[int]:
        with self._lock:
            return sorted(set(self._held) | set(self._recent))

    def held(self) -> int:
        """How many chunks it holds now."""
        with self._lock:
            return len(self._held)


class Controlled:
    """What the control API needs of a gateway process, one node or a supervisor of several."""

    def __init__(self, config: GatewayConfig, events: EventLog | None = None) -> None:
        """``events``: the process's event log (default: a node's, written to ``events_fd`` if set)."""
        self.config = config
        self.events = EventLog(config.events_fd) if events is None else events
        self.stopping = threading.Event()
        self.last_control = time.monotonic()  # see touch()
        self.stores = store_api.Stores(config.credentials)

    def touch(self) -> None:
        """An authenticated control request arrived (the coordinator is alive: see daemon.run)."""
        self.last_control = time.monotonic()

    def health(self) -> dict:
        return {"ok": not self.stopping.is_set(), "gateway_id": self.config.gateway_id,
                "region": self.config.region, "pid": os.getpid()}

    def update_credentials(self, doc: object) -> dict:
        """``POST /credentials``: renewed entries of the credentials document (docs/credentials.md)."""
        entries = store_api.parse_credentials(doc)
        if not (self.config.reads or self.config.writes):
            raise BadOptionError(f"{self.config.gateway_id} is a relay: it holds no store credentials",
                                 hint="send renewed credentials to the gateways that read or write")
        replaced = self.stores.update(entries)
        log.info("renewed credentials for %s", ", ".join(replaced))
        return {"ok": True, "replaced": replaced}


class GatewayNode(Controlled):
    """Binds the data port at construction; ``start()`` runs the stages; ``stop()`` ends them."""

    def __init__(self, config: GatewayConfig) -> None:
        super().__init__(config)
        program = config.program.partitions
        self._program = program
        # Big buffers reused once their chunk is done with (buffers.py): received bodies, the objects
        # decrypted out of them, the read buffers of parts and whole objects (once sent, or written
        # here). As many idle as there are writers.
        self.buffers = BufferPool(config.writers, on_reuse=lambda: self.events.count("buffers_reused"))
        #: The regions whose destinations this gateway writes: its own, and those it writes for (one host).
        self._write_regions = frozenset((config.region, *config.program.writes_for))
        self._codec = (Codec(config.job_id, key=config.encryption_key, encrypt=config.encrypt,
                             compress=config.compress, max_chunk=config.max_chunk_bytes,
                             loopback_clear=config.loopback_clear, alloc=self.buffers.take)
                       if config.reads or config.writes else None)
        hops: dict[str, int] = {}
        for pp in program.values():
            for hop in pp.send:
                hops[hop.region] = max(hops.get(hop.region, 0), hop.connections)
        self.pacer = Pacer(config.bwlimit)
        self.router = Router(hops, job_id=config.job_id, secret=config.job_secret, queue_chunks=config.queue_chunks,
                             events=self.events, stop=self.stopping, encrypted_job=config.encrypt, pacer=self.pacer)
        self.requests = RequestQueue(config.queue_chunks, config.read_ahead_bytes)
        # Bytes of chunks read and not yet sent on every link (docs/gateway.md, "read_ahead_bytes").
        self._unsent = ByteBudget(config.read_ahead_bytes)
        self._writes: queue.Queue[Decoded | wire.Frame | SharedWork | None] = queue.Queue(maxsize=config.queue_chunks)
        # (chunk id, object index, store, key, upload id, part) -> its write, oldest first; finished
        # entries beyond WRITE_WINDOW are forgotten (a re-send older than that is written again).
        self._written: collections.OrderedDict[tuple, _TargetWrite] = collections.OrderedDict()
        self._written_lock = threading.Lock()
        self.in_flight = InFlight()
        self._threads: list[threading.Thread] = []
        self.listener = DataListener(config.bind_host, config.data_port, job_id=config.job_id,
                                     secret=config.job_secret, max_chunk=config.max_chunk_bytes,
                                     on_frame=self._on_frame, events=self.events, stop=self.stopping,
                                     handoff=None if config.handoff_fd is None else
                                     socket.socket(fileno=config.handoff_fd), alloc=self.buffers.take,
                                     budget=ByteBudget(config.read_ahead_bytes))

    # ---- life cycle -------------------------------------------------------------------------------
    def start(self) -> None:
        self.listener.start()
        if self.config.reads:
            self._spawn("read", self.config.readers, self._read_loop)
        if self.config.writes:
            self._spawn("write", self.config.writers, self._write_loop)

    def _spawn(self, name: str, n: int, target) -> None:
        for i in range(n):
            t = threading.Thread(target=target, name=f"{name}-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self, grace: float = 2.0) -> None:
        """Stop accepting work, let workers finish the chunk in hand (up to ``grace`` seconds: as a
        supervisor's workers, within the local provisioner's 3 s between teardown steps; a cancelled
        job's teardown waited out 5 s for a read from a slow store whose chunk nobody would take)."""
        if self.stopping.is_set():
            return
        self.stopping.set()
        self.listener.close()
        self.router.close()
        self.requests.close()
        for _ in range(self.config.writers):  # idle writers wake and see the stop (a full queue has none idle)
            try:
                self._writes.put_nowait(None)
            except queue.Full:
                break
        per_thread = grace / max(1, len(self._threads))
        for t in self._threads:
            t.join(per_thread)

    # ---- control API operations ---------------------------------------------------------------------
    def set_peers(self, peers: dict[str, list[Peer]]) -> None:
        self.router.set_peers(peers)

    def submit(self, doc: object) -> int:
        """Queue what fits of a batch (backpressure); refuse it whole if any chunk is bad or for a
        partition this gateway does not read."""
        batch = check_batch(doc, self.config)
        if self.stopping.is_set():
            return 0
        accepted = self.requests.offer([SourceChunk(batch.src, batch.dests, c) for c in batch.chunks])
        for c in batch.chunks[:accepted]:
            self.in_flight.hold(c.id)
        return accepted

    def busy(self) -> int:
        """What this gateway still works on or may still be sent: chunks queued to read, held, queued
        to send, and open data connections from peers (a source that has not stopped yet may send
        more, however long it paused); 0 when idle."""
        return len(self.requests) + self.in_flight.held() + self.router.load() + self.listener.open_connections()

    def set_bwlimit(self, rate: float | None) -> None:
        """``POST /bwlimit``: this gateway's new share of the job's bandwidth cap."""
        self.pacer.set_rate(rate)

    def status(self, since: int, wait: float = 0.0) -> dict:
        """``GET /status``: after up to ``wait`` seconds without an event numbered ``since`` or later."""
        if wait > 0:
            self.events.wait(since, wait)
        doc = self.events.status(since)
        doc["counters"].update(pacing_counters(self.pacer))
        doc["queued"] = len(self.requests)
        if self.config.supervised:
            doc["holding"] = self.in_flight.snapshot()  # for the supervisor (gateway/supervisor.py)
            doc["busy"] = self.busy()
        return doc

    def store_op(self, doc: object) -> dict:
        """``POST /store``: one store operation with this gateway's credentials (gateway/store_api.py)."""
        return store_api.run(doc, self.stores, lambda call, what: with_retries(
            call, what=what, on_retry=self._count_retry, stop=self.stopping))

    # ---- source: read, encode, route ----------------------------------------------------------------
    def _read_loop(self) -> None:
        while not self.stopping.is_set():
            item = self.requests.get(_POLL)
            if isinstance(item, SharedWork):
                helped = item.help()
                if helped:
                    self.events.count("objects_read_helping", helped)
            elif item is not None:
                self._guard(item.spec.id, lambda: self._read_one(item))
                self.in_flight.release(item.spec.id)

    def _read_one(self, item: SourceChunk) -> None:
        """Read a chunk, and send it or write it. A chunk that leaves only as a frame holds its bytes
        until the frame is gone (sent on every link): such chunks are read only while they fit
        ``read_ahead_bytes`` (else 8 readers, the link queues and the senders held twice the buffers
        the links need, each one memory the kernel faulted in afresh)."""
        pp = self._program[item.spec.partition]
        framed_only = bool(pp.send) and not pp.write
        n = item.spec.length
        if framed_only and not self._unsent.acquire(n, self.stopping):
            return  # stopping
        frame = None
        try:
            frame = self._read_and_pass(item)
        finally:
            if framed_only:
                if frame is None:
                    self._unsent.release(n)
                else:
                    weakref.finalize(frame, self._unsent.release, n).atexit = False

    def _read_and_pass(self, item: SourceChunk) -> wire.Frame | None:
        """Read every object of the chunk into a buffer of its own (a bundle's with the help of idle
        readers); one that cannot be read fails alone, the others travel (sealed or checksummed
        together, never joined for it). Returns the frame sent, if any."""
        spec = item.spec
        store = self.stores(item.src)
        objects = spec.objects
        work = SharedWork(len(objects), lambda i: self._read_object(store, item.src, objects[i]))
        if len(objects) > 1:
            self.requests.share(work)
        try:
            results = work.finish()
        finally:
            self.requests.unshare(work)
        for i, exc in [(i, r) for i, r in enumerate(results) if isinstance(r, Exception)]:
            self.events.failed(spec.id, self._as_error(spec.id, exc), objects=[i])
        # Comprehensions, and ``results`` dropped: a read buffer is reused only where ``pieces`` is
        # the last thing that refers to it (BufferPool.give).
        sent = [i for i, r in enumerate(results) if not isinstance(r, Exception)]
        pieces = [results[i] for i in sent]
        del results
        if not sent:
            return None
        self.events.count("bytes_read", sum(map(len, pieces)))
        meta = ChunkMeta.of(item.dests, spec, sent)
        pp = self._program[spec.partition]
        frame = None
        if pp.send:
            loopback = all(self.router.loopback(hop.region) for hop in pp.send)
            frame, skipped = self._codec.encode(chunk_id=spec.id, partition=spec.partition, meta=meta.encode(),
                                                pieces=pieces, loopback=loopback, consume=not pp.write)
            for reason in skipped:
                self.events.skipped(reason)
            for hop in pp.send:
                self.router.send(hop.region, frame)
            if not pp.write:
                self._reuse_read_buffers(frame, pieces)
        if pp.write:
            if not pp.send and self.config.program.writes_for:
                self.events.skipped(SKIP_HOP_ONE_HOST)
            # Held until written (_write_loop), as a received frame is: a gateway draining after its
            # orchestrator died (daemon.py) stopped while its writers still wrote what it had read.
            self.in_flight.hold(spec.id)
            self._put_write(Decoded(spec.id, meta, pieces, LOCAL))
        return frame

    def _reuse_read_buffers(self, frame: wire.Frame, pieces: list[bytearray]) -> None:
        """Hand big read buffers back for the next reads: now when the frame does not carry them (lz4's
        output or a new sealed buffer does), else once the frame is gone (sent on every link)."""
        if max(map(len, pieces)) < MIN_POOLED:
            return
        if any(p is b for p in pieces for b in frame.body):
            weakref.finalize(frame, self.buffers.give_when_free, pieces).atexit = False
        else:
            self.buffers.give(pieces)

    def _read_object(self, store: ObjectStore, src: str, obj: ObjectSpec) -> bytearray:
        """The object's bytes (or the part's), read straight into a buffer of their size."""
        # A whole object is read one byte past its size, so one that grew is caught too. The buffer's
        # bytes are undefined (a reused one's, or memory never zeroed): a read that counts fills it
        # whole, else it is dropped.
        buf = self.buffers.take(obj.length + (not obj.is_part))

        def read() -> int:
            with memoryview(buf) as view:
                return store.read_into(obj.key, obj.offset, view, whole=not obj.is_part)

        got = with_retries(read, what=f"reading {src}/{obj.key}", on_retry=self._count_retry, stop=self.stopping,
                           resent_above=True)
        if got != obj.length:
            what = f"{obj.length} bytes at offset {obj.offset}" if obj.is_part else f"a size of {obj.length} bytes"
            raise SkyplaneError(f"{src}/{obj.key} changed during the transfer: expected {what}, "
                                f"{'got' if obj.is_part else 'it now has'} {got}{'+' * (got > obj.length)}",
                                hint="re-run the transfer")
        del buf[obj.length:]  # the byte past the end: a shrink in place, no copy
        return buf

    # ---- relay and destination: route, then decode and write ----------------------------------------
    def _on_frame(self, frame: wire.Frame) -> None:
        """Called by the receiving connection's thread; blocking here slows that sender down."""
        h = frame.header
        self.in_flight.hold(h.chunk_id)
        self.events.held(h.chunk_id)
        pp = self._program.get(h.partition)
        if pp is None or pp.source != "receive":
            self.in_flight.release(h.chunk_id)
            self.events.count("frames_rejected")
            self.events.failed(h.chunk_id, ProtocolError(
                f"{self.config.gateway_id} does not receive partition {h.partition} (the gateways disagree about "
                "the plan)"))
            return
        for hop in pp.send:
            self.router.send(hop.region, frame)
        if pp.write:
            self._put_write(frame)  # released once written (_write_loop)
        else:
            self.in_flight.release(h.chunk_id)

    def _put_write(self, item: Decoded | wire.Frame) -> None:
        while not self.stopping.is_set():
            try:
                self._writes.put(item, timeout=_POLL)
                return
            except queue.Full:
                continue

    def _write_loop(self) -> None:
        while not self.stopping.is_set():
            try:
                item = self._writes.get(timeout=_POLL)
            except queue.Empty:
                continue
            if item is None:  # stop() woke this writer
                continue
            if isinstance(item, SharedWork):  # another writer's bundle (_offer_help)
                helped = item.help()
                if helped:
                    self.events.count("objects_written_helping", helped)
                continue
            if isinstance(item, Decoded):  # read here
                self._guard(item.chunk_id, lambda: self._write_decoded(item))
                self.in_flight.release(item.chunk_id)
            else:
                self._guard(item.header.chunk_id, lambda: self._write_frame(item))
                self.in_flight.release(item.header.chunk_id)
                self._guard(item.header.chunk_id, lambda: self._recycle(item))
            del item  # not held while waiting for the next one: a frame holds the receive budget

    def _write_frame(self, frame: wire.Frame) -> None:
        self._write_decoded(self._decode(frame))

    def _write_decoded(self, chunk: Decoded) -> None:
        """Write the chunk, then hand its objects' buffers back for the next reads and frames: those
        read here, or decrypted or decompressed out of a frame. The pool keeps only those nothing else
        refers to: a clear frame's payload is still the frame's (kept by _recycle), and a chunk read
        here may still be on its way to another region in a frame."""
        self._write_chunk(chunk)
        self.buffers.give(chunk.objects)

    def _recycle(self, frame: wire.Frame) -> None:
        """Hand a written frame's buffers back for the frames to come, unless it was relayed too (a
        link may still be sending it)."""
        if not self._relayed(frame):
            self.buffers.give(frame.body)

    def _relayed(self, frame: wire.Frame) -> bool:
        pp = self._program.get(frame.header.partition)
        return pp is None or bool(pp.send)

    def _decode(self, frame: wire.Frame) -> Decoded:
        try:
            # A frame relayed too must stay as it came: a link may still be sending it.
            return self._codec.decode(frame, in_place=not self._relayed(frame))
        except ProtocolError:  # ChecksumError included
            self.events.count("frames_rejected")
            raise

    def _write_chunk(self, chunk: Decoded) -> None:
        """Write every object of the chunk whose targets are in the regions this gateway writes; one
        ``written`` event for what was written (or confirmed), one ``failed`` event per object that
        could not be."""
        region, regions = self.config.region, self._write_regions
        dests = chunk.meta.dests
        paced = chunk.integrity == LOCAL
        todo = [(obj.i, data, target) for obj, data in zip(chunk.meta.objects, chunk.objects) for target in obj.to
                if dests[target.dest].region in regions]
        # The bytes of a chunk never framed leave the gateway here, paced as a frame is: all at once (a
        # pacer's lock per object cost ~1 us a small file).
        if paced and not self.pacer.take_all(sum(len(data) for _, data, _ in todo), stop=self.stopping):
            return  # stopping
        work = SharedWork(len(todo), lambda k: self._write_target(chunk.chunk_id, todo[k][0],
                                                                  dests[todo[k][2].dest].store, todo[k][2], todo[k][1]))
        if len(todo) > 1:
            self._offer_help(work)
        written: list[dict] = []
        fresh_objects = fresh_bytes = 0  # counted once per chunk: a lock per count per object cost more
        for (i, data, target), outcome in zip(todo, work.finish()):
            if isinstance(outcome, Exception):
                self.events.failed(chunk.chunk_id, self._as_error(chunk.chunk_id, outcome), objects=[i],
                                   region=region)
                continue
            result, new = outcome
            if new:
                fresh_objects += 1
                fresh_bytes += len(data)
            written.append({"i": i, "dest": target.dest, "key": target.key, **result})
        if fresh_objects:
            self.events.count("bytes_written", fresh_bytes)
            self.events.count("objects_written", fresh_objects)
            self.events.count("chunks_written")
        if written:
            self.events.written(chunk_id=chunk.chunk_id, region=region, integrity=chunk.integrity, objects=written)

    def _offer_help(self, work: SharedWork) -> None:
        """Hand ``work`` (a bundle's writes) to the writers that wait for a chunk, through the write
        queue: only when it is empty (else no writer waits, and a token would delay a chunk behind
        it), one token per other writer at most. A token taken after the work is done is a no-op."""
        if not self._writes.empty():
            return
        for _ in range(min(self.config.writers, len(work)) - 1):
            try:
                self._writes.put_nowait(work)
            except queue.Full:
                return

    def _write_target(self, chunk_id: int, i: int, store_uri: str, target: Target,
                      data: bytes | bytearray) -> tuple[dict, bool]:
        """Write one object (or part) to one target once: a copy that arrives while or after it is
        written (a re-send, a replay) is only confirmed. Returns ``({"part"} or {"receipt"}, written now)``."""
        key = (chunk_id, i, store_uri, target.key, target.upload_id, target.part)
        while True:
            with self._written_lock:
                state = self._written.get(key)
                if state is None:
                    state = self._written[key] = _TargetWrite()
                    self._forget_old_writes()
                    break  # ours to write
                if state.finished:
                    return state.result, False  # a finished write that failed is no longer here
                if state.waiter is None:
                    state.waiter = threading.Event()
                waiter = state.waiter
            waiter.wait()
            if state.result is not None:
                return state.result, False
            # the other copy failed to write: try with ours
        try:
            store = self.stores(store_uri)
            what = f"writing {store_uri}/{target.key}"
            if target.upload_id is None:
                info = with_retries(lambda: store.write(target.key, data), what=what, on_retry=self._count_retry,
                                    stop=self.stopping, resent_above=True)
                # what the store did not report is left out (docs/gateway.md, "Events")
                receipt = {"size": info.size}
                if info.etag is not None:
                    receipt["etag"] = info.etag
                if info.md5 is not None:
                    receipt["md5"] = info.md5
                if info.crc32c is not None:
                    receipt["crc32c"] = info.crc32c
                result = {"receipt": receipt}
            else:
                part = with_retries(lambda: store.upload_part(target.key, target.upload_id, target.part, data),
                                    what=what, on_retry=self._count_retry, stop=self.stopping, resent_above=True)
                result = {"part": {"part_number": part.part_number, "etag": part.etag, "size": part.size}}
        except BaseException:
            result = None
            raise
        finally:
            with self._written_lock:
                state.result, state.finished = result, True
                if result is None:
                    self._written.pop(key, None)
                waiter = state.waiter
            if waiter is not None:
                waiter.set()
        return result, True  # counted by the caller

    def _forget_old_writes(self) -> None:
        """Called with the lock held: drop the oldest finished writes beyond :data:`WRITE_WINDOW`."""
        while len(self._written) > WRITE_WINDOW:
            key, oldest = next(iter(self._written.items()))
            if not oldest.finished:
                return  # still being written: the window waits for it
            del self._written[key]

    # ---- failures -----------------------------------------------------------------------------------------
    def _count_retry(self) -> None:
        self.events.count("retries")

    def _as_error(self, chunk_id: int, exc: Exception) -> SkyplaneError:
        """A failure as the SkyplaneError it reports; a bug is logged with its trace, as a GatewayError."""
        if isinstance(exc, SkyplaneError):
            log.warning("chunk %d failed: %s", chunk_id, exc)
            return exc
        log.error("chunk %d failed unexpectedly", chunk_id, exc_info=exc)
        return GatewayError(f"internal error: {exc!r}")

    def _guard(self, chunk_id: int, step) -> None:
        """Run one chunk's step; any failure becomes a ``failed`` event, never a dead worker."""
        try:
            step()
        except Exception as exc:  # noqa: BLE001 - a bug must not kill the worker thread
            self.events.failed(chunk_id, self._as_error(chunk_id, exc))
