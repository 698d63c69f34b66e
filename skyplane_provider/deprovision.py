"""Find and remove what a job left behind when its orchestrator died before teardown.

Every provisioner tags what it starts with the job id and creation time: local gateway processes
(job records under ``$SKYPLANE_HOME/jobs``), SSH hosts (``<remote_dir>/jobs/<job_id>/job.json`` and
pid files), AWS (``skyplane:job-id`` / ``skyplane:created-at`` tags on instances, security groups and
key pairs), GCP (``skyplane-job-id`` / ``skyplane-created-at`` labels on instances; firewall rules,
which have no labels, by their description) and Azure (``skyplane-job-id`` / ``skyplane-created-at``
tags on every resource). ``deprovision_*`` select jobs by id (or all) and age, and remove them; a process is only
signalled after its command line was checked to still belong to the job.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import shutil
import signal
import stat
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from itertools import zip_longest
from pathlib import Path

from planner.errors import BadOptionError, SkyplaneError

from .paths import DEFAULT_REMOTE_DIR
from .provisioners.ssh_bootstrap import REAP_SH, resolve_remote_dir
from .provisioners.ssh_connection import ConnectPolicy, SSHHost, SSHSession

log = logging.getLogger(__name__)

_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """``"90s"``, ``"30m"``, ``"2h"``, ``"1d"``, ``"1h30m"`` -> seconds."""
    compact = text.strip().lower().replace(" ", "")
    parts = _DURATION_RE.findall(compact)
    if not parts or "".join(n + u for n, u in parts) != compact:
        raise BadOptionError(f"cannot read duration {text!r}", hint="write e.g. 90s, 30m, 2h, 1d or 1h30m")
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)


@dataclass(frozen=True)
class Reaped:
    """One job's leftovers removed (or, in a dry run, found) somewhere."""

    provisioner: str
    where: str
    job_id: str
    detail: str

    def __str__(self) -> str:
        return f"{self.provisioner} {self.where}: job {self.job_id}: {self.detail}"


@dataclass(frozen=True)
class Selection:
    """Which jobs to reap: one id or all, optionally only those older than ``older_than`` seconds."""

    job_id: str | None = None
    older_than: float | None = None

    def matches(self, job_id: str, created_at: datetime | str | None) -> bool:
        if self.job_id is not None and job_id != self.job_id:
            return False
        if self.older_than is None:
            return True
        if isinstance(created_at, str):
            try:
                created_at = datetime.fromisoformat(created_at)
            except ValueError:
                created_at = None
        if created_at is None:
            return False  # unknown age: never assume a job is old
        if created_at.tzinfo is None:
            created_at = created_at.replace(tzinfo=timezone.utc)
        return (datetime.now(timezone.utc) - created_at).total_seconds() >= self.older_than


# -- local processes -------------------------------------------------------------------------------
def _gateway_dir(job_dir: Path, entry: dict) -> Path:
    """A local gateway's directory: the one its config (``cmdline_marker``) is in, when that is one of
    the job's (a gateway started before its job was planned has ``gw-ahead-K``), else its id's."""
    from .provisioners.local import gateway_dir_name

    marker = Path(str(entry.get("cmdline_marker") or ""))
    return marker.parent if marker.parent.parent == job_dir else job_dir / gateway_dir_name(entry["gateway_id"])


