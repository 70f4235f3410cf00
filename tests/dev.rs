//! `teegate dev` end to end, as a user runs it: the real binary starts the whole stack,
//! the curl command it prints is run as printed, the apps answer through the gateway, the
//! attestation page lists them, and Ctrl-C (SIGINT) leaves no process, listening socket
//! or container behind.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// What `teegate dev` printed, up to its `ready` line.
struct Started {
    lines: Vec<String>,
    curls: Vec<String>,
    ports: Vec<u16>,
    https: u16,
    /// The DNS server's port, also taken for UDP.
    dns: u16,
    ca: PathBuf,
    app_ids: Vec<String>,
}

/// A running `teegate dev`; SIGKILLed on drop (its children follow it by their
/// parent-death signal), so a failing test leaves nothing running.
struct Dev {
    child: Option<Child>,
    out: mpsc::Receiver<String>,
    seen: Vec<String>,
    dir: PathBuf,
}

impl Drop for Dev {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Dev {
    fn spawn(dir: &Path, args: &[&str]) -> Dev {
        let mut child = Command::new(env!("CARGO_BIN_EXE_teegate"))
            .arg("dev")
            .args(args)
            .args(["--port", "0", "--data-dir"])
            .arg(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn teegate dev");
        let (tx, out) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let tx2 = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx2.send(format!("stderr: {line}"));
            }
        });
        Dev {
            child: Some(child),
            out,
            seen: Vec::new(),
            dir: dir.to_path_buf(),
        }
    }

    fn transcript(&self) -> String {
        self.seen.join("\n")
    }

    /// Reads output until `pred` matches a line (bounded), failing with the transcript.
    fn wait_line(&mut self, within: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.out.recv_timeout(left.min(Duration::from_millis(200))) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    panic!("teegate dev ended early:\n{}", self.transcript())
                }
            }
            assert!(
                Instant::now() < deadline,
                "teegate dev printed no such line within {within:?}:\n{}",
                self.transcript()
            );
        }
    }

    fn wait_started(&mut self) -> Started {
        self.wait_line(Duration::from_secs(60), |l| l.starts_with("ready in"));
        let lines = self.seen.clone();
        let curls: Vec<String> = lines
            .iter()
            .map(|l| l.trim())
            .filter(|l| l.starts_with("curl "))
            .map(String::from)
            .collect();
        let ports_line = lines
            .iter()
            .find(|l| l.trim_start().starts_with("ports "))
            .expect("a ports line");
        let ports: Vec<u16> = ports_line
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|w| w.parse().ok())
            .collect();
        let ca = lines
            .iter()
            .find_map(|l| l.trim().strip_prefix("CA to trust"))
            .map(|p| PathBuf::from(p.trim()))
            .expect("the CA line");
        let app_ids = lines
            .iter()
            .filter(|l| l.starts_with("app "))
            .map(|l| {
                let url = l.split_whitespace().last().unwrap();
                let host = url.trim_start_matches("https://");
                host.split('.').next().unwrap().to_string()
            })
            .collect();
        let dns = ports_line
            .split(", ")
            .find_map(|w| w.strip_prefix("dns "))
            .and_then(|w| w.split_whitespace().next())
            .and_then(|p| p.parse().ok())
            .expect("the DNS port");
        Started {
            https: ports[0],
            dns,
            lines,
            curls,
            ports,
            ca,
            app_ids,
        }
    }

    /// SIGINT, as Ctrl-C sends it; waits (bounded) for a clean exit.
    fn interrupt(&mut self) {
        let mut child = self.child.take().expect("running");
        // SAFETY: kill(2) on our own, not yet reaped, child.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGINT);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("teegate dev did not stop within 20 s after SIGINT");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        while let Ok(line) = self.out.recv_timeout(Duration::from_millis(500)) {
            self.seen.push(line);
        }
        assert!(
            status.success(),
            "teegate dev exited with {status} after SIGINT:\n{}",
            self.transcript()
        );
    }

    /// Processes whose command line mentions this run's data directory.
    fn processes(&self) -> Vec<String> {
        let needle = self.dir.display().to_string();
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let name = entry.file_name();
            if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(&needle) {
                found.push(format!("{}: {cmdline}", name.to_string_lossy()));
            }
        }
        found
    }
}

