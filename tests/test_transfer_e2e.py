"""End to end: real gateway processes moving bytes between the real store emulators."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading

import pytest

from planner.errors import BadURIError, CredentialsError, NotFoundError, SkyplaneError
from planner.plan import Edge, Plan
from skyplane_provider.transfer import copy, sync

from .helpers import digests, gateway_pids, put_objects, read_all

MiB = 1024**2
AZ = "azure:eastus"


def sample(n_small: int = 3, big: int = 5 * MiB + 123) -> dict[str, bytes]:
    """Objects above and below a 2 MiB chunk size; some compressible, some not."""
    objs = {f"dir/small-{i}.csv": (b"id,value\n" + b"%d,%d\n" % (i, i * i)) * (1000 + i) for i in range(n_small)}
    objs["dir/big.bin"] = os.urandom(big)
    objs["top level with space é.txt"] = b"hello sky\n" * 10
    objs["empty"] = b""
    return objs


@pytest.fixture(autouse=True)
def no_gateway_left(tmp_path, monkeypatch):
    """Each test's fleets live under a private SKYPLANE_HOME (inherited by CLI subprocesses), so the
    check sees this test's gateways and not those of other runs on the machine."""
    home = str(tmp_path / "home")
    monkeypatch.setenv("SKYPLANE_HOME", home)
    yield
    assert gateway_pids(home) == [], "a gateway process was left running"


def test_file_to_s3(tmp_path, s3_bucket):
    objs = sample()
    src = tmp_path / "src"
    for k, v in objs.items():
        (src / k).parent.mkdir(parents=True, exist_ok=True)
        (src / k).write_bytes(v)
    stats = copy(str(src), f"{s3_bucket}/in/", chunk_size="2MiB")
    assert read_all(s3_bucket, "in/") == digests(objs)
    assert stats.objects == len(objs) and stats.bytes == sum(map(len, objs.values()))
    # The big object went in two parts (S3's 5 MiB minimum part size), the five small ones in one bundle.
    assert stats.verified and stats.chunks == 3
    assert stats.report["counts"] == {"copied": 6, "skipped": 0, "failed": 0}
    # A local fleet runs on one host: the source's gateway wrote S3 itself (no destination gateway, no
    # hop, nothing on the wire), the plan shows it and the stats say what was skipped (issue #14 item 6).
    assert stats.plan["gateways"] == {"local": 1} and stats.plan["written_at_source"] == ["aws:us-east-1"]
    assert stats.route == [] and stats.bytes_on_wire == 0
    assert stats.work_skipped == {"hop_one_host": 3}
    assert stats.verification["by"] == {"local": len(objs)}


def test_two_gateways_on_one_host_send_clear_frames(tmp_path, s3_bucket):
    """``one_gateway=False``: a gateway per region on one host; the hop never leaves it, so every
    frame goes without lz4 and encryption, and the stats say so (issue #14 item 6)."""
    objs = sample()
    src = tmp_path / "src"
    for k, v in objs.items():
        (src / k).parent.mkdir(parents=True, exist_ok=True)
        (src / k).write_bytes(v)
    stats = copy(str(src), f"{s3_bucket}/in/", chunk_size="2MiB", provisioner_settings={"one_gateway": False})
    assert read_all(s3_bucket, "in/") == digests(objs)
    assert set(stats.plan["gateways"]) == {"local", "aws:us-east-1"} and "written_at_source" not in stats.plan
    assert 0 < stats.bytes_on_wire < stats.bytes * 1.1
    assert stats.work_skipped == {"encryption_loopback": 3, "lz4_loopback": 3}


def test_s3_to_gcs_to_azure_to_file(tmp_path, s3_bucket, gcs_bucket, azure_container):
    objs = sample()
    put_objects(s3_bucket, {"a/" + k: v for k, v in objs.items()})
    copy(f"{s3_bucket}/a/", f"{gcs_bucket}/b/", chunk_size="2MiB")
    assert read_all(gcs_bucket, "b/") == digests(objs)
    copy(f"{gcs_bucket}/b/", f"{azure_container}/c/", chunk_size="2MiB", dst_regions=[AZ])
    assert read_all(azure_container, "c/") == digests(objs)
    out = tmp_path / "out"
    out.mkdir()
    copy(f"{azure_container}/c/", str(out), chunk_size="2MiB", src_region=AZ, encrypt=False, compress=False)
    assert read_all("file://" + str(out)) == digests(objs)


