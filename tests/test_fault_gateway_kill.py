"""Faults: one gateway killed (SIGKILL) at about half of a relayed transfer, with a spare in every region.

The route is source (S3 on moto) -> relay -> destination (a local directory), two gateways per region.
Only the source bucket goes through a :class:`FaultProxy` that holds every request for a while, so the
transfer takes seconds and "half done" can be seen from the progress callback; the gateway to kill is
found in the fleet the transfer started (its PID), never by guessing.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from planner.plan import Edge, Plan
from skyplane_provider.provisioners.local import LocalProvisioner
from skyplane_provider.testing.faultproxy import FaultProxy
from skyplane_provider.testing.leftovers import leftovers
from skyplane_provider.transfer import Transfer, TransferRequest
from skyplane_provider.transfer.dispatch import MAX_ATTEMPTS

from .helpers import digests, fleet_pids, gateway_pids, put_objects, read_all, wait_gone
from .reliability_report import record

MiB = 1024**2
SRC, RELAY, DST = "aws:us-east-1", "aws:us-west-2", "local"
ROLES = {"source": SRC, "relay": RELAY, "destination": DST}
DELAY = 0.6  # seconds the proxy holds each source request


def sample() -> dict[str, bytes]:
    """48 small objects and one of 6 parts (1 MiB chunks): 54 reads, a few seconds through the proxy."""
    objs = {f"small/{i:02d}.bin": os.urandom(64 * 1024 + i) for i in range(48)}
    objs["big.bin"] = os.urandom(6 * MiB - 7)
    return objs


def relay_plan() -> dict:
    return Plan(src=SRC, dsts=(DST,), solver="manual", gateways={SRC: 1, RELAY: 1, DST: 1},
                edges=[Edge(SRC, RELAY, 1.0, 4), Edge(RELAY, DST, 1.0, 4)],
                throughput_gbps=1.0, cost_per_gb=0.0).to_dict()


@pytest.fixture
def slow_source(emulators, s3_bucket):
    """(bucket URI, credentials document routing it through a slow proxy, the sample put there)."""
    objs = sample()
    put_objects(s3_bucket, objs)
    proxy = FaultProxy(emulators.endpoints["s3"], kind="s3", delay=DELAY)
    url = proxy.start()
    yield s3_bucket, {s3_bucket: {"endpoint_url": url}}, objs
    proxy.stop()


@pytest.mark.parametrize("role", list(ROLES))
def test_fault_gateway_killed_at_half(role, tmp_path, slow_source):
    src, credentials, objs = slow_source
    dst = tmp_path / "dst"
    dst.mkdir()
    req = TransferRequest(src=src + "/", dsts=[str(dst)], plan=relay_plan(), gateways_per_region=2,
                          chunk_size="1MiB", credentials=credentials)
    killed: dict = {}

    def kill_one_at_half(p) -> None:
        done = p.fraction  # of the bytes: small objects travel 15 to a bundle, objects_done jumps
        if killed or done < 0.4:
            return
        victim = next(g for g in transfer.fleet.gateways if g.region == ROLES[role])
        seen = _at_kill(transfer.dispatcher, victim)
        os.kill(victim.pid, signal.SIGKILL)
        killed.update(gateway=victim.gateway_id, pid=victim.pid, at=done, **seen)

    transfer = Transfer(req, progress=kill_one_at_half)
    started = time.monotonic()
    stats = transfer.execute()  # in this process: the test reads the fleet and the dispatcher
    seconds = time.monotonic() - started
    assert killed and killed["at"] < 0.75, f"the transfer went too fast to kill a gateway mid-way: {killed}"
    assert killed["inflight"] and killed["carried"], f"the killed gateway was not on the route of work left: {killed}"
    got = read_all("file://" + str(dst))
    same = sum(got.get(k) == v for k, v in digests(objs).items())
    left = wait_gone(transfer.job_id)
    mine = f"{killed['its']} of them its own, " if role == "source" else ""
    record("fault", f"SIGKILL of the {role} gateway {killed['gateway']} with {killed['at']:.0%} of the bytes done "
           f"({killed['inflight']} chunks in flight, {mine}{killed['carried']} bytes through it so far), relayed "
           f"transfer (S3 -> relay -> local, 2 gateways per region, {len(objs)} objects, one of 6 parts)",
           f"completed in {seconds:.1f} s, {same}/{len(objs)} objects sha256-identical, {stats.retries} chunk "
           f"re-dispatches (the most sends of one chunk: {transfer.dispatcher.most_attempts}; {MAX_ATTEMPTS} fail "
           f"its objects), {len(left)} gateway processes left")
    assert got == digests(objs)
    assert stats.objects == len(objs) and stats.verified
    # What may have passed the victim went again: for a relay or destination gateway every chunk in flight
    # (which gateways a chunk passes after its source is not known), for a source gateway its own.
    assert stats.retries > 0
    assert left == []
    assert not list(dst.rglob(".skyplane-tmp*")), "a part of the multipart upload was left behind"


def test_fault_only_relay_gateway_killed_is_replaced(tmp_path, slow_source):
    """No spares: the relay region's only gateway dies at about half; a new one is started in its
    place, wired in, and the transfer completes."""
    src, credentials, objs = slow_source
    dst = tmp_path / "dst"
    dst.mkdir()
    req = TransferRequest(src=src + "/", dsts=[str(dst)], plan=relay_plan(), chunk_size="1MiB",
                          credentials=credentials)
    killed: dict = {}

    def kill_relay_at_half(p) -> None:
        done = p.fraction  # of the bytes: small objects travel 15 to a bundle, objects_done jumps
        if not killed and done >= 0.4:
            victim = next(g for g in transfer.fleet.gateways if g.region == RELAY)
            seen = _at_kill(transfer.dispatcher, victim)
            os.kill(victim.pid, signal.SIGKILL)
            killed.update(gateway=victim.gateway_id, at=done, **seen)

    transfer = Transfer(req, progress=kill_relay_at_half)
    stats = transfer.execute()  # in this process: the test reads the fleet and the dispatcher
    got = read_all("file://" + str(dst))
    left = wait_gone(transfer.job_id)
    record("fault", f"SIGKILL of the only relay gateway {killed.get('gateway')} at {killed.get('at', 0):.0%} of the "
           f"bytes ({killed.get('inflight')} chunks in flight; 1 gateway per region, no spare)",
           f"replaced by {', '.join(transfer.dispatcher.replaced)}; completed, "
           f"{sum(got.get(k) == v for k, v in digests(objs).items())}/{len(objs)} objects sha256-identical, "
           f"{stats.retries} chunk re-dispatches, {len(left)} gateway processes left")
    assert killed and killed["at"] < 0.75 and killed["inflight"], f"no work was left for the relay: {killed}"
    assert got == digests(objs) and stats.objects == len(objs) and stats.verified
    assert stats.retries > 0  # what was in flight through the dead relay went again, through its replacement
    assert stats.gateways_replaced == 1 and transfer.dispatcher.replaced == [f"{RELAY}/r1"]
    assert left == []


def test_fault_cli_gateway_killed_at_half(tmp_path, slow_source):
    """The same through ``skyplane-provider cp --gateways-per-region 2``: a relay gateway dies mid-way."""
    src, credentials, objs = slow_source
    dst, home = tmp_path / "dst", tmp_path / "home"
    dst.mkdir()
    env = {**os.environ, "SKYPLANE_HOME": str(home), "AWS_ENDPOINT_URL": credentials[src]["endpoint_url"]}
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps(relay_plan()))
    cli = subprocess.Popen([sys.executable, "-m", "skyplane_provider.cli.main", "cp", "-r", src + "/", str(dst),
                            "--plan", str(plan_file), "--gateways-per-region", "2", "--chunk-size", "1MiB", "--json"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        victim = None
        deadline = time.monotonic() + 60
        while victim is None and cli.poll() is None and time.monotonic() < deadline:
            # At the first objects written: they land in bursts, and waiting for half of them found
            # 48 of 49 written under load, with nothing left for the relay to carry (0 re-dispatches).
            if _landed(dst) > 0:
                victim = fleet_pids(home).get(f"{RELAY}/0")
            time.sleep(0.05)
        assert victim, "no relay gateway found while the transfer ran"
        done_at = _landed(dst)
        os.kill(victim, signal.SIGKILL)
        out, err = cli.communicate(timeout=90)
    finally:
        if cli.poll() is None:
            cli.kill()
    assert cli.returncode == 0, err
    stats = json.loads(out.strip().splitlines()[-1])
    left = wait_gone(str(home))
    got = read_all("file://" + str(dst))
    same = sum(got.get(k) == v for k, v in digests(objs).items())
    record("fault", f"CLI cp --gateways-per-region 2: SIGKILL of relay gateway {RELAY}/0 after {done_at}/"
           f"{len(objs)} objects were written", f"exit 0, {same}/{len(objs)} objects sha256-identical, "
           f"{stats['retries']} chunk re-dispatches, {len(left)} gateway processes left")
    assert got == digests(objs) and left == []
    assert stats["retries"] > 0  # the dead relay's chunks really went again


def test_fault_writing_gateway_killed_leaves_no_temp_file(tmp_path, caplog):
    """A local copy with two gateways, one SIGKILLed at its first write (while it holds a file of the
    destination open: an unnamed O_TMPFILE file, or a temp file where a write replaces an object), with
    its other chunks still to do: the chunks it had are sent again, the copy completes, every object is
    sha256-identical, and nothing half-written of the dead writer is left after it."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    objs = {f"f{i:02d}.bin": os.urandom(16 * MiB + i) for i in range(16)}  # one 32 MiB chunk each, 8 per gateway
    for key, data in objs.items():
        (src / key).write_bytes(data)
    seen: list[str] = []
    held: set[int] = set()  # the chunks submitted to the victim and not settled when it died
    kept: set[int] = set()  # those the survivor had then: it never needed the victim

    finished = threading.Event()

    def writing(pid: int) -> list[str]:
        """The destination's files that gateway ``pid`` holds open for writing, named or not."""
        names = []
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith(str(dst) + "/"):
                names.append(target)
        return names

    def kill_while_writing() -> None:
        # Polled, not timed: a write of 16 MiB holds its file open for milliseconds, and when the first
        # one happens depends on the host's load (the gateway's other 7 chunks are still to do then).
        while not finished.is_set():
            if transfer.fleet is not None and transfer.dispatcher is not None:
                victim = transfer.fleet.gateways[1]
                names = writing(victim.pid) if os.path.isdir(f"/proc/{victim.pid}/fd") else []
                if names:
                    # Who holds what is read before the kill: once the victim is dead, the dispatcher may
                    # notice and release its chunks before this thread runs again.
                    owners = list(transfer.dispatcher.owner.items())
                    os.kill(victim.pid, signal.SIGKILL)
                    seen[:] = names
                    held.update(c for c, g in owners if g == victim.gateway_id)
                    kept.update(c for c, g in owners if g != victim.gateway_id)
                    return
            time.sleep(0.002)

    req = TransferRequest(src=f"{src}/", dsts=[f"{dst}/"], recursive=True, gateways_per_region=2)
    transfer = Transfer(req, provisioner=LocalProvisioner())  # in this process: its fleet is at hand
    killer = threading.Thread(target=kill_while_writing, daemon=True)
    killer.start()
    caplog.set_level(logging.WARNING, logger="skyplane_provider.transfer.dispatch")
    started = time.monotonic()
    try:
        stats = transfer.run()
    finally:
        finished.set()
        killer.join(5)
    seconds = time.monotonic() - started
    resent = {int(m.group(1)) for r in caplog.records if (m := _RESENT.match(r.getMessage()))}
    left = leftovers(f"file://{dst}")
    got, want = read_all(f"file://{dst}"), digests(objs)
    record("fault", f"SIGKILL of one of 2 local gateways at its first write ({len(seen)} destination file(s) open, "
                    f"{len(held)} of its chunks unsettled; file -> file, {len(objs)} objects of 16 MiB)",
           f"completed in {seconds:.1f} s, {len(held & resent)} of the dead gateway's {len(held)} chunks sent again "
           f"({stats.retries} chunk re-dispatches in all, {len(kept & resent)} of the survivor's {len(kept)}), "
           f"{sum(got.get(k) == v for k, v in want.items())}/{len(objs)} objects sha256-identical, "
           f"{len(left)} temp files left")
    assert seen, "the copy ended before a gateway could be killed mid-write"
    assert held, "the gateway killed while writing had no chunk the dispatcher waited for"
    # The chunk it was writing cannot have been confirmed: it must have gone again, to the survivor.
    assert held & resent, f"none of the dead gateway's chunks {sorted(held)} was sent again ({sorted(resent)})"
    # Each gateway of a single-region copy reads and writes its own chunks: the survivor's go on untouched.
    assert not kept & resent, f"the survivor's chunks {sorted(kept & resent)} were sent again"
    assert got == want
    assert stats.objects == len(objs) and stats.verified
    assert left == [], "a killed gateway's half-written temp file was left behind"


