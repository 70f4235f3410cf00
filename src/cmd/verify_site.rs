//! `teegate verify https://<app-id>.<base>/` for names the gateway terminates: the
//! certificate the client received, the gateway's evidence that binds it, the gateway
//! pins, then every instance of the app verified here ([`ratls::site`]). Exit 1 naming
//! the failed step.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use ratls::pins::Pins;
use ratls::site::{self, SiteCheck, SiteReport, SiteUrl};
use serde_json::json;

use super::verify::Args;

/// The gateway pins and how to reach a terminated site.
#[derive(clap::Args, Debug)]
pub struct GatewayArgs {
    /// The compose hash the terminating gateway must attest.
    #[arg(long, value_name = "HASH")]
    pub gateway_compose_hash: Option<ratls::ComposeHash>,
    /// The app id the terminating gateway must attest.
    #[arg(long, value_name = "ID")]
    pub gateway_app_id: Option<ratls::AppId>,
    /// The MRTD the terminating gateway's quote must carry.
    #[arg(long, value_name = "HEX")]
    pub gateway_mrtd: Option<ratls::Measurement>,
    /// CA certificates (PEM) the gateway's TLS certificate must chain to, instead of the
    /// system's trust store (e.g. `teegate dev`'s `dev-ca.pem`).
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// The gateway's base domain, to check a custom domain it terminates (with `--app-id`).
    #[arg(long, value_name = "DOMAIN")]
    pub gateway_base: Option<String>,
}

/// `[gateway]` in a pin file.
#[derive(serde::Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
pub struct GatewayPinFile {
    compose_hash: Option<ratls::ComposeHash>,
    app_id: Option<ratls::AppId>,
    mrtd: Option<ratls::Measurement>,
    /// CA certificates (PEM) for the gateway's TLS certificate.
    ca: Option<PathBuf>,
}

/// The parsed URL when `target` is a site the gateway terminates.
pub fn terminated(target: &str, args: &GatewayArgs) -> Result<Option<SiteUrl>> {
    if !target.starts_with("https://") {
        return Ok(None);
    }
    let url = site::parse_url(target).map_err(|e| anyhow::anyhow!("{e}"))?;
    let is_site = !url.passthrough && (url.app_id.is_some() || args.gateway_base.is_some());
    Ok(is_site.then_some(url))
}

fn roots(path: Option<&PathBuf>) -> Result<rustls::RootCertStore> {
    let Some(path) = path else {
        return site::system_roots().map_err(|e| anyhow::anyhow!("{e}"));
    };
    let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for p in pem::parse_many(&text).with_context(|| format!("{}: PEM", path.display()))? {
        if p.tag() == "CERTIFICATE" {
            roots
                .add(p.into_contents().into())
                .with_context(|| format!("{}: a CA certificate", path.display()))?;
        }
    }
    if roots.is_empty() {
        anyhow::bail!("{} holds no certificate", path.display());
    }
    Ok(roots)
}

pub fn run(args: &Args, url: SiteUrl, app: Pins, file: &GatewayPinFile) -> Result<ExitCode> {
    let g = &args.gateway;
    let gateway = Pins {
        app_id: g.gateway_app_id.or(file.app_id),
        compose_hash: g.gateway_compose_hash.or(file.compose_hash),
        mrtd: g.gateway_mrtd.or(file.mrtd),
        allow_simulated: app.allow_simulated,
        collateral: app.collateral.clone(),
        ..Pins::default()
    };
    let mut check = SiteCheck::new(roots(g.ca.as_ref().or(file.ca.as_ref()))?)
        .gateway(gateway.clone())
        .app(app.clone());
    check.connect = args.connect.clone();
    check.base_domain = g.gateway_base.clone();
    let report = site::verify_site(&args.target, &check);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&json_report(&report))?);
    } else {
        print_report(&report, &url, &gateway, &app);
    }
    match &report.error {
        None => Ok(ExitCode::SUCCESS),
        Some(e) => {
            eprintln!("verification failed at {}: {}", e.step, e.reason);
            Ok(ExitCode::from(1))
        }
    }
}

