//! Status conditions shared by packsmith's kinds, following kstatus and Flux's conventions:
//! `Ready` (normal polarity), `Reconciling` and `Stalled` (abnormal-true, present only while
//! True), and one condition per pipeline stage so a person sees which step broke.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// Condition types.
pub mod types {
    /// True when the last reconcile produced the desired state for the current generation.
    pub const READY: &str = "Ready";
    /// Present and True only while work is in progress.
    pub const RECONCILING: &str = "Reconciling";
    /// Present and True when retrying will not help until the spec changes.
    pub const STALLED: &str = "Stalled";
    /// Upstream contents were fetched and match the recorded lock.
    pub const CONTENT_SYNCED: &str = "ContentSynced";
    /// Every image the manifests reference is pinned to a digest.
    pub const IMAGES_LOCKED: &str = "ImagesLocked";
    /// The bundle is in the registry, verified by digest.
    pub const BUNDLE_PUSHED: &str = "BundlePushed";
    /// Package and PackageMetadata are applied in the target namespace.
    pub const PACKAGE_PUBLISHED: &str = "PackagePublished";
    /// The repository bundle is pushed and the PackageRepository applied.
    pub const REPOSITORY_PUBLISHED: &str = "RepositoryPublished";
}

/// Condition reasons: a small, documented set of CamelCase constants that tools can match on.
/// The README's troubleshooting table lists what a person should do for each.
pub mod reasons {
    pub const SUCCEEDED: &str = "Succeeded";
    pub const PROGRESSING: &str = "Progressing";
    pub const SUSPENDED: &str = "Suspended";
    /// The spec is invalid in a way the API server's schema could not catch.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// A referenced Secret or ConfigMap is missing or lacks the expected key.
    pub const REFERENCE_NOT_FOUND: &str = "ReferenceNotFound";
    pub const AUTHENTICATION_FAILED: &str = "AuthenticationFailed";
    pub const FETCH_FAILED: &str = "FetchFailed";
    pub const CHECKSUM_MISMATCH: &str = "ChecksumMismatch";
    pub const NO_MATCHING_VERSION: &str = "NoMatchingVersion";
    pub const LOCK_FAILED: &str = "LockFailed";
    pub const PUSH_FAILED: &str = "PushFailed";
    /// The version is already published with other content and the policy is Refuse.
    pub const VERSION_IMMUTABLE: &str = "VersionImmutable";
    pub const PUBLISH_FAILED: &str = "PublishFailed";
    /// The Carvel packaging API (kapp-controller) is not installed in the cluster.
    pub const PACKAGING_API_MISSING: &str = "PackagingAPIMissing";
    pub const DEPENDENCY_NOT_READY: &str = "DependencyNotReady";
    /// A Package, PackageMetadata, PackageRepository or release record this object would
    /// write belongs to another source (or to no packsmith source); it was left untouched.
    pub const OWNERSHIP_CONFLICT: &str = "OwnershipConflict";
    /// `publish.namespace` (or the PackageRepository's namespace) is another namespace that
    /// the operator has not listed in `--allowed-publish-namespaces`.
    pub const PUBLISH_NAMESPACE_NOT_ALLOWED: &str = "PublishNamespaceNotAllowed";
    /// An `inline.pathsFrom.secretRef` names a Secret without the opt-in label
    /// `packsmith.dev/inline-allowed: "true"`.
    pub const INLINE_SECRET_NOT_ALLOWED: &str = "InlineSecretNotAllowed";
    /// An upstream's address is one the operator's egress policy refuses
    /// (`--deny-local-upstreams`, `--deny-upstream-cidrs`).
    pub const UPSTREAM_DENIED: &str = "UpstreamDenied";
    /// The object's work directory (synced tree and caches) outgrew the operator's
    /// per-object disk budget (`--max-object-disk`); it was removed.
    pub const DISK_BUDGET_EXCEEDED: &str = "DiskBudgetExceeded";
    /// A reconcile ran longer than `spec.timeout` (retried with backoff).
    pub const TIMEOUT: &str = "ReconcileTimeout";
    /// `bundle.signing`'s key cannot be used (not a cosign key, wrong password), or its
    /// signature could not be written.
    pub const SIGNING_FAILED: &str = "SigningFailed";
    /// An upstream's signature did not verify with the keys its `verify` names (Flux's
    /// reason); nothing was published.
    pub const VERIFICATION_FAILED: &str = "VerificationFailed";
}

pub const TRUE: &str = "True";
pub const FALSE: &str = "False";

