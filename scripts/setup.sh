#!/usr/bin/env bash
# Create .venv (if needed) and install cnnlab with its test extras into it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then "$PY" -m venv .venv; fi
# pip warns once per package about index locations this machine's pip config names but lacks: hide only those
quiet() { "$@" 2> >(grep -v "^WARNING: Location 'file://" >&2); }
quiet .venv/bin/python -m pip install -q --upgrade pip
quiet .venv/bin/python -m pip install -q -e '.[dev]'
