//! Pure functions from (current status, what this reconcile found) to the desired status.
//!
//! Nothing here talks to the API server: the reconcile shell compares the result with the current
//! status and writes only when they differ, so a reconcile that finds nothing new writes
//! nothing. Conditions follow kstatus: `Ready` (normal polarity), `Reconciling` and `Stalled`
//! (present only while True), plus one condition per pipeline stage.

use jiff::Timestamp;

use crate::api::conditions::{self, reasons, types};
use crate::api::source::{
    BundleStatus, ImagesStatus, PackageSourceStatus, PackageStatus, PublishedVersion,
};
use crate::carvel::vendir::{LockConfig, LockDirectory, LockDirectoryContents};
use crate::controller::outcome::{Failure, Retry, mark_reconciling, short_digest, truncate};
use crate::pipeline::{Outcome, PipelineError, Stage};

/// Stages in pipeline order, with their condition types.
pub(super) const STAGES: [Stage; 4] = [Stage::Sync, Stage::Lock, Stage::Push, Stage::Render];

/// Condition messages are capped so one noisy upstream error cannot bloat the object.
const MAX_MESSAGE: usize = 2048;

impl From<PipelineError> for Failure {
    fn from(e: PipelineError) -> Self {
        Self {
            stage: Some(e.stage),
            reason: e.reason,
            message: e.message,
            retry: if e.retryable {
                Retry::Backoff
            } else {
                Retry::Never
            },
            earlier_stages_ran: true,
        }
    }
}

/// Facts about the object this reconcile handles.
#[derive(Debug, Clone, Copy)]
pub(super) struct Observed<'a> {
    pub generation: Option<i64>,
    /// Value of the `packsmith.dev/requestedAt` annotation.
    pub requested_at: Option<&'a str>,
    /// `spec.publish.retain`.
    pub retain: u32,
    pub now: Timestamp,
}

/// Where the Package went, when it was published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Publication<'a> {
    /// Applied in this namespace.
    Applied { namespace: &'a str },
    /// Not applied in-cluster; recorded in this ConfigMap (in the source's namespace) for
    /// the PackageRepositorySources named in `selected_by` (none: `publish.enabled` is false).
    Recorded {
        config_map: &'a str,
        selected_by: &'a [String],
    },
}

impl Publication<'_> {
    /// Why the Package is not applied in-cluster, for messages.
    fn why_recorded(selected_by: &[String]) -> String {
        if selected_by.is_empty() {
            "publish.enabled is false".to_owned()
        } else {
            format!(
                "selected by PackageRepositorySource {}: kapp-controller creates it from the \
                 repository; set publish.enabled: true to apply it in-cluster as well",
                selected_by.join(", ")
            )
        }
    }
}

/// Whether this generation has not been reconciled yet.
pub(super) fn is_new_generation(current: &PackageSourceStatus, generation: Option<i64>) -> bool {
    current.observed_generation != generation || current.observed_generation.is_none()
}

#[cfg(test)]
/// Whether the `requestedAt` annotation asks for a reconcile not yet handled.
pub(super) fn is_new_request(current: &PackageSourceStatus, requested_at: Option<&str>) -> bool {
    requested_at.is_some() && current.last_handled_reconcile_at.as_deref() != requested_at
}

/// The status written when work on a new generation starts: `Reconciling=True`, and
/// `Ready=False/Progressing` when the object has never been reconciled. Everything else, in
/// particular `observedGeneration`, stays until the reconcile ends.
pub(super) fn begin(current: &PackageSourceStatus, o: &Observed<'_>) -> PackageSourceStatus {
    let mut status = current.clone();
    mark_reconciling(&mut status.conditions, o.generation, o.now);
    status
}

