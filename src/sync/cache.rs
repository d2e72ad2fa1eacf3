//! The sync cache between runs (`--cache-dir`; the CLI's default is
//! `$XDG_CACHE_HOME/packsmith/sync`): git repositories (`git/<key>`), downloads with their
//! ETags (`http/`, `github/`) and the warm-path records (`warm/`).
//!
//! Safe to share between processes: a sync holds a shared lock on `<cache>/.lock` for its
//! whole run and an exclusive lock on `git/<key>.lock` while it fetches into that repository
//! (two runs never write one repository at once); eviction takes the exclusive lock on
//! `<cache>/.lock` without waiting, so it never removes what a running sync uses — when the
//! cache is busy, the next run evicts. Bounded: [`evict`] removes the least recently used
//! entries until the cache fits its size. A git repository's recency is its lock file's mtime
//! (set at each use), a download's the newest mtime of its files (set when a 304 reuses it).

use std::fs::{self, File, TryLockError};
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// `$XDG_CACHE_HOME/packsmith/sync`, else `~/.cache/packsmith/sync`.
pub fn user_default() -> Option<PathBuf> {
    crate::user_cache_dir("sync")
}

/// Held for the whole sync: evictions wait for no one and skip a cache in use.
pub(crate) struct InUse(#[expect(dead_code, reason = "held for its lock")] File);

/// Takes the shared lock of `cache` (created when missing). Blocks only while an eviction
/// runs.
pub(crate) fn in_use(cache: &Path) -> io::Result<InUse> {
    fs::create_dir_all(cache)?;
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(cache.join(".lock"))?;
    file.lock_shared()?;
    Ok(InUse(file))
}

/// Exclusive use of the cached repository `repo_dir` across processes, marked as used now.
pub(crate) struct RepoLock(#[expect(dead_code, reason = "held for its lock")] File);

pub(crate) fn lock_repo(repo_dir: &Path) -> io::Result<RepoLock> {
    let path = lock_path(repo_dir);
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)?;
    }
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)?;
    file.lock()?;
    // Recency for eviction: best effort.
    let _ = file.set_modified(SystemTime::now());
    Ok(RepoLock(file))
}

fn lock_path(repo_dir: &Path) -> PathBuf {
    let mut name = repo_dir.file_name().unwrap_or_default().to_os_string();
    name.push(".lock");
    repo_dir.with_file_name(name)
}

/// Marks a cached download as used now (its recency for eviction); best effort.
pub(crate) fn touch(path: &Path) {
    if let Ok(file) = File::options().write(true).open(path) {
        let _ = file.set_modified(SystemTime::now());
    }
}

/// What [`evict`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Evicted {
    /// Entries removed and the bytes they held.
    pub entries: usize,
    pub bytes: u64,
    /// Bytes left in the cache.
    pub kept: u64,
    /// The cache was in use by another run: nothing was measured or removed.
    pub busy: bool,
}

/// One removable unit: a repository (directory and lock file) or a download (its body,
/// ETag and checksum files share a stem).
struct Entry {
    paths: Vec<PathBuf>,
    bytes: u64,
    used: SystemTime,
}

