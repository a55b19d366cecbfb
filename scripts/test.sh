#!/usr/bin/env bash
# Set up .venv, lint, and run the test suite: the README's test command and what CI (.ci/run) runs.
# Integration tests need CNNLAB_DATA=<dir with cifar10-jpg.tar.gz>. Extra arguments go to pytest
# (e.g. -m "not slow" for the quick loop).
set -euo pipefail
cd "$(dirname "$0")/.."
# headless Chromium renders the analysis report in tests (tests/test_analysis_cli.py): install it when missing,
# so this command and CI run the same tests
if ! command -v chromium >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && SUDO="sudo -n"
  ($SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium) >/dev/null 2>&1 \
    || echo "warning: could not install chromium (apt-get install chromium); the report rendering test will fail" >&2
fi
bash scripts/setup.sh
# lint first (settings in pyproject.toml [tool.ruff]): a style error fails in seconds, not after the suite
.venv/bin/python -m ruff check src tests scripts setup.py
# two worker processes (pytest-xdist), a test file at a time each (module fixtures are built once): much of the suite
# is single-threaded process start-up and I/O, so two workers fill two cores; CNNLAB_TEST_WORKERS=0 runs one process
.venv/bin/python -m pytest -q -n "${CNNLAB_TEST_WORKERS:-2}" --dist loadfile "$@"
