"""Resume after the coordinator is killed: how much a resumed job sends again (issue #15, "Measure").

    .venv/bin/python benchmarks/resume.py [--size 4GiB] [--at 0.5] [--to local|s3]

One object of ``--size`` random bytes in a local directory (tmpfs when it has room) is copied with
default flags (``skyplane_provider.transfer``, what ``skyplane-provider cp`` runs; a source and a
destination gateway with a TCP hop between them) to ``--to``: another local directory (default) or a
moto bucket (moto holds every part in memory: keep ``--size`` to what this machine's memory allows).
Three runs, side by side:

1. **uninterrupted**: the whole copy, timed (the baseline: what a job that is never killed costs);
2. **killed**: the same copy as a new job, whose coordinator process gets SIGKILL once its manifest
   records ``--at`` of the object's bytes written (multipart parts; the fleet tears itself down);
3. **resumed**: that job continued under its id (``resume=True``, what ``skyplane-provider resume
   JOB`` runs), timed.

Printed: the **bytes sent again**: what the source gateways sent in the killed run (their
``bytes_sent_wire`` counters, read through their control API until they stopped after the kill) plus
what the resumed run sent, minus what the uninterrupted run sent for the whole object, as a share of
it and in chunks (the goal: at most the chunks in flight, well under 5%); beside it, what the
manifest did not record of what had been sent at the kill (what a resume that trusts the manifest
alone sends again: the parts the store holds but the manifest missed, and those in flight); what
restarting the object from its first byte would have sent again (everything recorded: a copy that
cannot continue a multipart upload, as ours could not before #15); and the killed + resumed time
against the uninterrupted one. The destination is checked (sha256) after the uninterrupted and after
the resumed run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

from benchutil import MiB, Timer, clean_up, machine_line
from gateway.control_client import GatewayClient
from planner.errors import GatewayError
from skyplane_provider.coordinator.jobdir import ADDRESS, job_dir
from skyplane_provider.testing.buckets import create_bucket
from skyplane_provider.testing.emulators import start_all
from skyplane_provider.testing.leftovers import coordinator_pids, gateway_pids
from skyplane_provider.testing.samples import digests
from skyplane_provider.transfer import Transfer, TransferRequest
from skyplane_provider.transfer.request import parse_size


def recorded(manifest: Path) -> tuple[int, int]:
    """(parts, bytes) the job's manifest records written, read the way another process may (WAL)."""
    try:
        with sqlite3.connect(f"file:{manifest}?mode=ro", uri=True, timeout=5) as db:
            return db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM parts").fetchone()
    except sqlite3.Error:
        return 0, 0


def memory_available() -> int:
    """Bytes of memory the kernel says are available (``MemAvailable``)."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def make_object(path: Path, size: int) -> str:
    """``size`` random bytes at ``path`` (1 MiB of randomness repeated with a counter: lz4 finds no
    match within its window, and it is quick to make); its sha256."""
    block, digest = os.urandom(MiB), hashlib.sha256()
    with path.open("wb") as f:
        for i in range(0, size, MiB):
            piece = (i.to_bytes(8, "little") + block[8:])[:size - i]
            f.write(piece)
            digest.update(piece)
    return digest.hexdigest()


def source_clients(directory: Path) -> list[GatewayClient]:
    """Control clients of the job's source gateways (region ``local:src``)."""
    clients = []
    for gw in sorted(directory.glob("gw-*")):
        config = json.loads((gw / "config.json").read_text())
        if config["region"] == "local:src":
            ready = json.loads((gw / "ready.json").read_text())
            clients.append(GatewayClient(f"http://{config['control_host']}:{ready['control_port']}",
                                         config["control_token"], timeout=2.0))
    return clients


def sent_now(client: GatewayClient) -> int:
    return client.status(since=1 << 62)["counters"]["bytes_sent_wire"]


def sent_until_gone(clients: list[GatewayClient], first: list[int]) -> int:
    """The frame bytes the source gateways sent, read again and again until each has stopped (after
    the kill they finish or drop what they hold, then exit); ``first``: each one's reading before."""
    last = dict(enumerate(first))
    live = dict(enumerate(clients))
    while live:
        for i, client in list(live.items()):
            try:
                last[i] = sent_now(client)
            except GatewayError:
                del live[i]
        time.sleep(0.02)
    return sum(last.values())


