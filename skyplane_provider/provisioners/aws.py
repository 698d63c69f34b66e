"""The ``aws`` provisioner: gateways on fresh EC2 instances, bootstrapped over SSH like ``ssh`` hosts.

Per region of the plan: an ephemeral key pair (our own ed25519 key, imported), a security group that
admits SSH only from the orchestrator's address and the data port only from the fleet's own
addresses, and ``run_instances`` (one instance per gateway; spot optional). Everything is tagged
``skyplane:job-id`` / ``skyplane:created-at`` so ``deprovision`` finds leftovers. Once the instances
run, the shared SSH bootstrap installs this exact package and starts the gateways. Teardown (also on
any provisioning failure) stops the gateways, terminates the instances, waits, and deletes the group,
the key pair and the local private key.

``address_map`` (tests, or hosts behind a bastion/NAT): instance id or gateway index -> an SSH host to
use instead of the instance's address. When it is given, the provisioners refuse to open a
connection to any address that is not in the map, so the instance addresses themselves (fake ones,
under moto) are never contacted.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from planner.errors import BadOptionError, CredentialsError, ProvisionError

from . import teardown_hooks
from .base import Fleet, GatewaySpec, Provisioner
from skyplane_provider.paths import skyplane_home
from .ssh import SSHFleet, bootstrap_fleet, utc_now
from .ssh_bootstrap import DEFAULT_REMOTE_DIR
from .ssh_connection import ConnectPolicy, SSHHost

log = logging.getLogger(__name__)

TAG_JOB = "skyplane:job-id"
TAG_CREATED = "skyplane:created-at"
TAG_GATEWAY = "skyplane:gateway-id"

#: USD per instance-hour, on-demand Linux in us-east-1 (aws.amazon.com/ec2/pricing/on-demand, 2024),
#: for instance types other than the planner's gateway VM; other regions cost up to ~30% more.
HOURLY_PRICE = {
    "m5.large": 0.096, "m5.xlarge": 0.192, "m5.2xlarge": 0.384, "m5.4xlarge": 0.768, "m5.8xlarge": 1.536,
    "c5.large": 0.085, "c5.xlarge": 0.17, "c5.4xlarge": 0.68, "t3.micro": 0.0104, "t3.medium": 0.0416,
}
_QUOTA_CODES = {"InstanceLimitExceeded", "VcpuLimitExceeded", "MaxSpotInstanceCountExceeded",
                "InsufficientInstanceCapacity", "RequestLimitExceeded"}
_AUTH_CODES = {"AuthFailure", "UnauthorizedOperation", "InvalidClientTokenId", "SignatureDoesNotMatch",
               "ExpiredToken", "OptInRequired"}


def aws_region(tag: str) -> str:
    """``aws:us-east-1`` -> ``us-east-1``."""
    cloud, _, name = tag.partition(":")
    if cloud != "aws" or not name:
        raise BadOptionError(f"the aws provisioner cannot run a gateway in {tag}",
                             hint="use aws:<region> regions, or another provisioner for other clouds")
    return name


def api_error(region: str, what: str, exc: Exception) -> Exception:
    """A boto3/botocore failure as our error, naming the region and what to do."""
    from botocore.exceptions import ClientError, NoCredentialsError

    if isinstance(exc, NoCredentialsError):
        return CredentialsError(f"AWS {region}: no credentials for {what}", hint=CREDENTIALS_HINT)
    code = exc.response.get("Error", {}).get("Code", "") if isinstance(exc, ClientError) else type(exc).__name__
    if code in _AUTH_CODES:
        return CredentialsError(f"AWS {region}: {what} was refused ({code}): {exc}", hint=CREDENTIALS_HINT)
    hint = ("request a quota increase for this region or choose another region" if code in _QUOTA_CODES
            else "check the region's settings and your account")
    return ProvisionError(f"AWS {region}: {what} failed ({code}): {exc}", hint=hint)


CREDENTIALS_HINT = ("set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), or pass "
                    "aws_access_key_id/aws_secret_access_key in the provisioner settings")


def aws_session(*, profile: str | None = None, aws_access_key_id: str | None = None,
                aws_secret_access_key: str | None = None, aws_session_token: str | None = None):
    """A boto3 session that is known to have credentials (else ``CredentialsError``)."""
    import boto3
    import botocore.exceptions

    try:
        session = boto3.Session(profile_name=profile, aws_access_key_id=aws_access_key_id,
                                aws_secret_access_key=aws_secret_access_key, aws_session_token=aws_session_token)
    except botocore.exceptions.ProfileNotFound as exc:
        raise CredentialsError(f"AWS profile {profile!r} not found", hint=CREDENTIALS_HINT) from exc
    if session.get_credentials() is None:
        raise CredentialsError("no AWS credentials found for the aws provisioner", hint=CREDENTIALS_HINT)
    return session


@dataclass
class RegionResources:
    """What one job created in one region (ids are filled in as they are created)."""

    region: str
    client: Any
    key_name: str | None = None
    group_id: str | None = None
    instances: list[dict] = field(default_factory=list)


class JobResources:
    """Every AWS resource of one job, created step by step and always removable as a whole."""

    def __init__(self, job_id: str, session, *, endpoint_url: str | None, poll_seconds: float) -> None:
        self.job_id = job_id
        self.created_at = utc_now()
        self.tags = [{"Key": TAG_JOB, "Value": job_id}, {"Key": TAG_CREATED, "Value": self.created_at}]
        self._session = session
        self._endpoint_url = endpoint_url
        self.poll_seconds = poll_seconds
        self.regions: dict[str, RegionResources] = {}
        self.key_file = skyplane_home() / "keys" / f"{job_id}.key"
        self._public_key: bytes | None = None
        self._launched: dict[str, float] = {}  # instance id -> monotonic launch time
        self._ended: dict[str, float] = {}
        self._lock = threading.Lock()
        self._torn_down = False

    def _tag_spec(self, resource: str, extra: list[dict] | None = None) -> list[dict]:
        return [{"ResourceType": resource, "Tags": self.tags + (extra or [])}]

    def _make_key(self) -> bytes:
        """One ed25519 key per job: private half 0600 on this machine, public half imported per region."""
        if self._public_key is None:
            key = ed25519.Ed25519PrivateKey.generate()
            self.key_file.parent.mkdir(parents=True, exist_ok=True)
            pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                    serialization.NoEncryption())
            self.key_file.touch(mode=0o600)
            self.key_file.write_bytes(pem)
            self._public_key = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                             serialization.PublicFormat.OpenSSH)
        return self._public_key

    def launch(self, region: str, specs: list[GatewaySpec], *, instance_type: str, ami: str | None,
               subnet_id: str | None, spot: bool, user_data: str | None) -> RegionResources:
        """Key pair, security group (no rules yet) and one instance per gateway in ``region``."""
        res = RegionResources(region, self._session.client("ec2", region_name=region,
                                                           endpoint_url=self._endpoint_url))
        self.regions[region] = res
        ec2 = res.client
        name = f"skyplane-{self.job_id}"
        step = "import_key_pair"
        try:
            ec2.import_key_pair(KeyName=name, PublicKeyMaterial=self._make_key(),
                                TagSpecifications=self._tag_spec("key-pair"))
            res.key_name = name
            step = "finding the VPC"
            if subnet_id:
                vpc = ec2.describe_subnets(SubnetIds=[subnet_id])["Subnets"][0]["VpcId"]
            else:
                vpcs = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"]
                if not vpcs:
                    raise ProvisionError(f"AWS {region}: no default VPC", hint="pass subnet_id for this region")
                vpc = vpcs[0]["VpcId"]
            step = "create_security_group"
            res.group_id = ec2.create_security_group(
                GroupName=name, Description=f"skyplane gateways of job {self.job_id}", VpcId=vpc,
                TagSpecifications=self._tag_spec("security-group"))["GroupId"]
            step = "finding an AMI"
            image = ami or default_ami(ec2)
            step = f"run_instances ({len(specs)} x {instance_type})"
            kwargs: dict[str, Any] = dict(
                ImageId=image, InstanceType=instance_type, MinCount=len(specs), MaxCount=len(specs),
                KeyName=name, TagSpecifications=self._tag_spec("instance", [{"Key": "Name", "Value": name}]))
            if subnet_id:
                kwargs["NetworkInterfaces"] = [{"DeviceIndex": 0, "SubnetId": subnet_id, "Groups": [res.group_id],
                                                "AssociatePublicIpAddress": True}]
            else:
                kwargs["SecurityGroupIds"] = [res.group_id]
            if spot:
                kwargs["InstanceMarketOptions"] = {"MarketType": "spot", "SpotOptions": {
                    "SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"}}
            if user_data:
                kwargs["UserData"] = user_data
            reply = ec2.run_instances(**kwargs)
            now = time.monotonic()
            res.instances = reply["Instances"]
            with self._lock:
                self._launched.update({i["InstanceId"]: now for i in res.instances})
            step = "tagging instances"
            for spec, inst in zip(specs, res.instances):
                ec2.create_tags(Resources=[inst["InstanceId"]], Tags=[{"Key": TAG_GATEWAY, "Value": spec.gateway_id}])
        except ProvisionError:
            raise
        except Exception as exc:
            raise api_error(region, step, exc) from exc
        return res

    def wait_running(self, timeout: float) -> None:
        """Wait until every instance runs; refresh their addresses."""
        for res in self.regions.values():
            ids = [i["InstanceId"] for i in res.instances]
            try:
                res.client.get_waiter("instance_running").wait(InstanceIds=ids, WaiterConfig={
                    "Delay": self.poll_seconds, "MaxAttempts": max(1, int(timeout / self.poll_seconds))})
                reply = res.client.describe_instances(InstanceIds=ids)
            except Exception as exc:
                raise api_error(res.region, "waiting for instances to run", exc) from exc
            by_id = {i["InstanceId"]: i for r in reply["Reservations"] for i in r["Instances"]}
            res.instances = [by_id[i] for i in ids]

    def authorize(self, orchestrator_cidr: str, data_port: int) -> None:
        """SSH from the orchestrator only; the data port from the fleet's own addresses only."""
        fleet = sorted({i[k] for res in self.regions.values() for i in res.instances
                        for k in ("PublicIpAddress", "PrivateIpAddress") if i.get(k)})
        for res in self.regions.values():
            perms = [{"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
                      "IpRanges": [{"CidrIp": orchestrator_cidr, "Description": "skyplane orchestrator"}]},
                     {"IpProtocol": "tcp", "FromPort": data_port, "ToPort": data_port,
                      "IpRanges": [{"CidrIp": f"{ip}/32", "Description": "skyplane gateway"} for ip in fleet]}]
            try:
                res.client.authorize_security_group_ingress(GroupId=res.group_id, IpPermissions=perms)
            except Exception as exc:
                raise api_error(res.region, "authorize_security_group_ingress", exc) from exc

    def vm_seconds(self) -> float:
        now = time.monotonic()
        with self._lock:
            return sum(self._ended.get(i, now) - t for i, t in self._launched.items())

    def teardown(self) -> None:
        """Terminate, wait, delete groups and key pairs, remove the local key. Never raises."""
        with self._lock:
            if self._torn_down:
                return
            self._torn_down = True
        for res in self.regions.values():
            ids = [i["InstanceId"] for i in res.instances]
            try:
                if ids:
                    res.client.terminate_instances(InstanceIds=ids)
                    res.client.get_waiter("instance_terminated").wait(InstanceIds=ids, WaiterConfig={
                        "Delay": self.poll_seconds, "MaxAttempts": max(1, int(600 / self.poll_seconds))})
                    now = time.monotonic()
                    with self._lock:
                        self._ended.update({i: now for i in ids})
                if res.group_id:
                    delete_group(res.client, res.group_id, self.poll_seconds)
                if res.key_name:
                    res.client.delete_key_pair(KeyName=res.key_name)
            except Exception as exc:
                log.warning("AWS %s: teardown of job %s incomplete (%s); run skyplane-provider deprovision "
                            "--provisioner aws --aws-region %s --job %s", res.region, self.job_id, exc,
                            res.region, self.job_id)
        self.key_file.unlink(missing_ok=True)


