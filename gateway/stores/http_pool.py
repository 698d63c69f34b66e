"""What the stores that speak HTTP themselves (``gcs_api``; no SDK between them and urllib3) share:
one pool manager per endpoint with the environment's proxy and CA bundle, and the one retry loop of a
call (docs/reliability.md "One retry budget")."""

from __future__ import annotations

import os
import random
import time
import urllib.parse
from typing import Any, Callable, TypeVar

import urllib3

from .common import POOL_SIZE, env_ca_bundle

T = TypeVar("T")


class Backoff:
    """The one retry of a store call: attempts for at most ``deadline`` seconds, waits drawn from 0 to
    ``initial`` doubling to ``maximum`` (google-api-core's ``Retry`` with these settings: no attempt
    starts past the deadline). ``retryable`` says which errors are tried again; any other, and the
    last, is raised. Nothing above the store retries the call again, only the coordinator re-sends a
    failed chunk."""

    def __init__(self, retryable: Callable[[BaseException], bool], deadline: float = 10.0, initial: float = 0.5,
                 multiplier: float = 2.0, maximum: float = 4.0) -> None:
        self.retryable = retryable
        self.deadline, self.initial, self.multiplier, self.maximum = deadline, initial, multiplier, maximum

    def __call__(self, attempt: Callable[[], T]) -> T:
        end = time.monotonic() + self.deadline
        delay = min(self.initial, self.maximum)
        while True:
            try:
                return attempt()
            except Exception as exc:
                if not self.retryable(exc):
                    raise
                wait = random.uniform(0.0, delay)
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
