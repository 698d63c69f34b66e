"""The command line as a newcomer meets it: help with defaults and examples, -v anywhere, usage errors
with status 2, ``mb`` on the emulators, regions named per destination, "unpriced", plurals, ``--version``."""

from __future__ import annotations

import json
import platform
import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from skyplane_provider.cli.cp import dst_regions
from skyplane_provider.cli.main import COMMANDS, build_parser, _subparsers
from skyplane_provider.cli.wording import UsageError
from tests.helpers import gateway_pids, put_objects, read_all
from tests.reliability_report import record


def cli(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "skyplane_provider.cli.main", *argv],
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch) -> str:
    monkeypatch.setenv("SKYPLANE_HOME", str(tmp_path / "home"))
    return str(tmp_path / "home")


def test_every_subcommand_has_a_description_examples_and_verbose():
    parser = build_parser()
    children = _subparsers(parser)
    assert len(children) >= len(COMMANDS) + 1  # sync, and testbed's actions
    for child in children:
        text = child.format_help()
        assert child.description, child.prog
        assert "-v, --verbose" in text, child.prog
    for name in ("cp", "sync", "resume", "publish", "datasets", "mb", "deprovision", "plan", "testbed"):
        assert "examples:\n  skyplane-provider" in cli(name, "--help").stdout, name


@pytest.mark.parametrize("command, needles", [
    ("cp", ["--connections N", "8 on a direct plan", "--gateways-per-region N", "what the planner picks",
            "--max-gateways-per-region N", "(default: 1)", "--chunk-size SIZE", "(default: 32MiB)",
            "repeat for each", "(default: local)"]),
    ("deprovision", ["(default: any age)", "(default: ~/.skyplane)"]),
    ("plan", ["(default: direct)", "(default: cbc)", "(default 1000)"]),
])
def test_help_shows_defaults(command, needles):
    text = " ".join(cli(command, "--help").stdout.split())
    for needle in needles:
        assert needle in text, (command, needle)


def test_verbose_is_accepted_after_the_subcommand(tmp_path):
    out = cli("plan", "--src", "aws:us-east-1", "--dst", "gcp:us-west4-a", "-v")
    assert out.returncode == 0 and "plan aws:us-east-1 -> gcp:us-west4-a" in out.stdout, out.stderr
    assert cli("-v", "plan", "--src", "aws:us-east-1", "--dst", "gcp:us-west4-a").returncode == 0


@pytest.mark.parametrize("argv, needle", [
    (["cp", "-r", "/tmp", "/var/tmp/x", "--provisioner", "sssh"], "invalid choice: 'sssh'"),
    (["sync", "-r", "/tmp", "/var/tmp/x"], "unrecognized arguments: -r"),
    (["publish", "-r", "/tmp", "--dataset", "d", "--to", "/var/tmp/x"], "unrecognized arguments: -r"),
    (["cp", "-r", "/tmp", "/var/tmp/x", "--dst-region", "file:///elsewhere=local"], "none of the destinations"),
])
def test_usage_errors_exit_2(argv, needle, home):
    out = cli(*argv)
    assert out.returncode == 2, out
    assert needle in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert gateway_pids(home) == []
    record("bad_input", "CLI " + " ".join(argv), out.stderr.strip().splitlines()[-1])


def test_dst_regions_by_position_by_uri_and_by_cloud():
    dsts = ["gs://lake/x/", "az://acct/cont/x/", "az://acct/other/x/"]
    assert dst_regions(None, dsts) is None
    assert dst_regions(["", "azure:westeurope", "azure:eastus"], dsts) == [None, "azure:westeurope", "azure:eastus"]
    assert dst_regions(["az://acct/cont=azure:westeurope"], dsts) == [None, "azure:westeurope", None]
    # a store root names every destination inside it; a bare tag goes to the one left on its cloud
    assert dst_regions(["az://acct/cont/x/=azure:westeurope", "azure:eastus"], dsts) == [
        None, "azure:westeurope", "azure:eastus"]
    assert dst_regions(["gcp:us-central1"], dsts) == ["gcp:us-central1", None, None]
    with pytest.raises(UsageError, match="2 destinations"):
        dst_regions(["azure:westeurope"], dsts)
    with pytest.raises(UsageError, match="no destination"):
        dst_regions(["aws:us-east-1"], dsts)
    with pytest.raises(UsageError, match="none of the destinations"):
        dst_regions(["s3://raw=aws:us-east-1"], dsts)


