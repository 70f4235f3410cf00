//! Quotes from Linux configfs-tsm (`/sys/kernel/config/tsm/report`): make an entry
//! directory, write `inblob`, read `outblob`, and check `generation` did not move (another
//! writer would make the outblob someone else's). RTMR3 is extended through the TDX guest
//! driver's measurement attribute.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::{ProviderError, ProviderKind, QuoteProvider};
use crate::quote::MAX_QUOTE_LEN;
use crate::types::{Measurement, ReportData};

pub const DEFAULT_TSM_REPORT_PATH: &str = "/sys/kernel/config/tsm/report";
pub const DEFAULT_RTMR3_PATH: &str = "/sys/class/misc/tdx_guest/measurements/rtmr3:sha384";

/// How many times a read of `outblob` is retried while the report is produced, and how
/// many times the whole exchange is retried when `generation` moved underneath it.
const OUTBLOB_ATTEMPTS: u32 = 200;
const OUTBLOB_WAIT: Duration = Duration::from_millis(10);
const GENERATION_ATTEMPTS: u32 = 3;

static ENTRY_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Quote provider for real TDX guests.
#[derive(Debug, Clone)]
pub struct TsmProvider {
    report_dir: PathBuf,
    rtmr3_path: PathBuf,
    outblob_attempts: u32,
    outblob_wait: Duration,
}

impl TsmProvider {
    pub fn new(report_dir: impl Into<PathBuf>, rtmr3_path: impl Into<PathBuf>) -> Self {
        Self {
            report_dir: report_dir.into(),
            rtmr3_path: rtmr3_path.into(),
            outblob_attempts: OUTBLOB_ATTEMPTS,
            outblob_wait: OUTBLOB_WAIT,
        }
    }

    /// How long to wait for `outblob` (attempts × interval); the kernel normally answers
    /// on the first read.
    pub fn with_outblob_wait(mut self, attempts: u32, interval: Duration) -> Self {
        self.outblob_attempts = attempts.max(1);
        self.outblob_wait = interval;
        self
    }

    /// The standard kernel paths. Fails early if configfs-tsm is not there.
    pub fn system() -> Result<Self, ProviderError> {
        let p = Self::new(DEFAULT_TSM_REPORT_PATH, DEFAULT_RTMR3_PATH);
        if !Path::new(DEFAULT_TSM_REPORT_PATH).is_dir() {
            return Err(p.err(
                "not found: is this a TDX guest with configfs mounted (CONFIG_TSM_REPORTS)?",
            ));
        }
        Ok(p)
    }

    fn err(&self, message: impl Into<String>) -> ProviderError {
        ProviderError::Tsm {
            path: self.report_dir.display().to_string(),
            message: message.into(),
        }
    }

    fn read_generation(&self, entry: &Path) -> Result<Option<u64>, ProviderError> {
        match std::fs::read_to_string(entry.join("generation")) {
            Ok(s) => s
                .trim()
                .parse()
                .map(Some)
                .map_err(|_| self.err(format!("unreadable generation {s:?}"))),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.err(format!("generation: {e}"))),
        }
    }

    fn read_outblob(&self, entry: &Path) -> Result<Vec<u8>, ProviderError> {
        let path = entry.join("outblob");
        for _ in 0..self.outblob_attempts {
            match std::fs::read(&path) {
                Ok(bytes) if !bytes.is_empty() => {
                    if bytes.len() > MAX_QUOTE_LEN {
                        return Err(self.err(format!("outblob is {} bytes", bytes.len())));
                    }
                    return Ok(bytes);
                }
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(self.err(format!("outblob: {e}"))),
            }
            std::thread::sleep(self.outblob_wait);
        }
        Err(self.err("outblob stayed empty: no quote was produced"))
    }

    fn exchange(&self, entry: &Path, report_data: &ReportData) -> Result<Vec<u8>, ProviderError> {
        for _ in 0..GENERATION_ATTEMPTS {
            std::fs::write(entry.join("inblob"), report_data.0)
                .map_err(|e| self.err(format!("inblob: {e}")))?;
            let before = self.read_generation(entry)?;
            let quote = self.read_outblob(entry)?;
            let after = self.read_generation(entry)?;
            if before == after {
                if let Ok(provider) = std::fs::read_to_string(entry.join("provider")) {
                    if provider.trim() != "tdx_guest" {
                        return Err(
                            self.err(format!("provider is {:?}, not tdx_guest", provider.trim()))
                        );
                    }
                }
                return Ok(quote);
            }
            tracing::debug!(?before, ?after, "configfs-tsm generation moved; retrying");
        }
        Err(self.err("generation kept changing: another process is using this entry"))
    }
}

