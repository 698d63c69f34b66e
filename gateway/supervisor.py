"""One gateway host, several worker processes (docs/gateway.md, "One gateway per host, N workers").

The process the provisioner starts (``skyplane-gateway --config``, ``workers`` > 1) is the
*supervisor*: it serves the gateway's one control endpoint and starts ``workers`` worker processes,
each a whole gateway of one process (:class:`gateway.node.GatewayNode`) with a private control
endpoint on 127.0.0.1. The supervisor accepts on the gateway's one data port and passes each
connection to the workers in turn (gateway/listener.py, :class:`HandOver`), and each worker opens its
share of every hop's connections, so a host uses all its cores while the fleet, the plan and the
coordinator still see one gateway: one id, one control URL, one data address.

- ``POST /chunks``: the batch is checked whole here, then cut into consecutive slices handed to the
  workers with the fewest chunks queued first; the answer is the prefix they accepted.
- ``GET /status``: the workers' events, numbered anew in one log as they come (each worker writes them
  to a pipe, read by a thread per worker), and their counters summed (those of dead workers kept).
- ``POST /peers`` goes to every worker; ``POST /store`` is run by the supervisor itself.
- A worker that dies is restarted; the chunks it held (its last report, those given to it since, the
  frames it took off a connection since, and those it let go of last, whose frames may still have
  waited in its queues) are reported ``failed``, retryable, so they are sent again at once.
  Memory stays bounded per worker: each has its own queues.
"""

from __future__ import annotations

import collections
import json
import logging
import math
import os
import secrets
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

from planner.errors import GatewayError, SkyplaneError
from planner.plan import Hop, PartitionProgram, RegionProgram

from . import store_api
from .bandwidth import Sharer
from .config import GatewayConfig
from .control_client import GatewayClient
from .events import EventLog, relay_lines
from .exits import wait_exits
from .listener import HandOver
from .node import Controlled, check_batch
from .peers import Peer
from .retry import with_retries

log = logging.getLogger(__name__)

_PUMP_EVERY = 0.5  # seconds between two reads of every worker's counters and holdings, when nobody asks
_SHARE_EVERY = 1.0  # seconds between two splits of the gateway's bandwidth cap over its workers
_READY_TIMEOUT = 60.0
_DICT_COUNTERS = ("bytes_sent_wire_to", "skipped")


