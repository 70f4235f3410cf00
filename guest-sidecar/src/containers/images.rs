//! Images: the local image if present; else `docker load` of the `images` tarballs (each
//! file's SHA-256 checked before loading, and again while it streams to the daemon, so a
//! file changed in between fails the load); else a registry pull.

use bollard::query_parameters::{CreateImageOptions, ImportImageOptions};
use bytes::Bytes;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;
use tracing::{debug, info, warn};

use std::collections::BTreeMap;

use super::pins::{self, ImageId, ImagePin, ResolvedImage};
use super::{is_not_found, ContainerError, ContainerManager, Result};
use crate::compose::{ImageTarball, ServiceSpec};

const CHUNK: usize = 256 * 1024;

/// `name` → `name:latest` unless it has a tag or digest (a bare name would pull every tag).
pub(crate) fn with_default_tag(image: &str) -> String {
    let last = image.rsplit('/').next().unwrap_or(image);
    if image.contains('@') || last.contains(':') {
        image.to_string()
    } else {
        format!("{image}:latest")
    }
}

async fn file_sha256(path: &std::path::Path) -> std::io::Result<[u8; 32]> {
    let mut f = tokio::fs::File::open(path).await?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = f.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().into())
}

/// Streams the file, hashing it; the last item is an error when the hash differs.
fn verified_stream(
    file: tokio::fs::File,
    expected: [u8; 32],
) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    futures_util::stream::unfold(Some((file, Sha256::new())), move |state| async move {
        let (mut file, mut hasher) = state?;
        let mut buf = vec![0u8; CHUNK];
        match file.read(&mut buf).await {
            Ok(0) => {
                let got: [u8; 32] = hasher.finalize().into();
                if got == expected {
                    None
                } else {
                    Some((
                        Err(std::io::Error::other(format!(
                            "file changed while loading (sha256 now {})",
                            hex::encode(got)
                        ))),
                        None,
                    ))
                }
            }
            Ok(n) => {
                buf.truncate(n);
                hasher.update(&buf);
                Some((Ok(Bytes::from(buf)), Some((file, hasher))))
            }
            Err(e) => Some((Err(e), None)),
        }
    })
}

impl ContainerManager {
    /// The content id Docker holds under `reference` (a tag or `sha256:<id>`), and the
    /// repository digests it knows for it; `None` when absent.
    async fn image_id(
        &self,
        service: &str,
        reference: &str,
    ) -> Result<Option<(ImageId, Vec<String>)>> {
        let t = self.config().step_timeout;
        match tokio::time::timeout(t, self.docker().inspect_image(reference)).await {
            Ok(Ok(img)) => Ok(img
                .id
                .as_deref()
                .and_then(ImageId::parse)
                .map(|id| (id, img.repo_digests.unwrap_or_default()))),
            Ok(Err(e)) if is_not_found(&e) => Ok(None),
            Ok(Err(source)) => Err(ContainerError::Docker {
                step: "inspect image",
                service: service.to_string(),
                source,
            }),
            Err(_) => Err(ContainerError::Timeout {
                step: "inspect image",
                service: service.to_string(),
                after: t,
            }),
        }
    }

