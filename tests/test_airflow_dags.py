"""The operator in real DAG runs (``dag.test()``: metadata DB, task runner, XCom, inline triggerer) moving
bytes between moto, fake-gcs-server and Azurite through local gateway processes."""

from __future__ import annotations

import importlib.util
import os
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pytest

pytest.importorskip("airflow")

from planner.errors import BadURIError, SkyplaneError, TransferError  # noqa: E402
from skyplane_provider.airflow.examples import emulator_connections  # noqa: E402
from skyplane_provider.airflow.operators import SkyplaneTransferOperator  # noqa: E402
from skyplane_provider.airflow.triggers import SkyplaneTransferTrigger  # noqa: E402
from skyplane_provider.testing.buckets import create_bucket  # noqa: E402
from skyplane_provider.testing.samples import digests, put_objects, sample_objects, sha256s  # noqa: E402

from .fixtures.airflow import REPO  # noqa: E402
from .helpers import gateway_pids, wait_gone  # noqa: E402

MiB = 1024**2
SMALL = dict(n_small=3, small_bytes=64 * 1024, big_bytes=3 * MiB)  # the big one spans two 2 MiB chunks


@pytest.fixture
def sky_home(monkeypatch, tmp_path) -> Path:
    """SKYPLANE_HOME for this test; afterwards no coordinator or gateway runs and no gateway state is left."""
    home = tmp_path / "skyplane"
    monkeypatch.setenv("SKYPLANE_HOME", str(home))
    yield home
    assert wait_gone(str(home)) == [], "a coordinator or gateway process of this test was left running"
    assert not list(home.glob("jobs/*/gw-*")) and not list(home.glob("jobs/*/pids.json"))


@pytest.fixture
def example_env(monkeypatch, emulators, airflow_home, sky_home) -> dict[str, str]:
    """Fresh example buckets, and the example connection ids pointing at the emulators."""
    roots = {"SKYPLANE_EXAMPLE_S3": create_bucket("s3"), "SKYPLANE_EXAMPLE_GCS": create_bucket("gcs"),
             "SKYPLANE_EXAMPLE_AZURE": create_bucket("azure")}
    for name, value in {**roots, **emulator_connections(dict(os.environ))}.items():
        monkeypatch.setenv(name, value)
    return roots


