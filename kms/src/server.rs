//! The HTTPS API: rustls with optional client certificates (each handler decides whether
//! it needs one), hyper HTTP/1.1, and the four handlers. Attestation failures are answered
//! in HTTP (403 with the failed step and reason), not as bare TLS alerts.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use ratls::tls::RaTlsCheck;
use ratls::{AppId, Fingerprint, VerifiedAttestation};
use rustls::pki_types::CertificateDer;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::api::{
    AppKeysRequest, AppKeysResponse, EnvKeyResponse, ErrorBody, OnboardResponse, PATH_APP_KEYS,
    PATH_INFO, PATH_ONBOARD,
};
use crate::appca::{issue_app_ca, P256Key};
use crate::audit::{Action, AuditLog, Record};
use crate::derive;
use crate::envelope::{cert_public_key, env_key_message, seal_p256};
use crate::identity::kms_compose_hash;
use crate::policy::{boot_info, ReleasePolicy};
use crate::root::RootOfTrust;
use crate::secret::{SecretBytes, SecretString};

const MAX_BODY: usize = 64 * 1024;
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// Bounds on the listener (`[limits]` in the config).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections held at once, from accept to close (handshake included).
    pub max_connections: usize,
    /// Time a connection has to finish its TLS handshake.
    pub handshake_timeout: Duration,
}

impl From<&config::KmsLimits> for Limits {
    fn from(l: &config::KmsLimits) -> Self {
        Limits {
            max_connections: l.max_connections as usize,
            handshake_timeout: Duration::from_secs(l.handshake_timeout_secs),
        }
    }
}

/// Everything the handlers share.
pub struct KmsState {
    pub root: RootOfTrust,
    pub policy: ReleasePolicy,
    pub audit: AuditLog,
    /// Verifies callers' RA-TLS certificates (quote, TCB, key binding, replay); the
    /// measurement and app rules are [`ReleasePolicy`]'s.
    pub check: RaTlsCheck,
    /// `GET /v1/info`, prepared at start and again when the server certificate renews.
    pub info_json: std::sync::RwLock<Bytes>,
    /// App CA certificates already issued (public, deterministic; at most one per app
    /// with a policy, since only those reach a release).
    pub app_ca_certs: std::sync::Mutex<std::collections::HashMap<AppId, Vec<u8>>>,
}

impl KmsState {
    pub fn info(&self) -> Bytes {
        self.info_json
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn set_info(&self, info: &crate::api::InfoResponse) {
        *self.info_json.write().unwrap_or_else(|p| p.into_inner()) =
            Bytes::from(serde_json::to_vec(info).unwrap_or_default());
    }
}

impl std::fmt::Debug for KmsState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KmsState").finish_non_exhaustive()
    }
}

type Peer = Option<Arc<Vec<CertificateDer<'static>>>>;
type Resp = Response<Full<Bytes>>;

fn json<T: Serialize>(status: StatusCode, body: &T) -> Resp {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("cache-control", "no-store")
        .body(Full::new(Bytes::from(bytes)))
        .unwrap_or_default()
}

fn error(status: StatusCode, code: &str, reason: impl Into<String>) -> Resp {
    json(
        status,
        &ErrorBody {
            error: code.into(),
            reason: reason.into(),
        },
    )
}

/// Accepts connections until `shutdown` flips to true. A connection holds one of
/// `limits.max_connections` slots from accept to close; with none free it is closed before
/// any TLS, so a flood of idle sockets costs the KMS a file descriptor each for at most
/// `limits.handshake_timeout` and cannot grow past the cap.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    state: Arc<KmsState>,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    loop {
        let (tcp, remote) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%remote, max = limits.max_connections, "connection limit reached; closing");
            drop(tcp);
            continue;
        };
        let acceptor = acceptor.clone();
        let state = state.clone();
        let mut conn_shutdown = shutdown.clone();
        let handshake_timeout = limits.handshake_timeout;
        tokio::spawn(async move {
            let _permit = permit;
            let tls = match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(t)) => t,
                Ok(Err(e)) => {
                    tracing::info!(%remote, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::info!(%remote, "TLS handshake timed out");
                    return;
                }
            };
            let peer: Peer = tls
                .get_ref()
                .1
                .peer_certificates()
                .map(|c| Arc::new(c.iter().map(|c| c.clone().into_owned()).collect()));
            let svc = hyper::service::service_fn(move |req| {
                let state = state.clone();
                let peer = peer.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(&state, peer, remote, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(tls), svc);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(%remote, error = %e, "connection ended");
                    }
                }
                _ = conn_shutdown.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
                }
            }
        });
    }
}

