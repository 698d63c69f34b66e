"""Three routes x three object mixes: ``skyplane-provider cp -r`` with default flags against rclone and
Airflow's own transfer operators, in one run on one machine, against moto, fake-gcs-server and Azurite.

    .venv/bin/python benchmarks/routes.py                    # the 3 x 3 table (~893 MiB per route)
    .venv/bin/python benchmarks/routes.py --routes s3-gcs --mixes small --scale 0.25

Routes: S3 -> GCS, S3 -> Azure, GCS -> S3. Mixes (issue #14): ``big`` 8 x 64 MiB random, ``small``
2,000 x 64 KiB random, ``text`` 8 x 32 MiB CSV-like text (lz4 shrinks it); ``--scale`` multiplies the
object counts (development).

- **ours**: ``skyplane-provider cp -r SRC DST --json`` with no other flag, timed around the whole
  process (start-up, listing, planning, gateway start-up, transfer, verification, teardown).
- **rclone**: ``rclone copy --transfers 16`` (Debian's 1.60.1), timed around the whole process.
- **before** (with ``--before DIR``): ours on another checkout's packages (the code before a change), in
  the same run.
- **ours-2gw** (with ``--tools ...,ours-2gw``): the same with ``one_gateway: false`` in the local
  provisioner's settings: a gateway per region and a loopback hop between them, as before the
  one-host plan (docs/provisioners.md): the code before and after that cut, in one run.
- **Airflow**: the route's own operator (``S3ToGCSOperator``, ``S3ToAzureBlobStorageOperator``,
  ``GCSToS3Operator``) in the benchmark virtualenv (``benchmarks/setup_bench_venv.sh``), timed around
  ``execute()`` (a worker has already started and imported Airflow; that start-up is not counted).

``--rounds N`` (default 2) runs every tool N times per cell, in the listed order in even rounds and
reversed in odd ones: on these emulators a copy's place in its cell changes its time (the same code
twice, GCS -> S3 big: the first 1.17-1.39x faster; GCS -> S3 text: the first copy after the seeding
the slower, docs/benchmarks.md), so one fixed order favours one tool (until b0b53c4 rclone always
went first, ours second). Tables and ratios use each tool's median over the rounds; the ratio lines
add each round's.

Every copy is checked object by object (sha256) against the source, then deleted. Besides time, each
run's CPU: the tool's own (ours: the CLI process, the job's coordinator, which runs detached, and
every gateway process and worker; rclone: its process; Airflow: the worker process during
``execute()``) and the stores' (the two emulators' processes; each run's line splits them into the
source's and the destination's), as CPU-seconds per GiB and per 1,000 objects. Ours' CPU is sampled
from /proc every 0.1 s (its coordinator is nobody's child); rclone and Airflow run under the same
sampler, its figures dropped (``benchutil.sampled_alike``), so that none runs with the CPU it costs
for itself. Prints a table per mix and
``routes ours/baseline=R`` lines (R = the baseline's seconds / ours: above 1, we are faster).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from baselines import AIRFLOW_NAMES, AIRFLOW_OPERATORS, airflow_env, rclone_remote, run_airflow, run_rclone
from benchutil import (MiB, Timer, TreeCPU, clean_up, compile_ours, cpu_seconds, machine_line, our_role,
                       ratio_line, sampled_alike)
from gateway.stores import open_store
from skyplane_provider.testing.buckets import create_bucket
from skyplane_provider.testing.emulators import EmulatorSet, start_all
from skyplane_provider.testing.samples import digests, put_objects

REPO = Path(__file__).resolve().parents[1]
CLI = Path(sys.executable).parent / "skyplane-provider"
GiB = 1024**3
ROUTES = {"s3-gcs": ("s3", "gcs"), "s3-azure": ("s3", "azure"), "gcs-s3": ("gcs", "s3")}
LABELS = {"s3": "S3", "gcs": "GCS", "azure": "Azure"}
MIXES = {"big": (8, 64 * MiB, "random"), "small": (2000, 64 * 1024, "random"), "text": (8, 32 * MiB, "csv")}
RCLONE_TRANSFERS = 16


def csv_text(size: int, rng: random.Random) -> bytes:
    rows = b"".join(b"%d,sensor-%d,%d.%d,%s\n" % (j, rng.randrange(500), rng.randrange(1000), rng.randrange(10),
                                                   rng.choice((b"ok", b"late", b"err"))) for j in range(size // 24 + 1))
    return rows[:size]


def make_mix(mix: str, scale: float, seed: int = 2026) -> dict[str, bytes]:
    """The mix's objects, ``obj-NNNN``: distinct windows of one random block, or rotations of one CSV
    text (distinct objects that lz4, with its 64 KiB window, cannot compress against each other)."""
    count, size, kind = MIXES[mix]
    count = max(1, round(count * scale))
    rng = random.Random(seed)
    if kind == "csv":
        text = csv_text(size, rng)
        step = size // count
        return {f"obj-{i:04d}.csv": text[i * step + i:] + text[:i * step + i] for i in range(count)}
    if size >= MiB:  # big objects: each its own random bytes
        return {f"obj-{i:04d}.bin": rng.randbytes(size) for i in range(count)}
    block = rng.randbytes(size + count * 64)
    return {f"obj-{i:04d}.bin": block[i * 64:i * 64 + size] for i in range(count)}


@dataclass
class Run:
    route: str
    mix: str
    tool: str
    seconds: float
    objects: int
    nbytes: int
    tool_cpu: float
    stores_cpu: float
    roles: dict[str, float] | None = None  # ours: CPU by process role
    round: int = 0
    stores_each: tuple[float, float] = (0.0, 0.0)  # the source store's CPU, the destination's

    @property
    def mib_s(self) -> float:
        return self.nbytes / MiB / self.seconds

    @property
    def obj_s(self) -> float:
        return self.objects / self.seconds

    def per_gib(self, cpu: float) -> float:
        return cpu / (self.nbytes / GiB)

    def per_kobj(self, cpu: float) -> float:
        return cpu / (self.objects / 1000)


def bucket_name(root_uri: str) -> str:
    return root_uri.rstrip("/").rsplit("/", 1)[-1]


def delete_prefix(prefix_uri: str) -> None:
    """Remove every object under ``prefix_uri`` (keeps the emulators' memory down between runs)."""
    from gateway.stores.uri import parse_uri

    uri = parse_uri(prefix_uri)
    store = open_store(uri.root_uri)
    for o in list(store.list(uri.join("").path)):
        store.delete(o.key)


def run_ours(src: str, dst: str, env: dict[str, str],
             extra: tuple[str, ...] = ()) -> tuple[float, dict[str, float], dict]:
    """``skyplane-provider cp -r SRC DST --json [EXTRA...]``: whole-process seconds, CPU of its processes
    by role (client, coordinator, gateways), stats."""
    with Timer() as t:
        # cwd: the checkout whose code runs. The coordinator, and the gateway it starts ahead, start as
        # ``python -m`` in this cwd, which goes ahead of PYTHONPATH: from this checkout's top, --before's
        # run had its client on the other code and its coordinator and that gateway on this one.
        proc = subprocess.Popen([str(CLI), "cp", "-r", src, dst, "--json", *extra], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, cwd=env.get("PYTHONPATH", REPO))
        tree = TreeCPU(proc.pid, marker=os.environ["SKYPLANE_HOME"])
        out, err = proc.communicate(timeout=3600)
    cpu = tree.by(our_role)
    if proc.returncode:
        raise SystemExit(f"skyplane-provider cp failed:\n{err[-3000:]}")
    return t.seconds, cpu, json.loads(out.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--routes", default=",".join(ROUTES), help="comma-separated, of: " + ", ".join(ROUTES))
    ap.add_argument("--mixes", default=",".join(MIXES), help="comma-separated, of: " + ", ".join(MIXES))
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every mix's object count (development)")
    ap.add_argument("--tools", default="airflow,rclone,ours",
                    help="comma-separated, of: airflow, rclone, ours, ours-2gw (a gateway per region: one_gateway false)")
    ap.add_argument("--before", metavar="DIR",
                    help="also run tool 'before': ours on the packages of another checkout in DIR (e.g. `git archive "
                         "COMMIT gateway planner skyplane_provider | tar -x -C DIR`), after ours in each cell")
    ap.add_argument("--before-first", action="store_true",
                    help="run 'before' ahead of ours in each cell, not after: alternate runs with and without it, "
                         "the second of two runs of one cell can be the slower (the same code twice, GCS -> S3 "
                         "big: 1.17 and 1.39x)")
    ap.add_argument("--rounds", type=int, default=2,
                    help="runs of every tool per cell, the order reversed every other round (default 2)")
    ap.add_argument("--json", metavar="FILE", help="also write every run as JSON")
    args = ap.parse_args()
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    routes = [r for r in args.routes.split(",") if r]
    mixes = [m for m in args.mixes.split(",") if m]
    tools = [t for t in args.tools.split(",") if t]
    for r in routes:
        if r not in ROUTES:
            ap.error(f"unknown route {r!r}")
    for m in mixes:
        if m not in MIXES:
            ap.error(f"unknown mix {m!r}")
    compile_ours()
    if args.before:
        compile_ours(Path(args.before))
    scratch = Path(tempfile.mkdtemp(prefix="routes-bench-"))
    home = scratch / "home"
    os.environ["SKYPLANE_HOME"] = str(home)
    runs: list[Run] = []
    failed: list[str] = []
    emulators: EmulatorSet | None = None
    try:
        kinds = sorted({k for r in routes for k in ROUTES[r]})
        emulators = start_all(kinds, log_dir=scratch / "logs")
        os.environ.update(emulators.env)
        env = {**os.environ}
        print(f"routes: {', '.join(routes)} x {', '.join(mixes)} (scale {args.scale:g}); {machine_line()}", flush=True)
        for route in routes:
            src_kind, dst_kind = ROUTES[route]
            name = f"{LABELS[src_kind]} -> {LABELS[dst_kind]}"
            pids = [emulators.running[src_kind].pid, emulators.running[dst_kind].pid]
            src_root, dst_root = create_bucket(src_kind), create_bucket(dst_kind)
            for mix in mixes:
                objects = make_mix(mix, args.scale)
                put_objects(src_root + "/data/", objects)
                expected = {k: hashlib.sha256(v).hexdigest() for k, v in objects.items()}
                nbytes = sum(map(len, objects.values()))
                del objects

                def measured(tool: str, dest: str, go, rnd: int) -> None:
                    try:
                        one(tool, dest, go, rnd)
                    except (Exception, SystemExit) as exc:  # one failed cell must not lose the others
                        failed.append(f"{name} {mix} {tool}: {exc}")
                        print(f"  {name} {mix} {tool}: FAILED: {str(exc)[-500:]}", flush=True)
                        with contextlib.suppress(Exception):
                            delete_prefix(dest)

                def one(tool: str, dest: str, go, rnd: int) -> None:
                    stores_before = [cpu_seconds(p) for p in pids]
                    seconds, cpu = go()
                    roles = cpu if isinstance(cpu, dict) else None
                    cpu = sum(roles.values()) if roles else cpu
                    each = tuple(cpu_seconds(p) - b for p, b in zip(pids, stores_before))
                    stores = sum(each)
                    if digests(dest) != expected:
                        raise SystemExit(f"{name} {mix} {tool}: the copy at {dest} does not match the source")
                    delete_prefix(dest)
                    run = Run(name, mix, tool, seconds, len(expected), nbytes, cpu, stores, roles, rnd, each)
                    runs.append(run)
                    split = f" = {', '.join(f'{k} {v:.1f}' for k, v in sorted(roles.items()))}" if roles else ""
                    at = f" (round {rnd + 1})" if args.rounds > 1 else ""
                    print(f"  {name} {mix} {tool}{at}: {seconds:.2f} s, {run.mib_s:.1f} MiB/s, {run.obj_s:.0f} obj/s, "
                          f"CPU {cpu:.1f} s{split} (stores {stores:.1f} s = {LABELS[src_kind]} {each[0]:.1f}, "
                          f"{LABELS[dst_kind]} {each[1]:.1f})", flush=True)

                entries: list[tuple[str, str, Callable[[], tuple]]] = []  # (tool, destination, run)
                if "airflow" in tools:
                    operator = AIRFLOW_OPERATORS[(src_kind, dst_kind)]
                    a_env = airflow_env(env, emulators.endpoints, scratch / "airflow-home")
                    if dst_kind == "azure":
                        a_dst, dest = bucket_name(dst_root) + "/airflow/", dst_root + "/airflow/"
                    elif dst_kind == "s3":  # GCSToS3Operator keeps the source's whole key
                        a_dst, dest = dst_root + "/airflow/", dst_root + "/airflow/data/"
                    else:
                        a_dst = dest = dst_root + "/airflow/"

                    def go_airflow():
                        with sampled_alike(os.environ["SKYPLANE_HOME"]):  # as ours is measured
                            r = run_airflow(operator, bucket_name(src_root), "data/", a_dst, a_env)
                        return r.seconds, r.cpu_seconds

                    entries.append((f"Airflow {AIRFLOW_NAMES[operator]}", dest, go_airflow))
                if "rclone" in tools:
                    r_env = {**env, **rclone_remote("src", src_kind, emulators.endpoints[src_kind]),
                             **rclone_remote("dst", dst_kind, emulators.endpoints[dst_kind])}

                    def go_rclone():
                        with sampled_alike(os.environ["SKYPLANE_HOME"]):  # as ours is measured
                            r = run_rclone(f"src:{bucket_name(src_root)}/data", f"dst:{bucket_name(dst_root)}/rclone",
                                           r_env, RCLONE_TRANSFERS)
                        return r.seconds, r.cpu_seconds

                    entries.append((f"rclone --transfers {RCLONE_TRANSFERS}", dst_root + "/rclone/", go_rclone))

                def go_ours():
                    seconds, cpu, _stats = run_ours(src_root + "/data/", dst_root + "/ours/", env)
                    return seconds, cpu

                def go_before():
                    # The same CLI on another checkout's packages: PYTHONPATH comes before the
                    # editable install, and the coordinator and gateways inherit it (run_ours' cwd).
                    seconds, cpu, _stats = run_ours(src_root + "/data/", dst_root + "/before/",
                                                    {**env, "PYTHONPATH": args.before})
                    return seconds, cpu

                before = ("before (cp -r, default flags, --before's code)", dst_root + "/before/", go_before)
                if args.before and args.before_first:
                    entries.append(before)
                if "ours" in tools:
                    entries.append(("ours (cp -r, default flags)", dst_root + "/ours/", go_ours))
                if "ours-2gw" in tools:
                    settings = scratch / "two-gateways.json"
                    settings.write_text(json.dumps({"one_gateway": False}))

                    def go_two():
                        seconds, cpu, _stats = run_ours(src_root + "/data/", dst_root + "/ours2/", env,
                                                        ("--provisioner-settings", str(settings)))
                        return seconds, cpu

                    entries.append(("ours-2gw (cp -r, one_gateway false)", dst_root + "/ours2/", go_two))
                if args.before and not args.before_first:
                    entries.append(before)
                for rnd in range(args.rounds):
                    for tool, dest, go in (entries if rnd % 2 == 0 else entries[::-1]):
                        measured(tool, dest, go, rnd)
                delete_prefix(src_root + "/data/")
    finally:
        clean_up(scratch, emulators)
    report(runs, routes, mixes)
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in runs], indent=1))
    for line in failed:
        print(f"FAILED {line[-300:]}", file=sys.stderr)
    return 1 if failed else 0


