//! Registry access shared by every stage that talks to an OCI registry (lock, push, pull, sync
//! of image sources): one client per run so connections, challenges and bearer tokens are
//! reused, credentials from docker config files or dockerconfigjson Secrets, per-host plain
//! HTTP and CA bundles, and registry mirrors that answer for other hosts.
//!
//! Lock, push and pull go through [`DistributionClient`] (one ping per host, one monolithic
//! upload per blob); other stages use the `oci_client::Client`, built on first use only.

mod auth;
mod distribution;
mod error;
mod mirror;
mod reference;

use std::sync::OnceLock;
use std::time::Duration;

pub use oci_client::Reference;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;

pub use auth::Credentials;
pub use distribution::{DistributionClient, ManifestClient, RequestStats};
pub use error::{ErrorClass, RegistryError, classify};
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
}

/// A configured registry client. Cheap to share by reference across tasks.
pub struct Registry {
    /// Built on first use: building it reads the system's root certificates again, and lock,
    /// push and pull never need it.
    client: OnceLock<oci_client::Client>,
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
        // Building the distribution client checks the CA bundles the same way oci-client
        // would (both are reqwest with rustls), so a bad CA is reported here, not on first use.
        let shared = distribution::Shared::new(&options)?;
        Ok(Self {
            client: OnceLock::new(),
            shared,
            options,
        })
    }

    fn oci_client_config(&self) -> ClientConfig {
        let options = &self.options;
        let mut insecure: Vec<String> = options.insecure_hosts.clone();
        insecure.extend(
            options
                .mirrors
                .iter()
                .filter(|m| m.insecure)
                .map(|m| m.host().to_owned()),
        );
        insecure.sort();
        insecure.dedup();
        let protocol = if insecure.is_empty() {
            ClientProtocol::Https
        } else {
            ClientProtocol::HttpsExcept(insecure)
        };
        ClientConfig {
            protocol,
            extra_root_certificates: options
                .ca_pems
                .iter()
                .map(|pem| Certificate {
                    encoding: CertificateEncoding::Pem,
                    data: pem.clone(),
                })
                .collect(),
            read_timeout: Some(options.read_timeout.unwrap_or(Duration::from_secs(60))),
            connect_timeout: Some(Duration::from_secs(10)),
            max_concurrent_upload: options.concurrency(),
            max_concurrent_download: options.concurrency(),
            user_agent: concat!("packsmith/", env!("CARGO_PKG_VERSION")),
            ..Default::default()
        }
    }

    /// The shared oci-client, built on first call.
    pub fn client(&self) -> &oci_client::Client {
        self.client.get_or_init(|| {
            // try_from fails only on what Shared::new already accepted (the same CAs through
            // the same TLS stack); should it fail anyway, Client::new logs why and falls back
            // to the system roots, so requests fail with a TLS error rather than go unchecked.
            oci_client::Client::try_from(self.oci_client_config()).unwrap_or_else(|e| {
                tracing::error!(error = %e, "building the registry client");
                oci_client::Client::new(self.oci_client_config())
            })
        })
    }

    /// HTTP requests made through distribution clients of this registry that are done (the
    /// controller's registry request metric). oci-client's own requests (image and bundle
    /// sync, tag listing) are not counted.
    pub fn requests_made(&self) -> usize {
        self.shared.requests()
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

    /// Credentials for the host that will actually be contacted for `reference`.
    pub fn auth(&self, contacted: &Reference) -> RegistryAuth {
        self.options
            .credentials
            .auth_for(contacted.resolve_registry())
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
}
