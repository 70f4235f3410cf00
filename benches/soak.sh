#!/usr/bin/env bash
# Soak under churn: the gateway's maximum keep-alive throughput is measured first, then
# SOAK_SECS of load at LOAD_FRACTION of it (h2load, HTTP/1.1 over TLS, GET) run through the
# gateway to three simulated RA-TLS instances while, one step every CHURN_EVERY seconds:
#   rotate   an instance gets a new RA-TLS certificate (new key), announced beside the
#            current one, then served (nginx reload), then registered alone (as the sidecar does)
#   restart  an instance's front is killed and started again (the gateway must retry elsewhere)
#   expire   an instance stops renewing until its lease lapses, then registers again
#   reload   the gateway renews its wildcard certificate from a real ACME server (Pebble,
#            DNS-01 through `teegate dns`) and serves the new one
# and every instance renews its registration every LEASE/3 s. Every ~SLICE s it prints the
# requests, failures, gateway RSS and open descriptors. The warm-up (WARMUP_SECS under the
# same load) runs one step of each kind, so the baselines include what a first step
# allocates once.
#
# Pass (else exit 1): 0 failed requests and 0 failed churn steps; no descriptor growth
# (idle count after the run <= idle count after warm-up + FD_SLACK, the upstream pool's
# jitter); with SOAK_SECS >= 120, RSS growth after warm-up < 5 %.
#
# Usage: benches/soak.sh                     # 10 minutes, release build
#        SOAK_SECS=30 SOAK_PROFILE=debug benches/soak.sh   # the CI version (scripts/test)
#        TEEGATE_BIN=… HELPER_BIN=… soak a prebuilt teegate and soak_instance;
#        SOAK_TRACE=DIR, SOAK_GATEWAY_WRAP="heaptrack -o FILE": see below
# Needs: nginx, h2load (nghttp2-client), pebble, openssl, curl.
set -euo pipefail
cd "$(dirname "$0")/.."
SOAK_SECS=${SOAK_SECS:-600}
WARMUP_SECS=${WARMUP_SECS:-60}
SLICE=${SLICE:-10}
CONNS=${CONNS:-20}
LOAD_FRACTION=${LOAD_FRACTION:-0.8}
LEASE=${LEASE:-6}
CHURN_EVERY=${CHURN_EVERY:-5}
FD_SLACK=${FD_SLACK:-10}
PROFILE=${SOAK_PROFILE:-release}
BASE=apps.soak.test
[ "$WARMUP_SECS" -ge "$SOAK_SECS" ] && WARMUP_SECS=$SLICE

for p in nginx h2load pebble openssl curl; do
  command -v "$p" >/dev/null || { echo "soak: $p is needed (scripts/test installs it)" >&2; exit 1; }
done

if [ -n "${TEEGATE_BIN:-}" ] && [ -n "${HELPER_BIN:-}" ]; then
  BIN=$TEEGATE_BIN HELPER=$HELPER_BIN
else
  echo "building ($PROFILE)..." >&2
  if [ "$PROFILE" = release ]; then
    cargo build --release --quiet --bin teegate --example soak_instance
  else
    cargo build --quiet --bin teegate --example soak_instance
  fi
  BIN=target/$PROFILE/teegate
  HELPER=target/$PROFILE/examples/soak_instance
fi
# SOAK_GATEWAY_WRAP: a command the gateway (only) runs under, e.g. "heaptrack -o FILE".
read -r -a GW_WRAP <<<"${SOAK_GATEWAY_WRAP:-}"

T=$(mktemp -d)
pids=()
cleanup() {
  touch "$T/stop"
  cp "$T/gateway.err" target/soak-gateway.log 2>/dev/null || true
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for i in 0 1 2; do
    [ -f "$T/i$i/nginx.pid" ] && kill "$(cat "$T/i$i/nginx.pid")" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  rm -rf "$T"
}
trap cleanup EXIT

