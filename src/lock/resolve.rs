//! Resolution: each discovered reference to a digest, following kbld's factory
//! (`pkg/kbld/image/factory.go`): the first matching override applies once; a preresolved
//! override is taken as given; a digest reference is kept (normalised) without contacting
//! anyone; anything else is resolved against its registry. An override's `tagSelection`
//! first chooses the tag from the repository's tags list, and its `platformSelection` takes
//! the platform's image out of an index (see [`super::select`]).
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
use crate::carvel::kbld::PlatformSelection;
use crate::carvel::selection::VersionSelection;
use crate::registry::{ManifestClient, Reference, Registry, RegistryError, RequestStats};

use super::discover::{Discovery, Override};
use super::error::{Location, LockError};
use super::reference::{self, url_repo};
use super::select::{self, Selected};

/// How hard to try, and whether to try at all.
#[derive(Debug, Clone)]
pub struct ResolveOptions {
    /// Further attempts after a retryable failure (connection refused, timeout, 429, 5xx).
    pub retries: u32,
    /// Wait before the first retry; doubled before each next one.
    pub backoff: Duration,
    /// Lookups in flight at once; `None` takes the registry's setting.
    pub concurrency: Option<usize>,
    /// `--locked`: resolve from the ImagesLocks in the input, digest references and
    /// preresolved overrides only. A reference that would need a registry is an error, so
    /// nothing is ever asked of one.
    pub offline: bool,
    /// kbld's `--platform`: every reference not preresolved (digest references too) resolves
    /// to this platform's image of an index; an override's own `platformSelection` wins.
    pub platform: Option<PlatformSelection>,
}

impl Default for ResolveOptions {
    fn default() -> Self {
        ResolveOptions {
            retries: 3,
            backoff: Duration::from_millis(250),
            concurrency: None,
            offline: false,
            platform: None,
        }
    }
}

