//! Pulling a bundle into a directory: every digest on the way is checked (manifest against the
//! reference, config and layer against the manifest, the tar against the config's diff_id),
//! the layer is unpacked into a fresh directory beside the output and only swapped in once
//! all of that passed, so a failed pull leaves the previous output untouched. As imgpkg does,
//! `.imgpkg/images.yml` is then rewritten to the bundle's repository when that repository
//! holds every image it lists (a relocated bundle).

use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

use bytes::Bytes;

use super::error::BundleError;
use super::image::{self, BundleManifest, sha256_digest};
use super::layout;
use super::push::{PushOptions, retry};
use super::target::Location;
use crate::carvel::ImagesLock;
use crate::registry::{Reference, Registry};

mod unpack;

use unpack::{staging_parent, unpack_into};

/// Caps on what one pull may cost, checked before and while the layer streams in, so a
/// bundle with honest digests but a hostile layer (a gzip bomb, 300,000 empty directories)
/// stops at the cap with an error that names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PullLimits {
    /// Bytes of file content written (and, a little above it, of the compressed layer and
    /// of the tar stream, headers included).
    pub max_bytes: u64,
    /// Regular files written.
    pub max_files: u64,
    /// Directories created, explicit or implied by a file's path.
    pub max_dirs: u64,
}

impl Default for PullLimits {
    /// Far above any real package (the TCE packages are under 2 MiB and 30 files).
    fn default() -> Self {
        PullLimits {
            max_bytes: 1 << 30,
            max_files: 100_000,
            max_dirs: 100_000,
        }
    }
}

impl PullLimits {
    /// The tar stream: content plus a header block per entry, generously.
    pub(crate) fn stream_bytes(&self) -> u64 {
        self.max_bytes
            .saturating_add((self.max_files + self.max_dirs).saturating_mul(2048))
            .saturating_add(1 << 20)
    }

    /// The compressed layer: gzip can grow incompressible data by a hair.
    fn layer_bytes(&self) -> u64 {
        self.stream_bytes().saturating_add(self.stream_bytes() / 64)
    }
}

/// The largest `.imgpkg/images.yml` a pull reads back (as `copy` reads it).
const MAX_IMAGES_LOCK_BYTES: u64 = 16 << 20;

/// Deepest path accepted in a layer (components).
const MAX_DEPTH: usize = 256;

/// What a pull fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pulled {
    /// `REPO@sha256:…` of the bundle pulled.
    pub image: String,
    pub files: usize,
    /// Entries that were not written — symlinks and hard links, as imgpkg skips them — by
    /// name, the first twenty.
    pub skipped: Vec<String>,
    /// How many links were not written.
    pub skipped_links: usize,
    /// Whether `.imgpkg/images.yml` was rewritten to name the images in the bundle's own
    /// repository, where they were relocated with it.
    pub relocated: bool,
}

/// Pulls the bundle at `location` into `output`, replacing whatever `output` held, within
/// the default [`PullLimits`].
pub async fn pull(
    registry: &Registry,
    location: &Location,
    output: &Path,
) -> Result<Pulled, BundleError> {
    pull_with(registry, location, output, &PullLimits::default()).await
}

