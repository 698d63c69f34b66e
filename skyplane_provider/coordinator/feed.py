"""The listing side of the pipeline: source pages -> (sync diff) -> (resume) -> chunks, as they come.

A :class:`Feed` runs in its own thread and puts chunks into a bounded queue that the dispatch loop
empties; when the queue is full the listing waits, so memory is one listing page, one bundle being
filled and the queue, whatever the size of the job. The first page (read by ``prepare()``) is used
first, so the first chunk moves before the second page is asked for.

Per source object it decides which destinations get it (a sync merge-joins the destinations'
listings, :func:`.listing.diff`), leaves out the copies the job's manifest records done (a resumed
job), begins each multipart upload (or continues the one the manifest records, from its recorded
parts) and hands the object to the :class:`.chunker.Chunker`. A partial bundle is closed at the end
of every page, so a slow listing does not hold back objects already listed.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from typing import Iterable, Iterator

from gateway.retry import with_retries
from gateway.sizing import Sizing
from gateway.stores.base import ObjectInfo
from planner.errors import NotFoundError, SkyplaneError, TransferError

from .chunker import RAMP_FROM, Chunk, Chunker, Copy, ObjectTask, part_size_for
from .ledger import Ledger
from .listing import PAGE_LIMIT, Decision, OnDestOnly, diff, flatten, pages
from .manifest import Manifest, RecordedUpload
from .stored_parts import Kept, SourceSums, kept_parts

log = logging.getLogger(__name__)

#: Unfinished uploads under a destination's prefix held in memory at most (one listing of them per
#: destination at the start; a killed run leaves a few, never millions).
MAX_PENDING = 100_000
#: Chunks waiting between the listing and the dispatch loop.
QUEUE_CHUNKS = 64


class _Stopped(Exception):
    """The job stopped while the listing waited for room."""


class Feed:
    """Lists and chunks one job's objects in a thread. ``source`` / ``dests`` are the transfer's
    :class:`~skyplane_provider.transfer.endpoints.Source` / ``Destination`` values; ``first_page`` and
    ``next_token`` the listing's start as ``prepare()`` read it; ``sizing`` how whole objects are
    bundled (:func:`gateway.sizing.choose` of the first page); ``manifest`` a connection for this
    thread (uploads begun are committed at once); ``resume`` whether to skip what it records done.
    ``decisions``: the job's decisions made already from a whole listing (a dry run's, a cost guard's,
    a mirror's or a filtered job's, which list in full first); then nothing is listed here.
    ``pending``: each destination's unfinished uploads as :func:`pending_uploads` found them (the
    client, before this job's coordinator started); None: they are listed here first."""

    #: Put after the last chunk; the dispatch loop then checks :attr:`error`.
    DONE = object()

    def __init__(self, *, source, dests: list, first_page: list[ObjectInfo], next_token: str | None, sync: bool,
                 chunk_size: int, sizing: Sizing, max_chunk_bytes: int, weights: tuple[float, ...],
                 manifest: Manifest, resume: bool, ledger: Ledger, stop: threading.Event,
                 on_dest_only: OnDestOnly | None = None, decisions: Iterable[Decision] | None = None,
                 pending: list[dict[str, list[str]]] | None = None, depth: int = QUEUE_CHUNKS) -> None:
        self.source, self.dests = source, dests
        self._first_page, self._next_token = first_page, next_token
        self.sync, self.chunk_size, self.max_chunk_bytes = sync, chunk_size, max_chunk_bytes
        self.manifest, self.resume, self.ledger, self.stop = manifest, resume, ledger, stop
        self.on_dest_only = on_dest_only
        self._decisions = decisions
        self.sizing = sizing
        self.chunker = Chunker(sizing.bundle_bytes, weights, max_objects=sizing.bundle_objects,
                               alone_above=sizing.bundle_threshold, ramp_from=RAMP_FROM)
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self._caps = [d.store.capabilities for d in dests]
        #: Objects and bytes listed that have something to copy (the progress totals so far).
        self.objects_listed = 0
        self.bytes_listed = 0
        self.listing_done = False
        self.listing_seconds: float | None = None
        self.error: BaseException | None = None
        self._done: set[tuple[str, int]] = set()  # (source key, dest) recorded done, this page's range
        self._page_last: str | None = None
        self._pending = pending
        self._stale = False  # whether any unfinished upload is left to abort (see _abort_stale)
        self._thread: threading.Thread | None = None
        self._started = 0.0
        self._head: object | None = None  # an item taken by wait_first() and not yet by take()

    # -- the thread ---------------------------------------------------------------------------------
    def start(self) -> "Feed":
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="feed", daemon=True)
        self._thread.start()
        return self

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def wait_first(self) -> bool:
        """Block until the listing produced its first item; False when it has nothing to send (every
        object up to date or recorded done), so that no fleet need start. Raises the listing's error."""
        while self._head is None:
            if self.stop.is_set():
                raise TransferError("transfer cancelled", hint="resume the job to finish what is missing")
            try:
                self._head = self.queue.get(timeout=0.2)
            except queue.Empty:
                continue
        if self._head is self.DONE and self.error is not None:
            raise self.error
        return self._head is not self.DONE

    def take(self) -> object | None:
        """The next item (a chunk, an object needing only its completion, or :attr:`DONE`), or None
        when none is ready."""
        if self._head is not None:
            item, self._head = self._head, None
            return item
        try:
            return self.queue.get_nowait()
        except queue.Empty:
            return None

    def _run(self) -> None:
        try:
            for item in self._items():
                self._put(item)
        except _Stopped:
            return
        except BaseException as exc:  # noqa: BLE001 - handed to the dispatch loop, which raises it
            self.error = exc
        finally:
            self.manifest.commit()
        try:
            self._put(self.DONE)
        except _Stopped:
            pass

    def _put(self, item: object) -> None:
        while True:
            if self.stop.is_set():
                raise _Stopped
            try:
                self.queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    # -- listing -> chunks --------------------------------------------------------------------------
    def _items(self) -> Iterator[Chunk | ObjectTask]:
        """Chunks, and the objects that need no chunk (every part recorded written: only completing)."""
        if self._pending is None:
            self._pending = [pending_uploads(d) for d in self.dests]
        self._stale = any(self._pending)
        src = self.source
        stream = self._decisions if self._decisions is not None else diff(
            self._source_objects(), src.relative, [d.key_for for d in self.dests], self._dest_listings(),
            where=f"the source {src.uri}", on_dest_only=self.on_dest_only)
        for decision in stream:
            yield from self._object(decision)
            if decision.info.key == self._page_last:
                yield from self.chunker.flush()
        yield from self.chunker.flush()
        self.listing_done = True
        self.listing_seconds = round(time.monotonic() - self._started, 3)

    def _object(self, decision) -> Iterator[Chunk | ObjectTask]:
        info, rel = decision.info, decision.rel
        keys = {i: self.dests[i].key_for(rel) for i in (*decision.copy, *decision.up_to_date)}
        if self._stale:
            for i, key in keys.items():
                self._abort_stale(i, key)
        for i in decision.up_to_date:
            self.ledger.skipped(info, i, keys[i])
        todo = [i for i in decision.copy if (info.key, i) not in self._done] if self._done else decision.copy
        resumed = len(decision.copy) - len(todo)
        if not todo:
            self.ledger.nothing_to_copy(resumed)
            return
        if resumed:
            self.ledger.resumed(resumed)
        obj = ObjectTask(info, [Copy(i, keys[i]) for i in todo])
        self.objects_listed += 1
        self.bytes_listed += info.size
        if not self._prepare_parts(obj):
            return
        chunks = self.chunker.add(obj)  # sets pieces_left
        if obj.pieces_left == 0:
            yield obj  # a resumed upload with every part recorded: only its completion is left
        yield from chunks

    def _source_objects(self) -> Iterator[ObjectInfo]:
        """The source listing, page after page; ``_page_last`` is the last key of the page being walked
        (its bundle is closed there) and ``_done`` the copies recorded done in its range."""
        src = self.source
        rest = () if self._next_token is None else pages(
            lambda token: src.store.list_page(src.prefix, token, PAGE_LIMIT), self._next_token)
        first, self._first_page = self._first_page, []
        for page in itertools.chain([first], rest):
            if self.stop.is_set():
                raise _Stopped
            objects = [o for o in page if not o.key.endswith("/")]
            if not objects:
                continue
            self._page_last = objects[-1].key
            if self.resume:
                self._done = self.manifest.done_between(objects[0].key, objects[-1].key)
            yield from objects

    def _dest_listings(self) -> list[Iterator[ObjectInfo]] | None:
        if not self.sync:
            return None
        return [_dest_listing(d) for d in self.dests]

    # -- multipart uploads --------------------------------------------------------------------------
    def _abort_stale(self, dest: int, key: str) -> None:
        ids = self._pending[dest].pop(key, None)
        if not ids:
            return
        recorded = self.manifest.upload(dest, key) if self.resume else None
        store = self.dests[dest].store
        for upload_id in ids:
            if recorded is None or recorded.upload_id != upload_id:
                log.info("aborting the unfinished upload %s of %s/%s left by an earlier run", upload_id,
                         store.root_uri, key)
                abort_upload(store, key, upload_id)

    def _prepare_parts(self, obj: ObjectTask) -> bool:
        """Set the object's part size and, for a multipart object, each copy's upload (continued from
        the manifest or begun). False when the object cannot be sent (reported failed)."""
        part = part_size_for(obj.info.size, self.chunk_size, self._caps)
        if part is not None and not self.sizing.in_parts(obj.info.size) and obj.info.size <= self.max_chunk_bytes:
            # In one request, as the stores' own tools do (gateway/sizing.py): no begin, completion or
            # GCS compose (which copies every byte again in the store). An object of a later listing
            # page above what the gateways were told to take goes in parts.
            part = None
        if (part or obj.info.size) > self.max_chunk_bytes:
            error = (f"needs chunks of {part or obj.info.size} bytes, more than this job's gateways take "
                     f"({self.max_chunk_bytes}): its stores' part limits; copy it with a larger chunk size")
            for c in obj.copies:
                self.ledger.failed(obj.info, c.dest, c.key, error)
            self.ledger.object_done(obj.info, ok=False)
            return False
        if part is None:
            return True
        obj.part_size = part
        sums = SourceSums(self.source.store, obj.info.key)  # what continued uploads compare their parts with
        try:
            for c in obj.copies:
                self._upload(obj, c, part, sums)
        except SkyplaneError as exc:
            for c in obj.copies:
                self.ledger.failed(obj.info, c.dest, c.key, f"could not begin its upload: {exc}")
                if c.upload_id:
                    abort_upload(self.dests[c.dest].store, c.key, c.upload_id)
                    self.manifest.forget_upload(c.dest, c.key)
            self.ledger.object_done(obj.info, ok=False)
            return False
        return True

    def _upload(self, obj: ObjectTask, c: Copy, part: int, sums: SourceSums) -> None:
        store = self.dests[c.dest].store
        recorded = self.manifest.upload(c.dest, c.key) if self.resume else None
        if recorded and recorded.part_size == part and recorded.src_key == obj.info.key:
            try:
                parts = with_retries(lambda: kept_parts(obj, c.key, recorded.upload_id, recorded.parts, store, sums),
                                     what=f"listing the parts of the upload of {store.root_uri}/{c.key}")
            except NotFoundError:
                log.warning("the upload of %s/%s recorded in the manifest is gone: beginning it again",
                            store.root_uri, c.key)
                parts = None
            except SkyplaneError as exc:  # a store (or a gateway) that cannot list them: the manifest's parts
                log.warning("could not list the parts of the upload of %s/%s, continuing from the recorded "
                            "ones: %s", store.root_uri, c.key, exc)
                parts = dict(recorded.parts)
            if parts is not None:
                self._continue(c, recorded, parts)
                return
        where = f"{store.root_uri}/{c.key}"
        if recorded:
            self.manifest.forget_upload(c.dest, c.key)
        c.upload_id = with_retries(lambda: store.begin_multipart(c.key), what=f"beginning the upload of {where}")
        c.parts = {}
        self.manifest.record_upload(c.dest, c.key, obj.info.key, c.upload_id, part)

    def _continue(self, c: Copy, recorded: RecordedUpload, parts: dict[int, Kept]) -> None:
        """Continue the recorded upload with the parts kept at the store; the parts kept that the
        manifest did not record (or recorded otherwise) are recorded now."""
        c.upload_id = recorded.upload_id
        c.parts = {n: (etag, size) for n, (etag, size, _) in parts.items()}
        for n, (etag, size, integrity) in parts.items():
            c.note_integrity(integrity or "")
            if recorded.parts.get(n) != (etag, size, integrity):
                self.manifest.record_part(c.dest, c.key, n, etag, size, integrity)
        self.manifest.commit()
        found = sum(1 for n in parts if n not in recorded.parts)
        log.info("continuing the upload of %s/%s from %d parts: %d recorded, %d more found at the store; "
                 "%d recorded parts not kept", self.dests[c.dest].store.root_uri, c.key, len(parts),
                 len(parts) - found, found, sum(1 for n in recorded.parts if n not in parts))


