"""A replica's store and key prefix, its listing, and the listing's fingerprint (the manifest checksum)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from gateway.stores import open_store
from gateway.stores.base import ObjectInfo, ObjectStore
from gateway.stores.uri import parse_uri


@dataclass(frozen=True)
class ReplicaListing:
    """What a replica holds: objects by key relative to the replica's prefix."""

    objects: dict[str, ObjectInfo]

    @property
    def bytes(self) -> int:
        return sum(o.size for o in self.objects.values())

    @property
    def manifest_sha256(self) -> str:
        """sha256 over the sorted ``[key, size, etag]`` lines (JSON, one per object)."""
        digest = hashlib.sha256()
        for key in sorted(self.objects):
            info = self.objects[key]
            digest.update(json.dumps([key, info.size, info.etag or ""], ensure_ascii=False).encode() + b"\n")
        return digest.hexdigest()

    def missing_or_different(self, reference: "ReplicaListing") -> list[str]:
        """Keys of ``reference`` that this listing lacks or holds with another size (store ETags are
        not comparable across clouds, so size is what a cross-store check can use)."""
        return sorted(k for k, o in reference.objects.items()
                      if k not in self.objects or self.objects[k].size != o.size)


def replica_store(uri: str, credentials: dict | None = None) -> tuple[ObjectStore, str]:
    """The store a replica lives in and the key prefix of its objects (``""`` or ending in ``/``).

    Local directories become the store root, as the transfer engine writes them.
    """
    parsed = parse_uri(uri)
    if parsed.scheme == "file":
        return open_store("file://" + (parsed.path.rstrip("/") or "/"), credentials), ""
    prefix = parsed.path if not parsed.path or parsed.path.endswith("/") else parsed.path + "/"
    return open_store(parsed.root_uri, credentials), prefix


def list_replica(uri: str, credentials: dict | None = None) -> ReplicaListing:
    """Every object under the replica's prefix (directory markers left out)."""
    store, prefix = replica_store(uri, credentials)
    return ReplicaListing({o.key[len(prefix):]: o for o in store.list(prefix) if not o.key.endswith("/")})
