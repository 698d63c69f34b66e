"""Where the orchestrator keeps its state: ``$SKYPLANE_HOME`` (default ``~/.skyplane``)."""

from __future__ import annotations

import os
from pathlib import Path


def skyplane_home() -> Path:
    """The orchestrator's state directory (job records, secrets, catalogue default)."""
    return Path(os.environ.get("SKYPLANE_HOME", Path.home() / ".skyplane"))
