"""``skyplane-provider resume JOB``: run a failed, cancelled or lost job again under its own id.

The job's coordinator kept its request without secrets (``resume.json`` in the job's directory on
this host); the store credentials and secret provisioner settings come again from ``--credentials``
and ``--provisioner-settings`` (or the SDKs' environment, for local gateways). The job continues from
its manifest (copies recorded done are skipped, multipart uploads go on from their recorded parts) and
runs as a sync, so what arrived intact but was not recorded is skipped too.

A job started with ``--state-uri`` (``state_uri``) can be resumed on a host that never ran it, or
whose job directory is gone: ``--state-uri URI`` fetches the manifest's snapshot from there, and the
request kept in it (without secrets) stands in for ``resume.json``.
"""

from __future__ import annotations

import argparse
import json

from planner.errors import BadOptionError
from skyplane_provider.coordinator.jobdir import RESUME, job_dir
from skyplane_provider.coordinator.manifest import Manifest
from skyplane_provider.coordinator.statecopy import StateCopy
from skyplane_provider.transfer import TransferRequest
from skyplane_provider.transfer.runner import MANIFEST

from .cp import execute, json_object
from .wording import examples

EXAMPLES = examples(
    "skyplane-provider resume 3f2c9a...                       # the job id from the error or the task log",
    "skyplane-provider resume 3f2c9a... --credentials creds.json --provisioner-settings ssh.json",
    "skyplane-provider resume 3f2c9a... --state-uri s3://bucket/skyplane-state   # on another host",
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
    p.add_argument("--state-uri", metavar="URI",
                   help="the job's --state-uri: on a host without the job's directory (the one that ran it was "
                        "lost), the manifest's snapshot and the request kept in it are fetched from there; this run "
                        "keeps its snapshot there too (default: the job's own, if it had one)")
    p.set_defaults(func=run_resume)


def resumed_request(job_id: str, *, credentials: dict, provisioner_settings: dict,
                    state_uri: str | None = None) -> TransferRequest:
    """The request of job ``job_id`` as kept on this host (or, when this host has none of it, in the
    manifest's snapshot at ``state_uri``), with the secrets given now, as a resuming sync."""
    directory = job_dir(job_id)
    try:
        saved = json.loads((directory / RESUME).read_text())
    except FileNotFoundError:
        if state_uri is None:
            raise BadOptionError(f"no job {job_id} to resume on this host (nothing under {directory})",
                                 hint="a job that succeeded leaves nothing to resume; check the id, or give the "
                                      "job's --state-uri if it was started with one") from None
        saved = _request_from_state(job_id, state_uri, credentials)
    saved.update(credentials=credentials, sync=True, resume=True, job_id=job_id,
                 provisioner_settings={**saved.get("provisioner_settings", {}), **provisioner_settings})
    if state_uri is not None:
        saved["state_uri"] = state_uri
    return TransferRequest.from_dict(saved)


def _request_from_state(job_id: str, state_uri: str, credentials: dict) -> dict:
    """The request kept in the job's manifest snapshot at ``state_uri`` (fetched into the job's directory)."""
    path = job_dir(job_id) / MANIFEST
    state = StateCopy(state_uri, job_id, path, credentials)
    if not state.fetch():
        raise BadOptionError(f"no job {job_id} to resume here nor at {state.where}",
                             hint="a job that succeeded leaves nothing to resume; check the id and the state URI")
    manifest = Manifest(path)
    try:
        request = manifest.noted("request")
    finally:
        manifest.close()
    if request is None:
        raise BadOptionError(f"the manifest's snapshot {state.where} does not say which transfer it belongs to",
                             hint="resume the job with the Transfer API: the same request with resume=True")
    return json.loads(request)


def run_resume(args: argparse.Namespace) -> int:
    request = resumed_request(args.job_id, credentials=json_object(args.credentials, "--credentials"),
                              provisioner_settings=json_object(args.provisioner_settings, "--provisioner-settings"),
                              state_uri=args.state_uri)
    return execute(request, args)
