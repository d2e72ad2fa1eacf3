//! The sync stage: a vendir `Config` becomes directories of upstream contents plus the
//! `LockConfig` recording exactly what was fetched (vendir's `vendir sync`).
//!
//! Every content is fetched concurrently into its own scratch directory under one work
//! directory next to the targets (`.packsmith-sync-*`, the same file system, so moves are
//! renames). Only when *every* content of *every* directory succeeded are the directories
//! swapped in, each with two renames, rolled back if a later swap fails. A failed sync
//! therefore leaves every target as it was.

mod archive;
mod filter;
mod fsutil;
mod git;
mod git_ssh;
mod github;
mod helm;
mod http;
mod image;
mod warm;

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;

use crate::carvel::selection::VersionSelection;
use crate::carvel::vendir::{
    Config, Directory, DirectoryContents, LockConfig, LockDirectory, LockDirectoryContents,
    LockEmpty, Source,
};
use crate::registry::Registry;

pub use archive::ArchiveError;
pub use filter::{FilterError, Glob, PathFilter};

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
    fn get(&self, key: &str) -> Option<String> {
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

/// A sync failure; the targets are untouched.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("invalid vendir config: {0}")]
    Config(#[from] crate::carvel::Error),
    #[error("directory {directory:?}, contents {contents:?}: {kind} {upstream}: {cause}")]
    Contents {
        directory: String,
        contents: String,
        /// The source type (`git`, `http`, …).
        kind: &'static str,
        /// The upstream, credentials stripped.
        upstream: String,
        #[source]
        cause: Box<FetchError>,
    },
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Why fetching one content failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{0} is not supported yet")]
    NotSupported(String),
    /// The controller's egress policy refused the upstream's address.
    #[error(transparent)]
    Denied(#[from] crate::registry::EgressDenied),
    #[error("{0}")]
    Invalid(String),
    #[error("HTTP {status} from {url}")]
    Status { status: u16, url: String },
    #[error("HTTP {status} from {url}: authentication failed; check the credentials in secretRef")]
    Unauthorized { status: u16, url: String },
    #[error("request to {url} failed: {cause}")]
    Request { url: String, cause: String },
    #[error("checksum mismatch for {what}: expected sha256:{expected}, got sha256:{actual}")]
    Checksum {
        what: String,
        expected: String,
        actual: String,
    },
    #[error("download exceeds the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error(transparent)]
    Filter(#[from] FilterError),
    #[error("git: {0}")]
    Git(String),
    #[error("ref {reference:?} not found on the remote{hint}")]
    UnknownRef { reference: String, hint: String },
    #[error("no version among {candidates} candidates matches {constraints:?}")]
    NoMatchingVersion {
        constraints: String,
        candidates: usize,
    },
    #[error("secret {name:?}: {problem}")]
    Secret { name: String, problem: String },
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("--locked: {0}")]
    Locked(String),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl FetchError {
    pub(crate) fn io(path: &Path) -> impl FnOnce(io::Error) -> FetchError + '_ {
        move |source| FetchError::Io {
            path: path.to_owned(),
            source,
        }
    }
}

/// Removes credentials from a URL for messages: userinfo and query values.
pub fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut parsed) => {
            if !parsed.username().is_empty() || parsed.password().is_some() {
                let _ = parsed.set_username("redacted");
                let _ = parsed.set_password(None);
            }
            if parsed.query().is_some() {
                parsed.set_query(Some("redacted"));
            }
            parsed.to_string()
        }
        // Not a URL (e.g. scp-like git remotes `git@host:repo`): drop anything before '@'.
        Err(_) => match url.rsplit_once('@') {
            Some((_, rest)) => format!("redacted@{rest}"),
            None => url.to_owned(),
        },
    }
}

/// The highest version among `candidates` selected by `selection`, as vendir's
/// `HighestConstrainedVersion` (tags may carry a leading `v`): the one rule of
/// [`VersionSelection::highest`].
pub fn highest_version<'t>(
    candidates: impl IntoIterator<Item = &'t str>,
    selection: &VersionSelection,
) -> Result<String, FetchError> {
    use crate::carvel::selection::SelectionError;
    selection
        .highest(candidates)
        .map(str::to_owned)
        .map_err(|e| match e {
            SelectionError::NoMatch {
                constraints,
                candidates,
            } => FetchError::NoMatchingVersion {
                constraints,
                candidates,
            },
            other => FetchError::Invalid(other.to_string()),
        })
}

