# Shared set-up for benches/load.sh and benches/idle.sh (sourced, not run): tools, binaries,
# certificates, the backend nginx, and the three contenders at a given worker count.
#   start_contenders W / stop_contenders; pids_of gateway|nginx|haproxy|direct; cpu_ticks PIDS
#   ("user system" clock ticks); run_wait PIDS (ns their threads spent runnable, waiting for a CPU);
#   wrk and h2load: the generators, offering CLIENT_TLS13; port_of CONTENDER;
#   drive LOAD PORT SECONDS, answered LOAD OUTPUT, generator_errors LOAD OUTPUT,
#   answered_or_fail LOAD CONTENDER OUTPUT; pid_list CONTENDER (pids_of, comma-separated);
#   $T/pace.lua: wrk's think time of PACE_MS before each connection's request
# Ports: PG (gateway), PN (nginx), PH (HAProxy), PB (backend TLS), PP (backend plain).
# Settings read: PROFILE, TEEGATE_BIN/HELPER_BIN, CLIENT_TLS13 (the generators' TLS 1.3 suites,
# in order), GATEWAY_EXTRA (TOML lines for [limits]),
# GATEWAY_TOP (TOML lines at the top level, e.g. listener_per_worker = false), GATEWAY_WRAP (a
# command the gateway alone runs under, e.g. "heaptrack -o FILE"); NGINX_WRAP and HAPROXY_WRAP
# the same for the nginx and HAProxy contenders (not the backend). A wrapped nginx runs as one
# process in the foreground (no master, no daemon), so the wrapper sees the process that serves.
# SANITY_TRIES: how many times (every 0.1 s) a contender is asked for the app before giving up.
PROFILE=${PROFILE:-release}
BASE=${BASE:-apps.bench.test}

need=()
for p in nginx:nginx haproxy:haproxy wrk:wrk h2load:nghttp2-client curl:curl; do
  command -v "${p%%:*}" >/dev/null || need+=("${p#*:}")
