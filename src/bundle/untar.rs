//! What every unpacker (bundle pull, the `image` and `imgpkgBundle` sources, http and GitHub
//! archives, Helm charts) reads a tar through: a stream cut off at a byte cap, and tar
//! entries whose headers are metered.
//!
//! The tar reader holds a member's extension headers whole in memory (PAX records, GNU long
//! names and long links) before it returns the member. Bounded only by the stream cap, one
//! small gzip could make it allocate most of a gigabyte; metered, a member's headers take at
//! most [`MAX_HEADER_BYTES`].

use std::io::{self, Read};
use std::sync::{Arc, Mutex, PoisonError};

/// Bytes one tar member's headers may take: its header blocks, PAX records, GNU long name and
/// long link. A path of 4096 bytes (PATH_MAX) and every common PAX key fit many times over.
pub(crate) const MAX_HEADER_BYTES: u64 = 1 << 20;

/// An inflated stream cut off past `limit` bytes (an [`io::ErrorKind::FileTooLarge`]
/// error), so that no compression ratio can make a small blob cost unbounded CPU or disk —
/// not even with data after the end of the archive, or with a stream of metadata entries
/// that write nothing. Every unpacker reads through one, and iterates its tar with
/// [`entries`], metered by [`CappedReader::header_meter`].
pub(crate) struct CappedReader<R> {
    inner: R,
    read: u64,
    limit: u64,
    meter: HeaderMeter,
}

impl<R> CappedReader<R> {
    pub(crate) fn new(inner: R, limit: u64) -> Self {
        CappedReader {
            inner,
            read: 0,
            limit,
            meter: HeaderMeter::default(),
        }
    }

    /// The handle [`entries`] meters this stream's tar headers with.
    pub(crate) fn header_meter(&self) -> HeaderMeter {
        self.meter.clone()
    }
}

impl<R: Read> Read for CappedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        if self.read > self.limit {
            return Err(io::Error::new(
                io::ErrorKind::FileTooLarge,
                format!("the inflated stream passed {} bytes", self.limit),
            ));
        }
        self.meter.count(n as u64)?;
        Ok(n)
    }
}

/// A tar member's headers passed [`MAX_HEADER_BYTES`] (the source of the `io::Error` the
/// reader returns: find it with [`headers_too_large`]).
#[derive(Debug, thiserror::Error)]
#[error(
    "a tar entry's headers (PAX records, GNU long name or link) take more than {MAX_HEADER_BYTES} bytes"
)]
pub(crate) struct HeadersTooLarge;

/// Whether `error` (or what it wraps) is [`HeadersTooLarge`].
pub(crate) fn headers_too_large(error: &io::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = error.get_ref().map(|e| e as _);
    while let Some(e) = source {
        if e.is::<HeadersTooLarge>() {
            return true;
        }
        source = e.source();
    }
    false
}

/// Where the tar reader is in the stream: reading a member's data, or between members (its
/// headers), and how much it has read there.
#[derive(Debug, Default)]
struct Meter {
    /// Bytes read since the phase began.
    read: u64,
    /// Reading headers: how many bytes they may take.
    headers: Option<u64>,
    /// The current member's data as stored (padded to 512-byte blocks).
    data: u64,
}

/// Shared between a [`CappedReader`] (which counts) and [`entries`] (which says whether the
/// tar reader is between members).
#[derive(Debug, Clone, Default)]
pub(crate) struct HeaderMeter(Arc<Mutex<Meter>>);

impl HeaderMeter {
    fn lock(&self) -> std::sync::MutexGuard<'_, Meter> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The tar reader goes to the next member: it first skips what the caller left unread
    /// of the current one's data, which is not a header.
    fn begin_headers(&self) {
        let mut meter = self.lock();
        let unread = meter.data.saturating_sub(meter.read);
        meter.headers = Some(unread.saturating_add(MAX_HEADER_BYTES));
        meter.read = 0;
    }

    fn begin_data(&self, size: u64) {
        let mut meter = self.lock();
        meter.headers = None;
        meter.data = size.div_ceil(512).saturating_mul(512);
        meter.read = 0;
    }

    /// Reading what follows the archive (end-of-archive padding): capped by the stream cap
    /// only.
    pub(crate) fn finish(&self) {
        self.begin_data(0);
    }

    fn count(&self, n: u64) -> io::Result<()> {
        let mut meter = self.lock();
        meter.read = meter.read.saturating_add(n);
        match meter.headers {
            Some(budget) if meter.read > budget => {
                Err(io::Error::new(io::ErrorKind::InvalidData, HeadersTooLarge))
            }
            _ => Ok(()),
        }
    }
}

/// The members of `archive`, whose reader must be (or wrap) the [`CappedReader`] `meter`
/// comes from: a member whose headers pass [`MAX_HEADER_BYTES`] is an error
/// ([`headers_too_large`]) before the tar reader buffers them.
pub(crate) fn entries<'a, R: Read>(
    archive: &'a mut tar::Archive<R>,
    meter: &HeaderMeter,
) -> io::Result<Entries<'a, R>> {
    meter.begin_data(0);
    Ok(Entries {
        inner: archive.entries()?,
        meter: meter.clone(),
    })
}

