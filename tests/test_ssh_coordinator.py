"""The coordinator of an ``ssh`` job runs on the source region's gateway host (docs/coordinator.md):
the client provisions the fleet, starts the coordinator there over SSH and hands the fleet over;
real sshd servers on loopback stand for the hosts (tests/fixtures/sshd.py)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from gateway.control_client import GatewayClient
from gateway.stores import open_store
from planner.errors import GatewayError, NotFoundError, ProvisionError, TransferError
from skyplane_provider.deprovision import Selection, deprovision_ssh
from skyplane_provider.provisioners.ssh_bootstrap import HostBootstrap
from skyplane_provider.provisioners.ssh_connection import ConnectPolicy, SSHHost
from skyplane_provider.testing.leftovers import coordinator_pids, gateway_pids
from skyplane_provider.transfer import Transfer, TransferRequest
from skyplane_provider.transfer.handle import TransferHandle
from tests.helpers import ancestors

REGIONS = ("aws:us-east-1", "gcp:us-central1")
MiB = 1024**2


@pytest.fixture(autouse=True)
def _skyplane_home(tmp_path, monkeypatch):
    """The client's own directory (wheel cache, job records): never the real ~/.skyplane, and not
    the hosts' (each sshd "host" has its remote_dir)."""
    monkeypatch.setenv("SKYPLANE_HOME", str(tmp_path / "client-home"))


def _request(servers, known_hosts, src: Path, dst: Path, job_id: str, *, source_host: dict | None = None,
             **options) -> TransferRequest:
    hosts = {REGIONS[0]: [{**servers[0].host_setting(), **(source_host or {})}],
             REGIONS[1]: [servers[1].host_setting()]}
    return TransferRequest(src=str(src), dsts=[str(dst)], job_id=job_id, chunk_size="1MiB", src_region=REGIONS[0],
                           dst_regions=[REGIONS[1]], provisioner="ssh",
                           provisioner_settings={"hosts": hosts, "known_hosts": str(known_hosts)}, **options)


def _tree(root: Path, sizes: dict[str, int]) -> dict[str, bytes]:
    root.mkdir()
    (root.parent / "dst").mkdir()
    objs = {k: os.urandom(n) for k, n in sizes.items()}
    for k, v in objs.items():
        (root / k).write_bytes(v)
    return objs


def _copied(dst: Path) -> dict[str, bytes]:
    return {str(p.relative_to(dst)): p.read_bytes() for p in dst.rglob("*") if p.is_file()}


def _wait(condition, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)
    return value


#: A client that starts the job, prints its handle and waits to be killed.
CLIENT = """
import json, sys, time
from skyplane_provider.transfer import Transfer, TransferRequest
handle = Transfer(TransferRequest.from_dict(json.loads(sys.argv[1]))).start()
print(json.dumps(handle.to_dict()), flush=True)
time.sleep(600)
"""


