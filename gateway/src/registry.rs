//! The in-memory routing table: app id → instances, instance id → instance, certificate
//! fingerprint → instance. Filled from verified registrations only; read on every request.
//! An instance id has one holder at a time: a record of another app, or of another
//! certificate key lineage, never replaces a live holder ([`InstanceRecord::may_replace`]),
//! and a pinned name routes only within the app that holds the id.
//! Also holds passive health (an instance that failed to connect is skipped until its
//! back-off passes) and the in-flight count used by least-connections balancing.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use ratls::{AppId, Fingerprint, InstanceId};

use crate::api::{AppInfo, InstanceInfo};
use crate::store::{Conflict, InstanceKey, InstanceRecord};

/// How to choose among an app's healthy instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    RoundRobin,
    LeastConnections,
}

/// One routable instance.
#[derive(Debug)]
pub struct Instance {
    pub record: InstanceRecord,
    down_until_ms: AtomicU64,
    in_flight: AtomicU32,
}

impl Instance {
    fn new(record: InstanceRecord) -> Self {
        Self {
            record,
            down_until_ms: AtomicU64::new(0),
            in_flight: AtomicU32::new(0),
        }
    }

    pub fn is_up(&self, now_ms: u64) -> bool {
        self.down_until_ms.load(Ordering::Relaxed) <= now_ms
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a request against this instance until the guard drops.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    fn info(&self, now_ms: u64) -> InstanceInfo {
        let r = &self.record;
        InstanceInfo {
            instance_id: r.instance_id.to_hex(),
            app_id: r.app_id.to_hex(),
            compose_hash: r.compose_hash.to_hex(),
            front_addr: r.front_addr,
            ports: r.ports.clone(),
            fingerprints: r.fingerprints.iter().map(|f| f.to_hex()).collect(),
            tcb_status: r.tcb_status.clone(),
            simulated: r.simulated,
            mrtd: r.mrtd.to_hex(),
            lease_expires_unix: r.lease_expires,
            healthy: self.is_up(now_ms),
        }
    }
}

/// Decrements the in-flight count on drop.
#[derive(Debug)]
pub struct InFlight(Arc<Instance>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why no instance could be chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PickError {
    /// No app or instance with this id is registered.
    Unknown,
    /// Registered, but every instance is down (or already tried for this request).
    AllDown,
}

/// What an id in a host name refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolved {
    App(AppId),
    /// An instance id pins that one instance of its app.
    Instance(AppId, InstanceId),
}

impl Resolved {
    /// The app the id belongs to.
    pub fn app(&self) -> AppId {
        match *self {
            Resolved::App(a) | Resolved::Instance(a, _) => a,
        }
    }
}

/// The registry's maps are read several times per request. foldhash is seeded per process,
/// and their keys are only inserted by registration, which is attested.
type Map<K, V> = DashMap<K, V, foldhash::fast::RandomState>;

#[derive(Default)]
pub struct Registry {
    apps: Map<AppId, Vec<Arc<Instance>>>,
    instances: Map<InstanceId, Arc<Instance>>,
    fingerprints: Map<Fingerprint, InstanceId>,
    next: AtomicUsize,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether `record` may take its instance id now (see [`InstanceRecord::may_replace`]).
    pub fn check_claim(&self, record: &InstanceRecord, now: u64) -> Result<(), Conflict> {
        match self.instances.get(&record.instance_id) {
            Some(holder) => record.may_replace(&holder.record, now),
            None => Ok(()),
        }
    }

