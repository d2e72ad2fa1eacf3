//! The `image` and `imgpkgBundle` sources, through the shared registry client (mirrors, CAs,
//! docker credentials), plus the registry plumbing the `oci://` Helm charts share.
//!
//! - `image`: the image's layers are extracted in order into the content directory, OCI
//!   whiteouts applied, as `imgpkg pull -i` (which vendir runs) does; only regular files and
//!   directories are written, links and devices are skipped, as imgpkg skips them.
//! - `imgpkgBundle`: [`crate::bundle::pull`], which verifies every digest and refuses unsafe
//!   paths; the bundle's `.imgpkg/` is kept, as vendir keeps it. With `recursive`, the
//!   bundles its images.yml lists are pulled into `.imgpkg/bundles/sha256-<hex>/`, as
//!   `imgpkg pull --recursive` lays them out.
//!
//! Both lock `REPO@DIGEST` and the tag. A `secretRef` is a `kubernetes.io/dockerconfigjson`
//! Secret, or `username`/`password` (or `token`) for the image's registry; it is merged over
//! the registry's default credentials for this content only.

use std::io::{self, Read};
use std::ops::Deref;
use std::path::Path;

use serde::Deserialize;

use super::fsutil::{remove_any, safe_join};
use super::{Context, FetchError, Limits, highest_version};
use crate::bundle::{self, BundleError, Location};
use crate::carvel::common::LocalRef;
use crate::carvel::selection::VersionSelection;
use crate::carvel::vendir::{ImageSource, ImgpkgBundleSource, LockImage, LockImgpkgBundle};
use crate::registry::{
    Credentials, ErrorClass, Reference, Registry, RegistryError, parse_reference,
};

const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// The registry client for one content: the shared one, or one carrying the content's
/// `secretRef` credentials on top of the defaults (a separate client, so tokens obtained with
/// one content's credentials are never reused for another's).
pub(crate) enum RegistryHandle<'a> {
    Shared(&'a Registry),
    Owned(Box<Registry>),
}

impl Deref for RegistryHandle<'_> {
    type Target = Registry;
    fn deref(&self) -> &Registry {
        match self {
            RegistryHandle::Shared(r) => r,
            RegistryHandle::Owned(r) => r,
        }
    }
}

pub(crate) fn parse(reference: &str) -> Result<Reference, FetchError> {
    parse_reference(reference).map_err(|e| FetchError::Invalid(e.to_string()))
}

/// The client to use for `reference`, with `secret_ref`'s credentials merged in.
pub(crate) fn registry_for<'a>(
    ctx: &Context<'a>,
    secret_ref: Option<&LocalRef>,
    reference: &Reference,
) -> Result<RegistryHandle<'a>, FetchError> {
    let Some(shared) = ctx.options.registry else {
        return Err(FetchError::Invalid(
            "registry sources need registry access, which this sync was not given".to_owned(),
        ));
    };
    let Some(secret_ref) = secret_ref else {
        return Ok(RegistryHandle::Shared(shared));
    };
    let secret = ctx.secret(&secret_ref.name)?;
    let source = format!("Secret {:?}", secret_ref.name);
    let credentials = if let Some(json) = secret.data.get(".dockerconfigjson") {
        Credentials::from_docker_config_json(json, &source).map_err(|e| FetchError::Secret {
            name: secret_ref.name.clone(),
            problem: e.to_string(),
        })?
    } else {
        if let Some(key) = secret
            .data
            .keys()
            .find(|k| !matches!(k.as_str(), "username" | "password" | "token"))
        {
            return Err(FetchError::Secret {
                name: secret_ref.name.clone(),
                problem: format!(
                    "unknown key {key:?} (expected .dockerconfigjson, or username, password, \
                     token)"
                ),
            });
        }
        // The credentials go to the host actually contacted (a mirror, when one answers).
        let host = shared.contact(reference).resolve_registry().to_owned();
        match (secret.get("username"), secret.get("token")) {
            (Some(user), _) => {
                Credentials::basic(&host, &user, &secret.get("password").unwrap_or_default())
            }
            (None, Some(token)) => {
                let json = serde_json::json!({"auths": {host: {"registrytoken": token}}});
                Credentials::from_docker_config_json(json.to_string().as_bytes(), &source).map_err(
                    |e| FetchError::Secret {
                        name: secret_ref.name.clone(),
                        problem: e.to_string(),
                    },
                )?
            }
            (None, None) => {
                return Err(FetchError::Secret {
                    name: secret_ref.name.clone(),
                    problem: "no credentials (expected .dockerconfigjson, username or token)"
                        .to_owned(),
                });
            }
        }
    };
    Ok(RegistryHandle::Owned(Box::new(
        shared.with_credentials(credentials),
    )))
}

