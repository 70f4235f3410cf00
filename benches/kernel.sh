#!/usr/bin/env bash
# Where each contender's CPU goes per request, kernel included: the set-up of benches/load.sh,
# with `perf record -e cpu-clock` attached to each contender's processes while the generator
# drives it for DURATION seconds (after WARMUP seconds that fill the upstream pools). Prints,
# per load and contender:
#   - µs per request by where the samples fell: the kernel, the contender's own binary, its
#     TLS libraries, libc, the vDSO (clock reads);
#   - voluntary and involuntary context switches per request (/proc/<pid>/task/*/status): a
#     thread that runs out of work sleeps in epoll_wait and pays a switch to wake up;
#   - TCP segments sent per request, machine-wide (nstat's TcpOutSegs, so the generator's
#     and the backend's are in it: four is the least a proxied request can take);
#   - the TOP kernel functions by µs per request.
#
# Why: callgrind (benches/profile.sh) counts user space only, and in the keep-alive load
# about three quarters of every contender's CPU is the kernel's. Samples are per process
# (`-p`), so a contender's figure holds what the kernel does in its name: its system calls,
# and on loopback the delivery of what it sends into the receiver's socket.
#
# Usage: benches/kernel.sh   (env: WORKERS=1 DURATION=4 WARMUP=2 CONNS=50 LOADS="keepalive h2"
#        TOP=12 FREQ=2999 PROFILE=release; TEEGATE_BIN / HELPER_BIN to use prebuilt binaries)
# Needs: perf (Debian's linux-perf) allowed to sample (root, or kernel.perf_event_paranoid
# <= 1), nstat (iproute2); and what benches/load.sh needs.
set -euo pipefail
cd "$(dirname "$0")/.."
WORKERS=${WORKERS:-1}
DURATION=${DURATION:-4}
WARMUP=${WARMUP:-2}
CONNS=${CONNS:-50}
LOADS=${LOADS:-keepalive h2}
TOP=${TOP:-12}
FREQ=${FREQ:-2999}

for tool in perf nstat; do
  command -v "$tool" >/dev/null || { echo "install $tool first (apt-get install linux-perf iproute2)" >&2; exit 1; }
done
if ! err=$(perf record -e cpu-clock -o /dev/null -- true 2>&1); then
  echo "perf cannot sample here (it needs root, or kernel.perf_event_paranoid <= 1):" >&2
  echo "$err" | head -3 >&2
  exit 1
fi
. benches/lib.sh

# "voluntary involuntary" context switches of the processes' threads so far.
switches() { # pids...
  local p
  for p in "$@"; do cat /proc/"$p"/task/*/status 2>/dev/null || true; done |
    awk '/^voluntary_ctxt/ { v += $2 } /^nonvoluntary_ctxt/ { n += $2 } END { print v + 0, n + 0 }'
}

start_contenders "$WORKERS"
echo
echo "CPU per request by where it went (perf record -e cpu-clock -F $FREQ; $WORKERS worker(s), $CONNS connections, ${DURATION}s)"
for load in $LOADS; do
  for who in gateway nginx haproxy; do
    port=$(port_of "$who")
    drive "$load" "$port" "$WARMUP" >/dev/null
    pids=$(pids_of "$who")
    read -r v0 n0 < <(switches $pids)
    nstat -n >/dev/null
    perf record -q -F "$FREQ" -e cpu-clock -p "$(pid_list "$who")" -o "$T/perf.data" >/dev/null 2>&1 &
    recorder=$!
    # perf prints nothing once attached; give it a moment before the run.
    sleep 0.5
    out=$(drive "$load" "$port" "$DURATION")
    kill -INT "$recorder"; wait "$recorder" || true
    segs=$(nstat -z TcpOutSegs | awk '$1 == "TcpOutSegs" { print $2 }')
    read -r v1 n1 < <(switches $pids)
    n=$(answered_or_fail "$load" "$who" "$out")
    # Samples are FREQ per second of CPU: µs per request = samples / FREQ / requests * 1e6.
    scale="1000000 / $FREQ / $n"
    where=$(perf report -i "$T/perf.data" --no-children --sort dso -n -q 2>/dev/null |
      awk -v s="$(bc -l <<<"$scale")" '
        NF >= 3 {
          d = $3; gsub(/[\[\]]/, "", d); sub(/.*\//, "", d)
          k = d ~ /kernel/ ? "kernel" : d ~ /^libc/ ? "libc" : d ~ /vdso/ ? "vdso" : d ~ /^lib(ssl|crypto)/ ? "tls-libs" : "own"
          us[k] += $2 * s; all += $2 * s
        }
        END { printf "total %.1f µs: kernel %.1f, own %.1f, TLS libs %.1f, libc %.1f, vDSO %.2f",
                all, us["kernel"], us["own"], us["tls-libs"], us["libc"], us["vdso"] }')
    printf '%-9s %-8s %8d req  %s\n' "$load" "$who" "$n" "$where"
    printf '%-9s %-8s   switches/req voluntary %.3f involuntary %.3f; TCP segments/req %.2f\n' "" "" \
      "$(bc -l <<<"($v1 - $v0) / $n")" "$(bc -l <<<"($n1 - $n0) / $n")" "$(bc -l <<<"${segs:-0} / $n")"
    perf report -i "$T/perf.data" --no-children --sort sym -n -q 2>/dev/null |
      awk -v s="$(bc -l <<<"$scale")" -v top="$TOP" '
        $3 == "[k]" && shown < top { printf "%s%s %.3f", (shown ? ", " : "                     kernel: "), $4, $2 * s; shown++ }
        END { if (shown) print "" }'
  done
done
