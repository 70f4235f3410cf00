//! # gateway: TLS termination and attested routing to confidential VMs
//!
//! Requests enter on port 443 as TLS connections; they leave over RA-TLS to the CVM
//! instance that runs the app named in the host. Instances enter the routing table only
//! through the registration API, from verified attestation claims.
//!
//! ```text
//!  :443 https_listener (a socket per worker, SO_REUSEPORT; one thread each; task per conn)
//!   ─▶ FrontDoor ─────┬─ SNI `…s.` ─▶ passthrough relay ─────────────▶ instance RA-TLS front
//!   (PerIp, max conns)└─ client_tls (CertResolver, tickets) ─┬─ HTTP/1: http1 (one lazy deadline)
//!                                                            │    ├─ FastPath ─▶ Upstreams ─▶ front
//!                                                            │    │  (spare: read buffers per thread)
//!                                                            │    └─ declined ─┐  (verified, pooled)
//!                                                            ├─ HTTP/2: http2 (streams in one task;
//!                                                            │    their deadlines on one timer: stream_deadlines)
//!                                                            │    ├─ FastPath (downstream: h2head)
//!                                                            │    └─ declined ─┤
//!                                                            └─────────────────┴▶ GatewayProxy ─▶ front
//!                            route (names) → pick (Registry) → connect + fingerprint check → forward → log
//!                            (pingora's connector gets upstream_roots' throwaway anchor,
//!                             never the host's CA bundle)
//!  :8443 registration (mutual RA-TLS) ─▶ Registrar ─▶ Store + Registry
//!  Store (embedded file | etcd) ─events─▶ StoreSync ─▶ Registry, CertResolver (replicas)
//!  :443 base domain ─▶ TrustPages (registry + RefusedLog, ratls inspect/chain) ─▶ HTML | JSON
//!        /.well-known/teegate/gateway ─▶ evidence::Publisher (guest API quote binding the
//!        CertResolver's keys + the ACME account key; re-quoted on change)
//!  admin: /metrics (Metrics), /v1/apps, /v1/instances (Admin, bearer token)
//!  :80 ─▶ redirect to https
//!  attested: GuestApi (guest) ─ Unix socket ─▶ the sidecar of the gateway's own CVM
//!            self_attest (start-up: a fresh quote verified by [verifier]) ─▶ AttestedSelf
//!  TLS crypto: aws-lc-rs (ring without the aws-lc feature); TLS 1.3's HKDF on HMAC keys
//!              prepared once (prepared_hkdf); both TLS legs' sockets in single_send (one
//!              record: send(2), not writev(2))
//!  private keys ─▶ SealedStore (seal: ChaCha20-Poly1305 under a guest-API-derived key,
//!                  or an unattested key file) ─▶ Store; unreadable records ─▶ SealReport
//! ```
//!
//! [`api`] holds the wire types and builds without the server (`default-features = false`).

pub mod api;
pub mod names;

#[cfg(feature = "server")]
pub mod acme;
#[cfg(feature = "server")]
mod admin;
#[cfg(feature = "attest")]
pub mod attest;
#[cfg(feature = "server")]
pub mod certs;
#[cfg(feature = "server")]
mod chunked;
#[cfg(feature = "server")]
mod client_tls;
#[cfg(feature = "server")]
pub mod custom;
#[cfg(feature = "server")]
mod deadline;
#[cfg(feature = "server")]
mod downstream;
#[cfg(feature = "server")]
pub mod evidence;
#[cfg(feature = "server")]
pub mod fast;
#[cfg(feature = "server")]
pub mod frontdoor;
#[cfg(feature = "server")]
pub mod guest;
#[cfg(feature = "server")]
mod h2head;
#[cfg(feature = "server")]
mod head;
#[cfg(feature = "server")]
mod http1;
#[cfg(feature = "server")]
mod http2;
#[cfg(feature = "server")]
mod http_util;
#[cfg(feature = "server")]
mod https_listener;
#[cfg(feature = "server")]
pub mod metrics;
#[cfg(feature = "server")]
pub mod ondemand;
#[cfg(feature = "server")]
mod own_identity;
#[cfg(feature = "server")]
mod pages;
#[cfg(feature = "server")]
pub mod per_ip;
#[cfg(feature = "aws-lc")]
pub mod prepared_hkdf;
#[cfg(feature = "server")]
pub mod proxy;
#[cfg(feature = "server")]
pub mod refused;
#[cfg(feature = "server")]
pub mod registration;
#[cfg(feature = "server")]
pub mod registry;
#[cfg(feature = "server")]
pub mod replicas;
#[cfg(feature = "server")]
pub mod seal;
#[cfg(feature = "server")]
pub mod self_attest;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "server")]
mod services;
#[cfg(feature = "server")]
mod single_send;
#[cfg(feature = "server")]
mod spare;
#[cfg(feature = "server")]
mod startup;
#[cfg(feature = "server")]
pub mod store;
#[cfg(feature = "server")]
mod stream_deadlines;
#[cfg(feature = "server")]
pub mod trust_page;
#[cfg(feature = "server")]
pub mod upstream;
#[cfg(feature = "server")]
mod upstream_roots;
