//! Supervised children: each component is `teegate <component>` in its own process group,
//! with its output in a log file. A child dies with the supervisor (parent-death signal),
//! and the supervisor stops every group it started, so nothing outlives `teegate dev`.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// How many log lines an error shows.
const TAIL_LINES: usize = 20;
const POLL: Duration = Duration::from_millis(25);

/// One running child.
pub struct Proc {
    pub name: String,
    pub log: PathBuf,
    child: Child,
    /// Set once reaped: its pid (and group id) may then belong to someone else.
    status: Option<ExitStatus>,
}

impl Proc {
    /// Runs `teegate <args>` with stdout and stderr in `log` (truncated).
    pub fn spawn(name: &str, args: &[&str], log: &Path) -> Result<Proc> {
        let exe = std::env::current_exe().context("locating the teegate binary")?;
        let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone().context("log file")?;
        let parent = std::process::id() as libc::pid_t;
        let mut cmd = Command::new(exe);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            // Its own group: a terminal's Ctrl-C reaches only the supervisor, which then
            // stops the children in order and can report what each did.
            .process_group(0);
        // Logs go to files: no terminal colour codes in them.
        cmd.env("NO_COLOR", "1");
        if std::env::var_os("TEEGATE_LOG").is_none() {
            cmd.env("TEEGATE_LOG", "info,rustls=error");
        }
        // SAFETY: prctl, getppid and _exit are async-signal-safe and touch no memory of
        // the parent; this runs in the forked child before exec.
        unsafe {
            cmd.pre_exec(move || {
                // If the supervisor dies without stopping us (SIGKILL), we stop too.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // It may have died between fork and prctl.
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        let child = cmd.spawn().with_context(|| format!("starting {name}"))?;
        tracing::debug!(name, pid = child.id(), "child started");
        Ok(Proc {
            name: name.to_string(),
            log: log.to_path_buf(),
            child,
            status: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Some(status)` once the child has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// The last lines of the child's log.
    pub fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(TAIL_LINES);
        lines[from..].iter().map(|l| format!("  | {l}\n")).collect()
    }

    /// The error for a child that exited when it should not have.
    pub fn died(&self, status: ExitStatus) -> anyhow::Error {
        anyhow::anyhow!(
            "{} exited unexpectedly ({status}); last lines of {}:\n{}",
            self.name,
            self.log.display(),
            self.tail()
        )
    }

    /// Whether the log holds the line `ready` (every component prints it once serving).
    fn is_ready(&self) -> bool {
        std::fs::read_to_string(&self.log)
            .map(|t| t.lines().any(|l| l.trim() == "ready"))
            .unwrap_or(false)
    }

    /// Waits (bounded) for the `ready` line; fails if the child exits first.
    pub async fn ready(&mut self, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            if self.is_ready() {
                return Ok(());
            }
            if let Some(status) = self.exited() {
                return Err(self.died(status));
            }
            if Instant::now() > deadline {
                bail!(
                    "{} was not ready within {within:?}; last lines of {}:\n{}",
                    self.name,
                    self.log.display(),
                    self.tail()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    fn signal_group(&self, sig: libc::c_int) {
        if self.status.is_some() {
            return;
        }
        // SAFETY: kill(2) has no memory-safety preconditions. The group id is our
        // child's pid (process_group(0)), not reaped yet, so it names no other group.
        unsafe {
            libc::kill(-(self.child.id() as libc::pid_t), sig);
        }
    }
}

/// Every child the supervisor started, stopped together.
#[derive(Default)]
pub struct Procs {
    pub list: Vec<Proc>,
}

impl Procs {
    pub fn push(&mut self, p: Proc) {
        self.list.push(p);
    }

    /// The first child that has exited, with its status.
    pub fn first_dead(&mut self) -> Option<(usize, ExitStatus)> {
        self.list
            .iter_mut()
            .enumerate()
            .find_map(|(i, p)| p.exited().map(|s| (i, s)))
    }

    /// SIGINT to every group (the children's fast, clean stop), then SIGKILL to whatever
    /// is left after `grace` or at once when `hurry` completes (a second Ctrl-C). Reaps
    /// every child; returns the names of those that had to be killed.
    pub async fn stop_all(
        &mut self,
        grace: Duration,
        hurry: impl std::future::Future<Output = ()>,
    ) -> Vec<String> {
        for p in &self.list {
            p.signal_group(libc::SIGINT);
        }
        let deadline = tokio::time::Instant::now() + grace;
        let waiting = async {
            while self.list.iter_mut().any(|p| p.exited().is_none()) {
                tokio::time::sleep(POLL).await;
            }
        };
        tokio::select! {
            _ = waiting => {}
            _ = tokio::time::sleep_until(deadline) => {}
            _ = hurry => {}
        }
        let mut killed = Vec::new();
        for p in &mut self.list {
            if p.exited().is_none() {
                p.signal_group(libc::SIGKILL);
                p.status = p.child.wait().ok();
                killed.push(p.name.clone());
            }
        }
        self.list.clear();
        killed
    }
}
