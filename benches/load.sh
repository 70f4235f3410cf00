#!/usr/bin/env bash
# Side-by-side load run on this machine: teegate's gateway against nginx and HAProxy doing
# the same job, at each worker count in WORKERS.
#
#   backend:  an nginx (1 worker, its own process) that plays the CVM's RA-TLS front: TLS with a
#             simulated RA-TLS certificate, `return 200`; plus a plain-HTTP port as the ceiling.
#   contenders, same wildcard ECDSA P-256 certificate, same worker count, keep-alive TLS upstream
#   verified against the RA-TLS certificate, X-Forwarded-For/-Proto set, no access log:
#     gateway  teegate (registration over mutual RA-TLS, upstream pinned by certificate fingerprint)
#     nginx    proxy_pass https://, proxy_ssl_verify on, keepalive 512
#     haproxy  server ... ssl verify required ca-file <RA-TLS cert>, http-reuse always
#   loads (contenders alternate within each round; medians over ROUNDS):
#     keepalive  wrk -t1 -cCONNS, HTTP/1.1 keep-alive
#     h2         h2load -cCONNS -m10, HTTP/2
#     resumed    wrk with `Connection: close`: a new TLS connection per request; wrk resumes
#                its TLS session on reconnect, so these are resumed handshakes
#     paced      the resumed load with PACE_MS of think time on each connection before its
#                request (wrk's delay() hook): about CONNS/PACE_MS connections a second, below
#                what wrk can drive, so the generator is not the bottleneck and latency is the
#                contender's. In the closed loops above wrk runs at ~100% of a core and
#                latency is mostly where the queue forms, which differs by contender.
#     h2paced    the h2 load at H2_RPS requests a second per connection (h2load --rps, default
#                300: 15,000 a second with 50 connections, below what every contender serves
#                here), so latency is the contender's and not the closed loop's queue, whose
#                length is 500 streams over each contender's own rate. h2load starts each
#                connection's timer as it connects, so the streams come in bursts of up to
#                CONNS every 1/H2_RPS seconds. Both HTTP/2 loads leave the first
#                H2_SETTLE_MS (500) out of p50/p99: the streams that waited for their
#                connection's handshake
#     full       h2load --h1 with `Connection: close`: a new connection per request, and h2load
#                never resumes, so every handshake is a full one (for every contender)
#     direct     wrk straight at the backend's plain port (the ceiling, not a contender)
#   figures: req/s, p50 and p99 latency, and CPU µs per request (the contender's processes'
#   utime+stime from /proc/<pid>/stat over the run, divided by the requests it answered),
#   also split into user and system time; and the load generator's CPU in % of one core
#   (wrk and h2load run one thread: near 100%, the generator bounds req/s for everyone).
#   Ratios: teegate against the best of nginx and HAProxy for each figure, oriented so that
#   > 1 means teegate is better. Exits non-zero when any run saw an error (never on ratios).
#
# Usage: benches/load.sh   (env: WORKERS="1 2" ROUNDS=3 DURATION=6 CONNS=50 LOADS="keepalive h2
#        h2paced resumed paced full" PACE_MS=50 H2_RPS=300 PROFILE=release; TEEGATE_BIN /
#        HELPER_BIN to use prebuilt binaries; H2LOG_DIR keeps h2load's per-request logs)
# Needs: nginx, haproxy, wrk, h2load, curl (Debian packages; installed when run as root).
set -euo pipefail
cd "$(dirname "$0")/.."
WORKERS=${WORKERS:-1 2}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-6}
CONNS=${CONNS:-50}
LOADS=${LOADS:-keepalive h2 h2paced resumed paced full}
H2_RPS=${H2_RPS:-300}
H2_SETTLE_MS=${H2_SETTLE_MS:-500}
PROFILE=${PROFILE:-release}
BASE=apps.bench.test

. benches/lib.sh

url_of() {
  case $1 in
    direct) echo "http://127.0.0.1:$PP/" ;;
    *) echo "https://127.0.0.1:$(port_of "$1")/" ;;
  esac
}

