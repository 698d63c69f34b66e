"""After the copy: every destination object checked against its source.

Each copy must have the source's size, and then the strongest check both sides allow passes:

``md5`` / ``crc32c``
    a content checksum the destination store reports (:attr:`ObjectInfo.md5` / ``.crc32c``) equals the
    one the source store reports. Only kinds both stores declare in ``capabilities.checksums`` are
    tried, and only when both objects really have one (a multipart S3 or Azure object has no MD5, a
    composed GCS object only a CRC32C).
``size``
    a server-side copy (skyplane_provider/transfer/server_side.py) that no checksum both stores
    report can check: the store's own copy service moved the bytes, and the size is what we check.
``aead`` / ``chunk-crc32c`` / ``local``
    otherwise: every chunk was confirmed by the gateway that wrote it, with how it checked the bytes
    end to end (the ``integrity`` of its ``written`` event): authenticated by AES-256-GCM, the
    CRC32C of the original bytes computed by the source gateway (a job without encryption), or read
    and written by the same gateway. The weakest of a copy's chunks names its method; the per-chunk
    integrity is kept in the job manifest (:func:`verify_all` returns it).

A failed check raises :class:`VerificationError` naming the object; the transfer fails with it.
"""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

from gateway.retry import with_retries
from gateway.stores.base import ObjectInfo, ObjectStore
from planner.errors import VerificationError

from .chunks import Chunk, ObjectJob
from .endpoints import Destination, Source

#: Store-native checksums, strongest first.
NATIVE = ("md5", "crc32c")
#: The method a copy's chunks give, by their writers' ``integrity``, weakest first.
CHUNK_METHODS = {"local": "local", "crc32c": "chunk-crc32c", "aead": "aead"}
_WORKERS = 8  # objects checked at once: each check is one or two metadata requests


@dataclass
class Verification:
    """How many object copies were verified, and by which method."""

    objects: int = 0
    by: Counter = field(default_factory=Counter)

    def to_dict(self) -> dict:
        return {"objects": self.objects,
                "by": {m: self.by[m] for m in (*NATIVE, *CHUNK_METHODS.values(), "size") if self.by[m]}}

    def add(self, other: "Verification") -> None:
        """Count ``other``'s copies too (the gateways' and the server-side copies of one job)."""
        self.objects += other.objects
        self.by.update(other.by)


def shared_kinds(src: ObjectStore, dst: ObjectStore) -> tuple[str, ...]:
    """The native checksum kinds both stores declare, strongest first."""
    return tuple(k for k in NATIVE if k in src.capabilities.checksums and k in dst.capabilities.checksums)


def check_copy(src: ObjectInfo, dst: ObjectInfo, where: str, kinds: tuple[str, ...],
               chunk_integrity: list[str], fallback: str | None = None) -> str:
    """Check one copy (``where`` names it); return the method that verified it, or raise.
    ``fallback``: the method to name when no checksum could be compared and no chunk was written by
    a gateway (a server-side copy: ``"size"``)."""
    if dst.size != src.size:
        raise VerificationError(f"{where} has {dst.size} bytes, the source {src.key} {src.size}",
                                hint="re-run the transfer; the object will be copied again")
    theirs, ours = src.checksums(), dst.checksums()
    for kind in kinds:
        if kind in theirs and kind in ours:
            if theirs[kind] != ours[kind]:
                raise VerificationError(f"{where} has {kind} {ours[kind]}, the source {src.key} {theirs[kind]}: "
                                        "the copy is corrupt or the source changed during the transfer",
                                        hint="re-run the transfer; the object will be copied again")
            return kind
    if fallback is not None and not chunk_integrity:
        return fallback
    if not chunk_integrity or not all(i in CHUNK_METHODS for i in chunk_integrity):
        raise VerificationError(f"{where}: no gateway confirmed the integrity of every chunk",
                                hint="re-run the transfer; the object will be copied again")
    return next(m for i, m in CHUNK_METHODS.items() if i in chunk_integrity)


def verify_all(objects: list[ObjectJob], chunks: list[Chunk], source: Source,
               dests: list[Destination], job_id: str) -> tuple[Verification, dict]:
    """Check every copy of every object; returns the tally and the job manifest (per copy: the method
    and how the gateways checked each chunk)."""
    kinds = [shared_kinds(source.store, d.store) for d in dests]
    wanted = {k for per_dest in kinds for k in per_dest}

    def one(obj: ObjectJob) -> dict:
        src = obj.info
        if wanted and not wanted & set(src.checksums()):
            # The listing lacked them (S3 listings never say whether an ETag is an MD5): ask once.
            fresh = with_retries(lambda: source.store.head(src.key), what=f"checking {src.key} at the source")
            src = replace(src, md5=fresh.md5, crc32c=fresh.crc32c)
        copies = []
        for t in obj.targets:
            store = dests[t.dest_index].store
            where = f"{store.root_uri}/{t.key}"
            info = with_retries(lambda: store.head(t.key), what=f"verifying {where}")
            method = check_copy(src, info, where, kinds[t.dest_index],
                                [t.integrity.get(c, "") for c in obj.chunk_ids])
            copies.append({"store": store.root_uri, "key": t.key, "verified_by": method, "checksums": info.checksums(),
                           "chunks": [[chunks[c].offset, chunks[c].length, t.integrity.get(c, "")]
                                      for c in obj.chunk_ids]})
        return {"key": src.key, "size": src.size, "checksums": src.checksums(), "copies": copies}

    with ThreadPoolExecutor(max_workers=_WORKERS, thread_name_prefix="verify") as pool:
        entries = list(pool.map(one, objects))
    tally = Verification()
    for entry in entries:
        for copy in entry["copies"]:
            tally.objects += 1
            tally.by[copy["verified_by"]] += 1
    return tally, {"job_id": job_id, "source": source.store.root_uri, "objects": entries}
