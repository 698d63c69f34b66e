"""The job's durable record (SQLite in WAL mode): what a resumed job need not do again.

Three tables, written as the gateways' events arrive:

``copies``   every object copy done: source key, destination index and key, size, how it was verified;
``uploads``  every multipart upload begun and not yet completed: its id and part size;
``parts``    every part written of those uploads: number, etag, size, how its bytes were checked;

and ``meta``: the transfer's fingerprint and the request without its secrets (:meth:`Manifest.note`),
so that a copy of the manifest (:mod:`.statecopy`) says which job it belongs to.

A resumed job (same job id, same manifest) skips the copies recorded done, continues the recorded
uploads from their recorded parts, and copies the rest: what it redoes is at most what was in
flight. A committed write survives the coordinator being killed (WAL, ``synchronous=NORMAL``).
Each thread uses its own :class:`Manifest` (one SQLite connection each; see :meth:`another`).
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from planner.errors import BadOptionError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS copies (
    src_key TEXT NOT NULL, dest INTEGER NOT NULL, dest_key TEXT NOT NULL, size INTEGER NOT NULL,
    verified_by TEXT NOT NULL, PRIMARY KEY (src_key, dest)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS uploads (
    dest INTEGER NOT NULL, dest_key TEXT NOT NULL, src_key TEXT NOT NULL, upload_id TEXT NOT NULL,
    part_size INTEGER NOT NULL, PRIMARY KEY (dest, dest_key)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS parts (
    dest INTEGER NOT NULL, dest_key TEXT NOT NULL, part INTEGER NOT NULL, etag TEXT NOT NULL,
    size INTEGER NOT NULL, integrity TEXT, PRIMARY KEY (dest, dest_key, part)) WITHOUT ROWID;
"""


@dataclass(frozen=True)
class RecordedUpload:
    """A multipart upload a run began: continue it from ``parts`` (number -> (etag, size, integrity))."""

    dest: int
    dest_key: str
    src_key: str
    upload_id: str
    part_size: int
    parts: dict[int, tuple[str, int, str | None]]


#: Copies recorded and held in memory at most before they are written (uncommitted) to the database.
_HELD_COPIES = 4096


