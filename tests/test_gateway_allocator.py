"""gateway/allocator.py: once tuned, a chunk-sized buffer freed and allocated again reuses the same
memory instead of faulting in fresh pages (counted by the kernel: minor page faults, not time)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

CHUNK = 32 * 1024 * 1024

PROBE = textwrap.dedent(f"""
    import resource, sys
    from gateway.allocator import keep_chunk_memory
    tuned = keep_chunk_memory({CHUNK}) if sys.argv[1] == "tuned" else False
    def faults():
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    data = bytes({CHUNK})
    for _ in range(2):  # the first round may grow the heap; the second is what every later chunk costs
        before = faults()
        for _ in range(4):
            buf = bytearray(data)  # a chunk-sized buffer, filled, then freed
            del buf
        after = faults()
    print(tuned, after - before)
""")


def faults_per_round(mode: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    tuned, faults = out.stdout.split()
    return tuned, int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
def test_tuned_malloc_reuses_freed_chunk_buffers():
    pages = 4 * CHUNK // 4096
    tuned, faults = faults_per_round("tuned")
    if tuned != "True":
        pytest.skip("not glibc: keep_chunk_memory changes nothing here")
    assert faults < pages // 20  # reused: (almost) no page faulted in again
    _, untuned = faults_per_round("plain")
    assert untuned > pages // 2  # what every chunk cost before: its pages faulted in afresh
