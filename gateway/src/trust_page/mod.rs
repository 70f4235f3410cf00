//! The chain-of-trust pages at `https://<base>/`: the apps and instances this gateway
//! routes to (`/`), and for one app (`/apps/<app-id>`) each instance's chain from the KMS
//! root CA through the app CA to its RA-TLS certificate, its quote, the RTMR3 event log
//! replayed step by step and its compose file, each link marked verified or failed with
//! the reason. Every page has a JSON twin (`Accept: application/json`, or `.json`).
//!
//! Certificates are re-checked with the gateway's own verifier (`ratls` inspect), so the
//! page shows what the gateway would decide now, not a second opinion. Each chain's checks
//! are cached briefly to keep a public page from costing a verification per view.
//!
//! Every page opens with the gateway itself (the first link, since browsers cannot check
//! RA-TLS): the certificate served, the evidence binding its key and that evidence's
//! verification. `/.well-known/teegate/gateway` serves the evidence itself (JSON); it is
//! dispatched here, with the pages, so it stays wherever the proxy path sends the base
//! domain.

mod html;
pub mod model;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ratls::chain::ChainLink;
use ratls::{AppId, CachingVerifier, Fingerprint, Inspection};

use crate::certs::CertResolver;
use crate::evidence::Publisher;
use crate::refused::{Refused, RefusedLog};
use crate::registry::Registry;
use model::{
    AppSummary, AppView, IndexView, InstanceSummary, InstanceView, RefusedInfo, RefusedSummary,
    Registered,
};

/// Most instances of one app inspected for its page.
pub const MAX_INSTANCES_SHOWN: usize = 64;
/// Seconds an inspection is reused.
const INSPECTION_TTL_SECS: u64 = 30;
const MAX_CACHED_INSPECTIONS: usize = 512;

/// A rendered page.
#[derive(Debug)]
pub struct Page {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

pub struct TrustPages {
    pub base_domain: String,
    /// The gateway's HTTPS port when not 443, for links.
    pub https_port: u16,
    pub registry: Arc<Registry>,
    pub verifier: Arc<CachingVerifier>,
    pub refused: Arc<RefusedLog>,
    /// DER of the KMS root CAs this gateway vouches for (`web.kms_root_ca`).
    pub kms_roots: Vec<Vec<u8>>,
    /// The gateway's own evidence, and the certificates it serves (see [`Self::with_gateway`]).
    gateway: Option<(Arc<Publisher>, Arc<CertResolver>)>,
    checked: Mutex<HashMap<Fingerprint, Arc<Checked>>>,
}

enum Format {
    Html,
    Json,
}

impl TrustPages {
    pub fn new(
        base_domain: String,
        https_port: u16,
        registry: Arc<Registry>,
        verifier: Arc<CachingVerifier>,
        refused: Arc<RefusedLog>,
        kms_roots: Vec<Vec<u8>>,
    ) -> Self {
        Self {
            base_domain,
            https_port,
            registry,
            verifier,
            refused,
            kms_roots,
            gateway: None,
            checked: Mutex::new(HashMap::new()),
        }
    }

    /// Shows the gateway's own evidence (from `publisher`) as the first link of every page,
    /// with the certificate `resolver` serves for the base domain, and serves it at
    /// `/.well-known/teegate/gateway`. Without it, every page says the gateway is not
    /// attested.
    pub fn with_gateway(mut self, publisher: Arc<Publisher>, resolver: Arc<CertResolver>) -> Self {
        self.gateway = Some((publisher, resolver));
        self
    }

    fn gateway_view(&self) -> model::GatewayView {
        let Some((publisher, resolver)) = &self.gateway else {
            return model::GatewayView::unattested();
        };
        let served = resolver.lookup(&self.base_domain).and_then(|ck| {
            ck.cert
                .first()
                .map(|c| (self.base_domain.clone(), c.to_vec()))
        });
        model::GatewayView::of(&publisher.current(), served)
    }