/// Why a version was published with content other than what it held (a revision, or the
/// tag moved by `versionPolicy: Overwrite`), naming the inputs that changed since the last
/// status: it ends up in the Ready message and the `Published` event.
fn revision_note(current: &PackageSourceStatus, outcome: &Outcome) -> Option<String> {
    let before = outcome.changed_from.as_ref()?;
    let mut changed: Vec<String> = Vec::new();
    let previous: std::collections::BTreeMap<&str, &LockDirectory> = current
        .contents
        .iter()
        .map(|d| (d.path.as_str(), d))
        .collect();
    for directory in &outcome.contents.directories {
        if previous.get(directory.path.as_str()) != Some(&directory) {
            changed.push(format!("the upstream of {}", directory.path));
        }
    }
    let locked_before = current.images.as_ref().map(|i| i.locked.as_slice());
    if locked_before.is_some_and(|locked| locked != outcome.images.as_slice()) {
        changed.push("the locked images".to_owned());
    }
    let why = if changed.is_empty() {
        "the bundle's files (an overlay, or inputs changed before this status)".to_owned()
    } else {
        changed.join(", ")
    };
    Some(format!(
        "the content under this version changed since {before} was published (changed: {why})"
    ))
}

/// The status after a reconcile that pushed and (unless disabled) published `outcome`.
pub(super) fn succeeded(
    current: &PackageSourceStatus,
    o: &Observed<'_>,
    outcome: &Outcome,
    publication: Publication<'_>,
) -> PackageSourceStatus {
    let mut status = current.clone();
    let now = truncate(o.now);
    record_artifact(&mut status, outcome);
    record_publication(&mut status, o, outcome, publication);

    let gen_ = o.generation;
    let c = &mut status.conditions;
    conditions::set(
        c,
        types::CONTENT_SYNCED,
        true,
        reasons::SUCCEEDED,
        describe_contents(&outcome.contents),
        gen_,
        now,
    );
    conditions::set(
        c,
        types::IMAGES_LOCKED,
        true,
        reasons::SUCCEEDED,
        describe_images(&outcome.images, &outcome.lock_warnings),
        gen_,
        now,
    );
    conditions::set(
        c,
        types::BUNDLE_PUSHED,
        true,
        reasons::SUCCEEDED,
        format!(
            "pushed {} (tags: {})",
            outcome.pushed.image,
            outcome.pushed.tags.join(", ")
        ),
        gen_,
        now,
    );
    match publication {
        Publication::Applied { namespace } => {
            conditions::set(
                c,
                types::PACKAGE_PUBLISHED,
                true,
                reasons::SUCCEEDED,
                format!(
                    "applied Package {} and PackageMetadata {} in namespace {namespace}",
                    package_name(outcome),
                    outcome.package.spec.ref_name
                ),
                gen_,
                now,
            );
        }
        Publication::Recorded {
            config_map,
            selected_by,
        } => {
            conditions::set(
                c,
                types::PACKAGE_PUBLISHED,
                true,
                reasons::SUCCEEDED,
                format!(
                    "recorded Package {} and PackageMetadata {} in ConfigMap {config_map}, not \
                     applied in-cluster ({})",
                    package_name(outcome),
                    outcome.package.spec.ref_name,
                    Publication::why_recorded(selected_by)
                ),
                gen_,
                now,
            );
        }
    }
    let ready = match publication {
        Publication::Applied { namespace } => format!(
            "published {} version {} in namespace {namespace} from bundle {}",
            outcome.package.spec.ref_name, outcome.version, outcome.pushed.image
        ),
        Publication::Recorded { selected_by, .. } if !selected_by.is_empty() => format!(
            "released {} version {} from bundle {} for PackageRepositorySource {}",
            outcome.package.spec.ref_name,
            outcome.version,
            outcome.pushed.image,
            selected_by.join(", ")
        ),
        Publication::Recorded { .. } => format!(
            "pushed {} version {} as bundle {} (publish.enabled is false: no Package applied)",
            outcome.package.spec.ref_name, outcome.version, outcome.pushed.image
        ),
    };
    let ready = match revision_note(current, outcome) {
        Some(note) => format!("{ready}; {note}"),
        None => ready,
    };
    conditions::set(c, types::READY, true, reasons::SUCCEEDED, ready, gen_, now);
    conditions::remove(c, types::STALLED);
    conditions::remove(c, types::RECONCILING);
    finish(&mut status, o);
    status
}

