//! teegate's app claims: app id, compose hash, instance id, the RTMR3 event log and whether
//! the quote is simulated. They travel inside the CCC claims buffer (see `evidence.rs` for
//! the layout) under the one key [`CLAIMS_KEY`], so the quote's report data binds them. They
//! mean nothing until the event log replays to the quoted RTMR3 and the claims match the
//! logged events.

use ciborium::value::Value;
use serde::{Deserialize, Serialize};

use crate::eventlog::EventLog;
use crate::types::{AppId, ComposeHash, InstanceId};

/// The claims-buffer key holding [`AppClaims`]. CCC defines `pubkey-hash` and `nonce`;
/// the `teegate-` prefix keeps ours apart from theirs and from other implementations'.
pub const CLAIMS_KEY: &str = "teegate-claims";

/// Upper bound on the encoded claims buffer (app claims included), checked before it is
/// decoded. Issuing refuses a buffer over it, so every certificate issued verifies.
pub const MAX_CLAIMS_LEN: usize = 192 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppClaims {
    #[serde(rename = "app-id")]
    pub app_id: AppId,
    #[serde(rename = "compose-hash")]
    pub compose_hash: ComposeHash,
    #[serde(rename = "instance-id")]
    pub instance_id: InstanceId,
    #[serde(rename = "event-log")]
    pub event_log: EventLog,
    pub simulated: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("app claims: {0}")]
pub struct ClaimsError(pub String);

impl AppClaims {
    /// The claims as the CBOR map value stored under [`CLAIMS_KEY`].
    pub fn to_value(&self) -> Value {
        // These plain types always serialise; Null is never reached.
        Value::serialized(self).unwrap_or(Value::Null)
    }

    /// Reads the value under [`CLAIMS_KEY`] (already decoded from a bounded buffer).
    pub fn from_value(value: &Value) -> Result<Self, ClaimsError> {
        let claims: AppClaims = value
            .deserialized()
            .map_err(|e| ClaimsError(e.to_string()))?;
        claims
            .event_log
            .validate()
            .map_err(|e| ClaimsError(e.to_string()))?;
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eventlog::Event;

    #[test]
    fn value_roundtrip() {
        let mut log = EventLog::new();
        log.push(Event::new("app-id", vec![9; 20]).unwrap())
            .unwrap();
        let c = AppClaims {
            app_id: AppId([9; 20]),
            compose_hash: ComposeHash([8; 32]),
            instance_id: InstanceId([7; 20]),
            event_log: log,
            simulated: true,
        };
        assert_eq!(AppClaims::from_value(&c.to_value()).unwrap(), c);
        assert!(AppClaims::from_value(&Value::Bytes(vec![1, 2])).is_err());
        let Value::Map(mut entries) = c.to_value() else {
            panic!("claims are not a map");
        };
        entries.push((Value::Text("extra".into()), Value::Bool(true)));
        assert!(AppClaims::from_value(&Value::Map(entries)).is_err());
    }
}
