"""The ssh provisioner against real sshd servers on loopback: bootstrap, tunnels, teardown, bad input."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import uuid
from dataclasses import asdict
from pathlib import Path

import pytest

from planner.errors import ProvisionError
from planner.plan import direct_plan
from skyplane_provider.provisioners import get_provisioner
from skyplane_provider.provisioners.ssh import SSHProvisioner
from skyplane_provider.transfer import copy
from skyplane_provider.transfer.launch import JobSecrets, gateway_specs
from skyplane_provider.testing.emulators import free_port
from tests.helpers import gateway_pids

REGIONS = ("aws:us-east-1", "gcp:us-central1")


@pytest.fixture(autouse=True)
def _skyplane_home(tmp_path, monkeypatch):
    """The orchestrator's wheel cache goes to a temp dir, never the real ~/.skyplane."""
    monkeypatch.setenv("SKYPLANE_HOME", str(tmp_path / "home"))


def specs_for(job_id: str):
    plan = direct_plan(REGIONS[0], [REGIONS[1]])
    return gateway_specs(plan, job_id, JobSecrets(), compress=True, encrypt=True, credentials={})


def hosts_for(servers, **override) -> dict:
    return {region: [{**s.host_setting(), **override.get(region, {})}] for region, s in zip(REGIONS, servers)}


def leftovers(servers, job_id: str) -> tuple[list[int], list[Path]]:
    """Gateway processes and job directories of ``job_id`` still present on the test hosts."""
    dirs = [Path(s.remote_dir) / "jobs" / job_id for s in servers]
    return gateway_pids(job_id), [d for d in dirs if d.exists()]


def test_ssh_fleet_two_hosts_healthy_through_tunnels_then_torn_down(sshd_servers, ssh_known_hosts):
    job_id = uuid.uuid4().hex
    prov = get_provisioner("ssh", hosts=hosts_for(sshd_servers), known_hosts=str(ssh_known_hosts))
    assert isinstance(prov, SSHProvisioner)
    fleet = prov.provision(job_id, specs_for(job_id))
    try:
        assert [g.region for g in fleet.gateways] == list(REGIONS)
        for g, server in zip(fleet.gateways, sshd_servers):
            health = g.client().health()
            assert health["ok"] and health["gateway_id"] == g.gateway_id
            assert fleet.alive(g.gateway_id)
            assert g.extra["ssh_host"] == f"root@127.0.0.1:{server.port}"
            gdir = Path(g.extra["directory"])
            assert gdir.parent == Path(server.remote_dir) / "jobs" / job_id
            # Read by the gateway, then removed: its secrets live in its memory only.
            assert not (gdir / "config.json").exists() and stat.S_IMODE(gdir.stat().st_mode) == 0o700
            # The orchestrator reaches the control API through its local tunnel port, over TLS.
            ready = json.loads((gdir / "ready.json").read_text())
            assert "BEGIN CERTIFICATE" in ready["control_cert"] and g.control_url.startswith("https://127.0.0.1:")
            assert int(g.control_url.rsplit(":", 1)[1]) != ready["control_port"]
            record = json.loads((gdir.parent / "job.json").read_text())
            assert record["job_id"] == job_id and record["created_at"]
            assert record["pids"][g.gateway_id] == g.pid
            # The shipped package runs from the host's private venv.
            cmdline = Path(f"/proc/{g.pid}/cmdline").read_bytes().split(b"\0")
            assert cmdline[0].decode().startswith(server.remote_dir + "/venv-")
        assert isinstance(fleet.logs(fleet.gateways[0].gateway_id), str)
        assert len(gateway_pids(job_id, workers=False)) == 2
    finally:
        fleet.teardown()
    assert leftovers(sshd_servers, job_id) == ([], [])
    fleet.teardown()  # idempotent
    assert not fleet.alive(fleet.gateways[0].gateway_id)


def test_ssh_unreachable_host_is_named(sshd_servers, ssh_known_hosts):
    port = free_port()  # nothing listens there
    hosts = hosts_for(sshd_servers, **{REGIONS[1]: {"port": port}})
    job_id = uuid.uuid4().hex
    with pytest.raises(ProvisionError, match=rf"127\.0\.0\.1:{port}"):
        get_provisioner("ssh", hosts=hosts, known_hosts=str(ssh_known_hosts)).provision(job_id, specs_for(job_id))
    # The healthy host's gateway was started meanwhile; it is gone again.
    assert leftovers(sshd_servers, job_id) == ([], [])


def test_ssh_wrong_client_key_is_named(sshd_servers, ssh_known_hosts, tmp_path):
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    hosts = hosts_for(sshd_servers, **{REGIONS[1]: {"key_file": str(other)}})
    job_id = uuid.uuid4().hex
    with pytest.raises(ProvisionError, match=rf"root@127\.0\.0\.1:{sshd_servers[1].port} .*refused"):
        get_provisioner("ssh", hosts=hosts, known_hosts=str(ssh_known_hosts)).provision(job_id, specs_for(job_id))
    assert leftovers(sshd_servers, job_id) == ([], [])


