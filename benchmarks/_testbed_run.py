"""Running transfers on the emulated WAN and timing them: shared by the testbed benchmarks.

    with open_testbed("aws-us-east-1--gcp-us-west4-a") as tb:      # always torn down, even on SIGTERM
        make_dataset(src_dir, 64 * MiB, file_size=MiB)
        run = run_transfer(tb, src_dir, dst_dir, "aws:us-east-1", "gcp:us-west4-a", grid=grid_csv,
                           solver="ilp", connections=4, chunk_size=MiB)
        run.seconds, run.stats      # moving time (without gateway start-up and the final verification)
        run.rx_gbps                 # the destination's receive rate while data arrived
        single_stream(tb, src_dir, dst_dir, "aws:us-east-1", "gcp:us-west4-a")   # seconds, one TCP stream

Gateways run inside the region namespaces (local provisioner, ``Testbed.gateway_placement()``); the
stores are local directories (the filesystem is shared by every namespace; put them on ``/dev/shm``
so the disk is not measured). Run as root from the repository root or ``benchmarks/``.

As a script this module is the single-stream baseline's two ends (started by ``single_stream`` inside
the namespaces)::

    python _testbed_run.py recv BIND_HOST DIR          # prints PORT, then "BYTES SECONDS SHA256"
    python _testbed_run.py send HOST PORT DIR          # prints "BYTES SHA256"
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from skyplane_provider.provisioners.local import LocalProvisioner
from skyplane_provider.testbed import Testbed, load_scenario, teardown
from skyplane_provider.transfer.runner import Transfer
from skyplane_provider.transfer.request import TransferRequest
from skyplane_provider.transfer.stats import TransferStats

log = logging.getLogger(__name__)

MiB = 1024**2
_HEADER = struct.Struct("!QH")  # file size, name length; then the name and the bytes
_BUFFER = 4 * MiB


@contextlib.contextmanager
def open_testbed(scenario: str, *, scale_mbit_per_gbps: float | None = None) -> Iterator[Testbed]:
    """A testbed of ``scenario`` (a shipped name or a JSON path) that is taken down however the block
    ends: normally, on an exception, or on SIGTERM (turned into SystemExit while the block runs).
    If ``down()`` fails, the crash-proof ``teardown(id)`` runs as well."""
    sc = load_scenario(scenario)
    if scale_mbit_per_gbps:
        sc = sc.with_scale(scale_mbit_per_gbps)
    tb = Testbed(sc)
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        tb.up()
        yield tb
    finally:
        try:
            tb.down()
        except Exception:
            log.exception("testbed %s: down() failed; tearing down by id", tb.testbed_id)
            teardown(tb.testbed_id)
        finally:
            if signal.getsignal(signal.SIGTERM) is _exit_on_sigterm:  # else a fleet's teardown hook chains to it
                signal.signal(signal.SIGTERM, previous)


def _exit_on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signum)


def make_dataset(directory: Path, size: int, *, file_size: int) -> list[Path]:
    """``size`` bytes in files of ``file_size``, each half CSV-like text (lz4 shrinks it to about a
    quarter) and half random bytes (incompressible), in quarter-file stretches so that every chunk of
    a transfer has the same mix."""
    from gateway_loopback import make_file  # benchmarks/ is on sys.path when a benchmark runs

    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(max(1, size // file_size)):
        path = directory / f"part-{i:05d}.bin"
        make_file(path, file_size, max(1, file_size // 4))
        paths.append(path)
    return paths


class RxMeter:
    """Bytes arriving on a region's data links (its veths to the other regions, link-layer bytes as
    tbf counts them), sampled every 20 ms by a small process inside the region's namespace."""

    PROGRAM = ("import glob, sys, time\n"
               "files = glob.glob('/sys/class/net/to*/statistics/rx_bytes')\n"
               "while True:\n"
               "    n = sum(int(open(f).read()) for f in files)\n"
               "    print(f'{time.monotonic():.4f} {n}', flush=True)\n"
               "    time.sleep(0.02)\n")

    def __init__(self, tb: Testbed, region: str) -> None:
        self.samples: list[tuple[float, int]] = []
        self._tb = tb
        self._proc = tb.popen(region, [sys.executable, "-c", self.PROGRAM], stdout=subprocess.PIPE, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self._proc.stdout:
            t, n = line.split()
            self.samples.append((float(t), int(n)))

    def stop(self) -> None:
        self._tb.stop(self._proc)
        self._reader.join(timeout=5)

    def busy(self, since: float, slack: int = 64 * 1024) -> tuple[int, float]:
        """(bytes, seconds) from the first to the last arrival after ``since`` (ignoring ``slack``
        bytes at either end: handshakes, the meter's granularity)."""
        after = [(t, n) for t, n in self.samples if t >= since]
        if len(after) < 2:
            return 0, 0.0
        base, total = after[0][1], after[-1][1] - after[0][1]
        first = next(t for t, n in after if n - base > slack)
        last = next(t for t, n in after if n - base >= total - slack)
        return total - 2 * slack, max(last - first, 1e-9)


@dataclass
class Run:
    """One timed transfer: ``seconds`` from the fleet being up until every object is written (the
    gateways confirmed every chunk's checksum), ``setup_seconds`` the gateways' start-up before it,
    ``verify_seconds`` the orchestrator's check of every copy after it (for local stores an MD5 read
    of both files, which cloud stores report without reading);
    ``rx_bytes`` / ``rx_seconds``: link-layer bytes that reached the destination region and the time
    from its first to its last arriving byte (the network's part of ``seconds``)."""

    stats: TransferStats
    seconds: float
    setup_seconds: float
    verify_seconds: float
    rx_bytes: int = 0
    rx_seconds: float = 0.0

    @property
    def gbps(self) -> float:
        """Source bytes moved per second (after lz4, what the user gets), in Gbps."""
        return self.stats.bytes * 8 / self.seconds / 1e9

    @property
    def wire_gbps(self) -> float:
        """Frame bytes leaving the source per second (what the links carry), in Gbps."""
        return self.stats.bytes_on_wire * 8 / self.seconds / 1e9

    @property
    def rx_gbps(self) -> float:
        """The destination's link-layer receive rate while data arrived, in Gbps (comparable with tbf caps)."""
        return self.rx_bytes * 8 / self.rx_seconds / 1e9 if self.rx_seconds else 0.0


def run_transfer(tb: Testbed, src_dir: Path, dst_dir: Path, src_region: str, dst_region: str,
                 **options) -> Run:
    """Copy every file of ``src_dir`` into ``dst_dir`` through gateways in the testbed's namespaces.
    ``options`` are :class:`TransferRequest` fields (solver, grid, connections, chunk_size, ...)."""
    dst_dir.mkdir(parents=True, exist_ok=True)
    request = TransferRequest(src=f"file://{src_dir}/", dsts=[f"file://{dst_dir}/"], src_region=src_region,
                              dst_regions=[dst_region], **options)
    transfer = Transfer(request, provisioner=LocalProvisioner(placement=tb.gateway_placement())).prepare()
    meter = RxMeter(tb, dst_region)
    try:
        started = time.monotonic()
        stats = transfer.run()
    finally:
        meter.stop()
    phases = stats.phases
    rx_bytes, rx_seconds = meter.busy(started + phases["provision"])
    return Run(stats=stats, seconds=phases["move"], setup_seconds=phases["provision"],
               verify_seconds=phases["verify"], rx_bytes=rx_bytes, rx_seconds=rx_seconds)


def single_stream(tb: Testbed, src_dir: Path, dst_dir: Path, src_region: str, dst_region: str,
                  timeout: float = 600.0) -> float:
    """Seconds for one TCP connection from the source namespace to the destination namespace (the
    direct, shaped link) to carry every file of ``src_dir`` into ``dst_dir``: plain bytes, no
    compression or encryption, timed by the receiver from accept to EOF. Checks the sha256."""
    dst_dir.mkdir(parents=True, exist_ok=True)
    me = [sys.executable, str(Path(__file__).resolve())]
    recv = tb.popen(dst_region, [*me, "recv", tb.region_address(dst_region), str(dst_dir)],
                    stdout=subprocess.PIPE, text=True)
    try:
        port = recv.stdout.readline().strip()
        if not port.isdigit():
            raise RuntimeError(f"single-stream receiver did not start (said {port!r})")
        sent = tb.run(src_region, [*me, "send", tb.region_address(dst_region), port, str(src_dir)],
                      capture_output=True, text=True, timeout=timeout, check=True).stdout.split()
        received = recv.stdout.readline().split()
        recv.wait(timeout=30)
    finally:
        if recv.poll() is None:
            tb.stop(recv)
    if len(received) != 3 or received[0] != sent[0] or received[2] != sent[1]:
        raise RuntimeError(f"single stream: sent {sent}, received {received}")
    return float(received[1])


def _receive(bind_host: str, directory: str) -> None:
    with socket.create_server((bind_host, 0)) as server:
        print(server.getsockname()[1], flush=True)
        conn, _ = server.accept()
    started = time.monotonic()
    digest, total, buf = hashlib.sha256(), 0, bytearray(_BUFFER)
    with conn, conn.makefile("rb") as stream:
        while header := stream.read(_HEADER.size):
            size, name_len = _HEADER.unpack(header)
            name = stream.read(name_len).decode()
            with open(os.path.join(directory, os.path.basename(name)), "wb") as out:
                left = size
                while left:
                    n = stream.readinto(memoryview(buf)[:min(left, _BUFFER)])
                    if not n:
                        raise EOFError(f"{name}: connection closed with {left} bytes missing")
                    digest.update(memoryview(buf)[:n])
                    out.write(memoryview(buf)[:n])
                    left -= n
                    total += n
    print(total, f"{time.monotonic() - started:.4f}", digest.hexdigest(), flush=True)


def _send(host: str, port: str, directory: str) -> None:
    digest, total = hashlib.sha256(), 0
    with socket.create_connection((host, int(port))) as conn:
        for path in sorted(Path(directory).iterdir()):
            data = path.read_bytes()
            conn.sendall(_HEADER.pack(len(data), len(path.name.encode())) + path.name.encode())
            conn.sendall(data)
            digest.update(data)
            total += len(data)
    print(total, digest.hexdigest(), flush=True)


if __name__ == "__main__":
    {"recv": _receive, "send": _send}[sys.argv[1]](*sys.argv[2:])
