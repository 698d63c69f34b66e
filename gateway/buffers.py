"""Big buffers reused from one chunk to the next instead of allocated (and zeroed) per chunk: a
destination's receive buffers and the buffers it decrypts objects into, a source's read buffers of parts
and whole objects (handed back once sent, or once written when the source writes them itself).

``bytearray(n)`` writes every byte of a new buffer before ``recv_into`` writes it again: one pass
over memory per byte a gateway receives, about what the kernel's copy into it costs (a 64 MiB
``bytearray`` took 1.1-1.3 CPU-s per GiB here, a copy into an existing buffer 0.6-1.1; it is the
zeroing, not the page faults: with glibc's mmap off the faults fell 16x and the CPU did not move).
A job's chunks mostly have one size (whole objects of one size, parts of one part size), so a
buffer handed back once its frame is written is handed out again for the next frame of that size
class.

A buffer the pool cannot hand out again is made without that zeroing (:func:`new_buffer`), and the
bytes of chunks a source holds at once are bounded (:class:`ByteBudget`): each chunk-sized buffer
beyond those a process already had is memory the kernel faults in afresh, ~0.5 CPU-s per GiB here,
about what the copies of a plain hop cost (docs/benchmarks.md, "gateway_loopback"). glibc maps every
allocation of 32 MiB or more on its own and unmaps it when freed, so a freed buffer is never memory
the next one gets back: only the pool keeps it.

Buffers are pooled by capacity, not by exact length: :meth:`BufferPool.take` rounds a length up to
its size class (:func:`size_class`, at most a sixteenth more) and hands out a buffer of that capacity
cut to the length in place. Whole objects of different sizes, a whole object's extra byte
(gateway/node.py) and compressed frames of varying lengths then share buffers.
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

#: Size classes per doubling of a pooled buffer's length (:func:`size_class`; a power of two).
_CLASSES_PER_DOUBLING = 16

_new_bytearray = ctypes.pythonapi.PyByteArray_FromStringAndSize
_new_bytearray.argtypes, _new_bytearray.restype = (ctypes.c_void_p, ctypes.c_ssize_t), ctypes.py_object
# Sets a bytearray's length without writing its bytes; within its allocation (and above half of it,
# as a size class guarantees) it neither moves nor copies them. It refuses a buffer a view still has.
_resize = ctypes.pythonapi.PyByteArray_Resize
_resize.argtypes, _resize.restype = (ctypes.py_object, ctypes.c_ssize_t), ctypes.c_int


def new_buffer(n: int) -> bytearray:
    """A ``bytearray`` of ``n`` bytes whose contents are undefined (whatever the memory held: the
    caller must fill all of it, or drop it), for big buffers: ``bytearray(n)`` writes every byte first.
    Small ones are zeroed as usual (it costs little)."""
    if n < MIN_POOLED:
        return bytearray(n)
    # CPython's C API makes a bytearray of uninitialised memory when given no bytes to copy.
    return _new_bytearray(None, n)


def size_class(n: int) -> int:
    """The capacity of a pooled buffer of ``n`` bytes: ``n`` rounded up to the next sixteenth of the
    power of two below it (34 MiB for 32 MiB and one byte, 32 MiB for 32 MiB)."""
    # n in [2**k, 2**(k+1)) has k + 1 bits; its step is 2**k / _CLASSES_PER_DOUBLING.
    step = 1 << max(0, n.bit_length() - _CLASSES_PER_DOUBLING.bit_length())
    return -(-n // step) * step


def _capacity(buf: bytearray) -> int:
    """The bytes ``buf`` can hold without moving (its allocation, less the terminating NUL)."""
    return buf.__alloc__() - 1


class BufferPool:
    """At most ``max_buffers`` idle buffers of ``MIN_POOLED`` bytes or more (those waiting to be checked
    included), by capacity (a full pool makes room by dropping one of the capacity handed back longest
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
        bytes): the caller must fill all of it, or drop it. One of ``MIN_POOLED`` bytes or more has the
        capacity of ``n``'s size class (:func:`size_class`), so that it can be pooled again."""
        if n < MIN_POOLED:
            return new_buffer(n)
        if self._pending:
            with self._lock:
                pending, self._pending = self._pending, []
            for holder in pending:
                self.give(holder)
        capacity = size_class(n)
        with self._lock:
            free = self._free.get(capacity)
            buf = free.pop() if free else None
            if buf is not None:
                self._idle -= 1
                if not free:
                    del self._free[capacity]
        if buf is None:
            buf = new_buffer(capacity)
        elif self._on_reuse is not None:
            self._on_reuse()
        _resize(buf, n)
        return buf

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
            capacity = _capacity(holder[i])
            if size_class(capacity) != capacity:
                continue  # not made by take(): no take() would ask for its capacity
            with self._lock:
                if self._idle >= self._max and not self._evict_other(capacity):
                    return kept
                free = self._free.pop(capacity, [])  # re-inserted: classes in the order last handed back
                free.append(holder[i])
                self._free[capacity] = free
                self._idle += 1
            kept += 1
        return kept

    def _evict_other(self, n: int) -> bool:
        """Called with the lock held and the pool full: drop an idle buffer of another capacity than
        ``n``, of the capacity handed back longest ago. Classes that recur (a job's parts, its objects'
        sizes) are taken again before they age; buffers of a class seen once would otherwise fill the
        pool for good and leave no room for those. False if every idle buffer holds ``n`` bytes."""
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