done
if ((${#need[@]})); then
  if [ "$(id -u)" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "install first: sudo apt-get install -y ${need[*]}" >&2; exit 1
  fi
fi

if [ -z "${TEEGATE_BIN:-}" ]; then
  echo "building ($PROFILE)..." >&2
  flag=(); [ "$PROFILE" = release ] && flag=(--release)
  cargo build "${flag[@]}" --quiet --bin teegate --example bench_instance
  dir=target/$([ "$PROFILE" = release ] && echo release || echo debug)
  TEEGATE_BIN=$dir/teegate
  HELPER_BIN=$dir/examples/bench_instance
fi
BIN=$TEEGATE_BIN
HELPER=${HELPER_BIN:?set HELPER_BIN with TEEGATE_BIN}

T=$(mktemp -d)

# The TLS 1.3 suites the load generators offer, in the order browsers offer them (Chrome and
# Firefox put AES-128-GCM first; OpenSSL's own default, which wrk would otherwise send, puts
# AES-256-GCM-SHA384 first). Every contender follows the client's order (HAProxy is told to:
# by default it imposes its own), so all three negotiate the same suite, and the set-up
# below checks that they do.
CLIENT_TLS13=${CLIENT_TLS13:-TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_256_GCM_SHA384}
cat > "$T/client-openssl.cnf" <<CNF
openssl_conf = openssl_init
[openssl_init]
ssl_conf = ssl_sect
[ssl_sect]
system_default = system_default_sect
[system_default_sect]
Ciphersuites = $CLIENT_TLS13
CNF
# The generators, with that order: wrk takes it from OpenSSL's configuration file; h2load
# sets its own list, so it is given the order on its command line.
wrk() { OPENSSL_CONF="$T/client-openssl.cnf" command wrk "$@"; }
h2load() { command h2load --tls13-ciphers="$CLIENT_TLS13" "$@"; }
# The paced loads: wrk waits PACE_MS on each new connection before sending its request.
PACE_MS=${PACE_MS:-50}
printf 'function delay() return %d end\n' "$PACE_MS" > "$T/pace.lua"
GW_PID=""; HA_PID=""
stop_contenders() {
  [ -n "$GW_PID" ] && { kill "$GW_PID" 2>/dev/null || true; wait "$GW_PID" 2>/dev/null || true; }
  [ -n "$HA_PID" ] && { kill "$HA_PID" 2>/dev/null || true; wait "$HA_PID" 2>/dev/null || true; }
  [ -f "$T/nginx.pid" ] && { kill "$(cat "$T/nginx.pid")" 2>/dev/null || true; }
  GW_PID=""; HA_PID=""
  for _ in $(seq 1 50); do [ -f "$T/nginx.pid" ] || break; sleep 0.1; done
}
cleanup() {
  cp "$T/gateway.err" target/bench-gateway.log 2>/dev/null || true
  stop_contenders
  [ -f "$T/backend.pid" ] && kill "$(cat "$T/backend.pid")" 2>/dev/null || true
  sleep 0.3
  rm -rf "$T"
}
trap cleanup EXIT

. benches/ports.sh
PB=$(free_port); PP=$(free_port); PG=$(free_port); PGH=$(free_port); PR=$(free_port); PA=$(free_port)
PN=$(free_port); PH=$(free_port)

"$HELPER" certs "$T/certs" "$BASE"
APP=$(cat "$T/certs/app_id")
HOST="$APP.$BASE"
cat "$T/certs/wildcard.pem" "$T/certs/wildcard.key" > "$T/certs/wildcard-haproxy.pem"

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

start_contenders() { # workers
  local w=$1
  local nginx_wrap haproxy_wrap nginx_top=""
  read -r -a nginx_wrap <<<"${NGINX_WRAP:-}"
  read -r -a haproxy_wrap <<<"${HAPROXY_WRAP:-}"
  ((${#nginx_wrap[@]})) && nginx_top="master_process off; daemon off;"
  cat > "$T/nginx.conf" <<CONF
user root;
$nginx_top
worker_processes $w;
worker_rlimit_nofile 20000;
pid $T/nginx.pid;
error_log $T/nginx.err warn;
events { worker_connections 8192; }
http {
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 60s;
  # Idle upstream connections kept per worker: as many as the gateway keeps per instance
  # and thread (limits.upstream_idle_per_instance = 512). With 64, the HTTP/2 load's 500
  # concurrent streams made nginx open a new TLS connection to the backend for about one
  # request in six (benches/syscalls.sh: 0.17 connect per request).
  upstream app { server 127.0.0.1:$PB; keepalive 512; }
  server {
    listen 127.0.0.1:$PN ssl http2;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_certificate $T/certs/wildcard.pem;
    ssl_certificate_key $T/certs/wildcard.key;
    location / {
      proxy_pass https://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
      proxy_set_header X-Forwarded-For \$remote_addr;
      proxy_set_header X-Forwarded-Proto https;
      proxy_ssl_session_reuse on;
      proxy_ssl_verify on;
      proxy_ssl_trusted_certificate $T/certs/ratls.pem;
      proxy_ssl_server_name on;
      proxy_ssl_name $APP-80.$BASE;
    }
  }
}
CONF
  if ((${#nginx_wrap[@]})); then
    "${nginx_wrap[@]}" nginx -c "$T/nginx.conf" -p "$T" -e "$T/nginx.err" 2>>"$T/nginx.err" &
  else
    nginx -c "$T/nginx.conf" -p "$T" -e "$T/nginx.err"
  fi

  cat > "$T/haproxy.cfg" <<CONF
global
  nbthread $w
  maxconn 9000
  ssl-default-bind-options ssl-min-ver TLSv1.2
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  timeout http-keep-alive 60s
frontend fe
  bind 127.0.0.1:$PH ssl crt $T/certs/wildcard-haproxy.pem alpn h2,http/1.1 prefer-client-ciphers
  option forwardfor
  http-request set-header X-Forwarded-Proto https
  default_backend app
backend app
  http-reuse always
  server s1 127.0.0.1:$PB ssl verify required ca-file $T/certs/ratls.pem sni str($APP-80.$BASE) alpn http/1.1
CONF
  "${haproxy_wrap[@]}" haproxy -f "$T/haproxy.cfg" -db 2>"$T/haproxy.err" &
  HA_PID=$!

  cat > "$T/gateway.toml" <<CONF
base_domain = "$BASE"
listen_https = "127.0.0.1:$PG"
listen_http = "127.0.0.1:$PGH"
listen_registration = "127.0.0.1:$PR"
listen_admin = "127.0.0.1:$PA"
data_dir = "$T/gateway-$w"
workers = $w
grace_period_secs = 1
access_log = false
${GATEWAY_TOP:-}
[tls]
mode = "files"
cert_file = "$T/certs/wildcard.pem"
key_file = "$T/certs/wildcard.key"
[limits]
max_connections = 20000
max_connections_per_app = 20000
max_connections_per_ip = 20000
${GATEWAY_EXTRA:-}
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
  local wrap; read -r -a wrap <<<"${GATEWAY_WRAP:-}"
  TEEGATE_LOG=${TEEGATE_LOG:-warn,rustls=error} "${wrap[@]}" "$BIN" gateway --config "$T/gateway.toml" 2>"$T/gateway.err" &
  GW_PID=$!
  for _ in $(seq 1 "${READY_TRIES:-100}"); do grep -q ready "$T/gateway.err" 2>/dev/null && break; sleep 0.1; done
  grep -q ready "$T/gateway.err" || { cat "$T/gateway.err" >&2; exit 1; }
  "$HELPER" register "$T/certs" "$PR" "127.0.0.1:$PB"
  for url in "https://127.0.0.1:$PG/" "https://127.0.0.1:$PN/" "https://127.0.0.1:$PH/"; do
    local ok=""
    for _ in $(seq 1 "${SANITY_TRIES:-50}"); do
      curl -sk --max-time 5 -H "Host: $HOST" "$url" | grep -q "hello from the app" && { ok=1; break; }
      sleep 0.1
    done
    [ -n "$ok" ] || { echo "sanity check failed for $url" >&2; cat "$T"/*.err >&2; exit 1; }
  done
  # Resumption really happens where the resumed load expects it: a session saved after one
  # request is offered on the next connection.
  printf 'GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n' "$HOST" > "$T/req"
  for port in $PG $PN $PH; do
    rm -f "$T/sess"
    timeout 10 openssl s_client -connect "127.0.0.1:$port" -servername "$HOST" -sess_out "$T/sess" \
      -ign_eof < "$T/req" >/dev/null 2>&1 || true
    echo "  resumption on :$port: $(timeout 10 openssl s_client -connect "127.0.0.1:$port" \
      -servername "$HOST" -sess_in "$T/sess" -ign_eof < "$T/req" 2>/dev/null | grep -E '^(New|Reused),' || true)" >&2
  done
  # Every contender negotiates the suite the generators put first.
  local want=${CLIENT_TLS13%%:*} got
  for port in $PG $PN $PH; do
    got=$(timeout 10 openssl s_client -connect "127.0.0.1:$port" -servername "$HOST" \
      -ciphersuites "$CLIENT_TLS13" < /dev/null 2>/dev/null | sed -n 's/^New, TLSv1.3, Cipher is //p' | head -1)
    [ "$got" = "$want" ] || { echo "the contender on :$port negotiated '$got', not $want" >&2; exit 1; }
  done
  echo "  TLS 1.3 suite on every contender: $want" >&2
}

# One generator run of LOAD (keepalive: wrk, HTTP/1.1 keep-alive; resumed: wrk with a new,
# resumed TLS connection per request; h2: h2load, 10 streams per connection) at a contender's
# port, CONNS connections, for the given seconds; prints the generator's output.
drive() { # load port seconds
  case $1 in
    keepalive) wrk -t1 -c"$CONNS" -d"${3}s" -H "Host: $HOST" "https://127.0.0.1:$2/" 2>&1 ;;
    resumed) wrk -t1 -c"$CONNS" -d"${3}s" -H "Host: $HOST" -H "Connection: close" "https://127.0.0.1:$2/" 2>&1 ;;
    h2) h2load -c"$CONNS" -m10 -D "$3" --connect-to="127.0.0.1:$2" "https://$HOST:$2/" 2>&1 ;;
    *) echo "unknown load $1 (keepalive, h2, resumed)" >&2; return 1 ;;
  esac
}
# From a generator's output (h2: h2load's; any other load: wrk's): the requests answered,
# and the errors the generator reported (empty when none).
answered() { # load output
  if [ "$1" = h2 ]; then awk '/^requests:/ {print $8}' <<<"$2"; else awk '/requests in/ {print $1}' <<<"$2"; fi
}
generator_errors() { # load output
  if [ "$1" = h2 ]; then
    awk '/^requests:/ && ($10 > 0 || $12 > 0) {print}' <<<"$2"
  else
    awk '/Non-2xx|Socket errors/ {print}' <<<"$2" | tr '\n' ' '
  fi
}

# For the scripts that attach a tool to a run: the requests it answered (printed), or a
# failure naming the contender when the generator saw errors or nothing was answered.
answered_or_fail() { # load who output
  local errs n
  errs=$(generator_errors "$1" "$3")
  [ -z "$errs" ] || { echo "$2, $1: the generator saw errors: $errs" >&2; return 1; }
  n=$(answered "$1" "$3")
  [ "${n:-0}" -gt 0 ] || { echo "$2, $1: no request was answered" >&2; return 1; }
  echo "$n"
}

port_of() {
  case $1 in gateway) echo "$PG" ;; nginx) echo "$PN" ;; haproxy) echo "$PH" ;; direct) echo "$PP" ;; esac
}

# Processes whose CPU counts for a contender.
pids_of() {
  case $1 in
    gateway) echo "$GW_PID" ;;
    haproxy) echo "$HA_PID" ;;
    nginx) local m; m=$(cat "$T/nginx.pid"); echo "$m $(pgrep -P "$m" | tr '\n' ' ')" ;;
    direct) cat "$T/backend.pid" ;;
  esac
}
# The same, comma-separated, as perf's -p takes them.
pid_list() { pids_of "$1" | tr -s ' \n' ',' | sed 's/^,//; s/,$//'; }
cpu_ticks() { # pids... -> "utime stime" in clock ticks (fields 14 and 15 of /proc/<pid>/stat)
  local p
  for p in "$@"; do cat "/proc/$p/stat" 2>/dev/null || true; done |
    awk '{ sub(/.*\) /, ""); u += $12; s += $13 } END { print u + 0, s + 0 }'
}
# Nanoseconds the processes' threads have spent runnable but waiting for a CPU (the second field
# of /proc/<pid>/task/<tid>/schedstat): on a machine whose cores the generator, the backend and
# the contender share, this is the part of the latency that is the scheduler's, not the code's.
run_wait() { # pids... -> ns
  local p
  for p in "$@"; do cat /proc/"$p"/task/*/schedstat 2>/dev/null || true; done |
    awk '{ w += $2 } END { printf "%.0f\n", w + 0 }'
}