def test_one_source_two_destinations(s3_bucket, gcs_bucket, azure_container):
    objs = sample(n_small=5)
    put_objects(s3_bucket, objs)
    stats = copy(s3_bucket + "/", [gcs_bucket + "/m/", azure_container + "/m/"], chunk_size="2MiB",
                 dst_regions=["gcp:us-central1", AZ])
    assert read_all(gcs_bucket, "m/") == digests(objs)
    assert read_all(azure_container, "m/") == digests(objs)
    assert stats.objects == len(objs)  # each source object counted once


def test_forced_relay_hop(tmp_path, s3_bucket, gcs_bucket):
    objs = sample()
    put_objects(s3_bucket, objs)
    relay = "aws:us-west-2"
    plan = Plan(src="aws:us-east-1", dsts=("gcp:us-central1",), solver="manual",
                gateways={"aws:us-east-1": 1, relay: 1, "gcp:us-central1": 1},
                edges=[Edge("aws:us-east-1", relay, 1.0, 4, cost_per_gb=0.02),
                       Edge(relay, "gcp:us-central1", 1.0, 4, cost_per_gb=0.09)],
                throughput_gbps=1.0, cost_per_gb=0.11)
    stats = copy(s3_bucket + "/", gcs_bucket + "/r/", plan=plan.to_dict(), chunk_size="2MiB")
    assert read_all(gcs_bucket, "r/") == digests(objs)
    assert [(e["src"], e["dst"]) for e in stats.route] == [("aws:us-east-1", relay), (relay, "gcp:us-central1")]
    # The actual egress prices the frame bytes each hop's gateways sent (counted by the gateways,
    # the relay's too: it forwards the source's frames as they are), each at its edge's price.
    first, second = (e["bytes_sent"] for e in stats.route)
    assert first == second == stats.bytes_on_wire > 0
    assert stats.egress_usd_actual == round((first * 0.02 + second * 0.09) / 1e9, 6)


def test_sync_twice_moves_nothing_the_second_time(tmp_path, s3_bucket):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(20):
        (src / f"f{i}").write_bytes(os.urandom(1000 + i))
    first = sync(str(src), s3_bucket + "/s/")
    assert first.objects == 20
    second = sync(str(src), s3_bucket + "/s/")
    assert second.objects == 0 and second.skipped_objects == 20
    (src / "f3").write_bytes(b"changed size")
    third = sync(str(src), s3_bucket + "/s/")
    assert third.objects == 1
    assert read_all(s3_bucket, "s/")["f3"] == digests({"f3": b"changed size"})["f3"]


def test_sync_recopies_a_same_size_object_whose_checksum_differs(gcs_bucket):
    objs = {f"k{i}": os.urandom(3000) for i in range(4)}
    put_objects(gcs_bucket, {"a/" + k: v for k, v in objs.items()})
    assert sync(gcs_bucket + "/a/", gcs_bucket + "/b/").objects == 4
    put_objects(gcs_bucket, {"b/k2": os.urandom(3000)})  # same size, other bytes
    again = sync(gcs_bucket + "/a/", gcs_bucket + "/b/")
    assert again.objects == 1 and again.skipped_objects == 3
    assert read_all(gcs_bucket, "b/") == digests(objs)


def test_two_thousand_small_objects(tmp_path, gcs_bucket):
    src = tmp_path / "many"
    src.mkdir()
    objs = {f"k{i:05d}": os.urandom(64) + str(i).encode() for i in range(2000)}
    for k, v in objs.items():
        (src / k).write_bytes(v)
    stats = copy(str(src), gcs_bucket + "/many/")
    assert stats.objects == 2000
    assert read_all(gcs_bucket, "many/") == digests(objs)


