"""``sky://`` reads against three real replicas (moto, fake-gcs, Azurite) recorded in a catalogue:
replica choice by caller region, ls/info/cat/ranged reads, fallbacks (missing object, deleted mid-read,
unreachable store), read-only errors, and Airflow's ObjectStoragePath."""

from __future__ import annotations

import os
from pathlib import Path

import fsspec
import pytest

from skyplane_provider.broker import Catalogue, Replica
from skyplane_provider.broker.fs import SkyFileSystem, SkyPathNotFoundError, SkyReadOnlyError, get_fs, schemes
from skyplane_provider.broker.manifest import replica_store

GRID = str(Path(__file__).parent / "data" / "sky_storage_grid.csv")
BIG = os.urandom(3 * 1024 * 1024 + 17)
OBJECTS = {"train/a.bin": BIG, "train/b.txt": b"hello sky\n" * 100, "README": b"a dataset\n"}


@pytest.fixture
def replicas(s3_bucket, gcs_bucket, azure_container, tmp_path, monkeypatch) -> dict[str, str]:
    """Three verified replicas of dataset ``ds`` (written straight into the stores), recorded in a
    catalogue that ``$SKYPLANE_CATALOGUE`` points at; region -> replica URI."""
    uris = {"aws:us-east-1": f"{s3_bucket}/ds/", "gcp:us-central1": f"{gcs_bucket}/copies/ds/",
            "azure:eastus": f"{azure_container}/ds/"}
    for uri in uris.values():
        store, prefix = replica_store(uri)
        for key, data in OBJECTS.items():
            store.write(prefix + key, data)
    catalogue = str(tmp_path / "catalogue.json")
    Catalogue(catalogue).put_replicas("ds", [
        Replica(uri, region, state="verified", origin=(region == "aws:us-east-1")) for region, uri in uris.items()])
    monkeypatch.setenv("SKYPLANE_CATALOGUE", catalogue)
    monkeypatch.delenv("SKYPLANE_REGION", raising=False)
    return {"catalogue": catalogue, **uris}


def delete(replica: str, key: str) -> None:
    store, prefix = replica_store(replica)
    store.delete(prefix + key)


def sky(region: str | None = None, **kwargs) -> SkyFileSystem:
    return SkyFileSystem(region=region, grid=GRID, skip_instance_cache=True, **kwargs)


@pytest.mark.parametrize("region", ["aws:us-east-1", "gcp:us-central1", "azure:eastus", "aws:us-west-2"])
def test_fsspec_open_reads_from_the_cheapest_replica(replicas, region):
    expected = replicas["aws:us-east-1" if region == "aws:us-west-2" else region]
    with fsspec.open("sky://ds/train/a.bin", "rb", region=region, grid=GRID) as f:
        assert f.read() == BIG
        assert f.served_by == expected


def test_region_from_env_then_catalogue_default(replicas, monkeypatch):
    Catalogue(replicas["catalogue"]).set_default_region("gcp:us-central1")
    monkeypatch.delenv("SKYPLANE_REGION", raising=False)
    with sky().open("ds/README") as f:
        assert f.served_by == replicas["gcp:us-central1"]
    monkeypatch.setenv("SKYPLANE_REGION", "azure:eastus")
    with sky().open("sky://ds/README") as f:
        assert f.served_by == replicas["azure:eastus"]


def test_ls_info_cat_and_ranged_reads(replicas):
    fs = sky("aws:us-east-1")
    assert fs.ls("", detail=False) == ["ds"]
    assert fs.ls("sky://ds", detail=False) == ["ds/README", "ds/train"]
    listing = fs.ls("ds/train")
    assert [(e["name"], e["type"], e["size"]) for e in listing] == [
        ("ds/train/a.bin", "file", len(BIG)), ("ds/train/b.txt", "file", 1000)]
    assert fs.info("ds/train")["type"] == "directory"
    assert fs.info("ds/train/a.bin")["size"] == len(BIG)
    assert fs.cat("sky://ds/train/b.txt") == OBJECTS["train/b.txt"]
    assert fs.cat_file("ds/train/a.bin", start=1_000_000, end=1_000_100) == BIG[1_000_000:1_000_100]
    with fs.open("ds/train/a.bin", block_size=256 * 1024) as f:
        f.seek(2_000_000)
        assert f.read(5000) == BIG[2_000_000:2_005_000]
    assert fs.exists("ds/README") and not fs.exists("ds/nope")
    with pytest.raises(FileNotFoundError):
        fs.open("ds/nope")
    with pytest.raises(SkyPathNotFoundError, match="no dataset 'other'"):
        fs.cat("sky://other/x")


