//! Registry access shared by every stage that talks to an OCI registry (lock, push, pull, sync
//! of image sources): one client per run so connections, challenges and bearer tokens are
//! reused, credentials from docker config files or dockerconfigjson Secrets, per-host plain
//! HTTP and CA bundles, and registry mirrors that answer for other hosts.
//!
//! Every request goes through [`DistributionClient`] (one ping per host, shared tokens, one
//! monolithic upload per blob), so [`Registry::requests_made`] counts them all.

mod auth;
pub mod cosign;
mod digest;
mod distribution;
mod egress;
mod error;
mod helper;
mod local;
mod mirror;
mod reference;

use std::time::Duration;

pub use oci_spec::distribution::Reference;

pub use auth::{Credentials, RegistryAuth};
pub use digest::{digest_string, is_sha256_digest, sha256_digest, verified};
pub use egress::{Denied as EgressDenied, Egress};

/// The egress policy's refusal behind a failed request of any HTTP client, if that is what
/// failed.
pub fn egress_denied(error: &reqwest::Error) -> Option<EgressDenied> {
    distribution::denied(error)
}
pub use distribution::{DistributionClient, ManifestClient, RequestStats, Upload};
pub use error::{ErrorClass, RegistryError};
pub use mirror::Mirror;
pub use reference::ReferenceError;

/// How to reach registries.
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// Hosts answered by other hosts, tried in order; the first whose `from` matches wins.
    pub mirrors: Vec<Mirror>,
    /// Hosts (`host[:port]`) spoken to over plain HTTP.
    pub insecure_hosts: Vec<String>,
    /// Extra PEM CA bundles trusted for every registry, next to the system roots.
    pub ca_pems: Vec<Vec<u8>>,
    pub credentials: Credentials,
    /// Requests in flight at once, per stage that fans out (digest lookups, blob uploads).
    /// 0 means the default (16).
    pub max_concurrency: usize,
    /// Per-request read timeout; `None` means 60 s.
    pub read_timeout: Option<Duration>,
    /// Addresses registries may not be reached at (the controller's opt-in egress policy).
    pub egress: Egress,
    /// Send no credentials to a local registry reached over plain HTTP only because HTTPS
    /// failed (go-containerregistry's fallback for `localhost`, `127.0.0.1`, …; see
    /// `local.rs`): the controller's rule — a tenant cannot make it send credentials in the
    /// clear. Hosts in `insecure_hosts` are not affected. The CLI sends them, as crane does.
    pub withhold_credentials_over_fallback: bool,
}

impl RegistryOptions {
    /// A digest of everything that makes two registries behave differently — hosts, mirrors,
    /// CAs, credentials (hashed, never kept in clear), timeouts, egress —, so that one client
    /// (its connections, pings and tokens) serves every object configured alike and never
    /// one configured otherwise.
    pub fn identity(&self) -> String {
        let mut text = String::new();
        let mut field = |name: &str, value: &dyn std::fmt::Display| {
            text.push_str(name);
            text.push('=');
            text.push_str(&value.to_string().replace('\n', "\\n"));
            text.push('\n');
        };
        for m in &self.mirrors {
            field("mirror", &format!("{} {} {}", m.from, m.to, m.insecure));
        }
        for host in &self.insecure_hosts {
            field("insecure", host);
        }
        for pem in &self.ca_pems {
            field("ca", &digest::sha256_digest(pem));
        }
        field("credentials", &self.credentials.fingerprint());
        field("concurrency", &self.max_concurrency);
        field("read-timeout", &format!("{:?}", self.read_timeout));
        field("deny-local", &self.egress.deny_local);
        for net in &self.egress.deny {
            field("deny", net);
        }
        field("withhold", &self.withhold_credentials_over_fallback);
        digest::sha256_digest(text.as_bytes())
    }
}

/// A configured registry client. Cheap to share by reference across tasks.
pub struct Registry {
    shared: distribution::Shared,
    options: RegistryOptions,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Credentials stay out of debug output.
        f.debug_struct("Registry")
            .field("mirrors", &self.options.mirrors)
            .field("insecure_hosts", &self.options.insecure_hosts)
            .finish_non_exhaustive()
    }
}

const DEFAULT_CONCURRENCY: usize = 16;

impl Registry {
    pub fn new(options: RegistryOptions) -> Result<Self, RegistryError> {
        for pem in &options.ca_pems {
            // reqwest skips what it cannot parse; a CA bundle without a certificate would then
            // fail later as an unexplained TLS error against the registry.
            let parsed = reqwest::Certificate::from_pem_bundle(pem).unwrap_or_default();
            if parsed.is_empty() {
                return Err(RegistryError::Config(
                    "a CA bundle holds no PEM certificate (expected -----BEGIN CERTIFICATE-----)"
                        .to_owned(),
                ));
            }
        }
        // Building the client checks the CA bundles, so a bad CA is reported here, not on
        // first use.
        let shared = distribution::Shared::new(&options)?;
        Ok(Self { shared, options })
    }

