"""The storage broker: publish a dataset to many clouds, read ``sky://DATASET/key`` from the cheapest replica.

- :mod:`.catalogue`: the replica catalogue (one JSON document, updated atomically);
- :mod:`.publish`: :func:`publish` = one multicast sync + catalogue update;
- :mod:`.fs`: :class:`SkyFileSystem`, the fsspec filesystem of the ``sky://`` protocol;
- :mod:`.choice`: which replica serves a reader in a given region.
"""

from .catalogue import Catalogue, Dataset, Replica
from .publish import Publication, PublishResult, publish

__all__ = ["Catalogue", "Dataset", "Publication", "PublishResult", "Replica", "publish"]
