#!/usr/bin/env bash
# The API contract: schemathesis (from PyPI) drives the running server with
# docs/openapi.json, so the implementation and the document cannot drift.
# Run by .ci/run after the tests; usable alone: bash .ci/contract.sh
set -euo pipefail
cd "$(dirname "$0")/.."

SCHEMATHESIS_VERSION=4.32.5
target_dir=${CARGO_TARGET_DIR:-target}
venv=$target_dir/schemathesis-venv
if [ ! -x "$venv/bin/st" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet "schemathesis==$SCHEMATHESIS_VERSION"
fi

cargo build --locked -p broker-server
log=$(mktemp)
# Loopback-only: schemathesis registers arbitrary URLs, and no delivery may
# leave the machine (no name is even resolved).
"$target_dir/debug/broker-server" --listen 127.0.0.1:0 --admin-token contract-admin \
  --loopback-only-destinations 2>"$log" &
server=$!
trap 'kill "$server" 2>/dev/null || true; rm -f "$log"' EXIT
addr=""
for _ in $(seq 100); do
  addr=$(grep -o 'addr=[0-9.:]*' "$log" | head -n1 | cut -d= -f2 || true)
  [ -n "$addr" ] && break
  sleep 0.1
done
[ -n "$addr" ] || { echo "the server did not start:" >&2; cat "$log" >&2; exit 1; }

# positive_data_acceptance is left out: the server refuses more than JSON
# Schema can say (reserved header names, invalid ports, duplicate headers
# in other case), each with a documented 400. The coverage phase is left
# out for a schemathesis crash on Python 3.11 in that phase (an internal
# AST recursion error), not for a finding. The two live-listening paths are
# left out: an event stream and a WebSocket never end as a response, which
# schemathesis waits for; tests/live.rs drives them with real clients.
# Long polls (fetch and pull `wait`) answer after up to 30 s by design:
# the response-time check allows 40 s, and so does the request timeout
# (`--max-response-time` is only a check: schemathesis's own read timeout,
# 10 s by default, failed a generated `wait=10000ms` now and then).
"$venv/bin/st" run docs/openapi.json \
  --url "http://$addr" \
  -H "Authorization: Bearer contract-admin" \
  --checks all --exclude-checks positive_data_acceptance \
  --phases examples,fuzzing,stateful \
  --exclude-path '/v1/topics/{topic}/events' --exclude-path /v1/ws \
  --max-examples 100 --seed 20261123 --workers 2 \
  --max-response-time 40 --request-timeout 40

kill -TERM "$server"
wait "$server"
