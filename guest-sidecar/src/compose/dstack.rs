//! dstack's `app-compose.json`, read with dstack's meaning so a dstack app boots unchanged
//! and keeps its app id (the compose hash is still SHA-256 of the file's exact bytes, and
//! the app id its first 20 bytes, as dstack derives them).
//!
//! A file is in dstack's form when it has `manifest_version`. Accepted fields:
//!
//! | field | meaning here |
//! |---|---|
//! | `manifest_version` | 1, 2 or 3 (number or string) |
//! | `name` | the app's name |
//! | `runner` | must be `docker-compose` |
//! | `docker_compose_file` | the compose YAML (its text, as in dstack) |
//! | `kms_enabled`, `key_provider` (`kms` \| `none`), `key_provider_id` | where keys come from; `key_provider` wins, as in dstack. `key_provider_id` (hex) pins the KMS: the SubjectPublicKeyInfo (DER) of its root CA, measured in the `key-provider` event and checked once the KMS answers |
//! | `gateway_enabled` (or the old `tproxy_enabled`) | whether the app is reachable through gateways: then every container port published by exactly one service is exposed, unless `exposed_ports` lists them |
//! | `allowed_envs` | env names the encrypted env may set |
//! | `public_logs`, `public_sysinfo`, `public_tcbinfo` | what may be shown to outsiders; teegate publishes no container logs or system info, so `true` only permits |
//! | `secure_time` | accepted; teegate takes the time from the CVM's clock (certificate validity only) |
//! | `no_instance_id` | only `false`: teegate names every instance (routing, certificates) |
//! | `features` | deprecated in dstack; ignored |
//! | `exposed_ports`, `gateway_urls`, `kms_url` | teegate's own fields, also allowed here |
//!
//! Refused, with the reason: `pre_launch_script` and a non-empty `init_script` (teegate
//! runs no scripts in the CVM; dstack measures them into RTMR3 before running them, and an
//! unmeasured script would run unattested code), a `runner` other than `docker-compose`,
//! `key_provider` `local`/`tpm` and `local_key_provider_enabled`, `event_log_version` 2
//! (teegate writes dstack's V1 digests), a non-zero `swap_size`, and unknown fields.

use serde::{Deserialize, Deserializer};

use super::{AppCompose, ComposeError, ComposeOptions, ComposeSpec, KeyProvider, Port};

/// What a dstack-form file sets beyond teegate's own [`AppCompose`] fields.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DstackOptions {
    pub manifest_version: String,
    pub gateway_enabled: bool,
    pub public_logs: bool,
    pub public_sysinfo: bool,
    pub public_tcbinfo: bool,
    pub secure_time: bool,
    /// The pinned KMS root CA public key (SPKI DER); empty when not pinned.
    pub key_provider_id: Vec<u8>,
}

fn yes() -> bool {
    true
}

fn manifest_version<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    let text = match &v {
        serde_json::Value::Number(n) => n.to_string(),
        serde_json::Value::String(s) => s.clone(),
        _ => String::new(),
    };
    match text.as_str() {
        "1" | "2" | "3" => Ok(text),
        _ => Err(serde::de::Error::custom(format!(
            "manifest_version {v} is not one teegate reads (1, 2 or 3)"
        ))),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(deserialize_with = "manifest_version")]
    manifest_version: String,
    name: String,
    runner: String,
    #[serde(default)]
    docker_compose_file: Option<String>,
    #[serde(default)]
    kms_enabled: bool,
    #[serde(default)]
    gateway_enabled: bool,
    #[serde(default)]
    tproxy_enabled: bool,
    #[serde(default)]
    public_logs: bool,
    #[serde(default)]
    public_sysinfo: bool,
    #[serde(default = "yes")]
    public_tcbinfo: bool,
    #[serde(default)]
    allowed_envs: Vec<String>,
    #[serde(default)]
    no_instance_id: bool,
    #[serde(default = "yes")]
    secure_time: bool,
    #[serde(default)]
    key_provider: Option<String>,
    #[serde(default)]
    key_provider_id: String,
    #[serde(default)]
    local_key_provider_enabled: bool,
    #[serde(default)]
    #[allow(dead_code)]
    features: Vec<String>,
    // Known to dstack, refused below with a reason rather than as unknown fields.
    #[serde(default)]
    pre_launch_script: Option<String>,
    #[serde(default)]
    init_script: Option<serde_json::Value>,
    #[serde(default)]
    event_log_version: Option<u32>,
    #[serde(default)]
    swap_size: Option<serde_json::Value>,
    // teegate's own fields.
    #[serde(default)]
    exposed_ports: Option<Vec<Port>>,
    #[serde(default)]
    gateway_urls: Vec<String>,
    #[serde(default)]
    kms_url: Option<String>,
}

