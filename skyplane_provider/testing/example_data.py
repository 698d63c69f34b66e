"""The examples' data in the emulators: bucket roots, sample objects under empty prefixes, yesterday's
partition. Shared by the demo, the Airflow and the Prefect examples and the tests; it imports neither
Airflow nor Prefect."""

from __future__ import annotations

import ipaddress
import os
from datetime import datetime, timedelta, timezone
from urllib.parse import urlsplit

from gateway.stores import open_store
from gateway.stores.uri import parse_uri
from planner.errors import NotFoundError
from skyplane_provider.testing.buckets import create_bucket
from skyplane_provider.testing.samples import put_objects, sample_objects

#: Bucket roots in the emulators (the Azure account is Azurite's fixed one).
EMULATOR_ROOTS = {"SKYPLANE_EXAMPLE_S3": "s3://skyplane-example-raw",
                  "SKYPLANE_EXAMPLE_GCS": "gs://skyplane-example-lake",
                  "SKYPLANE_EXAMPLE_AZURE": "az://devstoreaccount1/skyplane-example"}
_BUCKET_KIND = {"s3": "s3", "gs": "gcs", "az": "azure"}


def yesterday() -> str:
    """The day before now (UTC) as ``YYYY-MM-DD``: the nightly DAG's partition for a run due now."""
    return (datetime.now(timezone.utc) - timedelta(days=1)).date().isoformat()


def on_emulators(env: dict[str, str]) -> bool:
    """Whether ``env`` points all three SDKs at emulators on loopback addresses."""
    azure = env.get("AZURE_STORAGE_CONNECTION_STRING", "")
    blob = next((p.split("=", 1)[1] for p in azure.split(";") if p.startswith("BlobEndpoint=")), "")
    return all(_loopback(u) for u in (env.get("AWS_ENDPOINT_URL", ""), env.get("STORAGE_EMULATOR_HOST", ""), blob))


def _loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def seed_emulators(prefixes: list[str]) -> None:
    """Create the example buckets in the emulators and put sample objects under each empty prefix."""
    for var in EMULATOR_ROOTS:
        root = parse_uri(os.environ[var])
        try:
            open_store(root.root_uri).check()
        except NotFoundError:
            create_bucket(_BUCKET_KIND[root.scheme], root.bucket.split("/")[-1])
    for prefix in prefixes:
        uri = parse_uri(prefix)
        if next(iter(open_store(uri.root_uri).list(uri.join("").path)), None) is None:
            put_objects(prefix, sample_objects())