def _dest_listing(dest) -> Iterator[ObjectInfo]:
    """A destination's sorted listing under its prefix, page by page (one HEAD for an exact key)."""
    if dest.exact_key is not None:
        try:
            yield dest.store.head(dest.exact_key)
        except NotFoundError:
            pass
        return
    yield from flatten(pages(lambda token: dest.store.list_page(dest.base, token, PAGE_LIMIT)))


def abort_upload(store, key: str, upload_id: str) -> None:
    """Abort one multipart upload; a failure is only logged: the upload stays invisible either way."""
    try:
        with_retries(lambda: store.abort_multipart(key, upload_id), what=f"aborting {store.root_uri}/{key}")
    except SkyplaneError as exc:
        log.warning("could not abort the upload %s of %s/%s: %s", upload_id, store.root_uri, key, exc)


def pending_uploads(dest) -> dict[str, list[str]]:
    """Unfinished uploads under a destination's prefix (key -> upload ids) that an earlier run began
    and neither completed nor aborted (it was killed): the feed aborts each when the listing reaches its
    key, copied or up to date, unless the manifest records it for this job to continue."""
    prefix = dest.exact_key if dest.exact_key is not None else dest.base
    store = dest.store
    found: dict[str, list[str]] = {}
    for key, upload_id in with_retries(lambda: store.pending_uploads(prefix),
                                       what=f"listing unfinished uploads under {store.root_uri}/{prefix}"):
        if len(found) >= MAX_PENDING:
            break
        found.setdefault(key, []).append(upload_id)
    return found
