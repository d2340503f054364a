#!/usr/bin/env bash
# raftgraph against etcd, side by side, on this machine and disk, fsync on for both.
#
#   bash deploy/bench-vs-etcd.sh
#
# Installs Debian's etcd-server (and etcd-client for etcdctl) if missing. Then, for each of
# ROUNDS rounds and each TLS mode (the order of the two stores alternates), it starts one store
# at a time — a local three-member etcd cluster on 127.0.0.1:{1,2,3}2379, or the local
# three-member raftgraph cluster of deploy/local-cluster.sh — runs `raftgraph bench` with 1, 64
# and 256 clients for writes (256-byte values), linearizable reads and serializable reads, and
# stops it, deleting its data. Finally `raftgraph bench-compare` prints one table per TLS mode:
# the median of the rounds for each figure, the raftgraph/etcd ratio, and the issue's bar.
#
# TLS modes (TLS_MODES, default "on off"): `on` — TLS between clients and members for both
# stores, and between members (etcd: --cert-file/--key-file and --peer-* with client
# certificates required; raftgraph: its default), with certificates from `raftgraph certs`;
# `off` — plaintext clients for both; etcd's members then talk plaintext too, raftgraph's keep
# mutual TLS (it has no plaintext peer plane).
#
# Authentication modes (AUTH_MODES, default "on"): `on` — etcd with `auth enable`, the bench
# authenticating as a user `bench` whose role may read and write the prefix `bench/` (etcd's
# simple tokens); raftgraph with a `write` token of the bench tenant (made with the cluster-admin
# token from `cluster init`). `off` — etcd without auth, raftgraph with `auth = "off"`. Both
# modes in one run (AUTH_MODES="on off") give the cost of authentication for each store.
#
# Writes and linearizable reads go to each store's leader (etcd's found with etcdctl; the
# raftgraph client finds its own); serializable reads are spread over the three members.
#
# Environment: ROUNDS (3), SECS per run (10), CLIENTS ("1 64 256"), CONNS connections for more
# than one client (8), RG_BENCH_ARGS extra `raftgraph bench` flags for the raftgraph runs only
# (e.g. "--label bench": created nodes get a label, one index entry more per write; by default
# a created node is its one 256-byte property, as an etcd put is its value), RAFTGRAPH_BIN (else built with `cargo build --release`: the build users
# run, without the ci profile's debug assertions; its first build compiles RocksDB once more,
# about 14 minutes on 2 cores).
# Results: target/bench-vs-etcd/results-tls-<mode>-auth-<mode>.jsonl (one JSON line per run)
# and table-tls-<mode>-auth-<mode>.md; etcd's logs
# in target/bench-vs-etcd/logs/. Refuses to run while deploy/local-cluster.sh's cluster is up.
set -euo pipefail

cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
SECS=${SECS:-10}
CLIENTS=${CLIENTS:-"1 64 256"}
CONNS=${CONNS:-8}
TLS_MODES=${TLS_MODES:-"on off"}
AUTH_MODES=${AUTH_MODES:-"on"}
# Each run names its CA itself; one from the caller's environment must not reach a plaintext run.
unset RAFTGRAPH_CA
read -r -a RG_EXTRA <<<"${RG_BENCH_ARGS:-}"
OUT=target/bench-vs-etcd
ETCD_ENDPOINTS=127.0.0.1:12379,127.0.0.1:22379,127.0.0.1:32379
# etcd serves its metrics (the fsync counts) on plaintext URLs of their own, in both modes.
ETCD_METRICS=127.0.0.1:12381,127.0.0.1:22381,127.0.0.1:32381
ETCD_CERTS=$OUT/etcd-certs
RG_ENDPOINTS=127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003

# shellcheck source=deploy/lib.sh
. deploy/lib.sh
release_binary
BIN=$RAFTGRAPH_BIN

if ! command -v etcd >/dev/null || ! command -v etcdctl >/dev/null; then
  SUDO=""
  [[ $(id -u) -ne 0 ]] && SUDO=sudo
  $SUDO apt-get update
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y etcd-server etcd-client
fi

# The raftgraph rounds start and delete the cluster of deploy/local-cluster.sh: never one that
# is already running.
for i in 1 2 3; do
  pid_file=target/local-cluster/node$i.pid
  if [[ -f $pid_file ]] && kill -0 "$(cat "$pid_file")" 2>/dev/null; then
    echo "a local raftgraph cluster is running (node $i); stop it first: bash deploy/local-cluster.sh stop" >&2
    exit 1
  fi
