"""What a gateway reports to the orchestrator: numbered events, counters and recent errors.

The orchestrator reads ``/status?since=N`` with the ``next`` of its previous read; events it has
thereby acknowledged (sequence < N) are released, so a long job does not grow the log without end.
With ``&wait=S`` the read is a long poll: it answers once an event numbered N or later exists, or
after S seconds (:meth:`EventLog.wait`), so the orchestrator learns of a written chunk at once
without asking again and again.

A supervised worker (gateway/supervisor.py) keeps no events: it writes each one at once, a JSON line
without ``seq``, to a pipe its supervisor reads, and adds ``held`` records (a frame taken off a
connection), so the supervisor knows what a worker held up to the moment it died. The supervisor's log
keeps each event as its JSON text (``encoded``): a worker's line is numbered and answered as it came,
never decoded and encoded again (a third of a supervisor's busy samples on 1 KiB files did that).
"""

from __future__ import annotations

import itertools
import json
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable

import planner.errors
from planner.errors import ChecksumError, SkyplaneError

from .json_reply import Encoded

COUNTERS = ("bytes_read", "bytes_sent_wire", "bytes_received_wire", "bytes_written", "chunks_written",
            "objects_written", "frames_rejected", "retries", "buffers_reused", "objects_read_helping",
            "objects_written_helping")
_RECENT_ERRORS = 50
_MAX_EVENTS_PER_READ = 10_000
_HELD = b'{"type":"held",'  # how a worker's held record starts (EventLog.held): the others are passed on
#: The longest a ``/status`` read may wait for news (``wait``): short enough that the answer comes
#: well within the client's timeout and the gateway's dead-man timer sees the reads.
MAX_WAIT = 5.0


def error_type(error: SkyplaneError) -> str:
    """The name of the error's nearest public class (a store's private ``_NoSuchUpload`` is a
    ``NotFoundError``), which a client can raise again."""
    return next(c.__name__ for c in type(error).__mro__ if c.__name__ in planner.errors.__all__)


