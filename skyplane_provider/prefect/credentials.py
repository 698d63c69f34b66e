"""From what Prefect users hold to the transfer's credentials document.

Accepted per side (``src_credentials`` / ``dst_credentials``) and as ``credentials``:

- :class:`~skyplane_provider.prefect.blocks.SkyplaneCredentials`;
- the blocks of the Prefect collections, recognised by their attributes (duck typing: the collections
  need a newer Prefect than ours, so they cannot be dependencies): ``AwsCredentials`` and
  ``MinIOCredentials`` (prefect-aws), ``GcpCredentials`` (prefect-gcp), ``AzureBlobStorageCredentials``
  (prefect-azure);
- a plain dict: a credentials-document entry for a side, a whole document for ``credentials``;
- ``"block-type-slug/block-name"``: a saved block of any of the kinds above.

A side's credentials become the entry of that store's root URI (``"s3://bucket"``), so the source and a
destination on the same cloud can use different accounts; ``credentials`` applies per cloud.
"""

from __future__ import annotations

from typing import Any, Sequence

from gateway.stores.uri import StoreURI
from planner.errors import BadOptionError, CredentialsError
from skyplane_provider.transfer.credential_sources import AwsSessionSource, CredentialSource, document

from .blocks import SkyplaneCredentials, load_block, reveal

_CLOUD = {"s3": "S3", "gs": "GCS", "az": "Azure Blob Storage"}

# Attributes that mark a third-party credentials object as serving one cloud.
_MARKERS = {
    "s3": ("aws_access_key_id", "aws_secret_access_key", "minio_root_user"),
    "gs": ("service_account_info", "service_account_file"),
    "az": ("connection_string", "account_url"),
}


def kinds_of(obj: Any) -> set[str]:
    """The schemes a credentials object can serve (``set()`` if it is not one we know)."""
    if isinstance(obj, SkyplaneCredentials):
        return set(obj.credentials_document())
    if isinstance(obj, dict):
        return {"s3", "gs", "az"}
    return {scheme for scheme, attrs in _MARKERS.items() if any(hasattr(obj, a) for a in attrs)}


def entry_for(obj: Any, scheme: str, where: str) -> dict[str, Any]:
    """The credentials-document entry for the ``scheme`` store ``where`` from one credentials object."""
    if isinstance(obj, SkyplaneCredentials):
        entry = obj.entry(scheme)
        if entry is None:
            raise BadOptionError(f"the SkyplaneCredentials given for {where} have no {_CLOUD[scheme]} fields",
                                 hint=f"fill in the {scheme_prefix(scheme)}* fields or pass other credentials")
        return entry
    if isinstance(obj, dict):
        return {k: reveal(v) for k, v in obj.items()}
    kinds = kinds_of(obj)
    if scheme not in kinds:
        what = type(obj).__name__
        served = ", ".join(_CLOUD[k] for k in sorted(kinds)) or "no store we know"
        raise BadOptionError(f"{what} given for {where}, a {_CLOUD[scheme]} store, holds credentials for {served}",
                             hint="pass AwsCredentials for s3://, GcpCredentials for gs://, "
                                  "AzureBlobStorageCredentials for az://, or SkyplaneCredentials")
    return {"s3": _aws_entry, "gs": _gcp_entry, "az": _azure_entry}[scheme](obj)


def scheme_prefix(scheme: str) -> str:
    return {"s3": "aws_", "gs": "gcp_", "az": "azure_"}[scheme]


def _aws_entry(obj: Any) -> dict[str, Any]:
    entry = {
        "aws_access_key_id": getattr(obj, "aws_access_key_id", None) or getattr(obj, "minio_root_user", None),
        "aws_secret_access_key": reveal(getattr(obj, "aws_secret_access_key", None)
                                        or getattr(obj, "minio_root_password", None)),
        "aws_session_token": reveal(getattr(obj, "aws_session_token", None)),
        "region_name": getattr(obj, "region_name", None),
        "endpoint_url": _client_parameter(obj, "endpoint_url"),
    }
    return {k: v for k, v in entry.items() if v}


def _renews(obj: Any) -> bool:
    """An AWS credentials object without keys but with a profile or a role to assume: its keys are
    temporary, and its boto3 session renews them."""
    return "s3" in kinds_of(obj) and not isinstance(obj, (dict, SkyplaneCredentials)) \
        and not getattr(obj, "aws_access_key_id", None) \
        and bool(getattr(obj, "profile_name", None) or getattr(obj, "assume_role_arn", None))


def source_for(obj: Any, scheme: str, where: str, key: str) -> CredentialSource:
    """The source of the entry ``key`` from one credentials object: a profile or an assumed role is
    resolved here, by its boto3 session, to temporary keys that the session renews (the gateways get
    keys, never this machine's AWS configuration); anything else is a fixed entry."""
    if scheme == "s3" and _renews(obj):
        credentials, region = _aws_session(obj)
        base = _aws_entry(obj)
        base["region_name"] = base.get("region_name") or region
        return AwsSessionSource(key, credentials, {k: v for k, v in base.items() if v})
    return CredentialSource(key, entry_for(obj, scheme, where))


