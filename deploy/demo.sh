#!/usr/bin/env bash
# The README's run command: starts the local three-member cluster (deploy/local-cluster.sh;
# certificates on first start, TLS between members and to clients), creates a tenant, writes a few nodes and edges through different servers, and reads them back
# through the CLI. The cluster keeps running afterwards; stop it with
# `bash deploy/local-cluster.sh stop`.
set -euo pipefail

cd "$(dirname "$0")/.."
bash deploy/local-cluster.sh start
RG="${RAFTGRAPH_BIN:-${CARGO_TARGET_DIR:-target}/ci/raftgraph}"
# Every call below speaks TLS to the cluster and trusts its CA.
export RAFTGRAPH_CA=target/local-cluster/certs/ca.pem

id_of() { sed -E 's/.*"id":([0-9]+).*/\1/'; }

echo
echo "== create tenant 'demo' (through node 2, a follower forwards to the leader)"
if ! out=$("$RG" tenant create demo --max-nodes 1000 --endpoints 127.0.0.1:7002 2>&1); then
  if grep -q AlreadyExists <<<"$out"; then echo "(tenant demo exists from an earlier run)"; else
    echo "$out" >&2
    exit 1
  fi
else echo "$out"; fi

echo
echo "== write nodes and edges"
ada=$("$RG" node create --tenant demo --label Person --prop name=Ada --prop born=1815 --output json | id_of)
charles=$("$RG" node create --tenant demo --label Person --prop name=Charles --prop born=1791 \
  --endpoints 127.0.0.1:7003 --output json | id_of)
engine=$("$RG" node create --tenant demo --label Machine --prop 'name="Analytical Engine"' --output json | id_of)
"$RG" edge create --tenant demo --from "$ada" --to "$charles" --type KNOWS --prop since=1833
"$RG" edge create --tenant demo --from "$ada" --to "$engine" --type PROGRAMMED

echo
echo "== read back: node $ada from node 3 (linearizable read index)"
"$RG" node get --tenant demo "$ada" --endpoints 127.0.0.1:7003
echo
echo "== Person nodes"
"$RG" node by-label --tenant demo Person
echo
echo "== Ada's neighbors"
"$RG" edge neighbors --tenant demo "$ada"
echo
echo "== tenant usage"
"$RG" tenant get demo
echo
echo "The cluster is still running: bash deploy/local-cluster.sh status | stop | clean"
