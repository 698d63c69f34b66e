"""Paged listings and the streaming sync diff.

Every store lists keys in code-point order (docs/gateway.md, ``POST /store`` ``list``), so deciding
what to copy is a merge join: the source's pages are walked once, and each destination's listing is
advanced in step with them, never held whole. Memory is one page per side.

The per-object decisions are small functions (:func:`differs`, :func:`decide`) so that filters,
dry runs or a mirror's deletions can hook in without touching the join.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

from gateway.stores.base import ObjectInfo
from planner.errors import TransferError

#: Keys per listing page (the most ``POST /store`` ``list`` returns).
PAGE_LIMIT = 5000

#: ``token -> (objects, next token or None)``: one page of a listing, from its start when token is None.
ListPage = Callable[[str | None], tuple[list[ObjectInfo], str | None]]


def pages(list_page: ListPage, token: str | None = None) -> Iterator[list[ObjectInfo]]:
    """The pages of a listing in order (from ``token`` on), each fetched when the previous one is used."""
    while True:
        objects, token = list_page(token)
        yield objects
        if not token:
            return


def in_order(objects: Iterable[ObjectInfo], where: str) -> Iterator[ObjectInfo]:
    """``objects`` as they come, refusing a listing that is not strictly sorted: the merge join
    would otherwise skip comparisons silently."""
    last: str | None = None
    for info in objects:
        if last is not None and info.key <= last:
            raise TransferError(f"{where} listed {info.key!r} after {last!r}: listings must be sorted by key",
                                hint="this store cannot be synced; copy without sync")
        last = info.key
        yield info


def flatten(page_iter: Iterable[list[ObjectInfo]]) -> Iterator[ObjectInfo]:
    for page in page_iter:
        yield from page


def differs(src: ObjectInfo, dst: ObjectInfo | None) -> bool:
    """Sync rule: copy when missing, when the size differs, or when a content checksum both listings
    report (MD5, CRC32C; else ETags that look like MD5s, 32 hex digits) differs. Multipart ETags are
    not comparable across stores, so size decides there."""
    if dst is None or dst.size != src.size:
        return True
    theirs, ours = src.checksums(), dst.checksums()
    shared = theirs.keys() & ours.keys()
    if shared:
        return any(theirs[k] != ours[k] for k in shared)
    a, b = _md5_etag(src.etag), _md5_etag(dst.etag)
    return bool(a and b and a != b)


def _md5_etag(etag: str | None) -> str | None:
    if not etag:
        return None
    e = etag.strip('"').lower()
    return e if len(e) == 32 and all(c in "0123456789abcdef" for c in e) else None


class DestCursor:
    """One destination's listing, advanced in step with the source: :meth:`seek` returns the entry
    with the given key, if any, passing over (and reporting to ``on_extra``) the ones before it."""

    def __init__(self, objects: Iterable[ObjectInfo], where: str,
                 on_extra: Callable[[ObjectInfo], None] | None = None) -> None:
        self._it = iter(in_order(objects, where))
        self._head: ObjectInfo | None = next(self._it, None)
        self._on_extra = on_extra

    def seek(self, key: str) -> ObjectInfo | None:
        while self._head is not None and self._head.key < key:
            if self._on_extra is not None:
                self._on_extra(self._head)
            self._head = next(self._it, None)
        if self._head is not None and self._head.key == key:
            found, self._head = self._head, next(self._it, None)
            return found
        return None

    def drain(self) -> None:
        """Pass over what is left (reported to ``on_extra``): call once the source is exhausted."""
        self.seek("\U0010ffff" * 2)


@dataclass(frozen=True, slots=True)
class Decision:
    """One source object and, per destination index, whether it is copied there."""

    info: ObjectInfo
    rel: str  # its name relative to the source prefix
    copy: tuple[int, ...]  # destinations that get it
    up_to_date: tuple[int, ...]  # destinations that already have it (sync)


def decide(info: ObjectInfo, rel: str, found: list[ObjectInfo | None]) -> Decision:
    """The sync decision for one object: ``found`` is, per destination, what its listing holds under
    the object's key."""
    copy = tuple(i for i, d in enumerate(found) if differs(info, d))
    return Decision(info, rel, copy, tuple(i for i in range(len(found)) if i not in copy))


#: ``(destination index, object)``: called for each object a destination holds and the source does not.
OnDestOnly = Callable[[int, ObjectInfo], None]


def diff(source: Iterable[ObjectInfo], rel: Callable[[str], str], dest_keys: list[Callable[[str], str]],
         dest_listings: list[Iterable[ObjectInfo]] | None, *, where: str = "the source",
         on_dest_only: OnDestOnly | None = None) -> Iterator[Decision]:
    """A :class:`Decision` per source object, in listing order. ``rel`` maps a source key to its
    relative name, ``dest_keys[i]`` a relative name to destination ``i``'s key; ``dest_listings``
    (sync only) are the destinations' sorted listings under their prefixes. Directory markers
    (keys ending in ``/``) are not objects and are left out. ``on_dest_only`` (sync only) hears of
    every destination object with no source object, in key order, as the join passes it; the last
    ones once the source is exhausted (a mirror's deletions: act on them after the copies verified)."""
    cursors = None if dest_listings is None else [
        DestCursor(listing, f"destination {i}",
                   None if on_dest_only is None else (lambda obj, i=i: on_dest_only(i, obj)))
        for i, listing in enumerate(dest_listings)]
    every = tuple(range(len(dest_keys)))
    for info in in_order(source, where):
        if info.key.endswith("/"):
            continue
        name = rel(info.key)
        if cursors is None:
            yield Decision(info, name, every, ())
        else:
            yield decide(info, name, [c.seek(key_for(name)) for c, key_for in zip(cursors, dest_keys)])
    if cursors is not None and on_dest_only is not None:
        for c in cursors:
            c.drain()
