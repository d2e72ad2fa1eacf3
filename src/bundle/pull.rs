//! Pulling a bundle into a directory: every digest on the way is checked (manifest against the
//! reference, config and layer against the manifest, the tar against the config's diff_id),
//! the layer is unpacked into a fresh directory beside the output and only swapped in once
//! all of that passed, so a failed pull leaves the previous output untouched. As imgpkg does,
//! `.imgpkg/images.yml` is then rewritten to the bundle's repository when that repository
//! holds every image it lists (a relocated bundle).

use std::collections::HashSet;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Component, Path, PathBuf};

use bytes::Bytes;
use sha2::{Digest as _, Sha256};

use super::error::BundleError;
use super::image::{self, BundleManifest, digest_string, sha256_digest};
use super::layout;
use super::push::{PushOptions, retry};
use super::target::Location;
use super::untar::CappedReader;
use crate::carvel::ImagesLock;
use crate::registry::{Reference, Registry};

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

/// Deepest path accepted in a layer (components).
const MAX_DEPTH: usize = 256;

/// What a pull fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pulled {
    /// `REPO@sha256:…` of the bundle pulled.
    pub image: String,
    pub files: usize,
    /// Entries that were not written: symlinks and hard links, as imgpkg skips them.
    pub skipped: Vec<String>,
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
                let manifest = layout::read_blob(&dir, &digest)?;
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
                let config = layout::read_blob(&dir, &parsed.config.digest)?;
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
    let (files, skipped) = tokio::task::spawn_blocking(move || {
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
        files,
        skipped,
        relocated,
    })
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
    let text = match tokio::fs::read_to_string(&path).await {
        Ok(text) => text,
        // A bundle without images.yml was not pushed by imgpkg or packsmith; nothing to do.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(BundleError::io("reading", &path)(e)),
    };
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
    let lookups = relocated.iter().map(|image| {
        let (client, contacted, options) = (&client, &contacted, &options);
        async move {
            let digest = image.rsplit_once('@').map(|(_, d)| d).unwrap_or_default();
            let found = retry(options, "HEAD manifest", contacted, || {
                client.manifest_digest_at(contacted, digest)
            })
            .await;
            match found {
                Ok(found) => Ok(found.is_some()),
                Err(e) if e.is_auth() => Ok(false),
                Err(e) => Err(e),
            }
        }
    });
    let found = futures::future::try_join_all(lookups).await?;
    if !found.iter().all(|f| *f) {
        return Ok(false);
    }
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

/// Verifies the layer's digest and size against the manifest (unless that was done while it
/// downloaded), unpacks it into a sibling of `output`, checks the tar against the config's
/// diff_id, then swaps it in. The blob is checked before a byte of it is inflated: a registry
/// serving something else under that digest (a gzip bomb, say) costs one hash, never a full
/// disk.
fn unpack_into(
    mut layer: Layer,
    descriptor: &image::Descriptor,
    diff_id: &str,
    output: &Path,
    reference: &str,
    limits: &PullLimits,
) -> Result<(usize, Vec<String>), BundleError> {
    if !layer.checked {
        check_blob_file(descriptor, &mut layer.file, reference)?;
    }
    let reader = io::BufReader::with_capacity(COPY_BUFFER, layer.file);
    let (staging, result) = unpack_staged(reader, diff_id, output, reference, limits)?;
    swap_in(staging, output)?;
    Ok(result)
}

/// [`check_blob`] for a blob on disk, read once, and rewound for the unpack.
fn check_blob_file(
    descriptor: &image::Descriptor,
    file: &mut fs::File,
    reference: &str,
) -> Result<(), BundleError> {
    use std::io::Seek as _;
    let mut hash = Sha256::new();
    let mut buffer = vec![0u8; COPY_BUFFER];
    let mut size: u64 = 0;
    loop {
        let n = match file.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(content(reference, format!("reading the layer: {e}"))),
        };
        size += n as u64;
        if size > descriptor.size {
            break;
        }
        hash.update(&buffer[..n]);
    }
    let actual = digest_string(&hash.finalize());
    if size != descriptor.size {
        return Err(content(
            reference,
            format!(
                "blob {} is {}{size} bytes, the manifest says {}",
                descriptor.digest,
                if size > descriptor.size { "over " } else { "" },
                descriptor.size
            ),
        ));
    }
    if actual != descriptor.digest {
        return Err(content(
            reference,
            format!("blob {} has digest {actual}", descriptor.digest),
        ));
    }
    file.rewind()
        .map_err(|e| content(reference, format!("reading the layer: {e}")))
}

