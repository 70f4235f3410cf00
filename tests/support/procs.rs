//! Child processes: free ports, `teegate` runs killed on drop, bounded waits and exits.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A port that was free a moment ago on 127.0.0.1 (TCP and UDP). Taken below the kernel's
/// ephemeral range (32768+ on Linux), so an outgoing connection cannot grab it before the
/// test's server binds it, and never handed out twice by one test process; asking the
/// kernel for port 0 gave both kinds of collision under parallel tests.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    // Each test binary starts somewhere else, so binaries run one after another do not
    // walk the ports the previous one left in TIME_WAIT.
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(7919) % SPAN,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..SPAN {
        let port = (LOW + NEXT.fetch_add(1, Ordering::Relaxed) % SPAN) as u16;
        let tcp = TcpListener::bind(("127.0.0.1", port));
        let udp = std::net::UdpSocket::bind(("127.0.0.1", port));
        if tcp.is_ok() && udp.is_ok() {
            return port;
        }
    }
    panic!("no free port in {LOW}..{}", LOW + SPAN)
}

/// A child process that is killed (SIGKILL) when dropped, unless stopped first.
pub struct Proc {
    pub child: Option<Child>,
    pub stderr: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    pub fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
            unsafe {
                libc::kill(c.id() as i32, sig);
            }
        }
    }

    /// SIGTERM, then wait (bounded); returns the exit status.
    pub fn stop(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        self.signal(libc::SIGTERM);
        let mut child = self.child.take()?;
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    pub fn log(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs `teegate <args>` and waits (bounded) until stderr shows `ready_line`.
pub fn spawn_teegate(args: &[&str], ready_line: &str, timeout: Duration) -> Proc {
    let mut child = Command::new(env!("CARGO_BIN_EXE_teegate"))
        .args(args)
        .env("TEEGATE_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn teegate");
    let stderr = child.stderr.take().expect("stderr");
    let lines = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let sink = lines.clone();
    let ready = ready_line.to_string();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains(&ready) {
                let _ = tx.send(());
            }
            sink.lock().unwrap().push(line);
        }
    });
    let proc = Proc {
        child: Some(child),
        stderr: lines,
    };
    if rx.recv_timeout(timeout).is_err() {
        panic!(
            "teegate {args:?} did not become ready in {timeout:?}; stderr:\n{}",
            proc.log()
        );
    }
    proc
}

pub fn wait_for_port(port: u16, within: Duration) {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("port {port} did not open within {within:?}");
}

/// Runs a command that must fail within `within`; its standard error. A process still
/// running then is killed and the test fails.
pub fn expect_exit_failure(cmd: &mut Command, within: Duration) -> String {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .env("TEEGATE_LOG", "info")
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + within;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} still running after {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    use std::io::Read;
    let _ = child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err);
    assert!(!status.success(), "{cmd:?} succeeded; stderr:\n{err}");
    err
}
