"""One gateway's data plane: it interprets the :class:`RegionProgram` of its config.

Stages and the bounded queues between them (a slow stage blocks the one before it)::

    POST /chunks -> request queue -> readers: store.read, checksum, compress, encrypt -> frame
    data port    -> receivers (one thread per connection) -------------------------> frame
    frame -> Router: every next hop of the partition (relays forward the bytes untouched)
          -> write queue -> writers: decrypt, decompress, verify, write every dest of this region

The request queue holds requests, not data, so it is bounded by bytes to read ahead (many small
chunks may wait, few big ones); every queue of data holds at most ``queue_chunks`` chunks.
"""

from __future__ import annotations

import collections
import logging
import os
import queue
import threading
from dataclasses import dataclass

from planner.errors import BadOptionError, ChecksumError, ProtocolError, SkyplaneError

from . import wire
from .chunk_request import ChunkRequest, Dest
from .codec import Codec
from .config import GatewayConfig
from .events import EventLog
from .listener import DataListener
from .peers import Peer, Router
from .retry import with_retries
from .stores import ObjectStore, open_store

log = logging.getLogger(__name__)

_POLL = 0.5
#: Requests the request queue holds at most, whatever their size.
MAX_QUEUED_REQUESTS = 10_000


@dataclass(frozen=True)
class LocalChunk:
    """A chunk read by this gateway and written by it too: no need to decode a frame."""

    request: ChunkRequest
    data: bytes
    checksum: bytes


class _DestWrite:
    """The write of one chunk to one dest, in progress (``done`` unset) or finished."""

    def __init__(self, checksum: str) -> None:
        self.checksum = checksum
        self.done = threading.Event()
        self.ok = False
        self.part: dict | None = None


class RequestQueue:
    """Chunk requests waiting for a reader, bounded by count and by bytes to read."""

    def __init__(self, min_chunks: int, max_bytes: int) -> None:
        self._items: collections.deque[ChunkRequest] = collections.deque()
        self._bytes = 0
        self._min_chunks, self._max_bytes = min_chunks, max_bytes
        self._cond = threading.Condition()

    def offer(self, requests: list[ChunkRequest]) -> int:
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

    def get(self, timeout: float) -> ChunkRequest | None:
        with self._cond:
            if not self._items and not self._cond.wait_for(lambda: self._items, timeout):
                return None
            r = self._items.popleft()
            self._bytes -= r.length
            return r

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)


