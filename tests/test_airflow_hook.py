"""SkyplaneHook: real Airflow ``Connection`` objects (URI and JSON forms, through AIRFLOW_CONN_* variables)
-> credentials documents and provisioner settings; provider registration."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import quote

import pytest

pytest.importorskip("airflow")

from planner.errors import BadOptionError, BadURIError, CredentialsError  # noqa: E402
from skyplane_provider.airflow.hooks import (SkyplaneHook, fields_aws_source, fields_gcp_source,  # noqa: E402
                                             fields_wasb_source, provider_wasb_source)
from skyplane_provider.airflow.provider import get_provider_info  # noqa: E402
from skyplane_provider.testing.emulators import AZURITE_KEY, connection_string  # noqa: E402
from .google_hook_copy import RESULT  # noqa: E402


def conn(monkeypatch, conn_id: str, value: dict | str) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", value if isinstance(value, str) else json.dumps(value))


def entry(monkeypatch, value: dict | str, uri: str) -> dict:
    conn(monkeypatch, "side", value)
    return SkyplaneHook(src_conn_id="side").credentials(uri, [])[parse_root(uri)]


def parse_root(uri: str) -> str:
    from gateway.stores.uri import parse_uri

    return parse_uri(uri).root_uri


# -- aws --------------------------------------------------------------------------------------------
def test_aws_uri_form(monkeypatch):
    uri = ("aws://AKIAEXAMPLE:" + quote("se/cr+et", safe="") + "@/?region_name=eu-west-1&endpoint_url="
           + quote("http://127.0.0.1:9000", safe=""))
    assert entry(monkeypatch, uri, "s3://bucket-a/x/") == {
        "aws_access_key_id": "AKIAEXAMPLE", "aws_secret_access_key": "se/cr+et", "region_name": "eu-west-1",
        "endpoint_url": "http://127.0.0.1:9000"}


def test_aws_json_form_with_session_token_and_s3_endpoint(monkeypatch):
    value = {"conn_type": "aws", "login": "AKIA2", "password": "s2",
             "extra": {"aws_session_token": "tok", "endpoint_url": "http://127.0.0.1:1",
                       "service_config": {"s3": {"endpoint_url": "http://127.0.0.1:2"}}}}
    assert entry(monkeypatch, value, "s3://bucket-a") == {
        "aws_access_key_id": "AKIA2", "aws_secret_access_key": "s2", "aws_session_token": "tok",
        "endpoint_url": "http://127.0.0.1:2"}


def test_aws_role_arn_is_assumed_through_sts(monkeypatch, emulators, s3_bucket):
    """moto's STS hands out temporary credentials; the S3 store accepts them; Airflow's log masker
    hides them (it knows the connection's own secrets, not these new ones, unless the hook says)."""
    from airflow.sdk._shared.secrets_masker import redact

    from gateway.stores import open_store

    endpoint = emulators.endpoints["s3"]
    value = {"conn_type": "aws", "login": "testing", "password": "testing",
             "extra": {"endpoint_url": endpoint, "region_name": "us-east-1",
                       "role_arn": "arn:aws:iam::123456789012:role/skyplane-writer",
                       "assume_role_kwargs": {"DurationSeconds": 900}}}
    got = entry(monkeypatch, value, s3_bucket + "/p/")
    assert got["aws_access_key_id"] != "testing" and got["aws_session_token"]
    assert got["endpoint_url"] == endpoint
    line = f"keys {got['aws_secret_access_key']} {got['aws_session_token']}"
    assert redact(line) == "keys *** ***"
    store = open_store(s3_bucket, {s3_bucket: got})
    store.write("hello", b"hi")
    assert store.read("hello") == b"hi"


def test_aws_web_identity_through_the_amazon_providers_hook(monkeypatch, tmp_path, emulators, s3_bucket):
    """A connection with no keys that assumes a role with a web identity token from a file (what EKS
    service accounts and other OIDC federations hand a pod): the amazon provider's hook trades the
    token at moto's STS (AssumeRoleWithWebIdentity); the entry carries the role's temporary keys,
    which S3 accepts, and not the token."""
    pytest.importorskip("airflow.providers.amazon")
    from gateway.stores import open_store

    token = tmp_path / "token"
    token.write_text("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQifQ.c2ln")
    endpoint = emulators.endpoints["s3"]
    got = entry(monkeypatch, {"conn_type": "aws", "extra": {
        "endpoint_url": endpoint, "region_name": "us-east-1",
        "role_arn": "arn:aws:iam::123456789012:role/skyplane-federated",
        "assume_role_method": "assume_role_with_web_identity",
        "assume_role_with_web_identity_federation": "file",
        "assume_role_with_web_identity_token_file": str(token)}}, s3_bucket + "/p/")
    assert got["aws_access_key_id"] and got["aws_session_token"] and got["endpoint_url"] == endpoint
    assert token.read_text() not in json.dumps(got)
    store = open_store(s3_bucket, {s3_bucket: got})
    store.write("federated", b"hi")
    assert store.read("federated") == b"hi"


def test_the_request_and_the_keeper_share_the_role_s_source(monkeypatch, emulators, s3_bucket, tmp_path):
    """The operator's transfer renews what the request holds: the hook makes one source per store,
    so the keeper asks the very session whose keys went into the credentials document (the role is
    assumed once, then refreshed by botocore) and has nothing to push until botocore renews them."""
    from skyplane_provider.transfer.credential_sources import CredentialKeeper

    conn(monkeypatch, "side", {"conn_type": "aws", "login": "testing", "password": "testing",
                               "extra": {"endpoint_url": emulators.endpoints["s3"], "region_name": "us-east-1",
                                         "role_arn": "arn:aws:iam::123456789012:role/skyplane-writer"}})
    hook = SkyplaneHook(src_conn_id="side")
    request = hook.make_request(s3_bucket + "/p/", [str(tmp_path)], recursive=True)
    sources = hook.credential_sources(s3_bucket + "/p/", [str(tmp_path)])
    assert [s.key for s in sources] == [s3_bucket]
    assert request.credentials[s3_bucket]["aws_session_token"] == sources[0].current()["aws_session_token"]
    pushed: list[dict] = []
    assert CredentialKeeper(sources, pushed.append, started_with=request.credentials).tick() == {} and not pushed


@pytest.mark.parametrize("extra", [{"profile_name": "dev"},
                                   {"role_arn": "arn:x", "assume_role_method": "assume_role_with_saml"}])
def test_aws_fields_only_the_amazon_providers_hook_honours_are_refused_without_it(monkeypatch, extra):
    conn(monkeypatch, "side", {"conn_type": "aws", "extra": extra})
    with pytest.raises(CredentialsError, match="needs the amazon provider") as info:
        fields_aws_source(SkyplaneHook.get_connection("side"), "s3://bucket-a")
    assert "apache-airflow-providers-amazon" in info.value.hint


def test_aws_profile_through_the_amazon_providers_hook(monkeypatch, tmp_path, emulators, s3_bucket):
    """A connection naming a profile of the shared credentials file: the amazon provider's hook reads
    it; the entry carries that profile's keys, which reach moto."""
    pytest.importorskip("airflow.providers.amazon")
    from gateway.stores import open_store

    (tmp_path / "credentials").write_text("[skyplane-moto]\naws_access_key_id = AKIAPROFILEKEY\n"
                                          "aws_secret_access_key = profile-secret\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    endpoint = emulators.endpoints["s3"]
    got = entry(monkeypatch, {"conn_type": "aws", "extra": {"profile_name": "skyplane-moto", "endpoint_url": endpoint,
                                                            "region_name": "us-east-1"}}, s3_bucket)
    assert got == {"aws_access_key_id": "AKIAPROFILEKEY", "aws_secret_access_key": "profile-secret",
                   "region_name": "us-east-1", "endpoint_url": endpoint}
    store = open_store(s3_bucket, {s3_bucket: got})
    store.write("from-profile", b"hi")
    assert store.read("from-profile") == b"hi"


def test_aws_without_keys_leaves_the_sdk_chain(monkeypatch):
    assert entry(monkeypatch, {"conn_type": "aws", "extra": {"region_name": "us-west-2"}}, "s3://bucket-a") == {
        "region_name": "us-west-2"}


# -- google_cloud_platform -------------------------------------------------------------------------
SA = {"type": "service_account", "project_id": "p1", "client_email": "sa@p1.iam.gserviceaccount.com",
      "private_key": "-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n"}


def gcp_fields(monkeypatch, value: dict | str, uri: str) -> dict:
    """The entry from the connection's fields (what a worker without the google provider gets)."""
    conn(monkeypatch, "side", value)
    return fields_gcp_source(SkyplaneHook.get_connection("side"), parse_root(uri)).current()


def test_gcp_key_path_is_read_for_remote_gateways(monkeypatch, tmp_path):
    key = tmp_path / "sa.json"
    key.write_text(json.dumps(SA))
    value = {"conn_type": "google_cloud_platform", "extra": {"key_path": str(key), "project": "p1"}}
    assert gcp_fields(monkeypatch, value, "gs://lake-bucket/x") == {"service_account_info": SA, "project": "p1"}


def test_gcp_keyfile_dict_text_and_prefixed_extras(monkeypatch):
    value = {"conn_type": "google_cloud_platform",
             "extra": {"extra__google_cloud_platform__keyfile_dict": json.dumps(SA),
                       "extra__google_cloud_platform__project": "p2"}}
    assert gcp_fields(monkeypatch, value, "gs://lake-bucket") == {"service_account_info": SA, "project": "p2"}


def test_gcp_emulator_uri_form(monkeypatch):
    uri = "google-cloud-platform://?endpoint=" + quote("http://127.0.0.1:4443", safe="") + "&anonymous=true"
    assert entry(monkeypatch, uri, "gs://lake-bucket") == {"endpoint": "http://127.0.0.1:4443", "anonymous": True}


def test_gcp_bad_key_file(monkeypatch, tmp_path):
    with pytest.raises(CredentialsError, match="cannot read the key file"):
        gcp_fields(monkeypatch, {"conn_type": "google_cloud_platform",
                                 "extra": {"key_path": str(tmp_path / "no.json")}}, "gs://lake-bucket")


@pytest.mark.parametrize("extra", [{"impersonation_chain": "sa@p1.iam.gserviceaccount.com"},
                                   {"credential_config_file": "/etc/wif.json"}])
def test_gcp_fields_only_the_google_providers_hook_honours_are_refused_without_it(monkeypatch, extra):
    with pytest.raises(CredentialsError, match="needs the google provider's hook") as info:
        gcp_fields(monkeypatch, {"conn_type": "google_cloud_platform", "extra": extra}, "gs://lake-bucket")
    assert "apache-airflow-providers-google" in info.value.hint


#: The google provider, installed by ``make setup`` beside the venv, not in it (scripts/extras-google.txt).
GOOGLE_PROVIDER = Path(f"{sys.prefix}-extras") / "google"
REPO = Path(__file__).resolve().parents[1]


def unavailable(reason: str) -> None:
    """Fail under ``make test`` (which must run every test), skip elsewhere."""
    if os.environ.get("SKYPLANE_VENV"):
        pytest.fail(f"{reason} (make test runs this test; a plain pytest run skips it)")
    pytest.skip(reason)


def need_google_provider() -> None:
    if not (GOOGLE_PROVIDER / "airflow/providers/google").is_dir():
        unavailable(f"the google provider is not installed in {GOOGLE_PROVIDER}: run make setup")


def copy_through_google_hook(monkeypatch, tmp_path: Path, gcs_bucket: str, proxy, extra: dict, *,
                             also: dict[str, dict] | None = None, env: dict | None = None,
                             wrapper: tuple[str, ...] = (), loopback: tuple[str, ...] = ()):
    """``tests/google_hook_copy.py`` in a subprocess (under ``wrapper``, with ``env`` added) with
    the google provider on its path and the connection ``side`` = ``extra`` (and each of ``also``,
    id -> extra): their entries, then a local -> GCS copy of one file with ``side`` through
    ``proxy``, armed with its token before the copy starts. Returns (what the child printed about
    the entries, the copy's counts)."""
    for conn_id, conn_extra in {"side": extra, **(also or {})}.items():
        conn(monkeypatch, conn_id, {"conn_type": "google_cloud_platform", "extra": conn_extra})
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.bin").write_bytes(os.urandom(10_000))
    env = {**os.environ, **(env or {}),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(GOOGLE_PROVIDER), os.environ.get("PYTHONPATH")]))}
    # google-auth's regional access boundary lookup asks iamcredentials.googleapis.com: never from a test
    env.pop("GOOGLE_SDK_EXPERIMENTAL_PYTHON_REGIONAL_ACCESS_BOUNDARY_LOOKUP_ENABLED", None)
    log = tmp_path / "child.log"  # a file, not a pipe: a full pipe would stall the child
    with log.open("w") as err, subprocess.Popen(
            [*wrapper, sys.executable, "-m", "tests.google_hook_copy", f"{tmp_path}/src/", f"{gcs_bucket}/in/",
             "--also", *(also or {}), "--loopback", *loopback],
            cwd=REPO, env=env, text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err) as child:
        try:
            got = next((json.loads(line.removeprefix(RESULT)) for line in child.stdout
                        if line.startswith(RESULT)), None)  # after Airflow's log lines
            if got:  # the token is known now: let only it through
                proxy.authorization = f"Bearer {got['entry']['access_token']}"
                child.stdin.write("go\n")
                child.stdin.flush()
            out, _ = child.communicate(timeout=120)
        finally:
            child.kill()
    assert child.returncode == 0 and got, log.read_text()[-3000:]
    copied = json.loads([line for line in out.splitlines() if line.startswith(RESULT)][-1].removeprefix(RESULT))
    assert Path(got["provider"]).is_relative_to(GOOGLE_PROVIDER)
    return got, copied


