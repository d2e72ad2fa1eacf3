//! The `git` source, in pure Rust (gix): no git binary at run time.
//!
//! vendir runs `git init; git fetch origin` (every ref, full history) and `git checkout`,
//! and leaves `.git` in the vendored directory. Here the remote's refs are listed first
//! (one round trip), the ref is resolved locally, and only that commit is fetched, shallow
//! unless `depth` says otherwise; its tree is written straight from the object database, so
//! no `.git` ends up in the output. With a cache directory the repository persists, and a
//! commit it already holds is not fetched again.

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use gix::bstr::ByteSlice;
use gix::remote::Direction;

use super::fsutil::{safe_join, symlink_target_inside};
use super::{Context, FetchError, Limits, PathFilter, hex, highest_version, redact_url};
use crate::carvel::selection::VersionSelection;
use crate::carvel::vendir::{DirectoryContents, GitSource, LockGit};

/// What to check out.
#[derive(Debug, Clone)]
enum Want {
    Ref(String),
    Selection(VersionSelection),
    Sha(String),
}

#[derive(Clone)]
struct Credentials {
    username: String,
    password: String,
}

pub(crate) async fn fetch(
    ctx: &Context<'_>,
    source: &GitSource,
    locked_sha: Option<String>,
    contents: &DirectoryContents,
    out: &Path,
) -> Result<LockGit, FetchError> {
    let job = Job::new(ctx, source, locked_sha, contents, out)?;
    let interrupt = Arc::new(AtomicBool::new(false));
    // Dropping this future (timeout) stops the blocking fetch at its next check.
    let guard = InterruptOnDrop(interrupt.clone());
    let result = tokio::task::spawn_blocking(move || job.run(&interrupt))
        .await
        .map_err(|e| FetchError::Git(format!("fetch task failed: {e}")))?;
    drop(guard);
    result
}

/// The identity [`fetch`] would record ([`identity`] of its lock), from one ls-remote: nothing
/// is fetched or written.
pub(crate) async fn probe(
    ctx: &Context<'_>,
    source: &GitSource,
    locked_sha: Option<String>,
    contents: &DirectoryContents,
    scratch: &Path,
) -> Result<String, FetchError> {
    let job = Job::new(ctx, source, locked_sha, contents, scratch)?;
    tokio::task::spawn_blocking(move || job.identity())
        .await
        .map_err(|e| FetchError::Git(format!("probe task failed: {e}")))?
}

/// What identifies a git content's upstream for the warm path: the commit, and the tags on
/// it (they are part of the lock).
pub(crate) fn identity(lock: &LockGit) -> String {
    format!("{} {}", lock.sha, lock.tags.join(","))
}

struct InterruptOnDrop(Arc<AtomicBool>);

impl Drop for InterruptOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

struct Job {
    url: String,
    want: Want,
    depth: Option<NonZeroU32>,
    skip_submodules: bool,
    credentials: Option<Credentials>,
    repo_dir: PathBuf,
    out: PathBuf,
    filter: PathFilter,
    limits: Limits,
}

/// One lock per cached repository, so two contents from the same URL do not fetch into it at
/// the same time.
fn repo_lock(path: &Path) -> Arc<Mutex<()>> {
    static LOCKS: OnceLock<Mutex<HashMap<PathBuf, Arc<Mutex<()>>>>> = OnceLock::new();
    let mut locks = LOCKS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    locks.entry(path.to_owned()).or_default().clone()
}

/// A remote ref: its full name and the commit it ultimately points to.
struct RemoteRef {
    name: String,
    commit: gix::ObjectId,
}

