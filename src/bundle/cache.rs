//! Layer digests by tree fingerprint, so pushing an unchanged tree again skips tar and gzip.
//!
//! The key is a sha256 over the layer format (the tar encoding version and a digest of what
//! the gzip encoder makes of a fixed sample, so a different compressor never reuses an entry)
//! and, in walk order, every entry's name and, for files, device, inode, size, mode, mtime and
//! ctime. Nothing about a file can change without changing one of these: a write moves ctime,
//! which no user call can set back. The value is the layer's digest, diff_id and sizes.
//!
//! What a tree gives never depends on the cache: a hit returns what archiving the same bytes
//! gave before, and a tree with a file changed just before the walk (see [`is_racy`]) is not
//! recorded, because a change within one timestamp tick of the walk would not show in mtime
//! or ctime (git's "racily clean" files).
//!
//! The cache is best-effort: an unreadable, corrupt or unwritable entry is a miss.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::image::is_sha256_digest;
use super::layer;
use super::tree::Entry;

/// The tar encoding's version; bump it when `gotar` or the walk changes what a tree gives.
const TAR_FORMAT: &str = "packsmith-bundle-tar-1";

/// Files changed this recently are not trusted to show a later change in their timestamps,
/// on filesystems whose timestamps have whole seconds (ext3, FAT's 2 s).
const RACY_WINDOW: Duration = Duration::from_secs(2);

/// The same where timestamps have nanoseconds: Linux stamps files from a clock that ticks
/// every few milliseconds (one jiffy), far below this.
const FINE_RACY_WINDOW: Duration = Duration::from_millis(100);

/// Entries kept; the oldest are removed beyond this.
const MAX_ENTRIES: usize = 512;

/// Where layer digests are kept: one small JSON file per tree fingerprint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerCache {
    dir: PathBuf,
}

/// What the cache knows about a tree's layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct CachedLayer {
    pub digest: String,
    pub diff_id: String,
    pub size: u64,
    pub tar_size: u64,
}

impl LayerCache {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        LayerCache { dir: dir.into() }
    }

    /// The CLI's cache: `$XDG_CACHE_HOME/packsmith/layers`, else `~/.cache/packsmith/layers`.
    /// Never beside the bundle, where it would end up inside the next push.
    pub fn user_default() -> Option<Self> {
        crate::user_cache_dir("layers").map(Self::new)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub(super) fn fingerprint(&self, entries: &[Entry]) -> String {
        let mut hash = Sha256::new();
        hash.update(TAR_FORMAT.as_bytes());
        hash.update([0]);
        hash.update(layer::encoder_fingerprint().as_bytes());
        hash.update([0]);
        for entry in entries {
            hash.update(entry.name.as_bytes());
            hash.update([0]);
            match &entry.file {
                None => hash.update(b"d"),
                Some(meta) => {
                    hash.update(b"f");
                    for value in [
                        meta.dev(),
                        meta.ino(),
                        meta.size(),
                        u64::from(meta.mode()),
                        meta.mtime() as u64,
                        meta.mtime_nsec() as u64,
                        meta.ctime() as u64,
                        meta.ctime_nsec() as u64,
                    ] {
                        hash.update(value.to_le_bytes());
                    }
                }
            }
        }
        hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.json"))
    }

    pub(crate) fn get(&self, key: &str) -> Option<CachedLayer> {
        let bytes = fs::read(self.path(key)).ok()?;
        let entry: CachedLayer = serde_json::from_slice(&bytes).ok()?;
        (is_sha256_digest(&entry.digest) && is_sha256_digest(&entry.diff_id)).then_some(entry)
    }

    /// Records `layer` under `key`; failures are only logged, the cache being an optimisation.
    pub(crate) fn put(&self, key: &str, layer: &CachedLayer) {
        if let Err(error) = self.try_put(key, layer) {
            tracing::debug!(dir = %self.dir.display(), %error, "not caching the layer digest");
        }
    }

    fn try_put(&self, key: &str, layer: &CachedLayer) -> std::io::Result<()> {
        fs::create_dir_all(&self.dir)?;
        let json = serde_json::to_vec(layer).map_err(std::io::Error::other)?;
        // Written aside and renamed, so a concurrent reader sees a whole entry or none.
        let mut file = tempfile::NamedTempFile::new_in(&self.dir)?;
        file.write_all(&json)?;
        file.persist(self.path(key)).map_err(|e| e.error)?;
        self.prune();
        Ok(())
    }

    fn prune(&self) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        let mut files: Vec<(SystemTime, PathBuf)> = entries
            .filter_map(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .collect();
        if files.len() <= MAX_ENTRIES {
            return;
        }
        files.sort();
        for (_, path) in &files[..files.len() - MAX_ENTRIES] {
            let _ = fs::remove_file(path);
        }
    }
}

