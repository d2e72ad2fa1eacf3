//! What one sync may do: its caps, the egress policy, credentials and caches.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::carvel::vendir::LockConfig;
use crate::registry::Registry;

/// Caps that keep a hostile or broken upstream from exhausting the machine.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Bytes one content may download or expand to.
    pub max_bytes: u64,
    /// Files one content may expand to.
    pub max_files: u64,
    /// Directories one content may expand to (empty ones count: an archive of 300,000 empty
    /// directories costs inodes, not bytes).
    pub max_dirs: u64,
    /// Wall-clock time for fetching one content.
    pub source_timeout: Duration,
    /// HTTP redirects followed per request.
    pub max_redirects: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: 512 * 1024 * 1024,
            max_files: 100_000,
            max_dirs: 100_000,
            source_timeout: Duration::from_secs(300),
            max_redirects: 10,
        }
    }
}

/// What a sync may trust beyond its upstreams' own answers. The default is the strict policy
/// the controller runs with; the CLI loosens it where vendir is looser and its user owns the
/// machine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Policy {
    /// git URLs that are local paths or `file://`. vendir accepts them; in the controller they
    /// would read what other objects cached on the same volume, so there they are refused
    /// (as submodule URLs always are).
    pub allow_local_git: bool,
    /// git over ssh with no `ssh-knownhosts` in the Secret, accepting whatever host key the
    /// server shows (vendir's `StrictHostKeyChecking=no`). Off, such a source is refused.
    pub allow_unknown_ssh_hosts: bool,
}

impl Policy {
    /// The CLI's: local repositories are the user's own; unknown ssh hosts only when asked.
    pub fn cli(allow_unknown_ssh_hosts: bool) -> Self {
        Policy {
            allow_local_git: true,
            allow_unknown_ssh_hosts,
        }
    }
}

impl Limits {
    /// The same caps for a bundle pull (the `imgpkgBundle` source).
    pub fn pull(&self) -> crate::bundle::PullLimits {
        crate::bundle::PullLimits {
            max_bytes: self.max_bytes,
            max_files: self.max_files,
            max_dirs: self.max_dirs,
        }
    }
}

/// Secret data, never printed: `Debug` shows the keys only.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret {
    pub data: BTreeMap<String, Vec<u8>>,
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secret")
            .field("keys", &self.data.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Secret {
    pub(super) fn get(&self, key: &str) -> Option<String> {
        self.data
            .get(key)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }
}

/// Where `secretRef`s and inline `pathsFrom` are looked up: the controller answers from
/// Kubernetes Secrets/ConfigMaps in the PackageSource's namespace, the CLI from the Secret and
/// ConfigMap documents given next to vendir.yml (as vendir does with `-f`).
pub trait SecretSource: Send + Sync {
    fn secret(&self, name: &str) -> Option<Secret>;
    fn config_map(&self, name: &str) -> Option<BTreeMap<String, String>>;
}

/// A [`SecretSource`] held in memory.
#[derive(Debug, Clone, Default)]
pub struct MemorySecrets {
    pub secrets: BTreeMap<String, Secret>,
    pub config_maps: BTreeMap<String, BTreeMap<String, String>>,
}

impl SecretSource for MemorySecrets {
    fn secret(&self, name: &str) -> Option<Secret> {
        self.secrets.get(name).cloned()
    }
    fn config_map(&self, name: &str) -> Option<BTreeMap<String, String>> {
        self.config_maps.get(name).cloned()
    }
}

/// How to sync.
pub struct SyncOptions<'a> {
    /// Keeps git objects and HTTP downloads (with their ETags) between syncs, so an unchanged
    /// upstream is not downloaded again.
    pub cache_dir: Option<PathBuf>,
    /// `--locked`: fetch exactly what this lock records.
    pub locked: Option<&'a LockConfig>,
    /// The lock of the previous sync, for `lazy` contents (vendir.lock.yml as it is on disk).
    pub previous: Option<&'a LockConfig>,
    pub secrets: &'a dyn SecretSource,
    pub limits: Limits,
    /// Contents fetched at the same time.
    pub concurrency: usize,
    /// Token for GitHub API calls when a githubRelease has no secretRef
    /// (vendir's `VENDIR_GITHUB_API_TOKEN`).
    pub github_token: Option<String>,
    /// Registry access for `image`, `imgpkgBundle` and `oci://` `helmChart` sources (mirrors,
    /// CAs, default credentials); a content's `secretRef` adds to its credentials.
    pub registry: Option<&'a Registry>,
    pub policy: Policy,
    /// Addresses upstreams may not be reached at (the controller's opt-in egress policy; the
    /// registry's own is in its options).
    pub egress: crate::registry::Egress,
}

impl<'a> SyncOptions<'a> {
    pub fn new(secrets: &'a dyn SecretSource) -> Self {
        SyncOptions {
            cache_dir: None,
            locked: None,
            previous: None,
            secrets,
            limits: Limits::default(),
            concurrency: 4,
            github_token: None,
            registry: None,
            policy: Policy::default(),
            egress: crate::registry::Egress::default(),
        }
    }
}