impl Job {
    fn new(
        ctx: &Context<'_>,
        source: &GitSource,
        locked_sha: Option<String>,
        contents: &DirectoryContents,
        out: &Path,
    ) -> Result<Job, FetchError> {
        if source.url.is_empty() {
            return Err(FetchError::Invalid("git.url is empty".to_owned()));
        }
        if source.verification.is_some() {
            return Err(FetchError::NotSupported(
                "git commit signature verification".to_owned(),
            ));
        }
        let want = match (locked_sha, &source.ref_selection, source.git_ref.as_str()) {
            (Some(sha), _, _) => Want::Sha(sha),
            (None, _, reference) if !reference.is_empty() => Want::Ref(reference.to_owned()),
            (None, Some(selection), _) => Want::Selection(selection.clone()),
            (None, None, _) => {
                return Err(FetchError::Invalid(
                    "git needs ref (branch, tag or commit) or refSelection".to_owned(),
                ));
            }
        };
        let credentials = match &source.secret_ref {
            None => None,
            Some(secret_ref) => {
                let secret = ctx.secret(&secret_ref.name)?;
                for key in secret.data.keys() {
                    match key.as_str() {
                        "username" | "password" => {}
                        "ssh-privatekey" | "ssh-knownhosts" => {
                            return Err(FetchError::NotSupported(
                                "git over ssh with a private key (use https with \
                                 username/password)"
                                    .to_owned(),
                            ));
                        }
                        other => {
                            return Err(FetchError::Secret {
                                name: secret_ref.name.clone(),
                                problem: format!(
                                    "unknown key {other:?} (expected username, password, \
                                     ssh-privatekey, ssh-knownhosts)"
                                ),
                            });
                        }
                    }
                }
                Some(Credentials {
                    username: secret.get("username").unwrap_or_default(),
                    password: secret.get("password").unwrap_or_default(),
                })
            }
        };
        let scratch = out.parent().unwrap_or(out).to_owned();
        let repo_dir = match ctx.cache("git") {
            Some(cache) => cache.join(
                &hex(&sha2::Digest::finalize(
                    <sha2::Sha256 as sha2::Digest>::new_with_prefix(source.url.as_bytes()),
                ))[..32],
            ),
            None => scratch.join("repo"),
        };
        Ok(Job {
            url: source.url.clone(),
            want,
            depth: u32::try_from(source.depth).ok().and_then(NonZeroU32::new),
            skip_submodules: source.skip_init_submodules,
            credentials,
            repo_dir,
            out: out.to_owned(),
            filter: PathFilter::new(
                &contents.include_paths,
                &contents.exclude_paths,
                &contents.legal_paths_with_defaults(),
            ),
            limits: ctx.options.limits.clone(),
        })
    }

    fn identity(self) -> Result<String, FetchError> {
        let lock = repo_lock(&self.repo_dir);
        let _held = lock.lock().unwrap_or_else(|e| e.into_inner());
        let repo = self.open_repo()?;
        let refs = self.list_remote(&repo)?;
        let (commit, reference) = self.resolve(&refs)?;
        // An abbreviated sha is only expanded by fetching: no identity without that.
        let commit = commit.ok_or(FetchError::UnknownRef {
            reference,
            hint: " (abbreviated)".to_owned(),
        })?;
        Ok(identity(&LockGit {
            sha: commit.to_string(),
            tags: tags_of(&refs, commit),
            commit_title: String::new(),
        }))
    }

    fn err(&self, e: impl std::error::Error) -> FetchError {
        // The top-level gix message is often generic ("handshake failed"); the cause is below.
        let mut text = e.to_string();
        let mut source = e.source();
        while let Some(cause) = source {
            let cause_text = cause.to_string();
            if !text.contains(&cause_text) {
                text.push_str(": ");
                text.push_str(&cause_text);
            }
            source = cause.source();
        }
        // gix messages may quote the URL, which may carry credentials.
        FetchError::Git(text.replace(&self.url, &redact_url(&self.url)))
    }

    fn run(self, interrupt: &AtomicBool) -> Result<LockGit, FetchError> {
        let lock = repo_lock(&self.repo_dir);
        let _held = lock.lock().unwrap_or_else(|e| e.into_inner());
        let repo = self.open_repo()?;
        let refs = self.list_remote(&repo)?;
        let (commit, fetch_spec) = self.resolve(&refs)?;

        let have = commit.is_some_and(|id| repo.find_commit(id).is_ok());
        if !have {
            if interrupt.load(Ordering::Relaxed) {
                return Err(FetchError::Git("interrupted".to_owned()));
            }
            self.fetch(&repo, &fetch_spec, commit.is_none(), interrupt)?;
        } else {
            tracing::info!(url = %redact_url(&self.url), "commit already in the cache, nothing fetched");
        }
        let id = match commit {
            Some(id) => id,
            // An abbreviated sha can only be expanded once the history is here.
            None => self.expand_abbreviated(&repo, &fetch_spec)?,
        };
        let commit = repo
            .find_object(id)
            .map_err(|e| self.err(e))?
            .peel_to_commit()
            .map_err(|e| self.err(e))?;
        let message = commit.message_raw_sloppy().to_str_lossy().into_owned();
        let tree = commit.tree().map_err(|e| self.err(e))?;
        let mut writer = TreeWriter {
            repo: &repo,
            job: &self,
            files: 0,
            bytes: 0,
            links: Vec::new(),
        };
        writer.write(tree, "")?;
        for (path, target) in writer.links {
            std::os::unix::fs::symlink(&target, &path).map_err(FetchError::io(&path))?;
        }
        Ok(LockGit {
            sha: commit.id.to_string(),
            tags: tags_of(&refs, commit.id),
            commit_title: commit_title(&message),
        })
    }

