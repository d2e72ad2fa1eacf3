//! The warm path: a directory whose upstreams are unchanged and whose files are still what the
//! last sync wrote is left alone, with no download, staging or swap.
//!
//! After a directory is swapped in, its state is recorded in the cache directory: a digest of
//! the directory's config, each content's upstream identity (git commit and tags, download
//! sha256, chart version and digest, image digest, inline data digest) with its lock entry,
//! and every entry of the written tree (relative path, type, size, mtime, ctime, inode, mode).
//! On the next sync the tree is compared with that list (a stat per entry, no reads), the
//! upstreams are asked for their identity only (an ls-remote, a conditional GET, an index
//! download answered by 304, a manifest HEAD), and if everything matches the recorded lock is
//! returned as is. Anything unknown or different (a source that cannot say what it would
//! fetch, an edited or added file, another config) falls back to the full sync, which
//! restores the directory.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::carvel::vendir::{Directory, LockDirectoryContents};

/// Bumped when the recorded format or what it means changes; older records are ignored.
const FORMAT: u32 = 1;

/// What the last sync of one directory wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct State {
    format: u32,
    /// [`directory_digest`] of the config that produced it.
    directory_digest: String,
    pub contents: Vec<ContentState>,
    files: Vec<Entry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ContentState {
    pub identity: String,
    pub lock: LockDirectoryContents,
}

/// One entry of the tree, compared field by field. ctime and inode catch what a size and
/// mtime kept on purpose (`cp -p`, `touch -r`) would hide.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Entry {
    #[serde(rename = "p")]
    path: String,
    /// `f`ile, `d`irectory, `l`ink, `o`ther.
    #[serde(rename = "k")]
    kind: char,
    #[serde(rename = "s")]
    size: u64,
    #[serde(rename = "m")]
    mtime_ns: i64,
    #[serde(rename = "c")]
    ctime_ns: i64,
    #[serde(rename = "i")]
    inode: u64,
    #[serde(rename = "o")]
    mode: u32,
}

impl State {
    pub(crate) fn new(
        directory: &Directory,
        contents: Vec<ContentState>,
        target: &Path,
    ) -> io::Result<State> {
        Ok(State {
            format: FORMAT,
            directory_digest: directory_digest(directory),
            contents,
            files: snapshot(target)?,
        })
    }

    /// Whether this record describes `directory` as configured now and `target` as it is on
    /// disk.
    pub(crate) fn matches(&self, directory: &Directory, target: &Path) -> bool {
        self.format == FORMAT
            && self.directory_digest == directory_digest(directory)
            && self.contents.len() == directory.contents.len()
            && self
                .contents
                .iter()
                .zip(&directory.contents)
                .all(|(state, config)| state.lock.path == config.path)
            && snapshot(target).is_ok_and(|files| files == self.files)
    }
}

/// Where the record of `root`/`directory` lives in `cache`.
pub(crate) fn state_path(cache: &Path, root: &Path, directory: &str) -> PathBuf {
    let root = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_owned());
    let mut hasher = sha2::Sha256::new();
    hasher.update(root.as_os_str().as_encoded_bytes());
    hasher.update([0]);
    hasher.update(directory.as_bytes());
    let key = super::hex(&hasher.finalize());
    cache.join("warm").join(format!("{}.json", &key[..32]))
}

/// The record at `path`; `None` when absent or unreadable (then the directory is synced).
pub(crate) fn load(path: &Path) -> Option<State> {
    let bytes = std::fs::read(path).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Writes the record atomically. Best effort: a failure costs a full sync next time, never
/// this one.
pub(crate) fn store(path: &Path, state: &State) {
    let write = || -> io::Result<()> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
        std::fs::write(&tmp, serde_json::to_vec(state).map_err(io::Error::other)?)?;
        std::fs::rename(&tmp, path)
    };
    if let Err(error) = write() {
        tracing::debug!(path = %path.display(), %error, "could not record the synced directory");
    }
}

