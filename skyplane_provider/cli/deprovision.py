"""``skyplane-provider deprovision``: remove gateways and cloud resources that a dead job left behind."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from typing import TYPE_CHECKING

from planner.errors import BadOptionError
from skyplane_provider.paths import DEFAULT_REMOTE_DIR

from .wording import examples, plural

if TYPE_CHECKING:
    from skyplane_provider.provisioners.ssh_connection import ConnectPolicy, SSHHost

PROVISIONERS = ("local", "ssh", "aws", "gcp", "azure")
EXAMPLES = examples(
    "skyplane-provider deprovision --all --dry-run                 # what a killed run left on this host",
    "skyplane-provider deprovision --all --older-than 2h",
    "skyplane-provider deprovision --job 3f2a... --provisioner ssh --ssh-config ssh.json",
    "skyplane-provider deprovision --all --provisioner aws --aws-region us-east-1 --aws-region eu-west-1",
    "skyplane-provider deprovision --all --gcp-project my-project --azure-subscription 0000...",
)


def register(sub: argparse._SubParsersAction) -> None:
    text = "stop and remove gateways, VMs, firewall rules, networks and keys left over by jobs"
    p = sub.add_parser("deprovision", help=text, description=text + ". Everything skyplane-provider starts is "
                       "tagged with its job id and creation time; this finds it again.", epilog=EXAMPLES)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--job", metavar="ID", help="only this job")
    which.add_argument("--all", action="store_true", help="every job found")
    p.add_argument("--older-than", metavar="DURATION",
                   help="only jobs created at least this long ago: 90s, 30m, 2h, 1d, 1h30m (default: any age)")
    p.add_argument("--provisioner", action="append", choices=PROVISIONERS,
                   help="where to look (repeatable); default: local, plus ssh/aws/gcp/azure when hosts, regions, "
                        "a project or a subscription are given")
    p.add_argument("--dry-run", action="store_true", help="list what would be removed, remove nothing")
    p.add_argument("--json", action="store_true", help="print what was removed as JSON")
    ssh = p.add_argument_group("ssh hosts")
    ssh.add_argument("--ssh-host", action="append", default=[], metavar="USER@HOST:PORT", help="a gateway host (repeatable)")
    ssh.add_argument("--ssh-config", type=Path, metavar="FILE",
                     help="JSON settings of the ssh provisioner ({'hosts': ..., 'known_hosts': ...}); its hosts are searched")
    ssh.add_argument("--ssh-key", help="private key for --ssh-host hosts")
    ssh.add_argument("--known-hosts", metavar="FILE", help="known_hosts file (default: ~/.ssh/known_hosts)")
    ssh.add_argument("--accept-unknown-host-keys", action="store_true", help="trust hosts whose key is not known")
    ssh.add_argument("--remote-dir", default=DEFAULT_REMOTE_DIR, metavar="DIR", help="state directory on the hosts")
    aws = p.add_argument_group("aws")
    aws.add_argument("--aws-region", action="append", default=[], metavar="REGION", help="an AWS region, e.g. us-east-1 (repeatable)")
    aws.add_argument("--aws-endpoint-url", help="EC2 endpoint override (an emulator)")
    aws.add_argument("--aws-profile", help="AWS profile to use")
    gcp = p.add_argument_group("gcp (Application Default Credentials)")
    gcp.add_argument("--gcp-project", metavar="PROJECT", help="the project to search (default: the credentials' project)")
    gcp.add_argument("--gcp-endpoint", metavar="URL", help="Compute Engine endpoint override")
    azure = p.add_argument_group("azure (DefaultAzureCredential)")
    azure.add_argument("--azure-subscription", metavar="ID", help="the subscription to search (default: AZURE_SUBSCRIPTION_ID)")
    azure.add_argument("--azure-endpoint", metavar="URL", help="Azure Resource Manager endpoint override")
    p.add_argument("--poll-seconds", type=float, default=5.0, metavar="SECONDS",
                   help="seconds between two checks of a GCP or Azure operation (a deletion) until it is done "
                        "(default 5; an emulator or stand-in answers at once)")
    p.set_defaults(func=run)


def _ssh_targets(args: argparse.Namespace) -> tuple[list[SSHHost], ConnectPolicy]:
    from skyplane_provider.provisioners.ssh_connection import ConnectPolicy, SSHHost

    settings = json.loads(args.ssh_config.read_text()) if args.ssh_config else {}
    defaults = {k: v for k, v in {"key_file": args.ssh_key or settings.get("key_file"),
                                  "user": settings.get("user"), "python": settings.get("python")}.items() if v}
    configured = settings.get("hosts", [])
    flat = [h for hs in configured.values() for h in hs] if isinstance(configured, dict) else list(configured)
    hosts = list(dict.fromkeys(SSHHost.from_setting(h, defaults) for h in [*flat, *args.ssh_host]))
    known = args.known_hosts or settings.get("known_hosts")
    if known is None and (Path.home() / ".ssh" / "known_hosts").exists():
        known = str(Path.home() / ".ssh" / "known_hosts")
    policy = ConnectPolicy(known_hosts=known and str(Path(known).expanduser()),
                           accept_unknown_host_keys=args.accept_unknown_host_keys
                           or bool(settings.get("accept_unknown_host_keys")))
    return hosts, policy


def run(args: argparse.Namespace) -> int:
    # Here, not at the top: every command line builds this parser, and these bring paramiko.
    from skyplane_provider.deprovision import (Selection, deprovision_aws, deprovision_azure, deprovision_gcp,
                                               deprovision_local, deprovision_ssh, parse_duration)

    selection = Selection(job_id=args.job, older_than=parse_duration(args.older_than) if args.older_than else None)
    hosts, policy = _ssh_targets(args)
    wanted = args.provisioner or (["local"] + (["ssh"] if hosts else []) + (["aws"] if args.aws_region else [])
                                  + (["gcp"] if args.gcp_project else []) + (["azure"] if args.azure_subscription else []))
    if "ssh" in wanted and not hosts:
        raise BadOptionError("deprovision --provisioner ssh needs hosts", hint="pass --ssh-host or --ssh-config")
    if "aws" in wanted and not args.aws_region:
        raise BadOptionError("deprovision --provisioner aws needs regions", hint="pass --aws-region (repeatable)")
    reaped = []
    if "local" in wanted:
        reaped += deprovision_local(selection, dry_run=args.dry_run)
    if "ssh" in wanted:
        reaped += deprovision_ssh(hosts, selection, policy=policy, remote_dir=args.remote_dir, dry_run=args.dry_run)
    if "aws" in wanted:
        reaped += deprovision_aws(args.aws_region, selection, endpoint_url=args.aws_endpoint_url,
                                  profile=args.aws_profile, dry_run=args.dry_run)
    if "gcp" in wanted:
        reaped += deprovision_gcp(selection, project=args.gcp_project, endpoint=args.gcp_endpoint,
                                  poll_seconds=args.poll_seconds, dry_run=args.dry_run)
    if "azure" in wanted:
        reaped += deprovision_azure(selection, subscription_id=args.azure_subscription, base_url=args.azure_endpoint,
                                    poll_seconds=args.poll_seconds, dry_run=args.dry_run)
    if args.json:
        print(json.dumps([vars(r) for r in reaped]))
    else:
        for r in reaped:
            print(r)
        print(f"{plural(len(reaped), 'job')} {'found' if args.dry_run else 'cleaned up'}")
    return 0