pub(crate) struct Entries<'a, R: Read> {
    inner: tar::Entries<'a, R>,
    meter: HeaderMeter,
}

impl<'a, R: Read> Iterator for Entries<'a, R> {
    type Item = io::Result<tar::Entry<'a, R>>;

    fn next(&mut self) -> Option<Self::Item> {
        self.meter.begin_headers();
        let next = self.inner.next();
        match &next {
            Some(Ok(entry)) => self.meter.begin_data(entry.size()),
            _ => self.meter.finish(),
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tar of one file, `name`, holding `data`, whose name goes in a GNU long-name header
    /// when it does not fit the header (as GNU tar writes it).
    fn gnu_tar(name: &str, data: &[u8]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        builder.append_data(&mut header, name, data).unwrap();
        builder.into_inner().unwrap()
    }

    /// A tar whose member carries a PAX record of `value_len` bytes.
    fn pax_tar(value_len: usize) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        let value = "v".repeat(value_len);
        builder
            .append_pax_extensions([("packsmith.test", value.as_bytes())])
            .unwrap();
        let mut header = tar::Header::new_ustar();
        header.set_size(2);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        builder.append_data(&mut header, "f", &b"hi"[..]).unwrap();
        builder.into_inner().unwrap()
    }

    /// Names and data of every member, read through the metered reader; data is read only
    /// when `read_data` (an unpacker that skips a member leaves it to the tar reader).
    fn read(tar: &[u8], read_data: bool) -> io::Result<Vec<(String, usize)>> {
        let reader = CappedReader::new(tar, u64::MAX);
        let meter = reader.header_meter();
        let mut archive = tar::Archive::new(reader);
        let mut out = Vec::new();
        for entry in entries(&mut archive, &meter)? {
            let mut entry = entry?;
            let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let mut data = Vec::new();
            if read_data {
                entry.read_to_end(&mut data)?;
            }
            out.push((name, data.len()));
        }
        Ok(out)
    }

    #[test]
    fn long_names_and_pax_records_are_capped() {
        let name = |len: usize| format!("{}/f", "d".repeat(len));
        let fine = read(&gnu_tar(&name(8 << 10), b"x"), true).unwrap();
        assert_eq!(fine, vec![(name(8 << 10), 1)]);
        let err = read(&gnu_tar(&name(2 << 20), b"x"), true).unwrap_err();
        assert!(headers_too_large(&err), "{err}");
        assert!(err.to_string().contains("PAX records"), "{err}");

        assert_eq!(read(&pax_tar(64 << 10), true).unwrap().len(), 1);
        let err = read(&pax_tar(2 << 20), true).unwrap_err();
        assert!(headers_too_large(&err), "{err}");
    }

    #[test]
    fn data_left_unread_is_not_a_header() {
        // 3 MiB of data the caller skips, then another member: the skip is the tar
        // reader's, and must not count against the next member's headers.
        let mut builder = tar::Builder::new(Vec::new());
        for (name, len) in [("big", 3usize << 20), ("small", 5)] {
            let mut header = tar::Header::new_gnu();
            header.set_size(len as u64);
            header.set_mode(0o644);
            header.set_entry_type(tar::EntryType::Regular);
            builder
                .append_data(&mut header, name, &vec![0u8; len][..])
                .unwrap();
        }
        let tar = builder.into_inner().unwrap();
        let names: Vec<String> = read(&tar, false)
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(names, ["big", "small"]);
        assert_eq!(read(&tar, true).unwrap()[0].1, 3 << 20);
    }
}

/// What the unpackers' property tests share: hostile tar entries, and the containment check.
#[cfg(test)]
pub(crate) mod testing {
    use std::collections::BTreeMap;
    use std::path::Path;

    use proptest::prelude::*;

    /// One tar member as a hostile archive could write it: any name, any link target.
    #[derive(Debug, Clone)]
    pub(crate) struct Member {
        pub name: String,
        pub kind: tar::EntryType,
        pub link: String,
        pub data: Vec<u8>,
    }

