"""The coordinator process (skyplane_provider/coordinator/process.py) started by ``Transfer.start()``:
a real detached process with real local gateways, watched through its HTTP API by a handle."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from planner.errors import BadURIError, NotFoundError, TransferError
from skyplane_provider.coordinator.jobdir import KEEP_FINISHED_SECONDS, job_dir, prune_finished_jobs
from skyplane_provider.transfer import Transfer, TransferRequest
from skyplane_provider.transfer.handle import TransferHandle

from .helpers import digests, read_all, wait_gone

MiB = 1024**2


def _tree(root: Path, n: int = 4, size: int = 256 * 1024) -> dict[str, bytes]:
    """A source directory of ``n`` random files, and an empty destination beside it."""
    root.mkdir()
    (root.parent / "dst").mkdir()
    objs = {f"f{i}": os.urandom(size) for i in range(n)}
    for k, v in objs.items():
        (root / k).write_bytes(v)
    return objs


def test_start_returns_a_handle_and_the_job_runs_in_its_own_process(home, tmp_path):
    objs = _tree(tmp_path / "src")
    seen = []
    transfer = Transfer(TransferRequest(src=str(tmp_path / "src"), dsts=[str(tmp_path / "dst")], chunk_size="1MiB"),
                        progress=seen.append)
    handle = transfer.start()
    directory = job_dir(handle.job_id)
    address = json.loads((directory / "coordinator.json").read_text())
    assert address["url"] == handle.url and address["pid"] != os.getpid()
    assert os.getsid(address["pid"]) == address["pid"]  # detached: a session of its own
    assert not (directory / "request.json").exists()  # the credentials' file is gone once read
    assert oct((directory / "coordinator.json").stat().st_mode & 0o777) == "0o600"
    stats = handle.result()
    assert stats.objects == len(objs) and stats.verified and stats.job_id == handle.job_id
    assert seen and seen[-1].objects_done == len(objs)
    assert read_all("file://" + str(tmp_path / "dst")) == read_all("file://" + str(tmp_path / "src"))
    assert wait_gone(handle.job_id) == []
    assert os.listdir(directory) == ["report.jsonl"]  # a fetched success leaves only its per-object report


def test_the_coordinator_takes_its_clients_first_page_and_plan(home, tmp_path):
    # The client's prepare() listed the first page and planned; the coordinator does neither again: a
    # file added in between is not in the page it was handed (the listing had no second page).
    objs = _tree(tmp_path / "src")
    transfer = Transfer(TransferRequest(src=str(tmp_path / "src"), dsts=[str(tmp_path / "dst")])).prepare()
    handed = transfer.handoff()
    assert [o["key"] for o in handed["first_page"]] == sorted(objs) and handed["next_token"] is None
    (tmp_path / "src" / "e-late").write_bytes(b"after the client listed")
    stats = transfer.start().result()
    assert stats.objects == len(objs) and stats.plan == transfer.plan.summary()
    assert sorted(os.listdir(tmp_path / "dst")) == sorted(objs)
    # Nor does it price the job again: the client's estimate travels with the plan.
    assert handed["estimate"] == transfer.estimate.to_dict()
    coordinator = Transfer(TransferRequest(src=str(tmp_path / "src"), dsts=[str(tmp_path / "dst")]), checked=True,
                           prepared={**handed, "estimate": {**handed["estimate"], "requests_usd": 1.5}}).prepare()
    assert coordinator.estimate.requests_usd == 1.5



def test_the_client_reads_one_page_of_1000_and_the_coordinator_lists_the_rest(home, tmp_path):
    """prepare() reads 1,000 keys (one LIST request on S3 and GCS) before anything starts; the job's
    coordinator lists the rest while the data moves."""
    (tmp_path / "src").mkdir()
    (tmp_path / "dst").mkdir()
    for i in range(1500):
        (tmp_path / "src" / f"f{i:04d}").write_bytes(b"%d" % i)
    transfer = Transfer(TransferRequest(src=str(tmp_path / "src"), dsts=[str(tmp_path / "dst")])).prepare()
    handed = transfer.handoff()
    assert len(handed["first_page"]) == 1000 and handed["next_token"] is not None
    stats = transfer.start().result()
    assert stats.objects == 1500
    assert read_all("file://" + str(tmp_path / "dst")) == read_all("file://" + str(tmp_path / "src"))


def test_the_coordinator_takes_its_clients_full_listing(home, tmp_path):
    # A job that lists in full before anything moves (filters) hands its listing over: the coordinator
    # does not list again, so a matching file added in between is not copied, and the one the client
    # found up to date (a sync) is not either.
    objs = _tree(tmp_path / "src")
    first = sorted(objs)[0]
    shutil.copy2(tmp_path / "src" / first, tmp_path / "dst" / first)  # size and mtime: up to date
    filtered = TransferRequest(src=str(tmp_path / "src"), dsts=[str(tmp_path / "dst")], sync=True,
                               exclude=["zz*"])
    transfer = Transfer(filtered).prepare()
    listing = transfer.handoff()["listing"]
    assert [d[0]["key"] for d in listing["decisions"]] == sorted(objs) and listing["present"] == [1]
    (tmp_path / "src" / "e-late").write_bytes(b"after the client listed")
    stats = transfer.start().result()
    assert stats.objects == len(objs) - 1 and stats.skipped_objects == 1
    assert sorted(os.listdir(tmp_path / "dst")) == sorted(objs)


def test_a_full_listing_handed_for_a_request_that_streams_is_taken(home, tmp_path):
    # A client whose first probe finds a destination that copies server-side lists in full; when its
    # probe of every object then finds none (the chaos soak, seed 2028: a throttled store failed it),
    # it hands the full listing over for a request that would otherwise stream. The coordinator went
    # by the request, looked for a first page and crashed (KeyError 'first_page').
    objs = _tree(tmp_path / "src")
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    listing = Transfer(TransferRequest(src=src, dsts=[dst], exclude=["zz*"])).prepare().handoff()
    assert "listing" in listing and "first_page" not in listing
    (tmp_path / "src" / "e-late").write_bytes(b"after the client listed")
    stats = Transfer(TransferRequest(src=src, dsts=[dst]), prepared=listing).execute()
    assert stats.objects == len(objs) and stats.verified
    assert read_all("file://" + dst) == digests(objs)  # the late file was not in the listing handed over


def test_bad_input_fails_in_the_caller_before_any_coordinator(home, tmp_path):
    with pytest.raises(BadURIError):
        Transfer(TransferRequest(src="s4://nope/x", dsts=[str(tmp_path)])).start()
    assert not (home / "jobs").exists()


def test_the_coordinator_process_starts_while_the_client_prepares_and_a_refusal_ends_it(home, tmp_path):
    """prepare() starts the job's coordinator process ahead (launcher.start_ahead): it imports while
    the client checks and plans, and is the one that runs the job once told to go. A request refused
    after it started (a source with nothing to copy) ends it: no process, no job directory left."""
    from skyplane_provider.testing.leftovers import coordinator_pids

    (tmp_path / "empty").mkdir()
    transfer = Transfer(TransferRequest(src=str(tmp_path / "empty"), dsts=[str(tmp_path / "dst")]))
    with pytest.raises(NotFoundError):
        transfer.prepare()
    assert coordinator_pids(transfer.job_id) == [] and not (home / "jobs").exists()

    objs = _tree(tmp_path / "src")
    transfer = Transfer(TransferRequest(src=str(tmp_path / "src"), dsts=[str(tmp_path / "dst")])).prepare()
    assert len(_started_ahead(transfer.job_id)) == 1 and not (home / "jobs").exists()  # waiting: nothing written
    handle = transfer.start()
    pid = json.loads((job_dir(handle.job_id) / "coordinator.json").read_text())["pid"]
    assert "--ahead" in Path(f"/proc/{pid}/cmdline").read_text()  # the job runs in the process started ahead
    assert handle.result().objects == len(objs)
    assert read_all("file://" + str(tmp_path / "dst")) == read_all("file://" + str(tmp_path / "src"))
    assert wait_gone(handle.job_id) == []
    # execute() runs the job in this process: the process started ahead ends (it waited on stdin
    # until this process exited, and every test after an execute() that waits for its job's processes
    # to be gone waited 30 s for it and failed).
    (tmp_path / "dst2").mkdir()
    transfer = Transfer(TransferRequest(src=str(tmp_path / "src"), dsts=[str(tmp_path / "dst2")])).prepare()
    assert len(_started_ahead(transfer.job_id)) == 1
    assert transfer.execute().objects == len(objs)
    assert coordinator_pids(transfer.job_id) == []
    transfer = Transfer(TransferRequest(src=str(tmp_path / "src"), dsts=[str(tmp_path / "dst2")], sync=True))
    transfer.execute()  # its own prepare() starts none
    assert coordinator_pids(transfer.job_id) == []


def test_a_local_job_starts_its_gateway_with_its_coordinator_and_runs_in_it(home, tmp_path):
    """prepare() of a job whose fleet runs on this host's loopback starts its coordinator's process
    with one gateway process (spares.py): the gateway is the coordinator's job process's child and
    writes nothing before the go; a refusal ends both (no process, no directory), and a job runs its
    first gateway in it (its log, kept, is in the directory that process's command line names)."""
    from skyplane_provider.coordinator.launcher import drop_ahead, start_ahead
    from skyplane_provider.testing.leftovers import gateway_pids

    start_ahead("refused-job", gateways=1)
    deadline = time.monotonic() + 30
    while not (gateways := gateway_pids("refused-job")) and time.monotonic() < deadline:
        time.sleep(0.01)
    (gateway,) = gateways
    parent = int(Path(f"/proc/{gateway}/stat").read_text().rsplit(")", 1)[1].split()[1])
    assert parent in _started_ahead("refused-job") and "gw-ahead-0" in Path(f"/proc/{gateway}/cmdline").read_text()
    drop_ahead("refused-job")
    assert wait_gone("refused-job", timeout=0) == [] and not (home / "jobs").exists()

    objs = _tree(tmp_path / "src")
    transfer = Transfer(TransferRequest(src=str(tmp_path / "src"), dsts=[str(tmp_path / "dst")],
                                        provisioner_settings={"keep_logs": True})).prepare()
    deadline = time.monotonic() + 30
    while not gateway_pids(transfer.job_id) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(gateway_pids(transfer.job_id)) == 1 and not (home / "jobs").exists()  # nothing written yet
    assert transfer.run().objects == len(objs)
    assert read_all("file://" + str(tmp_path / "dst")) == read_all("file://" + str(tmp_path / "src"))
    assert "gateway local/0" in (job_dir(transfer.job_id) / "gw-ahead-0" / "gateway.log").read_text()
    assert wait_gone(transfer.job_id) == []


def test_the_gateway_started_ahead_is_told_the_jobs_schemes_and_starts_before_the_planner_loads(home):
    """The first gateway's command line names the request's URI schemes (it imports their SDKs at
    exec: test_store_channel.py), and what the coordinator's job process imports to start it
    (.spares, through its package) loads no planner module."""
    from skyplane_provider.coordinator.launcher import drop_ahead, start_ahead
    from skyplane_provider.testing.leftovers import gateway_pids

    start_ahead("schemes-job", gateways=1, schemes=("file", "s3"))
    deadline = time.monotonic() + 30
    while not (gateways := gateway_pids("schemes-job")) and time.monotonic() < deadline:
        time.sleep(0.01)
    (gateway,) = gateways
    assert "\0--preload\0file,s3" in Path(f"/proc/{gateway}/cmdline").read_text()
    drop_ahead("schemes-job")
    assert wait_gone("schemes-job", timeout=0) == [] and not (home / "jobs").exists()
    trace = subprocess.run([sys.executable, "-X", "importtime", "-c", "import skyplane_provider.provisioners.spares"],
                           capture_output=True, text=True, timeout=60).stderr
    assert "skyplane_provider.provisioners.spares" in trace and " planner" not in trace


def _started_ahead(job_id: str, timeout: float = 10.0) -> list[int]:
    """The coordinator processes of ``job_id``, once one shows its command line (a process just
    forked still shows this one's until it has exec'd)."""
    from skyplane_provider.testing.leftovers import coordinator_pids

    deadline = time.monotonic() + timeout
    while not (pids := coordinator_pids(job_id)) and time.monotonic() < deadline:
        time.sleep(0.01)
    return pids


def test_a_job_outlives_its_client_and_another_process_fetches_the_result(home, tmp_path):
    """The client process starts the job and exits at once; a handle rebuilt from its dict (what a
    trigger gets) watches the job to its end."""
    objs = _tree(tmp_path / "src")
    script = ("import json, sys; from skyplane_provider.transfer import Transfer, TransferRequest; "
              "h = Transfer(TransferRequest(src=sys.argv[1], dsts=[sys.argv[2]], chunk_size='1MiB')).start(); "
              "print(json.dumps(h.to_dict()))")
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "src"), str(tmp_path / "dst")],
                         check=True, capture_output=True, text=True, timeout=120).stdout
    handle = TransferHandle.from_dict(json.loads(out.splitlines()[-1]))
    deadline = time.monotonic() + 120
    while not handle.done():  # done() alone, in a loop, sees the end (it starts the handle's polling)
        assert time.monotonic() < deadline, "done() never turned true"
        time.sleep(0.05)
    assert handle.result().objects == len(objs)
    assert read_all("file://" + str(tmp_path / "dst")) == read_all("file://" + str(tmp_path / "src"))
    assert wait_gone(handle.job_id) == []


