//! `app-compose.json`: what a CVM runs, and the identity derived from it.
//!
//! The file is measured as it is: the **compose hash** is the SHA-256 of the file's exact
//! bytes (no re-encoding, no normalisation), and the **app id** is the first 20 bytes of
//! that hash as 40 lowercase hex characters, unless the file names one in `app_id` (the
//! KMS policy then decides whether this compose may use that id).
//!
//! ```text
//! app-compose.json bytes ──SHA-256──▶ ComposeHash ──first 20 bytes──▶ AppId (unless `app_id`)
//!        │
//!        └─ serde (deny_unknown_fields) ──▶ AppCompose ──docker_compose──▶ ComposeSpec (spec.rs)
//! ```
//!
//! # Format
//!
//! dstack's form (a file with `manifest_version`) is read as dstack reads it: see
//! [`dstack`]. teegate's own form:
//!
//! A JSON object; unknown fields are refused, and errors name the field
//! (`exposed_ports[1]: port 70000 out of range (1-65535)`). At most
//! [`MAX_APP_COMPOSE_BYTES`].
//!
//! | field | type | required | meaning |
//! |---|---|---|---|
//! | `name` | string | yes | a human name for the app (1-128 chars), shown in logs and `/info` |
//! | `docker_compose` | string | yes | the docker compose YAML (see [`spec`] for the supported subset) |
//! | `key_provider` | `"kms"` \| `"none"` | yes | where the app's keys come from; measured into RTMR3 |
//! | `kms_url` | string | when `key_provider` is `"kms"` | `https://` URL of the KMS |
//! | `gateway_urls` | array of strings | no (`[]`) | `https://` URLs of the gateways' registration APIs |
//! | `exposed_ports` | array of ports | no (`[]`) | container ports reachable through the RA-TLS front; each must be published by exactly one service |
//! | `allowed_envs` | array of strings | no (`[]`) | env names the encrypted env may set (`[A-Za-z_][A-Za-z0-9_]*`) |
//! | `app_id` | string | no | 40 hex characters (optional `0x`), used instead of the derived id |
//! | `images` | array of `{ "path", "sha256" }` | no (`[]`) | image tarballs (`docker save` format) to `docker load` when an image is not present; the file's SHA-256 (64 hex) is checked first |
//!
//! ```json
//! {
//!   "name": "hello",
//!   "docker_compose": "services:\n  web:\n    image: nginx:1.27\n    ports: [\"80\"]\n",
//!   "key_provider": "kms",
//!   "kms_url": "https://kms.example:8000",
//!   "gateway_urls": ["https://gw.example:8443"],
//!   "exposed_ports": [80],
//!   "allowed_envs": ["API_TOKEN"],
//!   "images": [{ "path": "/images/web.tar", "sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08" }]
//! }
//! ```

pub mod dstack;
pub mod interpolate;
pub mod spec;

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use sha2::{Digest, Sha256};

pub use spec::{
    ComposeOptions, ComposeSpec, DependsCondition, HealthTest, Healthcheck, PortSpec, Restart,
    ServiceSpec, VolumeMount,
};

/// Where dstack apps mount dstack's guest API from (`/var/run/dstack.sock:/var/run/dstack.sock`
/// in their compose): always allowed as a bind-mount source, beside the caller's bases.
pub const DSTACK_SOCKET: &str = "/var/run/dstack.sock";

/// `options` plus [`DSTACK_SOCKET`], so a dstack compose's socket mount is accepted.
pub fn with_dstack_socket(options: &ComposeOptions) -> ComposeOptions {
    let mut o = options.clone();
    o.allowed_bind_bases.push(PathBuf::from(DSTACK_SOCKET));
    o
}

/// Largest `app-compose.json` accepted.
pub const MAX_APP_COMPOSE_BYTES: usize = 1024 * 1024;

/// Why an `app-compose.json` (or the compose YAML in it) was refused. `field` is a path
/// into the document (`exposed_ports[1]`, `services.web.ports[0]`), empty for the whole.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ComposeError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("app-compose.json is {size} bytes, more than the limit of {limit}")]
    TooLarge { size: u64, limit: usize },
    #[error("app-compose.json: {}{message}", field_prefix(field))]
    Json { field: String, message: String },
    #[error("docker_compose: {}{message}", field_prefix(field))]
    Yaml { field: String, message: String },
}

