//! Errors of the zone (bad updates) and of the server (bind, serve).

use std::net::SocketAddr;

/// A zone update or the zone's config was refused. Each variant names what was wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ZoneError {
    /// A name from the config is not usable as a DNS name.
    #[error("config name {what:?}: {reason}")]
    Config {
        /// The name.
        what: String,
        /// Why.
        reason: String,
    },
    /// The record name of a challenge is not `_acme-challenge.<host in the zone>`.
    #[error("challenge record name {name:?} {reason}")]
    ChallengeName {
        /// The name given.
        name: String,
        /// Why it is refused.
        reason: String,
    },
    /// The TXT values are not acceptable.
    #[error("TXT values: {0}")]
    TxtValues(String),
    /// The zone holds as many challenge names as it may.
    #[error("already {0} challenge names are set; clear some first")]
    TooManyChallenges(usize),
    /// The gateway address list is not acceptable.
    #[error("gateway addresses: {0}")]
    GatewayAddrs(String),
    /// The ACME account URI cannot go in a CAA record.
    #[error("ACME account URI {uri:?} {reason}")]
    AccountUri {
        /// The URI given (cut at 80 characters).
        uri: String,
        /// Why it is refused.
        reason: String,
    },
}

/// The DNS server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DnsError {
    /// Binding a listener failed.
    #[error("cannot listen on {what} {addr}: {source}")]
    Bind {
        /// `"UDP"`, `"TCP"` or `"API"`.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The zone could not be built from the config.
    #[error(transparent)]
    Zone(#[from] ZoneError),
    /// The record API would take calls without a token.
    #[error("the record API on {0} has no token (set api.token_file or api.token)")]
    ApiWithoutToken(SocketAddr),
    /// A listener stopped on its own.
    #[error("DNS listener failed: {0}")]
    Serve(String),
}
