"""Where the orchestrator keeps its state: ``$SKYPLANE_HOME`` (default ``~/.skyplane``)."""

from __future__ import annotations

import os
from pathlib import Path

#: The state directory on a gateway host (ssh and cloud fleets), relative to the login's home there.
#: Here, not in the ssh modules: ``deprovision``'s options name it, and importing those (paramiko) cost
#: every command line start about 0.15 CPU-s.
DEFAULT_REMOTE_DIR = "~/.skyplane"


def skyplane_home() -> Path:
    """The orchestrator's state directory (job records, secrets, catalogue default)."""
    return Path(os.environ.get("SKYPLANE_HOME", Path.home() / ".skyplane"))