fn field_prefix(field: &str) -> String {
    if field.is_empty() || field == "." {
        String::new()
    } else {
        format!("{field}: ")
    }
}

impl ComposeError {
    pub(crate) fn json(field: impl Into<String>, message: impl Into<String>) -> Self {
        ComposeError::Json {
            field: field.into(),
            message: message.into(),
        }
    }
    pub(crate) fn yaml(field: impl Into<String>, message: impl Into<String>) -> Self {
        ComposeError::Yaml {
            field: field.into(),
            message: message.into(),
        }
    }
    /// The path of the refused field, when there is one.
    pub fn field(&self) -> Option<&str> {
        match self {
            ComposeError::Json { field, .. } | ComposeError::Yaml { field, .. } => Some(field),
            _ => None,
        }
    }
}

/// SHA-256 of the exact bytes of `app-compose.json`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ComposeHash(pub [u8; 32]);

impl ComposeHash {
    pub fn of(bytes: &[u8]) -> Self {
        ComposeHash(Sha256::digest(bytes).into())
    }
    /// 64 lowercase hex characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
    /// The app id derived from this hash: its first 20 bytes.
    pub fn derived_app_id(&self) -> AppId {
        let mut id = [0u8; 20];
        id.copy_from_slice(&self.0[..20]);
        AppId(id)
    }
}

impl fmt::Display for ComposeHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}
impl fmt::Debug for ComposeHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ComposeHash({})", self.to_hex())
    }
}

/// An app id: 20 bytes, written as 40 lowercase hex characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AppId(pub [u8; 20]);

impl AppId {
    /// 40 lowercase hex characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
    /// Parses 40 hex characters, an optional `0x` prefix and either case accepted.
    pub fn parse(s: &str) -> Result<Self, String> {
        let h = s
            .strip_prefix("0x")
            .or_else(|| s.strip_prefix("0X"))
            .unwrap_or(s);
        if h.len() != 40 {
            return Err(format!(
                "app id must be 40 hex characters, got {} characters",
                h.len()
            ));
        }
        let mut id = [0u8; 20];
        hex::decode_to_slice(h, &mut id).map_err(|e| format!("app id is not hex ({e})"))?;
        Ok(AppId(id))
    }
}

impl fmt::Display for AppId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}
impl fmt::Debug for AppId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AppId({})", self.to_hex())
    }
}

impl<'de> Deserialize<'de> for AppId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        AppId::parse(&s).map_err(de::Error::custom)
    }
}

/// A TCP port, 1-65535. Deserializes with an error that says the port is out of range.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct Port(pub u16);

impl<'de> Deserialize<'de> for Port {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Port;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port number (1-65535)")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Port, E> {
                match u16::try_from(v) {
                    Ok(p) if p != 0 => Ok(Port(p)),
                    _ => Err(E::custom(format!("port {v} out of range (1-65535)"))),
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Port, E> {
                match u64::try_from(v) {
                    Ok(u) => self.visit_u64(u),
                    Err(_) => Err(E::custom(format!("port {v} out of range (1-65535)"))),
                }
            }
        }
        d.deserialize_u64(V)
    }
}

/// Where the app's keys come from (measured into RTMR3 as the `key-provider` event).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyProvider {
    /// Keys from the KMS over mutual RA-TLS (`kms_url`).
    Kms,
    /// No keys: the app runs without KMS keys (no encrypted env, no app CA).
    None,
}

impl KeyProvider {
    pub fn as_str(&self) -> &'static str {
        match self {
            KeyProvider::Kms => "kms",
            KeyProvider::None => "none",
        }
    }
}

/// A SHA-256 digest written as 64 hex characters.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Sha256Digest(pub [u8; 32]);

impl Sha256Digest {
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl<'de> Deserialize<'de> for Sha256Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let h = s.strip_prefix("sha256:").unwrap_or(&s);
        let mut out = [0u8; 32];
        if h.len() != 64 {
            return Err(de::Error::custom(format!(
                "sha256 must be 64 hex characters, got {}",
                h.len()
            )));
        }
        hex::decode_to_slice(h, &mut out)
            .map_err(|e| de::Error::custom(format!("sha256 is not hex ({e})")))?;
        Ok(Sha256Digest(out))
    }
}

/// An image tarball to `docker load` when a service's image is not present locally.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageTarball {
    /// Absolute path of the tarball (`docker save` format).
    pub path: PathBuf,
    /// SHA-256 of the file, checked before (and while) loading it.
    pub sha256: Sha256Digest,
}

