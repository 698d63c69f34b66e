"""Gateway throughput on loopback: one source and one destination gateway moving a file between two
local-directory stores, against a plain Python socket copy of the same bytes and against ``cp``.

    .venv/bin/python benchmarks/gateway_loopback.py [--size 1GiB] [--chunk 32MiB] [--connections 4]

The file is half compressible (CSV-like text) and half random, in chunk-sized stretches. Every run
starts with a warm page cache; each figure is the best of ``--repeat`` runs. Prints one line per
comparison, ``gateway_loopback ours/baseline=R``, R = our throughput / the baseline's (>1: we are
faster). Gateways are started (and their start-up excluded) with the local provisioner.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from benchutil import cpu_seconds, peak_rss_mib
from gateway.control_client import GatewayClient
from gateway.stores import open_store
from gateway.stores.base import PartInfo
from planner.plan import Hop, PartitionProgram, RegionProgram
from skyplane_provider.provisioners import get_provisioner
from skyplane_provider.provisioners.base import GatewaySpec
from skyplane_provider.transfer.request import parse_size

MiB = 1024**2
SRC, DST = "bench:src", "bench:dst"


def make_file(path: Path, size: int, stretch: int) -> None:
    """Alternate stretches of CSV-like text and random bytes."""
    line = b"".join(b"%d,sensor-%d,%d.%d,ok\n" % (i, i % 50, i * 7 % 1000, i % 10) for i in range(20_000))
    text = (line * (stretch // len(line) + 1))[:stretch]
    with open(path, "wb") as f:
        written, i = 0, 0
        while written < size:
            block = text if i % 2 == 0 else os.urandom(stretch)
            block = block[: size - written]
            f.write(block)
            written += len(block)
            i += 1


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(16 * MiB):
            h.update(block)
    return h.hexdigest()


def run_gateways(src_dir: Path, dst_dir: Path, size: int, chunk: int, connections: int, *, compress: bool,
                 encrypt: bool) -> float:
    """Seconds from the first submitted chunk until the destination object is complete."""
    job_id, secret, key = uuid.uuid4().hex, os.urandom(32).hex(), os.urandom(32).hex()
    programs = {SRC: RegionProgram(SRC, {0: PartitionProgram("read", (Hop(DST, connections),))}),
                DST: RegionProgram(DST, {0: PartitionProgram("receive", (), write=True)})}
    specs = []
    for region, program in programs.items():
        config = {"program": program.to_dict(), "job_secret": secret, "control_token": uuid.uuid4().hex,
                  "compress": compress, "encrypt": encrypt, "queue_chunks": 4}
        if encrypt:
            config["encryption_key"] = key
        specs.append(GatewaySpec(f"{region}/0", region, config))
    with get_provisioner("local").provision(job_id, specs) as fleet:
        h = {g.region: g for g in fleet.gateways}
        src = GatewayClient(h[SRC].control_url, h[SRC].control_token)
        dst = GatewayClient(h[DST].control_url, h[DST].control_token)
        src.set_peers({DST: [{"gateway_id": h[DST].gateway_id, "host": h[DST].data_host,
                              "data_port": h[DST].data_port}]})
        src_root, dst_root = "file://" + str(src_dir), "file://" + str(dst_dir)
        store = open_store(dst_root)
        started = time.perf_counter()
        upload = store.begin_multipart("out.bin")
        reqs = [{"id": i, "partition": 0,
                 "objects": [{"key": "in.bin", "offset": off, "length": min(chunk, size - off),
                              "to": [{"dest": 0, "key": "out.bin", "upload_id": upload, "part": i + 1}]}]}
                for i, off in enumerate(range(0, size, chunk))]
        body = {"src": src_root, "dests": [{"region": DST, "store": dst_root}]}
        parts: dict[int, PartInfo] = {}
        accepted, cursor, polls = 0, 0, 0
        while len(parts) < len(reqs):
            # Poll like the orchestrator does (every 50 ms): on 2 cores, control traffic costs CPU.
            if accepted < len(reqs):
                accepted += src.submit({**body, "chunks": reqs[accepted:]})
            status = dst.status(cursor)
            cursor = status["next"]
            for e in status["events"]:
                if e["type"] != "written":
                    raise RuntimeError(f"gateway reported {e}")
                p = e["objects"][0]["part"]
                parts[p["part_number"]] = PartInfo(p["part_number"], p["etag"], p["size"])
            polls += 1
            if polls % 20 == 0 and src.status(0)["events"]:
                raise RuntimeError(f"source gateway reported {src.status(0)['events']}")
            time.sleep(0.05)
        moved = time.perf_counter() - started
        store.complete_multipart("out.bin", upload, list(parts.values()))
        seconds = time.perf_counter() - started
        wire = src.status(0)["counters"]["bytes_sent_wire"]
        peak = {g.region: peak_rss_mib(g.pid) for g in fleet.gateways}
        cpu = sum(cpu_seconds(g.pid) for g in fleet.gateways)
    print(f"  gateways compress={compress} encrypt={encrypt}: {seconds:.2f} s, {size / seconds / MiB:.0f} MiB/s "
          f"(all parts written after {moved:.2f} s, then the local store assembles them), "
          f"wire/data={wire / size:.3f}, peak RSS source {peak[SRC]:.0f} MiB, destination {peak[DST]:.0f} MiB, "
          f"gateway CPU {cpu:.1f} s",
          flush=True)
    return seconds


def run_socket_copy(src: Path, dst: Path) -> float:
    """Read the file, send it over one loopback TCP connection, write it: plain Python, 4 MiB buffers."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def receive() -> None:
        conn, _ = server.accept()
        buf = bytearray(4 * MiB)
        view = memoryview(buf)
        with conn, open(dst, "wb") as out:
            while n := conn.recv_into(view):
                out.write(view[:n])

    t = threading.Thread(target=receive)
    started = time.perf_counter()
    t.start()
    with socket.create_connection(("127.0.0.1", port)) as s, open(src, "rb") as f:
        buf = bytearray(4 * MiB)
        while n := f.readinto(buf):
            s.sendall(memoryview(buf)[:n])
    t.join()
    seconds = time.perf_counter() - started
    server.close()
    print(f"  python socket copy: {seconds:.2f} s, {src.stat().st_size / seconds / MiB:.0f} MiB/s", flush=True)
    return seconds