/// The directory pulls stage in: the output's parent, on the same file system so the swap
/// is a rename. Resolved to an absolute path first: the parent of `out` is "" and of `.` is
/// nothing.
fn staging_parent(output: &Path) -> Result<PathBuf, BundleError> {
    let absolute = std::path::absolute(output)
        .map_err(BundleError::io("resolving the output directory", output))?;
    let parent = lexical_clean(&absolute)
        .parent()
        .map_or_else(|| PathBuf::from("/"), Path::to_owned);
    fs::create_dir_all(&parent).map_err(BundleError::io("creating", &parent))?;
    Ok(parent)
}

/// Puts `staging` where `output` is by renames only: the old output is moved aside, the new
/// one moved in, and the old one removed last. If the second rename fails, the old output is
/// moved back, so a failed pull never leaves less than there was.
fn swap_in(staging: tempfile::TempDir, output: &Path) -> Result<(), BundleError> {
    let parent = staging.path().parent().unwrap_or(Path::new(".")).to_owned();
    let aside = match fs::symlink_metadata(output) {
        Ok(_) => {
            let aside = tempfile::Builder::new()
                .prefix(".packsmith-pull-old-")
                .tempdir_in(&parent)
                .map_err(BundleError::io("creating a directory in", &parent))?;
            let target = aside.path().join("old");
            fs::rename(output, &target).map_err(BundleError::io("moving aside", output))?;
            Some((aside, target))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(BundleError::io("reading", output)(e)),
    };
    if let Err(e) = fs::rename(staging.path(), output) {
        if let Some((_, old)) = &aside {
            // Best effort: the error below is what the user needs either way.
            let _ = fs::rename(old, output);
        }
        return Err(BundleError::io("moving the pulled bundle to", output)(e));
    }
    // The staging directory is now the output: forget it rather than delete it.
    let _ = staging.keep();
    // `aside` (the old output) is removed when it drops.
    drop(aside);
    Ok(())
}

/// Unpacks the layer into a fresh directory beside `output` and checks the tar's diff_id;
/// returns the directory, still to be swapped in.
fn unpack_staged(
    layer: impl io::BufRead,
    diff_id: &str,
    output: &Path,
    reference: &str,
    limits: &PullLimits,
) -> Result<(tempfile::TempDir, (usize, Vec<String>)), BundleError> {
    let parent = staging_parent(output)?;
    let staging = tempfile::Builder::new()
        .prefix(".packsmith-pull-")
        .tempdir_in(&parent)
        .map_err(BundleError::io("creating a directory in", &parent))?;

    // The bufread decoder inflates straight from the reader's buffer, without
    // read::GzDecoder's copy through an internal buffer of its own.
    let mut reader = HashingReader {
        inner: CappedReader::new(
            flate2::bufread::GzDecoder::new(layer),
            limits.stream_bytes(),
        ),
        hash: Sha256::new(),
    };
    let meter = reader.inner.header_meter();
    let result = unpack(&mut reader, &meter, staging.path(), reference, limits)?;
    // Drain what the tar reader left (end-of-archive padding) so the hash covers the stream;
    // the reader's own cap stops a bomb hidden after the end of the archive.
    io::copy(&mut reader, &mut io::sink()).map_err(|e| stream_error(reference, limits, e))?;
    let actual = digest_string(&reader.hash.finalize());
    if actual != diff_id {
        return Err(content(
            reference,
            format!("the layer's tar has digest {actual}, the config says {diff_id}"),
        ));
    }
    Ok((staging, result))
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

fn unpack(
    reader: &mut impl Read,
    meter: &super::untar::HeaderMeter,
    root: &Path,
    reference: &str,
    limits: &PullLimits,
) -> Result<(usize, Vec<String>), BundleError> {
    let mut archive = tar::Archive::new(reader);
    let mut files = 0;
    let mut bytes: u64 = 0;
    let mut skipped = Vec::new();
    // Directories this pull created under `root`: `root` is fresh and links are never written,
    // so they stay directories, and a file's parent needs no mkdir + stat when it is known
    // (two syscalls per file otherwise, most of them failing with EEXIST).
    let mut created: HashSet<PathBuf> = HashSet::new();
    // std's io::copy moves 8 KiB per read and write; a large file goes through in far fewer
    // syscalls and inflate calls with a bigger buffer, allocated once for the whole layer.
    let mut buffer = vec![0u8; COPY_BUFFER];
    let entries =
        super::tar_entries(&mut archive, meter).map_err(|e| stream_error(reference, limits, e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| stream_error(reference, limits, e))?;
        let raw = entry.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw).into_owned();
        let relative = safe_relative_path(&raw).map_err(|reason| BundleError::UnsafePath {
            reference: reference.to_owned(),
            path: name.clone(),
            reason,
        })?;
        if relative.components().count() > MAX_DEPTH {
            return Err(BundleError::UnsafePath {
                reference: reference.to_owned(),
                path: name,
                reason: "deeper than 256 directories",
            });
        }
        let target = root.join(&relative);
        // imgpkg keeps the owner's bits and gives group and others the same; the umask
        // (applied by the kernel to these creation modes) then has the last word.
        let user = entry.header().mode().unwrap_or(0o600) & 0o700;
        let mode = user | (user >> 3) | (user >> 6);
        let entry_type = entry.header().entry_type();
        let io_err = |e| BundleError::io("writing", &target)(e);
        if entry_type.is_dir() {
            if relative.as_os_str().is_empty() {
                continue;
            }
            remember_dirs(&mut created, &relative);
            if created.len() as u64 > limits.max_dirs {
                return Err(limit_error(
                    reference,
                    "directories",
                    limits.max_dirs,
                    "--max-dirs",
                ));
            }
            fs::DirBuilder::new()
                .recursive(true)
                .mode(mode | 0o700)
                .create(&target)
                .map_err(io_err)?;
        } else if entry_type.is_file() {
            if relative.as_os_str().is_empty() {
                return Err(BundleError::UnsafePath {
                    reference: reference.to_owned(),
                    path: name,
                    reason: "a file cannot be the bundle's root",
                });
            }
            files += 1;
            if files as u64 > limits.max_files {
                return Err(limit_error(
                    reference,
                    "files",
                    limits.max_files,
                    "--max-files",
                ));
            }
            let size = entry.header().size().unwrap_or(u64::MAX);
            bytes = bytes.saturating_add(size);
            if bytes > limits.max_bytes {
                return Err(limit_error(
                    reference,
                    "bytes of files",
                    limits.max_bytes,
                    "--max-bytes",
                ));
            }
            if let Some(parent) = relative.parent()
                && !parent.as_os_str().is_empty()
                && !created.contains(parent)
            {
                remember_dirs(&mut created, parent);
                if created.len() as u64 > limits.max_dirs {
                    return Err(limit_error(
                        reference,
                        "directories",
                        limits.max_dirs,
                        "--max-dirs",
                    ));
                }
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o777)
                    .create(root.join(parent))
                    .map_err(io_err)?;
            }
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(mode)
                .open(&target)
                .map_err(io_err)?;
            // The header's size was counted; the tar reader never yields more than it.
            copy(&mut entry, &mut file, &mut buffer).map_err(|e| {
                if e.kind() == io::ErrorKind::FileTooLarge {
                    stream_error(reference, limits, e)
                } else {
                    io_err(e)
                }
            })?;
        } else if entry_type.is_symlink() || entry_type.is_hard_link() {
            skipped.push(name);
        } else if entry_type.is_pax_global_extensions() {
            continue;
        } else {
            return Err(content(
                reference,
                format!(
                    "unsupported tar entry type {:?} for {name:?}",
                    entry_type.as_byte() as char
                ),
            ));
        }
    }
    Ok((files, skipped))
}

