"""What a transfer may leave in a store besides objects, seen with the SDKs themselves (not through
our adapters, whose job it is to leave nothing): for tests and the chaos soak.

- a local directory: anything in ``.skyplane-tmp/`` (temp files of writes, multipart upload folders);
- S3: unfinished multipart uploads;
- GCS: part objects (and compose temporaries) under ``.skyplane-parts/``;
- Azure: keys that hold staged (uncommitted) blocks and no blob;

and the gateway and coordinator processes still running (:func:`gateway_pids`, :func:`coordinator_pids`).
"""

from __future__ import annotations

import os
from pathlib import Path

from gateway.stores import open_store
from gateway.stores.gcs import PARTS_PREFIX
from gateway.stores.local import TMP_DIR


def leftovers(root_uri: str, prefix: str = "") -> list[str]:
    """Names of what is left under ``prefix`` of the store at ``root_uri`` that is not an object."""
    store = open_store(root_uri)
    if store.scheme == "file":
        tmp = os.path.join(store.root_uri[len("file://"):], TMP_DIR)
        return sorted(os.listdir(tmp)) if os.path.isdir(tmp) else []
    if store.scheme == "s3":
        return sorted(key for key, _ in store.pending_uploads(prefix))
    if store.scheme == "gs":
        return sorted(item["name"] for item in store._list_all(PARTS_PREFIX))  # noqa: SLF001 - every object there
    from azure.storage.blob import ContainerClient

    container = ContainerClient.from_connection_string(os.environ["AZURE_STORAGE_CONNECTION_STRING"], store.container)
    committed = {b.name for b in container.list_blobs(name_starts_with=prefix or None)}
    return sorted(b.name for b in container.list_blobs(name_starts_with=prefix or None, include=["uncommittedblobs"])
                  if b.name not in committed)


def gateway_pids(marker: str = "gateway.daemon", *, workers: bool = True) -> list[int]:
    """PIDs of running gateway daemons (by command line), zombies excluded; without a multi-worker
    gateway's worker processes (gateway/supervisor.py) when ``workers`` is False: one pid per gateway."""
    return _pids(lambda cmd: marker in cmd and ("gateway.daemon" in cmd or "skyplane-gateway" in cmd)
                 and (workers or "/worker-" not in cmd))


def coordinator_pids(marker: str = "") -> list[int]:
    """PIDs of running job coordinators (``python -m skyplane_provider.coordinator JOB_DIR``) whose
    command line holds ``marker`` (a job id, the SKYPLANE_HOME their job directories are under)."""
    return _pids(lambda cmd: marker in cmd and "skyplane_provider.coordinator" in cmd)


def _pids(match) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = Path(f"/proc/{entry}/stat").read_text().split(")")[-1].split()[0]
        except OSError:
            continue
        if state != "Z" and match(cmd):
            pids.append(int(entry))
    return pids
