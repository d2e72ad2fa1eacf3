//! One content of a directory: describe it, fetch it into scratch, probe it for the warm
//! path — one exhaustive match over [`Source`] each.

use std::path::Path;

use crate::carvel::vendir::{
    Directory, DirectoryContents, LockDirectoryContents, LockEmpty, Source,
};

use super::inline::{inline_files, inline_identity, write_inline};
use super::{Context, filter, fsutil, git, github, helm, hex, http, image, redact_url};
use super::{FetchError, FilterError, Limits, PathFilter, SyncError};

/// What a content's source is, for messages: its type and upstream without credentials.
pub(super) fn describe(contents: &DirectoryContents) -> (&'static str, String) {
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
pub(super) fn config_digest(contents: &DirectoryContents) -> String {
    use sha2::Digest;
    let yaml = crate::carvel::yaml::to_go_yaml("vendir contents", contents).unwrap_or_default();
    hex(&sha2::Sha256::digest(yaml.as_bytes()))
}

/// One content's result: its lock entry and, when the source can tell, the upstream's
/// identity (what the warm path compares; see `warm`).
pub(super) struct Fetched {
    pub(super) lock: LockDirectoryContents,
    pub(super) identity: Option<String>,
}

pub(super) async fn sync_contents(
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
pub(super) fn locked_entry<'a>(
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

pub(super) fn lazy_identity(digest: &str) -> String {
    format!("lazy:{digest}")
}

/// Whether a `lazy` content is kept as it is: same config as last time, already on disk.
pub(super) fn lazy_unchanged<'a>(
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

pub(super) async fn fetch_contents(
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
pub(super) async fn probe_contents(
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
pub(super) fn post_process(
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
