//! Pure logic of the PackageRepositorySource reconciler: label selectors (as a list query
//! and as an in-memory match, for the watch mapper) and the desired status from what a
//! reconcile found. Nothing here talks to the API server.

use jiff::Timestamp;

use crate::api::conditions::{self, reasons, types};
use crate::api::repository_source::PackageRepositorySourceStatus;
use crate::api::source::BundleStatus;
use crate::controller::labels::describe_selector;
use crate::controller::outcome::{Failure, Retry, mark_reconciling, short_digest, truncate};

/// What a reconcile observed about the object.
#[derive(Debug, Clone, Copy)]
pub(super) struct Observed<'a> {
    pub generation: Option<i64>,
    pub requested_at: Option<&'a str>,
    pub now: Timestamp,
}

/// A published repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Published {
    /// `refName.version`, sorted.
    pub packages: Vec<String>,
    /// `repository@sha256:…` of the repository bundle.
    pub image: String,
    pub tags: Vec<String>,
    pub size: Option<i64>,
    /// `bundle.relocateImages`: where the package bundles and their images were copied.
    pub relocated: Vec<String>,
    /// The repository bundle's cosign signature (`bundle.signing`).
    pub signature: Option<String>,
    /// PackageSources the packages came from.
    pub sources: usize,
    /// `namespace/name` of the PackageRepository applied, if one is.
    pub package_repository: Option<String>,
}

/// Whether this generation has not been reconciled yet.
pub(super) fn is_new_generation(
    current: &PackageRepositorySourceStatus,
    generation: Option<i64>,
) -> bool {
    current.observed_generation != generation || current.observed_generation.is_none()
}

/// Whether `current` already records exactly `packages` published in a Ready repository for
/// this generation: then nothing is written or pushed.
pub(super) fn is_current(
    current: &PackageRepositorySourceStatus,
    o: &Observed<'_>,
    packages: &[String],
) -> bool {
    current.observed_generation == o.generation
        && current.packages == packages
        && current.bundle.is_some()
        && conditions::is_true(&current.conditions, types::READY)
        && (o.requested_at.is_none()
            || current.last_handled_reconcile_at.as_deref() == o.requested_at)
}

/// `Reconciling=True` while a new generation is worked on.
pub(super) fn begin(
    current: &PackageRepositorySourceStatus,
    o: &Observed<'_>,
) -> PackageRepositorySourceStatus {
    let mut status = current.clone();
    mark_reconciling(&mut status.conditions, o.generation, o.now);
    status
}

fn finish(status: &mut PackageRepositorySourceStatus, o: &Observed<'_>) {
    status.observed_generation = o.generation;
    if let Some(r) = o.requested_at {
        status.last_handled_reconcile_at = Some(r.to_owned());
    }
    conditions::remove(&mut status.conditions, types::RECONCILING);
}

/// The status after a successful publication.
pub(super) fn succeeded(
    current: &PackageRepositorySourceStatus,
    o: &Observed<'_>,
    p: &Published,
) -> PackageRepositorySourceStatus {
    let mut status = current.clone();
    let now = truncate(o.now);
    finish(&mut status, o);
    status.package_count = p.packages.len() as u32;
    status.packages = p.packages.clone();
    status.bundle = Some(BundleStatus {
        image: p.image.clone(),
        short_digest: short_digest(&p.image),
        tags: p.tags.clone(),
        size: p.size,
        relocated_images: p
            .relocated
            .iter()
            .take(crate::api::source::MAX_LISTED_RELOCATIONS)
            .cloned()
            .collect(),
        relocated_count: (!p.relocated.is_empty())
            .then(|| u32::try_from(p.relocated.len()).unwrap_or(u32::MAX)),
        signature: p.signature.clone(),
    });
    conditions::remove(&mut status.conditions, types::STALLED);
    let applied = match &p.package_repository {
        Some(r) => format!("; PackageRepository {r} fetches it"),
        None => " (packageRepository.create is false: no PackageRepository applied)".to_owned(),
    };
    let message = format!(
        "{} package version(s) from {} PackageSource(s) in {}{applied}",
        p.packages.len(),
        p.sources,
        p.image
    );
    conditions::set(
        &mut status.conditions,
        types::REPOSITORY_PUBLISHED,
        true,
        reasons::SUCCEEDED,
        message.clone(),
        o.generation,
        now,
    );
    conditions::set(
        &mut status.conditions,
        types::READY,
        true,
        reasons::SUCCEEDED,
        message,
        o.generation,
        now,
    );
    status
}

