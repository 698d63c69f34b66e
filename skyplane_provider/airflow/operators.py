"""``SkyplaneTransferOperator``: one operator for every cross-cloud copy, sync and multicast.

    SkyplaneTransferOperator(task_id="nightly", src="s3://raw/events/",
                             dst=["gs://lake/events/", "az://acct/lake/events/"],
                             src_conn_id="aws_raw", dst_conn_id=["gcp_lake", "wasb_lake"],
                             dst_regions=["gcp:us-central1", "azure:westeurope"], sync=True)

The operator is thin: :class:`~.hooks.SkyplaneHook` turns connections into a
:class:`~skyplane_provider.transfer.TransferRequest`, the engine-neutral Transfer API does the work.
Every check that bad input can fail runs before a gateway starts. The XCom value is the compact
stats dict (counts, bytes, seconds, cost, plan summary), never a list of keys.

The transfer runs in its job's coordinator process (docs/coordinator.md); the task holds its
:class:`~skyplane_provider.transfer.handle.TransferHandle` and logs its progress as a subscriber. In
deferrable mode the task hands the handle to :class:`~.triggers.SkyplaneTransferTrigger`, which polls
the coordinator over HTTP from any triggerer host; the worker slot is free meanwhile.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any, NoReturn

from airflow.sdk import Asset, BaseOperator
from airflow.sdk.configuration import conf

from gateway.stores.uri import parse_uri
from planner.errors import BadInputError, CoordinatorError, TransferError
from skyplane_provider.coordinator.client import job_error
from skyplane_provider.provisioners import get_provisioner
from skyplane_provider.transfer import Progress, Transfer, TransferRequest
from skyplane_provider.transfer.request import DEFAULT_CHUNK_SIZE
from skyplane_provider.transfer.runner import RENEW_EVERY
from skyplane_provider.transfer.stats import human_bytes

from .hooks import SkyplaneHook, Target
from .paths import is_path, path_uri
from .triggers import SkyplaneTransferTrigger

if TYPE_CHECKING:
    from airflow.sdk import Context

# Airflow's task logs run at INFO, where azure-core logs every HTTP request and response in full.
logging.getLogger("azure.core.pipeline.policies.http_logging_policy").setLevel(logging.WARNING)

#: The filter arguments, templated like the URIs (``include=["{{ params.table }}/*.parquet"]``).
FILTER_FIELDS = ("include", "exclude", "filter", "min_size", "max_size", "min_age", "max_age")
#: How long on_kill waits for the transfer to tear its fleet down (Airflow SIGKILLs 5 s after SIGTERM).
KILL_GRACE_SECONDS = 4.0
#: Airflow's own deferral timeout comes this much after the trigger's deadline, as a backstop.
DEFER_TIMEOUT_MARGIN = timedelta(seconds=60)


class SkyplaneTransferOperator(BaseOperator):
    """Copy (or sync) ``src`` to one or more destinations through an overlay of gateways.

    :param src: source URI (``s3://``, ``gs://``, ``az://account/container/``, or a local path), or an
        ``ObjectStoragePath`` (its connection id is the source's connection). Templated.
    :param dst: destination URI or ``ObjectStoragePath``, or a list of them for a multicast. Templated.
    :param src_conn_id: Airflow connection for the source (``aws`` / ``google_cloud_platform`` / ``wasb``);
        ``None`` uses the SDKs' environment. Templated.
    :param dst_conn_id: connection for the destination, or a list aligned with ``dst``. Templated.
    :param recursive: copy everything under ``src`` (a prefix) rather than one object.
    :param sync: only copy objects missing or different at the destination.
    :param solver: ``direct``, ``widest``, ``ilp`` (unicast overlay), ``mst`` or ``steiner`` (multicast).
    :param throughput_gbps: throughput target for the ILP (cheapest plan reaching it).
    :param max_cost_per_gb: cost ceiling in $/GB for the ILP (fastest plan under it); not with a target.
    :param max_gateways_per_region: how many gateways the planner may use per region.
    :param gateways_per_region: force this many gateways in every region of the plan.
    :param connections: TCP connections per gateway pair (default: the planner's).
    :param compress: lz4 on the wire.
    :param encrypt: end-to-end AEAD encryption (relays forward ciphertext).
    :param chunk_size: part size in bytes or text (``"32MiB"``).
    :param bwlimit: bandwidth cap per region in bytes per second or text (``"200MiB/s"``): the gateways
        of each region together send at most this. Default: no cap.
    :param state_uri: where a snapshot of the job's manifest is kept off the worker, so that a retry on
        another worker (or after the first one was lost) resumes the job from it: any store URI such as
        ``"s3://bucket/skyplane-state"`` whose bucket exists, read and written with the credentials
        document's entry for it (a connection's when the state is in a bucket the transfer uses), else
        the SDKs' environment. Templated. Default: none (the manifest stays on the worker).
    :param server_side: ``"auto"`` (default): destination stores that can copy from the source (probed)
        do so, with no gateway, where that is cheaper at the requested speed; ``"always"``; ``"never"``.
    :param src_region: region tag of the source when the store cannot tell (Azure: ``"azure:eastus"``). Templated.
    :param dst_regions: region tags of the destinations, aligned with ``dst``. Templated.
    :param grid: a throughput/price grid CSV instead of the packaged one.
    :param provisioner: ``local``, ``ssh`` or ``aws``; default: the ``skyplane`` connection's, else
        ``local``. Templated.
    :param skyplane_conn_id: a ``skyplane`` connection with provisioner settings. Templated.
    :param include: globs of the names to take (rclone's ``--include``; names relative to ``src``).
    :param exclude: globs of the names to leave out (``--exclude``).
    :param filter: rules ``"+ GLOB"`` / ``"- GLOB"`` tried in order after the includes and excludes.
    :param min_size: leave out smaller objects (``"100KiB"`` or bytes); ``max_size``: larger ones.
    :param min_age: leave out objects modified more recently (``"2h"``, ``"7d"``, a date); ``max_age``: older ones.
    :param dry_run: list, diff, plan and price, log every object it would copy (and delete), move nothing;
        the XCom value is the dry run's summary (objects, bytes, route, predicted time and cost).
    :param max_cost_usd: fail before any gateway starts when the predicted cost (egress + VMs + store
        requests) is over this many US dollars.
    :param delete: with ``sync``: delete destination objects the source no longer has, once every copy is verified.
    :param max_delete: with ``delete``: fail, deleting nothing, when more objects would be deleted.
    :param deferrable: free the worker slot while the job runs: the triggerer watches its coordinator.
    :param poll_interval: seconds between progress lines (and the trigger's polls when deferred).
    """

    template_fields: Sequence[str] = ("src", "dst", "src_conn_id", "dst_conn_id", "src_region", "dst_regions",
                                      "provisioner", "skyplane_conn_id", "state_uri", *FILTER_FIELDS)
    ui_color = "#c6dbef"

    def __init__(self, *, src: Target, dst: Target | list[Target], src_conn_id: str | None = None,
                 dst_conn_id: str | list[str | None] | None = None, recursive: bool = True, sync: bool = False,
                 solver: str = "direct", throughput_gbps: float | None = None, max_cost_per_gb: float | None = None,
                 max_gateways_per_region: int = 1, gateways_per_region: int | None = None,
                 connections: int | None = None, compress: bool = True, encrypt: bool = True,
                 chunk_size: int | str = DEFAULT_CHUNK_SIZE, bwlimit: int | str | None = None,
                 state_uri: str | None = None,
                 server_side: str = "auto", src_region: str | None = None,
                 dst_regions: list[str | None] | None = None, grid: str | None = None,
                 provisioner: str | None = None, skyplane_conn_id: str | None = None,
                 include: Sequence[str] = (), exclude: Sequence[str] = (), filter: Sequence[str] = (),
                 min_size: int | str | None = None, max_size: int | str | None = None,
                 min_age: float | str | None = None, max_age: float | str | None = None,
                 dry_run: bool = False, max_cost_usd: float | None = None, delete: bool = False,
                 max_delete: int | None = None,
                 deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
                 poll_interval: float = 5.0, **kwargs: Any) -> None:
        kwargs.setdefault("inlets", _assets([src]))
        kwargs.setdefault("outlets", _assets(list(dst) if isinstance(dst, (list, tuple)) else [dst]))
        super().__init__(**kwargs)
        self.src = src
        self.dst = dst
        self.src_conn_id = src_conn_id
        self.dst_conn_id = dst_conn_id
        self.src_region = src_region
        self.dst_regions = dst_regions
        self.provisioner = provisioner
        self.skyplane_conn_id = skyplane_conn_id
        self.state_uri = state_uri
        self.options = dict(recursive=recursive, sync=sync, solver=solver, throughput_gbps=throughput_gbps,
                            max_cost_per_gb=max_cost_per_gb, max_gateways_per_region=max_gateways_per_region,
                            gateways_per_region=gateways_per_region, connections=connections, compress=compress,
                            encrypt=encrypt, chunk_size=chunk_size, bwlimit=bwlimit,
                            server_side=server_side, grid=grid, dry_run=dry_run, max_cost_usd=max_cost_usd,
                            delete=delete, max_delete=max_delete)
        # templated (a run's partition, a size from params), so attributes read at execute time
        self.include, self.exclude, self.filter = list(include), list(exclude), list(filter)
        self.min_size, self.max_size, self.min_age, self.max_age = min_size, max_size, min_age, max_age
        self.deferrable = deferrable
        self.poll_interval = poll_interval
        self._transfer: Transfer | None = None
        self._next_line = 0.0

    @property
    def dsts(self) -> list[Target]:
        return list(self.dst) if isinstance(self.dst, (list, tuple)) else [self.dst]

    @cached_property
    def hook(self) -> SkyplaneHook:
        return SkyplaneHook(src_conn_id=self.src_conn_id, dst_conn_id=self.dst_conn_id,
                            skyplane_conn_id=self.skyplane_conn_id)

    def make_request(self) -> TransferRequest:
        """The validated request (raises a ``BadInputError`` before anything starts)."""
        return self.hook.make_request(self.src, self.dsts, provisioner=self.provisioner, src_region=self.src_region,
                                      dst_regions=self.dst_regions, state_uri=self.state_uri, **self.options,
                                      **{name: getattr(self, name) for name in FILTER_FIELDS})

    # -- run in the worker ----------------------------------------------------------------------
    def execute(self, context: Context) -> dict:
        """Prepare here (bad input fails before anything starts), start the job's coordinator, then
        wait for it here, or defer to the triggerer. A dry run only logs what the job would do."""
        request = self.make_request()
        if request.dry_run:
            return self._dry_run(request)
        ti = context.get("ti")  # None when called outside a task run
        if ti is not None:
            request.job_id = task_job_id(ti)
            # A retry (or a cleared task run again) continues the job of the tries before it from its
            # manifest (kept on this host, or its snapshot at state_uri), and runs as a sync: what
            # arrived intact is not sent again.
            if ti.try_number > 1:
                request.resume = request.sync = True
        if self.deferrable:
            transfer = self._transfer = Transfer(request, progress=self._log_progress)
            self._defer(transfer.start(), sorted(transfer.plan.gateways))  # raises TaskDeferred
        # While this worker waits, the connections' sources renew what expires (an assumed role's
        # keys) and the handle pushes it to the job (docs/credentials.md).
        transfer = self._transfer = Transfer(request, progress=self._log_progress,
                                             credential_sources=self.hook.credential_sources(self.src, self.dsts))
        return self._report(transfer.run().to_dict())

    def _dry_run(self, request: TransferRequest) -> dict:
        """Log what the transfer would do and return its summary; nothing moves, no gateway starts."""
        dry = Transfer(request).dry_run()
        for line in dry.lines():
            self.log.info("%s", line)
        return dry.to_dict()

    def _log_progress(self, progress: Progress) -> None:
        """The handle's subscriber: a task log line every ``poll_interval`` seconds."""
        now = time.monotonic()
        if now >= self._next_line or progress.bytes_done == progress.bytes_total:
            self._next_line = now + self.poll_interval
            self.log.info("job %s: %s", progress.job_id, progress.line())

    def _report(self, stats: dict) -> dict:
        self.log.info("job %s: %d objects, %s in %.1f s (%.3f Gbit/s, %.3f while moving), verified %s, %d retries, "
                      "%d gateways replaced, cost $%.4f, route %s",
                      stats["job_id"], stats["objects"], human_bytes(stats["bytes"]), stats["seconds"],
                      stats["gbps"], stats["move_gbps"], stats["verification"], stats["retries"],
                      stats["gateways_replaced"], stats["cost_usd"],
                      " ".join(f"{e['src']}->{e['dst']}" for e in stats["route"]) or "-")
        return stats

    # -- deferrable mode -----------------------------------------------------------------------
    def _defer(self, handle, regions: list[str]) -> NoReturn:
        """Hand the job to the triggerer. Its handle (with the API token) travels only in the trigger's
        kwargs, which Airflow stores encrypted with its Fernet key, never in XCom. The job's id and
        ``regions`` (no secret) come back to :meth:`execute_complete`, which deletes a cloud fleet."""
        self.log.info("job %s: coordinator at %s; deferring", handle.job_id, handle.url)
        timeout = self.execution_timeout
        sides = self.hook.sides(self.src, self.dsts)  # URIs and connection ids: the trigger renews from them
        renew = {"sides": [list(side) for side in sides], "every": RENEW_EVERY} if any(c for _, c in sides) else None
        self.defer(trigger=SkyplaneTransferTrigger(handle.to_dict(), poll_interval=self.poll_interval,
                                                   deadline=time.time() + timeout.total_seconds() if timeout else None,
                                                   renew=renew),
                   method_name="execute_complete", timeout=timeout + DEFER_TIMEOUT_MARGIN if timeout else None,
                   kwargs={"fleet": {"job_id": handle.job_id, "regions": regions}})

    def execute_complete(self, context: Context, event: dict, fleet: dict | None = None) -> dict:
        """Resumed when the trigger fires: the job's stats, or its error (the same ``SkyplaneError``
        class). Either way the job has ended: its cloud VMs, which its coordinator cannot delete (it
        holds no cloud credentials), are deleted here first (docs/provisioners.md, "Who deletes what")."""
        if fleet is not None:
            self._reap(fleet)
        status = event["status"]
        if status == "success":
            return self._report(event["stats"])
        if status == "timeout":
            raise TransferError(event["message"], hint="raise the task's execution_timeout")
        if status == "lost":
            raise CoordinatorError(event["message"], hint=f"resume the job: `skyplane-provider resume {event['job_id']}`")
        raise job_error(event)

    def _reap(self, fleet: dict) -> None:
        """The client's share of the job's teardown, from any worker: ``reap_job`` of the ``skyplane``
        connection's provisioner (which has the cloud credentials), nothing for ``local`` and ``ssh``."""
        name, settings = self.hook.provisioner(self.provisioner)
        settings.pop("credentials", None)  # the fleet's store credentials: the request's, not the provisioner's
        get_provisioner(name, **settings).reap_job(fleet["job_id"], fleet["regions"])

    def on_kill(self) -> None:
        """Cancel the job and wait (briefly: Airflow SIGKILLs soon) for its coordinator to tear the fleet
        down; the coordinator finishes the teardown even if this process is killed first."""
        handle = self._transfer.handle if self._transfer is not None else None
        if handle is not None:
            handle.stop(KILL_GRACE_SECONDS)

    # -- lineage ---------------------------------------------------------------------------------
    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """Inputs and outputs as OpenLineage datasets (``s3://bucket``, ``gs://bucket``,
        ``wasbs://container@account`` namespaces), when the openlineage provider is installed."""
        try:
            from airflow.providers.common.compat.openlineage.facet import Dataset
            from airflow.providers.openlineage.extractors import OperatorLineage
        except ImportError:
            return None
        return OperatorLineage(inputs=[Dataset(namespace=ns, name=name) for ns, name in lineage_names([self.src])],
                               outputs=[Dataset(namespace=ns, name=name) for ns, name in lineage_names(self.dsts)])


def lineage_names(targets: list[Target]) -> list[tuple[str, str]]:
    """``(namespace, name)`` per URI, as the official transfer operators name their datasets."""
    out = []
    for uri in filter(None, map(_uri_text, targets)):
        u = parse_uri(uri)
        name = u.path.rstrip("/") or "/"
        if u.scheme == "az":
            account, container = u.bucket.split("/", 1)
            out.append((f"wasbs://{container}@{account}", name))
        elif u.scheme == "file":
            out.append(("file", name))
        else:
            out.append((u.root_uri, name))
    return out


def _uri_text(target: Target) -> str | None:
    """A target as URI text, without looking up connections (None for an Azure path whose account
    only its connection knows)."""
    return path_uri(target) if is_path(target) else target


def _assets(uris: list[Target]) -> list[Asset]:
    """One Asset per URI, for scheduling downstream DAGs on the destination. A templated URI gives
    the Asset of its static part (``gs://lake/events/dt={{ ... }}/`` -> ``gs://lake/events/``); a URI
    that does not parse gives none (execute reports it)."""
    assets = []
    for uri in map(_uri_text, uris):
        if not isinstance(uri, str):
            continue
        static = uri.split("{{", 1)[0]
        if static != uri:
            static = static[: static.rfind("/") + 1]
        try:
            parsed = parse_uri(static)
        except BadInputError:
            continue
        if parsed.scheme != "file" or parsed.path.strip("/"):
            assets.append(Asset(str(parsed)))
    return assets


def task_job_id(ti: Any) -> str:
    """The job id of a task instance: the same for every try of it (a retry finds the job's directory and
    manifest), another for each DAG run and mapped index."""
    name = f"airflow:{ti.dag_id}/{ti.task_id}/{ti.run_id}/{getattr(ti, 'map_index', -1)}"
    return uuid.uuid5(uuid.NAMESPACE_URL, name).hex
