"""lz4 block decompression into a buffer the caller gives.

``lz4.block.decompress`` (python-lz4) decompresses into memory of its own, then copies that into a
new ``bytes``: per compressed chunk a chunk-sized allocation and a pass over it more than the
decompression needs (0.56 against 0.38 CPU-s per GiB on this project's 2-core machine, CSV text in
32 MiB chunks). Here the system's liblz4 (the library python-lz4 wraps; on every Debian and Ubuntu,
whose apt depends on it) writes straight into the caller's buffer, a reused one, through ctypes,
which releases the GIL during the call. Where liblz4 is missing, :func:`decompress_into` returns
None and the caller uses python-lz4.
"""

from __future__ import annotations

import ctypes

_INT_MAX = 2**31 - 1


def _load():
    try:
        fn = ctypes.CDLL("liblz4.so.1").LZ4_decompress_safe
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int), ctypes.c_int
    return fn


_decompress_safe = _load()


def decompress_into(src: bytes | bytearray | memoryview, out: bytearray) -> int | None:
    """Decompress the lz4 block ``src`` into ``out``: the bytes written, -1 when ``src`` is not a
    block whose output fits ``out`` (damaged), or None when it cannot be done here (no liblz4, a
    read-only view, sizes beyond an int), for the caller to decompress otherwise."""
    if _decompress_safe is None or len(src) > _INT_MAX or len(out) > _INT_MAX:
        return None
    if isinstance(src, bytes):
        holder, source = None, ctypes.c_char_p(src)  # points into the bytes object: no copy
    else:
        try:
            holder = (ctypes.c_char * len(src)).from_buffer(src)
        except TypeError:  # read-only
            return None
        source = ctypes.addressof(holder)
    target = (ctypes.c_char * len(out)).from_buffer(out)
    try:
        n = _decompress_safe(source, ctypes.addressof(target), len(src), len(out))
    finally:
        del holder, target  # release the buffers' exports (a bytearray with one cannot be resized)
    return n if n >= 0 else -1
