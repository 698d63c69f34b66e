"""``skyplane-provider resume JOB``: run a failed, cancelled or lost job again under its own id.

The job's coordinator kept its request without secrets (``resume.json`` in the job's directory on
this host); the store credentials and secret provisioner settings come again from ``--credentials``
and ``--provisioner-settings`` (or the SDKs' environment, for local gateways). The job continues from
its manifest (copies recorded done are skipped, multipart uploads go on from their recorded parts) and
runs as a sync, so what arrived intact but was not recorded is skipped too.
"""

from __future__ import annotations

import argparse
import json

from planner.errors import BadOptionError
from skyplane_provider.coordinator.jobdir import RESUME, job_dir
from skyplane_provider.transfer import TransferRequest

from .cp import execute, json_object
from .wording import examples

EXAMPLES = examples(
    "skyplane-provider resume 3f2c9a...                       # the job id from the error or the task log",
    "skyplane-provider resume 3f2c9a... --credentials creds.json --provisioner-settings ssh.json",
)


def register(sub: argparse._SubParsersAction) -> None:
    text = "run a failed, cancelled or lost transfer job again (only what is missing moves)"
    p = sub.add_parser("resume", help=text, description=text, epilog=EXAMPLES)
    p.add_argument("job_id", metavar="JOB", help="the job's id")
    p.add_argument("--json", action="store_true", help="print the stats as JSON on the last line of stdout")
    p.add_argument("--credentials", type=argparse.FileType("r"), metavar="FILE",
                   help="JSON credentials document for the stores, as given to cp/sync (never kept with the job)")
    p.add_argument("--provisioner-settings", type=argparse.FileType("r"), metavar="FILE",
                   help="JSON object of provisioner settings; its keys replace the job's (give the secret ones "
                        "again: they are not kept with the job)")
    p.set_defaults(func=run_resume)


def resumed_request(job_id: str, *, credentials: dict, provisioner_settings: dict) -> TransferRequest:
    """The request of job ``job_id`` as kept on this host, with the secrets given now, resumed as a sync."""
    directory = job_dir(job_id)
    try:
        saved = json.loads((directory / RESUME).read_text())
    except FileNotFoundError:
        raise BadOptionError(f"no job {job_id} to resume on this host (nothing under {directory})",
                             hint="a job that succeeded leaves nothing to resume; check the id") from None
    saved.update(credentials=credentials, sync=True, resume=True, job_id=job_id,
                 provisioner_settings={**saved.get("provisioner_settings", {}), **provisioner_settings})
    return TransferRequest.from_dict(saved)


def run_resume(args: argparse.Namespace) -> int:
    request = resumed_request(args.job_id, credentials=json_object(args.credentials, "--credentials"),
                              provisioner_settings=json_object(args.provisioner_settings, "--provisioner-settings"))
    return execute(request, args)
