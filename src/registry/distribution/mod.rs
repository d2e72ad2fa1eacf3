//! The OCI distribution API at the fewest requests: everything packsmith asks of a registry
//! (lock, push, pull, image and bundle sources, tag listing, platform selection).
//!
//! General-purpose clients ping `/v2/` before almost every request to a registry that needs no
//! token (they cache tokens, not the absence of one), upload blobs in 4 MiB PATCH chunks, and
//! build their own HTTP client, loading the system's root certificates again. This client
//! instead keeps, for the life of its [`Registry`]:
//!
//! - one `/v2/` ping per host, shared by all concurrent requests, to learn its challenge;
//! - one bearer token per (host, repository, access), shared likewise; basic credentials sent
//!   up front once the host is known to ask for them. Only challenges and tokens obtained with
//!   the registry's own credentials are kept, never a failure;
//! - one HTTP connection pool per scheme; the HTTPS one is built on the first HTTPS request,
//!   with the system roots (read once per process) plus the configured CAs, so reaching only
//!   plain-HTTP hosts never reads certificates.
//!
//! Manifest digests are one `HEAD …/manifests/<ref>` accepting Docker v2, OCI manifest, Docker
//! manifest list and OCI index (so a multi-platform tag yields the index digest, as kbld's);
//! a GET only when a registry answers HEAD without `Docker-Content-Digest`, or to read the
//! error code after a 404. Blobs are uploaded as one POST and one monolithic PUT, and
//! downloaded either into memory (configs, up to the size the manifest declares) or streamed
//! to a file with their digest checked on the way (layers), never held whole in memory.
//!
//! TLS, plain-HTTP hosts, CAs, credentials and mirrors come from [`Registry`]'s options.

mod errors;
mod shared;
mod stats;
mod token;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderMap, LOCATION};
use sha2::{Digest as _, Sha256};

use super::{ErrorClass, Reference, Registry, RegistryAuth, RegistryError};
pub(super) use errors::denied;
use errors::{error_codes, read_capped, request_error, status_error, transport_error};
pub(super) use shared::Shared;
use stats::RequestCounts;
pub use stats::RequestStats;
use token::{Access, Challenge, Credential, same_origin, with};

const MANIFEST_MEDIA_TYPES: &str = "application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json";

/// The largest manifest or index read: distribution's own limit for manifests it accepts.
const MAX_MANIFEST_BYTES: u64 = 4 << 20;
/// A token response is a few KiB; anything near this is not one.
const MAX_TOKEN_BYTES: u64 = 1 << 20;
/// A page of at most [`TAG_PAGE`] tag names is tens of KiB.
const MAX_TAGS_PAGE_BYTES: u64 = 4 << 20;
/// Tags asked for per page (the `n` of the distribution spec)...
const TAG_PAGE: usize = 1000;
/// ...and pages at most: a registry that keeps answering cannot keep a stage busy.
const MAX_TAG_PAGES: usize = 100;
/// Tags listed in all: what those pages hold.
const MAX_TAGS: usize = TAG_PAGE * MAX_TAG_PAGES;
/// An error body is read only for its codes.
const MAX_ERROR_BYTES: u64 = 64 << 10;

/// How a blob reached the target repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upload {
    /// Mounted from another repository of the same registry: no byte was sent.
    Mounted,
    /// Sent whole.
    Sent,
}

/// A view of the registry's distribution client that counts its own requests (one per stage
/// run), sharing connections, challenges and tokens with every other view.
pub struct DistributionClient<'r> {
    registry: &'r Registry,
    counts: RequestCounts,
}

impl Drop for DistributionClient<'_> {
    fn drop(&mut self) {
        let made = self.stats().total();
        self.shared().requests.fetch_add(made, Ordering::Relaxed);
    }
}

/// The name the lock stage knows this client by.
pub type ManifestClient<'r> = DistributionClient<'r>;