fn refuse(field: &str, why: &str) -> ComposeError {
    ComposeError::json(field, why)
}

/// Whether `json` is an object with `manifest_version` (dstack's form).
pub(crate) fn is_dstack_form(json: &serde_json::Value) -> bool {
    json.get("manifest_version").is_some()
}

/// Parses dstack's form into teegate's [`AppCompose`] (not yet validated).
pub(crate) fn parse(bytes: &[u8]) -> Result<AppCompose, ComposeError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let raw: Raw = serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        ComposeError::json(field, e.into_inner().to_string())
    })?;
    if raw.pre_launch_script.is_some() {
        return Err(refuse("pre_launch_script", "teegate runs no scripts in the CVM: a pre-launch script would run code no event in RTMR3 attests; do its work in a container"));
    }
    let scripts = match &raw.init_script {
        None | Some(serde_json::Value::Null) => false,
        Some(serde_json::Value::String(s)) => !s.is_empty(),
        Some(serde_json::Value::Array(a)) => !a.is_empty(),
        Some(_) => true,
    };
    if scripts {
        return Err(refuse("init_script", "teegate runs no init scripts (dstack measures each into RTMR3 as `init-script-hash` before running it; teegate has no measured script runner): do this work in a container"));
    }
    if raw.runner != "docker-compose" {
        return Err(refuse(
            "runner",
            &format!(
                "{:?} is not supported: teegate runs \"docker-compose\" apps only",
                raw.runner
            ),
        ));
    }
    if raw.event_log_version.is_some_and(|v| v != 1) {
        return Err(refuse(
            "event_log_version",
            "teegate writes dstack's V1 event digests only",
        ));
    }
    let swap = match &raw.swap_size {
        None | Some(serde_json::Value::Null) => false,
        Some(serde_json::Value::Number(n)) => n.as_u64() != Some(0),
        Some(serde_json::Value::String(s)) => !matches!(s.trim(), "" | "0"),
        Some(_) => true,
    };
    if swap {
        return Err(refuse("swap_size", "teegate sets up no swap in the CVM"));
    }
    if raw.local_key_provider_enabled {
        return Err(refuse(
            "local_key_provider_enabled",
            "teegate's only key provider is the KMS (use kms_enabled)",
        ));
    }
    if raw.no_instance_id {
        return Err(refuse("no_instance_id", "teegate gives every instance an id (gateways route to instances by it and certificates name it)"));
    }
    let key_provider = match raw.key_provider.as_deref() {
        None => {
            if raw.kms_enabled {
                KeyProvider::Kms
            } else {
                KeyProvider::None
            }
        }
        Some("kms") => KeyProvider::Kms,
        Some("none") => KeyProvider::None,
        Some(other) => {
            return Err(refuse(
                "key_provider",
                &format!(
                    "{other:?} is not supported: teegate's key providers are \"kms\" and \"none\""
                ),
            ))
        }
    };
    let key_provider_id = hex::decode(raw.key_provider_id.trim_start_matches("0x"))
        .map_err(|_| refuse("key_provider_id", "must be hex"))?;
    if !key_provider_id.is_empty() && key_provider != KeyProvider::Kms {
        return Err(refuse("key_provider_id", "pins a KMS, but no KMS is used"));
    }
    let docker_compose = raw.docker_compose_file.ok_or_else(|| {
        refuse(
            "docker_compose_file",
            "required with runner \"docker-compose\"",
        )
    })?;
    let gateway_enabled = raw.gateway_enabled || raw.tproxy_enabled;
    let exposed_ports = match raw.exposed_ports {
        Some(p) => p,
        None if gateway_enabled => published_ports(&docker_compose)?,
        None => Vec::new(),
    };
    Ok(AppCompose {
        name: raw.name,
        docker_compose,
        key_provider,
        kms_url: raw.kms_url,
        gateway_urls: raw.gateway_urls,
        exposed_ports,
        allowed_envs: raw.allowed_envs,
        app_id: None,
        images: Vec::new(),
        dstack: Some(DstackOptions {
            manifest_version: raw.manifest_version,
            gateway_enabled,
            public_logs: raw.public_logs,
            public_sysinfo: raw.public_sysinfo,
            public_tcbinfo: raw.public_tcbinfo,
            secure_time: raw.secure_time,
            key_provider_id,
        }),
    })
}