def _client_parameter(obj: Any, name: str) -> Any:
    params = getattr(obj, "aws_client_parameters", None)
    if isinstance(params, dict):
        return params.get(name)
    return getattr(params, name, None)


def _aws_session(obj: Any) -> tuple[Any, str | None]:
    """(the botocore credentials of the object's boto3 session, its region), resolved now so that a
    wrong profile or role fails before any gateway starts."""
    try:
        if callable(getattr(obj, "get_boto3_session", None)):
            session = obj.get_boto3_session()
        else:
            import boto3

            session = boto3.Session(profile_name=obj.profile_name)
        credentials = session.get_credentials()
        credentials.get_frozen_credentials()
    except Exception as exc:  # noqa: BLE001 - botocore raises many unrelated classes here
        raise CredentialsError(f"cannot resolve the AWS profile or role of {type(obj).__name__}: {exc}",
                               hint="check the profile name / role ARN, or give access keys") from exc
    return credentials, session.region_name


def _gcp_entry(obj: Any) -> dict[str, Any]:
    info = reveal(getattr(obj, "service_account_info", None))
    path = getattr(obj, "service_account_file", None)
    entry = {"project": getattr(obj, "project", None), "service_account_info": dict(info) if info else None,
             "service_account_file": str(path) if path else None}
    return {k: v for k, v in entry.items() if v}


def _azure_entry(obj: Any) -> dict[str, Any]:
    conn = reveal(getattr(obj, "connection_string", None))
    if conn:
        return {"connection_string": conn}
    if getattr(obj, "client_id", None) or getattr(obj, "account_url", None):
        raise CredentialsError(
            f"{type(obj).__name__} without a connection string signs in through Azure AD "
            "(DefaultAzureCredential or a service principal), which the gateways cannot use",
            hint="give a connection string, or SkyplaneCredentials with azure_account_url and "
                 "azure_account_key or azure_sas_token")
    raise CredentialsError(f"{type(obj).__name__} holds no Azure credentials", hint="set its connection string")


def credentials_document(src: StoreURI, dsts: Sequence[StoreURI], *, src_credentials: Any = None,
                         dst_credentials: Any = None, credentials: Any = None) -> dict[str, dict]:
    """The credentials document of a transfer from the per-side and general credentials.

    ``dst_credentials`` is one credentials object (used for every destination of a cloud it serves)
    or a list aligned with ``dsts`` (``None`` entries use the environment).
    """
    return document(credential_sources(src, dsts, src_credentials=src_credentials, dst_credentials=dst_credentials,
                                       credentials=credentials))


def credential_sources(src: StoreURI, dsts: Sequence[StoreURI], *, src_credentials: Any = None,
                       dst_credentials: Any = None, credentials: Any = None) -> list[CredentialSource]:
    """The sources of the entries of :func:`credentials_document`: what the task's transfer asks
    again while it runs (an AWS profile's or assumed role's keys, renewed by its session)."""
    doc: dict[str, CredentialSource] = {}
    general = load_block(credentials)
    if isinstance(general, dict):
        doc.update({k: CredentialSource(k, {f: reveal(v) for f, v in e.items()}) for k, e in general.items()})
    elif general is not None:
        kinds = kinds_of(general)
        if not kinds:
            raise BadOptionError(f"cannot use {type(general).__name__} as credentials",
                                 hint="pass SkyplaneCredentials, a collection's credentials block or a dict")
        doc.update({s: source_for(general, s, f"every {_CLOUD[s]} store", s) for s in sorted(kinds)})
    sides = [(src, src_credentials)]
    if isinstance(dst_credentials, (list, tuple)):
        if len(dst_credentials) != len(dsts):
            raise BadOptionError(f"{len(dst_credentials)} destination credentials for {len(dsts)} destinations",
                                 hint="give one per destination (None for the environment) or a single one")
        sides += list(zip(dsts, dst_credentials))
    elif dst_credentials is not None:
        obj = load_block(dst_credentials)
        served = [d for d in dsts if d.scheme in kinds_of(obj)]
        if not served:
            raise BadOptionError(f"the destination credentials ({type(obj).__name__}) serve none of the destinations",
                                 hint="pass credentials of the destinations' cloud")
        sides += [(d, obj) for d in served]
    for uri, obj in sides:
        if obj is None:
            continue
        if uri.scheme == "file":
            raise BadOptionError(f"credentials given for the local path {uri}", hint="local paths need none")
        source = source_for(load_block(obj), uri.scheme, str(uri), uri.root_uri)
        if uri.root_uri in doc and doc[uri.root_uri].current() != source.current():
            raise BadOptionError(f"two different credentials given for {uri.root_uri}",
                                 hint="the source and a destination in one bucket must use the same credentials")
        doc.setdefault(uri.root_uri, source)
    return list(doc.values())
