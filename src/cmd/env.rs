//! `teegate env encrypt|decrypt`: the encrypted-environment format (see `kms::envelope`).
//!
//! `encrypt` fetches the app's env public key from the KMS over TLS verified to the KMS
//! root CA the user pins (`--kms-root`), checks the root CA's signature on the key, and
//! encrypts stdin to it. Nothing is ever fetched over unverified TLS.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use ratls::{AppId, AttestationVerifier, CachingVerifier, Policy};

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Encrypt a .env file (stdin) to an app; writes the envelope JSON to stdout.
    Encrypt(EncryptArgs),
    /// Decrypt an envelope (stdin) with an env private key; writes the .env to stdout.
    Decrypt(DecryptArgs),
}

#[derive(clap::Args, Debug)]
pub struct EncryptArgs {
    /// KMS URL (https://host:port).
    #[arg(long)]
    pub kms: String,
    /// The app to encrypt to (40 hex characters).
    #[arg(long)]
    pub app_id: String,
    /// The KMS root CA certificate (PEM) you trust, e.g. the KMS's published root-ca.pem.
    #[arg(long, value_name = "FILE")]
    pub kms_root: PathBuf,
    /// Accept a KMS whose attestation is SIMULATED (development only).
    #[arg(long)]
    pub allow_simulated_kms: bool,
    /// Where the KMS's quote collateral comes from (a real TDX KMS needs one).
    #[command(flatten)]
    pub collateral: super::verifier::CollateralArgs,
}

#[derive(clap::Args, Debug)]
pub struct DecryptArgs {
    /// The app the envelope was made for.
    #[arg(long)]
    pub app_id: String,
    /// File holding the env private key (64 hex characters), as the KMS releases it.
    #[arg(long, value_name = "FILE")]
    pub key_file: PathBuf,
}

pub fn run(cmd: Command) -> Result<ExitCode> {
    match cmd {
        Command::Encrypt(a) => encrypt(a),
        Command::Decrypt(a) => decrypt(a),
    }
}

fn app_id(text: &str) -> Result<AppId> {
    text.parse::<AppId>().context("--app-id")
}

fn encrypt(args: EncryptArgs) -> Result<ExitCode> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let app = app_id(&args.app_id)?;
    let root_text = std::fs::read(&args.kms_root)
        .with_context(|| format!("reading {}", args.kms_root.display()))?;
    let root = pem::parse(&root_text).context("--kms-root must be a PEM certificate")?;
    if root.tag() != "CERTIFICATE" {
        bail!("--kms-root holds a {}, not a CERTIFICATE", root.tag());
    }
    let mut plaintext = Vec::new();
    std::io::stdin()
        .read_to_end(&mut plaintext)
        .context("reading stdin")?;
    let mut policy = Policy::any_measurements();
    policy.allow_simulated = args.allow_simulated_kms;
    let attestation = Arc::new(CachingVerifier::new(
        AttestationVerifier::new(args.collateral.source()?, policy),
        4,
    ));
    let verifier = kms::client::pinned_root(root.contents(), attestation)?;
    let client = kms::client::KmsClient::new(&args.kms, verifier, None, Duration::from_secs(30))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let resp = rt
        .block_on(client.env_key(app.as_bytes()))
        .context("fetching the env key")?;
    let public = kms::envelope::verify_env_key(&resp, app.as_bytes(), root.contents())?;
    let envelope = kms::envelope::seal_env(app.as_bytes(), &public, &plaintext)?;
    let mut out = serde_json::to_vec_pretty(&envelope)?;
    out.push(b'\n');
    std::io::stdout()
        .write_all(&out)
        .context("writing stdout")?;
    eprintln!(
        "encrypted {} bytes for app {app} to env key {} (signed by the pinned KMS root)",
        plaintext.len(),
        resp.env_public_key
    );
    Ok(ExitCode::SUCCESS)
}

fn decrypt(args: DecryptArgs) -> Result<ExitCode> {
    let app = app_id(&args.app_id)?;
    let key_text = std::fs::read_to_string(&args.key_file)
        .with_context(|| format!("reading {}", args.key_file.display()))?;
    let mut key = [0u8; 32];
    hex::decode_to_slice(key_text.trim(), &mut key)
        .context("--key-file must hold 64 hex characters")?;
    let mut input = Vec::new();
    std::io::stdin()
        .read_to_end(&mut input)
        .context("reading stdin")?;
    let envelope = kms::envelope::parse_env(&input)?;
    let plain = kms::envelope::open_env(app.as_bytes(), &key, &envelope)?;
    std::io::stdout()
        .write_all(&plain)
        .context("writing stdout")?;
    Ok(ExitCode::SUCCESS)
}
