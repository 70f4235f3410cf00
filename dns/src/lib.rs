//! # dns: authoritative DNS for the base domain
//!
//! Answers `<base>` and `*.<base>` with the live gateway replicas, `_acme-challenge.…` TXT
//! for DNS-01, and CAA pinning the gateway's ACME account, over UDP and TCP on
//! hickory-server. No zone files: the zone is a small in-memory model that changes at run
//! time, through an authenticated HTTP API or in-process through a [`ZoneHandle`].
//!
//! ```text
//!              config::DnsConfig
//!                     │
//!                     ▼
//!   DnsServer ──▶ ZoneHandle ◀────────────── http (record API, bearer token)  ◀── api::HttpAcmeDnsClient
//!    │   │         (Fixed + Snapshot)   ◀──── in-process caller (gateway ACME, store feed)
//!    │   │              │
//!    │   │              ▼
//!    │   │          answer()  — the rules: REFUSED / NXDOMAIN / NODATA / records
//!    │   │              ▲
//!    │   └─ tcp (bounded) ─┐
//!    └─ UDP: hickory_server::Server ─▶ ZoneRequestHandler (RequestHandler: opcode, EDNS, AA, RA=0)
//! ```
//!
//! - [`api`]: wire types of the record API and the [`api::AcmeDnsClient`] trait; builds with
//!   `default-features = false` (no server code). Feature `client` adds
//!   [`api::HttpAcmeDnsClient`].
//! - `zone`: [`ZoneHandle`], the records and their checked updates.
//! - `answer`: what one question gets (its module doc has the table of rules).
//! - `handler`: [`ZoneRequestHandler`], the hickory `RequestHandler`.
//! - `tcp`, `http`: the bounded TCP listener and the record API server.
//! - `server`: [`DnsServer`], binding and running all listeners with [`Limits`].
//!
//! ```no_run
//! # async fn demo(cfg: config::DnsConfig) -> Result<(), Box<dyn std::error::Error>> {
//! let server = teegate_dns::DnsServer::bind(&cfg).await?;
//! let zone = server.zone();
//! zone.set_acme_txt("_acme-challenge.apps.example.com", vec!["digest".into()])?;
//! server.run(async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! # Ok(()) }
//! ```

pub mod api;
#[cfg(feature = "client")]
mod client;

#[cfg(feature = "server")]
mod answer;
#[cfg(feature = "server")]
mod error;
#[cfg(feature = "server")]
mod handler;
#[cfg(feature = "server")]
mod http;
#[cfg(feature = "server")]
mod server;
#[cfg(feature = "server")]
mod tcp;
#[cfg(feature = "server")]
mod zone;

#[cfg(feature = "server")]
pub use error::{DnsError, ZoneError};
#[cfg(feature = "server")]
pub use handler::ZoneRequestHandler;
#[cfg(feature = "server")]
pub use server::{DnsServer, Limits, Listening};
#[cfg(feature = "server")]
pub use zone::ZoneHandle;

/// The wire answer to one DNS message (no length prefix), exactly as the TCP listener
/// computes it: header check, hickory's decoding, [`ZoneRequestHandler`], encoding. `None`
/// when the message gets no answer. The fuzzer's entry point to the request path; not API.
#[cfg(feature = "server")]
#[doc(hidden)]
pub async fn answer_wire(handler: &ZoneRequestHandler, message: Vec<u8>) -> Option<Vec<u8>> {
    let peer = std::net::SocketAddr::from(([127, 0, 0, 1], 53));
    tcp::respond(handler, message, peer).await
}
