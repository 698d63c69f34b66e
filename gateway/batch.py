"""Chunk batches (docs/gateway.md, "Control API version 2"): what the coordinator asks a source gateway to move.

A :class:`Batch` is the body of ``POST /chunks``: one source store, a table of destinations
(region + store) and chunks. A chunk travels as one frame and is retried as a unit; it holds one
part of a multipart upload, or 1..:data:`MAX_BUNDLE_OBJECTS` whole objects (a *bundle*). A batch is
checked whole when it arrives; then each chunk's :class:`ChunkMeta` (what the writers need: the
destination table and, per object sent, its length and targets) travels inside the frame.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import NamedTuple

from planner.errors import BadOptionError

from .stores.uri import parse_uri

#: Objects a chunk may hold at most (a bundle of small whole objects).
MAX_BUNDLE_OBJECTS = 1024
_MAX_ID = 2**63 - 1
_MAX_PARTITION = 2**32 - 1
_MAX_PART = 1_000_000


@dataclass(frozen=True)
class DestStore:
    """One row of a batch's destination table: a store and the region whose gateways write it."""

    region: str
    store: str


class Target(NamedTuple):
    """Where one object (or part) of a chunk goes: ``dest`` indexes the batch's destination table.
    (Tuples, not dataclasses: a batch of small objects builds one per object, and a frozen
    dataclass cost ~4x as much to build; one travels in a chunk's metadata as the list it is.)"""

    dest: int
    key: str
    upload_id: str | None = None
    part: int | None = None


class ObjectSpec(NamedTuple):
    """A whole source object (``offset`` 0, ``length`` its size), or one part's byte range of it."""

    key: str
    offset: int
    length: int
    to: tuple[Target, ...]

    @property
    def is_part(self) -> bool:
        return self.to[0].upload_id is not None


@dataclass(frozen=True)
class ChunkSpec:
    """What travels as one frame: one part, or a bundle of whole objects."""

    id: int
    partition: int
    objects: tuple[ObjectSpec, ...]

    @property
    def length(self) -> int:
        return sum(o.length for o in self.objects)


@dataclass(frozen=True)
class Batch:
    """A checked ``POST /chunks`` body."""

    src: str
    dests: tuple[DestStore, ...]
    chunks: tuple[ChunkSpec, ...]

    @classmethod
    def from_dict(cls, doc: object, *, max_chunk_bytes: int) -> "Batch":
        """Check a batch; raise :class:`BadOptionError` naming the first bad field."""
        if not isinstance(doc, dict):
            raise BadOptionError('the body must be {"src", "dests", "chunks"}')
        src = _root(doc.get("src"), "src")
        dests = doc.get("dests")
        if not isinstance(dests, list) or not dests:
            raise BadOptionError("'dests' must be a non-empty list of {region, store}")
        table = tuple(_dest_store(d, i) for i, d in enumerate(dests))
        chunks = doc.get("chunks")
        if not isinstance(chunks, list):
            raise BadOptionError("'chunks' must be a list")
        return cls(src, table, tuple(_chunk(c, i, len(table), max_chunk_bytes) for i, c in enumerate(chunks)))


class SentObject(NamedTuple):
    """An object inside a frame: its index in the chunk, its length, and its targets."""

    i: int
    length: int
    to: tuple[Target, ...]


