//! Unpacking a verified layer: into a fresh directory beside the output, every name checked
//! (relative, no `..`, no link written), every byte, file and directory counted against the
//! caps, the tar hashed against the config's diff_id on the way — and swapped in only when all
//! of that passed.

use std::collections::HashSet;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Component, Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::{Layer, MAX_DEPTH, PullLimits, content, lexical_clean, limit_error, stream_error};
use crate::bundle::error::BundleError;
use crate::bundle::image::{self, digest_string};
use crate::bundle::untar::CappedReader;

/// Verifies the layer's digest and size against the manifest (unless that was done while it
/// downloaded), unpacks it into a sibling of `output`, checks the tar against the config's
/// diff_id, then swaps it in. The blob is checked before a byte of it is inflated: a registry
/// serving something else under that digest (a gzip bomb, say) costs one hash, never a full
/// disk.
pub(super) fn unpack_into(
    mut layer: Layer,
    descriptor: &image::Descriptor,
    diff_id: &str,
    output: &Path,
    reference: &str,
    limits: &PullLimits,
) -> Result<Unpacked, BundleError> {
    if !layer.checked {
        check_blob_file(descriptor, &mut layer.file, reference)?;
    }
    let reader = io::BufReader::with_capacity(COPY_BUFFER, layer.file);
    let (staging, result) = unpack_staged(reader, diff_id, output, reference, limits)?;
    swap_in(staging, output)?;
    Ok(result)
}

/// [`check_blob`] for a blob on disk, read once, and rewound for the unpack.
pub(super) fn check_blob_file(
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
pub(super) fn staging_parent(output: &Path) -> Result<PathBuf, BundleError> {
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
pub(super) fn swap_in(staging: tempfile::TempDir, output: &Path) -> Result<(), BundleError> {
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
pub(super) fn unpack_staged(
    layer: impl io::BufRead,
    diff_id: &str,
    output: &Path,
    reference: &str,
    limits: &PullLimits,
) -> Result<(tempfile::TempDir, Unpacked), BundleError> {
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

/// What an unpack wrote and left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Unpacked {
    pub files: usize,
    /// The first [`NAMED_LINKS`] links left out (names cut at [`NAMED_LINK_CHARS`]).
    pub skipped: Vec<String>,
    /// All links left out.
    pub links: usize,
}

/// Links named in what a pull reports; the rest are counted. A layer may hold as many links
/// as files, and a name may be a megabyte long.
pub(super) const NAMED_LINKS: usize = 20;
const NAMED_LINK_CHARS: usize = 256;

pub(super) fn unpack(
    reader: &mut impl Read,
    meter: &crate::bundle::untar::HeaderMeter,
    root: &Path,
    reference: &str,
    limits: &PullLimits,
) -> Result<Unpacked, BundleError> {
    let mut archive = tar::Archive::new(reader);
    let mut files = 0;
    let mut links = 0;
    let mut bytes: u64 = 0;
    let mut skipped = Vec::new();
    // Directories this pull created under `root`: `root` is fresh and links are never written,
    // so they stay directories, and a file's parent needs no mkdir + stat when it is known
    // (two syscalls per file otherwise, most of them failing with EEXIST).
    let mut created: HashSet<PathBuf> = HashSet::new();
    // std's io::copy moves 8 KiB per read and write; a large file goes through in far fewer
    // syscalls and inflate calls with a bigger buffer, allocated once for the whole layer.
    let mut buffer = vec![0u8; COPY_BUFFER];
    let entries = crate::bundle::tar_entries(&mut archive, meter)
        .map_err(|e| stream_error(reference, limits, e))?;
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
            entries_within(files + links, reference, limits)?;
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
            links += 1;
            entries_within(files + links, reference, limits)?;
            if skipped.len() < NAMED_LINKS {
                skipped.push(name.chars().take(NAMED_LINK_CHARS).collect());
            }
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
    Ok(Unpacked {
        files,
        skipped,
        links,
    })
}

/// Files and links both count against `--max-files`: a link is not written, but a layer of
/// nothing but links is no cheaper to read.
fn entries_within(entries: usize, reference: &str, limits: &PullLimits) -> Result<(), BundleError> {
    if entries as u64 > limits.max_files {
        return Err(limit_error(
            reference,
            "files and links",
            limits.max_files,
            "--max-files",
        ));
    }
    Ok(())
}

pub(super) const COPY_BUFFER: usize = 1 << 20;

/// Records `dir` (relative to the staging root) and its ancestors as existing directories.
pub(super) fn remember_dirs(created: &mut HashSet<PathBuf>, dir: &Path) {
    for ancestor in dir.ancestors() {
        if ancestor.as_os_str().is_empty() || !created.insert(ancestor.to_owned()) {
            // Its ancestors were recorded with it.
            break;
        }
    }
}

pub(super) fn copy(from: &mut impl Read, to: &mut impl Write, buffer: &mut [u8]) -> io::Result<()> {
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
pub(super) fn safe_relative_path(raw: &[u8]) -> Result<PathBuf, &'static str> {
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
pub(super) struct HashingReader<R> {
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