/// Sets (or replaces) the condition of `type_` in `conditions`.
///
/// `lastTransitionTime` moves only when `status` flips, so rewriting an unchanged condition
/// produces an identical list and the caller's compare-before-write finds nothing to write.
/// Returns whether anything changed.
pub fn set(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: impl Into<String>,
    observed_generation: Option<i64>,
    now: jiff::Timestamp,
) -> bool {
    let status = if status { TRUE } else { FALSE };
    let message = message.into();
    if let Some(existing) = conditions.iter_mut().find(|c| c.type_ == type_) {
        let unchanged = existing.status == status
            && existing.reason == reason
            && existing.message == message
            && existing.observed_generation == observed_generation;
        if unchanged {
            return false;
        }
        if existing.status != status {
            existing.last_transition_time = Time(now);
        }
        existing.status = status.to_owned();
        existing.reason = reason.to_owned();
        existing.message = message;
        existing.observed_generation = observed_generation;
        return true;
    }
    conditions.push(Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message,
        observed_generation,
        last_transition_time: Time(now),
    });
    true
}

/// Removes the condition of `type_`; abnormal-true conditions (`Reconciling`, `Stalled`, stage
/// failures) exist only while True. Returns whether anything changed.
pub fn remove(conditions: &mut Vec<Condition>, type_: &str) -> bool {
    let before = conditions.len();
    conditions.retain(|c| c.type_ != type_);
    before != conditions.len()
}

/// The condition of `type_`, if present.
pub fn get<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether the condition of `type_` is present with status True.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    get(conditions, type_).is_some_and(|c| c.status == TRUE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(secs).expect("valid timestamp")
    }

    #[test]
    fn transition_time_moves_only_when_status_flips() {
        let mut c = Vec::new();
        assert!(set(
            &mut c,
            types::READY,
            false,
            reasons::PROGRESSING,
            "working",
            Some(1),
            t(10)
        ));
        assert!(!set(
            &mut c,
            types::READY,
            false,
            reasons::PROGRESSING,
            "working",
            Some(1),
            t(20)
        ));
        assert_eq!(c[0].last_transition_time, Time(t(10)));

        // A new message or reason is a change, but not a transition.
        assert!(set(
            &mut c,
            types::READY,
            false,
            reasons::FETCH_FAILED,
            "404",
            Some(1),
            t(30)
        ));
        assert_eq!(c[0].last_transition_time, Time(t(10)));
        assert_eq!(c[0].reason, reasons::FETCH_FAILED);

        assert!(set(
            &mut c,
            types::READY,
            true,
            reasons::SUCCEEDED,
            "done",
            Some(2),
            t(40)
        ));
        assert_eq!(c[0].last_transition_time, Time(t(40)));
        assert_eq!(c[0].status, TRUE);
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn remove_and_query() {
        let mut c = Vec::new();
        set(
            &mut c,
            types::STALLED,
            true,
            reasons::INVALID_SPEC,
            "bad",
            None,
            t(1),
        );
        set(
            &mut c,
            types::READY,
            false,
            reasons::INVALID_SPEC,
            "bad",
            None,
            t(1),
        );
        assert!(is_true(&c, types::STALLED));
        assert!(!is_true(&c, types::READY));
        assert!(remove(&mut c, types::STALLED));
        assert!(!remove(&mut c, types::STALLED));
        assert!(get(&c, types::STALLED).is_none());
        assert_eq!(c.len(), 1);
    }

    /// docs/troubleshooting.md has one row per reason a condition can carry, and no row for a
    /// reason that no longer exists.
    #[test]
    fn troubleshooting_covers_every_reason() {
        let docs = include_str!("../../docs/troubleshooting.md");
        let documented: std::collections::BTreeSet<&str> = docs
            .lines()
            .filter_map(|l| l.strip_prefix("| `"))
            .filter_map(|l| l.split_once('`').map(|(reason, _)| reason))
            .collect();
        let source = include_str!("conditions.rs");
        let module = &source[source.find("pub mod reasons").expect("reasons module")..];
        let module = &module[..module.find("\n}").expect("end of module")];
        let defined: std::collections::BTreeSet<&str> = module
            .lines()
            .filter_map(|l| l.trim().strip_prefix("pub const "))
            .filter_map(|l| l.split('"').nth(1))
            .collect();
        assert_eq!(
            documented, defined,
            "docs/troubleshooting.md's reason rows and api::conditions::reasons differ"
        );
    }
}
