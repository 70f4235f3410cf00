//! teegate's processes as separate hosts of a [`Lab`]: etcd members, gateway replicas,
//! `teegate dns` and CVMs (a real `teegate sidecar` with simulated TDX and
//! `runtime = "none"`, forwarding to busybox httpd in the same host).
//!
//! ```text
//!  test (clients, DNS queries, admin API) ──front── replicas r1..rN (.21..) ──cvm net(s)── CVMs (.41..)
//!                                         └─front── dns (.30)      │ back
//!                                                     └──back──── etcd e1..eN (.11..)
//! ```
//!
//! Every host has the same host number on each network it joins, so configurations are
//! written before the hosts start.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use super::lab::{Host, HostSpec, Lab, Net};
use super::BASE;

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
pub const ETCD_PREFIX: &str = "/teegate";
const HTTPS: u16 = 443;
const REGISTRATION: u16 = 8443;
const ADMIN: u16 = 9443;
const FRONT: u16 = 8443;

/// The test CA and its `*.<BASE>` certificate, which every replica serves (`/cfg/wildcard.*`)
/// and every client and sidecar trusts (`/cfg/ca.pem`).
pub fn certificates(lab: &Lab) -> super::etcd::TestCa {
    let ca = super::etcd::test_ca(&lab.dir);
    lab.file("ca.pem", &ca.ca_pem);
    ca
}

/// Starts an `n`-member etcd cluster on `back` (hosts 11, 12, …) and waits until every
/// member serves.
pub async fn etcd_cluster(lab: &Lab, back: &Net, n: u8) -> Vec<Host> {
    let peers: Vec<String> = (1..=n)
        .map(|i| format!("e{i}=http://{}:2380", back.ip(10 + i)))
        .collect();
    let mut members = Vec::new();
    for i in 1..=n {
        let ip = back.ip(10 + i);
        let script = format!(
            "exec /usr/bin/etcd --name e{i} --data-dir /data/etcd \
             --listen-client-urls http://0.0.0.0:2379 --advertise-client-urls http://{ip}:2379 \
             --listen-peer-urls http://0.0.0.0:2380 --initial-advertise-peer-urls http://{ip}:2380 \
             --initial-cluster {} --initial-cluster-state new --initial-cluster-token {} \
             --heartbeat-interval 100 --election-timeout 1000",
            peers.join(","),
            lab.run
        );
        members.push(
            lab.host(HostSpec {
                name: &format!("e{i}"),
                n: 10 + i,
                nets: &[back],
                script,
                extra_hosts: vec![],
            })
            .await,
        );
    }
    for m in &members {
        m.wait_for_line("ready to serve client requests", Duration::from_secs(30))
            .await;
    }
    members
}

/// The `endpoints` TOML array for `members`.
pub fn etcd_endpoints(members: &[Host], back: &Net) -> String {
    let list: Vec<String> = members
        .iter()
        .map(|m| format!("\"http://{}:2379\"", m.ip(back)))
        .collect();
    format!("[{}]", list.join(", "))
}

