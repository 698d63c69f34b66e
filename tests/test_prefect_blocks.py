"""Prefect blocks and credentials: SkyplaneCredentials / SkyplaneFleet round trips through a real Prefect
server, and third-party collection blocks recognised by duck typing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("prefect")

from prefect import get_client  # noqa: E402
from prefect.blocks.core import Block  # noqa: E402
from pydantic import SecretStr  # noqa: E402

from gateway.stores.uri import parse_uri  # noqa: E402
from planner.errors import BadOptionError, CredentialsError  # noqa: E402
from skyplane_provider.prefect import SkyplaneCredentials, SkyplaneFleet  # noqa: E402
from skyplane_provider.prefect.credentials import credentials_document  # noqa: E402


# Credentials holders with the attributes of prefect-aws / prefect-gcp / prefect-azure blocks (the
# collections need prefect>=3.8.4, so they cannot be installed beside our Prefect).
class AwsCredentials:
    def __init__(self, key: str, secret: str, region: str | None = None, endpoint: str | None = None,
                 profile_name: str | None = None) -> None:
        self.aws_access_key_id = key
        self.aws_secret_access_key = SecretStr(secret)
        self.aws_session_token = None
        self.profile_name = profile_name
        self.region_name = region
        self.aws_client_parameters = type("AwsClientParameters", (), {"endpoint_url": endpoint, "verify": True})()
        self.assume_role_arn = None


class GcpCredentials:
    def __init__(self, project: str | None = None, info: dict | None = None, file: Path | None = None) -> None:
        self.service_account_info = None if info is None else _Secret(info)
        self.service_account_file = file
        self.project = project


class AzureBlobStorageCredentials:
    def __init__(self, connection_string: str | None = None, account_url: str | None = None) -> None:
        self.connection_string = None if connection_string is None else SecretStr(connection_string)
        self.account_url = account_url
        self.client_id = self.tenant_id = self.client_secret = None


class _Secret:
    def __init__(self, value) -> None:
        self._value = value

    def get_secret_value(self):
        return self._value


def doc(src: str, dsts: list[str], **kw) -> dict:
    return credentials_document(parse_uri(src), [parse_uri(d) for d in dsts], **kw)


def test_skyplane_credentials_document_and_secrets():
    creds = SkyplaneCredentials(aws_access_key_id="AKIA1", aws_secret_access_key="s3cret",
                                aws_endpoint_url="http://127.0.0.1:9", gcp_service_account_info={"type": "x"},
                                azure_connection_string="AccountName=acct;AccountKey=k")
    assert creds.credentials_document() == {
        "s3": {"aws_access_key_id": "AKIA1", "aws_secret_access_key": "s3cret", "endpoint_url": "http://127.0.0.1:9"},
        "gs": {"service_account_info": {"type": "x"}},
        "az": {"connection_string": "AccountName=acct;AccountKey=k"},
    }
    shown = repr(creds) + str(creds.model_dump())
    assert "s3cret" not in shown and "AccountKey=k" not in shown
    # Per side: the entry lands under the store's root URI; as `credentials`, under the scheme.
    assert doc("s3://raw/a/", ["s3://lake/b/"], src_credentials=creds, credentials=creds) == {
        **creds.credentials_document(), "s3://raw": creds.entry("s3")}


def test_block_round_trip(prefect_harness):
    for cls in (SkyplaneCredentials, SkyplaneFleet):
        cls.register_type_and_schema()
    creds = SkyplaneCredentials(aws_access_key_id="AKIA2", aws_secret_access_key="topsecret", gcp_anonymous=True)
    creds.save("test-creds", overwrite=True)
    loaded = SkyplaneCredentials.load("test-creds")
    assert loaded.credentials_document() == creds.credentials_document()
    assert Block.load("skyplane-credentials/test-creds").credentials_document() == creds.credentials_document()

    fleet = SkyplaneFleet(provisioner="ssh", settings={"hosts": ["ubuntu@127.0.0.1:2222"], "known_hosts": "/kh"},
                          secret_settings={"key_file": "/secret/key"})
    fleet.save("test-fleet", overwrite=True)
    loaded_fleet = Block.load("skyplane-fleet/test-fleet")
    assert loaded_fleet.provisioner == "ssh"
    assert loaded_fleet.provisioner_settings() == {"hosts": ["ubuntu@127.0.0.1:2222"], "known_hosts": "/kh",
                                                   "key_file": "/secret/key"}

    with get_client(sync_client=True) as client:
        stored = client.read_block_document_by_name("test-creds", "skyplane-credentials", include_secrets=False)
    assert "topsecret" not in str(stored.data)  # secrets are stored encrypted and come back obfuscated


def test_duck_typed_collection_blocks():
    aws = AwsCredentials("AKIA3", "awssecret", region="us-east-1", endpoint="http://127.0.0.1:5000")
    gcp = GcpCredentials(project="p", info={"type": "service_account"})
    azure = AzureBlobStorageCredentials(connection_string="AccountName=devstoreaccount1;AccountKey=k")
    got = doc("s3://raw/events/", ["gs://lake/events/", "az://devstoreaccount1/lake/events/"],
              src_credentials=aws, dst_credentials=[gcp, azure])
    assert got == {
        "s3://raw": {"aws_access_key_id": "AKIA3", "aws_secret_access_key": "awssecret", "region_name": "us-east-1",
                     "endpoint_url": "http://127.0.0.1:5000"},
        "gs://lake": {"project": "p", "service_account_info": {"type": "service_account"}},
        "az://devstoreaccount1/lake": {"connection_string": "AccountName=devstoreaccount1;AccountKey=k"},
    }
    # One object for several destinations: used for those of its cloud.
    served = doc("s3://raw/", ["gs://lake-a/", "gs://lake-b/", "/tmp/out"], dst_credentials=gcp)
    assert set(served) == {"gs://lake-a", "gs://lake-b"}
    assert doc("s3://raw/", ["gs://lake/"], credentials=aws) == {"s3": got["s3://raw"]}


@pytest.mark.parametrize("kwargs, error, words", [
    (dict(src_credentials=GcpCredentials(project="p")), BadOptionError, "GcpCredentials given for s3://raw/x/"),
    (dict(dst_credentials=[None]), BadOptionError, "1 destination credentials for 2 destinations"),
    (dict(dst_credentials=AwsCredentials("k", "s")), BadOptionError, "serve none of the destinations"),
    (dict(dst_credentials=[AzureBlobStorageCredentials(account_url="https://a.blob.core.windows.net"), None]),
     CredentialsError, "DefaultAzureCredential"),
    (dict(src_credentials=SkyplaneCredentials(gcp_project="p")), BadOptionError, "no S3 fields"),
    (dict(credentials=object()), BadOptionError, "cannot use object as credentials"),
])
def test_credentials_errors_say_what_to_do(kwargs, error, words):
    with pytest.raises(error, match=words):
        doc("s3://raw/x/", ["az://devstoreaccount1/cont/", "gs://lake/"], **kwargs)


def test_same_bucket_with_two_credentials_is_refused():
    with pytest.raises(BadOptionError, match="two different credentials given for s3://raw"):
        doc("s3://raw/a/", ["s3://raw/b/"], src_credentials=AwsCredentials("k1", "s"),
            dst_credentials=AwsCredentials("k2", "s"))


def test_block_types_register_with_the_cli(prefect_harness):
    env = {**os.environ, "PREFECT_API_URL": prefect_harness, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    proc = subprocess.run([sys.executable, "-m", "prefect", "block", "register", "-m",
                           "skyplane_provider.prefect.blocks"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with get_client(sync_client=True) as client:
        for slug in ("skyplane-credentials", "skyplane-fleet"):
            assert client.read_block_type_by_slug(slug).slug == slug


def test_a_profile_that_assumes_a_role_gives_a_renewing_source(monkeypatch, tmp_path, emulators):
    """AwsCredentials without keys but with a profile that assumes a role (through moto's STS): the
    task's source gives the role's temporary keys from the profile's boto3 session, which renews
    them; the gateways get keys, not the profile."""
    from skyplane_provider.prefect.credentials import credential_sources
    from skyplane_provider.transfer.credential_sources import AwsSessionSource

    (tmp_path / "config").write_text("[profile writer]\nrole_arn = arn:aws:iam::123456789012:role/w\n"
                                     "source_profile = base\nregion = us-east-1\n")
    (tmp_path / "credentials").write_text("[base]\naws_access_key_id = testing\naws_secret_access_key = testing\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    block = AwsCredentials("", "", profile_name="writer")
    sources = credential_sources(parse_uri("s3://raw/x/"), [parse_uri("/tmp/out/")], src_credentials=block)
    assert len(sources) == 1 and isinstance(sources[0], AwsSessionSource) and sources[0].key == "s3://raw"
    entry = sources[0].current()
    assert entry["aws_access_key_id"] != "testing" and entry["aws_session_token"] and "profile_name" not in entry
    assert entry["region_name"] == "us-east-1"
