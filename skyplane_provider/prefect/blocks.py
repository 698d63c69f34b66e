"""Prefect blocks of skyplane-provider: store credentials and the gateway fleet.

``SkyplaneCredentials`` holds credentials for S3, GCS and Azure Blob Storage (any of the three) and
turns them into the credentials document the transfer and its gateways take (see
``gateway.stores``). ``SkyplaneFleet`` says where the gateways run: a provisioner and its settings.
Both are ordinary blocks: save them once, load them by name in flows and deployments::

    SkyplaneCredentials(aws_access_key_id="AKIA...", aws_secret_access_key="...").save("prod")
    skyplane_transfer("s3://raw/events/", "gs://lake/events/", src_credentials="skyplane-credentials/prod")

Register the block types with a server (for the UI): ``prefect block register -m skyplane_provider.prefect.blocks``.
"""

from __future__ import annotations

from typing import Any, Literal

from prefect.blocks.abstract import CredentialsBlock
from prefect.blocks.core import Block
from prefect.types import SecretDict
from pydantic import Field, SecretStr, model_validator

from gateway.stores import ObjectStore, open_store
from gateway.stores.uri import parse_uri
from planner.errors import BadOptionError
from skyplane_provider.redaction import is_secret_name, redact

# Block field -> (scheme, field of that scheme's entry in the credentials document).
_DOCUMENT_FIELDS: dict[str, tuple[str, str]] = {
    "aws_access_key_id": ("s3", "aws_access_key_id"),
    "aws_secret_access_key": ("s3", "aws_secret_access_key"),
    "aws_session_token": ("s3", "aws_session_token"),
    "aws_region_name": ("s3", "region_name"),
    "aws_endpoint_url": ("s3", "endpoint_url"),
    "gcp_project": ("gs", "project"),
    "gcp_endpoint": ("gs", "endpoint"),
    "gcp_service_account_info": ("gs", "service_account_info"),
    "gcp_service_account_file": ("gs", "service_account_file"),
    "gcp_anonymous": ("gs", "anonymous"),
    "azure_connection_string": ("az", "connection_string"),
    "azure_account_url": ("az", "account_url"),
    "azure_account_key": ("az", "account_key"),
    "azure_sas_token": ("az", "sas_token"),
}


def reveal(value: Any) -> Any:
    """The plain value of a pydantic/Prefect secret (``SecretStr``, ``SecretDict``), else the value."""
    getter = getattr(value, "get_secret_value", None)
    return getter() if callable(getter) else value


class SkyplaneCredentials(CredentialsBlock):
    """Credentials for the object stores of a transfer: S3, GCS and/or Azure Blob Storage.

    Fill in the fields of the clouds you use; empty fields fall back to each SDK's standard
    environment. Passed as ``src_credentials`` / ``dst_credentials`` of ``skyplane_transfer``, the
    fields of the side's cloud apply to that store only; passed as ``credentials``, they apply to
    every store of their cloud.
    """

    _block_type_name = "Skyplane Credentials"
    _block_type_slug = "skyplane-credentials"
    _description = "Credentials for S3, GCS and Azure Blob Storage, as skyplane-provider gateways use them."
    _code_example = """
    ```python
    from skyplane_provider.prefect import SkyplaneCredentials

    creds = SkyplaneCredentials.load("BLOCK_NAME")
    creds.credentials_document()      # {"s3": {...}, "gs": {...}, "az": {...}}
    ```"""

    aws_access_key_id: str | None = Field(default=None, description="S3: access key id.")
    aws_secret_access_key: SecretStr | None = Field(default=None, description="S3: secret access key.")
    aws_session_token: SecretStr | None = Field(default=None, description="S3: session token of temporary keys.")
    aws_region_name: str | None = Field(default=None, description="S3: region of the client.")
    aws_endpoint_url: str | None = Field(default=None, description="S3: endpoint override (S3-compatible stores).")
    gcp_project: str | None = Field(default=None, description="GCS: project id.")
    gcp_endpoint: str | None = Field(default=None, description="GCS: endpoint override (an emulator URL).")
    gcp_service_account_info: SecretDict | None = Field(
        default=None, description="GCS: the service account key file's JSON, as a dict.")
    gcp_service_account_file: str | None = Field(
        default=None, description="GCS: path of a service account key file on the host that starts the "
                                   "transfer (gateways on other hosts get its content).")
    gcp_anonymous: bool = Field(default=False, description="GCS: no credentials (public buckets, emulators).")
    azure_connection_string: SecretStr | None = Field(default=None, description="Azure: storage connection string.")
    azure_account_url: str | None = Field(
        default=None, description="Azure: account URL, with an account key or a SAS token.")
    azure_account_key: SecretStr | None = Field(default=None, description="Azure: account key.")
    azure_sas_token: SecretStr | None = Field(default=None, description="Azure: SAS token.")

    def entry(self, scheme: str) -> dict[str, Any] | None:
        """The credentials-document entry for ``scheme`` (``s3``, ``gs``, ``az``), secrets revealed;
        ``None`` when no field of that cloud is set."""
        entry = {}
        for name, (field_scheme, key) in _DOCUMENT_FIELDS.items():
            value = getattr(self, name)
            if field_scheme == scheme and value not in (None, False, ""):
                entry[key] = reveal(value)
        return entry or None

    def credentials_document(self) -> dict[str, dict[str, Any]]:
        """``{"s3": {...}, "gs": {...}, "az": {...}}`` for the clouds with fields set."""
        return {s: e for s in ("s3", "gs", "az") if (e := self.entry(s)) is not None}

    def get_client(self, store_uri: str) -> ObjectStore:  # type: ignore[override]
        """The object store at ``store_uri`` (any URI inside it), opened with these credentials."""
        return open_store(parse_uri(store_uri).root_uri, credentials=self.credentials_document())