const COPY_BUFFER: usize = 1 << 20;

/// Records `dir` (relative to the staging root) and its ancestors as existing directories.
fn remember_dirs(created: &mut HashSet<PathBuf>, dir: &Path) {
    for ancestor in dir.ancestors() {
        if ancestor.as_os_str().is_empty() || !created.insert(ancestor.to_owned()) {
            // Its ancestors were recorded with it.
            break;
        }
    }
}

fn copy(from: &mut impl Read, to: &mut impl Write, buffer: &mut [u8]) -> io::Result<()> {
    loop {
        let n = match from.read(buffer) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        to.write_all(&buffer[..n])?;
    }
}

/// The path under the output directory an entry name maps to, or why it must not be written:
/// absolute paths and `..` would escape the output directory.
fn safe_relative_path(raw: &[u8]) -> Result<PathBuf, &'static str> {
    let text = std::str::from_utf8(raw).map_err(|_| "the name is not valid UTF-8")?;
    if text.contains('\0') {
        return Err("the name contains NUL");
    }
    let path = Path::new(text);
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir => return Err("'..' would leave the output directory"),
            Component::RootDir | Component::Prefix(_) => {
                return Err("absolute paths would leave the output directory");
            }
        }
    }
    Ok(out)
}

/// The inflated layer, hashed for the diff_id.
struct HashingReader<R> {
    inner: CappedReader<R>,
    hash: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The production unpack, from the layer in a file as a pull from an OCI layout leaves
    /// it: not yet checked against its descriptor.
    fn unpack_into(
        gz: &[u8],
        descriptor: &image::Descriptor,
        diff_id: &str,
        out: &Path,
        reference: &str,
        limits: &PullLimits,
    ) -> Result<(usize, Vec<String>), BundleError> {
        use std::io::Seek as _;
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(gz).unwrap();
        file.rewind().unwrap();
        let layer = Layer {
            file,
            checked: false,
        };
        super::unpack_into(layer, descriptor, diff_id, out, reference, limits)
    }

