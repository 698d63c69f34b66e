"""Retrying store calls that failed for a passing reason (throttling, a dropped connection).

One retry budget per operation (docs/reliability.md "One retry budget"): a store whose SDK retries
by itself (S3, GCS, Azure) marks the error it raises after those retries ``retried``, and
:func:`with_retries` does not try that call again; it retries what the SDK does not (the local
store, credentials that expired while renewed ones are on their way). Above the gateways, a job's
re-sent chunks draw on one :class:`RetryBudget`.
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


def with_retries(call: Callable[[], T], *, what: str, attempts: int = 5, base: float = 0.2, cap: float = 5.0,
                 on_retry: Callable[[], None] | None = None, stop: threading.Event | None = None) -> T:
    """``call()``, retried while it raises a *retryable* :class:`SkyplaneError` that its store's SDK
    has not already retried (``retried``).

    Waits grow exponentially from ``base`` up to ``cap`` seconds, with full jitter so that many
    workers throttled at once do not come back in lockstep, and are at least the store's
    ``retry_after``. The last error is re-raised; so is any non-retryable or already retried one at
    once. ``stop`` cuts the waiting short when the gateway shuts down.
    """
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except SkyplaneError as exc:
            if not exc.retryable or exc.retried or attempt == attempts:
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
