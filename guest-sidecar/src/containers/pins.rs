//! Images bound by content. Every service's image is pinned:
//! - by digest in the compose (`name@sha256:<64 hex>`): Docker's content id of the image
//!   (the SHA-256 of its config, what `docker image inspect` calls `Id`), or one of its
//!   repository digests;
//! - or by an `images` tarball whose own SHA-256 the app-compose lists: the tarball's
//!   `manifest.json` names the content id of each tag it holds.
//!
//! A bare tag is refused, unless the sidecar runs with `dev_allow_unpinned_images` (then
//! the image is labelled unpinned everywhere). Before a container is made, the image's
//! content id is read back from Docker and must be the pinned one; the container is then
//! created from that id, never the tag, so a retag in between changes nothing.
//!
//! ```text
//!  plan (compose + tarball manifests) ──▶ ImagePin per service
//!  resolve (Docker: load, inspect) ─────▶ ResolvedImage (content id) ──▶ RTMR3 `image` event
//!                                                                     └─▶ create from the id
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::path::PathBuf;

use crate::compose::{ImageTarball, ServiceSpec};

/// Largest `manifest.json` read from an image tarball.
const MAX_MANIFEST: u64 = 1 << 20;
/// Most entries walked in a tarball looking for its manifest.
const MAX_TAR_ENTRIES: usize = 100_000;

/// Docker's content id of an image: SHA-256 of its config.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ImageId(pub [u8; 32]);

impl ImageId {
    /// From `sha256:<64 hex>` (Docker's form) or bare hex.
    pub fn parse(s: &str) -> Option<Self> {
        let hex_part = s.strip_prefix("sha256:").unwrap_or(s);
        if hex_part.len() != 64 {
            return None;
        }
        let mut id = [0u8; 32];
        hex::decode_to_slice(hex_part, &mut id).ok()?;
        Some(ImageId(id))
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for ImageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.to_hex())
    }
}

impl fmt::Debug for ImageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// How one service's image is pinned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImagePin {
    /// `name@sha256:<digest>` in the compose.
    Digest { name: String, digest: ImageId },
    /// A tag held by a listed (SHA-256-checked) tarball, whose manifest names its id.
    Tarball {
        tag: String,
        id: ImageId,
        tarball: PathBuf,
    },
    /// A bare tag, allowed only in development.
    Unpinned { image: String },
}

/// A service's image as measured: its content id read back from Docker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedImage {
    pub id: ImageId,
    pub pinned: bool,
}

