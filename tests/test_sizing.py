"""gateway.sizing: how objects are cut and bundled by default, from their sizes and the stores."""

from __future__ import annotations

from gateway.sizing import BUNDLE_MAX, BUNDLE_MIN, PART_SIZE, choose
from gateway.stores.azure import AzureStore
from gateway.stores.base import Capabilities
from gateway.stores.gcs import GCSStore
from gateway.stores.local import LocalStore
from gateway.stores.s3 import S3Store

MiB = 1024**2
S3, GCS, AZ, LOCAL = (c.capabilities for c in (S3Store, GCSStore, AzureStore, LocalStore))


def test_objects_up_to_the_destinations_single_request_size_go_whole():
    """As each store's own tools do: S3 up to 100 MiB, GCS 150 MiB, Azure 64 MiB, in one request."""
    for caps, limit in ((S3, 100 * MiB), (GCS, 150 * MiB), (AZ, 64 * MiB)):
        sizing = choose([64 * MiB] * 8, [caps])
        assert sizing.multipart_threshold == limit and not sizing.in_parts(64 * MiB)
        assert sizing.in_parts(limit + 1) and sizing.part_size == PART_SIZE
    # Several destinations: the smallest threshold; one without multipart: never parts.
    assert choose([1], [S3, AZ]).multipart_threshold == 64 * MiB
    assert not choose([1], [S3, Capabilities(multipart=False)]).in_parts(10 * 1024**3)
    # A user's chunk size is the cut: objects above it go in parts of that size, below it whole.
    assert choose([1], [AZ], part_size=128 * MiB).multipart_threshold == 128 * MiB
    assert choose([1], [GCS], part_size=8 * MiB).multipart_threshold == 8 * MiB


def test_small_objects_are_bundled_over_enough_chunks():
    many_tiny = choose([4096] * 100_000, [S3])
    assert many_tiny.bundled(4096) and not many_tiny.bundled(2 * MiB)
    assert many_tiny.bundle_bytes == BUNDLE_MAX and many_tiny.bundle_objects == 1024
    few = choose([64 * 1024] * 2000, [GCS])  # 125 MiB of small objects: 16 bundles of ~7.8 MiB
    assert 7 * MiB < few.bundle_bytes < 8 * MiB and few.bundled(64 * 1024)
    handful = choose([1000] * 10, [AZ])
    assert handful.bundle_bytes == BUNDLE_MIN and handful.bundle_threshold == BUNDLE_MIN
    assert choose([], [S3]).bundle_bytes == BUNDLE_MAX
    # A bundle is never bigger than a part (the chunk size the gateways are told to accept).
    assert choose([4096] * 100_000, [S3], part_size=2 * MiB).bundle_bytes == 2 * MiB


def test_a_fleet_whose_hops_stay_on_the_host_runs_a_deeper_pipeline():
    """Frames sent clear hold no lz4 or AES-GCM copies, so the same buffer budget gives twice the
    readers, writers and queue slots (4 instead of 2 at 64 MiB, 8 instead of 4 at 32 MiB); a local
    fleet on loopback is one, one placed in network namespaces or on another address is not. Pure."""
    from planner.plan import direct_plan
    from skyplane_provider.provisioners.local import LocalProvisioner
    from skyplane_provider.transfer.launch import JobSecrets, gateway_specs, pipeline_depth

    assert [pipeline_depth(n * MiB) for n in (16, 32, 64, 150)] == [8, 4, 2, 2]
    assert [pipeline_depth(n * MiB, clear=True) for n in (16, 32, 64, 150)] == [8, 8, 4, 2]
    assert LocalProvisioner().loopback_fleet
    assert not LocalProvisioner(netns={"aws:us-east-1": "ns1"}).loopback_fleet
    assert not LocalProvisioner(bind_host="10.0.0.1").loopback_fleet
    plan = direct_plan("aws:us-east-1", ["gcp:us-central1"])
    for clear, depth in ((False, 2), (True, 4)):
        specs = gateway_specs(plan, "0" * 32, JobSecrets(), compress=True, encrypt=True, credentials={},
                              max_chunk_bytes=64 * MiB, loopback_fleet=clear)
        assert {(s.config["readers"], s.config["writers"], s.config["queue_chunks"]) for s in specs} == {
            (depth, depth, depth)}


def test_a_job_between_local_directories_runs_at_most_four_readers_and_writers():
    """A file system call is CPU work, not a wait on a server: a job whose every store is a local
    directory gets at most LOCAL_DEPTH (4) readers, writers and queue slots, whatever its chunks;
    bigger chunks still get fewer. Pure."""
    from planner.plan import direct_plan
    from skyplane_provider.transfer.launch import LOCAL_DEPTH, JobSecrets, gateway_specs, pipeline_depth

    assert LOCAL_DEPTH == 4
    assert [pipeline_depth(n * MiB, clear=True, local=True) for n in (1, 16, 32, 64, 150)] == [4, 4, 4, 4, 2]
    assert [pipeline_depth(n * MiB, local=True) for n in (1, 32, 64)] == [4, 4, 2]
    plan = direct_plan("local:src", ["local:dst"])
    for local, depth in ((False, 8), (True, 4)):
        specs = gateway_specs(plan, "0" * 32, JobSecrets(), compress=False, encrypt=False, credentials={},
                              max_chunk_bytes=MiB, loopback_fleet=True, local_stores=local)
        assert {(s.config["readers"], s.config["writers"], s.config["queue_chunks"]) for s in specs} == {
            (depth, depth, depth)}
