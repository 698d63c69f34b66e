"""The azure provisioner against a local STAND-IN of Azure Resource Manager, VMs mapped onto local sshd.

No emulator of Azure Resource Manager exists: ``skyplane_provider/testing/azure_arm.py`` serves the
calls the provisioner makes, written from the public REST reference, over https; the real
azure-mgmt-compute and azure-mgmt-network clients reach it through their own ``base_url`` override,
with DefaultAzureCredential taking tokens from the stand-in's managed-identity endpoint. The
stand-in's VM addresses are never contacted.
"""

from __future__ import annotations

import uuid

import pytest

from planner.errors import BadOptionError, CredentialsError, ProvisionError
from skyplane_provider.provisioners import get_provisioner
from skyplane_provider.provisioners.azure import TAG_CREATED, TAG_GATEWAY, TAG_JOB, AzureProvisioner
from tests.fixtures.cloud_standins import AZURE_RESOURCE_GROUP
from tests.helpers import direct_specs, gateway_pids, launch_cloud_job, mapped_to
from tests.reliability_report import record

REGIONS = ("azure:eastus", "azure:westeurope")
KINDS = ("virtualMachines", "networkInterfaces", "publicIPAddresses", "virtualNetworks", "networkSecurityGroups",
         "sshPublicKeys")


pytestmark = pytest.mark.usefixtures("home")  # a private SKYPLANE_HOME (keys, wheel cache)


def specs_for(job_id: str):
    return direct_specs(job_id, *REGIONS)


def settings(standin, servers, known_hosts, **extra) -> dict:
    """VMs map to the sshd servers (as root there); no key_file: the job's own key, installed by the
    stand-in's provisioning agent, must be what logs in."""
    mapped = mapped_to(servers, "key_file")
    return {"base_url": standin.url, "resource_group": AZURE_RESOURCE_GROUP, "orchestrator_cidr": "127.0.0.1/32",
            "poll_seconds": 0.05, "instance_type": "Standard_D2s_v5", "known_hosts": str(known_hosts),
            "accept_unknown_host_keys": False, "address_map": mapped, **extra}


def left(standin, job_id: str) -> dict[str, int]:
    return {kind: n for kind in KINDS if (n := len(standin.of_kind(kind, TAG_JOB, job_id)))}


def test_azure_fleet_on_standin_boots_with_its_own_key_and_tears_down(
        azure_standin, sshd_servers, ssh_known_hosts, connections, tmp_path):
    job_id = uuid.uuid4().hex
    prov = get_provisioner("azure", spot=True, **settings(azure_standin, sshd_servers, ssh_known_hosts))
    assert isinstance(prov, AzureProvisioner)
    fleet = prov.provision(job_id, specs_for(job_id))
    key_file = tmp_path / "home" / "keys" / f"{job_id}.key"
    try:
        assert left(azure_standin, job_id) == {"virtualMachines": 2, "networkInterfaces": 2, "publicIPAddresses": 2,
                                               "virtualNetworks": 2, "networkSecurityGroups": 2, "sshPublicKeys": 2}
        public_key = fleet.job.key.public_openssh
        vms = azure_standin.of_kind("virtualMachines", TAG_JOB, job_id)
        assert sorted(vm["location"] for vm in vms) == ["eastus", "westeurope"]
        for vm in vms:
            p = vm["properties"]
            assert vm["tags"][TAG_CREATED] and vm["tags"][TAG_GATEWAY] in {g.gateway_id for g in fleet.gateways}
            assert p["provisioningState"] == "Succeeded" and p["hardwareProfile"]["vmSize"] == "Standard_D2s_v5"
            assert p["priority"] == "Spot" and p["storageProfile"]["osDisk"]["deleteOption"] == "Delete"
            assert p["osProfile"]["linuxConfiguration"]["ssh"]["publicKeys"][0]["keyData"] == public_key
            assert p["osProfile"]["adminUsername"] == "skyplane"
        keys = azure_standin.of_kind("sshPublicKeys", TAG_JOB, job_id)
        assert {k["properties"]["publicKey"] for k in keys} == {public_key}
        addresses = {ip["properties"]["ipAddress"] for ip in azure_standin.of_kind("publicIPAddresses", TAG_JOB, job_id)}
        addresses |= {c["properties"]["privateIPAddress"] for nic in azure_standin.of_kind("networkInterfaces")
                      for c in nic["properties"]["ipConfigurations"]}
        for nsg in azure_standin.of_kind("networkSecurityGroups", TAG_JOB, job_id):
            rules = {r["name"]: r["properties"] for r in nsg["properties"]["securityRules"]}
            assert rules["skyplane-ssh"]["sourceAddressPrefixes"] == ["127.0.0.1/32"]
            assert rules["skyplane-ssh"]["destinationPortRange"] == "22"
            assert set(rules["skyplane-data"]["sourceAddressPrefixes"]) == {f"{a}/32" for a in addresses}
            assert rules["skyplane-data"]["destinationPortRange"] == "47800-47801"  # data, control
            assert rules["skyplane-api"]["sourceAddressPrefixes"] == ["127.0.0.1/32"]  # the coordinator's
            assert rules["skyplane-api"]["destinationPortRange"] == "47802"
            assert rules["deny-all-inbound"]["access"] == "Deny" and rules["deny-all-inbound"]["priority"] == 4096
        assert all(public_key in (s.directory / "authorized_keys").read_text() for s in sshd_servers)
        for g in fleet.gateways:
            assert g.client().health()["ok"]
        assert len(gateway_pids(job_id, workers=False)) == 2
        assert key_file.stat().st_mode & 0o777 == 0o600
        assert fleet.vm_seconds() > 0 and fleet.vm_usd() > 0
    finally:
        fleet.teardown()
    assert {h for h, _ in connections} == {"127.0.0.1"}
    assert left(azure_standin, job_id) == {}
    assert gateway_pids(job_id) == []
    assert not key_file.exists()
    assert not any(public_key in (s.directory / "authorized_keys").read_text() for s in sshd_servers)