    /// Makes each service's pinned image present and reads its content id back from
    /// Docker; an image whose id is not the pinned one is refused naming both. Run before
    /// any container starts, so the ids can be measured first.
    pub async fn resolve_images(&self) -> Result<BTreeMap<String, ResolvedImage>> {
        let app = self.app();
        let plan = pins::plan(
            app.spec.services.values(),
            &app.images,
            self.config().allow_unpinned,
        )?;
        let mut out = BTreeMap::new();
        for (service, pin) in plan {
            let resolved = match &pin {
                ImagePin::Digest { name, digest } => {
                    let mut found = self.digest_present(&service, name, digest).await?;
                    if found.is_none() && !app.images.is_empty() {
                        // Perhaps one of the listed tarballs holds it.
                        for tb in &app.images {
                            self.load_tarball(&service, tb).await?;
                        }
                        found = self.digest_present(&service, name, digest).await?;
                    }
                    if let Some(id) = found {
                        ResolvedImage { id, pinned: true }
                    } else {
                        let found = self.ids_named(&service, name).await?;
                        return Err(ContainerError::ImageMismatch {
                            service,
                            image: name.clone(),
                            expected: digest.to_string(),
                            found: if found.is_empty() {
                                "no image of that name".into()
                            } else {
                                found.join(", ")
                            },
                        });
                    }
                }
                ImagePin::Tarball { tag, id, tarball } => {
                    let here = self.image_id(&service, tag).await?.map(|(i, _)| i);
                    if here != Some(*id) {
                        if let Some(tb) = app.images.iter().find(|t| &t.path == tarball) {
                            self.inner.loaded.lock().await.remove(&tb.path);
                            self.load_tarball(&service, tb).await?;
                        }
                    }
                    match self.image_id(&service, tag).await?.map(|(i, _)| i) {
                        Some(found) if found == *id => ResolvedImage {
                            id: *id,
                            pinned: true,
                        },
                        found => {
                            return Err(ContainerError::ImageMismatch {
                                service,
                                image: tag.clone(),
                                expected: id.to_string(),
                                found: found
                                    .map(|f| f.to_string())
                                    .unwrap_or_else(|| "no such image".into()),
                            })
                        }
                    }
                }
                ImagePin::Unpinned { image } => {
                    let svc = self.service(&service)?.clone();
                    self.ensure_image(&svc).await?;
                    let Some((id, _)) = self.image_id(&service, image).await? else {
                        return Err(ContainerError::ImageMismatch {
                            service,
                            image: image.clone(),
                            expected: "any (unpinned)".into(),
                            found: "no such image".into(),
                        });
                    };
                    warn!(service = %service, image = %image, %id, "image is UNPINNED (dev_allow_unpinned_images): nothing binds it to the measured compose");
                    ResolvedImage { id, pinned: false }
                }
            };
            info!(service = %service, image = %resolved.id, pinned = resolved.pinned, "image resolved by content");
            out.insert(service, resolved);
        }
        *self
            .inner
            .resolved
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(out.clone());
        Ok(out)
    }

    /// What Docker holds under `name` (any tag): `name:tag = sha256:<id>` each, for the
    /// refusal message.
    async fn ids_named(&self, service: &str, name: &str) -> Result<Vec<String>> {
        let mut filters = std::collections::HashMap::new();
        filters.insert("reference".to_string(), vec![name.to_string()]);
        let opts = bollard::query_parameters::ListImagesOptions {
            filters: Some(filters),
            ..Default::default()
        };
        let t = self.config().step_timeout;
        let list = match tokio::time::timeout(t, self.docker().list_images(Some(opts))).await {
            Ok(Ok(l)) => l,
            Ok(Err(source)) => {
                return Err(ContainerError::Docker {
                    step: "list images",
                    service: service.to_string(),
                    source,
                })
            }
            Err(_) => {
                return Err(ContainerError::Timeout {
                    step: "list images",
                    service: service.to_string(),
                    after: t,
                })
            }
        };
        Ok(list
            .into_iter()
            .take(16)
            .map(|i| format!("{} = {}", i.repo_tags.join(" "), i.id))
            .collect())
    }

    /// The content id of the image `name@digest` pins, when Docker holds it: the digest
    /// itself as a content id, or a repository digest of `name` (a pulled image's manifest
    /// digest; its content id is what gets measured and run).
    async fn digest_present(
        &self,
        service: &str,
        name: &str,
        digest: &ImageId,
    ) -> Result<Option<ImageId>> {
        if let Some((id, _)) = self.image_id(service, &digest.to_string()).await? {
            if id == *digest {
                return Ok(Some(id));
            }
        }
        let repo_ref = format!("{name}@{digest}");
        if let Some((id, repo_digests)) = self.image_id(service, &repo_ref).await? {
            if repo_digests.contains(&repo_ref) {
                return Ok(Some(id));
            }
        }
        Ok(None)
    }

    async fn image_present(&self, service: &str, image: &str) -> Result<bool> {
        let t = self.config().step_timeout;
        match tokio::time::timeout(t, self.docker().inspect_image(image)).await {
            Ok(Ok(_)) => Ok(true),
            Ok(Err(e)) if is_not_found(&e) => Ok(false),
            Ok(Err(source)) => Err(ContainerError::Docker {
                step: "inspect image",
                service: service.to_string(),
                source,
            }),
            Err(_) => Err(ContainerError::Timeout {
                step: "inspect image",
                service: service.to_string(),
                after: t,
            }),
        }
    }

