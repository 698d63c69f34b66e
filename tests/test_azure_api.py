"""The Azure store on the Blob service REST API (gateway/stores/azure_api.py), against Azurite (which
checks Shared Key signatures and SAS tokens): every verb under each kind of credentials, the
signature against azure-storage-blob's, errors as the SDK path mapped them, the one retry budget,
and a gateway's plain work without azure.* or requests imported."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import pytest

from gateway.stores import open_store
from gateway.stores.azure_api import API_VERSION, RETRY, SharedKey
from gateway.stores.base import CopySource
from planner.errors import (AccessDeniedError, ConflictError, CredentialsError, CredentialsExpiredError,
                            NotFoundError, StoreUnavailableError)
from skyplane_provider.testing.emulators import AZURITE_ACCOUNT, AZURITE_KEY, connection_string
from skyplane_provider.testing.faultproxy import FaultProxy
from tests.helpers import throttled_read
from tests.plain_work import modules_after_plain_work


def _container_sas(container: str, permission: str, expiry: datetime | None = None) -> str:
    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    return generate_container_sas(AZURITE_ACCOUNT, container, account_key=AZURITE_KEY,
                                  permission=ContainerSasPermissions.from_string(permission),
                                  expiry=expiry or datetime.now(timezone.utc) + timedelta(hours=1))


def _entry(kind: str, root: str, endpoint: str) -> dict:
    """A credentials document for ``root`` of each kind the store takes (None: the environment's
    connection string)."""
    account_url = f"{endpoint}/{AZURITE_ACCOUNT}"
    if kind == "environment":
        return {}
    if kind == "connection_string":
        return {root: {"connection_string": connection_string(endpoint)}}
    if kind == "account_key":
        return {root: {"account_url": account_url, "account_key": AZURITE_KEY}}
    sas = _container_sas(root.rsplit("/", 1)[1], "racwdl")
    if kind == "connection_string_sas":
        return {root: {"connection_string": f"BlobEndpoint={account_url};SharedAccessSignature={sas}"}}
    return {root: {"account_url": account_url, "sas_token": sas}}


@pytest.mark.parametrize("kind", ["environment", "connection_string", "account_key", "sas", "connection_string_sas"])
def test_every_verb_is_accepted(kind, azure_container, emulators):
    """Shared Key (Azurite checks the signature of every request) and a container SAS."""
    store = open_store(azure_container, _entry(kind, azure_container, emulators.endpoints["azure"]))
    store.check()
    data = bytes(range(256)) * 40
    key = "dir/a key+with%odd~chars é"
    written = store.write(key, bytearray(data))
    assert written.size == len(data) and written.md5 == store.head(key).md5 and store.head(key).size == len(data)
    assert store.read(key) == data and store.read(key, 100, 50) == data[100:150]
    assert store.read(key, len(data), 5) == b""
    view = bytearray(300)
    assert store.read_into(key, 9000, memoryview(view)) == 300 and view == data[9000:9300]
    assert store.read_into(key, len(data) - 40, memoryview(view)) == 40 and view[:40] == data[-40:]
    assert store.read_into(key, len(data), memoryview(view)) == 0
    upload = store.begin_multipart("big")
    parts = [store.upload_part("big", upload, n, memoryview(b"%d" % n * 1000)) for n in (2, 1)]
    assert store.complete_multipart("big", upload, parts).size == 2000
    assert store.read("big") == b"1" * 1000 + b"2" * 1000
    staged = store.begin_multipart("staged")
    store.upload_part("staged", staged, 1, b"x")
    assert store.pending_uploads() == [("staged", staged)]
    store.abort_multipart("staged", staged)
    assert store.pending_uploads() == []
    version = store.write_if("state", b"1", None)
    assert store.read_versioned("state") == (b"1", version)
    with pytest.raises(ConflictError):
        store.write_if("state", b"2", None)
    assert store.write_if("state", b"2", version) != version
    with pytest.raises(ConflictError):
        store.write_if("state", b"3", version)
    url = store.presign(key, 60)  # (Azurite has no Put Block From URL: copy_part_from is not tried)
    source = CopySource(store=azure_container, key=key, size=len(data), url=url)
    assert store.copy_from(source, "copy")[0].size == len(data)
    page, token = store.list_page("", limit=2)
    rest, end = store.list_page("", token)
    assert [o.key for o in page + rest] == ["big", "copy", key, "state"] and end is None
    assert [o.key for o in store.list_page("dir/")[0]] == [key]
    store.delete(key)
    store.delete(key)  # a missing blob is no error
    with pytest.raises(NotFoundError):
        store.head(key)


def test_the_shared_key_signature_is_azure_storage_blobs():
    """The Authorization header of one request at a fixed date, ours and SharedKeyCredentialPolicy's."""
    from azure.core.pipeline import PipelineContext, PipelineRequest
    from azure.core.pipeline.transport import HttpRequest
    from azure.storage.blob._shared.authentication import SharedKeyCredentialPolicy

    path = "/devstoreaccount1/cont/dir/a%20b%2Bc"
    params = [("comp", "block"), ("blockid", "YWJj+/=")]
    headers = {"x-ms-version": API_VERSION, "x-ms-date": "Mon, 07 Dec 2026 18:00:00 GMT", "content-length": "11",
               "x-ms-blob-type": "BlockBlob", "if-match": '"0x1"', "x-ms-range": "bytes=0-9"}
    ours = SharedKey(AZURITE_ACCOUNT, AZURITE_KEY).authorization("PUT", path, params, headers)
    request = HttpRequest("PUT", "http://127.0.0.1:10000" + path, headers=dict(headers))
    request.format_parameters(dict(params))
    sdk = PipelineRequest(request, PipelineContext(None))
    SharedKeyCredentialPolicy(AZURITE_ACCOUNT, AZURITE_KEY).on_request(sdk)
    assert ours == request.headers["Authorization"]
    from azure.storage.blob._serialize import _SUPPORTED_API_VERSIONS

    assert API_VERSION == _SUPPORTED_API_VERSIONS[-1]  # the version azure-storage-blob sends


