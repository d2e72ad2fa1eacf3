//! The size cap of the cache directory. Each object keeps a work directory (its synced tree
//! and the git objects and downloads that make the next sync cheap); with many objects they
//! can outgrow the volume. After each reconcile the object's directory is measured, and while
//! the total is over `--cache-max-size` the least recently used directories of objects not
//! being reconciled are removed: those objects then sync cold once, nothing else changes.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

/// Per-process bookkeeping of the work directories under one cache directory.
#[derive(Debug)]
pub(super) struct WorkDirs {
    /// Bytes allowed in total; `None`: no cap.
    max_bytes: Option<u64>,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// By work directory: size in bytes and when last used.
    known: HashMap<PathBuf, (u64, SystemTime)>,
    /// Directories a reconcile is using now: never evicted.
    busy: HashSet<PathBuf>,
}

/// Marks a work directory busy until dropped.
pub(super) struct InUse<'a> {
    dirs: &'a WorkDirs,
    path: PathBuf,
}

impl Drop for InUse<'_> {
    fn drop(&mut self) {
        if let Ok(mut s) = self.dirs.state.lock() {
            s.busy.remove(&self.path);
        }
    }
}

/// A dot name beside `dir`: no object can have it, and `scan` skips it.
fn evicting_name(dir: &Path) -> PathBuf {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dir.with_file_name(format!(".evicting-{name}-{:x}", fastrand::u64(..)))
}

use crate::pipeline::disk_usage;

impl WorkDirs {
    pub(super) fn new(max_bytes: Option<u64>) -> Self {
        Self {
            max_bytes,
            state: Mutex::default(),
        }
    }

    /// Registers the directories already under `cache_dir` (`<namespace>/<name>` and
    /// `<namespace>/.repositories/<name>`), so a restarted controller counts what a persistent
    /// volume kept, including directories of objects deleted while it was down.
    pub(super) fn scan(&self, cache_dir: &Path) {
        if self.max_bytes.is_none() {
            return;
        }
        let Ok(namespaces) = std::fs::read_dir(cache_dir) else {
            return;
        };
        let mut found = Vec::new();
        for ns in namespaces.filter_map(Result::ok) {
            let Ok(entries) = std::fs::read_dir(ns.path()) else {
                continue;
            };
            for entry in entries.filter_map(Result::ok) {
                let path = entry.path();
                if entry.file_name() == ".repositories" {
                    if let Ok(repos) = std::fs::read_dir(&path) {
                        found.extend(repos.filter_map(Result::ok).map(|e| e.path()));
                    }
                } else if entry
                    .file_name()
                    .to_string_lossy()
                    .starts_with(".evicting-")
                {
                    // A removal a crash interrupted.
                    let _ = std::fs::remove_dir_all(&path);
                } else if path.is_dir() {
                    found.push(path);
                }
            }
        }
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        for path in found {
            let used = std::fs::metadata(&path)
                .and_then(|m| m.modified())
                .unwrap_or(SystemTime::UNIX_EPOCH);
            let size = disk_usage(&path);
            s.known.entry(path).or_insert((size, used));
        }
    }