impl QuoteProvider for TsmProvider {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Tdx
    }

    fn quote(&self, report_data: &ReportData) -> Result<Vec<u8>, ProviderError> {
        let name = format!(
            "teegate-{}-{}",
            std::process::id(),
            ENTRY_COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let entry = self.report_dir.join(name);
        std::fs::create_dir(&entry).map_err(|e| self.err(format!("mkdir entry: {e}")))?;
        let result = self.exchange(&entry, report_data);
        // configfs drops an entry's attributes with the directory itself.
        if let Err(e) = std::fs::remove_dir(&entry) {
            tracing::debug!(entry = %entry.display(), error = %e, "could not remove tsm entry");
        }
        result
    }

    fn extend_rtmr3(&self, digest: &Measurement) -> Result<(), ProviderError> {
        std::fs::write(&self.rtmr3_path, digest.0).map_err(|e| ProviderError::Rtmr {
            path: self.rtmr3_path.display().to_string(),
            message: if e.kind() == ErrorKind::NotFound {
                "not found: the kernel lacks TDX RTMR extension (Linux 6.16+ tdx_guest measurements)"
                    .into()
            } else {
                e.to_string()
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::SimulatedProvider;
    use crate::quote::Quote;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    /// Plays the kernel's part of configfs-tsm over a plain directory: for each entry
    /// with an `inblob`, writes `provider`, `generation` and a quote into `outblob`.
    struct FakeKernel {
        stop: Arc<AtomicBool>,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    impl FakeKernel {
        fn start(dir: PathBuf, provider_name: &'static str) -> Self {
            let stop = Arc::new(AtomicBool::new(false));
            let flag = stop.clone();
            let thread = std::thread::spawn(move || {
                let sim = SimulatedProvider::new();
                // Bounded: at most 10 s of polling even if the test forgets to stop us.
                for _ in 0..10_000 {
                    if flag.load(Ordering::SeqCst) {
                        return;
                    }
                    for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                        let p = entry.path();
                        let (Ok(inblob), false) =
                            (std::fs::read(p.join("inblob")), p.join("outblob").exists())
                        else {
                            continue;
                        };
                        let rd = ReportData::from_slice(&inblob).unwrap_or(ReportData::ZERO);
                        let _ = std::fs::write(p.join("provider"), format!("{provider_name}\n"));
                        let _ = std::fs::write(p.join("generation"), "1\n");
                        let _ =
                            std::fs::write(p.join("outblob"), sim.quote(&rd).unwrap_or_default());
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
            });
            Self {
                stop,
                thread: Some(thread),
            }
        }
    }

    impl Drop for FakeKernel {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::SeqCst);
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }

    fn provider(dir: &Path) -> TsmProvider {
        TsmProvider::new(dir.join("report"), dir.join("rtmr3"))
            .with_outblob_wait(500, Duration::from_millis(2))
    }

    #[test]
    fn quotes_through_configfs_layout() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("report")).unwrap();
        let _kernel = FakeKernel::start(dir.path().join("report"), "tdx_guest");
        let rd = ReportData([0x5a; 64]);
        let bytes = provider(dir.path()).quote(&rd).unwrap();
        assert_eq!(Quote::parse(&bytes).unwrap().report_data(), rd);
    }

    #[test]
    fn refuses_a_provider_that_is_not_tdx() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("report")).unwrap();
        let _kernel = FakeKernel::start(dir.path().join("report"), "sev_guest");
        let err = provider(dir.path()).quote(&ReportData::ZERO).unwrap_err();
        assert!(err.to_string().contains("not tdx_guest"), "{err}");
    }

    #[test]
    fn missing_configfs_and_silent_kernel_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let err = provider(dir.path()).quote(&ReportData::ZERO).unwrap_err();
        assert!(err.to_string().contains("mkdir entry"), "{err}");
        std::fs::create_dir(dir.path().join("report")).unwrap();
        let p = provider(dir.path()).with_outblob_wait(3, Duration::from_millis(1));
        let err = p.quote(&ReportData::ZERO).unwrap_err();
        assert!(err.to_string().contains("no quote was produced"), "{err}");
    }

    #[test]
    fn extends_rtmr3_by_writing_the_digest() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("rtmr3"), b"").unwrap();
        provider(dir.path())
            .extend_rtmr3(&Measurement([7; 48]))
            .unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("rtmr3")).unwrap(),
            vec![7u8; 48]
        );
        let err = TsmProvider::new(dir.path(), dir.path().join("none/rtmr3"))
            .extend_rtmr3(&Measurement::ZERO)
            .unwrap_err();
        assert!(err.to_string().contains("RTMR3"), "{err}");
    }
}