/// Runs a printed command line exactly as a user pasting it would.
fn sh(command: &str) -> (bool, String) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(command)
        .output()
        .expect("sh");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn attestation_json(s: &Started) -> String {
    attestation_json_at(s, "/")
}

fn attestation_json_at(s: &Started, path: &str) -> String {
    let base = "teegate.localhost";
    let (ok, body) = sh(&format!(
        "curl -sS --resolve {base}:{p}:127.0.0.1 --cacert '{ca}' -H 'Accept: application/json' https://{base}:{p}{path}",
        p = s.https,
        ca = s.ca.display()
    ));
    assert!(ok, "attestation page: {body}");
    body
}

/// Sockets on `port` in /proc/net/tcp{,6}, as (state, owner uid) — `0A` is LISTEN.
fn sockets_on(port: u16) -> Vec<String> {
    let mut found = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let local_port = f
                .get(1)
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if local_port == Some(port) {
                found.push(format!("local {} remote {} state {}", f[1], f[2], f[3]));
            }
        }
    }
    found
}

fn assert_nothing_left(dev: &Dev, s: &Started) {
    let left = dev.processes();
    assert!(left.is_empty(), "processes left behind: {left:#?}");
    for port in &s.ports {
        let listening = |p: u16| sockets_on(p).iter().any(|s| s.ends_with("state 0A"));
        assert!(
            !listening(*port),
            "a socket still listens on port {port}: {:?}",
            sockets_on(*port)
        );
        // A port can also be busy for a moment for reasons outside this test (another
        // process's outgoing connection picked it as its ephemeral port): retry briefly.
        let deadline = Instant::now() + Duration::from_secs(3);
        while let Err(e) = std::net::TcpListener::bind(("127.0.0.1", *port)) {
            assert!(
                Instant::now() < deadline,
                "TCP port {port} cannot be bound after stop ({e}); sockets on it: {:?}",
                sockets_on(*port)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    std::net::UdpSocket::bind(("127.0.0.1", s.dns))
        .unwrap_or_else(|e| panic!("UDP port {} is still taken after stop: {e}", s.dns));
}

/// Checks what every run prints: SIMULATED TDX everywhere, one curl per app.
fn assert_output(s: &Started, apps: usize) {
    assert!(
        s.lines[0].contains("SIMULATED TDX"),
        "banner: {}",
        s.lines[0]
    );
    let app_lines: Vec<&String> = s.lines.iter().filter(|l| l.starts_with("app ")).collect();
    assert_eq!(app_lines.len(), apps, "{:#?}", s.lines);
    for l in app_lines {
        assert!(l.contains("SIMULATED TDX"), "{l}");
    }
    assert_eq!(s.curls.len(), apps, "{:#?}", s.lines);
    assert!(s.lines.iter().any(|l| l.contains("attestation")));
    assert!(s.ca.is_file(), "the CA to trust exists: {}", s.ca.display());
}

#[test]
fn dev_without_docker_serves_two_apps_and_stops_cleanly_on_sigint() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dev");
    let mut dev = Dev::spawn(&dir, &["--no-docker", "--apps", "2"]);
    let s = dev.wait_started();
    assert_output(&s, 2);
    assert!(
        s.lines
            .iter()
            .any(|l| l.contains("built-in demo HTTP service") && l.contains("--no-docker")),
        "says which mode and why:\n{}",
        dev.transcript()
    );

    for (i, curl) in s.curls.iter().enumerate() {
        let (ok, body) = sh(curl);
        assert!(ok, "`{curl}` failed: {body}");
        assert!(
            body.contains(&format!("teegate demo app {} (SIMULATED TDX)", i + 1)),
            "{body}"
        );
        assert!(body.contains(&s.app_ids[i]), "{body}");
    }

    let listing = attestation_json(&s);
    for id in &s.app_ids {
        assert!(
            listing.contains(id.as_str()),
            "the attestation page lists app {id}: {listing}"
        );
        // The whole chain verifies, from the dev KMS root the gateway pins down.
        let page: serde_json::Value =
            serde_json::from_str(&attestation_json_at(&s, &format!("/apps/{id}"))).unwrap();
        let inst = &page["instances"][0];
        assert_eq!(inst["verdict"], "verified", "{page}");
        assert_eq!(inst["chain"][0]["role"], "KMS root CA", "{page}");
        assert!(inst["compose"]["file"].is_string(), "{page}");
    }

    // The gateway runs attested in its own simulated CVM: its evidence is published, and
    // the `teegate verify` line printed for each app checks the whole chain, from the
    // certificate the client received to each instance.
    let evidence: serde_json::Value =
        serde_json::from_str(&attestation_json_at(&s, "/.well-known/teegate/gateway")).unwrap();
    assert_eq!(evidence["attested"], true, "{evidence}");
    let gateway_line = s
        .lines
        .iter()
        .find(|l| l.trim_start().starts_with("gateway "))
        .expect("a gateway line");
    assert!(
        gateway_line.contains("attested [SIMULATED TDX]"),
        "{gateway_line}"
    );
    let verifies: Vec<String> = s
        .lines
        .iter()
        .filter_map(|l| l.trim().strip_prefix("teegate verify "))
        .map(|rest| format!("'{}' verify {rest}", env!("CARGO_BIN_EXE_teegate")))
        .collect();
    assert_eq!(verifies.len(), 2, "{:#?}", s.lines);
    for (i, verify) in verifies.iter().enumerate() {
        let (ok, out) = sh(verify);
        assert!(ok, "`{verify}` failed: {out}");
        assert!(out.contains(&s.app_ids[i]), "{out}");
    }

    let running = dev.processes();
    assert!(
        running.len() >= 6,
        "KMS, DNS, the gateway's CVM, the gateway and two CVMs run: {running:#?}"
    );
    dev.interrupt();
    assert_nothing_left(&dev, &s);
}

fn docker_works() -> Result<(), String> {
    match Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output()
    {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(String::from_utf8_lossy(&o.stderr).trim().to_string()),
        Err(e) => Err(format!("no docker CLI ({e})")),
    }
}

fn containers_of(app_id: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args(["ps", "-aq", "--filter"])
        .arg(format!("label=teegate.app-id={app_id}"))
        .output()
        .expect("docker ps");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(String::from)
        .collect()
}

/// Removes the run's containers if the test fails before `teegate dev` does.
struct ContainerGuard(Vec<String>);

impl Drop for ContainerGuard {
    fn drop(&mut self) {
        for id in &self.0 {
            for c in containers_of(id) {
                let _ = Command::new("docker").args(["rm", "-f", &c]).output();
            }
        }
    }
}

#[test]
fn dev_runs_the_demo_compose_on_docker_and_removes_it_on_sigint() {
    if let Err(why) = docker_works() {
        eprintln!("skipped: `docker info` fails, so there is no Docker to run the demo on: {why}");
        return;
    }
    if !Path::new("/bin/busybox").exists() {
        eprintln!("skipped: /bin/busybox is missing to build the demo image (apt-get install busybox-static)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dev");
    let mut dev = Dev::spawn(&dir, &[]);
    let s = dev.wait_started();
    let _guard = ContainerGuard(s.app_ids.clone());
    assert_output(&s, 1);
    assert!(
        s.lines.iter().any(|l| l.contains("demo compose on Docker")),
        "says which mode:\n{}",
        dev.transcript()
    );

    let (ok, body) = sh(&s.curls[0]);
    assert!(ok, "`{}` failed: {body}", s.curls[0]);
    assert!(
        body.contains("teegate demo app 1 (SIMULATED TDX): served by a Docker container"),
        "{body}"
    );
    assert_eq!(containers_of(&s.app_ids[0]).len(), 1);

    let listing = attestation_json(&s);
    assert!(
        listing.contains(s.app_ids[0].as_str()),
        "the attestation page lists the app: {listing}"
    );

    dev.interrupt();
    assert_nothing_left(&dev, &s);
    assert!(
        containers_of(&s.app_ids[0]).is_empty(),
        "the demo containers are removed"
    );
}
