"""#18 items 1-3 through real stores: filters applied while listing, the dry run, the cost guard and
the mirror's deletions (moto, fake-gcs-server, Azurite, local directories)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from gateway.stores import open_store
from planner.errors import BadOptionError, CostLimitError, DeleteLimitError
from skyplane_provider.transfer import DryRun, Transfer, TransferRequest, copy, sync

from .helpers import digests, gateway_pids, put_objects, read_all

AZ = "azure:eastus"
SOURCE = {
    "2024/01/a.json": b'{"a": 1}\n' * 100,
    "2024/01/b.tmp": b"scratch",
    "2024/02/c.json": b'{"c": 3}\n' * 3000,
    "2025/01/d.json": b'{"d": 4}\n',
    "top.csv": b"id\n1\n",
}


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch) -> str:
    """A private SKYPLANE_HOME, so that gateway_pids sees this test's gateways only."""
    path = str(tmp_path / "home")
    monkeypatch.setenv("SKYPLANE_HOME", path)
    yield path
    assert gateway_pids(path) == [], "a gateway process was left running"


def test_filters_while_listing_s3_to_gcs(s3_bucket, gcs_bucket):
    put_objects(s3_bucket, {"in/" + k: v for k, v in SOURCE.items()})
    stats = copy(f"{s3_bucket}/in/", f"{gcs_bucket}/out/", include=["/2024/**"], exclude=["*.tmp"],
                 min_size="100B")
    # The includes come first (rclone's order): b.tmp is taken by /2024/** before *.tmp is tried.
    want = {k: v for k, v in SOURCE.items() if k.startswith("2024/") and len(v) >= 100}
    assert read_all(gcs_bucket, "out/") == digests(want)
    assert stats.objects == len(want) and stats.verified

    stats = copy(f"{s3_bucket}/in/", f"{gcs_bucket}/rules/", filter=["- *.tmp", "+ 2024/**", "- **"], max_size="1KiB")
    assert read_all(gcs_bucket, "rules/") == digests({"2024/01/a.json": SOURCE["2024/01/a.json"]})


def test_age_filters_local_to_azure(tmp_path, azure_container):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("old.log", "new.log"):
        (src / name).write_bytes(name.encode())
    week_ago = time.time() - 7 * 86400
    os.utime(src / "old.log", (week_ago, week_ago))
    copy(str(src), f"{azure_container}/young/", max_age="1d", dst_regions=[AZ])
    copy(str(src), f"{azure_container}/aged/", min_age="2d", dst_regions=[AZ])
    assert list(read_all(azure_container, "young/")) == ["new.log"]
    assert list(read_all(azure_container, "aged/")) == ["old.log"]


def test_dry_run_moves_nothing_and_prices_requests(s3_bucket, azure_container, home):
    put_objects(s3_bucket, {"in/" + k: v for k, v in SOURCE.items()})
    put_objects(azure_container, {"out/gone.json": b"stale", "out/2024/01/a.json": SOURCE["2024/01/a.json"]})
    before = read_all(azure_container)
    dry = sync(f"{s3_bucket}/in/", f"{azure_container}/out/", exclude=["*.tmp"], delete=True, dry_run=True,
               dst_regions=[AZ])
    assert isinstance(dry, DryRun)
    assert gateway_pids(home) == [] and read_all(azure_container) == before
    copied = {src.rsplit("/in/", 1)[1] for src, _, _ in dry.copies}
    assert copied == {"2024/02/c.json", "2025/01/d.json", "top.csv"}  # a.json is up to date, b.tmp excluded
    assert [d for d, _ in dry.deletions] == [f"{open_store(azure_container).root_uri}/out/gone.json"]
    d = dry.to_dict()
    assert d["objects"] == 3 and d["skipped_objects"] == 1 and d["deleted_objects"] == 1
    assert "copies" not in d  # compact: an XCom value
    cost = d["cost"]
    # S3 -> Azure: egress priced by the grid; LIST and GET at S3's prices, PUT and LIST at Azure's.
    assert cost["egress_usd"] > 0 and cost["requests_usd"] > 0
    assert cost["total_usd"] == pytest.approx(cost["egress_usd"] + cost["vm_usd"] + cost["requests_usd"], abs=1e-6)
    src_req = cost["requests"][s3_bucket]
    assert src_req["list"] == 1 and src_req["read"] == 3
    assert cost["requests"][open_store(azure_container).root_uri]["delete"] == 1
    lines = list(dry.lines())
    assert any(line.startswith("would delete") for line in lines) and "predicted cost" in lines[-2]

    # Anchored includes confine the listing to their prefixes: one LIST each, nothing else listed.
    confined = copy(f"{s3_bucket}/in/", f"{azure_container}/out/", include=["/2024/**", "/2025/**"], dry_run=True,
                    dst_regions=[AZ])
    assert confined.cost["requests"][s3_bucket]["list"] == 2 and confined.objects == 4

    with pytest.raises(BadOptionError, match="dry run"):
        Transfer(TransferRequest(src=f"{s3_bucket}/in/", dsts=[f"{azure_container}/out/"], dry_run=True)).run()


