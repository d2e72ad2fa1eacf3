//! The one sync → lock → push → render flow, shared by `packsmith release` and the
//! controller. Each stage is the library stage of the same name; this module only decides
//! what feeds what, and says which stage failed and whether retrying can help.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::api::conditions::reasons;
use crate::api::source::{PackageSourceSpec, VersionFrom};
use crate::bundle::{self, BuildOptions, Location, PushOptions, Pushed};
use crate::carvel::kbld;
use crate::carvel::selection::VersionRange;
use crate::carvel::vendir::{self, LockConfig as VendirLock, LockDirectoryContents};
use crate::carvel::{Package, PackageMetadata};
use crate::lock::{self, ResolveOptions};
use crate::publish::revision;
use crate::publish::{self, Release};
use crate::registry::Registry;
use crate::sync::{self, SecretSource, SyncOptions};

/// The stages, in order. Each has a condition type on the PackageSource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Sync,
    Lock,
    Push,
    Render,
}

impl Stage {
    /// The condition type that reports this stage.
    pub fn condition(self) -> &'static str {
        use crate::api::conditions::types;
        match self {
            Stage::Sync => types::CONTENT_SYNCED,
            Stage::Lock => types::IMAGES_LOCKED,
            Stage::Push => types::BUNDLE_PUSHED,
            Stage::Render => types::PACKAGE_PUBLISHED,
        }
    }

    /// Lower-case name, for metrics and logs.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Sync => "sync",
            Stage::Lock => "lock",
            Stage::Push => "push",
            Stage::Render => "render",
        }
    }
}

/// Told how long each stage took, whether it succeeded or not (the controller's stage
/// duration metric).
pub type StageTimer<'a> = &'a (dyn Fn(Stage, std::time::Duration) + Send + Sync);

/// A stage failed.
#[derive(Debug, thiserror::Error)]
#[error("{stage:?}: {message}")]
pub struct PipelineError {
    pub stage: Stage,
    /// A condition reason from [`reasons`].
    pub reason: &'static str,
    /// What went wrong and what to do, for a person.
    pub message: String,
    /// Whether retrying later can succeed without a change to the spec or its Secrets.
    pub retryable: bool,
}

impl PipelineError {
    fn new(
        stage: Stage,
        reason: &'static str,
        message: impl Into<String>,
        retryable: bool,
    ) -> Self {
        Self {
            stage,
            reason,
            message: message.into(),
            retryable,
        }
    }
}

/// What the pipeline needs besides the spec.
pub struct PipelineInput<'a> {
    pub spec: &'a PackageSourceSpec,
    /// Where contents are synced; also the bundle root.
    pub root: &'a Path,
    /// Paths under `root` kept out of the bundle (the CLI's packagesource.yaml and friends).
    pub exclude: Vec<String>,
    pub registry: &'a Registry,
    pub secrets: &'a dyn SecretSource,
    pub cache_dir: Option<PathBuf>,
    /// The previous sync's lock, for `lazy` contents.
    pub previous: Option<&'a VendirLock>,
    /// Tags to push instead of `spec.bundle.tags` (the CLI's `--tag`).
    pub tags_override: Option<Vec<String>>,
    /// Repository to push to instead of `spec.bundle.repository` (the CLI's `--repository`).
    pub repository_override: Option<String>,
    pub now: jiff::Timestamp,
    /// Labels and namespace for the rendered Package and PackageMetadata.
    pub labels: BTreeMap<String, String>,
    pub namespace: Option<String>,
    pub on_stage: Option<StageTimer<'a>>,
    /// What the sync may trust: the controller's strict default, or the CLI's.
    pub sync_policy: sync::Policy,
    /// Addresses upstreams may not be reached at (the registry's own is in its options).
    pub egress: crate::registry::Egress,
    /// Bytes the synced tree and `cache_dir` together may take (the controller's
    /// `--max-object-disk`); `None`: no budget (the CLI, whose user owns the disk).
    pub disk_budget: Option<u64>,
    /// The helm that renders charts for the lock (`--helm-binary`).
    pub helm_binary: &'a Path,
    /// The key that signs the bundle (`bundle.signing`, the CLI's `--sign-key`): read by the
    /// front end, which owns its Secret or file.
    pub signing: Option<&'a crate::registry::cosign::SigningKey>,
}

impl PipelineInput<'_> {
    fn timed(&self, stage: Stage, started: std::time::Instant) {
        if let Some(on_stage) = self.on_stage {
            on_stage(stage, started.elapsed());
        }
    }
}

/// What one run produced.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub contents: VendirLock,
    /// The version published: the declared one, or its packaging revision
    /// (`1.9.1+packsmith.2`) when the declared one already holds other content.
    pub version: String,
    /// The declared version's bundle when its content changed under it (a new revision was
    /// published, or the tag was moved with `versionPolicy: Overwrite`).
    pub changed_from: Option<String>,
    /// Locked images as digest references, sorted.
    pub images: Vec<String>,
    /// What the lock stage warned about (images a chart's values make), paths relative to
    /// the bundle root.
    pub lock_warnings: Vec<String>,
    pub pushed: Pushed,
    /// `bundle.relocateImages`: every image copied next to the bundle, as
    /// `repository@sha256:…` (empty when not asked).
    pub relocated: Vec<String>,
    /// The bundle's cosign signature (`repository:sha256-<hex>.sig`) when it is signed.
    pub signature: Option<String>,
    pub package: Package,
    pub metadata: PackageMetadata,
}

