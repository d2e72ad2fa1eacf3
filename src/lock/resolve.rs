//! Resolution: each discovered reference to a digest, following kbld's factory
//! (`pkg/kbld/image/factory.go`): the first matching override applies once; a preresolved
//! override is taken as given; a digest reference is kept (normalised) without contacting
//! anyone; anything else is resolved against its registry.
//!
//! Deliberate differences from kbld, each for a reason:
//! - kbld asks the registry twice per tag (to catch registries with unstable digests) and
//!   once per reference as written; this asks once per distinct repository and tag, however
//!   many spellings (`nginx`, `docker.io/library/nginx:latest`) the manifests use.
//! - An entry taken from an ImagesLock in the tree is reproduced exactly as recorded. kbld
//!   appends one more `preresolved` origin to it on every run, so its lock (and with it the
//!   bundle's digest) changes each time an unchanged package is re-locked.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{self, StreamExt as _};

use crate::carvel::imgpkg::{self, ImageOrigin, ImageRef, ImagesLock};
use crate::registry::{Reference, Registry, RegistryError};

use super::discover::{Discovery, Override};
use super::distribution::{ManifestClient, RequestStats};
use super::error::{Location, LockError};
use super::reference;

/// How hard to try.
#[derive(Debug, Clone)]
pub struct ResolveOptions {
    /// Further attempts after a retryable failure (connection refused, timeout, 429, 5xx).
    pub retries: u32,
    /// Wait before the first retry; doubled before each next one.
    pub backoff: Duration,
    /// Lookups in flight at once; `None` takes the registry's setting.
    pub concurrency: Option<usize>,
}

impl Default for ResolveOptions {
    fn default() -> Self {
        ResolveOptions {
            retries: 3,
            backoff: Duration::from_millis(250),
            concurrency: None,
        }
    }
}

/// The outcome of locking.
#[derive(Debug, Clone)]
pub struct Resolution {
    /// Per reference as written: the entry of the lock (its `image` is the digest reference).
    pub images: BTreeMap<String, ImageRef>,
    /// Registry requests made.
    pub requests: RequestStats,
    /// Distinct repository:tag pairs that had to be asked for.
    pub contacted: usize,
}

impl Resolution {
    /// The ImagesLock, entries in kbld's order (see [`ImagesLock::to_kbld_yaml`]).
    pub fn lock(&self) -> ImagesLock {
        ImagesLock {
            images: self.images.values().cloned().collect(),
            ..ImagesLock::new()
        }
    }
}

/// What one reference needs.
enum Plan {
    Done(ImageRef),
    /// Ask the registry for `key` (repository and tag); record `url` as the origin.
    Lookup {
        key: String,
        url: String,
        parsed: Reference,
    },
}

