#!/usr/bin/env bash
# The test suite on both ROS 2 environments (what `make test` runs):
#   scripts/run_tests.sh all    [PYTEST_ARGS...]   Kilted: the whole suite; Jazzy: the `ros` tests
#   scripts/run_tests.sh kilted [PYTEST_ARGS...]
#   scripts/run_tests.sh jazzy  [PYTEST_ARGS...]
# `all` runs the two side by side (SB_TEST_PARALLEL=0: one after the other), each on its
# own DDS domain so their nodes never meet: while Kilted's suite runs, Jazzy's environment
# is set up if needed (`make setup-jazzy`, log-jazzy/setup.log) and its tests run;
# Kilted's output streams, Jazzy's goes to log-jazzy/pytest.log and its summary follows
# Kilted's. Ends with one line per environment and a total, and fails if either failed
# or ran no test. (Side by side is what keeps `make test` from a fresh clone within
# 25 min on 2 cores: the node tests wait on DDS and node start-up much of their time.)
set -uo pipefail
cd "$(dirname "$0")/.."
what="${1:-all}"
shift || true
case "$what" in all|kilted|jazzy) ;; *) echo "usage: $0 all|kilted|jazzy [pytest args]" >&2; exit 2 ;; esac

# Two domains apart (1..50 and 51..100), chosen per run: concurrent runs on one machine
# (developers, CI, both environments) keep to themselves.
if [ -n "${ROS_DOMAIN_ID:-}" ]; then
  kilted_domain="$ROS_DOMAIN_ID"; jazzy_domain="$(( (ROS_DOMAIN_ID + 50) % 101 ))"
else
  kilted_domain="$(( RANDOM % 50 + 1 ))"; jazzy_domain="$(( kilted_domain + 50 ))"
fi

versions() {
  python -c 'import importlib.metadata as m, platform, numpy, cv2
print("rclpy", m.version("ros-rclpy") + ", Python", platform.python_version() + ", numpy",
      numpy.__version__ + ", OpenCV", cv2.__version__)' 2>/dev/null || echo '?'
}

# run ENV DOMAIN ARGS...: pytest in that environment (output on stdout).
run() {
  local env="$1" domain="$2"
  shift 2
  local selection=()
  [ "$env" = jazzy ] && selection=(-m ros -p no:cacheprovider)
  (
    # shellcheck disable=SC1091
    set +u  # colcon's setup.sh reads unset variables
    . scripts/env.sh "$env" || exit 3
    echo "== $env ($(versions)), ROS_DOMAIN_ID=$domain"
    ROS_DOMAIN_ID="$domain" exec python -m pytest "${selection[@]}" "$@"
  ) 2>&1
}

# The closing line of a pytest log ("== 12 passed, 1 skipped in 3.2s ==") without '='.
closing() {
  grep -E '^=+ .*(passed|failed|error|no tests ran).* in [0-9.]+s' "$1" | tail -1 \
    | sed -E 's/^=+ //; s/ =+$//'
}

count() {  # count KIND LINE
  echo "$2" | grep -oE "[0-9]+ $1" | grep -oE '[0-9]+' || echo 0
}

mkdir -p log log-jazzy
kilted_log=log/pytest.log
jazzy_log=log-jazzy/pytest.log
started=$SECONDS
kilted_rc=0; jazzy_rc=0
if [ "$what" = all ] && [ "${SB_TEST_PARALLEL:-1}" != 0 ]; then
  echo "Jazzy's tests run beside Kilted's: tail -f $jazzy_log"
  {
    if ! "${MAKE:-make}" --no-print-directory setup-jazzy > log-jazzy/setup.log 2>&1; then
      echo "make setup-jazzy failed: see log-jazzy/setup.log"; tail -n 30 log-jazzy/setup.log
      exit 4
    fi
    run jazzy "$jazzy_domain" "$@"
  } > "$jazzy_log" 2>&1 &
  jazzy_pid=$!
  run kilted "$kilted_domain" "$@" | tee "$kilted_log"
  kilted_rc=${PIPESTATUS[0]}
  wait "$jazzy_pid"; jazzy_rc=$?
  echo; echo "== Jazzy's run ($jazzy_log), from its summary on:"
  sed -n '/short test summary info\|slowest .* durations/,$p' "$jazzy_log" | tail -n 80
else
  if [ "$what" != jazzy ]; then
    run kilted "$kilted_domain" "$@" | tee "$kilted_log"; kilted_rc=${PIPESTATUS[0]}
  fi
  if [ "$what" != kilted ]; then
    "${MAKE:-make}" --no-print-directory setup-jazzy || exit 4
    run jazzy "$jazzy_domain" "$@" | tee "$jazzy_log"; jazzy_rc=${PIPESTATUS[0]}
  fi
fi

echo
status=0
passed=0; failed=0; skipped=0
for env in kilted jazzy; do
  [ "$what" = all ] || [ "$what" = "$env" ] || continue
  log_var="${env}_log"; rc_var="${env}_rc"
  line="$(closing "${!log_var}")"
  rc="${!rc_var}"
  [ "$rc" = 0 ] || status=1
  p=$(count passed "$line"); f=$(( $(count failed "$line") + $(count error "$line") ))
  s=$(count skipped "$line")
  passed=$((passed + p)); failed=$((failed + f)); skipped=$((skipped + s))
  verdict=ok; [ "$rc" = 0 ] || verdict="FAILED (pytest exit $rc)"
  echo "$env: ${line:-no pytest summary, see ${!log_var}} -> $verdict"
done
echo "took $(( (SECONDS - started) / 60 )) min $(( (SECONDS - started) % 60 )) s"
echo "total: $passed passed, $failed failed, $skipped skipped"
exit "$status"
