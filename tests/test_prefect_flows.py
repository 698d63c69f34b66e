"""The Prefect task and flow end to end: real Prefect server (test harness), real store emulators, real
local gateway processes. Destinations are checked byte for byte, artifacts are read back from the API."""

from __future__ import annotations

import json
import os

import pytest

pytest.importorskip("prefect")

from prefect import flow, get_client  # noqa: E402
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId  # noqa: E402
from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterFlowRunId  # noqa: E402
from pydantic import SecretStr  # noqa: E402

from planner.errors import BadOptionError, InfeasiblePlanError, NotFoundError, StoreUnavailableError  # noqa: E402
from skyplane_provider.prefect import SkyplaneCredentials, skyplane_sync_flow, skyplane_transfer  # noqa: E402
from skyplane_provider.prefect.tasks import retry_unless_bad_input  # noqa: E402
from skyplane_provider.testing.faultproxy import FaultProxy  # noqa: E402

from .helpers import digests, gateway_pids, put_objects, read_all  # noqa: E402

MiB = 1024**2
AZ = "azure:eastus"


def sample(n: int = 4) -> dict[str, bytes]:
    """Compressible CSV-ish objects plus one object above the 1 MiB chunk size (moves in parts)."""
    objs = {f"day=01/part-{i}.csv": b"".join(b"%d,%d,view\n" % (i, j) for j in range(2000 + i)) for i in range(n)}
    objs["day=01/blob.bin"] = os.urandom(MiB + 12345)
    return objs


@pytest.fixture
def home(prefect_skyplane_home):
    """A private SKYPLANE_HOME; afterwards no gateway of this test may be running."""
    yield prefect_skyplane_home
    assert gateway_pids(str(prefect_skyplane_home)) == [], "a gateway process was left running"


def artifacts_of(flow_run_id) -> dict:
    """key -> newest artifact of that key written by the flow run (and its tasks)."""
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    out = {}
    for a in sorted(found, key=lambda a: a.created):
        out[a.key] = a
    return out


def task_runs_of(flow_run_id) -> list:
    with get_client(sync_client=True) as client:
        return client.read_task_runs(task_run_filter=TaskRunFilter(
            flow_run_id=TaskRunFilterFlowRunId(any_=[flow_run_id])))


def test_nightly_sync_flow_to_two_clouds(prefect_harness, home, s3_bucket, gcs_bucket, azure_container):
    objs = sample()
    put_objects(s3_bucket, {"events/" + k: v for k, v in objs.items()})
    dsts = [f"{gcs_bucket}/lake/events/", f"{azure_container}/lake/events/"]
    state = skyplane_sync_flow(f"{s3_bucket}/events/", dsts, dst_regions=[None, AZ], max_cost_per_gb=0.5,
                               solver="direct", chunk_size="1MiB", artifact_key="nightly-events", return_state=True)
    stats = state.result()
    assert read_all(gcs_bucket, "lake/events/") == digests(objs)
    assert read_all(azure_container, "lake/events/") == digests(objs)
    assert stats["objects"] == len(objs) and stats["bytes"] == sum(map(len, objs.values())) and stats["verified"]

    artifacts = artifacts_of(state.state_details.flow_run_id)
    assert {"nightly-events-progress", "nightly-events-stats", "nightly-events-plan"} <= set(artifacts)
    assert artifacts["nightly-events-progress"].data == 100.0
    figures = {row["figure"]: row["value"] for row in json.loads(artifacts["nightly-events-stats"].data)}
    for name in ("objects", "bytes", "bytes_on_wire", "chunks", "gbps", "cost_usd", "egress_usd_actual", "job_id"):
        assert figures[name] == stats[name], name
    assert figures["solver"] == "direct" and figures["verified"] is True
    plan_md = artifacts["nightly-events-plan"].data
    for edge in stats["plan"]["edges"]:
        assert f"| {edge['src']} | {edge['dst']} | {edge['gbps']:.3f} | {edge['connections']} |" in plan_md
    assert f"| throughput (Gbps) | {stats['plan']['throughput_gbps']:.3f} | {stats['gbps']:.4f} |" in plan_md
    assert f"{stats['egress_usd_predicted']:.6f} | {stats['egress_usd_actual']:.6f} |" in plan_md
    assert "**Verified**" in plan_md

    again = skyplane_sync_flow(f"{s3_bucket}/events/", dsts, dst_regions=[None, AZ], chunk_size="1MiB")
    assert again["objects"] == 0 and again["skipped_objects"] == len(objs)


