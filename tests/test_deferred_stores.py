"""A job's coordinator opens (imports the SDK of) only the stores it calls, when it calls them
(skyplane_provider/coordinator/deferred_store.py): the client checked them and handed over what it
found. Through moto and fake-gcs-server, with real local gateways."""

from __future__ import annotations

import os

import pytest

from skyplane_provider.coordinator.deferred_store import DeferredStore
from skyplane_provider.transfer import Transfer, TransferRequest

from .helpers import digests, put_objects, read_all

MiB = 1024**2


def _coordinator(request: TransferRequest) -> Transfer:
    """The Transfer a coordinator process runs: the client's prepare() handed over, nothing checked again."""
    handed = Transfer(request).prepare().handoff()
    return Transfer(request, checked=True, prepared=handed)


def test_a_one_page_job_of_single_requests_opens_no_store_in_the_coordinator(home, s3_bucket, gcs_bucket):
    objs = {f"d/f{i}": os.urandom(100_000) for i in range(3)}
    put_objects(s3_bucket, objs)
    job = _coordinator(TransferRequest(src=f"{s3_bucket}/d/", dsts=[f"{gcs_bucket}/out/"], recursive=True))
    stats = job.execute()
    assert stats.objects == 3 and stats.verified
    assert read_all(gcs_bucket, "out/") == digests({k[2:]: v for k, v in objs.items()})
    stores = [job.source.store, *(d.store for d in job.dests)]
    assert all(isinstance(s, DeferredStore) for s in stores)
    assert [s.opened for s in stores] == [False, False]  # region, capabilities and first page came handed


def test_a_multipart_job_opens_the_destination_at_its_first_upload(home, s3_bucket, gcs_bucket):
    # 12 MiB in 5 MiB chunks: parts, so the coordinator begins and completes the upload on the destination.
    data = os.urandom(12 * MiB)
    put_objects(gcs_bucket, {"big.bin": data})
    job = _coordinator(TransferRequest(src=f"{gcs_bucket}/big.bin", dsts=[f"{s3_bucket}/copy.bin"], recursive=False,
                                       chunk_size="5MiB"))
    stats = job.execute()
    assert stats.objects == 1 and stats.verified
    assert read_all(s3_bucket) == digests({"copy.bin": data})
    assert not job.source.store.opened and job.dests[0].store.opened


def test_a_deferred_store_opens_at_its_first_verb_only(home, s3_bucket):
    from skyplane_provider.coordinator.gateway_store import capabilities_from

    store = DeferredStore(s3_bucket, {}, capabilities_from({}))
    assert store.root_uri == s3_bucket and store.scheme == "s3" and not store.opened
    store.reap_orphans()  # S3 leaves nothing to reap: not a reason to open it
    assert not store.opened
    store.write("k", b"v")
    assert store.opened and store.read("k") == b"v"
    with pytest.raises(ValueError):
        DeferredStore("file:///tmp", {}, capabilities_from({}))
