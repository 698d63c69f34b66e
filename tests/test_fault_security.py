"""Security, end to end: secrets stay out of logs and in private files, relays hold no key, peers
without the job's secret can neither inject nor read a chunk, replayed and forged frames change
nothing, and a local store's keys cannot leave its root.

(Further checks live next to the code they test: test_wire.py for the handshake and frame codec,
test_gateway_daemon.py for a flipped bit, a refused peer and the control token.)
"""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
import threading
from pathlib import Path

import pytest

from gateway import wire
from gateway.codec import Codec
from gateway.stores import open_store
from planner.errors import BadURIError
from planner.plan import Edge, Hop, PartitionProgram, Plan, RegionProgram
from skyplane_provider.transfer import copy

from .gateway_jobs import DST, SRC, batch, chunk, frame_meta, obj, one, seal, to
from .helpers import digests, read_all
from .reliability_report import record

MiB = 1024**2
A, R, B = "aws:us-east-1", "aws:us-west-2", "aws:eu-west-1"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_fault_secrets_stay_out_of_logs_and_in_private_files(tmp_path, monkeypatch, caplog):
    """A relayed, encrypted transfer with the client, its coordinator and every gateway logging at DEBUG: no
    job secret, key or control token appears in any log; the files holding them are 0600 in 0700
    directories while the job runs and gone after it; the relay's config has no key and no credentials."""
    home_dir = tmp_path / "home"
    monkeypatch.setenv("SKYPLANE_HOME", str(home_dir))
    monkeypatch.setenv("SKYPLANE_GATEWAY_DEBUG", "1")
    caplog.set_level(logging.DEBUG)
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    objs = {"a.bin": os.urandom(3 * MiB + 5), "b.txt": b"line\n" * 20_000}
    for k, v in objs.items():
        (src / k).write_bytes(v)
    plan = Plan(src=A, dsts=(B,), solver="manual", gateways={A: 1, R: 1, B: 1},
                edges=[Edge(A, R, 1.0, 2), Edge(R, B, 1.0, 2)], throughput_gbps=1.0, cost_per_gb=0.0)
    monkeypatch.setenv("SKYPLANE_COORDINATOR_DEBUG", "1")
    seen: dict[str, dict] = {}
    modes: dict[str, int] = {}
    coordinator: dict[str, str] = {}

    def inspect(progress) -> None:
        # The job's coordinator logs to its own file, removed once the job succeeded and the result was
        # fetched; the last call comes with the final state, when the pipeline has logged everything.
        for log in home_dir.glob("jobs/*/coordinator.log"):
            coordinator["log"] = log.read_text(errors="replace")
        configs = list(home_dir.glob("jobs/*/gw-*/config.json"))
        if seen or len(configs) < 3 or not list(home_dir.glob("jobs/*/pids.json")):
            return  # done, or the fleet is still starting (its directories may exist before its configs)
        for cfg in configs:
            seen[cfg.parent.name] = json.loads(cfg.read_text())
            modes[str(cfg)] = _mode(cfg)
            modes[str(cfg.parent)] = _mode(cfg.parent)
        for job_dir in home_dir.glob("jobs/*"):
            modes[str(job_dir)] = _mode(job_dir)
            modes[str(job_dir / "pids.json")] = _mode(job_dir / "pids.json")

    # The cap stretches the copy over a few progress polls (0.5 s apart), so one sees the fleet running.
    copy(str(src), str(dst), plan=plan.to_dict(), src_region=A, dst_regions=[B], chunk_size="1MiB",
         provisioner_settings={"keep_logs": True}, progress=inspect, bwlimit="2MiB/s")
    assert read_all("file://" + str(dst)) == digests(objs)

    assert len(seen) == 3, seen.keys()
    relay = next(c for c in seen.values() if c["region"] == R)
    assert "encryption_key" not in relay and relay["credentials"] == {} and relay["encrypt"] is True
    assert all("encryption_key" in c for c in seen.values() if c["region"] != R)
    # A peer past the handshake cannot make a gateway allocate more than this job's largest chunk.
    assert {c["max_chunk_bytes"] for c in seen.values()} == {1 << 20}
    wrong = {p: oct(m) for p, m in modes.items() if m != (0o600 if p.endswith(".json") else 0o700)}
    assert not wrong, wrong

    secrets = {c["job_secret"] for c in seen.values()} | {c["control_token"] for c in seen.values()} \
        | {c["encryption_key"] for c in seen.values() if "encryption_key" in c}
    assert len(secrets) == 1 + 3 + 1  # one job secret and key, one token per gateway
    logs = {str(p): p.read_text(errors="replace") for p in home_dir.glob("jobs/*/gw-*/gateway.log")}
    logs["client"], logs["coordinator"] = caplog.text, coordinator.get("log", "")
    assert len(logs) == 5 and all(logs.values())
    assert all(" DEBUG " in text for name, text in logs.items() if name != "client")  # really at DEBUG
    leaks = [(name, s[:6]) for name, text in logs.items() for s in secrets if s in text or s.upper() in text]
    assert not leaks, leaks
    assert list(home_dir.glob("jobs/*/gw-*/config.json")) == []  # secrets removed at teardown
    record("fault", "relayed encrypted transfer with the client, its coordinator and 3 gateways logging at DEBUG; "
           "logs grepped for the job secret, the key and 3 control tokens; file modes checked while running",
           f"{sum(map(len, logs.values()))} log bytes, no secret found; configs and pids.json 0600, job and "
           "gateway dirs 0700, configs removed at teardown; relay config has no encryption_key and no credentials; "
           "every gateway refuses frames above the job's largest chunk (1 MiB)")


