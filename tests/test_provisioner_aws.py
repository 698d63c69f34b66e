"""The aws provisioner against a real moto EC2 API, with instances mapped onto local sshd servers.

moto's instance addresses are fake: every test checks that no connection goes anywhere but loopback.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
import uuid
from pathlib import Path

import boto3
import pytest

from planner.errors import CredentialsError, ProvisionError
from planner.plan import direct_plan
from skyplane_provider.provisioners import get_provisioner
from skyplane_provider.provisioners.aws import TAG_CREATED, TAG_GATEWAY, TAG_JOB, AWSProvisioner
from skyplane_provider.provisioners.ssh_bootstrap import HostBootstrap
from skyplane_provider.testing.leftovers import coordinator_pids
from skyplane_provider.transfer import Transfer, TransferRequest
from skyplane_provider.transfer.launch import JobSecrets, gateway_specs
from tests.helpers import ancestors, gateway_pids, wait_gone

REGIONS = ("aws:us-east-1", "aws:eu-west-1")


@pytest.fixture(autouse=True)
def _skyplane_home(tmp_path, monkeypatch):
    monkeypatch.setenv("SKYPLANE_HOME", str(tmp_path / "home"))


def specs_for(job_id: str):
    plan = direct_plan(REGIONS[0], [REGIONS[1]])
    return gateway_specs(plan, job_id, JobSecrets(), compress=True, encrypt=True, credentials={})


def settings(ec2_endpoint, servers, known_hosts, **extra) -> dict:
    return {"endpoint_url": ec2_endpoint, "orchestrator_cidr": "127.0.0.1/32", "poll_seconds": 0.1,
            "instance_type": "m5.large", "known_hosts": str(known_hosts), "accept_unknown_host_keys": False,
            "address_map": {str(i): s.host_setting() for i, s in enumerate(servers)}, **extra}


def ec2(endpoint: str, region: str):
    return boto3.client("ec2", region_name=region.split(":")[-1], endpoint_url=endpoint)


def job_resources(endpoint: str, job_id: str) -> dict:
    """Live instances, groups and key pairs tagged with the job, over all test regions."""
    flt = [{"Name": f"tag:{TAG_JOB}", "Values": [job_id]}]
    out = {"instances": [], "groups": [], "keys": []}
    for region in REGIONS:
        c = ec2(endpoint, region)
        out["instances"] += [i for r in c.describe_instances(Filters=flt)["Reservations"] for i in r["Instances"]
                             if i["State"]["Name"] != "terminated"]
        out["groups"] += c.describe_security_groups(Filters=flt)["SecurityGroups"]
        out["keys"] += c.describe_key_pairs(Filters=flt)["KeyPairs"]
    return out


def test_aws_fleet_on_moto_boots_over_mapped_sshd_and_tears_down(
        ec2_endpoint, aws_env, sshd_servers, ssh_known_hosts, connections, tmp_path):
    job_id = uuid.uuid4().hex
    prov = get_provisioner("aws", spot=True, **settings(ec2_endpoint, sshd_servers, ssh_known_hosts))
    assert isinstance(prov, AWSProvisioner)
    mapped = {("127.0.0.1", s.port) for s in sshd_servers}
    assert prov.allowed_addresses() == mapped
    fleet = prov.provision(job_id, specs_for(job_id))
    try:
        res = job_resources(ec2_endpoint, job_id)
        assert len(res["instances"]) == 2 and len(res["groups"]) == 2 and len(res["keys"]) == 2
        instance_ips = set()
        for inst in res["instances"]:
            tags = {t["Key"]: t["Value"] for t in inst["Tags"]}
            assert tags[TAG_JOB] == job_id and tags[TAG_CREATED] and tags[TAG_GATEWAY] in {g.gateway_id for g in fleet.gateways}
            assert inst["State"]["Name"] == "running" and inst["InstanceType"] == "m5.large"
            assert inst.get("InstanceLifecycle") == "spot"
            shutdown = ec2(ec2_endpoint, inst["Placement"]["AvailabilityZone"][:-1]).describe_instance_attribute(
                InstanceId=inst["InstanceId"], Attribute="instanceInitiatedShutdownBehavior")
            assert shutdown["InstanceInitiatedShutdownBehavior"]["Value"] == "terminate"
            instance_ips |= {inst["PublicIpAddress"], inst["PrivateIpAddress"]}
        for group in res["groups"]:
            rules = {(p["FromPort"], p["ToPort"], r["CidrIp"]) for p in group["IpPermissions"] for r in p["IpRanges"]}
            # SSH and the coordinator's API from the orchestrator; data and control ports from the fleet
            assert rules == {(22, 22, "127.0.0.1/32"), (47802, 47802, "127.0.0.1/32")} | {
                (47800, 47801, f"{ip}/32") for ip in instance_ips}
        for g in fleet.gateways:
            assert g.client().health()["ok"]
            assert g.data_host == "127.0.0.1"
        assert len(gateway_pids(job_id, workers=False)) == 2
        key_file = Path(tmp_path / "home" / "keys" / f"{job_id}.key")
        assert key_file.stat().st_mode & 0o777 == 0o600
        assert fleet.vm_seconds() > 0 and fleet.vm_usd() > 0
    finally:
        fleet.teardown()
    # Nothing but loopback was ever contacted (SSH, tunnels, health); no fake instance address.
    assert connections and {h for h, _ in connections} == {"127.0.0.1"}
    assert {(h, p) for h, p in connections if p in {s.port for s in sshd_servers}} == mapped
    assert job_resources(ec2_endpoint, job_id) == {"instances": [], "groups": [], "keys": []}
    assert gateway_pids(job_id) == []
    assert not key_file.exists()
    seconds = fleet.vm_seconds()
    assert fleet.vm_seconds() == seconds  # the clock stopped at termination


def test_aws_prices_come_from_the_planner_for_its_vm_type():
    from planner.providers import provider_of

    planner_vm = provider_of("aws:us-east-1")
    assert AWSProvisioner(instance_type=planner_vm.vm_type).hourly_price("aws:us-east-1") == planner_vm.usd_per_hour
    assert AWSProvisioner(instance_type="m5.large").hourly_price("aws:us-east-1") == 0.096


def test_aws_missing_credentials_name_what_to_set(aws_env, monkeypatch, ec2_endpoint):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    job_id = uuid.uuid4().hex
    prov = get_provisioner("aws", endpoint_url=ec2_endpoint, orchestrator_cidr="127.0.0.1/32")
    with pytest.raises(CredentialsError, match="AWS_ACCESS_KEY_ID"):
        prov.provision(job_id, specs_for(job_id))


def test_aws_region_error_is_named_and_everything_started_is_removed(
        ec2_endpoint, aws_env, sshd_servers, ssh_known_hosts, connections):
    job_id = uuid.uuid4().hex
    prov = get_provisioner("aws", **settings(ec2_endpoint, sshd_servers, ssh_known_hosts,
                                             subnet_id={"eu-west-1": "subnet-00000000"}))
    with pytest.raises(ProvisionError, match=r"AWS eu-west-1: .*InvalidSubnetID"):
        prov.provision(job_id, specs_for(job_id))
    assert job_resources(ec2_endpoint, job_id) == {"instances": [], "groups": [], "keys": []}
    assert connections == [] or {h for h, _ in connections} == {"127.0.0.1"}


def test_aws_unmapped_instance_is_never_contacted(ec2_endpoint, aws_env, sshd_servers, ssh_known_hosts, connections):
    job_id = uuid.uuid4().hex
    s = settings(ec2_endpoint, sshd_servers, ssh_known_hosts)
    s["address_map"] = {"0": sshd_servers[0].host_setting()}
    with pytest.raises(ProvisionError, match=r"gateway #1\) has no address_map entry"):
        get_provisioner("aws", **s).provision(job_id, specs_for(job_id))
    assert connections == []
    assert job_resources(ec2_endpoint, job_id) == {"instances": [], "groups": [], "keys": []}


def _sha256s(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()}


def test_aws_job_runs_its_coordinator_on_the_source_instance_and_leaves_nothing(
        ec2_endpoint, aws_env, sshd_servers, ssh_known_hosts, connections, tmp_path, monkeypatch):
    """The coordinator of an aws job is a process of the source instance's (mapped) host, not of this
    client; it gets no AWS credentials; the copy is identical; after the job and the client's reap no
    instance, security group, key pair, gateway or coordinator of the job is left."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    for i in range(6):
        (src / f"f{i}").write_bytes(os.urandom(200_000))
    (src / "big.bin").write_bytes(os.urandom(3 * 1024**2 + 17))  # a multipart object of four parts
    job_id = uuid.uuid4().hex
    documents: list[dict] = []
    real_start = HostBootstrap.start_coordinator

    def spy(self, document, **kwargs):  # what the instance gets
        documents.append(document)
        return real_start(self, document, **kwargs)

    monkeypatch.setattr(HostBootstrap, "start_coordinator", spy)
    prov_settings = settings(ec2_endpoint, sshd_servers, ssh_known_hosts,
                             aws_access_key_id="testing", aws_secret_access_key="testing")
    transfer = Transfer(TransferRequest(src=str(src), dsts=[str(dst)], job_id=job_id, chunk_size="1MiB",
                                        src_region=REGIONS[0], dst_regions=[REGIONS[1]], provisioner="aws",
                                        provisioner_settings=prov_settings))
    started = time.monotonic()
    handle = transfer.start()
    try:
        host_job = Path(sshd_servers[0].remote_dir) / "jobs" / job_id  # gateway #0 is the source's
        pid = int((host_job / "coordinator.pid").read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert cmdline[0].decode().startswith(sshd_servers[0].remote_dir + "/venv-")
        assert cmdline[1:3] == [b"-m", b"skyplane_provider.coordinator"]
        assert os.getsid(pid) == pid and os.getpid() not in ancestors(pid)
        environ = Path(f"/proc/{pid}/environ").read_bytes()
        assert b"AWS_" not in environ  # its host's clean session: nothing of this client's environment
        assert not (Path(sshd_servers[1].remote_dir) / "jobs" / job_id / "coordinator.pid").exists()
        assert handle.url.startswith("https://127.0.0.1:") and "BEGIN CERTIFICATE" in handle.to_dict()["cert"]
        [doc] = documents
        shipped = doc["request"]["provisioner_settings"]
        assert "aws_access_key_id" not in shipped and "aws_secret_access_key" not in shipped
        assert shipped["endpoint_url"] == ec2_endpoint  # the rest of the settings travel
        stats = handle.result(timeout=120)
    finally:
        transfer.reap()  # the client still here deletes what only its credentials may: the VMs
    elapsed = time.monotonic() - started
    assert stats.verified and stats.objects == 7
    assert _sha256s(dst) == _sha256s(src)
    assert job_resources(ec2_endpoint, job_id) == {"instances": [], "groups": [], "keys": []}
    assert gateway_pids(job_id) == [] and coordinator_pids(job_id) == []
    assert not (tmp_path / "home" / "keys" / f"{job_id}.key").exists()
    assert {h for h, _ in connections} == {"127.0.0.1"}
    print(f"aws job with its coordinator on the source instance: {elapsed:.1f} s from start() to reaped")



def test_deferred_airflow_task_deletes_its_aws_fleet_in_execute_complete(
        ec2_endpoint, aws_env, sshd_servers, ssh_known_hosts, tmp_path, monkeypatch):
    """A deferrable operator on an aws fleet: the task defers once the coordinator runs on the source
    instance (its process would exit: nothing of the client tears down), the real trigger fires the
    stats, and execute_complete, in a fresh operator as a resuming worker builds it, deletes every VM,
    group and key pair with the ``skyplane`` connection's credentials."""
    pytest.importorskip("airflow")
    import asyncio
    import json

    from airflow.sdk.exceptions import TaskDeferred

    from skyplane_provider.airflow.operators import SkyplaneTransferOperator

    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    for i in range(4):
        (src / f"f{i}").write_bytes(os.urandom(150_000))
    prov_settings = settings(ec2_endpoint, sshd_servers, ssh_known_hosts)
    monkeypatch.setenv("AIRFLOW_CONN_SKYPLANE_AWS", json.dumps(
        {"conn_type": "skyplane", "extra": {"provisioner": "aws", "provisioner_settings": prov_settings}}))

    def operator() -> SkyplaneTransferOperator:
        return SkyplaneTransferOperator(task_id="copy", src=str(src), dst=str(dst), src_region=REGIONS[0],
                                        dst_regions=[REGIONS[1]], skyplane_conn_id="skyplane_aws", deferrable=True,
                                        chunk_size="1MiB", poll_interval=0.2)

    with pytest.raises(TaskDeferred) as deferred:
        operator().execute({})
    fleet = deferred.value.kwargs["fleet"]
    job_id = fleet["job_id"]
    try:
        assert sorted(fleet["regions"]) == sorted(REGIONS) and len(coordinator_pids(job_id)) == 1
        assert len(job_resources(ec2_endpoint, job_id)["instances"]) == 2

        async def first_event():
            async for event in deferred.value.trigger.run():
                return event.payload

        payload = asyncio.run(first_event())
        assert payload["status"] == "success", payload
        assert len(job_resources(ec2_endpoint, job_id)["instances"]) == 2  # the coordinator cannot delete them
        stats = operator().execute_complete({}, payload, **deferred.value.kwargs)
        assert stats["objects"] == 4 and _sha256s(dst) == _sha256s(src)
        assert job_resources(ec2_endpoint, job_id) == {"instances": [], "groups": [], "keys": []}
        # Here the "instances" are local sshd hosts, which moto's terminate does not stop: the gateways
        # end by the coordinator's POST /shutdown, the coordinator a moment after the trigger read its result.
        assert wait_gone(job_id) == []
    finally:
        get_provisioner("aws", **prov_settings).reap_job(job_id, list(REGIONS))  # whatever a failure left
        # A real instance's disk goes with it; these stand-in hosts are shared by the session's other
        # tests, which must not find this job's gateway directories there.
        for server in sshd_servers:
            shutil.rmtree(Path(server.remote_dir) / "jobs" / job_id, ignore_errors=True)