    /// `/.well-known/teegate/gateway`: the published evidence, always JSON.
    fn render_evidence(&self) -> Page {
        let body = match &self.gateway {
            Some((publisher, _)) => publisher.current().json.clone(),
            None => {
                serde_json::to_vec_pretty(&ratls::gateway_evidence::GatewayDocument::unattested())
                    .unwrap_or_default()
            }
        };
        Page {
            status: 200,
            content_type: "application/json",
            body,
        }
    }

    /// Answers a request for `path` on the base domain.
    pub fn handle(&self, method: &http::Method, path: &str, accept: Option<&str>) -> Page {
        let wants_json = accept.is_some_and(|a| {
            a.split(',')
                .any(|p| p.trim().starts_with("application/json"))
        });
        if method != http::Method::GET && method != http::Method::HEAD {
            return self.error(405, "Method Not Allowed", "Use GET.", wants_json);
        }
        let (path, query) = path.split_once('?').unwrap_or((path, ""));
        if path.strip_suffix(".json").unwrap_or(path) == ratls::gateway_evidence::WELL_KNOWN_PATH {
            return self.render_evidence();
        }
        let wants_json = wants_json || query.split('&').any(|kv| kv == "format=json");
        let (path, format) = match path.strip_suffix(".json") {
            Some(p) => (p, Format::Json),
            None if wants_json => (path, Format::Json),
            None => (path, Format::Html),
        };
        match path {
            "/" | "" | "/index" => self.render_index(format),
            _ => match path.strip_prefix("/apps/") {
                Some(id) => match id.parse::<AppId>() {
                    Ok(app) => self.render_app(&app, format),
                    Err(_) => self.error(
                        404,
                        "Not Found",
                        "An app id is 40 hexadecimal characters.",
                        matches!(format, Format::Json),
                    ),
                },
                None => self.error(
                    404,
                    "Not Found",
                    "Nothing else is served at the base domain; see / for the apps.",
                    matches!(format, Format::Json),
                ),
            },
        }
    }

    fn error(&self, status: u16, title: &str, detail: &str, json: bool) -> Page {
        if json {
            Page {
                status,
                content_type: "application/json",
                body: serde_json::to_vec(&crate::api::ErrorBody {
                    error: detail.to_string(),
                })
                .unwrap_or_default(),
            }
        } else {
            Page {
                status,
                content_type: "text/html; charset=utf-8",
                body: crate::pages::page(status, title, detail).into_bytes(),
            }
        }
    }

    fn app_url(&self, app: &str) -> String {
        match self.https_port {
            443 => format!("https://{app}.{}/", self.base_domain),
            p => format!("https://{app}.{}:{p}/", self.base_domain),
        }
    }

    fn render_index(&self, format: Format) -> Page {
        let now_ms = crate::proxy::now_ms();
        let apps: Vec<AppSummary> = self
            .registry
            .apps(now_ms)
            .into_iter()
            .map(|a| AppSummary {
                url: self.app_url(&a.app_id),
                instances: a
                    .instances
                    .into_iter()
                    .map(|i| InstanceSummary {
                        instance_id: i.instance_id,
                        compose_hash: i.compose_hash,
                        tcb_status: i.tcb_status,
                        simulated: i.simulated,
                        healthy: i.healthy,
                    })
                    .collect(),
                app_id: a.app_id,
            })
            .collect();
        let refused: Vec<RefusedSummary> = self
            .refused
            .recent()
            .into_iter()
            .map(|r| RefusedSummary {
                claimed_app_id: r.claimed_app.to_hex(),
                claimed_instance_id: r.claimed_instance.to_hex(),
                error: r.error,
                attempts: r.attempts,
                last_unix: r.last_unix,
            })
            .collect();
        let gateway = self.gateway_view();
        let view = IndexView {
            base_domain: self.base_domain.clone(),
            simulated: gateway.simulated
                || apps.iter().flat_map(|a| &a.instances).any(|i| i.simulated),
            gateway,
            apps,
            refused,
        };
        match format {
            Format::Json => json_page(200, &view),
            Format::Html => html_page(200, html::index(&view)),
        }
    }

