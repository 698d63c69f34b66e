"""Pre-flight: gateways on other hosts get the credentials document, nothing of this machine's
environment, and a fleet that could not read or write a store is refused before it starts.

The "other hosts" are real sshd servers on loopback (tests/fixtures/sshd.py): their sessions start
with a clean environment, exactly as a remote host's would, so the emulator variables of this test
process never reach the gateways. Documents come from the three front ends: a ``--credentials`` file
(the real CLI), Airflow connections (``SkyplaneHook``) and Prefect credentials blocks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from gateway.stores import open_store
from planner.errors import AccessDeniedError, BadOptionError, CredentialsError, NotFoundError
from skyplane_provider.testing.emulators import AZURITE_KEY, connection_string
from skyplane_provider.testing.leftovers import leftovers
from skyplane_provider.transfer import Transfer, TransferRequest
from skyplane_provider.transfer.preflight import portable
from tests.helpers import digests, gateway_pids, put_objects, read_all
from tests.reliability_report import record

REGIONS = ("aws:us-east-1", "gcp:us-central1", "azure:westeurope")
OBJECTS = {"events/a.json": b'{"a": 1}\n' * 3000, "events/b.bin": os.urandom(300_000)}


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch) -> str:
    monkeypatch.setenv("SKYPLANE_HOME", str(tmp_path / "home"))
    return str(tmp_path / "home")


@pytest.fixture
def ssh_settings(sshd_servers, ssh_known_hosts) -> dict:
    """Every region's gateway on its own sshd 'host' (the third region shares the first host)."""
    hosts = [sshd_servers[0], sshd_servers[1], sshd_servers[0]]
    return {"hosts": {r: [s.host_setting()] for r, s in zip(REGIONS, hosts)}, "known_hosts": str(ssh_known_hosts)}


@pytest.fixture
def stores(emulators, s3_bucket, gcs_bucket, azure_container) -> tuple[str, str, str]:
    put_objects(s3_bucket, OBJECTS)
    return s3_bucket, gcs_bucket, azure_container


def nothing_started(sshd_servers, home) -> bool:
    jobs = [p for s in sshd_servers for p in (Path(s.remote_dir) / "jobs").glob("*/gw-*")]
    return gateway_pids(home) == [] and not jobs and all(gateway_pids(s.remote_dir) == [] for s in sshd_servers)


def test_ssh_fleet_without_a_document_is_refused_before_any_gateway_starts(stores, ssh_settings, sshd_servers,
                                                                            home):
    s3, gs, _ = stores
    request = TransferRequest(src=f"{s3}/events/", dsts=[f"{gs}/x/"], provisioner="ssh",
                              provisioner_settings=ssh_settings, src_region=REGIONS[0], dst_regions=[REGIONS[1]])
    with pytest.raises(CredentialsError) as info:
        Transfer(request).prepare()
    message = str(info.value)
    assert f"ssh gateways could not list {s3}" in message and "--credentials FILE" in message
    assert nothing_started(sshd_servers, home)
    assert read_all(gs) == {}
    record("bad_input", "ssh fleet, stores reachable only through this machine's environment", message)


