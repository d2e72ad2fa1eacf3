//! The `githubRelease` source: a release's assets, found through the GitHub REST API (or a
//! GitHub Enterprise / test server via `apiURL`), checksums verified.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::Digest;

use super::http::{Auth, check_sha256, place};
use super::{Context, FetchError, FilterError, Glob, hex, highest_version, redact_url};
use crate::carvel::vendir::{GithubReleaseSource, LockGithubRelease};

const DEFAULT_API: &str = "https://api.github.com";

#[derive(Debug, Deserialize)]
struct Release {
    #[serde(default)]
    url: String,
    #[serde(default)]
    id: u64,
    tag_name: String,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    draft: bool,
    #[serde(default)]
    assets: Vec<Asset>,
}

#[derive(Debug, Deserialize)]
struct Asset {
    name: String,
    #[serde(default)]
    url: String,
    #[serde(default)]
    browser_download_url: String,
    #[serde(default)]
    id: u64,
    #[serde(default)]
    size: u64,
    #[serde(default)]
    updated_at: String,
    /// `sha256:<hex>`, given by GitHub for assets uploaded since mid 2025.
    #[serde(default)]
    digest: Option<String>,
}

/// A release as the sync resolved it, with what is needed to download its assets.
struct Resolved {
    release: Release,
    releases: String,
    auth: Auth,
    api: String,
}

/// The last answer to a release request, kept to make the next one conditional.
#[derive(Serialize, Deserialize)]
struct CachedAnswer {
    etag: String,
    body: String,
}

/// Finds the release `source` names (the locked URL first, as `--locked` asks), with one
/// conditional API request when a single release is named.
async fn resolve(
    ctx: &Context<'_>,
    source: &GithubReleaseSource,
    locked_url: Option<String>,
) -> Result<Resolved, FetchError> {
    let api = if source.api_url.is_empty() {
        DEFAULT_API
    } else {
        source.api_url.trim_end_matches('/')
    };
    if source.slug.split('/').filter(|p| !p.is_empty()).count() != 2 {
        return Err(FetchError::Invalid(format!(
            "githubRelease.slug {:?} must be owner/repository",
            source.slug
        )));
    }
    let token =
        match &source.secret_ref {
            Some(secret_ref) => {
                Some(ctx.secret(&secret_ref.name)?.get("token").ok_or_else(|| {
                    FetchError::Secret {
                        name: secret_ref.name.clone(),
                        problem: "missing key \"token\"".to_owned(),
                    }
                })?)
            }
            None => ctx.options.github_token.clone(),
        };
    let auth = token.map(Auth::Token).unwrap_or_default();
    let releases = format!("{api}/repos/{}/releases", source.slug);

    let release: Release = if let Some(url) =
        locked_url.or_else(|| (!source.url.is_empty()).then(|| source.url.clone()))
    {
        get_release(ctx, &url, &auth).await?
    } else if !source.tag.is_empty() {
        get_release(ctx, &format!("{releases}/tags/{}", source.tag), &auth).await?
    } else if source.latest {
        get_release(ctx, &format!("{releases}/latest"), &auth).await?
    } else if let Some(selection) = &source.tag_selection {
        let all = list_releases(ctx, &releases, &auth).await?;
        let tag = highest_version(
            all.iter().filter(|r| !r.draft).map(|r| r.tag_name.as_str()),
            selection,
        )?;
        all.into_iter()
            .find(|r| r.tag_name == tag)
            .ok_or_else(|| FetchError::Invalid(format!("release {tag} vanished")))?
    } else {
        return Err(FetchError::Invalid(
            "githubRelease needs one of tag, latest, tagSelection or url".to_owned(),
        ));
    };
    Ok(Resolved {
        release,
        releases,
        auth,
        api: api.to_owned(),
    })
}

/// The assets of `release` that `source` selects.
fn wanted<'a>(
    source: &GithubReleaseSource,
    release: &'a Release,
) -> Result<Vec<&'a Asset>, FetchError> {
    let patterns = Glob::compile_all(&source.asset_names).map_err(FilterError::from)?;
    Ok(release
        .assets
        .iter()
        .filter(|a| patterns.is_empty() || patterns.iter().any(|p| p.matches(&a.name)))
        .collect())
}

