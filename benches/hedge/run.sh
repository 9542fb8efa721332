#!/usr/bin/env bash
# Hedged requests against a long-tailed dependency, in one run: client latency (p50, p99,
# p99.9) and the extra load on the upstream, without hedging and with `after = "p95"`.
#
#   bash benches/hedge/run.sh
#
# Layout (all on 127.0.0.1): h2load (HTTP/1.1, per-request log) -> weir proxy (two routes over the same two endpoints:
# /plain to an upstream without hedging, /hedged to one with `[hedge] after = "p95"`) -> a
# second weir as the fake backend, two listeners (two endpoints), where 5 % of answers take
# 200 ms and the rest 2 ms (`delay = "table(95%: 2ms, 5%: 200ms)"`). The two targets are
# measured in interleaved rounds; the extra upstream load is the tries the proxy sent (answered
# or cancelled) over the client's requests, minus one. See benches/hedge/README.md.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-20}      # seconds per measured run
WARMUP=${WARMUP:-3}           # seconds of load before each run (the p95 needs recent tries)
CONNS=${CONNS:-8}             # h2load connections (closed loop, one request in flight on each)
OUT_DIR=${OUT_DIR:-$ROOT/target/hedge-bench}
# The fake backend's `fault` table: the dependency's latency shape.
FAKE_FAULT=${FAKE_FAULT:-'delay_percent = 100.0, delay = "table(95%: 2ms, 5%: 200ms)"'}

PROXY=127.0.0.1:18401
PROXY_ADMIN=127.0.0.1:19941
FAKE_A=127.0.0.1:18411
FAKE_B=127.0.0.1:18412
FAKE_ADMIN=127.0.0.1:19942

