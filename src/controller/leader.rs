//! Leader election on a `coordination.k8s.io` Lease (`--leader-elect`), through
//! [`kube_lease_manager`] (server-side apply with conflict detection on the Lease).
//!
//! Flux's timings are the defaults: the Lease is valid 35 s after its last renewal, the leader
//! renews every 5 s (the retry period, which is also how often a follower looks), and a
//! leader that has not managed to renew for 30 s (the renew deadline) gives up. Giving up, or
//! finding another holder, ends [`Controller::run`](super::Controller::run) with
//! [`ControllerError::LeadershipLost`](super::ControllerError::LeadershipLost) and the binary
//! exits non-zero so Kubernetes restarts it as a follower (controller-runtime's behaviour):
//! no reconcile can still be running on a replica that lost the lease. A graceful shutdown
//! releases the Lease, so a successor takes over at once instead of after the lease duration.

use std::time::{Duration, Instant};

use kube::Client;
use kube_lease_manager::{LeaseCreateMode, LeaseManager, LeaseParams};

/// Default Lease name (`--leader-election-id`).
pub const DEFAULT_LEASE_NAME: &str = "packsmith-controller";

/// The Lease of a shard: replicas of one shard (same `--watch-label-selector`) share it,
/// shards never do. An explicit `--leader-election-id` is taken as given; the default gets a
/// short digest of the selector, so N shards started from one manifest elect N leaders.
pub fn shard_lease_name(lease_name: &str, selector: Option<&str>) -> String {
    match selector.map(str::trim).filter(|s| !s.is_empty()) {
        Some(selector) if lease_name == DEFAULT_LEASE_NAME => {
            let digest = crate::registry::sha256_digest(selector.as_bytes());
            let hex = digest.trim_start_matches("sha256:");
            format!("{lease_name}-{}", &hex[..10])
        }
        _ => lease_name.to_owned(),
    }
}
/// Flux's defaults.
pub(super) const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(35);
pub(super) const DEFAULT_RENEW_DEADLINE: Duration = Duration::from_secs(30);
pub(super) const DEFAULT_RETRY_PERIOD: Duration = Duration::from_secs(5);

/// How to elect a leader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderElection {
    /// Namespace of the Lease; the client's default namespace (in a Pod: its own) when `None`.
    pub namespace: Option<String>,
    /// Name of the Lease.
    pub lease_name: String,
    /// This replica's identity in `spec.holderIdentity`: `$POD_NAME` or a random name.
    pub identity: String,
    /// How long the Lease stays valid after a renewal. Whole seconds (the Lease's unit).
    pub lease_duration: Duration,
    /// A leader that has not renewed for this long gives up.
    pub renew_deadline: Duration,
    /// Renewal period of the leader and polling period of followers.
    pub retry_period: Duration,
}

impl Default for LeaderElection {
    fn default() -> Self {
        Self {
            namespace: None,
            lease_name: DEFAULT_LEASE_NAME.to_owned(),
            identity: default_identity(),
            lease_duration: DEFAULT_LEASE_DURATION,
            renew_deadline: DEFAULT_RENEW_DEADLINE,
            retry_period: DEFAULT_RETRY_PERIOD,
        }
    }
}

/// `$POD_NAME`, else `packsmith-` and 10 random characters.
pub fn default_identity() -> String {
    std::env::var("POD_NAME")
        .ok()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| {
            let suffix: String = std::iter::repeat_with(fastrand::lowercase)
                .take(10)
                .collect();
            format!("packsmith-{suffix}")
        })
}

/// Why leader election cannot run or stopped.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error(
        "leader election timings must be whole seconds with retry period ({retry:?}) < renew \
         deadline ({deadline:?}) < lease duration ({lease:?})"
    )]
    Timings {
        lease: Duration,
        deadline: Duration,
        retry: Duration,
    },
    #[error("the Lease {namespace}/{name}: {source}")]
    Lease {
        namespace: String,
        name: String,
        #[source]
        source: kube_lease_manager::LeaseManagerError,
    },
}

impl LeaderElection {
    /// Checks the timings: whole seconds, retry < renew deadline < lease duration.
    pub fn validate(&self) -> Result<(), LeaderError> {
        let whole = |d: Duration| d.subsec_nanos() == 0 && d.as_secs() > 0;
        if whole(self.lease_duration)
            && whole(self.renew_deadline)
            && whole(self.retry_period)
            && self.retry_period < self.renew_deadline
            && self.renew_deadline < self.lease_duration
        {
            Ok(())
        } else {
            Err(LeaderError::Timings {
                lease: self.lease_duration,
                deadline: self.renew_deadline,
                retry: self.retry_period,
            })
        }
    }
}

/// One replica's candidacy.
pub(super) struct Elector {
    manager: LeaseManager,
    config: LeaderElection,
    namespace: String,
}

