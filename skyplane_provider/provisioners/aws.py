"""The ``aws`` provisioner: gateways on fresh EC2 instances, bootstrapped over SSH like ``ssh`` hosts.

Per region of the plan: an ephemeral key pair (our own ed25519 key, imported), a security group that
admits SSH only from the orchestrator's address and the data port only from the fleet's own
addresses, and ``run_instances`` (one instance per gateway; spot optional). Everything is tagged
``skyplane:job-id`` / ``skyplane:created-at`` so ``deprovision`` finds leftovers. Once the instances
run, the shared SSH bootstrap installs this exact package and starts the gateways. Teardown (also on
any provisioning failure) stops the gateways, terminates the instances, waits, and deletes the group,
the key pair and the local private key. The flow, the common settings and ``address_map`` (moto's
instance addresses are fake: tests map instances onto local sshd servers) are in ``cloud_fleet.py``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from planner.errors import CredentialsError, ProvisionError

from .base import GatewaySpec
from .cloud_fleet import CloudJob, CloudProvisioner, FleetPorts, Instance, per_region

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


class AWSJob(CloudJob):
    """Every AWS resource of one job: per region a key pair, a security group and the instances."""

    cloud = "AWS"

    def __init__(self, job_id: str, session, *, endpoint_url: str | None, poll_seconds: float,
                 settings: "AWSProvisioner | None" = None) -> None:
        super().__init__(job_id, poll_seconds=poll_seconds)
        self.tags = [{"Key": TAG_JOB, "Value": job_id}, {"Key": TAG_CREATED, "Value": self.created_at}]
        self._session = session
        self._endpoint_url = endpoint_url
        self._settings = settings  # None when only tearing down (deprovision)
        self.regions: dict[str, RegionResources] = {}

    def _tag_spec(self, resource: str, extra: list[dict] | None = None) -> list[dict]:
        return [{"ResourceType": resource, "Tags": self.tags + (extra or [])}]

    def launch(self, region: str, specs: list[GatewaySpec]) -> None:
        """Key pair, security group (no rules yet) and one instance per gateway in ``region``."""
        s = self._settings
        ami, subnet_id = per_region(s.ami, region), per_region(s.subnet_id, region)
        res = RegionResources(region, self._session.client("ec2", region_name=region,
                                                           endpoint_url=self._endpoint_url))
        self.regions[region] = res
        ec2 = res.client
        name = f"skyplane-{self.job_id}"
        step = "import_key_pair"
        try:
            ec2.import_key_pair(KeyName=name, PublicKeyMaterial=self.key.public_openssh.encode(),
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
            step = f"run_instances ({len(specs)} x {s.instance_type})"
            # An instance shut down from inside (a user's poweroff, a watchdog in user_data) is terminated,
            # not stopped: a stopped instance still bills its volume, and nothing of the job restarts it.
            kwargs: dict[str, Any] = dict(
                ImageId=image, InstanceType=s.instance_type, MinCount=len(specs), MaxCount=len(specs),
                KeyName=name, TagSpecifications=self._tag_spec("instance", [{"Key": "Name", "Value": name}]),
                InstanceInitiatedShutdownBehavior="terminate")
            if subnet_id:
                kwargs["NetworkInterfaces"] = [{"DeviceIndex": 0, "SubnetId": subnet_id, "Groups": [res.group_id],
                                                "AssociatePublicIpAddress": True}]
            else:
                kwargs["SecurityGroupIds"] = [res.group_id]
            if s.spot:
                kwargs["InstanceMarketOptions"] = {"MarketType": "spot", "SpotOptions": {
                    "SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"}}
            if s.user_data:
                kwargs["UserData"] = s.user_data
            reply = ec2.run_instances(**kwargs)
            res.instances = reply["Instances"]
            self.launched([i["InstanceId"] for i in res.instances])
            step = "tagging instances"
            for spec, inst in zip(specs, res.instances):
                inst["GatewayId"] = spec.gateway_id
                ec2.create_tags(Resources=[inst["InstanceId"]], Tags=[{"Key": TAG_GATEWAY, "Value": spec.gateway_id}])
        except ProvisionError:
            raise
        except Exception as exc:
            raise api_error(region, step, exc) from exc

    def wait_running(self, timeout: float) -> dict[str, Instance]:
        """Wait until every instance runs; refresh their addresses."""
        out = {}
        for res in self.regions.values():
            ids = [i["InstanceId"] for i in res.instances]
            try:
                res.client.get_waiter("instance_running").wait(InstanceIds=ids, WaiterConfig={
                    "Delay": self.poll_seconds, "MaxAttempts": max(1, int(timeout / self.poll_seconds))})
                reply = res.client.describe_instances(InstanceIds=ids)
            except Exception as exc:
                raise api_error(res.region, "waiting for instances to run", exc) from exc
            by_id = {i["InstanceId"]: i for r in reply["Reservations"] for i in r["Instances"]}
            for inst in res.instances:
                now = by_id[inst["InstanceId"]]
                out[inst["GatewayId"]] = Instance(inst["InstanceId"], now.get("PublicIpAddress"),
                                                  now.get("PrivateIpAddress"))
        return out

    def authorize(self, orchestrator_cidr: str, ports: FleetPorts, fleet_addresses: list[str]) -> None:
        """SSH and the coordinator's API from the orchestrator only; the gateways' data and control
        ports from the fleet's own addresses only."""
        orchestrator = [{"CidrIp": orchestrator_cidr, "Description": "skyplane orchestrator"}]
        for res in self.regions.values():
            perms = [{"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": orchestrator},
                     {"IpProtocol": "tcp", "FromPort": ports.coordinator, "ToPort": ports.coordinator,
                      "IpRanges": orchestrator},
                     {"IpProtocol": "tcp", "FromPort": ports.data, "ToPort": ports.control,
                      "IpRanges": [{"CidrIp": f"{ip}/32", "Description": "skyplane gateway"}
                                   for ip in fleet_addresses]}]
            try:
                res.client.authorize_security_group_ingress(GroupId=res.group_id, IpPermissions=perms)
            except Exception as exc:
                raise api_error(res.region, "authorize_security_group_ingress", exc) from exc

    def deprovision_command(self, region: str) -> str:
        return f"skyplane-provider deprovision --provisioner aws --aws-region {region} --job {self.job_id}"

    def _teardown(self) -> None:
        """Terminate, wait, delete groups and key pairs."""
        for res in self.regions.values():
            ids = [i["InstanceId"] for i in res.instances]
            try:
                if ids:
                    res.client.terminate_instances(InstanceIds=ids)
                    res.client.get_waiter("instance_terminated").wait(InstanceIds=ids, WaiterConfig={
                        "Delay": self.poll_seconds, "MaxAttempts": max(1, int(600 / self.poll_seconds))})
                    self.ended(ids)
                if res.group_id:
                    delete_group(res.client, res.group_id, self.poll_seconds)
                if res.key_name:
                    res.client.delete_key_pair(KeyName=res.key_name)
            except Exception as exc:
                self.incomplete(res.region, exc)


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