/// `etcdctl <args>` from the test machine against `members` (reachable over the bridge):
/// whether it succeeded, and its output.
pub async fn etcdctl(members: &[&Host], back: &Net, args: &[&str]) -> (bool, String) {
    let endpoints: Vec<String> = members
        .iter()
        .map(|m| format!("http://{}:2379", m.ip(back)))
        .collect();
    let out = tokio::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", endpoints.join(",")))
        .args(["--dial-timeout=1s", "--command-timeout=2s"])
        .args(args)
        .output()
        .await
        .expect("etcdctl is installed (scripts/test installs etcd-client)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A gateway replica host.
pub struct Replica {
    pub host: Host,
    /// Its address on the client side (what DNS offers).
    pub ip: Ipv4Addr,
    pub https: SocketAddr,
    pub admin: SocketAddr,
    pub registration: SocketAddr,
}

/// Starts replica `i` (host 20 + i) on `front`, `back` and each CVM network, with the
/// shared test certificate, `endpoints` as its etcd, its replica lease, and `extra` TOML
/// (tables only) added; waits until it is ready.
pub async fn replica(
    lab: &Lab,
    i: u8,
    nets: (&Net, &Net, &[&Net]),
    endpoints: &str,
    replica_lease_secs: u64,
    extra: &str,
) -> Replica {
    let (front, back, cvms) = nets;
    let n = 20 + i;
    let ip = front.ip(n);
    let cfg = lab.file(
        &format!("r{i}.toml"),
        &format!(
            r#"base_domain = "{BASE}"
listen_https = "0.0.0.0:{HTTPS}"
listen_http = "0.0.0.0:80"
listen_registration = "0.0.0.0:{REGISTRATION}"
listen_admin = "0.0.0.0:{ADMIN}"
data_dir = "/data/gateway"
grace_period_secs = 1
workers = 1
admin_token = "{ADMIN_TOKEN}"
advertise_addrs = ["{ip}"]
replica_lease_secs = {replica_lease_secs}

[tls]
mode = "files"
cert_file = "/cfg/wildcard.pem"
key_file = "/cfg/wildcard.key"

[registration]
lease_secs = 30

[verifier]
allow_simulated = true
mrtd = "any"
rtmr0 = "any"
rtmr1 = "any"
rtmr2 = "any"
compose_hashes = "any"
app_ids = "any"

[store.etcd]
endpoints = {endpoints}
prefix = "{ETCD_PREFIX}"
{extra}
"#
        ),
    );
    let mut nets = vec![front, back];
    nets.extend_from_slice(cvms);
    let host = lab
        .host(HostSpec {
            name: &format!("r{i}"),
            n,
            nets: &nets,
            script: format!("exec /teegate gateway --config {cfg}"),
            extra_hosts: vec![],
        })
        .await;
    host.wait_ready(Duration::from_secs(60)).await;
    Replica {
        ip,
        https: SocketAddr::from((ip, HTTPS)),
        admin: SocketAddr::from((ip, ADMIN)),
        registration: SocketAddr::from((ip, REGISTRATION)),
        host,
    }
}

/// `teegate dns` (host 30) answering from the replica list in etcd.
pub struct Dns {
    pub host: Host,
    pub udp: SocketAddr,
}

pub async fn dns(lab: &Lab, front: &Net, back: &Net, endpoints: &str) -> Dns {
    let token = super::dns_api_token_file(&lab.dir);
    let token = token.file_name().unwrap().to_string_lossy().to_string();
    let cfg = lab.file(
        "dns.toml",
        &format!(
            "base_domain = \"{BASE}\"\nlisten_udp = \"0.0.0.0:53\"\nlisten_tcp = \"0.0.0.0:53\"\n\
             gateway_addrs = [\"192.0.2.53\"]\nttl_secs = 1\n\
             [api]\nlisten = \"127.0.0.1:8053\"\ntoken_file = \"/cfg/{token}\"\n\
             [store.etcd]\nendpoints = {endpoints}\nprefix = \"{ETCD_PREFIX}\"\n"
        ),
    );
    let host = lab
        .host(HostSpec {
            name: "dns",
            n: 30,
            nets: &[front, back],
            script: format!("exec /teegate dns --config {cfg}"),
            extra_hosts: vec![],
        })
        .await;
    host.wait_ready(Duration::from_secs(30)).await;
    Dns {
        udp: SocketAddr::from((host.ip(front), 53)),
        host,
    }
}

/// A simulated CVM: the sidecar's RA-TLS front forwards port 80 to busybox httpd, whose
/// page says `instance=<name>`.
pub struct Cvm {
    pub host: Host,
    pub app_id: ratls::AppId,
    pub front: SocketAddr,
}

/// The `app-compose.json` of app `app` (no KMS; its app id is its compose hash's).
pub fn compose(app: &str) -> String {
    format!(
        r#"{{"name":"{app}","docker_compose":"services:\n  web:\n    image: busybox\n    ports: [\"80\"]\n","key_provider":"none","exposed_ports":[80],"gateway_urls":[]}}"#
    )
}

/// Starts CVM `name` (host `n`) of app `app` on `net`, registering with `gateways` (by
/// their address on `net`) every 2 s; waits until its sidecar is ready.
pub async fn cvm(lab: &Lab, name: &str, n: u8, net: &Net, app: &str, gateways: &[&Replica]) -> Cvm {
    let compose_text = compose(app);
    let compose_file = lab.file(&format!("{app}.json"), &compose_text);
    let app_id = ratls::ComposeHash::of(compose_text.as_bytes()).default_app_id();
    let front = SocketAddr::from((net.ip(n), FRONT));
    let urls: Vec<String> = gateways
        .iter()
        .map(|g| format!("\"https://gw{}.{BASE}:{REGISTRATION}\"", g.host.n))
        .collect();
    let extra_hosts = gateways
        .iter()
        .map(|g| format!("gw{}.{BASE}:{}", g.host.n, g.host.ip(net)))
        .collect();
    let cfg = lab.file(
        &format!("{name}.toml"),
        &format!(
            "compose_file = \"{compose_file}\"\nkms_url = \"https://127.0.0.1:1\"\n\
             gateways = [{}]\ngateway_ca = \"/cfg/ca.pem\"\n\
             listen_front = \"0.0.0.0:{FRONT}\"\nadvertise_addr = \"{front}\"\n\
             socket_path = \"/run/teegate.sock\"\ndstack_socket_path = \"/run/dstack.sock\"\n\
             data_dir = \"/data/sidecar\"\nheartbeat_secs = 2\nquote_provider = \"simulated\"\n\
             runtime = \"none\"\n[upstreams]\n80 = \"127.0.0.1:8080\"\n\
             [verifier]\nallow_simulated = true\nmrtd = \"any\"\nrtmr0 = \"any\"\nrtmr1 = \"any\"\n\
             rtmr2 = \"any\"\ncompose_hashes = \"any\"\napp_ids = \"any\"\n",
            urls.join(", ")
        ),
    );
    let host = lab
        .host(HostSpec {
            name,
            n,
            nets: &[net],
            script: format!(
                "echo instance={name} > /www/index.html && httpd -p 127.0.0.1:8080 -h /www && \
                 exec /teegate sidecar --config {cfg}"
            ),
            extra_hosts,
        })
        .await;
    host.wait_ready(Duration::from_secs(30)).await;
    Cvm {
        host,
        app_id,
        front,
    }
}

/// The lab's networks and etcd of one test.
pub struct Site {
    pub lab: Lab,
    pub front: Net,
    pub back: Net,
    pub cvm: Vec<Net>,
    pub etcd: Vec<Host>,
    pub endpoints: String,
    pub ca_pem: String,
}

pub async fn site(dir: &std::path::Path, etcd_members: u8, cvm_nets: usize) -> Site {
    let lab = Lab::new(dir).await;
    let ca = certificates(&lab);
    let front = lab.net("front").await;
    let back = lab.net("back").await;
    let mut cvm = Vec::new();
    for i in 1..=cvm_nets {
        cvm.push(lab.net(&format!("cvm{i}")).await);
    }
    let etcd = etcd_cluster(&lab, &back, etcd_members).await;
    let endpoints = etcd_endpoints(&etcd, &back);
    Site {
        lab,
        front,
        back,
        cvm,
        etcd,
        endpoints,
        ca_pem: ca.ca_pem,
    }
}

impl Site {
    /// Replicas `1..=n` on the front, back and every CVM network, started together, each
    /// listed for DNS under a lease of `lease_secs`.
    pub async fn replicas(&self, n: u8, lease_secs: u64, extra: &str) -> Vec<Replica> {
        let cvms: Vec<&Net> = self.cvm.iter().collect();
        futures_util::future::join_all((1..=n).map(|i| {
            replica(
                &self.lab,
                i,
                (&self.front, &self.back, &cvms),
                &self.endpoints,
                lease_secs,
                extra,
            )
        }))
        .await
    }
}

/// The member that leads the cluster now, by its index in `members`.
pub async fn leader(members: &[&Host], back: &Net) -> Option<usize> {
    let (ok, out) = etcdctl(members, back, &["endpoint", "status", "-w", "json"]).await;
    if !ok {
        return None;
    }
    let json = out.lines().find(|l| l.trim_start().starts_with('['))?;
    let list: Vec<serde_json::Value> = serde_json::from_str(json).ok()?;
    list.iter().find_map(|e| {
        let status = &e["Status"];
        let me = status["header"]["member_id"].as_u64()?;
        (me == status["leader"].as_u64()?).then(|| {
            let endpoint = e["Endpoint"].as_str().unwrap_or_default();
            members
                .iter()
                .position(|m| endpoint.contains(&format!("//{}:", m.ip(back))))
        })?
    })
}
