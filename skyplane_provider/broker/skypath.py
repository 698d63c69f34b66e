"""``sky://DATASET/key`` as a universal_pathlib path (``UPath``, and Airflow's ``ObjectStoragePath``).

universal_pathlib warns about any fsspec protocol without a registered path class and then guesses;
this registers one (entry point ``universal_pathlib.implementations``, see pyproject.toml). A dataset
name plays the part of a bucket, so the cloud stores' path rules apply; reads go to
:class:`skyplane_provider.broker.fs.SkyFileSystem`. Loaded only where universal_pathlib is installed.
"""

from __future__ import annotations

from fsspec import get_filesystem_class
from upath.implementations.cloud import CloudPath

# Imported (and so known to fsspec) before any SkyPath parses a URL: universal_pathlib derives its
# path rules from the filesystem class, and warns when it has to guess them.
get_filesystem_class("sky")


class SkyPath(CloudPath):
    """A path in a published dataset: ``sky://DATASET/key`` (read-only, like the filesystem)."""

    __slots__ = ()