    fn expand_abbreviated(
        &self,
        repo: &gix::Repository,
        abbreviated: &str,
    ) -> Result<gix::ObjectId, FetchError> {
        let unknown = |hint: &str| FetchError::UnknownRef {
            reference: abbreviated.to_owned(),
            hint: hint.to_owned(),
        };
        let prefix = gix::hash::Prefix::from_hex(abbreviated).map_err(|e| self.err(e))?;
        match repo.objects.lookup_prefix(prefix, None) {
            Ok(Some(Ok(id))) => Ok(id),
            Ok(Some(Err(()))) => Err(unknown(" (ambiguous: several objects share this prefix)")),
            Ok(None) => Err(unknown(" (no commit starts with it)")),
            Err(e) => Err(self.err(e)),
        }
    }

    fn open_repo(&self) -> Result<gix::Repository, FetchError> {
        let isolated = || gix::open::Options::isolated();
        if self.repo_dir.join("HEAD").is_file()
            && let Ok(repo) = gix::open_opts(&self.repo_dir, isolated())
        {
            return Ok(repo);
        }
        // Absent or unusable (e.g. a crash mid-init): start over.
        let _ = std::fs::remove_dir_all(&self.repo_dir);
        std::fs::create_dir_all(&self.repo_dir).map_err(FetchError::io(&self.repo_dir))?;
        gix::init_bare(&self.repo_dir).map_err(|e| self.err(e))?;
        gix::open_opts(&self.repo_dir, isolated()).map_err(|e| self.err(e))
    }

