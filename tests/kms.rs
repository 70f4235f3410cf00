//! The KMS end to end on loopback: real `teegate kms` processes with the simulated quote
//! provider, simulated app instances that fetch keys over mutual RA-TLS, replicas that
//! onboard from a running KMS, a webhook, restarts, and `teegate env encrypt`.

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kms::api::{AppKeysRequest, AppKeysResponse};
use kms::client::{ClientError, KmsClient};
use ratls::cert::{issue, CertProfile, Identity, RaTlsCert};
use ratls::provider::SimulatedProvider;
use ratls::{AppId, AttestationVerifier, CachingVerifier, ComposeHash, InstanceId, Policy};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const COMPOSE: &[u8] = b"{\"name\":\"vault\"}";
const COMPOSE_NO_SIM: &[u8] = b"{\"name\":\"strict\"}";
const START: Duration = Duration::from_secs(30);

fn app_id(compose: &[u8]) -> AppId {
    ComposeHash::of(compose).default_app_id()
}

/// A KMS config: simulated provider, every OS measurement allowed, the `COMPOSE` app
/// allowed with its compose hash (simulated quotes accepted) and the `COMPOSE_NO_SIM` app
/// that refuses simulated quotes. `extra` is appended (webhook, policy overrides).
fn kms_config(dir: &Path, port: u16, kms_measurements: &str, extra: &str) -> PathBuf {
    let text = format!(
        r#"listen = "127.0.0.1:{port}"
data_dir = "{data}"
quote_provider = "simulated"

[verifier]
allow_simulated = true

[policy.os]
mrtd = "any"
rtmr0 = "any"
rtmr1 = "any"
rtmr2 = "any"

[policy.kms_measurements]
{kms_measurements}

[policy.apps.{app}]
compose_hashes = ["{hash}"]
allow_simulated = true

[policy.apps.{strict}]
compose_hashes = "any"
allow_simulated = false
{extra}
"#,
        data = dir.join("data").display(),
        app = app_id(COMPOSE),
        hash = ComposeHash::of(COMPOSE),
        strict = app_id(COMPOSE_NO_SIM),
    );
    let path = dir.join("kms.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

const ANY_KMS: &str = "mrtd = \"any\"\nrtmr0 = \"any\"\nrtmr1 = \"any\"\nrtmr2 = \"any\"";

struct Kms {
    proc: Proc,
    port: u16,
    dir: PathBuf,
    config: PathBuf,
}

impl Kms {
    fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    fn root_pem_path(&self) -> PathBuf {
        self.dir.join("data").join("root-ca.pem")
    }

    fn root_der(&self) -> Vec<u8> {
        let text = std::fs::read(self.root_pem_path()).expect("root-ca.pem");
        pem::parse(text).expect("PEM").into_contents()
    }

    fn audit(&self) -> String {
        std::fs::read_to_string(self.dir.join("data").join("audit.jsonl")).unwrap_or_default()
    }
}

fn start_kms_with(dir: &Path, kms_measurements: &str, extra: &str, args: &[&str]) -> Kms {
    let port = free_port();
    let config = kms_config(dir, port, kms_measurements, extra);
    let mut all = vec!["kms", "--config", config.to_str().unwrap()];
    all.extend_from_slice(args);
    let proc = spawn_teegate(&all, "ready", START);
    Kms {
        proc,
        port,
        dir: dir.to_path_buf(),
        config,
    }
}

fn start_kms(dir: &Path) -> Kms {
    start_kms_with(dir, ANY_KMS, "", &[])
}

/// Runs `teegate <args>` to completion (bounded); returns (success, stderr).
fn run_to_exit(args: &[&str], within: Duration) -> (bool, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_teegate"))
        .args(args)
        .env("TEEGATE_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let mut err = String::new();
            use std::io::Read;
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            return (status.success(), err);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("teegate {args:?} did not exit within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn dev_attestation() -> Arc<CachingVerifier> {
    let mut p = Policy::any_measurements();
    p.allow_simulated = true;
    Arc::new(CachingVerifier::new(
        AttestationVerifier::new(Arc::new(ratls::collateral::SourceChain::new()), p),
        16,
    ))
}

/// A client that pins the KMS root, presenting `cert` (if any) as its identity.
fn client(
    kms: &Kms,
    cert: Option<(
        Vec<rustls::pki_types::CertificateDer<'static>>,
        rustls::pki_types::PrivateKeyDer<'static>,
    )>,
) -> KmsClient {
    let verifier = kms::client::pinned_root(&kms.root_der(), dev_attestation()).unwrap();
    KmsClient::new(&kms.url(), verifier, cert, Duration::from_secs(10)).unwrap()
}

fn instance(
    cert: &RaTlsCert,
) -> Option<(
    Vec<rustls::pki_types::CertificateDer<'static>>,
    rustls::pki_types::PrivateKeyDer<'static>,
)> {
    Some((cert.rustls_chain(), cert.rustls_key()))
}

async fn keys_for(kms: &Kms, compose: &[u8], n: u8) -> AppKeysResponse {
    let cert = ratls_cert(&identity(compose, n));
    client(kms, instance(&cert))
        .app_keys(&AppKeysRequest {
            paths: vec!["db/main".into()],
        })
        .await
        .unwrap_or_else(|e| panic!("release failed: {e}\n{}", kms.proc.log()))
}

fn same_keys(a: &AppKeysResponse, b: &AppKeysResponse) {
    assert_eq!(a.app_id, b.app_id);
    assert_eq!(a.app_ca_key_pem, b.app_ca_key_pem);
    assert_eq!(a.app_ca_cert_pem, b.app_ca_cert_pem);
    assert_eq!(a.disk_key, b.disk_key);
    assert_eq!(a.env_private_key, b.env_private_key);
    assert_eq!(a.env_public_key, b.env_public_key);
    assert_eq!(a.app_keys, b.app_keys);
    assert_eq!(a.root_ca_cert_pem, b.root_ca_cert_pem);
}

/// Expects a refusal and returns its reason.
fn refused<T: std::fmt::Debug>(r: Result<T, ClientError>, status: u16) -> String {
    match r {
        Err(ClientError::Refused {
            status: s, reason, ..
        }) => {
            assert_eq!(s, status, "{reason}");
            reason
        }
        other => panic!("expected a {status} refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_onboarded_from_first_kms_releases_identical_keys() {
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let first = start_kms(d1.path());
    let second = start_kms_with(d2.path(), ANY_KMS, "", &["--onboard-from", &first.url()]);
    assert!(
        second
            .proc
            .log()
            .contains("received from the onboarding KMS"),
        "{}",
        second.proc.log()
    );
    assert_eq!(first.root_der(), second.root_der());

    let a = keys_for(&first, COMPOSE, 1).await;
    let b = keys_for(&second, COMPOSE, 2).await;
    same_keys(&a, &b);
    assert_eq!(a.app_id, app_id(COMPOSE).to_hex());
    assert_eq!(a.disk_key.expose().len(), 32);
    assert_eq!(a.boot_info.compose_hash, ComposeHash::of(COMPOSE).to_hex());
    assert!(a.boot_info.simulated);
    assert_eq!(a.boot_info.instance_id, InstanceId([1; 20]).to_hex());

    // The app CA certificate carries the app id and the released key's public half.
    let ca_der = pem::parse(&a.app_ca_cert_pem).unwrap().into_contents();
    assert!(String::from_utf8_lossy(&ca_der).contains(&a.app_id));
    assert!(kms::envelope::cert_public_key(&ca_der).is_ok());

    // Env keys and info need no client certificate; both replicas agree on the env key.
    let e1 = client(&first, None)
        .env_key(app_id(COMPOSE).as_bytes())
        .await
        .unwrap();
    let e2 = client(&second, None)
        .env_key(app_id(COMPOSE).as_bytes())
        .await
        .unwrap();
    assert_eq!(e1.env_public_key, e2.env_public_key);
    assert_eq!(e1.env_public_key, a.env_public_key);
    let info = client(&second, None).info().await.unwrap();
    assert!(info.attestation.simulated);
    // dstack's key chain: both replicas publish one k256 root, and the app's k256 key
    // released by either is signed by it (dstack's "dstack-kms-issued" message).
    let first_info = client(&first, None).info().await.unwrap();
    assert_eq!(first_info.k256_root_public_key, info.k256_root_public_key);
    assert_eq!(a.app_k256_key.expose(), b.app_k256_key.expose());
    let app_k256 = kms::dstack_keys::app_k256_public(a.app_k256_key.expose()).unwrap();
    let msg = kms::dstack_keys::kms_issued_message(app_id(COMPOSE).as_bytes(), &app_k256);
    let signer =
        kms::dstack_keys::recover(&msg, &hex::decode(&a.app_k256_signature).unwrap()).unwrap();
    assert_eq!(
        hex::encode(kms::dstack_keys::public_sec1(&signer)),
        info.k256_root_public_key
    );
    assert_eq!(info.policy.apps.len(), 2);
    assert!(
        first.audit().contains("\"action\":\"onboard\""),
        "{}",
        first.audit()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_is_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let kms = start_kms(dir.path());

    // No client certificate.
    let reason = refused(
        client(&kms, None)
            .app_keys(&AppKeysRequest::default())
            .await,
        401,
    );
    assert!(reason.contains("no client certificate"), "{reason}");

    // A plain (non-RA-TLS) certificate.
    let plain = rcgen::generate_simple_self_signed(vec!["plain.test".into()]).unwrap();
    let plain_id = Some((
        vec![plain.cert.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(plain.signing_key.serialize_der().into()),
    ));
    let reason = refused(
        client(&kms, plain_id)
            .app_keys(&AppKeysRequest::default())
            .await,
        403,
    );
    assert!(
        reason.contains("parse") && reason.contains("extension"),
        "{reason}"
    );

    // A tampered quote.
    let tampered = tampered_ratls_cert(&identity(COMPOSE, 3));
    let reason = refused(
        client(&kms, instance(&tampered))
            .app_keys(&AppKeysRequest::default())
            .await,
        403,
    );
    assert!(reason.contains("quote-signature"), "{reason}");

    // A compose hash the app's policy does not list.
    let other = Identity {
        app_id: app_id(COMPOSE),
        compose_hash: ComposeHash::of(b"{\"name\":\"vault\",\"image\":\"evil\"}"),
        instance_id: InstanceId([4; 20]),
    };
    let cert = issue(
        &booted(Arc::new(SimulatedProvider::new()), &other),
        &other,
        &CertProfile::server_and_client(vec!["x.test".into()], Duration::from_secs(600)),
        None,
    )
    .unwrap();
    let reason = refused(
        client(&kms, instance(&cert))
            .app_keys(&AppKeysRequest::default())
            .await,
        403,
    );
    assert!(
        reason.contains("compose hash") && reason.contains("not allowed"),
        "{reason}"
    );

    // A simulated quote for an app whose policy forbids them.
    let strict = ratls_cert(&identity(COMPOSE_NO_SIM, 5));
    let reason = refused(
        client(&kms, instance(&strict))
            .app_keys(&AppKeysRequest::default())
            .await,
        403,
    );
    assert!(reason.contains("does not accept SIMULATED"), "{reason}");

    // An app with no policy at all.
    let unknown = ratls_cert(&identity(b"{\"name\":\"unknown\"}", 6));
    let reason = refused(
        client(&kms, instance(&unknown))
            .app_keys(&AppKeysRequest::default())
            .await,
        403,
    );
    assert!(reason.contains("has no policy"), "{reason}");

    // A bad key path.
    let good = ratls_cert(&identity(COMPOSE, 7));
    let reason = refused(
        client(&kms, instance(&good))
            .app_keys(&AppKeysRequest {
                paths: vec!["../x".into()],
            })
            .await,
        400,
    );
    assert!(reason.contains("key path"), "{reason}");

    // The allowed instance gets its keys; the audit log has every decision and no keys.
    let keys = keys_for(&kms, COMPOSE, 8).await;
    let audit = kms.audit();
    let lines: Vec<serde_json::Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines.iter().filter(|l| l["decision"] == "deny").count(),
        6,
        "{audit}"
    );
    assert_eq!(
        lines.iter().filter(|l| l["decision"] == "release").count(),
        1,
        "{audit}"
    );
    assert!(lines
        .iter()
        .all(|l| l["time"].is_string() && l["action"] == "app-keys"));
    assert!(audit.contains("does not accept SIMULATED"));
    for secret in [
        hex::encode(keys.disk_key.expose()),
        hex::encode(keys.env_private_key.expose()),
    ] {
        assert!(!audit.contains(&secret), "audit log leaks a key");
        assert!(!kms.proc.log().contains(&secret), "stderr leaks a key");
    }
}

/// A webhook on loopback: `/yes` allows, `/no` denies, `/slow` never answers in time.
/// Records the bodies it receives.
async fn start_webhook() -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let sink = sink.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // Read headers and a Content-Length body (bounded).
                let (head_end, len) = loop {
                    let Ok(n) = s.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 || buf.len() > 1 << 20 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..i]).to_lowercase();
                        let len = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        break (i + 4, len);
                    }
                };
                while buf.len() < head_end + len {
                    let Ok(n) = s.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let text = String::from_utf8_lossy(&buf).to_string();
                sink.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&buf[head_end..]).to_string());
                let body = if text.starts_with("POST /yes") {
                    r#"{"allow":true,"reason":"ok"}"#
                } else if text.starts_with("POST /no") {
                    r#"{"allow":false,"reason":"not on the change calendar"}"#
                } else {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    r#"{"allow":true,"reason":"too late"}"#
                };
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    (port, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_must_approve_in_time() {
    let (hook, seen) = start_webhook().await;
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let webhook = |path: &str| {
        format!("\n[webhook]\nurl = \"http://127.0.0.1:{hook}/{path}\"\ntimeout_ms = 300\n")
    };
    let yes = start_kms_with(dirs[0].path(), ANY_KMS, &webhook("yes"), &[]);
    let no = start_kms_with(dirs[1].path(), ANY_KMS, &webhook("no"), &[]);
    let slow = start_kms_with(dirs[2].path(), ANY_KMS, &webhook("slow"), &[]);
    let cert = ratls_cert(&identity(COMPOSE, 9));

    let keys = client(&yes, instance(&cert))
        .app_keys(&AppKeysRequest::default())
        .await
        .unwrap();
    let bodies = seen.lock().unwrap().clone();
    let boot: kms::api::BootInfo = serde_json::from_str(&bodies[0]).unwrap();
    assert_eq!(boot, keys.boot_info);
    assert_eq!(boot.instance_id, InstanceId([9; 20]).to_hex());

    let reason = refused(
        client(&no, instance(&cert))
            .app_keys(&AppKeysRequest::default())
            .await,
        403,
    );
    assert!(
        reason.contains("webhook denied") && reason.contains("change calendar"),
        "{reason}"
    );

    let t = Instant::now();
    let reason = refused(
        client(&slow, instance(&cert))
            .app_keys(&AppKeysRequest::default())
            .await,
        403,
    );
    assert!(reason.contains("did not answer within 300 ms"), "{reason}");
    assert!(t.elapsed() < Duration::from_secs(4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onboarding_is_refused_to_unlisted_replicas() {
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let strict = format!(
        "mrtd = [\"{}\"]\nrtmr0 = \"any\"\nrtmr1 = \"any\"\nrtmr2 = \"any\"",
        "ab".repeat(48)
    );
    let first = start_kms_with(d1.path(), &strict, "", &[]);
    let config = kms_config(d2.path(), free_port(), ANY_KMS, "");
    let (ok, err) = run_to_exit(
        &[
            "kms",
            "--config",
            config.to_str().unwrap(),
            "--onboard-from",
            &first.url(),
        ],
        START,
    );
    assert!(!ok, "replica started:\n{err}");
    assert!(
        err.contains("MRTD") && err.contains("policy.kms_measurements"),
        "{err}"
    );
    assert!(!d2.path().join("data").join("root.json").exists());
    assert!(first.audit().contains("\"decision\":\"deny\""));

    // An app instance (not a KMS) is refused too, even where measurements are allowed.
    let open = start_kms(d2.path());
    let app = ratls_cert(&identity(COMPOSE, 1));
    let reason = refused(client(&open, instance(&app)).onboard().await, 403);
    assert!(reason.contains("KMS compose hash"), "{reason}");
    let reason = refused(client(&open, None).onboard().await, 401);
    assert!(reason.contains("no client certificate"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_dir_survives_restart_and_must_be_private() {
    let dir = tempfile::tempdir().unwrap();
    let mut kms = start_kms(dir.path());
    let before = keys_for(&kms, COMPOSE, 1).await;
    let status = kms
        .proc
        .stop(Duration::from_secs(10))
        .expect("stopped on SIGTERM");
    assert!(status.success(), "{status:?}");

    let config = kms.config.clone();
    let port = kms.port;
    let proc = spawn_teegate(
        &["kms", "--config", config.to_str().unwrap()],
        "ready",
        START,
    );
    assert!(proc.log().contains("root       loaded"), "{}", proc.log());
    let mut again = Kms {
        proc,
        port,
        dir: dir.path().to_path_buf(),
        config: config.clone(),
    };
    let after = keys_for(&again, COMPOSE, 2).await;
    same_keys(&before, &after);
    again.proc.stop(Duration::from_secs(10));

    let root = dir.path().join("data").join("root.json");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (ok, err) = run_to_exit(&["kms", "--config", config.to_str().unwrap()], START);
    assert!(!ok);
    assert!(err.contains("readable by group or others"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_encrypt_output_opens_only_with_the_released_env_key() {
    let dir = tempfile::tempdir().unwrap();
    let kms = start_kms(dir.path());
    let app = app_id(COMPOSE).to_hex();
    let root = kms.root_pem_path();
    let plaintext = b"DATABASE_PASSWORD=hunter2\nAPI_TOKEN=abc\n";

    let encrypt = |root: &Path| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_teegate"))
            .args([
                "env",
                "encrypt",
                "--kms",
                &kms.url(),
                "--app-id",
                &app,
                "--allow-simulated-kms",
            ])
            .arg("--kms-root")
            .arg(root)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(plaintext).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "env encrypt hung");
            std::thread::sleep(Duration::from_millis(20));
        }
        child.wait_with_output().unwrap()
    };
    let out = encrypt(&root);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let envelope = kms::envelope::parse_env(&out.stdout).unwrap();
    assert_eq!(envelope.format, "teegate-env-v1");

    let keys = keys_for(&kms, COMPOSE, 1).await;
    let env_key = keys.env_private_key.to_array32().unwrap();
    let id = app_id(COMPOSE);
    assert_eq!(
        kms::envelope::open_env(id.as_bytes(), &env_key, &envelope).unwrap(),
        plaintext
    );
    // Any other key fails: the disk key, another app's env key, a random key.
    let disk = keys.disk_key.to_array32().unwrap();
    assert!(kms::envelope::open_env(id.as_bytes(), &disk, &envelope).is_err());
    assert!(kms::envelope::open_env(id.as_bytes(), &[7; 32], &envelope).is_err());

    // `teegate env decrypt` with the released key.
    let key_file = dir.path().join("env.key");
    std::fs::write(&key_file, hex::encode(env_key)).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_teegate"))
        .args(["env", "decrypt", "--app-id", &app, "--key-file"])
        .arg(&key_file)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&out.stdout).unwrap();
    let dec = child.wait_with_output().unwrap();
    assert!(
        dec.status.success(),
        "{}",
        String::from_utf8_lossy(&dec.stderr)
    );
    assert_eq!(dec.stdout, plaintext);

    // A KMS that does not chain to the pinned root is refused before anything is fetched.
    let other = ratls::cert::CertAuthority::generate("not the KMS root", Some(1)).unwrap();
    let wrong_root = dir.path().join("wrong-root.pem");
    std::fs::write(
        &wrong_root,
        ratls::cert::pem_encode("CERTIFICATE", other.cert_der()),
    )
    .unwrap();
    let out = encrypt(&wrong_root);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
}
