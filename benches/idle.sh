#!/usr/bin/env bash
# Memory held per idle client connection: N keep-alive TLS connections are opened to each
# contender, one request is answered on each, and they are then left idle; the contender's
# resident memory (VmRSS of its processes) before and after, divided by N, is the figure.
# The same set-up as benches/load.sh (certificates, RA-TLS backend, contenders).
#
# Usage: benches/idle.sh   (env: IDLE_CONNS=3000 WORKERS=1 PROFILE=release; TEEGATE_BIN /
#        HELPER_BIN to use prebuilt binaries). Exits non-zero if any connection failed.
set -euo pipefail
cd "$(dirname "$0")/.."
IDLE_CONNS=${IDLE_CONNS:-3000}
WORKERS=${WORKERS:-1}

. benches/lib.sh

rss_kb() { # pids... -> summed VmRSS in KiB
  local p
  for p in "$@"; do cat "/proc/$p/status" 2>/dev/null || true; done |
    awk '/^VmRSS:/ { sum += $2 } END { print sum + 0 }'
}

: > "$T/idle"
fail=0
for w in $WORKERS; do
  start_contenders "$w"
  for who in gateway nginx haproxy; do
    port=$(port_of "$who")
    pids=$(pids_of "$who")
    # The client opens the connections, reports, holds them until told, then closes them.
    rm -f "$T/opened" "$T/release"
    python3 - "$port" "$HOST" "$IDLE_CONNS" "$T/opened" "$T/release" <<'PY' &
import os, socket, ssl, sys, time
port, host, n, report, release = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
ctx.set_alpn_protocols(["http/1.1"])
req = f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
conns, failed = [], 0
for _ in range(n):
    try:
        s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname=host)
        s.sendall(req)
        got = b""
        while b"hello from the app" not in got:
            chunk = s.recv(4096)
            if not chunk:
                raise OSError("closed")
            got += chunk
        conns.append(s)
    except OSError:
        failed += 1
with open(report + ".tmp", "w") as f:
    f.write(f"{len(conns)} {failed}\n")
os.rename(report + ".tmp", report)
for _ in range(600):
    if os.path.exists(release):
        break
    time.sleep(0.1)
PY
    client=$!
    before=$(rss_kb $pids)
    for _ in $(seq 1 3000); do [ -f "$T/opened" ] && break; sleep 0.1; done
    read -r opened failed < "$T/opened"
    sleep 1
    after=$(rss_kb $pids)
    touch "$T/release"
    wait "$client" 2>/dev/null || true
    per=$(awk -v a="$after" -v b="$before" -v n="$opened" 'BEGIN { printf "%.1f", n ? (a - b) / n : 0 }')
    printf '  w=%s %-8s %5s idle connections (%s failed): RSS %7s KiB -> %7s KiB, %6s KiB per connection\n' \
      "$w" "$who" "$opened" "$failed" "$before" "$after" "$per" >&2
    echo "$w $who $opened $failed $before $after $per" >> "$T/idle"
    [ "$failed" = 0 ] || fail=1
    sleep 1
  done
  stop_contenders
done
echo
echo "RSS growth per idle keep-alive TLS connection ($IDLE_CONNS connections, one request each)"
printf '%-3s %-9s %10s\n' w contender "KiB/conn"
awk '{ printf "%-3s %-9s %10s\n", $1, $2, $7 }' "$T/idle"
if [ "$fail" != 0 ]; then
  echo "ERROR: some connections failed; the figures above are not valid" >&2
  exit 1
fi
