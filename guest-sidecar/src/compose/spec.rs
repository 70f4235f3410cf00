//! The docker compose subset the sidecar runs, parsed from the `docker_compose` string.
//!
//! The YAML is read with `yaml_serde` (anchors and `<<` merge keys work), variables are
//! interpolated ([`super::interpolate`]), and then every key is checked by hand, so an error
//! names its path (`services.web.ports[0]: …`). Anything not listed here is refused, never
//! ignored: a key the sidecar does not understand could change what runs.
//!
//! # Top level
//! - `services` (required): name → service. Names match `[A-Za-z0-9][A-Za-z0-9_.-]*`.
//! - `volumes`: named volumes, each `null` or `{}` (local driver, created per app).
//! - `networks`: only `default` (the app's own bridge network, `teegate-<app-id prefix>`).
//! - `version`, `name` and `x-*` extension keys are accepted and ignored.
//!
//! # Service keys
//! - `image` (required): a local image, one loaded from an `images` tarball, or pulled.
//! - `command`, `entrypoint`: a list, or a string split like shell words.
//! - `environment`: a list (`["A=1", "B"]`) or a map (`{A: 1, B: null}`); a name without a
//!   value takes the value from the (allowed) env, and is left out when it is not set.
//! - `ports`: `"80"`, `"8080:80"`, `"127.0.0.1:8080:80"`, `"80/tcp"`, a number, or the long
//!   form `{target, published, host_ip, protocol}`. Every container port is published on
//!   127.0.0.1 only, on a host port the sidecar picks (the host side written in the compose
//!   is not used): only the RA-TLS front reaches them. Other host IPs, UDP and ranges are
//!   refused.
//! - `volumes`: `name:/path[:ro]` (a named volume declared at the top level), `/path` (an
//!   anonymous volume), `/host/path:/path[:ro]` (a bind mount, only under one of
//!   [`ComposeOptions::allowed_bind_bases`], by default `/var/run/teegate` for the guest API
//!   socket; relative paths and `..` are refused), or the long form
//!   `{type: volume|bind, source, target, read_only}`.
//! - `restart`: `no`, `always`, `on-failure`, `on-failure:N`, `unless-stopped`.
//! - `depends_on`: a list, or a map `{svc: {condition: service_started|service_healthy}}`.
//!   Cycles are refused.
//! - `healthcheck`: `test` (string = `CMD-SHELL`, or `[CMD, …]`, `[CMD-SHELL, …]`,
//!   `[NONE]`), `interval`, `timeout`, `start_period` (durations like `1m30s`, `500ms`),
//!   `retries`, `disable`.
//! - `networks`: `[default]` or `{default: {}}` (aliases are the service name).
//! - `working_dir`, `user`, `hostname`, `labels` (not `teegate.*`), `stop_signal`,
//!   `stop_grace_period`, `read_only`, `init`, `cap_drop`, `tty`, `stdin_open`, `expose`
//!   (documentation only).
//!
//! Refused for safety (they would reach past the container into the CVM, whose measured
//! state is what the attestation vouches for): `privileged`, `cap_add`, `devices`,
//! `device_cgroup_rules`, `network_mode`, `pid`, `ipc`, `uts`, `userns_mode`,
//! `security_opt`, `cgroup`, `cgroup_parent`, `sysctls`, `volumes_from`, `runtime`,
//! `isolation`, `gpus`, `env_file` (reads CVM files outside the measured compose),
//! `container_name` (the sidecar names containers), `build`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use yaml_serde::{Mapping, Value};

use super::{interpolate::interpolate_with, ComposeError, Port};

/// Choices the compose file cannot make for itself.
#[derive(Clone, Debug)]
pub struct ComposeOptions {
    /// Host directories under which bind mounts are allowed.
    pub allowed_bind_bases: Vec<PathBuf>,
}

impl Default for ComposeOptions {
    fn default() -> Self {
        ComposeOptions {
            allowed_bind_bases: vec![PathBuf::from("/var/run/teegate")],
        }
    }
}