/// Runs every stage. Nothing is pushed unless sync and lock succeeded, and the Package is
/// rendered only for a bundle the registry confirmed by digest.
pub async fn run(input: &PipelineInput<'_>) -> Result<Outcome, PipelineError> {
    let spec = input.spec;

    // Sync.
    let config = vendir::Config::new(spec.contents.clone());
    let mut options = SyncOptions::new(input.secrets);
    options.cache_dir = input.cache_dir.clone();
    options.previous = input.previous;
    options.registry = Some(input.registry);
    options.policy = input.sync_policy;
    options.egress = input.egress.clone();
    // No one content may download or expand past the whole budget: the budget is paid as the
    // bytes arrive, not measured after the disk is full.
    let clamp = input
        .disk_budget
        .filter(|budget| *budget < options.limits.max_bytes);
    if let Some(clamp) = clamp {
        options.limits.max_bytes = clamp;
    }
    let started = std::time::Instant::now();
    let contents = sync::sync(&config, input.root, &options).await;
    input.timed(Stage::Sync, started);
    let contents = contents.map_err(|e| match clamp {
        Some(budget) if outgrew(&e, budget) => over_budget(&e.to_string(), budget),
        _ => {
            let (reason, retryable) = classify_sync(&e);
            PipelineError::new(Stage::Sync, reason, e.to_string(), retryable)
        }
    })?;
    if let Some(budget) = input.disk_budget {
        check_disk_budget(input, budget)?;
    }

    let version = version(spec, &contents)?;

    // Lock.
    let started = std::time::Instant::now();
    let locked = lock_images(input, spec).await;
    input.timed(Stage::Lock, started);
    let (images, lock_warnings, charts) = locked?;

    // Push.
    let started = std::time::Instant::now();
    let pushed = push_bundle(input, spec, &version, &contents).await;
    input.timed(Stage::Push, started);
    let (pushed, decision, relocated, signature) = pushed?;
    let (version, changed_from) = match decision {
        revision::Decision::Push {
            version,
            changed_from,
            ..
        } => (version, changed_from),
        revision::Decision::Existing { version, .. } => (version, None),
    };

    // Render.
    let started = std::time::Instant::now();
    let rendered = render(input, spec, &version, &pushed, charts);
    input.timed(Stage::Render, started);
    let (package, metadata) = rendered?;

    Ok(Outcome {
        contents,
        version,
        changed_from,
        images,
        lock_warnings,
        pushed,
        relocated,
        signature,
        package,
        metadata,
    })
}

/// The lock stage alone, on a tree already synced (the CLI's `lock --all`): what
/// [`run`] does between sync and push. Returns the locked images and the lock's warnings.
pub async fn lock_stage(
    input: &PipelineInput<'_>,
) -> Result<(Vec<String>, Vec<String>), PipelineError> {
    lock_images(input, input.spec)
        .await
        .map(|(images, warnings, _)| (images, warnings))
}

/// The push stage alone, on a tree already synced and locked (the CLI's `push --all`): the
/// version from the spec and `contents` (vendir's lock), decided and pushed as [`run`] does.
/// Returns the version published and what was pushed.
pub async fn push_stage(
    input: &PipelineInput<'_>,
    contents: &VendirLock,
) -> Result<(String, Pushed), PipelineError> {
    let version = version(input.spec, contents)?;
    let (pushed, decision, _, _) = push_bundle(input, input.spec, &version, contents).await?;
    Ok((decision.version().to_owned(), pushed))
}

/// The lock stage: `.imgpkg/images.yml` for the synced tree. Returns the locked images, the
/// lock's warnings and, when it walked the tree, the Helm charts it found there (the render
/// stage needs them and need not walk the tree again).
async fn lock_images(
    input: &PipelineInput<'_>,
    spec: &PackageSourceSpec,
) -> Result<(Vec<String>, Vec<String>, Option<Vec<PathBuf>>), PipelineError> {
    let imgpkg = input.root.join(".imgpkg");
    std::fs::create_dir_all(&imgpkg).map_err(|e| {
        PipelineError::new(
            Stage::Lock,
            reasons::LOCK_FAILED,
            format!("creating {}: {e}", imgpkg.display()),
            true,
        )
    })?;
    let lock_path = imgpkg.join("images.yml");
    let images = if spec.images.lock {
        let mut config = lock::LockConfig {
            helm: helm_options(input, spec)?,
            ..lock::LockConfig::default()
        };
        if !spec.images.overrides.is_empty() || !spec.images.search_rules.is_empty() {
            let mut kbld_config = kbld::Config::new();
            kbld_config.overrides = spec.images.overrides.clone();
            kbld_config.search_rules = spec.images.search_rules.clone();
            config.configs.push(("spec.images".to_owned(), kbld_config));
        }
        let locked = lock::run(
            &bundle_inputs(input.root, &input.exclude)?,
            &config,
            input.registry,
            &ResolveOptions::default(),
            Some(&lock_path),
        )
        .await
        .map_err(|e| {
            let (reason, retryable) = classify_lock(&e);
            PipelineError::new(
                Stage::Lock,
                reason,
                bundle_relative(input, &e.to_string()),
                retryable,
            )
        })?;
        let mut images: Vec<String> = locked
            .resolution
            .images
            .values()
            .map(|i| i.image.clone())
            .collect();
        images.sort();
        images.dedup();
        let warnings = locked
            .discovery
            .warnings
            .iter()
            .map(|w| bundle_relative(input, w))
            .collect();
        (images, warnings, Some(locked.discovery.charts))
    } else {
        // imgpkg requires .imgpkg/images.yml in every bundle, even with nothing to lock.
        let empty = crate::carvel::ImagesLock::new()
            .to_kbld_yaml()
            .map_err(|e| {
                PipelineError::new(Stage::Lock, reasons::LOCK_FAILED, e.to_string(), false)
            })?;
        crate::lock::write_atomically(&lock_path, empty.as_bytes()).map_err(|e| {
            PipelineError::new(
                Stage::Lock,
                reasons::LOCK_FAILED,
                format!("writing {}: {e}", lock_path.display()),
                true,
            )
        })?;
        (Vec::new(), Vec::new(), None)
    };
    Ok(images)
}

/// `text` with paths under the bundle root written relative to it: the work directory is the
/// controller's business, not the reader's.
fn bundle_relative(input: &PipelineInput<'_>, text: &str) -> String {
    text.replace(&format!("{}/", input.root.display()), "")
}