def deprovision_local(selection: Selection, *, dry_run: bool = False, grace: float = 5.0) -> list[Reaped]:
    """Stop leftover job coordinators (``$SKYPLANE_HOME/jobs/*/coordinator.json``) and local gateway
    processes recorded in ``$SKYPLANE_HOME/jobs/*/pids.json`` (the local provisioner's records), and
    remove the gateways' files."""
    from .paths import skyplane_home
    from .provisioners.local import PIDS_FILE

    jobs = skyplane_home() / "jobs"
    reaped = _stop_coordinators(jobs, selection, dry_run=dry_run, grace=grace)
    for job_dir in sorted(jobs.iterdir()) if jobs.is_dir() else []:
        try:
            record = json.loads((job_dir / PIDS_FILE).read_text())
        except (OSError, ValueError):
            continue
        job_id = record.get("job_id", job_dir.name)
        if record.get("provisioner") != "local" or not selection.matches(job_id, record.get("created_at")):
            continue
        gateways = record.get("gateways", [])
        pids = [int(g["pid"]) for g in gateways if _is_gateway_of(int(g.get("pid", 0)), g.get("cmdline_marker"), job_id)]
        if not dry_run:
            _stop_groups(pids, grace)
            for g in gateways:
                shutil.rmtree(_gateway_dir(job_dir, g), ignore_errors=True)
            (job_dir / PIDS_FILE).unlink(missing_ok=True)
            try:
                job_dir.rmdir()  # only when empty: a detached transfer may share the directory
            except OSError:
                pass
        reaped.append(Reaped("local", "this host", job_id,
                             f"{len(pids)} gateway process(es) {'found' if dry_run else 'stopped, files removed'}"))
    return reaped


def _stop_coordinators(jobs: Path, selection: Selection, *, dry_run: bool, grace: float) -> list[Reaped]:
    """SIGTERM the running coordinators of the selected jobs (each cancels its job and tears its fleet
    down), SIGKILL what is left after ``grace`` seconds; before the gateways are reaped."""
    from .coordinator.jobdir import ADDRESS

    reaped, pids = [], []
    for address in sorted(jobs.glob(f"*/{ADDRESS}")):
        try:
            record = json.loads(address.read_text())
        except (OSError, ValueError):
            continue
        job_id, pid = record.get("job_id", address.parent.name), int(record.get("pid", 0))
        if not selection.matches(job_id, record.get("created_at")) \
                or not _is_gateway_of(pid, str(address.parent), job_id):
            continue
        pids.append(pid)
        reaped.append(Reaped("local", "this host", job_id,
                             f"coordinator process {pid} {'found' if dry_run else 'stopped'}"))
    if not dry_run:
        _stop_groups(pids, grace * 2)  # the coordinator's own teardown comes first
    return reaped


