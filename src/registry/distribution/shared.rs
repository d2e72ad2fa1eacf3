//! What lives as long as a [`Registry`](super::Registry): the two HTTP connection pools
//! (plain and TLS, the latter built on first use with the system roots read once per process),
//! the egress policy they resolve through, and the challenges and tokens learned per host.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::OnceCell;

use super::token::{Access, Challenge};
use crate::registry::egress::Egress;
use crate::registry::{RegistryError, RegistryOptions};

type ChallengeCells = Mutex<HashMap<String, Arc<OnceCell<Challenge>>>>;

/// Per local host, whether it speaks only plain HTTP (learned once; see `local.rs`).
type FallbackCells = Mutex<HashMap<String, Arc<OnceCell<bool>>>>;

/// A token, or the token endpoint's refusal of the credentials: kept for the run, so a wrong
/// password costs one refused login per repository, not one per image (registries rate-limit
/// and lock accounts over repeated failures).
type TokenCells =
    Mutex<HashMap<(String, String, Access), Arc<OnceCell<Result<String, RegistryError>>>>>;

/// What lives as long as the [`Registry`]: the HTTP clients and what was learned about hosts.
pub(in crate::registry) struct Shared {
    /// For plain-HTTP hosts: no TLS roots at all, so reaching only those (a local registry)
    /// never reads the system's certificates.
    plain: reqwest::Client,
    /// For HTTPS hosts, built on the first HTTPS request.
    tls: OnceLock<Result<reqwest::Client, String>>,
    ca_pems: Vec<Vec<u8>>,
    read_timeout: std::time::Duration,
    pool_size: usize,
    egress: Egress,
    pub(super) plain_http: HashSet<String>,
    pub(super) fallbacks: FallbackCells,
    pub(super) challenges: ChallengeCells,
    pub(super) tokens: TokenCells,
    /// Requests made by every distribution client of this registry (and of the registries
    /// derived from it with other credentials) that has been dropped.
    pub(super) requests: Arc<AtomicUsize>,
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
    pub(in crate::registry) fn requests(&self) -> usize {
        self.requests.load(Ordering::Relaxed)
    }

    /// The requests counted since the last take, and zero from now on.
    pub(in crate::registry) fn take_requests(&self) -> usize {
        self.requests.swap(0, Ordering::Relaxed)
    }

    pub(in crate::registry) fn new(options: &RegistryOptions) -> Result<Self, RegistryError> {
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
            fallbacks: Mutex::default(),
            challenges: Mutex::default(),
            tokens: Mutex::default(),
            requests: Arc::default(),
        })
    }

    /// The same connections and request count, none of the tokens or challenges: for a
    /// registry with other credentials, whose tokens must never serve this one's requests.
    pub(in crate::registry) fn sibling(&self, options: &RegistryOptions) -> Self {
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
            fallbacks: Mutex::default(),
            challenges: Mutex::default(),
            tokens: Mutex::default(),
            requests: Arc::clone(&self.requests),
        }
    }

    /// Refuses `url` when its host is an address the egress policy denies (names are
    /// checked by the clients' resolver, on what they resolve to).
    pub(super) fn reachable(&self, url: &str) -> Result<(), RegistryError> {
        let Ok(parsed) = reqwest::Url::parse(url) else {
            return Ok(());
        };
        self.egress
            .check_url(&parsed)
            .map_err(RegistryError::Denied)
    }

    /// The client for `host`'s scheme.
    pub(super) fn http(&self, plain: bool) -> Result<&reqwest::Client, RegistryError> {
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
