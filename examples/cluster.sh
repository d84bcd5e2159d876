#!/usr/bin/env bash
# Three broker replicas on one Redis, on 127.0.0.1, without Docker: the
# topology of docker-compose.cluster.yml minus the load balancer.
#
#   bash examples/cluster.sh           start it, print what to try, wait for Ctrl-C
#   bash examples/cluster.sh --smoke   start it, check a delivery across replicas
#                                      and a hand-over on SIGTERM, exit 0 or 1
#
# Needs redis-server and redis-cli (6.2 or later), curl and python3. Uses
# target/release/broker-server (built with `cargo build --release -p
# broker-server` when missing; BROKER_BIN overrides it). Everything lives in
# a temporary directory removed on exit (KEEP_WORK=1 keeps it, with the logs).
# ADMIN_TOKEN (default change-me) and LEASE_TTL (default 15s) are passed to
# the brokers.
set -euo pipefail

usage() {
    sed -n '2,14p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

SMOKE=0
case "${1:-}" in
    "") ;;
    --smoke) SMOKE=1 ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
esac

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${BROKER_BIN:-$ROOT/target/release/broker-server}
ADMIN_TOKEN=${ADMIN_TOKEN:-change-me}
LEASE_TTL=${LEASE_TTL:-15s}
REPLICAS=3

say() { printf '%s\n' "$*" >&2; }
die() { say "cluster.sh: $*"; exit 1; }

for tool in redis-server redis-cli curl python3; do
    command -v "$tool" >/dev/null || die "$tool is needed and not installed"
done

# Children run in their own session, so a Ctrl-C in the terminal reaches
# only this script, which then stops them in order: brokers first (they
# hand their share back through Redis), Redis last.
if command -v setsid >/dev/null; then DETACH=(setsid); else DETACH=(); fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/broker-cluster.XXXXXX")
REDIS_PID=""
RECEIVER_PID=""
BROKER_PIDS=()
URLS=()

# Waits up to $2 seconds for process $1 to end; true if it did.
wait_gone() {
    local pid=$1 tenths=$(($2 * 10))
    while kill -0 "$pid" 2>/dev/null; do
        ((tenths-- > 0)) || return 1
        sleep 0.1
    done
}