    /// Adds or renews an instance (a renewal keeps its health state). Refused, changing
    /// nothing, when the id's live holder may not be replaced by `record`.
    pub fn upsert(&self, record: InstanceRecord, now: u64) -> Result<(), Conflict> {
        let id = record.instance_id;
        // The instance-id entry is the lock: the check and the swap happen under it.
        let mut slot = match self.instances.entry(id) {
            dashmap::mapref::entry::Entry::Occupied(e) => {
                record.may_replace(&e.get().record, now)?;
                e
            }
            dashmap::mapref::entry::Entry::Vacant(v) => {
                let fresh = Arc::new(Instance::new(record));
                for fp in &fresh.record.fingerprints {
                    self.fingerprints.insert(*fp, id);
                }
                self.apps
                    .entry(fresh.record.app_id)
                    .or_default()
                    .push(fresh.clone());
                v.insert(fresh);
                return Ok(());
            }
        };
        let old = slot.get().clone();
        let fresh = Arc::new(Instance::new(record));
        if old.record.app_id == fresh.record.app_id {
            fresh
                .down_until_ms
                .store(old.down_until_ms.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        // The new certificates are owned before the dropped ones go, and one kept across
        // the renewal is never removed: worker threads verify upstream connections against
        // this map meanwhile, and a miss refuses the connection and marks the instance down.
        for fp in &fresh.record.fingerprints {
            self.fingerprints.insert(*fp, id);
        }
        for fp in &old.record.fingerprints {
            if !fresh.record.fingerprints.contains(fp) {
                self.fingerprints.remove_if(fp, |_, owner| *owner == id);
            }
        }
        if old.record.app_id != fresh.record.app_id {
            // Only a lapsed holder gets here.
            self.detach(&old.record.app_id, &id);
        }
        let mut list = self.apps.entry(fresh.record.app_id).or_default();
        list.retain(|i| i.record.instance_id != id);
        list.push(fresh.clone());
        drop(list);
        *slot.get_mut() = fresh;
        Ok(())
    }

    fn detach(&self, app: &AppId, id: &InstanceId) {
        if let Some(mut list) = self.apps.get_mut(app) {
            list.retain(|i| i.record.instance_id != *id);
        }
        self.apps.remove_if(app, |_, list| list.is_empty());
    }

    /// Removes the instance `key` names; an instance id held by another app is untouched.
    pub fn remove(&self, key: &InstanceKey) -> Option<Arc<Instance>> {
        let (_, inst) = self
            .instances
            .remove_if(&key.instance, |_, i| i.record.app_id == key.app)?;
        for fp in &inst.record.fingerprints {
            self.fingerprints
                .remove_if(fp, |_, owner| *owner == key.instance);
        }
        self.detach(&inst.record.app_id, &key.instance);
        Some(inst)
    }

    /// Drops instances whose lease ended before `now` (unix seconds); returns their ids.
    pub fn expire(&self, now: u64) -> Vec<InstanceKey> {
        let lapsed: Vec<InstanceKey> = self
            .instances
            .iter()
            .filter(|e| e.record.lease_expires <= now)
            .map(|e| e.record.key())
            .collect();
        for key in &lapsed {
            self.remove(key);
        }
        lapsed
    }

    /// What `id` refers to, with its app's requests in flight (for the per-app limit). An
    /// app name, the common case, is looked up once for both.
    pub fn resolve_with_load(&self, id: &[u8; 20]) -> Option<(Resolved, u32)> {
        if let Some(list) = self.apps.get(&AppId(*id)) {
            return Some((Resolved::App(AppId(*id)), in_flight(&list)));
        }
        // Not an app: an instance id, whose app is looked up for the count.
        let inst = InstanceId(*id);
        let app = self.instances.get(&inst)?.record.app_id;
        Some((Resolved::Instance(app, inst), self.app_in_flight(&app)))
    }

    /// What `id` refers to: an app name, else an instance id (one rule, in
    /// [`Self::resolve_with_load`]; its count is not needed here).
    pub fn resolve(&self, id: &[u8; 20]) -> Option<Resolved> {
        self.resolve_with_load(id).map(|(resolved, _)| resolved)
    }

    /// Chooses an instance serving `port`, skipping down ones and those in `tried`.
    pub fn pick(
        &self,
        target: Resolved,
        port: u16,
        tried: &[InstanceId],
        balance: Balance,
        now_ms: u64,
    ) -> Result<Arc<Instance>, PickError> {
        let usable = |i: &Arc<Instance>| {
            i.is_up(now_ms)
                && !tried.contains(&i.record.instance_id)
                && i.record.ports.contains(&port)
        };
        match target {
            Resolved::Instance(app, id) => {
                let inst = self.instances.get(&id).ok_or(PickError::Unknown)?.clone();
                // The id may have changed hands since the name was resolved.
                if inst.record.app_id != app {
                    return Err(PickError::Unknown);
                }
                if usable(&inst) {
                    Ok(inst)
                } else {
                    Err(PickError::AllDown)
                }
            }
            Resolved::App(app) => {
                let list = self.apps.get(&app).ok_or(PickError::Unknown)?;
                // Counted, then walked again: no list of candidates is built per request.
                let candidates = || list.iter().filter(|i| usable(i));
                let count = candidates().count();
                let chosen = match balance {
                    _ if count == 0 => None,
                    Balance::RoundRobin => {
                        let n = self.next.fetch_add(1, Ordering::Relaxed);
                        candidates().nth(n % count)
                    }
                    Balance::LeastConnections => {
                        // Ties rotate so equal instances share the load.
                        let start = self.next.fetch_add(1, Ordering::Relaxed) % count;
                        let rotated = candidates().skip(start).chain(candidates().take(start));
                        rotated.min_by_key(|i| i.in_flight())
                    }
                };
                // An instance's health can change between the count and the walk; then
                // the first usable one, if any is left, serves.
                if let Some(chosen) = chosen.or_else(|| candidates().next()) {
                    return Ok(chosen.clone());
                }
                // Passive health is advice, not a verdict: when every instance is marked
                // down, try the one whose back-off ends first rather than refuse outright
                // (as nginx does with a single server).
                list.iter()
                    .filter(|i| {
                        !tried.contains(&i.record.instance_id) && i.record.ports.contains(&port)
                    })
                    .min_by_key(|i| i.down_until_ms.load(Ordering::Relaxed))
                    .cloned()
                    .ok_or(PickError::AllDown)
            }
        }
    }

    /// Requests in flight to all of an app's instances.
    pub fn app_in_flight(&self, app: &AppId) -> u32 {
        self.apps.get(app).map(|list| in_flight(&list)).unwrap_or(0)
    }

    pub fn mark_down(&self, id: &InstanceId, until_ms: u64) {
        if let Some(i) = self.instances.get(id) {
            i.down_until_ms.fetch_max(until_ms, Ordering::Relaxed);
        }
    }

    pub fn mark_up(&self, id: &InstanceId) {
        if let Some(i) = self.instances.get(id) {
            i.down_until_ms.store(0, Ordering::Relaxed);
        }
    }

    /// The instance a verified certificate belongs to.
    pub fn owner_of(&self, fp: &Fingerprint) -> Option<InstanceId> {
        self.fingerprints.get(fp).map(|e| *e.value())
    }

    pub fn instance(&self, id: &InstanceId) -> Option<Arc<Instance>> {
        self.instances.get(id).map(|e| e.value().clone())
    }

    pub fn instance_count(&self) -> usize {
        self.instances.len()
    }

    pub fn apps(&self, now_ms: u64) -> Vec<AppInfo> {
        let mut out: Vec<AppInfo> = self
            .apps
            .iter()
            .map(|e| AppInfo {
                app_id: e.key().to_hex(),
                instances: e.value().iter().map(|i| i.info(now_ms)).collect(),
            })
            .collect();
        out.sort_by(|a, b| a.app_id.cmp(&b.app_id));
        out
    }

    /// The instances of one app, in registration order.
    pub fn instances_of(&self, app: &AppId) -> Vec<Arc<Instance>> {
        self.apps
            .get(app)
            .map(|list| list.value().clone())
            .unwrap_or_default()
    }

    pub fn app(&self, app: &AppId, now_ms: u64) -> Option<AppInfo> {
        self.apps.get(app).map(|list| AppInfo {
            app_id: app.to_hex(),
            instances: list.iter().map(|i| i.info(now_ms)).collect(),
        })
    }
}

/// Requests in flight to an app's instances.
fn in_flight(list: &[Arc<Instance>]) -> u32 {
    list.iter().map(|i| i.in_flight()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(app: u8, inst: u8, ports: &[u16]) -> InstanceRecord {
        InstanceRecord {
            app_id: AppId([app; 20]),
            instance_id: InstanceId([inst; 20]),
            compose_hash: ratls::ComposeHash([app; 32]),
            front_addr: format!("10.0.0.{inst}:8443").parse().unwrap(),
            ports: ports.to_vec(),
            fingerprints: vec![Fingerprint([inst; 32])],
            certs: vec![],
            tcb_status: "UpToDate".into(),
            simulated: true,
            mrtd: ratls::Measurement::ZERO,
            lease_expires: 100,
            chain: vec![],
            kms_root_ca: None,
            app_compose: None,
        }
    }

    #[test]
    fn round_robin_spreads_and_skips_down_and_tried() {
        let r = Registry::new();
        r.upsert(rec(1, 1, &[80]), 0).unwrap();
        r.upsert(rec(1, 2, &[80]), 0).unwrap();
        let t = r.resolve(&[1; 20]).unwrap();
        let a = r.pick(t, 80, &[], Balance::RoundRobin, 0).unwrap();
        let b = r.pick(t, 80, &[], Balance::RoundRobin, 0).unwrap();
        assert_ne!(a.record.instance_id, b.record.instance_id);
        r.mark_down(&InstanceId([1; 20]), 1000);
        for _ in 0..4 {
            assert_eq!(
                r.pick(t, 80, &[], Balance::RoundRobin, 500)
                    .unwrap()
                    .record
                    .instance_id,
                InstanceId([2; 20])
            );
        }
        // Instance 2 already tried, instance 1 down: the down one is still better than nothing.
        let fallback = r.pick(t, 80, &[InstanceId([2; 20])], Balance::RoundRobin, 500);
        assert_eq!(fallback.unwrap().record.instance_id, InstanceId([1; 20]));
        let both = [InstanceId([1; 20]), InstanceId([2; 20])];
        assert_eq!(
            r.pick(t, 80, &both, Balance::RoundRobin, 500).unwrap_err(),
            PickError::AllDown
        );
        // Everything down: the one whose back-off ends first is tried.
        r.mark_down(&InstanceId([2; 20]), 2000);
        let first_back = r.pick(t, 80, &[], Balance::RoundRobin, 500).unwrap();
        assert_eq!(first_back.record.instance_id, InstanceId([1; 20]));
    }

    #[test]
    fn least_connections_prefers_idle_instance() {
        let r = Registry::new();
        r.upsert(rec(1, 1, &[80]), 0).unwrap();
        r.upsert(rec(1, 2, &[80]), 0).unwrap();
        let busy = r.instance(&InstanceId([1; 20])).unwrap();
        let _g1 = busy.begin();
        let _g2 = busy.begin();
        let t = r.resolve(&[1; 20]).unwrap();
        for _ in 0..4 {
            assert_eq!(
                r.pick(t, 80, &[], Balance::LeastConnections, 0)
                    .unwrap()
                    .record
                    .instance_id,
                InstanceId([2; 20])
            );
        }
        drop(_g1);
        drop(_g2);
        assert_eq!(busy.in_flight(), 0);
    }

    #[test]
    fn a_name_resolves_with_its_apps_requests_in_flight() {
        let r = Registry::new();
        r.upsert(rec(1, 1, &[80]), 0).unwrap();
        r.upsert(rec(1, 2, &[80]), 0).unwrap();
        r.upsert(rec(3, 3, &[80]), 0).unwrap();
        let one = r.instance(&InstanceId([1; 20])).unwrap();
        let two = r.instance(&InstanceId([2; 20])).unwrap();
        let _g = [one.begin(), one.begin(), two.begin()];
        // By app name and by one of its instances' ids: the whole app's count.
        assert_eq!(
            r.resolve_with_load(&[1; 20]),
            Some((Resolved::App(AppId([1; 20])), 3))
        );
        assert_eq!(
            r.resolve_with_load(&[2; 20]),
            Some((Resolved::Instance(AppId([1; 20]), InstanceId([2; 20])), 3))
        );
        // Another app's requests are not counted; an unknown id resolves to nothing.
        assert_eq!(
            r.resolve_with_load(&[3; 20]),
            Some((Resolved::App(AppId([3; 20])), 0))
        );
        assert_eq!(r.resolve_with_load(&[9; 20]), None);
    }

    #[test]
    fn instance_id_pins_and_ports_filter() {
        let r = Registry::new();
        r.upsert(rec(1, 1, &[80]), 0).unwrap();
        r.upsert(rec(1, 2, &[80, 8080]), 0).unwrap();
        let pinned = r.resolve(&[1; 20].map(|_| 1u8)).unwrap();
        assert_eq!(pinned, Resolved::App(AppId([1; 20])));
        let t = r.resolve(&[2; 20]).unwrap();
        assert_eq!(t, Resolved::Instance(AppId([1; 20]), InstanceId([2; 20])));
        assert_eq!(
            r.pick(t, 8080, &[], Balance::RoundRobin, 0)
                .unwrap()
                .record
                .instance_id,
            InstanceId([2; 20])
        );
        let app = r.resolve(&[1; 20]).unwrap();
        for _ in 0..3 {
            assert_eq!(
                r.pick(app, 8080, &[], Balance::RoundRobin, 0)
                    .unwrap()
                    .record
                    .instance_id,
                InstanceId([2; 20])
            );
        }
        assert_eq!(
            r.pick(app, 9999, &[], Balance::RoundRobin, 0).unwrap_err(),
            PickError::AllDown
        );
        assert!(r.resolve(&[9; 20]).is_none());
    }

    #[test]
    fn fingerprints_follow_upserts_removals_and_expiry() {
        let r = Registry::new();
        r.upsert(rec(1, 1, &[80]), 0).unwrap();
        assert_eq!(r.owner_of(&Fingerprint([1; 32])), Some(InstanceId([1; 20])));
        // A rotation registers the new certificate beside the current one, then drops it.
        let mut rotating = rec(1, 1, &[80]);
        rotating.fingerprints = vec![Fingerprint([1; 32]), Fingerprint([7; 32])];
        r.upsert(rotating, 0).unwrap();
        let mut renewed = rec(1, 1, &[80]);
        renewed.fingerprints = vec![Fingerprint([7; 32])];
        r.upsert(renewed, 0).unwrap();
        assert_eq!(r.owner_of(&Fingerprint([1; 32])), None);
        assert_eq!(r.owner_of(&Fingerprint([7; 32])), Some(InstanceId([1; 20])));
        assert_eq!(r.expire(99), vec![]);
        assert_eq!(r.expire(100), vec![rec(1, 1, &[80]).key()]);
        assert!(r.resolve(&[1; 20]).is_none());
        assert_eq!(r.owner_of(&Fingerprint([7; 32])), None);
        assert_eq!(r.instance_count(), 0);
    }

    #[test]
    fn a_renewal_never_hides_a_certificate_it_keeps() {
        // Renewals arrive every few seconds per instance and replica, while other worker
        // threads verify new upstream connections against the same map. A certificate
        // present before and after a renewal must be owned at every instant in between:
        // a miss refuses the connection (502) and marks the instance down.
        let r = Arc::new(Registry::new());
        let fp = Fingerprint([1; 32]);
        r.upsert(rec(1, 1, &[80]), 0).unwrap();
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (r, done) = (r.clone(), done.clone());
            std::thread::spawn(move || {
                for _ in 0..50_000 {
                    r.upsert(rec(1, 1, &[80]), 0).unwrap();
                }
                done.store(true, Ordering::Relaxed);
            })
        };
        let mut misses = 0u64;
        let mut reads = 0u64;
        while !done.load(Ordering::Relaxed) {
            reads += 1;
            if r.owner_of(&fp) != Some(InstanceId([1; 20])) {
                misses += 1;
            }
        }
        writer.join().unwrap();
        assert_eq!(
            misses, 0,
            "{misses} of {reads} lookups found no owner mid-renewal"
        );
    }

    #[test]
    fn an_instance_id_stays_with_its_live_holder() {
        let r = Registry::new();
        r.upsert(rec(1, 1, &[80]), 0).unwrap();
        // App 2 names app 1's instance id.
        let mut thief = rec(2, 1, &[80]);
        thief.fingerprints = vec![Fingerprint([66; 32])];
        assert!(matches!(
            r.upsert(thief.clone(), 50),
            Err(Conflict::OtherApp { .. })
        ));
        // App 1 with a certificate of another lineage.
        let mut other_key = rec(1, 1, &[80]);
        other_key.fingerprints = vec![Fingerprint([67; 32])];
        assert!(matches!(
            r.upsert(other_key, 50),
            Err(Conflict::OtherLineage { .. })
        ));
        // Nothing moved: the pinned name and the app still reach the holder.
        let pinned = r.resolve(&[1; 20]).unwrap();
        assert_eq!(pinned, Resolved::App(AppId([1; 20])));
        let inst = r
            .pick(
                Resolved::Instance(AppId([1; 20]), InstanceId([1; 20])),
                80,
                &[],
                Balance::RoundRobin,
                0,
            )
            .unwrap();
        assert_eq!(inst.record.app_id, AppId([1; 20]));
        assert_eq!(r.owner_of(&Fingerprint([66; 32])), None);
        assert!(r.app(&AppId([2; 20]), 0).is_none());
        // An instance-pinned name of another app does not reach it.
        assert_eq!(
            r.pick(
                Resolved::Instance(AppId([2; 20]), InstanceId([1; 20])),
                80,
                &[],
                Balance::RoundRobin,
                0
            )
            .unwrap_err(),
            PickError::Unknown
        );
        // Removing under another app's name leaves it alone.
        assert!(r.remove(&thief.key()).is_none());
        assert_eq!(r.instance_count(), 1);
        // After the holder's lease (100) lapses the id is free.
        r.upsert(thief, 100).unwrap();
        assert!(r.app(&AppId([1; 20]), 0).is_none());
        assert_eq!(
            r.owner_of(&Fingerprint([66; 32])),
            Some(InstanceId([1; 20]))
        );
    }
}
