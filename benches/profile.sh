#!/usr/bin/env bash
# Where a contender's time goes, in instructions: the gateway (or, with CONTENDER, nginx or
# HAProxy) runs under `valgrind --tool=callgrind` (one worker) with the set-up of
# benches/load.sh, the generator drives LOAD through it, and after a warm-up two runs are
# counted, DURATION/2 seconds then DURATION (the second with the contender's shutdown, which
# is small). Prints instructions per request, and per extra request between the two runs
# (repeatable for the same binary and inputs, whatever else the machine does), so the three
# can be compared without the noise of a shared machine.
# User-space only: the kernel's share (the syscalls) is not in it. nginx is profiled as one
# process without a master (the worker's code path is the same; see NGINX_WRAP in lib.sh).
#
# Usage: benches/profile.sh   (env: DURATION=10 WARMUP=3 CONNS=10 LOAD=keepalive|h2|resumed
#        CONTENDER=gateway|nginx|haproxy PROFILE=release CALLGRIND_OPTS; TEEGATE_BIN /
#        HELPER_BIN to use prebuilt binaries; OUT=file keeps the profile).
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-3}
CONNS=${CONNS:-10}
LOAD=${LOAD:-keepalive}
CONTENDER=${CONTENDER:-gateway}
case $CONTENDER in gateway | nginx | haproxy) ;; *) echo "CONTENDER is gateway, nginx or haproxy" >&2; exit 1 ;; esac

command -v valgrind >/dev/null || { echo "install valgrind first (apt-get install valgrind)" >&2; exit 1; }
. benches/lib.sh

KEEP_OUT=${OUT:-}
OUT=${OUT:-$T/callgrind.out}
# CALLGRIND_OPTS: more options for callgrind, e.g. "--cache-sim=yes --branch-sim=yes" to count
# the simulated cache misses and mispredicted branches too (callgrind_annotate shows them).
read -r -a extra <<<"${CALLGRIND_OPTS:-}"
callgrind=(valgrind --tool=callgrind --callgrind-out-file="$OUT" --dump-instr=no "${extra[@]}")
# Under valgrind a contender takes much longer to say it is ready and to answer the first time.
READY_TRIES=${READY_TRIES:-1200}
SANITY_TRIES=${SANITY_TRIES:-600}
case $CONTENDER in
  gateway)
    # Started through a wrapper script, so lib.sh's start-up (and its checks) stay as they are.
    real_bin=$(realpath "$BIN")
    printf '#!/bin/sh\nexec %s %q "$@"\n' "$(printf '%q ' "${callgrind[@]}")" "$real_bin" > "$T/teegate-under-callgrind"
    chmod +x "$T/teegate-under-callgrind"
    BIN="$T/teegate-under-callgrind" ;;
  nginx) NGINX_WRAP="${callgrind[*]}" ;;
  haproxy) HAPROXY_WRAP="${callgrind[*]}" ;;
esac
start_contenders 1
# The one process that serves: nginx has no workers under its wrapper.
read -r PID _ <<<"$(pids_of "$CONTENDER")"
PORT=$(port_of "$CONTENDER")