@pytest.mark.parametrize("how", ["api", "sigterm"])
def test_cancel_tears_the_fleet_down_and_the_result_says_cancelled(home, tmp_path, how):
    _tree(tmp_path / "src", n=8, size=2 * MiB)
    handle = Transfer(TransferRequest(src=str(tmp_path / "src"), dsts=[str(tmp_path / "dst")],
                                      chunk_size="1MiB")).start()
    if how == "api":
        handle.cancel()
    else:
        os.kill(json.loads((job_dir(handle.job_id) / "coordinator.json").read_text())["pid"], signal.SIGTERM)
    with pytest.raises(TransferError, match="cancel"):
        handle.result()
    assert handle.client.job()["state"] == "cancelled"
    assert wait_gone(handle.job_id) == []
    result = json.loads((job_dir(handle.job_id) / "result.json").read_text())
    assert result["state"] == "cancelled"  # kept for inspection (and resume)
    assert not list((tmp_path / "dst").rglob("*"))  # nothing partial


def test_only_old_finished_jobs_are_pruned(home):
    for job_id, has_result, age in (("old-done", True, KEEP_FINISHED_SECONDS + 60),
                                    ("new-done", True, 60), ("old-running", False, KEEP_FINISHED_SECONDS + 60)):
        d = job_dir(job_id)
        d.mkdir(parents=True)
        marker = d / ("result.json" if has_result else "coordinator.json")
        marker.write_text("{}")
        then = time.time() - age
        os.utime(marker, (then, then))
    assert prune_finished_jobs() == ["old-done"]
    assert sorted(p.name for p in (home / "jobs").iterdir()) == ["new-done", "old-running"]