def wait_gone(job_id: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while (gateway_pids(job_id) or coordinator_pids(job_id)) and time.monotonic() < deadline:
        time.sleep(0.1)
    if gateway_pids(job_id) or coordinator_pids(job_id):
        raise SystemExit(f"job {job_id}: processes left {gateway_pids(job_id) + coordinator_pids(job_id)}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="4GiB")
    ap.add_argument("--at", type=float, default=0.5, help="share of the bytes written when the coordinator is killed")
    ap.add_argument("--to", choices=("local", "s3"), default="local")
    args = ap.parse_args()
    size = parse_size(args.size)
    # tmpfs only where it has room and so has the memory behind it (a full tmpfs takes the machine down)
    room = min(shutil.disk_usage("/dev/shm").free, memory_available()) if os.path.isdir("/dev/shm") else 0
    base_dir = "/dev/shm" if room > (2 if args.to == "s3" else 3) * size + 2 * 1024**3 else None
    scratch = Path(tempfile.mkdtemp(prefix="resume-", dir=base_dir))
    os.environ["SKYPLANE_HOME"] = str(scratch / "home")
    emulators = None
    try:
        src = scratch / "src"
        src.mkdir()
        expected = {"big.bin": make_object(src / "big.bin", size)}
        if args.to == "s3":
            emulators = start_all(("s3",), log_dir=scratch / "logs")
            os.environ.update(emulators.env)
            bucket = create_bucket("s3")
            dsts = {run: f"{bucket}/{run}/" for run in ("uninterrupted", "killed")}
            regions: dict = {"src_region": "local:src"}
        else:
            dsts = {run: "file://" + str(scratch / run) + "/" for run in ("uninterrupted", "killed")}
            for run in dsts:
                (scratch / run).mkdir()
            regions = {"src_region": "local:src", "dst_regions": ["local:dst"]}  # a TCP hop, as between clouds
        print(f"resume: one object of {size / MiB:.0f} MiB (random) from a local directory "
              f"({'tmpfs' if base_dir else 'disk'}) to {args.to}, coordinator killed at {args.at:.0%} written",
              flush=True)
        print(f"  {machine_line()}", flush=True)

        with Timer() as whole:
            stats = Transfer(TransferRequest(src=str(src), dsts=[dsts["uninterrupted"]], **regions)).run()
        if digests(dsts["uninterrupted"]) != expected:
            raise SystemExit("the uninterrupted copy does not match the source")
        if args.to == "local":
            shutil.rmtree(scratch / "uninterrupted")  # room for the next copy
        print(f"  uninterrupted: {whole.seconds:.2f} s, {stats.chunks} chunks, "
              f"{stats.bytes_on_wire / MiB:.0f} MiB on the wire", flush=True)

        options = dict(src=str(src), dsts=[dsts["killed"]], **regions)
        with Timer() as killed:
            handle = Transfer(TransferRequest(**options)).start()
            directory = job_dir(handle.job_id)
            manifest = directory / "manifest.sqlite3"
            while recorded(manifest)[1] < args.at * size:
                if handle.done():
                    raise SystemExit("the job ended before the kill: raise --size")
                time.sleep(0.02)
            clients = source_clients(directory)
            before = [sent_now(c) for c in clients]
            os.kill(json.loads((directory / ADDRESS).read_text())["pid"], signal.SIGKILL)
            sent_at_kill, sent = sum(before), sent_until_gone(clients, before)
            wait_gone(handle.job_id)
        parts, done = recorded(manifest)  # what the manifest holds once the kill has landed
        print(f"  killed: after {killed.seconds:.2f} s with {parts} parts ({done / MiB:.0f} MiB) recorded", flush=True)

        with Timer() as again:
            resumed = Transfer(TransferRequest(**options, job_id=handle.job_id, resume=True)).run()
        if digests(dsts["killed"]) != expected:
            raise SystemExit("the resumed copy does not match the source")
        missing = size - done
        resent = max(sent + resumed.bytes_on_wire - stats.bytes_on_wire, 0)  # the whole object's, sent twice
        unrecorded = max(sent_at_kill - done, 0)  # what a resume trusting the manifest alone sends again
        chunk = stats.bytes_on_wire / max(stats.chunks, 1)
        print(f"  resumed: {again.seconds:.2f} s, {resumed.bytes_on_wire / MiB:.1f} MiB on the wire for "
              f"{missing / MiB:.1f} MiB not recorded", flush=True)
        print()
        print("| figure | value |")
        print("|---|---|")
        print(f"| object | {size / MiB:.0f} MiB, {stats.chunks} chunks of {size / max(stats.chunks, 1) / MiB:.0f} MiB, "
              f"{stats.bytes_on_wire / MiB:.1f} MiB on the wire uninterrupted |")
        print(f"| recorded at the kill | {parts} parts, {done / MiB:.0f} MiB ({done / size:.1%}) |")
        print(f"| sent by the source gateways: at the kill / until they stopped | {sent_at_kill / MiB:.1f} / "
              f"{sent / MiB:.1f} MiB |")
        print(f"| sent by the resumed run | {resumed.bytes_on_wire / MiB:.1f} MiB |")
        print(f"| sent again (killed + resumed - uninterrupted) | {resent / MiB:.1f} MiB = "
              f"{resent / stats.bytes_on_wire:.2%} of the object, {resent / chunk:.1f} chunks |")
        print(f"| sent at the kill and not recorded (what a resume trusting the manifest alone sends again) | "
              f"{unrecorded / MiB:.1f} MiB = {unrecorded / size:.2%}, {unrecorded / chunk:.1f} chunks |")
        print(f"| a restart from the first byte would send again | {done / MiB:.0f} MiB = {done / size:.0%} at least |")
        print(f"| uninterrupted / killed + resumed seconds | {whole.seconds:.2f} / "
              f"{killed.seconds:.2f} + {again.seconds:.2f} |")
        print()
        print(f"resume resent_share={resent / stats.bytes_on_wire:.4f} (goal: the chunks in flight, well under 5%; "
              f"{size / MiB:.0f} MiB to {args.to}, killed at {done / size:.0%})")
    finally:
        clean_up(scratch, emulators)
    return 0


if __name__ == "__main__":
    sys.exit(main())