/// Removes the least recently used entries of `cache` until it holds at most `max_bytes`.
pub fn evict(cache: &Path, max_bytes: u64) -> io::Result<Evicted> {
    let lock = match File::options().write(true).open(cache.join(".lock")) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Evicted::default()),
        Err(e) => return Err(e),
    };
    match lock.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            return Ok(Evicted {
                busy: true,
                ..Evicted::default()
            });
        }
        Err(TryLockError::Error(e)) => return Err(e),
    }
    let mut entries = Vec::new();
    for kind in ["git", "http", "github", "warm"] {
        entries.extend(entries_of(&cache.join(kind))?);
    }
    let mut total: u64 = entries.iter().map(|e| e.bytes).sum();
    let mut evicted = Evicted::default();
    entries.sort_by_key(|e| e.used);
    for entry in entries {
        if total <= max_bytes {
            break;
        }
        for path in &entry.paths {
            let removed = if path.is_dir() {
                fs::remove_dir_all(path)
            } else {
                fs::remove_file(path)
            };
            match removed {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        total = total.saturating_sub(entry.bytes);
        evicted.entries += 1;
        evicted.bytes += entry.bytes;
    }
    evicted.kept = total;
    Ok(evicted)
}

/// The entries of one kind's directory: each subdirectory with its `.lock` file, and files
/// grouped by the part of their name before the first `.`.
fn entries_of(dir: &Path) -> io::Result<Vec<Entry>> {
    let listing = match fs::read_dir(dir) {
        Ok(listing) => listing,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    // (entry, newest file mtime, directory mtime)
    let mut groups: std::collections::BTreeMap<String, (Entry, Option<SystemTime>, SystemTime)> =
        Default::default();
    for item in listing {
        let item = item?;
        let name = item.file_name().to_string_lossy().into_owned();
        let meta = item.path().symlink_metadata()?;
        let key = name.split('.').next().unwrap_or(&name).to_owned();
        let bytes = if meta.is_dir() {
            crate::pipeline::disk_usage(&item.path())
        } else {
            meta.len()
        };
        let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        let (entry, files_used, dir_used) = groups.entry(key).or_insert_with(|| {
            let entry = Entry {
                paths: Vec::new(),
                bytes: 0,
                used: SystemTime::UNIX_EPOCH,
            };
            (entry, None, SystemTime::UNIX_EPOCH)
        });
        entry.paths.push(item.path());
        entry.bytes += bytes;
        if meta.is_dir() {
            *dir_used = modified;
        } else {
            *files_used = Some(files_used.map_or(modified, |t| t.max(modified)));
        }
    }
    // A repository's directory changes only when it fetches; its lock file says when it was
    // last used. A download: its newest file.
    for (entry, files_used, dir_used) in groups.values_mut() {
        entry.used = files_used.unwrap_or(*dir_used);
    }
    let groups: std::collections::BTreeMap<String, Entry> =
        groups.into_iter().map(|(k, (e, _, _))| (k, e)).collect();
    Ok(groups.into_values().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn aged(path: &Path, seconds_ago: u64) {
        let file = File::options().write(true).open(path).expect("open");
        file.set_modified(SystemTime::now() - Duration::from_secs(seconds_ago))
            .expect("set mtime");
    }

    #[test]
    fn the_least_recently_used_entries_go_first_and_a_busy_cache_is_left_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = dir.path();
        drop(in_use(cache).expect("lock"));
        // An old repository (1,000 bytes), a recent one (1,000), an old download (300).
        for (key, age) in [("old", 300), ("new", 10)] {
            let repo = cache.join("git").join(key);
            fs::create_dir_all(&repo).expect("mkdir");
            fs::write(repo.join("pack"), vec![0u8; 1000]).expect("write");
            drop(lock_repo(&repo).expect("lock"));
            aged(&lock_path(&repo), age);
        }
        fs::create_dir_all(cache.join("http")).expect("mkdir");
        for file in ["abc.json", "abc.etag"] {
            fs::write(cache.join("http").join(file), vec![0u8; 150]).expect("write");
            aged(&cache.join("http").join(file), 200);
        }

        // In use by a running sync: nothing is touched.
        let running = in_use(cache).expect("lock");
        let busy = evict(cache, 0).expect("evict");
        assert!(busy.busy);
        assert!(cache.join("git/old").is_dir());
        drop(running);

        // 2,300 bytes: the old repository, then the old download, go; the recent one stays.
        let evicted = evict(cache, 1_100).expect("evict");
        assert_eq!(evicted.entries, 2, "{evicted:?}");
        assert!(!cache.join("git/old").exists() && !cache.join("git/old.lock").exists());
        assert!(!cache.join("http/abc.json").exists() && !cache.join("http/abc.etag").exists());
        assert!(cache.join("git/new/pack").is_file());
        assert!(evicted.kept <= 1_100, "{evicted:?}");

        // Under the cap: nothing goes.
        assert_eq!(evict(cache, 1 << 30).expect("evict").entries, 0);
    }
}
