//! # kms: attested key release
//!
//! Holds a root secret and a root CA; releases each app's deterministic keys
//! (`HKDF-SHA256(ikm = root secret, salt = app id, info = purpose)`) only to callers whose
//! RA-TLS client certificate carries a verified quote that the release policy allows.
//!
//! ```text
//!  data_dir ─▶ root::RootStore (sealed | plain) ─▶ RootOfTrust (root secret + root CA)
//!                                                        │
//!  sidecar ──mutual RA-TLS──▶ server (rustls + hyper) ───┤
//!     POST /v1/app-keys  ─▶ ratls verify ─▶ policy::ReleasePolicy (+ webhook) ─▶ derive ─▶ appca
//!     GET  /v1/apps/<id>/env-key (no client cert) ─▶ derive (env) ─▶ signed by root CA
//!     GET  /v1/info      ─▶ root CA, own attestation, policy summary
//!     POST /v1/onboard   ─▶ ratls verify (kms_measurements) ─▶ envelope::seal_p256
//!  every decision ─▶ audit::AuditLog (JSON lines, never key material)
//!
//!  replica: onboard (client::KmsClient + FirstContactVerifier) ─▶ envelope::open_p256 ─▶ RootStore
//!  user:    client::KmsClient (pinned root) ─▶ envelope::verify_env_key ─▶ envelope::seal_env
//! ```
//!
//! Always built (also with `default-features = false`): [`api`] (wire types), [`envelope`]
//! (the encrypted-environment format and the replica-onboarding box), [`derive`] (the
//! key derivation) and [`dstack_keys`] (dstack's secp256k1 key chain). The `client` feature adds the HTTPS client, `server` (default) the KMS.

pub mod api;
pub mod derive;
pub mod dstack_keys;
pub mod envelope;
pub mod secret;

#[cfg(feature = "client")]
pub mod client;

#[cfg(feature = "server")]
pub mod appca;
#[cfg(feature = "server")]
pub mod audit;
#[cfg(feature = "server")]
pub mod identity;
#[cfg(feature = "server")]
pub mod onboard;
#[cfg(feature = "server")]
pub mod policy;
#[cfg(feature = "server")]
pub mod root;
#[cfg(feature = "server")]
pub mod run;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "server")]
pub mod server_cert;

#[cfg(feature = "server")]
pub use run::{run, KmsError, Ready, RunOptions};
