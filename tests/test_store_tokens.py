"""Access tokens as store credentials (docs/credentials.md): a ``gs`` entry's OAuth 2.0
``access_token`` (what the google provider's hook or any google-auth credentials mint) and an ``az``
entry's Entra ID ``access_token`` (against an Azurite over https that checks tokens: ``entra_azurite``).

fake-gcs-server accepts any bearer token, so the GCS transfers here go through a proxy that lets
only ``Authorization: Bearer <the token>`` through (and answers GCS's 401 otherwise): a copy that
completes shows that every request of the client and of the gateway processes carried the token.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone

import pytest

from gateway.stores import open_store
from gateway.stores.azure_api import Bearer
from planner.errors import CredentialsError, CredentialsExpiredError
from skyplane_provider.testing.faultproxy import FaultProxy
from skyplane_provider.testing.samples import digests, put_objects, sha256s
from skyplane_provider.transfer import Transfer, TransferRequest

TOKEN = "ya29.test-" + os.urandom(8).hex()


@pytest.fixture
def sky_home(monkeypatch, tmp_path):
    home = tmp_path / "skyplane"
    monkeypatch.setenv("SKYPLANE_HOME", str(home))
    return home


@pytest.fixture
def gcs_proxy(emulators):
    """fake-gcs behind a proxy that requires ``Bearer TOKEN``."""
    proxy = FaultProxy(emulators.endpoints["gcs"], kind="gcs", authorization=f"Bearer {TOKEN}")
    url = proxy.start()
    yield proxy, url
    proxy.stop()


def in_an_hour() -> str:
    return (datetime.now(timezone.utc) + timedelta(hours=1)).isoformat()


def test_a_gcs_transfer_sends_the_entry_s_access_token(gcs_proxy, gcs_bucket, tmp_path, sky_home):
    """Local -> GCS -> local through real gateways, every GCS request authorised by the token alone."""
    proxy, url = gcs_proxy
    entry = {"access_token": TOKEN, "expiration": in_an_hour(), "endpoint": url}
    objects = {f"k{i}.bin": os.urandom(50_000 + i) for i in range(5)}
    (tmp_path / "src").mkdir()
    (tmp_path / "back").mkdir()
    for key, data in objects.items():
        (tmp_path / "src" / key).write_bytes(data)
    up = Transfer(TransferRequest(src=f"{tmp_path}/src/", dsts=[f"{gcs_bucket}/in/"],
                                  credentials={gcs_bucket: entry})).run()
    down = Transfer(TransferRequest(src=f"{gcs_bucket}/in/", dsts=[f"{tmp_path}/back/"],
                                    credentials={gcs_bucket: entry})).run()
    assert up.objects == down.objects == len(objects) and up.verified and down.verified
    assert digests(f"{tmp_path}/back/") == sha256s(objects)
    assert proxy.counts.forwarded > 0 and proxy.counts.unauthorized == 0, proxy.counts


def test_the_store_builds_oauth2_credentials_from_the_token(gcs_proxy, gcs_bucket):
    store = open_store(gcs_bucket, {"gs": {"access_token": TOKEN, "endpoint": gcs_proxy[1]}})
    assert store._client._credentials.token == TOKEN  # noqa: SLF001 - what google-auth puts in the header
    store.write("a", b"x")
    assert store.read("a") == b"x"


def test_a_wrong_token_is_refused_before_any_gateway(gcs_proxy, gcs_bucket, tmp_path, sky_home):
    proxy, url = gcs_proxy
    (tmp_path / "f").write_bytes(b"x")
    request = TransferRequest(src=f"{tmp_path}/", dsts=[f"{gcs_bucket}/out/"],
                              credentials={gcs_bucket: {"access_token": "ya29.someone-else", "endpoint": url}})
    with pytest.raises(CredentialsError, match="GCS rejected the credentials"):
        Transfer(request).run()
    assert proxy.counts.unauthorized >= 1 and not (sky_home / "jobs").exists()


@pytest.mark.parametrize("scheme", ["gs", "az"])
def test_an_expired_or_empty_token_is_refused_before_any_gateway(scheme, emulators, gcs_bucket, azure_container,
                                                                  tmp_path, sky_home):
    """Refused when the store is opened (on the client, before any gateway starts), naming the
    expiry and what to give instead; nothing is sent."""
    root = gcs_bucket if scheme == "gs" else azure_container
    base = ({"endpoint": emulators.endpoints["gcs"]} if scheme == "gs"
            else {"account_url": f"{emulators.endpoints['azure']}/devstoreaccount1"})
    (tmp_path / "f").write_bytes(b"x")
    expired = {**base, "access_token": TOKEN, "expiration": "2026-01-02T03:04:05Z"}
    with pytest.raises(CredentialsExpiredError, match="expired at 2026-01-02 03:04:05 UTC") as info:
        Transfer(TransferRequest(src=f"{tmp_path}/", dsts=[f"{root}/out/"], credentials={root: expired})).run()
    assert "fresh one" in info.value.hint
    with pytest.raises(CredentialsError, match="empty access_token"):
        Transfer(TransferRequest(src=f"{tmp_path}/", dsts=[f"{root}/out/"],
                                 credentials={root: {**base, "access_token": " "}})).run()
    assert not (sky_home / "jobs").exists()


def test_an_azure_token_is_a_bearer_token_as_given():
    """What the store's client sends: the token as given, in no repr."""
    store = open_store("az://acct1/cont1", {"az://acct1": {"account_url": "https://acct1.blob.core.windows.net",
                                                           "access_token": TOKEN, "expiration": "2030-01-01T00:00:00Z"}})
    auth = store._client.auth  # noqa: SLF001
    assert isinstance(auth, Bearer) and auth.token == TOKEN and TOKEN not in repr(auth)