class GatewayNode:
    """Binds the data port at construction; ``start()`` runs the stages; ``stop()`` ends them."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.events = EventLog()
        self.stopping = threading.Event()
        program = config.program.partitions
        self._program = program
        self._codec = (Codec(config.job_id, key=config.encryption_key, encrypt=config.encrypt,
                             compress=config.compress, max_chunk=config.max_chunk_bytes)
                       if config.reads or config.writes else None)
        hops: dict[str, int] = {}
        for pp in program.values():
            for hop in pp.send:
                hops[hop.region] = max(hops.get(hop.region, 0), hop.connections)
        self.router = Router(hops, job_id=config.job_id, secret=config.job_secret, queue_chunks=config.queue_chunks,
                             events=self.events, stop=self.stopping)
        self.requests = RequestQueue(config.queue_chunks, config.read_ahead_bytes)
        self._writes: queue.Queue[LocalChunk | wire.Frame] = queue.Queue(maxsize=config.queue_chunks)
        self._written: dict[tuple, _DestWrite] = {}  # (chunk id, dest) -> its write
        self._written_lock = threading.Lock()
        self._stores: dict[str, ObjectStore] = {}  # root URI -> store (see _store)
        self._threads: list[threading.Thread] = []
        self.listener = DataListener(config.bind_host, config.data_port, job_id=config.job_id,
                                     secret=config.job_secret, max_chunk=config.max_chunk_bytes,
                                     on_frame=self._on_frame, events=self.events, stop=self.stopping)

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

    def stop(self, grace: float = 5.0) -> None:
        """Stop accepting work, let workers finish the chunk in hand (up to ``grace`` seconds)."""
        if self.stopping.is_set():
            return
        self.stopping.set()
        self.listener.close()
        self.router.close()
        per_thread = grace / max(1, len(self._threads))
        for t in self._threads:
            t.join(per_thread)

    # ---- control API operations ---------------------------------------------------------------------
    def health(self) -> dict:
        return {"ok": not self.stopping.is_set(), "gateway_id": self.config.gateway_id,
                "region": self.config.region, "pid": os.getpid()}

    def set_peers(self, peers: dict[str, list[Peer]]) -> None:
        self.router.set_peers(peers)

    def submit(self, requests: list[ChunkRequest]) -> int:
        """Queue what fits of a batch (backpressure); every request must be for a partition we read."""
        for r in requests:
            pp = self._program.get(r.partition)
            if pp is None or pp.source != "read":
                raise BadOptionError(f"chunk {r.chunk_id}: partition {r.partition} is not read by this gateway",
                                     hint="submit chunks to the gateways of the source region")
            if r.length > self.config.max_chunk_bytes:
                raise BadOptionError(f"chunk {r.chunk_id} has {r.length} bytes, more than the gateway's limit "
                                     f"of {self.config.max_chunk_bytes}", hint="use a smaller chunk size")
        if self.stopping.is_set():
            return 0
        return self.requests.offer(requests)

    def status(self, since: int) -> dict:
        doc = self.events.status(since)
        doc["queued"] = len(self.requests)
        return doc

    # ---- source: read, encode, route ----------------------------------------------------------------
    def _read_loop(self) -> None:
        while not self.stopping.is_set():
            req = self.requests.get(_POLL)
            if req is not None:
                self._guard(req.chunk_id, lambda: self._read_one(req))

    def _read_one(self, req: ChunkRequest) -> None:
        store = self._store(req.src_store)
        data = with_retries(lambda: store.read(req.src_key, req.offset, req.length),
                            what=f"reading {req.src_store}/{req.src_key}", on_retry=self._count_retry,
                            stop=self.stopping)
        if len(data) != req.length:
            raise SkyplaneError(f"{req.src_store}/{req.src_key} changed during the transfer: expected {req.length} "
                                f"bytes at offset {req.offset}, got {len(data)}", hint="re-run the transfer")
        self.events.count("bytes_read", len(data))
        checksum = self._codec.checksum(data)
        pp = self._program[req.partition]
        if pp.send:
            frame = self._codec.encode(chunk_id=req.chunk_id, partition=req.partition, meta=req.to_meta(),
                                       data=data, checksum=checksum)
            for hop in pp.send:
                self.router.send(hop.region, frame)
        if pp.write:
            self._put_write(LocalChunk(req, data, checksum))

    # ---- relay and destination: route, then decode and write ----------------------------------------
    def _on_frame(self, frame: wire.Frame) -> None:
        """Called by the receiving connection's thread; blocking here slows that sender down."""
        h = frame.header
        pp = self._program.get(h.partition)
        if pp is None or pp.source != "receive":
            self.events.count("frames_rejected")
            self.events.failed(h.chunk_id, f"{self.config.gateway_id} does not receive partition {h.partition} "
                               "(the gateways disagree about the plan)", retryable=False)
            return
        for hop in pp.send:
            self.router.send(hop.region, frame)
        if pp.write:
            self._put_write(frame)

    def _put_write(self, item: LocalChunk | wire.Frame) -> None:
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
            chunk_id = item.request.chunk_id if isinstance(item, LocalChunk) else item.header.chunk_id
            self._guard(chunk_id, lambda: self._write_one(item))

    def _write_one(self, item: LocalChunk | wire.Frame) -> None:
        if isinstance(item, LocalChunk):
            req, data, checksum = item.request, item.data, item.checksum
        else:
            try:
                meta, data = self._codec.decode(item)
            except ProtocolError:
                self.events.count("frames_rejected")
                raise
            try:
                req = ChunkRequest.from_meta(meta)
            except BadOptionError as exc:
                # The source only sends valid metadata: this one was damaged on the way (a clear
                # frame's metadata is not covered by the checksum), so the chunk is sent again.
                self.events.count("frames_rejected")
                raise ChecksumError(f"chunk {item.header.chunk_id}: {exc}", hint="it will be sent again") from None
            if (req.chunk_id, req.partition) != (item.header.chunk_id, item.header.partition):
                self.events.count("frames_rejected")
                raise ProtocolError(f"frame header says chunk {item.header.chunk_id}, its metadata {req.chunk_id}")
            checksum = item.header.checksum
        for dest in req.dests:
            if dest.region == self.config.region:
                self._guard(req.chunk_id, lambda d=dest: self._write_dest(req, d, data, checksum.hex()))

    def _write_dest(self, req: ChunkRequest, dest: Dest, data: bytes, checksum: str) -> None:
        """Write one dest once: a copy of the chunk that arrives while or after it is written (a
        re-send by the orchestrator, a replay) is only confirmed, never written again."""
        key = (req.chunk_id, dest)
        while True:
            with self._written_lock:
                state = self._written.get(key)
                if state is None:
                    state = self._written[key] = _DestWrite(checksum)
                    break  # ours to write
            state.done.wait()
            if state.ok:
                if state.checksum != checksum:
                    raise SkyplaneError(f"chunk {req.chunk_id} arrived again with different bytes: the source "
                                        "changed during the transfer", hint="re-run the transfer")
                self.events.written(chunk_id=req.chunk_id, region=self.config.region, store=dest.store,
                                    key=dest.key, part=state.part, checksum=checksum)
                return
            # the other copy failed to write: try with ours
        try:
            store = self._store(dest.store)
            what = f"writing {dest.store}/{dest.key}"
            if dest.upload_id is None:
                with_retries(lambda: store.write(dest.key, data), what=what, on_retry=self._count_retry,
                             stop=self.stopping)
            else:
                info = with_retries(lambda: store.upload_part(dest.key, dest.upload_id, dest.part_number, data),
                                    what=what, on_retry=self._count_retry, stop=self.stopping)
                state.part = {"part_number": info.part_number, "etag": info.etag, "size": info.size}
            state.ok = True
        except BaseException:
            with self._written_lock:
                del self._written[key]
            raise
        finally:
            state.done.set()
        self.events.count("bytes_written", len(data))
        self.events.count("chunks_written")
        self.events.written(chunk_id=req.chunk_id, region=self.config.region, store=dest.store, key=dest.key,
                            part=state.part, checksum=checksum)

    def _store(self, root_uri: str) -> ObjectStore:
        """``open_store`` once per root: a gateway's credentials and environment are fixed for its
        life, and open_store's cache key (a scan of the environment, the credentials as JSON) cost
        a fifth of the gateway's CPU per 4 KiB object. A race only opens the same cached store twice."""
        store = self._stores.get(root_uri)
        if store is None:
            store = self._stores[root_uri] = open_store(root_uri, self.config.credentials)
        return store

    # ---- failures -----------------------------------------------------------------------------------------
    def _count_retry(self) -> None:
        self.events.count("retries")

    def _guard(self, chunk_id: int, step) -> None:
        """Run one chunk's step; any failure becomes a ``failed`` event, never a dead worker."""
        try:
            step()
        except SkyplaneError as exc:
            log.warning("chunk %d failed: %s", chunk_id, exc)
            self.events.failed(chunk_id, str(exc), retryable=exc.retryable or isinstance(exc, ChecksumError))
        except Exception as exc:  # noqa: BLE001 - a bug must not kill the worker thread
            log.exception("chunk %d failed unexpectedly", chunk_id)
            self.events.failed(chunk_id, f"internal error: {exc!r}", retryable=False)
