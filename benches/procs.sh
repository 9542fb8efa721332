# Process helpers shared by the bench scripts (sourced, not run): stopping what a script started,
# probing ports, and reading a process's CPU time and memory from /proc.

stop_pid() {   # TERM, up to 5 s grace, then KILL; always reap
  local p=$1 i
  kill -TERM "$p" 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$p" 2>/dev/null || true
  wait "$p" 2>/dev/null || true
}
port_busy() { (exec 3<>"/dev/tcp/${1%:*}/${1#*:}") 2>/dev/null; }
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
