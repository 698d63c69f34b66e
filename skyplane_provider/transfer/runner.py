"""The engine-neutral transfer: validate, plan, provision, then list -> chunk -> move -> verify as one stream.

Clients (CLI, Airflow operator, Prefect task) call ``Transfer(request).start()`` (or ``run()``, which
is ``start().result()``): every check that can fail on bad input runs in ``prepare()``, in the
caller, before any gateway starts; then the job's coordinator process (docs/coordinator.md) runs
``execute()``, the pipeline itself, and the caller holds a :class:`TransferHandle`. The fleet is torn
down on every path out of ``execute()`` (success, error, cancel, SIGTERM via the provisioner's hooks),
and unfinished multipart uploads are aborted, so a failed transfer leaves only complete, verified objects
(a killed one leaves its uploads open and recorded, for a resume).

``prepare()`` reads only the first listing page (the plan is sized from it) unless the job needs its
whole listing before anything moves: a dry run, a cost ceiling (``max_cost_usd``), a mirror
(``delete``, whose ``max_delete`` is checked first), filters (applied by the full listing), or a
destination that copies server-side (the split needs every object). ``execute()`` lists the rest
while the data moves (:mod:`skyplane_provider.coordinator.feed` -> :mod:`.dispatch`), verifies each
copy as it lands from the stores' write receipts (:mod:`skyplane_provider.coordinator.finish`),
records it in the job's manifest and report and forgets it. The job's directory
``$SKYPLANE_HOME/jobs/<job_id>/`` holds ``manifest.sqlite3`` (copies done, uploads begun, parts
written) and, by default, ``report.jsonl``; a request with the same ``job_id`` and ``resume=True``
skips what the manifest records done and continues its multipart uploads from their recorded parts.
With ``state_uri`` a snapshot of the manifest is kept in a store too (:mod:`~skyplane_provider.coordinator.statecopy`),
and a resume on a host without the manifest continues from it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import secrets
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from gateway.sizing import Sizing, choose
from gateway.control_client import GatewayClient
from gateway.stores import check_document, covers, endpoint, narrow, open_store
from gateway.stores.base import ObjectInfo
from gateway.wire import is_loopback
from planner.errors import BadOptionError, ProvisionError, SkyplaneError, TransferError
from planner.plan import Plan
from planner.store_requests import RequestCounts
from skyplane_provider.coordinator.chunker import part_size_for
from skyplane_provider.coordinator.feed import Feed, abort_upload, pending_uploads
from skyplane_provider.coordinator.finish import Verification
from skyplane_provider.coordinator.deferred_store import DeferredStore
from skyplane_provider.coordinator.gateway_store import GatewayStore, capabilities_doc, capabilities_from
from skyplane_provider.coordinator.jobdir import resumable_request
from skyplane_provider.coordinator.launcher import drop_ahead, start_ahead
from skyplane_provider.coordinator.ledger import Ledger
from skyplane_provider.coordinator.listing import Decision
from skyplane_provider.coordinator.manifest import Manifest
from skyplane_provider.coordinator.report import Report
from skyplane_provider.coordinator.statecopy import StateCopy
from skyplane_provider.paths import skyplane_home
from skyplane_provider.provisioners import get_provisioner
from skyplane_provider.provisioners.base import Fleet, Provisioner
from skyplane_provider.provisioners.handed import HandedProvisioner

from .bandwidth import RegionCaps
from .channel_stores import opener_for
from .chunks import ObjectJob, Target
from .credential_sources import CredentialKeeper, CredentialSource
from .dispatch import Dispatcher
from .endpoints import (Destination, Source, existing, first_page, list_source, needs_copy, open_destination,
                        open_source)
from .dryrun import DryRun
from .estimate import Estimate, check_budget, count_requests, estimate
from .launch import JobSecrets, gateway_specs, wire_peers, workers_for
from .mirror import Deletion, DestOnly, check_limit, delete_all, probe_delete
from .planning import make_plan
from .preflight import preflight
from .request import DEFAULT_CHUNK_SIZE, TransferRequest, report_path
from .server_side import GATEWAYS, SERVER_SIDE, Copier, Way, candidate_regions, probe_ways, requests_usd_for, split
from .stats import Progress, TransferStats, egress_usd_actual, region_of, wire_bytes_by_edge, work_skipped
from .stoppable import StoppableCalls, cancelled

if TYPE_CHECKING:  # imported by start(): a job's coordinator process, which runs execute(), needs no client
    from .handle import TransferHandle

log = logging.getLogger(__name__)

#: Seconds ``run()`` waits for a job it cancels (Ctrl-C, a task's timeout) to tear its fleet down.
CANCEL_GRACE = 60.0
#: Seconds a finished job's coordinator keeps the outcome for a client that has not fetched it.
RESULT_LINGER = 3600.0
#: Seconds between two asks of the credential sources while a job runs (docs/credentials.md).
RENEW_EVERY = 30.0
MANIFEST = "manifest.sqlite3"
REPORT = "report.jsonl"


class Transfer:
    """One transfer job. Not reusable: create one per run."""

    def __init__(self, request: TransferRequest, *, provisioner: Provisioner | None = None,
                 progress: Callable[[Progress], None] | None = None,
                 credential_sources: list[CredentialSource] | None = None,
                 renew_every: float = RENEW_EVERY, checked: bool = False, prepared: dict | None = None) -> None:
        """``credential_sources``: what renews entries of the request's credentials document (an
        assumed role's keys, a SAS minted anew; docs/credentials.md). While the job runs, a
        :class:`CredentialKeeper` asks them every ``renew_every`` seconds and hands what changed to
        the job: through its handle to the coordinator (``start()``), or to :meth:`push_credentials`
        (``execute()`` in this process). ``checked``: the stores passed the pre-flight with the
        request's credentials already (in the client that started this job's coordinator, which then
        runs the job without checking again). ``prepared``: what that client's :meth:`prepare` read
        and chose for a streaming job (:meth:`handoff`), so the coordinator neither lists the first
        page nor plans again."""
        self.request = request
        self._checked = checked
        self._prepared = prepared
        self.credential_sources = list(credential_sources or ())
        self.renew_every = renew_every
        self.job_id = request.job_id or uuid.uuid4().hex
        self.progress = progress
        self._provisioner = provisioner
        #: A provisioner object cannot travel to a coordinator process: run() then executes here.
        self._in_process = provisioner is not None
        self._runs_here = False  # execute() was called: the pipeline runs in this process
        self.handle: TransferHandle | None = None
        self._stop = threading.Event()
        self.source: Source | None = None
        self.dests: list[Destination] = []
        #: The objects known before anything moves: every one (a full listing) or the first page's.
        self.objects: list[ObjectJob] = []
        self.skipped = 0
        #: Whether execute() lists as it goes (else prepare() listed in full: see the module's doc).
        self.streaming = False
        self.feed: Feed | None = None
        self.ledger: Ledger | None = None
        self._first: list[ObjectInfo] = []
        self._next_token: str | None = None
        self._decisions: list[Decision] = []  # a full listing's, in key order
        #: The source listing's requests and how many objects each destination listing held (sync).
        self._listed: tuple[RequestCounts, list[int] | None] = (RequestCounts(), None)
        self._sizing: Sizing | None = None
        self._max_chunk_bytes = 0
        self.plan: Plan | None = None
        self.fleet: Fleet | None = None
        self.dispatcher: Dispatcher | None = None
        self.verification = Verification()
        #: Seconds per phase: ``prepare`` (prepare() in this process: in a coordinator, before the job's
        #: ``seconds`` start), then execute()'s ``provision`` (until the fleet is up and wired), ``move``
        #: (from then until the last copy is verified), ``listing`` (from the start until the listing
        #: ended; it overlaps the other two).
        self.phases: dict[str, float] = {}
        #: Mirror (sync with delete): destination objects the source no longer has; how many were deleted.
        self.deletions: list[Deletion] = []
        self.deleted = 0
        #: The predicted cost (egress + VMs + store requests), set by prepare().
        self.estimate: Estimate | None = None
        #: Destinations (by index) whose stores can copy from the source (probed by prepare()); the
        #: plan's ``server_side`` regions are copied by them (server_side.py).
        self.ways: dict[int, Way] = {}
        #: Copies per path: "server-side" and "gateways".
        self.paths: dict[str, int] = {}
        #: The manifest's copy off this host (request option ``state_uri``), set by prepare().
        self.state: StateCopy | None = None
        #: Each region's gateways' credentials document: the entries of the stores their own steps open
        #: (:meth:`_store_roots`), shared with their specs so that replacements start with renewed ones.
        self._held: dict[str, dict] = {}
        #: Control clients of a handed fleet's gateways, by id (a remote coordinator's destination stores).
        self._handed_clients: dict[str, GatewayClient] = {}

    # -- phase 1: everything that can be checked without a gateway ---------------------------
    def prepare(self) -> "Transfer":
        """Validate the request, open and check every store, read the first listing page (or the whole
        listing, diffed, when the job needs it first: see the module's doc) and plan and price the job
        (from the first page's objects when streaming: the rest is not known yet)."""
        began = time.monotonic()
        req = self.request
        src_uri, dst_uris = req.validate()
        self._provisioner = self._provisioner or get_provisioner(req.provisioner, **req.provisioner_settings)
        ahead = self._coordinator_ahead()
        if ahead:  # its imports overlap the checks and the planning below (unless the caller started it),
            # and so do those of the first gateway's process where the fleet runs on this host's loopback
            start_ahead(self.job_id, gateways=1 if self._provisioner.loopback_fleet else 0,
                        schemes=tuple({uri.scheme for uri in (src_uri, *dst_uris)}))
        else:
            drop_ahead(self.job_id)  # one a caller started for a job that will not launch it here
        try:
            self._check_and_plan(src_uri, dst_uris, began)
        except BaseException:
            if ahead:
                drop_ahead(self.job_id)  # refused: the process exits having done nothing
            raise
        return self

    def _coordinator_ahead(self) -> bool:
        """Whether :meth:`start` will launch this job's coordinator on this host (a client's transfer
        to run, with a provisioner that does not start it on the fleet), so its process may start now."""
        return not (self._in_process or self._runs_here or self._checked or self._prepared is not None
                    or self.request.dry_run or self.handle is not None or self._provisioner.coordinator_on_fleet)

    def _check_and_plan(self, src_uri, dst_uris: list, began: float) -> None:
        """:meth:`prepare` once the request is valid and the provisioner known."""
        req = self.request
        # A client whose job's first gateway started ahead asks it to open the stores (no SDK import here).
        opener = opener_for(self.job_id, self._provisioner)
        if not self._checked:
            req.credentials = preflight(req.credentials, self._provisioner, src_uri, dst_uris, opener=opener)
        self.state = StateCopy(req.state_uri, self.job_id, self.directory / MANIFEST, req.credentials) \
            if req.state_uri else None
        if self.state is not None and not self._checked:
            self.state.check()
        handed = self._prepared
        # What the client found, so that this coordinator opens (imports the SDK of) only the stores it
        # calls, when it calls them (coordinator/deferred_store.py).
        found = handed if handed is not None and "source" in handed else None
        self.source = open_source(src_uri, recursive=req.recursive, credentials=req.credentials,
                                  region=req.src_region, found=found and found["source"], opener=opener)
        if isinstance(self._provisioner, HandedProvisioner):
            self.dests = self._destinations_through_gateways(dst_uris, handed)
        else:
            dst_regions = req.dst_regions or [None] * len(dst_uris)
            self.dests = [open_destination(u, single_source=self.source.single, credentials=req.credentials,
                                           region=r, found=found and found["dests"][i], opener=opener)
                          for i, (u, r) in enumerate(zip(dst_uris, dst_regions))]
        filters = req.filters()
        # What a client handed over decides, not the request: a client whose first probe found a
        # destination that copies server-side lists in full, and when its probe of every object then
        # finds none (a throttled store fails the probe), it hands that full listing over.
        self.streaming = ("listing" not in handed) if handed is not None else not (
            req.dry_run or req.max_cost_usd is not None or req.delete or filters.active)
        listed = RequestCounts(list=1)
        present = None
        if self.streaming:
            self._first, self._next_token = first_page(self.source) if handed is None else (
                [ObjectInfo(**o) for o in handed["first_page"]], handed["next_token"])
            self.objects = [ObjectJob(o, [Target(i, d.key_for(self.source.relative(o.key)), multipart=False)
                                          for i, d in enumerate(self.dests)]) for o in self._first]
            # A handed-over job streams: its client found no destination that copies server-side.
            self.ways = {} if handed is not None else probe_ways(
                self.source, self.dests, self.objects, chunk_size=req.chunk_size, mode=req.server_side)
            if self.ways:  # server-side copies: the split needs every object
                self.streaming = False
                self.objects, self._first, self._next_token = [], [], None
        if not self.streaming and handed is not None:
            listed, present = self._take_listing(handed["listing"])
            # The client probed the server-side copies: a coordinator could not (a remote one reaches the
            # destinations only through their gateways' store operations, which have no probe).
            self.ways = {int(i): Way(*w) for i, w in handed.get("ways", {}).items()}
        elif not self.streaming:
            listed, present = self._list_in_full(filters)
            self.ways = probe_ways(self.source, self.dests, self.objects, chunk_size=req.chunk_size,
                                   mode=req.server_side)
        self._listed = (listed, present)
        size = sum(o.info.size for o in self.objects)
        self.plan = Plan.from_dict(handed["plan"]) if handed is not None else make_plan(
            req, self.source.region, [d.region for d in self.dests], size,
            server_side=candidate_regions(self.dests, self.ways, self.objects),
            requests_usd=requests_usd_for(self.source, self.dests, self.objects, self.ways, req.chunk_size),
            one_host=self._provisioner.writes_at_source)
        if handed is not None and "estimate" in handed:  # priced by the client: counting again costs ~10 us per object
            self.estimate = Estimate(**{k: v for k, v in handed["estimate"].items() if k != "total_usd"})
        else:
            self.estimate = estimate(
                self.plan, size, len(self.objects),
                count_requests(self.source, self.dests, listed, present, self.objects, self.deletions,
                               req.chunk_size, self.plan.server_side),
                hourly_price=self._provisioner.hourly_price, grid_csv=req.grid)
        sizes = [o.info.size for o in self.objects]
        caps = [d.store.capabilities for d in self.dests]
        self._sizing = choose(sizes, caps, part_size=None if req.chunk_size == DEFAULT_CHUNK_SIZE else req.chunk_size)
        # A chunk is at most a part, or a whole object below its part size or the sizing's one-request
        # threshold: a destination's minimum part size may exceed the chunk size (S3's 5 MiB), a
        # first-page object may need bigger parts, and one up to the threshold goes whole.
        self._max_chunk_bytes = max([req.chunk_size, *(c.min_part_size for c in caps if c.multipart),
                                     *(part_size_for(n, req.chunk_size, caps) or 0 for n in sizes),
                                     *(n for n in sizes if not self._sizing.in_parts(n))])
        if req.resume and not (self.directory / MANIFEST).exists() and self.state is not None:
            self.state.fetch()  # this host never ran the job, or lost its directory
        if req.resume and (self.directory / MANIFEST).exists():
            Manifest(self.directory / MANIFEST, self._fingerprint()).close()  # another transfer's: refused here
        log.info("job %s: %d objects (%d bytes) to move%s, %d up to date%s; plan %s; predicted cost %s", self.job_id,
                 len(self.objects), size, " in the first listing page (the rest is listed while moving)"
                 if self.streaming and self._next_token else "", self.skipped,
                 f", {len(self.deletions)} to delete" if req.delete else "", self.plan.summary(),
                 self.estimate.breakdown())
        check_budget(self.estimate, req.max_cost_usd)
        self._phase("prepare", began)

    def _list_in_full(self, filters) -> tuple[RequestCounts, list[int] | None]:
        """List (with the filters), diff (sync) and find a mirror's deletions before anything moves;
        returns the listing's requests and how many objects each destination's listing held (sync)."""
        req = self.request
        listing = list_source(self.source, filters)
        heads = filters.list_prefixes()
        present = [existing(d, heads) for d in self.dests] if req.sync else None
        for info in listing.objects:
            rel = self.source.relative(info.key)
            targets = []
            for i, d in enumerate(self.dests):
                key = d.key_for(rel)
                if present is None or needs_copy(info, present[i].get(key)):
                    targets.append(Target(dest_index=i, key=key, multipart=False))
            self._decisions.append(Decision(info, rel, tuple(t.dest_index for t in targets),
                                            tuple(i for i in range(len(self.dests))
                                                  if i not in {t.dest_index for t in targets})))
            if targets:
                self.objects.append(ObjectJob(info=info, targets=targets))
            else:
                self.skipped += 1
        if req.delete:
            names = {self.source.relative(o.key) for o in listing.objects} | listing.kept_back
            dest_only = DestOnly(self.dests, filters)
            for i, d in enumerate(self.dests):
                for key in sorted(present[i]):
                    if key[len(d.base):] not in names:
                        dest_only(i, present[i][key])
            self.deletions = dest_only.deletions
            check_limit(self.deletions, req.max_delete)
            for i in sorted({x.dest_index for x in self.deletions}):
                probe_delete(self.dests[i])
        return listing.requests, None if present is None else [len(p) for p in present]

    def _take_listing(self, doc: dict) -> tuple[RequestCounts, list[int] | None]:
        """A full listing as the client's :meth:`prepare` made it (:meth:`handoff`): its decisions,
        deletions and request counts, so that the coordinator does not list the stores again."""
        for info, rel, copy, up_to_date in doc["decisions"]:
            info = ObjectInfo(**info)
            self._decisions.append(Decision(info, rel, tuple(copy), tuple(up_to_date)))
            if copy:
                self.objects.append(ObjectJob(info=info, targets=[
                    Target(dest_index=i, key=self.dests[i].key_for(rel), multipart=False) for i in copy]))
            else:
                self.skipped += 1
        self.deletions = [Deletion(*d) for d in doc["deletions"]]
        return RequestCounts(**doc["requests"]), doc["present"]

    def handoff(self) -> dict:
        """What :meth:`prepare` read and chose that the job's coordinator would otherwise read and
        choose again (the ``prepared`` argument of its :class:`Transfer`): the plan (solving one may
        take seconds) and its predicted cost (counting a listing's requests again took ~50 ms per
        5,000 objects of the coordinator's start), and a streaming job's first listing page and the
        token of the next, or the whole listing of a job that lists in full first (filters, mirror, ``max_cost_usd``, server-side
        copies: its decisions, deletions and request counts, and the server-side copies' probed
        ways; listing the stores again took as long as the first time, minutes for millions of
        objects), and the source and each destination as the client found them (region and capabilities,
        and a destination's root, key prefix and the unfinished uploads an earlier run left there: a
        coordinator on a remote fleet reaches it only through its gateways, one on this host opens a
        store only when it calls it)."""
        doc: dict = {"plan": self.plan.to_dict(), "estimate": self.estimate.to_dict(),
                     "source": {"region": self.source.region,
                                "capabilities": capabilities_doc(self.source.store.capabilities)},
                     "dests": [{"root": d.store.root_uri, "base": d.base, "exact_key": d.exact_key,
                                "region": d.region, "capabilities": capabilities_doc(d.store.capabilities),
                                "pending": pending_uploads(d)} for d in self.dests]}
        if self.ways:
            doc["ways"] = {str(i): [w.by, w.parts] for i, w in self.ways.items()}
        if self.streaming:
            doc.update(next_token=self._next_token, first_page=[_info_doc(o) for o in self._first])
        else:
            listed, present = self._listed
            doc["listing"] = {"decisions": [[_info_doc(d.info), d.rel, d.copy, d.up_to_date] for d in self._decisions],
                              "deletions": [[x.dest_index, x.key, x.size] for x in self.deletions],
                              "requests": dataclasses.asdict(listed), "present": present}
        return doc

    def _destinations_through_gateways(self, uris: list, handed: dict | None) -> list[Destination]:
        """A remote fleet's coordinator's destinations (it holds none of their credentials): each as
        the client found it, reached through ``POST /store`` on its region's gateways."""
        found = (handed or {}).get("dests")
        if not isinstance(found, list) or len(found) != len(uris):
            raise BadOptionError("the job document does not say how the client found the destinations",
                                 hint="start the job with the same skyplane-provider version on the client and the "
                                      "fleet")
        return [Destination(uri, GatewayStore(d["root"], capabilities=capabilities_from(d["capabilities"]),
                                              region=d["region"], clients=self._store_clients(d["region"])),
                            d["base"], d["exact_key"], d["region"]) for uri, d in zip(uris, found)]

    def _store_clients(self, region: str) -> Callable[[], list[GatewayClient]]:
        """The control clients of ``region``'s living gateways, asked anew at each call."""
        return lambda: [c for gid, c in self._gateway_clients().items() if region_of(gid) == region]

    def _gateway_clients(self) -> dict[str, GatewayClient]:
        """The fleet's control clients by gateway id: the dispatcher's once it runs (it drops dead
        gateways), else a handed fleet's (a remote coordinator's before it dispatches), else none."""
        if self.dispatcher is not None:
            return dict(self.dispatcher.clients)
        if isinstance(self._provisioner, HandedProvisioner) and not self._handed_clients:
            self._handed_clients = {g.gateway_id: g.client() for g in self._provisioner.fleet.gateways}
        return dict(self._handed_clients)

    def _store_roots(self) -> dict[str, list[str]]:
        """The stores each region's gateways open for their own steps: the source where they read it,
        the destinations of their region, and of the regions they write for, where they write
        (relays: none)."""
        roots: dict[str, list[str]] = {}
        for region, program in self.plan.programs().items():
            mine = roots.setdefault(region, [])
            if any(p.source == "read" for p in program.partitions.values()):
                mine.append(self.source.store.root_uri)
            if any(p.write for p in program.partitions.values()):
                writes = {region, *program.writes_for}
                mine += [d.store.root_uri for d in self.dests if d.region in writes]
        return roots

    @property
    def directory(self) -> Path:
        """The job's directory: its manifest and, by default, its report."""
        return skyplane_home() / "jobs" / self.job_id

    def _fingerprint(self) -> dict:
        """What makes a job the same job: a manifest is resumed only by the transfer that wrote it."""
        r = self.request
        return {"src": r.src, "dsts": list(r.dsts), "recursive": r.recursive, "chunk_size": r.chunk_size}

    def dry_run(self) -> DryRun:
        """Everything :meth:`prepare` does (list with the filters, diff, plan, price), then what a run
        would do, moving and deleting nothing and starting no gateway. A budget
        (``max_cost_usd``) or deletion limit the job exceeds raises as the run would."""
        if self.plan is None:
            self.prepare()
            drop_ahead(self.job_id)  # a dry run launches nothing
        return DryRun.of(self)

    # -- phase 2: the job, run by its coordinator --------------------------------------------------
    def start(self) -> TransferHandle:
        """Prepare (if not done yet: bad input fails here), launch the job's coordinator and return
        its handle at once. The ``progress`` callback, if any, is the handle's first subscriber."""
        if self._in_process:
            raise BadOptionError("a job started with a Provisioner object cannot run in a coordinator process",
                                 hint="pass the provisioner's name and provisioner_settings in the request, "
                                      "or call execute() to run the transfer in this process")
        if self.plan is None:
            self.prepare()
        self._refuse_dry_run()
        token = secrets.token_urlsafe(32)
        request = dataclasses.replace(self.request, job_id=self.job_id)
        if self._provisioner.coordinator_on_fleet:
            # The coordinator's host gets the credentials of the stores the coordinator opens itself: the
            # source it lists and the state_uri's store. It reaches the destinations through their
            # gateways, which alone get their credentials (docs/credentials.md, "Who holds what").
            request = dataclasses.replace(request, credentials=narrow(request.credentials, self._coordinator_roots()))
        document = {"request": request.to_dict(), "token": token, "result_linger": RESULT_LINGER,
                    "checked": True, "prepared": self.handoff()}
        fleet = None
        if self._provisioner.coordinator_on_fleet:
            # Only this process can reach the hosts (the SSH keys stay here): it starts the fleet, and the
            # coordinator on the source region's gateway host drives it.
            fleet = self._provision()
            document.update(coordinator_region=self.plan.src,
                            hourly_prices={r: self._provisioner.hourly_price(r) for r in self.plan.gateways})
        try:
            address = self._provisioner.launch_coordinator(self.job_id, document, fleet)
        except BaseException:
            if fleet is not None:
                fleet.teardown()
            raise
        finally:
            drop_ahead(self.job_id)  # not used (a provisioner that launched it otherwise, or failed)
        if fleet is not None:
            fleet.hand_over()
            self.fleet = fleet  # reap() clears its hosts once the job ended, when this process is still there
        from .handle import TransferHandle

        self.handle = TransferHandle(self.job_id, address["url"], token, address.get("cert"))
        log.info("job %s: coordinator at %s", self.job_id, address["url"])
        if self._stop.is_set():  # cancelled before it started
            self.handle.cancel()
        if self.credential_sources:
            self.handle.keep_credentials(self.credential_sources, started_with=self.request.credentials,
                                         interval=self.renew_every)
        if self.progress is not None:
            self.handle.subscribe(self.progress)
        return self.handle

    def _coordinator_roots(self) -> list[str]:
        """The stores a coordinator on a remote fleet opens itself: the source, and the state_uri's."""
        return [self.source.store.root_uri] + ([self.state.store.root_uri] if self.state is not None else [])

    def run(self) -> TransferStats:
        """``start().result()``: the stats, or the job's ``SkyplaneError``. Anything that interrupts
        the wait (Ctrl-C, a task's timeout) cancels the job and waits for its teardown first.
        With a Provisioner object the transfer runs in this process (``execute()``)."""
        if self._in_process:
            return self.execute()
        handle = self.start()
        try:
            return handle.result(last=True)  # the handle never left this call: nobody else reads the outcome
        except BaseException:
            handle.stop(CANCEL_GRACE)
            raise
        finally:
            self.reap()

    def reap(self) -> None:
        """Once the job ended: remove what the fleet that :meth:`start` handed to a coordinator on its
        hosts left there (``ssh``: the gateways' directories; the coordinator stopped the gateways,
        and a coordinator still running is stopped). :meth:`run` calls it; a client that waits on
        the handle itself calls it at its end. Nothing to do for other fleets."""
        if self.fleet is not None:
            self.fleet.teardown()

    # -- the pipeline, in this process (the coordinator's) ----------------------------------------
    def execute(self) -> TransferStats:
        """Run the whole transfer here and return its stats; raises a ``SkyplaneError`` on failure (a
        ``TransferError`` naming the first few failed objects when some could not be copied: the
        report lists them all)."""
        self._runs_here = True  # prepare() starts no coordinator process: the job runs here
        if self.plan is None:
            self.prepare()
        drop_ahead(self.job_id)  # one a prepare() before this call started, or a caller's
        self._refuse_dry_run()
        started = time.monotonic()
        manifest, feed_manifest, report = self._open_records()
        self.ledger = Ledger(report, list(self.request.dsts))
        routed, copied = split(self.objects, self.dests, self.plan.server_side) if self.plan.server_side \
            else (self.objects, [])
        copier = Copier(self.source, self.dests, self.ways, chunk_size=self.request.chunk_size, stop=self._stop,
                        job_id=self.job_id, progress=None if routed else self.progress)
        side = ThreadPoolExecutor(max_workers=1, thread_name_prefix="server-side")
        caps: RegionCaps | None = None
        keeper: CredentialKeeper | None = None
        succeeded = False
        try:
            if self.state is not None:
                self.state.start()
            # Server-side copies run beside the gateways' (they share no resource but the stores).
            copying = side.submit(copier.run, copied) if copied else None
            self.feed = Feed(source=self.source, dests=self.dests, first_page=self._first,
                             next_token=self._next_token, sync=self.request.sync, chunk_size=self.request.chunk_size,
                             sizing=self._sizing, max_chunk_bytes=self._max_chunk_bytes,
                             weights=self.plan.partition_weights, manifest=feed_manifest,
                             resume=self.request.resume, ledger=self.ledger, stop=self._stop,
                             decisions=None if self.streaming else self._routed_decisions(routed),
                             pending=self._handed_pending()).start()
            self._first = []  # the feed owns the page now
            if self.feed.wait_first():  # else nothing goes through gateways: no fleet
                self.fleet = self._provision()
                wiring = StoppableCalls(self._stop)
                try:
                    clients = wiring(wire_peers, self.fleet, self.plan)
                finally:
                    wiring.close()
                if self.request.bwlimit is not None:
                    caps = RegionCaps(self.fleet, self.request.bwlimit, counters=self._gateway_counters).start()
                mark = self._phase("provision", started)
                self.dispatcher = Dispatcher(
                    job_id=self.job_id, plan=self.plan, fleet=self.fleet, clients=clients, feed=self.feed,
                    source=self.source, dests=self.dests, manifest=manifest, ledger=self.ledger, stop=self._stop,
                    progress=self.progress)
                if self.credential_sources:
                    keeper = CredentialKeeper(self.credential_sources, self.push_credentials,
                                              started_with=self.request.credentials, interval=self.renew_every).start()
                self.dispatcher.run()
                self._phase("move", mark)
            else:
                self.feed.join()
                self._phase("move", started)
            if self.feed.listing_seconds is not None:
                self.phases["listing"] = self.feed.listing_seconds
            if copying is not None:
                self._server_side_done(copier, copying.result(), manifest)
            self.paths = {SERVER_SIDE: copier.verification.objects, GATEWAYS: self.ledger.verification.objects}
            self._abort_recorded(manifest)  # uploads of objects no longer listed (a resumed job)
            report.flush()
            if report.counts["failed"]:
                exc = TransferError(f"{report.counts['failed']} object copies failed: {report.failure_text()}",
                                    hint=f"the report {report.path} lists every object; fix the cause and "
                                         "resume the job (copies done are skipped)")
                exc.failed_objects = [{"key": k, "dest": d, "error": e} for k, d, e in report.failures]
                raise exc
            # Only once every copy is verified, and while the fleet runs: a remote coordinator deletes
            # through the destination's gateways.
            self.deleted = delete_all(self.deletions, self.dests)
            succeeded = True
        except BaseException:
            self._stop.set()  # the listing and the server-side copies stop too
            if self.feed is not None:
                self.feed.join(timeout=30)
            side.shutdown(wait=True)
            copier.abort(copied)
            self._abort_recorded(manifest)
            if self.fleet is not None:
                for g in self.fleet.gateways:
                    log.debug("log of %s:\n%s", g.gateway_id, self.fleet.logs(g.gateway_id, tail=40))
            raise
        finally:
            side.shutdown(wait=False)
            if keeper is not None:
                keeper.stop()
            if caps is not None:
                caps.stop()
            if self.fleet is not None:
                self.fleet.teardown()
                self._reap_orphans()
            report.close()
            manifest.close()
            feed_manifest.close()
            if self.state is not None:
                self.state.stop()
                if not succeeded:
                    self.state.upload()  # what a resume continues from, as the job ended
                self.state.close()
        self._forget_manifest()  # done: nothing to resume (the report stays)
        if self.state is not None:
            self.state.delete()
        return self._stats(started, routed, copied)

    def _store_servers_here(self) -> int:
        """Servers of the job's stores on this host, where a fleet on this host runs (an emulator or an
        S3-compatible server on a loopback address): they need this host's CPUs as its gateways do."""
        if not self._provisioner.loopback_fleet:
            return 0
        roots = {self.source.store.root_uri, *(d.store.root_uri for d in self.dests)}
        found = {(e.hostname, e.port) for e in (endpoint(r, self.request.credentials) for r in roots)
                 if e is not None and is_loopback(e.hostname or "")}
        return len(found)

    def _handed_pending(self) -> list[dict[str, list[str]]] | None:
        """The destinations' unfinished uploads as the client listed them (:meth:`handoff`), or None."""
        found = (self._prepared or {}).get("dests") or []
        return [d["pending"] for d in found] if found and all("pending" in d for d in found) else None

    def _routed_decisions(self, routed: list[ObjectJob]) -> list[Decision]:
        """A full listing's decisions, each object's copies narrowed to those going through gateways
        (the server-side ones are the :class:`Copier`'s; the feed still clears the uploads an earlier
        run left of their keys)."""
        going = {(o.info.key, t.dest_index) for o in routed for t in o.targets}
        return [Decision(d.info, d.rel, tuple(i for i in d.copy if (d.info.key, i) in going), d.up_to_date)
                for d in self._decisions]

    def _open_records(self) -> tuple[Manifest, Manifest, Report]:
        """The job's manifest (one connection for the dispatch loop, one for the listing thread) and
        report. A job that is not resumed starts both afresh."""
        req = self.request
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = self.directory / MANIFEST
        report_file = report_path(req.report_uri) if req.report_uri else self.directory / REPORT
        if not req.resume:
            self._forget_manifest()
            report_file.unlink(missing_ok=True)
        elif not path.exists():
            log.info("job %s has no manifest to resume from: copying everything", self.job_id)
        manifest = Manifest(path, self._fingerprint())
        # What `skyplane-provider resume` needs on a host without the job's resume.json (state_uri).
        manifest.note("request", json.dumps(resumable_request(req.redacted())))
        return manifest, manifest.another(), Report(report_file)

    def _forget_manifest(self) -> None:
        path = self.directory / MANIFEST
        for name in (path, path.with_name(MANIFEST + "-wal"), path.with_name(MANIFEST + "-shm")):
            name.unlink(missing_ok=True)

    def _abort_recorded(self, manifest: Manifest) -> None:
        """Abort every upload the manifest records as begun and not completed: none is left open."""
        manifest.commit()
        for dest, key, upload_id in manifest.uploads():
            abort_upload(self.dests[dest].store, key, upload_id)
            manifest.forget_upload(dest, key)
        manifest.commit()

    def _refuse_dry_run(self) -> None:
        if self.request.dry_run:
            raise BadOptionError("this request is a dry run: it moves nothing",
                                 hint="call Transfer.dry_run() for what it would do, or drop dry_run to run it")

    def push_credentials(self, entries: dict[str, dict]) -> int:
        """Hand the job running here renewed entries of its credentials document (``{key: entry}``,
        keys as in the document: a store root URI or a scheme); the coordinator's ``POST
        /job/credentials`` calls it. A malformed entry raises here, before any gateway sees it. The
        stores this process opened itself are opened anew with the entries theirs; each gateway that
        holds store credentials takes the entries of the stores its own steps open (``POST
        /credentials``; relays hold none), and gateways started later in place of dead ones start
        with them. Nothing else is kept: a remote coordinator passes a destination's entries on to
        its gateways without holding them. Returns how many gateways took entries; one that cannot
        be reached is logged and skipped (it is dying: the dispatcher replaces it)."""
        entries = check_document(entries)
        own = [s for s in (self.source, *self.dests) if s is not None and not isinstance(s.store, GatewayStore)]
        mine = {k: v for k, v in entries.items() if any(covers(k, side.store.root_uri) for side in own)}
        merged = {**self.request.credentials, **mine}
        # A store not opened yet opens with the request's document, which takes the entries below.
        reopened = {id(side): open_store(side.store.root_uri, merged) for side in own
                    if any(covers(k, side.store.root_uri) for k in mine)
                    and not (isinstance(side.store, DeferredStore) and not side.store.opened)}
        for side in own:
            if id(side) in reopened:
                side.store = reopened[id(side)]
        self.request.credentials.update(mine)
        roots = self._store_roots() if self.plan is not None and self.source is not None else {}
        by_region = {region: {k: v for k, v in entries.items() if any(covers(k, r) for r in rs)}
                     for region, rs in roots.items()}
        for region, held in self._held.items():
            held.update(by_region.get(region, {}))  # in place: the gateway specs share it
        took = 0
        for gid, client in self._gateway_clients().items():
            theirs = by_region.get(region_of(gid))
            if not theirs:
                continue
            try:
                client.push_credentials(theirs)
                took += 1
            except SkyplaneError as exc:
                log.warning("gateway %s did not take the renewed credentials: %s", gid, exc)
        return took

    def cancel(self) -> None:
        """Ask a running transfer to stop (its coordinator, when started); it tears down and raises."""
        self._stop.set()
        if self.handle is not None:
            self.handle.cancel()

    def _provision(self) -> Fleet:
        req = self.request
        self._held = {region: narrow(req.credentials, roots) for region, roots in self._store_roots().items()}
        specs = gateway_specs(self.plan, self.job_id, JobSecrets(), compress=req.compress, encrypt=req.encrypt,
                              credentials=req.credentials, by_region=self._held,
                              max_chunk_bytes=self._max_chunk_bytes, bwlimit=req.bwlimit,
                              loopback_fleet=self._provisioner.loopback_fleet,
                              local_stores=all(r.startswith("file://") for r in (
                                  self.source.store.root_uri, *(d.store.root_uri for d in self.dests))),
                              workers=workers_for(len(self.objects), sum(o.info.size for o in self.objects),
                                                  listed_in_full=not (self.streaming and self._next_token),
                                                  store_servers=self._store_servers_here(),
                                                  cpus=len(os.sched_getaffinity(0)),
                                                  gateways=sum(self.plan.gateways[r] for r in self.plan.programs())))
        try:
            return self._provisioner.provision(self.job_id, specs, stop=self._stop)
        except ProvisionError:
            if self._stop.is_set():  # the start ended on the cancel: say so as every cancelled job does
                raise cancelled() from None
            raise

    def _server_side_done(self, copier: Copier, entries: list[dict], manifest: Manifest) -> None:
        """The server-side copies into the job's verification, manifest, report and paths."""
        roots = [d.store.root_uri for d in self.dests]
        for entry in entries:
            info = ObjectInfo(entry["key"], entry["size"])
            for c in entry["copies"]:
                dest = roots.index(c["store"])
                manifest.record_copy(info.key, dest, c["key"], info.size, c["verified_by"])
                self.ledger.copied(info, dest, c["key"], c["verified_by"], count=False)
        manifest.commit()
        self.verification.add(copier.verification)
        if copier.verification.objects:
            log.info("job %s: %d copies made server-side by the stores, %d through gateways", self.job_id,
                     copier.verification.objects, self.ledger.verification.objects)

    def _gateway_counters(self) -> dict[str, dict]:
        """The counters of each gateway as the dispatcher last read them from ``GET /status``."""
        return dict(self.dispatcher.counters) if self.dispatcher else {}

    def _reap_orphans(self) -> None:
        """After the fleet is gone: remove what its killed gateways left half-written in the
        destinations (temp files of a local directory on this host), whatever the outcome."""
        for d in self.dests:
            try:
                d.store.reap_orphans()
            except (SkyplaneError, OSError) as exc:
                log.warning("could not remove what dead gateways left in %s: %s", d.store.root_uri, exc)

    def _phase(self, name: str, since: float) -> float:
        now = time.monotonic()
        self.phases[name] = round(now - since, 3)
        return now

    def _stats(self, started: float, routed: list[ObjectJob], copied: list[ObjectJob]) -> TransferStats:
        seconds = max(time.monotonic() - started, 1e-9)
        ledger, d = self.ledger, self.dispatcher
        # Objects copied server-side only (none of their copies went through gateways) count here once.
        through_gateways = {o.info.key for o in routed}
        alone = [o for o in copied if o.info.key not in through_gateways]
        objects = ledger.objects_copied + len(alone)
        moved = ledger.bytes_copied + sum(o.info.size for o in alone)
        self.verification.add(ledger.verification)
        wire = d.counter_sum("bytes_sent_wire", self.plan.src) if d else 0
        vm_seconds = self.fleet.vm_seconds() if self.fleet else 0.0
        vm_usd = self._provisioner_vm_usd(vm_seconds)
        egress_pred = self.plan.egress_usd(moved)
        counters = d.counters if d else {}
        sent = wire_bytes_by_edge(counters)
        first_byte = round(d.first_written - started, 3) if d and d.first_written else None
        return TransferStats(
            job_id=self.job_id, src=self.request.src, dsts=list(self.request.dsts),
            objects=objects, bytes=moved, bytes_on_wire=wire, seconds=round(seconds, 3),
            gbps=round(moved * 8 / seconds / 1e9, 4), phases=dict(self.phases),
            move_gbps=round(moved * 8 / self.phases["move"] / 1e9, 4) if self.phases.get("move") else 0.0,
            verified=True, verification=self.verification.to_dict(),
            retries=d.retries if d else 0, gateways_replaced=len(d.replaced) if d else 0, plan=self.plan.summary(),
            cost_usd=round(egress_pred + vm_usd, 6), egress_usd_predicted=round(egress_pred, 6),
            egress_usd_actual=round(egress_usd_actual(self.plan, counters), 6), vm_usd=round(vm_usd, 6),
            skipped_objects=ledger.objects_skipped if self.streaming else self.skipped,
            deleted_objects=self.deleted, chunks=d.chunk_count if d else 0,
            provisioner=self.request.provisioner, paths=dict(self.paths),
            route=[{"src": e.src, "dst": e.dst, "gbps": round(e.gbps, 3), "bytes_sent": sent.get((e.src, e.dst), 0)}
                   for e in self.plan.edges],
            report=ledger.report.summary(), first_byte_seconds=first_byte, resumed_copies=ledger.resumed_copies,
            work_skipped=work_skipped(counters))

    def _provisioner_vm_usd(self, vm_seconds: float) -> float:
        if not vm_seconds:
            return 0.0
        price = self._provisioner.hourly_price(self.plan.src)
        return price * vm_seconds / 3600.0


def _info_doc(info: ObjectInfo) -> dict:
    """An :class:`ObjectInfo` as JSON (``ObjectInfo(**doc)`` again), its unset fields left out."""
    return {k: v for k, v in info.to_dict().items() if v is not None}


def copy(src: str, dst: str | list[str], *, progress: Callable[[Progress], None] | None = None,
         provisioner: str | Provisioner = "local", **options) -> TransferStats | DryRun:
    """Copy ``src`` to one or more destinations through a gateway fleet; see :class:`TransferRequest`
    for the options (recursive, sync, solver, throughput_gbps, max_cost_per_gb, compress, encrypt,
    chunk_size, gateways_per_region, connections, src_region, dst_regions, credentials, plan,
    include / exclude / filter / min_size / max_size / min_age / max_age, max_cost_usd, delete,
    max_delete, ...). With ``dry_run=True``: the :class:`DryRun` of what it would do, nothing moved."""
    prov_obj = provisioner if isinstance(provisioner, Provisioner) else None
    name = provisioner.name if prov_obj else provisioner
    try:
        req = TransferRequest(src=src, dsts=[dst] if isinstance(dst, str) else list(dst), provisioner=name, **options)
    except TypeError as exc:
        raise BadOptionError(f"unknown transfer option: {exc}") from exc
    transfer = Transfer(req, provisioner=prov_obj, progress=progress)
    return transfer.dry_run() if req.dry_run else transfer.run()


def sync(src: str, dst: str | list[str], **options) -> TransferStats | DryRun:
    """Like :func:`copy`, but only objects missing or different at the destination move."""
    return copy(src, dst, sync=True, **options)


__all__ = ["DryRun", "Transfer", "TransferRequest", "TransferStats", "copy", "sync", "SkyplaneError"]