/// A parsed, validated `app-compose.json`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppCompose {
    pub name: String,
    pub docker_compose: String,
    pub key_provider: KeyProvider,
    #[serde(default)]
    pub kms_url: Option<String>,
    #[serde(default)]
    pub gateway_urls: Vec<String>,
    #[serde(default)]
    pub exposed_ports: Vec<Port>,
    #[serde(default)]
    pub allowed_envs: Vec<String>,
    #[serde(default)]
    pub app_id: Option<AppId>,
    #[serde(default)]
    pub images: Vec<ImageTarball>,
    /// Set when the file is in dstack's form ([`dstack`]).
    #[serde(skip)]
    pub dstack: Option<dstack::DstackOptions>,
}

/// An `app-compose.json` with the identity derived from its bytes.
#[derive(Clone, Debug)]
pub struct LoadedAppCompose {
    pub compose: AppCompose,
    /// SHA-256 of the file's exact bytes.
    pub compose_hash: ComposeHash,
    /// `compose.app_id` when named, else derived from the compose hash.
    pub app_id: AppId,
    /// Whether `app_id` came from the file (`true`) or from the hash (`false`).
    pub app_id_named: bool,
    /// The file's exact bytes (what `compose_hash` hashes), for anyone who audits it.
    pub bytes: Vec<u8>,
}

impl LoadedAppCompose {
    /// Reads the file (at most [`MAX_APP_COMPOSE_BYTES`]) and parses it.
    pub fn read(path: &Path) -> Result<Self, ComposeError> {
        use std::io::Read;
        let read_err = |source| ComposeError::Read {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(read_err)?;
        let mut bytes = Vec::new();
        file.take(MAX_APP_COMPOSE_BYTES as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(read_err)?;
        if bytes.len() > MAX_APP_COMPOSE_BYTES {
            let size = std::fs::metadata(path)
                .map(|m| m.len())
                .unwrap_or(bytes.len() as u64);
            return Err(ComposeError::TooLarge {
                size,
                limit: MAX_APP_COMPOSE_BYTES,
            });
        }
        Self::from_bytes(&bytes)
    }

    /// Parses `app-compose.json` from its exact bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ComposeError> {
        if bytes.len() > MAX_APP_COMPOSE_BYTES {
            return Err(ComposeError::TooLarge {
                size: bytes.len() as u64,
                limit: MAX_APP_COMPOSE_BYTES,
            });
        }
        let compose_hash = ComposeHash::of(bytes);
        let dstack_form = serde_json::from_slice::<serde_json::Value>(bytes)
            .is_ok_and(|v| dstack::is_dstack_form(&v));
        let compose: AppCompose = if dstack_form {
            dstack::parse(bytes)?
        } else {
            let de = &mut serde_json::Deserializer::from_slice(bytes);
            serde_path_to_error::deserialize(de).map_err(|e| {
                let field = e.path().to_string();
                let inner = e.into_inner();
                // serde_json appends " at line L column C"; keep it, it helps find the spot.
                ComposeError::json(field, inner.to_string())
            })?
        };
        compose.validate()?;
        let (app_id, app_id_named) = match compose.app_id {
            Some(id) => (id, true),
            None => (compose_hash.derived_app_id(), false),
        };
        Ok(LoadedAppCompose {
            compose,
            compose_hash,
            app_id,
            app_id_named,
            bytes: bytes.to_vec(),
        })
    }
}

fn check_https_url(field: &str, url: &str) -> Result<(), ComposeError> {
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| ComposeError::json(field, format!("{url:?} is not an https:// URL")))?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(ComposeError::json(
            field,
            format!("{url:?} has no valid host"),
        ));
    }
    Ok(())
}

