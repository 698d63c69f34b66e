"""From a Plan to a running fleet: per-gateway configs with this job's secrets, then peer wiring."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from gateway.control_client import GatewayClient
from planner.plan import Plan, RegionProgram
from skyplane_provider.provisioners.base import Fleet, GatewaySpec
from skyplane_provider.provisioners.local import local_workers

from .bandwidth import initial_share


@dataclass
class JobSecrets:
    """Fresh per job: the peer-authentication secret, the end-to-end key, one control token per gateway."""

    job_secret: str = field(default_factory=lambda: secrets.token_hex(32), repr=False)
    encryption_key: str = field(default_factory=lambda: secrets.token_hex(32), repr=False)
    tokens: dict[str, str] = field(default_factory=dict, repr=False)

    def token(self, gateway_id: str) -> str:
        return self.tokens.setdefault(gateway_id, secrets.token_urlsafe(32))


#: Roughly what one gateway's chunk buffers may add up to: each reader or writer holds up to three
#: copies of its chunk (raw, compressed, sealed) and each queue slot one. With 8 of each and 32 MiB
#: chunks a destination gateway peaked at 1.1 GiB (benchmarks/memory.py, 10 GiB through a relay).
BUFFER_BUDGET = 512 * 1024**2
MAX_DEPTH = 8
#: The most readers and writers for a job whose every store is a local directory. A file system call
#: is CPU work in the kernel, not a wait on a server: threads beyond a few only take turns at the GIL
#: (hand-offs, context switches), where on a network store they overlap round trips. 50,000 x 1 KiB
#: on disk, 2 cores: gateways 0.077-0.116 CPU-s per 1,000 files at 4 against 0.079-0.159 at 8 in
#: the same rounds (docs/benchmarks.md, "Scale").
LOCAL_DEPTH = 4
#: Copies of a chunk counted per reader or writer and queue slot: lz4 and AES-GCM outputs beside the
#: raw bytes; on hops that never leave the host (sent clear) only the raw bytes and one copy a store's
#: SDK may take of them.
COPIES, CLEAR_COPIES = 4, 2


def pipeline_depth(max_chunk_bytes: int, clear: bool = False, local: bool = False) -> int:
    """Readers, writers and queue slots per gateway for chunks up to this size: 8 for chunks up to
    16 MiB (small objects need the parallelism), fewer for bigger ones, at least 2. ``clear``: every
    hop stays on the host, frames go without lz4 and AES-GCM, so the same buffer budget holds twice
    the chunks (8 at 32 MiB, 4 at 64 MiB): a store written 4 objects at a time instead of 8 is
    latency-bound (8 x 32 MiB to moto: 4.4 s at 4, 2.5 s at 8; routes.py GCS -> S3 text 5.2-6.1 ->
    4.0-4.6 s, docs/benchmarks.md). ``local``: every store of the job is a local directory, at most
    :data:`LOCAL_DEPTH`."""
    copies = CLEAR_COPIES if clear else COPIES
    return max(2, min(LOCAL_DEPTH if local else MAX_DEPTH, BUFFER_BUDGET // (copies * max(1, max_chunk_bytes))))


def _handles_plaintext(program: RegionProgram) -> bool:
    return any(p.source == "read" or p.write for p in program.partitions.values())


#: A job that fits in this many objects and bytes, its whole listing known before its fleet starts,
#: runs every gateway as one process. A host's further worker processes each cost a Python start
#: (~0.2 s and 0.3 CPU-s before the first byte on 2 CPUs: a 1-file `cp -r` took 0.61 s with 2 workers
#: against 0.41 s with 1) and win ~30 us per small object and ~0.15 s per GiB there (docs/benchmarks.md,
#: 2026-12-07): they pay for themselves from a few thousand objects or a GiB or two.
ONE_WORKER_OBJECTS = 1_000
ONE_WORKER_BYTES = 1024**3


def workers_for(objects: int, size: int, listed_in_full: bool, *, store_servers: int = 0, cpus: int = 1,
                gateways: int = 1) -> int | None:
    """Worker processes for every gateway of a job of ``objects`` objects and ``size`` bytes: 1 for a
    small job whose listing is complete (``listed_in_full``); else, when ``store_servers`` servers of
    the job's stores run on the host of its ``gateways`` gateways (emulators or S3-compatible servers
    on loopback, under a fleet on this host), the host's ``cpus`` shared among gateways and servers
    alike (:func:`local_workers`); else None (the host decides: its cores,
    ``gateway.config.default_workers``, or the local provisioner's share of them among its gateways).

    Every object and byte a gateway moves costs such a server about as much CPU again (moto and
    fake-gcs-server: 8-9 CPU-s beside the gateways' 6-10 for 2,000 x 64 KiB), so a second worker on
    2 CPUs buys no speed there and costs 24-44% more gateway CPU (docs/benchmarks.md, routes)."""
    small = listed_in_full and objects <= ONE_WORKER_OBJECTS and size <= ONE_WORKER_BYTES
    if small:
        return 1
    return local_workers(cpus, gateways + store_servers) if store_servers else None


def gateway_specs(plan: Plan, job_id: str, job_secrets: JobSecrets, *, compress: bool, encrypt: bool,
                  credentials: dict, by_region: dict[str, dict] | None = None, queue_chunks: int = 8,
                  max_chunk_bytes: int | None = None, bwlimit: float | None = None,
                  loopback_fleet: bool = False, workers: int | None = None,
                  local_stores: bool = False) -> list[GatewaySpec]:
    """One spec per planned gateway. Relays get neither the encryption key nor store credentials:
    they only ever see ciphertext. ``by_region``: the credentials document of each region's gateways
    (the entries of the stores they open themselves), instead of the whole ``credentials``; the very
    object goes into their configs, so that entries renewed in it reach gateways started later.
    ``max_chunk_bytes``: the job's largest chunk, so a gateway refuses
    (before allocating) any frame longer than this job can send, and so that big chunks get fewer
    readers, writers and queue slots (:func:`pipeline_depth`): memory stays bounded. ``bwlimit``: the
    job's cap per region; each gateway starts with an equal share of its region's (bandwidth.py).
    ``loopback_fleet``: every gateway on this host (the provisioner's ``loopback_fleet``), so frames
    travel clear and the pipeline may be deeper (:func:`pipeline_depth`). ``workers``: each gateway's
    worker processes (:func:`workers_for`); None leaves it to the host. ``local_stores``: every store of
    the job is a local directory (fewer readers and writers: :data:`LOCAL_DEPTH`)."""
    depth = (pipeline_depth(max_chunk_bytes, clear=loopback_fleet, local=local_stores)
             if max_chunk_bytes is not None else None)
    specs = []
    for region, program in plan.programs().items():
        plaintext = _handles_plaintext(program)
        for i in range(plan.gateways[region]):
            gid = f"{region}/{i}"
            config = {
                "gateway_id": gid,
                "job_id": job_id,
                "region": region,
                "program": program.to_dict(),
                "job_secret": job_secrets.job_secret,
                "control_token": job_secrets.token(gid),
                "compress": compress,
                "encrypt": encrypt,
                "queue_chunks": queue_chunks,
                "credentials": (credentials if by_region is None else by_region.get(region, {})) if plaintext else {},
            }
            if max_chunk_bytes is not None:
                config["max_chunk_bytes"] = max(1, max_chunk_bytes)
                config.update(readers=depth, writers=depth, queue_chunks=min(queue_chunks, depth))
            if workers is not None:
                config["workers"] = workers
            share = initial_share(bwlimit, plan.gateways[region])
            if share is not None:
                config["bwlimit"] = share
            if plaintext and encrypt:
                config["encryption_key"] = job_secrets.encryption_key
            specs.append(GatewaySpec(gateway_id=gid, region=region, config=config))
    return specs


def wire_peers(fleet: Fleet, plan: Plan, alive: set[str] | None = None) -> dict[str, GatewayClient]:
    """Tell every gateway the data addresses of its next-hop regions' (living) gateways.

    Returns a control client per gateway. Called again after a gateway dies, with the survivors.
    """
    programs = plan.programs()
    handles = [g for g in fleet.gateways if alive is None or g.gateway_id in alive]
    by_region: dict[str, list[dict]] = {}
    for g in handles:
        by_region.setdefault(g.region, []).append(
            {"gateway_id": g.gateway_id, "host": g.data_host, "data_port": g.data_port})
    clients = {}
    for g in handles:
        client = g.client()
        hops = {h.region for p in programs[g.region].partitions.values() for h in p.send}
        client.set_peers({r: by_region.get(r, []) for r in hops})
        clients[g.gateway_id] = client
    return clients
