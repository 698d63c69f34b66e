"""Each copy verified as its last chunk lands, from what the store answered and the source listing.

No separate pass: when every piece of an object is settled, each copy is checked against the
source object as listed:

``size``
    the store's receipt of the write (or ``complete_multipart``'s answer) must have the source's size;
``md5`` / ``crc32c``
    then, strongest first, a content checksum of a kind both stores declare
    (``capabilities.checksums``) that both the listing and the receipt carry must be equal;
``size``
    a server-side copy (``transfer/server_side.py``) that no checksum both stores report can check:
    the store's own copy service moved the bytes, and the size is what is checked;
``aead`` / ``chunk-crc32c`` / ``chunk-md5`` / ``local``
    otherwise every chunk of the copy was confirmed by the gateway that wrote it, with how it checked
    the bytes end to end (the ``integrity`` of its ``written`` events): authenticated by AES-256-GCM,
    the source's CRC32C of the original bytes recomputed (a job without encryption), or read and
    written by one gateway; a part a resumed job found at the store and kept, by the store's CRC32C
    or MD5 of it equal to the source's (:mod:`.stored_parts`). The weakest of the copy's chunks
    names the method.

A HEAD is asked only when a receipt has no size (no store here does that). A failed check is a
:class:`VerificationError` naming the copy; the object is reported failed and the job fails.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from gateway.retry import with_retries
from gateway.stores.base import ObjectInfo, ObjectStore, PartInfo
from planner.errors import SkyplaneError, VerificationError

#: Store-native checksums, strongest first.
NATIVE = ("md5", "crc32c")
#: The method a copy's chunks give, by their writers' ``integrity``, weakest first.
CHUNK_METHODS = {"local": "local", "crc32c": "chunk-crc32c", "md5": "chunk-md5", "aead": "aead"}


@dataclass
class Verification:
    """How many object copies were verified, and by which method."""

    objects: int = 0
    by: Counter = field(default_factory=Counter)

    def count(self, method: str) -> None:
        self.objects += 1
        self.by[method] += 1

    def add(self, other: "Verification") -> None:
        """Count ``other``'s copies too (the gateways' and the server-side copies of one job)."""
        self.objects += other.objects
        self.by.update(other.by)

    def to_dict(self) -> dict:
        return {"objects": self.objects,
                "by": {m: self.by[m] for m in (*NATIVE, *CHUNK_METHODS.values(), "size") if self.by[m]}}


def shared_kinds(src: ObjectStore, dst: ObjectStore) -> tuple[str, ...]:
    """The native checksum kinds both stores declare, strongest first."""
    return tuple(k for k in NATIVE if k in src.capabilities.checksums and k in dst.capabilities.checksums)


def receipt_info(key: str, receipt: dict) -> ObjectInfo:
    """A ``written`` event's receipt (``{"size", "etag", "md5", "crc32c"}``) as an :class:`ObjectInfo`."""
    return ObjectInfo(key, receipt.get("size"), etag=receipt.get("etag"), md5=receipt.get("md5"),
                      crc32c=receipt.get("crc32c"))


def check_copy(src: ObjectInfo, dst: ObjectInfo, where: str, kinds: tuple[str, ...], integrity: str | None,
               fallback: str | None = None) -> str:
    """Check one copy (``where`` names it) whose store reported ``dst``; ``integrity`` is the weakest
    of its chunks' (None: some chunk was never confirmed). Returns the method, or raises.
    ``fallback``: the method to name when no checksum could be compared and no gateway wrote the copy
    (a server-side copy, ``skyplane_provider/transfer/server_side.py``: ``"size"``)."""
    if dst.size != src.size:
        raise VerificationError(f"{where} has {dst.size} bytes, the source {src.key} {src.size}",
                                hint="re-run the transfer; the object will be copied again")
    for kind in kinds:  # attributes of ObjectInfo of the same names (its checksums())
        theirs, ours = getattr(src, kind), getattr(dst, kind)
        if theirs and ours:
            if theirs != ours:
                raise VerificationError(f"{where} has {kind} {ours}, the source {src.key} {theirs}: "
                                        "the copy is corrupt or the source changed during the transfer",
                                        hint="re-run the transfer; the object will be copied again")
            return kind
    if fallback is not None and integrity is None:
        return fallback
    if integrity not in CHUNK_METHODS:
        raise VerificationError(f"{where}: no gateway confirmed the integrity of every chunk",
                                hint="re-run the transfer; the object will be copied again")
    return CHUNK_METHODS[integrity]


def finish_copies(obj, stores: list[ObjectStore], kinds: list[tuple[str, ...]],
                  stop=None) -> list[tuple[object, str | None, str | None]]:
    """Complete and verify every copy of an object whose pieces are all settled (an
    :class:`~.chunker.ObjectTask`); ``stores[i]`` / ``kinds[i]`` are destination ``i``'s store and the
    checksum kinds it shares with the source. Returns ``(copy, verified_by, None)`` or
    ``(copy, None, error)`` per copy. A failed copy's upload is aborted: nothing partial is visible."""
    outcomes = []
    for c in obj.copies:
        receipt = c.receipt
        if not c.error and c.upload_id is None and receipt is not None and receipt.get("size") is not None:
            # The common case, a whole object the store answered for: checked with no store call and
            # no name of the copy built unless the check fails (this runs once per object copied).
            got = receipt_info(c.key, receipt)
            try:
                outcomes.append((c, check_copy(obj.info, got, "", kinds[c.dest], c.integrity), None))
            except VerificationError:  # checked again with the copy named, for the error
                outcomes.append(_finish_copy(obj, c, stores[c.dest], kinds[c.dest], stop, got))
            continue
        outcomes.append(_finish_copy(obj, c, stores[c.dest], kinds[c.dest], stop))
    return outcomes


def _finish_copy(obj, c, store: ObjectStore, kinds: tuple[str, ...], stop,
                 got: ObjectInfo | None = None) -> tuple[object, str | None, str | None]:
    """One copy that failed on its way, needs its upload completed or a HEAD, or whose receipt ``got``
    failed its check (see :func:`finish_copies`)."""
    from .feed import abort_upload  # one abort for the listing side and this one (feed imports this module)

    where = f"{store.root_uri}/{c.key}"
    try:
        if c.error:
            raise _CopyFailed(c.error)
        if c.upload_id is not None:
            expected = sum(1 for _ in obj.part_ranges())
            if len(c.parts or ()) != expected:
                raise VerificationError(f"{where}: {len(c.parts or ())} of its {expected} parts were written")
            parts = [PartInfo(n, etag, size) for n, (etag, size) in sorted(c.parts.items())]
            got = with_retries(lambda: store.complete_multipart(c.key, c.upload_id, parts),
                               what=f"completing {where}", stop=stop)
        elif got is None:
            got = with_retries(lambda: store.head(c.key), what=f"verifying {where}", stop=stop)
        return c, check_copy(obj.info, got, where, kinds, c.integrity), None
    except (SkyplaneError, _CopyFailed) as exc:
        if c.upload_id is not None:
            abort_upload(store, c.key, c.upload_id)
        return c, None, str(exc)


def needs_store(obj) -> bool:
    """Whether finishing this object calls a store (completing or aborting an upload, or a HEAD):
    such objects are finished in a thread pool, the others at once."""
    for c in obj.copies:
        if c.upload_id is not None or (not c.error and (c.receipt is None or c.receipt.get("size") is None)):
            return True
    return False


class _CopyFailed(Exception):
    """A copy that failed on its way (its error already says why)."""
