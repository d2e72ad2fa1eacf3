//! What every reconcile shares: the client, settings, event recorder, metrics and backoffs.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use kube::Client;
use kube::runtime::events::Recorder;
use kube::runtime::reflector::Store;

use super::metrics::Metrics;
use super::schedule::Backoffs;
use super::stalls::{Inputs, Stalls};
use super::workdirs::WorkDirs;
use crate::api::PackageRepositorySource;
use crate::registry::Credentials;

/// Finalizer that lets deletion remove what a PackageSource published.
pub const FINALIZER: &str = "packsmith.dev/finalizer";
/// `kind` label value of the metrics.
pub(super) const KIND: &str = "PackageSource";

/// Settings of one controller process.
#[derive(Debug, Clone)]
pub(super) struct Settings {
    /// Work directories live in `<cache_dir>/<namespace>/<name>`.
    pub cache_dir: PathBuf,
    /// The controller's own registry credentials (its docker config); a PackageSource's
    /// `bundle.secretRef` entries win over these for the same host.
    pub credentials: Credentials,
    /// Namespaces other than their own that objects may publish into.
    pub allowed_publish_namespaces: Vec<String>,
    /// Namespaces whose objects may use `credentials`; objects elsewhere get only the
    /// credentials of their own Secrets.
    pub credentials_namespaces: Vec<String>,
    /// The shortest `spec.interval` honoured (`--min-interval`): a tenant cannot make the
    /// shared controller re-fetch its upstreams every second.
    pub min_interval: std::time::Duration,
    /// Addresses upstreams (and bundle registries) may not be reached at.
    pub egress: crate::registry::Egress,
    /// Bytes one PackageSource's work directory may take (`--max-object-disk`).
    pub max_object_disk: Option<u64>,
    /// The helm that renders charts for the lock (`--helm-binary`).
    pub helm_binary: PathBuf,
    /// `--watch-label-selector`: the labels of a source it names are copied onto what the
    /// source publishes, and the watches of published objects are narrowed by it.
    pub shard_selector: Option<String>,
}

impl Settings {
    /// The interval an object is reconciled at: its own, but never below `min_interval`.
    pub(super) fn interval(&self, spec_interval: std::time::Duration) -> std::time::Duration {
        spec_interval.max(self.min_interval)
    }

    /// The controller's own registry credentials, for objects of `namespace` only when the
    /// operator listed it: otherwise any tenant could push with them (or send them to a
    /// registry of its choosing) just by naming a host.
    pub(super) fn credentials_for(&self, namespace: &str) -> Credentials {
        if self.credentials_namespaces.iter().any(|n| n == namespace) {
            self.credentials.clone()
        } else {
            Credentials::default()
        }
    }

    /// Refuses publishing from `own` into `target` unless it is the same namespace or the
    /// operator listed `target` (one tenant must not write into another's namespace).
    pub(super) fn check_publish_namespace(&self, own: &str, target: &str) -> Result<(), String> {
        if own == target || self.allowed_publish_namespaces.iter().any(|n| n == target) {
            return Ok(());
        }
        Err(format!(
            "publishing into namespace {target:?} (not the object's own, {own:?}) is not \
             allowed: the operator must list it in the controller's \
             --allowed-publish-namespaces (chart value allowedPublishNamespaces), or publish \
             into {own:?}"
        ))
    }
}

/// Shared by every reconcile.
pub(super) struct Context {
    pub client: Client,
    pub settings: Settings,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub backoffs: Backoffs,
    /// Fingerprint of the package set each PackageRepositorySource (`namespace/name`) last
    /// pushed, so an unchanged set is neither written to disk nor pushed again. Per process,
    /// not global: two controllers in one process (tests, an embedding) must not share it.
    /// Lost on restart: the first reconcile then pushes once, to the same digest.
    pub repository_fingerprints: Mutex<HashMap<String, u64>>,
    /// Objects Stalled on inputs nothing has changed since.
    pub stalls: Stalls,
    /// Metadata of the watched Secrets and ConfigMaps.
    pub inputs: Inputs,
    /// PackageRepositorySources (spec and metadata): a source one selects is released
    /// through it rather than applied in-cluster.
    pub repositories: Store<PackageRepositorySource>,
    /// Sizes of the work directories, for `--cache-max-size`.
    pub work_dirs: WorkDirs,
    /// Registry clients shared across reconciles, one per configuration.
    pub registries: super::registries::Registries,
    /// Decrypted `bundle.signing` keys, by Secret and content.
    pub signing_keys: super::signing::SigningKeys,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_listed_namespaces_besides_the_own_one() {
        let settings = Settings {
            cache_dir: PathBuf::new(),
            credentials: Credentials::default(),
            allowed_publish_namespaces: vec!["kapp-controller-packaging-global".to_owned()],
            credentials_namespaces: Vec::new(),
            min_interval: std::time::Duration::ZERO,
            egress: crate::registry::Egress::default(),
            max_object_disk: None,
            helm_binary: PathBuf::from("helm"),
            shard_selector: None,
        };
        assert!(settings.check_publish_namespace("team-a", "team-a").is_ok());
        assert!(
            settings
                .check_publish_namespace("team-a", "kapp-controller-packaging-global")
                .is_ok()
        );
        let refused = settings
            .check_publish_namespace("team-b", "team-a")
            .expect_err("another tenant's namespace");
        assert!(
            refused.contains("--allowed-publish-namespaces"),
            "{refused}"
        );
    }

    #[test]
    fn controller_credentials_only_for_listed_namespaces() {
        let credentials = Credentials::from_docker_config_json(
            br#"{"auths": {"registry.example.com": {"auth": "dTpw"}}}"#,
            "test",
        )
        .expect("config");
        let settings = Settings {
            cache_dir: PathBuf::new(),
            credentials,
            allowed_publish_namespaces: Vec::new(),
            credentials_namespaces: vec!["packsmith-system".to_owned()],
            min_interval: std::time::Duration::ZERO,
            egress: crate::registry::Egress::default(),
            max_object_disk: None,
            helm_binary: PathBuf::from("helm"),
            shard_selector: None,
        };
        assert!(!settings.credentials_for("packsmith-system").is_empty());
        assert!(settings.credentials_for("team-a").is_empty());
    }

    #[test]
    fn intervals_below_the_floor_are_raised() {
        let settings = Settings {
            cache_dir: PathBuf::new(),
            credentials: Credentials::default(),
            allowed_publish_namespaces: Vec::new(),
            credentials_namespaces: Vec::new(),
            min_interval: std::time::Duration::from_secs(30),
            egress: crate::registry::Egress::default(),
            max_object_disk: None,
            helm_binary: PathBuf::from("helm"),
            shard_selector: None,
        };
        let s = std::time::Duration::from_secs;
        assert_eq!(settings.interval(s(1)), s(30));
        assert_eq!(settings.interval(s(3600)), s(3600));
    }
}
