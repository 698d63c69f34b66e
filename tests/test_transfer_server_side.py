"""Server-side copy in a transfer (skyplane_provider/transfer/server_side.py) on the real emulators:
destinations whose stores copy from the source themselves get no gateway, big objects are copied in
parts, every copy is verified, and the stats say which path each copy took."""

from __future__ import annotations

import json
import os

import pytest

from gateway.stores import open_store
from planner.errors import BadOptionError, SkyplaneError
from skyplane_provider.buckets import make_bucket
from skyplane_provider.testing.buckets import create_bucket, unique_name
from skyplane_provider.testing.leftovers import leftovers
from skyplane_provider.transfer import Transfer, TransferRequest, server_side

from .helpers import digests, gateway_pids, put_objects, read_all

MiB = 1024**2


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch) -> str:
    home = str(tmp_path / "home")
    monkeypatch.setenv("SKYPLANE_HOME", home)
    yield home
    assert gateway_pids(home) == [], "a gateway process was left running"


def _sample(big: int = 0) -> dict[str, bytes]:
    objects = {f"in/small-{i}.bin": os.urandom(1000 + i) for i in range(3)}
    objects["in/empty"] = b""
    if big:
        objects["in/big.bin"] = os.urandom(big)
    return objects


def _run(src: str, dsts: list[str], **options) -> Transfer:
    snapshots = []
    transfer = Transfer(TransferRequest(src=src + "/in/", dsts=[d + "/out/" for d in dsts], **options),
                        progress=snapshots.append)
    transfer.stats = transfer.execute()  # in this process: its fleet, report and progress are looked at
    transfer.snapshots = snapshots
    return transfer


def _report(t: Transfer) -> list[dict]:
    """The job's per-object report lines."""
    return [json.loads(line) for line in t.ledger.report.path.read_text().splitlines()]


def _copied(root: str, objects: dict[str, bytes]) -> None:
    assert read_all(root, "out/") == {k.removeprefix("in/"): v for k, v in digests(objects).items()}
    assert leftovers(root) == []  # no open upload, no probe object


def test_s3_to_s3_across_regions_is_copied_by_s3_in_parts_with_no_gateway(emulators, monkeypatch):
    # objects above the cutoff (4.656 GiB by default, rclone's) go in parts: lowered to 5 MiB here
    monkeypatch.setattr(server_side, "COPY_CUTOFF", 5 * MiB)
    src = create_bucket("s3")
    dst = make_bucket(f"s3://{unique_name()}", region="aws:eu-west-1")
    objects = _sample(big=12 * MiB)
    put_objects(src, objects)
    t = _run(src, [dst], chunk_size="5MiB")
    stats = t.stats
    assert t.fleet is None and stats.plan["gateways"] == {} and stats.plan["server_side"] == ["aws:eu-west-1"]
    assert stats.paths == {"server-side": 5, "gateways": 0} and stats.objects == 5 and stats.verified
    # whole copies keep the source's MD5; a copy in parts (3 of 5 MiB) has none to compare: its size
    assert stats.verification["by"] == {"md5": 4, "size": 1}
    assert {(r["key"], r["status"]) for r in _report(t)} == {(k, "copied") for k in objects}
    assert open_store(dst).head("out/big.bin").md5 is None  # it was assembled from parts
    last = t.snapshots[-1]  # progress is reported without gateways too
    assert (last.bytes_done, last.objects_done) == (last.bytes_total, 5) == (stats.bytes, 5)
    _copied(dst, objects)


def test_gcs_to_gcs_is_rewritten_by_gcs(emulators):
    src, dst = create_bucket("gcs"), create_bucket("gcs")
    objects = _sample(big=3 * MiB)
    put_objects(src, objects)
    t = _run(src, [dst])
    assert t.fleet is None and t.stats.paths == {"server-side": 5, "gateways": 0}
    assert t.stats.verification["by"] == {"md5": 5}
    _copied(dst, objects)