def test_ssh_host_key_mismatch_is_refused_even_when_unknown_keys_are_accepted(sshd_servers, tmp_path):
    a, b = sshd_servers
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{a.port} {b.host_public_key}\n" + b.known_hosts_line())
    job_id = uuid.uuid4().hex
    prov = get_provisioner("ssh", hosts=hosts_for(sshd_servers), known_hosts=str(known),
                           accept_unknown_host_keys=True)
    with pytest.raises(ProvisionError, match=rf"host key of root@127\.0\.0\.1:{a.port} does NOT match"):
        prov.provision(job_id, specs_for(job_id))
    assert leftovers(sshd_servers, job_id) == ([], [])


def test_ssh_unknown_host_key_needs_opt_in(sshd_servers, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    job_id = uuid.uuid4().hex
    hosts = {REGIONS[0]: [sshd_servers[0].host_setting()]}
    specs = [s for s in specs_for(job_id) if s.region == REGIONS[0]]
    with pytest.raises(ProvisionError, match="not in known_hosts"):
        get_provisioner("ssh", hosts=hosts, known_hosts=str(empty)).provision(job_id, specs)
    with get_provisioner("ssh", hosts=hosts, known_hosts=str(empty), accept_unknown_host_keys=True).provision(
            job_id, specs) as fleet:
        assert fleet.alive(fleet.gateways[0].gateway_id)
    assert empty.read_text() == ""  # the user's known_hosts is never modified
    assert leftovers(sshd_servers, job_id) == ([], [])


def test_ssh_gateway_that_dies_reports_its_log_tail(sshd_servers, ssh_known_hosts):
    job_id = uuid.uuid4().hex
    specs = [s for s in specs_for(job_id) if s.region == REGIONS[0]]
    broken = [type(s)(s.gateway_id, s.region, {**s.config, "program": {"region": s.region, "partitions": "?"}})
              for s in specs]
    prov = get_provisioner("ssh", hosts={REGIONS[0]: [sshd_servers[0].host_setting()]},
                           known_hosts=str(ssh_known_hosts), health_timeout=15)
    with pytest.raises(ProvisionError, match=rf"(?s){REGIONS[0]}/0 on root@127\.0\.0\.1:\d+ exited.*log tail"):
        prov.provision(job_id, broken)
    assert leftovers(sshd_servers, job_id) == ([], [])


def test_ssh_transfer_through_bootstrapped_gateways_is_byte_exact(sshd_servers, ssh_known_hosts, tmp_path):
    objs = {"a/big.bin": os.urandom(3 * 1024 * 1024 + 17), "a/small.csv": b"k,v\n" * 5000, "empty": b""}
    src, dst = tmp_path / "src", tmp_path / "dst"
    for key, data in objs.items():
        (src / key).parent.mkdir(parents=True, exist_ok=True)
        (src / key).write_bytes(data)
    dst.mkdir()
    # The hosts are the session's: other tests' jobs may have left directories there (aws stand-ins).
    before = {server.remote_dir: set((Path(server.remote_dir) / "jobs").glob("*/gw-*")) for server in sshd_servers}
    stats = copy(str(src), str(dst), chunk_size="1MiB", src_region=REGIONS[0], dst_regions=[REGIONS[1]],
                 provisioner="ssh", provisioner_settings={"hosts": hosts_for(sshd_servers),
                                                          "known_hosts": str(ssh_known_hosts)})
    assert stats.verified and stats.objects == len(objs)
    assert {str(p.relative_to(dst)): p.read_bytes() for p in dst.rglob("*") if p.is_file()} == objs
    for server in sshd_servers:
        assert gateway_pids(server.remote_dir) == []
        assert set((Path(server.remote_dir) / "jobs").glob("*/gw-*")) <= before[server.remote_dir]


#: Provisions one ssh fleet, says READY, then exits at once ("exit") or waits for a signal.
ORCHESTRATOR = """
import json, sys, time
from skyplane_provider.provisioners import get_provisioner
from skyplane_provider.provisioners.base import GatewaySpec
job_id, settings, specs, how = json.loads(sys.argv[1])
get_provisioner("ssh", **settings).provision(job_id, [GatewaySpec(**s) for s in specs])
print("READY", flush=True)
if how == "sleep":
    time.sleep(600)
"""


@pytest.mark.parametrize("end", ["SIGTERM", "exit"])
def test_ssh_fleet_is_torn_down_when_the_orchestrator_ends(end, sshd_servers, ssh_known_hosts, tmp_path):
    job_id = uuid.uuid4().hex
    specs = [asdict(s) for s in specs_for(job_id) if s.region == REGIONS[0]]
    settings = {"hosts": [sshd_servers[0].host_setting()], "known_hosts": str(ssh_known_hosts)}
    proc = subprocess.Popen(
        [sys.executable, "-c", ORCHESTRATOR, json.dumps([job_id, settings, specs, "sleep" if end == "SIGTERM" else end])],
        env={**os.environ, "SKYPLANE_HOME": str(tmp_path / "home")}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    try:
        assert proc.stdout.readline().strip() == "READY", proc.stderr.read()
        if end == "SIGTERM":
            assert len(gateway_pids(job_id, workers=False)) == 1
            proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert leftovers(sshd_servers, job_id) == ([], [])
