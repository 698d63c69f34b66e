"""Fresh buckets and containers in the emulators, for tests, the demo and the benchmarks.

Stores never create buckets (a transfer must not invent a destination); this names a unique bucket
and makes it with :func:`skyplane_provider.buckets.make_bucket`, configured only by the standard
environment the emulators set (:mod:`skyplane_provider.testing.emulators`).
"""

from __future__ import annotations

import os
import uuid

from gateway.stores.azure import connection_string_account
from planner.errors import BadOptionError, CredentialsError
from skyplane_provider.buckets import make_bucket

_SCHEME = {"s3": "s3", "gcs": "gs"}


def unique_name(prefix: str = "t") -> str:
    """A bucket/container name valid on S3, GCS and Azure: lowercase, 3-63 characters, unique."""
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


def create_bucket(kind: str, name: str | None = None) -> str:
    """Create an empty bucket (``kind`` = ``s3`` / ``gcs`` / ``azure``); return its root URI."""
    name = name or unique_name()
    if kind in _SCHEME:
        return make_bucket(f"{_SCHEME[kind]}://{name}")
    if kind == "azure":
        account = connection_string_account(os.environ.get("AZURE_STORAGE_CONNECTION_STRING", ""))
        if not account:
            raise CredentialsError("AZURE_STORAGE_CONNECTION_STRING is not set", hint="start the emulators first")
        return make_bucket(f"az://{account}/{name}")
    raise BadOptionError(f"unknown bucket kind {kind!r}", hint="use s3, gcs or azure")