def _is_gateway_of(pid: int, marker: str | None, job_id: str) -> bool:
    """Whether ``pid`` still runs and its command line holds ``marker``, which names the job (so a
    recycled pid is left alone); for gateways and coordinators alike."""
    if pid <= 0 or not marker or job_id not in marker or not _running(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    return marker in cmdline


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _stop_groups(pids: list[int], grace: float) -> None:
    """SIGTERM each gateway's process group, SIGKILL what is left after ``grace`` seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.killpg(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + grace
        while any(_running(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        pids = [p for p in pids if _running(p)]
        if not pids:
            return


# -- SSH hosts -------------------------------------------------------------------------------------
def deprovision_ssh(hosts: list[SSHHost], selection: Selection, *, policy: ConnectPolicy,
                    remote_dir: str = DEFAULT_REMOTE_DIR, dry_run: bool = False) -> list[Reaped]:
    """Stop leftover gateways and remove job files on each host (job records of ssh and cloud jobs)."""
    reaped = []
    for host in hosts:
        try:
            session = SSHSession(host, policy)
        except SkyplaneError as exc:
            log.warning("deprovision: skipping %s: %s", host.label, exc)
            continue
        try:
            base = resolve_remote_dir(session, host.remote_dir or remote_dir)
            jobs_dir = f"{base}/jobs"
            try:
                entries = session.sftp.listdir_attr(jobs_dir)
            except OSError:
                entries = []
            for entry in entries:
                if not stat.S_ISDIR(entry.st_mode or 0):
                    continue
                job_dir = f"{jobs_dir}/{entry.filename}"
                try:
                    with session.sftp.open(f"{job_dir}/job.json") as f:
                        record = json.loads(f.read())
                except (OSError, ValueError):
                    continue  # not a gateway job directory (or not ours)
                if record.get("provisioner") not in ("ssh", "aws", "gcp", "azure"):
                    continue
                if not selection.matches(record.get("job_id", entry.filename), record.get("created_at")):
                    continue
                gateways = len(record.get("pids", {}))
                if not dry_run:
                    session.run(f"{REAP_SH}\nreap_job {shlex.quote(job_dir)}", timeout=60)
                reaped.append(Reaped("ssh", host.label, entry.filename,
                                     f"{gateways} gateway(s) {'found' if dry_run else 'stopped, files removed'}"))
        finally:
            session.close()
    return reaped


# -- AWS -------------------------------------------------------------------------------------------
def deprovision_aws(regions: list[str], selection: Selection, *, endpoint_url: str | None = None,
                    profile: str | None = None, poll_seconds: float = 5.0, dry_run: bool = False,
                    session=None) -> list[Reaped]:
    """Terminate tagged instances, then delete tagged security groups and key pairs, per region.
    ``session``: a boto3 session to use instead of ``profile``'s (an aws provisioner's own credentials)."""
    from .provisioners.aws import TAG_CREATED, TAG_JOB, AWSJob, RegionResources, api_error, aws_session

    session = session or aws_session(profile=profile)
    reaped = []
    for region in regions:
        ec2 = session.client("ec2", region_name=region, endpoint_url=endpoint_url)
        try:
            found = _tagged_resources(ec2, TAG_JOB, TAG_CREATED)
        except SkyplaneError:
            raise
        except Exception as exc:
            raise api_error(region, "listing tagged resources", exc) from exc
        for job_id, (created_at, instances, groups, keys) in sorted(found.items()):
            if not selection.matches(job_id, created_at):
                continue
            detail = f"{len(instances)} instance(s), {len(groups)} security group(s), {len(keys)} key pair(s)"
            if not dry_run:
                # Reuse the provisioner's own teardown (terminate, wait, delete groups and key pairs).
                job = AWSJob(job_id, session, endpoint_url=endpoint_url, poll_seconds=poll_seconds)
                for n, (group, key) in enumerate(list(zip_longest(groups, keys)) or [(None, None)]):
                    job.regions[f"{region}/{n}"] = RegionResources(
                        region, ec2, group_id=group, key_name=key,
                        instances=[{"InstanceId": i} for i in instances] if n == 0 else [])
                job.teardown()
            reaped.append(Reaped("aws", region, job_id, detail + (" found" if dry_run else " removed")))
    return reaped


def _tagged_resources(ec2, tag_job: str, tag_created: str) -> dict[str, tuple[str | None, list, list, list]]:
    """job id -> (created-at, live instance ids, security group ids, key pair names) in one region."""
    out: dict[str, tuple[str | None, list, list, list]] = {}

    def entry(tags: list[dict]) -> tuple | None:
        t = {x["Key"]: x["Value"] for x in tags or []}
        if tag_job not in t:
            return None
        created, inst, groups, keys = out.get(t[tag_job], (None, [], [], []))
        out[t[tag_job]] = (created or t.get(tag_created), inst, groups, keys)
        return out[t[tag_job]]

    live = ["pending", "running", "stopping", "stopped", "shutting-down"]
    for page in ec2.get_paginator("describe_instances").paginate(Filters=[
            {"Name": "tag-key", "Values": [tag_job]}, {"Name": "instance-state-name", "Values": live}]):
        for r in page["Reservations"]:
            for i in r["Instances"]:
                e = entry(i.get("Tags"))
                if e:
                    e[1].append(i["InstanceId"])
    for page in ec2.get_paginator("describe_security_groups").paginate(
            Filters=[{"Name": "tag-key", "Values": [tag_job]}]):
        for g in page["SecurityGroups"]:
            e = entry(g.get("Tags"))
            if e:
                e[2].append(g["GroupId"])
    for k in ec2.describe_key_pairs(Filters=[{"Name": "tag-key", "Values": [tag_job]}])["KeyPairs"]:
        e = entry(k.get("Tags"))
        if e:
            e[3].append(k["KeyName"])
    return out


# -- GCP -------------------------------------------------------------------------------------------
def deprovision_gcp(selection: Selection, *, project: str | None = None, endpoint: str | None = None,
                    poll_seconds: float = 5.0, dry_run: bool = False) -> list[Reaped]:
    """Delete labelled instances (and wait), then the jobs' firewall rules, in one project."""
    from .provisioners.gcp import (FIREWALL_DESCRIPTION_RE, LABEL_CREATED, LABEL_JOB, GCPClients, GCPJob, api_error,
                                   gcp_credentials, parse_label_time)

    credentials, project = gcp_credentials(project)
    clients = GCPClients(credentials, project, endpoint)
    found: dict[str, tuple[datetime | None, list[dict], list[str]]] = {}

    def entry(job_id: str, created: str | None):
        old = found.get(job_id, (None, [], []))
        found[job_id] = (old[0] or parse_label_time(created), old[1], old[2])
        return found[job_id]

    try:
        for scope, listed in clients.instances.aggregated_list(
                request={"project": project, "filter": f"labels.{LABEL_JOB}:*"}):
            for inst in listed.instances:
                entry(inst.labels[LABEL_JOB], inst.labels.get(LABEL_CREATED))[1].append(
                    {"zone": scope.rsplit("/", 1)[-1], "name": inst.name, "gateway_id": ""})
        for rule in clients.firewalls.list(project=project):
            match = FIREWALL_DESCRIPTION_RE.search(rule.description or "")
            if match and rule.name.startswith("skyplane-"):
                entry(match["job_id"], match["created_at"])[2].append(rule.name)
    except Exception as exc:
        raise api_error(project, "listing labelled instances and firewall rules", exc) from exc
    reaped = []
    for job_id, (created, instances, firewalls) in sorted(found.items()):
        if not selection.matches(job_id, created):
            continue
        if not dry_run:
            job = GCPJob(job_id, clients, project, poll_seconds=poll_seconds)
            job.instances, job.firewalls = instances, firewalls
            job.teardown()
        reaped.append(Reaped("gcp", project, job_id, f"{len(instances)} instance(s), {len(firewalls)} firewall "
                                                     f"rule(s) {'found' if dry_run else 'removed'}"))
    return reaped