async fn handle(state: &KmsState, peer: Peer, remote: SocketAddr, req: Request<Incoming>) -> Resp {
    let path = req.uri().path().to_string();
    match (req.method().clone(), path.as_str()) {
        (Method::POST, PATH_APP_KEYS) => app_keys(state, peer, remote, req).await,
        (Method::POST, PATH_ONBOARD) => onboard(state, peer, remote).await,
        (Method::GET, PATH_INFO) => Response::builder()
            .header("content-type", "application/json")
            .body(Full::new(state.info()))
            .unwrap_or_default(),
        (Method::GET, p) if p.starts_with("/v1/apps/") && p.ends_with("/env-key") => {
            let id = &p["/v1/apps/".len()..p.len() - "/env-key".len()];
            env_key(state, id)
        }
        (_, PATH_APP_KEYS | PATH_ONBOARD | PATH_INFO) => error(
            StatusCode::METHOD_NOT_ALLOWED,
            "bad-request",
            "method not allowed",
        ),
        _ => error(
            StatusCode::NOT_FOUND,
            "not-found",
            format!("no route for {path}"),
        ),
    }
}

/// Why a peer could not be attested: the HTTP status, error code and reason.
struct Refusal {
    status: StatusCode,
    code: &'static str,
    reason: String,
}

impl Refusal {
    fn response(&self) -> Resp {
        error(self.status, self.code, &self.reason)
    }
}

/// Runs the attestation of the peer's certificate.
fn attest(state: &KmsState, peer: &Peer, what: &str) -> Result<Arc<VerifiedAttestation>, Refusal> {
    let Some(chain) = peer else {
        return Err(Refusal {
            status: StatusCode::UNAUTHORIZED,
            code: "unauthenticated",
            reason: format!("no client certificate: {what} needs an RA-TLS client certificate"),
        });
    };
    state.check.verify_peer(chain).map_err(|e| Refusal {
        status: StatusCode::FORBIDDEN,
        code: "denied",
        reason: e.to_string(),
    })
}

async fn app_keys(
    state: &KmsState,
    peer: Peer,
    remote: SocketAddr,
    req: Request<Incoming>,
) -> Resp {
    let deny = |boot: Option<&crate::api::BootInfo>, reason: &str| {
        tracing::warn!(%remote, app = boot.map(|b| b.app_id.as_str()), %reason, "key release denied");
        state.audit.record(&Record::new(
            Action::AppKeys,
            remote.to_string(),
            boot,
            Some(reason),
        ));
    };
    let verified = match attest(state, &peer, "POST /v1/app-keys") {
        Ok(v) => v,
        Err(r) => {
            deny(None, &r.reason);
            return r.response();
        }
    };
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad-request", format!("body: {e}")),
    };
    let request: AppKeysRequest = if body.iter().all(u8::is_ascii_whitespace) {
        AppKeysRequest::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => return error(StatusCode::BAD_REQUEST, "bad-request", format!("body: {e}")),
        }
    };
    for p in &request.paths {
        if let Err(e) = derive::check_path(p) {
            return error(StatusCode::BAD_REQUEST, "bad-request", e.to_string());
        }
    }
    let boot = boot_info(&verified);
    if let Err(d) = state.policy.decide(&verified, &boot).await {
        deny(Some(&boot), &d.0);
        return error(StatusCode::FORBIDDEN, "denied", d.0);
    }
    match release(state, verified.app_id(), &request, boot.clone()) {
        Ok(resp) => {
            state.audit.record(&Record::new(
                Action::AppKeys,
                remote.to_string(),
                Some(&boot),
                None,
            ));
            tracing::info!(%remote, app = %boot.app_id, instance = %boot.instance_id,
                simulated = boot.simulated, "released app keys");
            json(StatusCode::OK, &resp)
        }
        Err(e) => {
            tracing::error!(error = %e, "key derivation failed");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "key derivation failed",
            )
        }
    }
}