/// Shared by the fetchers of one sync.
pub(crate) struct Context<'a> {
    pub root: &'a Path,
    pub options: &'a SyncOptions<'a>,
    pub http: http::Client,
}

impl Context<'_> {
    pub(crate) fn secret(&self, name: &str) -> Result<Secret, FetchError> {
        self.options
            .secrets
            .secret(name)
            .ok_or_else(|| FetchError::Secret {
                name: name.to_owned(),
                problem: "not found".to_owned(),
            })
    }

    pub(crate) fn cache(&self, kind: &str) -> Option<PathBuf> {
        self.options.cache_dir.as_ref().map(|c| c.join(kind))
    }
}

/// Syncs every directory of `config` under `root` and returns the lock describing them.
pub async fn sync(
    config: &Config,
    root: &Path,
    options: &SyncOptions<'_>,
) -> Result<LockConfig, SyncError> {
    config.validate()?;
    let work = Work::create(root)?;
    let result = sync_in(config, root, options, &work.path).await;
    // The work dir holds only scratch (or, after a swap, the replaced trees).
    drop(work);
    result
}

async fn sync_in(
    config: &Config,
    root: &Path,
    options: &SyncOptions<'_>,
    work: &Path,
) -> Result<LockConfig, SyncError> {
    let http = http::Client::new(&options.limits, &options.egress).map_err(|cause| {
        SyncError::Contents {
            directory: String::new(),
            contents: String::new(),
            kind: "http",
            upstream: String::new(),
            cause: Box::new(cause),
        }
    })?;
    let ctx = Context {
        root,
        options,
        http,
    };
    let ctx = &ctx;

    // Warm path: directories whose upstreams and files are as the last sync left them.
    let warm = warm_directories(ctx, config, work).await;

    let jobs: Vec<(usize, usize)> = config
        .directories
        .iter()
        .enumerate()
        .filter(|(d, _)| warm[*d].is_none())
        .flat_map(|(d, dir)| (0..dir.contents.len()).map(move |c| (d, c)))
        .collect();
    // All contents run to completion, even after a failure: a cancelled blocking fetch would
    // keep writing into the work dir while it is being removed.
    let mut results: Vec<((usize, usize), Result<Fetched, SyncError>)> =
        futures::stream::iter(jobs)
            .map(|(d, c)| async move {
                let directory = &config.directories[d];
                let scratch = work.join(format!("{d}-{c}"));
                let result = sync_contents(ctx, directory, &directory.contents[c], &scratch).await;
                ((d, c), result)
            })
            .buffer_unordered(options.concurrency.max(1))
            .collect()
            .await;
    results.sort_by_key(|(key, _)| *key);

    let mut fetched: Vec<Vec<Fetched>> = config.directories.iter().map(|_| Vec::new()).collect();
    let mut first_error = None;
    for ((d, _), result) in results {
        match result {
            Ok(f) => fetched[d].push(f),
            Err(error) => {
                tracing::warn!(%error, "sync failed");
                first_error.get_or_insert(error);
            }
        }
    }
    if let Some(error) = first_error {
        return Err(error);
    }

    // Assemble each directory from its contents, then swap them all in.
    let mut staged = Vec::new();
    for (d, directory) in config.directories.iter().enumerate() {
        if warm[d].is_some() {
            continue;
        }
        let dir_stage = work.join(format!("{d}-staged"));
        make_dir(&dir_stage)?;
        for (c, contents) in directory.contents.iter().enumerate() {
            let fetched = work.join(format!("{d}-{c}")).join("out");
            let target = if contents.path == crate::carvel::vendir::ENTIRE_DIR_PATH {
                dir_stage.clone()
            } else {
                dir_stage.join(&contents.path)
            };
            fsutil::replace(&fetched, &target).map_err(io_error("staging", &target))?;
        }
        if let Some(mode) = directory.permissions {
            chmod(&dir_stage, mode)?;
        }
        staged.push((
            dir_stage,
            root.join(&directory.path),
            work.join(format!("{d}-old")),
        ));
    }
    swap_all(&staged)?;

    let mut locks = Vec::new();
    for ((directory, warm), fetched) in config.directories.iter().zip(warm).zip(fetched) {
        let contents = match warm {
            Some(locks) => locks,
            None => {
                record(options, root, directory, &fetched);
                fetched.into_iter().map(|f| f.lock).collect()
            }
        };
        locks.push(LockDirectory {
            path: directory.path.clone(),
            contents,
        });
    }
    Ok(LockConfig::new(locks))
}