    /// This registry with `credentials` over its own (a Secret named on one object): the same
    /// connections and request metric, but tokens of its own, so what one object's
    /// credentials obtained never serves another's requests.
    pub fn with_credentials(&self, credentials: Credentials) -> Registry {
        let mut options = self.options.clone();
        options.credentials.merge(credentials);
        Registry {
            shared: self.shared.sibling(&options),
            options,
        }
    }

    /// HTTP requests made through distribution clients of this registry that are done (the
    /// controller's registry request metric).
    pub fn requests_made(&self) -> usize {
        self.shared.requests()
    }

    /// The requests done since the last call (or since the registry was built), for a
    /// registry shared by several reconciles: each takes what accumulated, the total stays
    /// exact.
    pub fn take_requests(&self) -> usize {
        self.shared.take_requests()
    }

    /// The distribution client (lock, push, pull), counting requests from zero.
    pub fn distribution(&self) -> DistributionClient<'_> {
        DistributionClient::for_registry(self)
    }

    pub fn options(&self) -> &RegistryOptions {
        &self.options
    }

    /// How many requests a stage may keep in flight.
    pub fn concurrency(&self) -> usize {
        self.options.concurrency()
    }

    /// The reference to contact for `reference`: itself, or its mirror. What is recorded (in
    /// locks, on status) stays the original reference.
    pub fn contact(&self, reference: &Reference) -> Reference {
        mirror::apply(&self.options.mirrors, reference)
    }

    /// Credentials for the host that will actually be contacted for `reference` (asking its
    /// docker credential helper the first time, in the CLI).
    pub async fn auth(&self, contacted: &Reference) -> Result<RegistryAuth, RegistryError> {
        self.options
            .credentials
            .resolve(contacted.resolve_registry())
            .await
    }
}

impl RegistryOptions {
    fn concurrency(&self) -> usize {
        if self.max_concurrency == 0 {
            DEFAULT_CONCURRENCY
        } else {
            self.max_concurrency
        }
    }
}

/// Parses an image reference the way go-containerregistry (kbld, imgpkg) does: a missing
/// registry means docker.io, a single-segment Docker Hub repository means `library/…`, a
/// missing tag means `latest`.
pub fn parse_reference(s: &str) -> Result<Reference, RegistryError> {
    let invalid = |reason: String| RegistryError::InvalidReference {
        reference: s.to_owned(),
        reason,
    };
    // Not `s.parse::<Reference>()`: that compiles oci-spec's regular expression (~30 ms).
    let reference = reference::parse(s).map_err(|e| invalid(e.to_string()))?;
    // The distribution spec allows only lowercase repository names; oci-spec lets uppercase
    // through, and a registry would then answer with a confusing NAME_INVALID.
    if reference
        .repository()
        .chars()
        .any(|c| c.is_ascii_uppercase())
    {
        return Err(invalid("repository names must be lowercase".to_owned()));
    }
    Ok(reference)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_like_go_containerregistry() {
        let r = parse_reference("nginx").unwrap();
        assert_eq!(
            (r.registry(), r.repository(), r.tag()),
            ("docker.io", "library/nginx", Some("latest"))
        );
        let r = parse_reference("quay.io/jetstack/cert-manager-controller:v1.9.1").unwrap();
        assert_eq!(
            (r.registry(), r.repository(), r.tag()),
            (
                "quay.io",
                "jetstack/cert-manager-controller",
                Some("v1.9.1")
            )
        );
        assert!(parse_reference("127.0.0.1:5000/a/b@sha256:").is_err());
        let err = parse_reference("UPPER/case:tag").unwrap_err().to_string();
        assert!(err.contains("UPPER/case:tag"), "{err}");
    }

    #[test]
    fn rejects_an_unusable_ca() {
        let err = Registry::new(RegistryOptions {
            ca_pems: vec![b"not a certificate".to_vec()],
            ..Default::default()
        })
        .unwrap_err();
        assert!(matches!(err, RegistryError::Config(_)), "{err}");
    }

    /// One client per configuration: alike options share an identity, and anything that
    /// changes what the registry sees (a password, a CA, a mirror) gives another; the
    /// identity never shows a secret.
    #[test]
    fn identities_separate_every_configuration_and_hide_secrets() {
        let with = |password: &str| RegistryOptions {
            credentials: Credentials::basic("r.io", "user", password),
            ..Default::default()
        };
        assert_eq!(with("s3cret").identity(), with("s3cret").identity());
        assert_ne!(with("s3cret").identity(), with("other").identity());
        assert!(!with("s3cret").identity().contains("s3cret"));
        let mut mirrored = with("s3cret");
        mirrored
            .mirrors
            .push(Mirror::parse("quay.io=127.0.0.1:5000", true).unwrap());
        assert_ne!(mirrored.identity(), with("s3cret").identity());
        let mut ca = with("s3cret");
        ca.ca_pems.push(b"pem".to_vec());
        assert_ne!(ca.identity(), with("s3cret").identity());
        let mut egress = with("s3cret");
        egress.egress.deny_local = true;
        assert_ne!(egress.identity(), with("s3cret").identity());
    }
}
