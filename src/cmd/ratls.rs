//! `teegate ratls inspect`: what an RA-TLS certificate attests, and whether it verifies.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use ratls::cert::parse_ratls_cert;
use ratls::tcb::{TcbPolicy, TcbStatus};
use ratls::{AttestationVerifier, Policy, Reason};
use serde_json::json;

use super::verifier::CollateralArgs;
use crate::input;

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Print what an RA-TLS certificate attests and verify it (no measurement pins).
    Inspect(InspectArgs),
}

#[derive(clap::Args, Debug)]
pub struct InspectArgs {
    /// The certificate, PEM or DER.
    pub cert: PathBuf,
    #[command(flatten)]
    pub collateral: CollateralArgs,
    /// Verify as of this time (RFC 3339) instead of now.
    #[arg(long, value_name = "RFC3339")]
    pub at: Option<String>,
    /// Accept quotes from teegate's simulated TDX PKI.
    #[arg(long)]
    pub allow_simulated: bool,
    /// Also accept these TCB statuses (UpToDate is always accepted).
    #[arg(long = "allow-status", value_name = "STATUS")]
    pub allow_status: Vec<TcbStatus>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(cmd: Command) -> Result<ExitCode> {
    match cmd {
        Command::Inspect(args) => inspect(args),
    }
}

fn inspect(args: InspectArgs) -> Result<ExitCode> {
    let der = input::read_cert(&args.cert)?;
    let parsed = match parse_ratls_cert(&der) {
        Ok(p) => p,
        // Another implementation's CCC certificate: show what it says and how far it checks.
        Err(e) if e.reason == Reason::NoAppClaims => return foreign(&der, args.json),
        Err(e) => {
            if args.json {
                println!(
                    "{}",
                    json!({ "ok": false, "step": e.step, "error": e.reason.to_string() })
                );
            }
            eprintln!("certificate rejected: {e}");
            return Ok(ExitCode::from(1));
        }
    };
    let mut policy = Policy::any_measurements();
    policy.allow_simulated = args.allow_simulated;
    policy.tcb = TcbPolicy::allowing(
        std::iter::once(TcbStatus::UpToDate).chain(args.allow_status.iter().copied()),
    )?;
    let mut verifier = AttestationVerifier::new(args.collateral.source()?, policy);
    if let Some(at) = &args.at {
        verifier = verifier.at_time(input::parse_time(at)?);
    }
    let result = verifier.verify(&der);
    let claims = &parsed.claims;
    let quote = ratls::Quote::parse(&parsed.quote).ok();
    let replayed = claims.event_log.replay();
    if args.json {
        let mut out = json!({
            "fingerprint": parsed.fingerprint,
            "subject": parsed.subject,
            "issuer": parsed.issuer,
            "self_signed": parsed.self_issued,
            "not_before": input::format_time(parsed.not_before),
            "not_after": input::format_time(parsed.not_after),
            "dns_names": parsed.dns_names,
            "claims": {
                "app_id": claims.app_id,
                "compose_hash": claims.compose_hash,
                "instance_id": claims.instance_id,
                "simulated": claims.simulated,
                "event_log": claims.event_log,
            },
            "event_log_replay": replayed,
            "quote": quote.as_ref().map(|q| json!({
                "version": q.version(),
                "mrtd": q.mrtd(),
                "rtmrs": q.rtmrs(),
                "report_data": q.report_data(),
            })),
        });
        match &result {
            Ok(v) => {
                out["ok"] = json!(true);
                out["attestation"] = serde_json::to_value(v).context("encoding JSON")?;
            }
            Err(e) => {
                out["ok"] = json!(false);
                out["step"] = json!(e.step);
                out["error"] = json!(e.reason.to_string());
            }
        }
        println!(
            "{}",
            serde_json::to_string_pretty(&out).context("encoding JSON")?
        );
    } else {
        if claims.simulated {
            println!("*** SIMULATED TDX: this certificate claims a simulated quote ***");
        }
        println!("fingerprint     {}", parsed.fingerprint);
        println!("subject         {}", parsed.subject);
        println!(
            "issuer          {}{}",
            parsed.issuer,
            if parsed.self_issued {
                " (self-signed)"
            } else {
                ""
            }
        );
        println!(
            "valid           {} .. {}",
            input::format_time(parsed.not_before),
            input::format_time(parsed.not_after)
        );
        println!("names           {}", parsed.dns_names.join(", "));
        println!("app id          {}", claims.app_id);
        println!("compose hash    {}", claims.compose_hash);
        println!("instance id     {}", claims.instance_id);
        if let Some(q) = &quote {
            println!("MRTD            {}", q.mrtd());
            for (i, r) in q.rtmrs().iter().enumerate() {
                println!("RTMR{i}           {r}");
            }
        }
        println!(
            "event log       {} event(s), replays to {}",
            claims.event_log.len(),
            replayed
        );
        for step in claims.event_log.replay_steps() {
            println!(
                "  {:<14} {}",
                step.event.name,
                hex::encode(&step.event.payload)
            );
        }
        match &result {
            Ok(v) => println!(
                "verification    OK (TCB {}{})",
                v.tcb_status(),
                if v.is_simulated() { ", SIMULATED" } else { "" }
            ),
            Err(_) => println!("verification    FAILED"),
        }
    }
    match result {
        Ok(_) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            eprintln!("certificate rejected: {e}");
            Ok(ExitCode::from(1))
        }
    }
}

