//! Quote providers: where quotes come from. One trait, two implementations: Linux
//! configfs-tsm on real TDX hardware, and the simulated provider for machines without it.
//! [`Measurer`] pairs a provider with the RTMR3 event log so every extension is recorded.

mod simulated;
mod tsm;

pub use simulated::SimulatedProvider;
pub use tsm::{TsmProvider, DEFAULT_RTMR3_PATH, DEFAULT_TSM_REPORT_PATH};

use std::fmt;
use std::sync::{Arc, Mutex};

use crate::eventlog::{Event, EventLog, EventLogError};
use crate::types::{Measurement, ReportData};

/// Which kind of provider made a quote. Simulated quotes prove nothing about hardware.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    Tdx,
    Simulated,
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProviderKind::Tdx => "TDX (configfs-tsm)",
            ProviderKind::Simulated => "SIMULATED TDX",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("configfs-tsm at {path}: {message}")]
    Tsm { path: String, message: String },
    #[error("RTMR3 extension failed at {path}: {message}")]
    Rtmr { path: String, message: String },
    #[error("simulated quote: {0}")]
    Simulated(String),
    #[error(transparent)]
    EventLog(#[from] EventLogError),
}

/// Produces TDX quotes over caller-chosen report data and extends RTMR3.
pub trait QuoteProvider: Send + Sync {
    fn kind(&self) -> ProviderKind;

    /// A quote (raw bytes) whose report_data is exactly `report_data`.
    fn quote(&self, report_data: &ReportData) -> Result<Vec<u8>, ProviderError>;

    /// Extends RTMR3 with a 48-byte digest.
    fn extend_rtmr3(&self, digest: &Measurement) -> Result<(), ProviderError>;
}

/// A provider plus the event log of everything extended through it. Quoting takes the
/// same lock as extending, so a quote and the log handed out with it always agree.
pub struct Measurer {
    provider: Arc<dyn QuoteProvider>,
    log: Mutex<EventLog>,
}

impl Measurer {
    pub fn new(provider: Arc<dyn QuoteProvider>) -> Self {
        Self {
            provider,
            log: Mutex::new(EventLog::new()),
        }
    }

    /// A measurer for a TD whose RTMR3 already holds `log` (a restarted sidecar in the
    /// same TD). The caller must have checked that `log` replays to the quoted RTMR3.
    pub fn resume(provider: Arc<dyn QuoteProvider>, log: EventLog) -> Self {
        Self {
            provider,
            log: Mutex::new(log),
        }
    }

    pub fn kind(&self) -> ProviderKind {
        self.provider.kind()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, EventLog> {
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Extends RTMR3 with an event and records it; the log only grows if the extension worked.
    pub fn emit(&self, name: &str, payload: impl Into<Vec<u8>>) -> Result<(), ProviderError> {
        let event = Event::new(name, payload)?;
        let mut log = self.lock();
        if log.len() >= crate::eventlog::MAX_EVENTS {
            return Err(EventLogError::TooManyEvents.into());
        }
        self.provider.extend_rtmr3(&event.digest())?;
        log.push(event)?;
        Ok(())
    }

    /// A quote over `report_data` with the event log as of that quote.
    pub fn quote(&self, report_data: &ReportData) -> Result<(Vec<u8>, EventLog), ProviderError> {
        let log = self.lock();
        let quote = self.provider.quote(report_data)?;
        Ok((quote, log.clone()))
    }

    /// A quote over the report data `bind` derives from the event log, under the lock, so
    /// what `bind` saw (and returns with the quote) is exactly what the quote measured.
    pub fn quote_binding<T>(
        &self,
        bind: impl FnOnce(&EventLog) -> Result<(ReportData, T), ProviderError>,
    ) -> Result<(Vec<u8>, T), ProviderError> {
        let log = self.lock();
        let (report_data, bound) = bind(&log)?;
        let quote = self.provider.quote(&report_data)?;
        Ok((quote, bound))
    }

    pub fn event_log(&self) -> EventLog {
        self.lock().clone()
    }
}