def delete_group(ec2, group_id: str, poll_seconds: float, timeout: float = 300) -> None:
    """Delete a security group, waiting while terminated instances still hold it."""
    from botocore.exceptions import ClientError

    deadline = time.monotonic() + timeout
    while True:
        try:
            ec2.delete_security_group(GroupId=group_id)
            return
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code == "InvalidGroup.NotFound":
                return
            if code != "DependencyViolation" or time.monotonic() > deadline:
                raise
            time.sleep(poll_seconds)


def default_ami(ec2) -> str:
    """The newest Amazon Linux 2023 x86_64 image of the region."""
    images = ec2.describe_images(Owners=["amazon"], Filters=[
        {"Name": "name", "Values": ["al2023-ami-2023.*-x86_64"]}, {"Name": "state", "Values": ["available"]}])["Images"]
    if not images:
        raise ProvisionError("no Amazon Linux 2023 image found", hint="pass ami= for this region")
    return max(images, key=lambda i: i.get("CreationDate", ""))["ImageId"]


class AWSFleet(Fleet):
    """SSH-bootstrapped gateways on EC2 instances; teardown also removes the instances."""

    def __init__(self, job_id: str, resources: JobResources, ssh_fleet: SSHFleet, price_per_hour: float) -> None:
        self.job_id = job_id
        self.resources = resources
        self._ssh = ssh_fleet
        self.gateways = ssh_fleet.gateways
        self._price = price_per_hour

    def logs(self, gateway_id: str, tail: int = 200) -> str:
        return self._ssh.logs(gateway_id, tail)

    def alive(self, gateway_id: str) -> bool:
        return self._ssh.alive(gateway_id)

    def teardown(self) -> None:
        try:
            self._ssh.teardown()
        finally:
            self.resources.teardown()
            teardown_hooks.unregister(self)

    def vm_seconds(self) -> float:
        return self.resources.vm_seconds()

    def vm_usd(self) -> float:
        """What the instances cost so far at the on-demand price."""
        return self.vm_seconds() * self._price / 3600.0