/// `[A-Za-z_][A-Za-z0-9_]*`, the names compose interpolation and env files accept.
pub(crate) fn is_env_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl AppCompose {
    /// The KMS pin of a dstack-form file (`key_provider_id`), empty when not pinned.
    pub fn key_provider_id(&self) -> &[u8] {
        self.dstack
            .as_ref()
            .map(|d| d.key_provider_id.as_slice())
            .unwrap_or_default()
    }

    /// Field-level checks serde cannot express. Also parses the compose YAML (with no
    /// env values) so a bad compose is refused at load, and checks `exposed_ports`
    /// against the ports the services publish.
    pub fn validate(&self) -> Result<(), ComposeError> {
        if self.name.trim().is_empty() || self.name.chars().count() > 128 {
            return Err(ComposeError::json(
                "name",
                "must be 1-128 characters, not blank",
            ));
        }
        match (self.key_provider, &self.kms_url) {
            // dstack's form names no KMS URL: the sidecar's `kms_url` is used.
            (KeyProvider::Kms, None) if self.dstack.is_some() => {}
            (KeyProvider::Kms, None) => {
                return Err(ComposeError::json(
                    "kms_url",
                    "required when key_provider is \"kms\"",
                ))
            }
            (KeyProvider::Kms, Some(u)) => check_https_url("kms_url", u)?,
            (KeyProvider::None, Some(_)) => {
                return Err(ComposeError::json(
                    "kms_url",
                    "must be absent when key_provider is \"none\"",
                ))
            }
            (KeyProvider::None, None) => {}
        }
        for (i, u) in self.gateway_urls.iter().enumerate() {
            check_https_url(&format!("gateway_urls[{i}]"), u)?;
        }
        let mut seen = BTreeSet::new();
        for (i, p) in self.exposed_ports.iter().enumerate() {
            if !seen.insert(p.0) {
                return Err(ComposeError::json(
                    format!("exposed_ports[{i}]"),
                    format!("port {} listed twice", p.0),
                ));
            }
        }
        let mut names = BTreeSet::new();
        for (i, n) in self.allowed_envs.iter().enumerate() {
            if !is_env_name(n) {
                return Err(ComposeError::json(
                    format!("allowed_envs[{i}]"),
                    format!("{n:?} is not an env name ([A-Za-z_][A-Za-z0-9_]*)"),
                ));
            }
            if !names.insert(n) {
                return Err(ComposeError::json(
                    format!("allowed_envs[{i}]"),
                    format!("{n:?} listed twice"),
                ));
            }
        }
        for (i, img) in self.images.iter().enumerate() {
            if !img.path.is_absolute() {
                return Err(ComposeError::json(
                    format!("images[{i}].path"),
                    format!("{} is not an absolute path", img.path.display()),
                ));
            }
        }
        // The env is not known yet: required variables may be unset here.
        let spec = ComposeSpec::parse_with(
            &self.docker_compose,
            &Default::default(),
            &with_dstack_socket(&ComposeOptions::default()),
            false,
        )?;
        spec.check_exposed_ports(&self.exposed_ports)?;
        Ok(())
    }

    /// Parses `docker_compose`, interpolating `${NAME}` from `env`, and checks
    /// `exposed_ports` against it. Only names listed in `allowed_envs` are taken from
    /// `env`; any other name is unset. The boot flow calls this once the env is decrypted.
    pub fn compose_spec(
        &self,
        env: &std::collections::BTreeMap<String, String>,
        options: &ComposeOptions,
    ) -> Result<ComposeSpec, ComposeError> {
        let allowed: std::collections::BTreeMap<String, String> = env
            .iter()
            .filter(|(k, _)| self.allowed_envs.iter().any(|a| a == *k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let spec =
            ComposeSpec::parse(&self.docker_compose, &allowed, &with_dstack_socket(options))?;
        spec.check_exposed_ports(&self.exposed_ports)?;
        Ok(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = r#"{"name":"t","docker_compose":"services:\n  web:\n    image: busybox\n    ports: [\"80\"]\n","key_provider":"none","exposed_ports":[80]}"#;

    fn err(json: &str) -> String {
        LoadedAppCompose::from_bytes(json.as_bytes())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn hash_and_app_id_come_from_exact_bytes() {
        let a = LoadedAppCompose::from_bytes(MIN.as_bytes()).unwrap();
        let digest: [u8; 32] = Sha256::digest(MIN.as_bytes()).into();
        assert_eq!(a.compose_hash.0, digest);
        assert_eq!(a.app_id.to_hex(), hex::encode(&digest[..20]));
        assert!(!a.app_id_named);
        // One more space changes both.
        let b = LoadedAppCompose::from_bytes(format!("{MIN} ").as_bytes()).unwrap();
        assert_ne!(a.compose_hash, b.compose_hash);
        assert_ne!(a.app_id, b.app_id);
    }

    #[test]
    fn named_app_id_is_used() {
        let j = MIN.replacen(
            '{',
            r#"{"app_id":"0xAABBCCDDEEFF00112233445566778899aabbccdd","#,
            1,
        );
        let a = LoadedAppCompose::from_bytes(j.as_bytes()).unwrap();
        assert!(a.app_id_named);
        assert_eq!(
            a.app_id.to_hex(),
            "aabbccddeeff00112233445566778899aabbccdd"
        );
        let bad = MIN.replacen('{', r#"{"app_id":"abc","#, 1);
        assert!(
            err(&bad).contains("app_id: app id must be 40 hex"),
            "{}",
            err(&bad)
        );
    }

    #[test]
    fn rejects_missing_field() {
        let e = err(r#"{"name":"t","key_provider":"none"}"#);
        assert!(e.contains("missing field `docker_compose`"), "{e}");
    }

    #[test]
    fn rejects_out_of_range_port_naming_its_index() {
        let j = MIN.replace(r#""exposed_ports":[80]"#, r#""exposed_ports":[80,70000]"#);
        let e = err(&j);
        assert!(
            e.contains("exposed_ports[1]: port 70000 out of range"),
            "{e}"
        );
        let j = MIN.replace(r#""exposed_ports":[80]"#, r#""exposed_ports":[0]"#);
        assert!(err(&j).contains("exposed_ports[0]: port 0 out of range"));
    }

    #[test]
    fn rejects_unknown_field() {
        let j = MIN.replacen('{', r#"{"privileged":true,"#, 1);
        let e = err(&j);
        assert!(e.contains("unknown field `privileged`"), "{e}");
    }

    #[test]
    fn rejects_exposed_port_not_published() {
        let j = MIN.replace(r#""exposed_ports":[80]"#, r#""exposed_ports":[8080]"#);
        let e = err(&j);
        assert!(e.contains("exposed_ports") && e.contains("8080"), "{e}");
    }

    #[test]
    fn kms_provider_needs_https_url() {
        let j = MIN.replace(r#""key_provider":"none""#, r#""key_provider":"kms""#);
        assert!(err(&j).contains("kms_url: required"));
        let j = MIN.replace(
            r#""key_provider":"none""#,
            r#""key_provider":"kms","kms_url":"http://x""#,
        );
        assert!(err(&j).contains("kms_url: \"http://x\" is not an https:// URL"));
        let j = MIN.replace(r#""key_provider":"none""#, r#""key_provider":"tpm""#);
        assert!(err(&j).contains("key_provider: unknown variant `tpm`"));
    }

    #[test]
    fn rejects_bad_env_names_and_image_digests() {
        let j = MIN.replacen('{', r#"{"allowed_envs":["OK","1BAD"],"#, 1);
        assert!(err(&j).contains("allowed_envs[1]"));
        let j = MIN.replacen('{', r#"{"images":[{"path":"/x.tar","sha256":"abcd"}],"#, 1);
        assert!(
            err(&j).contains("images[0].sha256: sha256 must be 64 hex"),
            "{}",
            err(&j)
        );
    }

    #[test]
    fn required_variables_are_checked_only_when_the_env_is_given() {
        let j = MIN
            .replace("image: busybox", "image: busybox:${TAG:?set TAG}")
            .replacen('{', r#"{"allowed_envs":["TAG"],"#, 1);
        let a = LoadedAppCompose::from_bytes(j.as_bytes()).unwrap();
        let opts = ComposeOptions::default();
        let e = a
            .compose
            .compose_spec(&Default::default(), &opts)
            .unwrap_err();
        assert!(e.to_string().contains("set TAG"), "{e}");
        let env = [
            ("TAG".to_string(), "1".to_string()),
            ("OTHER".to_string(), "x".to_string()),
        ]
        .into_iter()
        .collect();
        let spec = a.compose.compose_spec(&env, &opts).unwrap();
        assert_eq!(spec.services["web"].image, "busybox:1");
    }

    #[test]
    fn rejects_oversize_file() {
        let big = vec![b' '; MAX_APP_COMPOSE_BYTES + 1];
        assert!(matches!(
            LoadedAppCompose::from_bytes(&big),
            Err(ComposeError::TooLarge { .. })
        ));
    }

    #[test]
    fn compose_yaml_errors_are_reported_with_their_path() {
        let j = MIN.replace("image: busybox", "image: busybox\\n    privileged: true");
        let e = err(&j);
        assert!(e.contains("services.web.privileged"), "{e}");
    }
}