class SkyplaneFleet(Block):
    """Where the gateways of a transfer run: ``local`` processes, your own ``ssh`` hosts, or VMs of ``aws``,
    ``gcp`` or ``azure``.

    ``settings`` are the provisioner's settings (docs/provisioners.md), e.g. for ``ssh``
    ``{"hosts": {"aws:us-east-1": ["ubuntu@203.0.113.10"]}, "known_hosts": "~/.ssh/known_hosts"}``;
    ``secret_settings`` are merged over them and stored encrypted (e.g. the aws provisioner's keys).
    A secret-named key given in ``settings`` (``aws_secret_access_key``, ``*password*``, ...) is moved
    to ``secret_settings``, so it is neither stored in clear nor shown by ``repr``.
    """

    _block_type_name = "Skyplane Fleet"
    _block_type_slug = "skyplane-fleet"
    _description = "Where skyplane-provider runs its gateways: a provisioner (local, ssh, aws, gcp, azure) and its settings."
    _code_example = """
    ```python
    from skyplane_provider.prefect import SkyplaneFleet, skyplane_transfer

    skyplane_transfer("s3://raw/events/", "gs://lake/events/", fleet=SkyplaneFleet.load("BLOCK_NAME"))
    ```"""

    provisioner: Literal["local", "ssh", "aws", "gcp", "azure"] = Field(default="local", description="How gateways are started.")
    settings: dict[str, Any] = Field(default_factory=dict, description="The provisioner's settings.")
    secret_settings: SecretDict | None = Field(
        default=None, description="Settings that are secrets (merged over settings).")

    @model_validator(mode="before")
    @classmethod
    def _secrets_out_of_settings(cls, values: Any) -> Any:
        if not isinstance(values, dict) or not isinstance(values.get("settings"), dict):
            return values
        settings = values["settings"]
        moved = {k: v for k, v in settings.items() if is_secret_name(k) and v is not None}
        if not moved:
            return values
        return {**values, "settings": {k: v for k, v in settings.items() if k not in moved},
                "secret_settings": {**moved, **(reveal(values.get("secret_settings")) or {})}}

    def __repr_args__(self) -> list[tuple[str | None, Any]]:
        return [(k, redact(v) if k == "settings" else v) for k, v in super().__repr_args__()]

    def provisioner_settings(self) -> dict[str, Any]:
        """``settings`` with ``secret_settings`` merged over them, secrets revealed."""
        merged = dict(self.settings)
        merged.update(reveal(self.secret_settings) or {})
        return merged


def load_block(value: Any) -> Any:
    """``"block-type-slug/block-name"`` -> the saved block (what deployment parameters carry);
    any other value is returned as is."""
    if not isinstance(value, str):
        return value
    if "/" not in value:
        raise BadOptionError(f"cannot read block reference {value!r}",
                             hint='write "block-type-slug/block-name", e.g. "skyplane-credentials/prod"')
    try:
        return Block.load(value)
    except ValueError as exc:  # Prefect's way of saying the type or the document is unknown
        raise BadOptionError(f"cannot load block {value!r}: {exc}",
                             hint="save the block first (block.save(NAME)) or fix the name") from exc