/// How the lock renders a chart: as kapp-controller will at install, with the package's short
/// name as the release, in `default`, for the lowest Kubernetes version the package supports,
/// with `images.helm.valuesFrom` and then `images.helm.values` over the chart's defaults.
fn helm_options(
    input: &PipelineInput<'_>,
    spec: &PackageSourceSpec,
) -> Result<lock::helm::HelmOptions, PipelineError> {
    let package = &spec.package;
    let release_name = package
        .ref_name
        .split('.')
        .next()
        .filter(|n| !n.is_empty())
        .map(str::to_owned);
    let kube_version = package
        .kubernetes_version_selection
        .as_ref()
        .and_then(|k| lowest_version(&k.constraints));
    let mut values = Vec::new();
    if let Some(helm) = &spec.images.helm {
        for (i, from) in helm.values_from.iter().enumerate() {
            values.extend(values_from(input, i, from)?);
        }
        if let Some(inline) = &helm.values {
            values.push(("spec.images.helm.values".to_owned(), inline.clone()));
        }
    }
    Ok(lock::helm::HelmOptions {
        binary: input.helm_binary.to_owned(),
        release_name,
        kube_version,
        values,
        ..lock::helm::HelmOptions::default()
    })
}

/// The values files of one `images.helm.valuesFrom` entry, in key order.
fn values_from(
    input: &PipelineInput<'_>,
    index: usize,
    from: &crate::api::source::HelmValuesFrom,
) -> Result<Vec<(String, serde_json::Value)>, PipelineError> {
    let field = format!("images.helm.valuesFrom[{index}]");
    let missing = |what: String| {
        PipelineError::new(
            Stage::Lock,
            reasons::REFERENCE_NOT_FOUND,
            format!(
                "{what} named by {field} does not exist in the PackageSource's namespace (the \
                 CLI reads no ConfigMaps or Secrets: give the values in images.helm.values)"
            ),
            true,
        )
    };
    let files: BTreeMap<String, Vec<u8>> = match (&from.config_map_ref, &from.secret_ref) {
        (Some(r), _) => input
            .secrets
            .config_map(&r.name)
            .ok_or_else(|| missing(format!("ConfigMap {}", r.name)))?
            .into_iter()
            .map(|(k, v)| (k, v.into_bytes()))
            .collect(),
        (None, Some(r)) => input
            .secrets
            .secret(&r.name)
            .ok_or_else(|| missing(format!("Secret {}", r.name)))?
            .data
            .into_iter()
            .collect(),
        (None, None) => return Ok(Vec::new()),
    };
    files
        .into_iter()
        .map(|(key, bytes)| {
            let origin = format!("{field} key {key}");
            let invalid = |why: String| {
                PipelineError::new(
                    Stage::Lock,
                    reasons::INVALID_SPEC,
                    format!("{origin}: {why}"),
                    false,
                )
            };
            let text = String::from_utf8(bytes).map_err(|_| invalid("not UTF-8".to_owned()))?;
            let value: serde_json::Value = crate::carvel::yaml::from_str("Helm values", &text)
                .map_err(|e| invalid(e.to_string()))?;
            if !value.is_object() && !value.is_null() {
                return Err(invalid("Helm values must be a mapping".to_owned()));
            }
            Ok((origin, value))
        })
        .filter(|v| !matches!(v, Ok((_, serde_json::Value::Null))))
        .collect()
}

/// The version a semver range starts at (`>=1.24.0 <1.31.0` → `1.24.0`), for helm's
/// `--kube-version`; `None` when the range has no inclusive lower bound.
fn lowest_version(constraints: &str) -> Option<String> {
    let first = constraints.split("||").next()?;
    first
        .split([' ', ','])
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .find_map(|token| {
            let version = token
                .strip_prefix(">=")
                .or_else(|| token.strip_prefix('='))
                .or_else(|| {
                    token
                        .starts_with(|c: char| c.is_ascii_digit() || c == 'v')
                        .then_some(token)
                })?;
            let version = version.trim().trim_start_matches('v');
            semver::Version::parse(version)
                .ok()
                .map(|v| format!("{}.{}.{}", v.major, v.minor, v.patch))
        })
}

