//! Safe unpacking of downloaded tgz / tar / zip archives, detected by content (vendir tries
//! zip, then tgz, then tar, then falls back to the plain file).
//!
//! Every entry name goes through [`safe_join`]; symlinks must point inside the target and
//! are created only after every regular file, so nothing is ever written through one; hard
//! links must name an earlier entry; sizes and counts are capped while streaming, so a zip
//! bomb stops at the cap instead of filling the disk.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::Limits;
use super::fsutil::{safe_join, symlink_target_inside, validate_symlinks};
use crate::bundle::CappedReader;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Zip,
    Tgz,
    Tar,
    /// Not an archive (or gzip of something other than a tar): kept as one file.
    Plain,
}

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("archive entry {name:?} is unsafe: {why}")]
    UnsafeEntry { name: String, why: String },
    #[error(
        "archive expands beyond the limit of {limit} {what} (raise the limit if this archive \
         is expected)"
    )]
    TooLarge { what: &'static str, limit: u64 },
    /// Not a setting: no real archive comes near the cap.
    #[error("archive refused: {0}")]
    HeadersTooLarge(io::Error),
    #[error("archive entry {name:?} has an unsupported type ({kind})")]
    Unsupported { name: String, kind: String },
    #[error("corrupt {kind:?} archive: {source}")]
    Corrupt {
        kind: Kind,
        #[source]
        source: io::Error,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ArchiveError + '_ {
    move |source| ArchiveError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Sniffs the archive type from the first bytes (and, for gzip, the tar magic inside).
pub(super) fn detect(path: &Path) -> Result<Kind, ArchiveError> {
    let mut file = File::open(path).map_err(io_err(path))?;
    let mut head = [0u8; 512];
    let n = read_up_to(&mut file, &mut head).map_err(io_err(path))?;
    let head = &head[..n];
    if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
        return Ok(Kind::Zip);
    }
    if head.starts_with(&[0x1f, 0x8b]) {
        file.seek(SeekFrom::Start(0)).map_err(io_err(path))?;
        let mut inner = [0u8; 512];
        let n = read_up_to(&mut flate2::read::GzDecoder::new(file), &mut inner).unwrap_or(0);
        return Ok(if is_tar(&inner[..n]) {
            Kind::Tgz
        } else {
            Kind::Plain
        });
    }
    Ok(if is_tar(head) { Kind::Tar } else { Kind::Plain })
}

fn is_tar(block: &[u8]) -> bool {
    // POSIX ("ustar\0") and GNU ("ustar  ") tars carry the magic at offset 257.
    block.len() >= 262 && &block[257..262] == b"ustar"
}

fn read_up_to(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// Running totals checked against [`Limits`].
struct Budget<'a> {
    limits: &'a Limits,
    files: u64,
    bytes: u64,
    /// Every directory created under the destination, explicit or implied by a path.
    dirs: std::collections::HashSet<PathBuf>,
}

impl<'a> Budget<'a> {
    fn new(limits: &'a Limits) -> Self {
        Budget {
            limits,
            files: 0,
            bytes: 0,
            dirs: std::collections::HashSet::new(),
        }
    }

    /// Creates `dir` (below `dest`) and its parents, counting each new one against the cap.
    fn make_dir(&mut self, dest: &Path, dir: &Path) -> Result<(), ArchiveError> {
        let mut added = false;
        for ancestor in dir.ancestors() {
            if ancestor == dest || !ancestor.starts_with(dest) {
                break;
            }
            if !self.dirs.insert(ancestor.to_owned()) {
                break;
            }
            added = true;
        }
        if self.dirs.len() as u64 > self.limits.max_dirs {
            return Err(ArchiveError::TooLarge {
                what: "directories",
                limit: self.limits.max_dirs,
            });
        }
        if added {
            fs::create_dir_all(dir).map_err(io_err(dir))?;
        }
        Ok(())
    }

    fn add_file(&mut self) -> Result<(), ArchiveError> {
        self.files += 1;
        if self.files > self.limits.max_files {
            return Err(ArchiveError::TooLarge {
                what: "files",
                limit: self.limits.max_files,
            });
        }
        Ok(())
    }

    /// Copies `reader` to `path`, stopping at the byte cap.
    fn write(
        &mut self,
        dest: &Path,
        reader: &mut impl Read,
        path: &Path,
        mode: u32,
    ) -> Result<(), ArchiveError> {
        if let Some(parent) = path.parent() {
            self.make_dir(dest, parent)?;
        }
        let mut out = open_new(path, mode)?;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = reader
                .read(&mut buf)
                .map_err(|e| self.read_error(path, e))?;
            if n == 0 {
                break;
            }
            self.bytes += n as u64;
            if self.bytes > self.limits.max_bytes {
                return Err(ArchiveError::TooLarge {
                    what: "bytes",
                    limit: self.limits.max_bytes,
                });
            }
            out.write_all(&buf[..n]).map_err(io_err(path))?;
        }
        Ok(())
    }
}