/// Resolves every reference of `discovery`. All failures are reported together.
pub async fn resolve(
    discovery: &Discovery,
    registry: &Registry,
    options: &ResolveOptions,
) -> Result<Resolution, LockError> {
    let mut errors = Vec::new();
    let mut plans = BTreeMap::new();
    let mut lookups: BTreeMap<String, Reference> = BTreeMap::new();
    for (id, location) in &discovery.references {
        match plan(id, location, discovery) {
            Ok(Plan::Lookup { key, url, parsed }) => {
                lookups.entry(key.clone()).or_insert_with(|| parsed.clone());
                plans.insert(id.clone(), Plan::Lookup { key, url, parsed });
            }
            Ok(done) => {
                plans.insert(id.clone(), done);
            }
            Err(error) => errors.push(error),
        }
    }

    let client = ManifestClient::new(registry)?;
    let concurrency = options
        .concurrency
        .unwrap_or_else(|| registry.concurrency())
        .max(1);
    let contacted = lookups.len();
    let digests: BTreeMap<String, Result<String, Arc<RegistryError>>> = stream::iter(lookups)
        .map(|(key, parsed)| {
            let client = &client;
            async move {
                let digest = with_retries(options, || client.digest(&parsed)).await;
                (key, digest.map_err(Arc::new))
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;

    let mut images = BTreeMap::new();
    for (id, plan) in plans {
        match plan {
            Plan::Done(entry) => {
                images.insert(id, entry);
            }
            Plan::Lookup { key, url, parsed } => match &digests[&key] {
                Ok(digest) => {
                    let origin = ImageOrigin::Resolved {
                        url: url.clone(),
                        tag: reference::tag_of(&parsed).to_owned(),
                    };
                    let image = reference::digest_name(&parsed, digest);
                    images.insert(id.clone(), ImageRef::kbld(image, id, &[origin]));
                }
                Err(cause) => errors.push(LockError::Resolve {
                    location: discovery.references[&id].clone(),
                    reference: id,
                    url,
                    cause: Arc::clone(cause),
                }),
            },
        }
    }
    if let Some(error) = LockError::from_many(errors) {
        return Err(error);
    }
    Ok(Resolution {
        images,
        requests: client.stats(),
        contacted,
    })
}

fn plan(id: &str, location: &Location, discovery: &Discovery) -> Result<Plan, LockError> {
    let reference_error = |message: String| LockError::Reference {
        reference: id.to_owned(),
        location: location.clone(),
        message,
    };
    let applied = discovery.overrides.iter().find(|o| o.matcher.matches(id));
    let url = match applied {
        Some(Override {
            locked: Some(entry),
            ..
        }) => return Ok(Plan::Done(entry.clone())),
        Some(o) if o.tag_selection || o.platform_selection => {
            return Err(LockError::Unsupported {
                origin: o.defined_in.clone(),
                message: format!(
                    "the override of {id:?} uses {}, which packsmith does not implement; \
                     name the tag (or the platform's digest) in newImage instead",
                    if o.tag_selection {
                        "tagSelection"
                    } else {
                        "platformSelection"
                    }
                ),
            });
        }
        Some(o) if o.preresolved => {
            if let Some(problem) = imgpkg::digest_reference_problem(&o.new_image) {
                return Err(reference_error(format!(
                    "the preresolved override in {} maps it to {:?}, which {problem}; an \
                     ImagesLock records digests only",
                    o.defined_in, o.new_image
                )));
            }
            let origin = ImageOrigin::Preresolved {
                url: o.new_image.clone(),
            };
            return Ok(Plan::Done(ImageRef::kbld(&o.new_image, id, &[origin])));
        }
        Some(o) => o.new_image.clone(),
        None => id.to_owned(),
    };
    if let Some(source) = discovery.sources.iter().find(|s| s.matcher.matches(&url)) {
        return Err(LockError::Unsupported {
            origin: source.defined_in.clone(),
            message: format!(
                "kbld would build {url:?} from source; packsmith locks existing images only"
            ),
        });
    }
    let parsed = reference::parse(&url).map_err(|e| reference_error(e.to_string()))?;
    if let Some(digest) = parsed.digest() {
        return Ok(Plan::Done(ImageRef::kbld(
            reference::digest_name(&parsed, digest),
            id,
            &[],
        )));
    }
    let key = format!(
        "{}:{}",
        reference::repository_name(&parsed),
        reference::tag_of(&parsed)
    );
    Ok(Plan::Lookup { key, url, parsed })
}

async fn with_retries<F, Fut>(
    options: &ResolveOptions,
    mut attempt: F,
) -> Result<String, RegistryError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<String, RegistryError>>,
{
    let mut wait = options.backoff;
    let mut tries = 0;
    loop {
        tries += 1;
        match attempt().await {
            Err(error) if error.is_retryable() && tries <= options.retries => {
                tracing::debug!(%error, tries, "retrying after {wait:?}");
                tokio::time::sleep(wait).await;
                wait = wait.saturating_mul(2);
            }
            Err(RegistryError::Request {
                operation,
                reference,
                class,
                message,
            }) if tries > 1 => {
                return Err(RegistryError::Request {
                    operation,
                    reference,
                    class,
                    message: format!("{message} (gave up after {tries} attempts)"),
                });
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lock::discover::{ImageMatcher, LockConfig, discover};
    use pretty_assertions::assert_eq;

    fn digest(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    fn discovery_of(manifest: &str, overrides: Vec<Override>) -> Discovery {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("m.yml"), manifest).expect("write");
        let mut discovery =
            discover(&[dir.path().to_owned()], &LockConfig::default()).expect("discover");
        discovery.overrides = overrides;
        discovery
    }

    fn override_to(image: &str, new_image: &str, preresolved: bool) -> Override {
        Override {
            matcher: ImageMatcher::Image(image.to_owned()),
            new_image: new_image.to_owned(),
            preresolved,
            tag_selection: false,
            platform_selection: false,
            locked: None,
            defined_in: "test".to_owned(),
        }
    }

    /// Nothing here needs a registry: digest references and preresolved overrides.
    #[tokio::test]
    async fn digests_and_preresolved_overrides_need_no_registry() {
        let discovery = discovery_of(
            &format!(
                "a:\n  image: nginx:1.25@{}\nb:\n  image: app\n",
                digest('a')
            ),
            vec![override_to(
                "app",
                &format!("r.io/app@{}", digest('b')),
                true,
            )],
        );
        let registry = Registry::new(Default::default()).expect("registry");
        let resolution = resolve(&discovery, &registry, &ResolveOptions::default())
            .await
            .expect("resolve");
        assert_eq!(resolution.requests.total(), 0);
        assert_eq!(resolution.contacted, 0);
        let lock = resolution.lock().to_kbld_yaml().expect("yaml");
        assert_eq!(
            lock,
            format!(
                "---\napiVersion: imgpkg.carvel.dev/v1alpha1\nimages:\n- annotations:\n    \
                 kbld.carvel.dev/id: app\n    kbld.carvel.dev/origins: |\n      - preresolved:\n          \
                 url: r.io/app@{b}\n  image: r.io/app@{b}\n- annotations:\n    kbld.carvel.dev/id: \
                 nginx:1.25@{a}\n  image: index.docker.io/library/nginx@{a}\nkind: ImagesLock\n",
                a = digest('a'),
                b = digest('b'),
            )
        );
    }

    #[tokio::test]
    async fn bad_references_and_overrides_are_reported_together() {
        let discovery = discovery_of(
            "a:\n  image: UPPER/case:1\nb:\n  image: pinned\nc:\n  image: x@sha256:short\n",
            vec![override_to("pinned", "r.io/app:1", true)],
        );
        let registry = Registry::new(Default::default()).expect("registry");
        let error = resolve(&discovery, &registry, &ResolveOptions::default())
            .await
            .expect_err("three bad references")
            .to_string();
        assert!(error.starts_with("3 images could not be locked"), "{error}");
        for hint in [
            "UPPER/case:1",
            "not a digest reference",
            "x@sha256:short",
            "m.yml (document 1)",
        ] {
            assert!(error.contains(hint), "{hint}: {error}");
        }
    }

    #[tokio::test]
    async fn retries_stop_and_say_so() {
        let mut calls = 0;
        let options = ResolveOptions {
            retries: 2,
            backoff: Duration::from_millis(1),
            concurrency: None,
        };
        let error = with_retries(&options, || {
            calls += 1;
            async {
                Err(RegistryError::Request {
                    operation: "HEAD",
                    reference: "u".to_owned(),
                    class: crate::registry::ErrorClass::Retryable,
                    message: "connection refused".to_owned(),
                })
            }
        })
        .await
        .expect_err("always fails");
        assert_eq!(calls, 3);
        assert!(
            error.to_string().contains("gave up after 3 attempts"),
            "{error}"
        );
    }
}