/// Registry failures as the sync's errors, keeping their meaning for the status conditions:
/// credentials refused, not found, worth retrying, or permanent.
pub(crate) fn registry_error(error: RegistryError) -> FetchError {
    let reference = match &error {
        RegistryError::Request { reference, .. } => reference.clone(),
        RegistryError::InvalidReference { reference, .. } => reference.clone(),
        _ => String::new(),
    };
    if let RegistryError::Denied(denied) = error {
        return FetchError::Denied(denied);
    }
    match error.class() {
        ErrorClass::Auth => FetchError::Unauthorized {
            status: 401,
            url: reference,
        },
        ErrorClass::NotFound => FetchError::Status {
            status: 404,
            url: reference,
        },
        ErrorClass::Retryable => FetchError::Request {
            url: reference,
            cause: error.to_string(),
        },
        ErrorClass::Permanent => FetchError::Invalid(error.to_string()),
    }
}

/// Every tag of `repo`'s repository.
pub(crate) async fn list_tags(
    registry: &Registry,
    repo: &Reference,
) -> Result<Vec<String>, FetchError> {
    let contacted = registry.contact(repo);
    registry
        .distribution()
        .list_tags(&contacted)
        .await
        .map_err(registry_error)
}

/// The digest `reference` resolves to: its own when it has one, else a manifest HEAD.
pub(crate) async fn head_digest(
    registry: &Registry,
    reference: &Reference,
) -> Result<String, FetchError> {
    if let Some(digest) = reference.digest() {
        return Ok(digest.to_owned());
    }
    registry
        .distribution()
        .digest(reference)
        .await
        .map_err(registry_error)
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Manifest {
    #[serde(default)]
    media_type: String,
    #[serde(default)]
    manifests: Vec<serde_json::Value>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    pub size: i64,
}

impl Manifest {
    fn is_index(&self) -> bool {
        !self.manifests.is_empty() || matches!(self.media_type.as_str(), OCI_INDEX | DOCKER_LIST)
    }
}

/// Fetches and parses an image manifest; returns its digest (computed, and checked against
/// the reference's own) and the manifest. Indexes are refused: which platform's content
/// belongs in a package cannot be guessed.
pub(crate) async fn pull_manifest(
    registry: &Registry,
    reference: &Reference,
) -> Result<(String, Manifest), FetchError> {
    let (digest, manifest) = pull_any_manifest(registry, reference).await?;
    if manifest.is_index() {
        return Err(FetchError::Invalid(format!(
            "{reference} is a multi-platform index; name one platform's image by digest"
        )));
    }
    Ok((digest, manifest))
}

/// [`pull_manifest`], indexes included.
async fn pull_any_manifest(
    registry: &Registry,
    reference: &Reference,
) -> Result<(String, Manifest), FetchError> {
    let contacted = registry.contact(reference);
    let target = contacted.digest().or(contacted.tag()).unwrap_or("latest");
    let bytes = registry
        .distribution()
        .get_manifest(
            &contacted,
            target,
            &[DOCKER_MANIFEST, OCI_MANIFEST, OCI_INDEX, DOCKER_LIST],
        )
        .await
        .map_err(registry_error)?;
    let digest = bundle::image::sha256_digest(&bytes);
    if let Some(wanted) = reference.digest()
        && wanted != digest
    {
        return Err(FetchError::Checksum {
            what: format!("the manifest of {reference}"),
            expected: wanted.trim_start_matches("sha256:").to_owned(),
            actual: digest.trim_start_matches("sha256:").to_owned(),
        });
    }
    let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|e| {
        FetchError::Invalid(format!("{reference}: the manifest is not valid JSON: {e}"))
    })?;
    Ok((digest, manifest))
}