. benches/ports.sh
wait_port() { for _ in $(seq 1 150); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }
PG=$(free_port); PGH=$(free_port); PR=$(free_port); PA=$(free_port)
PD=$(free_port); PDA=$(free_port); PP=$(free_port); PPM=$(free_port)
FRONT=("$(free_port)" "$(free_port)" "$(free_port)")
ADMIN_TOKEN=soak-admin-token-0123456789abcdef
elapsed() { echo $(($(date +%s) - START)); }
START=$(date +%s)

# --- teegate dns: publishes the ACME DNS-01 TXT records Pebble checks -----------------
umask 077
echo "soak-dns-api-token-0123456789abcdef" > "$T/dns-token"
umask 022
cat > "$T/dns.toml" <<CONF
base_domain = "$BASE"
listen_udp = "127.0.0.1:$PD"
listen_tcp = "127.0.0.1:$PD"
gateway_addrs = ["127.0.0.1"]
[api]
listen = "127.0.0.1:$PDA"
token_file = "$T/dns-token"
CONF
TEEGATE_LOG=warn "$BIN" dns --config "$T/dns.toml" 2>"$T/dns.err" &
pids+=($!)
wait_port "$PDA" || { cat "$T/dns.err" >&2; exit 1; }

# --- Pebble, the ACME server, with its own HTTPS certificate --------------------------
mkdir -p "$T/pebble"
(
  cd "$T/pebble"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj /CN=soak-pebble-https-ca -keyout ca.key -out ca.pem 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
    -keyout key.pem -out leaf.csr 2>/dev/null
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' > leaf.ext
  openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
    -extfile leaf.ext -out cert.pem 2>/dev/null
)
cat > "$T/pebble/pebble.json" <<CONF
{"pebble": {"listenAddress": "127.0.0.1:$PP", "managementListenAddress": "127.0.0.1:$PPM",
  "certificate": "$T/pebble/cert.pem", "privateKey": "$T/pebble/key.pem",
  "httpPort": $(free_port), "tlsPort": $(free_port), "ocspResponderURL": "",
  "externalAccountBindingRequired": false}}
CONF
PEBBLE_VA_NOSLEEP=1 PEBBLE_WFE_NONCEREJECT=0 \
  pebble -config "$T/pebble/pebble.json" -dnsserver "127.0.0.1:$PD" >"$T/pebble.log" 2>&1 &
pids+=($!)
wait_port "$PP" || { cat "$T/pebble.log" >&2; exit 1; }
wait_port "$PPM" || { cat "$T/pebble.log" >&2; exit 1; }
curl -sf --cacert "$T/pebble/ca.pem" "https://127.0.0.1:$PPM/roots/0" > "$T/acme-root.pem"

# --- three instances: RA-TLS certificates and an nginx front each ---------------------
for i in 0 1 2; do
  mkdir -p "$T/i$i"
  echo 0 > "$T/i$i/gen"
  "$HELPER" ratls "$T/certs" "$i" 0 "$BASE"
  cp "$T/certs/i$i-g0.pem" "$T/i$i/current.pem"
  cp "$T/certs/i$i-g0.key" "$T/i$i/current.key"
  cat > "$T/i$i/nginx.conf" <<CONF
user root;
worker_processes 1;
pid $T/i$i/nginx.pid;
error_log $T/i$i/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:${FRONT[$i]} ssl;
    ssl_certificate $T/i$i/current.pem;
    ssl_certificate_key $T/i$i/current.key;
    location / { return 200 "hello from instance $i\n"; }
  }
}
CONF
  nginx -c "$T/i$i/nginx.conf" -p "$T/i$i" -e "$T/i$i/error.log"
done
APP=$(cat "$T/certs/app_id")
HOST="$APP.$BASE"

