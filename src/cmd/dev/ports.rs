//! The loopback ports of one `teegate dev` run.
//!
//! A port from `bind(127.0.0.1:0)` is free only until it is released again, and a
//! component binds it a moment later. In between, any outgoing connection on the machine
//! (the sidecar's to the KMS, a browser's, another dev stack's) may be given it as its
//! source port, since both come from the kernel's ephemeral range: CI saw the gateway's
//! registration listener fail with "Address already in use" that way. So ports are taken
//! below that range, where only a server choosing the same number could collide, and one
//! process never hands out the same port twice.

use std::net::{TcpListener, UdpSocket};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{bail, Context, Result};

/// The lowest port handed out: clear of the well-known and most registered services.
const FLOOR: u16 = 10_000;
/// The kernel's ephemeral range starts here unless `ip_local_port_range` says otherwise.
const DEFAULT_EPHEMERAL_LOW: u16 = 32_768;

/// Loopback ports of one run. Only `https` is chosen by the user (URLs and bookmarks
/// keep working across restarts); the rest are picked free each time.
#[derive(Debug, Clone)]
pub struct Ports {
    pub https: u16,
    pub http: u16,
    pub registration: u16,
    pub admin: u16,
    pub kms: u16,
    pub dns: u16,
    pub dns_api: u16,
}

impl Ports {
    pub fn pick(https: u16) -> Result<Ports> {
        let https = if https == 0 {
            free_port()?
        } else {
            TcpListener::bind(("127.0.0.1", https)).with_context(|| {
                format!(
                    "127.0.0.1:{https} is taken (another teegate dev, or another server?); \
                     choose another port with --port N (or --port 0 for any free one)"
                )
            })?;
            https
        };
        Ok(Ports {
            https,
            http: free_port()?,
            registration: free_port()?,
            admin: free_port()?,
            kms: free_port()?,
            // The DNS server listens on both.
            dns: pick(|port| tcp_free(port) && udp_free(port))?,
            dns_api: free_port()?,
        })
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago and that no outgoing connection
/// will be given before its server binds it.
pub fn free_port() -> Result<u16> {
    pick(tcp_free)
}

fn tcp_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

fn udp_free(port: u16) -> bool {
    UdpSocket::bind(("127.0.0.1", port)).is_ok()
}

/// The first port of the kernel's ephemeral range.
fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(DEFAULT_EPHEMERAL_LOW)
}

/// The next port in `FLOOR..ephemeral_low()` that `free` accepts. A process-wide cursor
/// walks the window, starting where the process id puts it, so two dev stacks started
/// together begin far apart and one process never repeats a port.
fn pick(free: impl Fn(u16) -> bool) -> Result<u16> {
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let high = ephemeral_low();
    if high <= FLOOR {
        return kernel_pick(free);
    }
    let span = u32::from(high - FLOOR);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(7919) % span,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..span {
        let offset = NEXT.fetch_add(1, Ordering::Relaxed) % span;
        // `offset < span = high - FLOOR`, so the sum is below `high` and fits.
        let port = FLOOR + offset as u16;
        if free(port) {
            return Ok(port);
        }
    }
    bail!("no free loopback port in {FLOOR}..{high}")
}

/// Where the ephemeral range leaves no room below it, the kernel chooses (and the race
/// described above is possible again).
fn kernel_pick(free: impl Fn(u16) -> bool) -> Result<u16> {
    for _ in 0..20 {
        let tcp = TcpListener::bind("127.0.0.1:0").context("picking a free loopback port")?;
        let port = tcp.local_addr()?.port();
        drop(tcp);
        if free(port) {
            return Ok(port);
        }
    }
    bail!("found no free loopback port")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_bindable_and_below_the_ephemeral_range() {
        let ports = Ports::pick(0).unwrap();
        let all = [
            ports.https,
            ports.http,
            ports.registration,
            ports.admin,
            ports.kms,
            ports.dns,
            ports.dns_api,
        ];
        let low = ephemeral_low();
        for (i, port) in all.iter().enumerate() {
            assert!(!all[..i].contains(port), "{port} handed out twice: {all:?}");
            if low > FLOOR {
                assert!((FLOOR..low).contains(port), "{port} outside {FLOOR}..{low}");
            }
            TcpListener::bind(("127.0.0.1", *port)).unwrap();
        }
        UdpSocket::bind(("127.0.0.1", ports.dns)).unwrap();
        // And later picks in the same process do not repeat them.
        let next = free_port().unwrap();
        assert!(!all.contains(&next));
    }

    #[test]
    fn a_taken_https_port_is_refused_with_the_way_out() {
        let held = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = held.local_addr().unwrap().port();
        let err = format!("{:#}", Ports::pick(port).unwrap_err());
        assert!(err.contains(&format!("127.0.0.1:{port} is taken")), "{err}");
        assert!(err.contains("--port"), "{err}");
    }
}