# -- Azure -----------------------------------------------------------------------------------------
def deprovision_azure(selection: Selection, *, subscription_id: str | None = None, base_url: str | None = None,
                      poll_seconds: float = 5.0, dry_run: bool = False) -> list[Reaped]:
    """Delete tagged VMs (and wait), then the jobs' NICs, public IPs, networks, security groups and keys."""
    from .provisioners.azure import (KINDS, TAG_CREATED, TAG_JOB, AzureClients, AzureJob, api_error, azure_credential,
                                     parse_resource_id)

    subscription_id = subscription_id or os.environ.get("AZURE_SUBSCRIPTION_ID")
    if not subscription_id:
        raise BadOptionError("deprovision --provisioner azure needs a subscription",
                             hint="pass --azure-subscription or set AZURE_SUBSCRIPTION_ID")
    clients = AzureClients(azure_credential(), subscription_id, base_url, poll_seconds)
    found: dict[str, tuple[str | None, dict[str, list]]] = {}
    for kind, _, _ in KINDS:
        ops = clients.operations(kind)
        try:
            listed = list(ops.list_by_subscription() if kind == "sshPublicKeys" else ops.list_all())
        except Exception as exc:
            raise api_error(subscription_id, f"listing {kind}", exc) from exc
        for res in listed:
            tags = res.tags or {}
            if TAG_JOB not in tags:
                continue
            created, by_kind = found.setdefault(tags[TAG_JOB], (tags.get(TAG_CREATED), {k: [] for k, _, _ in KINDS}))
            by_kind[kind].append((*parse_resource_id(res.id), res.location))
    reaped = []
    for job_id, (created, by_kind) in sorted(found.items()):
        if not selection.matches(job_id, created):
            continue
        if not dry_run:
            job = AzureJob(job_id, clients, subscription_id=subscription_id, poll_seconds=poll_seconds)
            job.created = by_kind
            job.teardown()
        counts = ", ".join(f"{len(v)} {k}" for k, v in by_kind.items() if v)
        reaped.append(Reaped("azure", subscription_id, job_id, f"{counts} {'found' if dry_run else 'removed'}"))
    return reaped