    #[test]
    fn unsafe_names_are_refused() {
        assert_eq!(safe_relative_path(b"./a/b").unwrap(), PathBuf::from("a/b"));
        assert_eq!(safe_relative_path(b".").unwrap(), PathBuf::new());
        assert!(safe_relative_path(b"../etc/passwd").is_err());
        assert!(safe_relative_path(b"a/../../b").is_err());
        assert!(safe_relative_path(b"/etc/passwd").is_err());
    }

    /// A tar with the given raw entries, gzip'd.
    fn layer(entries: &[(&str, tar::EntryType, &[u8])]) -> (Vec<u8>, String) {
        let mut builder = tar::Builder::new(Vec::new());
        for (name, kind, data) in entries {
            let mut header = tar::Header::new_gnu();
            // set_path refuses '..'; write the raw name as a hostile archive would.
            header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            header.set_entry_type(*kind);
            header.set_mode(0o600);
            header.set_size(data.len() as u64);
            if kind.is_symlink() {
                header.set_link_name("/etc/passwd").unwrap();
            }
            header.set_cksum();
            builder.append(&header, *data).unwrap();
        }
        let tar = builder.into_inner().unwrap();
        let diff_id = sha256_digest(&tar);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        io::Write::write_all(&mut gz, &tar).unwrap();
        (gz.finish().unwrap(), diff_id)
    }

    /// The manifest's descriptor of `blob`.
    fn descriptor(blob: &[u8]) -> image::Descriptor {
        image::Descriptor {
            media_type: image::LAYER_MEDIA_TYPE.to_owned(),
            digest: sha256_digest(blob),
            size: blob.len() as u64,
        }
    }

