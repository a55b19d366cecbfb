#!/usr/bin/env bash
# Set up .venv and run the test suite. Integration tests need CNNLAB_DATA=<dir with cifar10-jpg.tar.gz>.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m pytest -q "$@"