def test_gcp_key_through_the_google_providers_hook_gives_the_gateways_a_token(
        monkeypatch, tmp_path, emulators, gcs_bucket):
    """The real GoogleBaseHook (apache-airflow-providers-google, in a subprocess with its directory on
    PYTHONPATH) reads a key file whose token_uri is the Compute stand-in's OAuth endpoint (JWT bearer
    grant, signature checked): the entry carries the access token it issued and its expiry, not the
    key; a transfer to fake-gcs behind a proxy that lets only that token through completes."""
    need_google_provider()
    from skyplane_provider.testing.faultproxy import FaultProxy
    from skyplane_provider.testing.gcp_compute import GCPComputeStandIn

    standin = GCPComputeStandIn("p1", {"us-central1": ["a"]})
    standin.start()
    proxy = FaultProxy(emulators.endpoints["gcs"], kind="gcs")
    url = proxy.start()
    try:
        key = standin.adc_file(tmp_path / "sa.json")
        got, copied = copy_through_google_hook(monkeypatch, tmp_path, gcs_bucket, proxy,
                                               {"key_path": str(key), "endpoint": url})
    finally:
        proxy.stop()
        standin.stop()
    entry = got["entry"]
    assert set(entry) == {"access_token", "expiration", "project", "endpoint"} and entry["project"] == "p1"
    assert entry["access_token"] in standin._tokens  # noqa: SLF001 - issued by the token endpoint
    assert copied == {"objects": 1, "verified": True}
    assert proxy.counts.forwarded > 0 and proxy.counts.unauthorized == 0, proxy.counts