def test_mb_makes_buckets_on_every_emulator_and_refuses_existing_ones(emulators):
    from skyplane_provider.testing.buckets import unique_name

    uris = [f"s3://{unique_name()}", f"gs://{unique_name()}", f"az://devstoreaccount1/{unique_name()}"]
    out = cli("mb", *uris)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [f"made {u}" for u in uris]
    for uri in uris:
        assert read_all(uri) == {}  # it exists, and is empty
    again = cli("mb", uris[0])
    assert again.returncode == 1 and "exists already" in again.stderr
    assert cli("mb", "--exist-ok", *uris).returncode == 0
    wrong = cli("mb", f"s3://{unique_name()}", "--region", "gcp:us-central1")
    assert wrong.returncode == 1 and "not a region of" in wrong.stderr
    made = cli("mb", f"s3://{unique_name()}", "--region", "aws:eu-west-1")
    assert made.returncode == 0, made.stderr


def test_azure_destination_regions_on_the_command_line(emulators, s3_bucket, gcs_bucket, azure_container):
    put_objects(s3_bucket, {"events/a.json": b'{"a": 1}\n' * 100})
    src, gs, az = f"{s3_bucket}/events/", f"{gcs_bucket}/events/", f"{azure_container}/events/"
    refused = cli("cp", "-r", src, gs, az, "--solver", "ilp")
    assert refused.returncode == 1
    assert "does not report its region" in refused.stderr and "--dst-region URI=TAG" in refused.stderr
    record("bad_input", "CLI cp to an Azure destination with --solver ilp and no region",
           refused.stderr.strip().splitlines()[-1])
    by_cloud = cli("cp", "-r", src, gs, az, "--solver", "ilp", "--dst-region", "azure:westeurope", "--json")
    assert by_cloud.returncode == 0, by_cloud.stderr
    stats = json.loads(by_cloud.stdout.splitlines()[-1])
    assert "azure:westeurope" in stats["plan"]["dsts"] and stats["plan"]["cost_per_gb"] > 0
    by_uri = cli("sync", src, az, "--dst-region", f"{azure_container}=azure:westeurope", "--solver", "ilp")
    assert by_uri.returncode == 0 and "moved 0 objects" in by_uri.stdout, by_uri.stderr
    unpriced = cli("cp", "-r", src, f"{azure_container}/again/")
    assert unpriced.returncode == 0, unpriced.stderr
    assert "moved 1 object," in unpriced.stdout
    assert "predicted cost unpriced (azure:unknown not in the price grid)" in unpriced.stdout
    assert read_all(azure_container, "again/") == read_all(s3_bucket, "events/")


def test_ssh_without_hosts_is_explained_in_settings_terms(tmp_path, home):
    out = cli("cp", "-r", str(tmp_path), "/var/tmp/never", "--provisioner", "ssh")
    assert out.returncode == 1 and 'set "hosts" in its settings' in out.stderr, out.stderr
    assert "hosts={" not in out.stderr and gateway_pids(home) == []


def test_emulators_start_writes_a_credentials_document_and_quiet_prefect_settings(tmp_path):
    from skyplane_provider.testing import emulators_cli

    directory = tmp_path / "emulators"
    try:
        assert emulators_cli.main(["start", "--dir", str(directory)]) == 0
        env = (directory / "env.sh").read_text()
        assert "export PREFECT_SERVER_ANALYTICS_ENABLED=false" in env
        credentials = directory / "credentials.json"
        assert credentials.stat().st_mode & 0o777 == 0o600
        doc = json.loads(credentials.read_text())
        assert set(doc) == {"s3", "gs", "az"} and doc["s3"]["endpoint_url"] in env
    finally:
        emulators_cli.main(["stop", "--dir", str(directory)])
    assert not (directory / "credentials.json").exists()