/// For each directory, the recorded locks when it can be left as it is.
async fn warm_directories(
    ctx: &Context<'_>,
    config: &Config,
    work: &Path,
) -> Vec<Option<Vec<LockDirectoryContents>>> {
    let Some(cache) = &ctx.options.cache_dir else {
        return config.directories.iter().map(|_| None).collect();
    };
    let checks = config.directories.iter().enumerate().map(|(d, directory)| {
        let state_path = warm::state_path(cache, ctx.root, &directory.path);
        async move {
            let target = ctx.root.join(&directory.path);
            let state = warm::load(&state_path).filter(|s| s.matches(directory, &target))?;
            let probes = directory.contents.iter().enumerate().map(|(c, contents)| {
                let scratch = work.join(format!("{d}-{c}-probe"));
                async move {
                    let timeout = ctx.options.limits.source_timeout;
                    let probe = probe_contents(ctx, directory, contents, &scratch);
                    match tokio::time::timeout(timeout, probe).await {
                        Ok(Ok(identity)) => identity,
                        Ok(Err(error)) => {
                            // The full sync meets (and reports) the same problem.
                            tracing::debug!(%error, directory = %directory.path, contents = %contents.path, "probe failed");
                            None
                        }
                        Err(_) => None,
                    }
                }
            });
            let identities = futures::future::join_all(probes).await;
            let unchanged = identities
                .iter()
                .zip(&state.contents)
                .all(|(now, then)| now.as_deref() == Some(then.identity.as_str()));
            if !unchanged {
                return None;
            }
            tracing::info!(directory = %directory.path, "upstream and files unchanged, directory left as it is");
            Some(state.contents.into_iter().map(|c| c.lock).collect())
        }
    });
    futures::future::join_all(checks).await
}

/// Records what was written to `directory`, for the next sync's warm path; forgets any older
/// record when a content cannot say what it fetched.
fn record(options: &SyncOptions<'_>, root: &Path, directory: &Directory, fetched: &[Fetched]) {
    let Some(cache) = &options.cache_dir else {
        return;
    };
    let path = warm::state_path(cache, root, &directory.path);
    let contents: Option<Vec<warm::ContentState>> = fetched
        .iter()
        .map(|f| {
            Some(warm::ContentState {
                identity: f.identity.clone()?,
                lock: f.lock.clone(),
            })
        })
        .collect();
    match contents
        .map(|c| warm::State::new(directory, c, &root.join(&directory.path)))
        .transpose()
    {
        Ok(Some(state)) => warm::store(&path, &state),
        Ok(None) => warm::forget(&path),
        Err(error) => {
            tracing::debug!(%error, "could not snapshot the synced directory");
            warm::forget(&path);
        }
    }
}

/// Moves every staged directory into place; on failure, puts back what was already moved.
fn swap_all(staged: &[(PathBuf, PathBuf, PathBuf)]) -> Result<(), SyncError> {
    let mut done: Vec<(&Path, &Path, bool)> = Vec::new();
    for (stage, target, old) in staged {
        let had_old = target.symlink_metadata().is_ok();
        let swap = || -> io::Result<()> {
            if had_old {
                std::fs::rename(target, old)?;
            } else if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)?;
            }
            if let Err(e) = std::fs::rename(stage, target) {
                if had_old {
                    let _ = std::fs::rename(old, target);
                }
                return Err(e);
            }
            Ok(())
        };
        if let Err(source) = swap() {
            for (target, old, had_old) in done.into_iter().rev() {
                let _ = fsutil::remove_any(target);
                if had_old {
                    let _ = std::fs::rename(old, target);
                }
            }
            return Err(SyncError::Io {
                what: "replacing",
                path: target.clone(),
                source,
            });
        }
        done.push((target, old, had_old));
    }
    Ok(())
}

/// The scratch area of one sync, removed when dropped.
struct Work {
    path: PathBuf,
}

impl Work {
    fn create(root: &Path) -> Result<Work, SyncError> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = root.join(format!(".packsmith-sync-{}-{nanos:x}", std::process::id()));
        make_dir(&path)?;
        Ok(Work { path })
    }
}