@dataclass(frozen=True)
class ChunkMeta:
    """A frame's metadata: the batch's destination table and the objects the payload holds, in
    order (an object the source could not read is left out; it was reported failed there)."""

    dests: tuple[DestStore, ...]
    objects: tuple[SentObject, ...]

    @classmethod
    def of(cls, dests: tuple[DestStore, ...], chunk: ChunkSpec, sent: list[int]) -> "ChunkMeta":
        """The metadata of ``chunk`` when the objects of indexes ``sent`` were read."""
        return cls(dests, tuple(SentObject(i, chunk.objects[i].length, chunk.objects[i].to) for i in sent))

    @property
    def length(self) -> int:
        return sum(o.length for o in self.objects)

    def encode(self) -> bytes:
        # objects as [i, length, [[dest, key, upload_id, part], ...]]: tuples encode as lists
        doc = {"dests": [[d.region, d.store] for d in self.dests], "objects": self.objects}
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, raw: bytes, raw_length: int) -> "ChunkMeta":
        """Parse a frame's metadata whose payload holds ``raw_length`` bytes; raise BadOptionError."""
        try:
            doc = json.loads(raw)
            dests = tuple(DestStore(_text(r, "dest region"), _text(s, "dest store")) for r, s in doc["dests"])
            objects = tuple(_sent_fast(o, len(dests)) or _sent(o, len(dests)) for o in doc["objects"])
        except (ValueError, KeyError, TypeError) as exc:
            raise BadOptionError(f"chunk metadata is malformed: {exc}") from None
        meta = cls(dests, objects)
        if not objects or meta.length != raw_length:
            raise BadOptionError(f"chunk metadata describes {meta.length} bytes in {len(objects)} objects, "
                                 f"the frame holds {raw_length}")
        return meta


# ---- checks ------------------------------------------------------------------------------------
def _chunk(c: object, n: int, dest_count: int, max_chunk_bytes: int) -> ChunkSpec:
    where = f"chunks[{n}]"
    if not isinstance(c, dict):
        raise BadOptionError(f"{where} must be an object {{id, partition, objects}}")
    objects = c.get("objects")
    if not isinstance(objects, list) or not 1 <= len(objects) <= MAX_BUNDLE_OBJECTS:
        raise BadOptionError(f"{where}.objects must be a list of 1..{MAX_BUNDLE_OBJECTS} objects")
    specs = []
    for i, o in enumerate(objects):
        spec = _object_fast(o, dest_count)
        specs.append(spec if spec is not None else _object(o, f"{where}.objects[{i}]", dest_count))
    chunk = ChunkSpec(_int(c.get("id"), f"{where}.id"),
                      _int(c.get("partition"), f"{where}.partition", maximum=_MAX_PARTITION), tuple(specs))
    if len(chunk.objects) > 1 and any(o.is_part for o in chunk.objects):
        raise BadOptionError(f"{where}: a part of a multipart upload must be the only object of its chunk")
    if chunk.length > max_chunk_bytes:
        raise BadOptionError(f"{where} (chunk {chunk.id}) holds {chunk.length} bytes, more than the gateway's "
                             f"limit of {max_chunk_bytes}", hint="use smaller chunks")
    return chunk


def _object_fast(o: object, dest_count: int) -> ObjectSpec | None:
    """The common, well-formed object entry checked without naming its fields (no message is built
    per object); None for anything else, which :func:`_object` then checks (and names what is bad)."""
    if type(o) is not dict:
        return None
    key, offset, length, to = o.get("key"), o.get("offset"), o.get("length"), o.get("to")
    if (type(key) is not str or not key or type(offset) is not int or type(length) is not int
            or type(to) is not list or not to or not 0 <= offset <= _MAX_ID or not 0 <= length <= _MAX_ID):
        return None
    targets = []
    for t in to:
        if type(t) is not dict:
            return None
        dest, tkey, upload_id, part = t.get("dest"), t.get("key"), t.get("upload_id"), t.get("part")
        if type(dest) is not int or not 0 <= dest < dest_count or type(tkey) is not str or not tkey:
            return None
        if upload_id is None:
            if part is not None or offset != 0:
                return None
        elif type(upload_id) is not str or not upload_id or type(part) is not int or not 1 <= part <= _MAX_PART:
            return None
        targets.append(Target(dest, tkey, upload_id, part))
    first = targets[0]
    if len(targets) > 1 and any((t.upload_id is None) != (first.upload_id is None) or t.part != first.part
                                for t in targets):
        return None
    return ObjectSpec(key, offset, length, tuple(targets))