def test_a_connection_string_is_read_as_azure_storage_blob_reads_it():
    """Azurite's well-known development account, the endpoint a suffix makes, a SAS in the string."""
    from gateway.stores.azure_api import DEV_ENDPOINT, make_client

    dev = make_client(AZURITE_ACCOUNT, {"connection_string": "UseDevelopmentStorage=true"})
    assert dev.base == DEV_ENDPOINT and isinstance(dev.auth, SharedKey) and dev.auth.account_key == AZURITE_KEY
    cloud = make_client("acct", {"connection_string": f"DefaultEndpointsProtocol=https;AccountName=acct;"
                                                      f"AccountKey={AZURITE_KEY};EndpointSuffix=core.chinacloudapi.cn"})
    assert cloud.base == "https://acct.blob.core.chinacloudapi.cn" and cloud.sas is None
    sas = make_client("acct", {"connection_string": "BlobEndpoint=https://acct.blob.core.windows.net/;"
                                                    "SharedAccessSignature=sv=2026-10-06&sig=abc%3D"})
    assert sas.auth is None and sas.url("/c/k") == "https://acct.blob.core.windows.net/c/k?sv=2026-10-06&sig=abc%3D"
    with pytest.raises(CredentialsError, match="is for account 'acct', not 'other'"):
        make_client("other", {"connection_string": f"AccountName=acct;AccountKey={AZURITE_KEY}"})


