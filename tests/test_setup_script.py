"""``scripts/setup.sh`` on machines unlike ours: what it decides to install, or the exact command it
gives a user who is not root. The real script runs in ``--dry-run`` under bash with some tools left
out of its PATH (a machine without them), as root or as ``nobody``; and fake-gcs-server's binary is
named for the machine's architecture."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from planner.errors import StoreUnavailableError
from skyplane_provider.testing.emulators import FakeGCS, fake_gcs_binary_name

REPO = Path(__file__).resolve().parents[1]
#: What the script runs itself, besides the tools it checks for.
BASE_TOOLS = ("mktemp", "rm", "cat", "id", "dirname", "head", "tr", "mkdir", "env")
SYSTEM_TOOLS = ("apt-get", "rclone", "ip", "tc", "node", "npm")
#: An interpreter outside /root, so that ``nobody`` can run it too (Debian's python3 here).
PYTHON = shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin")
#: A virtualenv that does not exist yet.
NEW_VENV = Path("/nonexistent/skyplane-venv")


def setup_dry_run(*, without: tuple[str, ...] = (), venv: Path | None = None, as_nobody: bool = False,
                  pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``scripts/setup.sh --dry-run`` with every tool but ``without`` on its PATH. Its PATH and
    temporary directories are outside pytest's (which only root may enter), so ``nobody`` reaches them."""
    assert PYTHON, "no python3 in /usr/local/bin, /usr/bin or /bin"
    with tempfile.TemporaryDirectory(prefix="skyplane-setup-test-") as work:
        os.chmod(work, 0o777)
        bindir = Path(work) / "bin"
        bindir.mkdir()
        for name in BASE_TOOLS + SYSTEM_TOOLS:
            if name not in without:
                target = shutil.which(name)
                assert target, f"{name} is not installed here (make setup installs it)"
                (bindir / name).symlink_to(target)
        env = {"PATH": str(bindir), "PYTHON": PYTHON, "TMPDIR": work, "HOME": work,
               "SKYPLANE_VENV": str(venv or NEW_VENV)}
        if pythonpath is not None:
            env["PYTHONPATH"] = str(pythonpath)
        command = [shutil.which("bash"), str(REPO / "scripts" / "setup.sh"), "--dry-run"]
        if as_nobody:
            command = [shutil.which("setpriv"), "--reuid", "65534", "--regid", "65534", "--clear-groups", *command]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


def test_root_installs_nodejs_and_npm_when_missing():
    out = setup_dry_run(without=("node", "npm"))
    assert out.returncode == 0, out.stderr
    assert "setup: apt-get install -y nodejs npm\n" in out.stdout
    assert "would run: env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm" in out.stdout
    assert f"would run: {PYTHON} -m venv {NEW_VENV}" in out.stdout and "nothing changed" in out.stdout


def test_a_user_gets_the_exact_command_and_nothing_changes():
    out = setup_dry_run(without=("node", "npm", "rclone"), as_nobody=True)
    assert out.returncode == 1
    assert "sudo apt-get update && sudo apt-get install -y rclone nodejs npm\n" in out.stderr
    assert "would run" not in out.stdout  # it stopped before the venv, pip and npm steps


def test_missing_venv_module_is_installed_for_the_interpreter_in_use(tmp_path):
    shadow = tmp_path / "shadow" / "ensurepip"
    shadow.mkdir(parents=True)  # what `import ensurepip` meets on Debian/Ubuntu without pythonX.Y-venv
    (shadow / "__init__.py").write_text("raise ImportError('No module named ensurepip')\n")
    version = subprocess.run([PYTHON, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    out = setup_dry_run(pythonpath=tmp_path / "shadow")
    assert out.returncode == 0, out.stderr
    assert f"setup: apt-get install -y python{version}-venv\n" in out.stdout
    # an existing virtualenv needs no venv module
    out = setup_dry_run(pythonpath=tmp_path / "shadow", venv=REPO / ".venv")
    assert "apt-get" not in out.stdout, out.stdout


def test_without_apt_get_the_missing_packages_are_named():
    out = setup_dry_run(without=("apt-get", "node"))
    assert out.returncode == 1
    assert "missing system packages (as Debian names them): nodejs" in out.stderr
    assert "package manager" in out.stderr


def test_a_machine_with_everything_installs_nothing():
    out = setup_dry_run(venv=REPO / ".venv")
    assert out.returncode == 0, out.stderr
    assert "apt-get" not in out.stdout and "-m venv" not in out.stdout, out.stdout
    assert "emulators_cli which" in out.stdout and "nothing changed" in out.stdout


@pytest.mark.parametrize("system, machine, name", [
    ("Linux", "x86_64", "fake-gcs-server-linux-amd64"),
    ("Linux", "aarch64", "fake-gcs-server-linux-arm64"),
    ("Darwin", "arm64", "fake-gcs-server-darwin-arm64"),
])
def test_fake_gcs_binary_is_named_for_the_architecture(system, machine, name):
    assert fake_gcs_binary_name(system, machine) == name


def test_fake_gcs_binary_of_this_machine_is_found():
    with pytest.raises(StoreUnavailableError, match="riscv64"):
        fake_gcs_binary_name("Linux", "riscv64")
    binary = Path(FakeGCS().binary())
    assert binary.name in (fake_gcs_binary_name(platform.system(), platform.machine()), "fake-gcs-server")
    out = subprocess.run([str(binary), "-help"], capture_output=True, text=True, timeout=30)
    assert "-backend" in out.stdout + out.stderr
