#!/usr/bin/env bash
# GPU check: the CUDA tests and the GPU benchmark (PE-Core-T/B/L, fp32 and bf16, 1920x1080
# frames with 5 faces) in one command, within 10 minutes, ending with one short table.
#
#   make gpu-check                       # or: bash scripts/gpu_check.sh [soft_biometrics_bench options]
#   bash scripts/gpu_check.sh --backbone L --precision bf16     # extra options go to the benchmark
#
# Where it runs: a CUDA machine, no internet needed, PyTorch already installed.
# - With the project's .venv (`make setup` was run): scripts/env.sh is sourced; ROS 2 is there.
# - Without it (e.g. a bare GPU machine with Python 3.12 and torch, no venv): `python3` is
#   used (override with PYTHON=...), the repository root goes on PYTHONPATH, and the
#   packages such a machine lacks are installed from the repository's git-ignored `.whl/`
#   folder into a temporary directory that is put on PYTHONPATH (nothing is installed
#   system-wide). ROS 2 wheels are usually absent there: the ROS-graph parts (the message
#   build stage, the node-vs-pipeline ratio, tests that need rclpy) are then skipped, and
#   the output says so.
#
# Fetching the wheels into .whl/ (here, on any machine with a package registry): `make
# gpu-wheels` (scripts/gpu_wheels.sh) downloads open_clip_torch, timm, peft, ftfy, wcwidth
# and facenet-pytorch for CPython 3.12 at the versions of requirements/, about 8 MB. The
# GPU image already has torch, torchvision, numpy, opencv, safetensors, pyyaml, tqdm,
# requests, huggingface_hub, regex, pytest and pytest-timeout; add any that is missing
# there to PACKAGES in that script. With this workplace's device tool:
#   make gpu-wheels; then run `bash scripts/gpu_check.sh` there with carry: [".whl"]
#   (GPU_CHECK_OUT=$OUT brings the JSON and logs back).
#
# Environment: PYTHON (interpreter), GPU_CHECK_OUT (folder for logs and JSON, default
# outputs/gpu_check), GPU_CHECK_BUDGET_S (whole-run budget in seconds, default 570),
# GPU_CHECK_TEST_S (time given to the CUDA tests, default 180), GPU_CHECK_DEVICE (default
# cuda; `cpu` checks this script's plumbing on a machine without a GPU: the CUDA tests
# are then skipped and the benchmark runs on the CPU, so pass small options, e.g.
# `GPU_CHECK_DEVICE=cpu bash scripts/gpu_check.sh --backbone T --precision fp32
#  --frame 640x480 --iterations 2 --batch-sizes 1,4 --method linear_probe`).
# Exit status: 0 when the CUDA tests passed and the benchmark completed, 1 otherwise,
# 2 when there is no CUDA device, 3 when a needed package is missing.

set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
STARTED=$(date +%s)
BUDGET=${GPU_CHECK_BUDGET_S:-570}
TEST_BUDGET=${GPU_CHECK_TEST_S:-180}
OUT_DIR=${GPU_CHECK_OUT:-outputs/gpu_check}
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1

say() { echo "[gpu-check] $*" >&2; }
elapsed() { echo $(( $(date +%s) - STARTED )); }

# --- the Python environment -------------------------------------------------------------
if [ -z "${PYTHON:-}" ] && [ -x .venv/bin/python ] && [ -f scripts/env.sh ]; then
  # colcon's setup.sh (sourced by env.sh) reads unset variables: not under `set -u`.
  set +u
  # shellcheck disable=SC1091
  . scripts/env.sh
  set -u
  PYTHON=python
  say "using the project's .venv ($(python --version 2>&1))"
else
  [ -n "${PYTHON:-}" ] && HOW="PYTHON=$PYTHON" || HOW="no .venv"
  PYTHON=${PYTHON:-python3}
  say "$HOW: using $($PYTHON --version 2>&1) at $(command -v "$PYTHON")"
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

