#!/usr/bin/env bash
# Fairness between tenants under a flood: the local cluster (deploy/local-cluster.sh, release
# build, TLS and authentication on, the cluster-admin token). Tenant `victim` writes at a paced
# VICTIM_RATE (default 200 writes/s over 8 clients); tenant `flood` writes closed-loop with
# FLOOD_CLIENTS clients (default 256, over 8 connections). Per round, SECS seconds each:
#
#   alone      the victim alone
#   paced      victim + the flood paced to exactly FLOOD_LIMIT writes/s (no limit, no refusal):
#              what the admitted writes alone cost the victim
#   limited    victim + flood, the flood limited to FLOOD_LIMIT requests/s (default 1000) and
#              waiting out each refusal's retry hint, as a well-behaved client does
#   greedy     the same limit, the flood resending at once whatever the hint (an abusive client)
#   unlimited  victim + flood without a limit: what the limit prevents
#
# FLOOD_NICE (default 0) runs the flooding client under `nice -n FLOOD_NICE`: on a small machine
# the load generator's own CPU competes with the servers and the victim, which a remote attacker's
# would not. The cluster starts afresh per round. One JSON line per run in
# target/bench-fairness/results.jsonl, and a summary per phase: the victim's p50/p99 and its
# p99 against "alone", the flood's admitted writes/s against its limit, refusals.
#
#   bash deploy/bench-fairness.sh          # ROUNDS=3 SECS=15 VICTIM_RATE=200 FLOOD_LIMIT=1000
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=deploy/lib.sh
. deploy/lib.sh
release_binary
ROUNDS=${ROUNDS:-3}
SECS=${SECS:-15}
VICTIM_RATE=${VICTIM_RATE:-200}
FLOOD_LIMIT=${FLOOD_LIMIT:-1000}
FLOOD_CLIENTS=${FLOOD_CLIENTS:-256}
FLOOD_NICE=${FLOOD_NICE:-0}
OUT_DIR=target/bench-fairness
OUT=$OUT_DIR/results.jsonl
mkdir -p $OUT_DIR
: > $OUT
CA=target/local-cluster/certs/ca.pem
rg() { "$RAFTGRAPH_BIN" "$@" --ca "$CA"; }

# Each tenant writes with its own write token (sessions are per token: the flood's come and go
# under its own); the cluster-admin token sets up tenants and limits.
victim() {
  RAFTGRAPH_TOKEN=$(cat $OUT_DIR/victim.token) rg bench --tenant victim --clients 8 --connections 2 --rate "$VICTIM_RATE" \
    --workload create-node --duration "$SECS" --output json --quiet
}

flood() { # extra flags
  RAFTGRAPH_TOKEN=$(cat $OUT_DIR/flood.token) nice -n "$FLOOD_NICE" "$RAFTGRAPH_BIN" bench --tenant flood --clients "$FLOOD_CLIENTS" \
    --connections 8 --workload create-node --duration "$SECS" --output json --quiet "$@" --ca "$CA"
}

record() { # round phase who json
  echo "{\"round\":$1,\"phase\":\"$2\",\"who\":\"$3\",\"limit\":$FLOOD_LIMIT,\"result\":$4}" >> $OUT
}

both() { # round phase flood-flags...
  local round=$1 phase=$2
  shift 2
  flood "$@" > $OUT_DIR/flood.json &
  local pid=$!
  local v
  v=$(victim)
  wait $pid
  record "$round" "$phase" victim "$v"
  record "$round" "$phase" flood "$(cat $OUT_DIR/flood.json)"
}

for round in $(seq 1 "$ROUNDS"); do
  bash deploy/local-cluster.sh clean >/dev/null 2>&1 || true
  bash deploy/local-cluster.sh start >$OUT_DIR/cluster.log 2>&1 ||
    { echo "the local cluster did not start (round $round):" >&2; cat $OUT_DIR/cluster.log >&2; exit 1; }
  RAFTGRAPH_TOKEN=$(cat target/local-cluster/admin.token)
  export RAFTGRAPH_TOKEN
  for t in victim flood; do
    rg tenant create "$t" >/dev/null
    rg tenant quotas "$t" >/dev/null # unlimited: the flood writes millions of nodes
    rm -f $OUT_DIR/$t.token
    rg tenant token create "$t" --role write --output-file $OUT_DIR/$t.token >/dev/null
  done
  record "$round" alone victim "$(victim)"
  both "$round" paced --rate "$FLOOD_LIMIT"
  rg tenant rate-limit flood --requests-per-sec "$FLOOD_LIMIT" >/dev/null
  both "$round" limited --honor-pushback
  both "$round" greedy
  rg tenant rate-limit flood >/dev/null
  both "$round" unlimited
  echo "round $round done"
done
bash deploy/local-cluster.sh clean >/dev/null 2>&1 || true

python3 - "$OUT" <<'EOF'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
def med(xs):
    return statistics.median(xs) if xs else float("nan")
phases = ["alone", "paced", "limited", "greedy", "unlimited"]
alone = med([r["result"]["p99_ms"] for r in runs if r["phase"] == "alone"])
print("phase      victim p50 ms  victim p99 ms  p99/alone  victim ok/s  flood ok/s  flood refused/s  (medians of rounds; per-round victim p99)")
for p in phases:
    v = [r["result"] for r in runs if r["phase"] == p and r["who"] == "victim"]
    f = [r["result"] for r in runs if r["phase"] == p and r["who"] == "flood"]
    p99 = med([x["p99_ms"] for x in v])
    fok = med([x["ops_per_sec"] for x in f]) if f else 0
    fref = med([x["errors"] / x["seconds"] for x in f]) if f else 0
    print(f"{p:10} {med([x['p50_ms'] for x in v]):13.2f}  {p99:13.2f}  {p99 / alone:9.2f}  "
          f"{med([x['ops_per_sec'] for x in v]):11.0f}  {fok:10.0f}  {fref:15.0f}  "
          f"({', '.join(format(x['p99_ms'], '.2f') for x in v)})")
    for x in v:
        if x["errors"]:
            print(f"  victim errors in {p}: {x['errors_by_code']}")
EOF
