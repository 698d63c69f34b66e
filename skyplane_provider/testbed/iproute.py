"""Thin wrappers over iproute2 (``ip``, ``tc``): run a command, or ask the kernel a question as JSON.

Only reads and configuration: nothing here sends a packet (``ip route get`` asks the routing table).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess

from planner.errors import ProvisionError

log = logging.getLogger(__name__)


def run(argv: list[str], *, check: bool = True) -> subprocess.CompletedProcess:
    """Run one command; with ``check``, a failure raises ``ProvisionError`` quoting its stderr."""
    log.debug("run %s", " ".join(argv))
    proc = subprocess.run(argv, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise ProvisionError(f"`{' '.join(argv)}` failed: {proc.stderr.strip() or proc.returncode}",
                             hint="the testbed needs root and iproute2; run `skyplane-provider testbed down` "
                                  "to remove a half-built testbed")
    return proc


def ip(*args: str, netns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    return run(["ip", *(("-n", netns) if netns else ()), *args], check=check)


def tc(*args: str, netns: str | None = None) -> subprocess.CompletedProcess:
    return run(["tc", *(("-n", netns) if netns else ()), *args])


def ip_json(*args: str, netns: str | None = None) -> list[dict]:
    out = ip("-j", *args, netns=netns).stdout.strip()
    return json.loads(out) if out else []


def unusable_reason() -> str | None:
    """Why this host cannot run a testbed, or None when it can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"`{tool}` (iproute2) is not installed"
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"`ip netns` does not work here: {probe.stderr.strip()}"
    return None


def namespaces() -> list[str]:
    """Names of every named network namespace on the host."""
    out = run(["ip", "netns", "list"]).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def links(netns: str | None = None) -> list[str]:
    """Interface names in a namespace (root by default)."""
    return [link["ifname"] for link in ip_json("link", "show", netns=netns)]


def route_get(address: str, netns: str | None = None) -> dict | None:
    """The route the kernel would use for ``address`` (no packet is sent); None when unreachable."""
    proc = ip("-j", "route", "get", address, netns=netns, check=False)
    if proc.returncode != 0:
        return None
    routes = json.loads(proc.stdout or "[]")
    return routes[0] if routes else None


def default_routes(netns: str) -> list[dict]:
    return ip_json("route", "show", "default", netns=netns)


def netns_pids(netns: str) -> list[int]:
    """Every process whose network namespace is ``netns``."""
    proc = run(["ip", "netns", "pids", netns], check=False)
    return [int(p) for p in proc.stdout.split()] if proc.returncode == 0 else []


def root_addresses() -> list[str]:
    """IPv4 addresses of the root namespace, and the destinations of its routes."""
    found = [a["local"] for link in ip_json("-4", "addr", "show") for a in link.get("addr_info", [])]
    found += [r["dst"].split("/")[0] for r in ip_json("-4", "route", "show") if r.get("dst") != "default"]
    return found
