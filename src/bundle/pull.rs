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
use crate::carvel::ImagesLock;
use crate::registry::{Reference, Registry};

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

/// Pulls the bundle at `location` into `output`, replacing whatever `output` held.
pub async fn pull(
    registry: &Registry,
    location: &Location,
    output: &Path,
) -> Result<Pulled, BundleError> {
    let name = location.repository();
    let (digest, manifest_bytes, config, layer) = match location {
        Location::Registry(reference) => fetch_from_registry(registry, reference).await?,
        Location::Layout(l) => {
            let (dir, tag, digest) = (l.dir.clone(), l.tag.clone(), l.digest.clone());
            tokio::task::spawn_blocking(move || {
                let digest = layout::resolve(&dir, tag.as_deref(), digest.as_deref())?;
                let manifest = layout::read_blob(&dir, &digest)?;
                let parsed = image::parse_bundle_manifest(&manifest).map_err(|reason| {
                    BundleError::Content {
                        reference: format!("oci-layout:{}@{digest}", dir.display()),
                        reason,
                    }
                })?;
                let config = layout::read_blob(&dir, &parsed.config.digest)?;
                let layer = layout::read_blob(&dir, &parsed.layer.digest)?;
                Ok::<_, BundleError>((
                    digest,
                    Bytes::from(manifest),
                    Bytes::from(config),
                    Bytes::from(layer),
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
    let (files, skipped) = tokio::task::spawn_blocking(move || {
        unpack_into(&layer, &layer_descriptor, &diff_id, &out, &reference)
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

async fn fetch_from_registry(
    registry: &Registry,
    reference: &Reference,
) -> Result<(String, Bytes, Bytes, Bytes), BundleError> {
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
    // Both are checked against the manifest's digests and sizes before anything is unpacked.
    let fetch = |descriptor: image::Descriptor| {
        let (contacted, options, client) = (&contacted, &options, &client);
        async move {
            retry(options, "GET blob", contacted, || {
                client.get_blob(contacted, &descriptor.digest)
            })
            .await
        }
    };
    let (config, layer) = tokio::try_join!(fetch(parsed.config), fetch(parsed.layer))?;
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

/// Verifies the layer's digest and size against the manifest, unpacks it into a sibling of
/// `output`, checks the tar against the config's diff_id, then swaps it in. The blob is checked
/// before a byte of it is inflated: a registry serving something else under that digest (a
/// gzip bomb, say) costs one hash, never a full disk.
fn unpack_into(
    layer: &[u8],
    descriptor: &image::Descriptor,
    diff_id: &str,
    output: &Path,
    reference: &str,
) -> Result<(usize, Vec<String>), BundleError> {
    check_blob(descriptor, layer).map_err(|reason| content(reference, reason))?;
    let (staging, result) = unpack_staged(layer, diff_id, output, reference)?;

    match fs::remove_dir_all(output) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(BundleError::io("removing the old", output)(e)),
    }
    let staged = staging.keep();
    fs::rename(&staged, output).map_err(|e| {
        let _ = fs::remove_dir_all(&staged);
        BundleError::io("moving the pulled bundle to", output)(e)
    })?;
    Ok(result)
}

/// Unpacks the layer into a fresh directory beside `output` and checks the tar's diff_id;
/// returns the directory, still to be swapped in.
fn unpack_staged(
    layer: &[u8],
    diff_id: &str,
    output: &Path,
    reference: &str,
) -> Result<(tempfile::TempDir, (usize, Vec<String>)), BundleError> {
    let parent = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&parent).map_err(BundleError::io("creating", &parent))?;
    let staging = tempfile::Builder::new()
        .prefix(".packsmith-pull-")
        .tempdir_in(&parent)
        .map_err(BundleError::io("creating a directory in", &parent))?;

    // The bufread decoder inflates straight from the slice, without read::GzDecoder's copy
    // through an internal buffer.
    let mut reader = HashingReader {
        inner: flate2::bufread::GzDecoder::new(layer),
        hash: Sha256::new(),
    };
    let result = unpack(&mut reader, staging.path(), reference)?;
    // Drain what the tar reader left (end-of-archive padding) so the hash covers the stream.
    io::copy(&mut reader, &mut io::sink()).map_err(|e| {
        content(
            reference,
            format!("the layer is not a valid gzip stream: {e}"),
        )
    })?;
    let actual = digest_string(&reader.hash.finalize());
    if actual != diff_id {
        return Err(content(
            reference,
            format!("the layer's tar has digest {actual}, the config says {diff_id}"),
        ));
    }
    Ok((staging, result))
}

fn content(reference: &str, reason: String) -> BundleError {
    BundleError::Content {
        reference: reference.to_owned(),
        reason,
    }
}

fn unpack(
    reader: &mut impl Read,
    root: &Path,
    reference: &str,
) -> Result<(usize, Vec<String>), BundleError> {
    let mut archive = tar::Archive::new(reader);
    let mut files = 0;
    let mut skipped = Vec::new();
    // Directories this pull created under `root`: `root` is fresh and links are never written,
    // so they stay directories, and a file's parent needs no mkdir + stat when it is known
    // (two syscalls per file otherwise, most of them failing with EEXIST).
    let mut created: HashSet<PathBuf> = HashSet::new();
    // std's io::copy moves 8 KiB per read and write; a large file goes through in far fewer
    // syscalls and inflate calls with a bigger buffer, allocated once for the whole layer.
    let mut buffer = vec![0u8; COPY_BUFFER];
    let entries = archive
        .entries()
        .map_err(|e| content(reference, format!("reading the layer: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| content(reference, format!("reading the layer: {e}")))?;
        let raw = entry.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw).into_owned();
        let relative = safe_relative_path(&raw).map_err(|reason| BundleError::UnsafePath {
            reference: reference.to_owned(),
            path: name.clone(),
            reason,
        })?;
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
            fs::DirBuilder::new()
                .recursive(true)
                .mode(mode | 0o700)
                .create(&target)
                .map_err(io_err)?;
            remember_dirs(&mut created, &relative);
        } else if entry_type.is_file() {
            if relative.as_os_str().is_empty() {
                return Err(BundleError::UnsafePath {
                    reference: reference.to_owned(),
                    path: name,
                    reason: "a file cannot be the bundle's root",
                });
            }
            if let Some(parent) = relative.parent()
                && !parent.as_os_str().is_empty()
                && !created.contains(parent)
            {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o777)
                    .create(root.join(parent))
                    .map_err(io_err)?;
                remember_dirs(&mut created, parent);
            }
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(mode)
                .open(&target)
                .map_err(io_err)?;
            copy(&mut entry, &mut file, &mut buffer).map_err(io_err)?;
            files += 1;
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

struct HashingReader<R> {
    inner: R,
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
        let err = unpack_into(&gz, &named, &diff_id, &out, "r").unwrap_err();
        assert!(err.to_string().contains(&named.digest), "{err}");
        assert_eq!(fs::read_to_string(out.join("previous")).unwrap(), "kept");
        assert!(!out.join("cfg").exists());
        let left: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1);

        // Right digest, wrong size: refused too.
        let mut sized = descriptor(&gz);
        sized.size += 1;
        let err = unpack_into(&gz, &sized, &diff_id, &out, "r").unwrap_err();
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
        let (files, _) = unpack_into(&gz, &descriptor(&gz), &diff_id, &out, "r").unwrap();
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
        unpack_into(&gz, &descriptor(&gz), &diff_id, &out, "r").unwrap();
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
        let err = unpack_into(&gz, &descriptor(&gz), &diff_id, &out, "r").unwrap_err();
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
        let (files, skipped) = unpack_into(&gz, &descriptor(&gz), &diff_id, &out, "r").unwrap();
        assert_eq!((files, skipped), (1, vec!["link".to_owned()]));
        assert!(fs::symlink_metadata(out.join("link")).is_err());
        assert_eq!(fs::read_to_string(out.join("cfg/a.yml")).unwrap(), "a: 1\n");

        let wrong = sha256_digest(b"something else");
        let err =
            unpack_into(&gz, &descriptor(&gz), &wrong, &dir.path().join("out2"), "r").unwrap_err();
        assert!(err.to_string().contains("the config says"), "{err}");
        assert!(!dir.path().join("out2").exists());
    }
}
