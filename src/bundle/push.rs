//! Pushing a built bundle to a registry: blobs first (each HEADed before uploading), then the
//! manifest under each tag. A tag is written only after every blob it needs is in the
//! registry, so a failure at any point leaves no tag pointing at an incomplete image, and a
//! tag that already points at the bundle is not written again.

use std::future::Future;
use std::time::Duration;

use oci_client::errors::OciDistributionError;

use super::build::{Blob, BuiltBundle};
use super::error::BundleError;
use super::layout;
use super::target::{Location, is_valid_tag};
use crate::registry::{Reference, Registry, RegistryError};

/// What a push did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    /// `REPO@sha256:…` (or `oci-layout:DIR@sha256:…`).
    pub image: String,
    /// Every tag now pointing at the bundle, the `sha256-<hex>.imgpkg` tag last.
    pub tags: Vec<String>,
    /// Digests of the blobs that had to be uploaded (empty when the registry had them all).
    pub uploaded: Vec<String>,
    /// Tags that were written (empty when every tag already pointed at the bundle).
    pub written_tags: Vec<String>,
    /// Bytes of manifest, config and layer.
    pub size: u64,
}

/// Something worth telling a person watching a long push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushEvent {
    /// The destination already has this blob.
    BlobExists {
        digest: String,
        size: u64,
    },
    Uploading {
        digest: String,
        size: u64,
    },
    Uploaded {
        digest: String,
        size: u64,
    },
    Tagged {
        tag: String,
    },
    /// A request failed in a way that may pass; it is tried again after `delay`.
    Retrying {
        what: String,
        error: String,
        delay: Duration,
    },
}

/// How hard to try.
pub struct PushOptions<'a> {
    /// Attempts per request when the failure is retryable (connection refused, 5xx, timeouts).
    pub attempts: u32,
    /// Delay before the first retry; doubled for each further one.
    pub backoff: Duration,
    /// Receives progress events.
    pub progress: Option<&'a (dyn Fn(&PushEvent) + Send + Sync)>,
}

impl Default for PushOptions<'_> {
    fn default() -> Self {
        PushOptions {
            attempts: 4,
            backoff: Duration::from_millis(250),
            progress: None,
        }
    }
}

impl PushOptions<'_> {
    fn emit(&self, event: PushEvent) {
        if let Some(progress) = self.progress {
            progress(&event);
        }
    }
}

/// The tag imgpkg also gives every bundle, so it stays reachable by a tag after the user's
/// tags move on (some registries garbage-collect untagged manifests).
pub fn digest_tag(digest: &str) -> String {
    format!("{}.imgpkg", digest.replacen(':', "-", 1))
}

/// Pushes `bundle` to `location` under `tags` (plus `sha256-<hex>.imgpkg`). `location`'s own
/// tag, if any, is not implied: pass it in `tags`.
pub async fn push(
    registry: &Registry,
    bundle: &BuiltBundle,
    location: &Location,
    tags: &[String],
    options: &PushOptions<'_>,
) -> Result<Pushed, BundleError> {
    let mut all_tags: Vec<String> = Vec::with_capacity(tags.len() + 1);
    for tag in tags {
        if !is_valid_tag(tag) {
            return Err(BundleError::Reference {
                reference: tag.clone(),
                reason: "a tag is 1-128 of [A-Za-z0-9_.-], not starting with '.' or '-'".into(),
            });
        }
        if !all_tags.contains(tag) {
            all_tags.push(tag.clone());
        }
    }
    let own = digest_tag(bundle.digest());
    all_tags.retain(|t| *t != own);
    all_tags.push(own);

    let (uploaded, written_tags) = match location {
        Location::Layout(layout_ref) => {
            let dir = layout_ref.dir.clone();
            let bundle = bundle.clone();
            let tags = all_tags.clone();
            tokio::task::spawn_blocking(move || layout::write(&dir, &bundle, &tags))
                .await
                .map_err(|e| BundleError::Invalid(format!("writing the OCI layout: {e}")))??
        }
        Location::Registry(reference) => {
            push_to_registry(registry, bundle, reference, &all_tags, options).await?
        }
    };
    Ok(Pushed {
        image: format!("{}@{}", location.repository(), bundle.digest()),
        tags: all_tags,
        uploaded,
        written_tags,
        size: bundle.size(),
    })
}