def private_hosts(tmp_path: Path, hostname: str) -> tuple[str, ...]:
    """A command prefix that runs a command in a mount namespace of its own, where ``/etc/hosts`` is
    this machine's plus ``127.0.0.1 hostname`` (bind-mounted there only; the real file is untouched)."""
    hosts = tmp_path / "hosts"
    hosts.write_text(Path("/etc/hosts").read_text() + f"\n127.0.0.1 {hostname}\n")
    wrapper = ("unshare", "--mount", "--propagation", "private", "--",
               "sh", "-ec", 'mount --bind "$0" /etc/hosts; exec "$@"', str(hosts))
    if shutil.which("unshare") is None:
        unavailable("unshare is not installed (apt-get install util-linux): the child needs a private /etc/hosts")
    probe = subprocess.run([*wrapper, "true"], capture_output=True, text=True)
    if probe.returncode:
        unavailable(f"cannot give the child a private /etc/hosts (unshare --mount needs root): {probe.stderr.strip()}")
    return wrapper


TARGET = "lake-writer@p1.iam.gserviceaccount.com"
DELEGATE = "transfer-broker@p1.iam.gserviceaccount.com"


def test_gcp_impersonation_through_the_google_providers_hook_gives_the_gateways_the_target_s_token(
        monkeypatch, tmp_path, emulators, gcs_bucket):
    """Connections with ``impersonation_chain``, one account and a chain of two: the real
    GoogleBaseHook builds google-auth's impersonated credentials, which ask IAM Credentials'
    generateAccessToken (a stand-in written from the public reference, over https, at
    ``iamcredentials.<the key file's universe_domain>``, a name that resolves to 127.0.0.1 in the
    child only) for a token of the chain's last account, authenticated by a JWT the key's account
    signs (its universe is not googleapis.com). Each entry carries such a token, not the key's; a
    transfer to fake-gcs, through a proxy that lets only the chain's token through, completes."""
    need_google_provider()
    from skyplane_provider.testing.faultproxy import FaultProxy
    from skyplane_provider.testing.gcp_compute import GCPComputeStandIn
    from skyplane_provider.testing.gcp_iam import HOSTNAME, IAMCredentialsStandIn

    wrapper = private_hosts(tmp_path, HOSTNAME)
    standin = GCPComputeStandIn("p1", {"us-central1": ["a"]})
    standin.start()
    # Token Creator: the key's account on both accounts, the delegate on the target
    iam = IAMCredentialsStandIn(standin.caller, {DELEGATE: {standin.account}, TARGET: {standin.account, DELEGATE}},
                                certificate_dir=tmp_path / "tls")
    universe = iam.start()
    proxy = FaultProxy(emulators.endpoints["gcs"], kind="gcs")
    url = proxy.start()
    try:
        key = str(standin.adc_file(tmp_path / "sa.json", universe_domain=universe))
        got, copied = copy_through_google_hook(
            monkeypatch, tmp_path, gcs_bucket, proxy,
            {"key_path": key, "endpoint": url, "impersonation_chain": f"{DELEGATE}, {TARGET}"},
            also={"one": {"key_path": key, "endpoint": url, "impersonation_chain": TARGET}},
            env={"REQUESTS_CA_BUNDLE": str(iam.ca_file)}, wrapper=wrapper, loopback=(HOSTNAME,))
    finally:
        proxy.stop()
        iam.stop()
        standin.stop()
    chain, one = got["entry"], got["also"]["one"]
    for entry, delegates in ((chain, [DELEGATE]), (one, [])):
        assert set(entry) == {"access_token", "expiration", "project", "endpoint"} and entry["project"] == "p1"
        issued = iam.issued.get(entry["access_token"])
        assert issued is not None, "the entry's token was not issued by generateAccessToken"
        assert issued == {"account": TARGET, "delegates": delegates,
                          "scope": ["https://www.googleapis.com/auth/cloud-platform"],
                          "expireTime": datetime.fromisoformat(entry["expiration"]).strftime("%Y-%m-%dT%H:%M:%SZ")}
    assert len(iam.issued) == 2 and not standin._tokens  # noqa: SLF001 - the key's account signed its own JWTs
    assert copied == {"objects": 1, "verified": True}
    assert proxy.counts.forwarded > 0 and proxy.counts.unauthorized == 0, proxy.counts


