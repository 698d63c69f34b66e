"""The gcp provisioner against a local STAND-IN of the Compute Engine API, instances mapped onto local sshd.

No emulator of Compute Engine exists: ``skyplane_provider/testing/gcp_compute.py`` serves the calls
the provisioner makes, written from the public REST reference, and the real google-cloud-compute
client talks to it through its own ``api_endpoint`` override, with Application Default Credentials
whose tokens the stand-in issues. The stand-in's instance addresses are never contacted.
"""

from __future__ import annotations

import uuid

import pytest

from planner.errors import BadOptionError, CredentialsError, ProvisionError
from skyplane_provider.provisioners import get_provisioner
from skyplane_provider.testing.gcp_compute import GCPComputeStandIn
from skyplane_provider.provisioners.gcp import LABEL_CREATED, LABEL_JOB, META_GATEWAY, GCPProvisioner
from tests.helpers import direct_specs, gateway_pids, launch_cloud_job, mapped_to
from tests.reliability_report import record

REGIONS = ("gcp:us-central1", "gcp:europe-west1")


pytestmark = pytest.mark.usefixtures("home")  # a private SKYPLANE_HOME (keys, wheel cache)


def specs_for(job_id: str):
    return direct_specs(job_id, *REGIONS)


def settings(standin, servers, known_hosts, **extra) -> dict:
    """Instances map to the sshd servers; no key_file: the job's own key, installed by the stand-in's
    guest agent, must be what logs in."""
    mapped = mapped_to(servers, "key_file", "user")
    return {"endpoint": standin.url, "orchestrator_cidr": "127.0.0.1/32", "poll_seconds": 0.05,
            "instance_type": "e2-standard-2", "ssh_user": "root", "known_hosts": str(known_hosts),
            "accept_unknown_host_keys": False, "address_map": mapped, **extra}


def nothing_left(standin, job_id: str) -> bool:
    return not standin.live_instances(LABEL_JOB, job_id) and not [
        f for f in standin.firewalls.values() if job_id in f.get("description", "")]


def test_gcp_fleet_on_standin_boots_with_its_own_key_and_tears_down(
        gcp_standin, sshd_servers, ssh_known_hosts, connections, tmp_path):
    job_id = uuid.uuid4().hex
    prov = get_provisioner("gcp", spot=True, **settings(gcp_standin, sshd_servers, ssh_known_hosts))
    assert isinstance(prov, GCPProvisioner)
    fleet = prov.provision(job_id, specs_for(job_id))
    key_file = tmp_path / "home" / "keys" / f"{job_id}.key"
    try:
        instances = gcp_standin.live_instances(LABEL_JOB, job_id)
        assert sorted(i["zone"].rsplit("/", 1)[-1] for i in instances) == ["europe-west1-b", "us-central1-a"]
        public_key = fleet.job.key.public_openssh
        addresses = set()
        for inst in instances:
            assert inst["status"] == "RUNNING" and inst["machineType"].endswith("/machineTypes/e2-standard-2")
            assert inst["labels"][LABEL_JOB] == job_id and inst["labels"][LABEL_CREATED]
            assert inst["tags"]["items"] == [f"skyplane-{job_id}"]
            assert inst["scheduling"]["provisioningModel"] == "SPOT"
            meta = {m["key"]: m["value"] for m in inst["metadata"]["items"]}
            assert meta["ssh-keys"].startswith(f"root:{public_key}") and meta["enable-oslogin"] == "FALSE"
            assert meta[META_GATEWAY] in {g.gateway_id for g in fleet.gateways}
            assert inst["disks"][0]["autoDelete"] is True
            nic = inst["networkInterfaces"][0]
            addresses |= {nic["networkIP"], nic["accessConfigs"][0]["natIP"]}
        rules = {f["name"]: f for f in gcp_standin.firewalls.values()}
        assert set(rules) == {f"skyplane-{job_id}-ssh", f"skyplane-{job_id}-data"}
        ssh, data = rules[f"skyplane-{job_id}-ssh"], rules[f"skyplane-{job_id}-data"]
        assert ssh["sourceRanges"] == ["127.0.0.1/32"]  # and the coordinator's API, on the source VM
        assert ssh["allowed"] == [{"IPProtocol": "tcp", "ports": ["22", "47802"]}]
        assert set(data["sourceRanges"]) == {f"{a}/32" for a in addresses}
        assert data["allowed"] == [{"IPProtocol": "tcp", "ports": ["47800", "47801"]}]  # data, control
        assert all(r["targetTags"] == [f"skyplane-{job_id}"] and job_id in r["description"] for r in rules.values())
        # The job's key (not the test's client key) is authorized on the mapped hosts while instances live.
        assert all(public_key in (s.directory / "authorized_keys").read_text() for s in sshd_servers)
        for g in fleet.gateways:
            assert g.client().health()["ok"]
        assert len(gateway_pids(job_id, workers=False)) == 2
        assert key_file.stat().st_mode & 0o777 == 0o600
        assert fleet.vm_seconds() > 0 and fleet.vm_usd() > 0
    finally:
        fleet.teardown()
    assert {h for h, _ in connections} == {"127.0.0.1"}
    assert nothing_left(gcp_standin, job_id) and gcp_standin.firewalls == {}
    assert gateway_pids(job_id) == []
    assert not key_file.exists()
    assert not any(public_key in (s.directory / "authorized_keys").read_text() for s in sshd_servers)
    seconds = fleet.vm_seconds()
    assert fleet.vm_seconds() == seconds  # the clock stopped at deletion