/// Streams one blob into `dest`, refusing it when its manifest declares more than
/// `max_bytes`; the registry client stops at the declared size and checks the digest.
pub(crate) async fn pull_blob_to_file(
    registry: &Registry,
    reference: &Reference,
    descriptor: &Descriptor,
    dest: &Path,
    max_bytes: u64,
) -> Result<(), FetchError> {
    let size = u64::try_from(descriptor.size).map_err(|_| {
        FetchError::Invalid(format!(
            "{reference}: blob {} has a negative size",
            descriptor.digest
        ))
    })?;
    if size > max_bytes {
        return Err(FetchError::TooLarge { limit: max_bytes });
    }
    let contacted = registry.contact(reference);
    let mut file = tokio::fs::File::create(dest)
        .await
        .map_err(FetchError::io(dest))?;
    registry
        .distribution()
        .blob_to_file(&contacted, &descriptor.digest, size, &mut file)
        .await
        .map_err(registry_error)
}

/// The reference to fetch and the tag to lock: the locked `REPO@DIGEST`, the highest tag
/// `selection` allows, or `url` as written.
async fn choose(
    registry: &Registry,
    url: &str,
    selection: Option<&VersionSelection>,
    locked: Option<(String, String)>,
) -> Result<(Reference, String), FetchError> {
    if let Some((image, tag)) = locked {
        return Ok((parse(&image)?, tag));
    }
    if url.is_empty() {
        return Err(FetchError::Invalid("the image URL is empty".to_owned()));
    }
    let written = parse(url)?;
    let Some(selection) = selection else {
        let tag = written.tag().unwrap_or_default().to_owned();
        return Ok((written, tag));
    };
    if written.digest().is_some() || url.rsplit('/').next().is_some_and(|n| n.contains(':')) {
        return Err(FetchError::Invalid(format!(
            "{url}: tagSelection needs a repository without a tag or digest"
        )));
    }
    let tags = list_tags(registry, &written).await?;
    let tag = highest_version(tags.iter().map(String::as_str), selection)?;
    let reference = parse(&format!(
        "{}/{}:{tag}",
        written.registry(),
        written.repository()
    ))?;
    Ok((reference, tag))
}

fn locked_pair(url: Option<&str>, tag: Option<&str>) -> Option<(String, String)> {
    url.map(|u| (u.to_owned(), tag.unwrap_or_default().to_owned()))
}

fn refuse_skip_tls(skip: bool) -> Result<(), FetchError> {
    if skip {
        return Err(FetchError::NotSupported(
            "dangerousSkipTLSVerify (trust the registry's CA with --registry-ca-cert-path, or \
             name it an insecure host)"
                .to_owned(),
        ));
    }
    Ok(())
}

fn repo_at(reference: &Reference, digest: &str) -> String {
    format!(
        "{}/{}@{digest}",
        reference.registry(),
        reference.repository()
    )
}

