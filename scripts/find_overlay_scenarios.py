#!/usr/bin/env python3
"""Search the measured throughput grid for region pairs where one relay beats the direct path.

For every ordered pair (src, dst) of the grid, the best single-relay path runs at
``max_r min(gbps(src, r), gbps(r, dst))``. A pair qualifies when that is at least ``--min-ratio``
(default 2) times the direct rate. Its scenario is the pair plus its two best relays (a full mesh
of four regions), scaled so that the fastest link of the mesh is at most 400 Mbit/s (and never
more than 20 Mbit/s per Gbps). For each source cloud (aws, azure, gcp) we keep the qualifying pair
with the highest ratio among those whose scaled direct link is at least ``--min-direct-mbit``
(so a direct baseline finishes in seconds); if none reaches it, the one with the fastest scaled
direct link.

    .venv/bin/python scripts/find_overlay_scenarios.py            # print the table
    .venv/bin/python scripts/find_overlay_scenarios.py --write    # also rewrite the shipped scenarios

The data is Skyplane's 2022-11-28 iperf3 grid (see ../shared/data/skyplane/README.md).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from skyplane_provider.testbed.maxflow import max_flow  # noqa: E402
from skyplane_provider.testbed.scenario import MAX_LINK_MBIT, SHIPPED_FILE, Scenario  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "skyplane" / "broadcast_profiles"
MAX_SCALE = 20.0  # Mbit/s per Gbps: 5 Gbps -> 100 Mbit/s
RELAYS = 2


def read_grid(path: Path) -> dict[tuple[str, str], float]:
    """Directed rates in Gbps from the ``throughput_sent`` column (bits/s)."""
    with path.open(newline="") as f:
        return {(r["src_region"], r["dst_region"]): float(r["throughput_sent"]) / 1e9 for r in csv.DictReader(f)}


def read_costs(path: Path) -> dict[tuple[str, str], float]:
    with path.open(newline="") as f:
        return {(r["src"], r["dest"]): float(r["cost"]) for r in csv.DictReader(f)}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def candidates(grid: dict[tuple[str, str], float], min_ratio: float) -> list[dict]:
    regions = sorted({a for a, _ in grid})
    found = []
    for src in regions:
        for dst in regions:
            if src == dst:
                continue
            direct = grid[(src, dst)]
            relays = sorted(((min(grid[(src, r)], grid[(r, dst)]), r) for r in regions if r not in (src, dst)),
                            reverse=True)
            best_gbps, best_relay = relays[0]
            if best_gbps < min_ratio * direct:
                continue
            mesh = [src, dst] + [r for _, r in relays[:RELAYS]]
            fastest = max(grid[(a, b)] for a in mesh for b in mesh if a != b)
            scale = min(MAX_SCALE, math.floor(MAX_LINK_MBIT / fastest * 10) / 10)
            found.append({"src": src, "dst": dst, "regions": mesh, "direct_gbps": direct,
                          "best_relay": best_relay, "best_relay_gbps": best_gbps, "ratio": best_gbps / direct,
                          "scale": scale, "direct_mbit": direct * scale})
    return found


def pick(found: list[dict], min_direct_mbit: float) -> list[dict]:
    picked = []
    for cloud in ("aws", "azure", "gcp"):
        mine = [c for c in found if c["src"].startswith(cloud + ":")]
        fast = [c for c in mine if c["direct_mbit"] >= min_direct_mbit]
        if fast:
            picked.append(max(fast, key=lambda c: c["ratio"]))
        elif mine:
            picked.append(max(mine, key=lambda c: c["direct_mbit"]))
    return picked


def to_scenario(c: dict, grid: dict, costs: dict) -> Scenario:
    mesh = c["regions"]
    pairs = [(a, b) for a in mesh for b in mesh if a != b]
    name = f"{c['src'].replace(':', '-')}--{c['dst'].replace(':', '-')}"
    flow = max_flow({p: grid[p] for p in pairs}, c["src"], c["dst"])
    description = (f"{c['src']} -> {c['dst']}: direct {c['direct_gbps']:.2f} Gbps, via {c['best_relay']} "
                   f"{c['best_relay_gbps']:.2f} Gbps ({c['ratio']:.1f}x); relays {', '.join(mesh[2:])}")
    return Scenario(
        name=name, regions=tuple(mesh), gbps={p: round(grid[p], 4) for p in pairs},
        scale_mbit_per_gbps=c["scale"], cost_per_gb={p: costs[p] for p in pairs if p in costs},
        description=description,
        found={"src": c["src"], "dst": c["dst"], "direct_gbps": round(c["direct_gbps"], 4),
               "best_relay": c["best_relay"], "best_relay_gbps": round(c["best_relay_gbps"], 4),
               "ratio": round(c["ratio"], 2), "maxflow_gbps": round(flow, 4)})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--throughput", type=Path, default=DATA / "throughput.csv")
    ap.add_argument("--cost", type=Path, default=DATA / "cost.csv")
    ap.add_argument("--min-ratio", type=float, default=2.0)
    ap.add_argument("--min-direct-mbit", type=float, default=20.0)
    ap.add_argument("--write", action="store_true", help="rewrite skyplane_provider/testbed/" + SHIPPED_FILE)
    args = ap.parse_args()

    grid, costs = read_grid(args.throughput), read_costs(args.cost)
    found = candidates(grid, args.min_ratio)
    print(f"{len(found)} of {len(grid)} directed pairs have a single relay >= {args.min_ratio}x the direct path")
    scenarios = [to_scenario(c, grid, costs) for c in pick(found, args.min_direct_mbit)]
    for s in scenarios:
        s.validate()
        src, dst = s.found["src"], s.found["dst"]
        print(f"{s.name}: {s.description}; scale {s.scale_mbit_per_gbps} Mbit/s per Gbps -> direct "
              f"{s.link_mbit(src, dst):.1f} Mbit/s, best relay path "
              f"{s.found['best_relay_gbps'] * s.scale_mbit_per_gbps:.1f} Mbit/s, max-flow "
              f"{s.found['maxflow_gbps'] * s.scale_mbit_per_gbps:.1f} Mbit/s")
    if args.write:
        doc = {
            "source": {
                "throughput": "skyplane-project/skyplane skyplane/broadcast/profiles/throughput.csv @ 1e920e4a "
                              "(iperf3 -P 64, 5 s, grid measured 2022-11-28; column throughput_sent, bits/s), "
                              f"sha256 {sha256(args.throughput)}",
                "cost": "skyplane-project/skyplane skyplane/broadcast/profiles/cost.csv @ 1e920e4a (USD/GB egress), "
                        f"sha256 {sha256(args.cost)}",
                "license": "Apache-2.0; copied as data under ../shared/data/skyplane/",
            },
            "generated_by": "scripts/find_overlay_scenarios.py "
                            f"--min-ratio {args.min_ratio:g} --min-direct-mbit {args.min_direct_mbit:g}",
            "finding": f"{len(found)} of {len(grid)} directed pairs have a single relay >= "
                       f"{args.min_ratio:g}x the direct path",
            "scenarios": [s.to_dict() for s in scenarios],
        }
        out = ROOT / "skyplane_provider" / "testbed" / SHIPPED_FILE
        out.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
