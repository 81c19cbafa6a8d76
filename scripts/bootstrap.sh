#!/usr/bin/env bash
# Creates ./.venv (Python 3.11+) and installs the project with its dev extras into it.
# Re-runs the install only when pyproject.toml changed. Sourced by scripts/demo and scripts/test.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

py="${PYTHON:-}"
if [ -z "$py" ]; then
  for cand in python3.13 python3.12 python3.11 python3; do
    if command -v "$cand" >/dev/null 2>&1 &&
       "$cand" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
      py="$cand"; break
    fi
  done
fi
if [ -z "$py" ]; then
  echo "pi-mqtt-gatekeeper needs Python 3.11 or newer (apt-get install python3 python3-venv)" >&2
  exit 1
fi

if [ ! -x .venv/bin/python ]; then
  if ! "$py" -m venv .venv 2>/dev/null; then
    echo "creating .venv failed; on Debian: apt-get install python3-venv" >&2
    rm -rf .venv
    exit 1
  fi
fi

stamp=.venv/.pi-mqtt-installed
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setting up .venv (one time; installs from PyPI)..." >&2
  # (grep drops pip's notes about local index mirrors some machines configure)
  .venv/bin/python -m pip install --quiet --upgrade pip 2>&1 | grep -v "^WARNING: Location" >&2 || true
  .venv/bin/python -m pip install --quiet -e ".[dev]" 2>&1 | grep -v "^WARNING: Location" >&2 || true
  if ! .venv/bin/python -c "import pi_mqtt_gpio, paho.mqtt, pytest" 2>/dev/null; then
    echo "installing into .venv failed (see the messages above)" >&2
    exit 1
  fi
  echo "$want" > "$stamp"
fi
