#!/usr/bin/env bash
# End-to-end load benchmark: weir vs nginx vs HAProxy vs no proxy at all.
# Usage: bash benches/load/run.sh   (knobs and how to read the output: README.md)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
ROOT=$PWD

TARGETS=${TARGETS:-"direct nginx haproxy weir"}
CONNS=${CONNS:-"64 256"}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}   # seconds per measured run
WARMUP=${WARMUP:-2}        # seconds of unmeasured load before each run
OUT_DIR=${OUT_DIR:-$ROOT/target/load-bench}

UPSTREAM_ADDR=127.0.0.1:18000
declare -A ADDR=([direct]=$UPSTREAM_ADDR [weir]=127.0.0.1:18080
                 [nginx]=127.0.0.1:18081 [haproxy]=127.0.0.1:18082 [weir-base]=127.0.0.1:18083)
declare -A PID=()          # target -> PID of its (top) process
STARTED=()                 # every server PID this script started and has not reaped yet
WRK_PID=                   # the measured wrk while it runs

log() { printf '[load] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
has() { [[ " $TARGETS " == *" $1 "* ]]; }

for t in $TARGETS; do [[ -n ${ADDR[$t]:-} ]] || die "unknown target '$t' (direct nginx haproxy weir weir-base)"; done
[[ $ROUNDS =~ ^[1-9][0-9]*$ && $DURATION =~ ^[1-9][0-9]*$ && $WARMUP =~ ^[0-9]+$ ]] \
  || die "ROUNDS and DURATION must be positive integers, WARMUP a non-negative one"

# --- 1. tools --------------------------------------------------------------
export PATH=$PATH:/usr/sbin:/sbin   # nginx and haproxy live in sbin
need=()
command -v wrk >/dev/null || need+=(wrk)
command -v taskset >/dev/null || need+=(util-linux)
command -v ps >/dev/null || need+=(procps)
command -v curl >/dev/null || need+=(curl)
has haproxy && ! command -v haproxy >/dev/null && need+=(haproxy)
if ((${#need[@]})) || { has nginx && ! command -v nginx >/dev/null; }; then
  log "installing: ${need[*]} $(has nginx && ! command -v nginx >/dev/null && echo nginx-light)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  ((${#need[@]})) && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  if has nginx && ! command -v nginx >/dev/null; then
    apt-get install -y -qq --no-install-recommends nginx-light >/dev/null 2>&1 \
      || apt-get install -y -qq --no-install-recommends nginx >/dev/null
  fi
fi

# --- 2. binaries -----------------------------------------------------------
build=()
[[ -z ${UPSTREAM_BIN:-} ]] && build+=(--example bench-upstream)
[[ -z ${WEIR_BIN:-} ]] && has weir && build+=(--bin weir)
if ((${#build[@]})); then
  log "cargo build --release ${build[*]}"
  cargo build --release "${build[@]}"
fi
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
UPSTREAM_BIN=${UPSTREAM_BIN:-$TARGET_DIR/release/examples/bench-upstream}
WEIR_BIN=${WEIR_BIN:-$TARGET_DIR/release/weir}
[[ -x $UPSTREAM_BIN ]] || die "no upstream binary at $UPSTREAM_BIN"
if has weir; then [[ -x $WEIR_BIN ]] || die "no weir binary at $WEIR_BIN"; fi
# weir-base: another weir build (an earlier commit, say) on the same config, to compare builds
# in one run: WEIR_BASE_BIN=/path/to/weir TARGETS="direct weir-base weir".
if has weir-base; then [[ -x ${WEIR_BASE_BIN:-} ]] || die "weir-base needs WEIR_BASE_BIN"; fi

# --- process bookkeeping ---------------------------------------------------
TMP=$(mktemp -d /tmp/weir-load.XXXXXX)

stop_pid() {   # TERM, up to 5 s grace, then KILL; always reap
  local p=$1 i
  kill -TERM "$p" 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$p" 2>/dev/null || true
  wait "$p" 2>/dev/null || true
}
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

proc_tree() {  # a PID and all its descendants (nginx: master + worker)
  ps -e -o pid=,ppid= | awk -v root="$1" '
    { kids[$2] = kids[$2] " " $1 }
    END { q[1] = root; n = 1
          for (i = 1; i <= n; i++) { print q[i]; m = split(kids[q[i]], k, " ")
                                     for (j = 1; j <= m; j++) q[++n] = k[j] } }'
}
cpu_ticks() {  # utime + stime (fields 14, 15) summed over the processes given
  local p sum=0
  for p in "$@"; do
    # Drop "pid (comm) " first: comm may contain spaces. Field 14 becomes $12.
    sum=$((sum + $(sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null | awk '{print $12 + $13}' || echo 0)))
  done
  echo "$sum"
}
rss_kib() {    # VmRSS summed over the processes given
  local p
  for p in "$@"; do cat "/proc/$p/status" 2>/dev/null || true; done | awk '/^VmRSS:/ {s += $2} END {print s + 0}'
}

port_busy() { (exec 3<>"/dev/tcp/${1%:*}/${1#*:}") 2>/dev/null; }
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

mkdir -p "$TMP/nginx"
cat >"$TMP/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/error.log warn;
worker_rlimit_nofile 16384;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $TMP/nginx/body;
  proxy_temp_path $TMP/nginx/proxy;
  fastcgi_temp_path $TMP/nginx/fastcgi;
  uwsgi_temp_path $TMP/nginx/uwsgi;
  scgi_temp_path $TMP/nginx/scgi;
  keepalive_timeout 60s;
  keepalive_requests 100000000;
  upstream bench { server $UPSTREAM_ADDR; keepalive 512; keepalive_requests 100000000; }
  server {
    listen ${ADDR[nginx]};
    location / { proxy_pass http://bench; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
EOF

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

# The upstream serves the whole run. The proxies are started afresh for every connection level
# of every round, so each RSS figure belongs to its own level (allocators keep what they once
# took: a proxy that just served 256 connections would still report their memory at 64).
log "starting upstream on cpu0; proxies run on cpu1"
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
start_proxies() {
  local t
  for t in nginx haproxy weir weir-base; do has "$t" && stop_proxy "$t"; done
  has nginx && start nginx "$TMP/nginx.log" taskset -c 1 nginx -p "$TMP/nginx" -e "$TMP/nginx/error.log" -c "$TMP/nginx.conf"
  has haproxy && start haproxy "$TMP/haproxy.log" taskset -c 1 haproxy -db -f "$TMP/haproxy.cfg"
  has weir && start weir "$TMP/weir.log" env RUST_LOG=warn taskset -c 1 "$WEIR_BIN" --config "$ROOT/benches/load/weir.toml"
  if has weir-base; then
    sed 's/127.0.0.1:18080/127.0.0.1:18083/; s/127.0.0.1:19901/127.0.0.1:19902/' "$ROOT/benches/load/weir.toml" >"$TMP/weir-base.toml"
    start weir-base "$TMP/weir-base.log" env RUST_LOG=warn taskset -c 1 "$WEIR_BASE_BIN" --config "$TMP/weir-base.toml"
  fi
  return 0
}

# --- 4. rounds -------------------------------------------------------------
mkdir -p "$OUT_DIR"
RAW=$OUT_DIR/raw.tsv
printf 'round\tconns\ttarget\trequests\tseconds\treq_per_s\tp50_us\tp99_us\tp999_us\terrors\tcpu_us_per_req\tcpu_pct\trss_mib\n' >"$RAW"
TICK_US=$((1000000 / $(getconf CLK_TCK)))
n_targets=$(wc -w <<<"$TARGETS"); n_conns=$(wc -w <<<"$CONNS")
log "$ROUNDS rounds x $n_conns conns x $n_targets targets x $((WARMUP + DURATION)) s: about $((ROUNDS * n_conns * n_targets * (WARMUP + DURATION + 1))) s"

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
    start_proxies
    for t in $TARGETS; do measure "$round" "$c" "$t"; done
  done
done

# --- 5. report -------------------------------------------------------------
{
  echo "# weir load benchmark"
  echo
  echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, $(uname -r); rounds=$ROUNDS, duration=${DURATION}s, warm-up=${WARMUP}s;" \
       "$(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2)$(has nginx && echo ", $(nginx -v 2>&1 | sed 's/.*: //')")$(has haproxy && echo ", haproxy $(haproxy -v | head -1 | awk '{print $3}')")"
  echo "Medians over rounds (RSS: max; errors: total). Only comparable within this run: read the ratios."
  echo
  python3 - "$RAW" "$TARGETS" <<'EOF'
import csv, statistics as st, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
order = sys.argv[2].split()
groups = {}
for r in rows:
    groups.setdefault((int(r["conns"]), r["target"]), []).append(r)
def med(rs, k):
    v = [float(r[k]) for r in rs if r[k] != "-"]
    return st.median(v) if v else None
def fmt(x, spec):
    return "-" if x is None else format(x, spec)
def ratio(a, b):
    return None if a is None or not b else a / b
print("| target | conns | req/s | ×direct | ×nginx | p50 µs | p99 µs | p99.9 µs | CPU µs/req | CPU ×nginx | CPU % | RSS MiB | errors |")
print("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
for c in sorted({k[0] for k in groups}):
    stats = {}
    for t in order:
        rs = groups.get((c, t))
        if rs:
            rss = [float(r["rss_mib"]) for r in rs if r["rss_mib"] != "-"]
            stats[t] = dict(rps=med(rs, "req_per_s"), p50=med(rs, "p50_us"), p99=med(rs, "p99_us"),
                            p999=med(rs, "p999_us"), cpu=med(rs, "cpu_us_per_req"), pct=med(rs, "cpu_pct"),
                            rss=max(rss) if rss else None, err=sum(int(r["errors"]) for r in rs))
    d, n = stats.get("direct", {}), stats.get("nginx", {})
    for t, s in stats.items():
        proxy = t != "direct"
        print(f"| {t} | {c} | {fmt(s['rps'], ',.0f')} | {fmt(ratio(s['rps'], d.get('rps')), '.2f')} "
              f"| {fmt(ratio(s['rps'], n.get('rps')) if proxy else None, '.2f')} "
              f"| {fmt(s['p50'], '.0f')} | {fmt(s['p99'], '.0f')} | {fmt(s['p999'], '.0f')} "
              f"| {fmt(s['cpu'], '.2f')} | {fmt(ratio(s['cpu'], n.get('cpu')) if proxy else None, '.2f')} "
              f"| {fmt(s['pct'], '.0f')} | {fmt(s['rss'], '.1f')} | {s['err']} |")
EOF
} >"$OUT_DIR/results.md"

echo
cat "$OUT_DIR/results.md"
log "wrote $OUT_DIR/results.md and $RAW"