def test_fault_replayed_and_forged_frames_change_nothing(jobs, stores):
    """At a destination gateway, from a peer that passed the handshake (a compromised relay): a
    replay of a written chunk is confirmed without writing; a frame sealed with another key, a valid
    body under another chunk's header and a clear frame in an encrypted job are all rejected."""
    # loopback_clear off: this host stands for another one, where clear frames are refused.
    job = jobs({DST: RegionProgram(DST, {0: PartitionProgram("receive", (), write=True)})},
               overrides={DST: {"loopback_clear": False}})
    job_id, key = bytes.fromhex(job.id), bytes.fromhex(job.key)
    codec = Codec(job_id, key=key, encrypt=True, compress=True)
    data = b"payload " * 4000
    target = open_store(stores["dst"])

    def frame_for(cid: int, name: str, c: Codec = codec) -> wire.Frame:
        return seal(c, cid, frame_meta(DST, stores["dst"], (name, len(data))), data)

    good = frame_for(1, "replayed")
    forged = frame_for(2, "forged", Codec(job_id, key=os.urandom(32), encrypt=True, compress=True))
    victim = frame_for(3, "swap-a")  # same length as the next: the stream stays in step
    other_header = frame_for(4, "swap-b")
    swapped = wire.Frame(other_header.header, other_header.header_bytes, victim.body)
    clear = frame_for(5, "clear", Codec(job_id, key=None, encrypt=False, compress=False))
    h = job.handles[DST]
    with wire.connect(h.data_host, h.data_port, job_id=job_id, secret=bytes.fromhex(job.secret)) as conn:
        wire.send_frame(conn, good)
        job.events(DST, 1, kind="written")
        target.write("replayed", b"newer content written since")
        for f in (good, forged, swapped, clear):
            wire.send_frame(conn, f)
        events = job.events(DST, 5)  # the first write, then one event per frame sent
    by_chunk = {e["chunk_id"]: e for e in events}
    assert by_chunk[1]["type"] == "written"  # confirmed...
    assert target.read("replayed") == b"newer content written since"  # ...but not written again
    assert by_chunk[2]["type"] == by_chunk[4]["type"] == "failed" and by_chunk[2]["retryable"]
    assert by_chunk[5]["type"] == "failed" and not by_chunk[5]["retryable"]
    assert sorted(o.key for o in target.list()) == ["replayed"]
    counters = job.clients[DST].status(0)["counters"]
    assert counters["chunks_written"] == 1 and counters["frames_rejected"] == 3
    record("fault", "authenticated peer replays a written frame, sends a frame sealed with another key, a valid "
           "body under another chunk's header, and a clear frame in an encrypted job",
           "replay confirmed without rewriting (a newer object stays); the other 3 rejected (frames_rejected=3), "
           "nothing else written")


