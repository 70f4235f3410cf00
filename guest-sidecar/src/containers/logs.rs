//! Log lines of a service's container, as an async stream.

use std::collections::VecDeque;
use std::pin::Pin;

use bollard::container::LogOutput;
use bollard::query_parameters::LogsOptions;
use futures_util::{Stream, StreamExt};

use super::{ContainerError, ContainerManager, Result};

/// Which output a line came from (a TTY container's output counts as stdout).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogStreamKind {
    Stdout,
    Stderr,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogLine {
    pub stream: LogStreamKind,
    /// The line without its trailing newline (invalid UTF-8 replaced).
    pub line: String,
}

/// An async stream of log lines; ends when the container's output ends (or at once
/// without `follow`).
pub type LogStream = Pin<Box<dyn Stream<Item = Result<LogLine>> + Send>>;

/// Longest line kept whole; longer ones are cut into pieces of this size.
const MAX_LINE: usize = 64 * 1024;

struct Splitter {
    out: Vec<u8>,
    err: Vec<u8>,
    ready: VecDeque<LogLine>,
}

impl Splitter {
    fn push(&mut self, kind: LogStreamKind, bytes: &[u8]) {
        let buf = match kind {
            LogStreamKind::Stdout => &mut self.out,
            LogStreamKind::Stderr => &mut self.err,
        };
        for &b in bytes {
            if b == b'\n' || buf.len() >= MAX_LINE {
                let mut line = std::mem::take(buf);
                if b != b'\n' {
                    line.push(b);
                }
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                self.ready.push_back(LogLine {
                    stream: kind,
                    line: String::from_utf8_lossy(&line).into_owned(),
                });
            } else {
                buf.push(b);
            }
        }
    }

    fn flush(&mut self) {
        for (kind, buf) in [
            (LogStreamKind::Stdout, &mut self.out),
            (LogStreamKind::Stderr, &mut self.err),
        ] {
            if !buf.is_empty() {
                let line = std::mem::take(buf);
                self.ready.push_back(LogLine {
                    stream: kind,
                    line: String::from_utf8_lossy(&line).into_owned(),
                });
            }
        }
    }
}

impl ContainerManager {
    /// The log lines of `service`'s container: the last `tail` lines (all when `None`),
    /// then new lines as they come when `follow`.
    pub async fn logs(
        &self,
        service: &str,
        follow: bool,
        tail: Option<usize>,
    ) -> Result<LogStream> {
        self.service(service)?;
        let id = self
            .container_of(service)
            .await?
            .ok_or_else(|| ContainerError::Conflict {
                step: "stream logs",
                service: service.to_string(),
                message: "the service has no container (is the app up?)".into(),
            })?;
        let opts = LogsOptions {
            follow,
            stdout: true,
            stderr: true,
            tail: tail.map(|n| n.to_string()).unwrap_or_else(|| "all".into()),
            ..Default::default()
        };
        let inner = self.docker().logs(&id, Some(opts)).boxed();
        let service = service.to_string();
        let splitter = Splitter {
            out: Vec::new(),
            err: Vec::new(),
            ready: VecDeque::new(),
        };
        let stream = futures_util::stream::unfold(
            (inner, splitter, false),
            move |(mut inner, mut sp, mut done)| {
                let service = service.clone();
                async move {
                    loop {
                        if let Some(line) = sp.ready.pop_front() {
                            return Some((Ok(line), (inner, sp, done)));
                        }
                        if done {
                            return None;
                        }
                        match inner.next().await {
                            Some(Ok(out)) => match out {
                                LogOutput::StdErr { message } => {
                                    sp.push(LogStreamKind::Stderr, &message)
                                }
                                LogOutput::StdOut { message } | LogOutput::Console { message } => {
                                    sp.push(LogStreamKind::Stdout, &message)
                                }
                                LogOutput::StdIn { .. } => {}
                            },
                            Some(Err(source)) => {
                                done = true;
                                sp.flush();
                                let e = ContainerError::Docker {
                                    step: "stream logs",
                                    service: service.clone(),
                                    source,
                                };
                                return Some((Err(e), (inner, sp, done)));
                            }
                            None => {
                                done = true;
                                sp.flush();
                            }
                        }
                    }
                }
            },
        );
        Ok(Box::pin(stream))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_chunks_into_lines() {
        let mut sp = Splitter {
            out: Vec::new(),
            err: Vec::new(),
            ready: VecDeque::new(),
        };
        sp.push(LogStreamKind::Stdout, b"hel");
        sp.push(LogStreamKind::Stderr, b"oops\r\n");
        sp.push(LogStreamKind::Stdout, b"lo\nwor");
        sp.flush();
        let lines: Vec<(LogStreamKind, String)> =
            sp.ready.into_iter().map(|l| (l.stream, l.line)).collect();
        assert_eq!(
            lines,
            [
                (LogStreamKind::Stderr, "oops".to_string()),
                (LogStreamKind::Stdout, "hello".to_string()),
                (LogStreamKind::Stdout, "wor".to_string()),
            ]
        );
    }
}
