"""The ChunkRequest (docs/gateway.md): what the orchestrator asks a source gateway to move.

It is validated once, when the control API receives it, and then travels inside the frame as the
chunk's metadata, so the writing gateway knows where to put the bytes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from planner.errors import BadOptionError

_MAX_ID = 2**63 - 1


@dataclass(frozen=True)
class Dest:
    """One place a chunk is written: a whole object, or one part of a multipart upload."""

    region: str
    store: str
    key: str
    upload_id: str | None = None
    part_number: int | None = None

    def to_dict(self) -> dict:
        return {"region": self.region, "store": self.store, "key": self.key, "upload_id": self.upload_id,
                "part_number": self.part_number}


@dataclass(frozen=True)
class ChunkRequest:
    """A byte range of a source object and every destination it goes to."""

    chunk_id: int
    partition: int
    src_store: str
    src_key: str
    offset: int
    length: int
    dests: tuple[Dest, ...]

    def to_dict(self) -> dict:
        return {"chunk_id": self.chunk_id, "partition": self.partition,
                "src": {"store": self.src_store, "key": self.src_key}, "offset": self.offset,
                "length": self.length, "dests": [d.to_dict() for d in self.dests]}

    def to_meta(self) -> bytes:
        """The frame metadata: this request as compact JSON."""
        return json.dumps(self.to_dict(), separators=(",", ":")).encode()

    @classmethod
    def from_meta(cls, meta: bytes) -> "ChunkRequest":
        try:
            doc = json.loads(meta)
        except ValueError as exc:
            raise BadOptionError(f"chunk metadata is not JSON: {exc}") from exc
        return cls.from_dict(doc)

    @classmethod
    def from_dict(cls, doc: object) -> "ChunkRequest":
        """Validate a ChunkRequest document; raise :class:`BadOptionError` naming the bad field."""
        if not isinstance(doc, dict):
            raise BadOptionError("a chunk request must be a JSON object")
        src = doc.get("src")
        if not isinstance(src, dict):
            raise BadOptionError("chunk request field 'src' must be an object {store, key}")
        dests = doc.get("dests")
        if not isinstance(dests, list) or not dests:
            raise BadOptionError("chunk request field 'dests' must be a non-empty list")
        return cls(
            chunk_id=_int(doc, "chunk_id"),
            partition=_int(doc, "partition", maximum=2**32 - 1),
            src_store=_str(src, "store", "src.store"),
            src_key=_str(src, "key", "src.key"),
            offset=_int(doc, "offset"),
            length=_int(doc, "length"),
            dests=tuple(_dest(d, i) for i, d in enumerate(dests)),
        )


def _dest(d: object, i: int) -> Dest:
    if not isinstance(d, dict):
        raise BadOptionError(f"dests[{i}] must be an object")
    upload_id, part = d.get("upload_id"), d.get("part_number")
    if upload_id is not None and not isinstance(upload_id, str):
        raise BadOptionError(f"dests[{i}].upload_id must be a string or null")
    if (upload_id is None) != (part is None):
        raise BadOptionError(f"dests[{i}]: upload_id and part_number go together (both null for a whole object)")
    return Dest(region=_str(d, "region", f"dests[{i}].region"), store=_str(d, "store", f"dests[{i}].store"),
                key=_str(d, "key", f"dests[{i}].key"), upload_id=upload_id,
                part_number=None if part is None else _int(d, "part_number", f"dests[{i}].part_number", minimum=1))


def _int(d: dict, field: str, name: str | None = None, *, minimum: int = 0, maximum: int = _MAX_ID) -> int:
    v = d.get(field)
    if not isinstance(v, int) or isinstance(v, bool) or not minimum <= v <= maximum:
        raise BadOptionError(f"chunk request field {name or field!r} must be an integer in [{minimum}, {maximum}], "
                             f"got {v!r}")
    return v


def _str(d: dict, field: str, name: str) -> str:
    v = d.get(field)
    if not isinstance(v, str) or not v:
        raise BadOptionError(f"chunk request field {name!r} must be a non-empty string, got {v!r}")
    return v
