"""Publishing a dataset: one multicast sync from the source to every destination, then the catalogue.

    from skyplane_provider.broker import publish
    result = publish("s3://raw-us-east-1/imagenet/", ["gs://lake-us-central1/imagenet/",
                     "az://euwest/lake/imagenet/"], dataset="imagenet", dst_regions=[None, "azure:westeurope"],
                     solver="steiner")

Steps: check everything (catalogue readable, request valid, stores reachable, route planned) before
any gateway starts; record the destinations as ``copying``; run the transfer (sync semantics, so a
re-publish moves only new or changed objects); list every replica and record it as ``verified`` only
if the transfer verified its copy and the replica holds every source object with the source's size.
The source itself is recorded as the origin replica. Replicas of the dataset left out of this publish
stay ``verified`` only if they still hold the source's objects, else they become ``stale``. A failed
transfer leaves its destinations ``stale`` (they may hold part of the new data).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Callable

from planner.errors import BadOptionError, SkyplaneError, VerificationError
from skyplane_provider.provisioners.base import Provisioner
from skyplane_provider.transfer import Progress, Transfer, TransferRequest, TransferStats

from .catalogue import Catalogue, CatalogueState, Dataset, Replica, check_dataset_name, replica_uri
from .manifest import ReplicaListing, list_replica

log = logging.getLogger(__name__)


@dataclass
class PublishResult:
    """What a publish did: the replicas as now recorded, and the transfer's stats."""

    dataset: str
    catalogue: str
    replicas: list[Replica]
    stats: TransferStats

    def to_dict(self) -> dict:
        """JSON-ready (an XCom value, a Prefect result)."""
        return {"dataset": self.dataset, "catalogue": self.catalogue,
                "replicas": [r.to_dict() for r in self.replicas], "transfer": self.stats.to_dict()}


class Publication:
    """One publish of ``dataset`` (see the module doc). Like :class:`Transfer`: ``prepare()`` checks
    everything, ``run()`` does it, ``cancel()`` (any thread) stops it. The request is run as a
    recursive sync whatever its ``sync``/``recursive`` fields say."""

    def __init__(self, request: TransferRequest, dataset: str, *, catalogue: str | None = None,
                 provisioner: Provisioner | None = None,
                 progress: Callable[[Progress], None] | None = None) -> None:
        self.dataset = check_dataset_name(dataset)
        self.request = replace(request, sync=True, recursive=True)
        self.catalogue = Catalogue(catalogue, credentials=self.request.credentials)
        self.transfer = Transfer(self.request, provisioner=provisioner, progress=progress)
        self._prepared = False

    def prepare(self) -> "Publication":
        """Read the catalogue and prepare the transfer; raises on any bad input, before gateways start."""
        self.catalogue.read()
        self.transfer.prepare()
        if self.transfer.source.single:
            raise BadOptionError(f"{self.request.src} is one object; a dataset is a prefix or a directory",
                                 hint="publish the prefix that holds it, e.g. s3://bucket/dataset/")
        self._prepared = True
        return self

    def cancel(self) -> None:
        self.transfer.cancel()

    def run(self) -> PublishResult:
        """Publish and return the result; raises ``VerificationError`` (after recording the replicas)
        when a destination does not hold the source's objects."""
        if not self._prepared:
            self.prepare()
        t = self.transfer
        origin = Replica(replica_uri(str(t.source.uri)), t.source.region, state="verified", origin=True)
        copies = [Replica(replica_uri(str(d.uri)), d.region, state="copying") for d in t.dests]
        self.catalogue.put_replicas(self.dataset, copies)
        try:
            stats = t.run()
        except BaseException:
            self._mark_stale(copies)
            raise
        source = list_replica(origin.uri, self.request.credentials)
        recorded = [_checked(origin, source, source)]
        for r in copies:
            recorded.append(_checked(r, source, self._listing(r), stats.verified))
        others = self._others({r.uri for r in recorded}, source)
        state = self.catalogue.update(lambda s: _record(s, self.dataset, recorded, others))
        result = PublishResult(self.dataset, self.catalogue.location, state.dataset(self.dataset).replicas, stats)
        bad = [r.uri for r in recorded if not r.readable]
        if bad:
            raise VerificationError(f"dataset {self.dataset!r}: {', '.join(bad)} do(es) not hold the source's "
                                    "objects after the transfer; recorded as stale",
                                    hint="publish again; only changed objects are copied")
        log.info("published %s: %s", self.dataset, ", ".join(f"{r.uri} ({r.region})" for r in recorded))
        return result

    def _listing(self, replica: Replica) -> ReplicaListing | None:
        try:
            return list_replica(replica.uri, self.request.credentials)
        except SkyplaneError as exc:
            log.warning("cannot list replica %s of %s: %s", replica.uri, self.dataset, exc)
            return None

    def _others(self, published: set[str], source: ReplicaListing) -> list[Replica]:
        """The dataset's other verified replicas, re-checked against the source's objects."""
        try:
            dataset = self.catalogue.dataset(self.dataset)
        except SkyplaneError:
            return []
        return [_checked(replace(r, origin=False), source, self._listing(r))
                for r in dataset.readable() if r.uri not in published]

    def _mark_stale(self, copies: list[Replica]) -> None:
        try:
            self.catalogue.put_replicas(self.dataset, [replace(r, state="stale") for r in copies])
        except SkyplaneError as exc:  # keep the transfer's error; this one only explains the catalogue
            log.error("could not mark the replicas of %s stale in %s: %s", self.dataset,
                      self.catalogue.location, exc)