def test_cost_guard_refuses_before_any_gateway(s3_bucket, gcs_bucket, azure_container, home):
    put_objects(s3_bucket, {"in/" + k: v for k, v in SOURCE.items()})
    with pytest.raises(CostLimitError) as info:
        copy(f"{s3_bucket}/in/", f"{gcs_bucket}/out/", max_cost_usd=1e-9)
    message = str(info.value)
    assert "predicted cost $" in message and "egress" in message and "max-cost-usd" in message
    assert gateway_pids(home) == [] and read_all(gcs_bucket) == {}
    # Within budget it runs.
    assert copy(f"{s3_bucket}/in/", f"{gcs_bucket}/out/", max_cost_usd=1.0).objects == len(SOURCE)
    # A region without a price cannot be held to a budget.
    with pytest.raises(CostLimitError, match="azure:unknown"):
        Transfer(TransferRequest(src=f"{s3_bucket}/in/", dsts=[f"{azure_container}/x/"], max_cost_usd=1.0)).prepare()


def test_mirror_deletes_after_verified_copies(s3_bucket, gcs_bucket, tmp_path):
    put_objects(s3_bucket, {"in/" + k: v for k, v in SOURCE.items()})
    extra = {"out/gone.json": b"no longer in the source", "out/keep.tmp": b"excluded: never deleted",
             "out/2024/01/b.tmp": b"excluded too"}
    put_objects(gcs_bucket, extra)
    with pytest.raises(DeleteLimitError, match="nothing was copied or deleted"):
        sync(f"{s3_bucket}/in/", f"{gcs_bucket}/out/", exclude=["*.tmp"], delete=True, max_delete=0)
    assert read_all(gcs_bucket, "out/") == digests({k[4:]: v for k, v in extra.items()})

    stats = sync(f"{s3_bucket}/in/", f"{gcs_bucket}/out/", exclude=["*.tmp"], delete=True, max_delete=1)
    assert stats.deleted_objects == 1 and stats.verified
    want = {k: v for k, v in SOURCE.items() if not k.endswith(".tmp")}
    want.update({"keep.tmp": extra["out/keep.tmp"], "2024/01/b.tmp": extra["out/2024/01/b.tmp"]})
    assert read_all(gcs_bucket, "out/") == digests(want)

    # A source object a size bound leaves out still exists: its copy is kept.
    again = sync(f"{s3_bucket}/in/", f"{gcs_bucket}/out/", exclude=["*.tmp"], max_size="1KiB", delete=True)
    assert again.deleted_objects == 0 and "2024/02/c.json" in read_all(gcs_bucket, "out/")

    # Into a directory: a run with nothing to copy still mirrors; what the filters leave out stays.
    (tmp_path / "dst").mkdir()
    sync(f"{s3_bucket}/in/", str(tmp_path / "dst") + "/", include=["*.csv"])
    for name in ("stale.csv", "other.txt"):
        (tmp_path / "dst" / name).write_bytes(b"x")
    assert sync(f"{s3_bucket}/in/", str(tmp_path / "dst") + "/", include=["*.csv"], delete=True).deleted_objects == 1
    assert sorted(os.listdir(tmp_path / "dst")) == ["other.txt", "top.csv"]


@pytest.mark.parametrize("options, needle", [
    (dict(include=["[a-"]), "mismatched '['"),
    (dict(exclude=["logs/"]), "logs/**"),
    (dict(filter=["*.json"]), "'+ GLOB' or '- GLOB'"),
    (dict(min_size="-5B"), "cannot read min_size"),
    (dict(max_size="10"), "10B for bytes"),
    (dict(min_size="2MiB", max_size="1MiB"), "swap them"),
    (dict(min_age="3x"), "write a duration"),
    (dict(min_age="7d", max_age="1d"), "no object could pass"),
    (dict(delete=True), "sync --delete"),
    (dict(sync=True, delete=True, max_delete=-1), "0 or more"),
    (dict(sync=True, max_delete=3), "add --delete"),
    (dict(sync=True, delete=True, dsts=["{s3}/out/", "{s3}/out/nested/"]), "overlap"),
    (dict(max_cost_usd=-1), "0 or more"),
    (dict(max_cost_usd="5 dollars"), "max_cost_usd"),
    (dict(dry_run="yes"), "True or False"),
])
def test_bad_selection_values_refused_before_any_gateway(tmp_path, s3_bucket, home, options, needle):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.json").write_bytes(b"{}")
    options = dict(options)
    dsts = [d.format(s3=s3_bucket) for d in options.pop("dsts", ["{s3}/out/"])]
    with pytest.raises(BadOptionError) as info:
        Transfer(TransferRequest(src=str(src), dsts=dsts, **options)).prepare()
    assert needle in str(info.value)
    assert gateway_pids(home) == [] and read_all(s3_bucket) == {}


def _cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "skyplane_provider.cli.main", *argv], capture_output=True,
                          text=True, timeout=120)