async fn push_to_registry(
    registry: &Registry,
    bundle: &BuiltBundle,
    reference: &Reference,
    tags: &[String],
    options: &PushOptions<'_>,
) -> Result<(Vec<String>, Vec<String>), BundleError> {
    let client = registry.client();
    let repo = Reference::with_digest(
        reference.registry().to_owned(),
        reference.repository().to_owned(),
        bundle.digest().to_owned(),
    );
    let auth = registry.auth(&repo);
    client
        .store_auth_if_needed(repo.resolve_registry(), &auth)
        .await;

    // Config and layer are independent: upload them side by side.
    let [config, layer] = bundle.blobs();
    let (config_uploaded, layer_uploaded) = tokio::try_join!(
        ensure_blob(client, &repo, config, options),
        ensure_blob(client, &repo, layer, options),
    )?;
    let uploaded: Vec<String> = [(config, config_uploaded), (layer, layer_uploaded)]
        .into_iter()
        .filter(|(_, up)| *up)
        .map(|(b, _)| b.digest.clone())
        .collect();

    let content_type: reqwest::header::HeaderValue =
        bundle.manifest.media_type.parse().map_err(|_| {
            BundleError::Invalid(format!("bad media type {}", bundle.manifest.media_type))
        })?;
    let mut written = Vec::new();
    for tag in tags {
        let tagged = Reference::with_tag(
            reference.registry().to_owned(),
            reference.repository().to_owned(),
            tag.clone(),
        );
        let current = retry(options, "HEAD", &tagged, || {
            client.fetch_manifest_digest(&tagged, &auth)
        })
        .await;
        match current {
            Ok(digest) if digest == bundle.digest() => continue,
            Ok(_) => {}
            Err(e) if e.class() == crate::registry::ErrorClass::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        retry(options, "PUT manifest", &tagged, || {
            client.push_manifest_raw(&tagged, bundle.manifest.data.clone(), content_type.clone())
        })
        .await?;
        options.emit(PushEvent::Tagged { tag: tag.clone() });
        written.push(tag.clone());
    }
    Ok((uploaded, written))
}

/// Makes sure `blob` is in the repository; true if it had to be uploaded.
async fn ensure_blob(
    client: &oci_client::Client,
    repo: &Reference,
    blob: &Blob,
    options: &PushOptions<'_>,
) -> Result<bool, BundleError> {
    let size = blob.data.len() as u64;
    let exists = retry(options, "HEAD blob", repo, || {
        client.blob_exists(repo, &blob.digest)
    })
    .await?;
    if exists {
        options.emit(PushEvent::BlobExists {
            digest: blob.digest.clone(),
            size,
        });
        return Ok(false);
    }
    options.emit(PushEvent::Uploading {
        digest: blob.digest.clone(),
        size,
    });
    retry(options, "upload blob", repo, || {
        client.push_blob(repo, blob.data.clone(), &blob.digest)
    })
    .await?;
    options.emit(PushEvent::Uploaded {
        digest: blob.digest.clone(),
        size,
    });
    Ok(true)
}

/// Runs `request` until it succeeds, fails for good, or `options.attempts` are used up,
/// doubling the delay between attempts.
pub(crate) async fn retry<T, F, Fut>(
    options: &PushOptions<'_>,
    operation: &'static str,
    reference: &Reference,
    mut request: F,
) -> Result<T, RegistryError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, OciDistributionError>>,
{
    let mut delay = options.backoff;
    let mut attempt = 1;
    loop {
        match request().await {
            Ok(value) => return Ok(value),
            Err(err) => {
                let err = RegistryError::request(operation, reference, &err);
                if !err.is_retryable() || attempt >= options.attempts.max(1) {
                    return Err(err);
                }
                options.emit(PushEvent::Retrying {
                    what: format!("{operation} {reference}"),
                    error: err.to_string(),
                    delay,
                });
                tokio::time::sleep(delay).await;
                delay *= 2;
                attempt += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_tag_is_imgpkgs() {
        assert_eq!(
            digest_tag("sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"),
            "sha256-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef.imgpkg"
        );
        assert!(is_valid_tag(&digest_tag(
            "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
        )));
    }
}
