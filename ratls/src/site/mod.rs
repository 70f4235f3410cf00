//! Verifying a site a teegate gateway terminates (`https://<app-id>.<base>/`) the way a
//! browser cannot: take the certificate the TLS handshake actually delivered (checked
//! against the usual web PKI or a given CA), fetch the gateway's evidence over that same
//! connection and verify it ([`crate::gateway_evidence`]), check the received
//! certificate's key is one the quote binds, apply the gateway pins, then fetch the app's
//! page and verify every instance certificate locally with the same verifier the gateway
//! uses, under the app pins. Every failure names its step ([`SiteStep`]).
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use teegate_ratls::{pins::Pins, site};
//! let check = site::SiteCheck::new(site::system_roots()?)
//!     .gateway(Pins { compose_hash: Some("ab".repeat(32).parse()?), ..Pins::default() });
//! let report = site::verify_site("https://0123456789abcdef0123456789abcdef01234567.apps.example/", &check);
//! report.result()?;
//! # Ok(()) }
//! ```

mod http;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::gateway_evidence::{BoundKey, GatewayDocument, GatewayError, WELL_KNOWN_PATH};
use crate::pins::Pins;
use crate::types::{AppId, Fingerprint, SpkiHash};
use crate::{Step, VerifiedAttestation, VerifiedGateway};

/// Largest app page read (up to 64 instances, each with its event log and compose file).
pub const MAX_APP_PAGE_LEN: usize = 16 * 1024 * 1024;
/// Most instances of one app verified.
pub const MAX_INSTANCES: usize = 64;

/// What to check, and how to reach the site.
#[derive(Clone)]
pub struct SiteCheck {
    /// Trust anchors for the certificate the gateway presents (web PKI roots or a private CA).
    pub roots: Arc<rustls::RootCertStore>,
    /// What the gateway must attest (its compose hash, app id, MRTD, …).
    pub gateway: Pins,
    /// What every instance of the app must attest. The app id defaults to the URL's.
    pub app: Pins,
    /// Connect here (`host:port`) instead of resolving the URL's host.
    pub connect: Option<String>,
    /// The gateway's base domain, for a URL whose host is not `<app-id>.<base>` (a
    /// custom domain); the app id then comes from `app.app_id`.
    pub base_domain: Option<String>,
    /// The whole check's deadline.
    pub timeout: Duration,
}

impl SiteCheck {
    pub fn new(roots: rustls::RootCertStore) -> Self {
        Self {
            roots: Arc::new(roots),
            gateway: Pins::default(),
            app: Pins::default(),
            connect: None,
            base_domain: None,
            timeout: Duration::from_secs(30),
        }
    }

    pub fn gateway(mut self, pins: Pins) -> Self {
        self.gateway = pins;
        self
    }

    pub fn app(mut self, pins: Pins) -> Self {
        self.app = pins;
        self
    }
}

/// The operating system's trust store, for gateways with public certificates.
pub fn system_roots() -> Result<rustls::RootCertStore, SiteError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(SiteError::new(
            SiteStep::Tls,
            format!(
                "no trusted CA certificate found in the system store ({} errors)",
                found.errors.len()
            ),
        ));
    }
    Ok(roots)
}

/// Where a site check failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SiteStep {
    /// The URL is not one this check understands.
    Url,
    /// Connecting, or the TLS handshake (the web PKI refused the certificate).
    Tls,
    /// A page could not be fetched or decoded.
    Fetch,
    GatewayQuote,
    GatewayKeyBinding,
    GatewayPin,
    /// An instance certificate failed the RA-TLS step named.
    Instance(Step),
    /// The gateway lists no instance of the app.
    NoInstance,
}

impl SiteStep {
    pub fn as_str(self) -> &'static str {
        match self {
            SiteStep::Url => "url",
            SiteStep::Tls => "tls",
            SiteStep::Fetch => "fetch",
            SiteStep::GatewayQuote => "gateway-quote",
            SiteStep::GatewayKeyBinding => "gateway-key-binding",
            SiteStep::GatewayPin => "gateway-pin",
            SiteStep::Instance(s) => s.as_str(),
            SiteStep::NoInstance => "no-instance",
        }
    }
}