def run_cp(src: Path, dst: Path) -> float:
    started = time.perf_counter()
    subprocess.run(["cp", str(src), str(dst)], check=True)
    seconds = time.perf_counter() - started
    print(f"  cp: {seconds:.2f} s, {src.stat().st_size / seconds / MiB:.0f} MiB/s", flush=True)
    return seconds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="1GiB")
    ap.add_argument("--chunk", default="32MiB")
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--dir", default=None,
                    help="work directory (default: a temp dir in /dev/shm, so that the disk is not measured)")
    args = ap.parse_args()
    size, chunk = parse_size(args.size), parse_size(args.chunk)
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    work = Path(args.dir or tempfile.mkdtemp(prefix="gw-bench-", dir=shm))
    os.environ.setdefault("SKYPLANE_HOME", str(work / "home"))
    try:
        src_dir, dst_dir = work / "src", work / "dst"
        src_dir.mkdir(parents=True, exist_ok=True)
        make_file(src_dir / "in.bin", size, chunk)
        expected = sha256_file(src_dir / "in.bin")
        print(f"gateway_loopback: {size / MiB:.0f} MiB, chunks of {chunk / MiB:.0f} MiB, "
              f"{args.connections} connections, best of {args.repeat}", flush=True)

        def best(run, check: Path) -> float:
            times = []
            for _ in range(args.repeat):
                shutil.rmtree(dst_dir, ignore_errors=True)
                dst_dir.mkdir()
                times.append(run())
                if sha256_file(check) != expected:
                    raise SystemExit(f"copy at {check} does not match the source")
            return min(times)

        ours = {
            "compress+encrypt": best(lambda: run_gateways(src_dir, dst_dir, size, chunk, args.connections,
                                                          compress=True, encrypt=True), dst_dir / "out.bin"),
            "plain": best(lambda: run_gateways(src_dir, dst_dir, size, chunk, args.connections,
                                               compress=False, encrypt=False), dst_dir / "out.bin"),
        }
        baselines = {
            "python socket copy": best(lambda: run_socket_copy(src_dir / "in.bin", dst_dir / "out.bin"),
                                       dst_dir / "out.bin"),
            "cp": best(lambda: run_cp(src_dir / "in.bin", dst_dir / "out.bin"), dst_dir / "out.bin"),
        }
        for name, seconds in ours.items():
            for base, base_seconds in baselines.items():
                print(f"gateway_loopback ours/baseline={base_seconds / seconds:.2f} "
                      f"(ours: {name} {size / seconds / MiB:.0f} MiB/s; baseline: {base} "
                      f"{size / base_seconds / MiB:.0f} MiB/s)")
    finally:
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