/// The status after a failed reconcile. `pushed` is the pipeline's outcome when the bundle was
/// pushed but publishing it failed: the artifact is then recorded even though Ready is False.
pub(super) fn failed(
    current: &PackageSourceStatus,
    o: &Observed<'_>,
    failure: &Failure,
    pushed: Option<&Outcome>,
) -> PackageSourceStatus {
    let mut status = current.clone();
    let now = truncate(o.now);
    if let Some(outcome) = pushed {
        record_artifact(&mut status, outcome);
    }
    let message = truncate_message(&failure.message);
    let gen_ = o.generation;
    let c = &mut status.conditions;
    if let Some(failed_stage) = failure.stage {
        let failed_at = STAGES.iter().position(|s| *s == failed_stage).unwrap_or(0);
        for (i, stage) in STAGES.iter().enumerate() {
            let type_ = stage.condition();
            if i < failed_at {
                if failure.earlier_stages_ran {
                    // Keep the detailed message of the last success; only say it succeeded
                    // when nothing better is recorded.
                    let keep = conditions::get(c, type_).is_some_and(|cond| {
                        cond.status == conditions::TRUE && cond.reason == reasons::SUCCEEDED
                    });
                    if keep {
                        if let Some(cond) = c.iter_mut().find(|cond| cond.type_ == type_) {
                            cond.observed_generation = gen_;
                        }
                    } else {
                        conditions::set(
                            c,
                            type_,
                            true,
                            reasons::SUCCEEDED,
                            "succeeded in the last reconcile",
                            gen_,
                            now,
                        );
                    }
                }
            } else if i == failed_at {
                conditions::set(c, type_, false, failure.reason, message.clone(), gen_, now);
            } else {
                conditions::set(
                    c,
                    type_,
                    false,
                    reasons::DEPENDENCY_NOT_READY,
                    format!("waiting for {} to succeed", failed_stage.condition()),
                    gen_,
                    now,
                );
            }
        }
    }
    conditions::set(
        c,
        types::READY,
        false,
        failure.reason,
        message.clone(),
        gen_,
        now,
    );
    if failure.is_stalled() {
        conditions::set(c, types::STALLED, true, failure.reason, message, gen_, now);
    } else {
        conditions::remove(c, types::STALLED);
    }
    conditions::remove(c, types::RECONCILING);
    finish(&mut status, o);
    status
}

fn finish(status: &mut PackageSourceStatus, o: &Observed<'_>) {
    status.observed_generation = o.generation;
    if let Some(requested) = o.requested_at {
        status.last_handled_reconcile_at = Some(requested.to_owned());
    }
}

/// contents, images and bundle: what was fetched and pushed.
fn record_artifact(status: &mut PackageSourceStatus, outcome: &Outcome) {
    status.contents = outcome.contents.directories.clone();
    status.images = Some(ImagesStatus {
        count: u32::try_from(outcome.images.len()).unwrap_or(u32::MAX),
        locked: outcome.images.clone(),
    });
    status.bundle = Some(BundleStatus {
        image: outcome.pushed.image.clone(),
        short_digest: short_digest(&outcome.pushed.image),
        tags: outcome.pushed.tags.clone(),
        size: i64::try_from(outcome.pushed.size).ok(),
        relocated_images: outcome
            .relocated
            .iter()
            .take(crate::api::source::MAX_LISTED_RELOCATIONS)
            .cloned()
            .collect(),
        relocated_count: (!outcome.relocated.is_empty())
            .then(|| u32::try_from(outcome.relocated.len()).unwrap_or(u32::MAX)),
        signature: outcome.signature.clone(),
    });
}

/// package and history: what was published.
fn record_publication(
    status: &mut PackageSourceStatus,
    o: &Observed<'_>,
    outcome: &Outcome,
    publication: Publication<'_>,
) {
    status.package = Some(PackageStatus {
        name: package_name(outcome),
        version: outcome.version.clone(),
        namespace: match publication {
            Publication::Applied { namespace } => Some(namespace.to_owned()),
            Publication::Recorded { .. } => None,
        },
        config_map: match publication {
            Publication::Applied { .. } => None,
            Publication::Recorded { config_map, .. } => Some(config_map.to_owned()),
        },
    });
    status.history = history(
        &status.history,
        &outcome.version,
        &outcome.pushed.image,
        o.retain,
        truncate(o.now),
    );
}

