"""Small helpers shared by the end-to-end tests (no fixtures here: those live in tests/fixtures/)."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from gateway.stores import open_store
from skyplane_provider.testing.leftovers import coordinator_pids, gateway_pids


def wait_gone(marker: str, timeout: float = 30) -> list[int]:
    """Wait until no coordinator and no gateway of ``marker`` runs; the PIDs still running after ``timeout``."""
    deadline = time.monotonic() + timeout
    while (left := coordinator_pids(marker) + gateway_pids(marker)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def put_objects(root_uri: str, objects: dict[str, bytes]) -> None:
    store = open_store(root_uri)
    for key, data in objects.items():
        store.write(key, data)


def read_all(root_uri: str, prefix: str = "") -> dict[str, str]:
    """key -> sha256 of every object under ``prefix`` (keys relative to the prefix)."""
    store = open_store(root_uri)
    return {o.key[len(prefix):]: sha256(store.read(o.key)) for o in store.list(prefix)}


def digests(objects: dict[str, bytes]) -> dict[str, str]:
    return {k: sha256(v) for k, v in objects.items()}


def fleet_pids(skyplane_home: Path | str) -> dict[str, int]:
    """gateway id -> PID of every gateway the local provisioner started under ``skyplane_home``, as its
    ``jobs/<job>/pids.json`` records them (how a test finds the gateways of a transfer run elsewhere)."""
    pids = {}
    for record in Path(skyplane_home).glob("jobs/*/pids.json"):
        try:
            doc = json.loads(record.read_text())
        except (OSError, ValueError):
            continue  # being replaced or already removed
        pids.update({g["gateway_id"]: g["pid"] for g in doc.get("gateways", [])})
    return pids


def direct_specs(job_id: str, src: str, *dsts: str) -> list:
    """The gateway specs of a direct plan ``src`` -> ``dsts`` (what a provisioner test starts)."""
    from planner.plan import direct_plan
    from skyplane_provider.transfer.launch import JobSecrets, gateway_specs

    return gateway_specs(direct_plan(src, list(dsts)), job_id, JobSecrets(), compress=True, encrypt=True,
                         credentials={})


def mapped_to(servers, *drop: str) -> dict[str, dict]:
    """An ``address_map`` putting gateway i on test sshd server i, without the host fields in ``drop``
    (without ``key_file``, the job's own key must log in)."""
    return {str(i): {k: v for k, v in s.host_setting().items() if k not in drop} for i, s in enumerate(servers)}


def ancestors(pid: int) -> list[int]:
    """The parent of ``pid``, its parent, ... up to init (from /proc)."""
    out = []
    while pid > 1:
        pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        out.append(pid)
    return out


def launch_cloud_job(prov, job_id: str, specs) -> None:
    """Launch a cloud job's VMs (one per spec), wait until they run and open its rules, as provisioning
    does before the SSH bootstrap: what a test of the reaping then expects gone."""
    from skyplane_provider.provisioners.cloud_fleet import fleet_ports

    job = prov.new_job(job_id)
    for spec in specs:
        job.launch(prov.region_name(spec.region), [spec])
    job.wait_running(60)
    job.authorize("127.0.0.1/32", fleet_ports(47800), ["192.0.2.1"])


def throttled_read(root_uri: str, endpoint: str, kind: str, entry, **faults) -> tuple[BaseException, float, object]:
    """Read one object of ``root_uri`` (written here) through a :class:`FaultProxy` in front of the
    store's server at ``endpoint`` that throttles what ``faults`` say, with the credentials entry
    ``entry(proxy_url)``: the error the read raised, the seconds it took, and the proxy's counts.
    Other calls on the object still go through (checked)."""
    import pytest

    from planner.errors import ThrottledError
    from skyplane_provider.testing.faultproxy import FaultProxy

    open_store(root_uri).write("hot", b"x" * 1000)
    proxy = FaultProxy(endpoint, kind=kind, throttle=1.0, **faults)
    url = proxy.start()
    try:
        store = open_store(root_uri, {root_uri: entry(url)})
        started = time.monotonic()
        with pytest.raises(ThrottledError, match="throttling") as caught:
            store.read_into("hot", 0, memoryview(bytearray(1000)))
        spent = time.monotonic() - started
        assert store.head("hot").size == 1000  # other calls go through
    finally:
        proxy.stop()
    return caught.value, spent, proxy.counts
