#!/usr/bin/env bash
# gRPC load benchmark: unary gRPC calls through weir against the same POST as plain HTTP/2
# through the same weir (the same-run baseline), and against the upstream hit directly.
# Usage: bash benches/load/grpc.sh   (knobs and how to read the output: README.md, "gRPC")
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
ROOT=$PWD

# weir-base-*: WEIR_BASE_BIN, a second weir build on the same config, to compare two builds.
DEFAULT_TARGETS="direct weir-h2 weir-grpc${WEIR_BASE_BIN:+ weir-base-h2 weir-base-grpc}"
TARGETS=${TARGETS:-$DEFAULT_TARGETS}
CONNS=${CONNS:-"16"}        # h2load clients (-c), one HTTP/2 connection each; a list: one level each
STREAMS=${STREAMS:-8}       # concurrent streams per connection (h2load -m)
RATE=${RATE:-}              # calls/s in all (h2load --rps RATE/CONNS per client); empty: as fast as it goes
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-8}     # seconds per measured run
WARMUP=${WARMUP:-2}         # seconds of unmeasured load before each run
OUT_DIR=${OUT_DIR:-$ROOT/target/load-bench-grpc}
PROXY_CPUS=${PROXY_CPUS:-1}  # taskset CPU list of weir (h2load and the upstream stay on cpu0)
# glibc malloc tunables for weir, as weir's image sets them (deploy/Dockerfile); set empty for
# glibc's defaults. WEIR_BASE_GLIBC_TUNABLES: weir-base's.
WEIR_GLIBC_TUNABLES=${WEIR_GLIBC_TUNABLES-glibc.malloc.tcache_count=256}
WEIR_BASE_GLIBC_TUNABLES=${WEIR_BASE_GLIBC_TUNABLES-$WEIR_GLIBC_TUNABLES}

# Ports of their own (neither run.sh's nor benches/cost's), so that the benches never meet.
UPSTREAM_ADDR=127.0.0.1:18200
WEIR_ADDR=127.0.0.1:18280
WEIR_BASE_ADDR=127.0.0.1:18283
declare -A ADMIN=([weir]=127.0.0.1:19921 [weir-base]=127.0.0.1:19922)
CALL_PATH=/weir.bench.Echo/Unary
# target -> the process that serves it, its address, and the request's content-type.
declare -A SERVER=([direct]=upstream [weir-h2]=weir [weir-grpc]=weir
                   [weir-base-h2]=weir-base [weir-base-grpc]=weir-base)
declare -A ADDR=([upstream]=$UPSTREAM_ADDR [weir]=$WEIR_ADDR [weir-base]=$WEIR_BASE_ADDR)
declare -A CTYPE=([direct]=application/grpc [weir-h2]=application/octet-stream
                  [weir-grpc]=application/grpc [weir-base-h2]=application/octet-stream
                  [weir-base-grpc]=application/grpc)
KNOWN="direct weir-h2 weir-grpc weir-base-h2 weir-base-grpc"
declare -A PID=()          # process (upstream, weir, weir-base) -> PID
STARTED=()                 # every server PID this script started and has not reaped yet
LOAD_PID=                  # the measured h2load while it runs

