//! Pushing a built bundle to a registry: the tags and blobs HEADed side by side, the missing
//! blobs uploaded (one POST and one PUT each), then the manifest under each tag that does not
//! already point at it. A tag is written only after every blob it needs is in the registry,
//! so a failure at any point leaves no tag pointing at an incomplete image; re-pushing an
//! unchanged bundle (digests from the layer cache) makes HEAD requests only.

use std::future::Future;
use std::time::Duration;

use super::build::BuiltBundle;
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
    /// Where tags point, as the caller has just read them (`None`: the tag does not exist):
    /// not asked again.
    pub known_tags: Vec<(String, Option<String>)>,
}

impl Default for PushOptions<'_> {
    fn default() -> Self {
        PushOptions {
            attempts: 4,
            backoff: Duration::from_millis(250),
            progress: None,
            known_tags: Vec::new(),
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
            tokio::task::spawn_blocking(move || {
                let bundle = bundle.materialized()?;
                layout::write(&dir, &bundle, &tags)
            })
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
    let client = registry.distribution();
    let client = &client;
    let repo = Reference::with_digest(
        reference.registry().to_owned(),
        reference.repository().to_owned(),
        bundle.digest().to_owned(),
    );
    let repo = &repo;
    let blobs = bundle.blobs();

    // Where the tags point and which blobs are there, asked side by side: for a bundle pushed
    // before, these HEADs are the whole push.
    let (current, present) = retry(options, "HEAD tags and blobs of", repo, || async {
        let tag_heads = futures::future::try_join_all(tags.iter().map(|tag| async move {
            match options.known_tags.iter().find(|(known, _)| known == tag) {
                Some((_, digest)) => Ok(digest.clone()),
                None => client.manifest_digest_at(repo, tag).await,
            }
        }));
        let blob_heads = futures::future::try_join_all(
            blobs
                .iter()
                .map(|blob| client.blob_exists(repo, &blob.digest)),
        );
        tokio::try_join!(tag_heads, blob_heads)
    })
    .await?;

    // Config and layer are independent: upload them side by side.
    let uploads = blobs
        .iter()
        .zip(&present)
        .map(|(blob, present)| async move {
            if *present {
                options.emit(PushEvent::BlobExists {
                    digest: blob.digest.clone(),
                    size: blob.size,
                });
                return Ok::<_, BundleError>(None);
            }
            let data = match &blob.data {
                Some(data) => data.clone(),
                // Known from the layer cache, but this repository lacks it: archive it again.
                None => {
                    let bundle = bundle.clone();
                    tokio::task::spawn_blocking(move || bundle.layer_data())
                        .await
                        .map_err(|e| BundleError::Invalid(format!("archiving the layer: {e}")))??
                }
            };
            options.emit(PushEvent::Uploading {
                digest: blob.digest.clone(),
                size: blob.size,
            });
            retry(options, "upload blob to", repo, || {
                client.push_blob(repo, &blob.digest, data.clone())
            })
            .await?;
            options.emit(PushEvent::Uploaded {
                digest: blob.digest.clone(),
                size: blob.size,
            });
            Ok(Some(blob.digest.clone()))
        });
    let uploaded: Vec<String> = futures::future::try_join_all(uploads)
        .await?
        .into_iter()
        .flatten()
        .collect();

    // Every blob is there now, so the tags can be written in any order: side by side.
    let manifest = bundle.manifest.data.clone().unwrap_or_default();
    let puts = tags
        .iter()
        .zip(current)
        .filter(|(_, current)| current.as_deref() != Some(bundle.digest()))
        .map(|(tag, _)| {
            let manifest = manifest.clone();
            async move {
                let tagged = Reference::with_tag(
                    reference.registry().to_owned(),
                    reference.repository().to_owned(),
                    tag.clone(),
                );
                retry(options, "PUT manifest", &tagged, || {
                    client.put_manifest(&tagged, tag, bundle.manifest.media_type, manifest.clone())
                })
                .await?;
                options.emit(PushEvent::Tagged { tag: tag.clone() });
                Ok::<_, BundleError>(tag.clone())
            }
        });
    let written = futures::future::try_join_all(puts).await?;
    Ok((uploaded, written))
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
    Fut: Future<Output = Result<T, RegistryError>>,
{
    let mut delay = options.backoff;
    let mut attempt = 1;
    loop {
        match request().await {
            Ok(value) => return Ok(value),
            Err(err) => {
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
