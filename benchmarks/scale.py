"""Scale: many 1 KiB objects, in a local tree or in a moto bucket, ours against rclone, with the memory each
of our processes held.

    .venv/bin/python benchmarks/scale.py [--objects 20000] [--size 1KiB] [--transfers 16] [--dir DIR]
    .venv/bin/python benchmarks/scale.py --from s3 --objects 100000
    .venv/bin/python benchmarks/scale.py --from s3 --objects 20000 --before DIR   # DIR: `git archive main ...`

Source (``--from local``, the default): ``--objects`` random files of ``--size`` bytes, 1,000 per
directory, on tmpfs (``/dev/shm`` when it has room); destination: another tmpfs directory (rclone's
local backend against our local stores, no emulator in the way). ``--from s3``: the same tree seeded
into a bucket of a moto_server started for the run (by our own copy, not timed: moto takes a few
milliseconds of its CPU per PUT), then downloaded to a tmpfs directory, what a user runs to fetch a
bucket (``cp -r s3://BUCKET/ DIR``): every object listed from moto and read with a GET, nothing else
in the way. (Bucket to bucket on one moto is a server-side copy for both tools, no gateway:
benchmarks/server_side.py.) Side by side in one run:

- **rclone**: ``rclone copy SRC DST --transfers T --checkers T`` (``--from s3``: SRC is ``src:BUCKET``,
  its S3 backend pointed at moto by ``RCLONE_CONFIG_SRC_*``, other flags at their defaults).
- **ours**: a ``Transfer`` with default flags run as ``skyplane_provider.transfer.copy`` runs it
  (what ``skyplane-provider cp -r`` runs: ``prepare()``, ``start()``, the handle's ``result()``),
  timed from the call to its return (listing, coordinator and gateway start-up, transfer,
  verification, teardown), in a child process (as ``--before`` runs: neither counts this process's
  samplers).

rclone runs under the same /proc samplers as ours (``benchutil.sampled_alike`` and the peak RSS
sampler, whose figure for rclone is printed too): they cost CPU that moto, on the same two cores,
would otherwise have had, and until 2026-12-07 only our runs paid it.

Measured for ours: peak RSS (``VmHWM``) of the coordinator process and of each gateway process (and rclone's)
(sampled every 0.2 s from /proc: every process whose command line names this run's
``SKYPLANE_HOME``, and their children), seconds from the call to the first destination file
written whole (a watcher polls the destination; a gateway's temp file does not count), CPU-seconds
per 1,000 objects (client, coordinator and gateways: ``benchutil.TreeCPU``; with ``--from s3`` also moto's
own, for each tool's run, from its /proc figures). The first byte is
broken down: the client's ``prepare()`` (first listing page, pre-flight, plan), the coordinator's
start (``start()`` until its API listens), its ``prepare`` and ``provision`` phases, and the rest
(the first chunks submitted, read, sent and written); and when the coordinator learnt of its first
chunk written whole (``first_byte_seconds``). With ``--from s3``, moto's load during each tool's run
is sampled every 0.25 s (its CPU and its open connections, from /proc):
its busy fraction (CPU-s per second: one Python process, so 1.0 at most) over the whole run and over
each tenth of it, and the connections it held. ``--before DIR``: ours also runs on the packages of
another checkout (``git archive main gateway planner skyplane_provider | tar -x -C DIR``), in a child
process whose PYTHONPATH and cwd are DIR (``python -m`` puts the cwd ahead of PYTHONPATH), on the same
source, right after ours. Every destination file of both copies is checked (sha256)
against the local tree, so a copy missing or adding an object fails the run. Prints a
table and ``scale ours/baseline=R`` (R = rclone's seconds / ours: above 1, we are faster).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from baselines import rclone_remote, run_rclone
from benchutil import (REPO, MiB, Timer, TreeCPU, _cmdline, clean_up, compile_ours, cpu_seconds, machine_line, our_role,
                       peak_rss_mib, ratio_line, sampled_alike, status_kib)
from small_files import make_tree

from gateway.stores.local import TMP_DIR
from skyplane_provider.testing.buckets import create_bucket
from skyplane_provider.testing.emulators import start_all
from skyplane_provider.testing.samples import digests
from skyplane_provider.transfer import Transfer, TransferRequest, copy
from skyplane_provider.transfer.request import parse_size


class PeakRSS:
    """Peak RSS (MiB) per process of this run, by role (``benchutil.our_role``), sampled until stopped."""

    def __init__(self, marker: str, interval: float = 0.2) -> None:
        self.marker, self.interval = marker, interval
        self.peaks: dict[int, tuple[str, float]] = {}  # pid -> (role, MiB)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            ours: set[int] = set()
            parents: dict[int, int] = {}
            for entry in os.listdir("/proc"):
                if not entry.isdigit():
                    continue
                pid = int(entry)
                ppid = status_kib(pid, "PPid")
                if ppid is not None:
                    parents[pid] = ppid
                if pid != os.getpid() and self.marker in _cmdline(pid):
                    ours.add(pid)
            grew = True
            while grew:
                grew = False
                for pid, ppid in parents.items():
                    if ppid in ours and pid not in ours:
                        ours.add(pid)
                        grew = True
            for pid in ours:
                hwm = status_kib(pid, "VmHWM")
                if hwm:
                    role = our_role(_cmdline(pid))
                    self.peaks[pid] = (role, max(hwm / 1024, self.peaks.get(pid, ("", 0.0))[1]))

    def stop(self) -> dict[str, list[float]]:
        self._stop.set()
        self._thread.join()
        by: dict[str, list[float]] = {}
        for role, mib in self.peaks.values():
            by.setdefault(role, []).append(round(mib, 1))
        return by


def first_file(root: Path, since: float, found: list[float], stop: threading.Event) -> None:
    """Record in ``found`` the seconds from ``since`` until a file written whole appears in ``root`` or
    a directory of it (a source tree's depth); the local store's temp directory does not count."""
    while not stop.is_set():
        for d in os.scandir(root) if root.is_dir() else ():
            if d.name == TMP_DIR:
                continue
            if d.is_file() or (d.is_dir() and any(e.is_file() for e in os.scandir(d.path))):
                found.append(time.monotonic() - since)
                return
        time.sleep(0.01)


def first_byte_line(first: float | None, client: float, start: float, stats) -> str:
    """The first file's seconds after the call, and what they were spent on."""
    if first is None:
        return "no file seen"
    prepare, provision = stats.phases.get("prepare", 0.0), stats.phases.get("provision", 0.0)
    rest = first - client - start - prepare - provision
    return (f"{first:.2f} s after the call = client prepare {client:.2f} + coordinator start {start:.2f} + "
            f"coordinator prepare {prepare:.2f} + provision {provision:.2f} + first chunks {rest:.2f} "
            f"(submitted, read, sent, first object written); the coordinator learnt of its first chunk "
            f"written whole {stats.first_byte_seconds} s after its job started")


def role(cmdline: str) -> str:
    """``benchutil.our_role``, except that moto (a child of this process, so inside its process tree) is
    ``store``: its CPU is counted apart, not as ours."""
    return "store" if "moto_server" in cmdline else our_role(cmdline)


def seed_bucket(src: Path, count: int, scratch: Path) -> str:
    """Copy the tree at ``src`` into a new moto bucket with our own tool (not timed, a home of its own so
    its processes are not counted with the measured run's); return the bucket's URI."""
    bucket = create_bucket("s3")
    home = os.environ["SKYPLANE_HOME"]
    os.environ["SKYPLANE_HOME"] = str(scratch / "seed-home")
    try:
        with Timer() as t:
            stats = copy(str(src), bucket + "/", src_region="local:src")
    finally:
        os.environ["SKYPLANE_HOME"] = home
    if stats.objects != count:
        raise SystemExit(f"seeding moto copied {stats.objects} objects, not {count}")
    print(f"  seeded {bucket} with {count} objects in {t.seconds:.1f} s (ours, not timed)", flush=True)
    return bucket


class StoreLoad:
    """moto's load while one tool runs: its CPU and its open connections (from /proc), every
    ``interval`` seconds until :meth:`stop`."""

    def __init__(self, pid: int, interval: float = 0.25) -> None:
        self.pid, self.interval = pid, interval
        self.samples: list[tuple[float, float, int]] = []  # (monotonic seconds, CPU-s so far, connections)
        self._stop = threading.Event()
        self._sample()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _connections(self) -> int:
        """moto's open sockets but its listening one: its connections (a listdir and a readlink per
        file descriptor, cheaper than /proc/net/tcp with its TIME_WAIT lines)."""
        n = 0
        fds = f"/proc/{self.pid}/fd"
        for fd in os.listdir(fds):
            try:
                n += os.readlink(f"{fds}/{fd}").startswith("socket:")
            except OSError:
                continue
        return max(0, n - 1)

    def _sample(self) -> None:
        self.samples.append((time.monotonic(), cpu_seconds(self.pid), self._connections()))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def stop(self) -> str:
        """Stop sampling; moto's busy fraction over the run and over each tenth of it, and the
        connections open to it (mean per tenth; the run's least and most)."""
        self._stop.set()
        self._thread.join()
        self._sample()
        (t0, c0, _), (t1, c1, _) = self.samples[0], self.samples[-1]
        self.busy = (c1 - c0) / max(1e-9, t1 - t0)
        tenths = []
        for k in range(10):
            lo, hi = t0 + (t1 - t0) * k / 10, t0 + (t1 - t0) * (k + 1) / 10
            part = [s for s in self.samples if lo <= s[0] <= hi]
            if len(part) < 2:
                tenths.append("-")
                continue
            busy = (part[-1][1] - part[0][1]) / max(1e-9, part[-1][0] - part[0][0])
            conns = sum(s[2] for s in part) / len(part)
            tenths.append(f"{busy:.2f}/{conns:.0f}")
        conns = [s[2] for s in self.samples[1:-1]] or [0]
        return (f"moto busy {self.busy:.2f} of {t1 - t0:.1f} s; per tenth busy/connections "
                f"{' '.join(tenths)}; connections {min(conns)}-{max(conns)}")


def run_ours(src: str, dst: Path, source: str, home: Path) -> dict:
    """One copy of ours from ``src`` to ``dst``, timed and measured (see the module's docstring); the
    figures as a JSON-able dict (a ``--before`` child prints them)."""
    os.environ["SKYPLANE_HOME"] = str(home)
    tree = TreeCPU(os.getpid(), marker=str(home), from_now=True)
    rss = PeakRSS(str(home))
    found: list[float] = []
    done = threading.Event()
    # a local source: two region tags, as two regions' stores would be: on this one host the plan has
    # the source's gateway write the destination itself (Plan.on_one_host), as a user's default run
    # does; a bucket: the region it reports, as the CLI finds it
    regions = {"src_region": "local:src", "dst_regions": ["local:dst"]} if source == "local" else {}
    transfer = Transfer(TransferRequest(src=src, dsts=[str(dst)], **regions))
    with Timer() as t:
        call = time.monotonic()
        watcher = threading.Thread(target=first_file, args=(dst, call, found, done), daemon=True)
        watcher.start()
        transfer.prepare()
        prepared = time.monotonic()
        handle = transfer.start()
        started = time.monotonic()
        stats = handle.result()
    done.set()
    cpu = tree.by(role)
    cpu.pop("store", None)
    first = found[0] if found else None
    return {"seconds": t.seconds, "cpu": cpu, "peaks": rss.stop(), "first": first,
            "summary": f"{t.seconds:.2f} s, {stats.chunks} chunks, {stats.retries} retries, phases {stats.phases}",
            "first_line": first_byte_line(first, prepared - call, started - prepared, stats)}


def run_child(code: Path, src: str, dst: Path, source: str, home: Path) -> dict:
    """:func:`run_ours` on the packages of the checkout at ``code``, in a child process (PYTHONPATH and
    cwd: ``code``, so its coordinator and gateways run that code too). Ours and ``--before`` both run
    so: neither's client figures count this process's samplers."""
    env = {**os.environ, "PYTHONPATH": str(code)}
    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", src, str(dst), source, str(home)],
                         cwd=code, env=env, capture_output=True, text=True, timeout=7200)
    if out.returncode:
        raise SystemExit(f"the run of {code}'s code failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    if len(sys.argv) == 6 and sys.argv[1] == "--child":  # run_child's child: one copy, its figures as JSON
        src, dst, source, home = sys.argv[2:]
        print(json.dumps(run_ours(src, Path(dst), source, Path(home))))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--from", dest="source", choices=("local", "s3"), default="local",
                    help="a local tree, or a moto bucket seeded from it (downloaded to a local directory)")
    ap.add_argument("--objects", type=int, default=20_000)
    ap.add_argument("--size", default="1KiB")
    ap.add_argument("--transfers", type=int, default=16, help="rclone's --transfers and --checkers")
    ap.add_argument("--dir", default=None, help="where the three trees go (default: /dev/shm when it has room "
                                                "for them, else the temp directory); 1,000,000 files take "
                                                "~12 GiB of tmpfs, so a disk directory on a machine short of RAM")
    ap.add_argument("--before", type=Path, metavar="DIR", action="append", default=[],
                    help="also run ours on the packages of another checkout in DIR (e.g. `git archive main gateway "
                         "planner skyplane_provider | tar -x -C DIR`), right after ours; repeated: each one, "
                         "named by its directory")
    ap.add_argument("--rounds", type=int, default=1,
                    help="copies of the one seeded source per tool, the tools alternating within each round")
    args = ap.parse_args()
    compile_ours()  # as an installed package is: no module compiled again in each process
    for d in args.before:
        compile_ours(d.resolve())
    count, size = args.objects, parse_size(args.size)
    room = shutil.disk_usage("/dev/shm").free if os.path.isdir("/dev/shm") else 0
    trees = 3 + len(args.before)
    base_dir = args.dir or ("/dev/shm" if room > trees * count * max(size, 4096) + 2 * 1024**3 else None)
    scratch = Path(tempfile.mkdtemp(prefix="scale-", dir=base_dir))
    home = scratch / "home"
    os.environ["SKYPLANE_HOME"] = str(home)
    emulators = None
    try:
        src = scratch / "src"
        make_tree(src, count, size)
        codes = {"ours": REPO, **{f"before {d.name}" if len(args.before) > 1 else "before": d.resolve()
                                  for d in args.before}}
        expected = digests("file://" + str(src))
        disk = "tmpfs" if base_dir == "/dev/shm" else "disk"
        print(f"scale: {count} objects x {size} B ({count * size / MiB:.0f} MiB, random) from "
              + (f"a local directory ({disk})" if args.source == "local" else "a moto bucket")
              + f" to a local directory ({disk})", flush=True)
        print(f"  {machine_line()}", flush=True)
        ours_src, rclone_src, store_pid = str(src), str(src), None
        if args.source == "s3":
            emulators = start_all(("s3",), log_dir=scratch / "logs")
            os.environ.update(emulators.env)
            store_pid = emulators.running["s3"].pid
            ours_src = seed_bucket(src, count, scratch)
            rclone_src = "src:" + ours_src.removeprefix("s3://")
            os.environ.update(rclone_remote("src", "s3", emulators.endpoints["s3"]))
            print(f"  {machine_line()} (seeded)", flush=True)
        env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}  # Debian's rclone cannot load it
        store_cpu: dict[str, float] = {}
        store_busy: dict[str, float] = {}

        def measured(tool: str, run):
            load = StoreLoad(store_pid) if store_pid else None
            before = cpu_seconds(store_pid) if store_pid else 0.0
            result = run()
            if store_pid:
                store_cpu[tool] = cpu_seconds(store_pid) - before
                print(f"  {tool}: {load.stop()}", flush=True)
                store_busy[tool] = load.busy
            return result

        results: list[tuple[int, str, float, dict]] = []  # (round, tool, moto CPU-s, figures)

        def fresh(name: str) -> Path:
            d = scratch / name.replace(" ", "-")
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir()
            return d

        def ours_runs(n: int, order) -> None:
            for name, code in order:
                dst = fresh(name)
                r = measured(name, lambda: run_child(code, ours_src, dst, args.source, scratch / f"home-{n}"
                                                     if name == "ours" else scratch / f"{dst.name}-home-{n}"))
                if digests("file://" + str(dst)) != expected:
                    raise SystemExit(f"{name}'s copy does not match the source")
                print(f"  round {n} {name}: {r['summary']} ({machine_line()})", flush=True)
                print(f"  round {n} {name} first byte: {r['first_line']}", flush=True)
                results.append((n, name, store_cpu.get(name, 0.0), {**r, "busy": store_busy.get(name)}))

        for n in range(1, args.rounds + 1):
            theirs = fresh("rclone")
            # Odd rounds run rclone first, even rounds last: an emulator's speed drifts within a run
            # (moto's CPU per 1,000 GETs rose 2.31 -> 2.51 over six copies of one 20,000-object bucket),
            # so no tool may always have the first place.
            ours_first = n % 2 == 0
            if ours_first:
                ours_runs(n, reversed(codes.items()))

            def run_theirs():
                # Under the samplers that measure ours (run_ours), their figures dropped but rclone's
                # peak RSS: each costs CPU that the two cores' other users (moto) then lack.
                with sampled_alike(str(scratch)):
                    rss = PeakRSS(str(theirs))
                    try:
                        run = run_rclone(rclone_src, str(theirs), env, args.transfers,
                                         extra=("--checkers", str(args.transfers)))
                    finally:
                        peaks = rss.stop()
                return run, peaks

            rclone, rclone_peaks = measured("rclone", run_theirs)
            if digests("file://" + str(theirs)) != expected:
                raise SystemExit("rclone's copy does not match the source")
            print(f"  round {n} rclone: {rclone.seconds:.2f} s ({machine_line()})", flush=True)
            results.append((n, "rclone", store_cpu.get("rclone", 0.0), {"seconds": rclone.seconds,
                                                                         "rclone_cpu": rclone.cpu_seconds,
                                                                         "busy": store_busy.get("rclone"),
                                                                         "peaks": rclone_peaks}))
            if not ours_first:
                ours_runs(n, codes.items())

        per_k = 1000 / count

        def busy(r: dict) -> str:
            return "-" if r.get("busy") is None else f"{r['busy']:.2f}"

        print()
        print("| round | run | seconds | objects/s | CPU-s per 1,000 objects | moto CPU-s per 1,000 objects | "
              "moto busy | peak RSS MiB | first byte s |")
        print("|---|---|---|---|---|---|---|---|---|")
        for n, name, moto, r in results:
            moto_k = f"{moto * per_k:.3f}" if store_pid else "-"
            if name == "rclone":
                print(f"| {n} | rclone copy --transfers {args.transfers} --checkers {args.transfers} | "
                      f"{r['seconds']:.2f} | {count / r['seconds']:.0f} | {r['rclone_cpu'] * per_k:.3f} | {moto_k} | "
                      f"{busy(r)} | {max((m for v in r['peaks'].values() for m in v), default=0):.0f} | |")
                continue
            cpu, first = r["cpu"], r["first"]
            rss_text = ", ".join(f"{k} {max(v):.0f} (of {len(v)})" for k, v in sorted(r["peaks"].items()))
            print(f"| {n} | {name} | {r['seconds']:.2f} | {count / r['seconds']:.0f} | {sum(cpu.values()) * per_k:.3f} "
                  f"({', '.join(f'{k} {v * per_k:.3f}' for k, v in sorted(cpu.items()))}) | {moto_k} | "
                  f"{busy(r)} | {rss_text} | {'' if first is None else f'{first:.2f}'} |")
        if store_pid:
            print(f"  moto's peak RSS: {peak_rss_mib(store_pid):.0f} MiB")
        print()
        for name in ("rclone", *codes):
            secs = [r["seconds"] for _, tool, _, r in results if tool == name]
            print(f"  {name}: median {statistics.median(secs):.2f} s ({count / statistics.median(secs):.0f} obj/s) "
                  f"over {len(secs)} round(s): {', '.join(f'{s:.2f}' for s in secs)}")
        ours_s = statistics.median(r["seconds"] for _, tool, _, r in results if tool == "ours")
        rclone_s = statistics.median(r["seconds"] for _, tool, _, r in results if tool == "rclone")
        print(ratio_line("scale", ours_s, rclone_s, f"{count} x {size} B {args.source} -> local, medians of "
                                                    f"{args.rounds} round(s); ours {count / ours_s:.0f} obj/s, "
                                                    f"rclone {count / rclone_s:.0f} obj/s"))
    finally:
        clean_up(scratch, emulators)
    return 0


if __name__ == "__main__":
    sys.exit(main())
