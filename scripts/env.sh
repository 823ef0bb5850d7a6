# Source this file (bash/sh) from the repository root to get the project's shell:
# the virtual environment, the ROS 2 wheels found by ament/CMake, and the colcon
# install space (messages + console scripts).
#   . scripts/env.sh
# Where this file lies: bash and zsh say; POSIX sh (dash) cannot, so there it must be
# sourced from the repository root.
if [ -n "${BASH_SOURCE:-}" ]; then
  _sb_script="${BASH_SOURCE}"
elif [ -n "${ZSH_VERSION:-}" ]; then
  eval '_sb_script="${(%):-%x}"'
else
  _sb_script="./scripts/env.sh"
fi
if [ ! -f "$_sb_script" ] || [ ! -f "$(dirname "$_sb_script")/../.venv/bin/activate" ]; then
  echo "scripts/env.sh: no .venv next to $_sb_script; run \`make setup\` first, and under" \
       "POSIX sh source this file from the repository root (. scripts/env.sh)" >&2
  unset _sb_script
  return 1 2>/dev/null || exit 1
fi
_sb_root="$(cd "$(dirname "$_sb_script")/.." && pwd)"
unset _sb_script
. "$_sb_root/.venv/bin/activate"
export AMENT_PREFIX_PATH="$VIRTUAL_ENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
export CMAKE_PREFIX_PATH="$VIRTUAL_ENV${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
if [ -f "$_sb_root/install/setup.sh" ]; then
  . "$_sb_root/install/setup.sh"
fi
# Console scripts where `ros2 run` would find them (no ros2 CLI wheel exists).
if [ -d "$_sb_root/install/soft_biometrics_ros/lib/soft_biometrics_ros" ]; then
  export PATH="$_sb_root/install/soft_biometrics_ros/lib/soft_biometrics_ros:$PATH"
fi
# Keep DDS discovery on this machine unless the user asked otherwise.
export ROS_AUTOMATIC_DISCOVERY_RANGE="${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}"
unset _sb_root