/// Forgets a record, so a directory synced without a complete identity is never skipped.
pub(crate) fn forget(path: &Path) {
    if let Err(error) = std::fs::remove_file(path)
        && error.kind() != io::ErrorKind::NotFound
    {
        tracing::debug!(path = %path.display(), %error, "could not remove a stale sync record");
    }
}

fn directory_digest(directory: &Directory) -> String {
    let json = serde_json::to_vec(directory).unwrap_or_default();
    super::hex(&sha2::Sha256::digest(&json))
}

/// Every entry below `root` (and `root` itself, as `.`), sorted by path.
fn snapshot(root: &Path) -> io::Result<Vec<Entry>> {
    let mut entries = vec![entry(".".to_owned(), &std::fs::symlink_metadata(root)?)];
    if !entries[0].kind.eq(&'d') {
        return Err(io::Error::other("not a directory"));
    }
    let mut stack = vec![(root.to_owned(), String::new())];
    while let Some((dir, prefix)) = stack.pop() {
        for child in std::fs::read_dir(&dir)? {
            let child = child?;
            let name = child.file_name();
            let rel = format!("{prefix}{}", name.to_string_lossy());
            let meta = child.metadata()?;
            if meta.is_dir() {
                stack.push((child.path(), format!("{rel}/")));
            }
            entries.push(entry(rel, &meta));
        }
    }
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(entries)
}

fn entry(path: String, meta: &std::fs::Metadata) -> Entry {
    let kind = meta.file_type();
    Entry {
        path,
        kind: if kind.is_file() {
            'f'
        } else if kind.is_dir() {
            'd'
        } else if kind.is_symlink() {
            'l'
        } else {
            'o'
        },
        // A directory's size depends on the file system's bookkeeping; its mtime already
        // says whether entries were added or removed.
        size: if kind.is_dir() { 0 } else { meta.size() },
        mtime_ns: meta
            .mtime()
            .saturating_mul(1_000_000_000)
            .saturating_add(meta.mtime_nsec()),
        ctime_ns: meta
            .ctime()
            .saturating_mul(1_000_000_000)
            .saturating_add(meta.ctime_nsec()),
        inode: meta.ino(),
        mode: meta.mode(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn directory() -> Directory {
        Directory {
            path: "vendor".to_owned(),
            contents: vec![crate::carvel::vendir::DirectoryContents {
                path: ".".to_owned(),
                manual: Some(Default::default()),
                ..Default::default()
            }],
            permissions: None,
        }
    }

    #[test]
    fn any_change_to_the_tree_or_config_is_noticed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("vendor");
        std::fs::create_dir_all(target.join("sub")).unwrap();
        std::fs::write(target.join("sub/a.yaml"), "a").unwrap();
        let config = directory();
        let lock = LockDirectoryContents {
            path: ".".to_owned(),
            ..Default::default()
        };
        let state = State::new(
            &config,
            vec![ContentState {
                identity: "x".to_owned(),
                lock,
            }],
            &target,
        )
        .unwrap();
        let path = state_path(dir.path(), dir.path(), "vendor");
        store(&path, &state);
        let loaded = load(&path).unwrap();
        assert_eq!(loaded, state);
        assert!(loaded.matches(&config, &target));

        let mut other = config.clone();
        other.permissions = Some(0o700);
        assert!(!loaded.matches(&other, &target), "config changed");

        std::fs::write(target.join("sub/new"), "n").unwrap();
        assert!(!loaded.matches(&config, &target), "file added");
        std::fs::remove_file(target.join("sub/new")).unwrap();
        // Removing the file restored the names but not the directory's mtime.
        assert!(!loaded.matches(&config, &target), "directory touched");

        let fresh = State::new(&config, loaded.contents.clone(), &target).unwrap();
        assert!(fresh.matches(&config, &target));
        std::fs::write(target.join("sub/a.yaml"), "b").unwrap();
        assert!(!fresh.matches(&config, &target), "same size, rewritten");

        forget(&path);
        assert!(load(&path).is_none());
        assert!(!fresh.matches(&config, &dir.path().join("missing")));
    }
}
