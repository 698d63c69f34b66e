"""Fresh buckets and containers in the emulators, for tests, the demo and the benchmarks.

Stores never create buckets (a transfer must not invent a destination), so this helper talks to the
SDKs directly, configured only by the standard environment the emulators set
(:mod:`skyplane_provider.testing.emulators`).
"""

from __future__ import annotations

import os
import uuid

from planner.errors import BadOptionError, CredentialsError


def unique_name(prefix: str = "t") -> str:
    """A bucket/container name valid on S3, GCS and Azure: lowercase, 3-63 characters, unique."""
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


def create_bucket(kind: str, name: str | None = None) -> str:
    """Create an empty bucket (``kind`` = ``s3`` / ``gcs`` / ``azure``); return its root URI."""
    name = name or unique_name()
    if kind == "s3":
        import boto3

        boto3.client("s3").create_bucket(Bucket=name)
        return f"s3://{name}"
    if kind == "gcs":
        from google.cloud import storage

        storage.Client().create_bucket(name)
        return f"gs://{name}"
    if kind == "azure":
        from azure.storage.blob import BlobServiceClient

        conn = os.environ.get("AZURE_STORAGE_CONNECTION_STRING")
        if not conn:
            raise CredentialsError("AZURE_STORAGE_CONNECTION_STRING is not set", hint="start the emulators first")
        service = BlobServiceClient.from_connection_string(conn)
        service.create_container(name)
        return f"az://{service.account_name}/{name}"
    raise BadOptionError(f"unknown bucket kind {kind!r}", hint="use s3, gcs or azure")
