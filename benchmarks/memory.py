"""Peak memory of each gateway while one big object crosses a relay: the goal is under 1 GiB each.

    .venv/bin/python benchmarks/memory.py [--size 10GiB] [--chunk 32MiB] [--dir DIR]

One file of ``--size`` (alternating 32 MiB stretches of CSV-like text and random bytes, as in
``gateway_loopback.py``) goes from a local-directory store through three gateway processes,
source -> relay -> destination, by a hand-written plan (the planner would never add a relay on
loopback), with the defaults a user gets between hosts (lz4 + AES-GCM, default queues: the gateways'
``loopback_clear`` is turned off, which would otherwise send these loopback hops without lz4 and
encryption, holding fewer copies of each chunk; ``--loopback-clear`` measures that). The resident set of every
gateway is sampled every 0.2 s from /proc (VmRSS, and VmHWM, the kernel's own peak) until the
transfer returns. The destination's parts are assembled by the local store at the end, as for any
multipart object; the sha256 of the copy is checked.

Stores go on tmpfs (``/dev/shm``) only when it has room for the source, the parts and the
assembled copy (3x the size) with 4 GiB to spare; otherwise under ``--dir`` (default: a temp
directory on the disk). Prints a table and ``memory ours/baseline=R`` with the baseline the 1,024
MiB limit (R = limit / the largest gateway peak: above 1 means every gateway stayed under it).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import tempfile
import threading
from pathlib import Path

from benchutil import MiB, Timer, machine_line, ratio_line, status_kib
from gateway_loopback import make_file, sha256_file
from planner.plan import Edge, Plan
from skyplane_provider.provisioners.local import LocalFleet, LocalProvisioner
from skyplane_provider.transfer import copy
from skyplane_provider.transfer.request import parse_size

LIMIT_MIB = 1024
SRC, RELAY, DST = "local:src", "local:relay", "local:dst"


class WatchedProvisioner(LocalProvisioner):
    """The local provisioner, keeping the fleet it started so that its processes can be sampled;
    ``loopback_clear`` goes into every gateway's config."""

    def __init__(self, loopback_clear: bool) -> None:
        super().__init__()
        self.fleet: LocalFleet | None = None
        self.started = threading.Event()
        self.loopback_clear = loopback_clear
        self.loopback_fleet = loopback_clear  # its pipeline depth then counts clear frames' copies

    def provision(self, job_id, specs, stop: threading.Event | None = None) -> LocalFleet:
        specs = [dataclasses.replace(s, config={**s.config, "loopback_clear": self.loopback_clear}) for s in specs]
        self.fleet = super().provision(job_id, specs, stop=stop)
        self.started.set()
        return self.fleet


def sample(prov: WatchedProvisioner, done: threading.Event, peaks: dict[str, dict[str, float]]) -> None:
    """Until ``done``: per gateway, the largest VmRSS seen and the last VmHWM read (MiB)."""
    prov.started.wait()
    while not done.wait(0.2):
        for g in prov.fleet.gateways:
            rss, hwm = status_kib(g.pid, "VmRSS"), status_kib(g.pid, "VmHWM")
            p = peaks.setdefault(g.region, {"rss": 0.0, "hwm": 0.0})
            if rss is not None:
                p["rss"] = max(p["rss"], rss / 1024)
            if hwm is not None:
                p["hwm"] = max(p["hwm"], hwm / 1024)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="10GiB")
    ap.add_argument("--chunk", default="32MiB")
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--dir", default=None, help="where the stores go when tmpfs lacks room")
    ap.add_argument("--loopback-clear", action="store_true",
                    help="let the gateways skip lz4 and encryption on loopback hops (what a local job does)")
    args = ap.parse_args()
    size, chunk = parse_size(args.size), parse_size(args.chunk)
    shm_room = shutil.disk_usage("/dev/shm").free if os.path.isdir("/dev/shm") else 0
    on_shm = args.dir is None and shm_room > 3 * size + 4 * 1024**3
    parent = "/dev/shm" if on_shm else args.dir
    scratch = Path(tempfile.mkdtemp(prefix="memory-bench-", dir=parent))
    need = 3 * size
    if shutil.disk_usage(scratch).free < need + 1024**3:
        shutil.rmtree(scratch)
        raise SystemExit(f"{scratch.parent} has {shutil.disk_usage(scratch.parent).free / 1024**3:.1f} GiB free; "
                         f"this run needs {need / 1024**3:.1f} GiB (source, parts, assembled copy): pass --dir")
    os.environ["SKYPLANE_HOME"] = str(scratch / "home")
    try:
        src, dst = scratch / "src", scratch / "dst"
        src.mkdir()
        dst.mkdir()
        with Timer() as t:
            make_file(src / "big.bin", size, 32 * MiB)
        print(f"memory: one {size / MiB:.0f} MiB object, {chunk / MiB:.0f} MiB chunks, {SRC} -> {RELAY} -> {DST}, "
              f"{args.connections} connections per hop, "
              f"{'no lz4 or encryption on loopback' if args.loopback_clear else 'lz4 + AES-GCM'}, stores on {'tmpfs' if on_shm else scratch.parent} "
              f"(file made in {t.seconds:.0f} s)", flush=True)
        print(f"  {machine_line()}", flush=True)
        plan = Plan(src=SRC, dsts=(DST,), solver="manual", gateways={SRC: 1, RELAY: 1, DST: 1},
                    edges=[Edge(SRC, RELAY, 1.0, args.connections), Edge(RELAY, DST, 1.0, args.connections)],
                    throughput_gbps=1.0, cost_per_gb=0.0)
        prov = WatchedProvisioner(args.loopback_clear)
        done = threading.Event()
        peaks: dict[str, dict[str, float]] = {}
        sampler = threading.Thread(target=sample, args=(prov, done, peaks), daemon=True)
        sampler.start()
        try:
            with Timer() as t:
                stats = copy(str(src / "big.bin"), str(dst / "big.bin"), provisioner=prov, plan=plan.to_dict(),
                             src_region=SRC, dst_regions=[DST], chunk_size=chunk)
        finally:
            done.set()
            prov.started.set()
            sampler.join()
        if sha256_file(dst / "big.bin") != sha256_file(src / "big.bin"):
            raise SystemExit("the copy does not match the source")
        route = " + ".join(f"{e['src']}->{e['dst']}" for e in stats.route)
        print(f"  transfer: {t.seconds:.1f} s, {size / t.seconds / MiB:.1f} MiB/s, route {route}, "
              f"{stats.chunks} chunks, {stats.retries} retries", flush=True)
        print()
        print("| gateway | peak VmRSS sampled (MiB) | VmHWM (MiB) | limit (MiB) |")
        print("|---|---|---|---|")
        for region in (SRC, RELAY, DST):
            p = peaks.get(region, {"rss": float("nan"), "hwm": float("nan")})
            print(f"| {region} | {p['rss']:.0f} | {p['hwm']:.0f} | {LIMIT_MIB} |")
        print()
        print(f"bytes moved {stats.bytes}, bytes on the wire {stats.bytes_on_wire} "
              f"(wire/data {stats.bytes_on_wire / stats.bytes:.3f}), egress $ {stats.egress_usd_actual:.5f} "
              f"(local regions carry no price)")
        worst = max(max(p["rss"], p["hwm"]) for p in peaks.values())
        print(f"memory gateway_peak_rss_mib/limit={worst / LIMIT_MIB:.2f}")
        print(ratio_line("memory", worst, LIMIT_MIB,
                         f"baseline: the {LIMIT_MIB} MiB limit; ours: the largest gateway peak, {worst:.0f} MiB"))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