impl std::fmt::Display for SiteStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed site check: the step and what went wrong there.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize)]
#[error("{step}: {reason}")]
pub struct SiteError {
    pub step: SiteStep,
    pub reason: String,
}

impl SiteError {
    fn new(step: SiteStep, reason: impl Into<String>) -> Self {
        Self {
            step,
            reason: reason.into(),
        }
    }
}

impl From<GatewayError> for SiteError {
    fn from(e: GatewayError) -> Self {
        use crate::gateway_evidence::GatewayStep as G;
        let step = match e.step {
            G::GatewayQuote => SiteStep::GatewayQuote,
            G::GatewayKeyBinding => SiteStep::GatewayKeyBinding,
            G::GatewayPin => SiteStep::GatewayPin,
        };
        Self::new(step, e.reason.to_string())
    }
}

/// The certificate the TLS handshake delivered.
#[derive(Debug, Clone, Serialize)]
pub struct ReceivedCert {
    pub fingerprint: Fingerprint,
    pub spki_sha256: SpkiHash,
    pub subject: String,
    pub issuer: String,
    pub not_after: i64,
}

/// One instance the app page lists, and how its verification came out.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceResult {
    /// What the page claims; believed only when `verified` is set.
    pub claimed_instance_id: String,
    pub fingerprint: Option<Fingerprint>,
    pub verified: Option<VerifiedAttestation>,
    pub error: Option<String>,
}

/// Everything a site check found, including how far it got when it failed.
#[derive(Debug, Clone, Serialize)]
pub struct SiteReport {
    pub url: String,
    pub base_domain: Option<String>,
    pub app_id: Option<AppId>,
    pub received: Option<ReceivedCert>,
    pub gateway: Option<VerifiedGateway>,
    /// The bound key the received certificate matched.
    pub bound: Option<BoundKey>,
    pub instances: Vec<InstanceResult>,
    pub error: Option<SiteError>,
}

impl SiteReport {
    pub fn result(&self) -> Result<(), SiteError> {
        match &self.error {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    pub fn passed(&self) -> bool {
        self.error.is_none()
    }
}

/// A URL's parts, as this check needs them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteUrl {
    pub host: String,
    pub port: u16,
    /// `<app-id>` from a `<app-id>[-port][g].<base>` host.
    pub app_id: Option<AppId>,
    pub base_domain: Option<String>,
    /// A `…s.<base>` name: TLS is passed through to the instance, which presents its own
    /// RA-TLS certificate; check that directly instead.
    pub passthrough: bool,
}

/// Parses `https://host[:port][/…]` and, when the host is a teegate name, its app id and
/// base domain.
pub fn parse_url(url: &str) -> Result<SiteUrl, SiteError> {
    let bad = |m: &str| SiteError::new(SiteStep::Url, format!("{url}: {m}"));
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| bad("must start with https://"))?;
    let hostport = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    if hostport.contains('@') || hostport.is_empty() {
        return Err(bad("no host"));
    }
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if !h.contains(']') || h.ends_with(']') => {
            (h, p.parse::<u16>().map_err(|_| bad("bad port"))?)
        }
        _ => (hostport, 443),
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let (label, base) = match host.split_once('.') {
        Some((l, b)) if !b.is_empty() => (l, Some(b)),
        _ => (host.as_str(), None),
    };
    let (app, passthrough) = name_label(label);
    Ok(SiteUrl {
        app_id: app,
        base_domain: base.filter(|_| app.is_some()).map(str::to_string),
        passthrough: passthrough && app.is_some(),
        host: host.clone(),
        port,
    })
}

