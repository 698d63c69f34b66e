"""``skyplane-provider deprovision``: leftovers of an orchestrator killed with SIGKILL are found and removed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import asdict
from pathlib import Path

import boto3
import pytest

from planner.errors import BadOptionError
from planner.plan import direct_plan
from skyplane_provider.deprovision import (Selection, deprovision_aws, deprovision_local, deprovision_ssh,
                                           parse_duration)
from skyplane_provider.provisioners.aws import TAG_JOB
from skyplane_provider.provisioners.ssh_connection import ConnectPolicy, SSHHost
from skyplane_provider.transfer.launch import JobSecrets, gateway_specs
from tests.helpers import gateway_pids, mapped_to

CLI = [sys.executable, "-m", "skyplane_provider.cli.main"]

#: The orchestrator: provisions one fleet per (job, provisioner, settings, specs) in parallel, says
#: READY, then waits to be killed.
ORCHESTRATOR = """
import json, sys, time
from concurrent.futures import ThreadPoolExecutor
from skyplane_provider.provisioners import get_provisioner
from skyplane_provider.provisioners.base import GatewaySpec
def up(job_id, name, settings, specs):
    return get_provisioner(name, **settings).provision(job_id, [GatewaySpec(**s) for s in specs])
with ThreadPoolExecutor() as pool:
    fleets = [f.result() for f in [pool.submit(up, *fleet) for fleet in json.loads(sys.argv[1])]]