def test_task_with_collection_blocks_and_a_saved_block(prefect_harness, home, emulators, monkeypatch, s3_bucket,
                                                       azure_container, gcs_bucket):
    """The only credentials are prefect-aws / prefect-azure style blocks and a saved SkyplaneCredentials
    block named in the call: the standard environment that would otherwise point the SDKs at the
    emulators is removed (the gateways inherit that removal)."""

    class AwsCredentials:  # the attributes of prefect_aws.AwsCredentials
        aws_access_key_id = emulators.env["AWS_ACCESS_KEY_ID"]
        aws_secret_access_key = SecretStr(emulators.env["AWS_SECRET_ACCESS_KEY"])
        aws_session_token = None
        profile_name = None
        region_name = "us-east-1"
        aws_client_parameters = {"endpoint_url": emulators.env["AWS_ENDPOINT_URL"]}

    class AzureBlobStorageCredentials:  # the attributes of prefect_azure.AzureBlobStorageCredentials
        connection_string = SecretStr(emulators.env["AZURE_STORAGE_CONNECTION_STRING"])
        account_url = None

    SkyplaneCredentials(gcp_endpoint=emulators.env["STORAGE_EMULATOR_HOST"], gcp_project="test").save(
        "gcs-lake", overwrite=True)
    objs = sample(2)
    put_objects(s3_bucket, objs)

    @flow
    def copy_flow():
        return skyplane_transfer(s3_bucket + "/", [azure_container + "/in/", gcs_bucket + "/in/"],
                                 src_credentials=AwsCredentials(),
                                 dst_credentials=[AzureBlobStorageCredentials(), "skyplane-credentials/gcs-lake"],
                                 dst_regions=[AZ, None], chunk_size="1MiB")

    with monkeypatch.context() as env:
        for var in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                    "AZURE_STORAGE_CONNECTION_STRING", "STORAGE_EMULATOR_HOST"):
            env.delenv(var)
        stats = copy_flow()
    assert stats["objects"] == len(objs)
    assert read_all(azure_container, "in/") == digests(objs)
    assert read_all(gcs_bucket, "in/") == digests(objs)


def test_plain_call_outside_a_run(prefect_harness, home, tmp_path, s3_bucket):
    """``.fn`` outside any flow: logs through logging, writes no artifact, still moves and verifies."""
    src = tmp_path / "src"
    src.mkdir()
    objs = {f"f{i}": os.urandom(1000 + i) for i in range(3)}
    for k, v in objs.items():
        (src / k).write_bytes(v)
    with get_client(sync_client=True) as client:
        before = len(client.read_artifacts())
    stats = skyplane_transfer.fn(str(src), s3_bucket + "/plain/", encrypt=False)
    assert stats["objects"] == 3 and read_all(s3_bucket, "plain/") == digests(objs)
    with get_client(sync_client=True) as client:
        assert len(client.read_artifacts()) == before


def test_dry_run_and_mirror_with_filters(prefect_harness, home, s3_bucket, azure_container):
    """dry_run, exclude, min_size, delete and max_cost_usd as task arguments in a real flow run."""
    put_objects(s3_bucket, {"in/a.csv": b"x" * 500, "in/tiny.csv": b"x", "in/b.tmp": b"y" * 500})
    put_objects(azure_container, {"out/gone.csv": b"z" * 500})
    options = dict(sync=True, delete=True, exclude=["*.tmp"], min_size="100B", dst_regions=[AZ], max_cost_usd=1.0)

    @flow
    def preview_then_mirror():
        dry = skyplane_transfer(f"{s3_bucket}/in/", f"{azure_container}/out/", dry_run=True,
                                artifact_key="mirror-preview", **options)
        return dry, skyplane_transfer(f"{s3_bucket}/in/", f"{azure_container}/out/", **options)

    state = preview_then_mirror(return_state=True)
    dry, stats = state.result()
    assert dry["dry_run"] and dry["objects"] == 1 and dry["deleted_objects"] == 1 and dry["cost"]["total_usd"] > 0
    assert "would move 1 objects" in artifacts_of(state.state_details.flow_run_id)["mirror-preview-plan"].data
    assert stats["objects"] == 1 and stats["deleted_objects"] == 1 and stats["verified"]
    assert read_all(azure_container, "out/") == digests({"a.csv": b"x" * 500})