impl Drop for Work {
    fn drop(&mut self) {
        if let Err(error) = std::fs::remove_dir_all(&self.path) {
            tracing::warn!(path = %self.path.display(), %error, "could not remove the sync work directory");
        }
    }
}

fn make_dir(path: &Path) -> Result<(), SyncError> {
    std::fs::create_dir_all(path).map_err(io_error("creating", path))
}

fn chmod(path: &Path, mode: u32) -> Result<(), SyncError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(io_error("chmod", path))
}

fn io_error<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> SyncError + 'a {
    move |source| SyncError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// What a content's source is, for messages: its type and upstream without credentials.
fn describe(contents: &DirectoryContents) -> (&'static str, String) {
    let Ok(source) = contents.source() else {
        return ("unknown", String::new());
    };
    let upstream = match source {
        Source::Git(git) => {
            let reference = if git.git_ref.is_empty() {
                "ref=semver"
            } else {
                &git.git_ref
            };
            format!("{}@{reference}", redact_url(&git.url))
        }
        Source::Http(h) => redact_url(&h.url),
        Source::GithubRelease(g) => g.slug.clone(),
        Source::HelmChart(h) => {
            let repo = h.repository.as_ref().map(|r| redact_url(&r.url));
            format!("{}@{}", repo.unwrap_or_default(), h.name)
        }
        Source::Image(i) => i.url.clone(),
        Source::ImgpkgBundle(b) => b.image.clone(),
        Source::Directory(d) => d.path.clone(),
        Source::Hg(h) => redact_url(&h.url),
        Source::Inline(_) | Source::Manual(_) => String::new(),
    };
    (source.kind(), upstream)
}

/// The config digest vendir records for `lazy` contents: sha256 of the contents' YAML.
fn config_digest(contents: &DirectoryContents) -> String {
    use sha2::Digest;
    let yaml = crate::carvel::yaml::to_go_yaml("vendir contents", contents).unwrap_or_default();
    hex(&sha2::Sha256::digest(yaml.as_bytes()))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// One content's result: its lock entry and, when the source can tell, the upstream's
/// identity (what the warm path compares; see [`warm`]).
struct Fetched {
    lock: LockDirectoryContents,
    identity: Option<String>,
}

async fn sync_contents(
    ctx: &Context<'_>,
    directory: &Directory,
    contents: &DirectoryContents,
    scratch: &Path,
) -> Result<Fetched, SyncError> {
    let (kind, upstream) = describe(contents);
    let fail = |cause| SyncError::Contents {
        directory: directory.path.clone(),
        contents: contents.path.clone(),
        kind,
        upstream: upstream.clone(),
        cause: Box::new(cause),
    };
    let timeout = ctx.options.limits.source_timeout;
    match tokio::time::timeout(timeout, fetch_contents(ctx, directory, contents, scratch)).await {
        Ok(result) => result.map_err(fail),
        Err(_) => Err(fail(FetchError::Timeout(timeout))),
    }
}

/// The lock entry `--locked` pins this content to.
fn locked_entry<'a>(
    ctx: &Context<'a>,
    directory: &Directory,
    contents: &DirectoryContents,
) -> Result<Option<&'a LockDirectoryContents>, FetchError> {
    let Some(lock_config) = ctx.options.locked else {
        return Ok(None);
    };
    lock_config
        .find_contents(&directory.path, &contents.path)
        .map(Some)
        .ok_or_else(|| {
            FetchError::Locked(format!(
                "vendir.lock.yml has no entry for directory {:?}, contents {:?}",
                directory.path, contents.path
            ))
        })
}

fn lazy_identity(digest: &str) -> String {
    format!("lazy:{digest}")
}

/// Whether a `lazy` content is kept as it is: same config as last time, already on disk.
fn lazy_unchanged<'a>(
    ctx: &Context<'a>,
    directory: &Directory,
    contents: &DirectoryContents,
    digest: &str,
    existing: &Path,
) -> Option<&'a LockDirectoryContents> {
    if !contents.lazy || ctx.options.locked.is_some() || !existing.is_dir() {
        return None;
    }
    ctx.options
        .previous
        .and_then(|l| l.find_contents(&directory.path, &contents.path))
        .filter(|p| p.config_digest == digest)
}

