//! HTTP downloads (the `http` source and GitHub release assets): streamed to disk with a byte
//! cap, sha256 verified, and cached by URL with the server's ETag so an unchanged file is
//! answered by a 304 instead of a second download.

use std::path::{Path, PathBuf};

use sha2::Digest;
use tokio::io::AsyncWriteExt;

use super::archive::{self, Kind};
use super::{Context, FetchError, Limits, hex, redact_url};
use crate::carvel::vendir::HttpSource;
use crate::registry::Egress;

/// Credentials for one request.
#[derive(Clone, Default)]
pub(crate) enum Auth {
    #[default]
    None,
    Basic {
        username: String,
        password: String,
    },
    Token(String),
}

#[derive(Clone)]
pub(crate) struct Client {
    inner: reqwest::Client,
    max_bytes: u64,
    egress: Egress,
}

/// A downloaded body on disk.
pub(crate) struct Downloaded {
    pub path: PathBuf,
    pub sha256: String,
    /// Answered from the cache after a 304.
    pub cached: bool,
}

impl Client {
    #[expect(
        clippy::disallowed_methods,
        reason = "the upstream download client, built once per sync"
    )]
    pub(crate) fn new(limits: &Limits, egress: &Egress) -> Result<Client, FetchError> {
        let builder = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(30))
            .user_agent(concat!("packsmith/", env!("CARGO_PKG_VERSION")));
        let builder = if egress.is_active() {
            builder
                .dns_resolver(egress.resolver())
                .redirect(egress.redirect_policy(limits.max_redirects))
        } else {
            builder.redirect(reqwest::redirect::Policy::limited(limits.max_redirects))
        };
        let inner = builder.build().map_err(|e| FetchError::Request {
            url: String::new(),
            cause: e.to_string(),
        })?;
        Ok(Client {
            inner,
            max_bytes: limits.max_bytes,
            egress: egress.clone(),
        })
    }

    pub(crate) fn request(&self, url: &str, auth: &Auth) -> reqwest::RequestBuilder {
        let request = self.inner.get(url);
        match auth {
            Auth::None => request,
            Auth::Basic { username, password } => request.basic_auth(username, Some(password)),
            Auth::Token(token) => request.bearer_auth(token),
        }
    }

    /// Sends `request` and maps transport errors and non-success statuses (other than 304).
    pub(crate) async fn send(
        &self,
        url: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, FetchError> {
        // An address literal is dialled without the resolver, so it is checked here.
        if let Ok(parsed) = reqwest::Url::parse(url) {
            self.egress.check_url(&parsed)?;
        }
        let response = request.send().await.map_err(|e| request_error(url, e))?;
        let status = response.status();
        if status.is_success() || status == reqwest::StatusCode::NOT_MODIFIED {
            return Ok(response);
        }
        let status = status.as_u16();
        let url = redact_url(url);
        Err(if status == 401 || status == 403 {
            FetchError::Unauthorized { status, url }
        } else {
            FetchError::Status { status, url }
        })
    }

    /// Downloads `url` into `dest` (a file path), or reuses the cached copy in `cache` when the
    /// server says it has not changed.
    pub(crate) async fn download(
        &self,
        url: &str,
        auth: &Auth,
        dest: &Path,
        cache: Option<&Path>,
    ) -> Result<Downloaded, FetchError> {
        let entry = cache.map(|c| cache_entry(c, url));
        let mut request = self.request(url, auth);
        if let Some((body, etag)) = &entry
            && body.is_file()
            && let Ok(etag) = std::fs::read_to_string(etag)
        {
            request = request.header(reqwest::header::IF_NONE_MATCH, etag.trim());
        }
        let mut response = self.send(url, request).await?;
        if response.status() == reqwest::StatusCode::NOT_MODIFIED
            && let Some((body, _)) = &entry
        {
            let sha256 = match std::fs::read_to_string(body.with_extension("sha256")) {
                Ok(sum) if sum.len() == 64 => sum,
                _ => file_sha256(body)?,
            };
            super::cache::touch(body);
            return Ok(Downloaded {
                path: body.clone(),
                sha256,
                cached: true,
            });
        }
        if response.status() == reqwest::StatusCode::NOT_MODIFIED {
            return Err(FetchError::Status {
                status: 304,
                url: redact_url(url),
            });
        }
        if response
            .content_length()
            .is_some_and(|n| n > self.max_bytes)
        {
            return Err(FetchError::TooLarge {
                limit: self.max_bytes,
            });
        }
        let etag = response
            .headers()
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut file = tokio::fs::File::create(dest)
            .await
            .map_err(FetchError::io(dest))?;
        let mut hasher = sha2::Sha256::new();
        let mut total = 0u64;
        while let Some(chunk) = response.chunk().await.map_err(|e| request_error(url, e))? {
            total += chunk.len() as u64;
            if total > self.max_bytes {
                return Err(FetchError::TooLarge {
                    limit: self.max_bytes,
                });
            }
            hasher.update(&chunk);
            file.write_all(&chunk).await.map_err(FetchError::io(dest))?;
        }
        file.flush().await.map_err(FetchError::io(dest))?;
        drop(file);
        let sha256 = hex(&hasher.finalize());
        if let (Some((body, etag_path)), Some(etag)) = (&entry, etag)
            && let Some(dir) = body.parent()
        {
            // Cache writes are best effort: a failure costs a download next time, not this sync.
            let stored = std::fs::create_dir_all(dir)
                .and_then(|()| std::fs::copy(dest, body.with_extension("tmp")))
                .and_then(|_| std::fs::rename(body.with_extension("tmp"), body))
                .and_then(|()| std::fs::write(body.with_extension("sha256"), &sha256))
                .and_then(|()| std::fs::write(etag_path, etag));
            if let Err(error) = stored {
                tracing::debug!(%error, "could not cache download");
            }
        }
        Ok(Downloaded {
            path: dest.to_owned(),
            sha256,
            cached: false,
        })
    }
}