/// `inspect` of a CCC certificate without teegate's app claims (Gramine, Intel SGX SDK,
/// rats-tls, …): its evidence, claims and key binding, then where verification stops.
fn foreign(der: &[u8], json_out: bool) -> Result<ExitCode> {
    let ins = ratls::ccc::inspect_ccc(der);
    let error = ins.error.clone();
    if json_out {
        let mut out = serde_json::to_value(&ins).context("encoding JSON")?;
        out["ok"] = json!(false);
        out["teegate_certificate"] = json!(false);
        if let Some(e) = &error {
            out["step"] = json!(e.step);
            out["error"] = json!(e.reason.to_string());
        }
        println!(
            "{}",
            serde_json::to_string_pretty(&out).context("encoding JSON")?
        );
    } else {
        println!("CCC RA-TLS certificate without teegate app claims (another implementation's)");
        if let Some(fp) = &ins.fingerprint {
            println!("fingerprint     {fp}");
        }
        if let Some(c) = &ins.certificate {
            println!("subject         {}", c.subject);
            println!(
                "issuer          {}{}",
                c.issuer,
                if c.self_issued { " (self-signed)" } else { "" }
            );
            println!(
                "valid           {} .. {}",
                input::format_time(c.not_before),
                input::format_time(c.not_after)
            );
        }
        if let Some(ev) = &ins.evidence {
            println!("claims keys     {}", ev.claim_keys.join(", "));
            if !ev.other_keys.is_empty() {
                println!(
                    "unknown keys    {} (listed, not interpreted)",
                    ev.other_keys.join(", ")
                );
            }
            if let (Some(alg), Some(h)) = (ev.pubkey_hash_alg, &ev.pubkey_hash) {
                println!("pubkey-hash     {alg} {}", hex::encode(h));
            }
            if let Some(n) = &ev.nonce {
                println!("nonce           {}", hex::encode(n));
            }
            if let Some(h) = &ev.quote_header {
                println!(
                    "quote           {} quote v{} (tee_type {}), {} bytes",
                    h.tee_name(),
                    h.version,
                    h.tee_type,
                    ev.quote_len
                );
            }
            if let Some(rd) = &ev.report_data {
                println!("report data     {rd}");
            }
            println!(
                "expected        {} (SHA-256 of the claims buffer)",
                ev.expected_report_data
            );
        }
        for c in &ins.checks {
            println!(
                "{:<18}{:<12} {}",
                c.step.as_str(),
                c.outcome.label(),
                c.outcome.text()
            );
        }
        match &error {
            Some(e) => println!("verification    FAILED at {}", e.step),
            None => println!("verification    not completed"),
        }
    }
    if let Some(e) = error {
        eprintln!("certificate not verified: {e}");
    }
    Ok(ExitCode::from(1))
}
