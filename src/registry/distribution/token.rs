//! Authentication against a registry: the `/v2/` challenge (one ping per host), basic
//! credentials, and bearer tokens per (host, repository, access), shared by every request of
//! the run. Credentials never leave their origin, and go over plain HTTP only to loopback.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use reqwest::StatusCode;
use reqwest::header::WWW_AUTHENTICATE;

use super::errors::{read_capped, request_error, status_error, transport_error};
use super::{DistributionClient, Endpoint, MAX_TOKEN_BYTES};
use crate::registry::{ErrorClass, RegistryAuth, RegistryError};

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
pub(super) enum Challenge {
    None,
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

pub(super) enum Credential {
    None,
    Basic(String, String),
    Bearer(String),
}

impl DistributionClient<'_> {
    pub(super) async fn credential(
        &self,
        endpoint: &Endpoint<'_>,
        access: Access,
        url: &str,
    ) -> Result<Credential, RegistryError> {
        let challenge = self.challenge(endpoint).await?;
        self.credential_for(&challenge, endpoint, access, url).await
    }

    pub(super) async fn challenge(
        &self,
        endpoint: &Endpoint<'_>,
    ) -> Result<Challenge, RegistryError> {
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

    /// Remembers what a probe of `host`'s API root showed, so that its first request needs no
    /// ping of its own.
    pub(super) fn learn_challenge(&self, host: &str, response: &reqwest::Response) {
        let Some(challenge) = challenge_of(response) else {
            return;
        };
        let mut cells = self
            .shared()
            .challenges
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let _ = cells.entry(host.to_owned()).or_default().set(challenge);
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
        if let Some(challenge) = challenge_of(&response) {
            return Ok(challenge);
        }
        let status = response.status();
        Err(status_error(
            "GET",
            &url,
            status,
            &RegistryAuth::Anonymous,
            "(the registry's API root)",
        ))
    }

    /// What to send for a request: nothing, basic credentials, or a bearer token.
    pub(super) async fn credential_for(
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

    pub(super) fn forget_token(&self, host: &str, repository: &str, access: Access) {
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
}

/// Whether `a` and `b` have the same scheme, host and port.
pub(super) fn same_origin(a: &str, b: &str) -> bool {
    match (reqwest::Url::parse(a), reqwest::Url::parse(b)) {
        (Ok(a), Ok(b)) => {
            a.scheme() == b.scheme()
                && a.host_str() == b.host_str()
                && a.port_or_known_default() == b.port_or_known_default()
        }
        _ => false,
    }
}

/// What an answer of `/v2/` says about authentication: none needed (2xx), or the challenge
/// of a 401; `None` for any other answer.
fn challenge_of(response: &reqwest::Response) -> Option<Challenge> {
    let status = response.status();
    if status.is_success() {
        return Some(Challenge::None);
    }
    if status == StatusCode::UNAUTHORIZED {
        return response
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_challenge);
    }
    None
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

pub(super) fn with(
    request: reqwest::RequestBuilder,
    credential: &Credential,
) -> reqwest::RequestBuilder {
    match credential {
        Credential::None => request,
        Credential::Basic(user, password) => request.basic_auth(user, Some(password)),
        Credential::Bearer(token) => request.bearer_auth(token),
    }
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