def test_cli_credentials_file_reaches_ssh_gateways(stores, ssh_settings, sshd_servers, emulators, tmp_path, home):
    """The issue's command, through the real CLI: without --credentials it fails before any gateway
    starts; with it, the remote gateways read S3 and write GCS and Azure."""
    s3, gs, az = stores
    (tmp_path / "ssh.json").write_text(json.dumps(ssh_settings))
    (tmp_path / "creds.json").write_text(json.dumps(emulators.credentials))
    argv = [sys.executable, "-m", "skyplane_provider.cli.main", "cp", "-r", f"{s3}/events/", f"{gs}/x/", f"{az}/y/",
            "--provisioner", "ssh", "--provisioner-settings", str(tmp_path / "ssh.json"),
            "--src-region", REGIONS[0], "--dst-region", REGIONS[1], "--dst-region", REGIONS[2], "--chunk-size", "1MiB"]
    refused = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 1 and "ssh gateways could not list" in refused.stderr, refused.stderr
    assert nothing_started(sshd_servers, home)
    done = subprocess.run([*argv, "--credentials", str(tmp_path / "creds.json"), "--json"], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    stats = json.loads(done.stdout.splitlines()[-1])
    assert stats["objects"] == 2 and stats["verified"] and stats["provisioner"] == "ssh"
    expected = {k.removeprefix("events/"): v for k, v in digests(OBJECTS).items()}
    assert read_all(gs, "x/") == expected and read_all(az, "y/") == expected
    assert nothing_started(sshd_servers, home)


def test_airflow_connections_reach_ssh_gateways(stores, ssh_settings, emulators, monkeypatch):
    pytest.importorskip("airflow")
    from skyplane_provider.airflow.examples import emulator_connections
    from skyplane_provider.airflow.hooks import SkyplaneHook

    s3, gs, az = stores
    for var, value in emulator_connections(emulators.env).items():
        monkeypatch.setenv(var, value)
    monkeypatch.setenv("AIRFLOW_CONN_FLEET", json.dumps(
        {"conn_type": "skyplane", "extra": {"provisioner": "ssh", "provisioner_settings": ssh_settings}}))
    hook = SkyplaneHook(src_conn_id="aws_raw", dst_conn_id=["gcp_lake", "wasb_lake"], skyplane_conn_id="fleet")
    request = hook.make_request(f"{s3}/events/", [f"{gs}/x/", f"{az}/y/"], src_region=REGIONS[0],
                                dst_regions=list(REGIONS[1:]), chunk_size="1MiB")
    stats = Transfer(request).run()
    assert stats.objects == 2 and stats.provisioner == "ssh"
    assert read_all(gs, "x/") == read_all(az, "y/") == read_all(s3, "events/")


def test_prefect_blocks_and_fleet_settings_reach_ssh_gateways(stores, ssh_settings, emulators, tmp_path):
    """S3 and GCS credentials from credential blocks, Azure's from the fleet block's (encrypted)
    settings: a fleet may bring the store credentials of its hosts."""
    pytest.importorskip("prefect")
    from skyplane_provider.prefect.blocks import SkyplaneCredentials, SkyplaneFleet
    from skyplane_provider.prefect.tasks import transfer_request

    s3, gs, az = stores
    doc = emulators.credentials
    aws = SkyplaneCredentials(aws_access_key_id="testing", aws_secret_access_key="testing",
                              aws_endpoint_url=doc["s3"]["endpoint_url"])
    gcp = SkyplaneCredentials(gcp_endpoint=doc["gs"]["endpoint"], gcp_project="test")
    fleet = SkyplaneFleet(provisioner="ssh", settings=ssh_settings, secret_settings={"credentials": {"az": doc["az"]}})
    request, _ = transfer_request(f"{s3}/events/", [f"{gs}/x/", f"{az}/y/"], src_credentials=aws,
                               dst_credentials=[gcp, None], credentials=None, provisioner=None,
                               provisioner_settings=None, fleet=fleet, src_region=REGIONS[0],
                               dst_regions=list(REGIONS[1:]), chunk_size="1MiB")
    assert "credentials" not in request.provisioner_settings and request.credentials["az"] == doc["az"]
    stats = Transfer(request).run()
    assert stats.objects == 2 and stats.provisioner == "ssh"
    assert read_all(gs, "x/") == read_all(az, "y/") == read_all(s3, "events/")


def test_service_account_files_travel_as_their_content(tmp_path):
    key_file = tmp_path / "sa.json"
    key_file.write_text(json.dumps({"type": "service_account"}))
    assert portable({"gs": {"service_account_file": str(key_file), "project": "p"}}) == {
        "gs": {"service_account_info": {"type": "service_account"}, "project": "p"}}
    with pytest.raises(CredentialsError, match="cannot read the service account file"):
        portable({"gs": {"service_account_file": str(tmp_path / "elsewhere.json")}})


def test_fleet_credentials_fill_in_what_the_request_lacks():
    request = TransferRequest(src="s3://raw/x/", dsts=["gs://lake/y/"], credentials={"s3": {"region_name": "a"}},
                              provisioner_settings={"hosts": ["h"], "credentials": {"s3": {"region_name": "b"},
                                                                                    "gs": {"project": "p"}}})
    assert request.credentials == {"s3": {"region_name": "a"}, "gs": {"project": "p"}}
    assert request.provisioner_settings == {"hosts": ["h"]}
    assert TransferRequest.from_dict(request.to_dict()).credentials == request.credentials
    with pytest.raises(BadOptionError, match="credentials document"):
        TransferRequest(src="s3://raw/x/", dsts=["gs://lake/y/"], provisioner_settings={"credentials": "s3"})


def test_remote_gateways_with_a_wrong_azure_key_are_refused(stores, ssh_settings, sshd_servers, emulators, home):
    s3, _, az = stores
    doc = emulators.credentials
    doc["az"] = {"connection_string": connection_string(emulators.endpoints["azure"]).replace(
        AZURITE_KEY, AZURITE_KEY[:-8] + "AAAAAAA=")}
    request = TransferRequest(src=f"{s3}/events/", dsts=[f"{az}/y/"], provisioner="ssh", credentials=doc,
                              provisioner_settings=ssh_settings, src_region=REGIONS[0], dst_regions=[REGIONS[2]])
    with pytest.raises((AccessDeniedError, CredentialsError)) as info:
        Transfer(request).prepare()
    assert f"ssh gateways could not write to {az}" in str(info.value)
    assert nothing_started(sshd_servers, home)
    record("bad_input", "ssh fleet, wrong Azure account key in the credentials document", str(info.value))


def test_read_only_destination_is_refused_before_local_gateways_start(stores, emulators, home):
    """A SAS token that may read and list but not write: the write probe finds out, invisibly."""
    from azure.storage.blob import AccountSasPermissions, ResourceTypes, generate_account_sas

    s3, _, az = stores
    account = az.removeprefix("az://").split("/")[0]

    def sas(**permission) -> str:
        return generate_account_sas(account, AZURITE_KEY, ResourceTypes(container=True, object=True),
                                    AccountSasPermissions(**permission),
                                    expiry=datetime.now(timezone.utc) + timedelta(hours=1))

    doc = {az: {"account_url": f"{emulators.endpoints['azure']}/{account}", "sas_token": sas(read=True, list=True)}}
    request = TransferRequest(src=f"{s3}/events/", dsts=[f"{az}/y/"], credentials=doc, dst_regions=[REGIONS[2]])
    with pytest.raises(AccessDeniedError) as info:
        Transfer(request).prepare()
    assert az in str(info.value)
    assert gateway_pids(home) == [] and read_all(az) == {}
    record("bad_input", "read-only SAS token for a destination (local fleet)", str(info.value))
    doc[az]["sas_token"] = sas(read=True, list=True, write=True)
    Transfer(TransferRequest(src=f"{s3}/events/", dsts=[f"{az}/y/"], credentials=doc,
                             dst_regions=[REGIONS[2]])).prepare()
    assert read_all(az) == {}  # the probe left nothing visible (its staged block expires: no delete permission)
    doc[az]["sas_token"] = sas(read=True, list=True, write=True, delete=True)
    clean = open_store(az)
    for key, upload_id in clean.pending_uploads():
        clean.abort_multipart(key, upload_id)
    Transfer(TransferRequest(src=f"{s3}/events/", dsts=[f"{az}/y/"], credentials=doc,
                             dst_regions=[REGIONS[2]])).prepare()
    assert read_all(az) == {} and leftovers(az) == []  # with delete permission, not even a staged block


def test_missing_destination_bucket_says_how_to_make_it(stores, home):
    s3, _, _ = stores
    with pytest.raises(NotFoundError, match="skyplane-provider mb gs://no-such-lake"):
        Transfer(TransferRequest(src=f"{s3}/events/", dsts=["gs://no-such-lake/x/"])).prepare()


def test_container_sas_tokens_copy_from_and_to_a_container(stores, emulators, home):
    """A container-scoped SAS (what a data owner hands out for one container) may not read the
    container's properties, only list, read and write its blobs: read+list is enough to copy from it,
    read+write+list to copy to it."""
    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    s3, _, az = stores
    account, container = az.removeprefix("az://").split("/")

    def entry(**permission) -> dict:
        sas = generate_container_sas(account, container, account_key=AZURITE_KEY,
                                      permission=ContainerSasPermissions(**permission),
                                      expiry=datetime.now(timezone.utc) + timedelta(hours=1))
        return {"account_url": f"{emulators.endpoints['azure']}/{account}", "sas_token": sas}

    Transfer(TransferRequest(src=f"{s3}/events/", dsts=[f"{az}/in/"], dst_regions=[REGIONS[2]],
                             credentials={az: entry(read=True, write=True, list=True)})).run()
    moved = digests({k.removeprefix("events/"): v for k, v in OBJECTS.items()})
    assert read_all(az, "in/") == moved
    Transfer(TransferRequest(src=f"{az}/in/", dsts=[f"{s3}/out/"], src_region=REGIONS[2],
                             credentials={az: entry(read=True, list=True)})).run()
    assert read_all(s3, "out/") == moved
    with pytest.raises(AccessDeniedError, match="list") as info:  # without list: said plainly, before any gateway
        Transfer(TransferRequest(src=f"{az}/in/", dsts=[f"{s3}/none/"], src_region=REGIONS[2],
                                 credentials={az: entry(read=True)})).prepare()
    assert gateway_pids(home) == []
    record("bad_input", "container SAS without list permission for a source", str(info.value))
