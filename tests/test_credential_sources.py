"""Credential sources and the keeper (docs/credentials.md): an assumed role's keys from moto's STS,
renewed by botocore's own refreshing credentials; the keeper hands on exactly what changed."""

from __future__ import annotations

import time

import pytest

from gateway.stores import open_store
from skyplane_provider.transfer.credential_sources import (AWS_KEY_FIELDS, CredentialKeeper, CredentialSource,
                                                            assume_role, document)

ROLE = "arn:aws:iam::123456789012:role/skyplane-nightly"


def role_source(emulators, bucket: str, seconds: int):
    endpoint = emulators.endpoints["s3"]
    base = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region_name": "us-east-1",
            "endpoint_url": endpoint}
    return assume_role(bucket, base, ROLE, session_name="test", extra_args={"DurationSeconds": seconds},
                       sts_endpoint=endpoint)


def test_assumed_role_keys_work_and_are_renewed_inside_botocores_window(emulators, s3_bucket):
    hour = role_source(emulators, s3_bucket, 3600)
    first = hour.current()
    assert first["aws_access_key_id"] != "testing" and first["aws_session_token"]
    assert first["endpoint_url"] == emulators.endpoints["s3"] and first["region_name"] == "us-east-1"
    assert hour.current() == first  # fresh for an hour: botocore asks STS again only 15 min before expiry
    store = open_store(s3_bucket, {s3_bucket: first})
    store.write("k", b"v")
    assert store.read("k") == b"v"
    # A 15-minute role is always inside botocore's 15-minute refresh window: each ask renews.
    short = role_source(emulators, s3_bucket, 900)
    a, b = short.current(), short.current()
    assert a["aws_access_key_id"] != b["aws_access_key_id"] and a["aws_session_token"] != b["aws_session_token"]
    assert "testing" not in repr(short) and s3_bucket in repr(short)


def test_keeper_pushes_what_changed_and_retries_a_failed_push(emulators, s3_bucket):
    static = CredentialSource("gs", {"project": "p"})
    short = role_source(emulators, s3_bucket, 900)
    sources = [static, short]
    pushed: list[dict] = []
    failing = [True]

    def push(doc: dict) -> None:
        if failing[0]:
            failing[0] = False
            raise ConnectionError("coordinator unreachable")
        pushed.append(doc)

    keeper = CredentialKeeper(sources, push, started_with=document(sources), interval=0.05)
    assert keeper.tick() == {}  # the push failed: nothing counts as handed on
    changed = keeper.tick()
    assert list(changed) == [s3_bucket] and pushed == [changed]
    assert set(changed[s3_bucket]) >= set(AWS_KEY_FIELDS)
    keeper.start()
    try:
        deadline = time.monotonic() + 10
        while len(pushed) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        keeper.stop()
    assert len(pushed) >= 3 and all(list(doc) == [s3_bucket] for doc in pushed)


def test_a_static_source_never_pushes():
    source = CredentialSource("s3://b", {"aws_access_key_id": "A", "aws_secret_access_key": "s"})
    keeper = CredentialKeeper([source], lambda doc: pytest.fail("pushed"), started_with=document([source]))
    assert keeper.tick() == {} and keeper.tick() == {}
