//! `teegate verify <https-url | cert.pem>`: fetch (or read) an RA-TLS certificate, verify
//! it with ratls under the given pins, print what it attests and which pins held; exit 1
//! on any failure, naming the pin or step. A URL the gateway terminates
//! (`https://<app-id>.<base>/`) is checked through the gateway's evidence instead
//! (`verify_site.rs`); passthrough names (`…s.<base>`) and direct addresses present the
//! instance's own RA-TLS certificate and are checked here.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use ratls::cert::parse_ratls_cert;
use ratls::pins::Pins;
use ratls::tls::RaTlsServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use serde_json::json;

use super::verifier::CollateralArgs;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// `https://host[:port]` to connect to, or a certificate file (PEM chain or DER).
    pub target: String,
    /// Connect to this address instead of resolving the URL's host (like curl --resolve).
    #[arg(long, value_name = "HOST:PORT")]
    pub connect: Option<String>,
    /// The app id the server must attest.
    #[arg(long)]
    pub app_id: Option<ratls::AppId>,
    /// The compose hash the server must attest.
    #[arg(long)]
    pub compose_hash: Option<ratls::ComposeHash>,
    /// The MRTD the quote must carry.
    #[arg(long)]
    pub mrtd: Option<ratls::Measurement>,
    /// An RTMR pin, `N=HEX` for N in 0..=2 (repeatable).
    #[arg(long = "rtmr", value_name = "N=HEX")]
    pub rtmr: Vec<String>,
    /// The KMS root CA (PEM) the certificate must chain to.
    #[arg(long, value_name = "FILE")]
    pub kms_root: Option<PathBuf>,
    /// An image pin, `SERVICE=sha256:<64 hex>` (repeatable): the service's RTMR3 `image`
    /// event must record that content id.
    #[arg(long = "image", value_name = "SERVICE=DIGEST")]
    pub image: Vec<String>,
    /// Pins from a TOML file (`app_id`, `compose_hash`, `mrtd`, `rtmr0`..`rtmr2`, `kms_root`);
    /// flags override it.
    #[arg(long, value_name = "FILE")]
    pub pin_file: Option<PathBuf>,
    /// Accept a SIMULATED TDX quote (development only).
    #[arg(long)]
    pub allow_simulated: bool,
    /// Ask the server for a quote over a random nonce for this connection (ALPN
    /// `teegate-fresh-<hex>`) and require the certificate to carry it (step `freshness`).
    #[arg(long, conflicts_with = "nonce")]
    pub fresh: bool,
    /// Require the certificate to carry this nonce (hex), e.g. to check a saved fresh one.
    #[arg(long, value_name = "HEX")]
    pub nonce: Option<String>,
    #[command(flatten)]
    pub collateral: CollateralArgs,
    #[command(flatten)]
    pub gateway: super::verify_site::GatewayArgs,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PinFile {
    app_id: Option<ratls::AppId>,
    compose_hash: Option<ratls::ComposeHash>,
    mrtd: Option<ratls::Measurement>,
    rtmr0: Option<ratls::Measurement>,
    rtmr1: Option<ratls::Measurement>,
    rtmr2: Option<ratls::Measurement>,
    kms_root: Option<PathBuf>,
    /// Service → `sha256:<64 hex>`.
    #[serde(default)]
    images: std::collections::BTreeMap<String, String>,
    /// What a terminating gateway must attest (`[gateway]`).
    #[serde(default)]
    gateway: super::verify_site::GatewayPinFile,
}

/// Records the chain the server presented, then lets the RA-TLS verifier judge it.
#[derive(Debug)]
struct Capture {
    inner: RaTlsServerVerifier,
    chain: Mutex<Vec<Vec<u8>>>,
}

