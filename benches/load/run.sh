#!/usr/bin/env bash
# End-to-end load benchmark: weir vs nginx vs HAProxy vs no proxy at all, proxying to an upstream
# and answering by themselves (direct response), at low and high connection counts.
# Usage: bash benches/load/run.sh   (knobs and how to read the output: README.md)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
ROOT=$PWD

TARGETS=${TARGETS:-"direct nginx haproxy weir nginx-direct hyper-direct weir-direct"}
CONNS=${CONNS:-"1 64 256"}
C1_TARGETS=${C1_TARGETS:-"direct nginx weir weir-base"}   # the ones of TARGETS measured at c=1
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-8}    # seconds per measured run
WARMUP=${WARMUP:-2}        # seconds of unmeasured load before each run
OUT_DIR=${OUT_DIR:-$ROOT/target/load-bench}
WORKERS=${WORKERS:-}       # weir's `workers` (weir and weir-direct); empty: the config's default
PROXY_CPUS=${PROXY_CPUS:-1}  # taskset CPU list of the proxies (wrk and the upstream stay on cpu0)
# glibc malloc tunables for weir (and the bare hyper server), as weir's image sets them
# (deploy/Dockerfile); set empty for glibc's defaults. WEIR_BASE_GLIBC_TUNABLES: weir-base's.
WEIR_GLIBC_TUNABLES=${WEIR_GLIBC_TUNABLES-glibc.malloc.tcache_count=256}
WEIR_BASE_GLIBC_TUNABLES=${WEIR_BASE_GLIBC_TUNABLES-$WEIR_GLIBC_TUNABLES}

UPSTREAM_ADDR=127.0.0.1:18000
# Proxy mode: wrk -> proxy -> upstream. Direct-response mode (the *-direct targets): wrk -> proxy,
# which answers by itself. `direct` is neither: wrk straight at the upstream.
declare -A ADDR=([direct]=$UPSTREAM_ADDR [weir]=127.0.0.1:18080
                 [nginx]=127.0.0.1:18081 [haproxy]=127.0.0.1:18082 [weir-base]=127.0.0.1:18083
                 [weir-direct]=127.0.0.1:18084 [nginx-direct]=127.0.0.1:18085
                 [weir-base-direct]=127.0.0.1:18086 [hyper-direct]=127.0.0.1:18087)
KNOWN="direct nginx haproxy weir weir-base nginx-direct hyper-direct weir-direct weir-base-direct"
declare -A PID=()          # target -> PID of its (top) process
STARTED=()                 # every server PID this script started and has not reaped yet
WRK_PID=                   # the measured wrk while it runs