impl Budget<'_> {
    /// The inflated stream's cap: file content plus a header per entry, generously.
    fn stream_limit(&self) -> u64 {
        self.limits.pull().stream_bytes()
    }

    fn read_error(&self, path: &Path, e: io::Error) -> ArchiveError {
        if e.kind() == io::ErrorKind::FileTooLarge {
            ArchiveError::TooLarge {
                what: "bytes of archive stream",
                limit: self.stream_limit(),
            }
        } else {
            io_err(path)(e)
        }
    }
}

fn open_new(path: &Path, mode: u32) -> Result<File, ArchiveError> {
    use std::os::unix::fs::OpenOptionsExt;
    // A later entry with the same name replaces the earlier one (as tar does); remove first so
    // an earlier symlink of that name is never followed.
    let _ = fs::remove_file(path);
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io_err(path))
}

/// File mode for an entry: keep the executable bit, nothing else from the archive.
fn file_mode(archive_mode: u32) -> u32 {
    if archive_mode & 0o111 != 0 {
        0o755
    } else {
        0o644
    }
}

/// Unpacks `archive` into the (existing, empty) directory `dest`.
pub(super) fn unpack(
    archive: &Path,
    kind: Kind,
    dest: &Path,
    limits: &Limits,
) -> Result<(), ArchiveError> {
    let mut budget = Budget::new(limits);
    let cap = budget.stream_limit();
    let mut links = Vec::new();
    match kind {
        Kind::Zip => unzip(archive, dest, &mut budget, &mut links)?,
        Kind::Tgz => {
            let file = File::open(archive).map_err(io_err(archive))?;
            untar(
                CappedReader::new(flate2::read::GzDecoder::new(file), cap),
                kind,
                dest,
                &mut budget,
                &mut links,
            )?;
        }
        Kind::Tar => {
            let file = File::open(archive).map_err(io_err(archive))?;
            untar(
                CappedReader::new(file, cap),
                kind,
                dest,
                &mut budget,
                &mut links,
            )?;
        }
        Kind::Plain => unreachable_plain()?,
    }
    for (path, target) in links {
        let _ = fs::remove_file(&path);
        std::os::unix::fs::symlink(&target, &path).map_err(io_err(&path))?;
    }
    validate_symlinks(dest).map_err(|e| ArchiveError::UnsafeEntry {
        name: String::new(),
        why: e.to_string(),
    })
}

fn unreachable_plain() -> Result<(), ArchiveError> {
    Err(ArchiveError::Unsupported {
        name: String::new(),
        kind: "plain file passed as an archive".to_owned(),
    })
}

fn entry_path(dest: &Path, name: &str) -> Result<PathBuf, ArchiveError> {
    safe_join(dest, name).map_err(|e| ArchiveError::UnsafeEntry {
        name: name.to_owned(),
        why: e.to_string(),
    })
}

fn check_link(dest: &Path, name: &str, path: &Path, target: &Path) -> Result<(), ArchiveError> {
    if symlink_target_inside(dest, path, target) {
        Ok(())
    } else {
        Err(ArchiveError::UnsafeEntry {
            name: name.to_owned(),
            why: format!(
                "symlink to {} leaves the target directory",
                target.display()
            ),
        })
    }
}

