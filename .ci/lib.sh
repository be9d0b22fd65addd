# Shared by .ci/services.sh and .ci/test (sourced, not run): quiet apt, and a line every 10 s while
# a long step runs, so neither a terminal nor a CI log sits silent for minutes.
STATE=${ROLLOUT_MATRIX_STATE_DIR:-/var/tmp/rollout-matrix-ci}
mkdir -p "$STATE"

# with_progress TAG WHAT LOG COMMAND...: run COMMAND with its output (stdout and stderr) in LOG; while
# it runs, print "[TAG] still WHAT (Ns)" every 9 s. Returns COMMAND's status.
with_progress() {
  local tag=$1 what=$2 log=$3 start=$SECONDS pid
  shift 3
  "$@" >"$log" 2>&1 &
  pid=$!
  while ! ended "$pid" 9; do
    echo "[$tag] still $what ($((SECONDS - start))s)"
  done
  wait "$pid"
}

# ended PID SECONDS: true as soon as PID has ended, false if it still runs after SECONDS.
ended() {
  local i
  for ((i = 0; i < $2 * 5; i++)); do
    kill -0 "$1" 2>/dev/null || return 0
    sleep 0.2
  done
  ! kill -0 "$1" 2>/dev/null
}

# apt_install TAG PACKAGE...: one line saying what is installed, the whole output in $STATE/apt.log
# (debconf's and Ubuntu's needrestart chatter stay out of the test output), apt's error line on failure.
apt_install() {
  local tag=$1 log="$STATE/apt.log"
  shift
  echo "[$tag] installing $* (log: $log)"
  # noninteractive: no debconf prompt; NEEDRESTART_*: needrestart's hook neither asks nor scans.
  if ! DEBIAN_FRONTEND=noninteractive NEEDRESTART_MODE=a NEEDRESTART_SUSPEND=1 with_progress "$tag" "installing $*" \
      "$log" sh -c 'apt-get update -q && apt-get install -y -q -o Dpkg::Use-Pty=0 "$@"' apt-install "$@"; then
    echo "[$tag] apt-get failed: $(grep -E '^(E|W): ' "$log" | tail -1); see $log" >&2
    return 1
  fi
}
