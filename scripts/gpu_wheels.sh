#!/usr/bin/env bash
# Fetch into .whl/ the wheels a bare CUDA machine (Python 3.12, PyTorch installed, no
# internet) lacks for `make gpu-check`, at the versions of requirements/runtime.txt
# and requirements/nodeps.txt. Run it here, on a machine with a package registry:
#
#   make gpu-wheels                 # = bash scripts/gpu_wheels.sh
#
# then carry .whl/ (git-ignored) to the GPU machine with the repository and run
# `bash scripts/gpu_check.sh` there: it installs them into a temporary folder on
# PYTHONPATH (nothing system-wide). PYTHON_VERSION (default 3.12) picks the target Python.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=${PYTHON_VERSION:-3.12}
# What the GPU image lacks or holds at another version than ours (torch, torchvision,
# numpy, opencv, safetensors, pyyaml, tqdm, requests, huggingface_hub, regex, pytest and
# pytest-timeout are used as they are there).
PACKAGES=(open_clip_torch timm peft ftfy wcwidth facenet-pytorch)

pinned() {
  local name=$1 line
  line=$(grep -hiE "^${name}(\[[^]]*\])?==" requirements/runtime.txt requirements/pins.txt requirements/nodeps.txt | head -n 1)
  [ -n "$line" ] || { echo "gpu-wheels: $name is not pinned in requirements/" >&2; exit 3; }
  echo "${line%%[[:space:]]*}" | sed -E 's/\[[^]]*\]//'
}

SPECS=()
for package in "${PACKAGES[@]}"; do
  SPECS+=("$(pinned "$package")")
done
mkdir -p .whl
# Keep one version of each package: drop wheels of these packages left from other pins.
for package in "${PACKAGES[@]}"; do
  stem=$(echo "$package" | tr '-' '_')
  for old in .whl/"${stem}"-*.whl .whl/"${package}"-*.whl; do
    [ -e "$old" ] || continue
    keep=0
    for spec in "${SPECS[@]}"; do
      version=${spec#*==}
      case "$old" in *-"$version"-*) keep=1 ;; esac
    done
    [ "$keep" -eq 1 ] || { echo "gpu-wheels: removing stale $old"; rm -f "$old"; }
  done
done
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] && PYTHON=.venv/bin/python
echo "gpu-wheels: ${SPECS[*]} for CPython $TARGET"
"$PYTHON" -m pip download --disable-pip-version-check --no-deps --only-binary=:all: \
  --python-version "$TARGET" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux1_x86_64 -d .whl "${SPECS[@]}"
ls -l .whl
du -sh .whl