/// [`pull`] within `limits`.
pub async fn pull_with(
    registry: &Registry,
    location: &Location,
    output: &Path,
    limits: &PullLimits,
) -> Result<Pulled, BundleError> {
    refuse_unsafe_output(output)?;
    let name = location.repository();
    // The layer goes to disk beside the output (where it is unpacked too), never whole into
    // memory: the caps bound it, not the process's memory.
    let parent = staging_parent(output)?;
    let (digest, manifest_bytes, config, layer) = match location {
        Location::Registry(reference) => {
            fetch_from_registry(registry, reference, limits, &parent).await?
        }
        Location::Layout(l) => {
            let (dir, tag, digest) = (l.dir.clone(), l.tag.clone(), l.digest.clone());
            let limits = *limits;
            tokio::task::spawn_blocking(move || {
                let limits = &limits;
                let digest = layout::resolve(&dir, tag.as_deref(), digest.as_deref())?;
                let manifest = layout::read_blob(&dir, &digest, layout::MAX_DOCUMENT_BYTES)?;
                let parsed = image::parse_bundle_manifest(&manifest).map_err(|reason| {
                    BundleError::Content {
                        reference: format!("oci-layout:{}@{digest}", dir.display()),
                        reason,
                    }
                })?;
                check_sizes(&parsed, limits).map_err(|reason| BundleError::Content {
                    reference: format!("oci-layout:{}@{digest}", dir.display()),
                    reason,
                })?;
                let config = layout::read_blob(&dir, &parsed.config.digest, MAX_CONFIG_BYTES)?;
                let layer = layout::open_blob(&dir, &parsed.layer.digest)?;
                Ok::<_, BundleError>((
                    digest,
                    Bytes::from(manifest),
                    Bytes::from(config),
                    Layer {
                        file: layer,
                        checked: false,
                    },
                ))
            })
            .await
            .map_err(|e| BundleError::Invalid(format!("reading the OCI layout: {e}")))??
        }
    };
    let image = format!("{name}@{digest}");
    let parsed =
        image::parse_bundle_manifest(&manifest_bytes).map_err(|reason| BundleError::Content {
            reference: image.clone(),
            reason,
        })?;
    let content_error = |reason: String| BundleError::Content {
        reference: image.clone(),
        reason,
    };
    check_blob(&parsed.config, &config).map_err(content_error)?;
    let diff_id = image::parse_bundle_config(&config).map_err(content_error)?;

    let out = output.to_owned();
    let reference = image.clone();
    let layer_descriptor = parsed.layer;
    let limits_copy = *limits;
    let unpacked = tokio::task::spawn_blocking(move || {
        unpack_into(
            layer,
            &layer_descriptor,
            &diff_id,
            &out,
            &reference,
            &limits_copy,
        )
    })
    .await
    .map_err(|e| BundleError::Invalid(format!("unpacking the bundle: {e}")))??;
    let relocated = match location {
        Location::Registry(reference) => localize_images_lock(registry, reference, output).await?,
        Location::Layout(_) => false,
    };
    Ok(Pulled {
        image,
        files: unpacked.files,
        skipped: unpacked.skipped,
        skipped_links: unpacked.links,
        relocated,
    })
}

/// Unpacks a bundle layer already on disk (checked against `descriptor` first) into `output`,
/// within `limits`: the copy's view of a repository bundle it narrows.
pub(crate) async fn unpack_file(
    file: fs::File,
    descriptor: image::Descriptor,
    diff_id: String,
    output: PathBuf,
    reference: String,
    limits: PullLimits,
) -> Result<(), BundleError> {
    tokio::task::spawn_blocking(move || {
        let layer = Layer {
            file,
            checked: false,
        };
        unpack_into(layer, &descriptor, &diff_id, &output, &reference, &limits)
    })
    .await
    .map_err(|e| BundleError::Invalid(format!("unpacking the bundle: {e}")))??;
    Ok(())
}

/// Refuses outputs whose replacement would destroy what the user did not ask to replace: the
/// root, the home directory, and the working directory or any of its ancestors (`pull -o .`
/// used to empty the current directory).
fn refuse_unsafe_output(output: &Path) -> Result<(), BundleError> {
    let absolute = std::path::absolute(output)
        .map_err(BundleError::io("resolving the output directory", output))?;
    // Symlinks resolved where the path exists; `..` resolved lexically where it does not.
    let resolved = fs::canonicalize(&absolute).unwrap_or_else(|_| lexical_clean(&absolute));
    let refuse = |what: &str| {
        Err(BundleError::Invalid(format!(
            "refusing to pull into {}: it is {what}, and pulling replaces everything in the \
             output directory; pull into a new or dedicated directory",
            output.display()
        )))
    };
    if resolved.parent().is_none() {
        return refuse("the root directory");
    }
    if let Ok(cwd) = std::env::current_dir().and_then(fs::canonicalize)
        && cwd.starts_with(&resolved)
    {
        return refuse(if cwd == resolved {
            "the working directory"
        } else {
            "an ancestor of the working directory"
        });
    }
    if let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty())
        && fs::canonicalize(&home).is_ok_and(|home| home == resolved)
    {
        return refuse("the home directory");
    }
    Ok(())
}

