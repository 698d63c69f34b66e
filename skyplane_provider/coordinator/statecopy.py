"""A copy of the job's manifest off the coordinator's host: ``<state_uri>/<job_id>/manifest.sqlite3``.

The manifest (:mod:`.manifest`) lives in the job's directory on the coordinator's host; when that
host is lost, so is what a resume needs. With the request option ``state_uri`` (any store URI:
``s3://bucket/state``, ``gs://...``, ``az://account/container/...``, ``file:///dir``) the coordinator
writes a consistent snapshot of it there through the store layer, as any object:

- while the job runs, every :data:`EVERY` seconds when something was committed since the last one
  (and at least ten times the last snapshot's duration apart, so a big manifest costs at most a
  tenth of the coordinator's time);
- once more when the job failed or was cancelled;
- and the object is deleted when the job succeeded, as the local manifest is.

A snapshot is SQLite's online backup of the live (WAL) database into a temp file, never a copy of
its files, which may be caught between a commit and a checkpoint. A snapshot that cannot be written
is logged as a warning and tried again next time: it never fails the job. A resumed job whose local
manifest is missing fetches the snapshot (:meth:`StateCopy.fetch`) and continues from it.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import tempfile
import threading
import time
from pathlib import Path

from gateway.stores import open_store
from gateway.stores.base import ObjectStore
from gateway.stores.uri import StoreURI, parse_uri
from planner.errors import BadOptionError, BadURIError, NotFoundError, SkyplaneError

log = logging.getLogger(__name__)

#: Seconds between two snapshots while the job runs (when the manifest changed in between).
EVERY = 2.0
#: A snapshot waits at least this many times the last one's duration after it.
SLOWDOWN = 10.0
NAME = "manifest.sqlite3"
_HINT = "give a store URI such as s3://bucket/skyplane-state, gs://bucket/state, az://account/container/state " \
        "or file:///dir, whose bucket (container, directory) exists"


def parse_state_uri(text: object) -> StoreURI:
    """The parsed ``state_uri``; ``BadURIError`` (with a hint) when it names no store."""
    if not isinstance(text, str):
        raise BadURIError(f"state_uri must be a URI, not {text!r}", hint=_HINT)
    try:
        return parse_uri(text)
    except BadURIError as exc:
        raise BadURIError(f"state_uri: {exc.message}", hint=exc.hint or _HINT) from None


class StateCopy:
    """The snapshot of one job's manifest (at ``manifest_path``) in the store at ``state_uri``."""

    def __init__(self, state_uri: str, job_id: str, manifest_path: Path, credentials: dict | None) -> None:
        uri = parse_state_uri(state_uri)
        # A local directory is the store's root itself (as a transfer's local endpoints open it), so
        # that a missing directory is found by check() as a missing bucket is.
        root, prefix = ("file://" + (uri.path.rstrip("/") or "/"), "") if uri.scheme == "file" \
            else (uri.root_uri, uri.path)
        self.store: ObjectStore = open_store(root, credentials)
        self.key = "/".join(p for p in (prefix.strip("/"), job_id, NAME) if p)
        self.where = f"{self.store.root_uri.rstrip('/')}/{self.key}"
        self.manifest_path = Path(manifest_path)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._db: sqlite3.Connection | None = None  # one connection: its data_version tells commits apart
        self._written_version: int | None = None

    def check(self) -> None:
        """Raise before the job starts when the state's store cannot be used (a missing bucket, no access)."""
        try:
            self.store.check()
        except NotFoundError as exc:
            raise NotFoundError(f"state_uri: {exc.message}", hint="create the bucket (container, directory) first, or "
                                                          "name one that exists") from None
        except SkyplaneError as exc:
            raise _named(exc) from None

    # -- while the job runs ----------------------------------------------------------------------
    def start(self) -> "StateCopy":
        """Write a snapshot now (the job's fingerprint and request are in it from the start), then
        every few seconds in a thread until :meth:`stop`."""
        self._thread = threading.Thread(target=self._loop, name="state-copy", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        wait = 0.0
        while not self._stop.wait(wait):
            started = time.monotonic()
            self.upload()
            wait = max(EVERY, SLOWDOWN * (time.monotonic() - started))

    def stop(self) -> None:
        """Stop the periodic snapshots (a snapshot under way is finished first)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def upload(self) -> bool:
        """Write a snapshot of the manifest if it changed since the last one written; False (and a
        warning) when that failed: the next call tries again."""
        try:
            with tempfile.TemporaryDirectory(dir=self.manifest_path.parent, prefix=".state-") as tmp:
                version = self._backup(Path(tmp) / NAME)
                if version is None:
                    return True
                data = (Path(tmp) / NAME).read_bytes()
            self.store.write(self.key, data)
        except Exception as exc:  # noqa: BLE001 - a snapshot never fails the job, nor hides its error
            log.warning("could not write the manifest's snapshot to %s (the next snapshot tries again): %s: %s",
                        self.where, type(exc).__name__, exc)
            return False
        self._written_version = version
        log.debug("manifest snapshot (%d bytes) written to %s", len(data), self.where)
        return True

    def _backup(self, target: Path) -> int | None:
        """Back the manifest up into ``target`` (a plain rollback-journal file, complete in itself);
        None when nothing was committed since the last snapshot written."""
        if self._db is None:
            self._db = sqlite3.connect(self.manifest_path, timeout=60.0, check_same_thread=False)
        # data_version changes whenever another connection committed to the file (WAL commits too).
        version = self._db.execute("PRAGMA data_version").fetchone()[0]
        if version == self._written_version:
            return None
        copy = sqlite3.connect(target)
        try:
            self._db.backup(copy)
            copy.execute("PRAGMA journal_mode=DELETE")  # the copy carries the WAL flag: fold the copy in
        finally:
            copy.close()
        return version

    def close(self) -> None:
        """Stop the snapshots and let go of the manifest."""
        self.stop()
        if self._db is not None:
            self._db.close()
            self._db = None

    # -- after the job -----------------------------------------------------------------------------
    def delete(self) -> None:
        """The job succeeded: nothing is left to resume (a failure to delete is only logged)."""
        try:
            self.store.delete(self.key)
        except SkyplaneError as exc:
            log.warning("could not delete the manifest's snapshot %s: %s", self.where, exc)

    # -- a resumed job on another host ---------------------------------------------------------
    def fetch(self) -> bool:
        """Put the snapshot where the job's manifest goes (it is missing there); False when there is
        none. Other errors of the store raise: a resume must not silently start from nothing."""
        try:
            data = self.store.read(self.key)
        except NotFoundError:
            return False
        except SkyplaneError as exc:
            raise _named(exc) from None
        self.manifest_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = self.manifest_path.with_name(f".{NAME}.{os.getpid()}.fetched")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        try:
            with sqlite3.connect(tmp) as db:
                db.execute("PRAGMA quick_check").fetchone()
        except sqlite3.Error as exc:
            tmp.unlink(missing_ok=True)
            raise BadOptionError(f"the manifest's snapshot {self.where} is not a database ({exc})",
                                 hint="delete it to start the job afresh, or name the state_uri it was written "
                                      "to") from None
        os.replace(tmp, self.manifest_path)
        log.info("fetched the manifest's snapshot from %s (%d bytes)", self.where, len(data))
        return True


def _named(exc: SkyplaneError) -> SkyplaneError:
    """The store's error, of the same class, saying it came from the state_uri."""
    return type(exc)(f"state_uri: {exc.message}", hint=exc.hint)
