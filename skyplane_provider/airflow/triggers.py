"""``SkyplaneTransferTrigger``: watches a detached transfer job from the triggerer.

The job (:mod:`skyplane_provider.transfer.jobs`) runs in its own process and owns the gateway
fleet; the trigger only reads its status file, off the event loop, and logs progress. It fires ONE
event, when the job ends (or its deadline passes), because the first event resumes the task.

Cancellation follows Airflow's split: ``on_kill`` (a user marked the task failed/success or cleared
it) cancels the job, which tears its fleet down; a plain ``CancelledError`` (triggerer restart or
rebalancing) leaves the job running, so the next triggerer picks it up where it was.

Worker and triggerer must share the host (or ``SKYPLANE_HOME`` and the process namespace): the job
is found by its directory and pid.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from skyplane_provider.transfer import Progress
from skyplane_provider.transfer.jobs import JobHandle, cancel_job, job_status


class SkyplaneTransferTrigger(BaseTrigger):
    """Fires ``{"status": "success" | "failed" | "timeout", "job": handle, "message": ...}`` once.

    :param job: the :class:`~skyplane_provider.transfer.jobs.JobHandle` as a dict.
    :param poll_interval: seconds between status reads (and progress lines).
    :param deadline: epoch seconds after which the job is cancelled and ``timeout`` fires.
    """

    def __init__(self, job: dict, poll_interval: float = 5.0, deadline: float | None = None) -> None:
        super().__init__()
        self.job = job
        self.poll_interval = poll_interval
        self.deadline = deadline

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (f"{type(self).__module__}.{type(self).__qualname__}",
                {"job": self.job, "poll_interval": self.poll_interval, "deadline": self.deadline})

    @property
    def handle(self) -> JobHandle:
        return JobHandle.from_dict(self.job)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        handle = self.handle
        while True:
            # Read after waiting, also the first time: an event fired right after the deferral can
            # reach the scheduler before the worker's exit does, and Airflow 3.3 then fails the
            # resumed task as "killed externally" (apache/airflow#67287, #72716).
            await asyncio.sleep(self.poll_interval)
            doc = await asyncio.to_thread(job_status, handle)
            state = doc.get("state")
            if state == "success":
                yield TriggerEvent({"status": "success", "job": self.job, "message": "transfer finished"})
                return
            if state == "failed":
                yield TriggerEvent({"status": "failed", "job": self.job,
                                    "message": doc.get("error", "transfer failed")})
                return
            if doc.get("progress"):
                self.log.info("job %s: %s", handle.job_id, Progress(**_fields(doc["progress"])).line())
            if self.deadline is not None and time.time() >= self.deadline:
                self.log.warning("job %s passed its deadline: cancelling it", handle.job_id)
                await asyncio.to_thread(cancel_job, handle)
                yield TriggerEvent({"status": "timeout", "job": self.job,
                                    "message": f"job {handle.job_id} did not finish in time and was cancelled"})
                return

    async def on_kill(self) -> None:
        """A user acted on the deferred task: stop the job (its runner tears the fleet down)."""
        self.log.info("cancelling job %s", self.handle.job_id)
        await asyncio.to_thread(cancel_job, self.handle)


def _fields(progress: dict) -> dict:
    """``Progress.to_dict()`` also carries derived values; keep the constructor's fields."""
    return {k: progress[k] for k in Progress.__dataclass_fields__ if k in progress}