/// Whether some file changed so shortly before `started` (or after it) that a change to it in
/// the same timestamp tick would not show: within [`RACY_WINDOW`] for a timestamp without
/// nanoseconds (a filesystem counting in seconds), [`FINE_RACY_WINDOW`] otherwise.
pub(crate) fn is_racy(entries: &[Entry], started: SystemTime) -> bool {
    let Ok(started) = started.duration_since(SystemTime::UNIX_EPOCH) else {
        return true;
    };
    entries.iter().filter_map(|e| e.file.as_ref()).any(|meta| {
        [
            (meta.mtime(), meta.mtime_nsec()),
            (meta.ctime(), meta.ctime_nsec()),
        ]
        .into_iter()
        .any(|(secs, nanos)| {
            let window = if nanos == 0 {
                RACY_WINDOW
            } else {
                FINE_RACY_WINDOW
            };
            let at = Duration::new(secs.max(0) as u64, nanos.clamp(0, 999_999_999) as u32);
            at + window >= started
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::build::tests::IMAGES_YML;
    use crate::bundle::{BuildOptions, build, build_with_cache};

    /// A tree whose files are old enough to be cached.
    fn old_tree(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let old = SystemTime::now() - Duration::from_secs(3600);
        for (path, content) in files {
            let path = dir.path().join(path);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, content).unwrap();
            fs::File::options()
                .write(true)
                .open(&path)
                .unwrap()
                .set_modified(old)
                .unwrap();
        }
        dir
    }

    #[test]
    fn a_hit_gives_the_same_digests_without_archiving() {
        let files = [
            (".imgpkg/images.yml", IMAGES_YML),
            ("config/a.yml", "a: 1\n"),
        ];
        let tree = old_tree(&files);
        let cache_dir = tempfile::tempdir().unwrap();
        let cache = LayerCache::new(cache_dir.path());
        let inputs = [tree.path().to_owned()];
        let options = BuildOptions::default();

        let uncached = build(&inputs, &options).unwrap();
        let first = build_with_cache(&inputs, &options, Some(&cache)).unwrap();
        assert!(!first.from_cache());

        // The files' ctimes are when they were written (nanosecond timestamps here): a walk
        // right then is racy, one seconds later is not.
        let changed = fs::metadata(tree.path().join("config/a.yml")).unwrap();
        let written = SystemTime::UNIX_EPOCH
            + Duration::new(changed.ctime() as u64, changed.ctime_nsec() as u32);
        let later = written + Duration::from_secs(10);
        // Record through the public path by building with a clock past the racy window.
        let key_entries = collect(&inputs);
        assert!(is_racy(&key_entries, written + Duration::from_millis(10)));
        assert!(!is_racy(&key_entries, later));
        let key = cache.fingerprint(&key_entries);
        cache.put(
            &key,
            &CachedLayer {
                digest: first.layer_digest().to_owned(),
                diff_id: first.diff_id().to_owned(),
                size: first.layer.size,
                tar_size: first.stats().tar_size,
            },
        );
        let hit = build_with_cache(&inputs, &options, Some(&cache)).unwrap();
        assert!(hit.from_cache());
        assert_eq!(hit.digest(), uncached.digest());
        assert_eq!(hit.manifest(), uncached.manifest());
        assert_eq!(hit.size(), uncached.size());
        // The layer is archived again when needed, and checked against the cached digest.
        assert_eq!(
            hit.layer_data().unwrap(),
            uncached.layer.data.clone().unwrap()
        );

        // Any change to a file is a miss.
        fs::write(tree.path().join("config/a.yml"), "a: 2\n").unwrap();
        let changed = build_with_cache(&inputs, &options, Some(&cache)).unwrap();
        assert!(!changed.from_cache());
        assert_ne!(changed.digest(), uncached.digest());
        // And a bundle from a stale entry refuses to hand out a layer of other content.
        let err = hit.layer_data().unwrap_err();
        assert!(
            matches!(err, crate::bundle::BundleError::TreeChanged { .. }),
            "{err}"
        );
    }

    #[test]
    fn corrupt_entries_are_misses() {
        let cache_dir = tempfile::tempdir().unwrap();
        let cache = LayerCache::new(cache_dir.path());
        fs::write(cache.path("k"), "not json").unwrap();
        assert_eq!(cache.get("k"), None);
        fs::write(
            cache.path("k"),
            r#"{"digest":"sha256:1","diff_id":"sha256:2","size":1,"tar_size":1}"#,
        )
        .unwrap();
        assert_eq!(cache.get("k"), None);
        assert_eq!(cache.get("missing"), None);
    }

    fn collect(inputs: &[PathBuf]) -> Vec<Entry> {
        crate::bundle::tree::walk(inputs, &BuildOptions::default().exclude)
            .unwrap()
            .entries
    }
}