def _object(o: object, where: str, dest_count: int) -> ObjectSpec:
    if not isinstance(o, dict):
        raise BadOptionError(f"{where} must be an object {{key, offset, length, to}}")
    to = o.get("to")
    if not isinstance(to, list) or not to:
        raise BadOptionError(f"{where}.to must be a non-empty list of targets")
    spec = ObjectSpec(_text(o.get("key"), f"{where}.key"), _int(o.get("offset"), f"{where}.offset"),
                      _int(o.get("length"), f"{where}.length"),
                      tuple(_target(t, f"{where}.to[{i}]", dest_count) for i, t in enumerate(to)))
    parts = {(t.upload_id is not None, t.part) for t in spec.to}
    if len(parts) != 1:
        raise BadOptionError(f"{where}: every target of a part needs an upload_id and the same part number "
                             "(none of them for a whole object)")
    if not spec.is_part and spec.offset != 0:
        raise BadOptionError(f"{where}: a whole object starts at offset 0 (a byte range is a part: give its "
                             "upload_id and part)")
    return spec


def _target(t: object, where: str, dest_count: int) -> Target:
    if not isinstance(t, dict):
        raise BadOptionError(f"{where} must be an object {{dest, key, upload_id, part}}")
    upload_id, part = t.get("upload_id"), t.get("part")
    if upload_id is not None and (not isinstance(upload_id, str) or not upload_id):
        raise BadOptionError(f"{where}.upload_id must be a non-empty string or null")
    if (upload_id is None) != (part is None):
        raise BadOptionError(f"{where}: upload_id and part go together (both null for a whole object)")
    return Target(_int(t.get("dest"), f"{where}.dest", maximum=dest_count - 1), _text(t.get("key"), f"{where}.key"),
                  upload_id, None if part is None else _int(part, f"{where}.part", minimum=1, maximum=_MAX_PART))


def _sent_fast(o: object, dest_count: int) -> SentObject | None:
    """A frame's object entry ``[i, length, targets]`` in its common form, checked without naming its
    fields; None for anything else, which :func:`_sent` then checks."""
    if type(o) is not list or len(o) != 3:
        return None
    i, n, to = o
    if type(i) is not int or not 0 <= i < MAX_BUNDLE_OBJECTS or type(n) is not int or not 0 <= n <= _MAX_ID \
            or type(to) is not list:
        return None
    targets = []
    for t in to:
        if type(t) is not list or len(t) != 4:
            return None
        dest, key, upload_id, part = t
        if type(dest) is not int or not 0 <= dest < dest_count or type(key) is not str or not key:
            return None
        if upload_id is None:
            if part is not None:
                return None
        elif type(upload_id) is not str or type(part) is not int or not 1 <= part <= _MAX_PART:
            return None
        targets.append(Target(dest, key, upload_id, part))
    return SentObject(i, n, tuple(targets))


def _sent(o: object, dest_count: int) -> SentObject:
    i, n, to = o
    return SentObject(_int(i, "i", maximum=MAX_BUNDLE_OBJECTS - 1), _int(n, "length"),
                      tuple(_meta_target(t, dest_count) for t in to))


def _meta_target(t: object, dest_count: int) -> Target:
    dest, key, upload_id, part = t
    if (upload_id is None) != (part is None) or (upload_id is not None and not isinstance(upload_id, str)):
        raise ValueError("upload_id and part go together")
    return Target(_int(dest, "dest", maximum=dest_count - 1), _text(key, "key"), upload_id,
                  None if part is None else _int(part, "part", minimum=1, maximum=_MAX_PART))


def _dest_store(d: object, i: int) -> DestStore:
    if not isinstance(d, dict):
        raise BadOptionError(f"dests[{i}] must be an object {{region, store}}")
    return DestStore(_text(d.get("region"), f"dests[{i}].region"), _root(d.get("store"), f"dests[{i}].store"))


def _root(v: object, name: str) -> str:
    """A store root URI (``s3://bucket``, ``file:///dir``): checked now, so no chunk fails on it later."""
    uri = parse_uri(_text(v, name))
    if uri.scheme != "file" and uri.path:
        raise BadOptionError(f"{name} must be a store root URI, not {v!r} (keys go in the objects)")
    return v


def _int(v: object, name: str, *, minimum: int = 0, maximum: int = _MAX_ID) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not minimum <= v <= maximum:
        raise BadOptionError(f"{name} must be an integer in [{minimum}, {maximum}], got {v!r}")
    return v


def _text(v: object, name: str) -> str:
    if not isinstance(v, str) or not v:
        raise BadOptionError(f"{name} must be a non-empty string, got {v!r}")
    return v