print("READY", flush=True)
time.sleep(600)
"""


def provision_then_kill(fleets: list, env: dict) -> None:
    """Run the orchestrator with ``fleets`` until they are all up, then SIGKILL it: no teardown runs."""
    proc = subprocess.Popen([sys.executable, "-c", ORCHESTRATOR, json.dumps(fleets)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "READY", proc.stderr.read()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_ssh_aws_deprovision_parses_durations():
    assert parse_duration("90s") == 90 and parse_duration("30m") == 1800 and parse_duration("2h") == 7200
    assert parse_duration("1d") == 86400 and parse_duration("1h30m") == 5400
    for bad in ("", "2 hours", "h", "-1h", "2x"):
        with pytest.raises(BadOptionError):
            parse_duration(bad)


def test_ssh_aws_deprovision_selects_by_job_and_age():
    old, new = "2020-01-01T00:00:00+00:00", time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
    assert Selection().matches("a", None)
    assert Selection(job_id="a").matches("a", new) and not Selection(job_id="a").matches("b", new)
    assert Selection(older_than=3600).matches("a", old) and not Selection(older_than=3600).matches("a", new)
    assert not Selection(older_than=60).matches("a", None)  # unknown age is never "old"


def test_deprovision_help_lists_ssh_and_aws_options():
    out = subprocess.run([*CLI, "deprovision", "--help"], capture_output=True, text=True, check=True).stdout
    assert "--older-than" in out and "--all" in out and "--aws-region" in out


def _specs(job_id: str, *regions: str) -> list[dict]:
    plan = direct_plan(regions[0], list(regions[1:]))
    return [asdict(s) for s in gateway_specs(plan, job_id, JobSecrets(), compress=True, encrypt=True, credentials={})]


def _aws_live(endpoint: str, job_id: str) -> int:
    n = 0
    for region in ("us-east-1", "eu-west-1"):
        c = boto3.client("ec2", region_name=region, endpoint_url=endpoint)
        flt = [{"Name": f"tag:{TAG_JOB}", "Values": [job_id]}]
        n += sum(1 for r in c.describe_instances(Filters=flt)["Reservations"] for i in r["Instances"]
                 if i["State"]["Name"] != "terminated")
        n += len(c.describe_security_groups(Filters=flt)["SecurityGroups"])
        n += len(c.describe_key_pairs(Filters=flt)["KeyPairs"])
    return n


def test_deprovision_all_removes_local_ssh_aws_leftovers_of_a_killed_orchestrator(
        tmp_path, monkeypatch, aws_env, ec2_endpoint, sshd_servers, ssh_known_hosts):
    home = tmp_path / "home"
    env = {**os.environ, "SKYPLANE_HOME": str(home)}
    local_job, ssh_job, aws_job = uuid.uuid4().hex, uuid.uuid4().hex, uuid.uuid4().hex
    ssh_settings = {"hosts": [sshd_servers[0].host_setting()], "known_hosts": str(ssh_known_hosts)}
    aws_settings = {"endpoint_url": ec2_endpoint, "orchestrator_cidr": "127.0.0.1/32", "poll_seconds": 0.1,
                    "ami": "ami-12345678",
                    "known_hosts": str(ssh_known_hosts), "accept_unknown_host_keys": False,
                    "address_map": {"0": sshd_servers[1].host_setting(), "1": sshd_servers[1].host_setting()}}
    fleets = [(local_job, "local", {}, _specs(local_job, "aws:us-east-1")),
              (ssh_job, "ssh", ssh_settings, _specs(ssh_job, "aws:us-east-1")),
              (aws_job, "aws", aws_settings, _specs(aws_job, "aws:us-east-1", "aws:eu-west-1"))]
    provision_then_kill(fleets, env)

    # The kill left remote gateways, job files and cloud resources behind. The local gateway saw its
    # parent die and stopped by itself (``parent_pid``); its files, secrets included, are still there.
    deadline = time.monotonic() + 10
    while gateway_pids(local_job) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [len(gateway_pids(j, workers=False)) for j in (local_job, ssh_job, aws_job)] == [0, 1, 2]
    assert (home / "jobs" / local_job / "gw-aws_us-east-1_0" / "config.json").exists()
    assert (home / "jobs" / local_job / "pids.json").exists()
    assert _aws_live(ec2_endpoint, aws_job) == 2 + 2 + 2
    job_dirs = [Path(s.remote_dir) / "jobs" / j for s, j in ((sshd_servers[0], ssh_job), (sshd_servers[1], aws_job))]
    assert all(d.exists() for d in job_dirs)

    ssh_config = tmp_path / "ssh.json"
    ssh_config.write_text(json.dumps({"hosts": [s.host_setting() for s in sshd_servers],
                                      "known_hosts": str(ssh_known_hosts)}))
    args = [*CLI, "deprovision", "--all", "--ssh-config", str(ssh_config), "--aws-region", "us-east-1",
            "--aws-region", "eu-west-1", "--aws-endpoint-url", ec2_endpoint, "--json"]

    # Too young for --older-than 1h: nothing is touched.
    monkeypatch.setenv("SKYPLANE_HOME", str(home))
    young = Selection(older_than=parse_duration("1h"))
    hosts = [SSHHost.from_setting(s.host_setting()) for s in sshd_servers]
    assert deprovision_local(young) == []
    assert deprovision_ssh(hosts, young, policy=ConnectPolicy(known_hosts=str(ssh_known_hosts))) == []
    assert deprovision_aws(["us-east-1", "eu-west-1"], young, endpoint_url=ec2_endpoint) == []
    assert [len(gateway_pids(j, workers=False)) for j in (local_job, ssh_job, aws_job)] == [0, 1, 2]
    assert _aws_live(ec2_endpoint, aws_job) == 6

    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    reaped = {(r["provisioner"], r["job_id"]) for r in json.loads(done.stdout.splitlines()[-1])}
    assert {("local", local_job), ("ssh", ssh_job), ("ssh", aws_job), ("aws", aws_job)} <= reaped
    assert [gateway_pids(j) for j in (local_job, ssh_job, aws_job)] == [[], [], []]
    assert not (home / "jobs" / local_job).exists()
    assert not any(d.exists() for d in job_dirs)
    assert _aws_live(ec2_endpoint, aws_job) == 0
    assert not (home / "keys" / f"{aws_job}.key").exists()


def test_deprovision_removes_gcp_and_azure_leftovers_of_a_killed_orchestrator(
        tmp_path, gcp_standin, azure_standin, sshd_servers, ssh_known_hosts):
    """Against the local stand-ins of the Compute Engine and Azure Resource Manager APIs (no emulator
    of either exists; see tests/fixtures/cloud_standins.py)."""
    from skyplane_provider.provisioners.azure import TAG_JOB as AZURE_TAG
    from skyplane_provider.provisioners.gcp import LABEL_JOB
    from tests.fixtures.cloud_standins import AZURE_RESOURCE_GROUP

    home = tmp_path / "home"
    env = {**os.environ, "SKYPLANE_HOME": str(home)}
    gcp_job, azure_job = uuid.uuid4().hex, uuid.uuid4().hex
    mapped = mapped_to(sshd_servers, "key_file")
    common = {"orchestrator_cidr": "127.0.0.1/32", "poll_seconds": 0.05, "known_hosts": str(ssh_known_hosts),
              "accept_unknown_host_keys": False, "address_map": mapped}
    fleets = [(gcp_job, "gcp", {**common, "endpoint": gcp_standin.url, "instance_type": "e2-standard-2"},
               _specs(gcp_job, "gcp:us-central1", "gcp:europe-west1")),
              (azure_job, "azure", {**common, "base_url": azure_standin.url, "resource_group": AZURE_RESOURCE_GROUP,
                                    "instance_type": "Standard_D2s_v5"},
               _specs(azure_job, "azure:eastus", "azure:westeurope"))]
    provision_then_kill(fleets, env)

    def cloud_left() -> tuple[int, int, int]:
        return (len(gcp_standin.live_instances(LABEL_JOB, gcp_job)),
                sum(gcp_job in f["description"] for f in gcp_standin.firewalls.values()),
                sum(len(azure_standin.of_kind(k, AZURE_TAG, azure_job)) for k in (
                    "virtualMachines", "networkInterfaces", "publicIPAddresses", "virtualNetworks",
                    "networkSecurityGroups", "sshPublicKeys")))

    try:
        assert [len(gateway_pids(j, workers=False)) for j in (gcp_job, azure_job)] == [2, 2]
        assert cloud_left() == (2, 2, 12)
        ssh_config = tmp_path / "ssh.json"
        ssh_config.write_text(json.dumps({"hosts": [s.host_setting() for s in sshd_servers],
                                          "known_hosts": str(ssh_known_hosts)}))
        args = [*CLI, "deprovision", "--all", "--ssh-config", str(ssh_config), "--gcp-project", gcp_standin.project,
                "--gcp-endpoint", gcp_standin.url, "--azure-subscription", azure_standin.subscription,
                "--azure-endpoint", azure_standin.url, "--poll-seconds", "0.05", "--json"]

        dry = subprocess.run([*args, "--dry-run"], env=env, capture_output=True, text=True, timeout=120)
        assert dry.returncode == 0, dry.stderr
        assert {(r["provisioner"], r["job_id"]) for r in json.loads(dry.stdout.splitlines()[-1])} >= {
            ("gcp", gcp_job), ("azure", azure_job)}
        assert cloud_left() == (2, 2, 12) and [len(gateway_pids(j, workers=False)) for j in (gcp_job, azure_job)] == [2, 2]

        done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stderr
        reaped = {(r["provisioner"], r["job_id"]) for r in json.loads(done.stdout.splitlines()[-1])}
        assert {("ssh", gcp_job), ("ssh", azure_job), ("gcp", gcp_job), ("azure", azure_job)} <= reaped
        assert cloud_left() == (0, 0, 0)
        assert [gateway_pids(j) for j in (gcp_job, azure_job)] == [[], []]
        assert not any((home / "keys" / f"{j}.key").exists() for j in (gcp_job, azure_job))
    finally:  # a failed assertion must not leave the remote gateways of the killed orchestrator running
        for pid in gateway_pids(gcp_job) + gateway_pids(azure_job):
            os.kill(pid, signal.SIGKILL)
