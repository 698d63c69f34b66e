"""The replica catalogue: format, location, and atomic updates by concurrent processes
(a local file under flock, and objects in moto / fake-gcs / Azurite with conditional writes)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from planner.errors import BadOptionError, BadURIError, NotFoundError, StoreError
from skyplane_provider.broker import Catalogue, Replica
from skyplane_provider.broker.catalogue import catalogue_location
from skyplane_provider.cli.main import main

REPO = str(Path(__file__).resolve().parents[1])

# A writer process: N read-modify-write updates, each adding one replica of its own dataset. All
# writers start together (a "go" file) so that their updates interleave.
WRITER = """
import os, sys, time
from skyplane_provider.broker import Catalogue, Replica
location, who, n, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
cat = Catalogue(location)
open(go + "." + who, "w").close()
while not os.path.exists(go):
    time.sleep(0.005)
for i in range(n):
    cat.put_replicas(who, [Replica(f"s3://bucket-{who}/copy-{i}/", "aws:us-east-1", state="verified")])
"""


def test_location_argument_env_then_skyplane_home(monkeypatch, tmp_path):
    monkeypatch.delenv("SKYPLANE_CATALOGUE", raising=False)
    monkeypatch.setenv("SKYPLANE_HOME", str(tmp_path / "home"))
    assert catalogue_location() == str(tmp_path / "home" / "catalogue.json")
    monkeypatch.setenv("SKYPLANE_CATALOGUE", "s3://meta/catalogue.json")
    assert catalogue_location() == "s3://meta/catalogue.json"
    assert catalogue_location(str(tmp_path / "x.json")) == str(tmp_path / "x.json")


def test_local_catalogue_round_trip(tmp_path):
    cat = Catalogue(str(tmp_path / "sub" / "catalogue.json"))
    assert cat.read().datasets == {}
    cat.put_replicas("imagenet", [Replica("gs://lake/imagenet", "gcp:us-central1", state="verified", bytes=10,
                                          objects=2, manifest_sha256="ab" * 32)])
    cat.put_replicas("imagenet", [Replica("s3://raw/imagenet/", "aws:us-east-1", state="verified", origin=True)])
    cat.put_replicas("imagenet", [Replica("az://account/lake/imagenet/", "azure:eastus", state="copying")])
    cat.set_default_region("aws:us-west-2")
    state = Catalogue("file://" + str(tmp_path / "sub" / "catalogue.json")).read()
    ds = state.dataset("imagenet")
    assert [r.uri for r in ds.replicas] == ["s3://raw/imagenet/", "gs://lake/imagenet/", "az://account/lake/imagenet/"]
    assert [r.uri for r in ds.readable()] == ["s3://raw/imagenet/", "gs://lake/imagenet/"]  # copying: not yet
    assert state.default_region == "aws:us-west-2"
    doc = json.loads((tmp_path / "sub" / "catalogue.json").read_text())
    assert doc["format"] == 1 and doc["datasets"]["imagenet"]["replicas"][1]["bytes"] == 10
    with pytest.raises(NotFoundError, match="known: imagenet"):
        state.dataset("cifar")


def test_bad_names_and_documents(tmp_path):
    with pytest.raises(BadOptionError):
        Catalogue(str(tmp_path / "c.json")).put_replicas("no/slash", [])
    with pytest.raises(BadOptionError):
        Replica("s3://raw/x/", "aws:us-east-1", state="maybe")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(StoreError, match="not valid JSON"):
        Catalogue(str(tmp_path / "bad.json")).read()
    with pytest.raises(BadURIError, match="not a document"):
        Catalogue("s3://meta-bucket/")


def _race(location: str, go: Path, writers: int = 2, updates: int = 15) -> None:
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, location, f"w{i}", str(updates), str(go)], cwd=REPO)
             for i in range(writers)]
    try:
        deadline = time.monotonic() + 60
        while not all(Path(f"{go}.w{i}").exists() for i in range(writers)) and time.monotonic() < deadline:
            time.sleep(0.01)
        go.touch()
        assert [p.wait(timeout=120) for p in procs] == [0] * writers
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    state = Catalogue(location).read()
    for i in range(writers):
        assert len(state.dataset(f"w{i}").replicas) == updates, "an update was lost"


def test_concurrent_writers_local_file(tmp_path):
    _race(str(tmp_path / "catalogue.json"), tmp_path / "go")


@pytest.mark.parametrize("bucket", ["s3_bucket", "gcs_bucket", "azure_container"])
def test_concurrent_writers_in_a_bucket(request, bucket, tmp_path):
    _race(request.getfixturevalue(bucket) + "/meta/catalogue.json", tmp_path / "go")


def test_datasets_command(tmp_path, capsys):
    location = str(tmp_path / "catalogue.json")
    Catalogue(location).put_replicas("imagenet", [Replica("s3://raw/imagenet/", "aws:us-east-1", state="verified",
                                                          origin=True, objects=3, bytes=42)])
    assert main(["datasets", "--catalogue", location, "--set-default-region", "gcp:us-central1"]) == 0
    out = capsys.readouterr().out
    assert "default region: gcp:us-central1" in out and "imagenet: 1 of 1 replica readable" in out
    assert "s3://raw/imagenet/  (origin)" in out
    assert main(["datasets", "imagenet", "--catalogue", location, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["default_region"] == "gcp:us-central1" and doc["datasets"]["imagenet"]["replicas"][0]["bytes"] == 42
    assert main(["datasets", "cifar", "--catalogue", location]) == 1
    assert "no dataset 'cifar'" in capsys.readouterr().err
