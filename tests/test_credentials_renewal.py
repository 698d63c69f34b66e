"""Credentials that expire mid-job (docs/credentials.md): renewed entries reach the gateways through
``POST /credentials``, and a refusal of credentials past their expiry is a retryable
``CredentialsExpiredError``, not a dead job.

Against real servers: Azurite enforces a SAS token's expiry (``se=``), and real gateway processes
(a supervisor with two workers among them) write to it.
"""

from __future__ import annotations

import os
import signal
import time
from datetime import datetime, timedelta, timezone

import pytest

from gateway.control_client import GatewayClient
from gateway.stores import open_store
from planner.errors import GatewayError
from planner.plan import Hop, PartitionProgram, RegionProgram
from skyplane_provider.testing.emulators import AZURITE_KEY

from .gateway_jobs import DST, RELAY, SRC, batch, chunk, obj, sha, to


def container_sas(emulators, az: str, seconds: float) -> dict:
    """A credentials entry for the container ``az`` whose SAS token (read, write, list) lives ``seconds``."""
    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    account, container = az.removeprefix("az://").split("/")
    sas = generate_container_sas(account, container, account_key=AZURITE_KEY,
                                 permission=ContainerSasPermissions(read=True, write=True, list=True),
                                 expiry=datetime.now(timezone.utc) + timedelta(seconds=seconds))
    return {"account_url": f"{emulators.endpoints['azure']}/{account}", "sas_token": sas}


def _outcome(client: GatewayClient, chunk_id: int, cursor: list[int], timeout: float = 60.0) -> dict:
    """The first ``written`` or ``failed`` event of ``chunk_id`` the gateway reports."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.status(cursor[0])
        cursor[0] = status["next"]
        for e in status["events"]:
            if e["chunk_id"] == chunk_id:
                return e
        time.sleep(0.1)
    raise AssertionError(f"no news of chunk {chunk_id} after {timeout}s")


def test_gateways_take_renewed_credentials_and_call_an_expired_sas_expired(jobs, stores, emulators,
                                                                           azure_container):
    """A destination (a supervisor and two workers) writes with a SAS that lives 8 s. Past its expiry a
    write fails as CredentialsExpiredError, retryable; after POST /credentials with a fresh SAS the
    same chunk is written, also by a worker started after the push; a relay and a bad entry are
    refused with 400."""
    az = azure_container
    programs = {SRC: RegionProgram(SRC, {0: PartitionProgram("read", (Hop(RELAY, 1),))}),
                RELAY: RegionProgram(RELAY, {0: PartitionProgram("receive", (Hop(DST, 2),))}),
                DST: RegionProgram(DST, {0: PartitionProgram("receive", (), write=True)})}
    short, expires = container_sas(emulators, az, 8), time.monotonic() + 8
    job = jobs(programs, overrides={DST: {"workers": 2, "credentials": {az: short}}})
    src = open_store(stores["src"])
    objects = {f"o{i}": os.urandom(200_000 + i) for i in range(4)}
    for k, v in objects.items():
        src.write(k, v)
    body = batch(stores["src"], [(DST, az)])

    def send(cid: int, key: str) -> None:
        assert job.clients[SRC].submit({**body, "chunks": [chunk(cid, obj(key, len(objects[key]), to(0, key)))]}) == 1

    cursor = [0]
    send(0, "o0")
    assert _outcome(job.clients[DST], 0, cursor)["type"] == "written"
    time.sleep(max(0.0, expires + 1.5 - time.monotonic()))  # past the SAS's expiry
    send(1, "o1")
    failed = _outcome(job.clients[DST], 1, cursor)
    assert failed["type"] == "failed" and failed["error_type"] == "CredentialsExpiredError", failed
    assert failed["retryable"] is True and "expire" in failed["error"]

    with pytest.raises(GatewayError, match="relay"):
        job.clients[RELAY].push_credentials({az: container_sas(emulators, az, 600)})
    with pytest.raises(GatewayError, match="unknown field"):
        job.clients[DST].push_credentials({az: {"sas_tokn": "x"}})
    assert job.clients[DST].push_credentials({az: container_sas(emulators, az, 600)}) == [az]
    send(2, "o1")  # the failed chunk again, as the coordinator re-sends it
    assert _outcome(job.clients[DST], 2, cursor)["type"] == "written"

    # A worker started after the push (this one was killed) gets the renewed entry too.
    pid = job.handles[DST].pid
    with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as f:
        workers = [int(p) for p in f.read().split()]
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while job.clients[DST].status(10**9)["counters"]["workers"] < 2:
        assert time.monotonic() < deadline, "the killed workers were not replaced"
        time.sleep(0.2)
    for cid, key in ((3, "o2"), (4, "o3")):
        send(cid, key)
        outcome = _outcome(job.clients[DST], cid, cursor)
        if outcome["type"] == "failed" and outcome["retryable"] and outcome["error_type"] != "CredentialsExpiredError":
            # A connection to a killed worker may still carry the first try; the coordinator re-sends a
            # retryable failure, so does this test (once). An expired credential is never excused.
            send(cid + 10, key)
            outcome = _outcome(job.clients[DST], cid + 10, cursor)
        assert outcome["type"] == "written", outcome
    dst = open_store(az)
    assert {o.key: sha(dst.read(o.key)) for o in dst.list()} == {k: sha(v) for k, v in objects.items()}
