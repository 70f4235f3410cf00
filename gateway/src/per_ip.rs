//! Open client connections counted per source address, so one address cannot hold all
//! of `limits.max_connections` (every slot it takes is one a genuine client lacks).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

pub struct PerIp {
    max: u32,
    open: Mutex<HashMap<IpAddr, u32>>,
}

/// One connection's slot; freed when dropped.
pub struct IpSlot {
    owner: Arc<PerIp>,
    ip: IpAddr,
}

impl PerIp {
    pub fn new(max: u32) -> Arc<Self> {
        Arc::new(PerIp {
            max,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for a connection from `ip`, or `None` when it already holds `max`.
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Option<IpSlot> {
        // An IPv4 client reaching a dual-stack listener appears as ::ffff:a.b.c.d; it is
        // the same address.
        let ip = ip.to_canonical();
        // A poisoned lock only means another connection panicked mid-update; the counts
        // are still whole numbers, so keep using them.
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(ip).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(IpSlot {
            owner: self.clone(),
            ip,
        })
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.open.lock().map(|o| o.len()).unwrap_or(0)
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut open = self.owner.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            // Forget addresses with nothing open, so the map is bounded by open connections.
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_each_address_separately_and_frees_on_drop() {
        let limit = PerIp::new(2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let s1 = limit.try_acquire(a).unwrap();
        let _s2 = limit.try_acquire(a).unwrap();
        assert!(limit.try_acquire(a).is_none(), "third slot for one address");
        // The mapped IPv6 form is the same client.
        assert!(limit
            .try_acquire("::ffff:192.0.2.1".parse().unwrap())
            .is_none());
        let _b1 = limit.try_acquire(b).expect("another address is unaffected");
        drop(s1);
        let _s3 = limit
            .try_acquire(a)
            .expect("a freed slot can be taken again");
        assert_eq!(limit.tracked(), 2);
    }

    #[test]
    fn forgets_addresses_with_no_connections() {
        let limit = PerIp::new(1);
        for i in 0..100u8 {
            drop(limit.try_acquire(IpAddr::from([198, 51, 100, i])).unwrap());
        }
        assert_eq!(limit.tracked(), 0);
    }
}
