//! The registration API: `POST /v1/register` over mutual RA-TLS. The handshake proves the
//! client holds its certificate's key; the handler then verifies the attestation (so a
//! refusal can name the failed step, `app-authorisation` among them: the app id must be
//! the compose hash's own or vouched for by a pinned KMS) and records the instance from
//! verified claims only, never moving an instance id away from its live holder
//! (`instance-conflict`).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use ratls::tls::RaTlsCheck;
use ratls::{CachingVerifier, Fingerprint, VerifiedAttestation};

use crate::api::{
    RegisterRequest, RegisterResponse, MAX_APP_COMPOSE, MAX_FRONT_CERTS, MAX_PORTS,
    MAX_REGISTER_BODY,
};
use crate::http_util::{error, json, read_body, Body, Peer};
use crate::metrics::Metrics;
use crate::refused::RefusedLog;
use crate::registry::Registry;
use crate::store::{InstanceRecord, Store};

pub struct Registrar {
    pub check: RaTlsCheck,
    pub verifier: Arc<CachingVerifier>,
    pub registry: Arc<Registry>,
    pub store: Arc<dyn Store>,
    pub metrics: Arc<Metrics>,
    pub lease: Duration,
    pub allow_loopback: bool,
    /// Refused attestations, for the attestation page.
    pub refused: Arc<RefusedLog>,
}

/// Most issuer certificates kept from a registration's presented chain.
const MAX_ISSUERS: usize = 3;

/// Addresses a registration may not point the gateway at (unless in development).
pub fn is_refused_addr(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
        }
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (v6.segments()[0] & 0xffc0) == 0xfe80
                || v6
                    .to_ipv4_mapped()
                    .is_some_and(|v4| is_refused_addr(IpAddr::V4(v4)))
        }
    }
}

impl Registrar {
    fn refuse(&self, status: StatusCode, reason: &'static str, message: String) -> Response<Body> {
        self.metrics
            .registrations
            .with_label_values(&[reason])
            .inc();
        tracing::warn!(reason, %message, "registration refused");
        error(status, message)
    }

