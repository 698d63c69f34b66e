"""Print the requirements of pyproject.toml (core + the given extras) that this interpreter lacks.

Used by setup.sh so that an up-to-date virtualenv is left alone (no pip run, no network).
Usage: python scripts/missing_requirements.py [EXTRA ...]   (exit 0 either way; one line per need)
"""

from __future__ import annotations

import importlib.metadata as md
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


def missing(extras: list[str]) -> list[str]:
    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    name = canonicalize_name(project["name"])
    optional = project.get("optional-dependencies", {})
    todo = list(project.get("dependencies", []))
    seen_extras: set[str] = set()
    pending = list(extras)
    while pending:
        extra = pending.pop()
        if extra in seen_extras:
            continue
        seen_extras.add(extra)
        for text in optional.get(extra, []):
            req = Requirement(text)
            if canonicalize_name(req.name) == name:  # "all = [skyplane-provider[airflow,...]]"
                pending.extend(req.extras)
            else:
                todo.append(text)
    lacking = []
    try:
        installed = md.distribution(name)
    except md.PackageNotFoundError:
        lacking.append(project["name"])
    else:
        # an editable install keeps the entry points it was installed with: new ones need a reinstall
        wanted = {(group, key, value) for group, table in _entry_points(project).items() for key, value in table.items()}
        have = {(ep.group, ep.name, ep.value) for ep in installed.entry_points}
        if wanted - have:
            lacking.append(f"{project['name']} (entry points changed)")
    for text in todo:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate():
            continue
        try:
            version = md.version(req.name)
        except md.PackageNotFoundError:
            lacking.append(text)
            continue
        if not req.specifier.contains(version, prereleases=True):
            lacking.append(f"{text} (have {version})")
    return lacking


def _entry_points(project: dict) -> dict[str, dict[str, str]]:
    groups = dict(project.get("entry-points", {}))
    if project.get("scripts"):
        groups["console_scripts"] = project["scripts"]
    return groups


if __name__ == "__main__":
    print("\n".join(missing(sys.argv[1:])))