/// A parsed compose file.
#[derive(Clone, Debug, PartialEq)]
pub struct ComposeSpec {
    pub services: BTreeMap<String, ServiceSpec>,
    /// Named volumes declared at the top level.
    pub volumes: BTreeSet<String>,
    /// Service names in start order (dependencies first).
    pub start_order: Vec<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ServiceSpec {
    pub name: String,
    pub image: String,
    pub command: Option<Vec<String>>,
    pub entrypoint: Option<Vec<String>>,
    pub environment: BTreeMap<String, String>,
    pub ports: Vec<PortSpec>,
    pub volumes: Vec<VolumeMount>,
    pub restart: Restart,
    pub depends_on: BTreeMap<String, DependsCondition>,
    /// `None`: the image's own healthcheck (if any) applies.
    pub healthcheck: Option<Healthcheck>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    pub hostname: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub stop_signal: Option<String>,
    pub stop_grace_period: Option<Duration>,
    pub read_only: bool,
    pub init: Option<bool>,
    pub cap_drop: Vec<String>,
    pub tty: bool,
    pub stdin_open: bool,
}

/// A published container port (TCP).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortSpec {
    pub container_port: u16,
    /// The host port the compose asked for; informational (the sidecar picks the host port).
    pub requested_host_port: Option<u16>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VolumeMount {
    /// A named volume declared at the top level (Docker name `teegate-<prefix>_<name>`).
    Named {
        name: String,
        target: String,
        read_only: bool,
    },
    /// An anonymous volume at `target`.
    Anonymous { target: String },
    /// A host path under an allowed base.
    Bind {
        source: PathBuf,
        target: String,
        read_only: bool,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Restart {
    #[default]
    No,
    Always,
    OnFailure {
        max_retries: Option<u32>,
    },
    UnlessStopped,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DependsCondition {
    Started,
    Healthy,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HealthTest {
    /// `["CMD", args…]`
    Cmd(Vec<String>),
    /// `["CMD-SHELL", command]`
    Shell(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Healthcheck {
    /// `disable: true` or `test: [NONE]`: turns off the image's healthcheck too.
    Disabled,
    Check {
        /// `None`: the image's test with the timings given here.
        test: Option<HealthTest>,
        interval: Option<Duration>,
        timeout: Option<Duration>,
        start_period: Option<Duration>,
        retries: Option<u32>,
    },
}

const REFUSED: &[(&str, &str)] = &[
    ("privileged", "privileged containers control the whole CVM"),
    ("cap_add", "extra capabilities reach past the container"),
    ("devices", "host devices reach past the container"),
    (
        "device_cgroup_rules",
        "device access reaches past the container",
    ),
    (
        "network_mode",
        "only the app's own network is allowed (no host network)",
    ),
    ("pid", "sharing a PID namespace reaches past the container"),
    ("ipc", "sharing an IPC namespace reaches past the container"),
    (
        "uts",
        "sharing the UTS namespace reaches past the container",
    ),
    (
        "userns_mode",
        "user namespace changes reach past the container",
    ),
    ("security_opt", "security options can turn off confinement"),
    (
        "cgroup",
        "cgroup namespace changes reach past the container",
    ),
    ("cgroup_parent", "cgroup placement is the sidecar's"),
    ("sysctls", "kernel parameters are the CVM's"),
    (
        "volumes_from",
        "mounts from other containers are not measured",
    ),
    ("runtime", "only the default runtime is allowed"),
    ("isolation", "only the default isolation is allowed"),
    ("gpus", "host devices reach past the container"),
    (
        "env_file",
        "reads CVM files outside the measured compose; use environment",
    ),
    ("container_name", "the sidecar names containers"),
    (
        "build",
        "images are not built in the CVM; use a local, loaded or pulled image",
    ),
];

type Res<T> = Result<T, ComposeError>;

fn err<T>(path: &str, msg: impl Into<String>) -> Res<T> {
    Err(ComposeError::yaml(path, msg))
}

fn key_str<'a>(k: &'a Value, path: &str) -> Res<&'a str> {
    match k {
        Value::String(s) => Ok(s),
        other => err(path, format!("keys must be strings, found {}", kind(other))),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

fn string(v: &Value, path: &str) -> Res<String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        other => err(path, format!("expected a string, found {}", kind(other))),
    }
}

/// A scalar as text (strings, numbers and booleans), as env values and labels allow.
fn scalar(v: &Value, path: &str) -> Res<String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        other => err(
            path,
            format!("expected a string or number, found {}", kind(other)),
        ),
    }
}

fn boolean(v: &Value, path: &str) -> Res<bool> {
    match v {
        Value::Bool(b) => Ok(*b),
        other => err(
            path,
            format!("expected true or false, found {}", kind(other)),
        ),
    }
}

fn mapping<'a>(v: &'a Value, path: &str) -> Res<&'a Mapping> {
    match v {
        Value::Mapping(m) => Ok(m),
        other => err(path, format!("expected a mapping, found {}", kind(other))),
    }
}

fn list<'a>(v: &'a Value, path: &str) -> Res<&'a [Value]> {
    match v {
        Value::Sequence(s) => Ok(s),
        other => err(path, format!("expected a list, found {}", kind(other))),
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Splits a command string like a POSIX shell would split words (quotes and backslashes;
/// no expansion).
pub fn shell_words(s: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => cur.push(c),
                        None => return Err("unclosed single quote".into()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => cur.push(c),
                            Some(c) => {
                                cur.push('\\');
                                cur.push(c);
                            }
                            None => return Err("unclosed double quote".into()),
                        },
                        Some(c) => cur.push(c),
                        None => return Err("unclosed double quote".into()),
                    }
                }
            }
            '\\' => {
                in_word = true;
                if let Some(c) = chars.next() {
                    cur.push(c);
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

/// Parses a Go-style duration: `1h`, `1m30s`, `10s`, `500ms`, `1.5s`, `250us`, `100ns`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a duration (like 30s, 1m30s, 500ms)");
    if s.is_empty() {
        return Err(bad());
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        if num_len == 0 {
            return Err(bad());
        }
        let n: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return Err(bad()),
        };
        total += n * scale;
        rest = &rest[unit_len..];
    }
    if !total.is_finite() || total > 365.0 * 86400.0 {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(total))
}

fn duration(v: &Value, path: &str) -> Res<Duration> {
    match v {
        Value::String(s) => parse_duration(s).map_err(|m| ComposeError::yaml(path, m)),
        Value::Number(n) => n
            .as_u64()
            .map(Duration::from_secs)
            .ok_or_else(|| ComposeError::yaml(path, format!("{n} is not a duration"))),
        other => err(path, format!("expected a duration, found {}", kind(other))),
    }
}

fn interpolate_all(
    v: &mut Value,
    env: &BTreeMap<String, String>,
    strict: bool,
    path: &str,
) -> Res<()> {
    match v {
        Value::String(s) => {
            *s = interpolate_with(s, env, strict).map_err(|m| ComposeError::yaml(path, m))?;
        }
        Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                interpolate_all(item, env, strict, &format!("{path}[{i}]"))?;
            }
        }
        Value::Mapping(m) => {
            for (k, item) in m.iter_mut() {
                let key = match k {
                    Value::String(s) => s.clone(),
                    _ => String::from("?"),
                };
                interpolate_all(item, env, strict, &join(path, &key))?;
            }
        }
        Value::Tagged(t) => interpolate_all(&mut t.value, env, strict, path)?,
        _ => {}
    }
    Ok(())
}

fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        && s.len() <= 63
}

impl ComposeSpec {
    /// Parses compose YAML, substituting variables from `env`.
    pub fn parse(
        yaml: &str,
        env: &BTreeMap<String, String>,
        options: &ComposeOptions,
    ) -> Result<ComposeSpec, ComposeError> {
        Self::parse_with(yaml, env, options, true)
    }

    /// As [`ComposeSpec::parse`]; `strict = false` lets required variables (`${X:?…}`)
    /// be unset, for checking a compose before its env is decrypted.
    pub fn parse_with(
        yaml: &str,
        env: &BTreeMap<String, String>,
        options: &ComposeOptions,
        strict: bool,
    ) -> Result<ComposeSpec, ComposeError> {
        let mut doc: Value =
            yaml_serde::from_str(yaml).map_err(|e| ComposeError::yaml("", e.to_string()))?;
        doc.apply_merge()
            .map_err(|e| ComposeError::yaml("", e.to_string()))?;
        interpolate_all(&mut doc, env, strict, "")?;
        let top = mapping(&doc, "")?;

        let mut services_v = None;
        let mut volumes = BTreeSet::new();
        for (k, v) in top {
            let key = key_str(k, "")?;
            match key {
                "services" => services_v = Some(v),
                "volumes" => {
                    if v.is_null() {
                        continue;
                    }
                    for (vk, vv) in mapping(v, "volumes")? {
                        let name = key_str(vk, "volumes")?;
                        let p = join("volumes", name);
                        if !valid_name(name) {
                            return err(&p, "bad volume name");
                        }
                        match vv {
                            Value::Null => {}
                            Value::Mapping(m) if m.is_empty() => {}
                            Value::Mapping(m) => {
                                let first = m.keys().next().and_then(Value::as_str).unwrap_or("?");
                                return err(
                                    &join(&p, first),
                                    "unsupported volume option (only local volumes made for the app)",
                                );
                            }
                            other => return err(&p, format!("expected a mapping, found {}", kind(other))),
                        }
                        volumes.insert(name.to_string());
                    }
                }
                "networks" => {
                    if v.is_null() {
                        continue;
                    }
                    for (nk, nv) in mapping(v, "networks")? {
                        let name = key_str(nk, "networks")?;
                        let p = join("networks", name);
                        if name != "default" {
                            return err(&p, "only the default app network is supported");
                        }
                        if !(nv.is_null() || nv.as_mapping().is_some_and(Mapping::is_empty)) {
                            return err(&p, "network options are not supported");
                        }
                    }
                }
                "version" | "name" => {}
                k if k.starts_with("x-") => {}
                other => {
                    return err(
                        other,
                        "unsupported top-level key (supported: services, volumes, networks, version, name, x-*)",
                    )
                }
            }
        }
        let services_v = services_v.ok_or_else(|| ComposeError::yaml("services", "missing"))?;
        let mut services = BTreeMap::new();
        for (k, v) in mapping(services_v, "services")? {
            let name = key_str(k, "services")?;
            let path = join("services", name);
            if !valid_name(name) {
                return err(&path, "bad service name (letters, digits, _ . -; up to 63)");
            }
            let svc = parse_service(name, v, &path, &volumes, env, options)?;
            services.insert(name.to_string(), svc);
        }
        if services.is_empty() {
            return err("services", "no services");
        }
        for svc in services.values() {
            for dep in svc.depends_on.keys() {
                if !services.contains_key(dep) {
                    return err(
                        &format!("services.{}.depends_on.{dep}", svc.name),
                        format!("no service named {dep:?}"),
                    );
                }
            }
        }
        let start_order = topo_order(&services)?;
        Ok(ComposeSpec {
            services,
            volumes,
            start_order,
        })
    }

    /// Checks that each exposed port is published by exactly one service.
    pub fn check_exposed_ports(&self, exposed: &[Port]) -> Result<(), ComposeError> {
        for (i, p) in exposed.iter().enumerate() {
            let owners: Vec<&str> = self
                .services
                .values()
                .filter(|s| s.ports.iter().any(|sp| sp.container_port == p.0))
                .map(|s| s.name.as_str())
                .collect();
            match owners.len() {
                1 => {}
                0 => {
                    return Err(ComposeError::json(
                        format!("exposed_ports[{i}]"),
                        format!(
                            "port {} is not published by any service (add it to a service's ports)",
                            p.0
                        ),
                    ))
                }
                _ => {
                    return Err(ComposeError::json(
                        format!("exposed_ports[{i}]"),
                        format!(
                        "port {} is published by several services ({}); the front could not choose",
                        p.0,
                        owners.join(", ")
                    ),
                    ))
                }
            }
        }
        Ok(())
    }

    /// The service that publishes container port `port`, if exactly one does.
    pub fn service_for_port(&self, port: u16) -> Option<&ServiceSpec> {
        let mut it = self
            .services
            .values()
            .filter(|s| s.ports.iter().any(|p| p.container_port == port));
        let first = it.next()?;
        it.next().is_none().then_some(first)
    }
}

