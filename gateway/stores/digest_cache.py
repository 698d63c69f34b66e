"""MD5s of local files by file version, in memory and across runs in a small SQLite file.

A HEAD of a local file reports its MD5 (a verifier checks copies against it), and that means reading
every byte. A digest is valid exactly as long as its file is unchanged, so it is keyed by the file's
version (device, inode, size, mtime in ns): a file is read for its MD5 once, and a listing (which
reads no file) reports the MD5s this cache knows, so a nightly sync of a large, mostly unchanged tree
can compare checksums without reading it.

The file lives in ``$XDG_CACHE_HOME/skyplane/`` (default ``~/.cache/skyplane/``);
``SKYPLANE_DIGEST_CACHE`` names another file, or ``off``. It holds one row per file (about 100 bytes)
and starts afresh past :data:`MAX_ROWS`. It is a cache: any error with it turns it off for this
process, and only the in-memory part remains.
"""

from __future__ import annotations

import atexit
import logging
import os
import sqlite3
import threading
from pathlib import Path

log = logging.getLogger(__name__)

#: (st_dev, st_ino, st_size, st_mtime_ns)
Version = tuple[int, int, int, int]

MAX_ROWS = 2_000_000
MAX_IN_MEMORY = 100_000  # digests a process keeps at hand (about 20 MB at most)
_FLUSH_EVERY = 512  # new digests written in one transaction
_QUERY_INODES = 500  # files looked up in one query (SQLite takes 999 parameters at least)
_SCHEMA = ("CREATE TABLE IF NOT EXISTS md5 (dev INTEGER, ino INTEGER, size INTEGER, mtime_ns INTEGER, "
           "md5 TEXT, PRIMARY KEY (dev, ino))")


def version_of(st: os.stat_result) -> Version:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class DigestCache:
    """``get(version)`` / ``put(version, md5)``; thread-safe, shared by every local store of a process.
    ``path`` None keeps digests in memory only."""

    def __init__(self, path: Path | None) -> None:
        self._path = path
        self._conn: sqlite3.Connection | None = None
        self._memory: dict[Version, str] = {}
        self._pending: dict[Version, str] = {}  # in memory, not yet in the file
        self._lock = threading.Lock()

    def get(self, version: Version) -> str | None:
        with self._lock:
            if version in self._memory:
                return self._memory[version]
            conn = self._connect()
            if conn is None:
                return None
            try:
                row = conn.execute("SELECT md5 FROM md5 WHERE dev=? AND ino=? AND size=? AND mtime_ns=?",
                                   version).fetchone()
            except sqlite3.Error as exc:
                self._disable(exc)
                return None
            if row:
                self._remember(version, row[0])
        return row[0] if row else None

    def get_many(self, versions: list[Version]) -> dict[Version, str]:
        """The digests known of ``versions`` (a listing page's files): those not in memory in one
        query per :data:`_QUERY_INODES` files, not one each."""
        found: dict[Version, str] = {}
        with self._lock:
            missing = []
            for v in versions:
                md5 = self._memory.get(v)
                if md5 is None:
                    missing.append(v)
                else:
                    found[v] = md5
            conn = self._connect() if missing else None
            if conn is None:
                return found
            wanted = set(missing)
            try:
                for i in range(0, len(missing), _QUERY_INODES):
                    inodes = [v[1] for v in missing[i:i + _QUERY_INODES]]
                    rows = conn.execute("SELECT dev, ino, size, mtime_ns, md5 FROM md5 WHERE ino IN "
                                        f"({','.join('?' * len(inodes))})", inodes)
                    for *version, md5 in rows:
                        if tuple(version) in wanted:
                            found[tuple(version)] = md5
                            self._remember(tuple(version), md5)
            except sqlite3.Error as exc:
                self._disable(exc)
        return found

    def put(self, version: Version, md5: str) -> None:
        with self._lock:
            self._remember(version, md5)
            if self._path is None:
                return
            self._pending[version] = md5
            if len(self._pending) >= _FLUSH_EVERY:
                self._flush()

    def _remember(self, version: Version, md5: str) -> None:
        if len(self._memory) >= MAX_IN_MEMORY:
            self._memory.clear()
        self._memory[version] = md5

    def flush(self) -> None:
        with self._lock:
            self._flush()

    def _flush(self) -> None:
        conn = self._connect() if self._pending else None
        if conn is None:
            return
        rows = [(*v, md5) for v, md5 in self._pending.items()]
        try:
            with conn:
                conn.executemany("INSERT OR REPLACE INTO md5 VALUES (?, ?, ?, ?, ?)", rows)
            self._pending.clear()
        except sqlite3.Error as exc:
            self._disable(exc)

    def _connect(self) -> sqlite3.Connection | None:
        if self._conn is not None or self._path is None:
            return self._conn
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            conn = sqlite3.connect(self._path, timeout=5.0, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(_SCHEMA)
            if conn.execute("SELECT count(*) FROM md5").fetchone()[0] > MAX_ROWS:
                with conn:
                    conn.execute("DELETE FROM md5")
        except (OSError, sqlite3.Error) as exc:
            self._disable(exc)
            return None
        self._conn = conn
        return conn

    def _disable(self, exc: Exception) -> None:
        log.warning("local MD5 cache %s is off for this process: %s", self._path, exc)
        self._path, self._pending = None, {}
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _default_path() -> Path | None:
    setting = os.environ.get("SKYPLANE_DIGEST_CACHE")
    if setting == "off":
        return None
    if setting:
        return Path(setting)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "skyplane" / "local-md5.sqlite3"


_shared: DigestCache | None = None
_shared_lock = threading.Lock()


def shared_cache() -> DigestCache:
    """The process's cache (created on first use; its new digests are written at exit at the latest)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = DigestCache(_default_path())
            atexit.register(_shared.flush)
        return _shared