    pub(super) async fn ensure_image(&self, svc: &ServiceSpec) -> Result<()> {
        if self.image_present(&svc.name, &svc.image).await? {
            debug!(service = %svc.name, image = %svc.image, "image present locally");
            return Ok(());
        }
        let tarballs = &self.app().images;
        for tb in tarballs {
            self.load_tarball(&svc.name, tb).await?;
            if self.image_present(&svc.name, &svc.image).await? {
                return Ok(());
            }
        }
        let tarball_note = if tarballs.is_empty() {
            "no image tarballs are listed in app-compose.json".to_string()
        } else {
            let names: Vec<String> = tarballs
                .iter()
                .map(|t| t.path.display().to_string())
                .collect();
            format!("not in the listed tarballs ({})", names.join(", "))
        };
        let pull_error = if self.config().allow_pull {
            match self.pull(&svc.name, &svc.image).await {
                Ok(()) if self.image_present(&svc.name, &svc.image).await? => return Ok(()),
                Ok(()) => "the pull finished but the image is still missing".to_string(),
                Err(e) => e,
            }
        } else {
            "registry pulls are turned off".to_string()
        };
        Err(ContainerError::ImageUnavailable {
            service: svc.name.clone(),
            image: svc.image.clone(),
            tarballs: tarball_note,
            pull_error,
        })
    }

    async fn pull(&self, service: &str, image: &str) -> std::result::Result<(), String> {
        let reference = with_default_tag(image);
        info!(service, image = %reference, "pulling image");
        let opts = CreateImageOptions {
            from_image: Some(reference.clone()),
            ..Default::default()
        };
        let mut stream = self.docker().create_image(Some(opts), None, None);
        let t = self.config().pull_timeout;
        let run = async {
            while let Some(item) = stream.next().await {
                let info = item.map_err(|e| e.to_string())?;
                if let Some(status) = info.status {
                    debug!(service, image = %reference, %status, "pull");
                }
            }
            Ok::<(), String>(())
        };
        match tokio::time::timeout(t, run).await {
            Ok(r) => r,
            Err(_) => Err(format!("timed out after {t:?}")),
        }
    }

    async fn load_tarball(&self, service: &str, tb: &ImageTarball) -> Result<()> {
        let mut loaded = self.inner.loaded.lock().await;
        if loaded.contains(&tb.path) {
            return Ok(());
        }
        let path = tb.path.display().to_string();
        let fail = |message: String| ContainerError::ImageTarball {
            service: service.to_string(),
            path: path.clone(),
            message,
        };
        info!(service, tarball = %path, "checking image tarball");
        let t = self.config().load_timeout;
        let got = tokio::time::timeout(t, file_sha256(&tb.path))
            .await
            .map_err(|_| fail(format!("hashing timed out after {t:?}")))?
            .map_err(|e| fail(e.to_string()))?;
        if got != tb.sha256.0 {
            return Err(fail(format!(
                "sha256 mismatch: expected {}, found {}",
                tb.sha256.to_hex(),
                hex::encode(got)
            )));
        }
        let file = tokio::fs::File::open(&tb.path)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let mut stream = self.docker().import_image_stream(
            ImportImageOptions::default(),
            verified_stream(file, tb.sha256.0),
            None,
        );
        let run = async {
            while let Some(item) = stream.next().await {
                let info = item.map_err(|e| e.to_string())?;
                if let Some(s) = info.stream {
                    info!(service, tarball = %path, "{}", s.trim());
                }
            }
            Ok::<(), String>(())
        };
        match tokio::time::timeout(t, run).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(fail(e)),
            Err(_) => {
                warn!(service, tarball = %path, "load timed out");
                return Err(fail(format!("docker load timed out after {t:?}")));
            }
        }
        loaded.insert(tb.path.clone());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_latest_only_when_untagged() {
        assert_eq!(with_default_tag("busybox"), "busybox:latest");
        assert_eq!(with_default_tag("a/b:1"), "a/b:1");
        assert_eq!(with_default_tag("reg:5000/b"), "reg:5000/b:latest");
        assert_eq!(with_default_tag("b@sha256:00"), "b@sha256:00");
    }
}