/// The push stage: builds the bundle from the tree, decides under which version it is
/// published (`spec.publish.versionPolicy`), and pushes it with every tag — or nothing, when
/// the registry already holds this content as that version.
async fn push_bundle(
    input: &PipelineInput<'_>,
    spec: &PackageSourceSpec,
    version: &str,
    contents: &VendirLock,
) -> Result<(Pushed, revision::Decision, Vec<String>, Option<String>), PipelineError> {
    let mut build_options = BuildOptions::default();
    build_options.exclude.extend(input.exclude.iter().cloned());
    // The controller's work directory keeps layer digests next to its other caches; the CLI
    // (no cache_dir) uses the user's cache.
    let layer_cache = match &input.cache_dir {
        Some(dir) => Some(bundle::LayerCache::new(dir.join("layers"))),
        None => bundle::LayerCache::user_default(),
    };
    let built = bundle::build_with_cache(
        &[input.root.to_owned()],
        &build_options,
        layer_cache.as_ref(),
    )
    .map_err(|e| PipelineError::new(Stage::Push, reasons::PUSH_FAILED, e.to_string(), false))?;
    let repository = input
        .repository_override
        .clone()
        .unwrap_or_else(|| spec.bundle.repository.clone());
    let declared_tag = revision::tag_of(version);
    let tags_for = |published: &str| match &input.tags_override {
        // The CLI's --tag list, with the version's tag (if it names it) following a revision.
        Some(tags) => tags
            .iter()
            .map(|t| {
                if *t == declared_tag {
                    revision::tag_of(published)
                } else {
                    t.clone()
                }
            })
            .collect(),
        None => spec.bundle.tags_for(published),
    };
    let declared_tags = tags_for(version);
    let location = |tags: &[String], version: &str| {
        let first_tag = tags
            .first()
            .cloned()
            .unwrap_or_else(|| revision::tag_of(version));
        Location::parse(&format!("{repository}:{first_tag}")).map_err(|e| {
            PipelineError::new(Stage::Push, reasons::INVALID_SPEC, e.to_string(), false)
        })
    };
    let target = location(&declared_tags, version)?;
    // Versions are immutable only where a tag names them: a bundle pushed under other tags
    // (or into an OCI layout) has no version to protect.
    let decided = matches!(target, Location::Registry(_)) && declared_tags.contains(&declared_tag);
    let decision = match &target {
        Location::Registry(reference) if decided => revision::decide(
            input.registry,
            reference,
            version,
            &built,
            spec.publish.version_policy,
        )
        .await
        .map_err(|e| {
            // Reading the registry here fails as the push itself would: the same reasons.
            let reason = match &e {
                revision::RevisionError::Refused { .. } => reasons::VERSION_IMMUTABLE,
                revision::RevisionError::Registry { source, .. } if source.is_auth() => {
                    reasons::AUTHENTICATION_FAILED
                }
                revision::RevisionError::Registry { source, .. } if source.is_denied() => {
                    reasons::UPSTREAM_DENIED
                }
                _ => reasons::PUSH_FAILED,
            };
            let retryable = e.is_retryable();
            PipelineError::new(Stage::Push, reason, e.to_string(), retryable)
        })?,
        _ => revision::Decision::Push {
            version: version.to_owned(),
            changed_from: None,
            tag_digest: None,
        },
    };
    // Before the bundle that names them: a bundle's tag never points at a bundle whose
    // images are not next to it yet. Also for a bundle already pushed (relocation asked for
    // later, or an image removed since): the copy asks one question per image when all are
    // there.
    let relocated = match &target {
        Location::Registry(_) if spec.bundle.relocate_images => {
            relocate_images(input, &repository, built.images_lock()).await?
        }
        _ => Vec::new(),
    };
    // Signed before any tag names it: a policy that admits signed bundles only never sees
    // this one unsigned. Also a version already pushed (signing asked for later).
    let signed_digest = match &decision {
        revision::Decision::Existing { image, .. } => {
            image.rsplit_once('@').map_or(built.digest(), |(_, d)| d)
        }
        revision::Decision::Push { .. } => built.digest(),
    };
    // The signature and the provenance are independent artifacts: written side by side.
    let signature = match &target {
        Location::Registry(reference) => {
            let existing = matches!(decision, revision::Decision::Existing { .. });
            let sign = async {
                match input.signing {
                    Some(key) => sign_bundle(input, reference, signed_digest, key)
                        .await
                        .map(Some),
                    None => Ok(None),
                }
            };
            let attest = attach_provenance(
                input,
                reference,
                signed_digest,
                decision.version(),
                contents,
                existing,
            );
            tokio::try_join!(sign, attest)?.0
        }
        Location::Layout(_) => None,
    };
    if let revision::Decision::Existing { image, .. } = &decision {
        let pushed = Pushed {
            image: image.clone(),
            tags: tags_for(decision.version()),
            uploaded: Vec::new(),
            written_tags: Vec::new(),
            size: built.size(),
        };
        return Ok((pushed, decision, relocated, signature));
    }
    let tags = tags_for(decision.version());
    let target = location(&tags, decision.version())?;
    // The decision has just read the version's tag: the push need not ask again.
    let mut push_options = PushOptions::default();
    if decided && let revision::Decision::Push { tag_digest, .. } = &decision {
        push_options.known_tags = vec![(revision::tag_of(decision.version()), tag_digest.clone())];
    }
    let pushed = bundle::push(input.registry, &built, &target, &tags, &push_options)
        .await
        .map_err(|e| {
            PipelineError::new(
                Stage::Push,
                push_reason(&e),
                e.to_string(),
                e.is_retryable(),
            )
        })?;
    Ok((pushed, decision, relocated, signature))
}

/// Signs the bundle `digest` of `reference`'s repository with `key` (nothing is written when
/// this key's signature is there already). Returns the signature's reference.
async fn sign_bundle(
    input: &PipelineInput<'_>,
    reference: &crate::registry::Reference,
    digest: &str,
    key: &crate::registry::cosign::SigningKey,
) -> Result<String, PipelineError> {
    let signed = crate::registry::cosign::sign(input.registry, reference, digest, key)
        .await
        .map_err(|e| {
            cosign_failure(
                &e,
                reasons::SIGNING_FAILED,
                format!("signing {digest} (bundle.signing): {e}"),
            )
        })?;
    Ok(signed.signature().to_owned())
}

/// A failed signature or attestation as the push stage's failure: the registry's refusals
/// as for a push, anything else as `otherwise`.
fn cosign_failure(
    e: &crate::registry::cosign::CosignError,
    otherwise: &'static str,
    message: String,
) -> PipelineError {
    let reason = if e.is_auth() {
        reasons::AUTHENTICATION_FAILED
    } else if e.is_denied() {
        reasons::UPSTREAM_DENIED
    } else {
        otherwise
    };
    PipelineError::new(Stage::Push, reason, message, e.is_retryable())
}

/// Attaches the bundle's provenance (`publish::provenance`) next to it, signed when the
/// bundle is. A bundle pushed before (`existing`) keeps any provenance it has.
async fn attach_provenance(
    input: &PipelineInput<'_>,
    reference: &crate::registry::Reference,
    digest: &str,
    version: &str,
    contents: &VendirLock,
    existing: bool,
) -> Result<(), PipelineError> {
    let lock_path = input.root.join(".imgpkg").join("images.yml");
    let images_lock = std::fs::read(&lock_path).map_err(|e| {
        PipelineError::new(
            Stage::Push,
            reasons::PUSH_FAILED,
            format!("reading {}: {e}", lock_path.display()),
            true,
        )
    })?;
    let repository = format!("{}/{}", reference.registry(), reference.repository());
    let statement = publish::provenance::statement(
        &repository,
        digest,
        version,
        input.spec,
        contents,
        &images_lock,
    );
    crate::registry::cosign::attestation::attach(
        input.registry,
        reference,
        digest,
        publish::provenance::PREDICATE_TYPE,
        &statement,
        input.signing,
        existing,
    )
    .await
    .map_err(|e| {
        cosign_failure(
            &e,
            reasons::PUSH_FAILED,
            format!("attaching the provenance of {digest}: {e}"),
        )
    })?;
    Ok(())
}

/// The condition reason of a failed push or copy.
fn push_reason(e: &bundle::BundleError) -> &'static str {
    if e.is_auth() {
        reasons::AUTHENTICATION_FAILED
    } else if e.is_denied() {
        reasons::UPSTREAM_DENIED
    } else {
        reasons::PUSH_FAILED
    }
}