fn json_report(r: &SiteReport) -> serde_json::Value {
    json!({
        "ok": r.passed(),
        "kind": "terminated",
        "error": r.error.as_ref().map(|e| json!({ "step": e.step.as_str(), "reason": e.reason })),
        "url": r.url,
        "base_domain": r.base_domain,
        "app_id": r.app_id,
        "received_certificate": r.received,
        "gateway": r.gateway.as_ref().map(|g| json!({
            "app_id": g.app_id(),
            "compose_hash": g.compose_hash(),
            "instance_id": g.instance_id(),
            "mrtd": g.mrtd(),
            "tcb_status": g.tcb_status(),
            "simulated": g.is_simulated(),
            "issued_at": g.claims().issued_at,
            "keys": g.claims().keys,
        })),
        "bound_key": r.bound,
        "instances": r.instances.iter().map(|i| json!({
            "claimed_instance_id": i.claimed_instance_id,
            "fingerprint": i.fingerprint,
            "ok": i.verified.is_some(),
            "error": i.error,
            "app_id": i.verified.as_ref().map(|v| v.app_id()),
            "compose_hash": i.verified.as_ref().map(|v| v.compose_hash()),
            "instance_id": i.verified.as_ref().map(|v| v.instance_id()),
            "tcb_status": i.verified.as_ref().map(|v| v.tcb_status()),
            "simulated": i.verified.as_ref().map(|v| v.is_simulated()),
        })).collect::<Vec<_>>(),
    })
}

fn print_report(r: &SiteReport, url: &SiteUrl, gateway: &Pins, app: &Pins) {
    let simulated = r.gateway.as_ref().is_some_and(|g| g.is_simulated())
        || r.instances
            .iter()
            .any(|i| i.verified.as_ref().is_some_and(|v| v.is_simulated()));
    if simulated {
        println!("*** SIMULATED TDX: these quotes prove nothing about hardware ***");
    }
    println!("site            {} (terminated by the gateway)", url.host);
    if let Some(c) = &r.received {
        println!("certificate     {} (issuer {})", c.subject, c.issuer);
        println!("  SHA-256       {}", c.fingerprint);
        println!("  key SHA-256   {}", c.spki_sha256);
    }
    if let Some(g) = &r.gateway {
        println!(
            "gateway         app {} compose {} (TCB {})",
            g.app_id(),
            g.compose_hash(),
            g.tcb_status()
        );
        println!("  instance      {}", g.instance_id());
        println!(
            "  evidence      quoted at {} (unix), binds {} key(s)",
            g.claims().issued_at,
            g.claims().keys.len()
        );
    }
    if let Some(b) = &r.bound {
        println!(
            "  binds         the received certificate's key ({} {})",
            b.role.as_str(),
            b.name
        );
    }
    for i in &r.instances {
        match &i.verified {
            Some(v) => println!(
                "instance        {} verified: app {} compose {} (TCB {})",
                v.instance_id(),
                v.app_id(),
                v.compose_hash(),
                v.tcb_status()
            ),
            None => println!(
                "instance        {} FAILED: {}",
                i.claimed_instance_id,
                i.error.as_deref().unwrap_or("?")
            ),
        }
    }
    let show = |name: &str, v: Option<String>| {
        if let Some(v) = v {
            println!("pin {name:<20} {v}");
        }
    };
    show(
        "gateway compose hash",
        gateway.compose_hash.map(|v| v.to_hex()),
    );
    show("gateway app id", gateway.app_id.map(|v| v.to_hex()));
    show("gateway MRTD", gateway.mrtd.map(|v| v.to_hex()));
    show("app id", app.app_id.or(url.app_id).map(|v| v.to_hex()));
    show("compose hash", app.compose_hash.map(|v| v.to_hex()));
    show("MRTD", app.mrtd.map(|v| v.to_hex()));
    for (i, m) in app.rtmr.iter().enumerate() {
        show(&format!("RTMR{i}"), m.map(|v| v.to_hex()));
    }
    for (service, id) in &app.images {
        show(&format!("image {service}"), Some(id.clone()));
    }
    show(
        "KMS root",
        app.kms_root
            .as_ref()
            .map(|r| ratls::Fingerprint::of(r).to_hex()),
    );
    println!(
        "verification    {}",
        if r.passed() { "OK" } else { "FAILED" }
    );
}