/// `<40 hex>[-<port>][s|g]` → the id and whether it is a passthrough name.
fn name_label(label: &str) -> (Option<AppId>, bool) {
    let (rest, passthrough) = match label.strip_suffix('s') {
        Some(r) => (r, true),
        None => (label.strip_suffix('g').unwrap_or(label), false),
    };
    let id_part = match rest.split_once('-') {
        Some((id, port)) if port.parse::<u16>().is_ok() => id,
        Some(_) => return (None, false),
        None => rest,
    };
    if id_part.len() != 40 {
        return (None, false);
    }
    (id_part.parse().ok(), passthrough)
}

/// The app page's JSON, as far as this check reads it.
#[derive(Deserialize)]
struct AppPage {
    #[serde(default)]
    instances: Vec<PageInstance>,
}

#[derive(Deserialize)]
struct PageInstance {
    #[serde(default)]
    instance_id: String,
    /// DER as hex, leaf first, then its issuers.
    #[serde(default)]
    certificates: Vec<String>,
}

/// Runs the whole check. The report says how far it got; [`SiteReport::result`] is its
/// verdict.
pub fn verify_site(url: &str, check: &SiteCheck) -> SiteReport {
    let mut report = SiteReport {
        url: url.to_string(),
        base_domain: None,
        app_id: None,
        received: None,
        gateway: None,
        bound: None,
        instances: Vec::new(),
        error: None,
    };
    if let Err(e) = run(url, check, &mut report) {
        report.error = Some(e);
    }
    report
}