# --- the gateway: ACME certificate, short leases, admin API for forced renewals --------
cat > "$T/gateway.toml" <<CONF
base_domain = "$BASE"
listen_https = "127.0.0.1:$PG"
listen_http = "127.0.0.1:$PGH"
listen_registration = "127.0.0.1:$PR"
listen_admin = "127.0.0.1:$PA"
data_dir = "$T/gateway"
admin_token = "$ADMIN_TOKEN"
grace_period_secs = 1
access_log = false
[tls]
mode = "acme"
[tls.acme]
directory_url = "https://127.0.0.1:$PP/dir"
ca_bundle = "$T/pebble/ca.pem"
dns_api_url = "http://127.0.0.1:$PDA"
dns_api_token_file = "$T/dns-token"
[limits]
max_connections = 20000
max_connections_per_app = 20000
[registration]
allow_loopback = true
lease_secs = $LEASE
[verifier]
allow_simulated = true
mrtd = "any"
rtmr0 = "any"
rtmr1 = "any"
rtmr2 = "any"
compose_hashes = "any"
app_ids = "any"
CONF
TEEGATE_LOG=${TEEGATE_LOG:-info} "${GW_WRAP[@]}" "$BIN" gateway --config "$T/gateway.toml" 2>"$T/gateway.err" &
GPID=$!
pids+=("$GPID")
wait_port "$PA" || { cat "$T/gateway.err" >&2; exit 1; }

# SOAK_TRACE=DIR: every second, the gateway's RSS split by kind (anonymous, file) and
# thread count in DIR/rss.tsv, and its full /proc/PID/smaps in DIR/smaps.T, to find which
# mapping a step in RSS lands in.
if [ -n "${SOAK_TRACE:-}" ]; then
  mkdir -p "$SOAK_TRACE"
  (
    printf 't\trss_kB\tanon_kB\tfile_kB\tthreads\n' > "$SOAK_TRACE/rss.tsv"
    while kill -0 "$GPID" 2>/dev/null; do
      now=$(elapsed)
      awk -v t="$now" '/^VmRSS/ {r=$2} /^RssAnon/ {a=$2} /^RssFile/ {f=$2} /^Threads/ {n=$2}
        END {printf "%s\t%s\t%s\t%s\t%s\n", t, r, a, f, n}' "/proc/$GPID/status" >> "$SOAK_TRACE/rss.tsv" 2>/dev/null || break
      cp "/proc/$GPID/smaps" "$SOAK_TRACE/smaps.$now" 2>/dev/null || break
      sleep 1
    done
  ) &
  pids+=($!)
fi

