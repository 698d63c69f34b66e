"""No secret in a repr, a str or an error message: requests, gateway specs and handles, job secrets,
fleet blocks, ssh host settings; and the CLI's one-line errors, from a real process."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from planner.errors import BadOptionError
from skyplane_provider.provisioners.base import GatewayHandle, GatewaySpec
from skyplane_provider.provisioners.ssh_connection import SSHHost
from skyplane_provider.redaction import REDACTED, is_secret_name, redact, secret_values
from skyplane_provider.transfer import TransferRequest
from skyplane_provider.transfer.launch import JobSecrets

#: Every secret below contains this, so one search finds any of them.
MARK = "S3CRET"

CREDENTIALS = {
    "s3://raw-bucket": {"aws_access_key_id": "AKIAEXAMPLE", "aws_secret_access_key": f"{MARK}-aws",
                        "aws_session_token": f"{MARK}-session"},
    "gs": {"service_account_info": {"client_email": "sa@p.iam", "private_key": f"-----{MARK}-pem-----"}},
    "az://acct": {"connection_string": f"AccountName=acct;AccountKey={MARK}-azure"},
}
SETTINGS = {
    "instance_type": "m5.large", "aws_secret_access_key": f"{MARK}-provisioner", "user_data": f"#!/bin/sh {MARK}",
    "hosts": {"aws:us-east-1": [{"host": "203.0.113.10", "password": f"{MARK}-ssh", "key_file": "~/.ssh/gw",
                                 "private_key": f"{MARK}-key-material"}]},
    "accept_unknown_host_keys": True, "known_hosts": "~/.ssh/known_hosts",
}


def test_request_repr_and_str_show_settings_but_no_secret():
    request = TransferRequest(src="s3://raw-bucket/x/", dsts=["gs://lake/y/", "az://acct/c/z/"],
                              credentials=CREDENTIALS, provisioner="aws", provisioner_settings=SETTINGS)
    for text in (repr(request), str(request), json.dumps(request.redacted()), f"{request}", f"{[request]}"):
        assert MARK not in text, text
        assert "'s3://raw-bucket': '<redacted>'" in text or '"s3://raw-bucket": "<redacted>"' in text
        assert "m5.large" in text and "203.0.113.10" in text and "~/.ssh/gw" in text
    assert MARK in json.dumps(request.to_dict())  # the job document itself keeps them (0600 file)
    assert TransferRequest.from_dict(request.to_dict()) == request


def test_request_with_credentials_of_the_wrong_shape_hides_them_whole():
    request = TransferRequest(src="/tmp/a", dsts=["/tmp/b"], credentials=f"{MARK}-as-text",  # type: ignore[arg-type]
                              provisioner_settings=f"{MARK}-as-text")  # type: ignore[arg-type]
    assert MARK not in repr(request)
    assert request.redacted()["credentials"] == REDACTED == request.redacted()["provisioner_settings"]


def test_gateway_spec_handle_and_job_secrets_hide_their_secrets():
    job = JobSecrets()
    token = job.token("aws:us-east-1/0")
    config = {"gateway_id": "aws:us-east-1/0", "job_secret": job.job_secret, "control_token": token,
              "encryption_key": job.encryption_key, "credentials": CREDENTIALS, "compress": True}
    spec = GatewaySpec("aws:us-east-1/0", "aws:us-east-1", config)
    handle = GatewayHandle("aws:us-east-1/0", "aws:us-east-1", "http://127.0.0.1:1", token, "127.0.0.1", 2)
    for obj in (spec, handle, job):
        text = repr(obj) + str(obj)
        for secret in (job.job_secret, job.encryption_key, token, MARK):
            assert secret not in text, text
    assert "aws:us-east-1/0" in repr(spec) and "'compress': True" in repr(spec)
    assert "http://127.0.0.1:1" in repr(handle)


def test_ssh_host_errors_do_not_echo_a_password():
    with pytest.raises(BadOptionError) as info:
        SSHHost.from_setting({"host": "203.0.113.10", "password": f"{MARK}-ssh"})
    assert MARK not in str(info.value) and "203.0.113.10" in str(info.value)
    with pytest.raises(BadOptionError, match="password") as info:
        SSHHost.from_setting(f"root:{MARK}@203.0.113.10:22")
    assert MARK not in str(info.value)


def test_secret_names():
    for name in ("aws_secret_access_key", "aws_session_token", "sas_token", "connection_string", "account_key",
                 "encryption_key", "job_secret", "control_token", "password", "ssh_passphrase", "private_key",
                 "key", "pkey", "key_data", "credentials", "service_account_info", "user_data"):
        assert is_secret_name(name), name
    for name in ("aws_access_key_id", "key_file", "accept_unknown_host_keys", "known_hosts", "host", "region_name",
                 "endpoint_url", "instance_type", "account_url", "python"):
        assert not is_secret_name(name), name
    assert redact({"password": None, "token": "x"}) == {"password": None, "token": REDACTED}
    assert sorted(secret_values({"s3://b": {"aws_access_key_id": "id", "aws_secret_access_key": "k"},
                                 "gs": {"service_account_info": {"private_key": "p", "type": "sa"}}})) == ["k", "p", "sa"]


def test_fleet_block_moves_secret_settings_out_of_clear_settings():
    pytest.importorskip("prefect")
    from skyplane_provider.prefect.blocks import SkyplaneFleet

    fleet = SkyplaneFleet(provisioner="aws", settings=SETTINGS, secret_settings={"aws_session_token": f"{MARK}-t"})
    assert MARK not in repr(fleet) and MARK not in str(fleet) and "m5.large" in repr(fleet)
    assert "aws_secret_access_key" not in fleet.settings and "user_data" not in fleet.settings
    merged = fleet.provisioner_settings()
    assert merged["aws_secret_access_key"] == f"{MARK}-provisioner" and merged["aws_session_token"] == f"{MARK}-t"
    assert merged["hosts"] == SETTINGS["hosts"] and merged["instance_type"] == "m5.large"


@pytest.mark.parametrize("hosts", [[{"host": "127.0.0.1", "password": f"{MARK}-ssh"}], [f"root:{MARK}@127.0.0.1:22"]])
def test_cli_error_names_the_bad_setting_without_its_secret(hosts, home, tmp_path):
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps({"hosts": hosts}))
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f").write_bytes(b"x")
    (tmp_path / "dst").mkdir()
    out = subprocess.run([sys.executable, "-m", "skyplane_provider.cli.main", "cp", "-r", str(tmp_path / "src"),
                          str(tmp_path / "dst"), "--provisioner", "ssh", "--provisioner-settings", str(settings)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "ssh host" in out.stderr, out
    assert MARK not in out.stderr + out.stdout