/// Where a request goes: `scheme://host` and the repository.
struct Endpoint<'r> {
    http: &'r reqwest::Client,
    host: String,
    base: String,
    repository: String,
    auth: RegistryAuth,
}

impl Endpoint<'_> {
    /// `<base>/v2/<repository>/<path>`: the distribution API's URL for this repository.
    fn url(&self, path: &str) -> String {
        format!("{}/v2/{}/{path}", self.base, self.repository)
    }
}

impl<'r> DistributionClient<'r> {
    /// Kept fallible for the lock stage's callers; [`Registry::distribution`] is the same.
    pub fn new(registry: &'r Registry) -> Result<Self, RegistryError> {
        Ok(Self::for_registry(registry))
    }

    pub(super) fn for_registry(registry: &'r Registry) -> Self {
        DistributionClient {
            registry,
            counts: RequestCounts::default(),
        }
    }

    fn shared(&self) -> &'r Shared {
        &self.registry.shared
    }

    pub fn stats(&self) -> RequestStats {
        let c = &self.counts;
        let load = |a: &AtomicUsize| a.load(Ordering::Relaxed);
        RequestStats {
            pings: load(&c.pings),
            tokens: load(&c.tokens),
            manifest_heads: load(&c.manifest_heads),
            manifest_gets: load(&c.manifest_gets),
            manifest_puts: load(&c.manifest_puts),
            blob_heads: load(&c.blob_heads),
            blob_gets: load(&c.blob_gets),
            tag_lists: load(&c.tag_lists),
            blob_uploads: load(&c.blob_uploads),
        }
    }

    async fn endpoint(&self, contacted: &Reference) -> Result<Endpoint<'r>, RegistryError> {
        let host = contacted.resolve_registry().to_owned();
        let marked = self.shared().plain_http.contains(&host);
        let fallback = !marked
            && crate::registry::local::falls_back_to_http(&host)
            && self.speaks_only_plain_http(&host).await?;
        let plain = marked || fallback;
        let scheme = if plain { "http" } else { "https" };
        let auth = if fallback && self.registry.options.withhold_credentials_over_fallback {
            RegistryAuth::Anonymous
        } else {
            self.registry.auth(contacted).await?
        };
        Ok(Endpoint {
            http: self.shared().http(plain)?,
            base: format!("{scheme}://{host}"),
            auth,
            repository: contacted.repository().to_owned(),
            host,
        })
    }

    /// go-containerregistry's ping for a local registry (`transport/ping.go`): HTTPS first,
    /// and plain HTTP when HTTPS cannot be spoken there but plain HTTP answers. Learned once
    /// per host; a host that answers neither is asked again next time, and its HTTPS error
    /// is what the caller sees.
    async fn speaks_only_plain_http(&self, host: &str) -> Result<bool, RegistryError> {
        let cell = {
            let mut cells = self
                .shared()
                .fallbacks
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            Arc::clone(cells.entry(host.to_owned()).or_default())
        };
        let probe = || async {
            let https = format!("https://{host}/v2/");
            self.shared().reachable(&https)?;
            self.counts.pings.fetch_add(1, Ordering::Relaxed);
            let refused = match self.shared().http(false)?.get(&https).send().await {
                // Any answer over TLS, even an error status: the host speaks HTTPS. The
                // answer is the ping too, so this costs no request.
                Ok(response) => {
                    self.learn_challenge(host, &response);
                    return Ok(false);
                }
                Err(e) => transport_error("GET", &https, &e),
            };
            if refused.is_denied() {
                return Err(refused);
            }
            let http = format!("http://{host}/v2/");
            self.counts.pings.fetch_add(1, Ordering::Relaxed);
            match self.shared().http(true)?.get(&http).send().await {
                Ok(response) => {
                    self.learn_challenge(host, &response);
                    tracing::debug!(host, "no HTTPS at a local registry; speaking plain HTTP");
                    Ok(true)
                }
                Err(_) => Err(refused),
            }
        };
        cell.get_or_try_init(probe).await.copied()
    }

    /// The digest of the manifest `reference` names, asked of the registry that answers for
    /// it (its mirror, if one is configured). Errors name the URL contacted.
    pub async fn digest(&self, reference: &Reference) -> Result<String, RegistryError> {
        let contacted = self.registry.contact(reference);
        let target = contacted.digest().or(contacted.tag()).unwrap_or("latest");
        match self.manifest_digest_at(&contacted, target).await? {
            Some(digest) => Ok(digest),
            None => {
                let endpoint = self.endpoint(&contacted).await?;
                let url = manifest_url(&endpoint, target);
                let credential = self.credential(&endpoint, Access::Pull, &url).await?;
                Err(self.not_found(&endpoint, &url, &credential).await)
            }
        }
    }

    /// The digest `repository`'s manifest `target` (a tag or digest) has, or `None` when the
    /// registry has no such manifest. No mirror is applied: `repository` is contacted itself.
    pub async fn manifest_digest_at(
        &self,
        repository: &Reference,
        target: &str,
    ) -> Result<Option<String>, RegistryError> {
        let endpoint = self.endpoint(repository).await?;
        let url = manifest_url(&endpoint, target);
        let (response, credential) = self
            .send(
                &endpoint,
                Access::Pull,
                "HEAD",
                &url,
                &self.counts.manifest_heads,
                |http| http.head(&url).header(ACCEPT, MANIFEST_MEDIA_TYPES),
            )
            .await?;
        let status = response.status();
        if status.is_success() {
            if let Some(digest) = content_digest(response.headers()) {
                return Ok(Some(digest));
            }
            return self
                .digest_from_body(&endpoint, &url, &credential)
                .await
                .map(Some);
        }
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        Err(status_error("HEAD", &url, status, &endpoint.auth, ""))
    }

    /// Whether `repository` has the blob `digest`.
    pub async fn blob_exists(
        &self,
        repository: &Reference,
        digest: &str,
    ) -> Result<bool, RegistryError> {
        let endpoint = self.endpoint(repository).await?;
        let url = endpoint.url(&format!("blobs/{digest}"));
        let (response, _) = self
            .send(
                &endpoint,
                Access::Pull,
                "HEAD",
                &url,
                &self.counts.blob_heads,
                |http| http.head(&url),
            )
            .await?;
        match response.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            s => Err(status_error("HEAD", &url, s, &endpoint.auth, "")),
        }
    }

    /// Uploads `data` as the blob `digest`: a POST for an upload session, then one PUT of the
    /// whole blob, which the registry checks against `digest`.
    pub async fn push_blob(
        &self,
        repository: &Reference,
        digest: &str,
        data: Bytes,
    ) -> Result<(), RegistryError> {
        let length = data.len() as u64;
        self.upload_blob(repository, digest, length, None, || async {
            Ok(reqwest::Body::from(data))
        })
        .await
        .map(|_| ())
    }

    /// Uploads the blob `digest` of `length` bytes into `repository`: a POST for an upload
    /// session, then one PUT of the body `body` makes, which the registry checks against
    /// `digest`. With `mount_from` (another repository of the same registry that has the
    /// blob) the POST first asks for a cross-repository mount, as the distribution spec has
    /// it; a `201 Created` answer means the blob is there and `body` is never called. No
    /// mount is asked of a registry that speaks bearer tokens: it would want a token for
    /// both repositories and refuse the whole request with one for the target only.
    pub async fn upload_blob<F, Fut>(
        &self,
        repository: &Reference,
        digest: &str,
        length: u64,
        mount_from: Option<&str>,
        body: F,
    ) -> Result<Upload, RegistryError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<reqwest::Body, RegistryError>>,
    {
        let endpoint = self.endpoint(repository).await?;
        let url = endpoint.url("blobs/uploads/");
        let mount_from = match mount_from {
            Some(from) if from != endpoint.repository => match self.challenge(&endpoint).await? {
                Challenge::Bearer { .. } => None,
                _ => Some(from),
            },
            _ => None,
        };
        let (response, credential) = self
            .send(
                &endpoint,
                Access::Push,
                "POST",
                &url,
                &self.counts.blob_uploads,
                |http| {
                    let request = http.post(&url).header(reqwest::header::CONTENT_LENGTH, 0);
                    match mount_from {
                        Some(from) => request.query(&[("mount", digest), ("from", from)]),
                        None => request,
                    }
                },
            )
            .await?;
        let status = response.status();
        if mount_from.is_some() && status == StatusCode::CREATED {
            return Ok(Upload::Mounted);
        }
        if status != StatusCode::ACCEPTED {
            return Err(status_error(
                "POST",
                &url,
                status,
                &endpoint.auth,
                "(starting a blob upload)",
            ));
        }
        let location = response
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                request_error(
                    "POST",
                    &url,
                    ErrorClass::Permanent,
                    "the registry started an upload without a Location".to_owned(),
                )
            })?;
        let upload = if location.starts_with("http://") || location.starts_with("https://") {
            location.to_owned()
        } else {
            format!("{}{location}", endpoint.base)
        };
        self.shared().reachable(&upload)?;
        // An upload handed to another origin (storage behind the registry) gets no
        // Authorization: the registry's credentials are for the registry.
        let credential = if same_origin(&upload, &endpoint.base) {
            credential
        } else {
            Credential::None
        };
        let body = body().await?;
        let response = with(
            endpoint
                .http
                .put(&upload)
                .query(&[("digest", digest)])
                .header(CONTENT_TYPE, "application/octet-stream")
                .header(reqwest::header::CONTENT_LENGTH, length),
            &credential,
        )
        .body(body)
        .send()
        .await
        .map_err(|e| transport_error("PUT", &url, &e))?;
        let status = response.status();
        if status.is_success() {
            Ok(Upload::Sent)
        } else {
            let detail = error_codes(
                &read_capped(response, MAX_ERROR_BYTES, "error", &url)
                    .await
                    .unwrap_or_default(),
            );
            Err(status_error("PUT", &url, status, &endpoint.auth, &detail))
        }
    }

    /// Writes `manifest` as `repository:target`.
    pub async fn put_manifest(
        &self,
        repository: &Reference,
        target: &str,
        media_type: &str,
        manifest: Bytes,
    ) -> Result<(), RegistryError> {
        let endpoint = self.endpoint(repository).await?;
        let url = manifest_url(&endpoint, target);
        let (response, _) = self
            .send(
                &endpoint,
                Access::Push,
                "PUT",
                &url,
                &self.counts.manifest_puts,
                |http| {
                    http.put(&url)
                        .header(CONTENT_TYPE, media_type)
                        .body(manifest.clone())
                },
            )
            .await?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            let detail = error_codes(
                &read_capped(response, MAX_ERROR_BYTES, "error", &url)
                    .await
                    .unwrap_or_default(),
            );
            Err(status_error("PUT", &url, status, &endpoint.auth, &detail))
        }
    }

    /// The manifest `repository:target`, as bytes, accepting `media_types`, or `None` when the
    /// registry has none there: one GET whether or not it exists (an artifact found by its
    /// tag, like cosign's `sha256-<hex>.sig`, is asked for without a HEAD first).
    pub async fn find_manifest(
        &self,
        repository: &Reference,
        target: &str,
        media_types: &[&str],
    ) -> Result<Option<Bytes>, RegistryError> {
        let endpoint = self.endpoint(repository).await?;
        let url = manifest_url(&endpoint, target);
        let accept = media_types.join(", ");
        let (response, _) = self
            .send(
                &endpoint,
                Access::Pull,
                "GET",
                &url,
                &self.counts.manifest_gets,
                |http| http.get(&url).header(ACCEPT, &accept),
            )
            .await?;
        let status = response.status();
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(status_error("GET", &url, status, &endpoint.auth, ""));
        }
        read_capped(response, MAX_MANIFEST_BYTES, "manifest", &url)
            .await
            .map(Some)
    }

    /// The manifest `repository:target`, as bytes, accepting `media_types`; a missing one is
    /// an error that says whether the repository or the tag is missing.
    pub async fn get_manifest(
        &self,
        repository: &Reference,
        target: &str,
        media_types: &[&str],
    ) -> Result<Bytes, RegistryError> {
        if let Some(manifest) = self.find_manifest(repository, target, media_types).await? {
            return Ok(manifest);
        }
        let endpoint = self.endpoint(repository).await?;
        let url = manifest_url(&endpoint, target);
        let credential = self.credential(&endpoint, Access::Pull, &url).await?;
        Err(self.not_found(&endpoint, &url, &credential).await)
    }

    /// The blob `digest` of `repository`, read into memory up to `size` bytes (the size its
    /// manifest declares): a registry that sends more is refused before it costs more. The
    /// caller checks the bytes against the digest.
    pub async fn get_blob(
        &self,
        repository: &Reference,
        digest: &str,
        size: u64,
    ) -> Result<Bytes, RegistryError> {
        let (response, url) = self.blob_response(repository, digest).await?;
        read_capped(response, size, "blob", &url).await
    }

    /// Every tag of `repository` (as contacted), in the registry's order, paged with `n` and
    /// `last` as the distribution spec says.
    pub async fn list_tags(&self, repository: &Reference) -> Result<Vec<String>, RegistryError> {
        #[derive(serde::Deserialize)]
        struct Page {
            #[serde(default)]
            tags: Option<Vec<String>>,
        }
        let endpoint = self.endpoint(repository).await?;
        let url = endpoint.url("tags/list");
        let mut tags: Vec<String> = Vec::new();
        for _ in 0..MAX_TAG_PAGES {
            let last = tags.last().cloned();
            let (response, _) = self
                .send(
                    &endpoint,
                    Access::Pull,
                    "GET",
                    &url,
                    &self.counts.tag_lists,
                    |http| {
                        let request = http.get(&url).query(&[("n", TAG_PAGE.to_string())]);
                        match &last {
                            Some(last) => request.query(&[("last", last)]),
                            None => request,
                        }
                    },
                )
                .await?;
            let status = response.status();
            if !status.is_success() {
                let detail = error_codes(
                    &read_capped(response, MAX_ERROR_BYTES, "error", &url)
                        .await
                        .unwrap_or_default(),
                );
                return Err(status_error("GET", &url, status, &endpoint.auth, &detail));
            }
            let body = read_capped(response, MAX_TAGS_PAGE_BYTES, "tag list", &url).await?;
            let page: Page = serde_json::from_slice(&body).map_err(|e| {
                request_error(
                    "GET",
                    &url,
                    ErrorClass::Permanent,
                    format!("the tag list is not valid JSON: {e}"),
                )
            })?;
            let page = page.tags.unwrap_or_default();
            // A registry may ignore `n` and answer all its tags at once; it may not make the
            // pages add up to more than the pages we would ever ask for.
            if tags.len().saturating_add(page.len()) > MAX_TAGS {
                return Err(request_error(
                    "GET",
                    &url,
                    ErrorClass::Permanent,
                    format!("the registry lists more than {MAX_TAGS} tags"),
                ));
            }
            // A short page is the last; so is one that ends where the previous did (a
            // registry that ignores `last`).
            let done = page.len() < TAG_PAGE || page.last() == tags.last();
            tags.extend(page);
            if done {
                break;
            }
        }
        Ok(tags)
    }

    /// Streams the blob `digest` of `repository` (as contacted) into `file`, refusing more
    /// than `size` bytes (the size its manifest declares) and checking size and digest as it
    /// goes: memory holds one chunk, whatever the blob's size. Only sha256 digests are
    /// accepted, as by go-containerregistry.
    pub async fn blob_to_file(
        &self,
        repository: &Reference,
        digest: &str,
        size: u64,
        file: &mut tokio::fs::File,
    ) -> Result<(), RegistryError> {
        use tokio::io::AsyncWriteExt as _;
        let (mut response, url) = self.blob_response(repository, digest).await?;
        let too_large = || RegistryError::TooLarge {
            what: "blob",
            url: url.clone(),
            limit: size,
        };
        if response.content_length().is_some_and(|len| len > size) {
            return Err(too_large());
        }
        let write_error = |e: std::io::Error| RegistryError::Write {
            what: "blob",
            url: url.clone(),
            message: e.to_string(),
        };
        let mut hash = Sha256::new();
        let mut received: u64 = 0;
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| transport_error("GET", &url, &e))?
        {
            received += chunk.len() as u64;
            if received > size {
                return Err(too_large());
            }
            hash.update(&chunk);
            file.write_all(&chunk).await.map_err(write_error)?;
        }
        file.flush().await.map_err(write_error)?;
        let actual = super::digest_string(&hash.finalize());
        if received != size || actual != digest {
            // Retryable: a connection cut short or a registry serving the wrong bytes once.
            return Err(request_error(
                "GET",
                &url,
                ErrorClass::Retryable,
                format!(
                    "the blob is {received} bytes with digest {actual}, its manifest \
                     says {size} bytes with {digest}"
                ),
            ));
        }
        Ok(())
    }

    /// The blob `digest` of `repository` (as contacted) as a stream of chunks that is
    /// checked as it flows: more than `size` bytes, fewer, or other bytes than `digest` end
    /// the stream with an error instead of its end, so whatever consumes it (an upload, a tar
    /// entry) never completes with unverified bytes. Memory holds one chunk.
    pub async fn blob_stream(
        &self,
        repository: &Reference,
        digest: &str,
        size: u64,
    ) -> Result<futures::stream::BoxStream<'static, std::io::Result<Bytes>>, RegistryError> {
        let (response, url) = self.blob_response(repository, digest).await?;
        if response.content_length().is_some_and(|len| len > size) {
            return Err(RegistryError::TooLarge {
                what: "blob",
                url,
                limit: size,
            });
        }
        use futures::StreamExt as _;
        let chunks = response
            .bytes_stream()
            .map(|chunk| chunk.map_err(std::io::Error::other));
        Ok(super::digest::verified(chunks, digest.to_owned(), size, url).boxed())
    }

    /// The successful answer to `GET …/blobs/<digest>` and its URL. The digest comes from a
    /// manifest, so from a registry: it must be sha256 (as go-containerregistry requires)
    /// before it becomes part of a URL.
    async fn blob_response(
        &self,
        repository: &Reference,
        digest: &str,
    ) -> Result<(reqwest::Response, String), RegistryError> {
        if !super::is_sha256_digest(digest) {
            return Err(RegistryError::InvalidReference {
                reference: digest.to_owned(),
                reason: "a blob digest must be sha256: and 64 lowercase hex digits".to_owned(),
            });
        }
        let endpoint = self.endpoint(repository).await?;
        let url = endpoint.url(&format!("blobs/{digest}"));
        let (response, _) = self
            .send(
                &endpoint,
                Access::Pull,
                "GET",
                &url,
                &self.counts.blob_gets,
                |http| http.get(&url),
            )
            .await?;
        let status = response.status();
        if !status.is_success() {
            return Err(status_error("GET", &url, status, &endpoint.auth, ""));
        }
        Ok((response, url))
    }

    /// Sends the request `build` makes with the right credentials, fetching one more token
    /// once if a bearer token was refused (it can expire during a long run). Returns the
    /// response, whatever its status, and the credential it was sent with.
    async fn send(
        &self,
        endpoint: &Endpoint<'_>,
        access: Access,
        operation: &'static str,
        url: &str,
        counter: &AtomicUsize,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<(reqwest::Response, Credential), RegistryError> {
        self.shared().reachable(url)?;
        let challenge = self.challenge(endpoint).await?;
        let mut refreshed = false;
        loop {
            let credential = self
                .credential_for(&challenge, endpoint, access, url)
                .await?;
            counter.fetch_add(1, Ordering::Relaxed);
            let response = with(build(endpoint.http), &credential)
                .send()
                .await
                .map_err(|e| transport_error(operation, url, &e))?;
            if response.status() == StatusCode::UNAUTHORIZED
                && matches!(challenge, Challenge::Bearer { .. })
                && !matches!(endpoint.auth, RegistryAuth::Bearer(_))
                && !refreshed
            {
                refreshed = true;
                self.forget_token(&endpoint.host, &endpoint.repository, access);
                continue;
            }
            return Ok((response, credential));
        }
    }

    async fn digest_from_body(
        &self,
        endpoint: &Endpoint<'_>,
        url: &str,
        credential: &Credential,
    ) -> Result<String, RegistryError> {
        self.counts.manifest_gets.fetch_add(1, Ordering::Relaxed);
        let response = with(endpoint.http.get(url), credential)
            .header(ACCEPT, MANIFEST_MEDIA_TYPES)
            .send()
            .await
            .map_err(|e| transport_error("GET", url, &e))?;
        let status = response.status();
        if !status.is_success() {
            return Err(status_error(
                "GET",
                url,
                status,
                &RegistryAuth::Anonymous,
                "",
            ));
        }
        let header_digest = content_digest(response.headers());
        let body = read_capped(response, MAX_MANIFEST_BYTES, "manifest", url).await?;
        Ok(header_digest.unwrap_or_else(|| super::sha256_digest(&body)))
    }

    /// HEAD answers carry no body; the error code tells a missing tag from a missing
    /// repository, which is what a user needs to know, so read it with a GET.
    async fn not_found(
        &self,
        endpoint: &Endpoint<'_>,
        url: &str,
        credential: &Credential,
    ) -> RegistryError {
        self.counts.manifest_gets.fetch_add(1, Ordering::Relaxed);
        let detail = match with(endpoint.http.get(url), credential)
            .header(ACCEPT, MANIFEST_MEDIA_TYPES)
            .send()
            .await
        {
            Ok(response) => match read_capped(response, MAX_ERROR_BYTES, "error", url).await {
                Ok(body) => error_codes(&body),
                Err(_) => String::new(),
            },
            Err(_) => String::new(),
        };
        // Registries on plain storage answer MANIFEST_UNKNOWN for a repository they never saw,
        // so only NAME_UNKNOWN tells the repository is missing.
        let meaning = if detail.contains("NAME_UNKNOWN") {
            "the repository does not exist"
        } else {
            "the tag (or its repository) does not exist"
        };
        let detail = if detail.is_empty() {
            String::new()
        } else {
            format!(" {detail}:")
        };
        request_error(
            "HEAD",
            url,
            ErrorClass::NotFound,
            format!("404 Not Found:{detail} {meaning}"),
        )
    }
}

fn manifest_url(endpoint: &Endpoint<'_>, target: &str) -> String {
    endpoint.url(&format!("manifests/{target}"))
}

/// `Docker-Content-Digest`, when it is a well-formed sha256 digest.
fn content_digest(headers: &HeaderMap) -> Option<String> {
    let value = headers.get("docker-content-digest")?.to_str().ok()?;
    crate::carvel::imgpkg::digest_reference_problem(&format!("x@{value}"))
        .is_none()
        .then(|| value.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sha256_digest_headers_are_trusted() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "docker-content-digest",
            format!("sha256:{}", "a".repeat(64))
                .parse()
                .expect("header"),
        );
        assert!(content_digest(&headers).is_some());
        headers.insert(
            "docker-content-digest",
            "sha256:short".parse().expect("header"),
        );
        assert!(content_digest(&headers).is_none());
    }
}