def load_dag(path: Path, dag_id: str):
    """Import a DAG file afresh (module constants follow the current environment)."""
    spec = importlib.util.spec_from_file_location(f"dagfile_{uuid.uuid4().hex}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return next(v for v in vars(module).values() if getattr(v, "dag_id", None) == dag_id)


def run(dag, **kwargs) -> tuple[str, dict]:
    """``dag.test()`` like a run triggered from the API (no logical date); the run's state and XComs."""
    dag_run = dag.test(logical_date=None, **kwargs)
    xcoms = {ti.task_id: ti.xcom_pull(task_ids=ti.task_id, key="return_value") for ti in dag_run.get_task_instances()}
    return dag_run.state, xcoms


def asset_events(dag_id: str) -> set[str]:
    """URIs of the assets that runs of ``dag_id`` updated."""
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        return set(session.scalars(select(AssetModel.uri).join(AssetEvent, AssetEvent.asset_id == AssetModel.id)
                                   .where(AssetEvent.source_dag_id == dag_id)))


def test_nightly_sync_example(example_env):
    """Yesterday's partition relative to run_after (no logical date), multicast to GCS and Azure."""
    objs = sample_objects(**SMALL)
    src = f"{example_env['SKYPLANE_EXAMPLE_S3']}/events/dt=2026-03-14/"
    put_objects(src, objs)
    put_objects(src.replace("2026-03-14", "2026-03-13"), {"other-day.csv": b"not this one"})
    dag = load_dag(REPO / "dags_examples/nightly_sync_dag.py", "skyplane_nightly_sync")
    state, xcoms = run(dag, run_after=datetime(2026, 3, 15, 2, 0, tzinfo=timezone.utc))
    assert state == "success"
    for root in (example_env["SKYPLANE_EXAMPLE_GCS"], example_env["SKYPLANE_EXAMPLE_AZURE"]):
        assert digests(f"{root}/events/dt=2026-03-14/") == sha256s(objs)
    stats = xcoms["sync_partition"]
    assert stats["objects"] == len(objs) and stats["bytes"] == sum(map(len, objs.values())) and stats["verified"]
    assert stats["plan"]["dsts"] == ["gcp:us-central1", "azure:westeurope"]
    assert len(str(stats)) < 4000  # compact: counts and a plan summary, never a list of keys
    outlets = {f"{example_env[k]}/events" for k in ("SKYPLANE_EXAMPLE_GCS", "SKYPLANE_EXAMPLE_AZURE")}
    assert {a.uri for a in dag.get_task("sync_partition").outlets} == outlets
    assert asset_events("skyplane_nightly_sync") == outlets  # what schedules downstream DAGs


def test_object_storage_paths(example_env):
    """Source and destinations given as ObjectStoragePath objects (their connections in the paths:
    aws_raw in the netloc, gcp_lake as conn_id, wasb_lake for an abfs path whose account the
    connection string names)."""
    s3, gcs, az = (example_env[f"SKYPLANE_EXAMPLE_{k}"] for k in ("S3", "GCS", "AZURE"))
    objs = sample_objects(**SMALL)
    put_objects(f"{s3}/paths/", objs)
    dag = load_dag(REPO / "tests/airflow_dags/skyplane_test_dags.py", "skyplane_test_paths")
    state, xcoms = run(dag)
    assert state == "success"
    assert digests(f"{gcs}/paths/") == sha256s(objs) and digests(f"{az}/paths/") == sha256s(objs)
    assert xcoms["copy"]["objects"] == len(objs) and xcoms["copy"]["verified"]
    assert [a.uri for a in dag.get_task("copy").inlets] == [f"{s3}/paths"]


def test_replace_pairwise_example(example_env):
    """Three syncs with one operator class; the summary task sums their XCom stats."""
    s3, gcs, az = (example_env[f"SKYPLANE_EXAMPLE_{k}"] for k in ("S3", "GCS", "AZURE"))
    features, models, partner = (sample_objects(**SMALL, seed=s) for s in (1, 2, 3))
    put_objects(f"{s3}/features/", features)
    put_objects(f"{gcs}/models/", models)
    put_objects(f"{az}/daily/", partner)
    put_objects(f"{gcs}/features/", {k: features[k] for k in list(features)[:2]})  # already in sync
    state, xcoms = run(load_dag(REPO / "dags_examples/replace_pairwise_dag.py", "skyplane_replace_pairwise"))
    assert state == "success"
    assert digests(f"{gcs}/features/") == sha256s(features)
    assert digests(f"{s3}/models/") == sha256s(models)
    assert digests(f"{gcs}/partner/") == sha256s(partner)
    assert xcoms["features_to_gcs"]["skipped_objects"] == 2
    total = sum(map(len, [*features.values(), *models.values(), *partner.values()]))
    moved_twice = sum(len(features[k]) for k in list(features)[:2])
    assert xcoms["summary"] == {"objects": 3 * len(features) - 2, "bytes": total - moved_twice, "up_to_date": 2,
                                "cost_usd": pytest.approx(sum(xcoms[t]["cost_usd"] for t in
                                                              ("features_to_gcs", "models_to_s3", "partner_to_gcs")))}


def test_multicast_example_deferrable(example_env):
    """The deferrable path: start the coordinator, defer, the trigger (run inline by dag.test) polls it
    and fires, execute_complete returns the stats."""
    s3, gcs, az = (example_env[f"SKYPLANE_EXAMPLE_{k}"] for k in ("S3", "GCS", "AZURE"))
    objs = sample_objects(**SMALL)
    put_objects(f"{gcs}/releases/v7/", objs)
    dag = load_dag(REPO / "dags_examples/multicast_publish_dag.py", "skyplane_multicast_publish")
    dag_run = dag.test(logical_date=None, run_conf={"release": "v7"})
    assert dag_run.state == "success"
    assert digests(f"{s3}/models/v7/") == sha256s(objs) and digests(f"{az}/v7/") == sha256s(objs)
    ti = dag_run.get_task_instance("publish_release")
    stats = ti.xcom_pull(task_ids="publish_release", key="return_value")
    assert stats["objects"] == len(objs) and stats["verified"]
    assert stats["plan"]["solver"] == "ilp"
    assert wait_gone(stats["job_id"]) == []


def test_dry_run_then_mirror_with_filters(airflow_home, emulators, sky_home, s3_bucket, gcs_bucket):
    """dry_run, include, delete, max_delete and max_cost_usd as operator arguments in a real DAG run."""
    put_objects(f"{s3_bucket}/in/", {"a.json": b"{}", "b.json": b"[]", "c.tmp": b"scratch"})
    put_objects(f"{gcs_bucket}/out/", {"gone.json": b"stale", "keep.tmp": b"not taken"})
    dag = load_dag(REPO / "tests/airflow_dags/skyplane_test_dags.py", "skyplane_test_mirror")
    state, xcoms = run(dag, run_conf={"src": f"{s3_bucket}/in/", "dst": f"{gcs_bucket}/out/"})
    assert state == "success", xcoms
    preview, mirror = xcoms["preview"], xcoms["mirror"]
    assert preview["dry_run"] and preview["objects"] == 2 and preview["deleted_objects"] == 1
    assert preview["cost"]["requests"] and "copies" not in preview
    assert mirror["objects"] == 2 and mirror["deleted_objects"] == 1 and mirror["verified"]
    assert digests(f"{gcs_bucket}/out/") == sha256s({"a.json": b"{}", "b.json": b"[]", "keep.tmp": b"not taken"})


def test_an_aws_connection_naming_a_profile_is_read_by_the_amazon_providers_hook(
        airflow_home, emulators, sky_home, s3_bucket, gcs_bucket, tmp_path, monkeypatch):
    pytest.importorskip("airflow.providers.amazon")
    import json

    (tmp_path / "credentials").write_text("[skyplane-moto]\naws_access_key_id = AKIAPROFILEKEY\n"
                                          "aws_secret_access_key = profile-secret\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AIRFLOW_CONN_AWS_PROFILE", json.dumps({"conn_type": "aws", "extra": {
        "profile_name": "skyplane-moto", "endpoint_url": emulators.endpoints["s3"], "region_name": "us-east-1"}}))
    objs = sample_objects(**SMALL)
    put_objects(f"{s3_bucket}/in/", objs)
    dag = load_dag(REPO / "tests/airflow_dags/skyplane_test_dags.py", "skyplane_test_aws_profile")
    state, xcoms = run(dag, run_conf={"src": f"{s3_bucket}/in/", "dst": f"{gcs_bucket}/out/"})
    assert state == "success", xcoms
    assert xcoms["copy"]["objects"] == len(objs) and xcoms["copy"]["verified"]
    assert digests(f"{gcs_bucket}/out/") == sha256s(objs)


@pytest.mark.parametrize("login", ["account key", "Entra ID"])
def test_a_wasb_connection_is_read_by_the_microsoft_azure_providers_hook(
        login, airflow_home, emulators, sky_home, s3_bucket, azure_container, gcs_bucket, monkeypatch, capfd, caplog,
        request):
    """S3 -> Azurite -> GCS in one DAG run, the Azure side through a wasb connection that WasbHook
    resolves: an account key (host = Azurite's account URL), or only the account, for which WasbHook
    takes DefaultAzureCredential: a managed identity (the ARM stand-in's endpoint) whose tokens an
    Azurite over https checks (audience, issuer, expiry). The second task's include and min_size
    come from the run's params (template fields)."""
    pytest.importorskip("airflow.providers.microsoft.azure")
    import json

    from gateway.stores import open_store
    from skyplane_provider.buckets import make_bucket
    from skyplane_provider.testing.emulators import AZURITE_KEY

    if login == "account key":
        conn, container, key_credentials = {"login": "devstoreaccount1", "password": AZURITE_KEY,
                                            "host": f"{emulators.endpoints['azure']}/devstoreaccount1"}, azure_container, None
    else:
        entra = request.getfixturevalue("entra_azurite")
        conn, key_credentials = {"login": "devstoreaccount1", "host": entra.account_url}, entra.key_credentials
        container = make_bucket("az://devstoreaccount1/entra-dag", credentials=key_credentials)
    monkeypatch.setenv("AIRFLOW_CONN_WASB_KEY", json.dumps({"conn_type": "wasb", **conn}))
    objs = {**sample_objects(**SMALL), "tiny.csv": b"a,b\n", "skip.json": b"{}" * 4096}
    put_objects(f"{s3_bucket}/in/", objs)
    dag = load_dag(REPO / "tests/airflow_dags/skyplane_test_dags.py", "skyplane_test_wasb")
    state, xcoms = run(dag, run_conf={"src": f"{s3_bucket}/in/", "az": f"{container}/mid/",
                                      "dst": f"{gcs_bucket}/out/", "include": "*.csv", "min_size": "1KiB"})
    assert state == "success", xcoms
    assert xcoms["to_azure"]["objects"] == len(objs) and xcoms["to_azure"]["verified"]
    store = open_store(container, key_credentials)
    assert {o.key.removeprefix("mid/"): sha256s({"": store.read(o.key)})[""] for o in store.list("mid/")} == sha256s(objs)
    taken = {k: v for k, v in objs.items() if k.endswith(".csv") and len(v) >= 1024}
    assert taken and xcoms["from_azure"]["objects"] == len(taken)
    assert digests(f"{gcs_bucket}/out/") == sha256s(taken)
    kind = "an account key" if login == "account key" else "Entra ID tokens of DefaultAzureCredential"
    assert f"'wasb_key': {kind} for az://devstoreaccount1/" in caplog.text
    out = capfd.readouterr()
    tokens = list(request.getfixturevalue("entra_azurite").standin._tokens) if login == "Entra ID" else []  # noqa: SLF001
    for secret in [AZURITE_KEY, *tokens]:
        assert secret not in out.out + out.err + caplog.text


def test_bad_uri_fails_the_task_before_any_gateway(airflow_home, sky_home, capfd):
    dag = load_dag(REPO / "tests/airflow_dags/skyplane_test_dags.py", "skyplane_test_copy")
    state, xcoms = run(dag, run_conf={"src": "s3://Not_A_Bucket/x/", "dst": "gs://some-bucket/y/"})
    assert state == "failed" and xcoms == {"copy": None}
    assert "BadURIError: bad bucket name 'Not_A_Bucket'" in capfd.readouterr().out
    assert not sky_home.exists()  # no job, no gateway was ever started


@pytest.mark.parametrize("dag_id", ["skyplane_test_copy", "skyplane_test_deferred"])
def test_missing_source_bucket_fails_before_any_gateway(airflow_home, emulators, sky_home, gcs_bucket, dag_id, capfd):
    dag = load_dag(REPO / "tests/airflow_dags/skyplane_test_dags.py", dag_id)
    state, _ = run(dag, run_conf={"src": "s3://no-such-bucket-here/x/", "dst": f"{gcs_bucket}/y/"})
    assert state == "failed"
    assert "NotFoundError" in capfd.readouterr().out
    assert not sky_home.exists()


def test_on_kill_tears_the_fleet_down(emulators, airflow_home, sky_home, s3_bucket, gcs_bucket):
    """What Airflow does on SIGTERM / execution timeout: on_kill while the bytes move."""
    put_objects(f"{s3_bucket}/big/", sample_objects(n_small=0, big_bytes=48 * MiB))
    op = SkyplaneTransferOperator(task_id="t", src=f"{s3_bucket}/big/", dst=f"{gcs_bucket}/big/", chunk_size="1MiB")
    outcome: dict = {}
    worker = threading.Thread(target=lambda: _capture(outcome, op.execute, {}))
    worker.start()
    deadline = time.monotonic() + 60
    # Until the fleet is provisioned (pids.json): a local job's gateway processes start with its coordinator,
    # before the operator holds the job's handle.
    while not (gateway_pids(str(sky_home)) and list(Path(sky_home).glob("jobs/*/pids.json"))) \
            and time.monotonic() < deadline and worker.is_alive():
        time.sleep(0.05)
    assert gateway_pids(str(sky_home)), outcome
    op.on_kill()
    worker.join(60)
    assert isinstance(outcome.get("error"), SkyplaneError), outcome
    assert wait_gone(str(sky_home)) == []


def _start(request) -> "TransferHandle":  # noqa: F821 - the handle of a real coordinator
    from skyplane_provider.transfer import Transfer

    return Transfer(request).start()


def test_trigger_round_trip_and_deadline_cancels_the_job(emulators, sky_home, s3_bucket, gcs_bucket):
    """A real coordinator: past its deadline the trigger cancels the job (the fleet goes) and fires
    ``timeout``; execute_complete turns that into a failed task."""
    import asyncio

    from skyplane_provider.transfer.request import TransferRequest

    put_objects(f"{s3_bucket}/d/", sample_objects(**SMALL))
    # A cap that stretches the 3.2 MiB job to ~12 s: uncapped it can finish (0.2-0.3 s since the store
    # checks run in the gateway started ahead) before the trigger's first poll reaches its deadline.
    handle = _start(TransferRequest(src=f"{s3_bucket}/d/", dsts=[f"{gcs_bucket}/d/"], chunk_size="2MiB",
                                    bwlimit="256KiB/s"))
    trigger = SkyplaneTransferTrigger(handle.to_dict(), poll_interval=0.2, deadline=time.time())
    classpath, kwargs = trigger.serialize()
    assert classpath == "skyplane_provider.airflow.triggers.SkyplaneTransferTrigger"
    assert SkyplaneTransferTrigger(**kwargs).serialize() == (classpath, kwargs)

    async def first_event():
        async for event in trigger.run():
            return event.payload

    payload = asyncio.run(first_event())
    assert payload["status"] == "timeout" and payload["job_id"] == handle.job_id
    assert "token" not in str(payload) and handle.to_dict()["token"] not in str(payload)
    with pytest.raises(TransferError, match="cancel"):
        handle.result()
    assert wait_gone(handle.job_id) == []
    op = SkyplaneTransferOperator(task_id="t", src=f"{s3_bucket}/d/", dst=f"{gcs_bucket}/d/")
    with pytest.raises(TransferError, match="did not finish in time"):
        op.execute_complete({}, payload)


def test_a_job_that_ends_as_its_deadline_passes_reports_its_own_outcome(emulators, sky_home, s3_bucket,
                                                                         gcs_bucket):
    """The race a nightly run can hit: the job completes while the trigger, past the deadline, sends
    its cancel. The trigger reads how the job ended after the cancel: success, not a timeout."""
    import asyncio

    from skyplane_provider.transfer.request import TransferRequest

    put_objects(f"{s3_bucket}/e/", sample_objects(n_small=4, big_bytes=0))
    handle = _start(TransferRequest(src=f"{s3_bucket}/e/", dsts=[f"{gcs_bucket}/e/"]))
    deadline = time.monotonic() + 60
    while handle.result() is None:  # the job ends first; the trigger's cancel comes after it
        assert time.monotonic() < deadline
        time.sleep(0.1)
    trigger = SkyplaneTransferTrigger(handle.to_dict(), poll_interval=0.2, deadline=time.time())
    payload = asyncio.run(trigger._cancel_at_deadline(trigger.client()))
    assert payload.payload["status"] == "success", payload.payload
    assert payload.payload["stats"]["objects"] == 5, payload.payload["stats"]  # 4 CSV and an empty blob
    assert wait_gone(handle.job_id) == []


def test_trigger_reports_a_failed_job_as_its_error(emulators, sky_home, s3_bucket, gcs_bucket):
    """The trigger's event carries the job's error; execute_complete raises it as the same class."""
    import asyncio

    from skyplane_provider.transfer.request import TransferRequest

    put_objects(f"{s3_bucket}/k/", sample_objects(n_small=0, big_bytes=32 * MiB))
    handle = _start(TransferRequest(src=f"{s3_bucket}/k/", dsts=[f"{gcs_bucket}/k/"], chunk_size="1MiB"))
    trigger = SkyplaneTransferTrigger(handle.to_dict(), poll_interval=0.2)
    asyncio.run(trigger.on_kill())  # what a user marking the deferred task failed does

    async def first_event():
        async for event in trigger.run():
            return event.payload

    payload = asyncio.run(first_event())
    assert payload["status"] == "failed" and payload["error_type"] == "TransferError", payload
    assert wait_gone(handle.job_id) == []
    op = SkyplaneTransferOperator(task_id="t", src=f"{s3_bucket}/k/", dst=f"{gcs_bucket}/k/")
    with pytest.raises(TransferError, match="cancel"):
        op.execute_complete({}, payload)


def test_lineage_and_assets():
    from skyplane_provider.airflow.operators import lineage_names

    assert lineage_names(["s3://raw-bucket/events/", "gs://lake-bucket", "az://acct1/cont1/p/q", "/data/x/"]) == [
        ("s3://raw-bucket", "events"), ("gs://lake-bucket", "/"), ("wasbs://cont1@acct1", "p/q"), ("file", "/data/x")]
    op = SkyplaneTransferOperator(task_id="t", src="s3://raw-bucket/events/dt={{ ds }}/",
                                  dst=["gs://lake-bucket/events/", "s3://{{ params.bucket }}/x/"])
    assert [a.uri for a in op.inlets] == ["s3://raw-bucket/events"]
    assert [a.uri for a in op.outlets] == ["gs://lake-bucket/events"]
    try:
        import airflow.providers.openlineage  # noqa: F401
    except ImportError:
        assert op.get_openlineage_facets_on_complete(None) is None


def test_filters_are_template_fields():
    op = SkyplaneTransferOperator(task_id="t", src="s3://raw-bucket/x/", dst="gs://lake-bucket/x/",
                                  include=["{{ params.table }}/*.parquet"], exclude=["*.tmp"],
                                  filter=["- {{ params.skip }}"], min_size="{{ params.min }}", max_size=None,
                                  min_age="{{ params.age }}", max_age="30d")
    for name in ("include", "exclude", "filter", "min_size", "max_size", "min_age", "max_age"):
        assert name in op.template_fields
    op.render_template_fields({"params": {"table": "events", "skip": "*.bak", "min": "1KiB", "age": "2h"}})
    request = op.make_request()
    assert (request.include, request.exclude, request.filter) == (["events/*.parquet"], ["*.tmp"], ["- *.bak"])
    assert (request.min_size, request.min_age, request.max_age) == ("1KiB", "2h", "30d")


def test_bad_uri_in_a_templated_field_does_not_break_parsing():
    op = SkyplaneTransferOperator(task_id="t", src="not a uri", dst="gs://lake-bucket/x/")
    assert op.inlets == []
    with pytest.raises(BadURIError):
        op.make_request()


def test_state_uri_is_templated_and_checked_before_anything_starts():
    op = SkyplaneTransferOperator(task_id="t", src="s3://raw-bucket/x/", dst="gs://lake-bucket/x/",
                                  state_uri="s3://{{ params.bucket }}/skyplane-state")
    assert "state_uri" in op.template_fields
    op.state_uri = "s3://Not_A_Bucket/state"  # as a template might render it
    with pytest.raises(BadURIError, match="state_uri"):
        op.make_request()


def _capture(outcome: dict, fn, *args) -> None:
    try:
        outcome["value"] = fn(*args)
    except BaseException as exc:  # noqa: BLE001 - the test inspects it
        outcome["error"] = exc




def test_the_trigger_renews_an_assumed_role_s_keys(emulators, sky_home, s3_bucket, tmp_path, monkeypatch, caplog):
    """A deferred job whose source connection assumes a role (moto's STS): the trigger rebuilds the
    connection's source in the triggerer from the connection id it was given (never a secret) and
    pushes the role's renewed keys to the running job's coordinator, which takes them; the copy
    completes, sha256-identical."""
    import asyncio
    import json
    import logging

    from skyplane_provider.airflow.hooks import SkyplaneHook

    monkeypatch.setenv("AIRFLOW_CONN_ROLE", json.dumps({
        "conn_type": "aws", "login": "testing", "password": "testing",
        "extra": {"endpoint_url": emulators.endpoints["s3"], "region_name": "us-east-1",
                  "role_arn": "arn:aws:iam::123456789012:role/skyplane-reader",
                  "assume_role_kwargs": {"DurationSeconds": 900}}}))
    objs = {f"o{i}.bin": os.urandom(100_000 + i) for i in range(5)}
    put_objects(f"{s3_bucket}/r/", objs)
    dst = tmp_path / "dst"
    dst.mkdir()
    hook = SkyplaneHook(src_conn_id="role")
    # ~2 s: role keys of 900 s are inside botocore's 15-minute refresh window, so each renewal tick
    # (every 0.5 s) has new keys to hand over; the job only has to outlive the first ticks.
    request = hook.make_request(f"{s3_bucket}/r/", [str(dst)], recursive=True, bwlimit="256KiB/s")
    handle = _start(request)
    renew = {"sides": [list(side) for side in hook.sides(f"{s3_bucket}/r/", [str(dst)])], "every": 0.5}
    trigger = SkyplaneTransferTrigger(handle.to_dict(), poll_interval=0.2, renew=renew)
    assert SkyplaneTransferTrigger(**trigger.serialize()[1]).renew == renew and "testing" not in str(renew)

    async def first_event():
        async for event in trigger.run():
            return event.payload

    with caplog.at_level(logging.INFO, logger="skyplane_provider.transfer.credential_sources"):
        payload = asyncio.run(first_event())
    assert payload["status"] == "success", payload
    messages = [r.getMessage() for r in caplog.records]
    assert any(f"renewed credentials for {s3_bucket} handed to the job" in m for m in messages), messages
    assert not any("could not hand" in m for m in messages), messages
    assert digests(f"file://{dst}/") == sha256s(objs)
    assert wait_gone(handle.job_id) == []


def test_a_retried_task_resumes_its_job_as_a_sync(airflow_home, emulators, sky_home, s3_bucket, gcs_bucket,
                                                  monkeypatch):
    """Try 1 cannot reach the source (a proxy in front of moto resets every connection); the proxy heals
    when Airflow puts the task up for retry; try 2 is the same job (its id from the task instance), resumed
    as a sync: what is already at the destination is skipped."""
    import json

    from skyplane_provider.airflow.operators import task_job_id
    from skyplane_provider.testing.faultproxy import FaultProxy

    objs = sample_objects(**SMALL)
    put_objects(f"{s3_bucket}/in/", objs)
    present = dict(list(objs.items())[:2])
    put_objects(f"{gcs_bucket}/out/", present)
    proxy = FaultProxy(emulators.endpoints["s3"], kind="s3", reset=1.0)
    monkeypatch.setenv("AIRFLOW_CONN_AWS_FLAKY", json.dumps({"conn_type": "aws", "login": "testing",
                       "password": "testing", "extra": {"endpoint_url": proxy.start(), "region_name": "us-east-1"}}))
    dag = load_dag(REPO / "tests/airflow_dags/skyplane_test_dags.py", "skyplane_test_retry")
    dag.get_task("copy").on_retry_callback = [lambda context: setattr(proxy, "reset", 0.0)]
    try:
        dag_run = dag.test(logical_date=None, run_conf={"src": f"{s3_bucket}/in/", "dst": f"{gcs_bucket}/out/"})
    finally:
        proxy.stop()
    ti = dag_run.get_task_instance("copy")
    stats = ti.xcom_pull(task_ids="copy", key="return_value")
    assert dag_run.state == "success" and ti.try_number == 2 and proxy.counts.reset > 0
    assert stats["job_id"] == task_job_id(ti)
    assert stats["skipped_objects"] == len(present) and stats["objects"] == len(objs) - len(present)
    assert digests(f"{gcs_bucket}/out/") == sha256s(objs)
