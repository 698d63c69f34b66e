#!/usr/bin/env bash
# Idempotent setup: system packages, a project virtualenv with every extra, and Azurite from npm.
# Fast when already done: each step checks a stamp or the installed tool first.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${SKYPLANE_VENV:-$ROOT/.venv}
PY=${PYTHON:-python3}

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  need=()
  [ -x /usr/sbin/sshd ] || need+=(openssh-server)
  command -v rclone >/dev/null || need+=(rclone)
  command -v ip >/dev/null || need+=(iproute2)
  command -v tc >/dev/null || need+=(iproute2)
  if [ ${#need[@]} -gt 0 ]; then
    echo "setup: apt-get install ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV"
  "$PY" -m venv "$VENV"
fi
stamp="$VENV/.skyplane-installed"
want=$(cat pyproject.toml | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setup: pip install -e .[all,test]"
  "$VENV/bin/pip" install -q --upgrade pip >/dev/null
  "$VENV/bin/pip" install -q -e ".[all,test]"
  echo "$want" > "$stamp"
fi

AZ="$ROOT/.emulators/node_modules/.bin/azurite-blob"
if [ ! -x "$AZ" ]; then
  echo "setup: npm install azurite@3.35.0"
  mkdir -p "$ROOT/.emulators"
  npm install --silent --no-audit --no-fund --prefix "$ROOT/.emulators" azurite@3.35.0 >/dev/null
fi
echo "setup: ready ($VENV)"
