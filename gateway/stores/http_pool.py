"""What the stores that speak HTTP themselves (``gcs_api``, ``s3_api``, ``azure_api``; no SDK between them and
urllib3) share:
one pool manager per endpoint with the environment's proxy and CA bundle, the one retry loop of a
call (docs/reliability.md "One retry budget") and a client-wide rate limiter for throttling stores."""

from __future__ import annotations

import http.client
import os
import random
import threading
import time
import urllib.parse
from typing import Any, Callable, TypeVar

import urllib3

from .common import POOL_SIZE, env_ca_bundle

T = TypeVar("T")

#: Errors of a request that never got an answer, or whose answer was cut off: retried, then "unavailable".
CONNECTION_ERRORS = (urllib3.exceptions.HTTPError, http.client.HTTPException, ConnectionError, TimeoutError)


class Backoff:
    """The one retry of a store call: attempts for at most ``deadline`` seconds and, if ``attempts`` is
    set, at most that many times; waits drawn from 0 to ``initial`` doubling to ``maximum``
    (google-api-core's ``Retry``, and botocore's standard backoff with ``initial`` 1 and ``maximum`` 20;
    no attempt starts past the deadline). ``retryable`` says which errors are tried again; any other,
    and the last, is raised. ``wait(n)``, where a store's SDK had a schedule of its own (Azure's
    ``ExponentialRetry``), is the wait before the ``n``-th retry instead of the doubling one.
    ``wait_at_least`` gives an error's own minimum wait (a ``Retry-After``), honoured up to
    ``maximum``. Nothing above the store retries the call again, only the coordinator re-sends a
    failed chunk."""

    def __init__(self, retryable: Callable[[BaseException], bool], deadline: float = 10.0, initial: float = 0.5,
                 multiplier: float = 2.0, maximum: float = 4.0, *, attempts: int | None = None,
                 wait: Callable[[int], float] | None = None,
                 wait_at_least: Callable[[BaseException], float | None] | None = None) -> None:
        self.retryable, self.wait, self.wait_at_least = retryable, wait, wait_at_least
        self.deadline, self.initial, self.multiplier, self.maximum = deadline, initial, multiplier, maximum
        self.attempts = attempts

    def __call__(self, attempt: Callable[[], T]) -> T:
        end = time.monotonic() + self.deadline
        delay = min(self.initial, self.maximum)
        made = 0
        while True:
            try:
                return attempt()
            except Exception as exc:
                made += 1
                if not self.retryable(exc) or (self.attempts is not None and made >= self.attempts):
                    raise
                wait = self.wait(made) if self.wait is not None else random.uniform(0.0, delay)
                if self.wait_at_least is not None:
                    wait = max(wait, min(self.wait_at_least(exc) or 0.0, self.maximum))
                if time.monotonic() + wait > end:
                    raise
                time.sleep(wait)
                delay = min(delay * self.multiplier, self.maximum)


class RateLimiter:
    """A client-wide limit on the rate of requests once the store throttles them (what botocore's
    *adaptive* retry mode does, simpler): unlimited until :meth:`throttled`, then the rate sent so far
    times 0.7, cut by 0.7 again at each further throttled answer, and raised by 5% at each answer that
    was not, until it is twice the rate it was first cut from: then unlimited again. Unlimited, a
    request costs one attribute read and a counter; thread-safe."""

    _WINDOW = 0.5  # seconds over which the rate sent is measured
    _CUT = 0.7
    _MIN_RATE = 0.5  # requests per second: never slower

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.rate: float | None = None  # requests per second allowed; None: no limit
        self._ceiling = 0.0
        self._next = 0.0  # when the next limited request may go
        self._window_start, self._count, self._measured = time.monotonic(), 0, 0.0

    def acquire(self) -> None:
        """Before a request: count it, and wait for its turn while the rate is limited."""
        self._count += 1  # not under the lock: a lost count only blurs the measure
        now = time.monotonic()
        if now - self._window_start >= self._WINDOW:
            self._measured = self._count / (now - self._window_start)
            self._window_start, self._count = now, 0
        if self.rate is None:
            return
        with self._lock:
            if self.rate is None:
                return
            wait = self._next - now
            self._next = max(now, self._next) + 1.0 / self.rate
        if wait > 0:
            time.sleep(wait)

    def throttled(self) -> None:
        """The store throttled a request: slow this client down."""
        with self._lock:
            if self.rate is None:
                since = time.monotonic() - self._window_start
                sent = max(self._measured, self._count / since if since > 0.05 else 0.0, self._MIN_RATE)
                self._ceiling, self.rate = 2 * sent, max(self._MIN_RATE, sent * self._CUT)
            else:
                self.rate = max(self._MIN_RATE, self.rate * self._CUT)

    def succeeded(self) -> None:
        """An answer that was not throttling: let the rate grow back."""
        if self.rate is None:
            return
        with self._lock:
            if self.rate is not None:
                self.rate *= 1.05
                if self.rate >= self._ceiling:
                    self.rate = None


def pool_manager(base: str, ca_certs: str | None = None) -> urllib3.PoolManager:
    """Room for ``POOL_SIZE`` connections to the endpoint ``base``, with the environment's proxy and CA
    bundle as ``requests`` (the SDKs' transport) would have found them for it: read once, here, never
    per request (requests read them on every request: 31% of a gateway's CPU per small object
    written to GCS once). ``ca_certs``: the CA bundle the client's own SDK
    was told to use instead (botocore's ``AWS_CA_BUNDLE``), which then wins."""
    kwargs: dict[str, Any] = {"num_pools": 4, "maxsize": POOL_SIZE, "block": False}
    if base.startswith("https:"):
        kwargs["ca_certs"] = ca_certs or env_ca_bundle() or _certifi_bundle()
    if any(name.lower().endswith("_proxy") for name in os.environ):
        import urllib.request

        host = urllib.parse.urlsplit(base).hostname or ""
        proxies = urllib.request.getproxies_environment()
        proxy = None if urllib.request.proxy_bypass_environment(host) else (
            proxies.get(base.split(":", 1)[0]) or proxies.get("all"))
        if proxy:
            return urllib3.ProxyManager(proxy, **kwargs)
    return urllib3.PoolManager(**kwargs)


def _certifi_bundle() -> str | None:
    """requests' CA bundle (certifi's), which the SDKs' requests sessions verified against."""
    try:
        import certifi
    except ImportError:
        return None
    return certifi.where()