async fn fetch_contents(
    ctx: &Context<'_>,
    directory: &Directory,
    contents: &DirectoryContents,
    scratch: &Path,
) -> Result<Fetched, FetchError> {
    let out = scratch.join("out");
    std::fs::create_dir_all(&out).map_err(FetchError::io(&out))?;
    let existing = ctx.root.join(&directory.path).join(&contents.path);
    let mut lock = LockDirectoryContents {
        path: contents.path.clone(),
        ..Default::default()
    };
    let digest = config_digest(contents);
    if contents.lazy {
        lock.config_digest = digest.clone();
        if let Some(previous) = lazy_unchanged(ctx, directory, contents, &digest, &existing) {
            tracing::info!(directory = %directory.path, contents = %contents.path, "skipping fetch: lazy and unchanged");
            fsutil::copy_tree(&existing, &out).map_err(FetchError::io(&existing))?;
            return Ok(Fetched {
                lock: previous.clone(),
                identity: Some(lazy_identity(&digest)),
            });
        }
    }
    let locked = locked_entry(ctx, directory, contents)?;
    let not_kind = |kind: &str| FetchError::Locked(format!("the lock entry is not a {kind} entry"));
    let mut filtered = true;
    let mut identity = None;
    let source = contents
        .source()
        .map_err(|e| FetchError::Invalid(e.to_string()))?;
    match source {
        Source::Git(source) => {
            let locked_sha = locked
                .map(|l| {
                    l.git
                        .as_ref()
                        .map(|g| g.sha.clone())
                        .ok_or_else(|| not_kind("git"))
                })
                .transpose()?;
            let git = git::fetch(ctx, source, locked_sha, contents, &out).await?;
            identity = Some(git::identity(&git));
            lock.git = Some(git);
        }
        Source::Http(source) => {
            identity = Some(http::fetch(ctx, source, &out, scratch).await?);
            lock.http = Some(LockEmpty {});
        }
        Source::GithubRelease(source) => {
            let locked_url = locked.and_then(|l| l.github_release.as_ref().map(|g| g.url.clone()));
            let (release, release_identity) =
                github::fetch(ctx, source, locked_url, &out, scratch).await?;
            identity = release_identity;
            lock.github_release = Some(release);
        }
        Source::HelmChart(source) => {
            let locked_version = locked
                .map(|l| {
                    l.helm_chart
                        .as_ref()
                        .map(|h| h.version.clone())
                        .ok_or_else(|| not_kind("helmChart"))
                })
                .transpose()?;
            let fetched = helm::fetch(ctx, source, locked_version, &out, scratch).await?;
            identity = Some(fetched.identity);
            lock.helm_chart = Some(fetched.lock);
        }
        Source::Image(source) => {
            let locked = locked
                .map(|l| l.image.as_ref().ok_or_else(|| not_kind("image")))
                .transpose()?;
            let (image, digest) = image::fetch_image(ctx, source, locked, &out, scratch).await?;
            identity = Some(digest);
            lock.image = Some(image);
        }
        Source::ImgpkgBundle(source) => {
            let locked = locked
                .map(|l| {
                    l.imgpkg_bundle
                        .as_ref()
                        .ok_or_else(|| not_kind("imgpkgBundle"))
                })
                .transpose()?;
            let (bundle, digest) = image::fetch_bundle(ctx, source, locked, &out).await?;
            identity = Some(digest);
            lock.imgpkg_bundle = Some(bundle);
        }
        Source::Inline(source) => {
            let files = inline_files(ctx, source)?;
            write_inline(&files, &out)?;
            identity = Some(inline_identity(&files));
            lock.inline = Some(LockEmpty {});
        }
        Source::Directory(source) => {
            let from = ctx.root.join(&source.path);
            if !from.is_dir() {
                return Err(FetchError::Invalid(format!(
                    "directory {:?} does not exist",
                    source.path
                )));
            }
            fsutil::copy_tree(&from, &out).map_err(FetchError::io(&from))?;
            lock.directory = Some(LockEmpty {});
        }
        Source::Manual(_) => {
            // Hand-managed: keep what is there, untouched by filters (as vendir does).
            if existing.is_dir() {
                fsutil::copy_tree(&existing, &out).map_err(FetchError::io(&existing))?;
            }
            lock.manual = Some(LockEmpty {});
            identity = Some("manual".to_owned());
            filtered = false;
        }
        Source::Hg(_) => {
            return Err(FetchError::NotSupported("the hg source".to_owned()));
        }
    }
    if contents.lazy {
        identity = Some(lazy_identity(&digest));
    }

    let contents = contents.clone();
    let limits = ctx.options.limits.clone();
    let scratch = scratch.to_owned();
    tokio::task::spawn_blocking(move || {
        post_process(&contents, &out, &existing, &scratch, filtered, &limits)
    })
    .await
    .map_err(|e| FetchError::Invalid(format!("post-processing task failed: {e}")))??;
    Ok(Fetched { lock, identity })
}