# Every event a profile counts, as "name=total" words: Ir alone, or with CALLGRIND_OPTS'
# --cache-sim/--branch-sim the cache misses (D1mr, D1mw, I1mr, ...) and mispredictions too.
totals_of() {
  callgrind_annotate "$1" 2>/dev/null | awk '
    /^Events shown:/ { for (i = 3; i <= NF; i++) name[i - 2] = $i; n = NF - 2 }
    /PROGRAM TOTALS/ { k = 0; for (i = 1; i <= NF && k < n; i++) if ($i !~ /^\(/) { gsub(",", "", $i); printf "%s=%s ", name[++k], $i }; exit }'
}
# One event's total out of totals_of's words.
event_of() { tr ' ' '\n' <<<"$2" | awk -F= -v e="$1" '$1 == e { print $2 }'; }

echo "warm-up ${WARMUP}s…" >&2
drive "$LOAD" "$PORT" "$WARMUP" >/dev/null || true
# Two measured runs, SHORT seconds then DURATION: each opens the same CONNS connections, so
# the difference between them is the steady-state cost of the extra requests, without the
# handshakes (which weigh more the slower a contender runs under valgrind).
SHORT=$(((DURATION + 1) / 2))
rm -f "$OUT".[0-9]*
callgrind_control --zero "$PID" >/dev/null 2>&1
out_short=$(drive "$LOAD" "$PORT" "$SHORT")
callgrind_control --dump=short "$PID" >/dev/null 2>&1
short_dump=$(ls -t "$OUT".[0-9]* 2>/dev/null | head -1 || true)
callgrind_control --zero "$PID" >/dev/null 2>&1
out=$(drive "$LOAD" "$PORT" "$DURATION")
reqs=$(answered "$LOAD" "$out")
reqs_short=$(answered "$LOAD" "$out_short")
errs=$(generator_errors "$LOAD" "$out_short$out")
# Callgrind writes the profile of the second run (everything since the counters were zeroed,
# and the contender's shutdown, which is small) when the contender exits.
stop_contenders
# Bounded: a contender under valgrind takes a while to write its profile and exit.
for _ in $(seq 1 300); do
  state=$(awk '{ sub(/.*\) /, ""); print $1 }' "/proc/$PID/stat" 2>/dev/null || true)
  [ -n "$state" ] && [ "$state" != Z ] || break
  sleep 0.1
done
wait "$PID" 2>/dev/null || true
dump=$OUT
[ -s "$dump" ] || { echo "callgrind wrote no profile to $dump" >&2; exit 1; }
[ -n "$short_dump" ] && [ -s "$short_dump" ] || { echo "callgrind wrote no profile of the short run" >&2; exit 1; }
# Each profile annotated once (callgrind_annotate takes seconds on a long run).
all=$(totals_of "$dump")
all_short=$(totals_of "$short_dump")
total=$(event_of Ir "$all")
total_short=$(event_of Ir "$all_short")
echo
echo "$CONTENDER under callgrind ($LOAD, $CONNS connections):"
echo "  ${SHORT}s run:           ${reqs_short:-0} requests, ${total_short:-0} instructions"
echo "  ${DURATION}s run:           ${reqs:-0} requests, ${total:-0} instructions"
awk -v t="${total:-0}" -v n="${reqs:-0}" -v ts="${total_short:-0}" -v ns="${reqs_short:-0}" 'BEGIN {
  if (n > 0) printf "  per request:      %.1f k (the %s run, its handshakes included)\n", t / n / 1000, "'"${DURATION}s"'"
  if (n > ns) printf "  per extra request: %.1f k (the difference between the runs)\n", (t - ts) / (n - ns) / 1000
}'
# With the cache or branch simulation on, every other event per extra request too.
if [ "$(wc -w <<<"$all")" -gt 1 ] && [ "${reqs:-0}" -gt "${reqs_short:-0}" ]; then
  echo "  per extra request, every event (callgrind's simulated caches and branch predictor):"
  awk -v a="$all" -v b="$all_short" -v n="$((reqs - reqs_short))" 'BEGIN {
    m = split(b, w, " "); for (i = 1; i <= m; i++) { split(w[i], kv, "="); short[kv[1]] = kv[2] }
    m = split(a, w, " ")
    for (i = 1; i <= m; i++) {
      split(w[i], kv, "=")
      printf "    %-5s %10.1f\n", kv[1], (kv[2] - short[kv[1]]) / n
    }
  }'
fi
[ -n "${KEEP_OUT:-}" ] && echo "  profile:          $dump"
[ -z "$errs" ] || { echo "the generator saw errors: $errs" >&2; exit 1; }