class EventLog:
    """Thread-safe event log and counters of one gateway."""

    def __init__(self, stream_fd: int | None = None, *, encoded: bool = False) -> None:
        """``stream_fd``: a pipe to write the events to instead of keeping them (a supervised worker).
        ``encoded``: keep each event as its JSON text, and answer :meth:`status` with them as they are
        (:class:`gateway.json_reply.Encoded`): the supervisor's log, fed by :meth:`relay_line`."""
        self._stream_fd = stream_fd
        self._encoded = encoded
        self._lock = threading.Lock()
        self._news = threading.Condition(self._lock)  # notified on every event numbered here
        self._events: deque[tuple[int, dict | bytes]] = deque()  # (seq, the event or its JSON text)
        self._next = 0
        self._counters = dict.fromkeys(COUNTERS, 0)
        self._sent_to: dict[str, int] = {}  # next-hop region -> frame bytes sent there
        self._skipped: dict[str, int] = {}  # reason -> frames it applied to (codec.SKIP_*)
        self._errors: deque[str] = deque(maxlen=_RECENT_ERRORS)

    def written(self, *, chunk_id: int, region: str, integrity: str, objects: list[dict]) -> None:
        """One chunk's objects written by this gateway: ``objects`` are ``{"i", "dest", "key", "part",
        "receipt"}`` (docs/gateway.md)."""
        self._add({"type": "written", "chunk_id": chunk_id, "region": region, "integrity": integrity,
                   "objects": objects})

    def failed(self, chunk_id: int, error: SkyplaneError, *, objects: list[int] | None = None,
               region: str | None = None, retryable: bool | None = None) -> None:
        """A chunk (``objects`` None) or some of its objects could not be read, sent or written;
        ``region`` is this gateway's for a write failure. ``retryable`` defaults to the error's
        (a chunk that arrived damaged is always sent again)."""
        if retryable is None:
            retryable = error.retryable or isinstance(error, ChecksumError)
        event = {"type": "failed", "chunk_id": chunk_id, "objects": objects, "region": region, "error": str(error),
                 "error_type": error_type(error), "retryable": retryable}
        if error.retry_after is not None:
            event["retry_after"] = error.retry_after  # the store's Retry-After: the re-send waits as long
        self._add(event)
        self.error(f"chunk {chunk_id}{'' if objects is None else f' objects {objects}'}: {error}")

    def held(self, chunk_id: int) -> None:
        """A frame of the chunk was taken off a connection (written to the stream only: the supervisor
        reports it failed if this worker dies before its written event)."""
        if self._stream_fd is not None:
            with self._lock:
                self._write({"type": "held", "chunk_id": chunk_id})

    def error(self, message: str) -> None:
        """Remember a problem for ``/status`` (also those that concern no chunk, e.g. a refused peer)."""
        with self._lock:
            self._errors.append(message)

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counters[name] += n

    def sent_to(self, region: str, n: int) -> None:
        """Frame bytes sent to a gateway of next-hop ``region`` (counted in ``bytes_sent_wire`` too)."""
        with self._lock:
            self._counters["bytes_sent_wire"] += n
            self._sent_to[region] = self._sent_to.get(region, 0) + n

    def skipped(self, reason: str) -> None:
        """A frame went without lz4 or encryption, for ``reason`` (where the work buys nothing)."""
        with self._lock:
            self._skipped[reason] = self._skipped.get(reason, 0) + 1

    def counter(self, name: str) -> int:
        with self._lock:
            return self._counters[name]

    def wait(self, since: int, timeout: float) -> None:
        """Return once an event numbered ``since`` or later exists, or after ``timeout`` seconds (at
        most :data:`MAX_WAIT`); the long poll of ``/status?wait=``."""
        with self._news:
            self._news.wait_for(lambda: self._next > since, timeout=min(timeout, MAX_WAIT))

    def status(self, since: int) -> dict:
        """Events with sequence >= ``since`` (older ones are released), counters and recent errors."""
        with self._lock:
            while self._events and self._events[0][0] < since:
                self._events.popleft()
            numbered = list(itertools.islice(self._events, _MAX_EVENTS_PER_READ))
            events = [event for _, event in numbered]
            return {"events": Encoded(events) if self._encoded else events,
                    "next": numbered[-1][0] + 1 if numbered else self._next,
                    "counters": {**self._counters, "bytes_sent_wire_to": dict(self._sent_to),
                                 "skipped": dict(self._skipped), "workers": 1},
                    "errors": list(self._errors)}

    def relay_line(self, line: bytes) -> None:
        """Add a worker's event as its pipe carried it (a JSON object on one line, without ``seq``:
        gateway/supervisor.py), numbered here; to an ``encoded`` log only. Not decoded: passed on."""
        with self._lock:
            self._events.append((self._next, _numbered(self._next, line.rstrip(b"\n"))))
            self._next += 1
            self._news.notify_all()

    def _add(self, event: dict) -> None:
        with self._lock:
            seq = self._next
            self._next += 1
            self._news.notify_all()
            if self._stream_fd is not None:
                self._write(event)  # numbered by the supervisor
            elif self._encoded:
                self._events.append((seq, _numbered(seq, _json(event))))
            else:
                event["seq"] = seq
                self._events.append((seq, event))

    def _write(self, event: dict) -> None:
        """Called with the lock held (one writer at a time: lines never interleave)."""
        data = memoryview(_json(event) + b"\n")
        try:
            while data:
                data = data[os.write(self._stream_fd, data):]
        except OSError:  # the supervisor is gone; this worker stops once it sees that (daemon.run)
            pass


def relay_lines(pipe: Iterable[bytes], log: EventLog, held: Callable[[int], None]) -> None:
    """Read a worker's pipe (what its :class:`EventLog` wrote) to its end: each event into ``log``
    (``encoded``) as it came, each ``held`` record's chunk id to ``held``. A line without its newline
    is the last one of a worker killed while it wrote it: dropped, never passed on cut."""
    for line in pipe:
        if not line.endswith(b"\n"):
            return
        if line.startswith(_HELD):
            held(json.loads(line)["chunk_id"])
        else:
            log.relay_line(line)


def _json(event: dict) -> bytes:
    return json.dumps(event, separators=(",", ":")).encode()


def _numbered(seq: int, text: bytes) -> bytes:
    """The JSON object ``text`` (never empty: every event has a type) with ``seq`` first."""
    return b'{"seq":%d,%s' % (seq, text[1:])