# -- wasb -------------------------------------------------------------------------------------------
# Each form through both paths: the microsoft-azure provider's WasbHook (a test extra) and the
# connection's fields (what a worker without that provider gets).
def wasb(monkeypatch, value: dict | str, uri: str, path: str) -> dict:
    conn(monkeypatch, "side", value)
    connection, key = SkyplaneHook.get_connection("side"), parse_root(uri)
    if path == "fields":
        return fields_wasb_source(connection, key).current()
    pytest.importorskip("airflow.providers.microsoft.azure")
    source = provider_wasb_source(connection, key)
    assert source is not None
    return source.current()


WASB_PATHS = ["fields", "provider"]


@pytest.mark.parametrize("path", WASB_PATHS)
def test_wasb_connection_string_uri_form(monkeypatch, path):
    cs = connection_string("http://127.0.0.1:10000")
    got = wasb(monkeypatch, "wasb://?connection_string=" + quote(cs, safe=""), "az://devstoreaccount1/cont1/x", path)
    assert got == ({"connection_string": cs} if path == "fields" else  # the hook's client holds its parts
                   {"account_url": "http://127.0.0.1:10000/devstoreaccount1", "account_key": AZURITE_KEY})


@pytest.mark.parametrize("path", WASB_PATHS)
def test_wasb_account_key_and_host(monkeypatch, path):
    value = {"conn_type": "wasb", "login": "devstoreaccount1", "password": AZURITE_KEY,
             "host": "http://127.0.0.1:10000/devstoreaccount1"}
    assert wasb(monkeypatch, value, "az://devstoreaccount1/cont1", path) == {
        "account_url": "http://127.0.0.1:10000/devstoreaccount1", "account_key": AZURITE_KEY}
    value = {"conn_type": "wasb", "login": "acct1", "password": "a2V5"}
    assert wasb(monkeypatch, value, "az://acct1/cont1", path)["account_url"] == "https://acct1.blob.core.windows.net"


