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

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderMap, LOCATION, WWW_AUTHENTICATE};
use sha2::{Digest as _, Sha256};
use tokio::sync::OnceCell;

use super::egress::{Denied, Egress};
use super::{ErrorClass, Reference, Registry, RegistryAuth, RegistryError, RegistryOptions};

const MANIFEST_MEDIA_TYPES: &str = "application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json";

/// Requests made, by kind, for reporting and for the benchmark's requests-per-reference.
#[derive(Debug, Default)]
pub(super) struct RequestCounts {
    pub pings: AtomicUsize,
    pub tokens: AtomicUsize,
    pub manifest_heads: AtomicUsize,
    pub manifest_gets: AtomicUsize,
    pub manifest_puts: AtomicUsize,
    pub blob_heads: AtomicUsize,
    pub blob_gets: AtomicUsize,
    pub tag_lists: AtomicUsize,
    /// Upload sessions started (each is a POST and a PUT).
    pub blob_uploads: AtomicUsize,
}

/// A snapshot of [`RequestCounts`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestStats {
    pub pings: usize,
    pub tokens: usize,
    pub manifest_heads: usize,
    pub manifest_gets: usize,
    pub manifest_puts: usize,
    pub blob_heads: usize,
    pub blob_gets: usize,
    pub tag_lists: usize,
    pub blob_uploads: usize,
}

impl RequestStats {
    /// HTTP requests made; an upload counts twice (POST and PUT).
    pub fn total(&self) -> usize {
        self.pings
            + self.tokens
            + self.manifest_requests()
            + self.manifest_puts
            + self.blob_heads
            + self.blob_gets
            + self.tag_lists
            + 2 * self.blob_uploads
    }

    pub fn manifest_requests(&self) -> usize {
        self.manifest_heads + self.manifest_gets
    }
}

/// What a request needs the right to do; bearer tokens are scoped by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Access {
    Pull,
    Push,
}

impl Access {
    fn scope_actions(self) -> &'static str {
        match self {
            Access::Pull => "pull",
            Access::Push => "pull,push",
        }
    }
}

/// How a registry host wants to be authenticated (from its `/v2/` answer).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Challenge {
    None,
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

type ChallengeCells = Mutex<HashMap<String, Arc<OnceCell<Challenge>>>>;
/// A token, or the token endpoint's refusal of the credentials: kept for the run, so a wrong
/// password costs one refused login per repository, not one per image (registries rate-limit
/// and lock accounts over repeated failures).
type TokenCells =
    Mutex<HashMap<(String, String, Access), Arc<OnceCell<Result<String, RegistryError>>>>>;

/// What lives as long as the [`Registry`]: the HTTP clients and what was learned about hosts.
pub(super) struct Shared {
    /// For plain-HTTP hosts: no TLS roots at all, so reaching only those (a local registry)
    /// never reads the system's certificates.
    plain: reqwest::Client,
    /// For HTTPS hosts, built on the first HTTPS request.
    tls: OnceLock<Result<reqwest::Client, String>>,
    ca_pems: Vec<Vec<u8>>,
    read_timeout: std::time::Duration,
    pool_size: usize,
    egress: Egress,
    plain_http: HashSet<String>,
    challenges: ChallengeCells,
    tokens: TokenCells,
    /// Requests made by every distribution client of this registry (and of the registries
    /// derived from it with other credentials) that has been dropped.
    requests: Arc<AtomicUsize>,
}

/// The system's root certificates, read once per process: every client build would otherwise
/// read and parse the whole of /etc/ssl/certs again (a few ms each, every reconcile).
fn system_roots() -> &'static [reqwest::Certificate] {
    static ROOTS: OnceLock<Vec<reqwest::Certificate>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let loaded = rustls_native_certs::load_native_certs();
        for error in &loaded.errors {
            tracing::warn!(%error, "loading a system CA certificate");
        }
        loaded
            .certs
            .iter()
            .filter_map(|der| reqwest::Certificate::from_der(der.as_ref()).ok())
            .collect()
    })
}

impl Shared {
    /// Requests made through clients already dropped.
    pub(super) fn requests(&self) -> usize {
        self.requests.load(Ordering::Relaxed)
    }