/// `bundle.relocateImages`: every image `lock` names (bundles among them with what they
/// lock) copied into `repository`, as `imgpkg copy --to-repo` does, with the registry
/// client (and so the credentials) the lock and push use. Returns where each went.
async fn relocate_images(
    input: &PipelineInput<'_>,
    repository: &str,
    lock: &crate::carvel::ImagesLock,
) -> Result<Vec<String>, PipelineError> {
    if lock.images.is_empty() {
        return Ok(Vec::new());
    }
    let mut options = bundle::CopyOptions {
        scratch: input.cache_dir.clone(),
        ..bundle::CopyOptions::default()
    };
    // A nested bundle's layer is spooled to read its lock: within the object's disk budget.
    if let Some(budget) = input.disk_budget {
        options.limits.max_bundle_layer_bytes = options.limits.max_bundle_layer_bytes.min(budget);
    }
    if let Some(dir) = &options.scratch {
        std::fs::create_dir_all(dir).map_err(|e| {
            PipelineError::new(
                Stage::Push,
                reasons::PUSH_FAILED,
                format!("creating {}: {e}", dir.display()),
                true,
            )
        })?;
    }
    let copied = bundle::copy(
        input.registry,
        input.registry,
        &bundle::CopySource::Locked(lock.clone()),
        &bundle::CopyTarget::Repo(repository.to_owned()),
        &options,
    )
    .await
    .map_err(|e| {
        PipelineError::new(
            Stage::Push,
            push_reason(&e),
            format!("copying the locked images into {repository} (bundle.relocateImages): {e}"),
            e.is_retryable(),
        )
    })?;
    let mut relocated: Vec<String> = copied.images.into_iter().map(|(_, to)| to).collect();
    relocated.sort();
    relocated.dedup();
    Ok(relocated)
}

/// The render stage: Package + PackageMetadata for the pushed bundle.
fn render(
    input: &PipelineInput<'_>,
    spec: &PackageSourceSpec,
    version: &str,
    pushed: &Pushed,
    charts: Option<Vec<PathBuf>>,
) -> Result<(Package, PackageMetadata), PipelineError> {
    let config_dir = input.root.join("config");
    let chart = chart_in_bundle(input, charts)?;
    let derived = if spec.package.values_schema.is_some() {
        None
    } else if let Some(chart) = &chart {
        let path = input.root.join(&chart.path);
        publish::chart_schema::derive_from(&path, |name| {
            lock::helm::chart_file(&path, name, publish::chart_schema::MAX_FILE_BYTES).map_err(
                |reason| publish::chart_schema::ChartSchemaError::Invalid {
                    path: path.join(name),
                    reason,
                },
            )
        })
        .map_err(|e| {
            PipelineError::new(Stage::Render, reasons::PUBLISH_FAILED, e.to_string(), false)
        })?
    } else if config_dir.is_dir() {
        publish::values_schema::derive(&config_dir).map_err(|e| {
            PipelineError::new(Stage::Render, reasons::PUBLISH_FAILED, e.to_string(), false)
        })?
    } else {
        None
    };
    publish::render(&Release {
        package: &spec.package,
        version,
        bundle_image: &pushed.image,
        derived_values_schema: derived,
        helm_chart_path: chart.as_ref().map(|c| c.path.as_str()),
        overlay_paths: chart
            .as_ref()
            .map(|c| c.overlays.clone())
            .unwrap_or_default(),
        released_at: input.now,
        labels: input.labels.clone(),
        namespace: input.namespace.as_deref(),
    })
    .map_err(|e| PipelineError::new(Stage::Render, reasons::INVALID_SPEC, e.to_string(), false))
}

/// The top-level paths of `root` that go into the bundle: only those are scanned for images,
/// so rendered Packages or other files next to the bundle are never locked into it.
fn bundle_inputs(root: &Path, exclude: &[String]) -> Result<Vec<PathBuf>, PipelineError> {
    let io = |e: std::io::Error| {
        PipelineError::new(
            Stage::Lock,
            reasons::LOCK_FAILED,
            format!("reading {}: {e}", root.display()),
            true,
        )
    };
    let mut inputs = Vec::new();
    for entry in std::fs::read_dir(root).map_err(io)? {
        let entry = entry.map_err(io)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !exclude.contains(&name) && name != ".git" {
            inputs.push(entry.path());
        }
    }
    inputs.sort();
    Ok(inputs)
}

/// Credentials are wrong for at least one registry: retrying will not help.
fn lock_is_auth(e: &lock::LockError) -> bool {
    match e {
        lock::LockError::Resolve { cause, .. } => cause.is_auth(),
        lock::LockError::Registry(cause) => cause.is_auth(),
        lock::LockError::Many(errors) => errors.iter().any(lock_is_auth),
        _ => false,
    }
}