@pytest.mark.parametrize("path", WASB_PATHS)
def test_wasb_sas_token_and_sas_url(monkeypatch, path):
    value = {"conn_type": "wasb", "login": "acct1", "extra": {"sas_token": "sv=2024&sig=abc"}}
    assert wasb(monkeypatch, value, "az://acct1/cont1", path) == {
        "account_url": "https://acct1.blob.core.windows.net", "sas_token": "sv=2024&sig=abc"}
    value = {"conn_type": "wasb", "extra": {"sas_token": "https://acct1.blob.core.windows.net?sv=1&sig=x"}}
    assert wasb(monkeypatch, value, "az://acct1/cont1", path) == {
        "account_url": "https://acct1.blob.core.windows.net", "sas_token": "sv=1&sig=x"}


def test_wasb_entra_id_needs_the_provider_s_hook(monkeypatch):
    with pytest.raises(CredentialsError, match="need the microsoft-azure provider's hook") as info:
        wasb(monkeypatch, {"conn_type": "wasb", "login": "client", "password": "secret", "extra": {"tenant_id": "t"}},
             "az://acct1/cont1", "fields")
    assert "apache-airflow-providers-microsoft-azure" in info.value.hint


def test_wasb_entra_id_through_the_provider_s_hook(monkeypatch, entra_azurite):
    """A wasb connection naming only the account: WasbHook falls back to DefaultAzureCredential, here a
    managed identity whose endpoint is the ARM stand-in (https; App Service protocol). The gateways
    get that identity's access token for Blob Storage and its expiry, never the identity; the source
    hands the same token until less than 10 minutes are left."""
    pytest.importorskip("airflow.providers.microsoft.azure")
    conn(monkeypatch, "side", {"conn_type": "wasb", "login": "acct1"})
    source = SkyplaneHook(src_conn_id="side").credential_sources("az://acct1/cont1", [])[0]
    got = source.current()
    assert set(got) == {"account_url", "access_token", "expiration"}
    assert got["account_url"] == "https://acct1.blob.core.windows.net"
    assert got["access_token"] in entra_azurite.standin._tokens  # noqa: SLF001 - issued by the identity endpoint
    assert datetime.fromisoformat(got["expiration"]) > datetime.now(timezone.utc) + timedelta(minutes=50)
    assert source.current() == got and len(entra_azurite.standin._tokens) == 1  # noqa: SLF001