def test_an_entra_id_identity_through_wasbhook_writes_to_azurite_with_its_tokens(entra_azurite, tmp_path,
                                                                                 sky_home, monkeypatch):
    """A wasb connection naming only the account (Azurite over https, which checks a bearer token's
    audience, issuer and expiry): WasbHook falls back to DefaultAzureCredential, a managed identity
    served by the ARM stand-in; the gateways get its token for https://storage.azure.com and write
    with it. A token for another audience is refused by Azurite."""
    pytest.importorskip("airflow.providers.microsoft.azure")
    import json

    from skyplane_provider.airflow.hooks import SkyplaneHook
    from skyplane_provider.buckets import make_bucket

    root = make_bucket("az://devstoreaccount1/entra", credentials=entra_azurite.key_credentials)
    monkeypatch.setenv("AIRFLOW_CONN_WASB_ENTRA", json.dumps({"conn_type": "wasb", "login": "devstoreaccount1",
                                                              "host": entra_azurite.account_url}))
    objects = {f"k{i}.bin": os.urandom(40_000 + i) for i in range(4)}
    (tmp_path / "src").mkdir()
    for key, data in objects.items():
        (tmp_path / "src" / key).write_bytes(data)
    hook = SkyplaneHook(dst_conn_id="wasb_entra")
    src, dsts = f"{tmp_path}/src/", [f"{root}/out/"]
    entry = hook.credentials(src, dsts)[root]
    assert entry["access_token"] in entra_azurite.standin._tokens  # noqa: SLF001 - issued by the identity
    stats = Transfer(hook.make_request(src, dsts, dst_regions=["azure:westeurope"]),
                     credential_sources=hook.credential_sources(src, dsts)).run()
    assert stats.objects == len(objects) and stats.verified
    store = open_store(root, entra_azurite.key_credentials)
    assert {o.key: sha256s({"x": store.read(o.key)})["x"] for o in store.list("out/")} == {
        f"out/{k}": v for k, v in sha256s(objects).items()}
    other = dict(entry, access_token=_with_audience(entry["access_token"], "https://management.azure.com"))
    with pytest.raises(CredentialsError, match="Azure rejected the credentials"):
        open_store(root, {root: other}).read("out/k0.bin")


def _with_audience(token: str, audience: str) -> str:
    """The same JWT-shaped token naming another audience."""
    import base64
    import json

    header, claims, signature = token.split(".")
    data = json.loads(base64.urlsafe_b64decode(claims + "=" * (-len(claims) % 4)))
    data["aud"] = audience
    return ".".join([header, base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode(), signature])


class MintingEntraCredential:
    """An azure-core ``TokenCredential`` whose tokens (for Azurite's audience and issuer checks) live
    ``seconds``: a new one at every ask, as an identity near its token's expiry gives."""

    def __init__(self, seconds: int) -> None:
        self.seconds, self.minted = seconds, 0

    def get_token(self, *scopes: str, **kwargs):
        from azure.core.credentials import AccessToken

        from skyplane_provider.testing.azure_arm import entra_token

        self.minted += 1
        return AccessToken(*entra_token(scopes[0].removesuffix("/.default"), self.seconds))