    pub async fn handle(self: Arc<Self>, req: Request<Incoming>, peer: Peer) -> Response<Body> {
        if req.uri().path() != "/v1/register" {
            return error(
                StatusCode::NOT_FOUND,
                format!("no such endpoint {}", req.uri().path()),
            );
        }
        if req.method() != Method::POST {
            return error(StatusCode::METHOD_NOT_ALLOWED, "use POST");
        }
        let attestation = match self.check.verify_peer(&peer.certs) {
            Ok(a) => a,
            Err(e) => {
                self.refused.record(
                    peer.certs
                        .iter()
                        .take(1 + MAX_ISSUERS)
                        .map(|c| c.to_vec())
                        .collect(),
                    e.to_string(),
                    peer.addr.ip(),
                    ratls::verifier::unix_now(),
                );
                let result = match e.step {
                    ratls::Step::AppAuthorisation => "app-authorisation",
                    _ => "attestation",
                };
                return self.refuse(StatusCode::FORBIDDEN, result, e.to_string());
            }
        };
        let body = match read_body(req.into_body(), MAX_REGISTER_BODY).await {
            Ok(b) => b,
            Err(e) => return self.refuse(StatusCode::PAYLOAD_TOO_LARGE, "body", e),
        };
        let request: RegisterRequest = match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => {
                return self.refuse(
                    StatusCode::BAD_REQUEST,
                    "bad-json",
                    format!("invalid registration: {e}"),
                )
            }
        };
        match self.register(&attestation, &peer, request).await {
            Ok(resp) => {
                self.metrics.registrations.with_label_values(&["ok"]).inc();
                json(StatusCode::OK, &resp)
            }
            Err((status, reason, message)) => self.refuse(status, reason, message),
        }
    }

    async fn register(
        &self,
        attestation: &VerifiedAttestation,
        peer: &Peer,
        req: RegisterRequest,
    ) -> Result<RegisterResponse, (StatusCode, &'static str, String)> {
        let bad = |reason, m: String| (StatusCode::BAD_REQUEST, reason, m);
        if req.ports.is_empty() || req.ports.len() > MAX_PORTS || req.ports.contains(&0) {
            return Err(bad(
                "ports",
                format!("ports must list 1 to {MAX_PORTS} ports in 1-65535"),
            ));
        }
        if req.front_certs.len() > MAX_FRONT_CERTS {
            return Err(bad(
                "front-certs",
                format!("at most {MAX_FRONT_CERTS} front certificates"),
            ));
        }
        if !self.allow_loopback && is_refused_addr(req.front_addr.ip()) {
            return Err((
                StatusCode::FORBIDDEN,
                "address",
                format!(
                    "front address {} is loopback, link-local or unspecified; refused",
                    req.front_addr
                ),
            ));
        }
        let client_cert = peer.certs.first().map(|c| c.to_vec()).unwrap_or_default();
        let mut certs = vec![client_cert];
        let mut fingerprints = vec![*attestation.fingerprint()];
        // Front certificates come from the same instance: judged with the issuers its
        // client certificate was presented with.
        let issuers: Vec<&[u8]> = peer
            .certs
            .iter()
            .skip(1)
            .take(MAX_ISSUERS)
            .map(|c| c.as_ref())
            .collect();
        for (i, hex_der) in req.front_certs.iter().enumerate() {
            let der = hex::decode(hex_der)
                .map_err(|e| bad("front-certs", format!("front_certs[{i}] is not hex: {e}")))?;
            let v = self.verifier.verify_chain(&der, &issuers).map_err(|e| {
                (
                    StatusCode::FORBIDDEN,
                    "front-cert-attestation",
                    format!("front_certs[{i}]: {e}"),
                )
            })?;
            if v.app_id() != attestation.app_id() || v.instance_id() != attestation.instance_id() {
                return Err((
                    StatusCode::FORBIDDEN,
                    "front-cert-identity",
                    format!("front_certs[{i}] attests another app or instance"),
                ));
            }
            if !fingerprints.contains(v.fingerprint()) {
                fingerprints.push(*v.fingerprint());
                certs.push(der);
            }
        }
        let app_compose = match req.app_compose {
            Some(text) if text.len() > MAX_APP_COMPOSE => {
                return Err(bad(
                    "app-compose",
                    format!("app_compose is over {MAX_APP_COMPOSE} bytes"),
                ))
            }
            Some(text) => {
                let hash = ratls::ComposeHash::of(text.as_bytes());
                if hash != *attestation.compose_hash() {
                    return Err((
                        StatusCode::FORBIDDEN,
                        "app-compose",
                        format!(
                            "app_compose hashes to {} but the attested compose hash is {}",
                            hash.to_hex(),
                            attestation.compose_hash().to_hex()
                        ),
                    ));
                }
                Some(text)
            }
            None => None,
        };
        let kms_root_ca = match req.kms_root_ca {
            Some(h) => {
                let der = hex::decode(&h)
                    .map_err(|e| bad("kms-root-ca", format!("kms_root_ca is not hex: {e}")))?;
                x509_parser::parse_x509_certificate(&der).map_err(|e| {
                    bad(
                        "kms-root-ca",
                        format!("kms_root_ca is not a certificate: {e}"),
                    )
                })?;
                Some(h)
            }
            None => None,
        };
        let chain = peer
            .certs
            .iter()
            .skip(1)
            .take(MAX_ISSUERS)
            .map(hex::encode)
            .collect();
        let now = ratls::verifier::unix_now();
        let record = InstanceRecord {
            app_id: *attestation.app_id(),
            instance_id: *attestation.instance_id(),
            compose_hash: *attestation.compose_hash(),
            front_addr: req.front_addr,
            ports: req.ports,
            fingerprints: fingerprints.clone(),
            certs: certs.iter().map(hex::encode).collect(),
            tcb_status: attestation.tcb_status().to_string(),
            simulated: attestation.is_simulated(),
            mrtd: *attestation.mrtd(),
            lease_expires: now + self.lease.as_secs(),
            chain,
            kms_root_ca,
            app_compose,
        };
        let conflict = |e: crate::store::Conflict| {
            (
                StatusCode::CONFLICT,
                "instance-conflict",
                format!("instance-conflict: {e}"),
            )
        };
        // Judged against the routing table first, so a refusal writes nothing; the store
        // judges again atomically (another replica may hold the id).
        self.registry.check_claim(&record, now).map_err(conflict)?;
        self.store
            .put_instance(&record)
            .await
            .map_err(|e| match e {
                crate::store::StoreError::Conflict(c) => conflict(c),
                e => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store",
                    format!("could not record the registration: {e}"),
                ),
            })?;
        self.registry
            .upsert(record.clone(), now)
            .map_err(conflict)?;
        self.metrics
            .registered_instances
            .set(self.registry.instance_count() as i64);
        tracing::info!(
            app = %record.app_id, instance = %record.instance_id, front = %record.front_addr,
            simulated = record.simulated, "instance registered"
        );
        Ok(RegisterResponse {
            app_id: record.app_id.to_hex(),
            instance_id: record.instance_id.to_hex(),
            lease_secs: self.lease.as_secs(),
            accepted_fingerprints: fingerprints.iter().map(Fingerprint::to_hex).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_loopback_link_local_and_unspecified() {
        for a in [
            "127.0.0.1",
            "::1",
            "169.254.1.1",
            "0.0.0.0",
            "fe80::1",
            "::ffff:127.0.0.1",
            "224.0.0.1",
        ] {
            assert!(is_refused_addr(a.parse().unwrap()), "{a}");
        }
        for a in ["10.0.0.5", "192.168.1.2", "203.0.113.9", "2001:db8::1"] {
            assert!(!is_refused_addr(a.parse().unwrap()), "{a}");
        }
    }
}