/// The lock entry for `release` (its API URL and tag).
fn lock_of(resolved: &Resolved) -> LockGithubRelease {
    let release = &resolved.release;
    let url = if release.url.is_empty() {
        format!("{}/{}", resolved.releases, release.id)
    } else {
        release.url.clone()
    };
    LockGithubRelease {
        url,
        tag: release.tag_name.clone(),
    }
}

/// What the warm path compares: the lock entry, the checksums in the notes, and per selected
/// asset what changes when it is replaced under the same tag (id, size, updated_at, digest).
/// `None` when an asset has neither a digest nor an id and update time, since then a
/// replacement could not be told apart.
fn identity(source: &GithubReleaseSource, resolved: &Resolved) -> Option<String> {
    let lock = lock_of(resolved);
    let mut assets = Vec::new();
    for asset in wanted(source, &resolved.release).ok()? {
        let known = asset.digest.as_deref().is_some_and(|d| !d.is_empty())
            || (asset.id != 0 && !asset.updated_at.is_empty());
        if !known {
            return None;
        }
        assets.push(serde_json::json!([
            asset.name,
            asset.id,
            asset.size,
            asset.updated_at,
            asset.digest,
        ]));
    }
    let notes = notes_checksums(resolved.release.body.as_deref().unwrap_or_default());
    let summary = serde_json::json!({
        "url": lock.url,
        "tag": lock.tag,
        "notes": notes,
        "assets": assets,
    });
    let bytes = serde_json::to_vec(&summary).ok()?;
    Some(format!("github:{}", hex(&sha2::Sha256::digest(&bytes))))
}

/// The identity [`fetch`] would record, found with one (conditional) API request and no
/// asset download.
pub(crate) async fn probe(
    ctx: &Context<'_>,
    source: &GithubReleaseSource,
    locked_url: Option<String>,
) -> Result<Option<String>, FetchError> {
    let resolved = resolve(ctx, source, locked_url).await?;
    Ok(identity(source, &resolved))
}

/// The `githubRelease` source; returns the lock entry and the identity the warm path records.
pub(crate) async fn fetch(
    ctx: &Context<'_>,
    source: &GithubReleaseSource,
    locked_url: Option<String>,
    out: &Path,
    scratch: &Path,
) -> Result<(LockGithubRelease, Option<String>), FetchError> {
    let resolved = resolve(ctx, source, locked_url).await?;
    let (release, auth, api) = (&resolved.release, &resolved.auth, resolved.api.as_str());

    let wanted = wanted(source, release)?;
    let mut checksums = source.checksums.clone();
    if checksums.is_empty() && !source.disable_auto_checksum_validation {
        checksums = notes_checksums(release.body.as_deref().unwrap_or_default());
    }
    if let Some(unpack) = &source.unpack_archive
        && !wanted.iter().any(|a| a.name == unpack.path)
    {
        return Err(FetchError::Invalid(format!(
            "unpackArchive.path {:?} is not among the downloaded assets",
            unpack.path
        )));
    }

    let api_origin = reqwest::Url::parse(api).ok().map(|u| u.origin());
    let cache = ctx.cache("http");
    let downloads = scratch.join("assets");
    std::fs::create_dir_all(&downloads).map_err(FetchError::io(&downloads))?;
    for (index, asset) in wanted.iter().enumerate() {
        // The API URL serves private assets with a token; the token never goes to another host.
        let same_origin = |url: &str| {
            reqwest::Url::parse(url).ok().map(|u| u.origin()) == api_origin && api_origin.is_some()
        };
        let (url, asset_auth) = if matches!(auth, Auth::Token(_)) && same_origin(&asset.url) {
            (asset.url.as_str(), auth.clone())
        } else if same_origin(&asset.browser_download_url) {
            (asset.browser_download_url.as_str(), auth.clone())
        } else {
            (asset.browser_download_url.as_str(), Auth::None)
        };
        let downloaded = ctx
            .http
            .download(
                url,
                &asset_auth,
                &downloads.join(index.to_string()),
                cache.as_deref(),
            )
            .await?;
        match checksums.get(&asset.name) {
            Some(expected) => check_sha256(&asset.name, expected, &downloaded.sha256)?,
            None if !checksums.is_empty() => {
                return Err(FetchError::Invalid(format!(
                    "no checksum for asset {:?} (checksums are given for {}); add it to \
                     checksums or set disableAutoChecksumValidation",
                    asset.name,
                    checksums.keys().cloned().collect::<Vec<_>>().join(", ")
                )));
            }
            None => {}
        }
        let unpack = source
            .unpack_archive
            .as_ref()
            .is_some_and(|u| u.path == asset.name);
        if source.unpack_archive.is_some() && !unpack {
            continue;
        }
        place(
            &downloaded.path,
            &asset.name,
            unpack,
            out,
            &ctx.options.limits,
        )
        .await?;
    }
    Ok((lock_of(&resolved), identity(source, &resolved)))
}