/// The cached body and ETag files for `url` (its sha256 sits next to the body).
fn cache_entry(cache: &Path, url: &str) -> (PathBuf, PathBuf) {
    let key = hex(&sha2::Sha256::digest(url.as_bytes()));
    (
        cache.join(format!("{key}.body")),
        cache.join(format!("{key}.etag")),
    )
}

pub(crate) fn request_error(url: &str, error: reqwest::Error) -> FetchError {
    if let Some(denied) = crate::registry::egress_denied(&error) {
        return FetchError::Denied(denied);
    }
    // reqwest's messages embed the URL, which may carry credentials.
    let cause = error.without_url();
    let mut text = cause.to_string();
    let mut source = std::error::Error::source(&cause);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    FetchError::Request {
        url: redact_url(url),
        cause: text,
    }
}

fn file_sha256(path: &Path) -> Result<String, FetchError> {
    let mut file = std::fs::File::open(path).map_err(FetchError::io(path))?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = std::io::Read::read(&mut file, &mut buf).map_err(FetchError::io(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// The last path segment of a URL (vendir's file name for a plain download).
pub(crate) fn file_name(url: &str) -> String {
    let name = reqwest::Url::parse(url)
        .ok()
        .and_then(|u| u.path_segments()?.next_back().map(str::to_owned))
        .unwrap_or_default();
    if name.is_empty() || name == "." || name == ".." {
        "content".to_owned()
    } else {
        name
    }
}

/// Places a downloaded file into `out`: unpacked when it is an archive and `unpack`, else
/// as `name`.
pub(crate) async fn place(
    downloaded: &Path,
    name: &str,
    unpack: bool,
    out: &Path,
    limits: &Limits,
) -> Result<(), FetchError> {
    let downloaded = downloaded.to_owned();
    let name = name.to_owned();
    let out = out.to_owned();
    let limits = limits.clone();
    tokio::task::spawn_blocking(move || -> Result<(), FetchError> {
        let kind = if unpack {
            archive::detect(&downloaded)?
        } else {
            Kind::Plain
        };
        if kind == Kind::Plain {
            let target = super::fsutil::safe_join(&out, &name)
                .map_err(|e| FetchError::Invalid(format!("file name {name:?}: {e}")))?;
            std::fs::copy(&downloaded, &target).map_err(FetchError::io(&target))?;
            return Ok(());
        }
        archive::unpack(&downloaded, kind, &out, &limits)?;
        Ok(())
    })
    .await
    .map_err(|e| FetchError::Invalid(format!("unpack task failed: {e}")))?
}

pub(crate) fn check_sha256(what: &str, expected: &str, actual: &str) -> Result<(), FetchError> {
    let expected = expected
        .trim()
        .trim_start_matches("sha256:")
        .to_ascii_lowercase();
    if expected != actual {
        return Err(FetchError::Checksum {
            what: what.to_owned(),
            expected,
            actual: actual.to_owned(),
        });
    }
    Ok(())
}

/// `username`/`password` from an `http` source's secretRef.
fn auth(ctx: &Context<'_>, source: &HttpSource) -> Result<Auth, FetchError> {
    let Some(secret_ref) = &source.secret_ref else {
        return Ok(Auth::None);
    };
    let secret = ctx.secret(&secret_ref.name)?;
    if let Some(key) = secret
        .data
        .keys()
        .find(|k| !matches!(k.as_str(), "username" | "password"))
    {
        return Err(FetchError::Secret {
            name: secret_ref.name.clone(),
            problem: format!("unknown key {key:?} (expected username, password)"),
        });
    }
    Ok(match secret.get("username") {
        Some(username) => Auth::Basic {
            username,
            password: secret.get("password").unwrap_or_default(),
        },
        None => Auth::None,
    })
}

/// The `http` source; returns the sha256 of what was downloaded.
pub(crate) async fn fetch(
    ctx: &Context<'_>,
    source: &HttpSource,
    out: &Path,
    scratch: &Path,
) -> Result<String, FetchError> {
    if source.url.is_empty() {
        return Err(FetchError::Invalid("http.url is empty".to_owned()));
    }
    let auth = auth(ctx, source)?;
    let cache = ctx.cache("http");
    let downloaded = ctx
        .http
        .download(
            &source.url,
            &auth,
            &scratch.join("download"),
            cache.as_deref(),
        )
        .await?;
    if !source.sha256.is_empty() {
        check_sha256(&redact_url(&source.url), &source.sha256, &downloaded.sha256)?;
    }
    if downloaded.cached {
        tracing::info!(url = %redact_url(&source.url), "unchanged upstream (304), using the cached download");
    }
    place(
        &downloaded.path,
        &file_name(&source.url),
        !source.disable_unpack,
        out,
        &ctx.options.limits,
    )
    .await?;
    Ok(downloaded.sha256)
}

/// The sha256 [`fetch`] would download, when it is known without downloading: pinned by the
/// config, or the cached copy's after the server answers a conditional GET with 304.
pub(crate) async fn probe(
    ctx: &Context<'_>,
    source: &HttpSource,
) -> Result<Option<String>, FetchError> {
    if !source.sha256.is_empty() {
        let pinned = source
            .sha256
            .trim()
            .trim_start_matches("sha256:")
            .to_ascii_lowercase();
        return Ok(Some(pinned));
    }
    let Some(cache) = ctx.cache("http") else {
        return Ok(None);
    };
    let (body, etag) = cache_entry(&cache, &source.url);
    let (Ok(etag), Ok(sha256)) = (
        std::fs::read_to_string(&etag),
        std::fs::read_to_string(body.with_extension("sha256")),
    ) else {
        return Ok(None);
    };
    if !body.is_file() {
        return Ok(None);
    }
    let request = ctx
        .http
        .request(&source.url, &auth(ctx, source)?)
        .header(reqwest::header::IF_NONE_MATCH, etag.trim());
    let response = ctx.http.send(&source.url, request).await?;
    // Anything but a 304 means "changed or unknown": the body is left unread, the full fetch
    // downloads it.
    Ok((response.status() == reqwest::StatusCode::NOT_MODIFIED).then_some(sha256))
}