impl ResolvedImage {
    /// The RTMR3 `image` event's payload for `service`: `<service>@sha256:<id>`, with
    /// ` (unpinned)` after an image nothing pinned.
    pub fn event_payload(&self, service: &str) -> String {
        if self.pinned {
            format!("{service}@{}", self.id)
        } else {
            format!("{service}@{} (unpinned)", self.id)
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PinError {
    #[error("service {service}: image {image} is not pinned by content: write it as {image}@sha256:<digest>, or list an images tarball (with its sha256) that holds it")]
    Unpinned { service: String, image: String },
    #[error("service {service}: image {image}: {message}")]
    BadDigest {
        service: String,
        image: String,
        message: String,
    },
    #[error("image tarball {path}: {message}")]
    Tarball { path: String, message: String },
}

/// The tags a `docker save` tarball holds, with their content ids, from its
/// `manifest.json` (entries `{"Config": "<hex>.json" | "blobs/sha256/<hex>", "RepoTags": [...]}`).
/// The file's SHA-256 is checked first: the manifest is believed only as part of the file
/// the measured app-compose names.
pub fn tarball_tags(tb: &ImageTarball) -> Result<Vec<(String, ImageId)>, PinError> {
    use sha2::Digest;
    let fail = |message: String| PinError::Tarball {
        path: tb.path.display().to_string(),
        message,
    };
    let mut file = std::fs::File::open(&tb.path).map_err(|e| fail(e.to_string()))?;
    let mut hasher = sha2::Sha256::new();
    std::io::copy(&mut file, &mut hasher).map_err(|e| fail(e.to_string()))?;
    let got: [u8; 32] = hasher.finalize().into();
    if got != tb.sha256.0 {
        return Err(fail(format!(
            "sha256 mismatch: expected {}, found {}",
            tb.sha256.to_hex(),
            hex::encode(got)
        )));
    }
    let file = std::fs::File::open(&tb.path).map_err(|e| fail(e.to_string()))?;
    let mut archive = tar::Archive::new(file);
    let entries = archive.entries().map_err(|e| fail(e.to_string()))?;
    for entry in entries.take(MAX_TAR_ENTRIES) {
        let entry = entry.map_err(|e| fail(e.to_string()))?;
        let is_manifest = entry
            .path()
            .map(|p| p.as_os_str() == "manifest.json")
            .unwrap_or(false);
        if !is_manifest {
            continue;
        }
        if entry.size() > MAX_MANIFEST {
            return Err(fail(format!("manifest.json is over {MAX_MANIFEST} bytes")));
        }
        let mut text = Vec::new();
        entry
            .take(MAX_MANIFEST)
            .read_to_end(&mut text)
            .map_err(|e| fail(e.to_string()))?;
        return parse_manifest(&text).map_err(fail);
    }
    Err(fail(
        "no manifest.json: not a `docker save` tarball, so it names no image by content".into(),
    ))
}

fn parse_manifest(text: &[u8]) -> Result<Vec<(String, ImageId)>, String> {
    #[derive(serde::Deserialize)]
    struct Entry {
        #[serde(rename = "Config")]
        config: String,
        #[serde(rename = "RepoTags", default)]
        repo_tags: Option<Vec<String>>,
    }
    let entries: Vec<Entry> =
        serde_json::from_slice(text).map_err(|e| format!("manifest.json: {e}"))?;
    let mut out = Vec::new();
    for e in entries {
        let name = e.config.rsplit('/').next().unwrap_or(&e.config);
        let hex_part = name.strip_suffix(".json").unwrap_or(name);
        let id = ImageId::parse(hex_part).ok_or_else(|| {
            format!(
                "manifest.json: config {:?} is not named by its digest",
                e.config
            )
        })?;
        for tag in e.repo_tags.unwrap_or_default() {
            out.push((tag, id));
        }
    }
    Ok(out)
}

/// Splits `name@sha256:<hex>`.
fn digest_ref(image: &str) -> Option<(&str, &str)> {
    let (name, digest) = image.rsplit_once('@')?;
    Some((name, digest))
}

/// Each service's pin, from the compose and the listed tarballs' manifests.
pub fn plan<'a>(
    services: impl IntoIterator<Item = &'a ServiceSpec>,
    tarballs: &[ImageTarball],
    allow_unpinned: bool,
) -> Result<BTreeMap<String, ImagePin>, PinError> {
    let mut by_tag: BTreeMap<String, (ImageId, PathBuf)> = BTreeMap::new();
    for tb in tarballs {
        for (tag, id) in tarball_tags(tb)? {
            by_tag.entry(tag).or_insert((id, tb.path.clone()));
        }
    }
    let mut pins = BTreeMap::new();
    for svc in services {
        let pin = if let Some((name, digest)) = digest_ref(&svc.image) {
            let digest = digest
                .strip_prefix("sha256:")
                .and_then(ImageId::parse)
                .ok_or_else(|| PinError::BadDigest {
                    service: svc.name.clone(),
                    image: svc.image.clone(),
                    message: "the digest must be sha256:<64 hex>".into(),
                })?;
            ImagePin::Digest {
                name: name.to_string(),
                digest,
            }
        } else {
            let tag = super::images::with_default_tag(&svc.image);
            match by_tag.get(&tag) {
                Some((id, tarball)) => ImagePin::Tarball {
                    tag,
                    id: *id,
                    tarball: tarball.clone(),
                },
                None if allow_unpinned => ImagePin::Unpinned {
                    image: svc.image.clone(),
                },
                None => {
                    return Err(PinError::Unpinned {
                        service: svc.name.clone(),
                        image: svc.image.clone(),
                    })
                }
            }
        };
        pins.insert(svc.name.clone(), pin);
    }
    Ok(pins)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_names_each_tag_by_its_config_digest() {
        let a = "ab".repeat(32);
        let b = "cd".repeat(32);
        let text = format!(
            r#"[{{"Config":"{a}.json","RepoTags":["x:1","x:latest"],"Layers":[]}},{{"Config":"blobs/sha256/{b}","RepoTags":null}}]"#
        );
        let tags = parse_manifest(text.as_bytes()).unwrap();
        assert_eq!(tags.len(), 2);
        assert_eq!(tags[0], ("x:1".into(), ImageId::parse(&a).unwrap()));
        assert!(parse_manifest(br#"[{"Config":"config.json"}]"#).is_err());
        assert!(parse_manifest(b"not json").is_err());
    }

    #[test]
    fn image_ids_parse_only_full_sha256() {
        let h = "0f".repeat(32);
        assert_eq!(
            ImageId::parse(&format!("sha256:{h}")).unwrap().to_string(),
            format!("sha256:{h}")
        );
        assert!(ImageId::parse("sha256:abc").is_none());
        assert!(ImageId::parse(&"zz".repeat(32)).is_none());
        let r = ResolvedImage {
            id: ImageId::parse(&h).unwrap(),
            pinned: false,
        };
        assert!(r.event_payload("web").ends_with("(unpinned)"));
    }
}