/// Kahn's algorithm over depends_on, ties broken by name so the order is stable.
fn topo_order(services: &BTreeMap<String, ServiceSpec>) -> Res<Vec<String>> {
    let mut remaining: BTreeMap<&str, BTreeSet<&str>> = services
        .values()
        .map(|s| {
            (
                s.name.as_str(),
                s.depends_on.keys().map(String::as_str).collect(),
            )
        })
        .collect();
    let mut order = Vec::new();
    while !remaining.is_empty() {
        let ready: Vec<&str> = remaining
            .iter()
            .filter(|(_, deps)| deps.is_empty())
            .map(|(n, _)| *n)
            .collect();
        if ready.is_empty() {
            // Walk from any remaining service along unresolved deps until one repeats.
            let mut path: Vec<&str> = Vec::new();
            let mut cur = *remaining.keys().next().unwrap_or(&"");
            while !path.contains(&cur) {
                path.push(cur);
                cur = remaining
                    .get(cur)
                    .and_then(|d| d.iter().next().copied())
                    .unwrap_or(cur);
            }
            let start = path.iter().position(|n| *n == cur).unwrap_or(0);
            let mut cycle: Vec<&str> = path[start..].to_vec();
            cycle.push(cur);
            return err(
                &format!("services.{}.depends_on", cycle[0]),
                format!("dependency cycle: {}", cycle.join(" -> ")),
            );
        }
        for n in &ready {
            remaining.remove(n);
        }
        for deps in remaining.values_mut() {
            for n in &ready {
                deps.remove(n);
            }
        }
        order.extend(ready.into_iter().map(String::from));
    }
    Ok(order)
}

fn parse_service(
    name: &str,
    v: &Value,
    path: &str,
    declared_volumes: &BTreeSet<String>,
    env: &BTreeMap<String, String>,
    options: &ComposeOptions,
) -> Res<ServiceSpec> {
    let m = mapping(v, path)?;
    let mut s = ServiceSpec {
        name: name.to_string(),
        image: String::new(),
        command: None,
        entrypoint: None,
        environment: BTreeMap::new(),
        ports: Vec::new(),
        volumes: Vec::new(),
        restart: Restart::No,
        depends_on: BTreeMap::new(),
        healthcheck: None,
        working_dir: None,
        user: None,
        hostname: None,
        labels: BTreeMap::new(),
        stop_signal: None,
        stop_grace_period: None,
        read_only: false,
        init: None,
        cap_drop: Vec::new(),
        tty: false,
        stdin_open: false,
    };
    let mut has_image = false;
    for (k, v) in m {
        let key = key_str(k, path)?;
        let p = join(path, key);
        if let Some((_, why)) = REFUSED.iter().find(|(n, _)| *n == key) {
            return err(&p, format!("refused: {why}"));
        }
        match key {
            "image" => {
                s.image = string(v, &p)?;
                if s.image.is_empty() {
                    return err(&p, "empty image name");
                }
                has_image = true;
            }
            "command" => s.command = Some(command(v, &p)?),
            "entrypoint" => s.entrypoint = Some(command(v, &p)?),
            "environment" => s.environment = environment(v, &p, env)?,
            "ports" => {
                for (i, item) in list(v, &p)?.iter().enumerate() {
                    let pp = format!("{p}[{i}]");
                    let port = port_spec(item, &pp)?;
                    if s.ports
                        .iter()
                        .any(|q| q.container_port == port.container_port)
                    {
                        return err(
                            &pp,
                            format!("container port {} published twice", port.container_port),
                        );
                    }
                    s.ports.push(port);
                }
            }
            "volumes" => {
                for (i, item) in list(v, &p)?.iter().enumerate() {
                    let pp = format!("{p}[{i}]");
                    s.volumes
                        .push(volume_mount(item, &pp, declared_volumes, options)?);
                }
            }
            "restart" => s.restart = restart(&string(v, &p)?, &p)?,
            "depends_on" => s.depends_on = depends_on(v, &p, name)?,
            "healthcheck" => s.healthcheck = Some(healthcheck(v, &p)?),
            "networks" => networks(v, &p)?,
            "working_dir" => s.working_dir = Some(string(v, &p)?),
            "user" => s.user = Some(scalar(v, &p)?),
            "hostname" => s.hostname = Some(string(v, &p)?),
            "labels" => {
                s.labels = key_values(v, &p)?
                    .into_iter()
                    .map(|(k, val)| (k, val.unwrap_or_default()))
                    .collect();
                if let Some(k) = s.labels.keys().find(|k| k.starts_with("teegate.")) {
                    return err(
                        &join(&p, k),
                        "labels starting with teegate. are the sidecar's",
                    );
                }
            }
            "stop_signal" => s.stop_signal = Some(string(v, &p)?),
            "stop_grace_period" => s.stop_grace_period = Some(duration(v, &p)?),
            "read_only" => s.read_only = boolean(v, &p)?,
            "init" => s.init = Some(boolean(v, &p)?),
            "cap_drop" => {
                s.cap_drop = list(v, &p)?
                    .iter()
                    .enumerate()
                    .map(|(i, c)| string(c, &format!("{p}[{i}]")))
                    .collect::<Res<_>>()?
            }
            "tty" => s.tty = boolean(v, &p)?,
            "stdin_open" => s.stdin_open = boolean(v, &p)?,
            "expose" => {
                list(v, &p)?;
            }
            other => {
                return err(
                    &join(path, other),
                    "unsupported key (see the supported compose subset in guest-sidecar/README.md)",
                )
            }
        }
    }
    if !has_image {
        return err(
            &join(path, "image"),
            "missing (every service needs an image)",
        );
    }
    Ok(s)
}

fn command(v: &Value, p: &str) -> Res<Vec<String>> {
    match v {
        Value::String(s) => shell_words(s).map_err(|m| ComposeError::yaml(p, m)),
        Value::Sequence(items) => items
            .iter()
            .enumerate()
            .map(|(i, x)| scalar(x, &format!("{p}[{i}]")))
            .collect(),
        other => err(
            p,
            format!("expected a string or a list, found {}", kind(other)),
        ),
    }
}