register() { # index [extra front cert...]
  local i=$1; shift
  "$HELPER" register "$T/acme-root.pem" "127.0.0.1:$PR" "gateway.$BASE" "127.0.0.1:${FRONT[$i]}" \
    "$T/i$i/current.pem" "$T/i$i/current.key" "$@"
}
# --- churn steps (run in the background once the load starts) ----------------------------
: > "$T/events"
event() { echo "$(elapsed) $*" >> "$T/events"; }
churn_fail() { echo "$(elapsed) $*" >> "$T/churn-errors"; echo "churn step failed: $*" >&2; }
# Each instance renews its registration every LEASE/3 s, as a sidecar does, except while
# it is letting its lease lapse (paused). An instance's registrations are serialised by a
# lock, as in the sidecar: a renewal must not land inside a rotation.
heartbeats() {
  local period=$((LEASE / 3 > 0 ? LEASE / 3 : 1))
  while [ ! -f "$T/stop" ]; do
    for i in 0 1 2; do
      [ -f "$T/i$i/paused" ] && continue
      ( flock 9; [ -f "$T/i$i/paused" ] || register "$i" ) 9>"$T/i$i/lock" 2>>"$T/churn.err" \
        || churn_fail "renewal of instance $i"
    done
    sleep "$period"
  done
}
rotate() {
  local i=$1 g
  g=$(($(cat "$T/i$i/gen") + 1))
  "$HELPER" ratls "$T/certs" "$i" "$g" "$BASE"
  # Announce the new certificate beside the current one, serve it, then register it alone.
  (
    flock 9
    register "$i" "$T/certs/i$i-g$g.pem" || { echo "rotation announce $i" >&2; exit 1; }
    cp "$T/certs/i$i-g$g.pem" "$T/i$i/current.pem"
    cp "$T/certs/i$i-g$g.key" "$T/i$i/current.key"
    kill -HUP "$(cat "$T/i$i/nginx.pid")"
    # nginx reloads asynchronously (old workers accept until the new ones are up): drop the
    # old certificate only once new handshakes get the new one, as a sidecar swaps first.
    want=$(openssl x509 -in "$T/i$i/current.pem" -noout -fingerprint -sha256)
    seen=0
    for _ in $(seq 1 50); do
      got=$(openssl s_client -connect "127.0.0.1:${FRONT[$i]}" </dev/null 2>/dev/null \
        | openssl x509 -noout -fingerprint -sha256 2>/dev/null || true)
      if [ "$got" = "$want" ]; then seen=$((seen + 1)); else seen=0; fi
      [ "$seen" -ge 3 ] && break
      sleep 0.2
    done
    sleep 1
    register "$i" || { echo "rotation register $i" >&2; exit 1; }
  ) 9>"$T/i$i/lock" 2>>"$T/churn.err" || { churn_fail "rotation of instance $i"; return; }
  echo "$g" > "$T/i$i/gen"
  event "rotate i$i g$g"
}
restart() {
  local i=$1 pid
  pid=$(cat "$T/i$i/nginx.pid")
  kill -TERM "$pid"
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  sleep 1
  nginx -c "$T/i$i/nginx.conf" -p "$T/i$i" -e "$T/i$i/error.log" || { churn_fail "restart $i"; return; }
  event "restart i$i"
}
expire() {
  local i=$1 before
  before=$(grep -c "registration lease expired" "$T/gateway.err" || true)
  touch "$T/i$i/paused"
  for _ in $(seq 1 $((LEASE * 4))); do
    [ "$(grep -c "registration lease expired" "$T/gateway.err" || true)" -gt "$before" ] && break
    sleep 0.5
    [ -f "$T/stop" ] && break
  done
  if [ "$(grep -c "registration lease expired" "$T/gateway.err" || true)" -le "$before" ]; then
    [ -f "$T/stop" ] || churn_fail "lease of instance $i did not expire"
  fi
  rm -f "$T/i$i/paused"
  ( flock 9; register "$i" ) 9>"$T/i$i/lock" 2>>"$T/churn.err" || { churn_fail "re-registration $i"; return; }
  event "expire+reregister i$i"
}
reload() {
  curl -sf -X POST -H "Authorization: Bearer $ADMIN_TOKEN" "http://127.0.0.1:$PA/v1/acme/renew" >/dev/null \
    || { churn_fail "acme renew request"; return; }
  event "gateway-cert-renew"
}
churn() {
  local step=0 now
  while [ ! -f "$T/stop" ]; do
    now=$(date +%s)
    if [ $((now - CHURN_START)) -ge $((step * CHURN_EVERY)) ]; then
      local i=$((step % 3))
      case $((step % 4)) in
        0) rotate "$i" ;;
        1) restart "$i" ;;
        2) ( expire "$i" ) & ;;
        3) reload ;;
      esac
      step=$((step + 1))
    fi
    sleep 0.5
  done
  wait
}

# The first registration waits for the ACME certificate (the registration port serves it).
for _ in $(seq 1 120); do register 0 2>/dev/null && break; sleep 0.5; done
register 0 || { echo "soak: the gateway never got its ACME certificate" >&2; tail -20 "$T/gateway.err" >&2; exit 1; }
register 1
register 2
: > "$T/churn-errors"
heartbeats &
pids+=($!)