/// dstack's gateway reaches any port a service publishes; teegate's front needs them
/// listed, so a dstack app exposes each container port exactly one service publishes.
fn published_ports(docker_compose: &str) -> Result<Vec<Port>, ComposeError> {
    let spec = ComposeSpec::parse_with(
        docker_compose,
        &Default::default(),
        &super::with_dstack_socket(&ComposeOptions::default()),
        false,
    )?;
    let mut ports: Vec<u16> = spec
        .services
        .values()
        .flat_map(|s| s.ports.iter().map(|p| p.container_port))
        .filter(|p| spec.service_for_port(*p).is_some())
        .collect();
    ports.sort_unstable();
    ports.dedup();
    Ok(ports.into_iter().map(Port).collect())
}

/// dstack's `key_provider_id` pin: the KMS root CA's public key (SPKI DER), as dstack
/// pins its KMS. Checked before any released key is used.
pub fn check_key_provider_id(pin: &[u8], root_der: Option<&[u8]>) -> Result<(), String> {
    if pin.is_empty() {
        return Ok(());
    }
    let root = root_der.ok_or("key_provider_id is set but the KMS sent no root CA")?;
    let (_, cert) =
        x509_parser::parse_x509_certificate(root).map_err(|e| format!("KMS root CA: {e}"))?;
    let spki = cert.tbs_certificate.subject_pki.raw;
    if spki != pin {
        return Err(format!(
            "the KMS's root CA public key {} is not the app's key_provider_id {}",
            hex::encode(spki),
            hex::encode(pin)
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::LoadedAppCompose;
    use super::*;
    use sha2::{Digest, Sha256};

    /// The shape dstack's tooling writes (Phala Cloud's defaults).
    const DSTACK: &str = r#"{
  "manifest_version": 2,
  "name": "hello-dstack",
  "runner": "docker-compose",
  "docker_compose_file": "services:\n  web:\n    image: nginx:1.27\n    ports: [\"8080:80\"]\n    volumes: [\"/var/run/dstack.sock:/var/run/dstack.sock\"]\n  worker:\n    image: busybox\n",
  "kms_enabled": true,
  "gateway_enabled": true,
  "public_logs": true,
  "public_sysinfo": true,
  "public_tcbinfo": true,
  "local_key_provider_enabled": false,
  "key_provider_id": "",
  "allowed_envs": ["API_TOKEN"],
  "no_instance_id": false,
  "secure_time": false,
  "features": ["kms", "tproxy-net"]
}"#;

    fn load(json: &str) -> Result<LoadedAppCompose, String> {
        LoadedAppCompose::from_bytes(json.as_bytes()).map_err(|e| e.to_string())
    }

    #[test]
    fn a_dstack_compose_boots_with_the_app_id_dstack_gives_it() {
        let l = load(DSTACK).unwrap();
        let digest: [u8; 32] = Sha256::digest(DSTACK.as_bytes()).into();
        assert_eq!(l.compose_hash.0, digest);
        assert_eq!(l.app_id.to_hex(), hex::encode(&digest[..20]));
        let c = &l.compose;
        assert_eq!(c.name, "hello-dstack");
        assert_eq!(c.key_provider, KeyProvider::Kms);
        assert_eq!(c.exposed_ports, vec![Port(80)], "the published port");
        assert_eq!(c.allowed_envs, ["API_TOKEN"]);
        let d = c.dstack.as_ref().unwrap();
        assert!(d.gateway_enabled && d.public_logs && !d.secure_time);
        assert!(c.key_provider_id().is_empty());
        // The socket mount dstack apps carry is accepted; other host paths still are not.
        let spec = c
            .compose_spec(&Default::default(), &ComposeOptions::default())
            .unwrap();
        assert!(!spec.services["web"].volumes.is_empty());
        let j = DSTACK.replace("/var/run/dstack.sock:", "/var/run/docker.sock:");
        assert!(load(&j)
            .unwrap_err()
            .contains("bind mount of host path /var/run/docker.sock refused"));
    }

    #[test]
    fn key_provider_wins_over_kms_enabled_and_pins_are_hex() {
        let j = DSTACK
            .replace(
                r#""kms_enabled": true"#,
                r#""kms_enabled": true, "key_provider": "none""#,
            )
            .replace(r#""key_provider_id": """#, r#""key_provider_id": "00""#);
        assert!(load(&j)
            .unwrap_err()
            .contains("key_provider_id: pins a KMS, but no KMS is used"));
        let j = DSTACK
            .replace(
                r#""kms_enabled": true"#,
                r#""kms_enabled": false, "key_provider": "kms""#,
            )
            .replace(r#""key_provider_id": """#, r#""key_provider_id": "0xab01""#);
        let l = load(&j).unwrap();
        assert_eq!(l.compose.key_provider, KeyProvider::Kms);
        assert_eq!(l.compose.key_provider_id(), [0xab, 0x01]);
        let j = DSTACK.replace(r#""gateway_enabled": true"#, r#""gateway_enabled": false"#);
        assert!(load(&j).unwrap().compose.exposed_ports.is_empty());
    }

    #[test]
    fn refuses_what_teegate_does_not_do_with_the_reason() {
        let with = |extra: &str| DSTACK.replacen('{', &format!("{{{extra},"), 1);
        for (json, want) in [
            (
                with(r#""pre_launch_script": "echo hi""#),
                "pre_launch_script: teegate runs no scripts",
            ),
            (
                with(r#""init_script": ["echo hi"]"#),
                "init_script: teegate runs no init scripts",
            ),
            (
                with(r#""init_script": "echo hi""#),
                "init_script: teegate runs no init scripts",
            ),
            (
                DSTACK.replace(r#""runner": "docker-compose""#, r#""runner": "bash""#),
                "runner: \"bash\" is not supported",
            ),
            (
                with(r#""key_provider": "tpm""#),
                "key_provider: \"tpm\" is not supported",
            ),
            (
                DSTACK.replace(r#""no_instance_id": false"#, r#""no_instance_id": true"#),
                "no_instance_id: teegate gives every instance an id",
            ),
            (
                with(r#""event_log_version": 2"#),
                "event_log_version: teegate writes dstack's V1",
            ),
            (
                with(r#""swap_size": "4G""#),
                "swap_size: teegate sets up no swap",
            ),
            (
                with(r#""docker_config": {}"#),
                "unknown field `docker_config`",
            ),
            (
                DSTACK.replace(r#""manifest_version": 2"#, r#""manifest_version": 9"#),
                "manifest_version 9 is not one teegate reads",
            ),
            (
                DSTACK.replace(r#""docker_compose_file""#, r#""docker_compose""#),
                "unknown field `docker_compose`",
            ),
        ] {
            let e = load(&json).unwrap_err();
            assert!(e.contains(want), "{want}: {e}");
        }
        // An empty init_script is no script.
        load(&with(r#""init_script": []"#)).unwrap();
    }
}
