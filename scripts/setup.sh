#!/usr/bin/env bash
# Idempotent setup: system packages, a project virtualenv with every extra, the google provider beside
# it, and Azurite from npm.
# Fast when already done: each step checks a stamp or the installed tool first.
# Quiet: each tool's output goes to a log that is printed only when the step fails.
#
# System packages that are missing (sshd, rclone, ip/tc, node, npm, the venv module of $PYTHON) are
# installed with apt-get when run as root; otherwise setup stops before changing anything and prints
# the exact command to run. `scripts/setup.sh --dry-run` says what it would do and does nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${SKYPLANE_VENV:-$ROOT/.venv}
PY=${PYTHON:-python3}
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1

LOG=$(mktemp "${TMPDIR:-/tmp}/skyplane-setup.XXXXXX")
trap 'rm -f "$LOG"' EXIT

# quietly STEP-NAME CMD...: run CMD with its output in $LOG; on failure show the log and stop.
# In a dry run, say what would run instead.
quietly() {
  local name=$1
  shift
  if [ $DRY = 1 ]; then
    echo "setup: would run: $*"
    return
  fi
  if ! "$@" >"$LOG" 2>&1; then
    echo "setup: $name failed; its output:" >&2
    cat "$LOG" >&2
    exit 1
  fi
}

# -- the interpreter ------------------------------------------------------------------------------
if ! pyver=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2]); sys.exit(sys.version_info < (3, 11))' 2>/dev/null); then
  echo "setup: skyplane-provider needs Python 3.11 or newer; '$PY' is ${pyver:-not found}" >&2
  echo "setup: install one (Debian/Ubuntu: apt-get install -y python3.11 python3.11-venv) and run: PYTHON=python3.11 make setup" >&2
  exit 1
fi

# -- system packages (Debian/Ubuntu names) --------------------------------------------------------
need=()
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v rclone >/dev/null || need+=(rclone)
{ command -v ip >/dev/null && command -v tc >/dev/null; } || need+=(iproute2)
command -v node >/dev/null || need+=(nodejs)
command -v npm >/dev/null || need+=(npm)
# Debian and Ubuntu ship venv's pip bootstrap (ensurepip) in a package of its own.
if [ ! -x "$VENV/bin/python" ] && ! "$PY" -c 'import ensurepip' >/dev/null 2>&1; then
  need+=("python$pyver-venv")
fi
if [ ${#need[@]} -gt 0 ]; then
  install="apt-get install -y ${need[*]}"
  if ! command -v apt-get >/dev/null; then
    echo "setup: missing system packages (as Debian names them): ${need[*]}" >&2
    echo "setup: install them with this system's package manager, then run make setup again" >&2
    exit 1
  fi
  if [ "$(id -u)" != 0 ]; then
    echo "setup: missing system packages: ${need[*]}; run as root:" >&2
    echo "  sudo apt-get update && sudo $install" >&2
    exit 1
  fi
  echo "setup: $install"
  quietly "apt-get update" apt-get update -qq
  quietly "apt-get install" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi

# -- the virtualenv -------------------------------------------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV"
  quietly "venv" "$PY" -m venv "$VENV"
  created=1
fi
# Packages go in with uv (from PyPI, put into the venv by its pip): it resolves the same 308 versions
# as pip but downloads in parallel, keeps a cache of its own (pip's stays empty on our machines) and
# compiles the bytecode on every core. On a clean checkout at load 11-13 (2 cores): this whole setup
# 223 s; pip's install alone took 30 min. At load ~1 the whole setup with pip took 182 s.
UV="$VENV/bin/uv"
need_uv() {
  [ -x "$UV" ] || [ -n "${uv_asked:-}" ] || quietly "uv" "$VENV/bin/pip" install "uv>=0.13"
  uv_asked=1  # a dry run says it once
}
# It runs only when pyproject.toml asks for something the venv lacks (a fresh venv lacks everything).
if [ -n "${created:-}" ] || [ ! -x "$VENV/bin/python" ]; then
  lacking="(a new virtualenv)"
else
  lacking=$("$VENV/bin/python" scripts/missing_requirements.py all test 2>/dev/null || echo "(cannot tell yet)")
fi
if [ -n "$lacking" ]; then
  echo "setup: uv pip install -e .[all,test] for: $(echo "$lacking" | head -5 | tr '\n' ' ')"
  need_uv
  # --compile-bytecode: as pip does; the suite's hundreds of processes would otherwise compile it each time
  quietly "uv pip install" "$UV" pip install --python "$VENV/bin/python" --compile-bytecode -e ".[all,test]"
fi

# -- the google provider, beside the venv ----------------------------------------------------------
# Not in the venv: with its dependencies it brings 107 packages and downgrades two of ours
# (docs/credentials.md). Installed without them into a directory that only the test of its hook puts on
# PYTHONPATH, in a subprocess (tests/test_airflow_hook.py). Redone when scripts/extras-google.txt changes.
EXTRAS="$VENV-extras/google"
if ! cmp -s scripts/extras-google.txt "$EXTRAS/.requirements" 2>/dev/null; then
  echo "setup: uv pip install --no-deps --target $EXTRAS -r scripts/extras-google.txt"
  [ $DRY = 1 ] || rm -rf "$EXTRAS"
  need_uv
  quietly "google provider" "$UV" pip install --python "$VENV/bin/python" --compile-bytecode --no-deps \
    --target "$EXTRAS" -r scripts/extras-google.txt
  [ $DRY = 1 ] || cp scripts/extras-google.txt "$EXTRAS/.requirements"
fi

# -- emulators ------------------------------------------------------------------------------------
AZ="$ROOT/.emulators/node_modules/.bin/azurite-blob"
if [ ! -x "$AZ" ]; then
  echo "setup: npm install azurite@3.35.0"
  [ $DRY = 1 ] || mkdir -p "$ROOT/.emulators"
  quietly "npm install" npm install --no-audit --no-fund --prefix "$ROOT/.emulators" azurite@3.35.0
fi
# Each emulator resolves to an executable (fake-gcs-server: the binary for this machine, from its wheel).
quietly "emulator check" "$VENV/bin/python" -m skyplane_provider.testing.emulators_cli which
[ $DRY = 1 ] && echo "setup: dry run, nothing changed" || echo "setup: ready ($VENV)"
