"""What a job's clients see: its state, progress and outcome (served by :mod:`.server`).

The pipeline updates one :class:`JobState`; the HTTP threads only read it. A finished job keeps its
outcome until a client fetched it (``fetched``) or the coordinator's linger time is over.
"""

from __future__ import annotations

import threading
from typing import Callable

from planner.errors import ConflictError, SkyplaneError

STATES = ("starting", "running", "succeeded", "failed", "cancelled")
FINAL = ("succeeded", "failed", "cancelled")


class JobState:
    """Thread-safe state of one job."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self._lock = threading.Lock()
        self._state = "starting"
        self._progress: dict = {}
        self._stats: dict | None = None
        self._error: dict | None = None
        #: Set by ``POST /job/cancel`` (and SIGTERM): the pipeline stops, aborts and tears down.
        self.cancel_requested = threading.Event()
        #: Set once a client read the outcome of a finished job.
        self.fetched = threading.Event()
        #: Set once the outcome went out to a client that said it is the job's only reader (the one that
        #: started the job and waited for it): the coordinator need not keep it any longer.
        self.last_read = threading.Event()
        #: Set when the job reached a final state.
        self.finished = threading.Event()
        self._credentials_sink: Callable[[dict], int] | None = None

    @property
    def state(self) -> str:
        with self._lock:
            return self._state

    def running(self) -> None:
        with self._lock:
            if self._state == "starting":
                self._state = "running"

    def progress(self, progress: dict) -> None:
        with self._lock:
            self._progress = progress

    def take_credentials(self, sink: Callable[[dict], int]) -> None:
        """Where ``POST /job/credentials`` hands renewed entries: the pipeline's
        ``Transfer.push_credentials`` (it answers how many gateways took them)."""
        with self._lock:
            self._credentials_sink = sink

    def push_credentials(self, entries: dict[str, dict]) -> int:
        """``POST /job/credentials``: hand ``entries`` to the job's gateways; how many took them.
        Raises :class:`ConflictError` when the job has ended, or nothing takes credentials yet."""
        with self._lock:
            sink, state = self._credentials_sink, self._state
        if state in FINAL or sink is None:
            raise ConflictError(f"job {self.job_id} is {state}: it takes no credentials"
                                + ("" if state in FINAL else " yet"),
                                hint="push renewed credentials while the job runs")
        return sink(entries)

    def succeed(self, stats: dict) -> None:
        self._finish("succeeded", stats=stats)

    def fail(self, exc: BaseException, *, failed_objects: list[dict] | None = None, cancelled: bool = False) -> None:
        error_type = type(exc).__name__ if isinstance(exc, SkyplaneError) else "TransferError"
        message = str(exc) if isinstance(exc, SkyplaneError) else f"the coordinator crashed: {exc!r}"
        self._finish("cancelled" if cancelled else "failed",
                     error={"error": message, "error_type": error_type, "failed_objects": failed_objects or []})

    def _finish(self, state: str, *, stats: dict | None = None, error: dict | None = None) -> None:
        with self._lock:
            if self._state in FINAL:
                return
            self._state, self._stats, self._error = state, stats, error
        self.finished.set()

    # -- what the HTTP API answers -------------------------------------------------------------
    def view(self) -> dict:
        """``GET /job``."""
        with self._lock:
            doc = {"job_id": self.job_id, "state": self._state, "progress": dict(self._progress)}
            if self._error is not None:
                doc.update(error=self._error["error"], error_type=self._error["error_type"])
            return doc

    def outcome(self) -> dict | None:
        """``GET /job/result``: the stats, or the error; None while the job runs."""
        with self._lock:
            if self._state not in FINAL:
                return None
            doc = dict(self._stats) if self._state == "succeeded" else dict(self._error)
        self.fetched.set()
        return doc

    def final_document(self) -> dict | None:
        """``{"state", "stats" | "error"...}`` of a finished job, for the job's directory."""
        with self._lock:
            if self._state not in FINAL:
                return None
            if self._state == "succeeded":
                return {"state": self._state, "stats": self._stats}
            return {"state": self._state, **self._error}
