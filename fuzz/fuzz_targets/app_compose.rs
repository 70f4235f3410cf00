//! `app-compose.json` and the docker compose YAML inside it, as the sidecar reads them.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The sidecar reads the file from disk; the fuzzer's bytes go there first.
    thread_local! {
        static PATH: std::path::PathBuf = std::env::temp_dir()
            .join(format!("teegate-fuzz-compose-{}.json", std::process::id()));
    }
    PATH.with(|p| {
        if std::fs::write(p, data).is_err() {
            return;
        }
        if let Ok(loaded) = guest_sidecar::compose::LoadedAppCompose::read(p) {
            let _ = loaded
                .compose
                .compose_spec(&Default::default(), &Default::default());
        }
    });
});