def _checked(replica: Replica, source: ReplicaListing, listing: ReplicaListing | None,
             transfer_verified: bool = True) -> Replica:
    """``replica`` with its listing's figures, ``verified`` only if it holds every source object."""
    if listing is None:
        return replace(replica, state="stale")
    wrong = listing.missing_or_different(source)
    if wrong:
        log.warning("replica %s lacks or differs on %d source object(s), e.g. %s", replica.uri, len(wrong), wrong[0])
    ok = transfer_verified and not wrong
    return Replica(replica.uri, replica.region, state="verified" if ok else "stale", origin=replica.origin,
                   bytes=listing.bytes, objects=len(listing.objects), manifest_sha256=listing.manifest_sha256)


def _record(state: CatalogueState, name: str, replicas: list[Replica], others: list[Replica]) -> None:
    dataset = state.datasets.setdefault(name, Dataset(name))
    for r in list(dataset.replicas):
        if r.origin and r.uri != replicas[0].uri:
            dataset.put(replace(r, origin=False))
    for r in others + replicas:
        dataset.put(r)


def publish(src: str, dst: str | list[str], *, dataset: str, catalogue: str | None = None,
            progress: Callable[[Progress], None] | None = None, provisioner: str | Provisioner = "local",
            **options) -> PublishResult:
    """Publish ``src`` (a prefix or directory) as ``dataset`` to every destination and record the
    verified replicas in the catalogue (``catalogue``, else ``$SKYPLANE_CATALOGUE``, else
    ``$SKYPLANE_HOME/catalogue.json``). ``options`` are :class:`TransferRequest` fields (solver,
    max_cost_per_gb, throughput_gbps, src_region, dst_regions, credentials, chunk_size, ...)."""
    prov_obj = provisioner if isinstance(provisioner, Provisioner) else None
    name = provisioner.name if prov_obj else provisioner
    try:
        req = TransferRequest(src=src, dsts=[dst] if isinstance(dst, str) else list(dst), provisioner=name,
                              **options)
    except TypeError as exc:
        raise BadOptionError(f"unknown publish option: {exc}") from exc
    return Publication(req, dataset, catalogue=catalogue, provisioner=prov_obj, progress=progress).run()
