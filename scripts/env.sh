# Source this file (bash/sh) from the repository root to get the project's shell:
# the virtual environment, the ROS 2 wheels found by ament/CMake, and the colcon
# install space (messages + console scripts).
#   . scripts/env.sh          ROS 2 Kilted: .venv/ + install/
#   . scripts/env.sh jazzy    ROS 2 Jazzy (numpy 1.26, OpenCV 4.6): .venv-jazzy/ + install-jazzy/
# POSIX sh (dash) passes no arguments to `.`: there, SOFT_BIOMETRICS_ROS_ENV=jazzy . scripts/env.sh
# Where this file lies: bash and zsh say; POSIX sh (dash) cannot, so there it must be
# sourced from the repository root.
if [ -n "${BASH_SOURCE:-}" ]; then
  _sb_script="${BASH_SOURCE}"
elif [ -n "${ZSH_VERSION:-}" ]; then
  eval '_sb_script="${(%):-%x}"'
else
  _sb_script="./scripts/env.sh"
fi
case "${1:-${SOFT_BIOMETRICS_ROS_ENV:-kilted}}" in
  kilted) _sb_venv=.venv; _sb_install=install ;;
  jazzy) _sb_venv=.venv-jazzy; _sb_install=install-jazzy ;;
  *)
    echo "scripts/env.sh: unknown environment '${1:-$SOFT_BIOMETRICS_ROS_ENV}'" \
         "(kilted, the default, or jazzy)" >&2
    unset _sb_script
    return 1 2>/dev/null || exit 1 ;;
esac
if [ ! -f "$_sb_script" ] || [ ! -f "$(dirname "$_sb_script")/../$_sb_venv/bin/activate" ]; then
  echo "scripts/env.sh: no $_sb_venv next to $_sb_script; run \`make setup\` first, and under" \
       "POSIX sh source this file from the repository root (. scripts/env.sh)" >&2
  unset _sb_script _sb_venv _sb_install
  return 1 2>/dev/null || exit 1
fi
_sb_root="$(cd "$(dirname "$_sb_script")/.." && pwd)"
unset _sb_script
# Switching environments in one shell (or entering one from a process of the other):
# drop the other's paths. The ROS 2 wheels also put their venv's libraries on
# LD_LIBRARY_PATH when Python starts, once per process tree (_ROS_WHEELS_BOOTSTRAP_COMPLETE);
# a Jazzy Python must not load Kilted's libraries, nor the reverse.
_sb_drop="${VIRTUAL_ENV:-}:$_sb_root/.venv:$(cd "$_sb_root/.venv" 2>/dev/null && pwd -P):$_sb_root/install"
if [ -n "${VIRTUAL_ENV:-}" ] && command -v deactivate >/dev/null 2>&1; then
  deactivate
fi
for _sb_var in LD_LIBRARY_PATH AMENT_PREFIX_PATH CMAKE_PREFIX_PATH COLCON_PREFIX_PATH PYTHONPATH PATH; do
  eval "_sb_val=\${$_sb_var:-}"
  [ -n "$_sb_val" ] || continue
  _sb_val="$(printf '%s' "$_sb_val" | awk -v RS=: -v drop="$_sb_drop" '
    BEGIN { n = split(drop, d, ":") }
    { sub(/\n$/, ""); for (i = 1; i <= n; i++) if (d[i] != "" && index($0, d[i]) == 1) next
      out = out (out == "" ? "" : ":") $0 }
    END { printf "%s", out }')"
  if [ -n "$_sb_val" ]; then eval "export $_sb_var=\"\$_sb_val\""; else unset "$_sb_var"; fi
done
unset _sb_var _sb_val _sb_drop _ROS_WHEELS_BOOTSTRAP_COMPLETE
. "$_sb_root/$_sb_venv/bin/activate"
export AMENT_PREFIX_PATH="$VIRTUAL_ENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
export CMAKE_PREFIX_PATH="$VIRTUAL_ENV${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
if [ -f "$_sb_root/$_sb_install/setup.sh" ]; then
  . "$_sb_root/$_sb_install/setup.sh"
fi
# Console scripts where `ros2 run` would find them (no ros2 CLI wheel exists).
if [ -d "$_sb_root/$_sb_install/soft_biometrics_ros/lib/soft_biometrics_ros" ]; then
  export PATH="$_sb_root/$_sb_install/soft_biometrics_ros/lib/soft_biometrics_ros:$PATH"
fi
# Keep DDS discovery on this machine unless the user asked otherwise.
export ROS_AUTOMATIC_DISCOVERY_RANGE="${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}"
unset _sb_root _sb_venv _sb_install
