"""The local store's MD5s survive the process: once a HEAD read a file for its MD5, a listing in another
process reports it without reading the file; a listing alone reads no file at all."""

from __future__ import annotations

import os
import subprocess
import sys

from gateway.stores.digest_cache import DigestCache, version_of

LIST_AND_COUNT_READS = """
import builtins, sys
from gateway.stores.local import LocalStore
reads = 0
real_open = builtins.open
def counting_open(path, mode="r", *a, **k):
    global reads
    if "rb" == mode and str(path).startswith(sys.argv[1]):
        reads += 1
    return real_open(path, mode, *a, **k)
builtins.open = counting_open
store = LocalStore(sys.argv[1])
known = [o for o in store.list() if o.md5]
listing_reads = reads
headed = [store.head(o.key) for o in store.list()]
print(len(known), listing_reads, len([o for o in headed if o.md5]), reads)
"""


def listing_reads(root, cache_file) -> tuple[int, int]:
    """(objects whose MD5 a listing knew, files read to HEAD every object) in a new process."""
    out = subprocess.run([sys.executable, "-c", LIST_AND_COUNT_READS, str(root)], capture_output=True, text=True,
                         env={**os.environ, "SKYPLANE_DIGEST_CACHE": str(cache_file)}, check=True, timeout=60)
    known, listing_read, headed, reads = map(int, out.stdout.split())
    assert listing_read == 0 and headed == len(os.listdir(root))
    return known, reads


def test_digests_are_reused_across_processes_until_a_file_changes(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    for i in range(5):
        (root / f"f{i}").write_bytes(os.urandom(1000))
    cache = tmp_path / "md5.sqlite3"
    assert listing_reads(root, cache) == (0, 5)
    assert listing_reads(root, cache) == (5, 0)
    (root / "f3").write_bytes(os.urandom(1001))
    assert listing_reads(root, cache) == (4, 1)


def test_a_broken_cache_file_turns_persistence_off(tmp_path, caplog):
    (tmp_path / "not-a-db").write_bytes(b"garbage " * 100)
    cache = DigestCache(tmp_path / "not-a-db")
    version = version_of(os.stat(tmp_path / "not-a-db"))
    assert cache.get(version) is None
    cache.put(version, "00" * 16)
    cache.flush()
    assert cache.get(version) == "00" * 16  # still at hand in memory
    assert DigestCache(tmp_path / "not-a-db").get(version) is None  # but nothing was persisted
    assert "is off for this process" in caplog.text


def test_get_many_answers_a_page_of_versions_from_the_file(tmp_path):
    """get_many answers from the file in queries of many inodes: a version whose size or mtime changed
    is not known, one never put is not either."""
    path = tmp_path / "md5.sqlite3"
    writer = DigestCache(path)
    versions = [(1, ino, 1024, 7) for ino in range(1, 1201)]
    for v in versions:
        writer.put(v, f"{v[1]:032x}")
    writer.flush()
    reader = DigestCache(path)
    asked = [*versions, (1, 5, 1025, 7), (1, 9999, 1024, 7)]
    found = reader.get_many(asked)
    assert found == {v: f"{v[1]:032x}" for v in versions}
    assert reader.get_many(versions[:3]) == {v: f"{v[1]:032x}" for v in versions[:3]}  # from memory now
