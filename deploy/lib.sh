# Shell helpers shared by the deploy/ scripts (sourced, not run).

# The raftgraph binary the benchmarks run: RAFTGRAPH_BIN, or a release build made now (what users
# run; its first build compiles RocksDB once more). Exports RAFTGRAPH_BIN.
release_binary() {
  if [[ -z "${RAFTGRAPH_BIN:-}" ]]; then
    cargo build --release --bin raftgraph
    RAFTGRAPH_BIN="${CARGO_TARGET_DIR:-target}/release/raftgraph"
  fi
  export RAFTGRAPH_BIN
}

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