/// Bytes of the files under `dir`, not following links (0 when it does not exist). Apparent
/// sizes: every unpacker writes the bytes it counts, so a tree has no holes to hide in.
pub fn disk_usage(dir: &Path) -> u64 {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(Result::ok)
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

/// The per-object disk budget, once the contents are on disk: the synced tree plus the
/// caches that make the next sync cheap (git objects, downloads). Each content was already
/// stopped at the budget while it arrived; this catches several that fit alone.
fn check_disk_budget(input: &PipelineInput<'_>, budget: u64) -> Result<(), PipelineError> {
    let used = disk_usage(input.root) + input.cache_dir.as_deref().map_or(0, disk_usage);
    if used <= budget {
        return Ok(());
    }
    Err(over_budget(
        &format!("the synced contents and their caches take {}", size(used)),
        budget,
    ))
}

fn over_budget(what: &str, budget: u64) -> PipelineError {
    PipelineError::new(
        Stage::Sync,
        reasons::DISK_BUDGET_EXCEEDED,
        format!(
            "{what}: over the per-object disk budget of {} (--max-object-disk); narrow the \
             contents (includePaths, newRootPath) or ask the operator for a larger budget",
            size(budget)
        ),
        false,
    )
}

/// Whether a sync failed because one content outgrew `clamp`, the per-content byte cap the
/// disk budget set (a cap on files or directories is not the budget's).
fn outgrew(e: &sync::SyncError, clamp: u64) -> bool {
    let sync::SyncError::Contents { cause, .. } = e else {
        return false;
    };
    match cause.as_ref() {
        sync::FetchError::TooLarge { limit } => *limit == clamp,
        sync::FetchError::Archive(sync::ArchiveError::TooLarge { what, limit }) => {
            *limit == clamp && what.starts_with("bytes")
        }
        _ => false,
    }
}

/// `bytes` for a person: whole bytes below 1 KiB, else binary units with one decimal.
fn size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// The condition reason for a lock failure, and whether retrying later can help. A registry
/// the egress policy refuses is the sync's `UpstreamDenied`: the same flag, the same fix.
fn classify_lock(e: &lock::LockError) -> (&'static str, bool) {
    if lock_is_auth(e) {
        (reasons::AUTHENTICATION_FAILED, e.is_retryable())
    } else if e.is_denied() {
        (reasons::UPSTREAM_DENIED, false)
    } else {
        (reasons::LOCK_FAILED, e.is_retryable())
    }
}

/// The condition reason for a sync failure, and whether retrying later can help.
fn classify_sync(e: &sync::SyncError) -> (&'static str, bool) {
    use sync::FetchError as F;
    match e {
        sync::SyncError::Config(_) => (reasons::INVALID_SPEC, false),
        sync::SyncError::Io { .. } => (reasons::FETCH_FAILED, true),
        sync::SyncError::Contents { cause, .. } => match cause.as_ref() {
            F::Unauthorized { .. } => (reasons::AUTHENTICATION_FAILED, false),
            F::Checksum { .. } => (reasons::CHECKSUM_MISMATCH, false),
            F::Secret { .. } => (reasons::REFERENCE_NOT_FOUND, false),
            // A tag or release that does not exist yet may appear upstream.
            F::NoMatchingVersion { .. } => (reasons::NO_MATCHING_VERSION, true),
            F::UnknownRef { .. } => (reasons::FETCH_FAILED, true),
            F::Request { .. } | F::Timeout(_) | F::Git(_) | F::Io { .. } => {
                (reasons::FETCH_FAILED, true)
            }
            F::Status { status, .. } => (
                reasons::FETCH_FAILED,
                *status == 404 || *status == 408 || *status == 429 || *status >= 500,
            ),
            F::NotSupported(_) | F::Invalid(_) | F::Locked(_) => (reasons::INVALID_SPEC, false),
            F::TooLarge { .. } | F::Archive(_) | F::Filter(_) => (reasons::FETCH_FAILED, false),
            F::Denied(_) => (reasons::UPSTREAM_DENIED, false),
            F::Verification(_) => (reasons::VERIFICATION_FAILED, false),
        },
    }
}

/// The package version: `spec.package.version`, or the highest version the `versionFrom`
/// content fetched that satisfies its constraints (a leading `v` dropped).
pub fn version(spec: &PackageSourceSpec, contents: &VendirLock) -> Result<String, PipelineError> {
    if let Some(v) = &spec.package.version {
        return Ok(v.clone());
    }
    let Some(from) = &spec.package.version_from else {
        return Err(PipelineError::new(
            Stage::Sync,
            reasons::INVALID_SPEC,
            "set package.version or package.versionFrom",
            false,
        ));
    };
    let entry = version_entry(from, contents)?;
    use vendir::Locked;
    let candidates: Vec<String> = match entry.locked() {
        Some(Locked::Git(git)) => git.tags.clone(),
        Some(Locked::GithubRelease(release)) => vec![release.tag.clone()],
        Some(Locked::HelmChart(chart)) => vec![chart.version.clone()],
        Some(
            Locked::Hg(_)
            | Locked::Http
            | Locked::Image(_)
            | Locked::Manual
            | Locked::Directory
            | Locked::Inline
            | Locked::ImgpkgBundle(_),
        )
        | None => {
            return Err(PipelineError::new(
                Stage::Sync,
                reasons::INVALID_SPEC,
                format!(
                    "versionFrom {}: only git, githubRelease and helmChart contents carry a version",
                    from.directory
                ),
                false,
            ));
        }
    };
    let range = from
        .constraints
        .as_deref()
        .map(VersionRange::parse)
        .transpose()
        .map_err(|e| {
            PipelineError::new(
                Stage::Sync,
                reasons::INVALID_SPEC,
                format!("versionFrom.constraints: {e}"),
                false,
            )
        })?;
    // The content's own selection already chose what was fetched: its prereleases count.
    let best = crate::carvel::selection::highest(
        candidates.iter().map(String::as_str),
        range.as_ref(),
        crate::carvel::selection::Prereleases::Allowed(&[]),
    );
    best.map(|(_, v)| v.to_string()).ok_or_else(|| {
        PipelineError::new(
            Stage::Sync,
            reasons::NO_MATCHING_VERSION,
            format!(
                "versionFrom {}: none of the fetched versions [{}] is semver{}; pin a tag or adjust the constraints",
                from.directory,
                candidates.join(", "),
                from.constraints.as_deref().map(|c| format!(" matching {c:?}")).unwrap_or_default()
            ),
            // A new upstream tag can fix this without a spec change.
            true,
        )
    })
}

fn version_entry<'l>(
    from: &VersionFrom,
    contents: &'l VendirLock,
) -> Result<&'l LockDirectoryContents, PipelineError> {
    let missing =
        |what: String| PipelineError::new(Stage::Sync, reasons::INVALID_SPEC, what, false);
    let dir = contents
        .directories
        .iter()
        .find(|d| d.path == from.directory)
        .ok_or_else(|| {
            missing(format!(
                "versionFrom.directory {:?} is not a contents path",
                from.directory
            ))
        })?;
    match (&from.content, dir.contents.as_slice()) {
        (None, [only]) => Ok(only),
        (None, _) => Err(missing(format!(
            "versionFrom.directory {:?} has several contents: set versionFrom.content",
            from.directory
        ))),
        (Some(path), all) => all.iter().find(|c| &c.path == path).ok_or_else(|| {
            missing(format!(
                "versionFrom.content {path:?} is not in {:?}",
                from.directory
            ))
        }),
    }
}

/// The Helm chart a bundle installs, in the bundle's terms.
struct BundleChart {
    /// Relative to the bundle root, `/`-separated.
    path: String,
    /// ytt files next to the chart under `config/` (each a top-level entry of `config/`).
    overlays: Vec<String>,
}