log() { printf '[grpc] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
has() { [[ " $TARGETS " == *" $1 "* ]]; }
uses_weir() { has weir-h2 || has weir-grpc; }
uses_weir_base() { has weir-base-h2 || has weir-base-grpc; }

for t in $TARGETS; do [[ -n ${SERVER[$t]:-} ]] || die "unknown target '$t' ($KNOWN)"; done
[[ $ROUNDS =~ ^[1-9][0-9]*$ && $DURATION =~ ^[1-9][0-9]*$ && $WARMUP =~ ^[0-9]+$ ]] \
  || die "ROUNDS and DURATION must be positive integers, WARMUP a non-negative one"
for c in $CONNS; do [[ $c =~ ^[1-9][0-9]*$ ]] || die "CONNS must be positive integers (got '$c')"; done
[[ $STREAMS =~ ^[1-9][0-9]*$ ]] || die "STREAMS must be a positive integer (got '$STREAMS')"
if [[ -n $RATE ]]; then
  [[ $RATE =~ ^[1-9][0-9]*$ ]] || die "RATE must be a positive integer (got '$RATE')"
  for c in $CONNS; do ((RATE >= c)) || die "RATE ($RATE) must be at least CONNS ($c): --rps is per client"; done
fi
[[ $PROXY_CPUS =~ ^[0-9]+([,-][0-9]+)*$ ]] || die "PROXY_CPUS must be a taskset CPU list (got '$PROXY_CPUS')"
[[ -n ${TARGETS// /} && -n ${CONNS// /} ]] || die "TARGETS and CONNS must not be empty"

# --- 1. tools --------------------------------------------------------------
need=()
command -v h2load >/dev/null || need+=(nghttp2-client)
command -v taskset >/dev/null || need+=(util-linux)
command -v ps >/dev/null || need+=(procps)
command -v curl >/dev/null || need+=(curl)
if ((${#need[@]})); then
  log "installing: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
curl --version | grep -qw HTTP2 || die "curl lacks HTTP/2 support (needed for the readiness checks)"

# --- 2. binaries -----------------------------------------------------------
# Two invocations, not one, as in run.sh: built beside the example, weir would get the features
# the dev-dependencies turn on (tokio's test-util), which the shipped binary does not have.
if [[ -z ${UPSTREAM_BIN:-} ]]; then
  log "cargo build --release --example bench-upstream"
  cargo build --release --example bench-upstream
fi
if [[ -z ${WEIR_BIN:-} ]] && uses_weir; then
  log "cargo build --release --bin weir"
  cargo build --release --bin weir
fi
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
UPSTREAM_BIN=${UPSTREAM_BIN:-$TARGET_DIR/release/examples/bench-upstream}
WEIR_BIN=${WEIR_BIN:-$TARGET_DIR/release/weir}
[[ -x $UPSTREAM_BIN ]] || die "no upstream binary at $UPSTREAM_BIN"
if uses_weir; then [[ -x $WEIR_BIN ]] || die "no weir binary at $WEIR_BIN"; fi
if uses_weir_base; then [[ -x ${WEIR_BASE_BIN:-} ]] || die "weir-base-* needs WEIR_BASE_BIN"; fi

# --- process bookkeeping ---------------------------------------------------
TMP=$(mktemp -d /tmp/weir-grpc.XXXXXX)

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

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true


start() {      # start PROCESS CMD... ; run in background, record PID, wait for a 200 over h2c
  local s=$1 addr=${ADDR[$1]}; shift
  port_busy "$addr" && die "$addr is already in use; stop whatever listens there"
  "$@" >"$TMP/$s.log" 2>&1 &
  PID[$s]=$!; STARTED+=("$!")
  local i
  for ((i = 0; i < 100; i++)); do
    kill -0 "${PID[$s]}" 2>/dev/null || { cat "$TMP/$s.log" >&2; die "$s exited at start (log above)"; }
    [[ $(curl -s --http2-prior-knowledge -o /dev/null -m 1 -w '%{http_code}' "http://$addr/") == 200 ]] && return 0
    sleep 0.1
  done
  cat "$TMP/$s.log" >&2; die "$s did not answer 200 over h2c on $addr within 10 s"
}
stop() {       # stop PROCESS: stop it, forget its PID, wait for its port to close
  local s=$1 p keep=()
  [[ -n ${PID[$s]:-} ]] || return 0
  stop_pid "${PID[$s]}"
  # Reaped: forget the PID, so that cleanup never signals a process that later reuses it.
  for p in "${STARTED[@]}"; do [[ $p == "${PID[$s]}" ]] || keep+=("$p"); done
  STARTED=("${keep[@]}")
  PID[$s]=
  while port_busy "${ADDR[$s]}"; do sleep 0.1; done
}

# --- 3. configs, the request, the processes --------------------------------
# The one request message: compressed flag 0, length 7 (big-endian), protobuf {1: "hello"}.
printf '\x00\x00\x00\x00\x07\x0a\x05hello' >"$TMP/frame"
cp "$ROOT/benches/load/weir-grpc.toml" "$TMP/weir.toml"
sed "s/$WEIR_ADDR/$WEIR_BASE_ADDR/; s/${ADMIN[weir]}/${ADMIN[weir-base]}/" \
  "$ROOT/benches/load/weir-grpc.toml" >"$TMP/weir-base.toml"

start_weirs() {  # stop both weirs, start the ones the targets use (on PROXY_CPUS, alone there)
  stop weir; stop weir-base
  if uses_weir; then
    start weir env RUST_LOG=warn ${WEIR_GLIBC_TUNABLES:+GLIBC_TUNABLES=$WEIR_GLIBC_TUNABLES} \
      taskset -c "$PROXY_CPUS" "$WEIR_BIN" --config "$TMP/weir.toml"
  fi
  if uses_weir_base; then
    start weir-base env RUST_LOG=warn ${WEIR_BASE_GLIBC_TUNABLES:+GLIBC_TUNABLES=$WEIR_BASE_GLIBC_TUNABLES} \
      taskset -c "$PROXY_CPUS" "$WEIR_BASE_BIN" --config "$TMP/weir-base.toml"
  fi
  return 0
}
grpc_codes() {  # grpc_codes WEIR: "CANCELLED OTHER" from its weir_grpc_responses_total, or "- -"
  # CANCELLED: the streams h2load resets when a run ends (at most CONNS x STREAMS per run);
  # OTHER: any code but OK and CANCELLED, which no call of this bench should end with.
  curl -s -m 2 "http://${ADMIN[$1]}/metrics" | awk '
    /^weir_grpc_responses_total[{ ]/ { seen = 1
      if ($0 ~ /code="CANCELLED"/) c += $NF; else if ($0 !~ /code="OK"/) o += $NF }
    END { if (seen) printf "%d %d\n", c, o; else print "- -" }'
}

log "starting the upstream (h2c) on cpu0; weir runs on cpu $PROXY_CPUS"
start upstream taskset -c 0 "$UPSTREAM_BIN" --listen "$UPSTREAM_ADDR" --http2
start_weirs

# One call per target before any load: a 200, and for gRPC the trailer grpc-status: 0, which
# h2load does not look at (it counts HTTP statuses only).
for t in $TARGETS; do
  code=$(curl -s --http2-prior-knowledge -m 5 -o "$TMP/check.body" -D "$TMP/check.head" \
    -w '%{http_code}' -H "content-type: ${CTYPE[$t]}" -H 'te: trailers' \
    --data-binary @"$TMP/frame" "http://${ADDR[${SERVER[$t]}]}$CALL_PATH") || true
  [[ $code == 200 ]] || { cat "$TMP/check.head" >&2 || true; die "$t: one call answered '$code', not 200"; }
  if [[ ${CTYPE[$t]} == application/grpc ]]; then
    tr -d '\r' <"$TMP/check.head" | grep -qiE '^grpc-status: *0$' \
      || { cat "$TMP/check.head" >&2; die "$t: no trailer grpc-status: 0 (headers above)"; }
  fi
done
log "one call per target: 200$(has direct || has weir-grpc || has weir-base-grpc && echo ', grpc-status 0')"

# --- 4. rounds -------------------------------------------------------------
mkdir -p "$OUT_DIR"
RAW=$OUT_DIR/raw.tsv
printf 'round\tconns\tstreams\ttarget\tcalls\tseconds\tcalls_per_s\tmean_us\tsd_us\tmax_us\terrors\tcpu_us_per_call\tcpu_pct\trss_mib\n' >"$RAW"
GRPC_RAW=$TMP/grpc-codes.tsv   # round, conns, weir, its CANCELLED and other non-OK gRPC responses
: >"$GRPC_RAW"
TICK_US=$((1000000 / $(getconf CLK_TCK)))
n_runs=$(($(wc -w <<<"$CONNS") * $(wc -w <<<"$TARGETS")))
log "$ROUNDS rounds x $n_runs runs x $((WARMUP + DURATION)) s: about $((ROUNDS * n_runs * (WARMUP + DURATION + 1))) s"

measure() {    # measure ROUND CONNS TARGET -> one line of raw.tsv
  local r=$1 c=$2 t=$3 s=${SERVER[$3]} pid cpu0 cpu1 rss
  local args=(-t 1 -c "$c" -m "$STREAMS" ${RATE:+--rps $((RATE / c))} -H "content-type: ${CTYPE[$t]}"
              -H 'te: trailers' -d "$TMP/frame" "http://${ADDR[$s]}$CALL_PATH")
  ((WARMUP > 0)) && { taskset -c 0 h2load -D "$WARMUP" "${args[@]}" >"$TMP/warmup.out" 2>&1 \
    || { cat "$TMP/warmup.out" >&2; die "h2load (warm-up) failed against $t"; }; }
  pid=${PID[$s]}
  cpu0=$(cpu_ticks "$pid")
  taskset -c 0 h2load -D "$DURATION" "${args[@]}" >"$TMP/h2load.out" 2>&1 &
  LOAD_PID=$!
  sleep "$(awk -v d="$DURATION" 'BEGIN {print (d > 2 ? d - 1 : d / 2)}')"
  rss=$(rss_kib "$pid")   # while the connections are still open
  wait "$LOAD_PID" || { LOAD_PID=; cat "$TMP/h2load.out" >&2; die "h2load failed against $t"; }
  LOAD_PID=
  cpu1=$(cpu_ticks "$pid")
  grep -q '^status codes:' "$TMP/h2load.out" || { cat "$TMP/h2load.out" >&2; die "no summary from h2load"; }
  # finished in 5.00s, 41235.20 req/s, 1.62MB/s
  # requests: 206176 total, 206304 started, 206176 done, 206176 succeeded, 0 failed, 0 errored, 0 timeout
  # status codes: 206176 2xx, 0 3xx, 0 4xx, 0 5xx
  # time for request:      123us      4.56ms       612us       201us    70.12%
  awk -v r="$r" -v c="$c" -v m="$STREAMS" -v t="$t" -v dcpu=$(((cpu1 - cpu0) * TICK_US)) -v rss="$rss" \
      -v direct="$([[ $t == direct ]] && echo 1 || echo 0)" '
    function us(v) {   # h2load time: 812us, 1.23ms, 2.01s
      if (v ~ /us$/) return v + 0; if (v ~ /ms$/) return 1000 * v; if (v ~ /s$/) return 1e6 * v; return v + 0
    }
    /^finished in/ { secs = $3 + 0 }
    /^requests:/ { ok = $8; failed = $10; errored = $12; timeout = $14 }
    /^status codes:/ { s2 = $3; other = $5 + $7 + $9 }
    /^time for request:/ { min = us($4); max = us($5); mean = us($6); sd = us($7) }
    END {
      err = failed + errored + timeout + other + (ok - s2 > 0 ? ok - s2 : 0)
      cpu = direct ? "-" : (s2 > 0 ? sprintf("%.2f", dcpu / s2) : "-")
      pct = direct ? "-" : sprintf("%.0f", 100 * dcpu / (secs * 1e6))
      mem = direct ? "-" : sprintf("%.1f", rss / 1024)
      printf "%d\t%d\t%d\t%s\t%d\t%.3f\t%.0f\t%.0f\t%.0f\t%.0f\t%d\t%s\t%s\t%s\n", r, c, m, t, s2, secs,
        s2 / secs, mean, sd, max, err, cpu, pct, mem
    }' "$TMP/h2load.out" | tee -a "$RAW" >&2
}

for ((round = 1; round <= ROUNDS; round++)); do
  for c in $CONNS; do
    start_weirs   # fresh weirs: each RSS figure and gRPC count belongs to its own level
    for t in $TARGETS; do measure "$round" "$c" "$t"; done
    for s in weir weir-base; do
      [[ -n ${PID[$s]:-} ]] && printf '%d\t%d\t%s\t%s\n' "$round" "$c" "$s" "$(grpc_codes "$s")" >>"$GRPC_RAW"
    done
  done
done
stop weir; stop weir-base

# --- 5. report -------------------------------------------------------------
{
  echo "# weir gRPC load benchmark"
  echo
  echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, $(uname -r); rounds=$ROUNDS, duration=${DURATION}s," \
       "warm-up=${WARMUP}s; streams per connection=$STREAMS;" \
       "$([[ -n $RATE ]] && echo "rate=$RATE calls/s (h2load --rps RATE/CONNS per client);" || echo "closed loop (no rate limit);")" \
       "weir on cpu $PROXY_CPUS; $(h2load --version | head -1)."
  echo "weir: $WEIR_BIN$(uses_weir_base && echo "; weir-base: $WEIR_BASE_BIN")." \
       "GLIBC_TUNABLES of weir: ${WEIR_GLIBC_TUNABLES:-glibc defaults}$(uses_weir_base && echo "; of weir-base: ${WEIR_BASE_GLIBC_TUNABLES:-glibc defaults}")."
  echo "Medians over rounds (RSS: max; errors: total). Only comparable within this run: read the ratios."
  python3 - "$RAW" "$TARGETS" "$GRPC_RAW" "$RATE" <<'EOF'
import csv, statistics as st, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
order = sys.argv[2].split()
rate = int(sys.argv[4]) if sys.argv[4] else None
groups = {}
for r in rows:
    groups.setdefault((int(r["conns"]), r["target"]), []).append(r)
conns = sorted({k[0] for k in groups})
streams = rows[0]["streams"] if rows else "-"
def med(rs, k):
    v = [float(r[k]) for r in rs if r[k] != "-"]
    return st.median(v) if v else None
def fmt(x, spec):
    return "-" if x is None else format(x, spec)
def ratio(a, b):
    return None if a is None or not b else a / b
def baseline(t):  # the plain-h2 target of the same weir build, for a gRPC target
    return t.replace("-grpc", "-h2") if t.endswith("-grpc") else None
cpu_of = {(int(r["conns"]), r["target"], r["round"]): r["cpu_us_per_call"] for r in rows}
def paired(c, t):  # "min–max" over rounds of CPU µs/call ÷ the baseline's in the same round
    b = baseline(t)
    v = [float(x) / float(cpu_of[c, b, r]) for (cc, tt, r), x in cpu_of.items()
         if cc == c and tt == t and x != "-" and cpu_of.get((c, b, r), "-") not in ("-", "0.00")] if b else []
    return f"{min(v):.2f}–{max(v):.2f}" if v else "-"
stats = {}
for (c, t), rs in groups.items():
    rss = [float(r["rss_mib"]) for r in rs if r["rss_mib"] != "-"]
    stats[c, t] = dict(rps=med(rs, "calls_per_s"), mean=med(rs, "mean_us"), sd=med(rs, "sd_us"),
                       max=med(rs, "max_us"), cpu=med(rs, "cpu_us_per_call"), pct=med(rs, "cpu_pct"),
                       rss=max(rss) if rss else None, err=sum(int(r["errors"]) for r in rs))

print(f"\n## Unary calls: h2load → (weir →) upstream, {streams} streams per connection\n")
print("| target | conns | calls/s | ×direct | ×h2 | mean µs | sd µs | max µs | CPU µs/call | CPU ×h2 | per round | CPU % | RSS MiB | errors |")
print("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
for c in conns:
    d = stats.get((c, "direct"), {})
    for t in order:
        s = stats.get((c, t))
        if not s:
            continue
        b = stats.get((c, baseline(t)), {}) if baseline(t) else {}
        print(f"| {t} | {c} | {fmt(s['rps'], ',.0f')} | {fmt(ratio(s['rps'], d.get('rps')), '.2f')} "
              f"| {fmt(ratio(s['rps'], b.get('rps')), '.2f')} "
              f"| {fmt(s['mean'], '.0f')} | {fmt(s['sd'], '.0f')} | {fmt(s['max'], '.0f')} "
              f"| {fmt(s['cpu'], '.2f')} | {fmt(ratio(s['cpu'], b.get('cpu')), '.3f')} | {paired(c, t)} "
              f"| {fmt(s['pct'], '.0f')} | {fmt(s['rss'], '.1f')} | {s['err']} |")

pairs = [(a, b) for a, b in (("weir-grpc", "weir-base-grpc"), ("weir-h2", "weir-base-h2")) if a in order and b in order]
if pairs:
    print("\n## Two builds: weir ÷ weir-base\n")
    print("| calls | conns | CPU µs/call weir | CPU µs/call weir-base | CPU ×base | calls/s ×base |")
    print("|---|--:|--:|--:|--:|--:|")
    for c in conns:
        for a, b in pairs:
            sa, sb = stats.get((c, a), {}), stats.get((c, b), {})
            print(f"| {a.split('-')[-1]} | {c} | {fmt(sa.get('cpu'), '.2f')} | {fmt(sb.get('cpu'), '.2f')} "
                  f"| {fmt(ratio(sa.get('cpu'), sb.get('cpu')), '.3f')} | {fmt(ratio(sa.get('rps'), sb.get('rps')), '.2f')} |")

if rate:
    short = [f"{t} at {c} conns ({s['rps']:,.0f})" for (c, t), s in sorted(stats.items())
             if s["rps"] is not None and s["rps"] < 0.97 * (rate // c) * c]
    print(f"\n- The rate asked for: {rate:,} calls/s. "
          + (f"Short of it by more than 3%, so not at the same load as the others: {', '.join(short)}."
             if short else "Every row kept it within 3%, so the CPU figures compare equal loads."))

codes = {}
for line in open(sys.argv[3]):
    r, c, w, cancelled, other = line.split()
    codes.setdefault(w, []).append((cancelled, other))
if codes:
    print()
    for w, ns in codes.items():
        if all(c == "-" for c, _ in ns):
            print(f"- {w}: no `weir_grpc_responses_total` on /metrics (no gRPC call went through it, or a build without the metric).")
            continue
        cancelled = sum(int(c) for c, _ in ns if c != "-")
        other = sum(int(o) for _, o in ns if o != "-")
        print(f"- {w}, `weir_grpc_responses_total` summed over rounds: {other} calls with a code other than OK and CANCELLED"
              f"{'' if other == 0 else ' (the gRPC rows are suspect)'}; {cancelled} CANCELLED, the calls still in flight"
              " when h2load ended a run (warm-ups included) and reset their streams.")
EOF
} >"$OUT_DIR/results.md"

echo
cat "$OUT_DIR/results.md"
log "wrote $OUT_DIR/results.md and $RAW"
