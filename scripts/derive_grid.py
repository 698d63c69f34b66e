#!/usr/bin/env python3
"""Derive the planner's packaged grid (``planner/data/grid.csv``) from Skyplane's 2022-11-28 profiles.

Input: ``../shared/data/skyplane/broadcast_profiles/{throughput,cost}.csv`` (see the README there).
Output: one row per directed region pair, ``src,dst,gbps,cost_per_gb``:

- ``gbps`` = ``throughput_sent`` (iperf3, bits/s, 64 connections between one VM pair) / 1e9, 3 decimals;
- ``cost_per_gb`` = ``cost`` (USD per GB leaving ``src`` towards ``dst``), unchanged;
- GCP tags lose their zone (``gcp:us-central1-a`` -> ``gcp:us-central1``): the grid measured one zone
  per GCP region, and users name regions, not zones.

    .venv/bin/python scripts/derive_grid.py            # check that the shipped grid is up to date
    .venv/bin/python scripts/derive_grid.py --write    # rewrite planner/data/grid.csv
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "skyplane" / "broadcast_profiles"
OUT = ROOT / "planner" / "data" / "grid.csv"
_GCP_ZONE = re.compile(r"^(gcp:[a-z]+-[a-z]+\d+)-[a-z]$")


def region_tag(tag: str) -> str:
    """``gcp:us-central1-a`` -> ``gcp:us-central1``; other tags unchanged."""
    m = _GCP_ZONE.match(tag)
    return m.group(1) if m else tag


def derive(throughput_csv: Path, cost_csv: Path) -> str:
    """The grid CSV text, rows sorted by (src, dst)."""
    with cost_csv.open(newline="") as f:
        costs = {(r["src"], r["dest"]): r["cost"] for r in csv.DictReader(f)}
    rows: dict[tuple[str, str], tuple[str, str]] = {}
    with throughput_csv.open(newline="") as f:
        for r in csv.DictReader(f):
            pair = (r["src_region"], r["dst_region"])
            key = (region_tag(pair[0]), region_tag(pair[1]))
            if key in rows:
                raise SystemExit(f"two measurements for {key}: stripping zones merged regions")
            rows[key] = (f"{float(r['throughput_sent']) / 1e9:.3f}", costs[pair])
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["src", "dst", "gbps", "cost_per_gb"])
    for (a, b), (gbps, cost) in sorted(rows.items()):
        w.writerow([a, b, gbps, cost])
    return out.getvalue()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--write", action="store_true", help=f"rewrite {OUT.relative_to(ROOT)}")
    args = ap.parse_args()
    text = derive(DATA / "throughput.csv", DATA / "cost.csv")
    n = text.count("\n") - 1
    regions = {line.split(",")[0] for line in text.splitlines()[1:]}
    print(f"{n} pairs, {len(regions)} regions, sha256 {hashlib.sha256(text.encode()).hexdigest()[:12]}")
    if args.write:
        OUT.write_text(text)
        print(f"wrote {OUT.relative_to(ROOT)}")
        return 0
    if not OUT.exists() or OUT.read_text() != text:
        print(f"{OUT.relative_to(ROOT)} differs: run with --write", file=sys.stderr)
        return 1
    print("shipped grid is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
