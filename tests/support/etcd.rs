//! etcd and gateway replicas for the replica tests: real `etcd` processes (Debian
//! `etcd-server`) on loopback, one node or a cluster, each killed when dropped; gateway
//! replicas that share a store, each on its own loopback address (127.0.0.N) with the same
//! HTTPS port, so DNS can spread clients over them as it would over hosts; a test CA they
//! all serve a certificate from; and DNS lookups for the load clients.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{spawn_teegate, Gateway, GatewayPorts, Proc, BASE};

/// Lines of a child's stderr, collected by a thread.
fn collect(child: &mut std::process::Child) -> Arc<Mutex<Vec<String>>> {
    let stderr = child.stderr.take().expect("stderr");
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    lines
}

/// Waits (bounded) until `proc`'s collected output has a line containing `needle`.
pub fn wait_for_line(proc: &Proc, needle: &str, within: Duration) {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if proc
            .stderr
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains(needle))
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("no line {needle:?} within {within:?}:\n{}", proc.log());
}

/// One etcd member.
pub struct EtcdNode {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    pub data_dir: PathBuf,
    initial_cluster: String,
    pub proc: Option<Proc>,
}

impl EtcdNode {
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    fn spawn(&mut self) {
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut child = Command::new("etcd")
            .args([
                "--name",
                &self.name,
                "--data-dir",
                self.data_dir.to_str().unwrap(),
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
                "--initial-cluster",
                &self.initial_cluster,
                "--initial-cluster-state",
                "new",
                "--initial-cluster-token",
                "teegate-test",
                // Quick elections, so a test is not spent waiting for a leader.
                "--heartbeat-interval",
                "50",
                "--election-timeout",
                "500",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("etcd is installed (scripts/test installs etcd-server)");
        let lines = collect(&mut child);
        self.proc = Some(Proc {
            child: Some(child),
            stderr: lines,
        });
    }

    fn wait_ready(&self, within: Duration) {
        let proc = self.proc.as_ref().expect("running");
        wait_for_line(proc, "ready to serve client requests", within);
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        self.proc.take();
    }

    pub fn log(&self) -> String {
        self.proc.as_ref().map(|p| p.log()).unwrap_or_default()
    }
}

/// An etcd cluster on loopback; its members die with it.
pub struct Etcd {
    pub nodes: Vec<EtcdNode>,
}

/// Starts an `n`-member cluster (data under `dir`) and waits until every member serves.
pub fn start_etcd(dir: &Path, n: usize) -> Etcd {
    // Members keep their ports across a restart: outside the ephemeral range, no client
    // connection can take one while its member is down.
    let ports: Vec<(u16, u16)> = (0..n).map(|_| (quiet_port(), quiet_port())).collect();
    let initial_cluster = ports
        .iter()
        .enumerate()
        .map(|(i, (_, peer))| format!("e{i}=http://127.0.0.1:{peer}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut nodes: Vec<EtcdNode> = ports
        .iter()
        .enumerate()
        .map(|(i, (client, peer))| EtcdNode {
            name: format!("e{i}"),
            client_port: *client,
            peer_port: *peer,
            data_dir: dir.join(format!("etcd-{i}")),
            initial_cluster: initial_cluster.clone(),
            proc: None,
        })
        .collect();
    // Members of a new cluster wait for each other: start them all, then wait.
    for node in &mut nodes {
        node.spawn();
    }
    for node in &nodes {
        node.wait_ready(Duration::from_secs(20));
    }
    Etcd { nodes }
}

impl Etcd {
    /// The `endpoints` TOML array for a `[store.etcd]` table.
    pub fn endpoints_toml(&self) -> String {
        let list: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("\"{}\"", n.endpoint()))
            .collect();
        format!("[{}]", list.join(", "))
    }

    /// Runs `etcdctl <args>` against the cluster; its standard output.
    pub fn etcdctl(&self, args: &[&str]) -> String {
        let endpoints: Vec<String> = self.nodes.iter().map(|n| n.endpoint()).collect();
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", endpoints.join(",")))
            .arg("--command-timeout=5s")
            .args(args)
            .output()
            .expect("etcdctl is installed (scripts/test installs etcd-client)");
        assert!(
            out.status.success(),
            "etcdctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Takes the store lock `key` as a stand-in holder would: under a 2 s lease that an
    /// `etcdctl lease keep-alive` process renews. Killing that process (dropping the
    /// returned `Proc`) is the holder dying.
    pub fn hold_lock(&self, key: &str) -> Proc {
        let granted = self.etcdctl(&["lease", "grant", "2"]);
        let lease = granted
            .split_whitespace()
            .nth(1)
            .unwrap_or_else(|| panic!("lease id in {granted:?}"))
            .to_string();
        self.etcdctl(&["put", &format!("--lease={lease}"), key, "stand-in holder"]);
        let endpoints: Vec<String> = self.nodes.iter().map(|n| n.endpoint()).collect();
        let mut child = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", endpoints.join(",")))
            .args(["lease", "keep-alive", &lease])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("etcdctl");
        let lines = collect(&mut child);
        Proc {
            child: Some(child),
            stderr: lines,
        }
    }

    /// Restarts the killed members `which` on their data and waits until the cluster serves.
    pub fn restart(&mut self, which: &[usize]) {
        for &i in which {
            self.nodes[i].spawn();
        }
        for &i in which {
            self.nodes[i].wait_ready(Duration::from_secs(20));
        }
    }
}

// ---------------------------------------------------------------- a CA all replicas share

/// A CA and a `*.<BASE>` certificate from it (files), served by every replica with
/// `tls.mode = "files"`, so one client trust store fits all of them.
pub struct TestCa {
    pub ca_pem: String,
    pub chain_file: PathBuf,
    pub key_file: PathBuf,
}

pub fn test_ca(dir: &Path) -> TestCa {
    let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "replica test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let leaf = rcgen::CertificateParams::new(vec![format!("*.{BASE}"), BASE.to_string()])
        .unwrap()
        .signed_by(&key, &rcgen::Issuer::from_params(&ca_params, &ca_key))
        .unwrap();
    std::fs::create_dir_all(dir).unwrap();
    let chain_file = dir.join("wildcard.pem");
    let key_file = dir.join("wildcard.key");
    std::fs::write(&chain_file, format!("{}{}", leaf.pem(), ca.pem())).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    TestCa {
        ca_pem: ca.pem(),
        chain_file,
        key_file,
    }
}

// ---------------------------------------------------------------- replicas

/// A `teegate gateway` replica: HTTPS on its own loopback address, the other listeners on
/// 127.0.0.1 (distinct ports).
pub struct Replica {
    pub gw: Gateway,
    pub ip: Ipv4Addr,
    pub https: SocketAddr,
}

/// Everything replicas of one test share.
pub struct ReplicaSet {
    pub https_port: u16,
    pub etcd_endpoints: String,
    /// TOML placed in every replica's config (a `[tls]` table replaces the test CA's).
    pub extra: String,
    pub ca: Option<TestCa>,
    /// The sealing key file every (unattested) replica of the set reads.
    pub seal_key_file: PathBuf,
}

impl ReplicaSet {
    pub fn new(dir: &Path, etcd: &Etcd, extra: &str) -> Self {
        let ca = (!extra.contains("[tls]")).then(|| test_ca(&dir.join("ca")));
        ReplicaSet {
            https_port: quiet_port(),
            etcd_endpoints: etcd.endpoints_toml(),
            extra: extra.to_string(),
            ca,
            seal_key_file: dir.join("replicas-seal.key"),
        }
    }

    pub fn ca_pem(&self) -> &str {
        &self.ca.as_ref().expect("test CA").ca_pem
    }

    /// Writes replica `n`'s config (`n` from 1: address 127.0.0.n) and returns it.
    pub fn config(&self, dir: &Path, n: u8, ports: &GatewayPorts) -> PathBuf {
        self.config_with(dir, n, ports, &self.etcd_endpoints)
    }

    /// As `config`, with its own etcd `endpoints` (a TOML array).
    pub fn config_with(&self, dir: &Path, n: u8, ports: &GatewayPorts, endpoints: &str) -> PathBuf {
        let ip = Ipv4Addr::new(127, 0, 0, n);
        let tls = match &self.ca {
            Some(ca) => format!(
                "[tls]\nmode = \"files\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
                ca.chain_file.display(),
                ca.key_file.display()
            ),
            None => String::new(),
        };
        // Top-level keys must come before the first table.
        let split = self
            .extra
            .match_indices('\n')
            .map(|(i, _)| i + 1)
            .chain([0])
            .filter(|&i| self.extra[i..].starts_with('['))
            .min()
            .unwrap_or(self.extra.len());
        let (top, tables) = self.extra.split_at(split);
        // Unattested replicas of one store share one sealing key file, as operators must.
        let seal = if self.extra.contains("[attestation]") || self.extra.contains("seal_key_file") {
            String::new()
        } else {
            format!("seal_key_file = \"{}\"\n", self.seal_key_file.display())
        };
        let extra = format!(
            "advertise_addrs = [\"{ip}\"]\n{seal}{top}\n{tls}{tables}\n[store.etcd]\nendpoints = {endpoints}\nprefix = \"/teegate-test\"\n"
        );
        let path = super::gateway_config(dir, ports, &extra);
        let text = std::fs::read_to_string(&path).unwrap().replace(
            &format!("listen_https = \"127.0.0.1:{}\"", ports.https),
            &format!("listen_https = \"{ip}:{}\"", self.https_port),
        );
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Starts replica `n` and waits until it serves HTTPS.
    pub fn start(&self, dir: &Path, n: u8) -> Replica {
        self.start_with(dir, n, &self.etcd_endpoints)
    }

    /// As `start`, talking only to the etcd `endpoints` given (a TOML array).
    pub fn start_with(&self, dir: &Path, n: u8, endpoints: &str) -> Replica {
        let ports = GatewayPorts::new();
        let cfg = self.config_with(dir, n, &ports, endpoints);
        let proc = spawn_teegate(
            &["gateway", "--config", cfg.to_str().unwrap()],
            "ready",
            Duration::from_secs(30),
        );
        let ip = Ipv4Addr::new(127, 0, 0, n);
        let https = SocketAddr::from((ip, self.https_port));
        assert!(
            addr_opens(https, Duration::from_secs(10)),
            "replica {n}: {https} did not open; its log:\n{}",
            proc.log()
        );
        Replica {
            gw: Gateway {
                proc,
                ports,
                dir: dir.to_path_buf(),
            },
            ip,
            https,
        }
    }

    /// Starts replicas `1..=n` at the same time, each in `dir/r<N>`.
    pub fn start_all(&self, dir: &Path, n: u8) -> Vec<Replica> {
        std::thread::scope(|s| {
            let handles: Vec<_> = (1..=n)
                .map(|i| {
                    let d = dir.join(format!("r{i}"));
                    s.spawn(move || self.start(&d, i))
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }
}

/// A port free on 127.0.0.1 to 127.0.0.3 (the replicas' shared HTTPS port, etcd's ports).
/// It lies below Linux's ephemeral range (32768 and up), so the many client connections of
/// a load test cannot take it between this check and the bind, or while its etcd member is
/// down.
pub fn quiet_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    for _ in 0..200 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        let port = 20_000 + (h.finish() % 12_000) as u16;
        let free = (1..=3)
            .all(|n| std::net::TcpListener::bind((Ipv4Addr::new(127, 0, 0, n), port)).is_ok());
        if free {
            return port;
        }
    }
    panic!("no free port in 20000-31999 on 127.0.0.1-3");
}

/// Whether `addr` accepts connections within `within`.
pub fn addr_opens(addr: SocketAddr, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(addr).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// HTTPS clients trusting `ca_pem`, one per replica address, each sending `hosts` there.
pub fn replica_clients(
    ca_pem: &str,
    hosts: &[String],
    addrs: &[SocketAddr],
) -> HashMap<IpAddr, reqwest::Client> {
    addrs
        .iter()
        .map(|addr| {
            let tls = rustls::ClientConfig::builder_with_provider(super::provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(super::dev_roots(ca_pem))
                .with_no_client_auth();
            let mut b = reqwest::Client::builder()
                .use_preconfigured_tls(tls)
                .timeout(Duration::from_secs(5))
                .no_proxy();
            for h in hosts {
                b = b.resolve(h, *addr);
            }
            (addr.ip(), b.build().unwrap())
        })
        .collect()
}

/// `GET https://<host>/`: the status and body, or the error as text.
pub async fn get(client: &reqwest::Client, host: &str) -> Result<(u16, String), String> {
    let resp = client
        .get(format!("https://{host}/"))
        .send()
        .await
        .map_err(|e| format!("{e:?}"))?;
    let status = resp.status().as_u16();
    let body = resp.text().await.map_err(|e| format!("{e:?}"))?;
    Ok((status, body))
}

/// The A records DNS at `server` answers for `name` (empty on any failure).
pub async fn dns_a(server: SocketAddr, name: &str) -> Vec<IpAddr> {
    use hickory_proto::op::{Message, Query};
    use hickory_proto::rr::{Name, RecordType};
    let mut q = Message::query();
    q.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    q.metadata.id = rand_id();
    let local = if server.ip().is_loopback() {
        "127.0.0.1:0"
    } else {
        "0.0.0.0:0"
    };
    let Ok(sock) = tokio::net::UdpSocket::bind(local).await else {
        return vec![];
    };
    if sock.send_to(&q.to_vec().unwrap(), server).await.is_err() {
        return vec![];
    }
    let mut buf = vec![0u8; 4096];
    let Ok(Ok((n, _))) =
        tokio::time::timeout(Duration::from_secs(1), sock.recv_from(&mut buf)).await
    else {
        return vec![];
    };
    let Ok(resp) = Message::from_vec(&buf[..n]) else {
        return vec![];
    };
    let mut out: Vec<IpAddr> = resp
        .answers
        .iter()
        .filter_map(|r| r.data.ip_addr())
        .collect();
    out.sort();
    out
}

fn rand_id() -> u16 {
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// A `teegate dns` process for `BASE` that learns the gateway replicas from etcd (falling
/// back to `fallback`), with its record API on loopback for the gateways' DNS-01 records.
pub struct DnsProc {
    pub proc: Proc,
    pub udp: SocketAddr,
    pub api: SocketAddr,
}

pub fn start_dns(dir: &Path, etcd: &Etcd, fallback: &str) -> DnsProc {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("dns.toml");
    std::fs::write(
        &path,
        format!(
            "base_domain = \"{BASE}\"\nlisten_udp = \"127.0.0.1:0\"\nlisten_tcp = \"127.0.0.1:0\"\n\
             gateway_addrs = [\"{fallback}\"]\nttl_secs = 1\n[api]\nlisten = \"127.0.0.1:0\"\n\
             token_file = \"{}\"\n\
             [store.etcd]\nendpoints = {}\nprefix = \"/teegate-test\"\n",
            super::dns_api_token_file(dir).display(),
            etcd.endpoints_toml()
        ),
    )
    .unwrap();
    let proc = spawn_teegate(
        &["dns", "--config", path.to_str().unwrap()],
        "ready",
        Duration::from_secs(20),
    );
    let log = proc.log();
    let addr = |label: &str| -> SocketAddr {
        log.lines()
            .find_map(|l| l.trim().strip_prefix(label))
            .map(|rest| rest.trim().trim_start_matches("http://"))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no {label} line in:\n{log}"))
    };
    DnsProc {
        udp: addr("udp "),
        api: addr("api "),
        proc,
    }
}

/// Polls DNS (bounded) until the answer for `name` satisfies `ok`; returns it and when.
pub async fn wait_for_dns(
    server: SocketAddr,
    name: &str,
    within: Duration,
    ok: impl Fn(&[IpAddr]) -> bool,
) -> (Vec<IpAddr>, Instant) {
    let deadline = Instant::now() + within;
    loop {
        let a = dns_a(server, name).await;
        if ok(&a) {
            return (a, Instant::now());
        }
        assert!(
            Instant::now() < deadline,
            "DNS for {name} still answers {a:?} after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One gauge or counter value from a Prometheus text page (0 when absent).
pub fn metric(page: &str, series: &str) -> f64 {
    page.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}
