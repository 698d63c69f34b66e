"""What a testbed persists so that a fresh process can tear down what a crashed one left.

``$SKYPLANE_HOME/testbed/<id>.json`` (default ``~/.skyplane/testbed``) holds the scenario, the slot,
the namespaces and root devices, and the processes started in the namespaces. It is written
before the first namespace exists and after every change; ``down`` deletes it last.
``$SKYPLANE_HOME/testbed/<id>/stores/<region>`` are the region's store directories.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from skyplane_provider.paths import skyplane_home

from .processes import ProcessRecord

#: One lock for the whole host, whatever SKYPLANE_HOME says: slots are a host-wide resource.
HOST_LOCK = Path(tempfile.gettempdir()) / "skyplane-testbed.lock"


def state_root() -> Path:
    return skyplane_home() / "testbed"


@dataclass
class TestbedState:
    testbed_id: str
    slot: int
    scenario: dict
    namespaces: list[str]
    root_devices: list[str]
    created: str
    processes: list[ProcessRecord] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["processes"] = [p.to_dict() for p in self.processes]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TestbedState":
        return cls(testbed_id=d["testbed_id"], slot=int(d["slot"]), scenario=d["scenario"],
                   namespaces=list(d["namespaces"]), root_devices=list(d["root_devices"]), created=d["created"],
                   processes=[ProcessRecord.from_dict(p) for p in d.get("processes", [])])

    def save(self, path: Path) -> None:
        """Atomically: a crash leaves the old file or the new one, never half of one."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(self.to_dict(), indent=1))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> "TestbedState":
        return cls.from_dict(json.loads(path.read_text()))


def state_file(root: Path, testbed_id: str) -> Path:
    return root / f"{testbed_id}.json"


def recorded_ids(root: Path) -> list[str]:
    """Ids of every testbed with a state file under ``root``."""
    return sorted(p.stem for p in root.glob("*.json")) if root.is_dir() else []


@contextmanager
def host_lock() -> Iterator[None]:
    """Serialise testbed construction on this host (slot choice until the slot's addresses exist)."""
    with open(HOST_LOCK, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
