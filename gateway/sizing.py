"""Defaults that win without a flag: how objects are cut and bundled, from their sizes and the stores'
capabilities. Pure (no I/O); the coordinator's chunker calls :func:`choose` with the sizes it has seen
(the first listing page is enough) and the destinations' :class:`Capabilities`.

Why these numbers (docs/gateway.md, "Sizing"):

- A request costs the same few round trips and the same CPU in the SDK, the store and the gateway
  whatever its size, up to a few MiB: small objects therefore travel many to a frame (a bundle: one
  AEAD seal or CRC32C, one frame, one event) and are still written one request each.
- An object up to its destination's ``single_request_max`` is written in one request, as the store's
  own tools do by default; only bigger ones are cut into parts (parts cost a begin, a completion and,
  on GCS, composes and deletes).
- Bundles are sized so that the small objects of a job spread over enough chunks for every writer
  to have one (a bundle is written by one writer, object after object), and no bigger than a part.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from .batch import MAX_BUNDLE_OBJECTS
from .stores.base import Capabilities

MiB = 1024**2

#: Bytes per part of a multipart object, unless a store's part limits need more.
PART_SIZE = 32 * MiB
#: Whole objects up to this travel many to a chunk (beyond it, per-request costs no longer dominate).
BUNDLE_THRESHOLD = 1 * MiB
#: A bundle's bytes stay between these.
BUNDLE_MIN, BUNDLE_MAX = 1 * MiB, 16 * MiB
#: Chunks written at once across a destination region's gateways that bundles should feed.
STREAMS = 16


@dataclass(frozen=True)
class Sizing:
    """How a job's objects become chunks.

    ``part_size``: bytes per part of an object that goes in parts (the chunker's chunk size).
    ``multipart_threshold``: an object above it goes in parts, one up to it in one request.
    ``bundle_threshold``: whole objects up to it travel many to a chunk (``bundle_bytes`` and
    ``bundle_objects`` at most per bundle); a whole object above it travels alone.
    """

    part_size: int
    multipart_threshold: int
    bundle_threshold: int
    bundle_bytes: int
    bundle_objects: int = MAX_BUNDLE_OBJECTS

    def in_parts(self, size: int) -> bool:
        return size > self.multipart_threshold

    def bundled(self, size: int) -> bool:
        return size <= self.bundle_threshold


def choose(sizes: Sequence[int], dests: Sequence[Capabilities], *, part_size: int | None = None) -> Sizing:
    """The sizing for objects like ``sizes`` (all of a job's, or a first listing page's) going to
    stores with capabilities ``dests``. ``part_size``: the user's chunk size, if they gave one (then
    every object above it goes in parts, as the user asked)."""
    part = part_size or PART_SIZE
    multipart = all(c.multipart for c in dests)
    # One request up to what every destination takes in one; never parts smaller than the threshold.
    # A user's chunk size is the cut itself: an object above it goes in parts of that size.
    threshold = min((c.single_request_max for c in dests), default=PART_SIZE) if multipart else math.inf
    threshold = (part if part_size else max(threshold, part)) if multipart else threshold
    small = [s for s in sizes if s <= BUNDLE_THRESHOLD]
    # Spread the small objects over STREAMS bundles at least, a bundle within [BUNDLE_MIN, BUNDLE_MAX]
    # and never above a part (the chunk size the gateways are told to accept).
    share = sum(small) / STREAMS if small else BUNDLE_MAX
    bundle = int(min(max(share, BUNDLE_MIN), BUNDLE_MAX, part))
    return Sizing(part_size=part, multipart_threshold=int(min(threshold, 2**62)),
                  bundle_threshold=min(BUNDLE_THRESHOLD, bundle), bundle_bytes=bundle)