/// The `image` source; returns the lock and the manifest digest.
pub(crate) async fn fetch_image(
    ctx: &Context<'_>,
    source: &ImageSource,
    locked: Option<&LockImage>,
    out: &Path,
    scratch: &Path,
) -> Result<(LockImage, String), FetchError> {
    refuse_skip_tls(source.dangerous_skip_tls_verify)?;
    let probe = parse(locked.map_or(source.url.as_str(), |l| l.url.as_str()))?;
    let registry = registry_for(ctx, source.secret_ref.as_ref(), &probe)?;
    let locked = locked_pair(
        locked.map(|l| l.url.as_str()),
        locked.map(|l| l.tag.as_str()),
    );
    let (reference, tag) = choose(
        &registry,
        &source.url,
        source.tag_selection.as_ref(),
        locked,
    )
    .await?;
    let (digest, manifest) = pull_manifest(&registry, &reference).await?;
    if let Some(verification) = &source.verify {
        super::verify::cosign_signature(ctx, verification, &registry, &reference, &digest).await?;
    }
    let limits = &ctx.options.limits;
    let total: u64 = manifest
        .layers
        .iter()
        .map(|l| u64::try_from(l.size).unwrap_or(u64::MAX))
        .fold(0, u64::saturating_add);
    if total > limits.max_bytes {
        return Err(FetchError::TooLarge {
            limit: limits.max_bytes,
        });
    }
    let mut blobs = Vec::new();
    for (index, layer) in manifest.layers.iter().enumerate() {
        let path = scratch.join(format!("layer-{index}"));
        pull_blob_to_file(&registry, &reference, layer, &path, limits.max_bytes).await?;
        blobs.push(path);
    }
    let (out_dir, scratch_dir, limits) = (out.to_owned(), scratch.to_owned(), limits.clone());
    let what = reference.to_string();
    tokio::task::spawn_blocking(move || apply_layers(&blobs, &scratch_dir, &out_dir, &limits))
        .await
        .map_err(|e| FetchError::Invalid(format!("extracting {what}: {e}")))??;
    Ok((
        LockImage {
            url: repo_at(&reference, &digest),
            tag,
        },
        digest,
    ))
}

/// The `imgpkgBundle` source; returns the lock and the bundle's digest.
pub(crate) async fn fetch_bundle(
    ctx: &Context<'_>,
    source: &ImgpkgBundleSource,
    locked: Option<&LockImgpkgBundle>,
    out: &Path,
) -> Result<(LockImgpkgBundle, String), FetchError> {
    refuse_skip_tls(source.dangerous_skip_tls_verify)?;
    let probe = parse(locked.map_or(source.image.as_str(), |l| l.image.as_str()))?;
    let registry = registry_for(ctx, source.secret_ref.as_ref(), &probe)?;
    let locked = locked_pair(
        locked.map(|l| l.image.as_str()),
        locked.map(|l| l.tag.as_str()),
    );
    let (reference, tag) = choose(
        &registry,
        &source.image,
        source.tag_selection.as_ref(),
        locked,
    )
    .await?;
    // Verified by digest, and that digest pulled: a tag moved in between is not what is used.
    let reference = match &source.verify {
        Some(verification) => {
            let digest = head_digest(&registry, &reference).await?;
            super::verify::cosign_signature(ctx, verification, &registry, &reference, &digest)
                .await?;
            reference.clone_with_digest(digest)
        }
        None => reference,
    };
    let limits = &ctx.options.limits;
    let pulled = bundle::pull_with(
        &registry,
        &Location::Registry(reference.clone()),
        out,
        &limits.pull(),
    )
    .await
    .map_err(bundle_error)?;
    let digest = pulled
        .image
        .rsplit_once('@')
        .map(|(_, d)| d.to_owned())
        .unwrap_or_default();
    if !pulled.skipped.is_empty() {
        tracing::info!(bundle = %pulled.image, links = pulled.skipped_links, first = ?pulled.skipped, "links in the bundle were not written, as imgpkg skips them");
    }
    if source.recursive {
        pull_nested_bundles(&registry, out, limits).await?;
    }
    Ok((
        LockImgpkgBundle {
            image: pulled.image,
            tag,
        },
        digest,
    ))
}

/// How deep bundles may nest below the one synced; deeper chains are refused rather than
/// followed without end.
const MAX_NESTING: usize = 8;