def test_cli_dry_run_filters_and_delete(s3_bucket, gcs_bucket, home):
    put_objects(s3_bucket, {"in/" + k: v for k, v in SOURCE.items()})
    put_objects(gcs_bucket, {"out/gone.json": b"stale"})
    common = ["sync", f"{s3_bucket}/in/", f"{gcs_bucket}/out/", "--include", "*.json", "--delete"]
    out = _cli(*common, "--dry-run")
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("would copy ") == 3 and "would delete " in out.stdout and "predicted cost $" in out.stdout
    assert read_all(gcs_bucket, "out/") == digests({"gone.json": b"stale"}) and gateway_pids(home) == []
    out = _cli(*common, "--dry-run", "--json")
    assert json.loads(out.stdout.splitlines()[-1])["deleted_objects"] == 1
    out = _cli(*common, "--max-cost-usd", "0.0000001")
    assert out.returncode == 1 and "max_cost_usd" in out.stderr and "Traceback" not in out.stderr
    out = _cli("cp", "-r", f"{s3_bucket}/in/", f"{gcs_bucket}/out/", "--delete")
    assert out.returncode == 1 and "sync --delete" in out.stderr
    out = _cli(*common, "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.splitlines()[-1])["deleted_objects"] == 1
    assert set(read_all(gcs_bucket, "out/")) == {k for k in SOURCE if k.endswith(".json")}


def test_estimate_counts_and_prices():
    """The estimate's arithmetic: requests per object, VM time per gateway, the budget's refusal."""
    from planner.plan import direct_plan
    from planner.store_requests import RequestCounts
    from skyplane_provider.transfer.estimate import check_budget, copy_requests, estimate, list_requests

    MiB = 1024**2
    assert copy_requests(5, None) == (1, 1)  # one GET, one PUT
    assert copy_requests(10 * MiB, 4 * MiB) == (3, 5)  # three ranged GETs; begin + 3 parts + complete
    assert (list_requests(0), list_requests(1000), list_requests(2001)) == (1, 1, 3)

    plan = direct_plan("aws:us-east-1", ["gcp:us-central1-a"], gbps=1.0)
    counts = {"s3://src": ("aws:us-east-1", RequestCounts(list=1, read=1000)),
              "gs://dst": ("gcp:us-central1-a", RequestCounts(write=1000, head=1000))}
    est = estimate(plan, 10**9, 1000, counts, hourly_price=lambda region: 1.8)
    assert est.seconds == 8.0  # 1 GB at 1 Gbps
    assert est.vm_usd == pytest.approx(2 * 1.8 * (8 + 60) / 3600)  # two gateways, plus the billed start-up
    assert est.requests_usd == pytest.approx((0.005 + 1000 * 0.0004) / 1000 + (1000 * 0.005 + 1000 * 0.0004) / 1000)
    assert est.total_usd == pytest.approx(est.egress_usd + est.vm_usd + est.requests_usd)
    check_budget(est, est.total_usd + 1e-9)
    with pytest.raises(CostLimitError, match=r"store requests \$0\.0058"):
        check_budget(est, est.total_usd / 2)


def test_dry_run_on_an_ec2_fleet_starts_no_vm_and_prices_its_time(emulators, ec2_endpoint, aws_env, s3_bucket):
    """With the aws provisioner (moto's EC2): the dry run prices the gateway VMs' time, launches nothing;
    the cost guard counts that time."""
    import boto3

    from skyplane_provider.provisioners.aws import TAG_JOB
    from skyplane_provider.testing.buckets import create_bucket

    put_objects(s3_bucket, {"in/" + k: v for k, v in SOURCE.items()})
    dst = create_bucket("s3")
    # server_side="never": S3 to S3 would otherwise be copied by the store itself, with no VM at all.
    fleet = dict(provisioner="aws", credentials=emulators.credentials, server_side="never",
                 provisioner_settings={"endpoint_url": ec2_endpoint, "orchestrator_cidr": "127.0.0.1/32",
                                       "instance_type": "m5.large"})
    dry = copy(f"{s3_bucket}/in/", f"{dst}/out/", dry_run=True, **fleet)
    assert dry.cost["vm_usd"] == pytest.approx(0.096 * (dry.predicted_seconds + 60) / 3600)  # one m5.large
    ec2 = boto3.client("ec2", region_name="us-east-1", endpoint_url=ec2_endpoint)
    tagged = ec2.describe_instances(Filters=[{"Name": f"tag:{TAG_JOB}", "Values": [dry.job_id]}])["Reservations"]
    assert tagged == [] and read_all(dst) == {}
    with pytest.raises(CostLimitError, match="VMs"):
        copy(f"{s3_bucket}/in/", f"{dst}/out/", max_cost_usd=0.001, **fleet)
    assert read_all(dst) == {}
    # Server-side (the default where the stores can): no VM, no GET through us, the PUTs are COPYs.
    fleet.pop("server_side")
    same = copy(f"{s3_bucket}/in/", f"{dst}/out/", dry_run=True, **fleet)
    assert same.plan["server_side"] and same.cost["vm_usd"] == 0 and same.cost["requests"][s3_bucket]["read"] == 0
