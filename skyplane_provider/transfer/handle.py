"""The client's handle on a running transfer job (as s3transfer's ``TransferFuture``).

    handle = Transfer(request).start()       # returns at once
    handle.subscribe(on_progress)            # called with Progress from the handle's polling thread
    handle.cancel()                          # the coordinator aborts, tears down; result() then raises
    stats = handle.result()                  # TransferStats, or the job's SkyplaneError
    TransferHandle.from_dict(handle.to_dict())   # through XCom, to a trigger on another host

The handle holds only the coordinator's address and token: any process that can reach the
coordinator can watch or cancel the job. Progress is polled (``GET /job?wait=``, answered at once
when the job ends) by one daemon thread, started by the first :meth:`subscribe` or :meth:`result`;
subscribers are called from it.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from planner.errors import CoordinatorError, SkyplaneError
from skyplane_provider.coordinator.client import CoordinatorClient

from .credential_sources import CredentialKeeper, CredentialSource
from .stats import Progress, TransferStats

log = logging.getLogger(__name__)

#: Job states after which nothing changes any more.
FINAL_STATES = ("succeeded", "failed", "cancelled")


class TransferHandle:
    """One started job. ``gone_after``: seconds the coordinator may stay unreachable before the job
    counts as lost (its coordinator was killed: resume it)."""

    def __init__(self, job_id: str, url: str, token: str, cert: str | None = None, *,
                 poll_interval: float = 0.5, gone_after: float = 30.0) -> None:
        self.job_id = job_id
        self.url = url
        self._token, self._cert = token, cert
        self.client = CoordinatorClient(url, token, cert=cert)
        self.poll_interval, self.gone_after = poll_interval, gone_after
        self._subscribers: list[Callable[[Progress], None]] = []
        self._lock = threading.Lock()
        self._poller: threading.Thread | None = None
        self._done = threading.Event()
        self._lost: CoordinatorError | None = None
        self._last: dict | None = None
        self._keeper: CredentialKeeper | None = None

    def __repr__(self) -> str:  # never show the token
        return f"TransferHandle(job_id={self.job_id!r}, url={self.url!r})"

    # -- the future's interface ----------------------------------------------------------------------
    def subscribe(self, on_progress: Callable[[Progress], None]) -> None:
        """Call ``on_progress(Progress)`` whenever the job's progress changes, and once at its end."""
        with self._lock:
            self._subscribers.append(on_progress)
        self._poll_in_background()

    def cancel(self) -> None:
        """Ask the coordinator to stop the job (it aborts its uploads and tears its fleet down).
        A job that already ended, or whose coordinator is gone, is left as it is."""
        try:
            self.client.cancel()
        except CoordinatorError as exc:
            log.warning("job %s: could not ask for cancellation: %s", self.job_id, exc)

    def stop(self, grace: float) -> bool:
        """Cancel the job unless it ended, and wait up to ``grace`` seconds for its end (the fleet torn
        down); False if it had not ended by then. What a client does when its own run is interrupted."""
        if not self.done():
            self.cancel()
        if not self.wait(grace):
            return False
        try:  # fetch the outcome: the coordinator need not keep it for us any longer
            self.client.result()
        except SkyplaneError:
            pass
        return True

    def push_credentials(self, entries: dict[str, dict]) -> int:
        """Hand the job renewed entries of its credentials document; the coordinator passes them on
        to its gateways. Returns how many took them; raises ``CoordinatorError`` when the coordinator
        cannot be reached or refuses them."""
        return self.client.push_credentials(entries)

    def keep_credentials(self, sources: list[CredentialSource], started_with: dict[str, dict],
                         interval: float) -> None:
        """Run a :class:`CredentialKeeper` until the job ends: every ``interval`` seconds it asks
        ``sources`` and pushes what changed since ``started_with`` (docs/credentials.md)."""
        self._keeper = CredentialKeeper(sources, self.push_credentials, started_with=started_with,
                                        interval=interval).start()
        self._poll_in_background()  # its end stops the keeper

    def done(self) -> bool:
        """Whether the job ended (or its coordinator is gone); never blocks. The first call starts the
        handle's polling, so a caller that only asks ``done()`` in a loop sees the end too."""
        self._poll_in_background()
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the job ended (or its coordinator is gone); False if ``timeout`` passed first."""
        self._poll_in_background()
        return self._done.wait(timeout)

    def result(self, timeout: float | None = None, *, last: bool = False) -> TransferStats:
        """Wait for the job; its stats, or its error raised as the same ``SkyplaneError`` subclass.
        ``TimeoutError`` when ``timeout`` seconds pass first (the job goes on). ``last``: no one else
        watches the job (the caller started it and kept its handle to itself): its coordinator exits
        once this read its outcome, not 2 s later."""
        self._poll_in_background()
        if not self._done.wait(timeout):
            raise TimeoutError(f"job {self.job_id} did not finish within {timeout} s")
        if self._lost is not None:
            raise self._lost
        stats = self.client.result(last=last)
        if stats is None:  # cannot happen after a final state; say so rather than return nothing
            raise CoordinatorError(f"job {self.job_id} ended without a result")
        return TransferStats(**{k: v for k, v in stats.items() if k in TransferStats.__dataclass_fields__})

    # -- plain data, for XCom and triggers -------------------------------------------------------------
    def to_dict(self) -> dict:
        """``{"job_id", "url", "token", "cert"}`` (the token is a secret: keep the dict where secrets go)."""
        return {"job_id": self.job_id, "url": self.url, "token": self._token, "cert": self._cert}

    @classmethod
    def from_dict(cls, d: dict, **options) -> "TransferHandle":
        """The handle of :meth:`to_dict` (other keys of ``d`` are ignored)."""
        return cls(d["job_id"], d["url"], d["token"], d.get("cert"), **options)

    # -- polling ---------------------------------------------------------------------------------------
    def _poll_in_background(self) -> None:
        with self._lock:
            if self._poller is None:
                self._poller = threading.Thread(target=self._poll, name=f"handle-{self.job_id[:8]}", daemon=True)
                self._poller.start()

    def _poll(self) -> None:
        unreachable_since: float | None = None
        while True:
            asked = time.monotonic()
            try:
                # The coordinator answers at once when the job ends: its end is seen then, not at the next poll.
                view = self.client.job(wait=self.poll_interval)
                unreachable_since = None
            except CoordinatorError as exc:
                now = time.monotonic()
                unreachable_since = unreachable_since or now
                if now - unreachable_since > self.gone_after:
                    self._lost = CoordinatorError(
                        f"the coordinator of job {self.job_id} is gone ({exc})",
                        hint=f"resume the job: `skyplane-provider resume {self.job_id}`")
                    self._ended()
                    return
                time.sleep(self.poll_interval)
                continue
            final = view.get("state") in FINAL_STATES
            progress = view.get("progress")
            if progress and (progress != self._last or final):
                self._last = progress
                self._notify(Progress.from_dict(progress))
            if final:
                self._ended()
                return
            time.sleep(max(0.0, self.poll_interval - (time.monotonic() - asked)))  # a server that did not wait

    def _ended(self) -> None:
        if self._keeper is not None:
            self._keeper.stop()
        self._done.set()

    def _notify(self, progress: Progress) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
        for callback in subscribers:
            try:
                callback(progress)
            except Exception:  # noqa: BLE001 - a subscriber's bug must not stop the job's watch
                log.exception("job %s: progress subscriber %r failed", self.job_id, callback)
