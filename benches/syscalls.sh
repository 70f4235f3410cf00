#!/usr/bin/env bash
# System calls per request, by contender: the set-up of benches/load.sh (same backend, same
# certificate, same generators), with `perf trace -s` attached to each contender's processes
# while the generator drives it for DURATION seconds (after WARMUP seconds that fill the
# upstream pools). Prints, per load and contender, the calls per request, how many of them
# failed (almost all EAGAIN: a read that found nothing), and the busiest calls.
#
# Why: in the keep-alive load most of every contender's CPU is system time, so the calls a
# proxy makes per request, and what each costs the kernel, bound how far it can get ahead.
# The least a TLS proxy can do for one keep-alive request is four: read the request, write
# it upstream, read the response, write it to the client.
#
# Tracing slows the traced process several times over, so req/s under `perf trace` mean
# nothing, and calls that batch work (epoll_wait) come out lower than untraced; the calls
# each request needs (the reads and writes, and the reads that find nothing) do not change.
#
# Usage: benches/syscalls.sh   (env: WORKERS=1 DURATION=4 WARMUP=2 CONNS=50 LOADS="keepalive
#        h2 resumed" TOP=5 PROFILE=release; TEEGATE_BIN / HELPER_BIN to use prebuilt binaries)
# Needs: perf (Debian's linux-perf), run as root; and what benches/load.sh needs.
set -euo pipefail
cd "$(dirname "$0")/.."
WORKERS=${WORKERS:-1}
DURATION=${DURATION:-4}
WARMUP=${WARMUP:-2}
CONNS=${CONNS:-50}
LOADS=${LOADS:-keepalive h2 resumed}
TOP=${TOP:-5}

command -v perf >/dev/null || { echo "install perf first (apt-get install linux-perf)" >&2; exit 1; }
if ! err=$(perf trace -s -o /dev/null -- true 2>&1); then
  echo "perf trace cannot trace here (it needs root, or kernel.perf_event_paranoid <= -1):" >&2
  echo "$err" | head -3 >&2
  exit 1
fi
. benches/lib.sh

start_contenders "$WORKERS"
echo
echo "system calls per request (perf trace -s; $WORKERS worker(s), $CONNS connections, ${DURATION}s traced)"
printf '%-10s %-9s %9s %10s %11s  %s\n' load contender requests "calls/req" "failed/req" "busiest (per request; failed in brackets)"
for load in $LOADS; do
  for who in gateway nginx haproxy; do
    port=$(port_of "$who")
    drive "$load" "$port" "$WARMUP" >/dev/null
    perf trace -s -p "$(pid_list "$who")" -o "$T/trace" &
    tracer=$!
    # perf trace prints nothing when it is attached; give it a moment before the run.
    sleep 0.5
    out=$(drive "$load" "$port" "$DURATION")
    kill -INT "$tracer"; wait "$tracer" || true
    n=$(answered_or_fail "$load" "$who" "$out")
    # The summary has one table per thread: "syscall calls errors total min avg max stddev".
    awk -v n="$n" -v top="$TOP" -v load="$load" -v who="$who" '
      $2 ~ /^[0-9]+$/ && $3 ~ /^[0-9]+$/ && NF >= 8 { c[$1] += $2; e[$1] += $3; all += $2; bad += $3 }
      END {
        line = ""
        for (i = 0; i < top; i++) {
          best = ""
          for (k in c) if (best == "" || c[k] > c[best]) best = k
          if (best == "") break
          part = sprintf("%s %.2f", best, c[best] / n)
          if (e[best] > 0) part = part sprintf(" (%.2f)", e[best] / n)
          line = line (line == "" ? "" : ", ") part
          delete c[best]
        }
        printf "%-10s %-9s %9d %10.2f %11.2f  %s\n", load, who, n, all / n, bad / n, line
      }' "$T/trace"
  done
done
