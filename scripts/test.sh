#!/usr/bin/env bash
# Set up .venv and run the whole test suite (what CI runs). HAM10000 is looked up at ../shared/data/ham10000
# or $SKINSCAN_DATA; tests that need it skip with a clear reason when it is absent.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh train,dev
bash scripts/setup_browser.sh   # Chromium + playwright-core for the web-app tests (tests/test_app.py)
.venv/bin/ruff check src tests benchmarks scripts
# The import contracts in pyproject.toml: the runtime imports nothing of the factory, the CLI, torch, pandas, ...
.venv/bin/lint-imports
# Includes tests/test_lean_install.py (a wheel in a fresh venv without extras, a few minutes): -m "not lean" skips it.
.venv/bin/python -m pytest -q "$@"
