"""Big buffers reused from one chunk to the next instead of allocated (and zeroed) per chunk: a
destination's receive buffers and the buffers it decrypts objects into, a source's read buffers of parts.

``bytearray(n)`` writes every byte of a new buffer before ``recv_into`` writes it again: one pass
over memory per byte a gateway receives, about what the kernel's copy into it costs (a 64 MiB
``bytearray`` took 1.1-1.3 CPU-s per GiB here, a copy into an existing buffer 0.6-1.1; it is the
zeroing, not the page faults: with glibc's mmap off the faults fell 16x and the CPU did not move).
A job's chunks mostly have one size (whole objects of one size, parts of one part size), so a
buffer handed back once its frame is written is handed out again for the next frame of that size.

A buffer the pool cannot hand out again is made without that zeroing (:func:`new_buffer`), and the
bytes of chunks a source holds at once are bounded (:class:`ByteBudget`): each chunk-sized buffer
beyond those a process already had is memory the kernel faults in afresh, ~0.5 CPU-s per GiB here,
about what the copies of a plain hop cost (docs/benchmarks.md, "gateway_loopback").
"""

from __future__ import annotations

import ctypes
import sys
import threading
from typing import Callable

#: Smaller buffers are allocated as before: zeroing them costs little, and they are many sizes.
MIN_POOLED = 1024**2
#: References to a buffer that only its holder refers to, as :meth:`BufferPool.give` counts them
#: (the holder's, and ``sys.getrefcount``'s own argument).
_ONLY_HELD = 2
_POLL = 0.5

_new_bytearray = ctypes.pythonapi.PyByteArray_FromStringAndSize
_new_bytearray.argtypes, _new_bytearray.restype = (ctypes.c_void_p, ctypes.c_ssize_t), ctypes.py_object


def new_buffer(n: int) -> bytearray:
    """A ``bytearray`` of ``n`` bytes whose contents are undefined (whatever the memory held: the
    caller must fill all of it, or drop it), for big buffers: ``bytearray(n)`` writes every byte first.
    Small ones are zeroed as usual (it costs little)."""
    if n < MIN_POOLED:
        return bytearray(n)
    # CPython's C API makes a bytearray of uninitialised memory when given no bytes to copy.
    return _new_bytearray(None, n)


class BufferPool:
    """At most ``max_buffers`` idle buffers of ``MIN_POOLED`` bytes or more (those waiting to be checked
    included), by exact size (a full pool makes room by dropping one of the size handed back longest
    ago); thread-safe."""

    def __init__(self, max_buffers: int, on_reuse: Callable[[], None] | None = None) -> None:
        self._on_reuse = on_reuse  # called for each buffer handed out again
        self._free: dict[int, list[bytearray]] = {}
        self._idle = 0
        self._max = max_buffers
        self._pending: list[list] = []  # holders handed back by give_when_free, not yet checked
        self._lock = threading.Lock()

    def take(self, n: int) -> bytearray:
        """A buffer of ``n`` bytes whose contents are undefined (a reused one holds an earlier frame's
        bytes): the caller must fill all of it, or drop it."""
        if n >= MIN_POOLED:
            if self._pending:
                with self._lock:
                    pending, self._pending = self._pending, []
                for holder in pending:
                    self.give(holder)
            with self._lock:
                free = self._free.get(n)
                buf = free.pop() if free else None
                if buf is not None:
                    self._idle -= 1
                    if not free:
                        del self._free[n]
            if buf is not None:
                if self._on_reuse is not None:
                    self._on_reuse()
                return buf
        return new_buffer(n)

    def give(self, holder: tuple) -> int:
        """Hand back the buffers of ``holder`` (a written frame's body) that came from :meth:`take`,
        once nobody needs their bytes. A buffer is kept only if ``holder`` is the last thing that
        refers to it: one that a memoryview, a queue or an exception's traceback still holds is left
        to be freed as usual. The caller must not read ``holder`` afterwards. Returns how many were kept."""
        kept = 0
        for i in range(len(holder)):  # by index: a loop variable would be one more reference
            if (type(holder[i]) is not bytearray or len(holder[i]) < MIN_POOLED
                    or sys.getrefcount(holder[i]) > _ONLY_HELD):
                continue
            with self._lock:
                n = len(holder[i])
                if self._idle >= self._max and not self._evict_other(n):
                    return kept
                free = self._free.pop(n, [])  # re-inserted: sizes in the order last handed back
                free.append(holder[i])
                self._free[n] = free
                self._idle += 1
            kept += 1
        return kept

    def _evict_other(self, n: int) -> bool:
        """Called with the lock held and the pool full: drop an idle buffer of another size than ``n``,
        of the size handed back longest ago. Sizes that recur (a job's parts, a bundle's size) are
        taken again before they age; compressed frames, each of its own size, would otherwise fill
        the pool for good and leave no room for those. False if every idle buffer is ``n`` bytes."""
        for size, free in self._free.items():
            if size != n:
                free.pop(0)
                if not free:
                    del self._free[size]
                self._idle -= 1
                return True
        return False

    def give_when_free(self, holder: list) -> None:
        """:meth:`give` ``holder``'s buffers at the next :meth:`take`: called when the last other thing
        that referred to them goes (a sent frame's finalizer, while the frame is being freed), the
        same checks then apply. The caller must not read ``holder`` afterwards."""
        with self._lock:
            if self._idle + len(self._pending) < self._max:  # with the idle ones, never more than max_buffers
                self._pending.append(holder)

    @property
    def idle(self) -> int:
        """Buffers waiting to be taken."""
        return self._idle


class ByteBudget:
    """How many bytes of chunks a stage may hold at once (those being read, encoded, queued and sent),
    so that a burst does not make more chunk-sized buffers than the pipeline needs: a chunk larger
    than the budget still goes, alone."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._held = 0
        self._cond = threading.Condition()

    def acquire(self, n: int, stop: threading.Event) -> bool:
        """Wait until ``n`` more bytes fit (or nothing is held); False if ``stop`` was set meanwhile."""
        with self._cond:
            while self._held and self._held + n > self._limit:
                if stop.is_set():
                    return False
                self._cond.wait(_POLL)
            self._held += n
            return True

    def release(self, n: int) -> None:
        with self._cond:
            self._held -= n
            self._cond.notify_all()

    @property
    def held(self) -> int:
        """Bytes held now."""
        return self._held