impl ServerCertVerifier for Capture {
    fn verify_server_cert(
        &self,
        ee: &CertificateDer<'_>,
        im: &[CertificateDer<'_>],
        n: &ServerName<'_>,
        o: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        *self.chain.lock().unwrap_or_else(|p| p.into_inner()) =
            std::iter::once(ee).chain(im).map(|c| c.to_vec()).collect();
        self.inner.verify_server_cert(ee, im, n, o, now)
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(m, c, d)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(m, c, d)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

pub(super) fn read_root(path: &PathBuf) -> Result<Vec<u8>> {
    let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let pems = pem::parse_many(&text).with_context(|| format!("{}: PEM", path.display()))?;
    pems.into_iter()
        .find(|p| p.tag() == "CERTIFICATE")
        .map(|p| p.into_contents())
        .with_context(|| format!("{} holds no certificate", path.display()))
}

fn pin_file(args: &Args) -> Result<PinFile> {
    Ok(match &args.pin_file {
        Some(p) => toml::from_str(
            &std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
        )
        .with_context(|| format!("{}", p.display()))?,
        None => PinFile::default(),
    })
}

fn pins(args: &Args, file: &PinFile) -> Result<Pins> {
    let mut rtmr = [file.rtmr0, file.rtmr1, file.rtmr2];
    for r in &args.rtmr {
        let (n, hex) = r
            .split_once('=')
            .with_context(|| format!("--rtmr {r}: expected N=HEX"))?;
        let n: usize = n
            .parse()
            .ok()
            .filter(|n| *n < 3)
            .with_context(|| format!("--rtmr {r}: N must be 0, 1 or 2"))?;
        rtmr[n] = Some(hex.parse().with_context(|| format!("--rtmr {r}"))?);
    }
    let kms_root = match args.kms_root.as_ref().or(file.kms_root.as_ref()) {
        Some(p) => Some(read_root(p)?),
        None => None,
    };
    let mut images = std::collections::BTreeMap::new();
    let pinned = file
        .images
        .iter()
        .map(|(s, d)| (s.clone(), d.clone(), "pin file images"))
        .chain(args.image.iter().map(|i| {
            let (s, d) = i.split_once('=').unwrap_or((i.as_str(), ""));
            (s.to_string(), d.to_string(), "--image")
        }));
    for (service, digest, from) in pinned {
        let hex_part = digest.strip_prefix("sha256:").unwrap_or(&digest);
        if service.is_empty() || hex_part.len() != 64 || hex::decode(hex_part).is_err() {
            anyhow::bail!(
                "{from} {service}={digest}: expected SERVICE=sha256:<64 hex> (the image's content id)"
            );
        }
        images.insert(service, format!("sha256:{}", hex_part.to_ascii_lowercase()));
    }
    Ok(Pins {
        images,
        app_id: args.app_id.or(file.app_id),
        compose_hash: args.compose_hash.or(file.compose_hash),
        mrtd: args.mrtd.or(file.mrtd),
        rtmr,
        kms_root,
        allow_simulated: args.allow_simulated,
        collateral: Some(args.collateral.source()?),
        nonce: match (&args.nonce, args.fresh) {
            (Some(h), _) => Some(hex::decode(h).with_context(|| format!("--nonce {h}: not hex"))?),
            (None, true) => Some(ratls::fresh::random_nonce()?.to_vec()),
            (None, false) => None,
        },
    })
}

fn fetch(args: &Args, verifier: Arc<Capture>, fresh: Option<&[u8]>) -> Result<Result<(), String>> {
    let rest = args
        .target
        .strip_prefix("https://")
        .context("URL must start with https://")?;
    let hostport = rest.split('/').next().unwrap_or(rest);
    let host = hostport
        .rsplit_once(':')
        .map_or(hostport, |(h, _)| h)
        .to_string();
    let addr = args.connect.clone().unwrap_or_else(|| {
        if hostport.contains(':') {
            hostport.to_string()
        } else {
            format!("{hostport}:443")
        }
    });
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .dangerous()
    .with_custom_certificate_verifier(verifier)
    .with_no_client_auth();
    if let Some(nonce) = fresh {
        cfg.alpn_protocols = vec![ratls::fresh::alpn_id(nonce), b"http/1.1".to_vec()];
    }
    let name = ServerName::try_from(host.clone())
        .with_context(|| format!("{host} is not a server name"))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let tcp = tokio::time::timeout(
            std::time::Duration::from_secs(15),
            tokio::net::TcpStream::connect(&addr),
        )
        .await
        .with_context(|| format!("connecting to {addr}: timed out"))?
        .with_context(|| format!("connecting to {addr}"))?;
        let handshake = tokio::time::timeout(
            std::time::Duration::from_secs(15),
            tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(name, tcp),
        )
        .await
        .with_context(|| format!("TLS handshake with {addr}: timed out"))?;
        Ok(handshake.map(|_| ()).map_err(|e| e.to_string()))
    })
}

pub fn run(args: Args) -> Result<ExitCode> {
    let file = pin_file(&args)?;
    let pins = pins(&args, &file)?;
    if let Some(site) = super::verify_site::terminated(&args.target, &args.gateway)? {
        if args.fresh || args.nonce.is_some() {
            bail!("--fresh and --nonce apply to an RA-TLS certificate: use the passthrough name <app-id>s.<base> for a fresh quote");
        }
        return super::verify_site::run(&args, site, pins, &file.gateway);
    }
    let pinned_root = pins.kms_root.is_some();
    let capture = Arc::new(Capture {
        inner: RaTlsServerVerifier(pins.check()?),
        chain: Mutex::new(Vec::new()),
    });
    let verdict = if args.target.starts_with("https://") {
        let fresh = args.fresh.then_some(pins.nonce.as_deref()).flatten();
        fetch(&args, capture.clone(), fresh)?
    } else {
        if args.fresh {
            bail!("--fresh needs an https:// target (a saved certificate: --nonce HEX)");
        }
        let bytes =
            std::fs::read(&args.target).with_context(|| format!("reading {}", args.target))?;
        let chain: Vec<Vec<u8>> = match pem::parse_many(&bytes) {
            Ok(p) if !p.is_empty() => p
                .into_iter()
                .filter(|p| p.tag() == "CERTIFICATE")
                .map(|p| p.into_contents())
                .collect(),
            _ => vec![bytes],
        };
        if chain.is_empty() {
            bail!("{} holds no certificate", args.target);
        }
        let ders: Vec<CertificateDer<'_>> = chain
            .iter()
            .map(|c| CertificateDer::from(c.as_slice()))
            .collect();
        let name = ServerName::try_from("ratls.invalid").context("server name")?;
        capture
            .verify_server_cert(&ders[0], &ders[1..], &name, &[], UnixTime::now())
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    let verdict = verdict.map_err(|e| {
        if pinned_root && e.contains("UnknownIssuer") {
            format!("certificate does not chain to the pinned KMS root ({e})")
        } else {
            e
        }
    });
    let chain = capture
        .chain
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let parsed = chain.first().and_then(|leaf| parse_ratls_cert(leaf).ok());
    if args.json {
        let out = json!({
            "ok": verdict.is_ok(),
            "error": verdict.as_ref().err(),
            "nonce": pins.nonce.as_ref().map(hex::encode),
            "certificate": parsed.as_ref().map(|p| json!({
                "fingerprint": p.fingerprint,
                "app_id": p.claims.app_id,
                "compose_hash": p.claims.compose_hash,
                "instance_id": p.claims.instance_id,
                "simulated": p.claims.simulated,
            })),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        if let Some(p) = &parsed {
            if p.claims.simulated {
                println!("*** SIMULATED TDX: this quote proves nothing about hardware ***");
            }
            println!("fingerprint     {}", p.fingerprint);
            println!("app id          {}", p.claims.app_id);
            println!("compose hash    {}", p.claims.compose_hash);
            println!("instance id     {}", p.claims.instance_id);
        }
        let show = |name: &str, v: Option<String>| {
            if let Some(v) = v {
                println!("pin {name:<12} {v}");
            }
        };
        show("app id", pins.app_id.map(|v| v.to_hex()));
        show("nonce", pins.nonce.as_ref().map(hex::encode));
        show("compose hash", pins.compose_hash.map(|v| v.to_hex()));
        for (service, id) in &pins.images {
            show(&format!("image {service}"), Some(id.clone()));
        }
        show("MRTD", pins.mrtd.map(|v| v.to_hex()));
        for (i, r) in pins.rtmr.iter().enumerate() {
            show(&format!("RTMR{i}"), r.map(|v| v.to_hex()));
        }
        show(
            "KMS root",
            pins.kms_root
                .as_ref()
                .map(|r| ratls::Fingerprint::of(r).to_hex()),
        );
        println!(
            "verification    {}",
            if verdict.is_ok() { "OK" } else { "FAILED" }
        );
    }
    match verdict {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            eprintln!("verification failed: {e}");
            Ok(ExitCode::from(1))
        }
    }
}