    #[test]
    fn a_layer_that_is_not_the_manifests_never_lands() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        fs::create_dir(&out).unwrap();
        fs::write(out.join("previous"), "kept").unwrap();
        // A well-formed layer with a valid diff_id, but not the blob the manifest names.
        let (gz, diff_id) = layer(&[("cfg/a.yml", tar::EntryType::Regular, b"a: 1\n")]);
        let named = descriptor(b"the blob that was pushed");
        let err =
            unpack_into(&gz, &named, &diff_id, &out, "r", &PullLimits::default()).unwrap_err();
        assert!(err.to_string().contains(&named.digest), "{err}");
        assert_eq!(fs::read_to_string(out.join("previous")).unwrap(), "kept");
        assert!(!out.join("cfg").exists());
        let left: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1);

        // Right digest, wrong size: refused too.
        let mut sized = descriptor(&gz);
        sized.size += 1;
        let err =
            unpack_into(&gz, &sized, &diff_id, &out, "r", &PullLimits::default()).unwrap_err();
        assert!(err.to_string().contains("the manifest says"), "{err}");
        assert!(!out.join("cfg").exists());
    }

    #[test]
    fn nested_directories_are_created_once_and_a_file_cannot_be_a_parent() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let (gz, diff_id) = layer(&[
            ("a/b/c/one.yml", tar::EntryType::Regular, b"1"),
            ("a/b/two.yml", tar::EntryType::Regular, b"2"),
            ("a/d/", tar::EntryType::Directory, b""),
            ("a/d/three.yml", tar::EntryType::Regular, b"3"),
            ("a/b/c/four.yml", tar::EntryType::Regular, b"4"),
        ]);
        let (files, _) = unpack_into(
            &gz,
            &descriptor(&gz),
            &diff_id,
            &out,
            "r",
            &PullLimits::default(),
        )
        .unwrap();
        assert_eq!(files, 4);
        for (path, data) in [
            ("a/b/c/one.yml", "1"),
            ("a/b/two.yml", "2"),
            ("a/d/three.yml", "3"),
            ("a/b/c/four.yml", "4"),
        ] {
            assert_eq!(fs::read_to_string(out.join(path)).unwrap(), data, "{path}");
        }

        let (gz, diff_id) = layer(&[
            ("a", tar::EntryType::Regular, b"file"),
            ("a/b.yml", tar::EntryType::Regular, b"under a file"),
        ]);
        let err = unpack_into(
            &gz,
            &descriptor(&gz),
            &diff_id,
            &dir.path().join("out2"),
            "r",
            &PullLimits::default(),
        )
        .unwrap_err();
        assert!(matches!(err, BundleError::Io { .. }), "{err}");
        assert!(!dir.path().join("out2").exists());
    }

    #[test]
    fn a_large_file_is_copied_whole() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        // Spans several copy buffers and ends mid-buffer.
        let data: Vec<u8> = (0..COPY_BUFFER * 3 + 12345)
            .map(|i| (i % 251) as u8)
            .collect();
        let (gz, diff_id) = layer(&[("big.bin", tar::EntryType::Regular, &data)]);
        unpack_into(
            &gz,
            &descriptor(&gz),
            &diff_id,
            &out,
            "r",
            &PullLimits::default(),
        )
        .unwrap();
        assert_eq!(fs::read(out.join("big.bin")).unwrap(), data);
    }

    #[test]
    fn escaping_entries_fail_the_pull_and_keep_the_old_output() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        fs::create_dir(&out).unwrap();
        fs::write(out.join("previous"), "kept").unwrap();
        let (gz, diff_id) = layer(&[
            ("ok.yml", tar::EntryType::Regular, b"x"),
            ("../escape", tar::EntryType::Regular, b"pwned"),
        ]);
        let err = unpack_into(
            &gz,
            &descriptor(&gz),
            &diff_id,
            &out,
            "r",
            &PullLimits::default(),
        )
        .unwrap_err();
        assert!(
            matches!(&err, BundleError::UnsafePath { path, .. } if path == "../escape"),
            "{err}"
        );
        assert!(!dir.path().join("escape").exists());
        assert_eq!(fs::read_to_string(out.join("previous")).unwrap(), "kept");
        // No staging directory is left behind.
        let left: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1);
    }

    #[test]
    fn links_are_skipped_and_the_diff_id_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let (gz, diff_id) = layer(&[
            (".", tar::EntryType::Directory, b""),
            ("link", tar::EntryType::Symlink, b""),
            ("cfg/a.yml", tar::EntryType::Regular, b"a: 1\n"),
        ]);
        let (files, skipped) = unpack_into(
            &gz,
            &descriptor(&gz),
            &diff_id,
            &out,
            "r",
            &PullLimits::default(),
        )
        .unwrap();
        assert_eq!((files, skipped), (1, vec!["link".to_owned()]));
        assert!(fs::symlink_metadata(out.join("link")).is_err());
        assert_eq!(fs::read_to_string(out.join("cfg/a.yml")).unwrap(), "a: 1\n");

        let wrong = sha256_digest(b"something else");
        let err = unpack_into(
            &gz,
            &descriptor(&gz),
            &wrong,
            &dir.path().join("out2"),
            "r",
            &PullLimits::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("the config says"), "{err}");
        assert!(!dir.path().join("out2").exists());
    }

    fn small(max_bytes: u64, max_files: u64, max_dirs: u64) -> PullLimits {
        PullLimits {
            max_bytes,
            max_files,
            max_dirs,
        }
    }

    /// gzip of `tar` followed by `trailing` bytes inside the same stream (what a bomb hides
    /// after the end of the archive); the diff_id is honest.
    fn gz_with_trailing(tar: &[u8], trailing: usize) -> (Vec<u8>, String) {
        let mut stream = tar.to_vec();
        stream.resize(tar.len() + trailing, 0);
        let diff_id = sha256_digest(&stream);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        io::Write::write_all(&mut gz, &stream).unwrap();
        (gz.finish().unwrap(), diff_id)
    }

    #[test]
    fn a_gzip_bomb_stops_at_the_cap_and_keeps_the_old_output() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        fs::create_dir(&out).unwrap();
        fs::write(out.join("previous"), "kept").unwrap();
        // 8 MiB of zeros in a file: a few KiB compressed, honest digests.
        let zeros = vec![0u8; 8 << 20];
        let (gz, diff_id) = layer(&[("bomb", tar::EntryType::Regular, &zeros)]);
        assert!(gz.len() < 1 << 20, "the bomb is small: {} bytes", gz.len());
        let err = unpack_into(
            &gz,
            &descriptor(&gz),
            &diff_id,
            &out,
            "r",
            &small(1 << 20, 10, 10),
        )
        .unwrap_err();
        assert!(
            matches!(
                &err,
                BundleError::Limit {
                    what: "bytes of files",
                    flag: "--max-bytes",
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(fs::read_to_string(out.join("previous")).unwrap(), "kept");
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no staging left"
        );

        // The same zeros after the end of a valid archive: nothing is written, but inflating
        // them is paid for only up to the stream cap.
        let (tar_gz, _) = layer(&[("a", tar::EntryType::Regular, b"a")]);
        let tar = {
            let mut d = flate2::read::GzDecoder::new(&tar_gz[..]);
            let mut v = Vec::new();
            io::Read::read_to_end(&mut d, &mut v).unwrap();
            v
        };
        let (gz, diff_id) = gz_with_trailing(&tar, 8 << 20);
        let err = unpack_into(
            &gz,
            &descriptor(&gz),
            &diff_id,
            &out,
            "r",
            &small(1 << 10, 10, 10),
        )
        .unwrap_err();
        assert!(
            matches!(
                &err,
                BundleError::Limit {
                    what: "bytes in the layer's tar stream",
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(fs::read_to_string(out.join("previous")).unwrap(), "kept");
    }

    #[test]
    fn directories_and_files_are_capped_explicit_or_implied() {
        let dir = tempfile::tempdir().unwrap();
        let names: Vec<String> = (0..300).map(|i| format!("d{i}/")).collect();
        let entries: Vec<(&str, tar::EntryType, &[u8])> = names
            .iter()
            .map(|n| (n.as_str(), tar::EntryType::Directory, &b""[..]))
            .collect();
        let (gz, diff_id) = layer(&entries);
        let out = dir.path().join("dirs");
        let err = unpack_into(
            &gz,
            &descriptor(&gz),
            &diff_id,
            &out,
            "r",
            &small(1 << 20, 10, 100),
        )
        .unwrap_err();
        assert!(
            matches!(
                &err,
                BundleError::Limit {
                    what: "directories",
                    limit: 100,
                    ..
                }
            ),
            "{err}"
        );
        assert!(!out.exists());

        // Directories implied by file paths count too.
        let (gz, diff_id) = layer(&[("a/b/c/d/e/f", tar::EntryType::Regular, b"x")]);
        let err = unpack_into(
            &gz,
            &descriptor(&gz),
            &diff_id,
            &out,
            "r",
            &small(1 << 20, 10, 3),
        )
        .unwrap_err();
        assert!(
            matches!(
                &err,
                BundleError::Limit {
                    what: "directories",
                    ..
                }
            ),
            "{err}"
        );

        let (gz, diff_id) = layer(&[
            ("1", tar::EntryType::Regular, b"x"),
            ("2", tar::EntryType::Regular, b"x"),
            ("3", tar::EntryType::Regular, b"x"),
        ]);
        let err = unpack_into(
            &gz,
            &descriptor(&gz),
            &diff_id,
            &out,
            "r",
            &small(1 << 20, 2, 10),
        )
        .unwrap_err();
        assert!(
            matches!(&err, BundleError::Limit { what: "files", .. }),
            "{err}"
        );
    }

    #[test]
    fn outputs_that_hold_the_user_s_files_are_refused() {
        let cwd = std::env::current_dir().unwrap();
        let mut refused = vec![
            PathBuf::from("."),
            PathBuf::from(".."),
            PathBuf::from("/"),
            PathBuf::from("./"),
            cwd.clone(),
            cwd.join("sub/../"),
        ];
        if let Some(parent) = cwd.parent() {
            refused.push(parent.to_owned());
        }
        if let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
            refused.push(PathBuf::from(home));
        }
        for output in refused {
            let err = refuse_unsafe_output(&output).unwrap_err();
            assert!(
                err.to_string().contains("refusing to pull into"),
                "{output:?}: {err}"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        refuse_unsafe_output(&dir.path().join("new")).unwrap();
        refuse_unsafe_output(dir.path()).unwrap();
    }

    #[test]
    fn a_relative_output_is_swapped_in_beside_itself() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        fs::create_dir(&out).unwrap();
        fs::write(out.join("previous"), "replaced").unwrap();
        let (gz, diff_id) = layer(&[("cfg/a.yml", tar::EntryType::Regular, b"a: 1\n")]);
        unpack_into(
            &gz,
            &descriptor(&gz),
            &diff_id,
            &out,
            "r",
            &PullLimits::default(),
        )
        .unwrap();
        assert!(!out.join("previous").exists());
        assert_eq!(fs::read_to_string(out.join("cfg/a.yml")).unwrap(), "a: 1\n");
        // Only the output is left: the old tree and the staging directory are gone.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// Whatever the names, links and kinds of a layer's members, a pull writes only
        /// inside its output, and never panics.
        #[test]
        fn a_pull_never_reaches_outside_its_output(
            members in super::super::untar::testing::members()
        ) {
            use super::super::untar::testing::{Sandbox, raw_tar};
            let tar = raw_tar(&members);
            let diff_id = sha256_digest(&tar);
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            io::Write::write_all(&mut gz, &tar).unwrap();
            let gz = gz.finish().unwrap();
            let sandbox = Sandbox::new();
            let _ = unpack_into(
                &gz,
                &descriptor(&gz),
                &diff_id,
                &sandbox.target(),
                "r",
                &PullLimits::default(),
            );
            sandbox.check();
        }
    }
}
