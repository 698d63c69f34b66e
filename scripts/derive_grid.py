#!/usr/bin/env python3
"""Derive the planner's packaged grid (``planner/data/grid.csv``) from Skyplane's 2022-11-28 profiles.

Input: Skyplane's ``skyplane/broadcast/profiles/{throughput,cost}.csv`` (planner/data/SOURCE.md), from
the xz-compressed byte-for-byte copies in ``scripts/grid_source/`` (checked against their sha256), or
from a directory of the original files (``--source DIR``).
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
import lzma
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COPIES = ROOT / "scripts" / "grid_source"
#: sha256 of the original files at skyplane commit 1e920e4a (planner/data/SOURCE.md).
SOURCE_SHA256 = {"throughput.csv": "e45ee4f0b4101bee184966aedf8efb1e83add7cb3737e172f8729eac00b19e27",
                 "cost.csv": "b0f97b744b8f0ba464f1098975a25232f168ff8a2c12bfc09efb1c35e4453eac"}
OUT = ROOT / "planner" / "data" / "grid.csv"
_GCP_ZONE = re.compile(r"^(gcp:[a-z]+-[a-z]+\d+)-[a-z]$")


def region_tag(tag: str) -> str:
    """``gcp:us-central1-a`` -> ``gcp:us-central1``; other tags unchanged."""
    m = _GCP_ZONE.match(tag)
    return m.group(1) if m else tag


def source_text(name: str, directory: Path | None = None) -> str:
    """One source file's text: the original in ``directory``, else our compressed copy; either must
    have the sha256 of the original."""
    data = (directory / name).read_bytes() if directory else lzma.decompress((COPIES / f"{name}.xz").read_bytes())
    digest = hashlib.sha256(data).hexdigest()
    if digest != SOURCE_SHA256[name]:
        raise SystemExit(f"{name} has sha256 {digest[:12]}, not the source's {SOURCE_SHA256[name][:12]}")
    return data.decode()


def derive(throughput_csv: str, cost_csv: str) -> str:
    """The grid CSV text from the source files' texts, rows sorted by (src, dst)."""
    costs = {(r["src"], r["dest"]): r["cost"] for r in csv.DictReader(io.StringIO(cost_csv))}
    rows: dict[tuple[str, str], tuple[str, str]] = {}
    for r in csv.DictReader(io.StringIO(throughput_csv)):
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
    ap.add_argument("--source", type=Path, help="a directory holding the original throughput.csv and cost.csv")
    args = ap.parse_args()
    text = derive(source_text("throughput.csv", args.source), source_text("cost.csv", args.source))
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
