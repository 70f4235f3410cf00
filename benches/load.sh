#!/usr/bin/env bash
# Side-by-side load run on this machine: teegate's gateway against nginx doing the same job.
#
#   backend:  an nginx (1 worker, its own process) that plays the CVM's RA-TLS front: TLS with a
#             simulated RA-TLS certificate, `return 200`; plus a plain-HTTP port as the ceiling.
#   contenders, same wildcard ECDSA P-256 certificate, same worker count, keep-alive TLS upstream:
#     teegate gateway  (registration over mutual RA-TLS, upstream pinned by certificate fingerprint)
#     nginx            (proxy_pass https://, proxy_ssl_verify on against the RA-TLS certificate)
#   loads: wrk keep-alive, wrk with `Connection: close` (a new TLS connection per request), and
#          wrk straight at the backend. Contenders run alternately, ROUNDS times; medians printed.
#
# Usage: benches/load.sh   (env: ROUNDS=3 DURATION=8 CONNS=50 WORKERS=1)
# Needs: nginx, wrk (Debian packages; installed when run as root).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-8}
CONNS=${CONNS:-50}
WORKERS=${WORKERS:-1}
BASE=apps.bench.test

need=()
for p in nginx wrk; do command -v "$p" >/dev/null || need+=("$p"); done
if ((${#need[@]})); then
  if [ "$(id -u)" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "install first: sudo apt-get install -y ${need[*]}" >&2; exit 1
  fi
fi

echo "building (release)..." >&2
cargo build --release --quiet --bin teegate --example bench_instance
BIN=target/release/teegate
HELPER=target/release/examples/bench_instance

T=$(mktemp -d)
pids=()
cleanup() {
  # Keep the gateway's log for a look after the run.
  cp "$T/gateway.err" target/bench-gateway.log 2>/dev/null || true
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$T/backend.pid" ] && kill "$(cat "$T/backend.pid")" 2>/dev/null || true
  [ -f "$T/nginx.pid" ] && kill "$(cat "$T/nginx.pid")" 2>/dev/null || true
  sleep 0.3
  rm -rf "$T"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
PB=$(free_port); PP=$(free_port); PG=$(free_port); PGH=$(free_port); PR=$(free_port); PA=$(free_port); PN=$(free_port)

"$HELPER" certs "$T/certs" "$BASE"
APP=$(cat "$T/certs/app_id")
HOST="$APP.$BASE"

cat > "$T/backend.conf" <<CONF
user root;
worker_processes 1;
pid $T/backend.pid;
error_log $T/backend.err warn;
events { worker_connections 8192; }
http {
  access_log off;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$PB ssl;
    ssl_certificate $T/certs/ratls.pem;
    ssl_certificate_key $T/certs/ratls.key;
    location / { return 200 "hello from the app\n"; }
  }
  server {
    listen 127.0.0.1:$PP;
    location / { return 200 "hello from the app\n"; }
  }
}
CONF
nginx -c "$T/backend.conf" -p "$T" -e "$T/backend.err"

cat > "$T/nginx.conf" <<CONF
user root;
worker_processes $WORKERS;
pid $T/nginx.pid;
error_log $T/nginx.err warn;
events { worker_connections 8192; }
http {
  access_log off;
  keepalive_requests 1000000;
  upstream app { server 127.0.0.1:$PB; keepalive 64; }
  server {
    listen 127.0.0.1:$PN ssl;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_certificate $T/certs/wildcard.pem;
    ssl_certificate_key $T/certs/wildcard.key;
    location / {
      proxy_pass https://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
      proxy_ssl_session_reuse on;
      proxy_ssl_verify on;
      proxy_ssl_trusted_certificate $T/certs/ratls.pem;
      proxy_ssl_server_name on;
      proxy_ssl_name $APP-80.$BASE;
    }
  }
}
CONF
nginx -c "$T/nginx.conf" -p "$T" -e "$T/nginx.err"

cat > "$T/gateway.toml" <<CONF
base_domain = "$BASE"
listen_https = "127.0.0.1:$PG"
listen_http = "127.0.0.1:$PGH"
listen_registration = "127.0.0.1:$PR"
listen_admin = "127.0.0.1:$PA"
data_dir = "$T/gateway"
workers = $WORKERS
grace_period_secs = 1
access_log = false
[tls]
mode = "files"
cert_file = "$T/certs/wildcard.pem"
key_file = "$T/certs/wildcard.key"
[limits]
max_connections = 20000
max_connections_per_app = 20000
[registration]
allow_loopback = true
# One registration for the whole run (the bench does not heartbeat).
lease_secs = 86400
[verifier]
allow_simulated = true
mrtd = "any"
rtmr0 = "any"
rtmr1 = "any"
rtmr2 = "any"
compose_hashes = "any"
app_ids = "any"
CONF
TEEGATE_LOG=${TEEGATE_LOG:-warn} "$BIN" gateway --config "$T/gateway.toml" 2>"$T/gateway.err" &
pids+=($!)
for _ in $(seq 1 100); do grep -q ready "$T/gateway.err" 2>/dev/null && break; sleep 0.1; done
grep -q ready "$T/gateway.err" || { cat "$T/gateway.err" >&2; exit 1; }
"$HELPER" register "$T/certs" "$PR" "127.0.0.1:$PB"

check() { curl -sk --max-time 5 -H "Host: $HOST" "$1" | grep -q "hello from the app" || { echo "sanity check failed for $1" >&2; exit 1; }; }
check "https://127.0.0.1:$PG/"
check "https://127.0.0.1:$PN/"

# wrk prints "Requests/sec: N" and, with --latency, "99%  X.XXms".
run_wrk() { # name url extra-header...
  local name=$1 url=$2; shift 2
  local out
  out=$(wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency -H "Host: $HOST" "$@" "$url" 2>&1)
  local rps p99 errs
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {v=$2; if (v ~ /us$/) {sub(/us/,"",v); v=v/1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v=v*1000}; print v}' <<<"$out")
  errs=$(awk '/Non-2xx|Socket errors/ {print}' <<<"$out" | tr '\n' ' ')
  echo "$name $rps $p99" >> "$T/results"
  [ -n "$errs" ] && echo "$name $errs" >> "$T/errors"
  printf '  %-22s %10s req/s  p99 %8s ms  %s\n' "$name" "$rps" "$p99" "$errs" >&2
}

: > "$T/results"
: > "$T/errors"
for r in $(seq 1 "$ROUNDS"); do
  echo "round $r/$ROUNDS" >&2
  run_wrk gateway-keepalive "https://127.0.0.1:$PG/"
  run_wrk nginx-keepalive "https://127.0.0.1:$PN/"
  run_wrk gateway-newconn "https://127.0.0.1:$PG/" -H "Connection: close"
  run_wrk nginx-newconn "https://127.0.0.1:$PN/" -H "Connection: close"
  run_wrk direct-plain "http://127.0.0.1:$PP/"
done

python3 - "$T/results" "$ROUNDS" "$DURATION" "$CONNS" "$WORKERS" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    parts = line.split()
    rows.setdefault(parts[0], []).append((float(parts[1]), float(parts[2])))
med = {k: (statistics.median(r for r, _ in v), statistics.median(p for _, p in v)) for k, v in rows.items()}
print(f"\nteegate vs nginx, {sys.argv[2]} rounds x {sys.argv[3]}s, {sys.argv[4]} connections, {sys.argv[5]} worker(s), wrk -t1")
print(f"{'run':<22}{'req/s (median)':>16}{'p99 ms (median)':>18}")
for k in ["gateway-keepalive", "nginx-keepalive", "gateway-newconn", "nginx-newconn", "direct-plain"]:
    if k in med:
        print(f"{k:<22}{med[k][0]:>16.0f}{med[k][1]:>18.2f}")
g, n, d = med["gateway-keepalive"], med["nginx-keepalive"], med["direct-plain"]
gc, nc = med["gateway-newconn"], med["nginx-newconn"]
print(f"\nkeep-alive   gateway/nginx = {g[0]/n[0]:.2f}x  (target >= 1.2)   p99 gateway/nginx = {g[1]/n[1]:.2f}")
print(f"new conns    gateway/nginx = {gc[0]/nc[0]:.2f}x  (target >= 1.5)   p99 gateway/nginx = {gc[1]/nc[1]:.2f}")
print(f"keep-alive   gateway/direct-plain = {g[0]/d[0]:.2f}x")
PY
if [ -s "$T/errors" ]; then
  echo "ERROR: some runs saw failed requests; the figures above are not valid:" >&2
  cat "$T/errors" >&2
  exit 1
fi