fn tls_config(check: &SiteCheck) -> Result<Arc<rustls::ClientConfig>, SiteError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| SiteError::new(SiteStep::Tls, e.to_string()))?
        .with_root_certificates(check.roots.clone())
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn run(url: &str, check: &SiteCheck, report: &mut SiteReport) -> Result<(), SiteError> {
    let parsed = parse_url(url)?;
    if parsed.passthrough {
        return Err(SiteError::new(
            SiteStep::Url,
            format!("{} is a passthrough name: the instance presents its own RA-TLS certificate, so verify that directly", parsed.host),
        ));
    }
    let base = check
        .base_domain
        .clone()
        .or(parsed.base_domain.clone())
        .ok_or_else(|| {
            SiteError::new(
                SiteStep::Url,
                format!("{} is not an <app-id>.<base> name: give the gateway's base domain (and the app id) for a custom domain", parsed.host),
            )
        })?;
    let app_id = parsed.app_id.or(check.app.app_id).ok_or_else(|| {
        SiteError::new(
            SiteStep::Url,
            format!("{} names no app id: pin one", parsed.host),
        )
    })?;
    report.base_domain = Some(base.clone());
    report.app_id = Some(app_id);
    let addr = check
        .connect
        .clone()
        .unwrap_or_else(|| format!("{}:{}", parsed.host, parsed.port));
    let base_host = match parsed.port {
        443 => base.clone(),
        p => format!("{base}:{p}"),
    };
    let deadline = Instant::now() + check.timeout;
    let config = tls_config(check)?;
    let connect = || {
        http::Conn::connect(&addr, &parsed.host, config.clone(), deadline)
            .map_err(|e| SiteError::new(SiteStep::Tls, e.message))
    };
    let fetch = |e: http::HttpError| SiteError::new(SiteStep::Fetch, e.message);

    // 1. The certificate this connection actually received.
    let mut conn = connect()?;
    let chain = conn.peer_chain();
    let leaf = chain
        .first()
        .ok_or_else(|| SiteError::new(SiteStep::Tls, "the server presented no certificate"))?
        .to_vec();
    report.received = Some(received(&leaf)?);

    // 2. The gateway's evidence, over the same connection (the base domain's host).
    let body = conn
        .get(
            &base_host,
            WELL_KNOWN_PATH,
            crate::gateway_evidence::MAX_DOCUMENT_LEN,
        )
        .map_err(fetch)?;
    let evidence = GatewayDocument::from_json(&body)
        .and_then(GatewayDocument::into_evidence)
        .map_err(SiteError::from)?;
    let gateway = check
        .gateway
        .verifier()
        .verify_gateway(&evidence)
        .map_err(SiteError::from)?;
    // The verified evidence goes in the report even when the received key is not one it
    // binds: the report then shows which gateway was checked and what it does bind.
    let bound = gateway.binding_of_certificate(&leaf).cloned();
    report.gateway = Some(gateway);
    report.bound = Some(bound.map_err(SiteError::from)?);

    // 3. The app's instances, from the page this attested gateway serves, each verified
    // here rather than taken on the gateway's word.
    if conn.is_closed() {
        conn = connect()?;
        if conn.peer_chain().first().map(|c| c.as_ref()) != Some(leaf.as_slice()) {
            return Err(SiteError::new(
                SiteStep::GatewayKeyBinding,
                "the server closed the connection and presented another certificate on the next one",
            ));
        }
    }
    let page = conn
        .get(
            &base_host,
            &format!("/apps/{}.json", app_id.to_hex()),
            MAX_APP_PAGE_LEN,
        )
        .map_err(fetch)?;
    let page: AppPage = serde_json::from_slice(&page)
        .map_err(|e| SiteError::new(SiteStep::Fetch, format!("the app page: {e}")))?;
    if page.instances.is_empty() {
        return Err(SiteError::new(
            SiteStep::NoInstance,
            format!("the gateway lists no instance of app {app_id}"),
        ));
    }
    let app_pins = Pins {
        app_id: Some(app_id),
        ..check.app.clone()
    };
    let verifier = app_pins.verifier();
    let mut first_failure = None;
    for inst in page.instances.iter().take(MAX_INSTANCES) {
        let ders: Result<Vec<Vec<u8>>, _> = inst
            .certificates
            .iter()
            .take(crate::chain::MAX_CHAIN)
            .map(hex::decode)
            .collect();
        let claimed: String = inst.instance_id.chars().take(40).collect();
        let result = match ders {
            Ok(ders) if !ders.is_empty() => {
                let issuers: Vec<&[u8]> = ders[1..].iter().map(Vec::as_slice).collect();
                let verdict = verifier.verify_chain(&ders[0], &issuers);
                InstanceResult {
                    claimed_instance_id: claimed.clone(),
                    fingerprint: Some(Fingerprint::of(&ders[0])),
                    error: verdict.as_ref().err().map(|e| e.to_string()),
                    verified: verdict.as_ref().ok().cloned(),
                }
                .with_failure(
                    &mut first_failure,
                    verdict.err().map(|e| (e.step, e.to_string())),
                )
            }
            _ => InstanceResult {
                claimed_instance_id: claimed.clone(),
                fingerprint: None,
                verified: None,
                error: Some("the page gives no certificate for it".into()),
            }
            .with_failure(
                &mut first_failure,
                Some((Step::Parse, "the page gives no certificate for it".into())),
            ),
        };
        report.instances.push(result);
    }
    match first_failure {
        Some((id, step, why)) => Err(SiteError::new(
            SiteStep::Instance(step),
            format!("instance {id}: {why}"),
        )),
        None => Ok(()),
    }
}

impl InstanceResult {
    fn with_failure(
        self,
        first: &mut Option<(String, Step, String)>,
        failure: Option<(Step, String)>,
    ) -> Self {
        if let Some((step, why)) = failure {
            first.get_or_insert((self.claimed_instance_id.clone(), step, why));
        }
        self
    }
}

fn received(der: &[u8]) -> Result<ReceivedCert, SiteError> {
    use x509_parser::prelude::FromDer;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der)
        .map_err(|e| SiteError::new(SiteStep::Tls, format!("the received certificate: {e}")))?;
    Ok(ReceivedCert {
        fingerprint: Fingerprint::of(der),
        spki_sha256: SpkiHash::of(cert.public_key().raw),
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        not_after: cert.validity().not_after.timestamp(),
    })
}