metric() { # name{labels} -> value (0 if absent)
  curl -sf "http://127.0.0.1:$PA/metrics" | awk -v m="$1" '$1 == m {v=$2} END {print v+0}'
}
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$GPID/status"; }
# Idle RSS: the smallest of three samples a second apart (a transient allocation the
# allocator has not returned yet is not growth).
idle_rss_kb() {
  local a b c
  a=$(rss_kb); sleep 1; b=$(rss_kb); sleep 1; c=$(rss_kb)
  printf '%s\n' "$a" "$b" "$c" | sort -n | head -1
}
# Waits (at most 60 s) until no certificate renewal is running: the count of issued ones
# has not moved for 5 s. A renewal allocates while it runs; the baselines are taken after.
acme_settled() {
  local last now same=0
  last=$(metric 'teegate_acme_attempts_total{result="ok"}')
  for _ in $(seq 1 60); do
    sleep 1
    now=$(metric 'teegate_acme_attempts_total{result="ok"}')
    if [ "$now" = "$last" ]; then same=$((same + 1)); else same=0; last=$now; fi
    [ "$same" -ge 5 ] && return 0
  done
}
fds() { find "/proc/$GPID/fd" -mindepth 1 -maxdepth 1 | wc -l; }

H2=(h2load --h1 --connect-to="127.0.0.1:$PG" "https://$HOST:$PG/")
for _ in $(seq 1 20); do
  curl -sk --max-time 5 --connect-to "$HOST:$PG:127.0.0.1:$PG" "https://$HOST:$PG/" | grep -q "hello from instance" && break
  sleep 0.5
done

# --- maximum throughput (no churn yet) --------------------------------------------------
out=$("${H2[@]}" -c 50 -D 10 --warm-up-time=2 2>&1)
MAX=$(awk '/^finished in/ {gsub(",", "", $4); print int($4)}' <<<"$out")
[ -n "$MAX" ] && [ "$MAX" -gt 0 ] || { echo "soak: measuring the maximum failed:" >&2; echo "$out" >&2; exit 1; }
RATE=$(python3 -c "print(max(1, round($MAX * $LOAD_FRACTION / $CONNS)))")
echo "gateway maximum: $MAX req/s (h2load --h1 -c 50, keep-alive); soak load: $CONNS clients x $RATE req/s = $((CONNS * RATE)) req/s for ${SOAK_SECS}s" >&2

# Warm-up under load, with one step of each kind of churn: the first rotation, restart,
# expiry and certificate renewal each allocate once what later ones reuse (the ACME
# client's connection, the first re-verified upstream pool entries, malloc arenas of the
# runtime's blocking threads), and the RSS baseline is taken after them. Its requests
# count like the soak's.
( rotate 0; restart 1; expire 2; reload ) &
WARM_CHURN=$!
out=$("${H2[@]}" -c "$CONNS" --rps "$RATE" -D "$WARMUP_SECS" 2>&1) || true
[ -z "${SOAK_TRACE:-}" ] || echo "$(elapsed) warm-up ended" >> "$SOAK_TRACE/marks"
wait "$WARM_CHURN" || true
read -r warm_done warm_lost < <(awk '/^requests:/ {print $6, $10}' <<<"$out") || true
if [ -z "${warm_done:-}" ]; then
  echo "soak: h2load gave no summary in the warm-up:" >&2; echo "$out" >&2; warm_done=0; warm_lost=1
fi
[ "$warm_lost" -gt 0 ] && grep -E "^requests:|^status codes:|error|fail" <<<"$out" | head -8 >&2
acme_settled
FD0=$(fds); RSS0=$(idle_rss_kb)
OK0=$(metric 'teegate_acme_attempts_total{result="ok"}')
echo "after ${WARMUP_SECS}s warm-up ($warm_done requests, $warm_lost failed; one step of each churn): RSS ${RSS0} kB, ${FD0} fds (idle)" >&2

