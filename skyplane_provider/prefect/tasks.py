"""The ``skyplane_transfer`` Prefect task: one copy, sync or multicast through a gateway fleet.

    from prefect import flow
    from skyplane_provider.prefect import skyplane_transfer, teardown_fleets

    @flow(on_cancellation=[teardown_fleets], on_crashed=[teardown_fleets])
    def nightly():
        return skyplane_transfer("s3://raw/events/", ["gs://lake/events/", "az://euwest/lake/events/"],
                                 src_credentials="aws-credentials/prod", sync=True)

The task returns the transfer's stats as a dict, logs through the run logger and writes three artifacts
(see :mod:`.reporting`). The job runs in its coordinator process; the task holds its handle
(:mod:`.execution`). Bad input fails before any gateway starts and is not retried; other failures
are retried. The job id is the task run's id, so every attempt of a task run is the same job, and a
retry resumes it: it continues from the job's manifest (docs/coordinator.md) and runs as a sync, so
nothing that arrived intact is copied again.
"""

from __future__ import annotations

import uuid
from typing import Any, Sequence

from prefect import Task, runtime, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State, TaskRun

from gateway.stores.uri import parse_uri
from planner.errors import AccessDeniedError, BadInputError, BadOptionError, CredentialsError, NotFoundError, PlanError
from skyplane_provider.transfer import DryRun, Transfer, TransferRequest
from skyplane_provider.transfer.credential_sources import CredentialSource, document
from skyplane_provider.transfer.request import DEFAULT_CHUNK_SIZE

from .blocks import load_block
from .credentials import credential_sources
from .execution import run_job
from .reporting import RunReport, plan_markdown

#: Failures that another attempt cannot fix: the task fails at once instead of retrying.
NOT_RETRYABLE = (BadInputError, CredentialsError, AccessDeniedError, NotFoundError, PlanError)


def retry_unless_bad_input(task: Task, task_run: TaskRun, state: State) -> bool:
    """Prefect ``retry_condition_fn``: retry transient failures, never bad input or refused access."""
    try:
        state.result()
    except NOT_RETRYABLE:
        return False
    except BaseException:  # noqa: BLE001 - anything else may pass on the next attempt
        return True
    return True


def transfer_request(src: str, dsts: list[str], *, src_credentials: Any, dst_credentials: Any, credentials: Any,
                     provisioner: str | None, provisioner_settings: dict | None, fleet: Any,
                     **options: Any) -> tuple[TransferRequest, list[CredentialSource]]:
    """The engine's request from the task's arguments (credentials objects and blocks resolved), and
    the sources of its credentials, which renew what expires while the transfer runs."""
    sources = credential_sources(parse_uri(src), [parse_uri(d) for d in dsts], src_credentials=src_credentials,
                                 dst_credentials=dst_credentials, credentials=credentials)
    fleet = load_block(fleet)
    if fleet is not None:
        if provisioner is not None or provisioner_settings:
            raise BadOptionError("both a fleet and a provisioner are given",
                                 hint="pass either fleet=SkyplaneFleet(...) or provisioner/provisioner_settings")
        if not callable(getattr(fleet, "provisioner_settings", None)):
            raise BadOptionError(f"fleet must be a SkyplaneFleet block, not {type(fleet).__name__}")
        provisioner, provisioner_settings = fleet.provisioner, fleet.provisioner_settings()
    return TransferRequest(src=src, dsts=dsts, credentials=document(sources), provisioner=provisioner or "local",
                           provisioner_settings=dict(provisioner_settings or {}), **options), sources


@task(name="skyplane-transfer", retries=2, retry_delay_seconds=[10, 60], retry_condition_fn=retry_unless_bad_input,
      cache_policy=NO_CACHE)