/// The identity [`fetch_contents`] would record, found without fetching; `None` when the
/// source cannot tell (then the directory is synced in full).
async fn probe_contents(
    ctx: &Context<'_>,
    directory: &Directory,
    contents: &DirectoryContents,
    scratch: &Path,
) -> Result<Option<String>, FetchError> {
    let existing = ctx.root.join(&directory.path).join(&contents.path);
    if contents.lazy {
        let digest = config_digest(contents);
        return Ok(lazy_unchanged(ctx, directory, contents, &digest, &existing)
            .map(|_| lazy_identity(&digest)));
    }
    let locked = locked_entry(ctx, directory, contents)?;
    let pair = |url: Option<&String>, tag: Option<&String>| {
        url.map(|u| (u.clone(), tag.cloned().unwrap_or_default()))
    };
    let source = contents
        .source()
        .map_err(|e| FetchError::Invalid(e.to_string()))?;
    match source {
        Source::Git(source) => {
            let locked_sha = locked.and_then(|l| l.git.as_ref().map(|g| g.sha.clone()));
            git::probe(ctx, source, locked_sha, contents, scratch)
                .await
                .map(Some)
        }
        Source::Http(source) => http::probe(ctx, source).await,
        Source::GithubRelease(source) => {
            let locked_url = locked.and_then(|l| l.github_release.as_ref().map(|g| g.url.clone()));
            github::probe(ctx, source, locked_url).await
        }
        Source::HelmChart(source) => {
            let locked_version =
                locked.and_then(|l| l.helm_chart.as_ref().map(|h| h.version.clone()));
            std::fs::create_dir_all(scratch).map_err(FetchError::io(scratch))?;
            helm::probe(ctx, source, locked_version, scratch)
                .await
                .map(Some)
        }
        Source::Image(source) => {
            let locked = locked.and_then(|l| l.image.as_ref());
            let locked = pair(locked.map(|l| &l.url), locked.map(|l| &l.tag));
            image::probe(
                ctx,
                &source.url,
                source.tag_selection.as_ref(),
                source.secret_ref.as_ref(),
                locked,
            )
            .await
            .map(Some)
        }
        Source::ImgpkgBundle(source) => {
            let locked = locked.and_then(|l| l.imgpkg_bundle.as_ref());
            let locked = pair(locked.map(|l| &l.image), locked.map(|l| &l.tag));
            image::probe(
                ctx,
                &source.image,
                source.tag_selection.as_ref(),
                source.secret_ref.as_ref(),
                locked,
            )
            .await
            .map(Some)
        }
        Source::Inline(source) => Ok(Some(inline_identity(&inline_files(ctx, source)?))),
        Source::Manual(_) => Ok(Some("manual".to_owned())),
        // Local directories: their files are not watched. hg: refused by the fetch.
        Source::Directory(_) | Source::Hg(_) => Ok(None),
    }
}

/// Filters, new root, ignored files, limits and permissions, on the fetched tree `out`.
fn post_process(
    contents: &DirectoryContents,
    out: &Path,
    existing: &Path,
    scratch: &Path,
    filtered: bool,
    limits: &Limits,
) -> Result<(), FetchError> {
    if filtered {
        PathFilter::new(
            &contents.include_paths,
            &contents.exclude_paths,
            &contents.legal_paths_with_defaults(),
        )
        .map_err(FilterError::from)?
        .apply(out)?;
        if !contents.new_root_path.is_empty() {
            filter::apply_new_root(out, &contents.new_root_path, &scratch.join("new-root"))?;
        }
        fsutil::validate_symlinks(out).map_err(|e| FetchError::Invalid(e.to_string()))?;
    }
    filter::copy_ignored(existing, out, &contents.ignore_paths)?;
    let (files, bytes) = fsutil::tree_size(out).map_err(FetchError::io(out))?;
    if files > limits.max_files {
        return Err(FetchError::Invalid(format!(
            "{files} files exceed the limit of {}",
            limits.max_files
        )));
    }
    if bytes > limits.max_bytes {
        return Err(FetchError::TooLarge {
            limit: limits.max_bytes,
        });
    }
    if let Some(mode) = contents.permissions {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(out, std::fs::Permissions::from_mode(mode))
            .map_err(FetchError::io(out))?;
    }
    Ok(())
}