class _RogueServer:
    """Listens like a gateway data port without the job's secret: sends a handshake challenge,
    answers with a made-up proof and keeps every byte it receives."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.received: list[bytes] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                got = bytearray()
                try:
                    conn.sendall(b"SKYH" + bytes([wire.VERSION]) + os.urandom(32))
                    while len(got) < wire.AUTH_SIZE and (b := conn.recv(4096)):
                        got += b
                    conn.sendall(b"SKYS" + os.urandom(32))
                    while b := conn.recv(65536):
                        got += b
                except OSError:
                    pass
                self.received.append(bytes(got))

    def close(self) -> None:
        self.sock.close()


def test_fault_peer_without_the_secret_reads_nothing(jobs, stores):
    """A source gateway wired to an impostor (it holds no job secret): only the handshake's
    authentication message reaches it, never a frame; the chunk fails without retry."""
    job = jobs({SRC: RegionProgram(SRC, {0: PartitionProgram("read", (Hop(DST),))}),
                DST: RegionProgram(DST, {0: PartitionProgram("receive", (), write=True)})}, wire_peers=False)
    rogue = _RogueServer()
    try:
        job.clients[SRC].set_peers({DST: [{"gateway_id": "impostor", "host": "127.0.0.1", "data_port": rogue.port}]})
        secret_data = b"do not leak " * 1000
        open_store(stores["src"]).write("x", secret_data)
        job.clients[SRC].submit(one(0, stores["src"], "x", len(secret_data), DST, stores["dst"]))
        (failed,) = job.events(SRC, 1, kind="failed")
    finally:
        rogue.close()
    assert failed["retryable"] is False and "prove" in failed["error"]
    assert rogue.received and all(len(r) == wire.AUTH_SIZE for r in rogue.received)
    assert job.clients[SRC].status(0)["counters"]["bytes_sent_wire"] == 0
    record("fault", "source gateway wired to an impostor data port (valid challenge, made-up proof)",
           f"impostor got only the {wire.AUTH_SIZE}-byte authentication message; no frame sent; "
           "chunk failed, not retried")


def test_fault_peer_of_another_job_injects_nothing(jobs, stores):
    """Two real jobs: job B's source gateway is wired to job A's destination. A refuses it."""
    dst_program = {DST: RegionProgram(DST, {0: PartitionProgram("receive", (), write=True)})}
    job_a = jobs(dst_program)
    job_b = jobs({SRC: RegionProgram(SRC, {0: PartitionProgram("read", (Hop(DST),))}), **dst_program},
                 wire_peers=False)
    job_b.clients[SRC].set_peers({DST: [job_a.peer(DST)]})
    open_store(stores["src"]).write("x", b"injected?")
    job_b.clients[SRC].submit(one(0, stores["src"], "x", 9, DST, stores["dst"]))
    (failed,) = job_b.events(SRC, 1, kind="failed")
    assert failed["retryable"] is False
    errors = job_a.clients[DST].status(0)["errors"]
    assert any("another job" in e for e in errors), errors
    assert list(open_store(stores["dst"]).list()) == []
    record("fault", "gateway of job B wired to job A's destination data port",
           "A refuses the handshake (peer of another job, listed in /status errors), B's chunk fails "
           "without retry, nothing written")


def test_fault_local_store_keys_stay_inside_the_root(tmp_path, jobs, stores):
    """Keys with '..', absolute keys and symlinks below the root leading out: refused by the store,
    and by a gateway asked to write there; nothing lands outside."""
    root, outside = tmp_path / "dst", tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(b"not yours")
    (root / "link-dir").symlink_to(outside, target_is_directory=True)
    (root / "link-file").symlink_to(outside / "secret.txt")
    (root / "inner").mkdir()
    (root / "ok-link").symlink_to(root / "inner", target_is_directory=True)
    store = open_store(stores["dst"])
    bad = ["../outside/x", "/etc/passwd", "a/../../x", "link-dir/x", "link-file", "link-dir/secret.txt"]
    for key in bad:
        with pytest.raises(BadURIError):
            store.write(key, b"escape")
        with pytest.raises(BadURIError):
            store.read(key)
    store.write("ok-link/fine", b"inside")  # a link that stays inside the root is fine
    assert (root / "inner" / "fine").read_bytes() == b"inside"

    job = jobs({SRC: RegionProgram(SRC, {0: PartitionProgram("read", (), write=True)})})
    open_store(stores["src"]).write("x", b"escape")
    reqs = [chunk(i, obj("x", 6, to(0, k))) for i, k in enumerate(bad)]
    assert job.clients[SRC].submit(batch(stores["src"], [(SRC, stores["dst"])], *reqs)) == len(reqs)
    failed = job.events(SRC, len(bad), kind="failed")
    assert all(not e["retryable"] for e in failed)
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
    assert (outside / "secret.txt").read_bytes() == b"not yours"
    record("fault", f"local store and a gateway asked to write/read keys {bad}",
           "every one refused with BadURIError (gateway: failed, not retried); nothing written outside the root; "
           "a symlink that stays inside the root still works")
