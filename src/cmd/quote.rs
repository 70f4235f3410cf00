//! `teegate quote`: parse a quote, verify it, print both.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use ratls::tcb::{TcbPolicy, TcbStatus};
use ratls::{Quote, QuoteVerifier};
use serde_json::json;

use super::verifier::CollateralArgs;
use crate::input;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The quote: raw bytes or hex text.
    pub file: PathBuf,
    #[command(flatten)]
    pub collateral: CollateralArgs,
    /// Verify as of this time (RFC 3339) instead of now.
    #[arg(long, value_name = "RFC3339")]
    pub at: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Accept quotes from teegate's simulated TDX PKI.
    #[arg(long)]
    pub allow_simulated: bool,
    /// Also accept these TCB statuses (UpToDate is always accepted).
    #[arg(long = "allow-status", value_name = "STATUS")]
    pub allow_status: Vec<TcbStatus>,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let bytes = input::read_quote(&args.file)?;
    let now = match &args.at {
        Some(t) => input::parse_time(t)?,
        None => ratls::verifier::unix_now(),
    };
    let tcb = TcbPolicy::allowing(
        std::iter::once(TcbStatus::UpToDate).chain(args.allow_status.iter().copied()),
    )?;
    let quote = match Quote::parse(&bytes) {
        Ok(q) => q,
        Err(e) => {
            let msg = format!("parse: {e}");
            if args.json {
                println!("{}", json!({ "ok": false, "step": "parse", "error": msg }));
            } else {
                eprintln!("quote rejected: {msg}");
            }
            return Ok(ExitCode::from(1));
        }
    };
    let simulated_root = quote.chain_root().ok().as_deref()
        == Some(ratls::sim::SimulatedPki::well_known().root_ca_der());
    let verifier = QuoteVerifier::new(args.collateral.source()?, tcb, args.allow_simulated);
    let result = verifier.verify(quote.clone(), None, now);
    let rtmrs = quote.rtmrs();
    let fmspc = quote.fmspc().map(hex::encode_upper).ok();
    if args.json {
        let mut out = json!({
            "version": quote.version(),
            "td_report": quote.td_report_version(),
            "simulated": simulated_root,
            "mrtd": quote.mrtd(),
            "rtmr0": rtmrs[0], "rtmr1": rtmrs[1], "rtmr2": rtmrs[2], "rtmr3": rtmrs[3],
            "report_data": quote.report_data(),
            "fmspc": fmspc,
            "debug": quote.is_debug(),
            "verified_at": input::format_time(now as i64),
        });
        match &result {
            Ok(v) => {
                out["ok"] = json!(true);
                out["tcb_status"] = json!(v.tcb_status);
                out["advisory_ids"] = json!(v.advisory_ids);
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
        if simulated_root {
            println!("*** SIMULATED TDX QUOTE: not from real hardware ***");
        }
        println!(
            "quote version   {} (TD report {})",
            quote.version(),
            quote.td_report_version()
        );
        println!("MRTD            {}", quote.mrtd());
        for (i, r) in rtmrs.iter().enumerate() {
            println!("RTMR{i}           {r}");
        }
        println!("report_data     {}", quote.report_data());
        println!("FMSPC           {}", fmspc.as_deref().unwrap_or("?"));
        println!(
            "debug TD        {}",
            if quote.is_debug() { "YES" } else { "no" }
        );
        match &result {
            Ok(v) => {
                println!("TCB status      {}", v.tcb_status);
                if !v.advisory_ids.is_empty() {
                    println!("advisories      {}", v.advisory_ids.join(", "));
                }
                println!("verification    OK (at {})", input::format_time(now as i64));
            }
            Err(_) => println!("verification    FAILED"),
        }
    }
    match result {
        Ok(_) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            eprintln!("quote rejected: {e}");
            Ok(ExitCode::from(1))
        }
    }
}
