"""Retrying store calls that failed for a passing reason (throttling, a dropped connection)."""

from __future__ import annotations

import logging
import random
import threading
from typing import Callable, TypeVar

from planner.errors import SkyplaneError

log = logging.getLogger(__name__)

T = TypeVar("T")


def with_retries(call: Callable[[], T], *, what: str, attempts: int = 5, base: float = 0.2, cap: float = 5.0,
                 on_retry: Callable[[], None] | None = None, stop: threading.Event | None = None) -> T:
    """``call()``, retried while it raises a *retryable* :class:`SkyplaneError`.

    Waits grow exponentially from ``base`` up to ``cap`` seconds, with full jitter so that many
    workers throttled at once do not come back in lockstep. The last error is re-raised; so is any
    non-retryable one at once. ``stop`` cuts the waiting short when the gateway shuts down.
    """
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except SkyplaneError as exc:
            if not exc.retryable or attempt == attempts:
                raise
            delay = random.uniform(0, min(cap, base * 2**attempt))
            log.info("%s failed (%s); retry %d of %d in %.2fs", what, exc, attempt, attempts - 1, delay)
            if on_retry:
                on_retry()
            if (stop or threading.Event()).wait(delay):
                raise  # shutting down
    raise AssertionError("unreachable")
