"""``SkyplaneTransferTrigger``: watches a transfer job's coordinator from the triggerer.

The job runs in its coordinator process (docs/coordinator.md), which owns the gateway fleet and
needs no client. The trigger holds only the job's handle (coordinator URL, API token, pinned
certificate) and polls ``GET /job`` with the async client, so it runs on whichever triggerer host
picks it up: no shared files, no shared process namespace. It fires ONE event, when the job ends, its
deadline passes or its coordinator stays unreachable, because the first event resumes the task. The
event carries the stats or the error, never the token.

Credentials that expire while the job runs (an assumed role's keys) are renewed here too: with
``renew`` (the transfer's store URIs and connection ids, never a secret), the trigger rebuilds the
connections' credential sources in the triggerer and pushes what they renew to the coordinator
(``POST /job/credentials``) every ``renew["every"]`` seconds (docs/credentials.md).

Cancellation follows Airflow's split: ``on_kill`` (a user marked the task failed/success or cleared
it) cancels the job, whose coordinator tears its fleet down; a plain ``CancelledError`` (triggerer
restart or rebalancing) leaves the job running, so the next triggerer picks it up where it was.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from planner.errors import CoordinatorError, SkyplaneError
from skyplane_provider.coordinator.client import CoordinatorClient
from skyplane_provider.transfer import Progress
from skyplane_provider.transfer.credential_sources import CredentialKeeper, CredentialSource
from skyplane_provider.transfer.handle import FINAL_STATES
from skyplane_provider.transfer.runner import RENEW_EVERY

#: Seconds the coordinator may stay unreachable before the trigger reports the job lost.
GONE_AFTER = 120.0


class SkyplaneTransferTrigger(BaseTrigger):
    """Fires ``{"status": "success", "stats"}``, ``{"status": "failed", "error", "error_type",
    "failed_objects"}`` or ``{"status": "timeout" | "lost", "job_id", "message"}``, once.

    :param handle: the job's :class:`~skyplane_provider.transfer.handle.TransferHandle` as a dict
        (a secret: Airflow stores trigger kwargs encrypted with its Fernet key).
    :param poll_interval: seconds between polls (and progress lines).
    :param deadline: epoch seconds after which the job is cancelled and ``timeout`` fires (unless it
        ended before the cancel reached it: then its own outcome does).
    :param renew: ``{"sides": [[uri, conn_id], ...] (source first), "every": seconds}``: the
        connections whose renewed credentials the trigger pushes to the job (None: none).
    """

    def __init__(self, handle: dict, poll_interval: float = 5.0, deadline: float | None = None,
                 renew: dict | None = None) -> None:
        super().__init__()
        self.handle = handle
        self.poll_interval = poll_interval
        self.deadline = deadline
        self.renew = renew

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (f"{type(self).__module__}.{type(self).__qualname__}",
                {"handle": self.handle, "poll_interval": self.poll_interval, "deadline": self.deadline,
                 "renew": self.renew})

    @property
    def job_id(self) -> str:
        return self.handle["job_id"]

    def client(self) -> CoordinatorClient:
        return CoordinatorClient(self.handle["url"], self.handle["token"], cert=self.handle.get("cert"))

    async def run(self) -> AsyncIterator[TriggerEvent]:
        client = self.client()
        unreachable_since: float | None = None
        keeper = await self._keeper(client)
        next_renewal = time.monotonic()
        while True:
            if keeper is not None and time.monotonic() >= next_renewal:
                await asyncio.to_thread(keeper.tick)  # the sources may ask STS: not on the event loop
                next_renewal = time.monotonic() + float(self.renew.get("every", RENEW_EVERY))
            # Poll after waiting, also the first time: an event fired right after the deferral can
            # reach the scheduler before the worker's exit does, and Airflow 3.3 then fails the
            # resumed task as "killed externally" (apache/airflow#67287, #72716).
            await asyncio.sleep(self.poll_interval)
            try:
                view = await client.job_async()
            except CoordinatorError as exc:
                unreachable_since = unreachable_since or time.monotonic()
                if time.monotonic() - unreachable_since < GONE_AFTER:
                    self.log.warning("job %s: %s", self.job_id, exc)
                    continue
                yield self._event("lost", f"the coordinator of job {self.job_id} is gone ({exc})")
                return
            unreachable_since = None
            if view.get("state") in FINAL_STATES:
                yield await self._outcome(client)
                return
            if view.get("progress"):
                self.log.info("job %s: %s", self.job_id, Progress.from_dict(view["progress"]).line())
            if self.deadline is not None and time.time() >= self.deadline:
                yield await self._cancel_at_deadline(client)
                return

    async def _keeper(self, client: CoordinatorClient) -> CredentialKeeper | None:
        """A keeper over the sources of ``renew``'s connections that renew anything, rebuilt here from
        the connection ids; None when there is none. A source that cannot be rebuilt is logged: the
        job goes on with the credentials it started with."""
        if not self.renew or not self.renew.get("sides"):
            return None
        from .hooks import SkyplaneHook

        sides = [(str(uri), conn_id) for uri, conn_id in self.renew["sides"]]
        hook = SkyplaneHook(src_conn_id=sides[0][1], dst_conn_id=[conn_id for _, conn_id in sides[1:]])
        try:
            sources = await asyncio.to_thread(hook.credential_sources, sides[0][0], [uri for uri, _ in sides[1:]])
        except Exception as exc:  # noqa: BLE001 - a connection gone or unusable here; the job goes on
            self.log.warning("job %s: cannot renew its credentials from the triggerer: %s", self.job_id, exc)
            return None
        renewing = [source for source in sources if type(source) is not CredentialSource]
        if not renewing:
            return None
        # started_with empty: the first tick hands the job the triggerer's own fresh entries.
        return CredentialKeeper(renewing, client.push_credentials, started_with={})

    async def _cancel_at_deadline(self, client: CoordinatorClient) -> TriggerEvent:
        """Cancel the job, then report how it ended: a job that finished (or failed on its own) while
        the cancel was on its way reports that, not a timeout; a user's nightly run that completed
        at the deadline must not fail its task."""
        self.log.warning("job %s passed its deadline: cancelling it", self.job_id)
        timeout = self._event("timeout", f"job {self.job_id} did not finish in time and was cancelled")
        try:
            await client.cancel_async()
            settle_by = time.monotonic() + GONE_AFTER
            while (state := (await client.job_async()).get("state")) not in FINAL_STATES:
                if time.monotonic() >= settle_by:
                    return timeout
                await asyncio.sleep(min(self.poll_interval, 1.0))
        except CoordinatorError as exc:
            self.log.warning("job %s: %s", self.job_id, exc)
            return timeout
        return timeout if state == "cancelled" else await self._outcome(client)

    async def _outcome(self, client: CoordinatorClient) -> TriggerEvent:
        try:
            stats = await client.result_async()
        except CoordinatorError as exc:
            return self._event("lost", str(exc))
        except SkyplaneError as exc:
            return TriggerEvent({"status": "failed", "job_id": self.job_id, "error": str(exc),
                                 "error_type": type(exc).__name__,
                                 "failed_objects": list(getattr(exc, "failed_objects", []))})
        return TriggerEvent({"status": "success", "job_id": self.job_id, "stats": stats})

    def _event(self, status: str, message: str) -> TriggerEvent:
        return TriggerEvent({"status": status, "job_id": self.job_id, "message": message})

    async def on_kill(self) -> None:
        """A user acted on the deferred task: stop the job (its coordinator tears the fleet down)."""
        self.log.info("cancelling job %s", self.job_id)
        try:
            await self.client().cancel_async()
        except CoordinatorError as exc:
            self.log.warning("job %s: %s", self.job_id, exc)
