"""End to end: publish a dataset from moto to fake-gcs and Azurite through real local gateways, then
read it back as ``sky://`` from different regions (fsspec and Airflow's ObjectStoragePath), re-publish
(only changes move), lose a replica's objects (reads fall back), and publish from two processes at once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import fsspec
import pytest

from gateway.stores import open_store
from planner.errors import TransferError
from skyplane_provider.broker import Catalogue, Publication, publish
from skyplane_provider.broker.manifest import replica_store
from skyplane_provider.testing.buckets import create_bucket
from skyplane_provider.transfer import TransferRequest

MiB = 1024**2
CLI = [sys.executable, "-m", "skyplane_provider.cli.main"]
REPO = str(Path(__file__).resolve().parents[1])
AZ = "azure:eastus"
OBJECTS = {"train/part-0.bin": os.urandom(3 * MiB + 5), "train/part-1.csv": b"id,v\n" + b"1,2\n" * 50_000,
           "README.md": b"# demo dataset\n", "empty": b""}


@pytest.fixture(scope="module")
def world(emulators, tmp_path_factory):
    """Buckets in the three emulators, the source objects in moto, and a catalogue path."""
    home = tmp_path_factory.mktemp("skyplane-home")
    patch = pytest.MonkeyPatch()
    patch.setenv("SKYPLANE_HOME", str(home))
    patch.delenv("SKYPLANE_CATALOGUE", raising=False)
    patch.delenv("SKYPLANE_REGION", raising=False)
    s3, gcs, az = create_bucket("s3"), create_bucket("gcs"), create_bucket("azure")
    src = open_store(s3)
    for key, data in OBJECTS.items():
        src.write("datasets/demo/" + key, data)
    yield {"s3": s3, "gcs": gcs, "az": az, "home": home, "catalogue": str(home / "catalogue.json"),
           "replicas": {"aws:us-east-1": f"{s3}/datasets/demo/", "gcp:us-central1": f"{gcs}/demo/",
                        AZ: f"{az}/replicas/demo/"}}
    patch.undo()


@pytest.fixture(scope="module")
def published(world):
    r = world["replicas"]
    result = publish(r["aws:us-east-1"], [r["gcp:us-central1"], r[AZ]], dataset="demo",
                     dst_regions=[None, AZ], chunk_size="1MiB", solver="mst")
    return result


def test_publish_records_three_verified_replicas(world, published):
    assert published.catalogue == world["catalogue"]  # the default: $SKYPLANE_HOME/catalogue.json
    assert published.stats.verified and published.stats.objects == len(OBJECTS)
    dataset = Catalogue().dataset("demo")
    assert {(r.uri, r.region, r.state) for r in dataset.replicas} == {
        (uri, region, "verified") for region, uri in world["replicas"].items()}
    assert [r.origin for r in dataset.replicas] == [True, False, False]
    for r in dataset.replicas:
        assert (r.objects, r.bytes) == (len(OBJECTS), sum(map(len, OBJECTS.values())))
        assert len(r.manifest_sha256) == 64
    json.dumps(published.to_dict())  # an XCom value


@pytest.mark.parametrize("region, served_from", [
    ("aws:us-east-1", "aws:us-east-1"), ("gcp:us-central1", "gcp:us-central1"), (AZ, AZ),
    ("aws:us-west-2", "aws:us-east-1"),  # intra-AWS egress (0.02/GB) beats the other clouds'
])
def test_fsspec_reads_pick_the_cheapest_replica(world, published, region, served_from):
    for key, data in OBJECTS.items():
        with fsspec.open(f"sky://demo/{key}", "rb", region=region) as f:
            assert f.read() == data
            assert f.served_by == world["replicas"][served_from]


@pytest.mark.filterwarnings("ignore:UPath .sky. filesystem not explicitly implemented")
def test_object_storage_path_reads(world, published, monkeypatch):
    pytest.importorskip("airflow.sdk")
    from airflow.sdk import ObjectStoragePath

    for region in ("gcp:us-central1", AZ):
        monkeypatch.setenv("SKYPLANE_REGION", region)
        with ObjectStoragePath("sky://demo/train/part-0.bin").open("rb") as f:
            assert f.read() == OBJECTS["train/part-0.bin"]
            assert f.served_by == world["replicas"][region]


def test_republish_moves_only_changes_then_reads_fall_back(world, published):
    r = world["replicas"]
    src_store, src_prefix = replica_store(r["aws:us-east-1"])
    src_store.write(src_prefix + "README.md", b"# demo dataset, v2\n")
    src_store.write(src_prefix + "train/part-2.csv", b"id,v\n3,4\n")
    before = {x.uri: x.manifest_sha256 for x in Catalogue().dataset("demo").replicas}
    again = publish(r["aws:us-east-1"], [r["gcp:us-central1"], r[AZ]], dataset="demo", dst_regions=[None, AZ],
                    chunk_size="1MiB")
    assert again.stats.objects == 2 and again.stats.skipped_objects == len(OBJECTS) - 1
    after = Catalogue().dataset("demo")
    assert all(x.state == "verified" and x.objects == len(OBJECTS) + 1 for x in after.replicas)
    assert all(before[x.uri] != x.manifest_sha256 for x in after.replicas)
    # The GCS replica loses its objects: a reader in GCP falls back to the next cheapest (Azure, 0.0875/GB).
    gcs_store, gcs_prefix = replica_store(r["gcp:us-central1"])
    for o in list(gcs_store.list(gcs_prefix)):
        gcs_store.delete(o.key)
    with fsspec.open("sky://demo/README.md", "rb", region="gcp:us-central1", catalogue_ttl=0) as f:
        assert f.read() == b"# demo dataset, v2\n"
        assert f.served_by == r[AZ]
    fs = fsspec.filesystem("sky", region="gcp:us-central1", catalogue_ttl=0)
    assert sorted(fs.ls("demo/train", detail=False)) == ["demo/train/part-0.bin", "demo/train/part-1.csv",
                                                         "demo/train/part-2.csv"]


def test_two_concurrent_publishers_keep_both_updates(world, tmp_path):
    store = open_store(world["s3"])
    for name in ("alpha", "beta"):
        for i in range(3):
            store.write(f"{name}/obj-{i}", os.urandom(1000 + i))
    catalogue = str(tmp_path / "shared-catalogue.json")
    procs = {name: subprocess.Popen(
        CLI + ["publish", f"{world['s3']}/{name}/", "--dataset", name, "--to", f"{world[dst]}/{name}/",
               "--catalogue", catalogue, "--json"] + (["--dst-region", AZ] if dst == "az" else []),
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name, dst in (("alpha", "gcs"), ("beta", "az"))}
    try:
        outs = {name: p.communicate(timeout=240) for name, p in procs.items()}
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
    for name, (out, err) in outs.items():
        assert procs[name].returncode == 0, err
        assert json.loads(out.strip().splitlines()[-1])["dataset"] == name
    state = Catalogue(catalogue).read()
    assert sorted(state.datasets) == ["alpha", "beta"]
    for name in ("alpha", "beta"):
        assert [r.state for r in state.dataset(name).replicas] == ["verified", "verified"]
    listed = subprocess.run(CLI + ["datasets", "--catalogue", catalogue, "--json"], cwd=REPO, capture_output=True,
                            text=True, check=True)
    assert sorted(json.loads(listed.stdout)["datasets"]) == ["alpha", "beta"]


def test_publish_help_and_bad_input(world):
    out = subprocess.run(CLI + ["publish", "--help"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert "--dataset" in out and "--to" in out and "--catalogue" in out and "--solver" in out
    bad = subprocess.run(CLI + ["publish", f"{world['s3']}/nothing-here/", "--dataset", "x", "--to",
                                f"{world['gcs']}/x/"], cwd=REPO, capture_output=True, text=True)
    assert bad.returncode == 1 and "nothing to copy" in bad.stderr


def test_failed_publish_leaves_its_destinations_stale(world):
    open_store(world["s3"]).write("gamma/obj", b"x" * 1000)
    request = TransferRequest(src=f"{world['s3']}/gamma/", dsts=[f"{world['gcs']}/gamma/"])
    publication = Publication(request, "gamma").prepare()
    publication.cancel()  # the transfer stops (and tears its fleet down) as soon as it runs
    with pytest.raises(TransferError, match="cancelled"):
        publication.run()
    assert [(r.uri, r.state) for r in Catalogue().dataset("gamma").replicas] == [(f"{world['gcs']}/gamma/", "stale")]
    with pytest.raises(FileNotFoundError, match="no verified replica"):
        fsspec.open("sky://gamma/obj", "rb", region="gcp:us-central1", catalogue_ttl=0).open()
