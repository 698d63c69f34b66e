"""The shell blocks README.md and docs/*.md mark as runnable, run as a newcomer would: so the docs cannot drift.

A block is runnable when the line before its opening fence is ``<!-- runnable -->`` (or
``<!-- runnable: root -->`` for blocks that need root: namespaces, sshd) and the fence is ```` ```sh ````.
The blocks of one page run in order in one fresh ``bash`` (as a reader types them into one shell), with
``set -euo pipefail`` added, in a fresh copy of the checkout (the files git tracks or would track; the
``.venv``, the ``.venv-extras`` beside it and Azurite's ``node_modules`` are links to this checkout's). The shell starts with nothing of
this process's environment: a standard ``PATH`` without the venv, an empty ``HOME``, no emulator
variables. The pages start their own emulators with ``make emulators-up`` in that copy and their data
is small; whatever a page leaves running (emulators, a testbed, an sshd) is stopped afterwards.

Two variables let pages stay readable and still run side by side with other test runs: ``SSH_PORT`` (a
free port) and ``TESTBED_ID`` (a fresh id), which the pages use as ``${SSH_PORT:-2222}`` and
``${TESTBED_ID:-demo}``.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from skyplane_provider.testing.emulators import free_port
from skyplane_provider.testing.leftovers import coordinator_pids
from tests.helpers import gateway_pids

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
MARKER = re.compile(r"^<!-- runnable(?::\s*(?P<needs>[a-z, ]+))? -->\s*$")
PAGE_TIMEOUT = 240  # seconds for all the blocks of one page (the slowest takes ~40 s alone)


@dataclass
class Block:
    page: Path
    line: int  # of the opening fence, 1-based
    text: str
    needs: frozenset[str]


def runnable_blocks(page: Path) -> list[Block]:
    """The page's runnable blocks; a marker not followed by a ```sh fence is an error."""
    lines = page.read_text().splitlines()
    blocks = []
    for i, line in enumerate(lines):
        m = MARKER.match(line)
        if not m:
            continue
        assert i + 1 < len(lines) and lines[i + 1].strip() == "```sh", \
            f"{page.name}:{i + 1}: a runnable marker must stand right before a ```sh fence"
        end = next(j for j in range(i + 2, len(lines)) if lines[j].strip() == "```")
        needs = frozenset(n.strip() for n in (m.group("needs") or "").split(",") if n.strip())
        blocks.append(Block(page, i + 2, "\n".join(lines[i + 2:end]), needs))
    return blocks


def script(blocks: list[Block]) -> str:
    parts = ["set -euo pipefail"]
    for b in blocks:
        parts.append(f"echo '=== {b.page.name}:{b.line}' >&2")
        parts.append(b.text)
    return "\n".join(parts) + "\n"


def fresh_checkout(dest: Path) -> Path:
    """A copy of the files git tracks or would track (no build output, no state), with the venv, the
    google provider beside it and Azurite linked from this checkout: what `make setup` leaves in a fresh
    clone (without the provider, each page's `make emulators-up` would pip-install it again: 5-20 s)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    (dest / ".venv").symlink_to(Path(sys.prefix))
    extras = Path(sys.prefix + "-extras")
    if extras.is_dir():
        (dest / ".venv-extras").symlink_to(extras)
    node_modules = REPO / ".emulators" / "node_modules"
    if node_modules.is_dir():
        (dest / ".emulators").mkdir(exist_ok=True)
        (dest / ".emulators" / "node_modules").symlink_to(node_modules)
    return dest


def newcomer_env(home: Path) -> dict[str, str]:
    return {"HOME": str(home), "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "LANG": "C.UTF-8", "TERM": "dumb", "USER": os.environ.get("USER", "root"),
            "LOGNAME": os.environ.get("LOGNAME", "root"), "TMPDIR": str(home / "tmp"),
            "SSH_PORT": str(free_port()), "TESTBED_ID": "d" + uuid.uuid4().hex[:5]}


def documented_pages() -> list[Path]:
    return [p for p in PAGES if runnable_blocks(p)]


def test_readme_has_runnable_blocks():
    assert runnable_blocks(REPO / "README.md"), "README.md must mark its first steps runnable"


@pytest.mark.slow
@pytest.mark.timeout(PAGE_TIMEOUT + 120)  # ours first: it shows the page's output and the job's logs
@pytest.mark.parametrize("page", documented_pages(), ids=lambda p: p.name)
def test_doc_runs_as_written(page, tmp_path):
    blocks = runnable_blocks(page)
    missing = set().union(*(b.needs for b in blocks)) - ({"root"} if os.geteuid() == 0 else set())
    if missing:
        pytest.skip(f"{page.name} has blocks that need {', '.join(sorted(missing))}")
    checkout = fresh_checkout(tmp_path / "checkout")
    home = tmp_path / "home"
    (home / "tmp").mkdir(parents=True)
    env = newcomer_env(home)
    # Output to a file, and wait for the shell, not for the end of its output: a daemon a page starts in
    # the background (an sshd) keeps the shell's stdout open after a failed block left it running.
    transcript = tmp_path / "output.txt"
    with open(transcript, "w") as out:
        proc = subprocess.Popen(["bash", "--noprofile", "--norc", "-c", script(blocks)], cwd=checkout, env=env,
                                stdout=out, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        proc.wait(timeout=PAGE_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{page.name} did not finish in {PAGE_TIMEOUT} s:\n{transcript.read_text()[-6000:]}\n"
                    f"{_log_tails(home)}")
    finally:
        _clean_up(proc, checkout, env)
    output = transcript.read_text()
    where = [line for line in output.splitlines() if line.startswith("=== ")]
    assert proc.returncode == 0, f"{page.name}: the block at {where[-1][4:] if where else '?'} failed:\n{output[-6000:]}"
    assert len(where) == len(blocks)
    assert not re.search(r"^\S* ?\| ERROR|Traceback \(most recent call last\)", output, re.M), output[-6000:]
    assert gateway_pids(str(home)) == [] and gateway_pids(str(checkout)) == []


def _log_tails(home: Path, files: int = 6, lines: int = 25) -> str:
    """The last lines of the newest logs the page's jobs wrote (coordinators, gateways): where it hung."""
    logs = sorted(home.rglob("*.log"), key=lambda p: p.stat().st_mtime)[-files:]
    return "\n".join(f"--- {p.relative_to(home)}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-lines:])
                     for p in logs)


def _clean_up(proc: subprocess.Popen, checkout: Path, env: dict[str, str]) -> None:
    """Stop what the page may have left: its shell's process group, a job's coordinator and gateways
    (a coordinator runs in a session of its own: a page stopped mid-job left it running), the copy's
    emulators, a testbed."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    sky_home = str(Path(env["HOME"]) / ".skyplane")
    if coordinator_pids(sky_home) or gateway_pids(sky_home):
        subprocess.run([sys.executable, "-m", "skyplane_provider.cli.main", "deprovision", "--all", "--provisioner",
                        "local"], env={**os.environ, "SKYPLANE_HOME": sky_home}, capture_output=True, timeout=120)
    subprocess.run([sys.executable, "-m", "skyplane_provider.testing.emulators_cli", "stop", "--dir",
                    str(checkout / ".emulators")], cwd=checkout, capture_output=True, timeout=60)
    if os.geteuid() == 0:
        subprocess.run([sys.executable, "-m", "skyplane_provider.cli.main", "testbed", "down", env["TESTBED_ID"]],
                       env={**os.environ, "SKYPLANE_HOME": sky_home},
                       capture_output=True, timeout=120)