    fn render_app(&self, app: &AppId, format: Format) -> Page {
        let now = ratls::verifier::unix_now();
        let now_ms = crate::proxy::now_ms();
        let mut instances = Vec::new();
        for inst in self
            .registry
            .instances_of(app)
            .into_iter()
            .take(MAX_INSTANCES_SHOWN)
        {
            let r = &inst.record;
            let Some(leaf) = r.certs.first().and_then(|h| hex::decode(h).ok()) else {
                continue;
            };
            let mut chain = vec![leaf];
            chain.extend(r.chain.iter().filter_map(|h| hex::decode(h).ok()));
            if let Some(root) = r.kms_root_ca.as_ref().and_then(|h| hex::decode(h).ok()) {
                if chain.last() != Some(&root) {
                    chain.push(root);
                }
            }
            let mut view = self.view_of(&chain, r.app_compose.clone(), now);
            view.registered = Some(Registered {
                lease_expires_unix: r.lease_expires,
                healthy: inst.is_up(now_ms),
                ports: r.ports.clone(),
            });
            instances.push(view);
        }
        let refused: Vec<InstanceView> = self
            .refused
            .for_app(app)
            .into_iter()
            .map(|r: Refused| {
                let mut view = self.view_of(&r.chain, None, now);
                view.refused = Some(RefusedInfo {
                    attempts: r.attempts,
                    first_unix: r.first_unix,
                    last_unix: r.last_unix,
                });
                view
            })
            .collect();
        if instances.is_empty() && refused.is_empty() {
            return self.error(
                404,
                "Not Found",
                &format!("No instance of app {} is registered here.", app.to_hex()),
                matches!(format, Format::Json),
            );
        }
        let gateway = self.gateway_view();
        let view = AppView {
            base_domain: self.base_domain.clone(),
            app_id: app.to_hex(),
            url: self.app_url(&app.to_hex()),
            simulated: gateway.simulated || instances.iter().chain(&refused).any(|i| i.simulated),
            gateway,
            instances,
            refused,
        };
        match format {
            Format::Json => json_page(200, &view),
            Format::Html => html_page(200, html::app(&view)),
        }
    }

    fn view_of(&self, chain: &[Vec<u8>], compose: Option<String>, now: u64) -> InstanceView {
        let checked = self.checked(chain, now);
        InstanceView::new(
            &checked.inspection,
            checked.links.clone(),
            chain.iter().map(hex::encode).collect(),
            compose,
        )
    }

    /// The leaf's inspection and the chain's links, reused for a while per chain.
    fn checked(&self, chain: &[Vec<u8>], now: u64) -> Arc<Checked> {
        let key = Fingerprint::of(&chain.concat());
        {
            let cache = self.checked.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(c) = cache.get(&key) {
                if now < c.at + INSPECTION_TTL_SECS {
                    return c.clone();
                }
            }
        }
        let checked = Arc::new(Checked {
            at: now,
            inspection: {
                let issuers: Vec<&[u8]> = chain[1..].iter().map(Vec::as_slice).collect();
                self.verifier
                    .verifier()
                    .inspect_chain_at(&chain[0], &issuers, now)
            },
            links: ratls::chain::explain(chain, &self.kms_roots, now),
        });
        let mut cache = self.checked.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= MAX_CACHED_INSPECTIONS {
            cache.retain(|_, c| now < c.at + INSPECTION_TTL_SECS);
            if cache.len() >= MAX_CACHED_INSPECTIONS {
                cache.clear();
            }
        }
        cache.insert(key, checked.clone());
        checked
    }
}

/// One chain's verification, as cached.
struct Checked {
    at: u64,
    inspection: Inspection,
    links: Vec<ChainLink>,
}

fn json_page<T: serde::Serialize>(status: u16, value: &T) -> Page {
    Page {
        status,
        content_type: "application/json",
        body: serde_json::to_vec_pretty(value).unwrap_or_default(),
    }
}

fn html_page(status: u16, markup: maud::Markup) -> Page {
    Page {
        status,
        content_type: "text/html; charset=utf-8",
        body: markup.into_string().into_bytes(),
    }
}
