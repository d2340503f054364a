# Shell helpers shared by the deploy/ scripts (sourced, not run).

# Polls `cmd` once a second for up to `secs` seconds.
wait_for() { # secs description cmd...
  local secs=$1 what=$2
  shift 2
  for _ in $(seq "$secs"); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 1
  done
  echo "timed out after ${secs}s waiting for $what" >&2
  return 1
}
