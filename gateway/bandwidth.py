"""A job's bandwidth cap (``bwlimit``): pacing where bytes leave a gateway, and sharing one region's cap.

The cap is per region: all gateways of a region together send at most ``bwlimit`` bytes per second
(frames to next-hop regions; a gateway that reads and writes a chunk itself, never framing it, paces
its writes instead). Each gateway paces its share with a :class:`Pacer`; a multi-worker host splits its
gateway's share over its workers. Shares are not fixed: every period the sharer (the coordinator
across a region's gateways, the supervisor across a host's workers) reads what each member sent and
how long its sends waited for its pacer, and calls :func:`share_out`:

- a member that waited for its pacer (*held back*) asks for more; its share is unbounded demand;
- any other member (idle, or slower than its share) keeps what it sent plus a quarter, and at least a
  fiftieth of an equal share, so that it can start sending at once and be seen to be held back;
- the cap is divided max-min fairly over these demands (water-filling), and what nobody asked for is
  spread equally, so the shares always add up to the cap.

So when one of two gateways falls idle, the busy one gets 99% of the cap within a
period or two, and an idle member that starts again gets an equal share back after one period. Only
the *sum* of the shares is the cap at every moment; a member's burst is at most :data:`BURST_SECONDS`
of its share.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from planner.errors import BadOptionError

#: Bytes a member may send at once after a pause: this much time at its rate (at least MIN_BURST).
BURST_SECONDS = 0.05
MIN_BURST = 64 * 1024
#: A member whose sends waited for its pacer this share of a period is held back (wants more).
HELD_BACK = 0.05
#: What a member that is not held back keeps beyond what it sent, and its least share (of an equal one).
HEADROOM = 1.25
#: The floor is what idle members hold back from the busy ones, and it compounds: a region of
#: gateways, each a host of workers, used to lose a tenth twice (a job moved at 90% of its cap on
#: the testbed, tests/test_bwlimit_testbed.py). A fiftieth still lets an idle member send its first
#: burst (MIN_BURST) at once, which is what shows that it is held back.
FLOOR = 0.02


def check_rate(value: object, what: str = "bwlimit") -> float | None:
    """A rate in bytes per second (a positive finite number), or None for no cap."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise BadOptionError(f"{what} must be a positive number of bytes per second or null, got {value!r}")
    return float(value)