def test_version_names_this_build_python_and_the_integrations():
    """Through the installed console script, as a user (or a bug report) runs it."""
    done = subprocess.run([str(Path(sys.executable).parent / "skyplane-provider"), "--version"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    line = done.stdout.strip()
    assert re.fullmatch(r"skyplane-provider \S+ \(Python [\d.]+(; .+)?\)", line), line
    assert line.startswith(f"skyplane-provider {version('skyplane-provider')} (Python {platform.python_version()}")
    assert f"apache-airflow {version('apache-airflow')}" in line and f"prefect {version('prefect')}" in line


def test_a_command_imports_its_own_module_only():
    """``sync`` builds only its own parser: the other commands' modules (the testbed's, the planner
    command's) are not imported by a copy; ``--help`` still lists every command."""
    code = ("import json, sys\nfrom skyplane_provider.cli.main import main\ntry:\n    main(['sync', '--help'])\n"
            "except SystemExit:\n    pass\nprint(json.dumps([m for m in sys.modules if m.startswith('skyplane_provider.cli.')]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "usage: skyplane-provider sync" in out.stdout, out.stderr
    imported = set(json.loads(out.stdout.strip().splitlines()[-1]))
    assert "skyplane_provider.cli.cp" in imported
    assert not imported & {f"skyplane_provider.cli.{m}" for m in ("testbed", "plan", "publish", "datasets")}
    assert all(f" {c} " in cli("--help").stdout for c in ("cp", "sync", "testbed", "deprovision"))


def test_a_local_copy_plans_and_prices_without_the_grid(tmp_path):
    """A route of local (or testbed) regions is planned direct and priced at $0 without parsing the
    packaged price grid, which holds only cloud regions; a cloud region still gets it."""
    (tmp_path / "src").mkdir()
    (tmp_path / "dst").mkdir()
    (tmp_path / "src" / "a").write_bytes(b"a")
    code = ("import json, sys\nfrom skyplane_provider.transfer import Transfer, TransferRequest\n"
            "from skyplane_provider.transfer.estimate import unpriced_regions\n"
            f"t = Transfer(TransferRequest(src={str(tmp_path / 'src')!r}, dsts=[{str(tmp_path / 'dst')!r}], "
            "dry_run=True)).dry_run()\n"
            "grid = sys.modules.get('planner.grid')\n"
            "before = grid.Grid.load_default.cache_info().currsize if grid else 0\n"
            "cloud = unpriced_regions({'src': 'aws:us-east-1', 'dsts': ['azure:unknown'], 'gateways': {}}, None)\n"
            "print(json.dumps([t.plan['solver'], t.plan['src'], before, cloud]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == ["direct", "local", 0, ["azure:unknown"]]


def test_cp_starts_its_coordinator_first_and_ends_it_when_nothing_runs(tmp_path, home):
    """``cp`` starts its job's coordinator process before it imports its own modules; a usage error,
    a refused request and a dry run end it before the command exits: no process, no job directory.
    A copy runs in it."""
    from skyplane_provider.testing.leftovers import coordinator_pids

    (tmp_path / "src").mkdir()
    (tmp_path / "dst").mkdir()
    (tmp_path / "src" / "a").write_bytes(b"a")
    for argv, status in ((["cp", "-r", str(tmp_path / "src"), str(tmp_path / "dst"), "--chunk-size", "lots"], 2),
                         (["cp", "-r", str(tmp_path / "nothing"), str(tmp_path / "dst")], 1),
                         (["cp", "-r", str(tmp_path / "src"), str(tmp_path / "dst"), "--dry-run"], 0)):
        out = cli(*argv)
        assert out.returncode == status, out.stderr
        assert coordinator_pids(home) == [] and not (Path(home) / "jobs").exists(), argv
    out = cli("cp", "-r", str(tmp_path / "src"), str(tmp_path / "dst"), "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1])["objects"] == 1
    assert (tmp_path / "dst" / "a").read_bytes() == b"a"


def test_cp_r_of_a_tree_listed_in_many_pages(tmp_path, home):
    """``cp -r`` of 11,001 files (one at the top, 6,000 in one directory, 500 in each of ten): the client
    lists 1,000, the coordinator lists the rest in pages of 5,000 that each continue the previous
    page's walk (gateway/stores/local_walk.py), across directory boundaries. Every file arrives;
    ``sync`` then finds every one up to date (a merge join of two sorted listings)."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    names = (["top"] + [f"big/{i:04d}" for i in range(6000)]
             + [f"d{d:02d}/{i:03d}" for d in range(10) for i in range(500)])
    for name in names:
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(name.encode())
    dst.mkdir()
    out = cli("cp", "-r", str(src), str(dst), "--json", timeout=300)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1])["objects"] == len(names)
    copied = read_all("file://" + str(dst))
    assert copied == read_all("file://" + str(src)) and len(copied) == len(names)
    out = cli("sync", str(src), str(dst), "--json", timeout=300)
    assert out.returncode == 0, out.stderr
    stats = json.loads(out.stdout.strip().splitlines()[-1])
    assert stats["objects"] == 0 and stats["skipped_objects"] == len(names)
