"""The Plan: the one value that the planner emits and the control plane and gateways act on.

A plan routes the data of one transfer from a source region to one or more destination regions.
The data is split into *partitions* (chunk ``i`` goes to a partition chosen by ``partition_weights``);
each partition travels on its own tree of region-to-region edges (a path for unicast). A gateway
therefore never splits a partition: it sends every chunk of a partition to every next hop of that
partition, and writes it locally when its region is a destination. Unicast multipath is expressed as
several partitions, one per path, weighted by the path's flow (as Cloudcast routes partitions on trees).

A plan is plain data: print it, save it (``to_json``), diff it, load it back (``from_json``).
``programs()`` turns it into one :class:`RegionProgram` per region, which every gateway of that
region interprets; gateways hold no routing logic of their own.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace

from planner.errors import PlanError

BYTES_PER_GB = 1e9  # cloud egress is priced per decimal GB


@dataclass(frozen=True)
class Edge:
    """Traffic from region ``src`` to region ``dst``.

    ``gbps`` is the planned rate on this edge, ``connections`` the total TCP connections over all
    gateway pairs of the two regions, ``partitions`` the partitions routed over it and
    ``cost_per_gb`` the egress price of the edge in USD per GB that crosses it.
    """

    src: str
    dst: str
    gbps: float
    connections: int
    partitions: tuple[int, ...] = (0,)
    cost_per_gb: float = 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["partitions"] = list(self.partitions)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Edge":
        return cls(
            src=d["src"],
            dst=d["dst"],
            gbps=float(d["gbps"]),
            connections=int(d["connections"]),
            partitions=tuple(int(p) for p in d.get("partitions", (0,))),
            cost_per_gb=float(d.get("cost_per_gb", 0.0)),
        )


@dataclass
class Plan:
    """A route for one transfer. See the module docstring for the partition model.

    ``cost_per_gb`` is the predicted egress cost in USD per GB of *source* data (all edges, all
    destinations); ``vm_cost_per_hour`` the hourly price of all gateways together. ``server_side``:
    destinations whose store copies the data from the source's store itself (no gateway, no route;
    :mod:`planner.server_side`); a plan with only those has no gateways at all.
    ``written_at_source``: destinations that the source region's gateways write themselves, with no
    gateway of their own and no hop (a fleet on one host: :meth:`on_one_host`).
    """

    src: str
    dsts: tuple[str, ...]
    solver: str
    gateways: dict[str, int]
    edges: list[Edge]
    throughput_gbps: float
    cost_per_gb: float
    vm_cost_per_hour: float = 0.0
    solve_seconds: float = 0.0
    partition_weights: tuple[float, ...] = (1.0,)
    notes: list[str] = field(default_factory=list)
    server_side: tuple[str, ...] = ()
    written_at_source: tuple[str, ...] = ()

    @property
    def routed(self) -> tuple[str, ...]:
        """The destinations the gateways deliver to (every one not copied server-side)."""
        return tuple(d for d in self.dsts if d not in self.server_side)

    @property
    def partitions(self) -> int:
        return len(self.partition_weights)

    @property
    def regions(self) -> list[str]:
        """Every region with gateways, source first, then in the order of ``gateways``."""
        return [self.src] + [r for r in self.gateways if r != self.src]

    def predicted_seconds(self, size_bytes: int) -> float:
        if self.throughput_gbps <= 0:
            return float("inf")
        return size_bytes * 8 / (self.throughput_gbps * 1e9)

    def egress_usd(self, size_bytes: int) -> float:
        return self.cost_per_gb * size_bytes / BYTES_PER_GB

    def egress_usd_sent(self, sent: dict[tuple[str, str], int]) -> float:
        """Egress in USD of the bytes that really crossed each edge: ``sent`` maps ``(src, dst)`` region
        pairs to the frame bytes the gateways of ``src`` sent to those of ``dst`` (relays included),
        each priced at its edge's ``cost_per_gb``. Bytes on a pair the plan has no edge for (none
        should exist: gateways send only along the plan's edges) are not priced."""
        price = {(e.src, e.dst): e.cost_per_gb for e in self.edges}
        return sum(n * price.get(pair, 0.0) for pair, n in sent.items()) / BYTES_PER_GB

    def vm_usd(self, seconds: float) -> float:
        return self.vm_cost_per_hour * seconds / 3600.0

    def cost_usd(self, size_bytes: int, seconds: float | None = None) -> float:
        """Egress plus VM cost for ``size_bytes`` (VM time predicted unless ``seconds`` is given)."""
        if seconds is None:
            seconds = self.predicted_seconds(size_bytes)
        return self.egress_usd(size_bytes) + self.vm_usd(seconds)

    def validate(self) -> None:
        """Check that every partition reaches every destination from the source on a tree.

        Raises :class:`PlanError` naming the first broken partition.
        """
        if not self.partition_weights or any(w < 0 for w in self.partition_weights):
            raise PlanError("plan has no partitions or a negative partition weight")
        if not set(self.server_side) <= set(self.dsts):
            raise PlanError("plan copies server-side to a region that is not one of its destinations")
        if not set(self.written_at_source) <= set(self.routed) - {self.src}:
            raise PlanError("plan writes at the source a region that is not one of its routed destinations")
        if any(e.dst in self.written_at_source or e.src in self.written_at_source for e in self.edges):
            raise PlanError("a destination written at the source has no edge: no gateway of its own receives")
        if self.server_side and not self.routed:
            if self.gateways or self.edges:
                raise PlanError("a plan that copies every destination server-side has no gateways and no route")
            return
        for region in [self.src, *self.routed]:
            if self.gateways.get(region, 0) < 1 and region not in self.written_at_source:
                raise PlanError(f"plan has no gateway in {region}")
        for p in range(self.partitions):
            edges = [e for e in self.edges if p in e.partitions]
            parents: dict[str, str] = {}
            for e in edges:
                if self.gateways.get(e.src, 0) < 1 or self.gateways.get(e.dst, 0) < 1:
                    raise PlanError(f"edge {e.src}->{e.dst} ends in a region without gateways")
                if e.dst in parents or e.dst == self.src:
                    raise PlanError(f"partition {p} reaches {e.dst} twice; routes must be trees")
                parents[e.dst] = e.src
            for d in self.routed:
                if d == self.src or d in self.written_at_source:
                    continue
                seen, node = set(), d
                while node != self.src:
                    if node in seen or node not in parents:
                        raise PlanError(f"partition {p} does not reach {d} from {self.src}")
                    seen.add(node)
                    node = parents[node]

    def programs(self) -> dict[str, "RegionProgram"]:
        """One program per region with gateways; every gateway of a region runs the same one."""
        self.validate()
        out: dict[str, RegionProgram] = {}
        if not self.gateways:
            return out
        for region in self.regions:
            parts: dict[int, PartitionProgram] = {}
            for p in range(self.partitions):
                hops = [
                    Hop(region=e.dst, connections=max(1, e.connections // max(1, self.gateways[region])))
                    for e in self.edges
                    if e.src == region and p in e.partitions
                ]
                receives = any(e.dst == region and p in e.partitions for e in self.edges)
                is_src = region == self.src
                writes = (region in self.routed and (receives or is_src)) or (is_src and bool(self.written_at_source))
                if not (is_src or receives):
                    continue
                parts[p] = PartitionProgram(
                    source="read" if is_src else "receive", send=tuple(hops), write=writes
                )
            out[region] = RegionProgram(region=region, partitions=parts,
                                        writes_for=self.written_at_source if region == self.src else ())
        return out

    def on_one_host(self) -> "Plan":
        """This plan for a fleet whose gateways all run on one host: every destination that the source
        reaches straight, in every partition, and that relays nothing is written by the source's
        gateways themselves (``written_at_source``). A gateway of its own there would only receive
        over loopback what the source's read, and check it again: two more copies of each byte and
        a CRC32C pass at each end, and one more process. Destinations behind a relay keep their
        route (an overlay someone planned on purpose). Returns ``self`` when nothing changes."""
        direct = {d for d in self.routed if d != self.src and d not in self.written_at_source
                  and all(e.src == self.src for e in self.edges if e.dst == d)
                  and not any(e.src == d for e in self.edges)
                  and all(any(e.dst == d and p in e.partitions for e in self.edges) for p in range(self.partitions))}
        if not direct:
            return self
        merged = tuple(d for d in self.routed if d in direct or d in self.written_at_source)
        keep = [e for e in self.edges if e.dst not in direct]
        used = {self.src} | {e.dst for e in keep} | {e.src for e in keep}
        gateways = {r: n for r, n in self.gateways.items() if r in used}
        note = (f"one host: the source's gateways write {', '.join(sorted(direct))} themselves "
                "(no destination gateway, no hop, no lz4 or encryption between them)")
        return replace(self, gateways=gateways, edges=keep, written_at_source=merged,
                                   notes=[*self.notes, note])

    def summary(self) -> dict:
        """A compact description for logs, XCom and artifacts."""
        return {
            "solver": self.solver,
            "src": self.src,
            "dsts": list(self.dsts),
            "gateways": dict(self.gateways),
            "edges": [
                {"src": e.src, "dst": e.dst, "gbps": round(e.gbps, 3), "connections": e.connections}
                for e in self.edges
            ],
            "throughput_gbps": round(self.throughput_gbps, 3),
            "cost_per_gb": round(self.cost_per_gb, 5),
            **({"server_side": list(self.server_side)} if self.server_side else {}),
            **({"written_at_source": list(self.written_at_source)} if self.written_at_source else {}),
        }

    def to_dict(self) -> dict:
        return {
            "src": self.src,
            "dsts": list(self.dsts),
            "solver": self.solver,
            "gateways": dict(self.gateways),
            "edges": [e.to_dict() for e in self.edges],
            "throughput_gbps": self.throughput_gbps,
            "cost_per_gb": self.cost_per_gb,
            "vm_cost_per_hour": self.vm_cost_per_hour,
            "solve_seconds": self.solve_seconds,
            "partition_weights": list(self.partition_weights),
            "notes": list(self.notes),
            "server_side": list(self.server_side),
            "written_at_source": list(self.written_at_source),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Plan":
        try:
            return cls(
                src=d["src"],
                dsts=tuple(d["dsts"]),
                solver=d["solver"],
                gateways={k: int(v) for k, v in d["gateways"].items()},
                edges=[Edge.from_dict(e) for e in d["edges"]],
                throughput_gbps=float(d["throughput_gbps"]),
                cost_per_gb=float(d["cost_per_gb"]),
                vm_cost_per_hour=float(d.get("vm_cost_per_hour", 0.0)),
                solve_seconds=float(d.get("solve_seconds", 0.0)),
                partition_weights=tuple(float(w) for w in d.get("partition_weights", (1.0,))),
                notes=list(d.get("notes", [])),
                server_side=tuple(d.get("server_side", ())),
                written_at_source=tuple(d.get("written_at_source", ())),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise PlanError(f"not a valid plan document: {exc!r}") from exc

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Plan":
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            raise PlanError(f"plan is not JSON: {exc}") from exc


@dataclass(frozen=True)
class Hop:
    """A next-hop region and how many TCP connections each local gateway opens towards it."""

    region: str
    connections: int = 1


@dataclass(frozen=True)
class PartitionProgram:
    """What a gateway does with every chunk of one partition.

    ``source``: ``"read"`` (read the chunk from the source store, compress, encrypt) or
    ``"receive"`` (it arrives from a peer). Then the wire frame goes unchanged to every hop in
    ``send`` (relays forward ciphertext they cannot read) and, when ``write`` is set, is decrypted,
    decompressed, verified and written to this region's destination store.
    """

    source: str
    send: tuple[Hop, ...] = ()
    write: bool = False


@dataclass(frozen=True)
class RegionProgram:
    """The program every gateway of ``region`` interprets: partition id -> what to do. ``writes_for``:
    the other regions whose destinations it writes too (a source written at by one host's fleet:
    :meth:`Plan.on_one_host`)."""

    region: str
    partitions: dict[int, PartitionProgram]
    writes_for: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {
            "region": self.region,
            **({"writes_for": list(self.writes_for)} if self.writes_for else {}),
            "partitions": {
                str(p): {
                    "source": pp.source,
                    "send": [{"region": h.region, "connections": h.connections} for h in pp.send],
                    "write": pp.write,
                }
                for p, pp in self.partitions.items()
            },
        }

    @classmethod
    def from_dict(cls, d: dict) -> "RegionProgram":
        try:
            parts = {
                int(p): PartitionProgram(
                    source=pp["source"],
                    send=tuple(Hop(h["region"], int(h.get("connections", 1))) for h in pp.get("send", ())),
                    write=bool(pp.get("write", False)),
                )
                for p, pp in d["partitions"].items()
            }
            writes_for = tuple(str(r) for r in d.get("writes_for", ()))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise PlanError(f"not a valid gateway program: {exc!r}") from exc
        for pp in parts.values():
            if pp.source not in ("read", "receive"):
                raise PlanError(f"gateway program has unknown source {pp.source!r}")
        return cls(region=d["region"], partitions=parts, writes_for=writes_for)


def direct_plan(src: str, dsts: list[str] | tuple[str, ...], *, gateways_per_region: int = 1,
                connections: int = 8, gbps: float = 1.0) -> Plan:
    """Source gateways straight to every destination's gateways; no grid needed.

    The fallback for regions the grid does not know (``local``, testbed regions without a grid).
    """
    dsts = tuple(dict.fromkeys(dsts))
    gateways = {r: gateways_per_region for r in (src, *dsts)}
    edges = [Edge(src, d, gbps, connections * gateways_per_region) for d in dsts if d != src]
    return Plan(src=src, dsts=dsts, solver="direct", gateways=gateways, edges=edges,
                throughput_gbps=gbps, cost_per_gb=0.0)
