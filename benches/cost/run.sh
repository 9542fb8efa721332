#!/usr/bin/env bash
# Instructions per request (callgrind): what weir's user space spends on one proxied request
# and on one direct `respond` answer, in instructions, which a slow or busy machine does not move.
# Usage: bash benches/cost/run.sh   (knobs and how to read the output: README.md beside this)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
ROOT=$PWD

N1=${N1:-2000}             # requests in the short run
N2=${N2:-32000}            # requests in the long run; the difference is what is measured
WARMUP=${WARMUP:-1000}     # requests before counting starts
CASES=${CASES:-"proxied respond"}
CONNS=${CONNS:-1}          # connections the requests are spread over, one in flight on each
UPSTREAM_ADDR=${UPSTREAM_ADDR:-127.0.0.1:18100}
WEIR_ADDR=${WEIR_ADDR:-127.0.0.1:18180}
ADMIN_ADDR=${ADMIN_ADDR:-127.0.0.1:19981}
OUT_DIR=${OUT_DIR:-$ROOT/target/cost-bench}

log() { printf '[cost] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[[ $N1 =~ ^[1-9][0-9]*$ && $N2 =~ ^[1-9][0-9]*$ && $WARMUP =~ ^[1-9][0-9]*$ ]] && ((N2 > N1)) \
  || die "N1, N2 and WARMUP must be positive integers, N2 > N1"
[[ $CONNS =~ ^[1-9][0-9]*$ ]] || die "CONNS must be a positive integer"
for c in $CASES; do [[ $c == proxied || $c == respond ]] || die "unknown case '$c' (proxied respond)"; done

# --- 1. tools --------------------------------------------------------------
need=()
command -v valgrind >/dev/null || need+=(valgrind)
command -v taskset >/dev/null || need+=(util-linux)
command -v python3 >/dev/null || need+=(python3)
if ((${#need[@]})); then
  log "installing: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# --- 2. binaries -----------------------------------------------------------
# Two invocations, not one: built beside the example, weir would get the features the
# dev-dependencies turn on (tokio's test-util, whose clock the timer driver locks on every read),
# which the shipped binary (`cargo build --release --bin weir`) does not have.
if [[ -z ${UPSTREAM_BIN:-} ]]; then
  log "cargo build --release --example bench-upstream"
  cargo build --release --example bench-upstream
fi
if [[ -z ${WEIR_BIN:-} ]]; then
  log "cargo build --release --bin weir"
  cargo build --release --bin weir
fi
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
UPSTREAM_BIN=${UPSTREAM_BIN:-$TARGET_DIR/release/examples/bench-upstream}
WEIR_BIN=${WEIR_BIN:-$TARGET_DIR/release/weir}
[[ -x $UPSTREAM_BIN ]] || die "no upstream binary at $UPSTREAM_BIN"
[[ -x $WEIR_BIN ]] || die "no weir binary at $WEIR_BIN"

# --- process bookkeeping ---------------------------------------------------
TMP=$(mktemp -d /tmp/weir-cost.XXXXXX)
UPSTREAM_PID=              # the upstream, for the whole run
WEIR_PID=                  # weir under callgrind while it runs (cleared once reaped)

# shellcheck source=../procs.sh
source "$ROOT/benches/procs.sh"   # stop_pid, port_busy, proc_tree, cpu_ticks, rss_kib
cleanup() {
  trap - EXIT INT TERM
  [[ -n $WEIR_PID ]] && stop_pid "$WEIR_PID"
  [[ -n $UPSTREAM_PID ]] && stop_pid "$UPSTREAM_PID"
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'log interrupted; exit 130' INT TERM

for a in "$UPSTREAM_ADDR" "$WEIR_ADDR" "$ADMIN_ADDR"; do
  port_busy "$a" && die "$a is already in use; stop whatever listens there or move it (see README.md)"
done

# --- 3. configs --------------------------------------------------------------
# proxied: benches/load/weir.toml on this script's ports: one catch-all route to one upstream,
# every other key at its default. respond: one catch-all direct response with the upstream's
# body. Both: no access log (RUST_LOG=warn). weir watches its config's folder, so the configs
# get one of their own: the logs written beside them would wake the watch on every line.
mkdir "$TMP/conf"
common() {
  cat <<EOF
[admin]
listen = "$ADMIN_ADDR"

[[listeners]]
name = "main"
listen = "$WEIR_ADDR"

[[routes]]
name = "bench"
EOF
}
{ common; printf 'upstream = "bench"\n\n[upstreams.bench]\nendpoints = ["%s"]\n' "$UPSTREAM_ADDR"; } \
  >"$TMP/conf/proxied.toml"
{ common; printf 'respond = { status = 200, body = "ok" }\n'; } >"$TMP/conf/respond.toml"

# --- 4. runs -----------------------------------------------------------------
# The upstream and the client share cpu0; weir runs alone on cpu1 (the load bench's layout),
# so it sizes its runtime to one core and runs current-thread, as a pinned sidecar does.
taskset -c 0 "$UPSTREAM_BIN" --listen "$UPSTREAM_ADDR" >"$TMP/upstream.log" 2>&1 &
UPSTREAM_PID=$!
taskset -c 0 python3 benches/cost/client.py "$UPSTREAM_ADDR" 1 >/dev/null \
  || { cat "$TMP/upstream.log" >&2; die "the upstream does not answer on $UPSTREAM_ADDR"; }

mkdir -p "$OUT_DIR"
declare -A IR=() MAIN=() SECS=()

# control WHAT: callgrind_control on the running weir (through vgdb), bounded in time.
control() {
  timeout 60 callgrind_control "$1" "$WEIR_PID" >>"$TMP/control.log" 2>&1 \
    || { cat "$TMP/control.log" >&2; die "callgrind_control $1 failed (vgdb needs ptrace)"; }
}

# requests CASE N: N requests on CONNS new connections; sets SECS[CASE/N].
requests() {
  local took
  took=$(taskset -c 0 python3 benches/cost/client.py "$WEIR_ADDR" "$2" / "$CONNS") \
    || { cat "$TMP/weir.$1.log" >&2; die "$1: the client failed ($2 requests)"; }
  SECS[$1/$2]=${took##* }
}

# run CASE: one weir under callgrind, one profile per thread. WARMUP requests, counters zeroed
# (startup and warm-up leave the count), N1 requests, a dump (which zeroes again), N2 requests,
# a dump; then SIGTERM. Sets IR[CASE/N] (all threads) and MAIN[CASE/N] (thread 1) for N1, N2.
run() {
  local case=$1 out="$OUT_DIR/callgrind.out.$1" i n k f
  rm -f "$out" "$out".* "$out"-*
  : >"$TMP/control.log"
  RUST_LOG=warn taskset -c 1 valgrind --tool=callgrind --separate-threads=yes \
    --callgrind-out-file="$out" "$WEIR_BIN" --config "$TMP/conf/$case.toml" >"$TMP/weir.$case.log" 2>&1 &
  WEIR_PID=$!
  for ((i = 0; ; i++)); do   # under callgrind weir takes a few seconds to listen
    kill -0 "$WEIR_PID" 2>/dev/null || { cat "$TMP/weir.$case.log" >&2; die "$case: weir exited at start"; }
    port_busy "$WEIR_ADDR" && break
    ((i < 1200)) || die "$case: weir does not listen on $WEIR_ADDR after 120 s"
    sleep 0.1
  done
  requests "$case" "$WARMUP"
  control --zero
  k=0
  for n in "$N1" "$N2"; do
    requests "$case" "$n"
    control --dump
    k=$((k + 1))
    [[ -f $out.$k-01 ]] || die "$case: callgrind wrote no $out.$k-01"
    MAIN[$case/$n]=$(awk '/^summary:/ { print $2; exit }' "$out.$k-01")
    IR[$case/$n]=$(awk '/^summary:/ { s += $2 } END { print s + 0 }' "$out.$k"-*)
    [[ -n ${MAIN[$case/$n]} ]] || die "$case: no summary in $out.$k-01"
    for f in "$out.$k"-*; do mv "$f" "$out.$n-${f##*-}"; done
    log "$case: $n requests in ${SECS[$case/$n]} s (client clock), ${IR[$case/$n]} Ir," \
      "${MAIN[$case/$n]} on thread 1"
  done
  # The client has closed its connection: SIGTERM drains at once and weir exits.
  kill -TERM "$WEIR_PID"
  for ((i = 0; i < 600; i++)); do kill -0 "$WEIR_PID" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$WEIR_PID" 2>/dev/null && die "$case: weir did not exit within 60 s of SIGTERM"
  local rc=0
  wait "$WEIR_PID" || rc=$?
  WEIR_PID=
  ((rc == 0)) || { cat "$TMP/weir.$case.log" >&2; die "$case: weir exited with $rc"; }
  rm -f "$out" "$out"-*   # what shutdown cost: not part of the figure
}

started=$SECONDS
for c in $CASES; do run "$c"; done

# --- 5. report -------------------------------------------------------------
{
  printf 'Instructions per request (callgrind, user space): %s\n' "$WEIR_BIN"
  if ((CONNS == 1)); then
    printf 'After %d requests of warm-up, runs of %d and %d sequential requests, each on one new\n' \
      "$WARMUP" "$N1" "$N2"
    printf 'keep-alive connection'
  else
    printf 'After %d requests of warm-up, runs of %d and %d requests, each over %d new keep-alive\n' \
      "$WARMUP" "$N1" "$N2" "$CONNS"
    printf 'connections with one request in flight on each'
  fi
  printf ': Ir/request = (Ir(%d) - Ir(%d)) / %d.\n' "$N2" "$N1" "$((N2 - N1))"
  printf 'Thread 1 runs the runtime (weir on one core); the other threads are the config file\n'
  printf 'watch, driven by the clock.\n\n'
  printf '| case | Ir/request | thread 1 Ir/request | Ir(%d) | Ir(%d) |\n|---|--:|--:|--:|--:|\n' \
    "$N1" "$N2"
  for c in $CASES; do
    awk -v c="$c" -v n1="$N1" -v n2="$N2" -v a="${IR[$c/$N1]}" -v b="${IR[$c/$N2]}" \
      -v ma="${MAIN[$c/$N1]}" -v mb="${MAIN[$c/$N2]}" 'BEGIN {
      per = (b - a) / (n2 - n1)
      printf "| %s | %.0f | %.0f | %d | %d |\n", c, per, (mb - ma) / (n2 - n1), a, b }'
  done
} | tee "$OUT_DIR/results.md"
log "took $((SECONDS - started)) s; callgrind files and results.md in $OUT_DIR"
log "where the instructions go: callgrind_annotate --inclusive=yes $OUT_DIR/callgrind.out.proxied.$N2-01"