def test_azure_to_azure_is_copied_from_a_sas_url(emulators):
    src, dst = create_bucket("azure"), create_bucket("azure")
    objects = _sample(big=2 * MiB)
    put_objects(src, objects)
    t = _run(src, [dst], dst_regions=["azure:westeurope"], src_region="azure:eastus")
    assert t.fleet is None and t.stats.paths == {"server-side": 5, "gateways": 0}
    assert sum(t.stats.verification["by"].values()) == 5
    _copied(dst, objects)


def test_one_destination_server_side_and_one_through_gateways(emulators):
    src, gcs = create_bucket("s3"), create_bucket("gcs")
    dst = make_bucket(f"s3://{unique_name()}", region="aws:eu-west-1")
    objects = _sample(big=3 * MiB)
    put_objects(src, objects)
    t = _run(src, [dst, gcs], chunk_size="1MiB")
    # S3 copies to eu-west-1 for the same egress as a gateway would pay, and no VM there
    assert t.fleet is not None and t.stats.plan["server_side"] == ["aws:eu-west-1"]
    assert t.stats.paths == {"server-side": 5, "gateways": 5}
    assert sorted(r["dest"] for r in _report(t)) == sorted([dst + "/out/"] * 5 + [gcs + "/out/"] * 5)
    _copied(dst, objects)
    _copied(gcs, objects)


def test_never_routes_through_gateways_and_always_names_a_store_that_cannot(emulators, tmp_path, home):
    src, dst = create_bucket("gcs"), create_bucket("gcs")
    objects = _sample()
    put_objects(src, objects)
    t = _run(src, [dst], server_side="never")
    assert t.fleet is not None and t.stats.paths == {"server-side": 0, "gateways": 4}
    _copied(dst, objects)
    (tmp_path / "local").mkdir()
    with pytest.raises(BadOptionError, match="cannot copy server-side from") as info:
        Transfer(TransferRequest(src=src + "/in/", dsts=[f"file://{tmp_path}/local/"], server_side="always")).prepare()
    assert "server_side='auto'" in info.value.hint
    assert gateway_pids(home) == [] and os.listdir(tmp_path / "local") == []
    with pytest.raises(BadOptionError, match="server-side copy mode"):
        TransferRequest(src=src, dsts=[dst], server_side="sometimes").validate()


def test_the_command_line_copies_server_side_under_a_bandwidth_cap(emulators):
    """``cp --server-side always --bwlimit``: the job document carries both to the coordinator process;
    the copy is the store's, so the cap (which paces gateways) has nothing to pace."""
    import json
    import subprocess
    import sys

    src = create_bucket("s3")
    dst = make_bucket(f"s3://{unique_name()}", region="aws:eu-west-1")
    objects = _sample()
    put_objects(src, objects)
    out = subprocess.run([sys.executable, "-m", "skyplane_provider.cli.main", "cp", "-r", src + "/in/",
                          dst + "/out/", "--server-side", "always", "--bwlimit", "50MiB/s", "--json"],
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    stats = json.loads(out.stdout.strip().splitlines()[-1])
    assert stats["paths"] == {"server-side": 4, "gateways": 0} and stats["plan"]["gateways"] == {}
    _copied(dst, objects)


def test_a_failed_copy_in_parts_is_aborted_and_leaves_nothing(emulators, monkeypatch):
    """The source object vanishes between the listing and its copy: the job fails naming it, the
    upload its parts went to is aborted, and no object appears at the destination."""
    monkeypatch.setattr(server_side, "COPY_CUTOFF", 5 * MiB)
    src = create_bucket("s3")
    dst = make_bucket(f"s3://{unique_name()}", region="aws:eu-west-1")
    put_objects(src, {"in/big.bin": os.urandom(11 * MiB)})
    transfer = Transfer(TransferRequest(src=src + "/in/", dsts=[dst + "/out/"], chunk_size="5MiB",
                                        server_side="always")).prepare()
    open_store(src).delete("in/big.bin")
    with pytest.raises(SkyplaneError, match="big.bin"):
        transfer.execute()
    assert read_all(dst, "out/") == {} and leftovers(dst) == []