def test_ssh_job_runs_its_coordinator_on_the_source_gateway_host_and_outlives_a_killed_client(
        sshd_servers, ssh_known_hosts, tmp_path):
    """The coordinator is a process of the source host (started through its sshd, with that host's
    venv and directory, in a session of its own: not the client's descendant); SIGKILL of the client
    right after start() leaves the job running; another client (a trigger) fetches the result with
    the handle alone; the coordinator stops the gateways itself; ``deprovision`` reaps the hosts."""
    objs = _tree(tmp_path / "src", {**{f"f{i:02d}": 256 * 1024 for i in range(24)},
                                    "big.bin": 5 * MiB + 17})
    job_id = uuid.uuid4().hex
    request = _request(sshd_servers, ssh_known_hosts, tmp_path / "src", tmp_path / "dst", job_id, bwlimit="4MiB")
    client = subprocess.Popen([sys.executable, "-c", CLIENT, json.dumps(request.to_dict())],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = client.stdout.readline()
        assert line, client.stderr.read()
        handle_doc = json.loads(line)
        host_job = Path(sshd_servers[0].remote_dir) / "jobs" / job_id
        pid = int((host_job / "coordinator.pid").read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        environ = dict(e.split(b"=", 1) for e in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if b"=" in e)
        assert cmdline[0].decode().startswith(sshd_servers[0].remote_dir + "/venv-")
        assert cmdline[1:4] == [b"-m", b"skyplane_provider.coordinator", b"--foreground"]
        assert environ[b"SKYPLANE_HOME"].decode() == sshd_servers[0].remote_dir
        assert client.pid not in ancestors(pid) and os.getsid(pid) == pid
        assert json.loads((host_job / "coordinator.json").read_text())["pid"] == pid
        assert not (host_job / "request.json").exists()  # read and deleted: the credentials stay in memory
        assert handle_doc["url"].startswith("https://127.0.0.1:") and "BEGIN CERTIFICATE" in handle_doc["cert"]
        client.send_signal(signal.SIGKILL)
        client.wait(timeout=30)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    assert len(gateway_pids(job_id, workers=False)) == 2, "the job lost its fleet with its client"
    stats = TransferHandle.from_dict(handle_doc).result(timeout=300)
    assert stats.verified and stats.objects == len(objs) and _copied(tmp_path / "dst") == objs
    assert stats.report["path"] == str(host_job / "report.jsonl")
    _wait(lambda: not gateway_pids(job_id) and not coordinator_pids(job_id))
    assert list(host_job.glob("gw-*/gateway.log")), "nobody reaped the hosts yet: the client is gone"
    for server in sshd_servers:  # but no gateway's secrets are left there: configs go once read
        assert not list((Path(server.remote_dir) / "jobs" / job_id).glob("gw-*/config.json"))
    hosts = [SSHHost.from_setting(s.host_setting()) for s in sshd_servers]
    reaped = deprovision_ssh(hosts, Selection(job_id=job_id), policy=ConnectPolicy(known_hosts=str(ssh_known_hosts)))
    assert sorted(r.job_id for r in reaped) == [job_id, job_id]
    for server in sshd_servers:
        assert not list((Path(server.remote_dir) / "jobs" / job_id).glob("gw-*"))


def test_ssh_job_cancelled_through_its_handle_stops_the_fleet_from_the_coordinator(
        sshd_servers, ssh_known_hosts, tmp_path):
    """``cancel()`` on a running job: the coordinator on the source host stops the gateways (the
    client has handed the fleet over and holds no tunnel), the result is the cancellation, and
    run()'s reaping (here the fleet's teardown) leaves nothing on the hosts."""
    _tree(tmp_path / "src", {f"f{i:02d}": MiB for i in range(12)})
    job_id = uuid.uuid4().hex
    transfer = Transfer(_request(sshd_servers, ssh_known_hosts, tmp_path / "src", tmp_path / "dst", job_id,
                                 bwlimit="1MiB"))
    handle = transfer.start()
    controls = [g.client(timeout=2.0) for g in transfer.fleet.gateways]
    with pytest.raises(GatewayError, match="cannot reach"):  # the client's tunnels are closed: handed over
        controls[0].health()
    _wait(lambda: (handle.client.job().get("progress") or {}).get("bytes_done", 0) > 0)
    handle.cancel()
    with pytest.raises(TransferError, match="cancel"):
        handle.result(timeout=120)
    _wait(lambda: not gateway_pids(job_id))
    transfer.fleet.teardown()
    _wait(lambda: not coordinator_pids(job_id))
    for server in sshd_servers:
        assert not list((Path(server.remote_dir) / "jobs" / job_id).glob("gw-*"))


def test_ssh_bad_input_fails_in_the_client_before_any_host_is_touched(sshd_servers, ssh_known_hosts, tmp_path):
    job_id = uuid.uuid4().hex
    (tmp_path / "dst").mkdir()
    with pytest.raises(NotFoundError):
        Transfer(_request(sshd_servers, ssh_known_hosts, tmp_path / "missing", tmp_path / "dst", job_id)).start()
    for server in sshd_servers:
        assert not (Path(server.remote_dir) / "jobs" / job_id).exists()
    assert gateway_pids(job_id) == [] and coordinator_pids(job_id) == []


def test_ssh_coordinator_that_cannot_start_tears_the_fleet_down(sshd_servers, ssh_known_hosts, tmp_path):
    """The source host advertises an address it does not have (a NAT's, say): the coordinator cannot
    listen there, the client says so with the coordinator's log, and stops the fleet it started."""
    _tree(tmp_path / "src", {"f": 1024})
    job_id = uuid.uuid4().hex
    request = _request(sshd_servers, ssh_known_hosts, tmp_path / "src", tmp_path / "dst", job_id,
                       source_host={"advertise_host": "192.0.2.1"})
    with pytest.raises(ProvisionError, match=r"(?s)coordinator of job .* exited while starting.*log tail"):
        Transfer(request).start()
    assert gateway_pids(job_id) == [] and coordinator_pids(job_id) == []
    for server in sshd_servers:
        job = Path(server.remote_dir) / "jobs" / job_id
        assert not list(job.glob("gw-*")) and not (job / "request.json").exists()


def test_gateway_control_api_over_tls_trusts_only_its_pinned_certificate(sshd_servers, ssh_known_hosts, tmp_path):
    """The control API a coordinator reaches on another host: TLS, answered only to a client that
    pins this gateway's certificate (the handle's), never in clear."""
    from skyplane_provider.provisioners import get_provisioner
    from skyplane_provider.transfer.launch import JobSecrets, gateway_specs
    from planner.plan import direct_plan
    from gateway.tls import self_signed

    job_id = uuid.uuid4().hex
    prov = get_provisioner("ssh", hosts=[sshd_servers[0].host_setting()], known_hosts=str(ssh_known_hosts))
    specs = gateway_specs(direct_plan(REGIONS[0], [REGIONS[1]]), job_id, JobSecrets(), compress=True, encrypt=True,
                          credentials={})
    with prov.provision(job_id, specs[:1]) as fleet:
        g = fleet.gateways[0]
        url = g.extra["host_control_url"]
        assert url.startswith("https://127.0.0.1:")
        assert GatewayClient(url, g.control_token, cert=g.control_cert).health()["gateway_id"] == g.gateway_id
        for cert in (None, self_signed("127.0.0.1")[0]):
            with pytest.raises(GatewayError, match="CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
                GatewayClient(url, g.control_token, cert=cert).health()
        with pytest.raises(GatewayError):
            GatewayClient(url.replace("https://", "http://"), g.control_token, timeout=5).health()
    assert gateway_pids(job_id) == []


def test_ssh_job_watched_by_the_deferred_airflow_trigger_over_pinned_https(sshd_servers, ssh_known_hosts, tmp_path):
    """What a deferred Airflow task hands its triggerer: the handle alone (URL on the source gateway
    host, token, certificate). The real trigger polls the coordinator there over HTTPS and fires the
    stats; the client then reaps the hosts."""
    pytest.importorskip("airflow")
    import asyncio

    from skyplane_provider.airflow.triggers import SkyplaneTransferTrigger

    objs = _tree(tmp_path / "src", {f"f{i}": 300 * 1024 for i in range(6)})
    job_id = uuid.uuid4().hex
    transfer = Transfer(_request(sshd_servers, ssh_known_hosts, tmp_path / "src", tmp_path / "dst", job_id))
    handle = transfer.start()
    trigger = SkyplaneTransferTrigger(json.loads(json.dumps(handle.to_dict())), poll_interval=0.3)
    assert trigger.handle["url"].startswith("https://") and trigger.handle["cert"]

    async def first_event():
        async for event in trigger.run():
            return event.payload

    payload = asyncio.run(first_event())
    assert payload["status"] == "success", payload
    assert payload["stats"]["objects"] == len(objs) and _copied(tmp_path / "dst") == objs
    _wait(lambda: not gateway_pids(job_id))
    transfer.reap()
    _wait(lambda: not coordinator_pids(job_id))
    for server in sshd_servers:
        assert not list((Path(server.remote_dir) / "jobs" / job_id).glob("gw-*"))


def test_deprovision_stops_a_running_ssh_coordinator_which_stops_its_fleet(sshd_servers, ssh_known_hosts, tmp_path):
    """``deprovision --job`` while the job runs and its client is gone: the coordinator on the source
    host gets TERM (it cancels: uploads aborted, POST /shutdown to every gateway), the gateways of
    both hosts are stopped and their files removed."""
    _tree(tmp_path / "src", {f"f{i:02d}": MiB for i in range(12)})
    job_id = uuid.uuid4().hex
    transfer = Transfer(_request(sshd_servers, ssh_known_hosts, tmp_path / "src", tmp_path / "dst", job_id,
                                 bwlimit="1MiB"))
    transfer.start()
    assert len(coordinator_pids(job_id)) == 1 and len(gateway_pids(job_id, workers=False)) == 2
    hosts = [SSHHost.from_setting(s.host_setting()) for s in sshd_servers]
    reaped = deprovision_ssh(hosts, Selection(job_id=job_id), policy=ConnectPolicy(known_hosts=str(ssh_known_hosts)))
    assert sorted(r.job_id for r in reaped) == [job_id, job_id]
    _wait(lambda: not gateway_pids(job_id) and not coordinator_pids(job_id))
    for server in sshd_servers:
        assert not list((Path(server.remote_dir) / "jobs" / job_id).glob("gw-*"))
    transfer.reap()  # nothing left to do, and it says nothing


def test_ssh_retry_while_the_earlier_try_runs_is_refused_and_leaves_it_alone(sshd_servers, ssh_known_hosts, tmp_path):
    """A retried task whose earlier try's coordinator still runs on the source host (its task process
    was killed): refused with ``CoordinatorError`` before any host is touched; the running job keeps
    its fleet and finishes."""
    from planner.errors import CoordinatorError

    objs = _tree(tmp_path / "src", {f"f{i}": MiB for i in range(5)})
    job_id = uuid.uuid4().hex
    request = _request(sshd_servers, ssh_known_hosts, tmp_path / "src", tmp_path / "dst", job_id, bwlimit="1MiB")
    first = Transfer(request)
    handle = first.start()
    running = sorted(gateway_pids(job_id)), coordinator_pids(job_id)
    with pytest.raises(CoordinatorError, match="still running under its coordinator from an earlier try"):
        Transfer(_request(sshd_servers, ssh_known_hosts, tmp_path / "src", tmp_path / "dst", job_id)).start()
    assert (sorted(gateway_pids(job_id)), coordinator_pids(job_id)) == running
    assert handle.result(timeout=300).objects == len(objs) and _copied(tmp_path / "dst") == objs
    first.reap()
    _wait(lambda: not gateway_pids(job_id) and not coordinator_pids(job_id))


def test_ssh_retry_after_the_coordinator_was_killed_resumes_from_the_manifest_on_its_host(
        sshd_servers, ssh_known_hosts, tmp_path):
    """SIGKILL of the coordinator on the source host mid-job (its gateways keep running, nobody drives
    them); the retry (same job id, ``resume``) reaps them, and its coordinator, on the same host,
    continues from the manifest the first left there: the copies it recorded are not made again."""
    objs = _tree(tmp_path / "src", {f"f{i:02d}": MiB for i in range(10)})
    job_id = uuid.uuid4().hex
    # One connection at 1 MiB/s: the objects land one after the other, about a second apart.
    handle = Transfer(_request(sshd_servers, ssh_known_hosts, tmp_path / "src", tmp_path / "dst", job_id,
                               bwlimit="1MiB", connections=1)).start()
    _wait(lambda: (handle.client.job().get("progress") or {}).get("objects_done", 0) >= 3)
    time.sleep(1.0)  # the manifest commits every half second
    host_job = Path(sshd_servers[0].remote_dir) / "jobs" / job_id
    os.kill(int((host_job / "coordinator.pid").read_text()), signal.SIGKILL)
    orphans = gateway_pids(job_id)
    assert orphans and (host_job / "manifest.sqlite3").exists()
    stats = Transfer(_request(sshd_servers, ssh_known_hosts, tmp_path / "src", tmp_path / "dst", job_id,
                              resume=True)).run()
    assert stats.verified and _copied(tmp_path / "dst") == objs
    assert 1 <= stats.resumed_copies < len(objs) and stats.objects == len(objs) - stats.resumed_copies
    assert not set(orphans) & set(gateway_pids(job_id))
    _wait(lambda: not gateway_pids(job_id) and not coordinator_pids(job_id))


def _holds(pid: int, needle: bytes) -> bool | None:
    """Whether the process's readable memory holds ``needle``; None when this user may not read it."""
    found = False
    try:
        with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb") as mem:
            for line in maps:
                span, perms = line.split()[:2]
                if not perms.startswith("r"):
                    continue
                lo, hi = (int(x, 16) for x in span.split("-"))
                try:
                    mem.seek(lo)
                    found = found or needle in mem.read(hi - lo)
                except (OSError, ValueError, OverflowError):
                    continue  # a mapping the kernel will not hand out ([vvar])
    except PermissionError:
        return None
    return found


def _gateway_of(server, job_id: str) -> int:
    [pid] = [p for p in gateway_pids(job_id, workers=False)
             if server.remote_dir.encode() in Path(f"/proc/{p}/cmdline").read_bytes()]
    return pid


def test_ssh_source_host_holds_no_destination_credential(sshd_servers, ssh_known_hosts, tmp_path, emulators,
                                                         s3_bucket, monkeypatch):
    """A sync from the source host's directory into an S3 bucket (moto) whose credentials entry is its
    own: the job document, the files of the source host and the coordinator's and the source
    gateway's environment, command line and memory hold none of its secret, which the destination's
    gateway holds; renewed keys pushed through the coordinator reach that gateway alone; the
    coordinator lists the destination (the sync diff), begins and completes the multipart upload and
    verifies through that gateway, and the copy is sha256-identical. (~15 s)"""
    secret = f"dst-secret-{uuid.uuid4().hex}"
    entry = {"aws_access_key_id": "AKIADESTINATION", "aws_secret_access_key": secret,
             "endpoint_url": emulators.endpoints["s3"], "region_name": "us-east-1"}
    objs = _tree(tmp_path / "src", {**{f"f{i:02d}": 300 * 1024 for i in range(8)}, "big.bin": 6 * MiB + 17})
    dest = open_store(s3_bucket, {s3_bucket: entry})
    dest.write("out/f00", objs["f00"])  # already there: the sync skips it
    documents: list[dict] = []
    real_start = HostBootstrap.start_coordinator

    def spy(self, document, **kwargs):
        documents.append(document)
        return real_start(self, document, **kwargs)

    monkeypatch.setattr(HostBootstrap, "start_coordinator", spy)
    job_id = uuid.uuid4().hex
    transfer = Transfer(_request(sshd_servers, ssh_known_hosts, tmp_path / "src", f"{s3_bucket}/out/", job_id,
                                 sync=True, bwlimit="2MiB", credentials={s3_bucket: entry}))
    handle = transfer.start()
    try:
        needle = secret.encode()
        [doc] = documents
        assert doc["request"]["credentials"] == {} and secret not in json.dumps(doc)
        host_dir = Path(sshd_servers[0].remote_dir)
        coordinator = int((host_dir / "jobs" / job_id / "coordinator.pid").read_text())
        source_gw, dest_gw = _gateway_of(sshd_servers[0], job_id), _gateway_of(sshd_servers[1], job_id)
        for pid in (coordinator, source_gw):
            for name in ("environ", "cmdline"):
                assert needle not in Path(f"/proc/{pid}/{name}").read_bytes()
        # A renewal reaches the destination's gateway alone, relayed by the coordinator, which keeps nothing.
        _wait(lambda: (handle.client.job().get("progress") or {}).get("bytes_done", 0) > 0)
        renewed = f"dst-renewed-{uuid.uuid4().hex}"
        assert handle.push_credentials({s3_bucket: {**entry, "aws_secret_access_key": renewed}}) == 1
        seen = {pid: _holds(pid, needle) for pid in (coordinator, source_gw, dest_gw)}
        if seen[dest_gw] is not None:  # memory readable here: the destination's gateway is the one holding it
            assert seen == {coordinator: False, source_gw: False, dest_gw: True}
            assert _holds(source_gw, renewed.encode()) is False and _holds(dest_gw, renewed.encode()) is True
        stats = handle.result(timeout=120)
        for path in host_dir.rglob("*"):  # what the source host keeps: the job's directory, the gateways'
            if path.is_file() and not path.is_symlink() and "/venv-" not in str(path):
                assert needle not in path.read_bytes(), path
    finally:
        transfer.reap()
    assert stats.verified and stats.objects == len(objs) - 1 and stats.skipped_objects == 1
    assert {k: hashlib.sha256(dest.read("out/" + k)).hexdigest() for k in objs} == \
        {k: hashlib.sha256(v).hexdigest() for k, v in objs.items()}
    assert dest.pending_uploads() == []
    _wait(lambda: not gateway_pids(job_id) and not coordinator_pids(job_id))