#: The dispatcher's account of a chunk it sends again (transfer/dispatch.py, ``_requeue``).
_RESENT = re.compile(r"retrying chunk (\d+) ")


def _at_kill(dispatcher, victim) -> dict:
    """What the dispatcher knew just before ``victim`` was killed (read in the dispatcher's own thread,
    from its progress callback): the chunks in flight, which go again once the death is seen, those of them
    submitted to the victim (a source gateway; the dispatcher does not know which relay or destination
    gateway a chunk passes), and the bytes the victim had read or received, which show it was on their
    route: asked of the victim itself (from the dispatcher's event cursor: nothing it has not read is
    released), as the dispatcher's copy of a gateway's counters is up to a long poll (0.25 s) old."""
    counters = victim.client().status(dispatcher.cursor.get(victim.gateway_id, 0))["counters"]
    return {"inflight": len(dispatcher.inflight), "its": sum(g == victim.gateway_id for g in dispatcher.owner.values()),
            "carried": int(counters.get("bytes_read", 0)) + int(counters.get("bytes_received_wire", 0))}


def _landed(dst: Path) -> int:
    """Objects written under ``dst/small`` so far; a listing, not a tree walk, which would race with the
    writers' temporary directories coming and going."""
    try:
        return len(os.listdir(dst / "small"))
    except FileNotFoundError:
        return 0
