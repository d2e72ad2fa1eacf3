//! The `git` source, in pure Rust (gix): no git binary at run time.
//!
//! vendir runs `git init; git fetch origin` (every ref, full history) and `git checkout`,
//! and leaves `.git` in the vendored directory. Here the remote's refs are listed first
//! (one round trip), the ref is resolved locally, and only that commit is fetched, shallow
//! unless `depth` says otherwise; its tree is written straight from the object database, so
//! no `.git` ends up in the output. With a cache directory the repository persists, and a
//! commit it already holds is not fetched again.
//!
//! ssh URLs go through [`super::git_ssh`] (russh: no ssh binary either). Submodules are
//! fetched like their parent, shallow at the recorded commit, and written at their path
//! (vendir runs `git submodule update --init --recursive`).

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use gix::bstr::ByteSlice;
use gix::remote::Direction;

use super::fsutil::{safe_join, symlink_target_inside};
use super::git_ssh::{self, SshAuth};
use super::{
    Context, FetchError, FilterError, Limits, PathFilter, hex, highest_version, redact_url,
};
use crate::carvel::selection::VersionSelection;
use crate::carvel::vendir::{DirectoryContents, GitSource, LockGit};
use crate::registry::Egress;

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

/// What the `secretRef` holds. No `Debug`: it holds secrets.
#[derive(Clone)]
enum Auth {
    None,
    Basic(Credentials),
    Ssh(SshAuth),
}

/// Submodules of submodules are followed this deep; git has no bound, but a bound keeps a
/// malicious chain of repositories from running a sync forever.
const MAX_SUBMODULE_DEPTH: usize = 8;

pub(crate) async fn fetch(
    ctx: &Context<'_>,
    source: &GitSource,
    locked_sha: Option<String>,
    contents: &DirectoryContents,
    out: &Path,
) -> Result<LockGit, FetchError> {
    let mut job = Job::new(ctx, source, locked_sha, contents, out)?;
    // Only a fetch verifies: the warm path's probe reads no keys.
    job.keyring = keyring(ctx, source)?;
    let interrupt = Arc::new(AtomicBool::new(false));
    // Dropping this future (timeout) stops the blocking fetch at its next check.
    let guard = InterruptOnDrop(interrupt.clone());
    let result = tokio::task::spawn_blocking(move || job.run(&interrupt))
        .await
        .map_err(|e| FetchError::Git(format!("fetch task failed: {e}")))?;
    drop(guard);
    result
}