/// `inline`'s files: `paths` verbatim, `pathsFrom` every key of a Secret or ConfigMap.
fn inline_files(
    ctx: &Context<'_>,
    source: &crate::carvel::vendir::InlineSource,
) -> Result<Vec<(String, Vec<u8>)>, FetchError> {
    let mut files: Vec<(String, Vec<u8>)> = source
        .paths
        .iter()
        .map(|(rel, content)| (rel.clone(), content.as_bytes().to_vec()))
        .collect();
    let prefix = |dir: &str, key: &str| {
        if dir.is_empty() {
            key.to_owned()
        } else {
            format!("{dir}/{key}")
        }
    };
    for from in &source.paths_from {
        if let Some(secret_ref) = &from.secret_ref {
            let secret = ctx.secret(&secret_ref.name)?;
            for (key, value) in secret.data {
                files.push((prefix(&secret_ref.directory_path, &key), value));
            }
        } else if let Some(map_ref) = &from.config_map_ref {
            let map = ctx
                .options
                .secrets
                .config_map(&map_ref.name)
                .ok_or_else(|| {
                    FetchError::Invalid(format!("configMap {:?} not found", map_ref.name))
                })?;
            for (key, value) in map {
                files.push((prefix(&map_ref.directory_path, &key), value.into_bytes()));
            }
        } else {
            return Err(FetchError::Invalid(
                "pathsFrom entry needs secretRef or configMapRef".to_owned(),
            ));
        }
    }
    Ok(files)
}

fn write_inline(files: &[(String, Vec<u8>)], out: &Path) -> Result<(), FetchError> {
    for (rel, data) in files {
        let path = fsutil::safe_join(out, rel)
            .map_err(|e| FetchError::Invalid(format!("inline path {rel:?}: {e}")))?;
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(FetchError::io(parent))?;
        }
        std::fs::write(&path, data).map_err(FetchError::io(&path))?;
    }
    Ok(())
}

/// A digest of inline files, names and contents (length-prefixed, so no two lists collide).
fn inline_identity(files: &[(String, Vec<u8>)]) -> String {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    for (name, data) in files {
        hasher.update((name.len() as u64).to_le_bytes());
        hasher.update(name.as_bytes());
        hasher.update((data.len() as u64).to_le_bytes());
        hasher.update(data);
    }
    format!("inline:{}", hex(&hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::carvel::selection::test_selection as selection;

    #[test]
    fn highest_version_follows_vendir() {
        let tags = [
            "v1.0.0",
            "1.2.0",
            "v1.3.0-rc.1",
            "v2.0.0",
            "latest",
            "v1.2.9",
        ];
        assert_eq!(
            highest_version(tags, &selection("<2.0.0", None)).expect("pick"),
            "v1.2.9"
        );
        assert_eq!(
            highest_version(tags, &selection(">1.2.9 <2.0.0", Some(&[]))).expect("pick"),
            "v1.3.0-rc.1"
        );
        assert!(highest_version(tags, &selection(">1.2.9 <2.0.0", Some(&["beta"]))).is_err());
        let err = highest_version(tags, &selection(">3.0.0", None)).expect_err("none");
        assert!(err.to_string().contains("6 candidates"), "{err}");
    }

    #[test]
    fn urls_lose_credentials() {
        assert_eq!(
            redact_url("https://user:pw@example.com/a.tgz?token=abc"),
            "https://redacted@example.com/a.tgz?redacted"
        );
        assert_eq!(
            redact_url("git@github.com:o/r.git"),
            "redacted@github.com:o/r.git"
        );
        assert_eq!(redact_url("https://example.com/x"), "https://example.com/x");
    }

    #[test]
    fn secrets_do_not_print_their_values() {
        let secret = Secret {
            data: [("password".to_owned(), b"hunter2".to_vec())].into(),
        };
        let shown = format!("{secret:?}");
        assert!(
            shown.contains("password") && !shown.contains("hunter2"),
            "{shown}"
        );
    }
}