    fn credentials(
        &self,
    ) -> impl FnMut(
        gix::credentials::helper::Action,
    ) -> gix::Result<Option<gix::credentials::protocol::Outcome>>
    + 'static {
        let credentials = self.credentials.clone();
        // Never fall back to git's configured helpers: they may prompt or run programs.
        move |action| match (action, &credentials) {
            (gix::credentials::helper::Action::Get(context), Some(c)) => {
                Ok(Some(gix::credentials::protocol::Outcome {
                    identity: gix::sec::identity::Account {
                        username: c.username.clone(),
                        password: c.password.clone(),
                        oauth_refresh_token: None,
                    },
                    next: context.into(),
                }))
            }
            _ => Ok(None),
        }
    }

    /// `git ls-remote` for branches and tags.
    fn list_remote(&self, repo: &gix::Repository) -> Result<Vec<RemoteRef>, FetchError> {
        let remote = repo
            .remote_at(self.url.as_str())
            .map_err(|e| self.err(e))?
            .with_fetch_tags(gix::remote::fetch::Tags::None)
            .with_refspecs(
                [
                    "+refs/heads/*:refs/remotes/origin/*",
                    "+refs/tags/*:refs/tags/*",
                ],
                Direction::Fetch,
            )
            .map_err(|e| self.err(e))?;
        let connection = remote
            .connect(Direction::Fetch)
            .map_err(|e| self.err(e))?
            .with_credentials(self.credentials());
        let (ref_map, _) = connection
            .ref_map(gix::progress::Discard, Default::default())
            .map_err(|e| self.err(e))?;
        use gix::protocol::handshake::Ref;
        Ok(ref_map
            .remote_refs
            .iter()
            .filter_map(|r| match r {
                Ref::Peeled {
                    full_ref_name,
                    object,
                    ..
                }
                | Ref::Direct {
                    full_ref_name,
                    object,
                }
                | Ref::Symbolic {
                    full_ref_name,
                    object,
                    ..
                } => Some(RemoteRef {
                    name: full_ref_name.to_str_lossy().into_owned(),
                    commit: *object,
                }),
                Ref::Unborn { .. } => None,
            })
            .collect())
    }

    /// The commit to check out (`None` for an abbreviated sha) and the refspec source to fetch.
    fn resolve(&self, refs: &[RemoteRef]) -> Result<(Option<gix::ObjectId>, String), FetchError> {
        let by_name: BTreeMap<&str, &RemoteRef> =
            refs.iter().map(|r| (r.name.as_str(), r)).collect();
        let reference = match &self.want {
            Want::Sha(sha) => {
                let id = gix::ObjectId::from_hex(sha.as_bytes())
                    .map_err(|e| FetchError::Locked(format!("git sha {sha:?}: {e}")))?;
                return Ok((Some(id), sha.clone()));
            }
            Want::Selection(selection) => {
                let tags = refs
                    .iter()
                    .filter_map(|r| r.name.strip_prefix("refs/tags/"));
                let tag = highest_version(tags, selection)?;
                format!("refs/tags/{tag}")
            }
            Want::Ref(reference) => reference.clone(),
        };
        let candidates = match reference.strip_prefix("origin/") {
            Some(branch) => vec![format!("refs/heads/{branch}")],
            None if reference.starts_with("refs/") => vec![reference.clone()],
            // `git checkout X` prefers a tag over a branch of the same name.
            None => vec![
                format!("refs/tags/{reference}"),
                format!("refs/heads/{reference}"),
            ],
        };
        if let Some(found) = candidates.iter().find_map(|c| by_name.get(c.as_str())) {
            return Ok((Some(found.commit), found.name.clone()));
        }
        let is_hex = !reference.is_empty() && reference.bytes().all(|b| b.is_ascii_hexdigit());
        if is_hex && reference.len() == 40 {
            let id = gix::ObjectId::from_hex(reference.as_bytes()).map_err(|e| self.err(e))?;
            return Ok((Some(id), reference));
        }
        if is_hex && reference.len() >= 4 {
            return Ok((None, reference));
        }
        let mut names: Vec<&str> = refs
            .iter()
            .filter_map(|r| {
                r.name
                    .strip_prefix("refs/tags/")
                    .or_else(|| r.name.strip_prefix("refs/heads/"))
            })
            .collect();
        names.sort();
        let hint = if names.is_empty() {
            " (the remote has no branches or tags)".to_owned()
        } else {
            let shown: Vec<&str> = names.iter().rev().take(10).copied().collect();
            format!(" (some of its branches and tags: {})", shown.join(", "))
        };
        Err(FetchError::UnknownRef { reference, hint })
    }

    fn fetch(
        &self,
        repo: &gix::Repository,
        source: &str,
        everything: bool,
        interrupt: &AtomicBool,
    ) -> Result<(), FetchError> {
        let specs: Vec<String> = if everything {
            vec![
                "+refs/heads/*:refs/remotes/origin/*".to_owned(),
                "+refs/tags/*:refs/tags/*".to_owned(),
            ]
        } else if source.starts_with("refs/") {
            vec![format!("+{source}:{source}")]
        } else {
            // A bare commit id: servers allow it with uploadpack.allowReachableSHA1InWant (as
            // GitHub does).
            vec![format!("{source}:refs/packsmith/pinned")]
        };
        let remote = repo
            .remote_at(self.url.as_str())
            .map_err(|e| self.err(e))?
            .with_fetch_tags(gix::remote::fetch::Tags::None)
            .with_refspecs(specs.iter().map(String::as_str), Direction::Fetch)
            .map_err(|e| self.err(e))?;
        let shallow = match (everything, self.depth) {
            (true, _) => gix::remote::fetch::Shallow::NoChange,
            (false, Some(depth)) => gix::remote::fetch::Shallow::DepthAtRemote(depth),
            (false, None) => gix::remote::fetch::Shallow::DepthAtRemote(NonZeroU32::MIN),
        };
        remote
            .connect(Direction::Fetch)
            .map_err(|e| self.err(e))?
            .with_credentials(self.credentials())
            .prepare_fetch(gix::progress::Discard, Default::default())
            .map_err(|e| self.err(e))?
            .with_shallow(shallow)
            .receive(gix::progress::Discard, interrupt)
            .map_err(|e| self.err(e))?;
        Ok(())
    }
}

