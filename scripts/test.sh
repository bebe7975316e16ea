#!/usr/bin/env bash
# The test command: set up the environment, lint, run the test suite (GPU tests skip without a GPU).
# Usage: scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/python -m pytest "$@"
