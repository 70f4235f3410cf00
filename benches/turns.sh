#!/usr/bin/env bash
# Where a new connection's time goes, turn by turn, for each contender: wrk drives the
# resumed load of benches/load.sh (a TLS connection per request) and tcpdump records
# CAPTURE seconds of the loopback traffic in the middle of the run. Each captured
# connection is split into the turns of a resumed TLS 1.3 exchange, timed on the wire:
#
#   server hello    ClientHello in       → server's flight out   (accept and handshake)
#   client finish   flight in            → Finished out          (the generator's turn)
#   server answer   request in           → answer out            (request, upstream, answer)
#   client close    answer in            → client's next packet  (the generator's turn)
#
# The request is the client's last data before the server's last (the answer and its
# close_notify); the Finished may come with it or, with the session tickets between them,
# before it (with LOAD=paced the think time falls there too).
#
# wrk's latency runs from its request to its reading of the answer: server answer plus
# client close. In the closed loop (LOAD=resumed) wrk runs at ~100% of a core and the
# queue forms wherever a contender leaves the connections: a contender that answers at
# once moves the wait into the client turns, so wrk reports it as request latency. The
# server turns are the contender's own.
#
# Usage: benches/turns.sh   (env: WORKERS=1 CONNS=50 DURATION=6 CAPTURE=2 LOAD=resumed|paced
#        PACE_MS=50 PROFILE=release; TEEGATE_BIN / HELPER_BIN to use prebuilt binaries)
# Needs: tcpdump and the right to capture on lo (root), besides what benches/load.sh needs.
set -euo pipefail
cd "$(dirname "$0")/.."
WORKERS=${WORKERS:-1}
CONNS=${CONNS:-50}
DURATION=${DURATION:-6}
CAPTURE=${CAPTURE:-2}
LOAD=${LOAD:-resumed}
((DURATION > CAPTURE + 1)) || { echo "DURATION must exceed CAPTURE + 1" >&2; exit 1; }
case $LOAD in resumed|paced) ;; *) echo "LOAD is resumed or paced" >&2; exit 1 ;; esac

if ! command -v tcpdump >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tcpdump >/dev/null
  else
    echo "install first: sudo apt-get install -y tcpdump" >&2; exit 1
  fi
fi
. benches/lib.sh

start_contenders "$WORKERS"
failed=0
for who in gateway nginx haproxy; do
  port=$(port_of "$who")
  extra=()
  [ "$LOAD" = paced ] && extra=(-s "$T/pace.lua")
  wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency -H "Host: $HOST" -H "Connection: close" \
    "${extra[@]}" "https://127.0.0.1:$port/" > "$T/wrk-$who" 2>&1 &
  wrk_pid=$!
  # The capture starts once the connections are up and ends before wrk stops.
  sleep 1
  timeout "$CAPTURE" tcpdump -i lo -s 128 -U -w "$T/$who.pcap" "tcp port $port" 2>"$T/tcpdump-$who" || true
  wait "$wrk_pid" || { echo "wrk failed against $who:" >&2; cat "$T/wrk-$who" >&2; failed=1; }
  if grep -qE 'Non-2xx|Socket errors' "$T/wrk-$who"; then
    echo "$who: $(grep -E 'Non-2xx|Socket errors' "$T/wrk-$who" | tr '\n' ' ')" >&2
    failed=1
  fi
  [ -s "$T/$who.pcap" ] || { echo "tcpdump captured nothing for $who:" >&2; cat "$T/tcpdump-$who" >&2; failed=1; }
  echo "$who $port $(awk '$1=="50%" || $1=="99%" {printf "%s %s ", $1, $2} /Requests\/sec/ {printf "%s req/s", $2}' "$T/wrk-$who")" >> "$T/ports"
done
stop_contenders

echo "
$LOAD load, $WORKERS worker(s), $CONNS connections; turns of each connection captured in ${CAPTURE}s (ms)"
python3 - "$T" <<'PY' || failed=1
import os, struct, sys
t = sys.argv[1]