fn untar(
    reader: CappedReader<impl Read>,
    kind: Kind,
    dest: &Path,
    budget: &mut Budget<'_>,
    links: &mut Vec<(PathBuf, PathBuf)>,
) -> Result<(), ArchiveError> {
    let stream_limit = budget.stream_limit();
    let corrupt = |source: io::Error| {
        if crate::bundle::headers_too_large(&source) {
            ArchiveError::HeadersTooLarge(source)
        } else if source.kind() == io::ErrorKind::FileTooLarge {
            ArchiveError::TooLarge {
                what: "bytes of archive stream",
                limit: stream_limit,
            }
        } else {
            ArchiveError::Corrupt { kind, source }
        }
    };
    let meter = reader.header_meter();
    let mut archive = tar::Archive::new(reader);
    for entry in crate::bundle::tar_entries(&mut archive, &meter).map_err(corrupt)? {
        let mut entry = entry.map_err(corrupt)?;
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let kind_byte = entry.header().entry_type();
        // A lone "./" (the root entry imgpkg and many tools write) names the target itself.
        if kind_byte.is_dir() && name.split('/').all(|p| p.is_empty() || p == ".") {
            continue;
        }
        let path = entry_path(dest, &name)?;
        use tar::EntryType as T;
        match kind_byte {
            T::Directory => budget.make_dir(dest, &path)?,
            T::Regular | T::Continuous | T::GNUSparse => {
                budget.add_file()?;
                let mode = file_mode(entry.header().mode().unwrap_or(0o644));
                budget.write(dest, &mut entry, &path, mode)?;
            }
            T::Symlink => {
                budget.add_file()?;
                let target = entry
                    .link_name()
                    .map_err(corrupt)?
                    .ok_or_else(|| ArchiveError::UnsafeEntry {
                        name: name.clone(),
                        why: "symlink without a target".to_owned(),
                    })?
                    .into_owned();
                check_link(dest, &name, &path, &target)?;
                links.push((path, target));
            }
            T::Link => {
                budget.add_file()?;
                let target = entry
                    .link_name_bytes()
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default();
                let source = entry_path(dest, &target).map_err(|_| ArchiveError::UnsafeEntry {
                    name: name.clone(),
                    why: format!("hard link to {target:?} leaves the target directory"),
                })?;
                // Only links to regular files already extracted: a copy keeps the tree free of
                // shared inodes, which later stages would not expect.
                let meta =
                    fs::symlink_metadata(&source).map_err(|_| ArchiveError::UnsafeEntry {
                        name: name.clone(),
                        why: format!("hard link to {target:?}, which is not an earlier file"),
                    })?;
                if !meta.is_file() {
                    return Err(ArchiveError::UnsafeEntry {
                        name,
                        why: format!("hard link to {target:?}, which is not a regular file"),
                    });
                }
                let mut from = File::open(&source).map_err(io_err(&source))?;
                budget.write(dest, &mut from, &path, file_mode(meta_mode(&meta)))?;
            }
            // Metadata entries carry no file of their own.
            T::XGlobalHeader | T::XHeader | T::GNULongName | T::GNULongLink => {}
            other => {
                return Err(ArchiveError::Unsupported {
                    name,
                    kind: format!("{other:?}"),
                });
            }
        }
    }
    Ok(())
}

fn meta_mode(meta: &fs::Metadata) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode()
}

