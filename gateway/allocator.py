"""Keep chunk-sized buffers' memory inside the gateway process instead of faulting it in afresh for
every chunk.

glibc's malloc serves every allocation above its mmap threshold (at most 32 MiB on 64-bit) with a
fresh ``mmap`` and unmaps it on free, and returns freed memory at the top of the heap above its trim
threshold. A gateway allocates several chunk-sized buffers per chunk (the read or receive buffer, lz4's
and AES-GCM's outputs), so each one faulted in zero pages from the kernel: measured on this project's
2-core machine, allocating and filling 32 MiB buffers cost 0.79 CPU-s per GiB, 0.12 once freed memory
was reused (a plain copy costs 0.09). :func:`keep_chunk_memory` raises both thresholds above the job's
largest chunk, so freed chunk buffers are reused. A gateway's memory was already bounded by its queues
and readers/writers (docs/gateway.md); what changes is that it keeps what it used until it exits.

Nothing to do on other C libraries (musl, macOS): they run as before.
"""

from __future__ import annotations

import ctypes
import logging
import sys

log = logging.getLogger(__name__)

# mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
#: Headroom above the largest chunk: a sealed or lz4 frame is a little longer than its chunk.
HEADROOM = 1024 * 1024
#: malloc arenas: each keeps its own freed memory, and a gateway's many threads would otherwise get
#: up to 8 per core, each holding chunk buffers the others cannot reuse.
ARENAS = 2
#: Freed memory kept at the top of the heap before any is returned: several chunks' worth.
KEEP_CHUNKS = 8


def keep_chunk_memory(max_chunk_bytes: int) -> bool:
    """Tune glibc's malloc of this process for buffers up to ``max_chunk_bytes``; False (and nothing
    changed) where the C library is not glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        # glibc's soname, loaded directly: ctypes.util.find_library runs `ldconfig -p` in a subprocess,
        # tens of milliseconds on every gateway process's start-up path.
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018 - glibc only: musl has no such symbol
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    threshold = min(max_chunk_bytes + HEADROOM, 2**31 - 1)
    ok = mallopt(M_MMAP_THRESHOLD, threshold) == 1 and \
        mallopt(M_TRIM_THRESHOLD, min(KEEP_CHUNKS * threshold, 2**31 - 1)) == 1 and \
        mallopt(M_ARENA_MAX, ARENAS) == 1
    if not ok:
        log.warning("malloc tuning refused (mmap threshold %d bytes): chunk buffers are faulted in afresh", threshold)
    return ok