def packets(path):
    """(time, source port, destination port, flags, payload length) of each IPv4 TCP packet."""
    d = open(path, "rb").read()
    if len(d) < 24:
        return
    magic = struct.unpack("<I", d[:4])[0]
    scale = 1e9 if magic == 0xA1B23C4D else 1e6
    link = struct.unpack("<I", d[20:24])[0]
    skip = {1: 14, 113: 16}.get(link, 4)  # Ethernet (lo), Linux cooked, BSD loopback
    off = 24
    while off + 16 <= len(d):
        sec, frac, incl, _ = struct.unpack("<IIII", d[off:off + 16])
        pkt = d[off + 16:off + 16 + incl]
        off += 16 + incl
        ip = pkt[skip:]
        if len(ip) < 20 or ip[0] >> 4 != 4:
            continue
        ihl = (ip[0] & 15) * 4
        tcp = ip[ihl:]
        if len(tcp) < 14:
            continue
        total = struct.unpack(">H", ip[2:4])[0]
        sport, dport = struct.unpack(">HH", tcp[:4])
        yield sec + frac / scale, sport, dport, tcp[13], total - ihl - (tcp[12] >> 4) * 4

def quantiles(v):
    v = sorted(v)
    q = lambda f: v[min(len(v) - 1, int(f * len(v)))] * 1000
    return f"{q(.5):8.2f}{q(.9):8.2f}{q(.99):8.2f}"

names = ["server hello", "client finish", "server answer", "client close"]
print(f"{'contender':<10}{'turn':<15}{'p50':>8}{'p90':>8}{'p99':>8}   wrk's own figures")
bad = False
for line in open(os.path.join(t, "ports")):
    who, port, rest = line.split(" ", 2)
    port = int(port)
    conns = {}
    for ts, sp, dp, flags, plen in packets(os.path.join(t, f"{who}.pcap")):
        side, peer = ("c", sp) if dp == port else ("s", dp)
        conns.setdefault(peer, []).append((ts, side, flags, plen))
    turns = {n: [] for n in names}
    for pkts in conns.values():
        # Only connections whose SYN is in the capture; data packets from one side in a
        # row are one turn.
        if not (pkts[0][1] == "c" and pkts[0][2] & 0x02):
            continue
        seq, client_fin = [], None
        for ts, side, flags, plen in pkts:
            if plen > 0:
                if seq and seq[-1][0] == side:
                    seq[-1][2] = ts
                else:
                    seq.append([side, ts, ts])
            if side == "c" and flags & 0x01 and client_fin is None:
                client_fin = ts
        if [s[0] for s in seq[:3]] != ["c", "s", "c"]:
            continue
        hello, flight, finish = seq[:3]
        # The answer: the server's last data turn, after the client's request turn.
        last = max((i for i, s in enumerate(seq) if s[0] == "s"), default=0)
        if last < 3 or seq[last - 1][0] != "c":
            continue
        request, answer = seq[last - 1], seq[last]
        after = seq[last + 1][1] if len(seq) > last + 1 else client_fin
        if after is None:
            continue
        turns["server hello"].append(flight[1] - hello[2])
        turns["client finish"].append(finish[1] - flight[2])
        turns["server answer"].append(answer[2] - request[2])
        turns["client close"].append(after - answer[2])
    n = len(turns["server hello"])
    if n == 0:
        print(f"{who:<10}no whole connection in the capture")
        bad = True
        continue
    for i, name in enumerate(names):
        print(f"{who if i == 0 else '':<10}{name:<15}{quantiles(turns[name])}   "
              + (rest.strip() + f" ({n} connections)" if i == 0 else ""))
sys.exit(1 if bad else 0)
PY
if ((failed)); then
  echo "ERROR: a run failed or captured nothing; the figures above are not valid" >&2
  exit 1
fi
