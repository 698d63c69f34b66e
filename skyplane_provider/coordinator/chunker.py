"""Objects into chunks: whole objects bundled many to a chunk, big objects cut into parts.

A chunk is what travels as one frame and is retried as a unit (docs/gateway.md, "Control API
version 2"): either one part of a multipart upload, or a bundle of up to :data:`MAX_BUNDLE_OBJECTS`
whole objects whose sizes add up to at most the chunk size. Chunk ids count up from the chunker's
first id; chunks go to the plan's partitions by smooth weighted round robin.

The values here are the coordinator's working state of the objects in flight: an
:class:`ObjectTask` lives from the moment it is listed until its copies are recorded, and is then
forgotten, so memory follows what is in flight, not the size of the job.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

from gateway.stores.base import Capabilities, ObjectInfo

#: Whole objects per bundle at most (the gateways' limit).
MAX_BUNDLE_OBJECTS = 1024
#: A job's first bundle holds at most this many objects, each next one twice as many, up to the
#: sizing's limit. A bundle is read object after object at the source and written object after object
#: at the destination, and nothing of it lands before the source read it all: a full first bundle
#: (1,024 small objects) held the first byte back by a second under load (benchmarks/scale.py). The
#: ramp costs six more chunks per job, nothing once bundles are full.
RAMP_FROM = 16

#: How a chunk's bytes were checked end to end, weakest first (``written`` events' ``integrity``; a
#: part a resumed job kept at the store: the checksum that matched the source's, see .stored_parts).
INTEGRITY_RANK = {"local": 0, "crc32c": 1, "md5": 1, "aead": 2}


@dataclass(slots=True, eq=False)
class Copy:
    """One destination copy of one object; ``upload_id`` is set for a multipart copy, whose written
    parts collect in ``parts`` (part number -> (etag, size))."""

    dest: int
    key: str
    upload_id: str | None = None
    parts: dict[int, tuple[str, int]] | None = None
    #: The weakest ``integrity`` of the chunks written to this copy so far.
    integrity: str | None = None
    #: What the store returned for a whole-object write (``{"size", "etag", "md5", "crc32c"}``).
    receipt: dict | None = None
    error: str | None = None
    error_type: str | None = None

    def note_integrity(self, kind: str) -> None:
        if self.integrity is None or INTEGRITY_RANK.get(kind, -1) < INTEGRITY_RANK.get(self.integrity, -1):
            self.integrity = kind

    def has_part(self, number: int) -> bool:
        return bool(self.parts) and number in self.parts


@dataclass(slots=True, eq=False)
class ObjectTask:
    """One source object on its way to its copies. ``part_size`` is None for an object written whole
    (in one request); ``pieces_left`` counts its pieces not yet settled (written to every copy they go
    to, or failed)."""

    info: ObjectInfo
    copies: list[Copy]
    part_size: int | None = None
    pieces_left: int = 0

    def part_ranges(self) -> Iterator[tuple[int, int, int]]:
        """``(part number, offset, length)`` of every part of a multipart object."""
        size, step = self.info.size, self.part_size
        for i, offset in enumerate(range(0, size, step)):
            yield i + 1, offset, min(step, size - offset)

    @property
    def failed(self) -> bool:
        return any(c.error for c in self.copies)


@dataclass(slots=True, eq=False)
class Piece:
    """One object (whole) or one part of it inside a chunk, and the copies it goes to."""

    obj: ObjectTask
    offset: int
    length: int
    part: int | None
    to: tuple[int, ...]  # indexes into obj.copies
    waiting: set[int]  # of ``to``: not yet confirmed written
    failed: bool = False

    def entry(self) -> dict:
        """This piece as an object entry of a chunk spec."""
        copies = self.obj.copies
        if self.part is None:
            to = [{"dest": copies[i].dest, "key": copies[i].key} for i in self.to]
        else:
            to = [{"dest": copies[i].dest, "key": copies[i].key, "upload_id": copies[i].upload_id, "part": self.part}
                  for i in self.to]
        return {"key": self.obj.info.key, "offset": self.offset, "length": self.length, "to": to}

    @property
    def settled(self) -> bool:
        return self.failed or not self.waiting


@dataclass(slots=True, eq=False)
class Chunk:
    """What travels as one frame: one part, or a bundle of whole objects."""

    id: int
    partition: int
    pieces: list[Piece]

    @property
    def length(self) -> int:
        return sum(p.length for p in self.pieces)

    def spec(self) -> dict:
        """The chunk as ``POST /chunks`` takes it."""
        return {"id": self.id, "partition": self.partition, "objects": [p.entry() for p in self.pieces]}

    @property
    def settled(self) -> bool:
        return all(p.settled for p in self.pieces)


def part_size_for(size: int, chunk_size: int, caps: list[Capabilities]) -> int | None:
    """The part size for an object of ``size`` bytes, or None when it goes in one piece.

    One piece when it fits a chunk or when any destination lacks multipart (every destination gets
    the same chunks). Otherwise the chunk size, grown so no destination exceeds its part count and
    no part is below a destination's minimum part size.
    """
    if size <= chunk_size or not all(c.multipart for c in caps):
        return None
    part = max(chunk_size, max(c.min_part_size for c in caps))
    part = max(part, math.ceil(size / min(c.max_parts for c in caps)))
    if part >= size:
        return None
    return part


class PartitionPicker:
    """Smooth weighted round robin: chunk ``i`` goes to partitions in proportion to their weights,
    interleaved (not in runs), so every path carries traffic from the start."""

    def __init__(self, weights: tuple[float, ...] | list[float]) -> None:
        total = sum(weights) or 1.0
        self._weights = [w / total for w in weights]
        self._current = [0.0] * len(weights)

    def next(self) -> int:
        for i, w in enumerate(self._weights):
            self._current[i] += w
        best = max(range(len(self._current)), key=self._current.__getitem__)
        self._current[best] -= 1.0
        return best


class Chunker:
    """Turns objects into chunks as they come. :meth:`add` yields the chunks an object completes
    (lazily, part by part, for a big one); :meth:`flush` closes the bundle being filled.
    ``ramp_from``: the first bundle's object limit, doubled at every bundle up to ``max_objects``
    (:data:`RAMP_FROM`); None: every bundle may hold ``max_objects``."""

    def __init__(self, chunk_size: int, weights: tuple[float, ...] | list[float], *,
                 max_objects: int = MAX_BUNDLE_OBJECTS, first_id: int = 0, alone_above: int | None = None,
                 ramp_from: int | None = None) -> None:
        self.chunk_size = chunk_size
        self.max_objects = max_objects
        #: Objects the bundle being filled may hold: ramps up from ``ramp_from`` to ``max_objects``.
        self._limit = min(ramp_from or max_objects, max_objects)
        #: Whole objects bigger than this travel alone, one to a chunk (``Sizing.bundle_threshold``:
        #: beyond it per-request costs no longer dominate, and a bundle is read object after object).
        self.alone_above = alone_above
        self._picker = PartitionPicker(weights)
        self._next_id = first_id
        self._bundle: list[Piece] = []
        self._bundle_bytes = 0

    @property
    def next_id(self) -> int:
        return self._next_id

    def _chunk(self, pieces: list[Piece]) -> Chunk:
        chunk = Chunk(self._next_id, self._picker.next(), pieces)
        self._next_id += 1
        return chunk

    def add(self, obj: ObjectTask) -> Iterator[Chunk]:
        """The chunks ``obj`` completes. Sets ``obj.pieces_left``; a multipart object whose every part
        is already written (a resumed job) gets 0 and yields nothing."""
        if obj.part_size is None:
            obj.pieces_left = 1
            return self._bundled(obj)
        todo = [(n, off, length) for n, off, length in obj.part_ranges()
                if any(not c.has_part(n) for c in obj.copies)]
        obj.pieces_left = len(todo)
        return self._parts(obj, todo)

    def _bundled(self, obj: ObjectTask) -> Iterator[Chunk]:
        size = obj.info.size
        every = tuple(range(len(obj.copies)))
        if self.alone_above is not None and size > self.alone_above:
            return iter([self._chunk([Piece(obj, 0, size, None, every, set(every))])])
        full = self._bundle and (len(self._bundle) >= self._limit or self._bundle_bytes + size > self.chunk_size)
        done = self.flush() if full else []
        self._bundle.append(Piece(obj, 0, size, None, every, set(every)))
        self._bundle_bytes += size
        return iter(done)

    def _parts(self, obj: ObjectTask, todo: list[tuple[int, int, int]]) -> Iterator[Chunk]:
        for number, offset, length in todo:
            to = tuple(i for i, c in enumerate(obj.copies) if not c.has_part(number))
            yield self._chunk([Piece(obj, offset, length, number, to, set(to))])

    def flush(self) -> list[Chunk]:
        """The bundle being filled, as a chunk (none when it is empty)."""
        if not self._bundle:
            return []
        pieces, self._bundle, self._bundle_bytes = self._bundle, [], 0
        self._limit = min(2 * self._limit, self.max_objects)
        return [self._chunk(pieces)]
