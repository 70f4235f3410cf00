//! `teegate`: one binary for every teegate role and tool.

mod cmd;
mod input;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

// The system allocator (glibc). mimalloc was tried here: the fast path allocates little per
// request, so it was no faster (docs/performance.md, "Allocator"), and it held 53–61 MB of
// resident memory for a live heap under 8 MB, growing in steps of 2–5 MB at random moments of
// a soak, where glibc holds 33 MB and stays flat.

#[derive(Parser)]
#[command(
    name = "teegate",
    version,
    about = "Confidential apps on the web: gateway, RA-TLS and TDX attestation tools"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start; boxing the large `verify` arguments would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// The whole stack on loopback with simulated CVMs (SIMULATED TDX; for development).
    Dev(cmd::dev::Args),
    /// Run the gateway (TLS termination, attested routing, registration API).
    Gateway(cmd::gateway::Args),
    /// Run the KMS (attested key release).
    Kms(cmd::kms::Args),
    /// Run the authoritative DNS for the base domain (gateway records, ACME TXT, CAA).
    Dns(cmd::dns::Args),
    /// Encrypted environment files for apps.
    #[command(subcommand)]
    Env(cmd::env::Command),
    /// Run the guest sidecar in a CVM (measure, fetch keys, run containers, serve, register).
    Sidecar(cmd::sidecar::Args),
    /// Check an RA-TLS server (or certificate) against pins: app id, compose hash, measurements,
    /// KMS root; or a site the gateway terminates, through the gateway's evidence.
    Verify(Box<cmd::verify::Args>),
    /// Parse and verify a TDX quote.
    Quote(cmd::quote::Args),
    /// RA-TLS certificate tools.
    #[command(subcommand)]
    Ratls(cmd::ratls::Command),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TEEGATE_LOG")
                // rustls warns once per connection about clients that put an IP in SNI.
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,rustls=error")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Dev(args) => cmd::dev::run(args),
        Command::Gateway(args) => cmd::gateway::run(args),
        Command::Kms(args) => cmd::kms::run(args),
        Command::Dns(args) => cmd::dns::run(args),
        Command::Env(c) => cmd::env::run(c),
        Command::Sidecar(args) => cmd::sidecar::run(args),
        Command::Verify(args) => cmd::verify::run(*args),
        Command::Quote(args) => cmd::quote::run(args),
        Command::Ratls(c) => cmd::ratls::run(c),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