/// The tags of the remote that point at `commit`, sorted.
fn tags_of(refs: &[RemoteRef], commit: gix::ObjectId) -> Vec<String> {
    let mut tags: Vec<String> = refs
        .iter()
        .filter(|r| r.commit == commit)
        .filter_map(|r| r.name.strip_prefix("refs/tags/").map(str::to_owned))
        .collect();
    tags.sort();
    tags.dedup();
    tags
}

/// vendir's commit title: the trimmed message's first line, `...` appended when more follows.
fn commit_title(message: &str) -> String {
    let message = message.trim();
    match message.split_once('\n') {
        Some((first, _)) => format!("{first}..."),
        None => message.to_owned(),
    }
}

struct TreeWriter<'a> {
    repo: &'a gix::Repository,
    job: &'a Job,
    files: u64,
    bytes: u64,
    links: Vec<(PathBuf, PathBuf)>,
}

impl TreeWriter<'_> {
    fn write(&mut self, tree: gix::Tree<'_>, prefix: &str) -> Result<(), FetchError> {
        use gix::objs::tree::EntryKind;
        let entries: Vec<_> = tree
            .iter()
            .map(|e| e.map(|e| (e.mode().kind(), e.filename().to_owned(), e.object_id())))
            .collect::<Result<_, _>>()
            .map_err(|e| self.job.err(e))?;
        for (kind, name, id) in entries {
            let name = name.to_str_lossy();
            let rel = if prefix.is_empty() {
                name.into_owned()
            } else {
                format!("{prefix}/{name}")
            };
            match kind {
                EntryKind::Tree => {
                    let subtree = self
                        .repo
                        .find_object(id)
                        .map_err(|e| self.job.err(e))?
                        .into_tree();
                    self.write(subtree, &rel)?;
                }
                EntryKind::Commit => {
                    if !self.job.skip_submodules {
                        return Err(FetchError::NotSupported(format!(
                            "git submodules ({rel:?}); set skipInitSubmodules: true to sync \
                             without them"
                        )));
                    }
                }
                EntryKind::Blob | EntryKind::BlobExecutable | EntryKind::Link => {
                    // Files the filter drops are never written (the filter runs again later,
                    // for all sources alike, and then finds nothing to remove).
                    if !self.job.filter.keeps(&rel) {
                        continue;
                    }
                    self.files += 1;
                    if self.files > self.job.limits.max_files {
                        return Err(FetchError::Invalid(format!(
                            "more than {} files",
                            self.job.limits.max_files
                        )));
                    }
                    let path = safe_join(&self.job.out, &rel)
                        .map_err(|e| FetchError::Invalid(format!("tree entry: {e}")))?;
                    let blob = self.repo.find_object(id).map_err(|e| self.job.err(e))?;
                    self.bytes += blob.data.len() as u64;
                    if self.bytes > self.job.limits.max_bytes {
                        return Err(FetchError::TooLarge {
                            limit: self.job.limits.max_bytes,
                        });
                    }
                    if let Some(parent) = path.parent() {
                        std::fs::create_dir_all(parent).map_err(FetchError::io(parent))?;
                    }
                    if kind == EntryKind::Link {
                        let target = PathBuf::from(blob.data.to_str_lossy().into_owned());
                        if !symlink_target_inside(&self.job.out, &path, &target) {
                            return Err(FetchError::Invalid(format!(
                                "symlink {rel:?} points outside the repository ({})",
                                target.display()
                            )));
                        }
                        // Created after every file, so no file is written through a link.
                        self.links.push((path, target));
                    } else {
                        write_file(&path, &blob.data, kind == EntryKind::BlobExecutable)?;
                    }
                }
            }
        }
        Ok(())
    }
}

fn write_file(path: &Path, data: &[u8], executable: bool) -> Result<(), FetchError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if executable { 0o755 } else { 0o644 })
        .open(path)
        .map_err(FetchError::io(path))?;
    file.write_all(data).map_err(FetchError::io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_titles_match_vendir() {
        assert_eq!(commit_title("Fix it\n"), "Fix it");
        assert_eq!(commit_title("Fix it\n\nbecause"), "Fix it...");
        assert_eq!(commit_title("  \nTitle\nbody"), "Title...");
    }
}
