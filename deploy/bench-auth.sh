#!/usr/bin/env bash
# What authentication costs raftgraph: the local cluster (deploy/local-cluster.sh, release
# build, TLS on) with `auth` on and off, alternating, 3 rounds; per round writes (create-node)
# and linearizable reads at 64 and 256 clients over 8 connections, 10 s each, through the
# leader, with the cluster-admin token when authentication is on. One JSON line per run in
# target/bench-auth/results.jsonl and a line per run on stdout (ops/s, p99 ms, errors).
#
#   bash deploy/bench-auth.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=deploy/lib.sh
. deploy/lib.sh
release_binary
mkdir -p target/bench-auth
OUT=target/bench-auth/results.jsonl
: > $OUT
for round in 1 2 3; do
  for mode in on off; do
    bash deploy/local-cluster.sh clean >/dev/null 2>&1 || true
    RAFTGRAPH_AUTH=$mode bash deploy/local-cluster.sh start >/dev/null 2>&1
    if [[ -f target/local-cluster/admin.token ]]; then
      RAFTGRAPH_TOKEN=$(cat target/local-cluster/admin.token)
      export RAFTGRAPH_TOKEN
    else
      unset RAFTGRAPH_TOKEN
    fi
    leader=$($RAFTGRAPH_BIN cluster status --ca target/local-cluster/certs/ca.pem --output json | python3 -c 'import json,sys; print([r["endpoint"] for r in json.load(sys.stdin) if r["state"]=="leader"][0])')
    for c in 64 256; do
      for w in create-node read-linearizable; do
        r=$($RAFTGRAPH_BIN bench --endpoints "$leader" --ca target/local-cluster/certs/ca.pem --clients $c --connections 8 --workload $w --duration 10 --output json --quiet)
        echo "{\"auth\":\"$mode\",\"round\":$round,\"clients\":$c,\"workload\":\"$w\",\"result\":$r}" >> $OUT
        echo "$mode r$round $w c$c: $(echo "$r" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d.get("ops_per_sec"), d.get("p99_ms"), d.get("errors"))')"
      done
    done
  done
done
bash deploy/local-cluster.sh clean >/dev/null 2>&1 || true