done
if pgrep -x etcd >/dev/null; then
  echo "warning: an etcd is already running (Debian's service?); it adds load to every run" >&2
fi

mkdir -p "$OUT/logs"
ETCD_PIDS=()
for mode in $TLS_MODES; do
  for auth in $AUTH_MODES; do
    : >"$OUT/results-tls-$mode-auth-$auth.jsonl"
  done
done

# etcd's certificates, from the same `raftgraph certs` an operator uses for raftgraph (member
# certificates carry 127.0.0.1 and are for server and client authentication both).
rm -rf "$ETCD_CERTS"
"$BIN" certs init --cluster-id etcd-bench --dir "$ETCD_CERTS" >/dev/null
for i in 1 2 3; do
  "$BIN" certs member --cluster-id etcd-bench --dir "$ETCD_CERTS" --id "$i" --host 127.0.0.1 >/dev/null
done

# etcdctl against the bench cluster in the current TLS mode (as root once auth is enabled).
ETCD_ROOT=()
etcdctl_() {
  if [[ $MODE == on ]]; then
    etcdctl --endpoints "https://${ETCD_ENDPOINTS//,/,https://}" --cacert "$ETCD_CERTS/ca.pem" "${ETCD_ROOT[@]}" "$@"
  else
    etcdctl --endpoints "$ETCD_ENDPOINTS" "${ETCD_ROOT[@]}" "$@"
  fi
}

# etcd's authentication: root (needed to enable it), a role that may read and write the
# bench's keys, a user with that role; then `auth enable`.
ETCD_BENCH_PASSWORD=bench-$RANDOM$RANDOM
etcd_auth_enable() {
  local root_password=root-$RANDOM$RANDOM
  etcdctl_ user add root --new-user-password "$root_password" --interactive=false >/dev/null
  etcdctl_ role add bench >/dev/null
  etcdctl_ role grant-permission bench --prefix=true readwrite bench/ >/dev/null
  etcdctl_ user add bench --new-user-password "$ETCD_BENCH_PASSWORD" --interactive=false >/dev/null
  etcdctl_ user grant-role bench bench >/dev/null
  etcdctl_ auth enable >/dev/null
  ETCD_ROOT=(--user "root:$root_password")
}

etcd_start() {
  rm -rf "$OUT/etcd"
  mkdir -p "$OUT/etcd"
  local scheme=http tls=()
  if [[ $MODE == on ]]; then
    scheme=https
  fi
  local cluster=e1=$scheme://127.0.0.1:12380,e2=$scheme://127.0.0.1:22380,e3=$scheme://127.0.0.1:32380
  ETCD_PIDS=()
  for i in 1 2 3; do
    if [[ $MODE == on ]]; then
      tls=(--cert-file "$ETCD_CERTS/member-$i.pem" --key-file "$ETCD_CERTS/member-$i.key"
        --peer-cert-file "$ETCD_CERTS/member-$i.pem" --peer-key-file "$ETCD_CERTS/member-$i.key"
        --peer-trusted-ca-file "$ETCD_CERTS/ca.pem" --peer-client-cert-auth)
    fi
    # fsync is etcd's default (only --unsafe-no-fsync turns it off).
    etcd --name "e$i" --data-dir "$OUT/etcd/e$i" \
      --listen-client-urls "$scheme://127.0.0.1:${i}2379" \
      --advertise-client-urls "$scheme://127.0.0.1:${i}2379" \
      --listen-peer-urls "$scheme://127.0.0.1:${i}2380" \
      --initial-advertise-peer-urls "$scheme://127.0.0.1:${i}2380" \
      --listen-metrics-urls "http://127.0.0.1:${i}2381" \
      --initial-cluster "$cluster" --initial-cluster-state new \
      --initial-cluster-token raftgraph-bench "${tls[@]}" \
      >"$OUT/logs/etcd-e$i.log" 2>&1 &
    ETCD_PIDS+=($!)
  done
  ETCD_ROOT=()
  wait_for 60 "etcd to be healthy" etcdctl_ endpoint health
  [[ $AUTH == on ]] && etcd_auth_enable
  return 0
}

