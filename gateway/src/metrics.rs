//! Prometheus metrics, served on the admin listener at `/metrics`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::OnceLock;

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use ratls::AppId;
use thread_local::ThreadLocal;

use crate::head::ClientProto;

/// Most (app, status) counters one thread keeps at hand; past it the table starts afresh.
const COUNTERS_PER_THREAD: usize = 4096;

type RequestCounters = HashMap<(AppId, u16), IntCounter, foldhash::fast::RandomState>;

pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub request_duration: Histogram,
    pub tls_handshakes: IntCounterVec,
    pub upstream_failures: IntCounterVec,
    /// Requests the fast path answered, by client protocol (`h1`, `h2`); the rest of
    /// `teegate_requests_total` went through pingora's proxy phases.
    pub fast_path: IntCounterVec,
    pub active_connections: IntGauge,
    pub registered_instances: IntGauge,
    pub cert_not_after: IntGaugeVec,
    pub registrations: IntCounterVec,
    pub passthrough: IntCounterVec,
    pub acme_attempts: IntCounterVec,
    pub on_demand: IntCounterVec,
    /// 1 while the store answers (always for the embedded one), 0 during an etcd outage.
    pub store_up: IntGauge,
    pub store_errors: IntCounterVec,
    /// Stored records sealed under a key this gateway does not hold (never served or
    /// overwritten; listed by the admin API at `/v1/sealing`).
    pub sealed_unreadable: IntGauge,
    /// Each thread's `requests` counters by app and status, and `fast_path`'s two, looked
    /// up once: finding a labelled counter hex-encodes the app id and hashes the label
    /// strings under the metric's lock, which was a tenth of a keep-alive request's own work.
    request_counters: ThreadLocal<RefCell<RequestCounters>>,
    fast_h1: OnceLock<IntCounter>,
    fast_h2: OnceLock<IntCounter>,
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    // Names are fixed and unique here, so registration cannot collide.
    let _ = r.register(Box::new(c.clone()));
    c
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = counter(
            &registry,
            "teegate_requests_total",
            "HTTP requests by app and status",
            &["app", "status"],
        );
        let request_duration = Histogram::with_opts(
            HistogramOpts::new(
                "teegate_request_duration_seconds",
                "Time from request to response end",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ]),
        )
        .unwrap_or_else(|e| panic!("histogram: {e}"));
        let _ = registry.register(Box::new(request_duration.clone()));
        let tls_handshakes = counter(
            &registry,
            "teegate_tls_handshakes_total",
            "Downstream TLS handshakes by result (ok or failure reason)",
            &["result"],
        );
        let upstream_failures = counter(
            &registry,
            "teegate_upstream_failures_total",
            "Upstream connect and verification failures by reason",
            &["reason"],
        );
        let fast_path = counter(
            &registry,
            "teegate_fast_path_requests_total",
            "Requests answered by the fast path, by client protocol",
            &["protocol"],
        );
        let active_connections =
            IntGauge::new("teegate_active_connections", "Open downstream connections")
                .unwrap_or_else(|e| panic!("{e}"));
        let _ = registry.register(Box::new(active_connections.clone()));
        let registered_instances = IntGauge::new(
            "teegate_registered_instances",
            "Instances with a live registration",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let _ = registry.register(Box::new(registered_instances.clone()));
        let cert_not_after = IntGaugeVec::new(
            Opts::new(
                "teegate_cert_not_after_seconds",
                "Expiry (unix seconds) of each served certificate",
            ),
            &["name"],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let _ = registry.register(Box::new(cert_not_after.clone()));
        let registrations = counter(
            &registry,
            "teegate_registrations_total",
            "Registration attempts by result",
            &["result"],
        );
        let passthrough = counter(
            &registry,
            "teegate_passthrough_connections_total",
            "TLS passthrough connections by result",
            &["result"],
        );
        let acme_attempts = counter(
            &registry,
            "teegate_acme_attempts_total",
            "Certificate issuance attempts by result",
            &["result"],
        );
        let on_demand = counter(
            &registry,
            "teegate_on_demand_certificates_total",
            "On-demand certificate decisions for custom domains by result",
            &["result"],
        );
        let store_up = IntGauge::new(
            "teegate_store_up",
            "1 while the state store answers, 0 while it is unreachable (the gateway serves from memory)",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let _ = registry.register(Box::new(store_up.clone()));
        store_up.set(1);
        let store_errors = counter(
            &registry,
            "teegate_store_errors_total",
            "Failed state store operations by operation",
            &["op"],
        );
        let sealed_unreadable = IntGauge::new(
            "teegate_sealed_records_unreadable",
            "Stored private-key records this gateway cannot open (sealed under another gateway's key, or altered)",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let _ = registry.register(Box::new(sealed_unreadable.clone()));
        Self {
            sealed_unreadable,
            store_up,
            store_errors,
            on_demand,
            acme_attempts,
            registry,
            requests,
            request_duration,
            tls_handshakes,
            upstream_failures,
            fast_path,
            active_connections,
            registered_instances,
            cert_not_after,
            registrations,
            passthrough,
            request_counters: ThreadLocal::new(),
            fast_h1: OnceLock::new(),
            fast_h2: OnceLock::new(),
        }
    }

    /// Counts one request to `app` answered with `status` (0: none was sent).
    pub fn count_request(&self, app: &AppId, status: u16) {
        let mut table = self.request_counters.get_or_default().borrow_mut();
        if let Some(c) = table.get(&(*app, status)) {
            c.inc();
            return;
        }
        if table.len() >= COUNTERS_PER_THREAD {
            table.clear();
        }
        let mut hex = [0u8; 40];
        let c = self
            .requests
            .with_label_values(&[app.hex_into(&mut hex), status_label(status)]);
        c.inc();
        table.insert((*app, status), c);
    }

    /// Counts one request the fast path answered for a client speaking `protocol` (the
    /// label: `h1` or `h2`).
    pub fn count_fast_path(&self, protocol: ClientProto) {
        let (cell, label) = match protocol {
            ClientProto::Http1 => (&self.fast_h1, "h1"),
            ClientProto::Http2 => (&self.fast_h2, "h2"),
        };
        cell.get_or_init(|| self.fast_path.with_label_values(&[label]))
            .inc();
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding gathered families into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// The status as a metric label without formatting the common ones.
pub fn status_label(status: u16) -> &'static str {
    match status {
        200 => "200",
        201 => "201",
        204 => "204",
        206 => "206",
        301 => "301",
        302 => "302",
        304 => "304",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        500 => "500",
        502 => "502",
        503 => "503",
        504 => "504",
        0 => "0",
        // Statuses are three digits, so at most 900 distinct labels are ever leaked.
        _ => Box::leak(status.to_string().into_boxed_str()),
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line_value(text: &str, prefix: &str) -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix)?.trim().parse().ok())
    }

    #[test]
    fn requests_counted_through_each_threads_table_reach_the_exposition() {
        let m = Metrics::new();
        let a = AppId([0xab; 20]);
        let b = AppId([0x01; 20]);
        for _ in 0..3 {
            m.count_request(&a, 200);
        }
        m.count_request(&a, 502);
        // Another thread has its own table over the same counters.
        std::thread::scope(|s| {
            s.spawn(|| {
                m.count_request(&a, 200);
                m.count_request(&b, 0);
            });
        });
        m.count_fast_path(ClientProto::Http1);
        m.count_fast_path(ClientProto::Http2);
        m.count_fast_path(ClientProto::Http2);
        let text = m.render();
        let app = |id: &AppId, status: &str| {
            let prefix = format!(
                "teegate_requests_total{{app=\"{}\",status=\"{status}\"}}",
                id.to_hex()
            );
            line_value(&text, &prefix)
        };
        assert_eq!(app(&a, "200"), Some(4), "{text}");
        assert_eq!(app(&a, "502"), Some(1));
        assert_eq!(app(&b, "0"), Some(1));
        assert_eq!(app(&b, "200"), None);
        let fast = |p: &str| {
            line_value(
                &text,
                &format!("teegate_fast_path_requests_total{{protocol=\"{p}\"}}"),
            )
        };
        assert_eq!((fast("h1"), fast("h2")), (Some(1), Some(2)));
    }

    #[test]
    fn a_full_table_starts_afresh_and_loses_no_count() {
        let m = Metrics::new();
        let apps: Vec<AppId> = (0..=COUNTERS_PER_THREAD as u32)
            .map(|i| {
                let mut id = [0u8; 20];
                id[..4].copy_from_slice(&i.to_be_bytes());
                AppId(id)
            })
            .collect();
        for id in apps.iter().chain(&apps[..2]) {
            m.count_request(id, 200);
        }
        let text = m.render();
        let total: u64 = text
            .lines()
            .filter(|l| l.starts_with("teegate_requests_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum();
        assert_eq!(total, apps.len() as u64 + 2);
        assert!(m
            .request_counters
            .get()
            .is_some_and(|t| t.borrow().len() <= 3));
    }
}