    pub(super) fn new(options: &RegistryOptions) -> Result<Self, RegistryError> {
        // Parse the user's CAs now, so a bad bundle is a configuration error up front.
        for pem in &options.ca_pems {
            reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| RegistryError::Config(format!("reading a CA bundle: {e}")))?;
        }
        let read_timeout = options
            .read_timeout
            .unwrap_or(std::time::Duration::from_secs(60));
        let pool_size = options.concurrency();
        let plain = client_builder(read_timeout, pool_size, &options.egress)
            .tls_certs_only(Vec::new())
            .build()
            .map_err(|e| RegistryError::Config(format!("building the HTTP client: {e}")))?;
        let mut plain_http: HashSet<String> = options.insecure_hosts.iter().cloned().collect();
        plain_http.extend(
            options
                .mirrors
                .iter()
                .filter(|m| m.insecure)
                .map(|m| m.host().to_owned()),
        );
        Ok(Shared {
            plain,
            tls: OnceLock::new(),
            ca_pems: options.ca_pems.clone(),
            read_timeout,
            pool_size,
            egress: options.egress.clone(),
            plain_http,
            challenges: Mutex::default(),
            tokens: Mutex::default(),
            requests: Arc::default(),
        })
    }

    /// The same connections and request count, none of the tokens or challenges: for a
    /// registry with other credentials, whose tokens must never serve this one's requests.
    pub(super) fn sibling(&self, options: &RegistryOptions) -> Self {
        let mut plain_http: HashSet<String> = options.insecure_hosts.iter().cloned().collect();
        plain_http.extend(
            options
                .mirrors
                .iter()
                .filter(|m| m.insecure)
                .map(|m| m.host().to_owned()),
        );
        let tls = OnceLock::new();
        if let Some(built) = self.tls.get() {
            let _ = tls.set(built.clone());
        }
        Shared {
            plain: self.plain.clone(),
            tls,
            ca_pems: self.ca_pems.clone(),
            read_timeout: self.read_timeout,
            pool_size: self.pool_size,
            // The same clients, so the same resolver: the policy is the process's.
            egress: self.egress.clone(),
            plain_http,
            challenges: Mutex::default(),
            tokens: Mutex::default(),
            requests: Arc::clone(&self.requests),
        }
    }

    /// Refuses `url` when its host is an address the egress policy denies (names are
    /// checked by the clients' resolver, on what they resolve to).
    fn reachable(&self, url: &str) -> Result<(), RegistryError> {
        let Ok(parsed) = reqwest::Url::parse(url) else {
            return Ok(());
        };
        self.egress
            .check_url(&parsed)
            .map_err(RegistryError::Denied)
    }

    /// The client for `host`'s scheme.
    fn http(&self, plain: bool) -> Result<&reqwest::Client, RegistryError> {
        if plain {
            return Ok(&self.plain);
        }
        self.tls
            .get_or_init(|| {
                let mut roots: Vec<reqwest::Certificate> = system_roots().to_vec();
                for pem in &self.ca_pems {
                    roots.extend(
                        reqwest::Certificate::from_pem_bundle(pem).map_err(|e| e.to_string())?,
                    );
                }
                client_builder(self.read_timeout, self.pool_size, &self.egress)
                    // The system's roots plus the user's, verified by webpki as the platform
                    // verifier does on Linux, without reading the system store again.
                    .tls_certs_only(roots)
                    .build()
                    .map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|e| RegistryError::Config(format!("building the HTTPS client: {e}")))
    }
}

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
/// An error body is read only for its codes.
const MAX_ERROR_BYTES: u64 = 64 << 10;

/// The body of `response`, refused once it passes `limit` bytes (by its Content-Length up
/// front, or while it streams in when the length is absent or lies).
async fn read_capped(
    mut response: reqwest::Response,
    limit: u64,
    what: &'static str,
    url: &str,
) -> Result<Bytes, RegistryError> {
    let too_large = || RegistryError::TooLarge {
        what,
        url: url.to_owned(),
        limit,
    };
    if response.content_length().is_some_and(|len| len > limit) {
        return Err(too_large());
    }
    let mut body = Vec::with_capacity(
        response
            .content_length()
            .map_or(0, |len| usize::try_from(len).unwrap_or(0)),
    );
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| transport_error("GET", url, &e))?
    {
        if body.len() as u64 + chunk.len() as u64 > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(body))
}