/// One release from the API. With a cache, the request carries the ETag of the last answer
/// and a 304 (which GitHub does not count against the rate limit) reuses that answer.
async fn get_release(ctx: &Context<'_>, url: &str, auth: &Auth) -> Result<Release, FetchError> {
    let entry = ctx.cache("github").map(|c| cache_entry(&c, url));
    let cached: Option<CachedAnswer> = entry
        .as_ref()
        .and_then(|p| std::fs::read(p).ok())
        .and_then(|b| serde_json::from_slice(&b).ok());
    let mut request = ctx
        .http
        .request(url, auth)
        .header(reqwest::header::ACCEPT, "application/vnd.github+json");
    if let Some(cached) = &cached {
        request = request.header(reqwest::header::IF_NONE_MATCH, &cached.etag);
    }
    let response = ctx.http.send(url, request).await?;
    let unexpected = |e: serde_json::Error| {
        FetchError::Invalid(format!("unexpected answer from {}: {e}", redact_url(url)))
    };
    if response.status() == reqwest::StatusCode::NOT_MODIFIED {
        let Some(cached) = cached else {
            return Err(FetchError::Status {
                status: 304,
                url: redact_url(url),
            });
        };
        return serde_json::from_str(&cached.body).map_err(unexpected);
    }
    let etag = response
        .headers()
        .get(reqwest::header::ETAG)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let bytes = response
        .bytes()
        .await
        .map_err(|e| super::http::request_error(url, e))?;
    let release = serde_json::from_slice(&bytes).map_err(unexpected)?;
    if let (Some(path), Some(etag), Ok(body)) = (entry, etag, String::from_utf8(bytes.to_vec())) {
        store_answer(&path, &CachedAnswer { etag, body });
    }
    Ok(release)
}

fn cache_entry(cache: &Path, url: &str) -> PathBuf {
    cache.join(format!(
        "{}.json",
        hex(&sha2::Sha256::digest(url.as_bytes()))
    ))
}

/// Best effort: a failed write costs a full answer next time, never this sync.
fn store_answer(path: &Path, answer: &CachedAnswer) {
    let write = || -> std::io::Result<()> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
        std::fs::write(
            &tmp,
            serde_json::to_vec(answer).map_err(std::io::Error::other)?,
        )?;
        std::fs::rename(&tmp, path)
    };
    if let Err(error) = write() {
        tracing::debug!(path = %path.display(), %error, "could not cache a release answer");
    }
}

