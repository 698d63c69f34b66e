#!/usr/bin/env bash
# Idempotent setup: system packages, a project virtualenv with every extra, and Azurite from npm.
# Fast when already done: each step checks a stamp or the installed tool first.
# Quiet: each tool's output goes to a log that is printed only when the step fails.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${SKYPLANE_VENV:-$ROOT/.venv}
PY=${PYTHON:-python3}

LOG=$(mktemp "${TMPDIR:-/tmp}/skyplane-setup.XXXXXX")
trap 'rm -f "$LOG"' EXIT

# quietly STEP-NAME CMD...: run CMD with its output in $LOG; on failure show the log and stop.
quietly() {
  local name=$1
  shift
  if ! "$@" >"$LOG" 2>&1; then
    echo "setup: $name failed; its output:" >&2
    cat "$LOG" >&2
    exit 1
  fi
}

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  need=()
  [ -x /usr/sbin/sshd ] || need+=(openssh-server)
  command -v rclone >/dev/null || need+=(rclone)
  command -v ip >/dev/null || need+=(iproute2)
  command -v tc >/dev/null || need+=(iproute2)
  if [ ${#need[@]} -gt 0 ]; then
    echo "setup: apt-get install ${need[*]}"
    quietly "apt-get update" apt-get update -qq
    quietly "apt-get install" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
  fi
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV"
  quietly "venv" "$PY" -m venv "$VENV"
fi
# pip runs only when pyproject.toml asks for something the venv lacks (a fresh venv lacks everything).
lacking=$("$VENV/bin/python" scripts/missing_requirements.py all test 2>/dev/null || echo "(cannot tell yet)")
if [ -n "$lacking" ]; then
  echo "setup: pip install -e .[all,test] for: $(echo "$lacking" | head -5 | tr '\n' ' ')"
  quietly "pip upgrade" "$VENV/bin/pip" install --upgrade pip
  quietly "pip install" "$VENV/bin/pip" install -e ".[all,test]"
fi

AZ="$ROOT/.emulators/node_modules/.bin/azurite-blob"
if [ ! -x "$AZ" ]; then
  echo "setup: npm install azurite@3.35.0"
  mkdir -p "$ROOT/.emulators"
  quietly "npm install" npm install --no-audit --no-fund --prefix "$ROOT/.emulators" azurite@3.35.0
fi
echo "setup: ready ($VENV)"