class Manifest:
    """One connection to a job's manifest. ``fingerprint`` names the transfer (source, destinations,
    ...): opening an existing manifest with another fingerprint raises ``BadOptionError``, so a job id
    is never resumed as a different transfer."""

    def __init__(self, path: Path | str, fingerprint: dict | None = None) -> None:
        self.path = Path(path)
        self._db = sqlite3.connect(self.path, timeout=60.0, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._copies: list[tuple[str, int, str, int, str]] = []  # recorded, not yet written (record_copy)
        if fingerprint is not None:
            self._check(fingerprint)

    def _check(self, fingerprint: dict) -> None:
        text = json.dumps(fingerprint, sort_keys=True)
        row = self._db.execute("SELECT value FROM meta WHERE name = 'fingerprint'").fetchone()
        if row is None:
            self._db.execute("INSERT INTO meta VALUES ('fingerprint', ?)", (text,))
            self._db.commit()
        elif row[0] != text:
            raise BadOptionError(f"the manifest {self.path} records another transfer ({row[0]}), not {text}",
                                 hint="resume a job with the request it was started with, or start a new job")

    def note(self, name: str, value: str) -> None:
        """Keep ``value`` under ``name`` beside the records (committed at once), e.g. the request
        without its secrets, which a resume on a host that never ran the job needs."""
        self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (name, value))
        self._db.commit()

    def noted(self, name: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return None if row is None else row[0]

    def another(self) -> "Manifest":
        """A second connection to the same manifest, for another thread."""
        return Manifest(self.path)

    @property
    def resumed(self) -> bool:
        """Whether an earlier run recorded anything."""
        self._write_copies()
        return self._db.execute("SELECT EXISTS (SELECT 1 FROM copies) OR EXISTS (SELECT 1 FROM uploads)").fetchone()[0]

    # -- writes (committed by commit(), except record_upload) ------------------------------------
    def record_upload(self, dest: int, dest_key: str, src_key: str, upload_id: str, part_size: int) -> None:
        """An upload was begun: committed at once, so a killed run's upload is never unknown."""
        self._db.execute("INSERT OR REPLACE INTO uploads VALUES (?, ?, ?, ?, ?)",
                         (dest, dest_key, src_key, upload_id, part_size))
        self._db.execute("DELETE FROM parts WHERE dest = ? AND dest_key = ?", (dest, dest_key))
        self._db.commit()

    def record_part(self, dest: int, dest_key: str, part: int, etag: str, size: int, integrity: str | None) -> None:
        self._db.execute("INSERT OR REPLACE INTO parts VALUES (?, ?, ?, ?, ?, ?)",
                         (dest, dest_key, part, etag, size, integrity))

    def record_copy(self, src_key: str, dest: int, dest_key: str, size: int, verified_by: str) -> None:
        """A copy is done (and verified); its upload, if any, is no longer in progress. Held until the
        next commit (or read), then written with the others: three statements per copy, each run on
        its own, were a tenth of the coordinator's CPU at 100,000 small objects."""
        self._copies.append((src_key, dest, dest_key, size, verified_by))
        if len(self._copies) >= _HELD_COPIES:
            self._write_copies()

    def _write_copies(self) -> None:
        if not self._copies:
            return
        rows, self._copies = self._copies, []
        self._db.executemany("INSERT OR REPLACE INTO copies VALUES (?, ?, ?, ?, ?)", rows)
        # Inside the write transaction the insert began (no other connection commits until ours
        # does), so this sees every upload and part recorded: with none (a job of small objects),
        # the two deletes per copy, half of the cost of recording it, are skipped.
        if self._db.execute("SELECT EXISTS (SELECT 1 FROM uploads) OR EXISTS (SELECT 1 FROM parts)").fetchone()[0]:
            keys = [(dest, dest_key) for _, dest, dest_key, _, _ in rows]
            self._db.executemany("DELETE FROM uploads WHERE dest = ? AND dest_key = ?", keys)
            self._db.executemany("DELETE FROM parts WHERE dest = ? AND dest_key = ?", keys)

    def forget_upload(self, dest: int, dest_key: str) -> None:
        """An upload was aborted."""
        self._write_copies()  # in the order they came
        self._drop_upload(dest, dest_key)

    def _drop_upload(self, dest: int, dest_key: str) -> None:
        self._db.execute("DELETE FROM uploads WHERE dest = ? AND dest_key = ?", (dest, dest_key))
        self._db.execute("DELETE FROM parts WHERE dest = ? AND dest_key = ?", (dest, dest_key))

    def commit(self) -> None:
        self._write_copies()
        self._db.commit()

    # -- reads -------------------------------------------------------------------------------------
    def done_between(self, first: str, last: str) -> set[tuple[str, int]]:
        """``(source key, destination)`` of the copies recorded done with ``first <= key <= last``
        (one listing page's range: memory stays a page)."""
        self._write_copies()
        rows = self._db.execute("SELECT src_key, dest FROM copies WHERE src_key BETWEEN ? AND ?", (first, last))
        return set(rows)

    def upload(self, dest: int, dest_key: str) -> RecordedUpload | None:
        self._write_copies()
        row = self._db.execute("SELECT src_key, upload_id, part_size FROM uploads WHERE dest = ? AND dest_key = ?",
                               (dest, dest_key)).fetchone()
        if row is None:
            return None
        parts = {n: (etag, size, integrity) for n, etag, size, integrity in self._db.execute(
            "SELECT part, etag, size, integrity FROM parts WHERE dest = ? AND dest_key = ?", (dest, dest_key))}
        return RecordedUpload(dest, dest_key, row[0], row[1], row[2], parts)

    def uploads(self) -> list[tuple[int, str, str]]:
        """``(destination, key, upload id)`` of every upload recorded in progress."""
        self._write_copies()
        return list(self._db.execute("SELECT dest, dest_key, upload_id FROM uploads ORDER BY dest, dest_key"))

    def copies_done(self) -> int:
        self._write_copies()
        return self._db.execute("SELECT COUNT(*) FROM copies").fetchone()[0]

    def close(self) -> None:
        self._db.close()  # held copies not committed are dropped, as uncommitted writes are