etcd_stop() {
  if ((${#ETCD_PIDS[@]})); then
    kill "${ETCD_PIDS[@]}" 2>/dev/null || true
    wait "${ETCD_PIDS[@]}" 2>/dev/null || true
  fi
  ETCD_PIDS=()
  rm -rf "$OUT/etcd"
}

# host:port of etcd's leader (the `simple` format's fifth field is IS LEADER).
etcd_leader() {
  etcdctl_ endpoint status -w simple |
    awk -F', ' '$5 == "true" { sub("https?://", "", $1); print $1 }'
}

raftgraph_start() {
  bash deploy/local-cluster.sh clean >/dev/null
  RAFTGRAPH_TLS=$MODE RAFTGRAPH_AUTH=$AUTH bash deploy/local-cluster.sh start
  unset RAFTGRAPH_TOKEN
  if [[ $AUTH == on ]]; then
    # The bench tenant (unlimited quotas) and a `write` token of it, made with the first
    # cluster-admin token; the bench then runs with the tenant's token only.
    local ca=() token_file=target/local-cluster/bench.token
    [[ $MODE == on ]] && ca=(--ca target/local-cluster/certs/ca.pem)
    RAFTGRAPH_TOKEN=$(cat target/local-cluster/admin.token) "$BIN" tenant create bench "${ca[@]}" >/dev/null
    RAFTGRAPH_TOKEN=$(cat target/local-cluster/admin.token) "$BIN" tenant quotas bench "${ca[@]}" >/dev/null
    rm -f "$token_file"
    RAFTGRAPH_TOKEN=$(cat target/local-cluster/admin.token) "$BIN" tenant token create bench \
      --role write --output-file "$token_file" "${ca[@]}" >/dev/null
    RAFTGRAPH_TOKEN=$(cat "$token_file")
    export RAFTGRAPH_TOKEN
  fi
}

raftgraph_stop() {
  bash deploy/local-cluster.sh clean >/dev/null
}

trap 'etcd_stop; raftgraph_stop' EXIT

# Runs every load against `target`: writes and linearizable reads through `lead`, serializable
# reads through `all`, fsyncs sampled on `fsync`.
run_loads() { # target lead all fsync
  local target=$1 lead=$2 all=$3 fsync=$4 conns extra=()
  if [[ $target == raftgraph ]]; then
    extra=("${RG_EXTRA[@]}")
    # With TLS, trust the local cluster's CA (from deploy/local-cluster.sh). The token, with
    # authentication on, is the bench tenant's (raftgraph_start).
    [[ $MODE == on ]] && extra+=(--ca target/local-cluster/certs/ca.pem)
  else
    [[ $MODE == on ]] && extra=(--ca "$ETCD_CERTS/ca.pem")
    [[ $AUTH == on ]] && extra+=(--etcd-user bench --etcd-password "$ETCD_BENCH_PASSWORD")
  fi
  for c in $CLIENTS; do
    conns=1
    ((c > 1)) && conns=$CONNS
    for w in create-node read-linearizable read-serializable; do
      local endpoints=$lead
      [[ $w == read-serializable ]] && endpoints=$all
      echo "== $target $w, TLS $MODE, $c clients, $conns connections, ${SECS}s" >&2
      "$BIN" bench --target "$target" --endpoints "$endpoints" --fsync-endpoints "$fsync" \
        --clients "$c" --connections "$conns" --workload "$w" --duration "$SECS" \
        --output json --quiet "${extra[@]}" | tee -a "$OUT/results-tls-$MODE-auth-$AUTH.jsonl"
    done
  done
}

bench_etcd() {
  etcd_start
  local leader
  leader=$(etcd_leader)
  [[ -n $leader ]] || { echo "no etcd leader found" >&2; exit 1; }
  run_loads etcd "$leader" "$ETCD_ENDPOINTS" "$ETCD_METRICS"
  etcd_stop
}

bench_raftgraph() {
  raftgraph_start
  run_loads raftgraph "$RG_ENDPOINTS" "$RG_ENDPOINTS" "$RG_ENDPOINTS"
  raftgraph_stop
}

for round in $(seq "$ROUNDS"); do
  for MODE in $TLS_MODES; do
    for AUTH in $AUTH_MODES; do
      echo "=== round $round of $ROUNDS, TLS $MODE, authentication $AUTH" >&2
      if ((round % 2 == 1)); then
        bench_etcd
        bench_raftgraph
      else
        bench_raftgraph
        bench_etcd
      fi
    done
  done
done

for mode in $TLS_MODES; do
  for auth in $AUTH_MODES; do
    t="$OUT/table-tls-$mode-auth-$auth.md"
    echo "=== TLS $mode, authentication $auth" | tee "$t"
    "$BIN" bench-compare "$OUT/results-tls-$mode-auth-$auth.jsonl" | tee -a "$t"
  done
done
