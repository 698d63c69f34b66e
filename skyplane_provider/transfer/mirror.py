"""Mirror (``sync`` with ``delete``): the destination objects the source no longer has, and their removal.

As rclone's ``sync`` (``--delete-after``, its default): deletions are found while the run is prepared,
counted against ``max_delete`` before anything moves, and carried out only after every copy of the
run has been verified, so a failed run deletes nothing. The filters apply to the destination too:
an object their rules or bounds leave out is never deleted. Unlike rclone, an object is also kept
when its source still exists but was left out by a size or age bound (rclone deletes such a copy):
a mirror removes what the source no longer has, nothing else.
"""

from __future__ import annotations

import logging
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from gateway.retry import with_retries
from gateway.stores.base import ObjectInfo
from planner.errors import DeleteLimitError, SkyplaneError, TransferError
from skyplane_provider.filters import Filter

from .endpoints import Destination

log = logging.getLogger(__name__)

_WORKERS = 8  # deletions at once: each is one small request
PROBE_NAME = ".skyplane-delete-probe-"


@dataclass(frozen=True)
class Deletion:
    """One destination object to remove."""

    dest_index: int
    key: str
    size: int


class DestOnly:
    """Gathers a mirror's deletions from the objects a destination holds and the source does not:
    call it with ``(destination index, object)`` for each (the ``on_dest_only`` callback of the sync
    diff, :func:`skyplane_provider.coordinator.listing.diff`); it keeps those the filters take.
    The source side must hold every object the filters' rules take, even one a size or age bound
    leaves out, so that such an object's copy is not taken for extraneous."""

    def __init__(self, dests: list[Destination], filters: Filter) -> None:
        self.dests, self.filters = dests, filters
        self.deletions: list[Deletion] = []

    def __call__(self, dest_index: int, info: ObjectInfo) -> None:
        rel = info.key[len(self.dests[dest_index].base):]
        if not info.key.endswith("/") and self.filters.takes(info, rel):
            self.deletions.append(Deletion(dest_index, info.key, info.size))


def check_limit(deletions: list[Deletion], max_delete: int | None) -> None:
    """Refuse a run that would delete more than ``max_delete`` objects (before anything moves)."""
    if max_delete is not None and len(deletions) > max_delete:
        raise DeleteLimitError(
            f"the sync would delete {len(deletions)} destination objects, more than max_delete {max_delete}; "
            "nothing was copied or deleted",
            hint="check the source and the filters with --dry-run, then raise --max-delete (max_delete=) "
                 "or drop it")


def probe_delete(dest: Destination) -> None:
    """Check that the destination's credentials may delete, with one request that deletes nothing:
    a delete of a key that does not exist (the stores answer it as a success, or refuse it)."""
    key = dest.base + PROBE_NAME + uuid.uuid4().hex
    with_retries(lambda: dest.store.delete(key), what=f"delete probe in {dest.uri}")


def delete_all(deletions: list[Deletion], dests: list[Destination]) -> int:
    """Delete every object of ``deletions``; how many. A failure raises ``TransferError`` after the
    other deletions have run, saying how to finish (the copies are complete and verified)."""
    if not deletions:
        return 0

    def one(d: Deletion) -> SkyplaneError | None:
        dest = dests[d.dest_index]
        try:
            with_retries(lambda: dest.store.delete(d.key), what=f"delete of {d.key} in {dest.uri}")
        except SkyplaneError as exc:
            return exc
        log.info("deleted %s/%s (not in the source)", dest.store.root_uri, d.key)
        return None

    with ThreadPoolExecutor(min(_WORKERS, len(deletions))) as pool:
        failures = [(d, e) for d, e in zip(deletions, pool.map(one, deletions)) if e is not None]
    if failures:
        d, exc = failures[0]
        raise TransferError(f"{len(failures)} of {len(deletions)} deletions failed, e.g. {d.key} in "
                            f"{dests[d.dest_index].uri}: {exc}",
                            hint="every copy is complete and verified; fix the cause and run the sync --delete "
                                 "again to finish the deletions") from exc
    return len(deletions)