def test_deprovision_stops_a_coordinator_left_running(home, tmp_path):
    """A finished job whose result nobody fetched keeps its coordinator (for ``result_linger``);
    ``deprovision`` stops it like a leftover gateway."""
    from skyplane_provider.deprovision import Selection, deprovision_local

    _tree(tmp_path / "src", n=1)
    handle = Transfer(TransferRequest(src=str(tmp_path / "src"), dsts=[str(tmp_path / "dst")])).start()
    assert handle.wait(60) and handle.client.job()["state"] == "succeeded"
    assert [r.detail for r in deprovision_local(Selection(job_id=handle.job_id), dry_run=True)] == [
        f"coordinator process {json.loads((job_dir(handle.job_id) / 'coordinator.json').read_text())['pid']} found"]
    reaped = deprovision_local(Selection(job_id=handle.job_id))
    assert [r.job_id for r in reaped] == [handle.job_id]
    assert wait_gone(handle.job_id) == []


def test_resume_runs_a_cancelled_job_again_under_its_id(home, tmp_path, capsys):
    """``skyplane-provider resume JOB``: the request kept without secrets, run as a sync, same job id."""
    from skyplane_provider.cli.main import main

    objs = _tree(tmp_path / "src", n=6, size=MiB)
    handle = Transfer(TransferRequest(src=str(tmp_path / "src"), dsts=[str(tmp_path / "dst")],
                                      chunk_size="1MiB", credentials={"s3": {"secret_access_key": "x"}})).start()
    handle.cancel()
    with pytest.raises(TransferError, match="cancel"):
        handle.result()
    kept = json.loads((job_dir(handle.job_id) / "resume.json").read_text())
    assert kept["credentials"] == {} and "secret" not in json.dumps(kept)
    assert main(["resume", "no-such-job"]) == 1
    assert "no job no-such-job to resume" in capsys.readouterr().err
    assert main(["resume", handle.job_id, "--json"]) == 0
    stats = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert stats["job_id"] == handle.job_id and stats["objects"] + stats["skipped_objects"] == len(objs)
    assert read_all("file://" + str(tmp_path / "dst")) == read_all("file://" + str(tmp_path / "src"))
    assert wait_gone(handle.job_id) == []
    assert os.listdir(job_dir(handle.job_id)) == ["report.jsonl"]  # resumed to success: only its report left