def test_errors_map_as_before(azure_container, emulators):
    endpoint = emulators.endpoints["azure"]
    account_url = f"{endpoint}/{AZURITE_ACCOUNT}"
    store = open_store(azure_container)
    store.write("k", b"data")
    with pytest.raises(NotFoundError, match="container .* does not exist"):
        open_store(azure_container + "-missing").check()
    with pytest.raises(NotFoundError, match="container .* does not exist"):
        open_store(azure_container + "-missing").write("k", b"x")
    with pytest.raises(NotFoundError, match="/nope does not exist"):
        store.read_into("nope", 0, memoryview(bytearray(4)))
    wrong = {azure_container: {"account_url": account_url, "account_key": "d3Jvbmc="}}
    for call in (lambda s: s.check(), lambda s: s.head("k"), lambda s: s.read("k")):
        with pytest.raises(CredentialsError, match="Azure rejected the credentials"):
            call(open_store(azure_container, wrong))
    with pytest.raises(CredentialsError, match="not base64"):
        open_store(azure_container, {azure_container: {"account_url": account_url, "account_key": "not base64!"}})
    with pytest.raises(CredentialsError, match="over https only"):  # never sent in the clear (azure-core refused too)
        open_store(azure_container, {azure_container: {"account_url": account_url, "access_token": "t"}})
    container = azure_container.rsplit("/", 1)[1]
    expired = _container_sas(container, "rl", datetime.now(timezone.utc) - timedelta(minutes=1))
    with pytest.raises(CredentialsExpiredError, match="expire"):  # the SAS's se= has passed: its expiry
        open_store(azure_container, {azure_container: {"account_url": account_url, "sas_token": expired}}).read("k")
    read_only = open_store(azure_container, {azure_container: {"account_url": account_url,
                                                               "sas_token": _container_sas(container, "rl")}})
    assert read_only.read("k") == b"data"
    with pytest.raises(AccessDeniedError, match="access denied"):  # AuthorizationPermissionMismatch
        read_only.write("k2", b"x")


def _gets_of(key: str):
    return lambda method, path: method == "GET" and path.split("?")[0].endswith("/" + key)


def test_a_throttled_read_spends_the_retry_budget_then_raises_throttled(azure_container, emulators):
    """Every GET of one blob throttled (503 ServerBusy): 4 attempts with the SDK's waits (~2, 2.75,
    3.9 s), then ThrottledError marked retried, with the store's Retry-After."""
    error, spent, counts = throttled_read(azure_container, emulators.endpoints["azure"], "azure",
                                          lambda url: {"connection_string": connection_string(url)},
                                          retry_after="1", match=_gets_of("hot"))
    assert error.retried and error.retry_after == 1.0
    assert counts.throttled == RETRY.attempts == 4, counts
    assert 1.5 + 2.25 + 3.375 - 0.1 < spent < 2.5 + 3.25 + 4.375 + 2, spent


def test_the_retry_after_is_honoured(azure_container, emulators, monkeypatch):
    monkeypatch.setattr(RETRY, "wait", lambda n: 0.0)
    open_store(azure_container).write("hot", b"x")
    proxy = FaultProxy(emulators.endpoints["azure"], kind="azure", throttle=1.0, retry_after="1",
                       match=_gets_of("hot"), faults=2)
    url = proxy.start()
    try:
        store = open_store(azure_container, {azure_container: {"connection_string": connection_string(url)}})
        started = time.monotonic()
        assert store.read("hot") == b"x"
        spent = time.monotonic() - started
    finally:
        proxy.stop()
    assert proxy.counts.throttled == 2 and spent >= 2.0, (proxy.counts, spent)


def test_an_unreachable_endpoint_is_unavailable(monkeypatch):
    monkeypatch.setattr(RETRY, "wait", lambda n: 0.05)
    store = open_store("az://acct/cont", {"az": {"account_url": "http://127.0.0.1:9/acct", "account_key": AZURITE_KEY}})
    with pytest.raises(StoreUnavailableError, match="cannot reach Azure Blob Storage for az://acct/cont") as caught:
        store.check()
    assert caught.value.retried


def test_plain_work_does_not_import_the_azure_sdk(azure_container, emulators):
    """What a gateway does in a plain copy to and from Azure (check, list, head, read, write, staged
    blocks + commit, abort, delete), with every module of the gateway package loaded, imports neither
    azure.* nor requests."""
    loaded = [m for m in modules_after_plain_work(azure_container) if m.split(".")[0] in ("azure", "requests")]
    assert not loaded, loaded
