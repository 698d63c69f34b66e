"""The replica catalogue: which copies of which dataset exist, where, and which may be read.

One JSON document (see :mod:`skyplane_provider.broker.document` for where it may live and how it is
updated atomically)::

    {"format": 1,
     "default_region": "aws:us-east-1",           # caller region when none is given (may be null)
     "datasets": {
       "imagenet": {
         "updated_at": "2026-11-22T21:40:00Z",
         "replicas": [
           {"uri": "s3://raw-us-east-1/imagenet/", "region": "aws:us-east-1", "state": "verified",
            "origin": true, "bytes": 1234, "objects": 3, "manifest_sha256": "9f2c...",
            "updated_at": "2026-11-22T21:40:00Z"},
           ...]}}}

A replica's ``state`` is ``copying`` (a publish is writing it), ``verified`` (its copy was verified:
readable) or ``stale`` (a publish failed or left it out: not readable). ``manifest_sha256`` fingerprints
the replica's own listing (see :func:`skyplane_provider.broker.manifest.manifest_of`).

Where the catalogue is: the ``location`` argument, else ``$SKYPLANE_CATALOGUE``, else
``$SKYPLANE_HOME/catalogue.json`` (``~/.skyplane/catalogue.json``).
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Callable

from gateway.stores.uri import parse_uri
from planner.errors import BadOptionError, NotFoundError, StoreError
from skyplane_provider.paths import skyplane_home

from .document import JsonDocument, open_document

FORMAT = 1
STATES = ("copying", "verified", "stale")
ENV_CATALOGUE = "SKYPLANE_CATALOGUE"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def check_dataset_name(name: str) -> str:
    """Dataset names become the first segment of ``sky://NAME/key``: letters, digits, ``.``, ``_``, ``-``."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise BadOptionError(f"bad dataset name {name!r}",
                             hint="use 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return name


def replica_uri(uri: str) -> str:
    """The canonical form of a replica's location: a prefix URI that ends in ``/``."""
    parsed = parse_uri(uri)
    text = str(parsed)
    return text if text.endswith("/") else text + "/"


@dataclass
class Replica:
    """One copy of a dataset: a prefix in one store, in one region."""

    uri: str
    region: str
    state: str = "copying"
    origin: bool = False  # the copy the dataset was published from
    bytes: int = 0
    objects: int = 0
    manifest_sha256: str | None = None
    updated_at: str = field(default_factory=utc_now)

    def __post_init__(self) -> None:
        if self.state not in STATES:
            raise BadOptionError(f"unknown replica state {self.state!r}", hint=f"one of {', '.join(STATES)}")
        self.uri = replica_uri(self.uri)

    @property
    def readable(self) -> bool:
        return self.state == "verified"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Replica":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)


@dataclass
class Dataset:
    """A named dataset and its replicas."""

    name: str
    replicas: list[Replica] = field(default_factory=list)
    updated_at: str = field(default_factory=utc_now)

    def replica(self, uri: str) -> Replica | None:
        uri = replica_uri(uri)
        return next((r for r in self.replicas if r.uri == uri), None)

    def readable(self) -> list[Replica]:
        """Replicas whose copy was verified, in catalogue order (origin first)."""
        return [r for r in self.replicas if r.readable]

    def put(self, replica: Replica) -> None:
        """Add ``replica`` or replace the one at the same URI; the origin stays first."""
        self.replicas = [r for r in self.replicas if r.uri != replica.uri] + [replica]
        self.replicas.sort(key=lambda r: not r.origin)
        self.updated_at = utc_now()

    def to_dict(self) -> dict:
        return {"updated_at": self.updated_at, "replicas": [r.to_dict() for r in self.replicas]}

    @classmethod
    def from_dict(cls, name: str, d: dict) -> "Dataset":
        return cls(name=name, replicas=[Replica.from_dict(r) for r in d.get("replicas", [])],
                   updated_at=d.get("updated_at", ""))


@dataclass
class CatalogueState:
    """The whole catalogue document as objects."""

    datasets: dict[str, Dataset] = field(default_factory=dict)
    default_region: str | None = None

    def dataset(self, name: str) -> Dataset:
        """The dataset ``name``; ``NotFoundError`` naming the known ones otherwise."""
        try:
            return self.datasets[name]
        except KeyError:
            known = ", ".join(sorted(self.datasets)) or "none"
            raise NotFoundError(
                f"no dataset {name!r} in the catalogue (known: {known})",
                hint="publish it first: skyplane-provider publish SRC --dataset NAME --to DST") from None

    def to_dict(self) -> dict:
        return {"format": FORMAT, "default_region": self.default_region,
                "datasets": {n: d.to_dict() for n, d in sorted(self.datasets.items())}}

    @classmethod
    def from_dict(cls, d: dict | None, where: str = "catalogue") -> "CatalogueState":
        if not d:
            return cls()
        if d.get("format", FORMAT) > FORMAT:
            raise StoreError(f"{where} has format {d['format']}, newer than this version understands ({FORMAT})",
                             hint="upgrade skyplane-provider")
        try:
            return cls(datasets={n: Dataset.from_dict(n, v) for n, v in d.get("datasets", {}).items()},
                       default_region=d.get("default_region"))
        except (TypeError, AttributeError, BadOptionError) as exc:
            raise StoreError(f"{where} is not a valid replica catalogue: {exc}",
                             hint="restore it from a backup or move it away to start a new one") from exc


def catalogue_location(location: str | None = None) -> str:
    """The argument, else ``$SKYPLANE_CATALOGUE``, else ``$SKYPLANE_HOME/catalogue.json``."""
    return location or os.environ.get(ENV_CATALOGUE) or str(skyplane_home() / "catalogue.json")


class Catalogue:
    """The replica catalogue at ``location`` (see :func:`catalogue_location`).

    ``credentials`` is a credentials document (see ``gateway.stores``) for a catalogue kept in a bucket.
    """

    def __init__(self, location: str | None = None, *, credentials: dict | None = None) -> None:
        self._doc: JsonDocument = open_document(catalogue_location(location), credentials)

    @property
    def location(self) -> str:
        return self._doc.location

    def read(self) -> CatalogueState:
        """A snapshot of the catalogue (empty when it does not exist yet)."""
        return CatalogueState.from_dict(self._doc.read(), self.location)

    def dataset(self, name: str) -> Dataset:
        return self.read().dataset(name)

    def update(self, change: Callable[[CatalogueState], None]) -> CatalogueState:
        """Apply ``change`` (which edits the state in place; it may run more than once) atomically."""
        def apply(doc: dict | None) -> dict:
            state = CatalogueState.from_dict(doc, self.location)
            change(state)
            return state.to_dict()

        return CatalogueState.from_dict(self._doc.update(apply), self.location)

    def put_replicas(self, name: str, replicas: list[Replica]) -> Dataset:
        """Record ``replicas`` of dataset ``name`` (created if new), replacing those at the same URIs."""
        check_dataset_name(name)

        def change(state: CatalogueState) -> None:
            dataset = state.datasets.setdefault(name, Dataset(name))
            for r in replicas:
                dataset.put(r)

        return self.update(change).dataset(name)

    def set_default_region(self, region: str | None) -> None:
        def change(state: CatalogueState) -> None:
            state.default_region = region

        self.update(change)