def test_a_coordinator_for_other_hosts_speaks_tls_with_a_pinned_certificate(home, tmp_path):
    """``coordinator_host``: the API over TLS with a certificate of the job's own; only a client that
    pins it (the handle, e.g. in a trigger's kwargs) gets an answer; the key is nowhere on disk."""
    from planner.errors import CoordinatorError
    from skyplane_provider.coordinator.client import CoordinatorClient
    from gateway.tls import self_signed

    objs = _tree(tmp_path / "src", n=2)
    handle = Transfer(TransferRequest(src=str(tmp_path / "src"), dsts=[str(tmp_path / "dst")],
                                      provisioner_settings={"coordinator_host": "127.0.0.1"})).start()
    doc = handle.to_dict()
    assert handle.url.startswith("https://127.0.0.1:") and "BEGIN CERTIFICATE" in doc["cert"]
    assert not [p for p in job_dir(handle.job_id).iterdir() if "key" in p.name]
    for cert in (None, self_signed("127.0.0.1")[0]):  # the system's CAs, another job's certificate
        with pytest.raises(CoordinatorError, match="CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
            CoordinatorClient(handle.url, doc["token"], cert=cert).health()
    assert TransferHandle.from_dict(doc).result().objects == len(objs)
    assert wait_gone(handle.job_id) == []


def test_fault_resume_after_the_coordinator_was_killed(home, tmp_path, capsys):
    """SIGKILL of a job's coordinator while its fleet moves data (the chaos soak's fault): its
    gateways stop by themselves, its address file stays behind, and ``resume`` runs the job again
    (a dead coordinator does not count as running) to a sha256-identical copy."""
    from skyplane_provider.cli.main import main
    from skyplane_provider.testing.leftovers import gateway_pids

    objs = _tree(tmp_path / "src", n=6, size=100_000)
    # The cap keeps the job moving until the kill (which comes as soon as its gateways run); the resume
    # runs under it too: at 64 KiB/s that was ~9 s of waiting for 600 kB, ~2 s at 256 KiB/s.
    handle = Transfer(TransferRequest(src=str(tmp_path / "src"), dsts=[str(tmp_path / "dst")], bwlimit="256KiB/s",
                                      src_region="aws:us-east-1", dst_regions=["aws:us-west-2"])).start()
    deadline = time.monotonic() + 60
    while not gateway_pids(handle.job_id) and time.monotonic() < deadline:
        time.sleep(0.05)
    address = job_dir(handle.job_id) / "coordinator.json"
    os.kill(json.loads(address.read_text())["pid"], signal.SIGKILL)
    assert wait_gone(handle.job_id) == [] and address.exists()
    assert main(["resume", handle.job_id, "--json"]) == 0
    stats = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert stats["job_id"] == handle.job_id and stats["objects"] + stats["skipped_objects"] == len(objs)
    assert read_all("file://" + str(tmp_path / "dst")) == read_all("file://" + str(tmp_path / "src"))
    assert wait_gone(handle.job_id) == []
