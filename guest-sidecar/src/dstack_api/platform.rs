//! The values dstack's `Info` reports about the CVM itself, computed as dstack defines them
//! (its `dstack-attest` crate, `decode_app_info` for TDX), from this CVM's own quote:
//!
//! | field | dstack's definition | here |
//! |---|---|---|
//! | `mr_aggregated` | SHA-256(MRTD ‖ RTMR0 ‖ RTMR1 ‖ RTMR2 ‖ RTMR3, then MRCONFIGID ‖ MROWNER ‖ MROWNERCONFIG when any is non-zero), RTMR3 replayed from the runtime events | the same, from a fresh quote (RTMR3 moves with emitted events) |
//! | `device_id` | SHA-256 of the PPID in the quote's PCK certificate (what dstack's KMS sees) | the same; dstack's guest agent, which does not verify its own quote, reports SHA-256 of nothing instead, and so does this one when the quote carries no PCK certificate |
//! | `os_image_hash` | SHA-256 of the dstack OS image's file digests, from the host's `vm_config` (the KMS checks it against MRTD/RTMR0-2) | there is no dstack OS image: SHA-256(MRTD ‖ RTMR0 ‖ RTMR1 ‖ RTMR2), the measured firmware, kernel, command line and initrd that such an image would fix (on a simulated CVM, the simulated measurements) |
//! | `vm_config` | the host's VM description (JSON) | `{"spec_version":1,"os_image_hash","cpu_count","memory_size"}` of this VM, also the `config` of `Attest` |
//! | `cloud_vendor`, `cloud_product` | DMI `sys_vendor`, `product_name` | the same (empty where the machine has no DMI) |

use ratls::Quote;
use sha2::{Digest, Sha256};

/// What `Info` says about the platform, fixed at boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os_image_hash: [u8; 32],
    pub device_id: [u8; 32],
    /// dstack's `vm_config` JSON.
    pub vm_config: String,
    pub cloud_vendor: String,
    pub cloud_product: String,
}

/// SHA-256(MRTD ‖ RTMR0 ‖ RTMR1 ‖ RTMR2): the boot-time measurements that identify the OS.
pub fn os_image_hash(q: &Quote) -> [u8; 32] {
    let r = q.rtmrs();
    let mut h = Sha256::new();
    h.update(q.mrtd().0);
    for m in &r[..3] {
        h.update(m.0);
    }
    h.finalize().into()
}

/// dstack's `mr_aggregated` of a quote whose RTMR3 the runtime event log replays to.
pub fn mr_aggregated(q: &Quote) -> [u8; 32] {
    let r = q.rtmrs();
    let mut h = Sha256::new();
    h.update(q.mrtd().0);
    for m in &r {
        h.update(m.0);
    }
    // dstack keeps the old value for TDs that set none of these (backward compatibility).
    let extra = [q.mr_config_id(), q.mr_owner(), q.mr_owner_config()];
    if extra.iter().any(|m| m.0 != [0; 48]) {
        for m in &extra {
            h.update(m.0);
        }
    }
    h.finalize().into()
}

/// SHA-256 of the PPID in the quote's PCK certificate; SHA-256 of nothing without one.
pub fn device_id(q: &Quote) -> [u8; 32] {
    let ppid = q
        .pck_chain()
        .ok()
        .and_then(|chain| chain.into_iter().next())
        .and_then(|leaf| dcap_qvl::intel::parse_pck_extension(&leaf).ok())
        .map(|ext| ext.ppid)
        .unwrap_or_default();
    Sha256::digest(&ppid).into()
}

fn dmi(name: &str) -> String {
    std::fs::read_to_string(format!("/sys/class/dmi/id/{name}"))
        .map(|s| s.trim().chars().take(256).collect())
        .unwrap_or_default()
}

fn memory_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

impl Platform {
    /// From a quote of this CVM and the machine's own description.
    pub fn of(q: &Quote) -> Self {
        let os_image_hash = os_image_hash(q);
        let cpu_count = std::thread::available_parallelism().map_or(0, |n| n.get());
        let vm_config = serde_json::json!({
            "spec_version": 1,
            "os_image_hash": hex::encode(os_image_hash),
            "cpu_count": cpu_count,
            "memory_size": memory_bytes(),
        })
        .to_string();
        Self {
            os_image_hash,
            device_id: device_id(q),
            vm_config,
            cloud_vendor: dmi("sys_vendor"),
            cloud_product: dmi("product_name"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratls::provider::{Measurer, SimulatedProvider};
    use ratls::{Measurement, ReportData};
    use std::sync::Arc;

    fn quote(m: &Measurer) -> Quote {
        Quote::parse(&m.quote(&ReportData::ZERO).unwrap().0).unwrap()
    }

    #[test]
    fn values_follow_dstacks_formulas() {
        let sim = SimulatedProvider::with_measurements(
            Measurement([1; 48]),
            [
                Measurement([2; 48]),
                Measurement([3; 48]),
                Measurement([4; 48]),
            ],
        );
        let m = Measurer::new(Arc::new(sim));
        m.emit("app-id", vec![9; 20]).unwrap();
        let q = quote(&m);
        let cat = |parts: &[[u8; 48]]| -> [u8; 32] { Sha256::digest(parts.concat()).into() };
        assert_eq!(
            os_image_hash(&q),
            cat(&[[1; 48], [2; 48], [3; 48], [4; 48]])
        );
        let rtmr3 = m.event_log().replay().0;
        assert_eq!(q.rtmr3().0, rtmr3);
        // MRCONFIGID, MROWNER and MROWNERCONFIG are zero here, so they are left out.
        assert_eq!(
            mr_aggregated(&q),
            cat(&[[1; 48], [2; 48], [3; 48], [4; 48], rtmr3])
        );
        // An emitted event moves mr_aggregated, not the OS hash.
        m.emit("app-ready", b"x".to_vec()).unwrap();
        let q2 = quote(&m);
        assert_ne!(mr_aggregated(&q2), mr_aggregated(&q));
        assert_eq!(os_image_hash(&q2), os_image_hash(&q));
    }

    #[test]
    fn device_id_is_the_hash_of_the_pck_certificates_ppid() {
        let q = quote(&Measurer::new(Arc::new(SimulatedProvider::new())));
        let leaf = q.pck_chain().unwrap().remove(0);
        let ppid = dcap_qvl::intel::parse_pck_extension(&leaf).unwrap().ppid;
        assert_eq!(ppid.len(), 16);
        let want: [u8; 32] = Sha256::digest(&ppid).into();
        assert_eq!(device_id(&q), want);
        assert_ne!(want, <[u8; 32]>::from(Sha256::digest(b"")));
        let p = Platform::of(&q);
        let vm: serde_json::Value = serde_json::from_str(&p.vm_config).unwrap();
        assert_eq!(vm["os_image_hash"], hex::encode(p.os_image_hash));
        assert!(vm["memory_size"].as_u64().unwrap() > 0);
    }
}