# Stops process $1 with SIGTERM, then SIGKILL after $2 seconds.
stop() {
    local pid=$1
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    if ! wait_gone "$pid" "$2"; then
        say "process $pid still running after $2 s; killing it"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    set +e
    local pid
    if ((${#BROKER_PIDS[@]})); then
        say "stopping the brokers (SIGTERM: each hands its subscribers back)"
        for pid in "${BROKER_PIDS[@]}"; do
            [[ -n $pid ]] && kill -TERM "$pid" 2>/dev/null
        done
        for pid in "${BROKER_PIDS[@]}"; do
            stop "$pid" 30
        done
    fi
    stop "$RECEIVER_PID" 5
    if [[ -n $REDIS_PID ]]; then
        say "stopping redis"
        stop "$REDIS_PID" 10
    fi
    if [[ ${KEEP_WORK:-0} == 1 ]]; then
        say "kept $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Shows the end of a log when something fails.
show_log() {
    say "--- last lines of $1:"
    tail -n 20 "$1" >&2 || true
    say "---"
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# --- the binary -----------------------------------------------------------
if [[ ! -x $BIN ]]; then
    [[ -z ${BROKER_BIN:-} ]] || die "BROKER_BIN=$BIN is not an executable"
    say "building broker-server (cargo build --release -p broker-server)"
    (cd "$ROOT" && cargo build --release -p broker-server) || die "the build failed"
fi

# --- redis ------------------------------------------------------------------
REDIS_PORT=$(free_port)
mkdir -p "$WORK/redis"
${DETACH[@]+"${DETACH[@]}"} redis-server --port "$REDIS_PORT" --bind 127.0.0.1 \
    --dir "$WORK/redis" --appendonly yes --appendfsync always --save '' \
    --maxmemory-policy noeviction --daemonize no \
    --logfile "$WORK/redis.log" </dev/null >/dev/null 2>&1 &
REDIS_PID=$!
REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0"
for ((i = 0; ; i++)); do
    [[ $(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null) == PONG ]] && break
    if ! kill -0 "$REDIS_PID" 2>/dev/null || ((i >= 100)); then
        show_log "$WORK/redis.log"
        die "redis-server did not start on port $REDIS_PORT"
    fi
    sleep 0.1
done
say "redis on $REDIS_URL (data in $WORK/redis)"

# --- the brokers --------------------------------------------------------------
# Each picks its own free port; the address is read from its log line
# `listening addr=...`. The flags override any BROKER_* in the environment
# that would clash (BROKER_DATA_DIR is refused with --redis-url).
unset BROKER_DATA_DIR BROKER_LISTEN BROKER_TCP_LISTEN
for ((n = 1; n <= REPLICAS; n++)); do
    RUST_LOG="${RUST_LOG:+$RUST_LOG,}broker_server=info" ${DETACH[@]+"${DETACH[@]}"} "$BIN" \
        --listen 127.0.0.1:0 --redis-url "$REDIS_URL" \
        --admin-token "$ADMIN_TOKEN" --lease-ttl "$LEASE_TTL" --log-format human \
        </dev/null >"$WORK/broker-$n.log" 2>&1 &
    BROKER_PIDS+=($!)
done
for ((n = 1; n <= REPLICAS; n++)); do
    pid=${BROKER_PIDS[n - 1]} log="$WORK/broker-$n.log" addr=""
    for ((i = 0; i < 300; i++)); do
        addr=$(sed -n 's/.* listening addr=\([0-9.:]*\).*/\1/p' "$log" | head -n 1)
        [[ -n $addr ]] && break
        kill -0 "$pid" 2>/dev/null || { show_log "$log"; die "broker $n exited at start"; }
        sleep 0.1
    done
    [[ -n $addr ]] || { show_log "$log"; die "broker $n logged no listening address in 30 s"; }
    URLS+=("http://$addr")
done
for ((n = 1; n <= REPLICAS; n++)); do
    url=${URLS[n - 1]}
    for ((i = 0; ; i++)); do
        curl -fsS -o /dev/null --max-time 2 "$url/readyz" 2>/dev/null && break
        if ((i >= 100)); then
            show_log "$WORK/broker-$n.log"
            die "broker $n ($url) is not ready after 10 s"
        fi
        sleep 0.1
    done
done

B1=${URLS[0]} B2=${URLS[1]} B3=${URLS[2]}
say ""
say "redis:    $REDIS_URL"
for ((n = 1; n <= REPLICAS; n++)); do
    say "broker $n: ${URLS[n - 1]}   (pid ${BROKER_PIDS[n - 1]}, log $WORK/broker-$n.log)"
done
say ""

# --- interactive: print what to try and wait ------------------------------------
if ((SMOKE == 0)); then
    cat >&2 <<EOF
All three are ready. Try, in another terminal:

  # a receiver that prints each delivery
  cargo run --release -p broker-http --example receiver -- 127.0.0.1:9000

  # a publisher and a subscriber, registered on replica 1
  curl -s -X POST $B1/v1/topics/orders/publishers \\
    -H 'Authorization: Bearer $ADMIN_TOKEN' -H 'Content-Type: application/json' -d '{"name":"checkout"}'
  TOKEN='pub_…'     # the "token" above
  curl -s -X POST $B1/v1/topics/orders/subscribers \\
    -H 'Authorization: Bearer $ADMIN_TOKEN' -H 'Content-Type: application/json' \\
    -d '{"url":"http://127.0.0.1:9000/hooks/orders"}'

  # published on replica 2: delivered once, by the replica that holds the subscriber
  curl -s -X POST $B2/v1/topics/orders/messages \\
    -H "Authorization: Bearer \$TOKEN" -H 'Content-Type: application/json' -d '{"order":42}'

  # which replica delivers it ("delivering": 1 on one of them)
  for u in $B1 $B2 $B3; do curl -s \$u/healthz; echo; done

  # stop that replica with SIGTERM (kill -TERM <pid>): another takes over at once;
  # with kill -9, after the lease TTL ($LEASE_TTL)

Ctrl-C stops everything.
EOF
    while :; do
        for ((n = 1; n <= REPLICAS; n++)); do
            pid=${BROKER_PIDS[n - 1]}
            if [[ -n $pid ]] && ! kill -0 "$pid" 2>/dev/null; then
                say "broker $n (pid $pid) has exited"
                BROKER_PIDS[n - 1]=""
            fi
        done
        kill -0 "$REDIS_PID" 2>/dev/null || die "redis-server has exited"
        sleep 1 &
        wait $! || true
    done
fi

# --- smoke: the same calls, checked ---------------------------------------------
fail() {
    say "SMOKE FAILED: $*"
    exit 1
}

# A receiver that prints one line per request: method, path, webhook-id, body.
cat >"$WORK/receiver.py" <<'PY'
import http.server
import sys


class Handler(http.server.BaseHTTPRequestHandler):
    def read_body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return body
                body += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def do_POST(self):
        body = self.read_body()
        print(self.command, self.path, "webhook-id=%s" % self.headers.get("webhook-id"),
              "body=%s" % body.decode("utf-8", "replace"), flush=True)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print("listening", server.server_address[1], flush=True)
server.serve_forever()
PY
python3 -u "$WORK/receiver.py" </dev/null >"$WORK/received.log" 2>&1 &
RECEIVER_PID=$!
RECEIVER_PORT=""
for ((i = 0; i < 100; i++)); do
    RECEIVER_PORT=$(sed -n 's/^listening \([0-9]*\)$/\1/p' "$WORK/received.log")
    [[ -n $RECEIVER_PORT ]] && break
    sleep 0.1
done
[[ -n $RECEIVER_PORT ]] || { show_log "$WORK/received.log"; fail "the receiver did not start"; }
say "receiver on http://127.0.0.1:$RECEIVER_PORT"

# call METHOD URL [BODY] [TOKEN]: the body goes to $WORK/answer, the status to stdout.
call() {
    local args=(-sS -o "$WORK/answer" -w '%{http_code}' --max-time 10 -X "$1" "$2")
    [[ -n ${3:-} ]] && args+=(-H 'Content-Type: application/json' --data-binary "$3")
    [[ -n ${4:-} ]] && args+=(-H "Authorization: Bearer $4")
    curl "${args[@]}" || true
}
# field NAME: a top-level field of the last answer.
field() {
    python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$WORK/answer" "$1"
}
expect() {
    [[ $1 == "$2" ]] || fail "$3: HTTP $1, expected $2: $(cat "$WORK/answer" 2>/dev/null)"
}
# Subscribers that replica $1 knows on the topic.
subscribers_on() {
    local status
    status=$(call GET "$1/v1/topics/smoke" "" "$ADMIN_TOKEN")
    [[ $status == 200 ]] || { echo 0; return; }
    python3 -c 'import json, sys; print(len(json.load(open(sys.argv[1]))["subscribers"]))' "$WORK/answer"
}
# How many times message $1 reached the receiver.
received() {
    grep -c -- "webhook-id=$1 " "$WORK/received.log" || true
}
# Waits up to $1 seconds for message $2 to reach the receiver.
wait_delivery() {
    local tenths=$(($1 * 10))
    until (($(received "$2") > 0)); do
        ((tenths-- > 0)) || return 1
        sleep 0.1
    done
}
# "replica delivering" of each live replica, one per line.
census() {
    local n pid
    for ((n = 1; n <= REPLICAS; n++)); do
        pid=${BROKER_PIDS[n - 1]}
        [[ -n $pid ]] || continue
        curl -fsS --max-time 5 "${URLS[n - 1]}/healthz" | python3 -c \
            'import json, sys; h = json.load(sys.stdin); print(sys.argv[1], h["replica"], h["delivering"])' "$n" ||
            true
    done
}
# Waits up to $1 seconds until exactly one live replica delivers; prints its number.
the_deliverer() {
    local tenths=$(($1 * 10)) lines
    while :; do
        lines=$(census) || true
        if [[ $(awk '{ s += $3 } END { print s + 0 }' <<<"$lines") == 1 ]]; then
            awk '$3 == 1 { print $1 }' <<<"$lines"
            return 0
        fi
        ((tenths-- > 0)) || { say "$lines"; return 1; }
        sleep 0.1
    done
}

say "1. publisher and subscriber registered on broker 1"
status=$(call POST "$B1/v1/topics/smoke/publishers" '{"name":"smoke"}' "$ADMIN_TOKEN")
expect "$status" 201 "register a publisher on broker 1"
TOKEN=$(field token)
status=$(call POST "$B1/v1/topics/smoke/subscribers" \
    "{\"url\":\"http://127.0.0.1:$RECEIVER_PORT/hooks/smoke\"}" "$ADMIN_TOKEN")
expect "$status" 201 "register a subscriber on broker 1"
SUBSCRIBER=$(field id)
say "   $SUBSCRIBER"

say "2. brokers 2 and 3 know the subscriber"
for ((i = 0; ; i++)); do
    [[ $(subscribers_on "$B2") == 1 && $(subscribers_on "$B3") == 1 ]] && break
    ((i < 50)) || fail "brokers 2 and 3 did not learn of the subscriber within 5 s"
    sleep 0.1
done

say "3. published on broker 2"
status=$(call POST "$B2/v1/topics/smoke/messages" "{\"smoke\":\"$RANDOM$RANDOM\"}" "$TOKEN")
expect "$status" 202 "publish on broker 2"
MESSAGE=$(field id)
say "   $MESSAGE, offset $(field offset)"

say "4. delivered once"
wait_delivery 15 "$MESSAGE" || fail "$MESSAGE did not reach the receiver within 15 s"
sleep 1
count=$(received "$MESSAGE")
((count == 1)) || fail "$MESSAGE was delivered $count times"
grep -- "webhook-id=$MESSAGE " "$WORK/received.log" | sed 's/^/   /' >&2

say "5. one replica delivers it (/healthz \"delivering\")"
deliverer=$(the_deliverer 5) || fail "not exactly one replica delivers the subscriber"
census | awk '{ printf "   broker %s (replica %s): delivering %s\n", $1, $2, $3 }' >&2

say "6. broker $deliverer stopped with SIGTERM; another takes the subscriber over"
pid=${BROKER_PIDS[deliverer - 1]}
kill -TERM "$pid"
wait_gone "$pid" 30 || fail "broker $deliverer did not exit within 30 s of SIGTERM"
wait "$pid" 2>/dev/null && code=0 || code=$?
BROKER_PIDS[deliverer - 1]=""
((code == 0)) || { show_log "$WORK/broker-$deliverer.log"; fail "broker $deliverer exited with $code"; }
grep -q 'handed to the other replicas' "$WORK/broker-$deliverer.log" ||
    { show_log "$WORK/broker-$deliverer.log"; fail "broker $deliverer did not say it handed its share back"; }
other=1
[[ $other == "$deliverer" ]] && other=2
status=$(call POST "${URLS[other - 1]}/v1/topics/smoke/messages" '{"smoke":"after"}' "$TOKEN")
expect "$status" 202 "publish on broker $other"
MESSAGE=$(field id)
# Well under the lease TTL: the hand-over, not the lease's expiry.
wait_delivery 10 "$MESSAGE" || fail "$MESSAGE (published after the stop) did not arrive within 10 s"
deliverer=$(the_deliverer 5) || fail "no single replica took the subscriber over"
say "   $MESSAGE delivered; broker $deliverer delivers now"

say "OK"