def test_a_job_outlives_its_short_lived_entra_tokens(entra_azurite, tmp_path, sky_home):
    """A transfer capped at 128 KiB/s moves ~0.9 MB (about 7 s) into an Azurite that checks token
    expiry, under Entra ID tokens that live 4 s: the keeper asks the AzureTokenSource every second
    (less than 10 minutes left: a new token) and pushes it through the job's coordinator
    (POST /job/credentials) to the gateways. The copy completes, sha256-identical. (A token is at most
    about a second old when used, so 4 s still leaves margin on a loaded machine; twice as long proved
    nothing more and cost 7 s.)"""
    from skyplane_provider.buckets import make_bucket
    from skyplane_provider.transfer.credential_sources import AzureTokenSource

    root = make_bucket("az://devstoreaccount1/renew", credentials=entra_azurite.key_credentials)
    credential = MintingEntraCredential(4)
    source = AzureTokenSource(root, credential, {"account_url": entra_azurite.account_url})
    objects = {f"o{i:02d}.bin": os.urandom(110_000 + i) for i in range(8)}
    (tmp_path / "src").mkdir()
    for key, data in objects.items():
        (tmp_path / "src" / key).write_bytes(data)
    request = TransferRequest(src=f"{tmp_path}/src/", dsts=[f"{root}/out/"], dst_regions=["azure:eastus"],
                              bwlimit="128KiB/s", credentials={root: source.current()})
    stats = Transfer(request, credential_sources=[source], renew_every=1.0).run()
    store = open_store(root, entra_azurite.key_credentials)
    got = {o.key.removeprefix("out/"): store.read(o.key) for o in store.list("out/")}
    assert sha256s(got) == sha256s(objects) and stats.verified
    assert stats.seconds > 5 and credential.minted >= 3, (stats.seconds, credential.minted)


def test_a_google_auth_source_hands_the_gateways_its_access_token(gcs_bucket, tmp_path, sky_home, emulators):
    """GoogleAuthSource (what the google provider's hook path builds) over service-account credentials
    whose token_uri is the Compute stand-in's OAuth endpoint (JWT-bearer grant, signature checked):
    the entry carries the token issued there, the same one until less than 10 minutes are left, then
    a new one; a transfer to fake-gcs behind a proxy that lets only the current token through completes."""
    from google.oauth2 import service_account

    from skyplane_provider.testing.gcp_compute import GCPComputeStandIn
    from skyplane_provider.transfer.credential_sources import GoogleAuthSource

    standin = GCPComputeStandIn("p1", {"us-central1": ["a"]})
    standin.start()
    proxy = FaultProxy(emulators.endpoints["gcs"], kind="gcs")
    url = proxy.start()
    try:
        credentials = service_account.Credentials.from_service_account_file(
            str(standin.adc_file(tmp_path / "sa.json")), scopes=["https://www.googleapis.com/auth/devstorage.full_control"])
        source = GoogleAuthSource(gcs_bucket, credentials, {"endpoint": url, "project": "p1"})
        first = source.current()
        assert first["access_token"] in standin._tokens and source.current() == first  # noqa: SLF001
        assert datetime.fromisoformat(first["expiration"]) > datetime.now(timezone.utc) + timedelta(minutes=50)
        credentials.expiry = datetime.now(timezone.utc).replace(tzinfo=None) + timedelta(minutes=9)  # time passes
        renewed = source.current()
        assert renewed["access_token"] != first["access_token"] and len(standin._tokens) == 2  # noqa: SLF001
        proxy.authorization = f"Bearer {renewed['access_token']}"
        (tmp_path / "src").mkdir()
        (tmp_path / "src" / "a.bin").write_bytes(os.urandom(20_000))
        stats = Transfer(TransferRequest(src=f"{tmp_path}/src/", dsts=[f"{gcs_bucket}/in/"],
                                         credentials={gcs_bucket: source.current()}),
                         credential_sources=[source]).run()
        assert stats.objects == 1 and stats.verified
        assert proxy.counts.forwarded > 0 and proxy.counts.unauthorized == 0, proxy.counts
    finally:
        proxy.stop()
        standin.stop()