    /// Names and link targets built from the pieces that escape: `..`, `.`, empty pieces,
    /// repeated names (a link then a file through it), and plain ones. Relative and at most
    /// [`MAX_PIECES`] deep, so that even an unpacker that followed them blindly stays inside
    /// the [`Sandbox`] (the target sits deeper than that): a regression fails the property
    /// instead of writing, or deleting, outside the test's directory. Absolute names have
    /// their own example-based tests.
    fn path() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("..".to_owned()),
            Just(".".to_owned()),
            Just("".to_owned()),
            Just("a".to_owned()),
            Just("b".to_owned()),
            Just("victim".to_owned()),
        ];
        prop::collection::vec(piece, 1..=MAX_PIECES).prop_map(|pieces| pieces.join("/"))
    }

    pub(crate) fn members() -> impl Strategy<Value = Vec<Member>> {
        let kind = prop_oneof![
            Just(tar::EntryType::Regular),
            Just(tar::EntryType::Directory),
            Just(tar::EntryType::Symlink),
            Just(tar::EntryType::Link),
        ];
        let member = (
            path(),
            kind,
            path(),
            prop::collection::vec(any::<u8>(), 0..16),
        )
            .prop_map(|(name, kind, link, data)| Member {
                name,
                kind,
                link,
                data: if kind == tar::EntryType::Regular {
                    data
                } else {
                    Vec::new()
                },
            });
        prop::collection::vec(member, 1..8)
    }

    /// The raw tar: names and link targets written into the header as they are, as a hostile
    /// archive would (the tar crate's builder refuses `..`).
    pub(crate) fn raw_tar(members: &[Member]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for member in members {
            let mut header = tar::Header::new_gnu();
            let name = member.name.as_bytes();
            header.as_old_mut().name[..name.len()].copy_from_slice(name);
            let link = member.link.as_bytes();
            if matches!(member.kind, tar::EntryType::Symlink | tar::EntryType::Link) {
                header.as_old_mut().linkname[..link.len()].copy_from_slice(link);
            }
            header.set_entry_type(member.kind);
            header.set_mode(0o644);
            header.set_size(member.data.len() as u64);
            header.set_cksum();
            builder
                .append(&header, member.data.as_slice())
                .expect("a tar in memory");
        }
        builder.into_inner().expect("a tar in memory")
    }

    /// Every entry under `root`, links not followed: path → what it is.
    pub(crate) fn tree(root: &Path) -> BTreeMap<String, String> {
        walkdir::WalkDir::new(root)
            .min_depth(1)
            .into_iter()
            .filter_map(Result::ok)
            .map(|e| {
                let path = e.path().strip_prefix(root).unwrap_or(e.path());
                let kind = if e.file_type().is_symlink() {
                    format!(
                        "-> {}",
                        std::fs::read_link(e.path())
                            .map(|t| t.display().to_string())
                            .unwrap_or_default()
                    )
                } else if e.file_type().is_dir() {
                    "dir".to_owned()
                } else {
                    std::fs::read(e.path())
                        .map(|d| format!("{} bytes", d.len()))
                        .unwrap_or_default()
                };
                (path.display().to_string(), kind)
            })
            .collect()
    }

    const SECRET: &str = "another tenant's\n";
    const MAX_PIECES: usize = 4;
    /// Where the target sits under the sandbox's root: deeper than any chain of generated
    /// names and links climbs (8 members of 4 pieces each).
    const NEST: &str =
        "n/n/n/n/n/n/n/n/n/n/n/n/n/n/n/n/n/n/n/n/n/n/n/n/n/n/n/n/n/n/n/n/n/n/n/n/n/n/n/n";

    /// A sandbox: `<root>/n/…/n/victim/secret` beside `<root>/n/…/n/target`. After an unpack into
    /// `target`, everything outside it must be as it was; every symlink inside it must
    /// resolve inside it.
    pub(crate) struct Sandbox {
        pub root: tempfile::TempDir,
    }

    impl Sandbox {
        pub(crate) fn new() -> Self {
            let root = tempfile::tempdir().expect("a temporary directory");
            let nest = root.path().join(NEST);
            std::fs::create_dir_all(nest.join("victim")).expect("mkdir");
            std::fs::write(nest.join("victim/secret"), SECRET).expect("write");
            std::fs::create_dir(nest.join("target")).expect("mkdir");
            Sandbox { root }
        }

        pub(crate) fn target(&self) -> std::path::PathBuf {
            self.root.path().join(NEST).join("target")
        }

        /// Panics (failing the property) if anything outside `target` changed or a link
        /// inside it leads out.
        pub(crate) fn check(&self) {
            let inside = format!("{NEST}/target/");
            let outside: BTreeMap<String, String> = tree(self.root.path())
                .into_iter()
                .filter(|(path, _)| !path.starts_with(&inside))
                .collect();
            let mut expected: BTreeMap<String, String> = BTreeMap::new();
            let mut dir = String::new();
            for part in NEST.split('/') {
                dir = if dir.is_empty() {
                    part.to_owned()
                } else {
                    format!("{dir}/{part}")
                };
                expected.insert(dir.clone(), "dir".to_owned());
            }
            expected.insert(format!("{NEST}/target"), "dir".to_owned());
            expected.insert(format!("{NEST}/victim"), "dir".to_owned());
            expected.insert(
                format!("{NEST}/victim/secret"),
                format!("{} bytes", SECRET.len()),
            );
            assert_eq!(outside, expected, "something outside the target changed");
            let target = self.target();
            let canonical_target = target.canonicalize().expect("the target exists");
            for entry in walkdir::WalkDir::new(&target)
                .into_iter()
                .filter_map(Result::ok)
            {
                if entry.file_type().is_symlink()
                    && let Ok(resolved) = entry.path().canonicalize()
                {
                    assert!(
                        resolved.starts_with(&canonical_target),
                        "{} leads out of the target to {}",
                        entry.path().display(),
                        resolved.display()
                    );
                }
            }
        }
    }
}