def test_wasb_without_any_credential_fails_before_any_gateway(monkeypatch):
    """Without the provider: no key, SAS or connection string is an error naming what to set."""
    with pytest.raises(CredentialsError, match="no usable Azure credentials"):
        wasb(monkeypatch, {"conn_type": "wasb", "login": "acct1"}, "az://acct1/cont1", "fields")


# -- sides, keys and errors --------------------------------------------------------------------------
def test_each_side_keyed_by_its_store_root(monkeypatch):
    conn(monkeypatch, "aws_a", {"conn_type": "aws", "login": "A", "password": "a"})
    conn(monkeypatch, "aws_b", {"conn_type": "aws", "login": "B", "password": "b"})
    conn(monkeypatch, "gcp", {"conn_type": "google_cloud_platform", "extra": {"project": "p"}})
    hook = SkyplaneHook(src_conn_id="aws_a", dst_conn_id=["aws_b", "gcp", None])
    doc = hook.credentials("s3://account-a/x/", ["s3://account-b/y/", "gs://lake-bucket/z/", "s3://env-bucket/"])
    assert doc == {"s3://account-a": {"aws_access_key_id": "A", "aws_secret_access_key": "a"},
                   "s3://account-b": {"aws_access_key_id": "B", "aws_secret_access_key": "b"},
                   "gs://lake-bucket": {"project": "p"}}


def test_one_dst_conn_id_serves_every_destination(monkeypatch):
    conn(monkeypatch, "aws_b", {"conn_type": "aws", "login": "B", "password": "b"})
    doc = SkyplaneHook(dst_conn_id="aws_b").credentials("gs://src-bucket/", ["s3://b-one/", "s3://b-two/"])
    assert set(doc) == {"s3://b-one", "s3://b-two"}


def test_side_errors(monkeypatch):
    conn(monkeypatch, "aws_a", {"conn_type": "aws", "login": "A", "password": "a"})
    conn(monkeypatch, "aws_b", {"conn_type": "aws", "login": "B", "password": "b"})
    conn(monkeypatch, "broken", "aws://?__extra__=" + quote("{not json", safe=""))
    with pytest.raises(BadOptionError, match="2 connections for 1 destinations"):
        SkyplaneHook(dst_conn_id=["aws_a", "aws_b"]).credentials("s3://src-bucket/", ["s3://b-one/"])
    with pytest.raises(BadOptionError, match="two different connections"):
        SkyplaneHook(src_conn_id="aws_a", dst_conn_id="aws_b").credentials("s3://same-bucket/a/",
                                                                           ["s3://same-bucket/b/"])
    with pytest.raises(CredentialsError, match="needs a 'google_cloud_platform' connection"):
        SkyplaneHook(src_conn_id="aws_a").credentials("gs://lake-bucket/", [])
    with pytest.raises(CredentialsError, match="not valid JSON"):
        SkyplaneHook(src_conn_id="broken").credentials("s3://src-bucket/", [])
    with pytest.raises(CredentialsError, match="'nowhere' is not defined"):
        SkyplaneHook(src_conn_id="nowhere").credentials("s3://src-bucket/", [])
    with pytest.raises(BadOptionError, match="local path"):
        SkyplaneHook(src_conn_id="aws_a").credentials("/tmp/data/", [])
    with pytest.raises(BadURIError):
        SkyplaneHook(src_conn_id="aws_a").make_request("s3://Bad_Bucket/x", ["gs://lake-bucket/"])


