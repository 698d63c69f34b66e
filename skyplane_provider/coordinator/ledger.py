"""What became of each object copy: the per-object report, the verification tally and the counts.

The listing thread (skipped copies, objects refused before they move) and the dispatch loop (copies
verified or failed) both write here, so every method takes one lock. Nothing per object is kept:
memory is the first few failures named for the job's error.
"""

from __future__ import annotations

import threading

from gateway.stores.base import ObjectInfo

from .finish import Verification
from .report import Report


class Ledger:
    """``dest_uris[i]``: destination ``i``'s URI, as report lines name it."""

    def __init__(self, report: Report, dest_uris: list[str]) -> None:
        self.report = report
        self.dest_uris = dest_uris
        self.verification = Verification()
        #: Objects whose every copy of this run was verified, and their bytes (each object once).
        self.objects_copied = 0
        self.bytes_copied = 0
        self.objects_failed = 0
        #: Source objects with nothing to copy (every destination up to date), and copies an earlier
        #: run of the job recorded done (a resumed job skips them without a report line).
        self.objects_skipped = 0
        self.resumed_copies = 0
        self._lock = threading.Lock()

    def copied(self, info: ObjectInfo, dest: int, dest_key: str, verified_by: str, *, count: bool = True) -> None:
        """A copy verified; ``count``: into this ledger's tally (server-side copies have their own)."""
        with self._lock:
            if count:
                self.verification.count(verified_by)
            self.report.add(key=info.key, dest=self.dest_uris[dest], dest_key=dest_key, status="copied",
                            size=info.size, verified_by=verified_by)

    def failed(self, info: ObjectInfo, dest: int, dest_key: str, error: str) -> None:
        with self._lock:
            self.report.add(key=info.key, dest=self.dest_uris[dest], dest_key=dest_key, status="failed",
                            size=info.size, error=error)

    def skipped(self, info: ObjectInfo, dest: int, dest_key: str) -> None:
        """A sync found this copy up to date."""
        with self._lock:
            self.report.add(key=info.key, dest=self.dest_uris[dest], dest_key=dest_key, status="skipped",
                            size=info.size)

    def object_done(self, info: ObjectInfo, ok: bool) -> None:
        """Every copy of this object of this run was settled (``ok``: all verified)."""
        with self._lock:
            if ok:
                self.objects_copied += 1
                self.bytes_copied += info.size
            else:
                self.objects_failed += 1

    def nothing_to_copy(self, resumed: int) -> None:
        """A source object none of whose copies moves: ``resumed`` of them an earlier run did."""
        with self._lock:
            self.resumed_copies += resumed
            self.objects_skipped += 1

    def resumed(self, copies: int) -> None:
        with self._lock:
            self.resumed_copies += copies

    def flush(self) -> None:
        """Write the report's buffered lines out: called before each manifest commit, so a copy the
        manifest records done has its line even when the process is killed right after."""
        with self._lock:
            self.report.flush()