log() { printf '[hedge] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[[ $ROUNDS =~ ^[1-9][0-9]*$ && $DURATION =~ ^[1-9][0-9]*$ && $WARMUP =~ ^[0-9]+$ ]] \
  || die "ROUNDS and DURATION must be positive integers, WARMUP a non-negative one"
[[ $CONNS =~ ^[1-9][0-9]*$ ]] || die "CONNS must be a positive integer"

# --- tools and binary ------------------------------------------------------
need=()
command -v h2load >/dev/null || need+=(nghttp2-client)
command -v curl >/dev/null || need+=(curl)
if ((${#need[@]})); then
  log "installing: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
if [[ -z ${WEIR_BIN:-} ]]; then
  log "cargo build --release --bin weir"
  cargo build --release --bin weir
fi
WEIR_BIN=${WEIR_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/weir}
[[ -x $WEIR_BIN ]] || die "no weir binary at $WEIR_BIN"

# --- processes -------------------------------------------------------------
TMP=$(mktemp -d /tmp/weir-hedge.XXXXXX)
STARTED=()
LOAD_PID=
# shellcheck source=../procs.sh
source "$ROOT/benches/procs.sh"   # stop_pid, port_busy, proc_tree, cpu_ticks, rss_kib
cleanup() {
  trap - EXIT INT TERM
  local p
  [[ -n $LOAD_PID ]] && stop_pid "$LOAD_PID"
  for p in "${STARTED[@]}"; do stop_pid "$p"; done
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'log interrupted; exit 130' INT TERM

for a in $PROXY $PROXY_ADMIN $FAKE_A $FAKE_B $FAKE_ADMIN; do
  port_busy "$a" && die "$a is already in use; stop whatever listens there"
done

cat >"$TMP/fake.toml" <<EOF
# The long-tailed dependency (by default 5 % of answers take 200 ms, the rest 2 ms).
[admin]
listen = "$FAKE_ADMIN"
[[listeners]]
name = "a"
listen = "$FAKE_A"
[[listeners]]
name = "b"
listen = "$FAKE_B"
[[routes]]
name = "dep"
respond = { status = 200, body = "ok" }
fault = { $FAKE_FAULT }
EOF
cat >"$TMP/proxy.toml" <<EOF
[admin]
listen = "$PROXY_ADMIN"
[[listeners]]
listen = "$PROXY"
[[routes]]
name = "plain"
match = { path_prefix = "/plain" }
upstream = "plain"
[[routes]]
name = "hedged"
match = { path_prefix = "/hedged" }
upstream = "hedged"
[upstreams.plain]
endpoints = ["$FAKE_A", "$FAKE_B"]
[upstreams.hedged]
endpoints = ["$FAKE_A", "$FAKE_B"]
[upstreams.hedged.hedge]
after = "p95"
max = 1
EOF

start() {      # start NAME PROBE_URL CMD...
  local name=$1 url=$2; shift 2
  RUST_LOG=warn "$@" >"$TMP/$name.log" 2>&1 &
  STARTED+=("$!")
  local pid=$! i
  for ((i = 0; i < 100; i++)); do
    kill -0 "$pid" 2>/dev/null || { cat "$TMP/$name.log" >&2; die "$name exited at start"; }
    [[ $(curl -s -o /dev/null -m 1 -w '%{http_code}' "$url") == 200 ]] && return 0
    sleep 0.1
  done
  cat "$TMP/$name.log" >&2; die "$name did not answer 200 on $url within 10 s"
}
start fake "http://$FAKE_A/" "$WEIR_BIN" --config "$TMP/fake.toml"
start proxy "http://$PROXY/plain" "$WEIR_BIN" --config "$TMP/proxy.toml"

# h2load's per-request log (start, status, microseconds) -> "requests p50 p99 p99.9 errors".
# wrk is not used here: its latency histogram disagrees with its own request count when most
# answers take 0.3 ms and some 200 ms (Little's law: 8 connections at 9,000 requests/s is a
# 0.9 ms mean, where wrk reported 34 ms).
summary() {
  python3 - "$1" <<'EOF'
import sys
lat, errors = [], 0
for line in open(sys.argv[1]):
    _, status, us = line.split("\t")[:3]
    lat.append(int(us))
    errors += not status.startswith("2")
lat.sort()
q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] if lat else 0
print(len(lat), q(0.50), q(0.99), q(0.999), errors)
EOF
}

# Tries the proxy has sent to upstream $1 so far, answered or cancelled
# (weir_upstream_attempts_total over every outcome): a hedge that lost still loaded the upstream.
upstream_tries() {
  curl -s -m 5 "http://$PROXY_ADMIN/metrics" \
    | awk -v u="$1" '/^weir_upstream_attempts_total\{/ && index($0, "upstream=\"" u "\"") { s += $NF }
                     END { printf "%d\n", s }'
}
# weir_hedges_total{upstream="hedged",result=$1} on the proxy.
hedges() {
  curl -s -m 5 "http://$PROXY_ADMIN/metrics" \
    | awk -v r="$1" '/^weir_hedges_total\{/ && index($0, "result=\"" r "\"") { s += $NF }
                     END { printf "%d\n", s }'
}

mkdir -p "$OUT_DIR"
RAW=$OUT_DIR/raw.tsv
printf 'round\ttarget\trequests\tp50_us\tp99_us\tp999_us\terrors\tupstream_tries\thedges_won\thedges_lost\tskipped_budget\n' >"$RAW"
for ((r = 1; r <= ROUNDS; r++)); do
  for t in plain hedged; do
    url="http://$PROXY/$t"
    ((WARMUP > 0)) && h2load --h1 -c"$CONNS" -D "$WARMUP" "$url" >/dev/null 2>&1
    b0=$(upstream_tries "$t"); w0=$(hedges won); l0=$(hedges lost); s0=$(hedges skipped_budget)
    rm -f "$TMP/requests.log"
    h2load --h1 -c"$CONNS" -D "$DURATION" --log-file="$TMP/requests.log" "$url" >"$TMP/h2load.out" 2>&1 &
    LOAD_PID=$!
    wait "$LOAD_PID" || { LOAD_PID=; cat "$TMP/h2load.out" >&2; die "h2load failed against $t"; }
    LOAD_PID=
    b1=$(upstream_tries "$t"); w1=$(hedges won); l1=$(hedges lost); s1=$(hedges skipped_budget)
    # h2load's own failures (connect errors, timeouts: its "failed") count as errors too.
    failed=$(awk '/^requests:/ { print $10 }' "$TMP/h2load.out")
    # shellcheck disable=SC2046
    set -- $(summary "$TMP/requests.log")
    printf '%d\t%s\t%s\t%s\t%s\t%s\t%d\t%d\t%d\t%d\t%d\n' "$r" "$t" "$1" "$2" "$3" "$4" \
      $(($5 + ${failed:-0})) $((b1 - b0)) $((w1 - w0)) $((l1 - l0)) $((s1 - s0)) >>"$RAW"
    log "round $r $t: $1 requests, p50 $2 us, p99 $3 us, p99.9 $4 us, upstream tries $((b1 - b0))"
  done
done

python3 - "$RAW" "$CONNS" "$DURATION" "$ROUNDS" >"$OUT_DIR/results.md" <<'EOF'
import csv, statistics, sys
raw, conns, duration, rounds = sys.argv[1:]
rows = list(csv.DictReader(open(raw), delimiter="\t"))
def med(t, k):
    return statistics.median(float(r[k]) for r in rows if r["target"] == t)
def total(t, k):
    return sum(int(r[k]) for r in rows if r["target"] == t)
print(f"# Hedged requests: a dependency where 5 % of answers take 200 ms, the rest 2 ms\n")
print(f"h2load (HTTP/1.1), {conns} connections, {rounds} interleaved rounds of {duration} s; medians over rounds.\n")
print("| | requests | p50 | p99 | p99.9 | extra upstream requests | hedges won / lost / skipped (budget) | errors |")
print("|---|--:|--:|--:|--:|--:|--:|--:|")
for t in ("plain", "hedged"):
    extra = total(t, "upstream_tries") / max(total(t, "requests"), 1) - 1
    print(f"| {t} | {total(t, 'requests')} | {med(t, 'p50_us') / 1000:.2f} ms | "
          f"{med(t, 'p99_us') / 1000:.2f} ms | {med(t, 'p999_us') / 1000:.2f} ms | "
          f"{extra * 100:+.1f} % | {total(t, 'hedges_won')} / {total(t, 'hedges_lost')} / "
          f"{total(t, 'skipped_budget')} | {total(t, 'errors')} |")
print()
for k, name in (("p99_us", "p99"), ("p999_us", "p99.9"), ("p50_us", "p50")):
    print(f"- hedged ÷ plain {name}: {med('hedged', k) / med('plain', k):.3f}")
EOF
cat "$OUT_DIR/results.md"
log "results in $OUT_DIR/results.md (raw: $RAW)"