@dataclass
class _Worker:
    """One worker process and what the supervisor knows of it."""

    index: int
    config_path: str
    ready_path: str
    proc: subprocess.Popen | None = None
    client: GatewayClient | None = None
    relay: threading.Thread | None = None  # reads its events pipe
    counters: dict = field(default_factory=dict)
    queued: int = 0
    busy: int = 0  # chunks it still works on, its last report
    errors: list = field(default_factory=list)
    holding: set[int] = field(default_factory=set)  # its last report
    #: (monotonic time, chunk id): given to it, or taken off a connection by it, since its last report
    taken: collections.deque = field(default_factory=collections.deque)
    token: str = ""
    bwlimit: float | None = None  # its share of the gateway's bandwidth cap

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class Supervisor(Controlled):
    """The control side of a multi-worker gateway; the same interface as GatewayNode for the control API."""

    def __init__(self, config: GatewayConfig, config_path: str) -> None:
        super().__init__(config, EventLog(encoded=True))  # the workers' lines passed on as they came (_relay)
        with open(config_path, encoding="utf-8") as f:
            self._doc = json.load(f)
        self._handover = HandOver(config.bind_host, config.data_port, config.workers)
        self.data_port: int = self._handover.port
        directory = os.path.dirname(os.path.abspath(config_path))
        self._workers = [_Worker(i, os.path.join(directory, f"worker-{i}.json"),
                                 os.path.join(directory, f"worker-{i}.ready.json")) for i in range(config.workers)]
        self._lock = threading.RLock()
        self._retired: dict = {}  # counters of workers that died
        self._peers: dict | None = None
        self._renewed: dict = {}  # credentials entries pushed since the start, for workers started later
        self._restarts = 0
        self._sharer: Sharer | None = None
        self.set_bwlimit(config.bwlimit)

    # ---- life cycle -------------------------------------------------------------------------------
    def start(self) -> None:
        for w in self._workers:
            self._launch(w)
        for w in self._workers:
            self._wait_ready(w)
        self._handover.start()
        threading.Thread(target=self._watch, name="supervise", daemon=True).start()

    def stop(self, grace: float = 2.0) -> None:
        """SIGTERM every worker (each finishes the chunk in hand), wait up to ``grace`` seconds, then kill
        what is left; remove their configs. Within the provisioners' own grace (3 s locally), so the
        supervisor exits with its workers gone."""
        self.stopping.set()
        for w in self._workers:
            if w.alive:
                w.proc.terminate()
        started = [w.proc for w in self._workers if w.proc is not None]
        wait_exits(started, grace)
        for w in self._workers:
            if w.proc is not None and w.proc.poll() is None:
                w.proc.kill()
                w.proc.wait()
            for path in (w.config_path, w.ready_path):
                _remove(path)
        self._handover.close()

    def _launch(self, w: _Worker) -> None:
        token = secrets.token_hex(16)
        handoff = self._handover.channel(w.index)
        events_read, events_write = os.pipe()
        doc = {**self._doc, "workers": 1, "supervised": True, "control_host": "127.0.0.1", "control_port": 0,
               "control_tls": False,
               "control_token": token, "data_port": self.data_port, "ready_file": w.ready_path,
               "handoff_fd": handoff.fileno(), "events_fd": events_write,
               "parent_pid": os.getpid(), "program": self._share_of_connections().to_dict(), "bwlimit": w.bwlimit,
               # the supervisor reads every worker's status twice a second: its dead-man timer is ours
               "coordinator_timeout": max(self.config.coordinator_timeout, 60.0)}
        with self._lock:
            # A worker restarted after a renewal opens its stores with the renewed entries, not the expired
            # ones of the start-up document (it would fail its first chunks before the push below reached it).
            doc["credentials"] = {**(self._doc.get("credentials") or {}), **self._renewed}
        _remove(w.ready_path)
        fd = os.open(w.config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(doc, f)
        # Same stdout/stderr (the gateway's log) and process group: a teardown that kills the group ends them.
        try:
            w.proc = subprocess.Popen([sys.executable, "-m", "gateway.daemon", "--config", w.config_path],
                                      stdin=subprocess.DEVNULL, pass_fds=(handoff.fileno(), events_write))
        except BaseException:
            os.close(events_read)  # no worker, no relay to close it
            raise
        finally:  # the worker's ends: once it exits, its channel refuses and its pipe ends
            handoff.close()
            os.close(events_write)
        w.client, w.holding, w.taken, w.token = None, set(), collections.deque(), token
        w.relay = threading.Thread(target=self._relay, args=(w.taken, events_read), name=f"events-{w.index}",
                                   daemon=True)
        w.relay.start()

    def _wait_ready(self, w: _Worker) -> None:
        deadline = time.monotonic() + _READY_TIMEOUT
        while not os.path.exists(w.ready_path):
            if w.proc.poll() is not None:
                raise GatewayError(f"worker {w.index} of gateway {self.config.gateway_id} exited at start "
                                   f"(code {w.proc.returncode})", hint="see the gateway's log")
            if time.monotonic() > deadline:
                raise GatewayError(f"worker {w.index} of gateway {self.config.gateway_id} did not start within "
                                   f"{_READY_TIMEOUT:.0f} s")
            # The gateway is ready (and the job's first chunk posted) only once every worker is: a
            # look every 50 ms kept a 20,000-file cp -r waiting 25 ms on average for nothing.
            time.sleep(0.005)
        with open(w.ready_path, encoding="utf-8") as f:
            port = json.load(f)["control_port"]
        w.client = GatewayClient(f"http://127.0.0.1:{port}", w.token)
        if self._peers is not None:
            w.client.set_peers(self._peers)
        with self._lock:
            renewed = dict(self._renewed)
        if renewed:
            w.client.push_credentials(renewed)

    def _share_of_connections(self) -> RegionProgram:
        """The program with each hop's connections split over the workers (at least one each)."""
        n = len(self._workers)
        program = self.config.program
        return RegionProgram(program.region, {
            p: PartitionProgram(pp.source, tuple(Hop(h.region, math.ceil(h.connections / n)) for h in pp.send),
                                pp.write) for p, pp in program.partitions.items()}, program.writes_for)

    def _watch(self) -> None:
        """Read the workers' events twice a second, and restart the ones that died."""
        while not self.stopping.wait(_PUMP_EVERY):
            for w in self._workers:
                if not w.alive and not self.stopping.is_set():
                    self._replace(w)
            self._pump()

    def _relay(self, taken: collections.deque, fd: int) -> None:
        """Move one worker's events into the one log as they come, until the worker's pipe ends; note
        the frames it takes. Takes no supervisor lock: a worker blocked writing to a full pipe would
        otherwise wait for a supervisor that waits (under that lock) for the worker's answer. An event
        is numbered and passed on without being decoded."""
        with open(fd, "rb") as pipe:
            relay_lines(pipe, self.events, lambda chunk_id: taken.append((time.monotonic(), chunk_id)))

    def _replace(self, w: _Worker) -> None:
        if w.relay is not None:
            w.relay.join(5.0)  # its last events (and frames taken) are in before the losses are counted
        with self._lock:
            lost = sorted(w.holding | {chunk_id for _, chunk_id in w.taken})
            for name, value in w.counters.items():
                _add(self._retired, name, value)
            w.counters, w.queued, w.errors = {}, 0, []
            self._restarts += 1
            code = w.proc.returncode if w.proc is not None else None
        log.error("worker %d of gateway %s died (exit %s); restarting it; %d chunk(s) it held are sent again",
                  w.index, self.config.gateway_id, code, len(lost))
        for chunk_id in lost:
            self.events.failed(chunk_id, GatewayError(f"worker {w.index} of gateway {self.config.gateway_id} "
                                                      "died while it held the chunk"), retryable=True)
        try:
            self._launch(w)
            self._wait_ready(w)
        except (SkyplaneError, OSError) as exc:
            log.error("worker %d of gateway %s could not be restarted: %s", w.index, self.config.gateway_id, exc)

    def _pump(self) -> None:
        """Keep the workers' counters, queue lengths and holdings (their events come through the pipes)."""
        with self._lock:
            for w in self._workers:
                if w.client is None or not w.alive:
                    continue
                asked = time.monotonic()
                try:
                    status = w.client.status(0)
                except GatewayError:
                    continue  # dead (the watcher restarts it) or busy: next time
                w.counters, w.queued, w.errors = status["counters"], status["queued"], status["errors"]
                w.holding = set(status.get("holding", ()))
                w.busy = status.get("busy", 0)
                while w.taken and w.taken[0][0] < asked:  # in that report if still held
                    w.taken.popleft()
            self._share_bandwidth()

    def _share_bandwidth(self) -> None:
        """Called with the lock held: move the cap's shares towards the workers held back by theirs."""
        if self._sharer is None:
            return
        live = {str(w.index): w for w in self._workers if w.client is not None and w.alive}
        shares = self._sharer.update({name: (int(w.counters.get("paced_bytes", 0)),
                                             float(w.counters.get("paced_held_seconds", 0.0)))
                                      for name, w in live.items()})
        for name, share in (shares or {}).items():
            self._give_share(live[name], share)

    def _give_share(self, w: _Worker, share: float | None) -> None:
        w.bwlimit = share
        if w.client is not None and w.alive:
            try:
                w.client.set_bwlimit(share)
            except GatewayError as exc:
                log.warning("worker %d did not take its bandwidth share: %s", w.index, exc)

    # ---- control API operations (as GatewayNode's) ------------------------------------------------------
    def set_peers(self, peers: dict[str, list[Peer]]) -> None:
        doc = {region: [{"gateway_id": p.gateway_id, "host": p.host, "data_port": p.port} for p in plist]
               for region, plist in peers.items()}
        with self._lock:
            self._peers = {**(self._peers or {}), **doc}
            for w in self._workers:
                if w.client is not None and w.alive:
                    w.client.set_peers(doc)

    def set_bwlimit(self, rate: float | None) -> None:
        """The gateway's share of the job's bandwidth cap: split equally over the workers at first,
        then re-split every second by :class:`gateway.bandwidth.Sharer` (gateway/bandwidth.py)."""
        with self._lock:
            self._sharer = Sharer(rate, period=_SHARE_EVERY) if rate is not None else None
            for w in self._workers:
                self._give_share(w, None if rate is None else rate / len(self._workers))

    def submit(self, doc: object) -> int:
        """Check the batch whole, then hand consecutive slices to the least busy workers; the answer is
        the prefix they accepted (backpressure as for one process)."""
        check_batch(doc, self.config)
        if self.stopping.is_set():
            return 0
        chunks = doc["chunks"]
        accepted = 0
        with self._lock:
            ready = sorted((w for w in self._workers if w.client is not None and w.alive), key=lambda w: w.queued)
            for i, w in enumerate(ready):
                share = chunks[accepted:] if i == len(ready) - 1 else chunks[accepted:accepted + math.ceil(
                    (len(chunks) - accepted) / (len(ready) - i))]
                if not share:
                    break
                try:
                    took = w.client.submit({"src": doc["src"], "dests": doc["dests"], "chunks": share})
                except GatewayError as exc:
                    log.warning("worker %d refused chunks: %s", w.index, exc)
                    took = 0
                now = time.monotonic()
                w.taken.extend((now, c["id"]) for c in share[:took])
                w.queued += took
                accepted += took
                if took < len(share):
                    break  # keep the answer a prefix of the batch
        return accepted

    def busy(self) -> int:
        """Chunks its workers still work on (their reports, read now)."""
        self._pump()
        with self._lock:
            return sum(w.busy for w in self._workers if w.alive)

    def status(self, since: int, wait: float = 0.0) -> dict:
        if wait > 0:  # the workers' events reach this log through their pipes as they come
            self.events.wait(since, wait)
        self._pump()
        doc = self.events.status(since)
        with self._lock:
            live = [w for w in self._workers if w.alive]
            totals = {k: v for k, v in doc["counters"].items() if k != "workers"}  # the supervisor's own
            for name, value in self._retired.items():
                _add(totals, name, value)
            for w in live:
                for name, value in w.counters.items():
                    _add(totals, name, value)
            totals["workers"] = len(live)
            totals["worker_restarts"] = self._restarts
            doc["counters"] = totals
            doc["queued"] = sum(w.queued for w in live)
            doc["errors"] = (doc["errors"] + [e for w in live for e in w.errors])[-50:]
        return doc

    def update_credentials(self, doc: object) -> dict:
        """Renew the supervisor's own (``POST /store``) and every worker's; a worker (re)started later gets
        them as soon as it is up."""
        answer = super().update_credentials(doc)
        with self._lock:
            self._renewed.update(doc["credentials"])
            for w in self._workers:
                if w.client is not None and w.alive:
                    try:
                        w.client.push_credentials(doc["credentials"])
                    except SkyplaneError as exc:  # it is dying: its replacement starts with the new document
                        log.warning("worker %d did not take the renewed credentials: %s", w.index, exc)
        return answer

    def store_op(self, doc: object) -> dict:
        return store_api.run(doc, self.stores, lambda call, what: with_retries(
            call, what=what, on_retry=lambda: self.events.count("retries"), stop=self.stopping))


def _add(totals: dict, name: str, value) -> None:
    if name in _DICT_COUNTERS:
        into = totals.setdefault(name, {})
        for key, n in value.items():
            into[key] = into.get(key, 0) + n
    elif name != "workers" and isinstance(value, (int, float)):
        totals[name] = totals.get(name, 0) + value


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
