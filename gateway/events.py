"""What a gateway reports to the orchestrator: numbered events, counters and recent errors.

The orchestrator reads ``/status?since=N`` with the ``next`` of its previous read; events it has
thereby acknowledged (sequence < N) are released, so a long job does not grow the log without end.
"""

from __future__ import annotations

import itertools
import threading
from collections import deque

COUNTERS = ("bytes_read", "bytes_sent_wire", "bytes_received_wire", "bytes_written", "chunks_written",
            "frames_rejected", "retries")
_RECENT_ERRORS = 50
_MAX_EVENTS_PER_READ = 10_000


class EventLog:
    """Thread-safe event log and counters of one gateway."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: deque[dict] = deque()
        self._next = 0
        self._counters = dict.fromkeys(COUNTERS, 0)
        self._errors: deque[str] = deque(maxlen=_RECENT_ERRORS)

    def written(self, *, chunk_id: int, region: str, store: str, key: str, part: dict | None, checksum: str) -> None:
        self._add({"type": "written", "chunk_id": chunk_id, "region": region, "store": store, "key": key,
                   "part": part, "checksum": checksum})

    def failed(self, chunk_id: int, error: str, *, retryable: bool) -> None:
        self._add({"type": "failed", "chunk_id": chunk_id, "error": error, "retryable": retryable})
        self.error(f"chunk {chunk_id}: {error}")

    def error(self, message: str) -> None:
        """Remember a problem for ``/status`` (also those that concern no chunk, e.g. a refused peer)."""
        with self._lock:
            self._errors.append(message)

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counters[name] += n

    def counter(self, name: str) -> int:
        with self._lock:
            return self._counters[name]

    def status(self, since: int) -> dict:
        """Events with sequence >= ``since`` (older ones are released), counters and recent errors."""
        with self._lock:
            while self._events and self._events[0]["seq"] < since:
                self._events.popleft()
            events = list(itertools.islice(self._events, _MAX_EVENTS_PER_READ))
            return {"events": events, "next": events[-1]["seq"] + 1 if events else self._next,
                    "counters": dict(self._counters),
                    "errors": list(self._errors)}

    def _add(self, event: dict) -> None:
        with self._lock:
            event["seq"] = self._next
            self._next += 1
            self._events.append(event)