/// Pulls every bundle that `root`'s `.imgpkg/images.yml` (and theirs, transitively) lists
/// into `root/.imgpkg/bundles/sha256-<hex>/`, as `imgpkg pull --recursive` lays them out: all
/// side by side below the top bundle, each once. Images whose config lacks the bundle label
/// are left out, as imgpkg leaves them. Each nested pull checks the bundle against the digest
/// its parent lists.
async fn pull_nested_bundles(
    registry: &Registry,
    root: &Path,
    limits: &Limits,
) -> Result<(), FetchError> {
    let bundles = root.join(".imgpkg").join("bundles");
    let mut seen = std::collections::HashSet::new();
    let mut queue = std::collections::VecDeque::from([(root.to_owned(), 0usize)]);
    while let Some((dir, depth)) = queue.pop_front() {
        for image in listed_images(&dir)? {
            let reference = parse(&image)?;
            let Some(digest) = reference.digest().map(str::to_owned) else {
                return Err(FetchError::Invalid(format!(
                    "{image} in the .imgpkg/images.yml of a bundle is not a digest reference"
                )));
            };
            if !seen.insert(digest.clone()) || !is_bundle(registry, &reference, limits).await? {
                continue;
            }
            if depth >= MAX_NESTING {
                return Err(FetchError::Invalid(format!(
                    "bundles nest more than {MAX_NESTING} deep (at {image})"
                )));
            }
            let hex = digest.trim_start_matches("sha256:");
            let target = safe_join(&bundles, &format!("sha256-{hex}"))
                .map_err(|e| FetchError::Invalid(format!("nested bundle {image}: {e}")))?;
            std::fs::create_dir_all(&bundles).map_err(FetchError::io(&bundles))?;
            // The content's caps hold for the whole tree, not for each bundle in it.
            let (files, bytes) =
                crate::sync::fsutil::tree_size(root).map_err(FetchError::io(root))?;
            let remaining = bundle::PullLimits {
                max_bytes: limits.max_bytes.saturating_sub(bytes),
                max_files: limits.max_files.saturating_sub(files),
                max_dirs: limits.max_dirs,
            };
            let pulled = bundle::pull_with(
                registry,
                &Location::Registry(reference),
                &target,
                &remaining,
            )
            .await
            .map_err(bundle_error)?;
            tracing::info!(bundle = %pulled.image, "pulled a nested bundle");
            queue.push_back((target, depth + 1));
        }
    }
    Ok(())
}

/// The images a pulled bundle's `.imgpkg/images.yml` lists (none when it has no such file).
fn listed_images(bundle_dir: &Path) -> Result<Vec<String>, FetchError> {
    let path = bundle_dir.join(".imgpkg").join("images.yml");
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(FetchError::io(&path)(e)),
    };
    let lock = crate::carvel::ImagesLock::from_yaml(&text)
        .map_err(|e| FetchError::Invalid(format!("{}: {e}", path.display())))?;
    Ok(lock.images.into_iter().map(|i| i.image).collect())
}

/// Whether the image at `reference` is an imgpkg bundle: a single image (not an index) whose
/// config carries the bundle label.
pub(crate) async fn is_bundle(
    registry: &Registry,
    reference: &Reference,
    limits: &Limits,
) -> Result<bool, FetchError> {
    /// Far above any real image config; a registry sending more is not answering honestly.
    const MAX_CONFIG_BYTES: u64 = 4 << 20;
    #[derive(Deserialize)]
    struct Config {
        #[serde(default)]
        config: Labels,
    }
    #[derive(Default, Deserialize)]
    struct Labels {
        #[serde(rename = "Labels", default)]
        labels: Option<std::collections::BTreeMap<String, String>>,
    }
    let (_, manifest) = pull_any_manifest(registry, reference).await?;
    // A multi-platform image is never a bundle, nor is an artifact without a config.
    if manifest.is_index() {
        return Ok(false);
    }
    let Some(config) = manifest.config else {
        return Ok(false);
    };
    let scratch = tempfile::tempdir().map_err(FetchError::io(Path::new("temporary directory")))?;
    let path = scratch.path().join("config");
    pull_blob_to_file(
        registry,
        reference,
        &config,
        &path,
        MAX_CONFIG_BYTES.min(limits.max_bytes),
    )
    .await?;
    let bytes = std::fs::read(&path).map_err(FetchError::io(&path))?;
    let parsed: Config = match serde_json::from_slice(&bytes) {
        Ok(parsed) => parsed,
        // Not an image config (some other artifact): not a bundle either.
        Err(_) => return Ok(false),
    };
    Ok(parsed
        .config
        .labels
        .is_some_and(|l| l.contains_key(bundle::image::BUNDLE_LABEL)))
}