/// Derives an app's keys and certifies its app CA.
pub fn release(
    state: &KmsState,
    app: &AppId,
    req: &AppKeysRequest,
    boot_info: crate::api::BootInfo,
) -> Result<AppKeysResponse, String> {
    use p256::pkcs8::EncodePrivateKey;
    let root = state.root.secret();
    let id = app.as_bytes();
    let ca_key = derive::app_ca_key(root, id);
    let cached = state
        .app_ca_certs
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(app)
        .cloned();
    let ca_cert = match cached {
        Some(c) => c,
        None => {
            let c = issue_app_ca(
                id,
                &ca_key.public_key(),
                state.root.ca_cert_der(),
                state.root.ca_key(),
            )
            .map_err(|e| e.to_string())?;
            state
                .app_ca_certs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(*app, c.clone());
            c
        }
    };
    let ca_key_pem = ca_key
        .to_pkcs8_pem(p256::pkcs8::LineEnding::LF)
        .map_err(|e| e.to_string())?;
    let env = derive::env_secret(root, id);
    let mut app_keys = std::collections::BTreeMap::new();
    for p in &req.paths {
        let k = derive::app_path_key(root, id, p).map_err(|e| e.to_string())?;
        app_keys.insert(p.clone(), SecretBytes::from(*k));
    }
    let app_k256 = crate::dstack_keys::app_k256_key(root, id);
    let kms_k256 = crate::dstack_keys::kms_k256_root(root);
    let app_k256_signature = crate::dstack_keys::kms_signature_for_app(&kms_k256, id, &app_k256)
        .map_err(|e| e.to_string())?;
    Ok(AppKeysResponse {
        app_k256_key: SecretBytes::from(<[u8; 32]>::from(app_k256.to_bytes())),
        app_k256_signature: hex::encode(app_k256_signature),
        app_id: app.to_hex(),
        app_ca_cert_pem: ratls::cert::pem_encode("CERTIFICATE", &ca_cert),
        app_ca_key_pem: SecretString::new(ca_key_pem.to_string()),
        disk_key: SecretBytes::from(*derive::disk_key(root, id)),
        env_private_key: SecretBytes::from(env.to_bytes()),
        env_public_key: hex::encode(x25519_dalek::PublicKey::from(&env).as_bytes()),
        app_keys,
        root_ca_cert_pem: state.root.ca_cert_pem(),
        boot_info,
    })
}

fn env_key(state: &KmsState, id: &str) -> Resp {
    let app: AppId = match id.parse() {
        Ok(a) => a,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad-request", format!("{e}")),
    };
    let public = derive::env_public(state.root.secret(), app.as_bytes());
    let Some(sig) =
        P256Key::signer(state.root.ca_key()).sign_der(&env_key_message(app.as_bytes(), &public))
    else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "signing failed",
        );
    };
    json(
        StatusCode::OK,
        &EnvKeyResponse {
            app_id: app.to_hex(),
            env_public_key: hex::encode(public),
            signature: hex::encode(sig),
            root_ca_cert_pem: state.root.ca_cert_pem(),
        },
    )
}

async fn onboard(state: &KmsState, peer: Peer, remote: SocketAddr) -> Resp {
    let deny = |boot: Option<&crate::api::BootInfo>, reason: &str| {
        tracing::warn!(%remote, %reason, "onboarding denied");
        state.audit.record(&Record::new(
            Action::Onboard,
            remote.to_string(),
            boot,
            Some(reason),
        ));
    };
    let verified = match attest(state, &peer, "POST /v1/onboard") {
        Ok(v) => v,
        Err(r) => {
            deny(None, &r.reason);
            return r.response();
        }
    };
    let boot = boot_info(&verified);
    let own = kms_compose_hash();
    let check = state
        .policy
        .kms_measurements
        .check(
            "KMS replica (policy.kms_measurements)",
            verified.mrtd(),
            verified.rtmrs(),
        )
        .and_then(|()| {
            if *verified.compose_hash() == own {
                Ok(())
            } else {
                Err(crate::policy::Denied(format!(
                    "replica runs KMS compose hash {}, this KMS runs {own}",
                    verified.compose_hash()
                )))
            }
        });
    if let Err(d) = check {
        deny(Some(&boot), &d.0);
        return error(StatusCode::FORBIDDEN, "denied", d.0);
    }
    let Some(leaf) = peer.as_ref().and_then(|c| c.first()) else {
        return error(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "no client certificate",
        );
    };
    let key = match cert_public_key(leaf) {
        Ok(k) => k,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad-request", e.to_string()),
    };
    let secrets =
        zeroize::Zeroizing::new(serde_json::to_vec(&state.root.to_onboard()).unwrap_or_default());
    let sealed = seal_p256(
        &key,
        &crate::api::onboard_aad(&Fingerprint::of(leaf).0),
        &secrets,
    );
    state.audit.record(&Record::new(
        Action::Onboard,
        remote.to_string(),
        Some(&boot),
        None,
    ));
    tracing::info!(%remote, instance = %boot.instance_id, "onboarded a KMS replica");
    json(
        StatusCode::OK,
        &OnboardResponse {
            root_ca_cert_pem: state.root.ca_cert_pem(),
            sealed,
        },
    )
}
