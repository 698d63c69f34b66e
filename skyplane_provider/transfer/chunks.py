"""A prepared job's objects and their destination copies, as a listing in full (a dry run, a cost
guard, a mirror, server-side copies) holds them before anything moves. The chunks themselves are cut
as objects stream by (:mod:`skyplane_provider.coordinator.chunker`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.stores.base import ObjectInfo

from skyplane_provider.coordinator.chunker import part_size_for  # noqa: F401 - where server_side.py finds it


@dataclass
class Target:
    """One destination copy of one object: where it goes and, for multipart, its upload id."""

    dest_index: int
    key: str
    multipart: bool
    upload_id: str | None = None
    done: bool = False


@dataclass
class ObjectJob:
    """One source object and its copies."""

    info: ObjectInfo
    targets: list[Target]