fn unzip(
    archive: &Path,
    dest: &Path,
    budget: &mut Budget<'_>,
    links: &mut Vec<(PathBuf, PathBuf)>,
) -> Result<(), ArchiveError> {
    let corrupt = |e: zip::result::ZipError| ArchiveError::Corrupt {
        kind: Kind::Zip,
        source: io::Error::new(io::ErrorKind::InvalidData, e.to_string()),
    };
    let file = File::open(archive).map_err(io_err(archive))?;
    let mut zip = zip::ZipArchive::new(file).map_err(corrupt)?;
    for index in 0..zip.len() {
        let mut entry = zip.by_index(index).map_err(corrupt)?;
        let name = entry.name().map_err(corrupt)?.into_owned();
        if entry.is_dir() {
            let path = entry_path(dest, &name)?;
            budget.make_dir(dest, &path)?;
            continue;
        }
        let path = entry_path(dest, &name)?;
        budget.add_file()?;
        let mode = entry.unix_mode().unwrap_or(0o644);
        if entry.is_symlink() {
            let mut target = String::new();
            (&mut entry)
                .take(4096)
                .read_to_string(&mut target)
                .map_err(io_err(&path))?;
            let target = PathBuf::from(target);
            check_link(dest, &name, &path, &target)?;
            links.push((path, target));
        } else {
            budget.write(dest, &mut entry, &path, file_mode(mode))?;
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn limits() -> Limits {
        Limits::default()
    }

    /// Builds a tar with raw header fields, so tests can write names the tar crate's safe
    /// builders refuse.
    pub(crate) fn raw_tar(entries: &[(&str, tar::EntryType, &[u8], &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, kind, data, link) in entries {
            let mut header = tar::Header::new_gnu();
            {
                let bytes = header.as_old_mut();
                bytes.name[..name.len()].copy_from_slice(name.as_bytes());
                bytes.linkname[..link.len()].copy_from_slice(link.as_bytes());
            }
            header.set_entry_type(*kind);
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            out.extend_from_slice(header.as_bytes());
            out.extend_from_slice(data);
            out.resize(out.len().div_ceil(512) * 512, 0);
        }
        out.resize(out.len() + 1024, 0);
        out
    }

    fn unpack_bytes(
        bytes: &[u8],
        limits: &Limits,
    ) -> (tempfile::TempDir, Result<(), ArchiveError>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let archive = dir.path().join("a");
        fs::write(&archive, bytes).expect("write");
        let dest = dir.path().join("out");
        fs::create_dir(&dest).expect("mkdir");
        let kind = detect(&archive).expect("detect");
        let result = unpack(&archive, kind, &dest, limits);
        (dir, result)
    }

    use tar::EntryType as T;

    #[test]
    fn unpacks_files_dirs_and_inside_links() {
        let tar = raw_tar(&[
            ("./", T::Directory, b"", ""),
            ("d/", T::Directory, b"", ""),
            ("d/a.txt", T::Regular, b"hello", ""),
            ("d/link", T::Symlink, b"", "a.txt"),
            ("hard", T::Link, b"", "d/a.txt"),
        ]);
        let (dir, result) = unpack_bytes(&tar, &limits());
        result.expect("unpack");
        let out = dir.path().join("out");
        assert_eq!(
            fs::read_to_string(out.join("d/link")).expect("read"),
            "hello"
        );
        assert_eq!(fs::read_to_string(out.join("hard")).expect("read"), "hello");
    }

    #[test]
    fn refuses_escaping_entries() {
        for (entries, hint) in [
            (vec![("../evil", T::Regular, &b"x"[..], "")], "'..'"),
            (vec![("/etc/evil", T::Regular, &b"x"[..], "")], "absolute"),
            (vec![("l", T::Symlink, &b""[..], "../../etc")], "symlink"),
            (vec![("l", T::Symlink, &b""[..], "/etc/passwd")], "symlink"),
            (
                vec![
                    ("l", T::Symlink, &b""[..], "."),
                    ("l/../../x", T::Regular, &b"x"[..], ""),
                ],
                "'..'",
            ),
            (
                vec![
                    ("d", T::Symlink, &b""[..], "."),
                    ("e", T::Symlink, &b""[..], "d/.."),
                ],
                "outside",
            ),
            (
                vec![("h", T::Link, &b""[..], "../../etc/passwd")],
                "hard link",
            ),
            (vec![("f", T::Fifo, &b""[..], "")], "unsupported"),
        ] {
            let tar = raw_tar(&entries);
            let (dir, result) = unpack_bytes(&tar, &limits());
            let err = result.expect_err(hint).to_string();
            assert!(err.contains(hint), "{hint}: {err}");
            assert!(!dir.path().join("evil").exists());
            assert!(!dir.path().join("x").exists());
        }
    }

    #[test]
    fn caps_bytes_and_files_while_streaming() {
        let big = vec![0u8; 10_000];
        let tar = raw_tar(&[("a", T::Regular, &big, ""), ("b", T::Regular, b"x", "")]);
        let small = Limits {
            max_bytes: 5_000,
            ..Limits::default()
        };
        let (_dir, result) = unpack_bytes(&tar, &small);
        assert!(
            result
                .expect_err("bytes")
                .to_string()
                .contains("5000 bytes")
        );
        let few = Limits {
            max_files: 1,
            ..Limits::default()
        };
        let (_dir, result) = unpack_bytes(&tar, &few);
        assert!(result.expect_err("files").to_string().contains("1 files"));
    }

    #[test]
    fn caps_directories_and_the_inflated_stream() {
        let names: Vec<String> = (0..300).map(|i| format!("d{i}/")).collect();
        let entries: Vec<(&str, T, &[u8], &str)> = names
            .iter()
            .map(|n| (n.as_str(), T::Directory, &b""[..], ""))
            .collect();
        let tar = raw_tar(&entries);
        let few = Limits {
            max_dirs: 100,
            ..Limits::default()
        };
        let (dir, result) = unpack_bytes(&tar, &few);
        let err = result.expect_err("dirs").to_string();
        assert!(err.contains("100 directories"), "{err}");
        let made = fs::read_dir(dir.path().join("out")).expect("out").count();
        assert!(made <= 100, "{made} directories were created");

        // Implied by a file's path, too.
        let deep = raw_tar(&[("a/b/c/d/e/f", T::Regular, b"x", "")]);
        let (_dir, result) = unpack_bytes(
            &deep,
            &Limits {
                max_dirs: 3,
                ..Limits::default()
            },
        );
        assert!(
            result
                .expect_err("implied")
                .to_string()
                .contains("3 directories")
        );

        // Metadata entries write nothing, but reading them is paid for: the stream is capped.
        let pax = vec![b'x'; 64 << 10];
        let headers: Vec<(&str, T, &[u8], &str)> = (0..40)
            .map(|_| ("h", T::XGlobalHeader, &pax[..], ""))
            .collect();
        let tar = raw_tar(&headers);
        let tiny = Limits {
            max_bytes: 1,
            max_files: 1,
            max_dirs: 1,
            ..Limits::default()
        };
        let (_dir, result) = unpack_bytes(&tar, &tiny);
        let err = result.expect_err("stream").to_string();
        assert!(err.contains("archive stream"), "{err}");
    }

    #[test]
    fn detects_gzip_zip_and_plain() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tgz = dir.path().join("x.tgz");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&raw_tar(&[("a", T::Regular, b"a", "")]))
            .expect("gz");
        fs::write(&tgz, gz.finish().expect("gz")).expect("write");
        assert_eq!(detect(&tgz).expect("detect"), Kind::Tgz);

        let gz_plain = dir.path().join("x.gz");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(b"not a tar").expect("gz");
        fs::write(&gz_plain, gz.finish().expect("gz")).expect("write");
        assert_eq!(detect(&gz_plain).expect("detect"), Kind::Plain);

        let zip_path = dir.path().join("x.zip");
        let mut zip = zip::ZipWriter::new(File::create(&zip_path).expect("create"));
        zip.start_file("dir/f.txt", zip::write::SimpleFileOptions::default())
            .expect("zip");
        zip.write_all(b"zipped").expect("zip");
        zip.start_file("../escape", zip::write::SimpleFileOptions::default())
            .expect("zip");
        zip.finish().expect("zip");
        assert_eq!(detect(&zip_path).expect("detect"), Kind::Zip);
        let dest = dir.path().join("out");
        fs::create_dir(&dest).expect("mkdir");
        let err = unpack(&zip_path, Kind::Zip, &dest, &limits()).expect_err("escape");
        assert!(err.to_string().contains("'..'"), "{err}");

        fs::write(dir.path().join("p"), "just text").expect("write");
        assert_eq!(detect(&dir.path().join("p")).expect("detect"), Kind::Plain);
    }

    #[test]
    fn property_random_archives_never_write_outside() {
        // Random names from a hostile alphabet: whatever happens, nothing lands outside `out`.
        let names = ["a", "..", ".", "/", "b", "l"];
        let mut seed = 1u64;
        for _ in 0..300 {
            let mut entries = Vec::new();
            for _ in 0..4 {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                let len = 1 + (seed >> 60) as usize % 4;
                let name: String = (0..len)
                    .map(|i| names[((seed >> (8 * i)) % names.len() as u64) as usize])
                    .collect::<Vec<_>>()
                    .join("/");
                let kind = match (seed >> 40) % 3 {
                    0 => T::Regular,
                    1 => T::Symlink,
                    _ => T::Directory,
                };
                let link = if kind == T::Symlink { "../l" } else { "" };
                entries.push((name, kind, link));
            }
            let refs: Vec<(&str, T, &[u8], &str)> = entries
                .iter()
                .map(|(n, k, l)| (n.as_str(), *k, &b"x"[..], *l))
                .collect();
            let (dir, _) = unpack_bytes(&raw_tar(&refs), &limits());
            let outside: Vec<_> = fs::read_dir(dir.path())
                .expect("read")
                .flatten()
                .map(|e| e.file_name())
                .filter(|n| n != "a" && n != "out")
                .collect();
            assert!(outside.is_empty(), "{entries:?} wrote {outside:?}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// Whatever the names, links and kinds of an archive's members, it unpacks only
        /// inside its directory (links resolve inside it), and never panics.
        #[test]
        fn an_archive_never_reaches_outside_its_directory(
            members in crate::bundle::untar_testing::members()
        ) {
            use crate::bundle::untar_testing::{Sandbox, raw_tar};
            let sandbox = Sandbox::new();
            let file = tempfile::NamedTempFile::new().unwrap();
            std::fs::write(file.path(), raw_tar(&members)).unwrap();
            let _ = unpack(file.path(), Kind::Tar, &sandbox.target(), &Limits::default());
            sandbox.check();
        }
    }
}
