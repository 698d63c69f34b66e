"""Making a bucket (S3, GCS) or a container (Azure): ``skyplane-provider mb``.

Transfers never create a destination bucket (a typo must not invent one); users make them once, with
this or the cloud's own tools. The SDK clients come from the same credentials document as the stores'
(:mod:`gateway.stores`), so ``--credentials`` and the SDKs' environment work here too.
"""

from __future__ import annotations

from typing import Any

from gateway.stores import credentials_entry, open_store
from gateway.stores.uri import parse_uri
from planner.errors import BadOptionError, BadURIError, ConflictError, NotFoundError, SkyplaneError, StoreError
from planner.providers import provider_name

_CLOUD = {"s3": "aws", "gs": "gcp", "az": "azure"}


def make_bucket(uri: str, *, region: str | None = None, credentials: dict | None = None) -> str:
    """Create the bucket or container ``uri`` names (``s3://name``, ``gs://name``,
    ``az://account/container``) and return its root URI.

    ``region`` is a region tag of the URI's cloud (``aws:eu-west-1``, ``gcp:europe-west1``); without
    it S3 uses the client's region and GCS its default multi-region. Azure containers live in their
    account's region, so a region is refused there. Raises ``ConflictError`` when it exists already.
    """
    target = parse_uri(uri)
    if target.scheme == "file":
        raise BadOptionError(f"{uri} is a local path", hint="make a directory with mkdir -p")
    if target.path:
        raise BadURIError(f"{uri} names a key inside {target.root_uri}", hint=f"write just {target.root_uri}")
    if region is not None and provider_name(region) != _CLOUD[target.scheme]:
        raise BadOptionError(f"region {region!r} is not a region of {target.root_uri}'s cloud",
                             hint=f"give a {_CLOUD[target.scheme]}:... tag" if target.scheme != "az" else
                             "Azure containers live in their storage account's region: leave out the region")
    try:
        open_store(target.root_uri, credentials).check()
    except NotFoundError:
        pass
    else:
        raise ConflictError(f"{target.root_uri} exists already", hint="use it as it is, or pick another name")
    entry = credentials_entry(target.root_uri, credentials)
    location = region.split(":", 1)[1] if region else None
    try:
        {"s3": _s3, "gs": _gcs, "az": _azure}[target.scheme](target.bucket, entry, location)
    except SkyplaneError:
        raise
    except Exception as exc:  # noqa: BLE001 - each SDK raises its own classes; the message says enough
        raise StoreError(f"cannot create {target.root_uri}: {exc}",
                         hint="check the name (it must be unique on the cloud), the credentials and the region") from exc
    return target.root_uri


def _s3(bucket: str, entry: dict[str, Any], location: str | None) -> None:
    from gateway.stores import s3

    client = s3.make_client(entry)
    location = location or client.meta.region_name or "us-east-1"
    # us-east-1 is the one region S3 refuses as an explicit location constraint
    config = {} if location == "us-east-1" else {"CreateBucketConfiguration": {"LocationConstraint": location}}
    client.create_bucket(Bucket=bucket, **config)


def _gcs(bucket: str, entry: dict[str, Any], location: str | None) -> None:
    from gateway.stores import gcs

    try:
        gcs.make_client(entry).create_bucket(bucket, location=location)
    except ValueError as exc:  # the library's "Client project not set" (emulators need none)
        raise BadOptionError(f"cannot create gs://{bucket}: {exc}",
                             hint='add "project" to the gs credentials entry, or set GOOGLE_CLOUD_PROJECT') from exc


def _azure(name: str, entry: dict[str, Any], location: str | None) -> None:
    from gateway.stores import azure

    account, container = name.split("/", 1)
    azure.make_client(account, entry).create_container(container)
