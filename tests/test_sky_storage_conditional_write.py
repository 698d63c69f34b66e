"""The optional ``conditional_write`` store capability (compare-and-swap of one object) on the real
emulators: what the replica catalogue relies on to stay consistent with many writers."""

from __future__ import annotations

import pytest

from gateway.stores import open_store
from planner.errors import ConflictError, NotFoundError


@pytest.fixture(params=["s3_bucket", "gcs_bucket", "azure_container"])
def cas_store(request):
    store = open_store(request.getfixturevalue(request.param))
    assert store.capabilities.conditional_write
    return store


def test_write_if_is_a_compare_and_swap(cas_store):
    with pytest.raises(NotFoundError):
        cas_store.read_versioned("doc.json")
    v1 = cas_store.write_if("doc.json", b"one", None)
    with pytest.raises(ConflictError):
        cas_store.write_if("doc.json", b"again", None)  # "only if absent", but it exists
    data, version = cas_store.read_versioned("doc.json")
    assert (data, version) == (b"one", v1)
    v2 = cas_store.write_if("doc.json", b"two", version)
    assert v2 != v1
    with pytest.raises(ConflictError):
        cas_store.write_if("doc.json", b"lost update", v1)  # another writer won in between
    assert cas_store.read_versioned("doc.json") == (b"two", v2)
    cas_store.delete("doc.json")
    with pytest.raises(ConflictError):
        cas_store.write_if("doc.json", b"resurrected", v2)  # deleted since it was read