/// `history` with (version, image) as its newest entry: unchanged when it already is, else the
/// entry is put first (replacing an older entry of the same version, whose Package it
/// overwrote) and the list cut to `retain`.
pub(super) fn history(
    history: &[PublishedVersion],
    version: &str,
    image: &str,
    retain: u32,
    now: Timestamp,
) -> Vec<PublishedVersion> {
    let retain = usize::try_from(retain.max(1)).unwrap_or(usize::MAX);
    let mut out: Vec<PublishedVersion> = Vec::with_capacity(retain);
    match history.first() {
        Some(first) if first.version == version && first.image == image => {
            out.push(first.clone());
        }
        _ => out.push(PublishedVersion {
            version: version.to_owned(),
            image: image.to_owned(),
            published_at: now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        }),
    }
    out.extend(
        history
            .iter()
            .filter(|h| h.version != version)
            .take(retain - 1)
            .cloned(),
    );
    out
}

/// metadata.name of the Package.
pub(super) fn package_name(outcome: &Outcome) -> String {
    outcome
        .package
        .metadata
        .name
        .clone()
        .unwrap_or_else(|| format!("{}.{}", outcome.package.spec.ref_name, outcome.version))
}

fn truncate_message(message: &str) -> String {
    if message.len() <= MAX_MESSAGE {
        return message.to_owned();
    }
    let mut end = MAX_MESSAGE;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &message[..end])
}

fn describe_images(images: &[String], warnings: &[String]) -> String {
    let locked = match images.len() {
        0 => "no image references to lock".to_owned(),
        1 => "locked 1 image to its digest".to_owned(),
        n => format!("locked {n} images to digests"),
    };
    if warnings.is_empty() {
        return locked;
    }
    truncate_message(&format!("{locked}; warning: {}", warnings.join("; ")))
}

/// One line naming what each content fetched, e.g.
/// `config/upstream: git 1a2b3c4d5e6f (v1.2.3)`.
pub(super) fn describe_contents(lock: &LockConfig) -> String {
    let mut parts = Vec::new();
    for dir in &lock.directories {
        for content in &dir.contents {
            let path = if content.path == "." {
                dir.path.clone()
            } else {
                format!("{}/{}", dir.path, content.path)
            };
            parts.push(format!("{path}: {}", describe_content(content)));
        }
    }
    if parts.is_empty() {
        return "synced no contents".to_owned();
    }
    truncate_message(&format!("synced {}", parts.join("; ")))
}

