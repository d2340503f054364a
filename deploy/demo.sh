#!/usr/bin/env bash
# The README's run command: starts the local three-member cluster (deploy/local-cluster.sh;
# certificates on first start, TLS between members and to clients, the first cluster-admin
# token from `cluster init`), creates a tenant and a write token for it, writes a few nodes and
# edges with that token through different servers, and reads them back through the CLI. The
# cluster keeps running afterwards; stop it with `bash deploy/local-cluster.sh stop`.
set -euo pipefail

cd "$(dirname "$0")/.."
bash deploy/local-cluster.sh start
RG="${RAFTGRAPH_BIN:-${CARGO_TARGET_DIR:-target}/ci/raftgraph}"
# Every call below speaks TLS to the cluster and trusts its CA.
export RAFTGRAPH_CA=target/local-cluster/certs/ca.pem
ADMIN_TOKEN=$(cat target/local-cluster/admin.token)
DEMO_TOKEN_FILE=target/local-cluster/demo.token

id_of() { sed -E 's/.*"id":([0-9]+).*/\1/'; }

echo
echo "== create tenant 'demo' with the cluster-admin token (through node 2, a follower forwards to the leader)"
if ! out=$(RAFTGRAPH_TOKEN=$ADMIN_TOKEN "$RG" tenant create demo --max-nodes 1000 \
  --endpoints 127.0.0.1:7002 2>&1); then
  if grep -q AlreadyExists <<<"$out"; then echo "(tenant demo exists from an earlier run)"; else
    echo "$out" >&2
    exit 1
  fi
else echo "$out"; fi

echo
echo "== a write token for tenant 'demo' (shown once: kept in $DEMO_TOKEN_FILE, mode 0600)"
if [[ ! -f $DEMO_TOKEN_FILE ]]; then
  RAFTGRAPH_TOKEN=$ADMIN_TOKEN "$RG" tenant token create demo --role write \
    --output-file "$DEMO_TOKEN_FILE"
else echo "(made by an earlier run)"; fi
# Every call from here on carries the tenant's token.
RAFTGRAPH_TOKEN=$(cat "$DEMO_TOKEN_FILE")
export RAFTGRAPH_TOKEN

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
echo "== the demo token names tenant 'demo' only: another tenant is refused"
if out=$("$RG" node get --tenant other 1 2>&1); then
  echo "unexpected: $out" >&2
  exit 1
else echo "$out"; fi
echo
echo "The cluster is still running: bash deploy/local-cluster.sh status | stop | clean"
