"""The steps of one chunk (its objects' reads, or writes) done by the worker that took the chunk and
by the workers of the same pool that are idle meanwhile.

Why: small objects travel many to a chunk (a bundle of up to 1,024: gateway/sizing.py), and a bundle's
reads are one GET each. Read by its own reader alone, the last bundles of a job kept 2-3 of a
gateway's 8 readers busy over the last 30-40% of a 20,000-object copy from moto, the others idle
(docs/benchmarks.md, "Scale"). Smaller bundles would cost a frame, a seal and an event each, and
were measured slower; idle readers helping cost nothing while every reader has a chunk of its own.
A bundle's writes are one request each too, and its writer is helped the same way.
"""

from __future__ import annotations

import threading
from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class SharedWork(Generic[T]):
    """``n`` independent steps, ``step(i)`` for i in 0..n-1, taken in order by whoever calls
    :meth:`help` or :meth:`finish`. A step's exception is its result: the others go on."""

    def __init__(self, n: int, step: Callable[[int], T]) -> None:
        self._n = n
        self._step: Callable[[int], T] | None = step  # dropped once every step is taken (it may hold buffers)
        self._next = 0  # the next step nobody took
        self._busy = 0  # steps taken and not finished
        self._results: list[T | Exception | None] = [None] * n
        self._cond = threading.Condition()

    def __len__(self) -> int:
        return self._n

    @property
    def open(self) -> bool:
        """Whether a step is left for a helper (read without the lock: a stale answer costs one
        :meth:`help` call that finds nothing, or a helper that does not come)."""
        return self._next < self._n

    def help(self) -> int:
        """Do steps until none is left to take; returns how many this call did."""
        done = 0
        while True:
            with self._cond:
                i = self._next
                if i >= self._n:
                    return done
                self._next = i + 1
                self._busy += 1
                step = self._step
                if self._next == self._n:
                    self._step = None  # a helper's stale handle on this work holds nothing of the chunk
            try:
                result: T | Exception = step(i)  # type: ignore[misc] - set until the last step is taken
            except Exception as exc:  # noqa: BLE001 - the step's own failure, reported by the owner
                result = exc
            done += 1
            with self._cond:
                self._results[i] = result
                del result  # the owner may hand the buffer on as soon as it is told: no reference left here
                self._busy -= 1
                if not self._busy:
                    self._cond.notify_all()

    def finish(self) -> list[T | Exception]:
        """Help until no step is left, wait for the steps helpers still do, and return every
        step's result (or exception), in order: handed over, this object keeps no reference to them
        (the buffer pool reuses a buffer only where nothing else refers to it)."""
        self.help()
        with self._cond:
            self._cond.wait_for(lambda: not self._busy)
            results, self._results = self._results, []
        return results  # type: ignore[return-value] - every step has finished