/// The status after a failure; what was published before stays on status.
pub(super) fn failed(
    current: &PackageRepositorySourceStatus,
    o: &Observed<'_>,
    f: &Failure,
) -> PackageRepositorySourceStatus {
    let mut status = current.clone();
    let now = truncate(o.now);
    finish(&mut status, o);
    conditions::set(
        &mut status.conditions,
        types::READY,
        false,
        f.reason,
        f.message.clone(),
        o.generation,
        now,
    );
    conditions::set(
        &mut status.conditions,
        types::REPOSITORY_PUBLISHED,
        false,
        f.reason,
        f.message.clone(),
        o.generation,
        now,
    );
    if f.retry == Retry::Never {
        conditions::set(
            &mut status.conditions,
            types::STALLED,
            true,
            f.reason,
            f.message.clone(),
            o.generation,
            now,
        );
    } else {
        conditions::remove(&mut status.conditions, types::STALLED);
    }
    status
}

/// Nothing to publish: the selector matched no PackageSource, or none of them is Ready yet.
/// Retried at the interval and whenever a selected PackageSource changes.
pub(super) fn nothing_selected(query: &str, selected: &[String], not_ready: &[String]) -> Failure {
    let message = if selected.is_empty() {
        format!(
            "{} matched no PackageSource in this namespace: label the PackageSources to \
             include, or fix spec.selector",
            describe_selector(query)
        )
    } else {
        format!(
            "{} selected {} PackageSource(s) but none has a published Package yet (not Ready or \
             not publishing in-cluster: {}); waiting for them",
            describe_selector(query),
            selected.len(),
            not_ready.join(", ")
        )
    };
    Failure {
        stage: None,
        reason: reasons::DEPENDENCY_NOT_READY,
        message,
        retry: Retry::Interval,
        earlier_stages_ran: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    #[test]
    fn success_failure_and_no_op_statuses() {
        let o = Observed {
            generation: Some(2),
            requested_at: None,
            now: t(100),
        };
        let begun = begin(&Default::default(), &o);
        assert!(conditions::is_true(&begun.conditions, types::RECONCILING));
        let published = Published {
            packages: vec!["a.x.y.1.0.0".into(), "b.x.y.2.0.0".into()],
            image: format!("r.io/repo@sha256:{}", "c".repeat(64)),
            tags: vec!["latest".into()],
            size: Some(10),
            relocated: vec![],
            signature: None,
            sources: 2,
            package_repository: Some("ns/repo".into()),
        };
        let ok = succeeded(&begun, &o, &published);
        assert_eq!(ok.package_count, 2);
        assert_eq!(ok.bundle.as_ref().unwrap().short_digest, "cccccccccccc");
        assert!(conditions::get(&ok.conditions, types::RECONCILING).is_none());
        assert!(conditions::is_true(&ok.conditions, types::READY));
        assert!(conditions::is_true(
            &ok.conditions,
            types::REPOSITORY_PUBLISHED
        ));
        assert!(is_current(&ok, &o, &published.packages));
        // Same state later: identical status, so nothing is written.
        let later = Observed { now: t(500), ..o };
        assert_eq!(succeeded(&ok, &later, &published), ok);
        assert!(!is_current(&ok, &later, &published.packages[..1]));
        assert!(!is_current(
            &ok,
            &Observed {
                requested_at: Some("now"),
                ..later
            },
            &published.packages
        ));

        let none = nothing_selected("repo=main", &[], &[]);
        assert!(none.message.contains("repo=main"), "{}", none.message);
        let waiting = failed(&ok, &later, &none);
        let ready = conditions::get(&waiting.conditions, types::READY).unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", reasons::DEPENDENCY_NOT_READY)
        );
        assert!(conditions::get(&waiting.conditions, types::STALLED).is_none());
        assert_eq!(waiting.bundle, ok.bundle, "the last publication stays");

        let invalid = Failure {
            stage: None,
            reason: reasons::INVALID_SPEC,
            message: "bad".into(),
            retry: Retry::Never,
            earlier_stages_ran: false,
        };
        let stalled = failed(&ok, &later, &invalid);
        assert!(conditions::is_true(&stalled.conditions, types::STALLED));
    }
}