/// `["K=V", "K"]` or `{K: V, K: null}` → K → Some(V) / None.
fn key_values(v: &Value, p: &str) -> Res<Vec<(String, Option<String>)>> {
    let mut out = Vec::new();
    match v {
        Value::Sequence(items) => {
            for (i, item) in items.iter().enumerate() {
                let pp = format!("{p}[{i}]");
                let s = string(item, &pp)?;
                match s.split_once('=') {
                    Some((k, val)) => out.push((k.to_string(), Some(val.to_string()))),
                    None => out.push((s, None)),
                }
            }
        }
        Value::Mapping(m) => {
            for (k, val) in m {
                let key = key_str(k, p)?;
                let val = match val {
                    Value::Null => None,
                    other => Some(scalar(other, &join(p, key))?),
                };
                out.push((key.to_string(), val));
            }
        }
        other => {
            return err(
                p,
                format!("expected a list or a mapping, found {}", kind(other)),
            )
        }
    }
    for (k, _) in &out {
        if k.is_empty() || k.contains(char::is_whitespace) {
            return err(p, format!("bad name {k:?}"));
        }
    }
    Ok(out)
}

fn environment(
    v: &Value,
    p: &str,
    env: &BTreeMap<String, String>,
) -> Res<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for (k, val) in key_values(v, p)? {
        match val.or_else(|| env.get(&k).cloned()) {
            Some(val) => {
                out.insert(k, val);
            }
            None => {
                out.remove(&k);
            }
        }
    }
    Ok(out)
}

fn port_number(s: &str, p: &str) -> Res<u16> {
    if s.contains('-') {
        return err(p, format!("port ranges ({s}) are not supported"));
    }
    match s.parse::<u32>() {
        Ok(n) if (1..=65535).contains(&n) => Ok(n as u16),
        Ok(n) => err(p, format!("port {n} out of range (1-65535)")),
        Err(_) => err(p, format!("{s:?} is not a port number")),
    }
}

fn check_host_ip(ip: &str, p: &str) -> Res<()> {
    let ip = ip.trim_start_matches('[').trim_end_matches(']');
    if ip.is_empty() || ip == "127.0.0.1" || ip == "localhost" {
        Ok(())
    } else {
        err(
            p,
            format!("host IP {ip} not allowed: ports are published on 127.0.0.1 only, for the RA-TLS front"),
        )
    }
}

fn port_spec(v: &Value, p: &str) -> Res<PortSpec> {
    match v {
        Value::Number(n) => {
            let s = n.to_string();
            Ok(PortSpec {
                container_port: port_number(&s, p)?,
                requested_host_port: None,
            })
        }
        Value::String(s) => {
            let (addr, proto) = match s.split_once('/') {
                Some((a, proto)) => (a, proto),
                None => (s.as_str(), "tcp"),
            };
            if proto != "tcp" {
                return err(p, format!("protocol {proto} not supported (tcp only)"));
            }
            // [HOST_IP:][HOST_PORT:]CONTAINER_PORT, HOST_IP possibly [v6].
            let (host_ip, host_port, container) = match addr.rfind(':') {
                None => ("", None, addr),
                Some(i) => {
                    let (left, container) = (&addr[..i], &addr[i + 1..]);
                    match left.rfind(':') {
                        Some(j) if !left.ends_with(']') => {
                            (&left[..j], Some(&left[j + 1..]), container)
                        }
                        _ if left.ends_with(']') => (left, None, container),
                        _ => ("", Some(left), container),
                    }
                }
            };
            check_host_ip(host_ip, p)?;
            let requested_host_port = match host_port {
                Some("") | None => None,
                Some(h) => Some(port_number(h, p)?),
            };
            Ok(PortSpec {
                container_port: port_number(container, p)?,
                requested_host_port,
            })
        }
        Value::Mapping(m) => {
            let mut target = None;
            let mut published = None;
            for (k, val) in m {
                let key = key_str(k, p)?;
                let pp = join(p, key);
                match key {
                    "target" => target = Some(port_number(&scalar(val, &pp)?, &pp)?),
                    "published" => published = Some(port_number(&scalar(val, &pp)?, &pp)?),
                    "host_ip" => check_host_ip(&string(val, &pp)?, &pp)?,
                    "protocol" => {
                        let proto = string(val, &pp)?;
                        if proto != "tcp" {
                            return err(&pp, format!("protocol {proto} not supported (tcp only)"));
                        }
                    }
                    "mode" | "name" | "app_protocol" => {
                        string(val, &pp)?;
                    }
                    other => return err(&join(p, other), "unsupported key"),
                }
            }
            Ok(PortSpec {
                container_port: target
                    .ok_or_else(|| ComposeError::yaml(join(p, "target"), "missing"))?,
                requested_host_port: published,
            })
        }
        other => err(
            p,
            format!(
                "expected a port string, number or mapping, found {}",
                kind(other)
            ),
        ),
    }
}

fn check_target(t: &str, p: &str) -> Res<()> {
    if !t.starts_with('/') {
        return err(p, format!("container path {t:?} must be absolute"));
    }
    Ok(())
}

fn check_bind_source(src: &str, p: &str, options: &ComposeOptions) -> Res<PathBuf> {
    let path = Path::new(src);
    if !path.is_absolute() {
        return err(
            p,
            format!(
                "bind mount source {src:?} must be an absolute path (relative paths are refused)"
            ),
        );
    }
    if path
        .components()
        .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        return err(
            p,
            format!("bind mount source {src:?} must not contain . or .."),
        );
    }
    if !options
        .allowed_bind_bases
        .iter()
        .any(|base| path.starts_with(base))
    {
        let bases: Vec<String> = options
            .allowed_bind_bases
            .iter()
            .map(|b| b.display().to_string())
            .collect();
        return err(
            p,
            format!(
                "bind mount of host path {src} refused: only paths under [{}] may be mounted",
                bases.join(", ")
            ),
        );
    }
    Ok(path.to_path_buf())
}