/// The outcome of locking.
#[derive(Debug, Clone)]
pub struct Resolution {
    /// Per reference as written: the entry of the lock (its `image` is the digest reference).
    pub images: BTreeMap<String, ImageRef>,
    /// Registry requests made on the digest path.
    pub requests: RequestStats,
    /// Distinct repository:tag pairs that had to be asked for.
    pub contacted: usize,
    /// Tag lists read for `tagSelection` plus manifests read for `platformSelection`; each
    /// goes through the shared client, whose requests `requests` does not count.
    pub selections: usize,
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

#[derive(Clone)]
struct Lookup {
    key: String,
    url: String,
    parsed: Reference,
    platform: Option<PlatformSelection>,
}

impl Lookup {
    fn new(url: String, parsed: Reference, platform: Option<PlatformSelection>) -> Self {
        // Only a platform selection looks up a digest reference (to pick from its index),
        // so the digest, not the tag, says what is asked for.
        let mut key = match parsed.digest() {
            Some(digest) => format!("{}@{digest}", reference::repository_name(&parsed)),
            None => format!(
                "{}:{}",
                reference::repository_name(&parsed),
                reference::tag_of(&parsed)
            ),
        };
        if let Some(platform) = &platform {
            key.push('#');
            key.push_str(&format!("{platform:?}"));
        }
        Lookup {
            key,
            url,
            parsed,
            platform,
        }
    }
}

/// Resolves every reference of `discovery`. All failures are reported together.
pub async fn resolve(
    discovery: &Discovery,
    registry: &Registry,
    options: &ResolveOptions,
) -> Result<Resolution, LockError> {
    let mut errors = Vec::new();
    let mut plans = BTreeMap::new();
    for (id, location) in &discovery.references {
        match plan(id, location, discovery, options.platform.as_ref()) {
            Ok(Pending::Done(entry)) => {
                plans.insert(id.clone(), Pending::Done(entry));
            }
            Ok(_) if options.offline => errors.push(LockError::NotLocked {
                reference: id.clone(),
                location: location.clone(),
            }),
            Ok(pending) => {
                plans.insert(id.clone(), pending);
            }
            Err(error) => errors.push(error),
        }
    }
    // Offline there is nothing left to do that could fail: report now, contact nobody.
    if options.offline
        && let Some(error) = LockError::from_many(std::mem::take(&mut errors))
    {
        return Err(error);
    }

    let concurrency = options
        .concurrency
        .unwrap_or_else(|| registry.concurrency())
        .max(1);
    let selections = select_tags(
        &mut plans,
        discovery,
        registry,
        options,
        concurrency,
        &mut errors,
    )
    .await;

    let mut lookups: BTreeMap<String, Lookup> = BTreeMap::new();
    for pending in plans.values() {
        if let Pending::Lookup(lookup) = pending {
            lookups
                .entry(lookup.key.clone())
                .or_insert_with(|| lookup.clone());
        }
    }
    let contacted = lookups.len();
    let platform_reads = lookups.values().filter(|l| l.platform.is_some()).count();
    let (digests, requests) = look_up(lookups, registry, options, concurrency).await?;

    let mut images = BTreeMap::new();
    for (id, pending) in plans {
        match pending {
            Pending::Done(entry) => {
                images.insert(id, entry);
            }
            Pending::Lookup(Lookup {
                key,
                url,
                parsed,
                platform,
            }) => match &digests[&key] {
                Ok(selected) => {
                    let origins = origins_of(&url, &parsed, platform.as_ref(), selected);
                    let image = reference::digest_name(&parsed, &selected.digest);
                    images.insert(id.clone(), ImageRef::kbld(image, &id, &origins));
                }
                Err(cause) => errors.push(LockError::Resolve {
                    location: discovery.references[&id].clone(),
                    reference: id,
                    url,
                    cause: Arc::clone(cause),
                }),
            },
            // Failed selections were reported by `select_tags`.
            Pending::Select { .. } => {}
        }
    }
    if let Some(error) = LockError::from_many(errors) {
        return Err(error);
    }
    Ok(Resolution {
        images,
        requests,
        contacted,
        selections: selections + platform_reads,
    })
}

/// kbld's origins of a looked-up reference: `resolved` for a tag (a digest reference has
/// none), then `platformSelected` when the image was taken out of an index.
fn origins_of(
    url: &str,
    parsed: &Reference,
    platform: Option<&PlatformSelection>,
    selected: &Selected,
) -> Vec<ImageOrigin> {
    let mut origins = Vec::new();
    if parsed.digest().is_none() {
        origins.push(ImageOrigin::Resolved {
            url: url.to_owned(),
            tag: reference::tag_of(parsed).to_owned(),
        });
    }
    if let (Some(platform), Some(index)) = (platform, &selected.index) {
        origins.push(ImageOrigin::PlatformSelected {
            index: reference::digest_name(parsed, index),
            os: platform.os.clone(),
            architecture: platform.architecture.clone(),
            variant: platform.variant.clone(),
        });
    }
    origins
}

type Digests = BTreeMap<String, Result<Selected, Arc<RegistryError>>>;

/// Asks for every lookup's digest, `concurrency` at a time. With nothing to ask (a re-lock
/// the lock answers entirely) no HTTP client is built: loading the system's root
/// certificates alone is a good part of such a run.
async fn look_up(
    lookups: BTreeMap<String, Lookup>,
    registry: &Registry,
    options: &ResolveOptions,
    concurrency: usize,
) -> Result<(Digests, RequestStats), LockError> {
    if lookups.is_empty() {
        return Ok((Digests::new(), RequestStats::default()));
    }
    let client = ManifestClient::new(registry)?;
    let digests: Digests = stream::iter(lookups)
        .map(|(key, lookup)| {
            let client = &client;
            async move {
                let digest = with_retries(options, || async {
                    match &lookup.platform {
                        Some(platform) => {
                            select::platform_digest(registry, &lookup.parsed, platform).await
                        }
                        None => client.digest(&lookup.parsed).await.map(|digest| Selected {
                            digest,
                            index: None,
                        }),
                    }
                })
                .await;
                (key, digest.map_err(Arc::new))
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    Ok((digests, client.stats()))
}

/// What one reference needs, on its way to an entry.
enum Pending {
    Done(ImageRef),
    /// Ask the registry for `key` (repository, tag and platform); record `url` as the origin.
    Lookup(Lookup),
    /// `tagSelection`: choose a tag of `repository` first, then look that up.
    Select {
        repository: String,
        parsed: Reference,
        selection: VersionSelection,
        platform: Option<PlatformSelection>,
    },
}

/// Chooses the tag of every `tagSelection` override (one tags list per repository and
/// selection) and turns those plans into lookups of the chosen tag. Returns the number of
/// tag lists read; failures go to `errors` and leave their plans unresolved.
async fn select_tags(
    plans: &mut BTreeMap<String, Pending>,
    discovery: &Discovery,
    registry: &Registry,
    options: &ResolveOptions,
    concurrency: usize,
    errors: &mut Vec<LockError>,
) -> usize {
    let mut wanted: BTreeMap<String, (Reference, VersionSelection)> = BTreeMap::new();
    for pending in plans.values() {
        if let Pending::Select {
            repository,
            parsed,
            selection,
            ..
        } = pending
        {
            wanted
                .entry(selection_key(repository, selection))
                .or_insert_with(|| (parsed.clone(), selection.clone()));
        }
    }
    if wanted.is_empty() {
        return 0;
    }
    let count = wanted.len();
    let chosen: BTreeMap<String, Result<String, Arc<RegistryError>>> = stream::iter(wanted)
        .map(|(key, (parsed, selection))| async move {
            let tag = with_retries(options, || {
                select::select_tag(registry, &parsed, &selection)
            })
            .await;
            (key, tag.map_err(Arc::new))
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    for (id, pending) in plans.iter_mut() {
        let Pending::Select {
            repository,
            selection,
            platform,
            ..
        } = pending
        else {
            continue;
        };
        match &chosen[&selection_key(repository, selection)] {
            Ok(tag) => {
                let url = format!("{repository}:{tag}");
                match reference::parse(&url) {
                    Ok(parsed) => {
                        *pending = Pending::Lookup(Lookup::new(url, parsed, platform.take()));
                    }
                    Err(e) => errors.push(LockError::Reference {
                        reference: id.clone(),
                        location: discovery.references[id].clone(),
                        message: format!("tagSelection chose {url:?}: {e}"),
                    }),
                }
            }
            Err(cause) => errors.push(LockError::Resolve {
                reference: id.clone(),
                url: repository.clone(),
                location: discovery.references[id].clone(),
                cause: Arc::clone(cause),
            }),
        }
    }
    count
}

fn selection_key(repository: &str, selection: &VersionSelection) -> String {
    format!("{repository}#{selection:?}")
}

fn plan(
    id: &str,
    location: &Location,
    discovery: &Discovery,
    global_platform: Option<&PlatformSelection>,
) -> Result<Pending, LockError> {
    let reference_error = |message: String| LockError::Reference {
        reference: id.to_owned(),
        location: location.clone(),
        message,
    };
    let applied = discovery.overrides.iter().find(|o| o.matcher.matches(id));
    let (url, platform) = match applied {
        Some(Override {
            locked: Some(entry),
            ..
        }) => return Ok(Pending::Done(entry.clone())),
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
            return Ok(Pending::Done(ImageRef::kbld(&o.new_image, id, &[origin])));
        }
        Some(o) => (
            o.new_image.clone(),
            o.platform_selection
                .clone()
                .or_else(|| global_platform.cloned()),
        ),
        None => (id.to_owned(), global_platform.cloned()),
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
    if let Some(selection) = applied.and_then(|o| o.tag_selection.clone()) {
        // kbld appends the chosen tag to newImage, so newImage must name a repository only.
        if parsed.digest().is_some() || url_repo(&url).is_some_and(|repo| repo != url) {
            return Err(reference_error(format!(
                "its override uses tagSelection, so newImage {url:?} must be a repository \
                 without a tag or digest"
            )));
        }
        return Ok(Pending::Select {
            repository: url,
            parsed,
            selection,
            platform,
        });
    }
    if let Some(digest) = parsed.digest()
        && platform.is_none()
    {
        return Ok(Pending::Done(ImageRef::kbld(
            reference::digest_name(&parsed, digest),
            id,
            &[],
        )));
    }
    Ok(Pending::Lookup(Lookup::new(url, parsed, platform)))
}

async fn with_retries<T, F, Fut>(
    options: &ResolveOptions,
    mut attempt: F,
) -> Result<T, RegistryError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, RegistryError>>,
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
    use crate::lock::discover::{ImageMatcher, LockConfig, discover_rendered};
    use pretty_assertions::assert_eq;

    fn digest(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    fn discovery_of(manifest: &str, overrides: Vec<Override>) -> Discovery {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("m.yml"), manifest).expect("write");
        let mut discovery =
            discover_rendered(&[dir.path().to_owned()], &LockConfig::default(), &[])
                .expect("discover");
        discovery.overrides = overrides;
        discovery
    }

    fn override_to(image: &str, new_image: &str, preresolved: bool) -> Override {
        Override {
            matcher: ImageMatcher::Image(image.to_owned()),
            new_image: new_image.to_owned(),
            preresolved,
            tag_selection: None,
            platform_selection: None,
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

    /// `--locked`: what the lock or a digest answers is fine; anything else is named, and no
    /// registry is built a connection to (the default registry has no mirror for `r.io`).
    #[tokio::test]
    async fn offline_resolves_from_locks_only() {
        let mut discovery = discovery_of(
            &format!(
                "a:\n  image: pinned@{}\nb:\n  image: locked\nc:\n  image: r.io/new:1\n",
                digest('a')
            ),
            Vec::new(),
        );
        let entry = ImageRef::kbld(format!("r.io/locked@{}", digest('b')), "locked", &[]);
        discovery.overrides.push(Override {
            locked: Some(entry.clone()),
            ..override_to("locked", &entry.image, true)
        });
        let registry = Registry::new(Default::default()).expect("registry");
        let offline = ResolveOptions {
            offline: true,
            ..ResolveOptions::default()
        };
        let error = resolve(&discovery, &registry, &offline)
            .await
            .expect_err("r.io/new:1 is in no lock");
        assert!(
            matches!(&error, LockError::NotLocked { reference, .. } if reference == "r.io/new:1"),
            "{error}"
        );
        assert!(error.to_string().contains("m.yml (document 1)"), "{error}");

        discovery.references.remove("r.io/new:1");
        let resolution = resolve(&discovery, &registry, &offline)
            .await
            .expect("everything is locked");
        assert_eq!(resolution.images["locked"], entry);
        assert_eq!(resolution.requests.total(), 0);
    }

    #[tokio::test]
    async fn tag_selection_needs_a_bare_repository() {
        let mut selecting = override_to("app", "r.io/app:1.0", false);
        selecting.tag_selection = Some(
            serde_json::from_str(r#"{"semver": {"constraints": ">=1.0.0"}}"#).expect("selection"),
        );
        let discovery = discovery_of("image: app\n", vec![selecting]);
        let registry = Registry::new(Default::default()).expect("registry");
        let error = resolve(&discovery, &registry, &ResolveOptions::default())
            .await
            .expect_err("newImage has a tag")
            .to_string();
        assert!(error.contains("without a tag or digest"), "{error}");
    }

    #[tokio::test]
    async fn retries_stop_and_say_so() {
        let mut calls = 0;
        let options = ResolveOptions {
            retries: 2,
            backoff: Duration::from_millis(1),
            ..ResolveOptions::default()
        };
        let error = with_retries(&options, || {
            calls += 1;
            async {
                Err::<String, _>(RegistryError::Request {
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
