"""Retrying store calls that failed for a passing reason (throttling, a dropped connection).

One retry budget per operation (docs/reliability.md "One retry budget"): a store whose SDK retries
by itself (S3, GCS, Azure) marks the error it raises after those retries ``retried``. A call that is
part of a chunk (``resent_above``: the coordinator sends the chunk again when it fails) is then not
tried again here; any other call (completing an upload, a HEAD, a server-side copy: nothing above
re-sends them) gets at most :data:`SDK_ROUNDS` rounds of the SDK's retries in all. What the SDK does
not retry (the local store, credentials that expired while renewed ones are on their way) is
retried here. Above the gateways, a job's re-sent chunks draw on one :class:`RetryBudget`.
"""

from __future__ import annotations

import logging
import random
import threading
from typing import Callable, TypeVar

from planner.errors import SkyplaneError

log = logging.getLogger(__name__)

T = TypeVar("T")

#: The longest ``Retry-After`` honoured, in seconds: a store asking for more is waited on by the
#: coordinator's re-send of the chunk instead of a gateway thread.
MAX_RETRY_AFTER = 30.0
#: Rounds of the SDK's own retries one call gets when nothing above re-sends it: S3's 4 attempts x 3
#: = 12 (a chunk's call: 4 x the coordinator's 4 dispatches = 16).
SDK_ROUNDS = 3


def with_retries(call: Callable[[], T], *, what: str, attempts: int = 5, base: float = 0.2, cap: float = 5.0,
                 on_retry: Callable[[], None] | None = None, stop: threading.Event | None = None,
                 resent_above: bool = False) -> T:
    """``call()``, retried while it raises a *retryable* :class:`SkyplaneError`, at most ``attempts``
    times; an error its store's SDK already retried (``retried``) counts as a round of
    :data:`SDK_ROUNDS`, and with ``resent_above`` (the call belongs to a chunk the coordinator
    re-sends) it is raised at once.

    Waits grow exponentially from ``base`` up to ``cap`` seconds, with full jitter so that many
    workers throttled at once do not come back in lockstep, and are at least the store's
    ``retry_after``. The last error is re-raised; so is any non-retryable one at once. ``stop`` cuts
    the waiting short when the gateway shuts down.
    """
    rounds = 0
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except SkyplaneError as exc:
            rounds += exc.retried
            spent = exc.retried and (resent_above or rounds >= SDK_ROUNDS)
            if not exc.retryable or spent or attempt == attempts:
                raise
            delay = max(random.uniform(0, min(cap, base * 2**attempt)), min(exc.retry_after or 0.0, MAX_RETRY_AFTER))
            log.info("%s failed (%s); retry %d of %d in %.2fs", what, exc, attempt, attempts - 1, delay)
            if on_retry:
                on_retry()
            if (stop or threading.Event()).wait(delay):
                raise  # shutting down
    raise AssertionError("unreachable")


class RetryBudget:
    """The re-sends one job may make in all (thread-safe): ``spend()`` takes one and says whether
    there was one left. Bounds the work a sick store or a failing fleet can make a job redo, on
    top of each chunk's own bound: the job then fails loudly instead of grinding on."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.spent = 0
        self._lock = threading.Lock()

    @classmethod
    def for_chunks(cls, chunks: int) -> "RetryBudget":
        """One re-send per chunk, and 64 more: a gateway that dies has every chunk it held sent
        again, and some of them fail once more on the way before the survivors are rewired (the
        chaos soak saw 32 re-sends for 18 chunks after one death)."""
        return cls(64 + chunks)

    def spend(self) -> bool:
        with self._lock:
            if self.spent >= self.total:
                return False
            self.spent += 1
            return True