class Pacer:
    """Lets bytes go at most at ``rate`` bytes per second (a token bucket); thread-safe.

    Senders ask :meth:`take` before each send and :meth:`give_back` what they could not send. With no
    rate every request is granted at once (and still counted). ``sent`` counts the bytes granted,
    ``held_seconds`` the time during which at least one caller waited for the bucket.
    """

    def __init__(self, rate: float | None = None, *, clock=time.monotonic) -> None:
        self._clock = clock
        self._cond = threading.Condition()
        self._rate = check_rate(rate)
        self._tokens = self._burst()
        self._stamp = clock()
        self._waiting = 0
        self._held_since = 0.0
        self._held = 0.0
        self._sent = 0

    @property
    def rate(self) -> float | None:
        return self._rate

    def set_rate(self, rate: float | None) -> None:
        """A new share (None: no cap); waiting senders see it at once."""
        rate = check_rate(rate)
        with self._cond:
            self._refill()
            self._rate = rate
            self._tokens = min(self._tokens, self._burst())
            self._cond.notify_all()

    def take(self, want: int, *, stop: threading.Event | None = None) -> int:
        """Wait until bytes may go, then grant up to ``want`` of them (at most one burst); returns how
        many. Returns 0 only when ``stop`` is set while waiting."""
        if want <= 0:
            return 0
        with self._cond:
            while True:
                self._refill()
                if self._rate is None:
                    self._sent += want
                    return want
                # Wait for half a burst (or all of a smaller request): no trickle of tiny sends.
                need = min(want, self._burst() / 2)
                if self._tokens >= need:
                    grant = min(want, max(1, int(self._tokens)))
                    self._tokens -= grant
                    self._sent += grant
                    return grant
                if stop is not None and stop.is_set():
                    return 0
                self._wait((need - self._tokens) / self._rate)

    def take_all(self, n: int, *, stop: threading.Event | None = None) -> bool:
        """Wait until all ``n`` bytes may go (in bursts); False if ``stop`` was set meanwhile."""
        while n > 0:
            got = self.take(n, stop=stop)
            if not got:
                return False
            n -= got
        return True

    def give_back(self, n: int) -> None:
        """Return bytes granted but not sent (a partial send)."""
        if n <= 0:
            return
        with self._cond:
            self._sent -= n
            if self._rate is not None:
                self._tokens = min(self._tokens + n, self._burst())
            self._cond.notify_all()

    def usage(self) -> tuple[int, float]:
        """``(bytes sent, seconds held back)`` since the pacer was made."""
        with self._cond:
            held = self._held + (self._clock() - self._held_since if self._waiting else 0.0)
            return self._sent, held

    # -- inside the lock ------------------------------------------------------------------------
    def _burst(self) -> float:
        return 0.0 if self._rate is None else max(MIN_BURST, self._rate * BURST_SECONDS)

    def _refill(self) -> None:
        now = self._clock()
        if self._rate is not None:
            self._tokens = min(self._burst(), self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now

    def _wait(self, seconds: float) -> None:
        if self._waiting == 0:
            self._held_since = self._clock()
        self._waiting += 1
        try:
            self._cond.wait(min(max(seconds, 0.001), 0.5))
        finally:
            self._waiting -= 1
            if self._waiting == 0:
                self._held += self._clock() - self._held_since


@dataclass(frozen=True)
class Usage:
    """What one member did in the last period: bytes per second sent, and the share of the period
    its sends waited for its pacer."""

    rate: float
    held: float


def share_out(total: float, members: Sequence[Usage]) -> list[float]:
    """Split the cap ``total`` over ``members`` (see the module docstring); the shares add up to it."""
    n = len(members)
    if n == 0:
        return []
    equal = total / n
    demands = [math.inf if m.held >= HELD_BACK else max(FLOOR * equal, HEADROOM * m.rate) for m in members]
    shares = [0.0] * n
    left, remaining = n, total
    for i in sorted(range(n), key=lambda i: demands[i]):
        shares[i] = min(demands[i], remaining / left)
        remaining -= shares[i]
        left -= 1
    return [s + remaining / n for s in shares]


class Sharer:
    """Re-splits a cap over members every period from their pacers' counters (``sent``, ``held``).

    :meth:`update` takes each member's cumulative ``(bytes sent, seconds held back)`` and returns the
    new shares (None until a period has passed since the last split).
    """

    def __init__(self, total: float, period: float, *, clock=time.monotonic) -> None:
        self.total = check_rate(total)
        self.period = period
        self._clock = clock
        self._last: dict[str, tuple[int, float]] = {}
        self._at = clock()

    def update(self, counters: dict[str, tuple[int, float]]) -> dict[str, float] | None:
        now = self._clock()
        elapsed = now - self._at
        if elapsed < self.period or not counters:
            return None
        usage = {}
        for name, (sent, held) in counters.items():
            before_sent, before_held = self._last.get(name, (sent, held))
            usage[name] = Usage(rate=max(0, sent - before_sent) / elapsed,
                                held=max(0.0, held - before_held) / elapsed)
        self._last, self._at = dict(counters), now
        names = sorted(usage)
        return dict(zip(names, share_out(self.total, [usage[n] for n in names])))


def pacing_counters(pacer: Pacer) -> dict[str, float]:
    """What ``GET /status`` reports of a pacer: ``bwlimit`` (its rate, 0 without a cap),
    ``paced_bytes`` and ``paced_held_seconds`` (see :meth:`Pacer.usage`). Summed over a host's
    workers, they are the gateway's."""
    sent, held = pacer.usage()
    return {"bwlimit": pacer.rate or 0, "paced_bytes": sent, "paced_held_seconds": round(held, 3)}