/// `a/./b/../c` as `a/c`, without touching the file system.
fn lexical_clean(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// Refuses a manifest whose blobs are larger than the limits allow, before fetching them.
fn check_sizes(parsed: &BundleManifest, limits: &PullLimits) -> Result<(), String> {
    if parsed.config.size > MAX_CONFIG_BYTES {
        return Err(format!(
            "the config blob is {} bytes, more than the {MAX_CONFIG_BYTES} a bundle config can \
             need",
            parsed.config.size
        ));
    }
    if parsed.layer.size > limits.layer_bytes() {
        return Err(format!(
            "the layer is {} bytes, more than the limit of {} (--max-bytes {})",
            parsed.layer.size,
            limits.layer_bytes(),
            limits.max_bytes
        ));
    }
    Ok(())
}

/// A bundle config is a few hundred bytes of JSON.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// The layer blob on disk, and whether its digest and size were checked on the way there.
struct Layer {
    file: fs::File,
    checked: bool,
}

async fn fetch_from_registry(
    registry: &Registry,
    reference: &Reference,
    limits: &PullLimits,
    scratch: &Path,
) -> Result<(String, Bytes, Bytes, Layer), BundleError> {
    let contacted = registry.contact(reference);
    let client = registry.distribution();
    let options = PushOptions::default();
    let accepted = [image::MANIFEST_MEDIA_TYPE, image::OCI_MANIFEST_MEDIA_TYPE];
    let target = contacted
        .digest()
        .or(contacted.tag())
        .unwrap_or("latest")
        .to_owned();
    let manifest = retry(&options, "GET manifest", &contacted, || {
        client.get_manifest(&contacted, &target, &accepted)
    })
    .await?;
    // Computed here rather than trusted from the registry's header.
    let digest = sha256_digest(&manifest);
    if let Some(wanted) = reference.digest()
        && wanted != digest
    {
        return Err(BundleError::Content {
            reference: reference.to_string(),
            reason: format!("the registry returned a manifest with digest {digest}"),
        });
    }
    let parsed: BundleManifest =
        image::parse_bundle_manifest(&manifest).map_err(|reason| BundleError::Content {
            reference: reference.to_string(),
            reason,
        })?;
    check_sizes(&parsed, limits).map_err(|reason| BundleError::Content {
        reference: reference.to_string(),
        reason,
    })?;
    // Both are checked against the manifest's digests and sizes before anything is unpacked;
    // neither is read past the size the manifest declares. The config is small (capped
    // above); the layer streams to an unlinked-on-drop file.
    let config = async {
        retry(&options, "GET blob", &contacted, || {
            client.get_blob(&contacted, &parsed.config.digest, parsed.config.size)
        })
        .await
        .map_err(BundleError::from)
    };
    let layer = async {
        let named = tempfile::Builder::new()
            .prefix(".packsmith-layer-")
            .tempfile_in(scratch)
            .map_err(BundleError::io("creating a file in", scratch))?;
        retry(&options, "GET blob", &contacted, || async {
            let mut file = tokio::fs::File::from_std(named.reopen().map_err(|e| {
                crate::registry::RegistryError::Write {
                    what: "blob",
                    url: named.path().display().to_string(),
                    message: e.to_string(),
                }
            })?);
            // A retry starts the file over.
            file.set_len(0)
                .await
                .map_err(|e| crate::registry::RegistryError::Write {
                    what: "blob",
                    url: named.path().display().to_string(),
                    message: e.to_string(),
                })?;
            client
                .blob_to_file(
                    &contacted,
                    &parsed.layer.digest,
                    parsed.layer.size,
                    &mut file,
                )
                .await
        })
        .await?;
        let file = named
            .reopen()
            .map_err(BundleError::io("reading", named.path()))?;
        // Unlinked now: the open handle keeps the bytes until the unpack is done, and nothing
        // is left behind whatever happens next.
        drop(named);
        Ok::<_, BundleError>(Layer {
            file,
            checked: true,
        })
    };
    let (config, layer) = tokio::try_join!(config, layer)?;
    Ok((digest, manifest, config, layer))
}

/// imgpkg's pull: when the bundle's own repository holds every image of its ImagesLock (the
/// bundle was copied there with its images, `imgpkg copy --to-repo`), the pulled
/// `.imgpkg/images.yml` names them there, so the package deploys from where it was relocated.
/// Each image is looked up by digest in the bundle's repository; a 404, 401 or 403 for any of
/// them (imgpkg's "not found") leaves the file as it was pushed. Annotations and order are
/// kept. Returns whether the file was rewritten.
async fn localize_images_lock(
    registry: &Registry,
    bundle_repository: &Reference,
    output: &Path,
) -> Result<bool, BundleError> {
    let path = output.join(".imgpkg").join("images.yml");
    let size = match tokio::fs::symlink_metadata(&path).await {
        Ok(meta) => meta.len(),
        // A bundle without images.yml was not pushed by imgpkg or packsmith; nothing to do.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(BundleError::io("reading", &path)(e)),
    };
    if size > MAX_IMAGES_LOCK_BYTES {
        return Err(BundleError::Invalid(format!(
            "{}: {size} bytes, more than the {MAX_IMAGES_LOCK_BYTES} an ImagesLock may take",
            path.display()
        )));
    }
    let text = tokio::fs::read_to_string(&path)
        .await
        .map_err(BundleError::io("reading", &path))?;
    let mut lock = ImagesLock::from_yaml(&text)
        .map_err(|e| BundleError::Invalid(format!("{}: {e}", path.display())))?;
    let repository = format!(
        "{}/{}",
        bundle_repository.registry(),
        bundle_repository.repository()
    );
    let mut relocated = Vec::with_capacity(lock.images.len());
    for entry in &lock.images {
        // validate() made sure every image is `repo@sha256:…`.
        let digest = entry
            .image
            .rsplit_once('@')
            .map(|(_, d)| d)
            .unwrap_or_default();
        relocated.push(format!("{repository}@{digest}"));
    }
    if relocated
        .iter()
        .zip(&lock.images)
        .all(|(new, old)| *new == old.image)
    {
        // Nothing would change (or there are no images): leave the file byte for byte.
        return Ok(false);
    }

    let client = registry.distribution();
    let contacted = registry.contact(bundle_repository);
    let options = PushOptions::default();
    // Each digest once, at most the registry's concurrency in flight, and the first miss
    // ends it: a lock of a hundred thousand entries is not a hundred thousand requests at once.
    let digests: std::collections::BTreeSet<String> = relocated
        .iter()
        .map(|image| {
            image
                .rsplit_once('@')
                .map(|(_, d)| d)
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    let lookups = digests.into_iter().map(|digest| {
        let (client, contacted, options) = (&client, &contacted, &options);
        async move {
            let found = retry(options, "HEAD manifest", contacted, || {
                client.manifest_digest_at(contacted, &digest)
            })
            .await;
            match found {
                Ok(found) => Ok(found.is_some()),
                Err(e) if e.is_auth() => Ok(false),
                Err(e) => Err(e),
            }
        }
    });
    let mut lookups = futures::StreamExt::buffer_unordered(
        futures::stream::iter(lookups),
        registry.concurrency(),
    );
    while let Some(found) = futures::StreamExt::next(&mut lookups).await {
        if !found? {
            return Ok(false);
        }
    }
    drop(lookups);
    for (entry, image) in lock.images.iter_mut().zip(relocated) {
        entry.image = image;
    }
    let yaml = crate::carvel::yaml::to_go_yaml("ImagesLock", &lock)
        .map_err(|e| BundleError::Invalid(format!("{}: {e}", path.display())))?;
    tokio::fs::write(&path, format!("---\n{yaml}"))
        .await
        .map_err(BundleError::io("writing", &path))?;
    Ok(true)
}

fn check_blob(descriptor: &image::Descriptor, data: &[u8]) -> Result<(), String> {
    let actual = sha256_digest(data);
    if actual != descriptor.digest {
        return Err(format!("blob {} has digest {actual}", descriptor.digest));
    }
    if data.len() as u64 != descriptor.size {
        return Err(format!(
            "blob {} is {} bytes, the manifest says {}",
            descriptor.digest,
            data.len(),
            descriptor.size
        ));
    }
    Ok(())
}

/// A read error of the inflated layer: the stream cap, headers past their cap, or a broken
/// gzip stream.
fn stream_error(reference: &str, limits: &PullLimits, e: io::Error) -> BundleError {
    if super::headers_too_large(&e) {
        content(reference, e.to_string())
    } else if e.kind() == io::ErrorKind::FileTooLarge {
        limit_error(
            reference,
            "bytes in the layer's tar stream",
            limits.stream_bytes(),
            "--max-bytes",
        )
    } else {
        content(
            reference,
            format!("the layer is not a valid gzip stream: {e}"),
        )
    }
}

fn limit_error(reference: &str, what: &'static str, limit: u64, flag: &'static str) -> BundleError {
    BundleError::Limit {
        reference: reference.to_owned(),
        what,
        limit,
        flag,
    }
}

fn content(reference: &str, reason: String) -> BundleError {
    BundleError::Content {
        reference: reference.to_owned(),
        reason,
    }
}

#[cfg(test)]
mod tests;