    /// Marks `path` in use for the lifetime of the guard.
    pub(super) fn use_dir(&self, path: &Path) -> InUse<'_> {
        if let Ok(mut s) = self.state.lock() {
            s.busy.insert(path.to_owned());
        }
        InUse {
            dirs: self,
            path: path.to_owned(),
        }
    }

    /// Records `path`'s size after a reconcile, then evicts least recently used idle
    /// directories while over the cap. Returns the evicted directories.
    pub(super) fn used(&self, path: &Path) -> Vec<PathBuf> {
        // Without a cap nothing is ever evicted: no need to walk the tree on every reconcile.
        if self.max_bytes.is_none() {
            return Vec::new();
        }
        let size = disk_usage(path);
        let mut trash = Vec::new();
        let doomed = {
            let Ok(mut s) = self.state.lock() else {
                return Vec::new();
            };
            s.known.insert(path.to_owned(), (size, SystemTime::now()));
            let doomed = self.over_cap(&mut s);
            // Moved aside while no reconcile can claim them (a rename is instant); the slow
            // removal happens after the lock is released.
            for dir in &doomed {
                let aside = evicting_name(dir);
                match std::fs::rename(dir, &aside) {
                    Ok(()) => trash.push(aside),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        tracing::warn!(path = %dir.display(), error = %e, "evicting a work directory");
                    }
                }
            }
            doomed
        };
        for dir in &trash {
            if let Err(e) = std::fs::remove_dir_all(dir) {
                tracing::warn!(path = %dir.display(), error = %e, "removing an evicted work directory");
            }
        }
        if !doomed.is_empty() {
            tracing::info!(
                evicted = doomed.len(),
                "cache over --cache-max-size: evicted the least recently used work directories"
            );
        }
        doomed
    }

    /// Removes `path` now, busy or not (its reconcile found it over the per-object disk
    /// budget), and forgets it.
    pub(super) fn discard(&self, path: &Path) {
        let aside = evicting_name(path);
        match std::fs::rename(path, &aside) {
            Ok(()) => {
                if let Err(e) = std::fs::remove_dir_all(&aside) {
                    tracing::warn!(path = %aside.display(), error = %e, "removing a work directory over its budget");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "removing a work directory over its budget");
            }
        }
        self.forget(path);
    }

    /// Forgets `path` (its object was deleted and its directory removed).
    pub(super) fn forget(&self, path: &Path) {
        if let Ok(mut s) = self.state.lock() {
            s.known.remove(path);
        }
    }

    #[cfg(test)]
    /// Total bytes known.
    pub(super) fn total(&self) -> u64 {
        self.state
            .lock()
            .map(|s| s.known.values().map(|(size, _)| size).sum())
            .unwrap_or(0)
    }

    fn over_cap(&self, s: &mut State) -> Vec<PathBuf> {
        let Some(max) = self.max_bytes else {
            return Vec::new();
        };
        let mut total: u64 = s.known.values().map(|(size, _)| size).sum();
        if total <= max {
            return Vec::new();
        }
        let mut idle: Vec<(PathBuf, u64, SystemTime)> = s
            .known
            .iter()
            .filter(|(p, _)| !s.busy.contains(*p))
            .map(|(p, (size, used))| (p.clone(), *size, *used))
            .collect();
        idle.sort_by_key(|(p, _, used)| (*used, p.clone()));
        let mut doomed = Vec::new();
        for (path, size, _) in idle {
            if total <= max {
                break;
            }
            total = total.saturating_sub(size);
            s.known.remove(&path);
            doomed.push(path);
        }
        doomed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_of(root: &Path, name: &str, bytes: usize) -> PathBuf {
        let d = root.join("ns").join(name);
        std::fs::create_dir_all(d.join("cache")).unwrap();
        std::fs::write(d.join("cache").join("blob"), vec![0u8; bytes]).unwrap();
        d
    }

    #[test]
    fn evicts_the_least_recently_used_idle_directories_until_under_the_cap() {
        let root = tempfile::tempdir().unwrap();
        let dirs = WorkDirs::new(Some(2_500));
        let a = dir_of(root.path(), "a", 1_000);
        let b = dir_of(root.path(), "b", 1_000);
        let c = dir_of(root.path(), "c", 1_000);
        assert!(dirs.used(&a).is_empty());
        assert!(dirs.used(&b).is_empty());
        // a is busy (being reconciled): b, the oldest idle one, goes.
        let busy = dirs.use_dir(&a);
        assert_eq!(dirs.used(&c), vec![b.clone()]);
        assert!(!b.exists() && a.exists() && c.exists());
        assert_eq!(dirs.total(), 2_000);
        drop(busy);
        // Without a cap nothing is ever evicted.
        let unbounded = WorkDirs::new(None);
        for d in [&a, &c] {
            assert!(unbounded.used(d).is_empty());
        }
    }

    #[test]
    fn without_a_cap_nothing_is_measured_or_evicted() {
        let root = tempfile::tempdir().unwrap();
        let a = dir_of(root.path(), "a", 1_000);
        let dirs = WorkDirs::new(None);
        dirs.scan(root.path());
        assert!(dirs.used(&a).is_empty());
        assert_eq!(dirs.total(), 0);
        assert!(a.exists());
    }

    #[test]
    fn a_restart_counts_what_the_volume_kept() {
        let root = tempfile::tempdir().unwrap();
        dir_of(root.path(), "a", 700);
        let repo = root.path().join("ns").join(".repositories").join("r");
        std::fs::create_dir_all(&repo).unwrap();
        std::fs::write(repo.join("f"), vec![1u8; 300]).unwrap();
        let dirs = WorkDirs::new(Some(10_000));
        dirs.scan(root.path());
        assert_eq!(dirs.total(), 1_000);
        dirs.forget(&repo);
        assert_eq!(dirs.total(), 700);
    }
}