/// The chart in the bundle, whatever content brought it (helmChart, or a git or http content
/// holding a chart directory). A Package installs one chart: several are refused.
fn chart_in_bundle(
    input: &PipelineInput<'_>,
    known: Option<Vec<PathBuf>>,
) -> Result<Option<BundleChart>, PipelineError> {
    let invalid =
        |message: String| PipelineError::new(Stage::Render, reasons::INVALID_SPEC, message, false);
    // The lock's walk found them already; without a lock, the tree is walked here.
    let charts = match known {
        Some(charts) => charts,
        None => lock::find_charts(&bundle_inputs(input.root, &input.exclude)?)
            .map_err(|e| invalid(e.to_string()))?,
    };
    let relative = |chart: &Path| {
        chart
            .strip_prefix(input.root)
            .unwrap_or(chart)
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join("/")
    };
    let path = match charts.as_slice() {
        [] => return Ok(None),
        [chart] => relative(chart),
        several => {
            return Err(invalid(format!(
                "the contents hold {} Helm charts ({}): a Package installs one chart; package \
                 each in its own PackageSource, or make one a dependency of the other",
                several.len(),
                several
                    .iter()
                    .map(|c| relative(c))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    };
    let mut overlays = Vec::new();
    if let Some(inside) = path.strip_prefix("config/") {
        let chart_entry = inside.split('/').next().unwrap_or(inside);
        let config = input.root.join("config");
        let entries = std::fs::read_dir(&config)
            .map_err(|e| invalid(format!("reading {}: {e}", config.display())))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name != chart_entry && holds_ytt_files(&entry.path()) {
                overlays.push(format!("config/{name}"));
            }
        }
        overlays.sort();
    }
    Ok(Some(BundleChart { path, overlays }))
}

/// Whether `path` is, or holds, a file ytt reads (YAML or Starlark).
fn holds_ytt_files(path: &Path) -> bool {
    walkdir::WalkDir::new(path)
        .max_depth(16)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .any(|e| {
            matches!(
                e.path().extension().and_then(|x| x.to_str()),
                Some("yaml" | "yml" | "star")
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::carvel::vendir::{LockDirectory, LockGit};

    fn spec_from(constraints: Option<&str>) -> PackageSourceSpec {
        let yaml = format!(
            "package:\n  refName: a.b.c\n  versionFrom:\n    directory: config/upstream\n{}contents: []\nbundle:\n  repository: r.io/a\n",
            constraints
                .map(|c| format!("    constraints: \"{c}\"\n"))
                .unwrap_or_default()
        );
        crate::carvel::yaml::from_str("spec", &yaml).unwrap()
    }

    fn lock_with_tags(tags: &[&str]) -> VendirLock {
        VendirLock::new(vec![LockDirectory {
            path: "config/upstream".into(),
            contents: vec![LockDirectoryContents {
                path: ".".into(),
                git: Some(LockGit {
                    sha: "a".repeat(40),
                    tags: tags.iter().map(|t| t.to_string()).collect(),
                    commit_title: "release".into(),
                }),
                ..Default::default()
            }],
        }])
    }

    /// Two inline files of 600 bytes, in one content or in two.
    fn inline_spec(split: bool) -> PackageSourceSpec {
        let body = "x".repeat(600);
        let content = |path: &str, files: &[&str]| {
            let paths: String = files
                .iter()
                .map(|f| format!("        {f}: {body}\n"))
                .collect();
            format!("  - path: {path}\n    inline:\n      paths:\n{paths}")
        };
        let contents = if split {
            content("a", &["a.txt"]) + &content("b", &["b.txt"])
        } else {
            content(".", &["a.txt", "b.txt"])
        };
        let yaml = format!(
            "package: {{refName: a.b.c, version: 1.0.0}}\ncontents:\n- path: config\n  contents:\n{contents}bundle:\n  repository: 127.0.0.1:1/a\n"
        );
        crate::carvel::yaml::from_str("spec", &yaml).unwrap()
    }

    async fn run_with_budget(split: bool, budget: Option<u64>) -> Result<Outcome, PipelineError> {
        let dir = tempfile::tempdir().unwrap();
        let spec = inline_spec(split);
        let registry = Registry::new(crate::registry::RegistryOptions::default()).unwrap();
        let secrets = sync::MemorySecrets::default();
        let input = PipelineInput {
            spec: &spec,
            root: &dir.path().join("bundle"),
            exclude: Vec::new(),
            registry: &registry,
            secrets: &secrets,
            cache_dir: Some(dir.path().join("cache")),
            previous: None,
            tags_override: None,
            repository_override: None,
            now: jiff::Timestamp::UNIX_EPOCH,
            labels: BTreeMap::new(),
            namespace: None,
            on_stage: None,
            sync_policy: sync::Policy::default(),
            egress: crate::registry::Egress::default(),
            disk_budget: budget,
            helm_binary: Path::new("helm"),
            signing: None,
        };
        run(&input).await
    }

    #[tokio::test]
    async fn contents_over_the_disk_budget_stop_before_the_lock() {
        // Each content fits alone: the tree is measured once they are all on disk.
        let err = run_with_budget(true, Some(1000)).await.unwrap_err();
        assert_eq!(
            (err.stage, err.reason, err.retryable),
            (Stage::Sync, reasons::DISK_BUDGET_EXCEEDED, false)
        );
        assert!(
            err.message
                .contains(" KiB: over the per-object disk budget of 1000 B")
                && err.message.contains("--max-object-disk"),
            "{}",
            err.message
        );
        // One content over the whole budget is stopped while it is written.
        let err = run_with_budget(false, Some(1000)).await.unwrap_err();
        assert_eq!(err.reason, reasons::DISK_BUDGET_EXCEEDED, "{err}");
        assert!(
            err.message.contains("limit of 1000 bytes"),
            "{}",
            err.message
        );
        // Within the budget (or without one) the same specs get past the sync: they fail
        // only where a registry is needed, and this one is unreachable.
        for (split, budget) in [(true, Some(1_000_000)), (false, None)] {
            let err = run_with_budget(split, budget).await.unwrap_err();
            assert_ne!(err.stage, Stage::Sync, "{err}");
        }
    }

    #[test]
    fn a_content_stopped_at_the_clamped_cap_is_over_the_budget() {
        let contents = |cause: sync::FetchError| sync::SyncError::Contents {
            directory: "config".into(),
            contents: ".".into(),
            kind: "http",
            upstream: "https://example.com/a.tgz".into(),
            cause: Box::new(cause),
        };
        assert!(outgrew(
            &contents(sync::FetchError::TooLarge { limit: 4096 }),
            4096
        ));
        assert!(outgrew(
            &contents(sync::FetchError::Archive(sync::ArchiveError::TooLarge {
                what: "bytes",
                limit: 4096
            })),
            4096
        ));
        // Another cap (files, or a smaller one of the content's own) is not the budget's.
        assert!(!outgrew(
            &contents(sync::FetchError::TooLarge { limit: 1024 }),
            4096
        ));
        assert!(!outgrew(
            &contents(sync::FetchError::Archive(sync::ArchiveError::TooLarge {
                what: "files",
                limit: 4096
            })),
            4096
        ));
    }

    #[test]
    fn a_registry_the_egress_policy_refuses_is_upstream_denied_in_every_stage() {
        let denied = || {
            crate::registry::RegistryError::Denied(crate::registry::EgressDenied {
                host: "registry.internal".into(),
                address: std::net::Ipv4Addr::LOCALHOST.into(),
                why: "loopback".into(),
                flag: "--deny-local-upstreams",
            })
        };
        let lock_error = lock::LockError::Registry(denied());
        assert_eq!(
            classify_lock(&lock_error),
            (reasons::UPSTREAM_DENIED, false)
        );
        let many = lock::LockError::Many(vec![
            lock::LockError::Registry(denied()),
            lock::LockError::Registry(denied()),
        ]);
        assert_eq!(classify_lock(&many).0, reasons::UPSTREAM_DENIED);
        assert!(bundle::BundleError::Registry(denied()).is_denied());
    }

    #[test]
    fn sizes_read_as_a_person_would_write_them() {
        assert_eq!(size(999), "999 B");
        assert_eq!(size(1200), "1.2 KiB");
        assert_eq!(size(4 * 1024 * 1024 * 1024), "4.0 GiB");
    }

    #[test]
    fn version_from_picks_the_highest_matching_tag() {
        let lock = lock_with_tags(&["v1.9.0", "v1.9.1", "v2.0.0", "latest"]);
        assert_eq!(version(&spec_from(None), &lock).unwrap(), "2.0.0");
        assert_eq!(
            version(&spec_from(Some(">=1.9.0 <2.0.0")), &lock).unwrap(),
            "1.9.1"
        );
        let err = version(&spec_from(Some(">=3.0.0")), &lock).unwrap_err();
        assert_eq!(err.reason, reasons::NO_MATCHING_VERSION);
        assert!(
            err.retryable && err.message.contains("v2.0.0"),
            "{}",
            err.message
        );
    }

    #[test]
    fn version_from_names_what_is_missing() {
        let mut spec = spec_from(None);
        spec.package.version_from.as_mut().unwrap().directory = "elsewhere".into();
        let err = version(&spec, &lock_with_tags(&["v1.0.0"])).unwrap_err();
        assert!(
            err.message.contains("\"elsewhere\"") && !err.retryable,
            "{}",
            err.message
        );
    }

    #[test]
    fn charts_render_for_the_lowest_kubernetes_the_package_supports() {
        assert_eq!(
            lowest_version(">=1.24.0 <1.31.0").as_deref(),
            Some("1.24.0")
        );
        assert_eq!(lowest_version("v1.28").as_deref(), None, "not semver");
        assert_eq!(lowest_version("1.28.3").as_deref(), Some("1.28.3"));
        assert_eq!(
            lowest_version(">1.24.0").as_deref(),
            None,
            "no inclusive bound"
        );
        assert_eq!(
            lowest_version(">=1.25.0-0 || >=2.0.0").as_deref(),
            Some("1.25.0")
        );
    }

    #[test]
    fn the_bundle_installs_one_chart_with_the_overlays_next_to_it() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let write = |path: &str, text: &str| {
            let path = root.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        };
        write("config/upstream/Chart.yaml", "name: a\n");
        write("config/upstream/charts/sub/Chart.yaml", "name: sub\n");
        write(
            "config/overlays/fix.yaml",
            "#@ load(\"@ytt:overlay\", \"overlay\")\n",
        );
        write("config/README.md", "not ytt\n");
        write("config/docs/notes.txt", "not ytt\n");
        let spec = inline_spec(false);
        let registry = Registry::new(crate::registry::RegistryOptions::default()).unwrap();
        let secrets = sync::MemorySecrets::default();
        let input = PipelineInput {
            spec: &spec,
            root,
            exclude: Vec::new(),
            registry: &registry,
            secrets: &secrets,
            cache_dir: None,
            previous: None,
            tags_override: None,
            repository_override: None,
            now: jiff::Timestamp::UNIX_EPOCH,
            labels: BTreeMap::new(),
            namespace: None,
            on_stage: None,
            sync_policy: sync::Policy::default(),
            egress: crate::registry::Egress::default(),
            disk_budget: None,
            helm_binary: Path::new("helm"),
            signing: None,
        };
        let chart = chart_in_bundle(&input, None).unwrap().expect("a chart");
        assert_eq!(
            chart.path, "config/upstream",
            "a subchart renders with its parent"
        );
        assert_eq!(chart.overlays, ["config/overlays"]);
        // The charts the lock's walk found are taken as they are: no second walk.
        assert!(chart_in_bundle(&input, Some(Vec::new())).unwrap().is_none());
        let known = vec![root.join("config/upstream")];
        let chart = chart_in_bundle(&input, Some(known))
            .unwrap()
            .expect("a chart");
        assert_eq!(chart.path, "config/upstream");

        write("vendor/other/Chart.yaml", "name: b\n");
        let err = chart_in_bundle(&input, None).err().expect("two charts");
        assert_eq!(err.reason, reasons::INVALID_SPEC);
        assert!(
            err.message
                .contains("2 Helm charts (config/upstream, vendor/other)"),
            "{}",
            err.message
        );
    }
}