def test_gcp_zone_error_names_the_region_and_everything_started_is_removed(
        gcp_standin, sshd_servers, ssh_known_hosts, connections):
    job_id = uuid.uuid4().hex
    prov = get_provisioner("gcp", **settings(gcp_standin, sshd_servers, ssh_known_hosts,
                                             zone={"europe-west1": "europe-west1-z"}))
    with pytest.raises(ProvisionError, match=r"GCP europe-west1 \(europe-west1-z\): instances.insert .* failed"):
        prov.provision(job_id, specs_for(job_id))
    assert ("POST", f"/compute/v1/projects/{gcp_standin.project}/zones/us-central1-a/instances") in gcp_standin.server.log
    assert nothing_left(gcp_standin, job_id)
    assert connections == []


def test_gcp_quota_exceeded_says_so_and_removes_everything(gcp_standin, sshd_servers, ssh_known_hosts):
    gcp_standin.quota_instances = 1
    job_id = uuid.uuid4().hex
    with pytest.raises(ProvisionError, match="Quota 'INSTANCES' exceeded") as err:
        get_provisioner("gcp", **settings(gcp_standin, sshd_servers, ssh_known_hosts)).provision(job_id, specs_for(job_id))
    assert "quota increase" in str(err.value)
    assert nothing_left(gcp_standin, job_id)


def test_gcp_refused_or_missing_credentials_name_what_to_set(gcp_standin, monkeypatch, tmp_path):
    job_id = uuid.uuid4().hex
    prov = get_provisioner("gcp", endpoint=gcp_standin.url, orchestrator_cidr="127.0.0.1/32")
    other = GCPComputeStandIn(gcp_standin.project, {})  # an account the stand-in does not know
    other.url = gcp_standin.url
    other.adc_file(tmp_path / "bad-adc.json")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "bad-adc.json"))
    with pytest.raises(CredentialsError, match="GOOGLE_APPLICATION_CREDENTIALS"):
        prov.provision(job_id, specs_for(job_id))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    with pytest.raises(CredentialsError, match="application-default login"):
        prov.provision(job_id, specs_for(job_id))
    assert [p for _, p in gcp_standin.server.log if p.startswith("/compute")] == []


@pytest.mark.parametrize("case, extra, job_id, message", [
    ("unknown setting", {"machine": "n2"}, None, "unknown gcp provisioner settings"),
    ("no orchestrator", {"orchestrator_cidr": None}, None, "needs orchestrator_cidr"),
    ("bad orchestrator", {"orchestrator_cidr": "10.0.0.300/32"}, None, "bad orchestrator_cidr"),
    ("bad data port", {"data_port": 22}, None, "bad data_port"),
    ("bad disk", {"disk_gb": 2}, None, "bad disk_gb"),
    ("zone of another region", {"zone": "us-central1-a"}, None, "zone us-central1-a is not in region europe-west1"),
    ("job id not a label", {}, "Nightly.Run", "cannot label resources with job id"),
])
def test_bad_input_gcp_settings_are_refused_before_any_call(gcp_standin, sshd_servers, ssh_known_hosts,
                                                           case, extra, job_id, message):
    with pytest.raises(BadOptionError, match=message) as info:
        job = job_id or uuid.uuid4().hex
        get_provisioner("gcp", **{**settings(gcp_standin, sshd_servers, ssh_known_hosts), **extra}).provision(
            job, specs_for(job))
    assert gcp_standin.server.log == []
    record("bad_input", f"gcp provisioner: {case}",
           f"{type(info.value).__name__}: {info.value}; no call reached the (stand-in) cloud API")


def test_bad_input_gcp_refuses_regions_of_other_clouds(gcp_standin):
    specs = direct_specs("j", "aws:us-east-1", "gcp:us-central1")
    with pytest.raises(BadOptionError, match="cannot run a gateway in aws:us-east-1"):
        get_provisioner("gcp", endpoint=gcp_standin.url, orchestrator_cidr="127.0.0.1/32").provision("j", specs)
    assert gcp_standin.server.log == []


def test_bad_input_gcp_without_its_sdk_says_which_extra_to_install(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "google.cloud.compute_v1" else real(name, *a))
    with pytest.raises(BadOptionError, match=r"pip install 'skyplane-provider\[gcp\]'"):
        get_provisioner("gcp", orchestrator_cidr="127.0.0.1/32")


def test_gcp_reap_job_deletes_everything_the_job_left(gcp_standin, sshd_servers, ssh_known_hosts):
    """``Provisioner.reap_job``, what a resumed deferred Airflow task calls once its job ended (the
    coordinator on the fleet holds no cloud credentials): every instance and rule of the job goes."""
    job_id = uuid.uuid4().hex
    prov = get_provisioner("gcp", **settings(gcp_standin, sshd_servers, ssh_known_hosts))
    launch_cloud_job(prov, job_id, specs_for(job_id))
    assert not nothing_left(gcp_standin, job_id)
    prov.reap_job(job_id, list(REGIONS))
    assert nothing_left(gcp_standin, job_id)