/// Every release, following the `Link: rel="next"` pages.
async fn list_releases(
    ctx: &Context<'_>,
    base: &str,
    auth: &Auth,
) -> Result<Vec<Release>, FetchError> {
    let mut all = Vec::new();
    let mut next = Some(format!("{base}?per_page=100"));
    // Bounded: a server that keeps linking onwards cannot keep the sync busy forever.
    for _ in 0..100 {
        let Some(url) = next.take() else { break };
        let request = ctx
            .http
            .request(&url, auth)
            .header(reqwest::header::ACCEPT, "application/vnd.github+json");
        let response = ctx.http.send(&url, request).await?;
        next = response
            .headers()
            .get(reqwest::header::LINK)
            .and_then(|v| v.to_str().ok())
            .and_then(next_link);
        let bytes = response
            .bytes()
            .await
            .map_err(|e| super::http::request_error(&url, e))?;
        let page: Vec<Release> = serde_json::from_slice(&bytes).map_err(|e| {
            FetchError::Invalid(format!("unexpected answer from {}: {e}", redact_url(&url)))
        })?;
        all.extend(page);
    }
    Ok(all)
}

fn next_link(header: &str) -> Option<String> {
    header.split(',').find_map(|part| {
        let (url, params) = part.split_once(';')?;
        params
            .split(';')
            .any(|p| p.trim() == "rel=\"next\"")
            .then(|| {
                url.trim()
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_owned()
            })
    })
}

/// `sha256  file` lines in release notes (sha256sum output), as vendir reads them.
fn notes_checksums(notes: &str) -> BTreeMap<String, String> {
    notes
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let sum = words.next()?;
            let name = words.next()?.trim_start_matches('*');
            (words.next().is_none()
                && sum.len() == 64
                && sum.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| (name.to_owned(), sum.to_ascii_lowercase()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_notes_checksums_are_sha256sum_lines() {
        let sum = "a".repeat(64);
        let notes =
            format!("# Notes\n\n```\n{sum}  cert-manager.yaml\n{sum} *cmctl.tgz\nnot a sum\n```\n");
        let parsed = notes_checksums(&notes);
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed["cmctl.tgz"], sum);
    }

    #[test]
    fn identity_changes_when_an_asset_is_replaced_under_the_same_tag() {
        let resolved = |assets: serde_json::Value| Resolved {
            release: serde_json::from_value(serde_json::json!({
                "url": "http://h/repos/o/r/releases/1", "id": 1, "tag_name": "v1",
                "assets": assets,
            }))
            .unwrap(),
            releases: "http://h/repos/o/r/releases".to_owned(),
            auth: Auth::None,
            api: "http://h".to_owned(),
        };
        let asset = |name: &str, id: u64, updated: &str| serde_json::json!({"name": name, "id": id, "size": 3, "updated_at": updated});
        let source = GithubReleaseSource {
            asset_names: vec!["*.yaml".to_owned()],
            ..Default::default()
        };
        let before = identity(
            &source,
            &resolved(serde_json::json!([
                asset("a.yaml", 1, "t1"),
                asset("b.tgz", 2, "t1")
            ])),
        )
        .unwrap();
        // An asset the source does not select may change freely.
        let other = identity(
            &source,
            &resolved(serde_json::json!([
                asset("a.yaml", 1, "t1"),
                asset("b.tgz", 3, "t2")
            ])),
        );
        assert_eq!(other.as_deref(), Some(before.as_str()));
        let replaced = identity(
            &source,
            &resolved(serde_json::json!([
                asset("a.yaml", 4, "t2"),
                asset("b.tgz", 2, "t1")
            ])),
        );
        assert!(replaced.is_some_and(|r| r != before));
        // Without an id and update time (or a digest) a replacement could not be noticed.
        let unknown = identity(&source, &resolved(serde_json::json!([{"name": "a.yaml"}])));
        assert_eq!(unknown, None);
        let digest = identity(
            &source,
            &resolved(serde_json::json!([{"name": "a.yaml", "digest": "sha256:00"}])),
        );
        assert!(digest.is_some());
    }

    #[test]
    fn next_link_is_found_among_others() {
        let header = r#"<http://h/r?page=2>; rel="next", <http://h/r?page=5>; rel="last""#;
        assert_eq!(next_link(header).as_deref(), Some("http://h/r?page=2"));
        assert_eq!(next_link(r#"<http://h/r?page=1>; rel="first""#), None);
    }
}