CHURN_START=$(date +%s)
churn &
CHURN_PID=$!
pids+=("$CHURN_PID")
printf '%6s %10s %8s %8s %9s %5s %5s  %s\n' t requests failed req/s rss_kB fds inst events
total=$warm_done; failed=$warm_lost; t=0; max_rss=$RSS0
while [ "$t" -lt "$SOAK_SECS" ]; do
  d=$((SOAK_SECS - t < SLICE ? SOAK_SECS - t : SLICE))
  out=$("${H2[@]}" -c "$CONNS" --rps "$RATE" -D "$d" 2>&1) || true
  [ -z "${SOAK_TRACE:-}" ] || echo "$(elapsed) slice ended" >> "$SOAK_TRACE/marks"
  # "requests: N total, N started, N done, N succeeded, N failed, N errored, N timeout";
  # h2load's "failed" includes non-2xx answers, "errored" and "timeout" are part of it.
  done=""; lost=""
  read -r done lost < <(awk '/^requests:/ {print $6, $10}' <<<"$out") || true
  if [ -z "$done" ]; then
    echo "soak: h2load gave no summary:" >&2; echo "$out" >&2; done=0; lost=1
  fi
  if [ "$lost" -gt 0 ]; then
    grep -E "^requests:|^status codes:|error|fail" <<<"$out" | head -8 >&2
  fi
  total=$((total + done)); failed=$((failed + lost)); t=$((t + d))
  rss=$(rss_kb); [ "$rss" -gt "$max_rss" ] && max_rss=$rss
  inst=$(metric teegate_registered_instances)
  ev=$(awk -v a=$((CHURN_START + t - d - START)) -v b=$((CHURN_START + t - START)) '$1 >= a && $1 < b {$1=""; printf "%s;", $0}' "$T/events")
  printf '%6s %10s %8s %8s %9s %5s %5s  %s\n' "$t" "$total" "$failed" "$((done / d))" "$rss" "$(fds)" "$inst" "$ev"
done
touch "$T/stop"
wait "$CHURN_PID" 2>/dev/null || true
acme_settled
FD1=$(fds); RSS1=$(idle_rss_kb)
OK1=$(metric 'teegate_acme_attempts_total{result="ok"}')
churn_errors=$(wc -l < "$T/churn-errors")
count() { grep -c "$1" "$T/events" || true; }

growth=$(python3 -c "print(f'{($RSS1 - $RSS0) * 100 / $RSS0:.1f}')")
echo
echo "soak: ${WARMUP_SECS}s warm-up + ${SOAK_SECS}s at $((CONNS * RATE)) req/s (${LOAD_FRACTION} x max $MAX), $total requests, $failed failed"
echo "churn: $(count rotate) rotations, $(count restart) restarts, $(count expire) lease expiries, $(count gateway-cert) gateway certificate renewals requested, $((OK1 - OK0)) issued; $churn_errors failed steps"
echo "RSS: ${RSS0} kB after warm-up -> ${RSS1} kB at the end (${growth}%, peak ${max_rss} kB); fds idle: $FD0 -> $FD1"
status=0
[ "$failed" -eq 0 ] || { echo "FAIL: $failed failed requests" >&2; status=1; }
[ "$churn_errors" -eq 0 ] || { echo "FAIL: churn steps failed:" >&2; cat "$T/churn-errors" "$T/churn.err" >&2; status=1; }
[ "$FD1" -le $((FD0 + FD_SLACK)) ] || { echo "FAIL: descriptors grew $FD0 -> $FD1" >&2; status=1; }
if [ "$SOAK_SECS" -ge 120 ]; then
  python3 -c "import sys; sys.exit(0 if $RSS1 < $RSS0 * 1.05 else 1)" \
    || { echo "FAIL: RSS grew ${growth}% after warm-up (limit 5%)" >&2; status=1; }
  [ $((OK1 - OK0)) -ge 1 ] || { echo "FAIL: no gateway certificate was renewed" >&2; status=1; }
fi
exit $status
