"""Calls to gateways that a cancel does not wait for.

A gateway that hangs (a frozen process, a host that stopped answering) holds every control call for
the client's whole timeout (10 s): the dispatch loop, polling each gateway's ``/status`` in turn, took
~28 s to see a cancel. :class:`StoppableCalls` runs each call on a thread of its own and waits for it
in short slices, looking at the job's stop event in between, so the cancel is seen within
:data:`CANCEL_CHECK` seconds whatever the gateways do; the call left behind ends on its own (at its
timeout, or at once when the teardown kills its gateway).
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, TypeVar

from planner.errors import TransferError

T = TypeVar("T")

#: Seconds between two looks at the stop event while a call is outstanding.
CANCEL_CHECK = 0.1


def cancelled() -> TransferError:
    """The error of a job stopped by a cancel."""
    return TransferError("transfer cancelled", hint="resume the job to finish what is missing")


class StoppableCalls:
    """``calls(fn, *args)``: ``fn(*args)``'s result, or :func:`cancelled` raised as soon as ``stop`` is
    set. Calls run one at a time, in the order made, on one worker thread. ``close()`` when done."""

    def __init__(self, stop: threading.Event, name: str = "gateway-calls") -> None:
        self.stop = stop
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    def __call__(self, fn: Callable[..., T], *args, **kwargs) -> T:
        if self.stop.is_set():
            raise cancelled()
        future = self._pool.submit(fn, *args, **kwargs)
        while not future.done():
            try:
                future.exception(timeout=CANCEL_CHECK)
            except TimeoutError:
                if self.stop.is_set():
                    raise cancelled() from None
        return future.result()

    def close(self) -> None:
        """Stop taking calls; one left behind by a cancel is not waited for."""
        self._pool.shutdown(wait=False, cancel_futures=True)
