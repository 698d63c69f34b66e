"""The key-ordered walk of a directory tree that a local store lists, continued from page to page.

A page of a listing ends at its last key, the next page's token. Walking the tree again from the
root to that key for every page read each directory on the way once more (its names and a sort):
a fifth more work per page on a tree of 1,000 files per directory, and on one directory of N files
N/page re-reads of all N names, quadratic. So a walk left off at a page's end is kept, under its
prefix and its last key, and the page asked with that token continues it; a token no kept walk
left off at (another process's, an old one) starts a walk from the token, which skips every
directory holding only keys up to it.

A kept walk holds the sorted names of the directories it is in (the one being listed and its
ancestors), what one page's walk held while it ran: memory is bounded by the directories on one
path, never the tree. It sees a directory as it was when it entered it: a file added there
afterwards is not listed (as with any store, a listing is no snapshot), a file deleted is passed
over when its status is read. Walks idle for :data:`IDLE_SECONDS` are dropped, so a listing read
slowly sees the tree again.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from typing import Iterator

#: Kinds of directory entries a walk yields (a link to a directory is not followed, so not yielded).
FILE, LINK = 0, 1
_DIR = 2
#: Walks kept at most per store (listings of one store read at the same time), least recent dropped.
KEPT = 8
#: A kept walk not continued for this long is dropped.
IDLE_SECONDS = 60.0

Walk = Iterator[tuple[str, int]]


def walk(root: str, rel_dir: str, prefix: str, after: str, skip: str) -> Walk:
    """``(key, kind)`` of the entries below ``rel_dir`` ("" or "a/b/") of ``root`` whose keys start
    with ``prefix`` and sort after ``after``, in code point order: a directory ``d`` is ordered as
    ``d/``, which is where its keys sort. ``skip``: a name left out at the top (the store's own)."""
    entries = []
    with os.scandir(os.path.join(root, rel_dir) if rel_dir else root) as it:
        for entry in it:
            if not rel_dir and entry.name == skip:
                continue
            if entry.is_dir(follow_symlinks=False):
                entries.append((f"{rel_dir}{entry.name}/", _DIR))
            elif entry.is_symlink():
                if not entry.is_dir():  # a link to a directory: not followed
                    entries.append((f"{rel_dir}{entry.name}", LINK))
            else:
                entries.append((f"{rel_dir}{entry.name}", FILE))
    entries.sort()  # the names are distinct: the kinds never decide
    for name, kind in entries:
        if not (name.startswith(prefix) or prefix.startswith(name)):
            continue
        if kind != _DIR:
            if name > after and name.startswith(prefix):
                yield name, kind
        elif not (after > name and not after.startswith(name)):  # else every key in it is <= after
            yield from walk(root, name, prefix, after, skip)


class KeptWalks:
    """Walks left off at the end of a page, each under ``(prefix, last key)``; safe across threads
    (a walk taken is its taker's alone until kept again)."""

    def __init__(self) -> None:
        self._walks: OrderedDict[tuple[str, str], tuple[Walk, float]] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, prefix: str, token: str) -> Walk | None:
        """The walk that left off at ``token`` listing ``prefix``, or None."""
        with self._lock:
            kept = self._walks.pop((prefix, token), None)
        if kept is None or time.monotonic() - kept[1] > IDLE_SECONDS:
            return None
        return kept[0]

    def keep(self, prefix: str, token: str, left_off: Walk) -> None:
        """Keep ``left_off``, which yielded ``token`` last, for the page that starts after it."""
        now = time.monotonic()
        with self._lock:
            self._walks[(prefix, token)] = (left_off, now)
            while len(self._walks) > KEPT or (self._walks and now - next(iter(self._walks.values()))[1] > IDLE_SECONDS):
                self._walks.popitem(last=False)
