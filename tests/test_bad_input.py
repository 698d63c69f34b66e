"""A battery of bad inputs through the Transfer API and the CLI: each gets a clear SkyplaneError
before any gateway starts, and nothing is written anywhere."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from planner.errors import (AccessDeniedError, BadOptionError, BadURIError, CredentialsError, NotFoundError,
                            SkyplaneError, UnknownRegionError)
from skyplane_provider.transfer import Transfer, TransferRequest

from .helpers import gateway_pids, read_all
from .reliability_report import record


def _cases(tmp_path, s3):
    src = str(tmp_path / "src")
    f = str(tmp_path / "src" / "file.txt")
    d = s3 + "/dst/"
    return [
        ("malformed URI (one slash)", dict(src="s3:/bucket/x", dsts=[d]), BadURIError),
        ("unknown scheme", dict(src="ftp://host/x", dsts=[d]), BadURIError),
        ("empty bucket name", dict(src="s3:///key", dsts=[d]), BadURIError),
        ("bucket name with capitals", dict(src="s3://Bad_Bucket/x", dsts=[d]), BadURIError),
        ("Azure URI without container", dict(src=src, dsts=["az://devstoreaccount1"]), BadURIError),
        ("'..' escaping a local path", dict(src=str(tmp_path) + "/../etc", dsts=[d]), BadURIError),
        ("relative local path", dict(src="relative/path", dsts=[d]), BadURIError),
        ("'..' segment in an object key", dict(src=src, dsts=[s3 + "/a/../b/"]), BadURIError),
        ("unknown solver", dict(src=src, dsts=[d], solver="fastest"), BadOptionError),
        ("throughput target and cost ceiling together",
         dict(src=src, dsts=[d], throughput_gbps=1.0, max_cost_per_gb=0.05), BadOptionError),
        ("negative throughput target", dict(src=src, dsts=[d], throughput_gbps=-2.0), BadOptionError),
        ("zero gateways per region", dict(src=src, dsts=[d], gateways_per_region=0), BadOptionError),
        ("1000 gateways per region", dict(src=src, dsts=[d], gateways_per_region=1000), BadOptionError),
        ("unreadable chunk size", dict(src=src, dsts=[d], chunk_size="12 parsecs"), BadOptionError),
        ("chunk size below 1 MiB", dict(src=src, dsts=[d], chunk_size="4KiB"), BadOptionError),
        ("unreadable bandwidth cap", dict(src=src, dsts=[d], bwlimit="fast"), BadOptionError),
        ("bandwidth cap of zero", dict(src=src, dsts=[d], bwlimit=0), BadOptionError),
        ("unknown server-side copy mode", dict(src=src, dsts=[d], server_side="sometimes"), BadOptionError),
        ("no destination", dict(src=src, dsts=[]), BadOptionError),
        ("same destination twice", dict(src=src, dsts=[d, d]), BadOptionError),
        ("destination inside the source", dict(src=s3 + "/data/", dsts=[s3 + "/data/copy/"]), BadOptionError),
        ("region count differs from destinations", dict(src=src, dsts=[d], dst_regions=["aws:us-east-1", "x:y"]),
         BadOptionError),
        ("unknown provisioner", dict(src=src, dsts=[d], provisioner="mainframe"), BadOptionError),
        ("directory without recursive", dict(src=src, dsts=[d], recursive=False), BadOptionError),
        ("unknown region for the ILP", dict(src=src, dsts=[d], solver="ilp", src_region="aws:mars-1"),
         UnknownRegionError),
        ("missing source directory", dict(src=str(tmp_path / "nope"), dsts=[d]), NotFoundError),
        ("missing source prefix", dict(src=s3 + "/no/such/prefix/", dsts=[str(tmp_path / "out")]), NotFoundError),
        ("missing single source object", dict(src=s3 + "/no-such-key", dsts=[str(tmp_path / "out")], recursive=False),
         NotFoundError),
        ("missing destination bucket", dict(src=src, dsts=["s3://no-such-bucket-anywhere/x/"]), NotFoundError),
        ("missing destination directory", dict(src=f, dsts=[str(tmp_path / "no" / "dir") + "/"], recursive=False),
         NotFoundError),
        ("malformed state_uri", dict(src=src, dsts=[d], state_uri="s3://Bad_Bucket/state"), BadURIError),
        ("state_uri that is no URI", dict(src=src, dsts=[d], state_uri="state"), BadURIError),
        ("missing state_uri bucket", dict(src=src, dsts=[d], state_uri="s3://no-such-state-bucket/x"), NotFoundError),
        ("missing state_uri directory", dict(src=src, dsts=[d], state_uri=str(tmp_path / "no" / "state")),
         NotFoundError),
        ("Azure account not matching the credentials",
         dict(src=src, dsts=["az://otheraccount/container/x/"]), CredentialsError),
    ]


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch) -> str:
    """A private SKYPLANE_HOME (inherited by the CLI subprocesses): a gateway this test started would
    have its config below it, while fleets of tests running elsewhere on the machine do not count."""
    monkeypatch.setenv("SKYPLANE_HOME", str(tmp_path / "home"))
    return str(tmp_path / "home")


@pytest.fixture
def layout(tmp_path, s3_bucket):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "file.txt").write_bytes(b"payload")
    (tmp_path / "out").mkdir()
    return tmp_path, s3_bucket


def test_bad_input_battery(layout, home):
    tmp_path, s3 = layout
    cases = _cases(tmp_path, s3)
    assert len(cases) >= 20
    for name, kwargs, expected in cases:
        with pytest.raises(expected) as info:
            Transfer(TransferRequest(**kwargs)).prepare()
        message = str(info.value)
        assert len(message) > 15, name
        assert gateway_pids(home) == [], f"{name}: a gateway started"
        record("bad_input", name, f"{type(info.value).__name__}: {message}")
    assert read_all(s3, "dst/") == {}
    assert os.listdir(tmp_path / "out") == []


def test_bad_input_unreadable_source(layout, emulators, azure_container, home):
    """A source the credentials may not read: an Azure account SAS that lets its holder read the
    container's properties but not list or read its blobs, enforced by Azurite itself (file modes
    would not stop root)."""
    from datetime import datetime, timedelta, timezone

    from azure.storage.blob import AccountSasPermissions, ResourceTypes, generate_account_sas

    from gateway.stores import open_store
    from skyplane_provider.testing.emulators import AZURITE_ACCOUNT, AZURITE_KEY

    tmp_path, s3 = layout
    open_store(azure_container).write("data/file.txt", b"payload")
    sas = generate_account_sas(AZURITE_ACCOUNT, AZURITE_KEY, ResourceTypes(container=True),
                               AccountSasPermissions(read=True), expiry=datetime.now(timezone.utc) + timedelta(hours=1))
    entry = {"account_url": f"{emulators.endpoints['azure']}/{AZURITE_ACCOUNT}", "sas_token": sas}
    open_store(azure_container, {azure_container: entry}).check()  # the credentials are good, reading is denied
    with pytest.raises(AccessDeniedError) as info:
        Transfer(TransferRequest(src=azure_container + "/data/", dsts=[s3 + "/dst/"],
                                 credentials={azure_container: entry})).prepare()
    assert gateway_pids(home) == []
    assert read_all(s3, "dst/") == {}
    record("bad_input", "source the credentials may not list or read (Azure account SAS for container properties only)",
           f"{type(info.value).__name__}: {info.value}")


def test_bad_input_unknown_option():
    from skyplane_provider.transfer import copy

    with pytest.raises(BadOptionError, match="unknown"):
        copy("/tmp", "/tmp/x", colour="blue")


@pytest.mark.parametrize("argv, needle", [
    (["cp", "gs://", "/tmp"], "bucket"),
    (["cp", "s3://bucket-x/a", "/tmp", "--chunk-size", "huge"], "size"),
    (["cp", "/definitely/missing/dir", "/tmp", "-r"], "does not exist"),
    (["sync", "ftp://x/y", "/tmp"], "scheme"),
    (["cp", "-r", "/tmp", "/var/tmp", "--gateways-per-region", "0"], "gateways_per_region"),
    (["cp", "-r", "/tmp", "/var/tmp", "--bwlimit", "200MB/h"], "bandwidth cap"),
    (["cp", "-r", "/tmp", "/var/tmp", "--state-uri", "s3://Bad_Bucket/state"], "state_uri"),
    (["cp", "-r", "/tmp", "/var/tmp", "--provisioner-settings", "/dev/null"], "not valid JSON"),
    (["cp", "-r", "/tmp", "/var/tmp", "--provisioner-settings", "/no/such/settings.json"], "can't open"),
])
def test_bad_input_cli(argv, needle, home):
    out = subprocess.run([sys.executable, "-m", "skyplane_provider.cli.main", *argv],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode in (1, 2), out
    assert needle in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert gateway_pids(home) == []
    record("bad_input", "CLI " + " ".join(argv), out.stderr.strip().splitlines()[-1])


def test_errors_share_one_root():
    for cls in (BadURIError, BadOptionError, NotFoundError, CredentialsError, UnknownRegionError, AccessDeniedError):
        assert issubclass(cls, SkyplaneError)


def test_bad_input_cli_provisioner_settings_reach_the_provisioner(tmp_path, home):
    settings = tmp_path / "local.json"
    settings.write_text('{"colour": "blue"}')
    argv = ["cp", "-r", str(tmp_path), "/var/tmp/never", "--provisioner-settings", str(settings)]
    out = subprocess.run([sys.executable, "-m", "skyplane_provider.cli.main", *argv],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "unknown local provisioner settings ['colour']" in out.stderr, out.stderr
    assert gateway_pids(home) == [] and not os.path.exists("/var/tmp/never")
    record("bad_input", "CLI cp --provisioner-settings FILE with an unknown setting",
           out.stderr.strip().splitlines()[-1])