fn bundle_error(error: BundleError) -> FetchError {
    match error {
        BundleError::Registry(e) => registry_error(e),
        other => FetchError::Invalid(other.to_string()),
    }
}

/// The digest an `image`/`imgpkgBundle` source would lock, without pulling it.
pub(crate) async fn probe(
    ctx: &Context<'_>,
    url: &str,
    selection: Option<&VersionSelection>,
    secret_ref: Option<&LocalRef>,
    locked: Option<(String, String)>,
) -> Result<String, FetchError> {
    let probe = parse(locked.as_ref().map_or(url, |(u, _)| u.as_str()))?;
    let registry = registry_for(ctx, secret_ref, &probe)?;
    let (reference, _) = choose(&registry, url, selection, locked).await?;
    head_digest(&registry, &reference).await
}

/// Extracts the layers in order into `out` (existing, empty), applying whiteouts: each layer
/// goes to its own directory first, so an opaque marker clears only what lower layers wrote.
fn apply_layers(
    blobs: &[std::path::PathBuf],
    scratch: &Path,
    out: &Path,
    limits: &Limits,
) -> Result<(), FetchError> {
    let mut budget = LayerBudget::default();
    for (index, blob) in blobs.iter().enumerate() {
        let layer_dir = scratch.join(format!("layer-{index}.d"));
        std::fs::create_dir_all(&layer_dir).map_err(FetchError::io(&layer_dir))?;
        let file = std::fs::File::open(blob).map_err(FetchError::io(blob))?;
        let mut head = [0u8; 2];
        let gzip = {
            let mut f = std::fs::File::open(blob).map_err(FetchError::io(blob))?;
            f.read_exact(&mut head).is_ok() && head == [0x1f, 0x8b]
        };
        let inner: Box<dyn Read> = if gzip {
            Box::new(flate2::read::GzDecoder::new(file))
        } else {
            Box::new(file)
        };
        let reader = bundle::CappedReader::new(inner, limits.pull().stream_bytes());
        extract_layer(reader, &layer_dir, limits, &mut budget)
            .map_err(|why| FetchError::Invalid(format!("layer {index}: {why}")))?;
        merge(&layer_dir, out).map_err(FetchError::io(out))?;
    }
    Ok(())
}

/// What the layers of one image have written so far, against the content's [`Limits`].
#[derive(Default)]
struct LayerBudget {
    files: u64,
    bytes: u64,
    dirs: u64,
}

impl LayerBudget {
    fn add_dirs(&mut self, n: u64, limits: &Limits) -> Result<(), String> {
        self.dirs += n;
        if self.dirs > limits.max_dirs {
            return Err(format!(
                "more than {} directories (the limit; raise --max-dirs if the image is trusted)",
                limits.max_dirs
            ));
        }
        Ok(())
    }
}

/// Creates `dir` and its missing parents below `dest`, counting each one it creates.
fn make_dirs(
    dest: &Path,
    dir: &Path,
    limits: &Limits,
    budget: &mut LayerBudget,
) -> Result<(), String> {
    let missing = dir
        .ancestors()
        .take_while(|a| *a != dest && a.starts_with(dest))
        .take_while(|a| a.symlink_metadata().is_err())
        .count() as u64;
    if missing == 0 {
        return Ok(());
    }
    budget.add_dirs(missing, limits)?;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))
}

fn stream_error(e: &io::Error, limits: &Limits) -> String {
    if bundle::headers_too_large(e) {
        e.to_string()
    } else if e.kind() == io::ErrorKind::FileTooLarge {
        format!(
            "the layer inflates beyond {} bytes (the limit; raise --max-bytes if the image is \
             trusted)",
            limits.pull().stream_bytes()
        )
    } else {
        format!("corrupt tar: {e}")
    }
}

