"""The parts of a continued upload that a resumed job keeps: what the store holds and can vouch for.

A killed coordinator's manifest lags behind the store: the parts its gateways wrote in its last
commit interval are at the store but not recorded, and a recorded part may have been overwritten or
removed since. Where the destination declares :attr:`~gateway.stores.base.Capabilities.part_checksums`,
a resumed job lists the upload's parts (:meth:`~gateway.stores.base.ObjectStore.list_parts`) and
keeps a part when

- the manifest records it with the ETag the store lists (the store holds what was recorded), or
- it has the part's size and a checksum the store gave of it equals the same checksum of the
  source's byte range, read by the coordinator: it runs where the source is read (this host for a
  ``local`` job, the source region's gateway host for a remote fleet) with the source's credentials,
  so this costs a read of the source, never a WAN send.

Every other part (missing, of another size, damaged, overwritten, or without a checksum) is sent
again. A store without ``part_checksums`` is not asked: its recorded parts are kept as recorded.
"""

from __future__ import annotations

import logging

from gateway.stores.base import ObjectStore, PartInfo
from gateway.stores.common import Digest
from planner.errors import SkyplaneError

from .chunker import ObjectTask

log = logging.getLogger(__name__)

#: Bytes of the source read at a time for a range's checksum (memory stays this, whatever the part size).
READ_BLOCK = 8 * 1024 * 1024
#: Checksum kinds in the order they are preferred: CRC32C is computed in hardware, MD5 is not.
PREFERRED = ("crc32c", "md5")

#: A kept part: ``(etag, size, integrity)``, as :class:`~.manifest.RecordedUpload` holds parts.
Kept = tuple[str, int, str | None]


class SourceSums:
    """Checksums of byte ranges of one source object, each range read once whatever the number of
    destinations that ask for it."""

    def __init__(self, store: ObjectStore, key: str) -> None:
        self.store, self.key = store, key
        self._sums: dict[tuple[int, int, str], str] = {}

    def of(self, offset: int, length: int, kind: str) -> str:
        """The ``kind`` checksum of ``length`` bytes from ``offset``, in the stores' form."""
        found = self._sums.get((offset, length, kind))
        if found is None:
            digest, buf = Digest(kind), bytearray(min(READ_BLOCK, length))
            view, done = memoryview(buf), 0
            while done < length:
                n = self.store.read_into(self.key, offset + done, view[:min(len(buf), length - done)])
                if n <= 0:
                    break  # the source is shorter than listed: no part will match
                digest.update(view[:n])
                done += n
            found = self._sums[(offset, length, kind)] = digest.hexdigest() if done == length else ""
        return found


def kept_parts(obj: ObjectTask, key: str, upload_id: str, recorded: dict[int, Kept], store: ObjectStore,
               sums: SourceSums) -> dict[int, Kept]:
    """The parts of upload ``upload_id`` of ``key`` at ``store`` (a copy of ``obj``) that need not be
    sent again; ``recorded``: the parts the manifest records. Raises what ``list_parts`` raises
    (``NotFoundError``: the upload is gone)."""
    kinds = [k for k in PREFERRED if k in store.capabilities.part_checksums]
    if not kinds:
        return dict(recorded)
    # A part the manifest records is kept by its ETag: its checksum, a read of it on some stores, is
    # asked only for the others.
    unrecorded = [n for n, _, _ in obj.part_ranges() if n not in recorded]
    listed = {p.part_number: p for p in store.list_parts(key, upload_id, unrecorded)}
    kept: dict[int, Kept] = {}
    for number, offset, length in obj.part_ranges():
        part = listed.get(number)
        if part is None or part.size != length:
            continue
        mine = recorded.get(number)
        if mine is not None and mine[0] == part.etag:
            kept[number] = mine
            continue
        try:
            kind = _matching_kind(part, kinds, lambda k: sums.of(offset, length, k))
        except SkyplaneError as exc:
            log.warning("could not read the source's bytes of part %d of %s/%s: it is sent again (%s)", number,
                        store.root_uri, key, exc)
            continue
        if kind is not None:
            kept[number] = (part.etag, part.size, kind)
        else:
            log.info("part %d of the upload of %s/%s does not match the source's bytes (or has no checksum): "
                     "sent again", number, store.root_uri, key)
    return kept


def _matching_kind(part: PartInfo, kinds: list[str], source_sum) -> str | None:
    """The checksum kind by which ``part`` equals the source's range, or None."""
    for kind in kinds:
        theirs = getattr(part, kind)
        if theirs:
            return kind if theirs == source_sum(kind) else None
    return None
