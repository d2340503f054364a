#!/usr/bin/env bash
# A local three-member raftgraph cluster: clients on 127.0.0.1:7001-7003 (TLS), members on
# 127.0.0.1:7101-7103 (mutual TLS). Configs: deploy/node{1,2,3}.toml; data, logs and the
# certificates (created with `raftgraph certs` on first start) under target/local-cluster/.
# Client commands need the cluster's CA and a token:
#   export RAFTGRAPH_CA=target/local-cluster/certs/ca.pem
#   export RAFTGRAPH_TOKEN=$(cat target/local-cluster/admin.token)   # the first cluster-admin token
#
#   bash deploy/local-cluster.sh start    # build, start the three servers, init the cluster once
#   bash deploy/local-cluster.sh status   # each member's view (state, term, leader, log)
#   bash deploy/local-cluster.sh stop     # SIGTERM each server and wait for it to exit
#   bash deploy/local-cluster.sh clean    # stop, then delete target/local-cluster
#
# Run from the repository root. RAFTGRAPH_BIN overrides the binary (otherwise it is built with
# `cargo build --profile ci`). RAFTGRAPH_TLS=off starts the servers with a plaintext client
# listener (the peer plane keeps mutual TLS) and has this script's client calls speak plaintext:
# for measuring what TLS costs, not for use. RAFTGRAPH_AUTH=off starts them without
# authentication (every caller may do everything), likewise for measuring only.
set -euo pipefail

cd "$(dirname "$0")/.."
DIR=target/local-cluster
ENDPOINTS=127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003
CERTS=$DIR/certs
if [[ ${RAFTGRAPH_TLS:-on} == off ]]; then
  unset RAFTGRAPH_CA
  AS_MEMBER=()
else
  export RAFTGRAPH_CA=$CERTS/ca.pem
  # Member 1's certificate: what `cluster init` is authenticated by.
  AS_MEMBER=(--client-cert "$CERTS/member-1.pem" --client-key "$CERTS/member-1.key")
fi
ADMIN_TOKEN=$DIR/admin.token
# This script's own calls carry no token from the caller's environment (one of an earlier
# cluster would make a fresh one answer UNAUTHENTICATED); status uses the admin token file.
unset RAFTGRAPH_TOKEN
mkdir -p "$DIR"

bin() {
  if [[ -n "${RAFTGRAPH_BIN:-}" ]]; then
    echo "$RAFTGRAPH_BIN"
  else
    echo "${CARGO_TARGET_DIR:-target}/ci/raftgraph"
  fi
}

running() { # server number
  local pid_file="$DIR/node$1.pid"
  [[ -f "$pid_file" ]] && kill -0 "$(cat "$pid_file")" 2>/dev/null
}

# shellcheck source=deploy/lib.sh
. deploy/lib.sh

has_leader() {
  "$(bin)" cluster status --endpoints "$1" --output json | grep -q '"state":"leader"'
}

# `cluster status` prints a row even for an unreachable member; an answer has a member id.
answers() {
  "$(bin)" cluster status --endpoints "$1" --output json | grep -q '"member":[0-9]'
}

# The cluster's CA and one certificate per member, once (keys 0600); the members' keyring for
# tenant secrets, once (0600).
certificates() {
  if [[ ! -f "$CERTS/secrets.keys" ]]; then
    mkdir -p "$CERTS"
    "$(bin)" secrets keygen --id k1 --file "$CERTS/secrets.keys" --output json >/dev/null
  fi
  if [[ -f "$CERTS/ca.pem" ]]; then return 0; fi
  "$(bin)" certs init --cluster-id local --dir "$CERTS" >/dev/null
  for i in 1 2 3; do
    "$(bin)" certs member --cluster-id local --id "$i" --host 127.0.0.1 --host localhost \
      --dir "$CERTS" >/dev/null
  done
  echo "certificates created in $CERTS (CA: $CERTS/ca.pem)"
}

start() {
  if [[ -z "${RAFTGRAPH_BIN:-}" ]]; then
    cargo build --profile ci --bin raftgraph
  fi
  certificates
  for i in 1 2 3; do
    if running "$i"; then
      echo "member $i already running (pid $(cat "$DIR/node$i.pid"))"
      continue
    fi
    "$(bin)" server --config "deploy/node$i.toml" >>"$DIR/node$i.log" 2>&1 &
    echo $! >"$DIR/node$i.pid"
    echo "member $i started (pid $!, log $DIR/node$i.log)"
  done
  for i in 1 2 3; do
    wait_for 30 "member $i to answer (see $DIR/node$i.log)" answers "127.0.0.1:700$i"
  done
  if [[ ! -f "$DIR/initialized" ]]; then
    rm -f "$ADMIN_TOKEN"
    "$(bin)" cluster init --endpoints 127.0.0.1:7001 "${AS_MEMBER[@]}" \
      --member 1=127.0.0.1:7001 --member 2=127.0.0.1:7002 --member 3=127.0.0.1:7003 \
      --admin-token-file "$ADMIN_TOKEN"
    touch "$DIR/initialized"
    if [[ -f "$ADMIN_TOKEN" ]]; then
      echo "the first cluster-admin token is in $ADMIN_TOKEN (mode 0600)"
    fi
  fi
  wait_for 30 "a leader" has_leader "$ENDPOINTS"
  if [[ ! -f "$ADMIN_TOKEN" && ${RAFTGRAPH_AUTH:-on} != off ]]; then
    # Initialised before tokens existed (or the file was lost): a member's certificate makes one.
    "$(bin)" tenant token create --role cluster-admin "${AS_MEMBER[@]}" \
      --output-file "$ADMIN_TOKEN" --output json >/dev/null
    echo "made a cluster-admin token with member 1's certificate: $ADMIN_TOKEN"
  fi
  status
}

# Each member's view; the whole of it with the admin token.
status() {
  if [[ -f "$ADMIN_TOKEN" ]]; then
    RAFTGRAPH_TOKEN=$(cat "$ADMIN_TOKEN") "$(bin)" cluster status --endpoints "$ENDPOINTS"
  else
    "$(bin)" cluster status --endpoints "$ENDPOINTS"
  fi
}

stop() {
  for i in 1 2 3; do
    if running "$i"; then
      kill -TERM "$(cat "$DIR/node$i.pid")"
    fi
  done
  local failed=0
  for i in 1 2 3; do
    if [[ -f "$DIR/node$i.pid" ]]; then
      if wait_for 30 "member $i to exit" bash -c "! kill -0 $(cat "$DIR/node$i.pid") 2>/dev/null"; then
        rm -f "$DIR/node$i.pid"
        echo "member $i stopped"
      else
        echo "member $i (pid $(cat "$DIR/node$i.pid")) still running; kill -9 it if needed" >&2
        failed=1
      fi
    fi
  done
  return $failed
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  clean)
    stop
    rm -rf "$DIR"
    ;;
  *)
    echo "usage: $0 start|stop|status|clean" >&2
    exit 2
    ;;
esac