#[expect(
    clippy::disallowed_methods,
    reason = "the registry client: every registry request goes through these two pools"
)]
fn client_builder(
    read_timeout: std::time::Duration,
    pool_size: usize,
    egress: &Egress,
) -> reqwest::ClientBuilder {
    let builder = reqwest::Client::builder()
        .user_agent(concat!("packsmith/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(std::time::Duration::from_secs(10))
        .read_timeout(read_timeout)
        .pool_max_idle_per_host(pool_size);
    if egress.is_active() {
        builder
            .dns_resolver(egress.resolver())
            .redirect(egress.redirect_policy(10))
    } else {
        builder
    }
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

enum Credential {
    None,
    Basic(String, String),
    Bearer(String),
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

    fn endpoint(&self, contacted: &Reference) -> Result<Endpoint<'r>, RegistryError> {
        let host = contacted.resolve_registry().to_owned();
        let plain = self.shared().plain_http.contains(&host);
        let scheme = if plain { "http" } else { "https" };
        Ok(Endpoint {
            http: self.shared().http(plain)?,
            base: format!("{scheme}://{host}"),
            auth: self.registry.auth(contacted),
            repository: contacted.repository().to_owned(),
            host,
        })
    }

    /// The digest of the manifest `reference` names, asked of the registry that answers for
    /// it (its mirror, if one is configured). Errors name the URL contacted.
    pub async fn digest(&self, reference: &Reference) -> Result<String, RegistryError> {
        let contacted = self.registry.contact(reference);
        let target = contacted.digest().or(contacted.tag()).unwrap_or("latest");
        match self.manifest_digest_at(&contacted, target).await? {
            Some(digest) => Ok(digest),
            None => {
                let endpoint = self.endpoint(&contacted)?;
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
        let endpoint = self.endpoint(repository)?;
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
        let endpoint = self.endpoint(repository)?;
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
        let endpoint = self.endpoint(repository)?;
        let url = endpoint.url("blobs/uploads/");
        let (response, credential) = self
            .send(
                &endpoint,
                Access::Push,
                "POST",
                &url,
                &self.counts.blob_uploads,
                |http| http.post(&url).header(reqwest::header::CONTENT_LENGTH, 0),
            )
            .await?;
        let status = response.status();
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
        let length = data.len();
        let response = with(
            endpoint
                .http
                .put(&upload)
                .query(&[("digest", digest)])
                .header(CONTENT_TYPE, "application/octet-stream")
                .header(reqwest::header::CONTENT_LENGTH, length),
            &credential,
        )
        .body(data)
        .send()
        .await
        .map_err(|e| transport_error("PUT", &url, &e))?;
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

    /// Writes `manifest` as `repository:target`.
    pub async fn put_manifest(
        &self,
        repository: &Reference,
        target: &str,
        media_type: &str,
        manifest: Bytes,
    ) -> Result<(), RegistryError> {
        let endpoint = self.endpoint(repository)?;
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

    /// The manifest `repository:target`, as bytes, accepting `media_types`.
    pub async fn get_manifest(
        &self,
        repository: &Reference,
        target: &str,
        media_types: &[&str],
    ) -> Result<Bytes, RegistryError> {
        let endpoint = self.endpoint(repository)?;
        let url = manifest_url(&endpoint, target);
        let accept = media_types.join(", ");
        let (response, credential) = self
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
            drop(response);
            return Err(self.not_found(&endpoint, &url, &credential).await);
        }
        if !status.is_success() {
            return Err(status_error("GET", &url, status, &endpoint.auth, ""));
        }
        read_capped(response, MAX_MANIFEST_BYTES, "manifest", &url).await
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
        let endpoint = self.endpoint(repository)?;
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
        let endpoint = self.endpoint(repository)?;
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
        let endpoint = self.endpoint(repository)?;
        // The digest comes from a manifest, so from the registry: checked before it becomes
        // part of a URL.
        if !super::is_sha256_digest(digest) {
            return Err(RegistryError::InvalidReference {
                reference: digest.to_owned(),
                reason: "a blob digest must be sha256: and 64 lowercase hex digits".to_owned(),
            });
        }
        let url = endpoint.url(&format!("blobs/{digest}"));
        let (mut response, _) = self
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

    async fn credential(
        &self,
        endpoint: &Endpoint<'_>,
        access: Access,
        url: &str,
    ) -> Result<Credential, RegistryError> {
        let challenge = self.challenge(endpoint).await?;
        self.credential_for(&challenge, endpoint, access, url).await
    }

    async fn challenge(&self, endpoint: &Endpoint<'_>) -> Result<Challenge, RegistryError> {
        let cell = {
            let mut cells = self
                .shared()
                .challenges
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            Arc::clone(cells.entry(endpoint.host.clone()).or_default())
        };
        // A failed ping leaves the cell empty, so a retry pings again.
        cell.get_or_try_init(|| self.ping(endpoint)).await.cloned()
    }

    async fn ping(&self, endpoint: &Endpoint<'_>) -> Result<Challenge, RegistryError> {
        let url = format!("{}/v2/", endpoint.base);
        self.shared().reachable(&url)?;
        self.counts.pings.fetch_add(1, Ordering::Relaxed);
        let response = endpoint
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| transport_error("GET", &url, &e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(Challenge::None);
        }
        if status == StatusCode::UNAUTHORIZED
            && let Some(challenge) = response
                .headers()
                .get(WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_challenge)
        {
            return Ok(challenge);
        }
        Err(status_error(
            "GET",
            &url,
            status,
            &RegistryAuth::Anonymous,
            "(the registry's API root)",
        ))
    }

    /// What to send for a request: nothing, basic credentials, or a bearer token.
    async fn credential_for(
        &self,
        challenge: &Challenge,
        endpoint: &Endpoint<'_>,
        access: Access,
        url: &str,
    ) -> Result<Credential, RegistryError> {
        let auth = &endpoint.auth;
        match (challenge, auth) {
            (Challenge::None, _) => Ok(Credential::None),
            (Challenge::Basic, RegistryAuth::Basic(user, password)) => {
                Ok(Credential::Basic(user.clone(), password.clone()))
            }
            (Challenge::Basic, _) => Err(status_error(
                "HEAD",
                url,
                StatusCode::UNAUTHORIZED,
                auth,
                "(the registry asks for basic credentials)",
            )),
            (Challenge::Bearer { .. }, RegistryAuth::Bearer(token)) => {
                Ok(Credential::Bearer(token.clone()))
            }
            (Challenge::Bearer { realm, service }, _) => {
                let cell = {
                    let mut cells = self
                        .shared()
                        .tokens
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    Arc::clone(
                        cells
                            .entry((endpoint.host.clone(), endpoint.repository.clone(), access))
                            .or_default(),
                    )
                };
                let token = cell
                    .get_or_try_init(|| async {
                        match self
                            .fetch_token(
                                realm,
                                service.as_deref(),
                                &endpoint.repository,
                                access,
                                auth,
                                &endpoint.host,
                            )
                            .await
                        {
                            Ok(token) => Ok(Ok(token)),
                            Err(e) if e.class() == ErrorClass::Auth => Ok(Err(e)),
                            // Transient: the next request may ask again.
                            Err(e) => Err(e),
                        }
                    })
                    .await?;
                Ok(Credential::Bearer(token.clone()?))
            }
        }
    }

    fn forget_token(&self, host: &str, repository: &str, access: Access) {
        self.shared()
            .tokens
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&(host.to_owned(), repository.to_owned(), access));
    }

    async fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        repository: &str,
        access: Access,
        auth: &RegistryAuth,
        registry: &str,
    ) -> Result<String, RegistryError> {
        let scope = format!("repository:{repository}:{}", access.scope_actions());
        let mut query = vec![("scope", scope.as_str())];
        if let Some(service) = service {
            query.push(("service", service));
        }
        self.shared().reachable(realm)?;
        let http = self.shared().http(realm.starts_with("http://"))?;
        let mut request = http.get(realm).query(&query);
        if let RegistryAuth::Basic(user, password) = auth {
            // A password goes to a token realm over HTTPS only (the realm may well be another
            // host: Docker Hub's is auth.docker.io), or over plain HTTP to a loopback realm.
            if !may_carry_credentials(realm) {
                return Err(request_error(
                    "GET",
                    realm,
                    ErrorClass::Auth,
                    format!(
                        "registry {registry} sends its token requests to {realm} over plain \
                         HTTP; packsmith sends credentials only over HTTPS (or to loopback)"
                    ),
                ));
            }
            request = request.basic_auth(user, Some(password));
        }
        self.counts.tokens.fetch_add(1, Ordering::Relaxed);
        let response = request
            .send()
            .await
            .map_err(|e| transport_error("GET", realm, &e))?;
        let status = response.status();
        if !status.is_success() {
            // Named after the registry too: credentials are looked up by the registry's host,
            // not the token server's.
            return Err(status_error(
                "GET",
                realm,
                status,
                auth,
                &format!("(token endpoint of registry {registry})"),
            ));
        }
        let body = read_capped(response, MAX_TOKEN_BYTES, "token response", realm).await?;
        #[derive(serde::Deserialize)]
        struct TokenResponse {
            #[serde(default)]
            token: String,
            #[serde(default)]
            access_token: String,
        }
        let parsed: TokenResponse = serde_json::from_slice(&body).map_err(|e| {
            request_error(
                "GET",
                realm,
                ErrorClass::Permanent,
                format!("token response: {e}"),
            )
        })?;
        let token = if parsed.token.is_empty() {
            parsed.access_token
        } else {
            parsed.token
        };
        if token.is_empty() {
            return Err(request_error(
                "GET",
                realm,
                ErrorClass::Auth,
                "the token endpoint returned no token".to_owned(),
            ));
        }
        Ok(token)
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

/// Whether `a` and `b` have the same scheme, host and port.
fn same_origin(a: &str, b: &str) -> bool {
    match (reqwest::Url::parse(a), reqwest::Url::parse(b)) {
        (Ok(a), Ok(b)) => {
            a.scheme() == b.scheme()
                && a.host_str() == b.host_str()
                && a.port_or_known_default() == b.port_or_known_default()
        }
        _ => false,
    }
}

/// Whether credentials may be sent to `url`: HTTPS, or plain HTTP to a loopback host (the
/// local-registry convention of imgpkg, crane and kind).
fn may_carry_credentials(url: &str) -> bool {
    let Ok(url) = reqwest::Url::parse(url) else {
        return false;
    };
    match url.scheme() {
        "https" => true,
        "http" => url.host_str().is_some_and(|host| {
            let host = host.trim_start_matches('[').trim_end_matches(']');
            host == "localhost"
                || host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }),
        _ => false,
    }
}

fn with(request: reqwest::RequestBuilder, credential: &Credential) -> reqwest::RequestBuilder {
    match credential {
        Credential::None => request,
        Credential::Basic(user, password) => request.basic_auth(user, Some(password)),
        Credential::Bearer(token) => request.bearer_auth(token),
    }
}

/// `Docker-Content-Digest`, when it is a well-formed sha256 digest.
fn content_digest(headers: &HeaderMap) -> Option<String> {
    let value = headers.get("docker-content-digest")?.to_str().ok()?;
    crate::carvel::imgpkg::digest_reference_problem(&format!("x@{value}"))
        .is_none()
        .then(|| value.to_owned())
}

/// `errors[].code: message` of a distribution error body.
fn error_codes(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Envelope {
        #[serde(default)]
        errors: Vec<Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    serde_json::from_slice::<Envelope>(body)
        .map(|envelope| {
            envelope
                .errors
                .iter()
                .map(|e| format!("{} ({})", e.code, e.message))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

fn request_error(
    operation: &'static str,
    url: &str,
    class: ErrorClass,
    message: String,
) -> RegistryError {
    RegistryError::Request {
        operation,
        reference: url.to_owned(),
        class,
        message,
    }
}

fn status_error(
    operation: &'static str,
    url: &str,
    status: StatusCode,
    auth: &RegistryAuth,
    context: &str,
) -> RegistryError {
    let class = match status.as_u16() {
        401 | 403 => ErrorClass::Auth,
        404 => ErrorClass::NotFound,
        408 | 429 | 500..=599 => ErrorClass::Retryable,
        _ => ErrorClass::Permanent,
    };
    let hint = match (class, auth) {
        (ErrorClass::Auth, RegistryAuth::Anonymous) => {
            "; no credentials are configured for this host (docker config.json or a \
             dockerconfigjson Secret)"
        }
        (ErrorClass::Auth, _) => "; the configured credentials were refused",
        _ => "",
    };
    let context = if context.is_empty() {
        String::new()
    } else {
        format!(" {context}")
    };
    request_error(operation, url, class, format!("{status}{context}{hint}"))
}

fn transport_error(operation: &'static str, url: &str, error: &reqwest::Error) -> RegistryError {
    if let Some(denied) = denied(error) {
        // The egress policy: retrying reaches the same address.
        return RegistryError::Denied(denied);
    }
    // reqwest keeps the useful part ("Connection refused") in the source chain.
    let mut message = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    let class = if error.is_timeout() || error.is_connect() || error.is_request() || error.is_body()
    {
        ErrorClass::Retryable
    } else {
        ErrorClass::Permanent
    };
    request_error(operation, url, class, message)
}

/// The egress policy's refusal of the connection, when that is what failed (it is in the
/// source chain, from the resolver or the redirect policy).
pub(super) fn denied(error: &reqwest::Error) -> Option<Denied> {
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if let Some(denied) = cause.downcast_ref::<Denied>() {
            return Some(denied.clone());
        }
        source = cause.source();
    }
    None
}

/// Parses `WWW-Authenticate: Bearer realm="…",service="…"` or `Basic realm="…"`.
fn parse_challenge(header: &str) -> Option<Challenge> {
    let (scheme, rest) = header.trim().split_once(' ').unwrap_or((header.trim(), ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let params = parse_params(rest);
    let realm = params.get("realm")?.clone();
    Some(Challenge::Bearer {
        realm,
        service: params.get("service").cloned(),
    })
}

/// `key=value` or `key="quoted, \"escaped\""` pairs separated by commas.
fn parse_params(text: &str) -> HashMap<String, String> {
    let mut params = HashMap::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace() || *c == ',').is_some() {}
        let key: String =
            std::iter::from_fn(|| chars.next_if(|c| *c != '=' && *c != ',')).collect();
        if key.is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.next_if_eq(&'=').is_some() {
            if chars.next_if_eq(&'"').is_some() {
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => value.extend(chars.next()),
                        '"' => break,
                        c => value.push(c),
                    }
                }
            } else {
                value = std::iter::from_fn(|| chars.next_if(|c| *c != ',')).collect();
            }
        }
        params.insert(key.trim().to_ascii_lowercase(), value.trim().to_owned());
    }
    params
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse() {
        assert_eq!(
            parse_challenge(
                "Bearer realm=\"https://auth.docker.io/token\",service=\"registry.docker.io\",scope=\"repository:library/nginx:pull\""
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".to_owned(),
                service: Some("registry.docker.io".to_owned()),
            })
        );
        assert_eq!(
            parse_challenge("bearer realm=https://r.io/t, service=\"a,\\\"b\""),
            Some(Challenge::Bearer {
                realm: "https://r.io/t".to_owned(),
                service: Some("a,\"b".to_owned()),
            })
        );
        assert_eq!(parse_challenge("Basic realm=\"r\""), Some(Challenge::Basic));
        assert_eq!(parse_challenge("Negotiate"), None);
        assert_eq!(parse_challenge("Bearer service=\"x\""), None);
    }

    #[test]
    fn error_bodies_name_their_codes() {
        let body = br#"{"errors":[{"code":"NAME_UNKNOWN","message":"repository name not known to registry","detail":{}}]}"#;
        assert_eq!(
            error_codes(body),
            "NAME_UNKNOWN (repository name not known to registry)"
        );
        assert_eq!(error_codes(b"not json"), "");
    }

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

    #[test]
    fn credentials_stay_with_their_origin_and_off_plain_http() {
        assert!(same_origin(
            "https://r.io/v2/x/blobs/uploads/1",
            "https://r.io"
        ));
        assert!(same_origin("https://r.io:443/a", "https://r.io/b"));
        assert!(!same_origin(
            "https://storage.example.com/u",
            "https://r.io"
        ));
        assert!(!same_origin("http://r.io/u", "https://r.io"));
        assert!(!same_origin("https://r.io:5000/u", "https://r.io"));
        assert!(may_carry_credentials("https://auth.docker.io/token"));
        assert!(may_carry_credentials("http://127.0.0.1:5001/token"));
        assert!(may_carry_credentials("http://localhost/token"));
        assert!(may_carry_credentials("http://[::1]:80/token"));
        assert!(!may_carry_credentials("http://auth.example.com/token"));
        assert!(!may_carry_credentials("http://10.0.0.1/token"));
        assert!(!may_carry_credentials("ftp://127.0.0.1/token"));
    }
}