fn volume_mount(
    v: &Value,
    p: &str,
    declared: &BTreeSet<String>,
    options: &ComposeOptions,
) -> Res<VolumeMount> {
    let named = |name: &str, target: String, read_only: bool| -> Res<VolumeMount> {
        if !declared.contains(name) {
            return err(
                p,
                format!("volume {name:?} is not declared in the top-level volumes"),
            );
        }
        Ok(VolumeMount::Named {
            name: name.to_string(),
            target,
            read_only,
        })
    };
    match v {
        Value::String(s) => {
            let parts: Vec<&str> = s.split(':').collect();
            let (src, target, mode) = match parts.as_slice() {
                [t] => (None, *t, None),
                [s, t] => (Some(*s), *t, None),
                [s, t, m] => (Some(*s), *t, Some(*m)),
                _ => return err(p, format!("{s:?} is not SOURCE:TARGET[:MODE]")),
            };
            check_target(target, p)?;
            let read_only = match mode {
                None | Some("rw") => false,
                Some("ro") => true,
                Some(m) => return err(p, format!("volume mode {m:?} not supported (ro or rw)")),
            };
            match src {
                None => Ok(VolumeMount::Anonymous {
                    target: target.to_string(),
                }),
                Some(src)
                    if src.starts_with('/') || src.starts_with('.') || src.starts_with('~') =>
                {
                    Ok(VolumeMount::Bind {
                        source: check_bind_source(src, p, options)?,
                        target: target.to_string(),
                        read_only,
                    })
                }
                Some(name) => named(name, target.to_string(), read_only),
            }
        }
        Value::Mapping(m) => {
            let (mut typ, mut source, mut target, mut read_only) = (None, None, None, false);
            for (k, val) in m {
                let key = key_str(k, p)?;
                let pp = join(p, key);
                match key {
                    "type" => typ = Some(string(val, &pp)?),
                    "source" => source = Some(string(val, &pp)?),
                    "target" => target = Some(string(val, &pp)?),
                    "read_only" => read_only = boolean(val, &pp)?,
                    other => return err(&join(p, other), "unsupported key"),
                }
            }
            let target = target.ok_or_else(|| ComposeError::yaml(join(p, "target"), "missing"))?;
            check_target(&target, &join(p, "target"))?;
            match (typ.as_deref(), source) {
                (Some("volume"), None) => Ok(VolumeMount::Anonymous { target }),
                (Some("volume"), Some(src)) => named(&src, target, read_only),
                (Some("bind"), Some(src)) => Ok(VolumeMount::Bind {
                    source: check_bind_source(&src, &join(p, "source"), options)?,
                    target,
                    read_only,
                }),
                (Some("bind"), None) => err(&join(p, "source"), "missing"),
                (Some(t), _) => err(
                    &join(p, "type"),
                    format!("volume type {t:?} not supported (volume or bind)"),
                ),
                (None, _) => err(&join(p, "type"), "missing"),
            }
        }
        other => err(
            p,
            format!("expected a string or a mapping, found {}", kind(other)),
        ),
    }
}

fn restart(s: &str, p: &str) -> Res<Restart> {
    Ok(match s {
        "no" | "" => Restart::No,
        "always" => Restart::Always,
        "unless-stopped" => Restart::UnlessStopped,
        "on-failure" => Restart::OnFailure { max_retries: None },
        _ => {
            match s.strip_prefix("on-failure:") {
                Some(n) => Restart::OnFailure {
                    max_retries: Some(n.parse().map_err(|_| {
                        ComposeError::yaml(p, format!("{n:?} is not a retry count"))
                    })?),
                },
                None => {
                    return err(
                        p,
                        format!(
                    "{s:?} is not a restart policy (no, always, on-failure[:N], unless-stopped)"
                ),
                    )
                }
            }
        }
    })
}

fn depends_on(v: &Value, p: &str, me: &str) -> Res<BTreeMap<String, DependsCondition>> {
    let mut out = BTreeMap::new();
    match v {
        Value::Sequence(items) => {
            for (i, item) in items.iter().enumerate() {
                out.insert(
                    string(item, &format!("{p}[{i}]"))?,
                    DependsCondition::Started,
                );
            }
        }
        Value::Mapping(m) => {
            for (k, val) in m {
                let dep = key_str(k, p)?;
                let pd = join(p, dep);
                let mut cond = DependsCondition::Started;
                if !val.is_null() {
                    for (ck, cv) in mapping(val, &pd)? {
                        let ckey = key_str(ck, &pd)?;
                        let pc = join(&pd, ckey);
                        match ckey {
                            "condition" => {
                                cond = match string(cv, &pc)?.as_str() {
                                    "service_started" => DependsCondition::Started,
                                    "service_healthy" => DependsCondition::Healthy,
                                    other => return err(&pc, format!("condition {other:?} not supported (service_started, service_healthy)")),
                                }
                            }
                            "required" => {
                                if !boolean(cv, &pc)? {
                                    return err(&pc, "optional dependencies are not supported");
                                }
                            }
                            other => return err(&join(&pd, other), "unsupported key"),
                        }
                    }
                }
                out.insert(dep.to_string(), cond);
            }
        }
        other => {
            return err(
                p,
                format!("expected a list or a mapping, found {}", kind(other)),
            )
        }
    }
    if out.contains_key(me) {
        return err(p, format!("dependency cycle: {me} -> {me}"));
    }
    Ok(out)
}