shopt -s nullglob
WHEELS=(.whl/*.whl)
shopt -u nullglob
if [ ${#WHEELS[@]} -gt 0 ]; then
  SITE=$(mktemp -d /tmp/gpu_check_site.XXXXXX)
  trap 'rm -rf "$SITE"' EXIT
  say "installing ${#WHEELS[@]} wheel(s) from .whl/ into $SITE"
  if ! "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
      --upgrade --target "$SITE" "${WHEELS[@]}"; then
    say "ERROR: installing the wheels in .whl/ failed (two versions of one package?)"
    exit 3
  fi
  export PYTHONPATH="$SITE:$PYTHONPATH"
fi

DEVICE=${GPU_CHECK_DEVICE:-cuda}
if ! GPU_CHECK_DEVICE=$DEVICE "$PYTHON" - <<'EOF'
import os
import sys
import torch
if os.environ['GPU_CHECK_DEVICE'] == 'cpu':
    print(f'[gpu-check] PLUMBING CHECK ON THE CPU (GPU_CHECK_DEVICE=cpu), torch '
          f'{torch.__version__}: CUDA tests skip, numbers are CPU numbers', file=sys.stderr)
elif not torch.cuda.is_available():
    sys.exit(f'no CUDA device visible to torch {torch.__version__}; gpu-check needs one')
else:
    print(f'[gpu-check] torch {torch.__version__}, CUDA {torch.version.cuda}, '
          f'{torch.cuda.get_device_name(0)}', file=sys.stderr)
EOF
then
  exit 2
fi

MISSING=$("$PYTHON" - <<'EOF'
import importlib
need = {'open_clip': 'open_clip_torch', 'timm': 'timm', 'peft': 'peft',
        'facenet_pytorch': 'facenet-pytorch', 'cv2': 'opencv-python-headless',
        'safetensors': 'safetensors', 'yaml': 'pyyaml', 'tqdm': 'tqdm', 'pytest': 'pytest',
        'pytest_timeout': 'pytest-timeout', 'ftfy': 'ftfy'}
missing = []
for module, package in need.items():
    try:
        importlib.import_module(module)
    except Exception:
        missing.append(package)
print(' '.join(missing))
EOF
)
if [ -n "$MISSING" ]; then
  say "ERROR: missing Python packages: $MISSING"
  say "put their wheels into .whl/ (see the pip download command at the top of $0)"
  exit 3
fi

ROS_NOTE=""
BENCH_ROS_ARGS=()
if ! "$PYTHON" -c 'import rclpy; from soft_biometrics_msgs.msg import FaceAttributesArray' \
    2>/dev/null; then
  ROS_NOTE="ROS 2 is not importable here: skipped the message-build stage, the node-vs-pipeline ratio and ROS tests"
  BENCH_ROS_ARGS=(--no-node)
  say "$ROS_NOTE"
fi

# --- 1. the CUDA tests -------------------------------------------------------------------
CUDA_TEST_FILES=()
for file in test/test_*.py test/*/test_*.py; do
  if grep -q 'pytest.mark.cuda' "$file"; then
    if [ -n "$ROS_NOTE" ] && grep -qE '^(import rclpy|from rclpy|import sensor_msgs|from (sensor_msgs|soft_biometrics_msgs|diagnostic_msgs))' "$file"; then
      say "skipping $file: it imports ROS 2 at module level"
      continue
    fi
    CUDA_TEST_FILES+=("$file")
  fi
done
TEST_STATUS="no CUDA tests found"
TEST_RC=1
if [ ${#CUDA_TEST_FILES[@]} -gt 0 ]; then
  say "CUDA tests (pytest -m cuda, at most ${TEST_BUDGET} s): ${CUDA_TEST_FILES[*]}"
  timeout --signal=INT "$TEST_BUDGET" "$PYTHON" -m pytest -m cuda -q -p no:cacheprovider \
    -o addopts="" --junitxml="$OUT_DIR/cuda_tests.xml" "${CUDA_TEST_FILES[@]}" \
    2>&1 | tee "$OUT_DIR/cuda_tests.log"
  TEST_RC=${PIPESTATUS[0]}
  TEST_STATUS=$(grep -E '(passed|failed|error|skipped|no tests ran)' "$OUT_DIR/cuda_tests.log" | tail -n 1)
  [ "$TEST_RC" -eq 124 ] && TEST_STATUS="timed out after ${TEST_BUDGET} s: $TEST_STATUS"
fi
say "CUDA tests done after $(elapsed) s (exit $TEST_RC)"

# --- 2. the GPU benchmark ----------------------------------------------------------------
LEFT=$(( BUDGET - $(elapsed) ))
if [ "$LEFT" -lt 60 ]; then
  say "only ${LEFT} s left of the ${BUDGET} s budget: not starting the benchmark"
  BENCH_RC=124
else
  say "benchmark: soft_biometrics_bench --suite gpu (at most ${LEFT} s)"
  timeout --signal=INT "$LEFT" "$PYTHON" -m soft_biometrics_ros.tools.bench --suite gpu \
    --device "$DEVICE" --json "$OUT_DIR/bench_gpu.json" "${BENCH_ROS_ARGS[@]}" "$@" \
    >"$OUT_DIR/bench_gpu.txt" 2>"$OUT_DIR/bench_gpu.log"
  BENCH_RC=$?
  tail -n 5 "$OUT_DIR/bench_gpu.log" >&2
fi

# --- the short table ---------------------------------------------------------------------
echo
echo "gpu-check ($(elapsed) s): CUDA tests: $TEST_STATUS"
[ -n "$ROS_NOTE" ] && echo "note: $ROS_NOTE"
if [ -f "$OUT_DIR/bench_gpu.json" ]; then
  "$PYTHON" - "$OUT_DIR/bench_gpu.json" "$BENCH_RC" <<'EOF'
import json
import sys
from soft_biometrics_ros.tools.bench import format_short_table
results = json.load(open(sys.argv[1]))
if not results.get('complete'):
    print(f'benchmark INCOMPLETE (exit {sys.argv[2]}): the rows below are what it measured')
print(format_short_table(results))
EOF
else
  echo "benchmark produced no results (exit $BENCH_RC); see $OUT_DIR/bench_gpu.log"
fi
echo "details: $OUT_DIR/ (bench_gpu.json, bench_gpu.txt with all tables, logs)"
if [ "$TEST_RC" -eq 0 ] && [ "$BENCH_RC" -eq 0 ]; then
  exit 0
fi
exit 1
