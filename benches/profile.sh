#!/usr/bin/env bash
# Where the gateway's time goes, in instructions: the gateway runs under
# `valgrind --tool=callgrind` (one worker) with the set-up of benches/load.sh, wrk drives
# HTTP/1.1 keep-alive requests through it, and after a warm-up the counters are zeroed and
# collected for DURATION seconds (and the gateway's shutdown, which follows). Prints
# instructions per request (repeatable for the same binary and inputs, whatever else the
# machine does). User-space only: the kernel's share (the syscalls) is not in it.
#
# Usage: benches/profile.sh   (env: DURATION=10 WARMUP=3 CONNS=10 LOAD=keepalive|h2|resumed PROFILE=release;
#        TEEGATE_BIN / HELPER_BIN to use prebuilt binaries; OUT=file keeps the profile).
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-3}
CONNS=${CONNS:-10}
LOAD=${LOAD:-keepalive}

command -v valgrind >/dev/null || { echo "install valgrind first (apt-get install valgrind)" >&2; exit 1; }
. benches/lib.sh

KEEP_OUT=${OUT:-}
OUT=${OUT:-$T/callgrind.out}
# The gateway started through a wrapper, so lib.sh's start-up (and its checks) stay as they are.
real_bin=$(realpath "$BIN")
cat > "$T/teegate-under-callgrind" <<SH
#!/bin/sh
exec valgrind --tool=callgrind --callgrind-out-file="$OUT" --dump-instr=no "$real_bin" "\$@"
SH
chmod +x "$T/teegate-under-callgrind"
BIN="$T/teegate-under-callgrind"
# Under valgrind the gateway takes much longer to say it is ready.
READY_TRIES=${READY_TRIES:-1200}
start_contenders 1

echo "warm-up ${WARMUP}s…" >&2
drive "$LOAD" "$PG" "$WARMUP" >/dev/null || true
callgrind_control --zero "$GW_PID" >/dev/null
out=$(drive "$LOAD" "$PG" "$DURATION")
reqs=$(answered "$LOAD" "$out")
errs=$(generator_errors "$LOAD" "$out")
# Callgrind writes the profile (everything since the counters were zeroed, and the
# gateway's shutdown, which is small) when the gateway exits.
stop_contenders
dump=$OUT
[ -s "$dump" ] || { echo "callgrind wrote no profile to $dump" >&2; exit 1; }
total=$(callgrind_annotate "$dump" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1; exit}')
echo
echo "requests answered: ${reqs:-0} in ${DURATION}s under callgrind ($LOAD, $CONNS connections)"
echo "instructions:      ${total:-0}"
awk -v t="${total:-0}" -v n="${reqs:-0}" 'BEGIN { if (n > 0) printf "per request:       %.1f k\n", t / n / 1000 }'
[ -n "${KEEP_OUT:-}" ] && echo "profile:           $dump"
[ -z "$errs" ] || { echo "the generator saw errors: $errs" >&2; exit 1; }