# One run: prints "load workers contender rps p50_ms p99_ms requests user_ticks sys_ticks
# gen_pct wait_ns" to results (gen_pct: the load generator's CPU over the run, in % of one core;
# wait_ns: how long the contender's threads were runnable but without a CPU, over the run).
run_one() { # load workers contender
  local load=$1 w=$2 who=$3 url out pids u0 s0 u1 s1 q0 q1 rps p50 p99 reqs errs="" gen
  url=$(url_of "$who")
  pids=$(pids_of "$who")
  read -r u0 s0 < <(cpu_ticks $pids)
  q0=$(run_wait $pids)
  # bash's `time` gives the generator's user, system and wall seconds.
  local TIMEFORMAT='%U %S %R'
  case $load in
    keepalive|resumed|paced|direct)
      local extra=()
      [ "$load" = resumed ] && extra=(-H "Connection: close")
      [ "$load" = paced ] && extra=(-H "Connection: close" -s "$T/pace.lua")
      out=$( { time wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency -H "Host: $HOST" "${extra[@]}" "$url" 2>&1; } 2>"$T/gen" )
      read -r u1 s1 < <(cpu_ticks $pids)
      q1=$(run_wait $pids)
      rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
      reqs=$(answered "$load" "$out")
      ms() { awk -v k="$1" '$1==k {v=$2; if (v ~ /us$/) {sub(/us/,"",v); v=v/1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v=v*1000}; print v}' <<<"$out"; }
      p50=$(ms 50%); p99=$(ms 99%)
      errs=$(generator_errors "$load" "$out")
      ;;
    h2|h2paced|full)
      local args=(-c"$CONNS" --log-file="$T/h2load.log")
      if [ "$load" != full ]; then
        [ "$load" = h2paced ] && args+=(--rps="$H2_RPS")
        args+=(-m10 -D"$DURATION" -H ":authority: $HOST")
      else
        # h2load stops only on a request count with Connection: close; size it to last
        # roughly DURATION seconds at the rate the contenders reach here.
        args+=(--h1 -n$((FULL_RATE * DURATION)) -H ":authority: $HOST" -H "Connection: close")
      fi
      rm -f "$T/h2load.log"
      out=$( { time h2load "${args[@]}" "$url" 2>&1; } 2>"$T/gen" )
      read -r u1 s1 < <(cpu_ticks $pids)
      q1=$(run_wait $pids)
      rps=$(awk '/^finished in/ {print $4}' <<<"$out")
      reqs=$(awk '/^requests:/ {print $8}' <<<"$out")
      # H2LOG_DIR keeps every run's per-request log (start µs, status, duration µs) to study.
      [ -n "${H2LOG_DIR:-}" ] && cp "$T/h2load.log" "$H2LOG_DIR/$load-w$w-$who-r${r:-0}.log"
      # On HTTP/2 the first streams of each connection wait for its handshake; at the paced
      # rate those 500 streams would be 0.7% of all, enough to set p99, so the first
      # H2_SETTLE_MS of the run are left out (of every contender's figures alike).
      local settle=0
      [ "$load" != full ] && settle=$H2_SETTLE_MS
      read -r p50 p99 < <(python3 - "$T/h2load.log" "$settle" <<'PY'
import sys
rows = [tuple(map(int, l.split()[:3])) for l in open(sys.argv[1]) if l.strip()]
t0 = min((r[0] for r in rows), default=0) + int(sys.argv[2]) * 1000
v = sorted(r[2] for r in rows if r[0] >= t0)
q = lambda f: v[min(len(v) - 1, int(f * len(v)))] / 1000 if v else 0
print(q(0.50), q(0.99))
PY
)
      local failed nok
      failed=$(awk '/^requests:/ {print $10 + $12 + $14}' <<<"$out")
      nok=$(awk '/^status codes:/ {print $5 + $7 + $9}' <<<"$out")
      [ "${failed:-1}" != 0 ] || [ "${nok:-1}" != 0 ] && errs="h2load: $(grep -E '^(requests|status codes):' <<<"$out" | tr '\n' ' ')"
      [ -z "$reqs" ] || [ "$reqs" = 0 ] && errs="h2load made no request: $(tail -3 <<<"$out" | tr '\n' ' ')"
      ;;
  esac
  gen=$(awk '{ printf "%.0f", ($3 > 0 ? ($1 + $2) * 100 / $3 : 0) }' "$T/gen")
  echo "$load $w $who ${rps:-0} ${p50:-0} ${p99:-0} ${reqs:-0} $((u1 - u0)) $((s1 - s0)) ${gen:-0} $((q1 - q0))" >> "$T/results"
  [ -n "$errs" ] && echo "$load w=$w $who: $errs" >> "$T/errors"
  printf '  %-9s w=%s %-8s %9s req/s  p50 %7s ms  p99 %7s ms  %6s µs/req  wait %6s µs/req  gen %3s%%  %s\n' "$load" "$w" "$who" \
    "${rps:-0}" "${p50:-0}" "${p99:-0}" \
    "$(awk -v t=$((u1 - u0 + s1 - s0)) -v n="${reqs:-0}" 'BEGIN {printf "%.1f", n ? t * 10000 / n : 0}')" \
    "$(awk -v q=$((q1 - q0)) -v n="${reqs:-0}" 'BEGIN {printf "%.1f", n ? q / 1000 / n : 0}')" "${gen:-0}" "$errs" >&2
}

