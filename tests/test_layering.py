"""The engine imports neither orchestrator: gateway/, planner/ and skyplane_provider/ outside its airflow/
and prefect/ packages name no ``airflow`` or ``prefect`` module, so the core installs and runs without
either extra (the orchestrators depend on the core, never the other way round)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ORCHESTRATORS = ("airflow", "prefect", "skyplane_provider.airflow", "skyplane_provider.prefect")


def core_files() -> list[Path]:
    files = [*(REPO / "gateway").rglob("*.py"), *(REPO / "planner").rglob("*.py")]
    for path in (REPO / "skyplane_provider").rglob("*.py"):
        if path.relative_to(REPO / "skyplane_provider").parts[0] not in ("airflow", "prefect"):
            files.append(path)
    return files


def imported(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def test_the_core_imports_no_orchestrator():
    found = {f"{path.relative_to(REPO)}: {name}" for path in core_files() for name in imported(path)
             if any(name == o or name.startswith(o + ".") for o in ORCHESTRATORS)}
    assert not found, sorted(found)
