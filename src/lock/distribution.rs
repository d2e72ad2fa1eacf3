//! Manifest digests over the OCI distribution API, at one request per reference.
//!
//! oci-client's `fetch_manifest_digest` pings `/v2/` before every request to a registry that
//! needs no token (it caches tokens, not the absence of one) and falls back to a GET after a
//! 404. Locking is nothing but digest lookups, so this client is built for exactly that:
//!
//! - one `/v2/` ping per host, shared by all concurrent lookups, to learn its challenge;
//! - one bearer token per (host, repository), shared likewise; basic credentials sent
//!   up front once the host is known to ask for them;
//! - then a single `HEAD …/manifests/<tag>` accepting Docker v2, OCI manifest, Docker
//!   manifest list and OCI index, so a multi-platform tag yields the index digest as kbld's;
//! - a GET only when a registry answers HEAD without `Docker-Content-Digest` (the digest is
//!   then computed from the body), or to read the error code after a 404.
//!
//! TLS, plain-HTTP hosts, CAs, credentials and mirrors come from [`Registry`]'s options, so
//! this behaves like the shared registry client in every respect but the request count.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use oci_client::secrets::RegistryAuth;
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, HeaderMap, WWW_AUTHENTICATE};
use sha2::{Digest as _, Sha256};
use tokio::sync::OnceCell;

use crate::registry::{ErrorClass, Reference, Registry, RegistryError};

const MANIFEST_MEDIA_TYPES: &str = "application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json";

/// Requests made, by kind, for reporting and for the benchmark's requests-per-reference.
#[derive(Debug, Default)]
pub struct RequestCounts {
    pub pings: AtomicUsize,
    pub tokens: AtomicUsize,
    pub manifest_heads: AtomicUsize,
    pub manifest_gets: AtomicUsize,
}

/// A snapshot of [`RequestCounts`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestStats {
    pub pings: usize,
    pub tokens: usize,
    pub manifest_heads: usize,
    pub manifest_gets: usize,
}

impl RequestStats {
    pub fn total(&self) -> usize {
        self.pings + self.tokens + self.manifest_heads + self.manifest_gets
    }

    pub fn manifest_requests(&self) -> usize {
        self.manifest_heads + self.manifest_gets
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

type Shared<T> = Mutex<HashMap<T, Arc<OnceCell<Challenge>>>>;
type TokenCells = Mutex<HashMap<(String, String), Arc<OnceCell<String>>>>;

pub struct ManifestClient<'r> {
    registry: &'r Registry,
    http: reqwest::Client,
    plain_http: HashSet<String>,
    challenges: Shared<String>,
    tokens: TokenCells,
    counts: RequestCounts,
}

impl<'r> ManifestClient<'r> {
    pub fn new(registry: &'r Registry) -> Result<Self, RegistryError> {
        let options = registry.options();
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("packsmith/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(std::time::Duration::from_secs(10))
            .read_timeout(
                options
                    .read_timeout
                    .unwrap_or(std::time::Duration::from_secs(60)),
            )
            .pool_max_idle_per_host(registry.concurrency());
        for pem in &options.ca_pems {
            let certificates = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| RegistryError::Config(format!("reading a CA bundle: {e}")))?;
            builder = builder.tls_certs_merge(certificates);
        }
        let http = builder
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
        Ok(ManifestClient {
            registry,
            http,
            plain_http,
            challenges: Mutex::default(),
            tokens: Mutex::default(),
            counts: RequestCounts::default(),
        })
    }

    pub fn stats(&self) -> RequestStats {
        RequestStats {
            pings: self.counts.pings.load(Ordering::Relaxed),
            tokens: self.counts.tokens.load(Ordering::Relaxed),
            manifest_heads: self.counts.manifest_heads.load(Ordering::Relaxed),
            manifest_gets: self.counts.manifest_gets.load(Ordering::Relaxed),
        }
    }