def test_missing_object_falls_back_to_the_next_replica(replicas):
    delete(replicas["aws:us-east-1"], "train/b.txt")
    fs = sky("aws:us-east-1")
    with fs.open("ds/train/b.txt") as f:
        assert f.read() == OBJECTS["train/b.txt"]
        assert f.served_by == replicas["azure:eastus"]  # 0.0875/GB from Azure beats 0.12 from GCP


def test_object_deleted_mid_read_falls_back(replicas):
    fs = sky("gcp:us-central1")
    with fs.open("ds/train/a.bin", block_size=1024 * 1024, cache_type="none") as f:
        first = f.read(1024 * 1024)
        assert f.served_by == replicas["gcp:us-central1"]
        delete(replicas["gcp:us-central1"], "train/a.bin")
        rest = f.read()
        assert f.served_by != replicas["gcp:us-central1"]
    assert first + rest == BIG


def test_unreachable_replica_falls_back(replicas, tmp_path):
    dead = "s3://unreachable-bucket/ds/"
    Catalogue(replicas["catalogue"]).put_replicas("ds", [Replica(dead, "aws:us-east-1", state="verified")])
    credentials = {"s3://unreachable-bucket": {"endpoint_url": "http://127.0.0.1:9",  # discard port: refused
                                               "aws_access_key_id": "x", "aws_secret_access_key": "y"}}
    fs = sky("aws:us-east-1", credentials=credentials)
    assert [r.replica.uri for r in fs.replicas("ds")][:2] == [replicas["aws:us-east-1"], dead]  # same price
    delete(replicas["aws:us-east-1"], "README")
    with fs.open("ds/README") as f:
        assert f.read() == OBJECTS["README"]
        assert f.served_by == replicas["azure:eastus"]


def test_unverified_replicas_are_never_read(replicas):
    Catalogue(replicas["catalogue"]).put_replicas("ds", [Replica(replicas["aws:us-east-1"], "aws:us-east-1",
                                                                 state="copying")])
    with sky("aws:us-east-1").open("ds/README") as f:
        assert f.served_by == replicas["azure:eastus"]


def test_writes_are_refused(replicas):
    fs = sky("aws:us-east-1")
    for attempt in (lambda: fs.open("ds/new", "wb"), lambda: fs.pipe_file("ds/new", b"x"),
                    lambda: fs.rm("ds/README"), lambda: fs.mkdir("ds/dir")):
        with pytest.raises(SkyReadOnlyError, match="read-only"):
            attempt()
    with pytest.raises(PermissionError):
        fsspec.open("sky://ds/new", "w", grid=GRID).open()


@pytest.mark.filterwarnings("error:UPath")  # 'sky' has a registered implementation: no fallback warning
@pytest.mark.filterwarnings("error:Could not find default for known protocol")
def test_airflow_object_storage_path(replicas, monkeypatch):
    pytest.importorskip("airflow.sdk")
    from airflow.sdk import ObjectStoragePath
    from airflow.sdk.io import has_fs
    from upath import UPath

    from skyplane_provider.broker.skypath import SkyPath

    assert isinstance(UPath("sky://ds/train/a.bin"), SkyPath)
    assert isinstance(ObjectStoragePath("sky://ds/train/a.bin").__wrapped__, SkyPath)

    assert schemes == ["sky"] and isinstance(get_fs(None, {"grid": GRID}), SkyFileSystem)
    assert has_fs("sky"), "the provider info should list skyplane_provider.broker.fs under 'filesystems'"
    for region in ("aws:us-east-1", "gcp:us-central1", "azure:eastus"):
        monkeypatch.setenv("SKYPLANE_REGION", region)
        with ObjectStoragePath("sky://ds/train/a.bin").open("rb") as f:
            assert f.read() == BIG
            assert f.served_by == replicas[region]
    listed = sorted(p.name for p in ObjectStoragePath("sky://ds/train/").iterdir())
    assert listed == ["a.bin", "b.txt"]
