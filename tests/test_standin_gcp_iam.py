"""The IAM Credentials stand-in (skyplane_provider/testing/gcp_iam.py) refuses what the service
refuses, so that a test passing through it proves something: google-auth's own impersonated
credentials (the class the google provider's hook builds) against it, over https, with source
credentials whose tokens the Compute stand-in issues. ``iam_endpoint_override`` names the stand-in
here; tests/test_airflow_hook.py reaches it through the universe domain, as the hook does."""

from __future__ import annotations

import pytest

from google.auth import exceptions, impersonated_credentials
from google.auth.transport.requests import Request
from google.oauth2 import service_account

from skyplane_provider.testing.gcp_compute import GCPComputeStandIn
from skyplane_provider.testing.gcp_iam import IAMCredentialsStandIn

TARGET = "lake-writer@p1.iam.gserviceaccount.com"
DELEGATE = "transfer-broker@p1.iam.gserviceaccount.com"
SCOPE = ["https://www.googleapis.com/auth/cloud-platform"]


@pytest.fixture
def stand_ins(tmp_path, monkeypatch):
    compute = GCPComputeStandIn("p1", {})
    compute.start()
    # the key's account may act as DELEGATE, DELEGATE as TARGET; nobody else holds Token Creator
    iam = IAMCredentialsStandIn(compute.caller, {DELEGATE: {compute.account}, TARGET: {DELEGATE}},
                                certificate_dir=tmp_path / "tls")
    iam.start()
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(iam.ca_file))
    yield compute, iam, service_account.Credentials.from_service_account_file(compute.adc_file(tmp_path / "sa.json"))
    iam.stop()
    compute.stop()


def impersonate(iam, source, target: str, delegates: list[str] | None = None):
    creds = impersonated_credentials.Credentials(
        source_credentials=source, target_principal=target, target_scopes=SCOPE, delegates=delegates,
        iam_endpoint_override=f"{iam.server.url}/v1/projects/-/serviceAccounts/{target}:generateAccessToken")
    creds.refresh(Request())
    return creds


def test_a_chain_whose_every_link_holds_token_creator_gets_the_targets_token(stand_ins):
    _, iam, source = stand_ins
    creds = impersonate(iam, source, TARGET, [DELEGATE])
    assert iam.issued[creds.token] == {"account": TARGET, "scope": SCOPE, "delegates": [DELEGATE],
                                       "expireTime": creds.expiry.strftime("%Y-%m-%dT%H:%M:%SZ")}


@pytest.mark.parametrize("target, delegates", [(TARGET, None), (TARGET, [TARGET]), (DELEGATE, [TARGET])],
                         ids=["no-grant-on-target", "delegate-without-grant", "chain-backwards"])
def test_a_missing_token_creator_grant_is_permission_denied(stand_ins, target, delegates):
    _, iam, source = stand_ins
    with pytest.raises(exceptions.RefreshError, match="PERMISSION_DENIED"):
        impersonate(iam, source, target, delegates)
    assert iam.issued == {}


def test_an_unknown_account_is_not_found_and_an_unknown_caller_unauthenticated(stand_ins, tmp_path):
    compute, iam, source = stand_ins
    with pytest.raises(exceptions.RefreshError, match="NOT_FOUND"):
        impersonate(iam, source, "nobody@p1.iam.gserviceaccount.com")
    stranger = GCPComputeStandIn("p1", {})  # its key signs JWTs the Compute stand-in does not know
    stranger.url = compute.url
    key = stranger.adc_file(tmp_path / "stranger.json", universe_domain="sky.test")  # self-signed JWTs
    with pytest.raises(exceptions.RefreshError, match="UNAUTHENTICATED"):
        impersonate(iam, service_account.Credentials.from_service_account_file(key), DELEGATE)
    assert iam.issued == {}