class AWSProvisioner(CloudProvisioner):
    """Gateways on EC2 instances started for the job (see the module docstring)."""

    name = "aws"
    cloud = "AWS"
    hourly_prices = HOURLY_PRICE
    credential_settings = frozenset({"profile", "aws_access_key_id", "aws_secret_access_key", "aws_session_token"})

    def __init__(self, *, instance_type: str = "m5.8xlarge", ami: str | dict | None = None,
                 subnet_id: str | dict | None = None, spot: bool = False, user_data: str | None = None,
                 ssh_user: str = "ec2-user", endpoint_url: str | None = None, profile: str | None = None,
                 aws_access_key_id: str | None = None, aws_secret_access_key: str | None = None,
                 aws_session_token: str | None = None, **common: Any) -> None:
        super().__init__(instance_type=instance_type, ssh_user=ssh_user, **common)
        self.ami, self.subnet_id, self.spot, self.user_data = ami, subnet_id, spot, user_data
        self.endpoint_url = endpoint_url
        self._credentials = dict(profile=profile, aws_access_key_id=aws_access_key_id,
                                 aws_secret_access_key=aws_secret_access_key, aws_session_token=aws_session_token)

    def _deprovision(self, job_id: str, regions: list[str]) -> list:
        from skyplane_provider.deprovision import Selection, deprovision_aws

        return deprovision_aws(regions, Selection(job_id=job_id), endpoint_url=self.endpoint_url,
                               poll_seconds=self.poll_seconds, session=aws_session(**self._credentials))

    def new_job(self, job_id: str) -> AWSJob:
        return AWSJob(job_id, aws_session(**self._credentials), endpoint_url=self.endpoint_url,
                      poll_seconds=self.poll_seconds, settings=self)
