//! Every component's TOML configuration, with validation (the first byte picks one).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let env = std::iter::empty::<(String, String)>();
    match which % 4 {
        0 => drop(config::from_toml_str_with_env::<config::GatewayConfig>(text, env)),
        1 => drop(config::from_toml_str_with_env::<config::SidecarConfig>(text, env)),
        2 => drop(config::from_toml_str_with_env::<config::KmsConfig>(text, env)),
        _ => drop(config::from_toml_str_with_env::<config::DnsConfig>(text, env)),
    }
});
