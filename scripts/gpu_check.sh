#!/usr/bin/env bash
# The GPU checks of dift-fast in one command, for an offline machine with one NVIDIA GPU (made for an H100/H200:
# under 8 minutes there). Run it from the repository root; see --help.
set -uo pipefail

usage() {
  cat <<'EOF'
Usage:
  scripts/gpu_check.sh [OPTIONS] [OUT_DIR]   run the GPU checks; results in OUT_DIR (default gpu-results/)
  scripts/gpu_check.sh --prepare [WHEEL_DIR] on a machine with pip and network: download the wheels the GPU
                                             machine lacks into WHEEL_DIR (default .whl/, git-ignored; <= 60 MB)
  scripts/gpu_check.sh --help

On the GPU machine (no network), from the repository root, it:
  1. env        records the GPU, driver, Python and torch
  2. wheels     installs the wheels of WHEEL_DIR (default .whl/) into a scratch folder put on PYTHONPATH
  3. preflight  scripts/check_install.py: names any build or runtime requirement still missing
  4. build      pip install --no-build-isolation --no-deps --no-index -e . with DIFT_FAST_CUDA=ON, only for the
                GPU's architecture (sm_90 on an H100/H200), and checks that the CUDA kernels run
  5. pytest     pytest -m gpu (all GPU tests but the extractor's)
  6. extractor  pytest -m gpu tests/test_gpu_extractor.py (CUDA vs CPU features, bf16, noise, batching)
  7. kernels    benchmarks/bench_kernels.py --device cuda (B=16, E=8, 768², bf16)
  8. engine     dift-fast bench, SD 2.1 architecture with random weights, 768², E=8, bf16, batch 1 and 16,
                eager, with the reference style in the same run (--baseline)
  9. compile    the same with --compile (no baseline); both write their JSON even when a configuration's call
                times vary by more than 10 % (--allow-noisy: its records say "stable": false)
Each step runs even if an earlier one failed, under its own time limit inside the total budget; its time and
exit code go to the summary, which also gives the share of the engine's time spent in noise + ensemble mean.

Files written to OUT_DIR (7): summary.md, summary.json, steps.log, kernels.json, kernels.md, engine-eager.json,
engine-compile.json.

Options:
  --budget SECONDS   total time budget (default 470: under 8 minutes with the summary)
  --steps LIST       comma-separated subset of: env,wheels,preflight,build,pytest,extractor,kernels,engine,compile
  --wheels DIR       wheel folder to install from (default .whl)
Environment: PYTHON (default python3), DIFT_FAST_CUDA_ARCHS (default: the GPU's compute capability, else 90),
GPU_WHEELS (for --prepare; default "diffusers").
EOF
}

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 2
PY=${PYTHON:-python3}

# ------------------------------------------------------------------------------------------------ --prepare
# The GPU image (Python 3.12, x86-64) has torch, transformers, safetensors, onnx, onnxruntime, pytest, cmake,
# ninja, nanobind, scikit-build-core and diffusers' requirements, but not diffusers. (diffusers also lists
# importlib_metadata, which it imports only on Python < 3.8; its 10.x release would need lazy-importer too.)
prepare() {
  local dir=${1:-.whl} py=$PY max_bytes=$((60 * 1000 * 1000))
  [ -x .venv/bin/python ] && py=.venv/bin/python  # pin the versions the test suite ran against here
  local specs=() name version
  for name in ${GPU_WHEELS:-diffusers}; do
    version=$("$py" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name" 2>/dev/null)
    specs+=("${name}${version:+==$version}")
  done
  mkdir -p "$dir"
  rm -f "$dir"/*.whl  # one version of each package: two would stop the install there
  echo "downloading into $dir: ${specs[*]}"
  if ! "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      -d "$dir" "${specs[@]}"; then
    echo "gpu_check --prepare: pip download failed" >&2
    return 1
  fi
  ls -l "$dir"
  local bytes
  bytes=$(du -cb "$dir"/*.whl | tail -1 | cut -f1)
  echo "total: $bytes bytes in $(ls "$dir"/*.whl | wc -l) wheels (limit $max_bytes)"
  for w in "$dir"/*.whl; do  # what each wheel needs; the GPU image must have the rest (the preflight step checks)
    echo "$(basename "$w") requires: $(unzip -p "$w" '*.dist-info/METADATA' | grep '^Requires-Dist' \
      | grep -v 'extra ==' | sed 's/Requires-Dist: //' | tr '\n' ' ')"
  done
  if [ "$bytes" -gt "$max_bytes" ]; then
    echo "gpu_check --prepare: $dir holds $bytes bytes, over the $max_bytes limit" >&2
    return 1
  fi
}

# ------------------------------------------------------------------------------------------------ arguments
OUT=gpu-results
WHEELS=.whl
BUDGET=470
STEPS=env,wheels,preflight,build,pytest,extractor,kernels,engine,compile
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --prepare) shift; prepare "${1:-.whl}"; exit $? ;;
    --budget) BUDGET=${2:?--budget needs seconds}; shift 2 ;;
    --steps) STEPS=${2:?--steps needs a list}; shift 2 ;;
    --wheels) WHEELS=${2:?--wheels needs a folder}; shift 2 ;;
    -*) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
    *) OUT=$1; shift ;;
  esac
done
case "$BUDGET" in ''|*[!0-9]*) echo "--budget must be a whole number of seconds, got '$BUDGET'" >&2; exit 2 ;; esac

mkdir -p "$OUT" || exit 2
OUT=$(cd "$OUT" && pwd)
LOG=$OUT/steps.log
STEPS_TSV=$(mktemp)
SITE=${TMPDIR:-/tmp}/dift-fast-gpu-site
: >"$LOG"
START=$(date +%s)
DEADLINE=$((START + BUDGET))
export PYTHONUNBUFFERED=1 PY OUT SITE WHEELS ROOT

say() { echo "$*" | tee -a "$LOG"; }

# run_step NAME BUDGET_SECONDS COMMAND...: runs unless deselected or out of time; records status, rc, seconds.
run_step() {
  local name=$1 limit=$2
  shift 2
  case ",$STEPS," in *",$name,"*) ;; *) return 0 ;; esac
  local now left t0 rc status
  now=$(date +%s)
  left=$((DEADLINE - now - 15))  # the limit, plus timeout's 10 s grace to kill, ends before the deadline
  if [ "$left" -lt 10 ]; then
    say "=== $name: skipped, the ${BUDGET}s budget is spent"
    printf '%s\tskipped\t-\t0\tno time left in the %ss budget\n' "$name" "$BUDGET" >>"$STEPS_TSV"
    return 0
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  say "=== $name (limit ${limit}s): $*"
  t0=$(date +%s)
  STEP_NOTE=$(mktemp)
  export STEP_NOTE
  timeout -k 10 "$limit" "$@" 2>&1 | tee -a "$LOG"
  rc=${PIPESTATUS[0]}
  local note
  note=$(head -c 300 "$STEP_NOTE" | tr '\t\n|' '   ')
  rm -f "$STEP_NOTE"
  case $rc in
    0) status=passed ;;
    124|137) status=timeout note="stopped at its ${limit}s limit; $note" ;;
    97) status=failed note="dift-fast bench is not available (issue 14)" ;;
    *) status=failed note=${note:-see steps.log} ;;
  esac
  say "=== $name: $status (exit $rc, $(( $(date +%s) - t0 ))s)"
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$rc" "$(( $(date +%s) - t0 ))" "$note" >>"$STEPS_TSV"
}

# ------------------------------------------------------------------------------------------------ the steps
step_env() {
  nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv || echo "nvidia-smi failed"
  "$PY" - <<'PYEOF'
import platform, sys
import torch
print(f"python {platform.python_version()} ({sys.executable}); torch {torch.__version__}, CUDA {torch.version.cuda}")
print(f"cuda available: {torch.cuda.is_available()}; devices: "
      f"{[torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]}")
sys.exit(0 if torch.cuda.is_available() else 1)
PYEOF
}

step_wheels() {
  ls "$WHEELS"/*.whl >/dev/null 2>&1 || { echo "no wheels in $WHEELS: run scripts/gpu_check.sh --prepare on a machine with pip and carry $WHEELS"; return 1; }
  rm -rf "$SITE"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$WHEELS"/*.whl \
    || return 1
  # each installed wheel's own requirements (pip --no-deps checks none): name what the image lacks, as a warning
  # (diffusers lists importlib_metadata but imports it only on Python < 3.8); the step fails if diffusers does
  # not import
  PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH} "$PY" - "$SITE" <<'PYEOF'
import importlib.metadata as md, sys
from pathlib import Path
from packaging.requirements import Requirement
for info in Path(sys.argv[1]).glob("*.dist-info"):
    dist = md.Distribution.at(info)
    for spec in dist.requires or []:
        req = Requirement(spec)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        try:
            ok = req.specifier.contains(md.version(req.name), prereleases=True)
        except md.PackageNotFoundError:
            ok = False
        print(f"{dist.metadata['Name']} needs {spec}: {'ok' if ok else 'MISSING or too old (warning)'}")
import diffusers
print(f"diffusers {diffusers.__version__} imports")
PYEOF
}

step_preflight() { DIFT_FAST_CUDA=ON "$PY" scripts/check_install.py; }

step_build() {
  local archs=${DIFT_FAST_CUDA_ARCHS:-}
  if [ -z "$archs" ]; then
    archs=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d ' .')
    archs=${archs:-90}
  fi
  echo "building the CUDA kernels for sm_$archs"
  DIFT_FAST_CUDA=ON CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) "$PY" -m pip install -q --no-build-isolation --no-deps \
    --no-index -e . -C "cmake.define.DIFT_FAST_CUDA_ARCHS=$archs" -C build-dir=build/gpu-check || return 1
  "$PY" - <<'PYEOF'
import json, sys
from dift_fast import ops
status = ops.kernel_status()
print(json.dumps(status, indent=1))
sys.exit(0 if status["cuda"]["usable"] and status["variant"] == "cuda" else 1)
PYEOF
}

# pytest -m gpu ARGS...: the summary line becomes the step's note; a run where nothing passed (all skipped) fails.
gpu_pytest() {
  local log rc
  log=$(mktemp)
  "$PY" -m pytest -m gpu -q -rs -p no:cacheprovider "$@" 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  tail -n 1 "$log" | sed 's/=//g; s/^ *//' >"$STEP_NOTE"
  if [ "$rc" -eq 0 ] && ! tail -n 1 "$log" | grep -q " passed"; then
    echo "nothing passed (every GPU test skipped; see the reasons above)" | tee -a "$STEP_NOTE"
    rc=1
  fi
  rm -f "$log"
  return "$rc"
}

step_pytest() { gpu_pytest --ignore=tests/test_gpu_extractor.py tests; }

step_extractor() { gpu_pytest tests/test_gpu_extractor.py; }

step_kernels() { "$PY" benchmarks/bench_kernels.py --device cuda --out "$OUT/kernels.json"; }

has_bench() {
  "$PY" -m dift_fast.cli bench --help >/dev/null 2>&1 && return 0
  echo "'dift-fast bench' is not available in this checkout (issue 14 adds it): this step cannot run"
  return 97
}

step_engine() {
  has_bench || return $?
  "$PY" -m dift_fast.cli bench --architecture sd21 --device cuda --image-size 768x768 --ensemble-size 8 \
    --dtype bf16 --batch-sizes 1,16 --baseline --warmup 1 --iters 3 --allow-noisy --out "$OUT/engine-eager.json"
}

step_compile() {
  has_bench || return $?
  "$PY" -m dift_fast.cli bench --architecture sd21 --device cuda --image-size 768x768 --ensemble-size 8 \
    --dtype bf16 --batch-sizes 1,16 --compile --warmup 1 --iters 3 --allow-noisy --out "$OUT/engine-compile.json"
}

export -f step_env step_wheels step_preflight step_build gpu_pytest step_pytest step_extractor step_kernels \
  has_bench step_engine step_compile

say "dift-fast GPU check: $(date -u +%Y-%m-%dT%H:%M:%SZ), budget ${BUDGET}s, steps $STEPS, results in $OUT"
run_step env 20 bash -c step_env
run_step wheels 60 bash -c step_wheels
if [ -d "$SITE" ]; then
  export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
fi
run_step preflight 30 bash -c step_preflight
run_step build 200 bash -c step_build
run_step pytest 90 bash -c step_pytest
run_step extractor 90 bash -c step_extractor
run_step kernels 60 bash -c step_kernels
run_step engine 150 bash -c step_engine
run_step compile 400 bash -c step_compile

# ------------------------------------------------------------------------------------------------ summary
"$PY" - "$STEPS_TSV" "$OUT" "$BUDGET" "$(( $(date +%s) - START ))" <<'PYEOF' 2>&1 | tee -a "$LOG"
import json, sys
from pathlib import Path

tsv, out, budget, elapsed = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
steps = []
for line in tsv.read_text().splitlines():
    name, status, rc, seconds, note = (line.split("\t") + [""] * 5)[:5]
    steps.append({"step": name, "status": status, "exit_code": None if rc == "-" else int(rc),
                  "seconds": int(seconds), "note": note})
import subprocess

try:  # the summary must be written whatever failed
    query = ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"]
    device = subprocess.run(query, capture_output=True, text=True, timeout=20).stdout.strip() or "no GPU found"
except (OSError, subprocess.TimeoutExpired) as err:
    device = f"no GPU found ({type(err).__name__})"

# share of the engine's time per image spent in noise + ensemble mean (kernels at B=16, engine records at batch 16)
share = {"fraction": None, "note": "kernels.json missing"}
kernels = out / "kernels.json"
if kernels.is_file():
    sys.path.insert(0, "benchmarks")
    try:
        from engine_time import engine_ms_from_json
        k = json.loads(kernels.read_text())
        per_image = k["share_of_engine"]["kernels_ms_per_image"]
        batch = k["config"]["batch"]
        found = [engine_ms_from_json(out / f, batch) for f in ("engine-eager.json", "engine-compile.json")
                 if (out / f).is_file()]
        found = [(ms, note) for ms, note in found if ms is not None]
        if found:
            ms, note = min(found)
            share = {"kernels_ms_per_image": per_image, "engine_ms_per_image": ms, "fraction": per_image / ms,
                     "note": note, "goal": "< 1 %"}
        else:
            share = {"kernels_ms_per_image": per_image, "fraction": None,
                     "note": "no engine time per image at batch %d in the engine JSONs" % batch}
    except Exception as err:
        share = {"fraction": None, "note": f"could not compute: {type(err).__name__}: {err}"}

passed = [s["step"] for s in steps if s["status"] == "passed"]
summary = {"device": device, "budget_s": budget, "elapsed_s": elapsed, "steps": steps,
           "all_passed": bool(steps) and len(passed) == len(steps), "noise_and_mean_share_of_engine": share}
(out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
lines = [f"# dift-fast GPU check on {device}", "",
         f"{len(passed)} of {len(steps)} steps passed in {elapsed} s (budget {budget} s). Log: steps.log.", "",
         "| step | status | exit code | seconds | note |", "|---|---|---|---|---|"]
for s in steps:
    lines.append(f"| {s['step']} | {s['status']} | {s['exit_code'] if s['exit_code'] is not None else '-'} | "
                 f"{s['seconds']} | {s['note']} |")
if share.get("fraction") is not None:
    lines += ["", f"Noise + ensemble mean: {share['kernels_ms_per_image']:.4f} ms per image = "
                  f"{100 * share['fraction']:.2f} % of the engine's {share['engine_ms_per_image']:.2f} ms per image "
                  f"(goal < 1 %; {share['note']})."]
else:
    lines += ["", f"Noise + ensemble mean share of the engine's time: not computed ({share['note']})."]
lines += ["", "Files: " + ", ".join(sorted({p.name for p in out.iterdir() if p.is_file()} | {"summary.md"}))]
(out / "summary.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PYEOF
rm -f "$STEPS_TSV"
grep -q '"all_passed": true' "$OUT/summary.json" 2>/dev/null