def test_azure_quota_error_names_the_region_and_everything_started_is_removed(
        azure_standin, sshd_servers, ssh_known_hosts, connections):
    azure_standin.quota_vms = 1
    job_id = uuid.uuid4().hex
    with pytest.raises(ProvisionError, match=r"Azure westeurope: creating VM .* failed: .*quota") as err:
        get_provisioner("azure", **settings(azure_standin, sshd_servers, ssh_known_hosts)).provision(
            job_id, specs_for(job_id))
    assert "quota increase" in str(err.value)
    assert left(azure_standin, job_id) == {}
    assert connections == []


def test_azure_missing_resource_group_is_named_and_nothing_is_left(azure_standin, sshd_servers, ssh_known_hosts):
    job_id = uuid.uuid4().hex
    with pytest.raises(ProvisionError, match="Resource group 'nope' could not be found"):
        get_provisioner("azure", **settings(azure_standin, sshd_servers, ssh_known_hosts, resource_group="nope")
                        ).provision(job_id, specs_for(job_id))
    assert left(azure_standin, job_id) == {}


def test_azure_refused_credentials_name_what_to_set(azure_standin, monkeypatch):
    monkeypatch.setenv("IDENTITY_HEADER", "not-the-right-secret")
    job_id = uuid.uuid4().hex
    prov = get_provisioner("azure", base_url=azure_standin.url, resource_group=AZURE_RESOURCE_GROUP,
                           orchestrator_cidr="127.0.0.1/32")
    with pytest.raises(CredentialsError, match="AZURE_CLIENT_ID"):
        prov.provision(job_id, specs_for(job_id))
    assert [p for _, p in azure_standin.server.log if p.startswith("/subscriptions")] == []


@pytest.mark.parametrize("case, extra, job_id, message", [
    ("unknown setting", {"vm_size": "Standard_D2s_v5"}, None, "unknown azure provisioner settings"),
    ("no resource group", {"resource_group": None}, None, "needs resource_group"),
    ("no orchestrator", {"orchestrator_cidr": None}, None, "needs orchestrator_cidr"),
    ("bad address space", {"address_space": "10.0.0.0/33"}, None, "bad address_space"),
    ("reserved admin name", {"ssh_user": "root"}, None, "does not allow the admin user name"),
    ("job id not a name", {}, "nightly run/1", "cannot name resources after job id"),
])
def test_bad_input_azure_settings_are_refused_before_any_call(azure_standin, sshd_servers, ssh_known_hosts,
                                                             case, extra, job_id, message):
    with pytest.raises(BadOptionError, match=message) as info:
        job = job_id or uuid.uuid4().hex
        get_provisioner("azure", **{**settings(azure_standin, sshd_servers, ssh_known_hosts), **extra}).provision(
            job, specs_for(job))
    assert azure_standin.server.log == []
    record("bad_input", f"azure provisioner: {case}",
           f"{type(info.value).__name__}: {info.value}; no call reached the (stand-in) cloud API")


def test_bad_input_azure_needs_a_subscription(monkeypatch):
    monkeypatch.delenv("AZURE_SUBSCRIPTION_ID", raising=False)
    with pytest.raises(BadOptionError, match="AZURE_SUBSCRIPTION_ID"):
        get_provisioner("azure", resource_group="rg", orchestrator_cidr="127.0.0.1/32")


def test_azure_reap_job_deletes_everything_the_job_left(azure_standin, sshd_servers, ssh_known_hosts):
    """``Provisioner.reap_job``, what a resumed deferred Airflow task calls once its job ended (the
    coordinator on the fleet holds no cloud credentials): every resource of the job goes."""
    job_id = uuid.uuid4().hex
    prov = get_provisioner("azure", **settings(azure_standin, sshd_servers, ssh_known_hosts))
    launch_cloud_job(prov, job_id, specs_for(job_id))
    assert left(azure_standin, job_id)["virtualMachines"] == 2
    prov.reap_job(job_id, list(REGIONS))
    assert left(azure_standin, job_id) == {}