def _per_region(value: Any, region: str) -> Any:
    return value.get(region) if isinstance(value, dict) else value


class AWSProvisioner(Provisioner):
    """Gateways on EC2 instances started for the job (see the module docstring)."""

    name = "aws"

    def __init__(self, *, instance_type: str = "m5.8xlarge", ami: str | dict | None = None,
                 subnet_id: str | dict | None = None, spot: bool = False, user_data: str | None = None,
                 ssh_user: str = "ec2-user", python: str = "python3", orchestrator_cidr: str | None = None,
                 data_port: int = 47800, endpoint_url: str | None = None, profile: str | None = None,
                 aws_access_key_id: str | None = None, aws_secret_access_key: str | None = None,
                 aws_session_token: str | None = None, address_map: dict | None = None,
                 known_hosts: str | None = None, accept_unknown_host_keys: bool = True,
                 remote_dir: str = DEFAULT_REMOTE_DIR, wheelhouse: str | None = None,
                 boot_timeout: float = 600.0, health_timeout: float = 60.0, poll_seconds: float = 5.0,
                 **unknown: Any) -> None:
        if unknown:
            raise BadOptionError(f"unknown aws provisioner settings {sorted(unknown)}",
                                 hint="see docs/provisioners.md for the aws settings")
        self.instance_type = instance_type
        self.ami, self.subnet_id, self.spot, self.user_data = ami, subnet_id, spot, user_data
        self.ssh_user, self.python = ssh_user, python
        self.orchestrator_cidr = orchestrator_cidr
        self.data_port = data_port
        self.endpoint_url = endpoint_url
        self._credentials = dict(profile=profile, aws_access_key_id=aws_access_key_id,
                                 aws_secret_access_key=aws_secret_access_key, aws_session_token=aws_session_token)
        self.address_map = {str(k): v for k, v in (address_map or {}).items()}
        self.known_hosts = known_hosts and str(Path(known_hosts).expanduser())
        self.accept_unknown_host_keys = accept_unknown_host_keys
        self.remote_dir, self.wheelhouse = remote_dir, wheelhouse
        self.boot_timeout, self.health_timeout, self.poll_seconds = boot_timeout, health_timeout, poll_seconds

    def hourly_price(self, region: str) -> float:
        """The planner's price when it plans with this instance type, else the table above."""
        from planner.providers import provider_of

        vm = provider_of(region)
        if vm.name == "aws" and vm.vm_type == self.instance_type:
            return vm.usd_per_hour
        return HOURLY_PRICE.get(self.instance_type, 0.0)

    def allowed_addresses(self) -> frozenset[tuple[str, int]] | None:
        """The only (host, port) pairs contacted in address-map mode (``None``: no restriction)."""
        if not self.address_map:
            return None
        return frozenset((h.host, h.port) for h in (self._mapped(v, Path("/")) for v in self.address_map.values()))

    def _mapped(self, entry: Any, key_file: Path) -> SSHHost:
        if isinstance(entry, (list, tuple)):
            entry = {"host": entry[0], "port": entry[1]}
        defaults = {"user": self.ssh_user, "key_file": str(key_file), "python": self.python}
        return SSHHost.from_setting(entry, defaults)

    def _ssh_host(self, index: int, instance: dict, key_file: Path) -> SSHHost:
        if self.address_map:
            entry = self.address_map.get(instance["InstanceId"], self.address_map.get(str(index)))
            if entry is None:
                raise ProvisionError(
                    f"instance {instance['InstanceId']} (gateway #{index}) has no address_map entry; "
                    "refusing to contact its own address while an address map is in use",
                    hint="map every instance id or gateway index")
            return self._mapped(entry, key_file)
        address = instance.get("PublicIpAddress")
        if not address:
            raise ProvisionError(f"instance {instance['InstanceId']} has no public IP address",
                                 hint="use a subnet that assigns public addresses")
        return SSHHost(host=address, port=22, user=self.ssh_user, key_file=str(key_file), python=self.python)

    def provision(self, job_id: str, specs: list[GatewaySpec]) -> Fleet:
        by_region: dict[str, list[GatewaySpec]] = {}
        for spec in specs:
            by_region.setdefault(aws_region(spec.region), []).append(spec)
        if not self.orchestrator_cidr:
            raise BadOptionError("the aws provisioner needs orchestrator_cidr",
                                 hint="pass your public address as orchestrator_cidr='203.0.113.7/32': "
                                      "only it may open SSH to the gateways")
        session = aws_session(**self._credentials)
        resources = JobResources(job_id, session, endpoint_url=self.endpoint_url, poll_seconds=self.poll_seconds)
        try:
            for region, region_specs in by_region.items():
                resources.launch(region, region_specs, instance_type=self.instance_type,
                                 ami=_per_region(self.ami, region), subnet_id=_per_region(self.subnet_id, region),
                                 spot=self.spot, user_data=self.user_data)
            resources.wait_running(self.boot_timeout)
            resources.authorize(self.orchestrator_cidr, self.data_port)
            instance_of = {spec.gateway_id: inst for region, region_specs in by_region.items()
                           for spec, inst in zip(region_specs, resources.regions[region].instances)}
            assignments = [(spec, self._ssh_host(i, instance_of[spec.gateway_id], resources.key_file))
                           for i, spec in enumerate(specs)]
            policy = ConnectPolicy(known_hosts=self.known_hosts, accept_unknown_host_keys=self.accept_unknown_host_keys,
                                   retry_seconds=self.boot_timeout, allowed=self.allowed_addresses())
            ssh_fleet = bootstrap_fleet(
                job_id, assignments, policy=policy, remote_dir=self.remote_dir, wheelhouse=self.wheelhouse,
                health_timeout=self.health_timeout, provisioner=self.name,
                data_port=0 if self.address_map else self.data_port)
        except BaseException:
            resources.teardown()
            raise
        fleet = AWSFleet(job_id, resources, ssh_fleet, self.hourly_price(specs[0].region) if specs else 0.0)
        teardown_hooks.register(fleet)
        return fleet