FULL_RATE=${FULL_RATE:-3000}
: > "$T/results"
: > "$T/errors"
for w in $WORKERS; do
  echo "== $w worker(s): starting contenders" >&2
  start_contenders "$w"
  for r in $(seq 1 "$ROUNDS"); do
    echo "round $r/$ROUNDS, $w worker(s)" >&2
    for load in $LOADS; do
      # Alternate the order each round so no contender always follows the same one.
      if ((r % 2)); then order="gateway nginx haproxy"; else order="haproxy nginx gateway"; fi
      for who in $order; do run_one "$load" "$w" "$who"; done
    done
    run_one direct "$w" direct
  done
  stop_contenders
done

python3 - "$T/results" "$ROUNDS" "$DURATION" "$CONNS" "$(getconf CLK_TCK)" <<'PY'
import statistics, sys
path, rounds, duration, conns, hz = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
runs = {}
for line in open(path):
    load, w, who, rps, p50, p99, reqs, user, system, gen, wait = line.split()
    per = lambda ticks: int(ticks) * 1e6 / hz / int(reqs) if int(reqs) else float("nan")
    waited = int(wait) / 1e3 / int(reqs) if int(reqs) else float("nan")
    runs.setdefault((load, w, who), []).append(
        (float(rps), float(p50), float(p99), per(user) + per(system), per(user), per(system),
         float(gen), waited))
med = {k: tuple(statistics.median(r[i] for r in v) for i in range(8)) for k, v in runs.items()}
print(f"\nteegate vs nginx vs HAProxy: medians of {rounds} rounds x {duration}s, {conns} connections")
print("(ratio: teegate against the best peer, > 1 means teegate is better: req/s gw/best, "
      "latency and CPU best/gw; CPU = user + sys; gen: the load generator's CPU, % of a core;\n"
      " wait: µs per request the contender's threads were runnable with no free CPU)")
hdr = (f"{'load':<10}{'w':>2} {'contender':<9}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}"
       f"{'CPU µs/req':>12}{'user':>7}{'sys':>7}{'gen %':>7}{'wait µs':>9}")
print(hdr)
loads = []
for (load, w, _) in med:
    if (load, w) not in loads:
        loads.append((load, w))
for load, w in loads:
    for who in ["gateway", "nginx", "haproxy", "direct"]:
        if (load, w, who) in med:
            r = med[(load, w, who)]
            print(f"{load:<10}{w:>2} {who:<9}{r[0]:>10.0f}{r[1]:>9.2f}{r[2]:>9.2f}{r[3]:>12.1f}"
                  f"{r[4]:>7.1f}{r[5]:>7.1f}{r[6]:>7.0f}{r[7]:>9.1f}")
    g = med.get((load, w, "gateway"))
    peers = [med[(load, w, p)] for p in ("nginx", "haproxy") if (load, w, p) in med]
    if g and peers:
        best_rps = max(p[0] for p in peers)
        best_p50 = min(p[1] for p in peers)
        best_p99 = min(p[2] for p in peers)
        best_cpu = min(p[3] for p in peers)
        best_user = min(p[4] for p in peers)
        best_sys = min(p[5] for p in peers)
        div = lambda a, b: a / b if b else float("nan")
        print(f"{load:<10}{w:>2} {'ratio':<9}{div(g[0], best_rps):>9.2f}x{div(best_p50, g[1]):>8.2f}x"
              f"{div(best_p99, g[2]):>8.2f}x{div(best_cpu, g[3]):>11.2f}x"
              f"{div(best_user, g[4]):>6.2f}x{div(best_sys, g[5]):>6.2f}x")
PY
if [ -s "$T/errors" ]; then
  echo "ERROR: some runs saw failed requests; the figures above are not valid:" >&2
  cat "$T/errors" >&2
  exit 1
fi
