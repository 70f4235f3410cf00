# Sourced by the bench scripts (after they set T to their scratch directory).
#
# free_port: a port for one of the run's servers to listen on. Picked below the kernel's
# ephemeral range, as tests/support/procs.rs does: a port the kernel hands out for bind(0)
# lies in the range it also takes outgoing connections' local ports from, so between the
# pick and the server's bind a connection (the gateway's to its upstreams, Pebble's, the
# generators') could take it, and the server would fail with "Address already in use". Free
# when picked, and never the same port twice in one run.
free_port() {
  python3 - "$T/ports.used" <<'PY'
import os, random, socket, sys
used_file = sys.argv[1]
used = set(open(used_file).read().split()) if os.path.exists(used_file) else set()
try:
    ephemeral_low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
except (OSError, ValueError, IndexError):
    ephemeral_low = 32768
low, high = 10000, ephemeral_low - 1
for _ in range(500):
    if high > low:
        port = random.randint(low, high)
    else:
        # An unusual ephemeral range leaves no room below it: let the kernel choose.
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
    if str(port) in used:
        continue
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        continue
    finally:
        s.close()
    with open(used_file, "a") as f:
        f.write(f"{port}\n")
    print(port)
    sys.exit(0)
sys.exit("free_port: no free port found in 500 tries")
PY
}