def median_run(runs: list[Run]) -> Run:
    """One tool's runs of one cell as one: the medians of its seconds and CPU."""
    first = runs[0]
    return Run(first.route, first.mix, first.tool, statistics.median(r.seconds for r in runs), first.objects,
               first.nbytes, statistics.median(r.tool_cpu for r in runs), statistics.median(r.stores_cpu for r in runs))


def report(runs: list[Run], routes: list[str], mixes: list[str]) -> None:
    grouped: dict[tuple[str, str, str], list[Run]] = {}
    for r in runs:
        grouped.setdefault((r.route, r.mix, r.tool.split()[0]), []).append(r)
    by = {k: median_run(v) for k, v in grouped.items()}
    names = [f"{LABELS[ROUTES[r][0]]} -> {LABELS[ROUTES[r][1]]}" for r in routes]
    order = [t for t in ("ours", "before", "ours-2gw", "rclone", "Airflow") if any(k[2] == t for k in by)]
    unit = {m: ("obj/s" if MIXES[m][1] < MiB else "MiB/s") for m in mixes}
    print()
    print("| route | " + " | ".join(f"{m} {unit[m]}: {' / '.join(order)}" for m in mixes) + " |")
    print("|---|" + "---|" * len(mixes))
    for name in names:
        cells = []
        for m in mixes:
            vals = [by.get((name, m, t)) for t in order]
            cells.append(" / ".join("-" if v is None else f"{v.obj_s if unit[m] == 'obj/s' else v.mib_s:.0f}"
                                    for v in vals))
        print(f"| {name} | " + " | ".join(cells) + " |")
    print()
    print("CPU-seconds (tool's own; stores' in brackets): per GiB for big and text, per 1,000 objects for small")
    print("| route | " + " | ".join(f"{m}: {' / '.join(order)}" for m in mixes) + " |")
    print("|---|" + "---|" * len(mixes))
    for name in names:
        cells = []
        for m in mixes:
            per = (lambda r, c: r.per_kobj(c)) if unit[m] == "obj/s" else (lambda r, c: r.per_gib(c))
            vals = [by.get((name, m, t)) for t in order]
            cells.append(" / ".join("-" if v is None else f"{per(v, v.tool_cpu):.2f} ({per(v, v.stores_cpu):.2f})"
                                    for v in vals))
        print(f"| {name} | " + " | ".join(cells) + " |")
    print()
    for name in names:
        for m in mixes:
            ours = by.get((name, m, "ours"))
            for t in order[1:]:
                base = by.get((name, m, t))
                if ours and base:
                    each = {r.round: r.seconds for r in grouped[(name, m, t)]}
                    rounds = [each[r.round] / r.seconds for r in grouped[(name, m, "ours")] if r.round in each]
                    per_round = f"; rounds: {', '.join(f'{x:.2f}' for x in rounds)}" if len(rounds) > 1 else ""
                    print(ratio_line("routes", ours.seconds, base.seconds,
                                     f"{name} {m}; baseline: {base.tool}{per_round}"))


if __name__ == "__main__":
    sys.exit(main())