/// Regular files and directories of one layer tar; links, devices and FIFOs are skipped.
fn extract_layer(
    reader: bundle::CappedReader<impl Read>,
    dest: &Path,
    limits: &Limits,
    budget: &mut LayerBudget,
) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let meter = reader.header_meter();
    let mut archive = tar::Archive::new(reader);
    let entries =
        bundle::tar_entries(&mut archive, &meter).map_err(|e| format!("not a tar archive: {e}"))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| stream_error(&e, limits))?;
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let kind = entry.header().entry_type();
        if name.split('/').all(|p| p.is_empty() || p == ".") {
            continue;
        }
        let path = safe_join(dest, &name).map_err(|e| format!("unsafe entry: {e}"))?;
        if kind.is_dir() {
            if path.symlink_metadata().is_ok_and(|m| !m.is_dir()) {
                remove_any(&path).map_err(|e| e.to_string())?;
            }
            make_dirs(dest, &path, limits, budget)?;
        } else if kind.is_file() || kind == tar::EntryType::Continuous {
            budget.files += 1;
            budget.bytes = budget.bytes.saturating_add(entry.size());
            if budget.files > limits.max_files {
                return Err(format!("more than {} files", limits.max_files));
            }
            if budget.bytes > limits.max_bytes {
                return Err(format!("expands beyond {} bytes", limits.max_bytes));
            }
            if let Some(parent) = path.parent() {
                make_dirs(dest, parent, limits, budget)?;
            }
            remove_any(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            let mode = if entry.header().mode().unwrap_or(0o644) & 0o111 != 0 {
                0o755
            } else {
                0o644
            };
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(&path)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            // `take` keeps a lying header from writing more than it declared.
            let size = entry.size();
            io::copy(&mut (&mut entry).take(size), &mut file).map_err(|e| {
                if e.kind() == io::ErrorKind::FileTooLarge {
                    stream_error(&e, limits)
                } else {
                    format!("{}: {e}", path.display())
                }
            })?;
        }
        // Links, devices, FIFOs and metadata entries are not written (imgpkg skips them).
    }
    Ok(())
}

const WHITEOUT: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

