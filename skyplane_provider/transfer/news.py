"""The gateways' news for the dispatch loop: one thread per gateway long-polls its ``GET /status``.

A gateway answers ``/status?since=N&wait=S`` as soon as it has an event numbered N or later, or after
S seconds (docs/gateway.md, "Events"). Each thread asks again at once with the ``next`` of the answer
it got and queues every answer, so the dispatch loop blocks on :meth:`StatusWatch.take` instead of
sleeping a fixed tick and asking every gateway: a written chunk reaches it within a round trip, and an
idle gateway costs one request per ``wait`` seconds instead of twenty a second.
"""

from __future__ import annotations

import queue
import threading

from gateway.control_client import GatewayClient
from planner.errors import GatewayError

#: Seconds a gateway holds a ``/status`` read without news. Also how stale its counters may get
#: (the bandwidth sharer reads them every quarter second, transfer/bandwidth.py).
WAIT = 0.25
#: Seconds a thread pauses after a failed read (a dead gateway: the loop's health check decides).
ERROR_PAUSE = 0.05


class StatusWatch:
    """Long-polls the status of the gateways it is told to :meth:`follow`; answers come out of
    :meth:`take` as ``(gateway id, status document)``, or ``(gateway id, None)`` for a failed read."""

    def __init__(self, *, wait: float = WAIT) -> None:
        self.wait = wait
        self._answers: queue.SimpleQueue[tuple[str, dict | None]] = queue.SimpleQueue()
        self._watching: dict[str, tuple[str, threading.Event]] = {}  # gateway id -> (control URL, stop)

    def follow(self, clients: dict[str, GatewayClient], cursors: dict[str, int]) -> None:
        """Watch exactly the gateways of ``clients``, each from its event ``cursors[gid]`` (0 if none):
        a thread for each new one (or one whose control URL changed), none left for those gone."""
        for gid in list(self._watching):
            url, stop = self._watching[gid]
            if gid not in clients or clients[gid].control_url != url:
                stop.set()
                del self._watching[gid]
        for gid, client in clients.items():
            if gid in self._watching:
                continue
            stop = threading.Event()
            self._watching[gid] = (client.control_url, stop)
            threading.Thread(target=self._watch, args=(gid, client, cursors.get(gid, 0), stop),
                             name=f"status-{gid}", daemon=True).start()

    def take(self, timeout: float) -> list[tuple[str, dict | None]]:
        """Every answer queued; when there is none, waits up to ``timeout`` seconds for the first."""
        try:
            got = [self._answers.get(timeout=timeout) if timeout > 0 else self._answers.get_nowait()]
        except queue.Empty:
            return []
        while True:
            try:
                got.append(self._answers.get_nowait())
            except queue.Empty:
                return got

    def close(self) -> None:
        """Stop every thread (one in a read returns within ``wait`` seconds, or when its gateway goes)."""
        for _, stop in self._watching.values():
            stop.set()
        self._watching.clear()

    def _watch(self, gid: str, client: GatewayClient, since: int, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                doc = client.status(since, wait=self.wait)
            except GatewayError:
                if stop.is_set():
                    return
                self._answers.put((gid, None))
                stop.wait(ERROR_PAUSE)
                continue
            if stop.is_set():
                return  # no longer followed: the loop would drop the answer
            nxt = doc.get("next")
            if isinstance(nxt, int) and nxt >= since:
                since = nxt
            self._answers.put((gid, doc))