def test_make_request_carries_credentials_and_options(monkeypatch):
    conn(monkeypatch, "aws_a", {"conn_type": "aws", "login": "A", "password": "a"})
    req = SkyplaneHook(src_conn_id="aws_a").make_request("s3://src-bucket/x/", "gs://lake-bucket/y/",
                                                         chunk_size="8MiB", sync=True)
    assert req.dsts == ["gs://lake-bucket/y/"] and req.sync and req.chunk_size == 8 * 1024**2
    assert req.credentials == {"s3://src-bucket": {"aws_access_key_id": "A", "aws_secret_access_key": "a"}}
    assert req.provisioner == "local" and req.redacted()["credentials"] == {"s3://src-bucket": "<redacted>"}
    with pytest.raises(BadOptionError, match="unknown transfer option"):
        SkyplaneHook().make_request("s3://src-bucket/", ["gs://lake-bucket/"], colour="blue")


# -- the skyplane connection ------------------------------------------------------------------------
def test_skyplane_connection_provisioner(monkeypatch):
    settings = {"hosts": {"aws:us-east-1": ["ubuntu@203.0.113.10"]}, "known_hosts": "~/.ssh/known_hosts"}
    conn(monkeypatch, "sky", {"conn_type": "skyplane",
                              "extra": {"provisioner": "ssh", "provisioner_settings": settings}})
    assert SkyplaneHook(skyplane_conn_id="sky").get_conn() == {"provisioner": "ssh", "provisioner_settings": settings}
    assert SkyplaneHook(skyplane_conn_id="sky").provisioner("aws") == ("aws", settings)
    assert SkyplaneHook().provisioner() == ("local", {})
    conn(monkeypatch, "sky_bad", {"conn_type": "skyplane", "extra": {"provisoner": "ssh"}})
    with pytest.raises(BadOptionError, match="unknown fields"):
        SkyplaneHook(skyplane_conn_id="sky_bad").provisioner()
    conn(monkeypatch, "not_sky", {"conn_type": "aws"})
    with pytest.raises(CredentialsError, match="not 'skyplane'"):
        SkyplaneHook(skyplane_conn_id="not_sky").provisioner()


def test_skyplane_connection_form_fields(monkeypatch):
    """What the connection form stores: provisioner_settings as an object or JSON text, and
    secret_settings (a password field: JSON text) merged over them, masked in task logs."""
    from airflow.sdk._shared.secrets_masker import redact

    secret = {"aws_secret_access_key": "s3cr3t-value", "aws_access_key_id": "AKIAFORM"}
    conn(monkeypatch, "sky_form", {"conn_type": "skyplane", "extra": {
        "provisioner": "aws", "provisioner_settings": json.dumps({"orchestrator_cidr": "203.0.113.7/32"}),
        "secret_settings": json.dumps(secret)}})
    name, settings = SkyplaneHook(skyplane_conn_id="sky_form").provisioner()
    assert (name, settings) == ("aws", {"orchestrator_cidr": "203.0.113.7/32", **secret})
    assert redact("key s3cr3t-value") == "key ***"
    conn(monkeypatch, "sky_prefixed", {"conn_type": "skyplane", "extra": {
        "extra__skyplane__provisioner": "ssh", "extra__skyplane__provisioner_settings": {"hosts": ["h1"]}}})
    assert SkyplaneHook(skyplane_conn_id="sky_prefixed").provisioner() == ("ssh", {"hosts": ["h1"]})
    conn(monkeypatch, "sky_badjson", {"conn_type": "skyplane", "extra": {"secret_settings": "{oops"}})
    with pytest.raises(CredentialsError, match="secret_settings is not valid JSON"):
        SkyplaneHook(skyplane_conn_id="sky_badjson").provisioner()


