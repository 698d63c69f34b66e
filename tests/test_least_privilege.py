"""Who holds which store credentials (docs/credentials.md, "Who holds what"): the narrowing of a
credentials document to the stores a host opens, and the coordinator's destination store that goes
through a real gateway's ``POST /store``. The end-to-end check across hosts is in
tests/test_ssh_coordinator.py (``test_ssh_source_host_holds_no_destination_credential``)."""

from __future__ import annotations

import socket

import pytest

from gateway.control_client import GatewayClient
from gateway.stores import covers, narrow, open_store
from gateway.stores.base import Capabilities
from planner.errors import BadOptionError, GatewayError, NotFoundError
from planner.plan import PartitionProgram, RegionProgram
from skyplane_provider.coordinator.gateway_store import GatewayStore, capabilities_doc, capabilities_from
from tests.gateway_jobs import DST

S3_A = {"aws_access_key_id": "a", "aws_secret_access_key": "secret-a"}
S3_ANY = {"aws_access_key_id": "any", "aws_secret_access_key": "secret-any"}
AZ = {"connection_string": "DefaultEndpointsProtocol=http;AccountName=acct;AccountKey=k"}


def test_narrow_keeps_the_entries_the_named_stores_use_and_nothing_else():
    doc = {"S3://src-a/": S3_A, "s3": S3_ANY, "az://acct": AZ, "gs": {"project": "p"}}
    assert narrow(doc, ["s3://src-a"]) == {"s3://src-a": S3_A}
    assert narrow(doc, ["s3://dst-b"]) == {"s3": S3_ANY}  # a scheme entry serves every other bucket
    assert narrow(doc, ["az://acct/cont", "file:///tmp/x"]) == {"az://acct": AZ}
    assert narrow(doc, []) == {} and narrow(None, ["s3://src-a"]) == {}
    assert covers("s3", "s3://dst-b") and covers("S3://src-a", "s3://src-a") and covers("az://acct", "az://acct/cont")
    assert not covers("s3://src-a", "s3://dst-b") and not covers("gs", "s3://src-a") and not covers("s3", "file:///x")


def test_capabilities_travel_as_json_and_come_back_equal():
    caps = Capabilities(multipart=True, min_part_size=5 * 1024**2, checksums=frozenset({"md5", "crc32c"}),
                        copy_from=("url", "s3"), presign=True)
    assert capabilities_from(capabilities_doc(caps)) == caps
    with pytest.raises(BadOptionError, match="same skyplane-provider version"):
        capabilities_from({"nope": 1})


def _dead_client() -> GatewayClient:
    """A control client of a port nothing listens on (a gateway that died)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return GatewayClient(f"http://127.0.0.1:{port}", "token", timeout=2.0)


def test_gateway_store_does_the_coordinators_destination_calls_through_a_living_gateway(jobs, stores):
    """Every call the coordinator makes on a destination goes through ``POST /store`` of a gateway of
    its region; a dead gateway is skipped for the next, a store's refusal is the store's own error,
    and a region without gateways fails loudly. (~2 s)"""
    job = jobs({DST: RegionProgram(DST, {0: PartitionProgram("receive", (), write=True)})})
    living: list[GatewayClient] = [_dead_client(), job.clients[DST]]
    root = stores["dst"]
    store = GatewayStore(root, capabilities=open_store(root).capabilities, region=DST, clients=lambda: list(living))
    store.check()
    assert store.region() == DST and store.root_uri == open_store(root).root_uri
    assert store.write("a/one", b"1").size == 1
    assert [o.key for o in store.list_page("a/")[0]] == ["a/one"] and store.head("a/one").size == 1
    upload = store.begin_multipart("big")
    parts = [open_store(root).upload_part("big", upload, n, bytes([n]) * 100) for n in (1, 2)]  # a gateway's writes
    assert store.pending_uploads() == [("big", upload)]
    assert store.complete_multipart("big", upload, parts).size == 200
    store.abort_multipart("gone", store.begin_multipart("gone"))
    assert store.pending_uploads() == []
    store.delete("a/one")
    assert not open_store(root).exists("a/one") and open_store(root).read("big") == b"\x01" * 100 + b"\x02" * 100
    with pytest.raises(NotFoundError, match="nope"):
        store.head("nope")
    with pytest.raises(BadOptionError, match="does not read"):
        store.read("big")
    living[:] = [_dead_client()]
    with pytest.raises(GatewayError, match=f"no gateway of {DST} could HEAD big"):
        store.head("big")
    living.clear()
    with pytest.raises(GatewayError, match=f"no gateway of {DST} is left"):
        store.head("big")