fn describe_content(c: &LockDirectoryContents) -> String {
    use crate::carvel::vendir::Locked;
    let short = |sha: &str| sha.chars().take(12).collect::<String>();
    match c.locked() {
        Some(Locked::Git(git)) if git.tags.is_empty() => format!("git {}", short(&git.sha)),
        Some(Locked::Git(git)) => format!("git {} ({})", short(&git.sha), git.tags.join(", ")),
        Some(Locked::GithubRelease(release)) => format!("githubRelease {}", release.tag),
        Some(Locked::HelmChart(chart)) => format!("helmChart {}", chart.version),
        Some(Locked::Image(image)) => format!("image {}", image.url),
        Some(Locked::ImgpkgBundle(bundle)) => format!("imgpkgBundle {}", bundle.image),
        Some(Locked::Hg(hg)) => format!("hg {}", short(&hg.sha)),
        Some(Locked::Http) => "http".to_owned(),
        Some(Locked::Inline) => "inline".to_owned(),
        Some(Locked::Directory) => "directory".to_owned(),
        Some(Locked::Manual) => "manual".to_owned(),
        None => "content".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::Pushed;
    use crate::carvel::vendir::{LockDirectory, LockGit};
    use crate::carvel::{Package, PackageMetadata};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

    const IMAGE: &str =
        "r.io/p/demo@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    fn observed(generation: i64, now: i64) -> Observed<'static> {
        Observed {
            generation: Some(generation),
            requested_at: None,
            retain: 3,
            now: t(now),
        }
    }

    fn outcome(version: &str, image: &str) -> Outcome {
        let contents = LockConfig::new(vec![LockDirectory {
            path: "config/upstream".into(),
            contents: vec![LockDirectoryContents {
                path: ".".into(),
                git: Some(LockGit {
                    sha: "a".repeat(40),
                    tags: vec![format!("v{version}")],
                    commit_title: "release".into(),
                }),
                ..Default::default()
            }],
        }]);
        Outcome {
            contents,
            version: version.into(),
            changed_from: None,
            images: vec!["quay.io/x/y@sha256:00".into()],
            lock_warnings: vec![],
            pushed: Pushed {
                image: image.into(),
                tags: vec![version.into(), "sha256-0123.imgpkg".into()],
                uploaded: vec![],
                written_tags: vec![],
                size: 1234,
            },
            relocated: vec![],
            signature: None,
            package: Package::new("demo.example.com", version, Default::default()),
            metadata: PackageMetadata::new("demo.example.com", Default::default()),
        }
    }

    /// `relocateImages` of a bundle locking many images: status lists where the first 64
    /// went and counts them all, so it stays small.
    #[test]
    fn relocations_on_status_are_bounded() {
        let mut o = outcome("1.0.0", "r.io/demo@sha256:22");
        o.relocated = (0..100)
            .map(|i| format!("r.io/demo@sha256:{i:064}"))
            .collect();
        let mut status = PackageSourceStatus::default();
        record_artifact(&mut status, &o);
        let bundle = status.bundle.expect("bundle status");
        assert_eq!(bundle.relocated_images.len(), 64);
        assert_eq!(bundle.relocated_images[0], o.relocated[0]);
        assert_eq!(bundle.relocated_count, Some(100));
    }

    /// A revision names what changed since the status before it: the upstream of a directory,
    /// the locked images, or (nothing recorded differs) the bundle's own files.
    #[test]
    fn a_revision_says_which_inputs_changed() {
        let mut revised = outcome("1.0.0+packsmith.2", "r.io/demo@sha256:22");
        assert_eq!(
            revision_note(&PackageSourceStatus::default(), &revised),
            None
        );
        revised.changed_from = Some("r.io/demo@sha256:11".into());
        let mut before = PackageSourceStatus::default();
        record_artifact(&mut before, &revised);
        let note = revision_note(&before, &revised).expect("a note");
        assert!(note.contains("r.io/demo@sha256:11"), "{note}");
        assert!(note.contains("the bundle's files"), "{note}");

        before.images = Some(ImagesStatus {
            count: 1,
            locked: vec!["quay.io/x/y@sha256:99".into()],
        });
        before.contents[0].contents[0].path = "elsewhere".into();
        let note = revision_note(&before, &revised).expect("a note");
        let directory = &revised.contents.directories[0].path;
        assert!(
            note.contains(&format!("the upstream of {directory}"))
                && note.contains("the locked images"),
            "{note}"
        );
    }

    fn cond<'a>(s: &'a PackageSourceStatus, type_: &str) -> &'a Condition {
        conditions::get(&s.conditions, type_).unwrap_or_else(|| panic!("no {type_}"))
    }

    #[test]
    fn success_sets_every_condition_and_the_artifact() {
        let o = observed(1, 100);
        let started = begin(&PackageSourceStatus::default(), &o);
        assert_eq!(cond(&started, types::RECONCILING).status, "True");
        assert_eq!(cond(&started, types::READY).reason, reasons::PROGRESSING);
        assert_eq!(started.observed_generation, None);

        let out = outcome("1.2.3", IMAGE);
        let s = succeeded(
            &started,
            &o,
            &out,
            Publication::Applied { namespace: "pkgs" },
        );
        assert!(conditions::get(&s.conditions, types::RECONCILING).is_none());
        assert!(conditions::get(&s.conditions, types::STALLED).is_none());
        let ready = cond(&s, types::READY);
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("True", "Succeeded")
        );
        assert!(
            ready.message.contains("1.2.3") && ready.message.contains(IMAGE),
            "{}",
            ready.message
        );
        for stage in STAGES {
            assert_eq!(cond(&s, stage.condition()).status, "True", "{stage:?}");
        }
        assert!(
            cond(&s, types::CONTENT_SYNCED)
                .message
                .contains("config/upstream: git aaaaaaaaaaaa (v1.2.3)")
        );
        assert_eq!(s.observed_generation, Some(1));
        let bundle = s.bundle.as_ref().unwrap();
        assert_eq!(bundle.short_digest, "0123456789ab");
        assert_eq!(bundle.size, Some(1234));
        assert_eq!(s.images.as_ref().unwrap().count, 1);
        assert_eq!(
            s.package,
            Some(PackageStatus {
                name: "demo.example.com.1.2.3".into(),
                version: "1.2.3".into(),
                namespace: Some("pkgs".into()),
                config_map: None,
            })
        );
        assert_eq!(s.history.len(), 1);
        assert_eq!(s.history[0].published_at, "1970-01-01T00:01:40Z");
    }

    #[test]
    fn the_same_outcome_again_changes_nothing() {
        let out = outcome("1.2.3", IMAGE);
        let first = succeeded(
            &PackageSourceStatus::default(),
            &observed(1, 100),
            &out,
            Publication::Applied { namespace: "pkgs" },
        );
        let again = succeeded(
            &first,
            &observed(1, 5000),
            &out,
            Publication::Applied { namespace: "pkgs" },
        );
        pretty_assertions::assert_eq!(first, again);
        // Neither does a new generation start after it is observed.
        assert!(!is_new_generation(&again, Some(1)));
        assert!(is_new_generation(&again, Some(2)));
    }

    #[test]
    fn request_annotation_is_echoed_once_handled() {
        let out = outcome("1.2.3", IMAGE);
        let mut o = observed(1, 100);
        o.requested_at = Some("2026-01-01T00:00:00Z");
        let s = succeeded(
            &PackageSourceStatus::default(),
            &o,
            &out,
            Publication::Recorded {
                config_map: "demo.example.com.1.2.3",
                selected_by: &[],
            },
        );
        assert_eq!(
            s.last_handled_reconcile_at.as_deref(),
            Some("2026-01-01T00:00:00Z")
        );
        assert!(!is_new_request(&s, o.requested_at));
        assert!(is_new_request(&s, Some("later")));
        assert!(
            cond(&s, types::PACKAGE_PUBLISHED)
                .message
                .contains("in ConfigMap demo.example.com.1.2.3, not applied in-cluster")
        );
        assert_eq!(s.package.as_ref().unwrap().namespace, None);
        assert_eq!(
            s.package.as_ref().unwrap().config_map.as_deref(),
            Some("demo.example.com.1.2.3")
        );
        assert!(
            cond(&s, types::READY)
                .message
                .contains("publish.enabled is false")
        );
    }

    #[test]
    fn retryable_failure_marks_the_stage_and_its_dependents() {
        let ok = succeeded(
            &PackageSourceStatus::default(),
            &observed(1, 100),
            &outcome("1.2.3", IMAGE),
            Publication::Applied { namespace: "pkgs" },
        );
        let failure = Failure::from(PipelineError {
            stage: Stage::Lock,
            reason: reasons::LOCK_FAILED,
            message: "registry unreachable; retrying".into(),
            retryable: true,
        });
        let s = failed(&ok, &observed(2, 200), &failure, None);
        let ready = cond(&s, types::READY);
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", reasons::LOCK_FAILED)
        );
        assert_eq!(ready.last_transition_time, Time(t(200)));
        assert!(conditions::get(&s.conditions, types::STALLED).is_none());
        let synced = cond(&s, types::CONTENT_SYNCED);
        assert_eq!(synced.status, "True");
        assert!(synced.message.contains("git"), "kept: {}", synced.message);
        assert_eq!(synced.observed_generation, Some(2));
        assert_eq!(cond(&s, types::IMAGES_LOCKED).reason, reasons::LOCK_FAILED);
        for later in [types::BUNDLE_PUSHED, types::PACKAGE_PUBLISHED] {
            let c = cond(&s, later);
            assert_eq!(
                (c.status.as_str(), c.reason.as_str()),
                ("False", reasons::DEPENDENCY_NOT_READY)
            );
            assert!(c.message.contains(types::IMAGES_LOCKED));
        }
        // The last artifact stays on status.
        assert_eq!(s.bundle, ok.bundle);
        assert_eq!(s.observed_generation, Some(2));
    }

    #[test]
    fn non_retryable_failure_stalls_until_the_spec_changes() {
        let failure = Failure::from(PipelineError {
            stage: Stage::Push,
            reason: reasons::AUTHENTICATION_FAILED,
            message: "401 from r.io: check spec.bundle.secretRef".into(),
            retryable: false,
        });
        let s = failed(
            &PackageSourceStatus::default(),
            &observed(3, 10),
            &failure,
            None,
        );
        let stalled = cond(&s, types::STALLED);
        assert_eq!(stalled.reason, reasons::AUTHENTICATION_FAILED);
        // Failing the same way again is not a change.
        let again = failed(&s, &observed(3, 99), &failure, None);
        assert_eq!(s, again);
    }

    #[test]
    fn a_failure_before_the_pipeline_leaves_earlier_stages_alone() {
        let failure = Failure::before_pipeline(
            Stage::Push,
            reasons::REFERENCE_NOT_FOUND,
            "Secret ns/creds not found",
            Retry::Backoff,
        );
        let s = failed(
            &PackageSourceStatus::default(),
            &observed(1, 10),
            &failure,
            None,
        );
        assert!(conditions::get(&s.conditions, types::CONTENT_SYNCED).is_none());
        assert_eq!(
            cond(&s, types::BUNDLE_PUSHED).reason,
            reasons::REFERENCE_NOT_FOUND
        );
        let timeout = failed(
            &s,
            &observed(1, 20),
            &Failure::timeout(std::time::Duration::from_secs(60)),
            None,
        );
        assert_eq!(cond(&timeout, types::READY).reason, reasons::TIMEOUT);
        assert_eq!(
            cond(&timeout, types::BUNDLE_PUSHED).reason,
            reasons::REFERENCE_NOT_FOUND
        );
    }

    #[test]
    fn packaging_api_missing_records_the_pushed_bundle() {
        let out = outcome("1.2.3", IMAGE);
        let failure = Failure {
            stage: Some(Stage::Render),
            reason: reasons::PACKAGING_API_MISSING,
            message: "kapp-controller is not installed".into(),
            retry: Retry::Interval,
            earlier_stages_ran: true,
        };
        let s = failed(
            &PackageSourceStatus::default(),
            &observed(1, 10),
            &failure,
            Some(&out),
        );
        assert_eq!(s.bundle.as_ref().unwrap().image, IMAGE);
        assert!(s.package.is_none() && s.history.is_empty());
        assert!(conditions::get(&s.conditions, types::STALLED).is_none());
        assert_eq!(
            cond(&s, types::PACKAGE_PUBLISHED).reason,
            reasons::PACKAGING_API_MISSING
        );
        assert_eq!(cond(&s, types::BUNDLE_PUSHED).status, "True");
    }

    #[test]
    fn history_is_newest_first_deduplicated_and_bounded() {
        let mut h = Vec::new();
        for (i, v) in ["1.0.0", "1.1.0", "1.2.0", "1.3.0"].iter().enumerate() {
            h = history(&h, v, &format!("r@sha256:{i}"), 3, t(i as i64));
        }
        let versions: Vec<_> = h.iter().map(|e| e.version.as_str()).collect();
        assert_eq!(versions, ["1.3.0", "1.2.0", "1.1.0"]);
        // Same version, new digest: replaces its entry and moves first.
        let h2 = history(&h, "1.2.0", "r@sha256:new", 3, t(10));
        let versions: Vec<_> = h2.iter().map(|e| e.version.as_str()).collect();
        assert_eq!(versions, ["1.2.0", "1.3.0", "1.1.0"]);
        // Same version and digest: unchanged.
        assert_eq!(history(&h2, "1.2.0", "r@sha256:new", 3, t(20)), h2);
    }

    #[test]
    fn messages_are_bounded_at_a_char_boundary() {
        let long = "é".repeat(5000);
        let m = truncate_message(&long);
        assert!(m.len() <= MAX_MESSAGE + '…'.len_utf8());
        assert_eq!(short_digest("no-digest"), "");
    }
}