# -- ObjectStoragePath --------------------------------------------------------------------------------
def test_object_storage_paths_bring_their_connections(monkeypatch):
    from airflow.sdk import ObjectStoragePath

    conn(monkeypatch, "aws_raw", {"conn_type": "aws", "login": "A", "password": "a"})
    conn(monkeypatch, "gcp_lake", {"conn_type": "google_cloud_platform", "extra": {"project": "p"}})
    conn(monkeypatch, "wasb_lake", {"conn_type": "wasb",
                                    "extra": {"connection_string": connection_string("http://127.0.0.1:10000")}})
    conn(monkeypatch, "wasb_host", {"conn_type": "wasb", "host": "https://acct9.blob.core.windows.net",
                                    "password": "k"})
    hook = SkyplaneHook()
    src = ObjectStoragePath("s3://aws_raw@raw-bucket/events/")
    dsts = [ObjectStoragePath("gs://lake-bucket/events/", conn_id="gcp_lake"),
            ObjectStoragePath("abfs://wasb_lake@lake/events/"), ObjectStoragePath("az://wasb_host@cont2/x"),
            "s3://plain-bucket/x/", ObjectStoragePath("file:///tmp/out/")]
    assert hook.sides(src, dsts) == [
        ("s3://raw-bucket/events", "aws_raw"), ("gs://lake-bucket/events/", "gcp_lake"),
        ("az://devstoreaccount1/lake/events/", "wasb_lake"), ("az://acct9/cont2/x", "wasb_host"),
        ("s3://plain-bucket/x/", None), ("/tmp/out", None)]
    doc = hook.credentials(src, dsts[:1])
    assert set(doc) == {"s3://raw-bucket", "gs://lake-bucket"}
    req = SkyplaneHook(dst_conn_id="gcp_lake").make_request(src, dsts[0])
    assert (req.src, req.dsts) == ("s3://raw-bucket/events", ["gs://lake-bucket/events/"])


def test_object_storage_path_errors(monkeypatch):
    from airflow.sdk import ObjectStoragePath

    conn(monkeypatch, "aws_raw", {"conn_type": "aws", "login": "A", "password": "a"})
    conn(monkeypatch, "wasb_nothing", {"conn_type": "wasb", "password": "k"})
    with pytest.raises(BadOptionError, match="carries connection 'aws_raw' but src_conn_id is 'aws_other'"):
        SkyplaneHook(src_conn_id="aws_other").sides(ObjectStoragePath("s3://aws_raw@raw-bucket/x/"), [])
    with pytest.raises(BadURIError, match="protocol 'http'"):
        SkyplaneHook().sides(ObjectStoragePath("http://example.com/x"), [])
    with pytest.raises(BadURIError, match="which storage account"):
        SkyplaneHook().sides("s3://raw-bucket/", [ObjectStoragePath("az://wasb_nothing@cont/x")])


# -- registration -----------------------------------------------------------------------------------
def test_provider_info_matches_airflows_schemas():
    """What get_provider_info returns fits airflow-core's provider_info schema; provider.yaml fits the
    provider.yaml schema of Airflow's own providers (minus the release fields it has no use for)."""
    import airflow
    import jsonschema
    import yaml

    from skyplane_provider.airflow.provider import PROVIDER_YAML

    root = Path(airflow.__file__).parent
    jsonschema.validate(get_provider_info(), json.loads((root / "provider_info.schema.json").read_text()))
    schema = json.loads((root / "provider.yaml.schema.json").read_text())
    schema["required"] = [r for r in schema["required"] if r not in ("state", "source-date-epoch", "versions")]
    jsonschema.validate(yaml.safe_load(PROVIDER_YAML.read_text()), schema)


def test_connection_form_is_declared_without_importing_the_hook(recwarn):
    """Airflow's providers manager builds the skyplane form from provider.yaml: the UI needs no
    hook method (get_connection_form_widgets / get_ui_field_behaviour are deprecated in 3.2)."""
    from airflow.providers_manager import ProvidersManager

    from skyplane_provider.airflow.hooks import SKYPLANE_FIELDS

    manager = ProvidersManager()
    widgets = {k.removeprefix("extra__skyplane__"): w for k, w in manager.connection_form_widgets.items()
               if k.startswith("extra__skyplane__")}
    assert tuple(widgets) == SKYPLANE_FIELDS
    assert widgets["provisioner"].field["schema"]["enum"] == ["local", "ssh", "aws", "gcp", "azure"]
    assert widgets["secret_settings"].is_sensitive and not widgets["provisioner_settings"].is_sensitive
    assert set(manager.field_behaviours["skyplane"]["hidden_fields"]) == {"host", "schema", "login", "password",
                                                                          "port", "extra"}
    assert not {"get_ui_field_behaviour", "get_connection_form_widgets"} & set(vars(SkyplaneHook))
    assert not [w for w in recwarn if "skyplane" in str(w.message).lower()]


def test_provider_registered_with_airflow():
    """``airflow providers list`` (a real CLI run) shows us; the providers manager maps our connection type."""
    from airflow.sdk.providers_manager_runtime import ProvidersManagerTaskRuntime

    hook = ProvidersManagerTaskRuntime().hooks["skyplane"]
    assert hook.hook_class_name == "skyplane_provider.airflow.hooks.SkyplaneHook"
    out = subprocess.run([str(Path(sys.executable).parent / "airflow"), "providers", "list", "-o", "json"],
                         env=os.environ, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    listed = {p["package_name"]: p for p in json.loads(out.stdout[out.stdout.index("["):])}
    assert "skyplane-provider" in listed