/// Moves a layer's tree onto `dst`: `.wh.NAME` deletes NAME below, an opaque marker empties
/// the directory first. Never follows a symlink: only real directories are merged into.
fn merge(src: &Path, dst: &Path) -> io::Result<()> {
    let entries: Vec<std::fs::DirEntry> = std::fs::read_dir(src)?.collect::<Result<_, _>>()?;
    if entries.iter().any(|e| e.file_name() == OPAQUE) {
        for existing in std::fs::read_dir(dst)? {
            remove_any(&existing?.path())?;
        }
    }
    for entry in entries {
        let name = entry.file_name();
        let text = name.to_string_lossy();
        if text == OPAQUE {
            continue;
        }
        if let Some(hidden) = text.strip_prefix(WHITEOUT) {
            if !hidden.is_empty() && hidden != "." && hidden != ".." && !hidden.contains('/') {
                remove_any(&dst.join(hidden))?;
            }
            continue;
        }
        let target = dst.join(&name);
        let is_dir = entry.file_type()?.is_dir();
        let target_is_dir = target.symlink_metadata().is_ok_and(|m| m.is_dir());
        if is_dir && target_is_dir {
            merge(&entry.path(), &target)?;
        } else {
            remove_any(&target)?;
            std::fs::rename(entry.path(), &target)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capped(tar: &[u8]) -> bundle::CappedReader<&[u8]> {
        bundle::CappedReader::new(tar, u64::MAX)
    }

    fn tar(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (name, data) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            if name.ends_with('/') {
                header.set_entry_type(tar::EntryType::Directory);
            }
            header.set_cksum();
            builder.append_data(&mut header, name, *data).unwrap();
        }
        builder.into_inner().unwrap()
    }

    #[test]
    fn layers_apply_in_order_with_whiteouts() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let layers = [
            tar(&[
                ("a/one", b"1"),
                ("a/two", b"2"),
                ("b/keep", b"k"),
                ("c/gone", b"g"),
                ("d", b"file"),
            ]),
            tar(&[
                ("a/.wh..wh..opq", b""),
                ("a/three", b"3"),
                ("b/.wh.keep", b""),
                ("b/new", b"n"),
                (".wh.c", b""),
                ("d/", b""),
                ("d/inner", b"i"),
            ]),
        ];
        let blobs: Vec<_> = layers
            .iter()
            .enumerate()
            .map(|(i, data)| {
                let path = dir.path().join(format!("blob{i}"));
                std::fs::write(&path, data).unwrap();
                path
            })
            .collect();
        apply_layers(&blobs, dir.path(), &out, &Limits::default()).unwrap();
        let mut files: Vec<String> = walk(&out);
        files.sort();
        assert_eq!(files, ["a/three", "b/new", "d/inner"]);
    }

    #[test]
    fn hostile_layers_are_refused_or_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let mut raw = tar::Header::new_gnu();
        raw.as_old_mut().name[..9].copy_from_slice(b"../escape");
        raw.set_size(1);
        raw.set_cksum();
        let mut data = raw.as_bytes().to_vec();
        data.extend_from_slice(&[b'x'; 512]);
        data.extend_from_slice(&[0; 1024]);
        let err = extract_layer(
            capped(&data),
            dir.path(),
            &Limits::default(),
            &mut LayerBudget::default(),
        )
        .unwrap_err();
        assert!(err.contains("'..'"), "{err}");
        assert!(!dir.path().parent().unwrap().join("escape").exists());

        let mut builder = tar::Builder::new(Vec::new());
        let mut link = tar::Header::new_gnu();
        link.set_entry_type(tar::EntryType::Symlink);
        link.set_size(0);
        builder
            .append_link(&mut link, "passwd", "/etc/passwd")
            .unwrap();
        let out = dir.path().join("links");
        std::fs::create_dir(&out).unwrap();
        extract_layer(
            capped(&builder.into_inner().unwrap()),
            &out,
            &Limits::default(),
            &mut LayerBudget::default(),
        )
        .unwrap();
        assert!(
            out.join("passwd").symlink_metadata().is_err(),
            "links are skipped"
        );
    }

    fn walk(root: &Path) -> Vec<String> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(root).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name().to_string_lossy().into_owned();
            if entry.file_type().unwrap().is_dir() {
                out.extend(
                    walk(&entry.path())
                        .into_iter()
                        .map(|n| format!("{name}/{n}")),
                );
            } else {
                out.push(name);
            }
        }
        out
    }

    #[test]
    fn layers_cap_directories_across_the_image() {
        let mut builder = tar::Builder::new(Vec::new());
        for i in 0..300 {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(tar::EntryType::Directory);
            header.set_size(0);
            header.set_mode(0o755);
            builder
                .append_data(&mut header, format!("d{i}/"), &[][..])
                .unwrap();
        }
        let data = builder.into_inner().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits {
            max_dirs: 100,
            ..Limits::default()
        };
        let err = extract_layer(
            capped(&data),
            dir.path(),
            &limits,
            &mut LayerBudget::default(),
        )
        .unwrap_err();
        assert!(err.contains("more than 100 directories"), "{err}");
        assert!(std::fs::read_dir(dir.path()).unwrap().count() <= 100);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// Whatever the names, links and kinds of a layer's members, an image layer is
        /// extracted only inside its directory, and never panics.
        #[test]
        fn a_layer_never_reaches_outside_its_directory(
            members in crate::bundle::untar_testing::members()
        ) {
            use crate::bundle::untar_testing::{Sandbox, raw_tar};
            let sandbox = Sandbox::new();
            let _ = extract_layer(
                capped(&raw_tar(&members)),
                &sandbox.target(),
                &Limits::default(),
                &mut LayerBudget::default(),
            );
            sandbox.check();
        }
    }
}
