//! What `teegate dev` prints once the stack runs.

use std::io::Write;
use std::time::Instant;

use super::ports::Ports;
use super::secs;
use super::stack::{App, GatewayCvm, Layout, BASE};

/// Quotes `text` for a POSIX shell when it needs it.
fn shell_quote(text: &str) -> String {
    if !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-:+,=@".contains(&b))
    {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', "'\\''"))
    }
}

/// What the user needs once everything runs: the CA, the URLs, a curl per app.
pub fn summary(
    layout: &Layout,
    ports: Option<&Ports>,
    gateway: Option<&GatewayCvm>,
    apps: &[App],
    t0: Instant,
) {
    let Some(ports) = ports else {
        return;
    };
    let https = ports.https;
    let ca = layout.dev_ca();
    let ca_arg = shell_quote(&ca.display().to_string());
    println!();
    println!("  CA to trust   {}", ca.display());
    println!(
        "                (import it in a browser to open the URLs below; it is kept across runs)"
    );
    println!("  attestation   https://{BASE}:{https}/");
    if let Some(gw) = gateway {
        println!(
            "  gateway       attested [SIMULATED TDX], app {}; evidence https://{BASE}:{https}/.well-known/teegate/gateway",
            gw.app_id
        );
    }
    if let Some(first) = apps.first() {
        println!(
            "  DNS           dig @127.0.0.1 -p {} +short {}",
            ports.dns,
            first.host()
        );
    }
    println!(
        "  ports         https {https}, http {}, registration {}, admin {}, kms {}, dns {} (udp+tcp), dns-api {}",
        ports.http, ports.registration, ports.admin, ports.kms, ports.dns, ports.dns_api
    );
    println!();
    for app in apps {
        let host = app.host();
        println!("app {} [SIMULATED TDX]  https://{host}:{https}/", app.index);
        println!(
            "  curl --resolve {host}:{https}:127.0.0.1 --cacert {ca_arg} https://{host}:{https}/"
        );
        if let Some(gw) = gateway {
            println!(
                "  teegate verify https://{host}:{https}/ --connect 127.0.0.1:{https} --ca {ca_arg} --allow-simulated --gateway-app-id {}",
                gw.app_id
            );
        }
    }
    println!();
    println!(
        "ready in {} (SIMULATED TDX). Ctrl-C stops everything.",
        secs(t0)
    );
    let _ = std::io::stdout().flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quote_leaves_plain_paths_and_quotes_the_rest() {
        assert_eq!(shell_quote("/tmp/a-b_c.pem"), "/tmp/a-b_c.pem");
        assert_eq!(shell_quote("/tmp/my dir/ca.pem"), "'/tmp/my dir/ca.pem'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
    }
}
