"""What the stores that speak HTTP themselves (``gcs_api``, ``azure_api``; no SDK between them and urllib3) share:
one pool manager per endpoint with the environment's proxy and CA bundle, and the one retry loop of a
call (docs/reliability.md "One retry budget")."""

from __future__ import annotations

import os
import random
import time
import urllib.parse
from typing import Any, Callable, TypeVar

import urllib3

from .common import POOL_SIZE, env_ca_bundle, retry_after_of

T = TypeVar("T")


class Backoff:
    """The one retry of a store call: attempts for at most ``deadline`` seconds, waits drawn from 0 to
    ``initial`` doubling to ``maximum`` (google-api-core's ``Retry`` with these settings: no attempt
    starts past the deadline). ``retryable`` says which errors are tried again; any other, and the
    last, is raised. Nothing above the store retries the call again, only the coordinator re-sends a
    failed chunk.

    Stores whose SDK counted attempts instead (Azure's ``ExponentialRetry``) give ``attempts`` (in all,
    the first included) and ``wait(n)``, the wait before the ``n``-th retry, which replaces the
    doubling one; ``honour_retry_after``: wait at least the store's ``Retry-After`` when the error
    carries one (``common.retry_after_of``), as long as the deadline allows."""

    def __init__(self, retryable: Callable[[BaseException], bool], deadline: float = 10.0, initial: float = 0.5,
                 multiplier: float = 2.0, maximum: float = 4.0, *, attempts: int | None = None,
                 wait: Callable[[int], float] | None = None, honour_retry_after: bool = False) -> None:
        self.retryable = retryable
        self.deadline, self.initial, self.multiplier, self.maximum = deadline, initial, multiplier, maximum
        self.attempts, self.wait, self.honour_retry_after = attempts, wait, honour_retry_after

    def __call__(self, attempt: Callable[[], T]) -> T:
        end = time.monotonic() + self.deadline
        delay = min(self.initial, self.maximum)
        tries = 0
        while True:
            tries += 1
            try:
                return attempt()
            except Exception as exc:
                if not self.retryable(exc) or (self.attempts is not None and tries >= self.attempts):
                    raise
                wait = self.wait(tries) if self.wait is not None else random.uniform(0.0, delay)
                if self.honour_retry_after:
                    wait = max(wait, retry_after_of(exc) or 0.0)
                if time.monotonic() + wait > end:
                    raise
                time.sleep(wait)
                delay = min(delay * self.multiplier, self.maximum)


def pool_manager(base: str) -> urllib3.PoolManager:
    """Room for ``POOL_SIZE`` connections to the endpoint ``base``, with the environment's proxy and CA
    bundle as ``requests`` (the SDKs' transport) would have found them for it: read once, here, never
    per request (see ``common.settle_environment``)."""
    kwargs: dict[str, Any] = {"num_pools": 4, "maxsize": POOL_SIZE, "block": False}
    if base.startswith("https:"):
        kwargs["ca_certs"] = env_ca_bundle() or _certifi_bundle()
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
