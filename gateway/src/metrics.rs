//! Prometheus metrics, served on the admin listener at `/metrics`.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

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
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding gathered families into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
