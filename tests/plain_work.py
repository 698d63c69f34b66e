"""A gateway's plain work on one store, in a fresh interpreter: what the tests of the stores that
speak HTTP themselves (S3, GCS, Azure) run to show which SDK modules stay out of a gateway."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: Every module of the gateway package loaded and the store's SDK preloaded, as in a gateway's
#: process; then check, write, a ranged read, two parts completed, an upload aborted, a listing, a
#: head and a delete (``{extra}``: the store's own verbs besides). Prints the modules loaded.
_SCRIPT = '''
import importlib, pkgutil, sys
import gateway
for module in pkgutil.iter_modules(gateway.__path__):
    importlib.import_module("gateway." + module.name)
from gateway.stores import open_store, preload
preload([{scheme!r}])
store = open_store({root!r})
store.check()
store.write("a/x", b"hello")
assert store.read_into("a/x", 1, memoryview(bytearray(3))) == 3
upload = store.begin_multipart("a/y")
parts = [store.upload_part("a/y", upload, n, b"p" * ({first} if n == 1 else 10)) for n in (1, 2)]
store.complete_multipart("a/y", upload, parts)
store.abort_multipart("a/z", store.begin_multipart("a/z"))
assert [o.key for o in store.list_page("a/")[0]] == ["a/x", "a/y"] and store.head("a/y").size == {first} + 10
{extra}
store.delete("a/x")
print("\\n".join(sorted(sys.modules)))
'''


def modules_after_plain_work(root: str, *, first_part: int = 10, extra: str = "") -> list[str]:
    """The modules a fresh interpreter holds after a gateway's plain work on the store at ``root``
    (``first_part``: the first part's size, where the store has a minimum; ``extra``: more lines
    of the script, with ``store`` at hand)."""
    script = _SCRIPT.format(scheme=root.split("://", 1)[0], root=root, first=first_part, extra=extra)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()
