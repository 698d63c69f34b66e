"""Scale: a local tree of many 1 KiB files, ours against rclone, with the memory each of our processes held.

    .venv/bin/python benchmarks/scale.py [--objects 20000] [--size 1KiB] [--transfers 16] [--dir DIR]

Source: ``--objects`` random files of ``--size`` bytes, 1,000 per directory, on tmpfs (``/dev/shm`` when
it has room); destination: another tmpfs directory (rclone's local backend against our local stores
behind a source and a destination gateway, no emulator in the way). Side by side in one run:

- **rclone**: ``rclone copy SRC DST --transfers T --checkers T``.
- **ours**: a ``Transfer`` with default flags run as ``skyplane_provider.transfer.copy`` runs it
  (what ``skyplane-provider cp -r`` runs: ``prepare()``, ``start()``, the handle's ``result()``),
  timed from the call to its return (listing, coordinator and gateway start-up, transfer,
  verification, teardown).

Measured for ours: peak RSS (``VmHWM``) of the coordinator process and of each gateway process
(sampled every 0.2 s from /proc: every process whose command line names this run's
``SKYPLANE_HOME``, and their children), seconds from the call to the first destination file
written whole (a watcher polls the destination; a gateway's temp file does not count), CPU-seconds
per 1,000 objects (client, coordinator and gateways: ``benchutil.TreeCPU``). The first byte is
broken down: the client's ``prepare()`` (first listing page, pre-flight, plan), the coordinator's
start (``start()`` until its API listens), its ``prepare`` and ``provision`` phases, and the rest
(the first chunks submitted, read, sent and written); and when the coordinator learnt of its first
chunk written whole (``first_byte_seconds``). Every destination file is checked (sha256). Prints a
table and ``scale ours/baseline=R`` (R = rclone's seconds / ours: above 1, we are faster).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

from baselines import run_rclone
from benchutil import MiB, Timer, TreeCPU, _cmdline, compile_ours, machine_line, our_role, ratio_line, status_kib
from small_files import make_tree

from gateway.stores.local import TMP_DIR
from skyplane_provider.testing.samples import digests
from skyplane_provider.transfer import Transfer, TransferRequest
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--objects", type=int, default=20_000)
    ap.add_argument("--size", default="1KiB")
    ap.add_argument("--transfers", type=int, default=16, help="rclone's --transfers and --checkers")
    ap.add_argument("--dir", default=None, help="where the three trees go (default: /dev/shm when it has room "
                                                "for them, else the temp directory); 1,000,000 files take "
                                                "~12 GiB of tmpfs, so a disk directory on a machine short of RAM")
    args = ap.parse_args()
    compile_ours()  # as an installed package is: no module compiled again in each process
    count, size = args.objects, parse_size(args.size)
    room = shutil.disk_usage("/dev/shm").free if os.path.isdir("/dev/shm") else 0
    base_dir = args.dir or ("/dev/shm" if room > 3 * count * max(size, 4096) + 2 * 1024**3 else None)
    scratch = Path(tempfile.mkdtemp(prefix="scale-", dir=base_dir))
    home = scratch / "home"
    os.environ["SKYPLANE_HOME"] = str(home)
    try:
        src, theirs, ours_dst = scratch / "src", scratch / "rclone", scratch / "ours"
        make_tree(src, count, size)
        theirs.mkdir()
        ours_dst.mkdir()
        expected = digests("file://" + str(src))
        env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}  # Debian's rclone cannot load it
        print(f"scale: {count} objects x {size} B ({count * size / MiB:.0f} MiB, random) from a local directory "
              f"({'tmpfs' if base_dir == '/dev/shm' else 'disk'}) to another", flush=True)
        print(f"  {machine_line()}", flush=True)

        rclone = run_rclone(str(src), str(theirs), env, args.transfers, extra=("--checkers", str(args.transfers)))
        if digests("file://" + str(theirs)) != expected:
            raise SystemExit("rclone's copy does not match the source")
        print(f"  rclone: {rclone.seconds:.2f} s", flush=True)

        tree = TreeCPU(os.getpid(), marker=str(home), from_now=True)
        rss = PeakRSS(str(home))
        found: list[float] = []
        done = threading.Event()
        # two region tags, as two regions' stores would be: on this one host the plan has the source's
        # gateway write the destination itself (Plan.on_one_host), as a user's default run does
        transfer = Transfer(TransferRequest(src=str(src), dsts=[str(ours_dst)], src_region="local:src",
                                            dst_regions=["local:dst"]))
        with Timer() as t:
            call = time.monotonic()
            watcher = threading.Thread(target=first_file, args=(ours_dst, call, found, done), daemon=True)
            watcher.start()
            transfer.prepare()
            prepared = time.monotonic()
            handle = transfer.start()
            started = time.monotonic()
            stats = handle.result()
        done.set()
        cpu = tree.by(our_role)
        peaks = rss.stop()
        if digests("file://" + str(ours_dst)) != expected:
            raise SystemExit("our copy does not match the source")
        first = found[0] if found else None
        print(f"  ours: {t.seconds:.2f} s, {stats.chunks} chunks, {stats.retries} retries, phases {stats.phases}",
              flush=True)
        print(f"  first byte: {first_byte_line(first, prepared - call, started - prepared, stats)}", flush=True)

        ours_cpu = sum(cpu.values())
        print()
        print("| run | seconds | objects/s | CPU-s per 1,000 objects | peak RSS MiB | first byte s |")
        print("|---|---|---|---|---|---|")
        print(f"| rclone copy --transfers {args.transfers} --checkers {args.transfers} | {rclone.seconds:.2f} | "
              f"{count / rclone.seconds:.0f} | {rclone.cpu_seconds / count * 1000:.3f} | | |")
        rss_text = ", ".join(f"{role} {max(v):.0f} (of {len(v)})" for role, v in sorted(peaks.items()))
        print(f"| ours | {t.seconds:.2f} | {count / t.seconds:.0f} | {ours_cpu / count * 1000:.3f} "
              f"({', '.join(f'{k} {v / count * 1000:.3f}' for k, v in sorted(cpu.items()))}) | {rss_text} | "
              f"{'' if first is None else f'{first:.2f}'} |")
        print()
        print(ratio_line("scale", t.seconds, rclone.seconds,
                         f"{count} x {size} B local -> local; ours {count / t.seconds:.0f} obj/s, "
                         f"rclone {count / rclone.seconds:.0f} obj/s; peak RSS MiB {peaks}"))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