fn healthcheck(v: &Value, p: &str) -> Res<Healthcheck> {
    let m = mapping(v, p)?;
    let mut test = None;
    let mut disabled = false;
    let (mut interval, mut timeout, mut start_period, mut retries) = (None, None, None, None);
    for (k, val) in m {
        let key = key_str(k, p)?;
        let pp = join(p, key);
        match key {
            "test" => {
                test = match val {
                    Value::String(s) => Some(HealthTest::Shell(s.clone())),
                    Value::Sequence(items) => {
                        let words: Vec<String> = items
                            .iter()
                            .enumerate()
                            .map(|(i, x)| scalar(x, &format!("{pp}[{i}]")))
                            .collect::<Res<_>>()?;
                        match words.split_first() {
                            Some((h, rest)) if h == "NONE" => {
                                disabled = true;
                                let _ = rest;
                                None
                            }
                            Some((h, rest)) if h == "CMD" && !rest.is_empty() => {
                                Some(HealthTest::Cmd(rest.to_vec()))
                            }
                            Some((h, [cmd])) if h == "CMD-SHELL" => {
                                Some(HealthTest::Shell(cmd.clone()))
                            }
                            _ => {
                                return err(
                                    &pp,
                                    "expected [CMD, args…], [CMD-SHELL, command] or [NONE]",
                                )
                            }
                        }
                    }
                    other => {
                        return err(
                            &pp,
                            format!("expected a string or a list, found {}", kind(other)),
                        )
                    }
                }
            }
            "interval" => interval = Some(duration(val, &pp)?),
            "timeout" => timeout = Some(duration(val, &pp)?),
            "start_period" => start_period = Some(duration(val, &pp)?),
            "retries" => {
                retries = Some(
                    val.as_u64()
                        .and_then(|n| u32::try_from(n).ok())
                        .ok_or_else(|| ComposeError::yaml(&pp, "expected a retry count"))?,
                )
            }
            "disable" => disabled = boolean(val, &pp)?,
            other => return err(&join(p, other), "unsupported key"),
        }
    }
    for (d, name) in [(interval, "interval"), (timeout, "timeout")] {
        if d.is_some_and(|d| d < Duration::from_millis(1)) {
            return err(&join(p, name), "must be at least 1ms");
        }
    }
    Ok(if disabled {
        Healthcheck::Disabled
    } else {
        Healthcheck::Check {
            test,
            interval,
            timeout,
            start_period,
            retries,
        }
    })
}

