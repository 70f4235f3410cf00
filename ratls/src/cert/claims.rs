//! teegate's app claims, carried in one certificate extension: app id, compose hash,
//! instance id, the RTMR3 event log and whether the quote is simulated. They mean nothing
//! until the event log replays to the quoted RTMR3 and the claims match the logged events.

use serde::{Deserialize, Serialize};

use crate::eventlog::EventLog;
use crate::types::{AppId, ComposeHash, InstanceId};

/// Upper bound on the encoded claims extension.
pub const MAX_CLAIMS_LEN: usize = 256 * 1024;

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
    pub fn to_cbor(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Serialising these plain types into a Vec cannot fail.
        let _ = ciborium::into_writer(self, &mut out);
        out
    }

    pub fn from_cbor(bytes: &[u8]) -> Result<Self, ClaimsError> {
        if bytes.len() > MAX_CLAIMS_LEN {
            return Err(ClaimsError(format!(
                "{} bytes is over the limit",
                bytes.len()
            )));
        }
        let claims: AppClaims =
            ciborium::from_reader(bytes).map_err(|e| ClaimsError(e.to_string()))?;
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
    fn cbor_roundtrip() {
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
        assert_eq!(AppClaims::from_cbor(&c.to_cbor()).unwrap(), c);
        assert!(AppClaims::from_cbor(b"\x01\x02").is_err());
    }
}
