//! The sync stage: a vendir `Config` becomes directories of upstream contents plus the
//! `LockConfig` recording exactly what was fetched (vendir's `vendir sync`).
//!
//! Every content is fetched concurrently into its own scratch directory under one work
//! directory next to the targets (`.packsmith-sync-*`, the same file system, so moves are
//! renames). Only when *every* content of *every* directory succeeded are the directories
//! swapped in, each with two renames, rolled back if a later swap fails. A failed sync
//! therefore leaves every target as it was.

mod archive;
mod cache;
mod content;
mod error;
mod filter;
mod fsutil;
mod git;
mod git_ssh;
mod git_verify;
mod github;
mod helm;
mod http;
mod image;
mod inline;
mod keyring;
mod options;
mod swap;
mod verify;
mod warm;

use std::path::{Path, PathBuf};

use futures::StreamExt;

use crate::carvel::selection::VersionSelection;
use crate::carvel::vendir::{Config, Directory, LockConfig, LockDirectory, LockDirectoryContents};

use content::{Fetched, probe_contents, sync_contents};
use error::io_error;
use swap::{Work, chmod, make_dir, swap_all};

pub use archive::ArchiveError;
pub use cache::{Evicted, evict, user_default as default_cache_dir};
pub use error::{FetchError, SyncError};
pub use filter::{FilterError, Glob, PathFilter};
pub(crate) use image::is_bundle;
pub use options::{Limits, MemorySecrets, Policy, Secret, SecretSource, SyncOptions};

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
    // Shared with other runs' syncs; an eviction waits for none of them (see `cache.rs`).
    let _in_use = match &options.cache_dir {
        Some(dir) => {
            let dir = dir.clone();
            let locked = tokio::task::spawn_blocking(move || cache::in_use(&dir))
                .await
                .map_err(|e| std::io::Error::other(e.to_string()))
                .and_then(|r| r);
            Some(locked.map_err(io_error(
                "locking the cache",
                options.cache_dir.as_deref().unwrap_or(root),
            ))?)
        }
        None => None,
    };
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

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
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