impl Elector {
    /// Creates the Lease if it does not exist yet; does not take it.
    pub(super) async fn new(client: Client, config: LeaderElection) -> Result<Self, LeaderError> {
        config.validate()?;
        let namespace = config
            .namespace
            .clone()
            .unwrap_or_else(|| client.default_namespace().to_owned());
        let lease = config.lease_duration.as_secs();
        // The holder renews `grace` before expiry: every retry period.
        let grace = lease - config.retry_period.as_secs();
        let params = LeaseParams::new(config.identity.clone(), lease, grace)
            .with_field_manager(format!("packsmith-{}", config.identity));
        let manager = LeaseManager::new(
            client,
            config.lease_name.clone(),
            namespace.clone(),
            params,
            LeaseCreateMode::AutoCreate,
        )
        .await
        .map_err(|source| LeaderError::Lease {
            namespace: namespace.clone(),
            name: config.lease_name.clone(),
            source,
        })?;
        Ok(Self {
            manager,
            config,
            namespace,
        })
    }

    /// `namespace/name` of the Lease.
    pub(super) fn lease(&self) -> String {
        format!("{}/{}", self.namespace, self.config.lease_name)
    }

    pub(super) fn identity(&self) -> &str {
        &self.config.identity
    }

    /// Waits until this replica holds the Lease. API errors are logged and retried.
    pub(super) async fn acquire(&self) {
        loop {
            match self.manager.changed().await {
                Ok(true) => return,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(lease = %self.lease(), error = %e, "leader election");
                    tokio::time::sleep(self.config.retry_period).await;
                }
            }
        }
    }

    /// Keeps renewing the Lease; returns why leadership was lost: another holder, or no
    /// successful renewal within the renew deadline.
    pub(super) async fn hold(&self) -> String {
        let mut failing_since: Option<Instant> = None;
        loop {
            let step = if failing_since.is_some() {
                // After an error, a call that runs a couple of periods without failing has
                // renewed (the manager only returns on a change or an error).
                match tokio::time::timeout(self.config.retry_period * 2, self.manager.changed())
                    .await
                {
                    Ok(result) => result,
                    Err(_) => {
                        failing_since = None;
                        continue;
                    }
                }
            } else {
                self.manager.changed().await
            };
            match step {
                Ok(true) => failing_since = None,
                Ok(false) => return "another replica holds the lease".to_owned(),
                Err(e) => {
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    tracing::warn!(lease = %self.lease(), error = %e, "renewing the lease");
                    if since.elapsed() + self.config.retry_period >= self.config.renew_deadline {
                        return format!(
                            "could not renew the lease within {:?}: {e}",
                            self.config.renew_deadline
                        );
                    }
                    tokio::time::sleep(self.config.retry_period).await;
                }
            }
        }
    }

    /// Gives the Lease up (graceful shutdown), so a follower takes over at once.
    pub(super) async fn release(&self) {
        if let Err(e) = self.manager.release().await {
            tracing::warn!(lease = %self.lease(), error = %e, "releasing the lease");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_shard_has_its_own_lease_and_an_explicit_name_wins() {
        let shard1 = shard_lease_name(
            DEFAULT_LEASE_NAME,
            Some("sharding.packsmith.dev/key in (shard1)"),
        );
        let shard2 = shard_lease_name(
            DEFAULT_LEASE_NAME,
            Some("sharding.packsmith.dev/key in (shard2)"),
        );
        assert_ne!(shard1, shard2);
        assert!(
            shard1.starts_with("packsmith-controller-") && shard1.len() <= 63,
            "{shard1}"
        );
        assert_eq!(
            shard_lease_name(DEFAULT_LEASE_NAME, None),
            DEFAULT_LEASE_NAME
        );
        assert_eq!(
            shard_lease_name(DEFAULT_LEASE_NAME, Some(" ")),
            DEFAULT_LEASE_NAME
        );
        assert_eq!(shard_lease_name("mine", Some("a=b")), "mine");
    }

    #[test]
    fn flux_defaults_are_valid_and_bad_timings_are_not() {
        assert!(LeaderElection::default().validate().is_ok());
        let with = |lease, deadline, retry| LeaderElection {
            lease_duration: Duration::from_secs(lease),
            renew_deadline: Duration::from_secs(deadline),
            retry_period: Duration::from_secs(retry),
            ..LeaderElection::default()
        };
        assert!(with(3, 2, 1).validate().is_ok());
        assert!(with(30, 30, 5).validate().is_err());
        assert!(with(35, 30, 30).validate().is_err());
        assert!(with(35, 30, 0).validate().is_err());
        let fractional = LeaderElection {
            retry_period: Duration::from_millis(1500),
            ..LeaderElection::default()
        };
        assert!(fractional.validate().is_err());
    }

    #[test]
    fn identities_are_unique_without_a_pod_name() {
        if std::env::var("POD_NAME").is_err() {
            assert_ne!(default_identity(), default_identity());
        }
    }
}
