"""Sample objects for the demo, the example DAGs and tests: deterministic bytes under a URI prefix."""

from __future__ import annotations

import hashlib
import random

from gateway.stores import ObjectStore, open_store
from gateway.stores.uri import parse_uri

MiB = 1024**2


def sample_objects(n_small: int = 6, small_bytes: int = 256 * 1024, big_bytes: int = 20 * MiB,
                   seed: int = 7) -> dict[str, bytes]:
    """``n_small`` CSV-like objects (compressible) and one random object of ``big_bytes`` (above the
    usual chunk size, so it moves in parts). Same ``seed``, same bytes."""
    rng = random.Random(seed)
    objects = {}
    for i in range(n_small):
        rows = b"".join(b"%d,%d,%s\n" % (i, j, rng.choice([b"click", b"view", b"buy"]))
                        for j in range(small_bytes // 12))
        objects[f"part-{i:03d}.csv"] = rows[:small_bytes]
    objects["blob-000.bin"] = rng.randbytes(big_bytes)
    return objects


def _store_and_base(prefix_uri: str) -> tuple[ObjectStore, str]:
    """The store holding ``prefix_uri`` and the key prefix inside it (a local directory is its own root)."""
    uri = parse_uri(prefix_uri)
    if uri.scheme == "file":
        return open_store("file://" + uri.path), ""
    return open_store(uri.root_uri), uri.join("").path


def put_objects(prefix_uri: str, objects: dict[str, bytes]) -> None:
    """Write ``objects`` (key relative to the prefix -> bytes) under ``prefix_uri``."""
    store, base = _store_and_base(prefix_uri)
    for key, data in objects.items():
        store.write(base + key, data)


def digests(prefix_uri: str) -> dict[str, str]:
    """key relative to ``prefix_uri`` -> sha256 of every object under it."""
    store, base = _store_and_base(prefix_uri)
    return {o.key[len(base):]: hashlib.sha256(store.read(o.key)).hexdigest() for o in store.list(base)}


def sha256s(objects: dict[str, bytes]) -> dict[str, str]:
    return {k: hashlib.sha256(v).hexdigest() for k, v in objects.items()}