/// vendir's `git.verification`: the keys a checkout's signature must verify with.
fn keyring(
    ctx: &Context<'_>,
    source: &GitSource,
) -> Result<Option<Arc<super::keyring::Keyring>>, FetchError> {
    let Some(verification) = &source.verification else {
        return Ok(None);
    };
    let secret_ref = verification
        .public_keys_secret_ref
        .as_ref()
        .ok_or_else(|| {
            FetchError::Invalid(
                "git.verification needs publicKeysSecretRef (a Secret of public keys)".to_owned(),
            )
        })?;
    let secret = ctx.secret(&secret_ref.name)?;
    super::keyring::Keyring::from_secret(&secret_ref.name, &secret).map(|k| Some(Arc::new(k)))
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
    auth: Auth,
    /// ssh connections are driven by the runtime while gix blocks on them.
    runtime: tokio::runtime::Handle,
    repo_dir: PathBuf,
    /// Where submodule repositories go: the cache, or the scratch dir.
    repos_root: PathBuf,
    /// Whether `repo_dir` is in the cache other runs share (then it is locked across
    /// processes while used).
    cached: bool,
    out: PathBuf,
    /// `verification`: what the checkout's signature must verify with (never for submodules,
    /// as vendir verifies the ref it was given only).
    keyring: Option<Arc<super::keyring::Keyring>>,
    filter: PathFilter,
    limits: Limits,
    egress: Egress,
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

/// What a ref resolves to: see [`Job::resolve`].
type Resolved = (Option<gix::ObjectId>, String, Option<gix::ObjectId>);

/// A remote ref: its full name, the commit it ultimately points to, and the annotated tag
/// object on the way, if any.
struct RemoteRef {
    name: String,
    commit: gix::ObjectId,
    tag: Option<gix::ObjectId>,
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
        let auth = match &source.secret_ref {
            None => Auth::None,
            Some(secret_ref) => {
                let secret = ctx.secret(&secret_ref.name)?;
                let bad = |problem: String| FetchError::Secret {
                    name: secret_ref.name.clone(),
                    problem,
                };
                if let Some(other) = secret.data.keys().find(|k| {
                    !matches!(
                        k.as_str(),
                        "username" | "password" | "ssh-privatekey" | "ssh-knownhosts"
                    )
                }) {
                    return Err(bad(format!(
                        "unknown key {other:?} (expected username, password, ssh-privatekey, \
                         ssh-knownhosts)"
                    )));
                }
                match secret.get("ssh-privatekey") {
                    Some(key) => Auth::Ssh(
                        SshAuth::new(&key, secret.get("ssh-knownhosts"))
                            .map_err(|e| bad(e.to_string()))?,
                    ),
                    None if secret.data.contains_key("ssh-knownhosts") => {
                        return Err(bad(
                            "ssh-knownhosts without ssh-privatekey (git over ssh needs the key)"
                                .to_owned(),
                        ));
                    }
                    None => Auth::Basic(Credentials {
                        username: secret.get("username").unwrap_or_default(),
                        password: secret.get("password").unwrap_or_default(),
                    }),
                }
            }
        };
        let policy = ctx.options.policy;
        if !policy.allow_local_git && is_local(&source.url) {
            return Err(FetchError::Invalid(format!(
                "git url {} is a local path or file:// URL; the controller fetches only remote \
                 repositories (serve it over https or ssh)",
                redact_url(&source.url)
            )));
        }
        if let Auth::Ssh(ssh) = &auth
            && !ssh.verifies_host()
            && !policy.allow_unknown_ssh_hosts
        {
            return Err(FetchError::Invalid(
                "git over ssh needs ssh-knownhosts in the secretRef, so that the server's host \
                 key is checked (add the line `ssh-keyscan HOST` prints)"
                    .to_owned(),
            ));
        }
        if git_ssh::Target::parse(&source.url).is_some() && !matches!(auth, Auth::Ssh(_)) {
            return Err(FetchError::Invalid(format!(
                "git over ssh ({}) needs a secretRef with ssh-privatekey (and ssh-knownhosts)",
                redact_url(&source.url)
            )));
        }
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|e| FetchError::Git(format!("no async runtime: {e}")))?;
        let scratch = out.parent().unwrap_or(out).to_owned();
        let cache = ctx.cache("git");
        let cached = cache.is_some();
        let (repo_dir, repos_root) = match cache {
            Some(cache) => (cache.join(url_key(&source.url)), cache),
            None => (scratch.join("repo"), scratch.join("submodules")),
        };
        Ok(Job {
            url: source.url.clone(),
            want,
            depth: u32::try_from(source.depth).ok().and_then(NonZeroU32::new),
            skip_submodules: source.skip_init_submodules,
            auth,
            runtime,
            repo_dir,
            repos_root,
            cached,
            out: out.to_owned(),
            keyring: None,
            filter: PathFilter::new(
                &contents.include_paths,
                &contents.exclude_paths,
                &contents.legal_paths_with_defaults(),
            )
            .map_err(FilterError::from)?,
            limits: ctx.options.limits.clone(),
            egress: ctx.options.egress.clone(),
        })
    }

    fn identity(self) -> Result<String, FetchError> {
        let lock = repo_lock(&self.repo_dir);
        let _held = lock.lock().unwrap_or_else(|e| e.into_inner());
        let _shared = self.lock_shared_cache()?;
        let repo = self.open_repo()?;
        let refs = self.list_remote(&repo)?;
        let (commit, reference, _) = self.resolve(&refs)?;
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

    /// Another process's sync may use the same cached repository: wait for it (after this
    /// process's own lock, so one thread per process waits on the file).
    fn lock_shared_cache(&self) -> Result<Option<super::cache::RepoLock>, FetchError> {
        if !self.cached {
            return Ok(None);
        }
        super::cache::lock_repo(&self.repo_dir)
            .map(Some)
            .map_err(FetchError::io(&self.repo_dir))
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
        let mut written = Written::default();
        let lock = self.checkout(interrupt, &mut written, "", 0, &[])?;
        // Created after every file, so no file is written through a link.
        for (path, target) in written.links {
            std::os::unix::fs::symlink(&target, &path).map_err(FetchError::io(&path))?;
        }
        Ok(lock)
    }

    /// Fetches the wanted commit and writes its tree (and its submodules') under `prefix` of
    /// the output. `held`: the repositories whose locks this thread already holds (a
    /// repository may list itself as a submodule, at another commit).
    fn checkout(
        &self,
        interrupt: &AtomicBool,
        written: &mut Written,
        prefix: &str,
        level: usize,
        held: &[&Path],
    ) -> Result<LockGit, FetchError> {
        let lock = repo_lock(&self.repo_dir);
        let (_held, _shared) = if held.contains(&self.repo_dir.as_path()) {
            (None, None)
        } else {
            (
                Some(lock.lock().unwrap_or_else(|e| e.into_inner())),
                self.lock_shared_cache()?,
            )
        };
        let repo = self.open_repo()?;
        let refs = self.list_remote(&repo)?;
        let (commit, fetch_spec, tag) = self.resolve(&refs)?;

        // A tag verified is a tag object the cache must hold too (a branch may have brought
        // the commit alone).
        let have = commit.is_some_and(|id| repo.find_commit(id).is_ok())
            && (self.keyring.is_none() || tag.is_none_or(|t| repo.find_object(t).is_ok()));
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
        // Before any file of it is written.
        if let Some(keyring) = &self.keyring {
            super::git_verify::verify(&repo, keyring, &fetch_spec, tag, commit.id)?;
        }
        let message = commit.message_raw_sloppy().to_str_lossy().into_owned();
        let tree = commit.tree().map_err(|e| self.err(e))?;
        let mut writer = TreeWriter {
            repo: &repo,
            job: self,
            written,
            gitlinks: Vec::new(),
        };
        writer.write(&tree, prefix)?;
        let gitlinks = writer.gitlinks;
        if !gitlinks.is_empty() && !self.skip_submodules {
            let mut held = held.to_vec();
            held.push(&self.repo_dir);
            self.submodules(&tree, gitlinks, interrupt, written, prefix, level, &held)?;
        }
        Ok(LockGit {
            sha: commit.id.to_string(),
            tags: tags_of(&refs, commit.id),
            commit_title: commit_title(&message),
        })
    }

    /// Checks out each gitlink of `tree` (whose root is at `prefix`) from the URL `.gitmodules`
    /// gives it, at the commit the gitlink records.
    #[expect(clippy::too_many_arguments, reason = "the recursion's state")]
    fn submodules(
        &self,
        tree: &gix::Tree<'_>,
        gitlinks: Vec<(String, gix::ObjectId)>,
        interrupt: &AtomicBool,
        written: &mut Written,
        prefix: &str,
        level: usize,
        held: &[&Path],
    ) -> Result<(), FetchError> {
        let at = |rel: &str| {
            rel.strip_prefix(prefix)
                .map_or(rel, |r| r.trim_start_matches('/'))
                .to_owned()
        };
        if level >= MAX_SUBMODULE_DEPTH {
            return Err(FetchError::Invalid(format!(
                "submodule {:?} is nested more than {MAX_SUBMODULE_DEPTH} levels deep",
                gitlinks[0].0
            )));
        }
        let modules = tree
            .lookup_entry_by_path(".gitmodules")
            .map_err(|e| self.err(e))?
            .map(|entry| entry.object())
            .transpose()
            .map_err(|e| self.err(e))?;
        let modules = match modules {
            Some(blob) => gix::submodule::File::from_bytes(&blob.data, None, &Default::default())
                .map_err(|e| {
                FetchError::Invalid(format!(".gitmodules of {}: {e}", redact_url(&self.url)))
            })?,
            None => {
                return Err(FetchError::Invalid(format!(
                    "submodule {:?} has no .gitmodules entry (set skipInitSubmodules: true to \
                     sync without submodules)",
                    gitlinks[0].0
                )));
            }
        };
        for (rel, commit) in gitlinks {
            let path = at(&rel);
            let url = modules
                .name_by_path(path.as_bytes().as_bstr())
                .and_then(|name| {
                    modules
                        .config()
                        .string_by("submodule", Some(name), "url")
                        .map(|u| u.to_str_lossy().into_owned())
                })
                .filter(|u| !u.is_empty())
                .ok_or_else(|| {
                    FetchError::Invalid(format!(
                        "submodule {rel:?}: no url for path {path:?} in .gitmodules"
                    ))
                })?;
            let url = resolve_submodule_url(&self.url, &url).ok_or_else(|| {
                FetchError::Invalid(format!(
                    "submodule {rel:?}: relative url {url:?} climbs above {}",
                    redact_url(&self.url)
                ))
            })?;
            tracing::info!(path = %rel, url = %redact_url(&url), %commit, "fetching submodule");
            let child = self.submodule_job(url, commit)?;
            child
                .checkout(interrupt, written, &rel, level + 1, held)
                .map_err(|e| match e {
                    FetchError::Git(message) => {
                        FetchError::Git(format!("submodule {rel:?}: {message}"))
                    }
                    FetchError::UnknownRef { reference, hint } => FetchError::Git(format!(
                        "submodule {rel:?}: commit {reference} not found on its remote{hint}"
                    )),
                    other => other,
                })?;
        }
        Ok(())
    }

    fn submodule_job(&self, url: String, commit: gix::ObjectId) -> Result<Job, FetchError> {
        // As git since 2.38.1 (protocol.file.allow=user): an upstream's .gitmodules must not
        // make the controller read local repositories, such as another namespace's cached
        // clones under the same cache directory.
        if is_local(&url) {
            return Err(FetchError::Invalid(format!(
                "submodule url {} is a local path or file:// URL; refused as git refuses it \
                 (serve the submodule over https or ssh)",
                redact_url(&url)
            )));
        }
        // A secret is meant for its own host: vendir hands one ssh key to every host, but
        // sending a password or key to whatever host a .gitmodules names would leak it.
        let auth = if host_of(&url).is_some() && host_of(&url) == host_of(&self.url) {
            self.auth.clone()
        } else {
            Auth::None
        };
        if git_ssh::Target::parse(&url).is_some() && !matches!(auth, Auth::Ssh(_)) {
            return Err(FetchError::Invalid(format!(
                "submodule url {} is ssh, on another host than the parent's secretRef is for",
                redact_url(&url)
            )));
        }
        Ok(Job {
            repo_dir: self.repos_root.join(url_key(&url)),
            repos_root: self.repos_root.clone(),
            cached: self.cached,
            url,
            want: Want::Sha(commit.to_string()),
            depth: None,
            skip_submodules: false,
            auth,
            runtime: self.runtime.clone(),
            out: self.out.clone(),
            keyring: None,
            filter: self.filter.clone(),
            limits: self.limits.clone(),
            egress: self.egress.clone(),
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
        let credentials = match &self.auth {
            Auth::Basic(c) => Some(c.clone()),
            Auth::None | Auth::Ssh(_) => None,
        };
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
        let ref_map = match self.ssh()? {
            Some(transport) => remote
                .to_connection_with_transport(transport)
                .ref_map(gix::progress::Discard, Default::default()),
            None => self
                .connect(&remote)?
                .ref_map(gix::progress::Discard, Default::default()),
        }
        .map_err(|e| self.err(e))?
        .0;
        use gix::protocol::handshake::Ref;
        Ok(ref_map
            .remote_refs
            .iter()
            .filter_map(|r| match r {
                Ref::Peeled {
                    full_ref_name,
                    object,
                    tag,
                } => Some(RemoteRef {
                    name: full_ref_name.to_str_lossy().into_owned(),
                    commit: *object,
                    tag: Some(*tag),
                }),
                Ref::Direct {
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
                    tag: None,
                }),
                Ref::Unborn { .. } => None,
            })
            .collect())
    }

    /// The commit to check out (`None` for an abbreviated sha), the refspec source to fetch,
    /// and the annotated tag object the ref names, if it names one.
    fn resolve(&self, refs: &[RemoteRef]) -> Result<Resolved, FetchError> {
        let by_name: BTreeMap<&str, &RemoteRef> =
            refs.iter().map(|r| (r.name.as_str(), r)).collect();
        let reference = match &self.want {
            Want::Sha(sha) => {
                let id = gix::ObjectId::from_hex(sha.as_bytes())
                    .map_err(|e| FetchError::Locked(format!("git sha {sha:?}: {e}")))?;
                return Ok((Some(id), sha.clone(), None));
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
            return Ok((Some(found.commit), found.name.clone(), found.tag));
        }
        let is_hex = !reference.is_empty() && reference.bytes().all(|b| b.is_ascii_hexdigit());
        if is_hex && reference.len() == 40 {
            let id = gix::ObjectId::from_hex(reference.as_bytes()).map_err(|e| self.err(e))?;
            return Ok((Some(id), reference, None));
        }
        if is_hex && reference.len() >= 4 {
            return Ok((None, reference, None));
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
        match self.ssh()? {
            Some(transport) => remote
                .to_connection_with_transport(transport)
                .prepare_fetch(gix::progress::Discard, Default::default())
                .map_err(|e| self.err(e))?
                .with_shallow(shallow)
                .receive(gix::progress::Discard, interrupt)
                .map(drop),
            None => self
                .connect(&remote)?
                .prepare_fetch(gix::progress::Discard, Default::default())
                .map_err(|e| self.err(e))?
                .with_shallow(shallow)
                .receive(gix::progress::Discard, interrupt)
                .map(drop),
        }
        .map_err(|e| self.err(e))
    }

    /// A connection for the URLs gix connects to itself (http, https, git), with this job's
    /// credentials. Under an egress policy the URL's address literal is checked, names are
    /// resolved through the policy, and redirects are not followed: git's redirect policy
    /// replaces any the client has, so a hop to an address literal could not be checked.
    fn connect<'remote, 'repo>(
        &self,
        remote: &'remote gix::Remote<'repo>,
    ) -> Result<
        gix::remote::Connection<
            'remote,
            'static,
            'repo,
            Box<dyn gix_transport::client::blocking_io::Transport + Send>,
        >,
        FetchError,
    > {
        let connection = remote
            .connect(Direction::Fetch)
            .map_err(|e| self.err(e))?
            .with_credentials(self.credentials());
        if !self.egress.is_active() {
            return Ok(connection);
        }
        if let Ok(url) = reqwest::Url::parse(&self.url) {
            self.egress.check_url(&url)?;
        }
        use gix_transport::client::blocking_io::http;
        let resolver = self.egress.resolver();
        let backend = http::reqwest::Options {
            configure_client: Some(Box::new(move |builder| {
                Ok(builder.dns_resolver(resolver.clone()))
            })),
            configure_request: None,
        };
        let options = http::Options {
            follow_redirects: http::options::FollowRedirects::None,
            backend: Some(Arc::new(Mutex::new(backend))),
            ..Default::default()
        };
        Ok(connection.with_transport_options(Box::new(options)))
    }

    /// The ssh transport for an ssh URL; `None` for the URLs gix connects to itself.
    fn ssh(
        &self,
    ) -> Result<
        Option<
            gix_transport::client::git::blocking_io::Connection<
                git_ssh::ChannelReader,
                git_ssh::ChannelWriter,
            >,
        >,
        FetchError,
    > {
        match &self.auth {
            Auth::Ssh(auth) if git_ssh::Target::parse(&self.url).is_some() => {
                git_ssh::connect(&self.runtime, &self.url, auth, &self.egress)
                    .map(Some)
                    .map_err(|e| match e.denied() {
                        Some(denied) => FetchError::Denied(denied),
                        None => FetchError::Git(e.to_string()),
                    })
            }
            _ => Ok(None),
        }
    }
}

/// The directory name of a repository in the cache.
fn url_key(url: &str) -> String {
    hex(&sha2::Digest::finalize(
        <sha2::Sha256 as sha2::Digest>::new_with_prefix(url.as_bytes()),
    ))[..32]
        .to_owned()
}

/// The host of a git URL (https, ssh or scp-like), lowercased; `None` for local paths.
fn host_of(url: &str) -> Option<String> {
    gix::url::parse(url.as_bytes().as_bstr())
        .ok()?
        .host()
        .map(str::to_ascii_lowercase)
}

/// A local path or `file://` URL (also what an unparsable URL is treated as: refused).
fn is_local(url: &str) -> bool {
    gix::url::parse(url.as_bytes().as_bstr()).map_or(true, |u| u.scheme == gix::url::Scheme::File)
}

/// A `.gitmodules` URL as git resolves it against the parent's remote URL (git's
/// `relative_url()`): each leading `../` drops one component of the parent's URL, `./` none;
/// absolute URLs are kept. `None` when `../` climbs past the parent's host or root.
/// gix has this logic, but only behind a worktree checkout (`Submodule::resolved_url`).
fn resolve_submodule_url(parent: &str, url: &str) -> Option<String> {
    if !(url.starts_with("./") || url.starts_with("../")) {
        return Some(url.to_owned());
    }
    let base = parent.trim_end_matches('/');
    // `fixed` is never climbed out of: scheme and host, scp-like `host:`, or a path's root.
    let (fixed, path) = if let Some(i) = base.find("://") {
        let after = &base[i + 3..];
        match after.find('/') {
            Some(j) => (format!("{}/", &base[..i + 3 + j]), &after[j + 1..]),
            None => (format!("{base}/"), ""),
        }
    } else if let Some((host, path)) = base.split_once(':').filter(|(h, _)| !h.contains('/')) {
        (format!("{host}:"), path)
    } else if let Some(path) = base.strip_prefix('/') {
        ("/".to_owned(), path)
    } else {
        (String::new(), base)
    };
    let mut parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let mut rest = url;
    loop {
        if let Some(r) = rest.strip_prefix("./") {
            rest = r;
        } else if let Some(r) = rest.strip_prefix("../") {
            rest = r;
            parts.pop()?;
        } else {
            break;
        }
    }
    let rest = rest.trim_end_matches('/');
    if !rest.is_empty() {
        parts.push(rest);
    }
    Some(format!("{fixed}{}", parts.join("/")))
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

/// What the trees of one content (the parent's and its submodules') have written so far: the
/// limits count them all together.
#[derive(Default)]
struct Written {
    files: u64,
    bytes: u64,
    /// Symlinks to create once every file is written.
    links: Vec<(PathBuf, PathBuf)>,
}

struct TreeWriter<'a> {
    repo: &'a gix::Repository,
    job: &'a Job,
    written: &'a mut Written,
    /// Submodule entries: their path from the output's root, and the commit they record.
    gitlinks: Vec<(String, gix::ObjectId)>,
}

impl TreeWriter<'_> {
    fn write(&mut self, tree: &gix::Tree<'_>, prefix: &str) -> Result<(), FetchError> {
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
                    self.write(&subtree, &rel)?;
                }
                EntryKind::Commit => self.gitlinks.push((rel, id)),
                EntryKind::Blob | EntryKind::BlobExecutable | EntryKind::Link => {
                    // Files the filter drops are never written (the filter runs again later,
                    // for all sources alike, and then finds nothing to remove).
                    if !self.job.filter.keeps(&rel) {
                        continue;
                    }
                    self.written.files += 1;
                    if self.written.files > self.job.limits.max_files {
                        return Err(FetchError::Invalid(format!(
                            "more than {} files",
                            self.job.limits.max_files
                        )));
                    }
                    let path = safe_join(&self.job.out, &rel)
                        .map_err(|e| FetchError::Invalid(format!("tree entry: {e}")))?;
                    let blob = self.repo.find_object(id).map_err(|e| self.job.err(e))?;
                    self.written.bytes += blob.data.len() as u64;
                    if self.written.bytes > self.job.limits.max_bytes {
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
                        self.written.links.push((path, target));
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

    /// Syncs one git content with `policy`; the error text, if any.
    fn sync_with(url: &str, policy: crate::sync::Policy) -> Option<String> {
        let yaml = format!(
            "apiVersion: vendir.k14s.io/v1alpha1\nkind: Config\ndirectories:\n- path: out\n  \
             contents:\n  - path: .\n    git:\n      url: {url}\n      ref: v1\n"
        );
        let config = crate::carvel::vendir::Config::from_yaml(&yaml).expect("config");
        let root = tempfile::tempdir().expect("tempdir");
        let secrets = crate::sync::MemorySecrets::default();
        let mut options = crate::sync::SyncOptions::new(&secrets);
        options.policy = policy;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime
            .block_on(crate::sync::sync(&config, root.path(), &options))
            .err()
            .map(|e| e.to_string())
    }

    #[test]
    fn local_urls_are_refused_unless_the_cli_allows_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        for url in [
            format!("file://{}", dir.path().display()),
            dir.path().display().to_string(),
        ] {
            let strict = sync_with(&url, crate::sync::Policy::default()).expect("refused");
            assert!(strict.contains("local path or file:// URL"), "{strict}");
            // The CLI tries it (and fails only because there is no repository there).
            let cli = sync_with(&url, crate::sync::Policy::cli(false)).unwrap_or_default();
            assert!(!cli.contains("local path or file:// URL"), "{cli}");
        }
    }

    #[test]
    fn commit_titles_match_vendir() {
        assert_eq!(commit_title("Fix it\n"), "Fix it");
        assert_eq!(commit_title("Fix it\n\nbecause"), "Fix it...");
        assert_eq!(commit_title("  \nTitle\nbody"), "Title...");
    }

    #[test]
    fn relative_submodule_urls_resolve_like_git() {
        let cases = [
            (
                "https://h/org/super.git",
                "../sub.git",
                Some("https://h/org/sub.git"),
            ),
            (
                "https://h/org/super.git/",
                "./sub",
                Some("https://h/org/super.git/sub"),
            ),
            (
                "https://h/org/super.git",
                "../../x/sub",
                Some("https://h/x/sub"),
            ),
            ("https://h/super.git", "../../sub", None),
            (
                "git@h:org/super.git",
                "../sub.git",
                Some("git@h:org/sub.git"),
            ),
            ("git@h:org/super.git", "../../sub", Some("git@h:sub")),
            (
                "ssh://git@h:2222/srv/super.git",
                "../sub.git",
                Some("ssh://git@h:2222/srv/sub.git"),
            ),
            (
                "file:///srv/git/super.git",
                "../sub.git",
                Some("file:///srv/git/sub.git"),
            ),
            ("/srv/git/super", "../sub", Some("/srv/git/sub")),
            (
                "https://h/org/super.git",
                "https://other/sub.git",
                Some("https://other/sub.git"),
            ),
            (
                "https://h/org/super.git",
                "git@other:sub.git",
                Some("git@other:sub.git"),
            ),
        ];
        for (parent, url, want) in cases {
            assert_eq!(
                resolve_submodule_url(parent, url).as_deref(),
                want,
                "{parent} + {url}"
            );
        }
    }

    #[test]
    fn credentials_follow_the_host() {
        assert_eq!(
            host_of("https://Git.Example.com/a.git").as_deref(),
            Some("git.example.com")
        );
        assert_eq!(
            host_of("git@git.example.com:a.git").as_deref(),
            Some("git.example.com")
        );
        assert_eq!(
            host_of("ssh://git@git.example.com:2222/a.git").as_deref(),
            Some("git.example.com")
        );
        assert_eq!(host_of("/srv/git/a.git"), None);
    }

    #[test]
    fn local_submodule_urls_are_refused() {
        for local in [
            "/srv/cache/other-namespace/repo",
            "file:///srv/git/a.git",
            "../../cache/a",
        ] {
            assert!(is_local(local), "{local}");
        }
        for remote in [
            "https://git.example.com/a.git",
            "http://127.0.0.1:8080/git/a.git",
            "git@git.example.com:a.git",
            "ssh://git@git.example.com:2222/a.git",
        ] {
            assert!(!is_local(remote), "{remote}");
        }
    }
}