    /// The digest of the manifest `reference` names, asked of the registry that answers for
    /// it (its mirror, if one is configured). Errors name the URL contacted.
    pub async fn digest(&self, reference: &Reference) -> Result<String, RegistryError> {
        let contacted = self.registry.contact(reference);
        let auth = self.registry.auth(&contacted);
        let host = contacted.resolve_registry().to_owned();
        let base = format!("{}://{host}", self.scheme(&host));
        let target = contacted.digest().or(contacted.tag()).unwrap_or("latest");
        let url = format!("{base}/v2/{}/manifests/{target}", contacted.repository());

        let challenge = self.challenge(&host, &base).await?;
        let mut refreshed = false;
        loop {
            let credential = self
                .credential(&challenge, &host, contacted.repository(), &auth, &url)
                .await?;
            self.counts.manifest_heads.fetch_add(1, Ordering::Relaxed);
            let response = with(self.http.head(&url), &credential)
                .header(ACCEPT, MANIFEST_MEDIA_TYPES)
                .send()
                .await
                .map_err(|e| transport_error("HEAD", &url, &e))?;
            let status = response.status();
            if status.is_success() {
                if let Some(digest) = content_digest(response.headers()) {
                    return Ok(digest);
                }
                return self.digest_from_body(&url, &credential).await;
            }
            // A bearer token can expire between lookups of a long run: fetch one more once.
            if status == StatusCode::UNAUTHORIZED
                && matches!(challenge, Challenge::Bearer { .. })
                && !refreshed
            {
                refreshed = true;
                self.forget_token(&host, contacted.repository());
                continue;
            }
            if status == StatusCode::NOT_FOUND {
                return Err(self.not_found(&url, &credential).await);
            }
            return Err(status_error("HEAD", &url, status, &auth, ""));
        }
    }

    fn scheme(&self, host: &str) -> &'static str {
        if self.plain_http.contains(host) {
            "http"
        } else {
            "https"
        }
    }

    async fn challenge(&self, host: &str, base: &str) -> Result<Challenge, RegistryError> {
        let cell = {
            let mut cells = self
                .challenges
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            Arc::clone(cells.entry(host.to_owned()).or_default())
        };
        // A failed ping leaves the cell empty, so a retry pings again.
        cell.get_or_try_init(|| self.ping(base)).await.cloned()
    }

    async fn ping(&self, base: &str) -> Result<Challenge, RegistryError> {
        let url = format!("{base}/v2/");
        self.counts.pings.fetch_add(1, Ordering::Relaxed);
        let response = self
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

    /// What to send for `repository`: nothing, basic credentials, or a bearer token.
    async fn credential(
        &self,
        challenge: &Challenge,
        host: &str,
        repository: &str,
        auth: &RegistryAuth,
        url: &str,
    ) -> Result<Credential, RegistryError> {
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
                        .tokens
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    Arc::clone(
                        cells
                            .entry((host.to_owned(), repository.to_owned()))
                            .or_default(),
                    )
                };
                let token = cell
                    .get_or_try_init(|| {
                        self.fetch_token(realm, service.as_deref(), repository, auth)
                    })
                    .await?;
                Ok(Credential::Bearer(token.clone()))
            }
        }
    }

    fn forget_token(&self, host: &str, repository: &str) {
        self.tokens
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&(host.to_owned(), repository.to_owned()));
    }

    async fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        repository: &str,
        auth: &RegistryAuth,
    ) -> Result<String, RegistryError> {
        let scope = format!("repository:{repository}:pull");
        let mut query = vec![("scope", scope.as_str())];
        if let Some(service) = service {
            query.push(("service", service));
        }
        let mut request = self.http.get(realm).query(&query);
        if let RegistryAuth::Basic(user, password) = auth {
            request = request.basic_auth(user, Some(password));
        }
        self.counts.tokens.fetch_add(1, Ordering::Relaxed);
        let response = request
            .send()
            .await
            .map_err(|e| transport_error("GET", realm, &e))?;
        let status = response.status();
        if !status.is_success() {
            return Err(status_error("GET", realm, status, auth, "(token endpoint)"));
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| transport_error("GET", realm, &e))?;
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
        url: &str,
        credential: &Credential,
    ) -> Result<String, RegistryError> {
        self.counts.manifest_gets.fetch_add(1, Ordering::Relaxed);
        let response = with(self.http.get(url), credential)
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
        let body = response
            .bytes()
            .await
            .map_err(|e| transport_error("GET", url, &e))?;
        Ok(header_digest.unwrap_or_else(|| {
            let hex: String = Sha256::digest(&body)
                .iter()
                .map(|byte| format!("{byte:02x}"))
                .collect();
            format!("sha256:{hex}")
        }))
    }

    /// HEAD answers carry no body; the error code tells a missing tag from a missing
    /// repository, which is what a user needs to know, so read it with a GET.
    async fn not_found(&self, url: &str, credential: &Credential) -> RegistryError {
        self.counts.manifest_gets.fetch_add(1, Ordering::Relaxed);
        let detail = match with(self.http.get(url), credential)
            .header(ACCEPT, MANIFEST_MEDIA_TYPES)
            .send()
            .await
        {
            Ok(response) => match response.bytes().await {
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

enum Credential {
    None,
    Basic(String, String),
    Bearer(String),
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
}