log() { printf '[load] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
has() { [[ " $TARGETS " == *" $1 "* ]]; }
uses_nginx() { has nginx || has nginx-direct; }
uses_weir() { has weir || has weir-direct; }
uses_weir_base() { has weir-base || has weir-base-direct; }
level_targets() {  # level_targets CONNS -> the targets measured at that connection count
  local t
  for t in $TARGETS; do
    if [[ $1 != 1 || " $C1_TARGETS " == *" $t "* ]]; then printf '%s ' "$t"; fi
  done
}

for t in $TARGETS $C1_TARGETS; do [[ -n ${ADDR[$t]:-} ]] || die "unknown target '$t' ($KNOWN)"; done
[[ $ROUNDS =~ ^[1-9][0-9]*$ && $DURATION =~ ^[1-9][0-9]*$ && $WARMUP =~ ^[0-9]+$ ]] \
  || die "ROUNDS and DURATION must be positive integers, WARMUP a non-negative one"
for c in $CONNS; do [[ $c =~ ^[1-9][0-9]*$ ]] || die "CONNS must be positive integers (got '$c')"; done
[[ -z $WORKERS || $WORKERS =~ ^[0-9]+$ ]] || die "WORKERS must be a non-negative integer (got '$WORKERS')"
[[ $PROXY_CPUS =~ ^[0-9]+([,-][0-9]+)*$ ]] || die "PROXY_CPUS must be a taskset CPU list (got '$PROXY_CPUS')"
[[ -n ${TARGETS// /} && -n ${CONNS// /} ]] || die "TARGETS and CONNS must not be empty"

# --- 1. tools --------------------------------------------------------------
export PATH=$PATH:/usr/sbin:/sbin   # nginx and haproxy live in sbin
need=()
command -v wrk >/dev/null || need+=(wrk)
command -v taskset >/dev/null || need+=(util-linux)
command -v ps >/dev/null || need+=(procps)
command -v curl >/dev/null || need+=(curl)
has haproxy && ! command -v haproxy >/dev/null && need+=(haproxy)
if ((${#need[@]})) || { uses_nginx && ! command -v nginx >/dev/null; }; then
  log "installing: ${need[*]} $(uses_nginx && ! command -v nginx >/dev/null && echo nginx-light)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  ((${#need[@]})) && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  if uses_nginx && ! command -v nginx >/dev/null; then
    apt-get install -y -qq --no-install-recommends nginx-light >/dev/null 2>&1 \
      || apt-get install -y -qq --no-install-recommends nginx >/dev/null
  fi
fi

# --- 2. binaries -----------------------------------------------------------
# Two invocations, not one: built beside the example, weir would get the features the
# dev-dependencies turn on (tokio's test-util, whose clock the timer driver locks on every read),
# which the shipped binary (`cargo build --release --bin weir`) does not have.
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
# weir-base: another weir build (an earlier commit, say) on the same configs, to compare builds
# in one run: WEIR_BASE_BIN=/path/to/weir TARGETS="direct weir-base weir".
if uses_weir_base; then [[ -x ${WEIR_BASE_BIN:-} ]] || die "weir-base needs WEIR_BASE_BIN"; fi

# --- process bookkeeping ---------------------------------------------------
TMP=$(mktemp -d /tmp/weir-load.XXXXXX)

# shellcheck source=../procs.sh
source "$ROOT/benches/procs.sh"   # stop_pid, port_busy, proc_tree, cpu_ticks, rss_kib
cleanup() {
  trap - EXIT INT TERM
  local p
  [[ -n $WRK_PID ]] && stop_pid "$WRK_PID"
  for p in "${STARTED[@]}"; do stop_pid "$p"; done
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'log interrupted; exit 130' INT TERM

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true


start() {      # start TARGET LOGFILE CMD... ; run in background, record PID
  local t=$1 logf=$2; shift 2
  port_busy "${ADDR[$t]}" && die "${ADDR[$t]} is already in use; stop whatever listens there"
  "$@" >"$logf" 2>&1 &
  PID[$t]=$!; STARTED+=("$!")
  local i
  for ((i = 0; i < 100; i++)); do
    kill -0 "${PID[$t]}" 2>/dev/null || { cat "$logf" >&2; die "$t exited at start (log above)"; }
    [[ $(curl -s -o /dev/null -m 1 -w '%{http_code}' "http://${ADDR[$t]}/") == 200 ]] && return 0
    sleep 0.1
  done
  cat "$logf" >&2; die "$t did not answer 200 on ${ADDR[$t]} within 10 s"
}

# --- 3. configs and processes ----------------------------------------------
cat >"$TMP/report.lua" <<'EOF'
done = function(summary, latency, requests)
  local e = summary.errors
  local socket = e.connect + e.read + e.write + e.timeout
  io.write(string.format("RESULT %d %d %d %d %d %d %d\n", summary.requests, summary.duration,
    math.floor(latency:percentile(50)), math.floor(latency:percentile(99)),
    math.floor(latency:percentile(99.9)), e.status, socket))
end
EOF

nginx_conf() {  # nginx_conf TARGET HTTP_BLOCK_LINES... : one nginx instance, its files under $TMP/TARGET
  local t=$1 dir=$TMP/$1; shift
  mkdir -p "$dir"
  {
    cat <<EOF
worker_processes 1;
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
worker_rlimit_nofile 16384;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $dir/body;
  proxy_temp_path $dir/proxy;
  fastcgi_temp_path $dir/fastcgi;
  uwsgi_temp_path $dir/uwsgi;
  scgi_temp_path $dir/scgi;
  keepalive_timeout 60s;
  keepalive_requests 100000000;
EOF
    printf '  %s\n' "$@"
    echo "}"
  } >"$TMP/$t.conf"
}
nginx_conf nginx \
  "upstream bench { server $UPSTREAM_ADDR; keepalive 512; keepalive_requests 100000000; }" \
  "server {" \
  "  listen ${ADDR[nginx]};" \
  "  location / { proxy_pass http://bench; proxy_http_version 1.1; proxy_set_header Connection \"\"; }" \
  "}"
nginx_conf nginx-direct \
  "server {" \
  "  listen ${ADDR[nginx-direct]};" \
  "  location / { return 200 \"ok\"; }" \
  "}"

cat >"$TMP/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn 8000
defaults
  mode http
  option http-keep-alive
  http-reuse always
  maxconn 8000
  timeout connect 30s
  timeout client 30s
  timeout server 30s
frontend bench
  bind ${ADDR[haproxy]}
  default_backend bench
backend bench
  server up $UPSTREAM_ADDR
EOF

# weir and weir-direct run weir's configs, with `workers = WORKERS` in front when it is set.
for t in weir weir-direct; do
  { [[ -n $WORKERS ]] && echo "workers = $WORKERS"; cat "$ROOT/benches/load/$t.toml"; } >"$TMP/$t.toml"
done

# weir-base and weir-base-direct run weir's own configs, moved to their own ports.
sed "s/${ADDR[weir]}/${ADDR[weir-base]}/; s/127.0.0.1:19901/127.0.0.1:19902/" \
  "$ROOT/benches/load/weir.toml" >"$TMP/weir-base.toml"
sed "s/${ADDR[weir-direct]}/${ADDR[weir-base-direct]}/; s/127.0.0.1:19903/127.0.0.1:19904/" \
  "$ROOT/benches/load/weir-direct.toml" >"$TMP/weir-base-direct.toml"

start_proxy() {  # start_proxy TARGET: on PROXY_CPUS (cpu1), alone with the other proxies (idle while not measured)
  local t=$1 cpus=$PROXY_CPUS
  case $t in
    nginx | nginx-direct)
      start "$t" "$TMP/$t.log" taskset -c "$cpus" nginx -p "$TMP/$t" -e "$TMP/$t/error.log" -c "$TMP/$t.conf" ;;
    haproxy) start haproxy "$TMP/haproxy.log" taskset -c "$cpus" haproxy -db -f "$TMP/haproxy.cfg" ;;
    weir | weir-direct)
      start "$t" "$TMP/$t.log" env RUST_LOG=warn ${WEIR_GLIBC_TUNABLES:+GLIBC_TUNABLES=$WEIR_GLIBC_TUNABLES} \
        taskset -c "$cpus" "$WEIR_BIN" --config "$TMP/$t.toml" ;;
    weir-base | weir-base-direct)
      start "$t" "$TMP/$t.log" env RUST_LOG=warn \
        ${WEIR_BASE_GLIBC_TUNABLES:+GLIBC_TUNABLES=$WEIR_BASE_GLIBC_TUNABLES} \
        taskset -c "$cpus" "$WEIR_BASE_BIN" --config "$TMP/$t.toml" ;;
    # The floor of a direct response served by hyper: the bench upstream itself (a bare hyper
    # server with no per-request work of its own) on the proxy core, with weir's tunables.
    hyper-direct)
      start "$t" "$TMP/$t.log" env ${WEIR_GLIBC_TUNABLES:+GLIBC_TUNABLES=$WEIR_GLIBC_TUNABLES} \
        taskset -c "$cpus" "$UPSTREAM_BIN" --listen "${ADDR[$t]}" ;;
  esac
}

# The upstream serves the whole run. The proxies are started afresh for every connection level
# of every round, so each RSS figure belongs to its own level (allocators keep what they once
# took: a proxy that just served 256 connections would still report their memory at 64).
log "starting upstream on cpu0; proxies run on cpu $PROXY_CPUS${WORKERS:+; weir workers = $WORKERS}"
start direct "$TMP/upstream.log" taskset -c 0 "$UPSTREAM_BIN" --listen "$UPSTREAM_ADDR"
stop_proxy() {  # stop_proxy TARGET
  local t=$1 p keep=()
  [[ -n ${PID[$t]:-} ]] || return 0
  for p in $(proc_tree "${PID[$t]}"); do kill "$p" 2>/dev/null || true; done
  wait "${PID[$t]}" 2>/dev/null || true
  # Reaped: forget the PID, so that cleanup never signals a process that later reuses it.
  for p in "${STARTED[@]}"; do [[ $p == "${PID[$t]}" ]] || keep+=("$p"); done
  STARTED=("${keep[@]}")
  PID[$t]=
  while port_busy "${ADDR[$t]}"; do sleep 0.1; done
}
start_proxies() {  # start_proxies TARGET... : stop every proxy, start those given
  local t
  for t in $KNOWN; do [[ $t == direct ]] || stop_proxy "$t"; done
  for t in "$@"; do [[ $t == direct ]] || start_proxy "$t"; done
  return 0
}

# --- 4. rounds -------------------------------------------------------------
mkdir -p "$OUT_DIR"
RAW=$OUT_DIR/raw.tsv
printf 'round\tconns\ttarget\trequests\tseconds\treq_per_s\tp50_us\tp99_us\tp999_us\terrors\tcpu_us_per_req\tcpu_pct\trss_mib\n' >"$RAW"
TICK_US=$((1000000 / $(getconf CLK_TCK)))
n_runs=0
for c in $CONNS; do
  level=$(level_targets "$c")
  [[ -n $level ]] || log "c=$c: no target of TARGETS is in C1_TARGETS ($C1_TARGETS); skipped"
  n_runs=$((n_runs + $(wc -w <<<"$level")))
done
log "$ROUNDS rounds x $n_runs runs x $((WARMUP + DURATION)) s: about $((ROUNDS * n_runs * (WARMUP + DURATION + 1))) s"

measure() {    # measure ROUND CONNS TARGET -> one line of raw.tsv
  local r=$1 c=$2 t=$3 url="http://${ADDR[$3]}/" pids cpu0 cpu1 rss out
  ((WARMUP > 0)) && taskset -c 0 wrk -t1 -c"$c" -d"${WARMUP}s" "$url" >/dev/null
  mapfile -t pids < <(proc_tree "${PID[$t]}")
  cpu0=$(cpu_ticks "${pids[@]}")
  taskset -c 0 wrk -t1 -c"$c" -d"${DURATION}s" --latency -s "$TMP/report.lua" "$url" >"$TMP/wrk.out" 2>&1 &
  WRK_PID=$!
  sleep "$(awk -v d="$DURATION" 'BEGIN {print (d > 2 ? d - 1 : d / 2)}')"
  rss=$(rss_kib "${pids[@]}")   # while the connections are still open
  wait "$WRK_PID" || { WRK_PID=; cat "$TMP/wrk.out" >&2; die "wrk failed against $t"; }
  WRK_PID=
  cpu1=$(cpu_ticks "${pids[@]}")
  out=$(grep '^RESULT ' "$TMP/wrk.out") || { cat "$TMP/wrk.out" >&2; die "no RESULT line from wrk"; }
  # shellcheck disable=SC2086
  set -- ${out#RESULT }   # requests duration_us p50 p99 p999 non2xx socket_errors
  awk -v r="$r" -v c="$c" -v t="$t" -v n="$1" -v d="$2" -v p50="$3" -v p99="$4" -v p999="$5" \
      -v err=$(($6 + $7)) -v dcpu=$(((cpu1 - cpu0) * TICK_US)) -v rss="$rss" -v direct="$([[ $t == direct ]] && echo 1 || echo 0)" \
    'BEGIN { s = d / 1e6
             cpu = direct ? "-" : (n > 0 ? sprintf("%.2f", dcpu / n) : "-")
             pct = direct ? "-" : sprintf("%.0f", 100 * dcpu / d)
             mem = direct ? "-" : sprintf("%.1f", rss / 1024)
             printf "%d\t%d\t%s\t%d\t%.3f\t%.0f\t%d\t%d\t%d\t%d\t%s\t%s\t%s\n", r, c, t, n, s, n / s, p50, p99, p999, err, cpu, pct, mem }' \
    | tee -a "$RAW" >&2
}

for ((round = 1; round <= ROUNDS; round++)); do
  for c in $CONNS; do
    level=$(level_targets "$c")
    [[ -n $level ]] || continue
    # shellcheck disable=SC2086
    start_proxies $level
    for t in $level; do measure "$round" "$c" "$t"; done
  done
done
start_proxies   # stop them all: the report below runs with nothing else of ours on cpu1

# --- 5. report -------------------------------------------------------------
{
  echo "# weir load benchmark"
  echo
  echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, $(uname -r); rounds=$ROUNDS, duration=${DURATION}s, warm-up=${WARMUP}s;" \
       "proxies on cpu $PROXY_CPUS;${WORKERS:+ weir workers=$WORKERS;}" \
       "$(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2)$(uses_nginx && echo ", $(nginx -v 2>&1 | sed 's/.*: //')")$(has haproxy && echo ", haproxy $(haproxy -v | head -1 | awk '{print $3}')")"
  echo "GLIBC_TUNABLES of weir: ${WEIR_GLIBC_TUNABLES:-glibc defaults}$(uses_weir_base && echo "; of weir-base: ${WEIR_BASE_GLIBC_TUNABLES:-glibc defaults}")."
  echo "Medians over rounds (RSS: max; errors: total). Only comparable within this run: read the ratios."
  python3 - "$RAW" "$TARGETS" <<'EOF'
import csv, statistics as st, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
order = sys.argv[2].split()
groups = {}
for r in rows:
    groups.setdefault((int(r["conns"]), r["target"]), []).append(r)
conns = sorted({k[0] for k in groups})
def med(rs, k):
    v = [float(r[k]) for r in rs if r[k] != "-"]
    return st.median(v) if v else None
def fmt(x, spec):
    return "-" if x is None else format(x, spec)
def ratio(a, b):
    return None if a is None or not b else a / b
def diff(a, b):
    return None if a is None or b is None else a - b
stats = {}
for (c, t), rs in groups.items():
    rss = [float(r["rss_mib"]) for r in rs if r["rss_mib"] != "-"]
    stats[c, t] = dict(rps=med(rs, "req_per_s"), p50=med(rs, "p50_us"), p99=med(rs, "p99_us"),
                       p999=med(rs, "p999_us"), cpu=med(rs, "cpu_us_per_req"), pct=med(rs, "cpu_pct"),
                       rss=max(rss) if rss else None, err=sum(int(r["errors"]) for r in rs))
proxied = [t for t in order if not t.endswith("-direct")]
answered = [t for t in order if t.endswith("-direct")]

if any((c, t) in stats for c in conns for t in proxied):
    print("\n## Proxied: wrk → proxy → upstream\n")
    print("| target | conns | req/s | ×direct | ×nginx | p50 µs | p99 µs | p99.9 µs | CPU µs/req | CPU ×nginx | CPU % | RSS MiB | errors |")
    print("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    for c in conns:
        d, n = stats.get((c, "direct"), {}), stats.get((c, "nginx"), {})
        for t in proxied:
            s = stats.get((c, t))
            if not s:
                continue
            proxy = t != "direct"
            print(f"| {t} | {c} | {fmt(s['rps'], ',.0f')} | {fmt(ratio(s['rps'], d.get('rps')), '.2f')} "
                  f"| {fmt(ratio(s['rps'], n.get('rps')) if proxy else None, '.2f')} "
                  f"| {fmt(s['p50'], '.0f')} | {fmt(s['p99'], '.0f')} | {fmt(s['p999'], '.0f')} "
                  f"| {fmt(s['cpu'], '.2f')} | {fmt(ratio(s['cpu'], n.get('cpu')) if proxy else None, '.2f')} "
                  f"| {fmt(s['pct'], '.0f')} | {fmt(s['rss'], '.1f')} | {s['err']} |")

if any((c, t) in stats for c in conns for t in answered):
    print("\n## Direct response: wrk → proxy, which answers by itself (weir `respond`, nginx `return 200`; hyper-direct: a bare hyper server, the floor under weir)\n")
    print("| target | conns | req/s | ×nginx-direct | p50 µs | p99 µs | p99.9 µs | CPU µs/req | CPU ×nginx-direct | CPU % | RSS MiB | errors |")
    print("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    for c in conns:
        n = stats.get((c, "nginx-direct"), {})
        for t in answered:
            s = stats.get((c, t))
            if not s:
                continue
            print(f"| {t} | {c} | {fmt(s['rps'], ',.0f')} | {fmt(ratio(s['rps'], n.get('rps')), '.2f')} "
                  f"| {fmt(s['p50'], '.0f')} | {fmt(s['p99'], '.0f')} | {fmt(s['p999'], '.0f')} "
                  f"| {fmt(s['cpu'], '.2f')} | {fmt(ratio(s['cpu'], n.get('cpu')), '.2f')} "
                  f"| {fmt(s['pct'], '.0f')} | {fmt(s['rss'], '.1f')} | {s['err']} |")

low = [t for t in order if (1, t) in stats]
if low:
    d = stats.get((1, "direct"), {})
    print("\n## Latency added per hop, c=1: each target's latency minus `direct`'s (the upstream alone)\n")
    print("| target | p50 µs | p99 µs | p50 over direct µs | p99 over direct µs |")
    print("|---|--:|--:|--:|--:|")
    for t in low:
        s = stats[1, t]
        over = t != "direct"
        print(f"| {t} | {fmt(s['p50'], '.0f')} | {fmt(s['p99'], '.0f')} "
              f"| {fmt(diff(s['p50'], d.get('p50')) if over else None, '+.0f')} "
              f"| {fmt(diff(s['p99'], d.get('p99')) if over else None, '+.0f')} |")
EOF
} >"$OUT_DIR/results.md"

echo
cat "$OUT_DIR/results.md"
log "wrote $OUT_DIR/results.md and $RAW"
