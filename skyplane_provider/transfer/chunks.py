"""Cutting objects into chunks, one chunk per multipart part, and assigning chunks to partitions."""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.stores.base import ObjectInfo

from skyplane_provider.coordinator.chunker import PartitionPicker, part_size_for

from .endpoints import Destination, Source


@dataclass
class Target:
    """One destination copy of one object: where it goes and, for multipart, its upload id."""

    dest_index: int
    key: str
    multipart: bool
    upload_id: str | None = None
    parts: dict[int, dict] = field(default_factory=dict)  # part_number -> {"etag", "size"}
    integrity: dict[int, str] = field(default_factory=dict)  # chunk_id -> how its writer checked it
    done: bool = False


@dataclass
class ObjectJob:
    """One source object and its copies."""

    info: ObjectInfo
    targets: list[Target]
    chunk_ids: list[int] = field(default_factory=list)


@dataclass
class Chunk:
    """A byte range of one object, sent as one frame and written as one part (or whole object)."""

    chunk_id: int
    obj: ObjectJob
    offset: int
    length: int
    part_number: int | None  # None = the whole object in one write
    partition: int = 0
    written: set[int] = field(default_factory=set)  # dest indexes confirmed

    def request(self) -> dict:
        """This chunk in a ``POST /chunks`` batch (docs/gateway.md, control API v2): one object per
        chunk; ``dest`` indexes the batch's table of every destination (:func:`batch_request`)."""
        return {
            "id": self.chunk_id,
            "partition": self.partition,
            "objects": [{
                "key": self.obj.info.key,
                "offset": self.offset,
                "length": self.length,
                "to": [{"dest": t.dest_index, "key": t.key, "upload_id": t.upload_id, "part": self.part_number}
                       for t in self.obj.targets],
            }],
        }


def batch_request(chunks: list[Chunk], source: Source, dests: list[Destination]) -> dict:
    """The ``POST /chunks`` body for these chunks: the source store, every destination, the chunks."""
    return {"src": source.store.root_uri,
            "dests": [{"region": d.region, "store": d.store.root_uri} for d in dests],
            "chunks": [c.request() for c in chunks]}


def cut(objects: list[ObjectJob], chunk_size: int, dests: list[Destination],
        weights: tuple[float, ...]) -> list[Chunk]:
    """All chunks of all objects, ids from 0, partitions assigned by ``weights``."""
    picker = PartitionPicker(weights)
    chunks: list[Chunk] = []
    for obj in objects:
        size = obj.info.size
        part = part_size_for(size, chunk_size, [d.store.capabilities for d in dests])
        for t in obj.targets:
            t.multipart = part is not None
        ranges = [(0, size, None)] if part is None else [
            (off, min(part, size - off), i + 1) for i, off in enumerate(range(0, size, part))
        ]
        for offset, length, part_number in ranges:
            c = Chunk(len(chunks), obj, offset, length, part_number, picker.next())
            obj.chunk_ids.append(c.chunk_id)
            chunks.append(c)
    return chunks