def skyplane_transfer(
    src: str,
    dst: str | Sequence[str],
    *,
    src_credentials: Any = None,
    dst_credentials: Any = None,
    credentials: Any = None,
    recursive: bool = True,
    sync: bool = False,
    solver: str = "direct",
    throughput_gbps: float | None = None,
    max_cost_per_gb: float | None = None,
    max_gateways_per_region: int = 1,
    gateways_per_region: int | None = None,
    connections: int | None = None,
    compress: bool = True,
    encrypt: bool = True,
    chunk_size: int | str = DEFAULT_CHUNK_SIZE,
    bwlimit: int | str | None = None,
    state_uri: str | None = None,
    server_side: str = "auto",
    src_region: str | None = None,
    dst_regions: Sequence[str | None] | None = None,
    grid: str | None = None,
    provisioner: str | None = None,
    provisioner_settings: dict[str, Any] | None = None,
    fleet: Any = None,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    filter: Sequence[str] = (),
    min_size: int | str | None = None,
    max_size: int | str | None = None,
    min_age: float | str | None = None,
    max_age: float | str | None = None,
    dry_run: bool = False,
    max_cost_usd: float | None = None,
    delete: bool = False,
    max_delete: int | None = None,
    artifact_key: str = "skyplane-transfer",
    progress_interval: float = 2.0,
) -> dict[str, Any]:
    """Copy ``src`` to one or more destinations through an overlay of gateways; return the stats.

    Args:
        src: source URI (``s3://bucket/prefix/``, ``gs://...``, ``az://account/container/...``, a local path).
        dst: one destination URI or a list (one source, several destinations: multicast).
        src_credentials: credentials of the source store: ``SkyplaneCredentials``, ``AwsCredentials``,
            ``GcpCredentials``, ``AzureBlobStorageCredentials``, a credentials-document entry (dict), or a
            saved block as ``"block-type-slug/block-name"``. ``None``: the SDK's standard environment.
        dst_credentials: the same for the destinations: one (for every destination of its cloud) or a
            list aligned with ``dst``.
        credentials: credentials for every store of their cloud (a block), or a whole credentials document.
        recursive: copy everything under the source prefix (else the one object).
        sync: copy only objects missing or different at the destination. Retries always sync.
        solver: ``direct``, ``widest``, ``ilp``, ``mst`` or ``steiner``.
        throughput_gbps: throughput target (cheapest plan that reaches it), or
        max_cost_per_gb: cost ceiling in USD per GB (fastest plan under it).
        max_gateways_per_region: most gateways the planner may put in one region.
        gateways_per_region: fixed gateways per region (overrides the planner).
        connections: TCP connections per gateway and next hop (default: the plan's).
        compress: lz4 on the wire (skipped per chunk when it does not shrink).
        encrypt: end-to-end AEAD encryption (relays never see plaintext).
        chunk_size: part size, e.g. ``"32MiB"`` or bytes.
        bwlimit: bandwidth cap per region, e.g. ``"200MiB/s"`` or bytes per second: the gateways of each
            region together send at most this. Default: no cap.
        state_uri: where a snapshot of the job's manifest is kept off this host (any store URI such as
            ``"s3://bucket/skyplane-state"`` whose bucket exists), so that a retry on another worker
            resumes the job from it. Default: none (the manifest stays on the host that ran the job).
        server_side: ``"auto"`` (default): destination stores that can copy from the source (probed) do
            so, with no gateway, where that is cheaper at the requested speed; ``"always"``; ``"never"``.
        src_region: region of the source (``"azure:eastus"``) when the store cannot tell.
        dst_regions: regions of the destinations, aligned with ``dst``.
        grid: a throughput/price grid CSV to plan with instead of the packaged one.
        provisioner: ``local`` (default), ``ssh`` or ``aws``, with
        provisioner_settings: the provisioner's settings (docs/provisioners.md); or instead
        fleet: a ``SkyplaneFleet`` block (or ``"skyplane-fleet/NAME"``).
        include: globs of the names to take (rclone's ``--include``; names relative to ``src``).
        exclude: globs of the names to leave out (``--exclude``).
        filter: rules ``"+ GLOB"`` / ``"- GLOB"`` tried in order after the includes and excludes.
        min_size: leave out smaller objects (``"100KiB"`` or bytes); ``max_size``: larger ones.
        min_age: leave out objects modified more recently (``"2h"``, ``"7d"``, a date); ``max_age``: older ones.
        dry_run: list, diff, plan and price, log every object it would copy (and delete), move nothing;
            the result is the dry run's summary (objects, bytes, route, predicted time and cost).
        max_cost_usd: fail before any gateway starts when the predicted cost (egress + VMs + store
            requests) is over this many US dollars.
        delete: with ``sync``: delete destination objects the source no longer has, once every copy is verified.
        max_delete: with ``delete``: fail, deleting nothing, when more objects would be deleted.
        artifact_key: prefix of the artifact keys (``<key>-progress``, ``<key>-stats``, ``<key>-plan``).
        progress_interval: seconds between progress log lines and artifact updates.

    Returns:
        The transfer's stats (``TransferStats.to_dict()``): objects, bytes, seconds, gbps, verified, cost...
    """
    report = RunReport(artifact_key)
    dsts = [dst] if isinstance(dst, str) else list(dst)
    attempt = max(runtime.task_run.run_count, 1)
    sync = sync or attempt > 1  # a retry resumes: what already arrived intact is skipped
    report.started(src, dsts, attempt, sync)
    transfer = None
    try:
        request, sources = transfer_request(
            src, dsts, src_credentials=src_credentials, dst_credentials=dst_credentials, credentials=credentials,
            provisioner=provisioner, provisioner_settings=provisioner_settings, fleet=fleet, recursive=recursive,
            sync=sync, solver=solver, throughput_gbps=throughput_gbps, max_cost_per_gb=max_cost_per_gb,
            max_gateways_per_region=max_gateways_per_region, gateways_per_region=gateways_per_region,
            connections=connections, compress=compress, encrypt=encrypt, chunk_size=chunk_size, bwlimit=bwlimit,
            state_uri=state_uri, server_side=server_side,
            src_region=src_region, dst_regions=list(dst_regions) if dst_regions is not None else None, grid=grid,
            include=list(include), exclude=list(exclude), filter=list(filter), min_size=min_size, max_size=max_size,
            min_age=min_age, max_age=max_age, dry_run=dry_run, max_cost_usd=max_cost_usd, delete=delete,
            max_delete=max_delete)
        request.job_id = _job_id(runtime.task_run.id)
        # A retry continues the attempt before it from its manifest (kept on this host, or its snapshot
        # at state_uri when this host has none).
        request.resume = attempt > 1 and request.job_id is not None
        transfer = Transfer(request, credential_sources=sources).prepare()
        if request.dry_run:
            return report.dry_run(DryRun.of(transfer))
        size = sum(o.info.size for o in transfer.objects)
        report.planned(transfer.plan, len(transfer.objects), size, transfer.skipped)
        stats = run_job(transfer, flow_run_id=runtime.flow_run.id, on_progress=report.progress,
                        interval=progress_interval).to_dict()
    except BaseException as exc:
        plan = transfer.plan if transfer is not None else None
        report.failed(exc, None if plan is None else plan_markdown(
            src, dsts, plan, sum(o.info.size for o in transfer.objects),
            error=f"{type(exc).__name__}: {exc}".rstrip(": "), sync=sync))
        raise
    report.finished(stats, plan_markdown(src, dsts, transfer.plan, size, stats=stats, sync=sync))
    return stats


def _job_id(task_run_id: str | None) -> str | None:
    """The job id of a task run: the same for each of its attempts, so a retry finds the job's
    directory (and manifest); None outside a run (a fresh id per call)."""
    return uuid.UUID(str(task_run_id)).hex if task_run_id else None
