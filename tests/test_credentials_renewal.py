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
from planner.errors import CredentialsExpiredError, GatewayError
from planner.plan import Hop, PartitionProgram, RegionProgram
from skyplane_provider.testing.emulators import AZURITE_KEY
from skyplane_provider.transfer import Transfer, TransferRequest
from skyplane_provider.provisioners.local import LocalProvisioner
from skyplane_provider.transfer.credential_sources import CredentialSource

from .gateway_jobs import DST, RELAY, SRC, batch, chunk, obj, sha, to
from .reliability_report import record


def container_sas(emulators, az: str, seconds: float) -> dict:
    """A credentials entry for the container ``az`` whose SAS token (read, write, list) lives ``seconds``."""
    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    account, container = az.removeprefix("az://").split("/")
    sas = generate_container_sas(account, container, account_key=AZURITE_KEY,
                                 permission=ContainerSasPermissions(read=True, write=True, list=True),
                                 expiry=datetime.now(timezone.utc) + timedelta(seconds=seconds))
    return {"account_url": f"{emulators.endpoints['azure']}/{account}", "sas_token": sas}


def _wait_refused(az: str, entry: dict, timeout: float = 30.0) -> None:
    """Until Azurite refuses ``entry`` as expired (a listing of the container every 0.1 s)."""
    store = open_store(az, {az: entry})
    deadline = time.monotonic() + timeout
    while True:
        try:
            list(store.list())
        except CredentialsExpiredError:
            return
        assert time.monotonic() < deadline, f"the SAS was still taken after {timeout} s"
        time.sleep(0.1)


def _outcome(client: GatewayClient, chunk_id: int, cursor: list[int], timeout: float = 60.0,
             also: tuple[GatewayClient, list[int]] | None = None) -> dict:
    """The first ``written`` or ``failed`` event of ``chunk_id`` the gateway reports, or ``also`` (another
    gateway's client and its cursor: a relay reports a chunk it could not pass on)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for c, at in [(client, cursor)] + ([also] if also else []):
            status = c.status(at[0])
            at[0] = status["next"]
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
    short = container_sas(emulators, az, 8)
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
    _wait_refused(az, short)  # past the SAS's expiry, as Azurite sees it
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
    relay = (job.clients[RELAY], [0])
    for cid, key in ((3, "o2"), (4, "o3")):
        send(cid, key)
        outcome = _outcome(job.clients[DST], cid, cursor, also=relay)
        if outcome["type"] == "failed" and outcome["retryable"] and outcome["error_type"] != "CredentialsExpiredError":
            # The relay's connection to a killed worker may still carry the first try (the relay then
            # reports it failed); the coordinator re-sends a retryable failure, so does this test (once).
            # An expired credential is never excused.
            send(cid + 10, key)
            outcome = _outcome(job.clients[DST], cid + 10, cursor, also=relay)
        assert outcome["type"] == "written", outcome
    dst = open_store(az)
    assert {o.key: sha(dst.read(o.key)) for o in dst.list()} == {k: sha(v) for k, v in objects.items()}


class MintingSasSource(CredentialSource):
    """The entry of a container whose SAS lives ``seconds``: a new one is minted once less than half
    of the current one's life is left, as a client's SDK renews temporary credentials before they expire."""

    def __init__(self, emulators, az: str, seconds: float) -> None:
        super().__init__(az, {})
        self.emulators, self.az, self.seconds = emulators, az, seconds
        self.minted = 0
        self.entry, self.expires = self._mint()

    def _mint(self) -> tuple[dict, float]:
        self.minted += 1
        return container_sas(self.emulators, self.az, self.seconds), time.monotonic() + self.seconds

    def current(self) -> dict:
        if self.expires - time.monotonic() < self.seconds / 2:
            self.entry, self.expires = self._mint()
        return dict(self.entry)


@pytest.mark.parametrize("via", ["coordinator", "in-process"])
def test_a_job_outlives_its_short_lived_sas(via, tmp_path, emulators, azure_container):
    """End to end: a transfer capped at 64 KiB/s moves ~0.9 MB (about 14 s) into Azurite with a SAS
    that lives 8 s. A keeper asks the source every second and pushes each new SAS: the client's,
    through the job's coordinator process (``via`` coordinator: TransferHandle.push_credentials ->
    POST /job/credentials -> Transfer.push_credentials there), or the transfer's own when it runs in
    this process (``via`` in-process). Transfer.push_credentials hands it to the destination
    gateways and opens the pipeline's own store anew (it verifies the copies at the end, long after
    the first SAS expired). The copy completes, sha256-identical; without a keeper it fails (its
    chunks' writes end in CredentialsExpiredError)."""
    src = tmp_path / "src"
    src.mkdir()
    objects = {f"o{i:02d}.bin": os.urandom(110_000 + i) for i in range(8)}
    for key, data in objects.items():
        (src / key).write_bytes(data)
    source = MintingSasSource(emulators, azure_container, 8)
    request = TransferRequest(src=f"{src}/", dsts=[f"{azure_container}/out/"], recursive=True,
                              dst_regions=["azure:eastus"], bwlimit="64KiB/s",
                              credentials={azure_container: source.current()})
    in_process = {"provisioner": LocalProvisioner()} if via == "in-process" else {}
    started = time.monotonic()
    stats = Transfer(request, credential_sources=[source], renew_every=1.0, **in_process).run()
    seconds = time.monotonic() - started
    dst = open_store(azure_container, {azure_container: source.current()})
    got = {o.key.removeprefix("out/"): sha(dst.read(o.key)) for o in dst.list("out/")}
    record("fault", f"a transfer of ~14 s (64 KiB/s cap) into Azurite under a SAS living 8 s, renewed every "
                    f"second by the client's keeper {'through the coordinator API' if in_process == {} else 'in process'}",
           f"{source.minted} SAS tokens minted and pushed, completed in {seconds:.1f} s, "
           f"{sum(got.get(k) == sha(v) for k, v in objects.items())}/{len(objects)} objects sha256-identical, "
           f"{stats.retries} chunk re-sends")
    assert got == {k: sha(v) for k, v in objects.items()}
    assert seconds > 10 and source.minted >= 3, (seconds, source.minted)