@pytest.mark.parametrize("case", ["missing-source", "cost-ceiling", "bad-artifact-key", "unknown-block",
                                  "missing-state-bucket"])
def test_bad_input_fails_the_task_run_without_starting_gateways(prefect_harness, home, s3_bucket, gcs_bucket, case):
    put_objects(s3_bucket, {"x/a": b"a" * 100})
    kwargs, error, words = {
        "missing-source": (dict(src=f"{s3_bucket}/no-such-prefix/"), NotFoundError, "no-such-prefix"),
        "cost-ceiling": (dict(src=f"{s3_bucket}/x/", max_cost_per_gb=0.001), InfeasiblePlanError, "ceiling"),
        "bad-artifact-key": (dict(src=f"{s3_bucket}/x/", artifact_key="Nightly Sync"), BadOptionError, "artifact key"),
        "unknown-block": (dict(src=f"{s3_bucket}/x/", src_credentials="skyplane-credentials/never-saved"),
                          BadOptionError, "cannot load block"),
        "missing-state-bucket": (dict(src=f"{s3_bucket}/x/", state_uri="s3://no-such-state-bucket/st"),
                                 NotFoundError, "state_uri"),
    }[case]

    @flow
    def one_copy():
        return skyplane_transfer(dst=gcs_bucket + "/out/", **kwargs)

    state = one_copy(return_state=True)
    assert state.is_failed()
    with pytest.raises(error, match=words):
        state.result()
    runs = task_runs_of(state.state_details.flow_run_id)
    assert [r.state.type.value for r in runs] == ["FAILED"] and runs[0].run_count == 1  # not retried
    assert not (home / "jobs").exists() or not any((home / "jobs").iterdir())  # no gateway was started
    assert read_all(gcs_bucket) == {}


def test_retry_resumes_as_a_sync(prefect_harness, home, emulators, s3_bucket, gcs_bucket):
    """Attempt 1 cannot reach the source (every connection reset by a proxy in front of moto); the
    network heals before attempt 2, which runs as a sync and skips what is already there."""
    objs = sample(4)
    put_objects(s3_bucket, objs)
    present = {k: v for k, v in objs.items() if k.endswith(("-0.csv", "-1.csv"))}
    put_objects(gcs_bucket, {"dst/" + k: v for k, v in present.items()})
    proxy = FaultProxy(emulators.env["AWS_ENDPOINT_URL"], kind="s3", reset=1.0)
    url = proxy.start()
    failures = []

    def heal_then_decide(task, task_run, state):
        try:
            state.result()
        except Exception as exc:  # noqa: BLE001 - recorded for the assertion below
            failures.append(exc)
        proxy.reset = 0.0
        return retry_unless_bad_input(task, task_run, state)

    @flow
    def resumable():
        return skyplane_transfer.with_options(retries=1, retry_delay_seconds=0, retry_condition_fn=heal_then_decide)(
            s3_bucket + "/", gcs_bucket + "/dst/", src_credentials={"endpoint_url": url}, chunk_size="1MiB")

    try:
        state = resumable(return_state=True)
    finally:
        proxy.stop()
    stats = state.result()
    assert proxy.counts.reset > 0 and [type(e) for e in failures] == [StoreUnavailableError]
    runs = task_runs_of(state.state_details.flow_run_id)
    assert len(runs) == 1 and runs[0].run_count == 2
    assert stats["job_id"] == runs[0].id.hex  # every attempt of the task run is the same job
    assert stats["skipped_objects"] == len(present) and stats["objects"] == len(objs) - len(present)
    assert read_all(gcs_bucket, "dst/") == digests(objs)