fn networks(v: &Value, p: &str) -> Res<()> {
    match v {
        Value::Sequence(items) => {
            for (i, item) in items.iter().enumerate() {
                let pp = format!("{p}[{i}]");
                if string(item, &pp)? != "default" {
                    return err(&pp, "only the default app network is supported");
                }
            }
        }
        Value::Mapping(m) => {
            for (k, val) in m {
                let name = key_str(k, p)?;
                let pp = join(p, name);
                if name != "default" {
                    return err(&pp, "only the default app network is supported");
                }
                if !(val.is_null() || val.as_mapping().is_some_and(Mapping::is_empty)) {
                    return err(
                        &pp,
                        "network options (aliases, addresses) are not supported",
                    );
                }
            }
        }
        other => {
            return err(
                p,
                format!("expected a list or a mapping, found {}", kind(other)),
            )
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Res<ComposeSpec> {
        ComposeSpec::parse(yaml, &BTreeMap::new(), &ComposeOptions::default())
    }
    fn err_of(yaml: &str) -> String {
        parse(yaml).unwrap_err().to_string()
    }

    #[test]
    fn parses_the_supported_subset() {
        let yaml = r#"
version: "3.8"
x-common: &common
  restart: unless-stopped
services:
  web:
    <<: *common
    image: teegate-test/busybox:latest
    command: busybox httpd -f -p 80 -h "/srv/my www"
    environment:
      - A=1
      - FROM_ENV
      - MISSING
    ports: ["80", "8080:81", "127.0.0.1:9000:82/tcp", 83, {target: 84, published: "8084"}]
    volumes: ["data:/data:ro", "/cache", "/var/run/teegate/teegate.sock:/var/run/teegate.sock"]
    healthcheck:
      test: ["CMD", "wget", "-q", "-O-", "http://127.0.0.1/"]
      interval: 1s
      timeout: 1m30s
      retries: 3
      start_period: 500ms
    networks: [default]
  worker:
    image: busybox
    entrypoint: ["/bin/sh", "-c"]
    command: ["sleep 1000"]
    environment: {B: 2, C: "x", FROM_ENV: null}
    restart: on-failure:5
    depends_on:
      web: {condition: service_healthy}
  last:
    image: busybox
    depends_on: [worker, web]
volumes:
  data: {}
networks:
  default:
"#;
        let env = [("FROM_ENV".to_string(), "e".to_string())]
            .into_iter()
            .collect();
        let spec = ComposeSpec::parse(yaml, &env, &ComposeOptions::default()).unwrap();
        assert_eq!(spec.start_order, ["web", "worker", "last"]);
        let web = &spec.services["web"];
        assert_eq!(web.restart, Restart::UnlessStopped);
        assert_eq!(
            web.command.as_deref().unwrap(),
            ["busybox", "httpd", "-f", "-p", "80", "-h", "/srv/my www"]
        );
        assert_eq!(web.environment.get("A").map(String::as_str), Some("1"));
        assert_eq!(
            web.environment.get("FROM_ENV").map(String::as_str),
            Some("e")
        );
        assert!(!web.environment.contains_key("MISSING"));
        let ports: Vec<u16> = web.ports.iter().map(|p| p.container_port).collect();
        assert_eq!(ports, [80, 81, 82, 83, 84]);
        assert_eq!(web.ports[1].requested_host_port, Some(8080));
        assert_eq!(web.volumes.len(), 3);
        assert!(
            matches!(&web.volumes[0], VolumeMount::Named { name, read_only: true, .. } if name == "data")
        );
        assert!(matches!(&web.volumes[2], VolumeMount::Bind { .. }));
        match web.healthcheck.as_ref().unwrap() {
            Healthcheck::Check {
                test: Some(HealthTest::Cmd(c)),
                timeout,
                start_period,
                retries,
                ..
            } => {
                assert_eq!(c[0], "wget");
                assert_eq!(*timeout, Some(Duration::from_secs(90)));
                assert_eq!(*start_period, Some(Duration::from_millis(500)));
                assert_eq!(*retries, Some(3));
            }
            other => panic!("{other:?}"),
        }
        let worker = &spec.services["worker"];
        assert_eq!(
            worker.restart,
            Restart::OnFailure {
                max_retries: Some(5)
            }
        );
        assert_eq!(worker.depends_on["web"], DependsCondition::Healthy);
        assert_eq!(worker.environment["B"], "2");
        assert_eq!(worker.environment["FROM_ENV"], "e");
        assert_eq!(
            spec.services["last"].depends_on["worker"],
            DependsCondition::Started
        );
    }

    #[test]
    fn refuses_security_sensitive_keys() {
        for (key, val) in [
            ("privileged", "true"),
            ("cap_add", "[SYS_ADMIN]"),
            ("network_mode", "host"),
            ("pid", "host"),
            ("devices", "[/dev/sda]"),
            ("security_opt", "[seccomp=unconfined]"),
        ] {
            let e = err_of(&format!(
                "services:\n  web:\n    image: x\n    {key}: {val}\n"
            ));
            assert!(e.contains(&format!("services.web.{key}: refused")), "{e}");
        }
    }

    #[test]
    fn refuses_unknown_keys_naming_them() {
        let e = err_of("services:\n  web:\n    image: x\n    frobnicate: 1\n");
        assert!(
            e.contains("services.web.frobnicate: unsupported key"),
            "{e}"
        );
        let e = err_of("services:\n  web:\n    image: x\nsecrets: {}\n");
        assert!(e.contains("secrets: unsupported top-level key"), "{e}");
    }

    #[test]
    fn refuses_dependency_cycles() {
        let e = err_of(
            "services:\n  a:\n    image: x\n    depends_on: [b]\n  b:\n    image: x\n    depends_on: [c]\n  c:\n    image: x\n    depends_on: [a]\n",
        );
        assert!(e.contains("dependency cycle: a -> b -> c -> a"), "{e}");
        let e = err_of("services:\n  a:\n    image: x\n    depends_on: [a]\n");
        assert!(e.contains("dependency cycle: a -> a"), "{e}");
        let e = err_of("services:\n  a:\n    image: x\n    depends_on: [nope]\n");
        assert!(
            e.contains("services.a.depends_on.nope: no service named"),
            "{e}"
        );
    }

    #[test]
    fn refuses_bind_mounts_outside_allowed_bases() {
        let e = err_of("services:\n  a:\n    image: x\n    volumes: [\"/etc:/host-etc\"]\n");
        assert!(
            e.contains("services.a.volumes[0]: bind mount of host path /etc refused"),
            "{e}"
        );
        let e = err_of("services:\n  a:\n    image: x\n    volumes: [\"./data:/d\"]\n");
        assert!(e.contains("relative paths are refused"), "{e}");
        let e = err_of(
            "services:\n  a:\n    image: x\n    volumes: [\"/var/run/teegate/../../etc:/d\"]\n",
        );
        assert!(e.contains("must not contain"), "{e}");
        let e = err_of("services:\n  a:\n    image: x\n    volumes: [\"undeclared:/d\"]\n");
        assert!(e.contains("not declared"), "{e}");
    }

    #[test]
    fn refuses_bad_ports() {
        let e = err_of("services:\n  a:\n    image: x\n    ports: [\"0.0.0.0:80:80\"]\n");
        assert!(
            e.contains("services.a.ports[0]: host IP 0.0.0.0 not allowed"),
            "{e}"
        );
        let e = err_of("services:\n  a:\n    image: x\n    ports: [\"80/udp\"]\n");
        assert!(e.contains("tcp only"), "{e}");
        let e = err_of("services:\n  a:\n    image: x\n    ports: [\"70000\"]\n");
        assert!(e.contains("port 70000 out of range"), "{e}");
        let e = err_of("services:\n  a:\n    image: x\n    ports: [\"8000-8010:8000-8010\"]\n");
        assert!(e.contains("ranges"), "{e}");
    }

    #[test]
    fn restart_and_duration_forms() {
        assert_eq!(
            restart("on-failure", "").unwrap(),
            Restart::OnFailure { max_retries: None }
        );
        assert!(restart("sometimes", "").is_err());
        assert_eq!(parse_duration("1h2m3s").unwrap(), Duration::from_secs(3723));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("5 s").is_err());
    }

    #[test]
    fn interpolates_allowed_env() {
        let env = [("TAG".to_string(), "1.2".to_string())]
            .into_iter()
            .collect();
        let spec = ComposeSpec::parse(
            "services:\n  a:\n    image: app:${TAG}\n    command: echo $$HOME ${OTHER:-dflt}\n",
            &env,
            &ComposeOptions::default(),
        )
        .unwrap();
        assert_eq!(spec.services["a"].image, "app:1.2");
        assert_eq!(
            spec.services["a"].command.as_deref().unwrap(),
            ["echo", "$HOME", "dflt"]
        );
    }

    #[test]
    fn shell_words_split_like_sh() {
        assert_eq!(
            shell_words(r#"a 'b c' "d \"e\"" f\ g"#).unwrap(),
            ["a", "b c", "d \"e\"", "f g"]
        );
        assert!(shell_words("'open").is_err());
    }
}