@pytest.mark.slow
def test_one_gib_file_to_file_with_parts(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    block = os.urandom(MiB)
    sizes = {"huge-a": 700 * MiB, "huge-b": 300 * MiB, "small": 3 * MiB}
    for name, size in sizes.items():
        with open(src / name, "wb") as f:
            for i in range(size // MiB):
                f.write(block[i % 7:] + block[: i % 7])
    stats = copy(str(src), str(dst), chunk_size="64MiB", gateways_per_region=2)
    assert stats.bytes == sum(sizes.values())
    assert read_all("file://" + str(dst)) == read_all("file://" + str(src))


def test_default_flags_write_an_object_up_to_the_stores_single_request_size_whole(tmp_path, gcs_bucket):
    """With no chunk size given, an object up to the destination's one-request size (GCS: 150 MiB)
    travels as one chunk and is written in one request (no parts, no compose); the user's chunk size
    cuts it in parts as before."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "forty.bin").write_bytes(os.urandom(40 * MiB))
    stats = copy(str(src), f"{gcs_bucket}/whole/")
    assert stats.verified and stats.chunks == 1
    stats = copy(str(src), f"{gcs_bucket}/parts/", chunk_size="16MiB")
    assert stats.verified and stats.chunks == 3
    assert read_all(gcs_bucket, "whole/") == read_all(gcs_bucket, "parts/") == read_all("file://" + str(src))


# ---- bad input: a clear error before any gateway starts, destination untouched ----------------

def test_bad_input_errors_before_any_gateway(tmp_path, s3_bucket):
    cases = [
        (lambda: copy("s4://bucket/x", s3_bucket + "/"), BadURIError),
        (lambda: copy(s3_bucket + "/does-not-exist/", str(tmp_path)), NotFoundError),
        (lambda: copy(str(tmp_path / "nope"), s3_bucket + "/"), NotFoundError),
        (lambda: copy(str(tmp_path), "s3://no-such-bucket-here/x/"), NotFoundError),
    ]
    (tmp_path / "f").write_bytes(b"x")
    for call, exc in cases:
        with pytest.raises(exc) as info:
            call()
        assert str(info.value)
    assert read_all(s3_bucket) == {}


def test_empty_source_prefix(tmp_path, s3_bucket):
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotFoundError, match="nothing to copy"):
        copy(str(tmp_path / "empty"), s3_bucket + "/")


def test_missing_credentials(tmp_path, s3_bucket, monkeypatch):
    (tmp_path / "f").write_bytes(b"x")
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(CredentialsError):
        copy(str(tmp_path), "s3://creds-test-bucket/x/", credentials={})


def test_failed_transfer_leaves_no_partial_object(tmp_path, s3_bucket):
    """Every gateway killed mid-transfer, and each replacement as it starts: once the replacements
    are used up the transfer fails loudly, its multipart uploads are aborted and nothing partial is
    visible at the destination: the object is absent, or whole where every part had landed before
    the kills and the coordinator completed the upload (seen 1 run in 20)."""
    import signal

    import boto3

    src = tmp_path / "src"
    src.mkdir()
    data = os.urandom(64 * MiB)
    (src / "big").write_bytes(data)

    done, killers = threading.Event(), []

    def kill_fleet(progress):
        # From the first progress on, every gateway of this job (others may run on the host) is killed
        # as it appears, replacements too, until the copy returns: killed only at each progress, a
        # replacement could finish the copy between two of them (the long poll reports less often).
        def keep_killing() -> None:
            while not done.is_set():
                for pid in gateway_pids(progress.job_id):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                done.wait(0.01)

        if not killers:
            killers.append(threading.Thread(target=keep_killing, daemon=True))
            killers[0].start()

    try:
        with pytest.raises(SkyplaneError, match="died|gone"):
            # Capped so that the copy outlasts its first progress report, however fast the stores answer
            # (64 MiB at 16 MiB/s: 4 s; the first report comes within one).
            copy(str(src), s3_bucket + "/p/", chunk_size="5MiB", bwlimit="16MiB/s", progress=kill_fleet)
    finally:
        done.set()
        for k in killers:
            k.join(5)
    bucket = s3_bucket.split("://")[1]
    assert boto3.client("s3").list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert read_all(s3_bucket, "p/") in ({}, digests({"big": data}))


def test_cli_cp_json(tmp_path, s3_bucket):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_bytes(b"a" * 5000)
    out = subprocess.run([sys.executable, "-m", "skyplane_provider.cli.main", "cp", "-r", str(src), s3_bucket + "/cli/",
                          "--json"], capture_output=True, text=True, timeout=120, env=os.environ.copy())
    assert out.returncode == 0, out.stderr
    stats = json.loads(out.stdout.strip().splitlines()[-1])
    for key in ("objects", "bytes", "bytes_on_wire", "seconds", "gbps", "verified", "retries", "plan", "cost_usd"):
        assert key in stats
    assert stats["objects"] == 1 and stats["verified"] is True
    assert stats["work_skipped"] == {"hop_one_host": 1}


def test_cli_bad_uri_exit_code(tmp_path):
    out = subprocess.run([sys.executable, "-m", "skyplane_provider.cli.main", "cp", "gs://", str(tmp_path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "error:" in out.stderr and "bucket" in out.stderr
