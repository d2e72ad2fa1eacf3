//! The `githubRelease` source: a release's assets, found through the GitHub REST API (or a
//! GitHub Enterprise / test server via `apiURL`), checksums verified.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use super::http::{Auth, check_sha256, place};
use super::{Context, FetchError, Glob, highest_version, redact_url};
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
}

pub(crate) async fn fetch(
    ctx: &Context<'_>,
    source: &GithubReleaseSource,
    locked_url: Option<String>,
    out: &Path,
    scratch: &Path,
) -> Result<LockGithubRelease, FetchError> {
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
        get_json(ctx, &url, &auth).await?
    } else if !source.tag.is_empty() {
        get_json(ctx, &format!("{releases}/tags/{}", source.tag), &auth).await?
    } else if source.latest {
        get_json(ctx, &format!("{releases}/latest"), &auth).await?
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

    let patterns: Vec<Glob> = source.asset_names.iter().map(|n| Glob::new(n)).collect();
    let wanted: Vec<&Asset> = release
        .assets
        .iter()
        .filter(|a| patterns.is_empty() || patterns.iter().any(|p| p.matches(&a.name)))
        .collect();
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
    let url = if release.url.is_empty() {
        format!("{releases}/{}", release.id)
    } else {
        release.url
    };
    Ok(LockGithubRelease {
        url,
        tag: release.tag_name,
    })
}

async fn get_json<T: serde::de::DeserializeOwned>(
    ctx: &Context<'_>,
    url: &str,
    auth: &Auth,
) -> Result<T, FetchError> {
    let request = ctx
        .http
        .request(url, auth)
        .header(reqwest::header::ACCEPT, "application/vnd.github+json");
    let response = ctx.http.send(url, request).await?;
    let bytes = response
        .bytes()
        .await
        .map_err(|e| super::http::request_error(url, e))?;
    serde_json::from_slice(&bytes).map_err(|e| {
        FetchError::Invalid(format!("unexpected answer from {}: {e}", redact_url(url)))
    })
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
    fn next_link_is_found_among_others() {
        let header = r#"<http://h/r?page=2>; rel="next", <http://h/r?page=5>; rel="last""#;
        assert_eq!(next_link(header).as_deref(), Some("http://h/r?page=2"));
        assert_eq!(next_link(r#"<http://h/r?page=1>; rel="first""#), None);
    }
}
