#!/usr/bin/env bash
# Create .venv (if needed) and install dift-fast with its test and optional extras, building the C++/CUDA kernels.
# Idempotent: a second run only re-installs the package. Usage: scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# torch first, pinned, so no other requirement pulls a multi-GB build (override with TORCH_SPEC, e.g. "torch>=2.4").
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/python -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
fi
.venv/bin/python -m pip install -q scikit-build-core nanobind
.venv/bin/python -m pip install -q --no-build-isolation -e ".[dev]"
.venv/bin/dift-fast --version
