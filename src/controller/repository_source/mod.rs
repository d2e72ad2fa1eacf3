//! Reconciling one PackageRepositorySource: collect the Packages the selected PackageSources
//! published in-cluster (every retained version), write them as a `packages/` tree in the
//! object's work directory, push it as a repository bundle to `spec.bundle`, apply the
//! PackageRepository that fetches it, and write status only when it changed.
//!
//! Every Ready selected source contributes every release it retains: read from its release
//! ConfigMaps (a selected source does not apply its Packages in-cluster unless asked, so that
//! kapp-controller can create them from the repository), or from the Packages it applied
//! (`publish.enabled: true`). A selected source with nothing released is listed as not ready
//! in the status message.
//!
//! A reconcile whose package set (names and every field of every Package) equals what this
//! process last pushed for the object, and whose status already records it, writes and pushes
//! nothing; it only checks that the PackageRepository is still there, its own, and holds what
//! packsmith applies (fetching the recorded bundle), and applies it again when not. A deleted
//! or edited PackageRepository makes its owner reconcile at once (the controller watches
//! them, see [`super`]).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kube::api::{Api, DeleteParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event as KubeEvent, EventType};
use kube::{Resource, ResourceExt};

mod collect;
mod package_repository;
mod status;

use collect::{collect, write_tree};
use package_repository::{ensure_package_repository, package_repository_name};

use status::{self as rstatus, Observed, Published};

use super::context::Context;
use super::inputs;
use super::labels::selector_string;
use super::outcome::{Failure, Retry, truncate_note};
use super::ownership::{self, Owner};
use super::reconcile::{
    ReconcileError, Reconciled, conclude, forget, key, publish_event, still_stalled, write_status,
};
use super::schedule;
use super::stalls::Mark;
use crate::api::REQUESTED_AT_ANNOTATION;
use crate::api::conditions::{self, reasons, types};
use crate::api::repository_source::{PackageRepositorySource, PackageRepositorySourceStatus};
use crate::bundle::{Location, PushOptions};
use crate::carvel::PackageRepository;
use crate::publish::repository::{self as repo, ReleaseOptions, RepositoryError};

/// `kind` label value of the metrics.
pub(super) const KIND: &str = "PackageRepositorySource";
/// Labels on the PackageRepository a PackageRepositorySource applies.
/// Tag pushed when `bundle.tags` is unset (`{{version}}` in tags also becomes this).
pub(super) const DEFAULT_TAG: &str = "latest";

impl Reconciled for PackageRepositorySource {
    const KIND: &'static str = KIND;
    type Status = PackageRepositorySourceStatus;

    fn suspended(&self) -> bool {
        self.spec.suspend
    }

    async fn apply(&self, ctx: &Context, api: &Api<Self>) -> Result<Action, ReconcileError> {
        apply(self, ctx, api).await
    }

    async fn cleanup(&self, ctx: &Context) -> Result<Action, ReconcileError> {
        cleanup(self, ctx).await
    }
}

/// Deletion: removes the PackageRepository it created (kapp-controller then removes the
/// Packages it made from it, and the sources it selected go back to publishing in-cluster),
/// and its work directory. A PackageRepository that is not labelled as this object's is
/// left alone.
async fn cleanup(obj: &PackageRepositorySource, ctx: &Context) -> Result<Action, ReconcileError> {
    let namespace = obj.namespace().unwrap_or_default();
    let name = obj.name_any();
    if obj.spec.package_repository.create {
        let (pkgr_name, pkgr_namespace) = package_repository_name(obj);
        let api: Api<PackageRepository> = Api::namespaced(ctx.client.clone(), &pkgr_namespace);
        let kube = |action: String| move |source| ReconcileError::Kube { action, source };
        match api.get_opt(&pkgr_name).await {
            Ok(Some(existing)) if ownership::is_ours(existing.meta(), &Owner::of(obj)) => {
                let params = DeleteParams {
                    preconditions: Some(kube::api::Preconditions {
                        uid: existing.meta().uid.clone(),
                        resource_version: existing.meta().resource_version.clone(),
                    }),
                    ..DeleteParams::default()
                };
                api.delete(&pkgr_name, &params).await.map_err(kube(format!(
                    "deleting PackageRepository {pkgr_namespace}/{pkgr_name}"
                )))?;
                ctx.metrics.wrote(KIND, "packagerepositories", "delete");
                tracing::info!(packagerepositorysource = %key(obj), packagerepository = %format!("{pkgr_namespace}/{pkgr_name}"), "deleted the PackageRepository");
            }
            Ok(_) => {}
            // No packaging API (or namespace): nothing was created.
            Err(e) if is_not_found(&e) => {}
            Err(e) => {
                return Err(kube(format!(
                    "reading PackageRepository {pkgr_namespace}/{pkgr_name}"
                ))(e));
            }
        }
    }
    forget(
        ctx,
        obj,
        &work_dir(&ctx.settings.cache_dir, &namespace, &name),
    );
    if let Ok(mut m) = ctx.repository_fingerprints.lock() {
        m.remove(&key(obj));
    }
    Ok(Action::await_change())
}

async fn apply(
    obj: &PackageRepositorySource,
    ctx: &Context,
    api: &Api<PackageRepositorySource>,
) -> Result<Action, ReconcileError> {
    let started = Instant::now();
    let requested_at = obj
        .annotations()
        .get(REQUESTED_AT_ANNOTATION)
        .map(String::as_str);
    let generation = obj.metadata.generation;
    let mut current = obj.status.clone().unwrap_or_default();
    // Its Secrets are not watched: only a new generation or requestedAt un-stalls it.
    let stall = Mark {
        generation,
        requested_at: requested_at.map(str::to_owned),
        inputs: 0,
    };
    if still_stalled(ctx, obj, &stall) {
        return Ok(Action::await_change());
    }
    let observed = Observed {
        generation,
        requested_at,
        now: jiff::Timestamp::now(),
    };
    if rstatus::is_new_generation(&current, generation) {
        let begun = rstatus::begin(&current, &observed);
        write_status(ctx, api, obj, &current, &begun).await?;
        current = begun;
    }

    let interval =
        schedule::parse_duration("interval", &obj.spec.interval).map(|i| ctx.settings.interval(i));
    let result = match &interval {
        Err(e) => Err(Failure {
            stage: None,
            reason: reasons::INVALID_SPEC,
            message: e.to_string(),
            retry: Retry::Never,
            earlier_stages_ran: false,
        }),
        Ok(i) => {
            let timeout = (*i).clamp(Duration::from_secs(60), schedule::MAX_DEFAULT_TIMEOUT);
            match tokio::time::timeout(timeout, produce(obj, ctx, &current, &observed)).await {
                Ok(r) => r,
                Err(_) => Err(Failure::timeout(timeout)),
            }
        }
    };
    let desired = match &result {
        Ok(Produced::Unchanged) => current.clone(),
        Ok(Produced::Published(p)) => rstatus::succeeded(&current, &observed, p),
        Err(f) => rstatus::failed(&current, &observed, f),
    };
    let wrote = write_status(ctx, api, obj, &current, &desired).await?;
    emit_event(ctx, obj, &current, &desired, result.as_ref().err()).await;

    let failure = match result {
        Ok(produced) => {
            tracing::info!(
                packagerepositorysource = %key(obj),
                unchanged = matches!(produced, Produced::Unchanged),
                status_written = wrote,
                "reconciled"
            );
            None
        }
        Err(f) => Some(f),
    };
    conclude(ctx, obj, started, stall, failure, interval.ok())
}

enum Produced {
    /// The status already records this package set; nothing pushed.
    Unchanged,
    Published(Published),
}

async fn produce(
    obj: &PackageRepositorySource,
    ctx: &Context,
    current: &PackageRepositorySourceStatus,
    observed: &Observed<'_>,
) -> Result<Produced, Failure> {
    let namespace = obj.namespace().unwrap_or_default();
    let name = obj.name_any();
    let query = selector_string(&obj.spec.selector).map_err(|e| Failure {
        stage: None,
        reason: reasons::INVALID_SPEC,
        message: e.to_string(),
        retry: Retry::Never,
        earlier_stages_ran: false,
    })?;
    let collected = collect(ctx, &namespace, &query).await?;
    if collected.packages.is_empty() {
        return Err(rstatus::nothing_selected(
            &query,
            &collected.selected,
            &collected.not_ready,
        ));
    }
    let (pkgr_name, pkgr_namespace) = package_repository_name(obj);
    let names = collected.names();
    let signing = ctx
        .signing_keys
        .get(&ctx.client, &namespace, &obj.spec.bundle)
        .await?;
    // A new signing key (a rotated Secret) signs the same package set again.
    let fingerprint = {
        use std::hash::{Hash as _, Hasher as _};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        collected.fingerprint().hash(&mut hasher);
        signing
            .as_ref()
            .map(|k| k.public().fingerprint())
            .hash(&mut hasher);
        hasher.finish()
    };
    let pushed_before = ctx
        .repository_fingerprints
        .lock()
        .ok()
        .and_then(|m| m.get(&key(obj)).copied());
    if rstatus::is_current(current, observed, &names) && pushed_before == Some(fingerprint) {
        if obj.spec.package_repository.create
            && let Some(bundle) = &current.bundle
        {
            ensure_package_repository(ctx, obj, &pkgr_name, &pkgr_namespace, &bundle.image).await?;
        }
        return Ok(Produced::Unchanged);
    }

    let work = work_dir(&ctx.settings.cache_dir, &namespace, &name);
    let _in_use = ctx.work_dirs.use_dir(&work);
    write_tree(&work, &collected)?;
    let registry = inputs::bundle_registry(
        &ctx.client,
        &ctx.registries,
        &namespace,
        &obj.spec.bundle,
        &[],
        &ctx.settings.credentials_for(&namespace),
        &ctx.settings.egress,
    )
    .await?;
    let tags = obj.spec.bundle.tags_for(DEFAULT_TAG);
    let first = tags
        .first()
        .cloned()
        .unwrap_or_else(|| DEFAULT_TAG.to_owned());
    let target = Location::parse(&format!("{}:{first}", obj.spec.bundle.repository))
        .map_err(|e| stalled(reasons::INVALID_SPEC, format!("spec.bundle: {e}")))?;
    let started = Instant::now();
    let released = repo::release(
        &registry,
        &work,
        &target,
        &ReleaseOptions {
            name: pkgr_name.clone(),
            namespace: Some(pkgr_namespace.clone()),
            tags,
            push: PushOptions::default(),
            relocate_images: obj.spec.bundle.relocate_images,
            signing: signing.as_deref(),
        },
    )
    .await;
    ctx.metrics.stage(KIND, "push", started.elapsed());
    ctx.work_dirs.used(&work);
    ctx.metrics
        .registry_requests(KIND, registry.take_requests());
    let released = released.map_err(release_failure)?;
    if let Ok(mut m) = ctx.repository_fingerprints.lock() {
        m.insert(key(obj), fingerprint);
    }
    let applied = if obj.spec.package_repository.create {
        ensure_package_repository(
            ctx,
            obj,
            &pkgr_name,
            &pkgr_namespace,
            &released.pushed.image,
        )
        .await?;
        Some(format!("{pkgr_namespace}/{pkgr_name}"))
    } else {
        None
    };
    Ok(Produced::Published(Published {
        packages: names,
        image: released.pushed.image.clone(),
        tags: released.pushed.tags.clone(),
        size: i64::try_from(released.pushed.size).ok(),
        relocated: released.relocated.clone(),
        signature: released.signature.clone(),
        sources: collected.contributing,
        package_repository: applied,
    }))
}

fn stalled(reason: &'static str, message: String) -> Failure {
    Failure {
        stage: None,
        reason,
        message,
        retry: Retry::Never,
        earlier_stages_ran: false,
    }
}

fn release_failure(e: RepositoryError) -> Failure {
    let (reason, retry) = match &e {
        RepositoryError::Bundle(b) if b.is_auth() => (reasons::AUTHENTICATION_FAILED, Retry::Never),
        RepositoryError::Bundle(b) if b.is_retryable() => (reasons::PUSH_FAILED, Retry::Backoff),
        RepositoryError::Bundle(_) => (reasons::PUSH_FAILED, Retry::Never),
        RepositoryError::InvalidName { .. } => (reasons::INVALID_SPEC, Retry::Never),
        RepositoryError::Io { .. } => (reasons::PUSH_FAILED, Retry::Backoff),
        RepositoryError::Signing(s) if s.is_auth() => {
            (reasons::AUTHENTICATION_FAILED, Retry::Never)
        }
        RepositoryError::Signing(s) if s.is_retryable() => {
            (reasons::SIGNING_FAILED, Retry::Backoff)
        }
        RepositoryError::Signing(_) => (reasons::SIGNING_FAILED, Retry::Never),
        // A Package kapp-controller would refuse: fixed by a change of a source, which
        // triggers a reconcile, or retried at the interval.
        _ => (reasons::PUBLISH_FAILED, Retry::Interval),
    };
    Failure {
        stage: None,
        reason,
        message: e.to_string(),
        retry,
        earlier_stages_ran: false,
    }
}

fn api_failure(action: String, e: &kube::Error) -> Failure {
    Failure {
        stage: None,
        reason: reasons::PUBLISH_FAILED,
        message: format!(
            "{action}: {} (retrying with backoff)",
            crate::controller::outcome::api_message(e)
        ),
        retry: Retry::Backoff,
        earlier_stages_ran: false,
    }
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

fn api_missing(what: &str) -> Failure {
    Failure {
        stage: None,
        reason: reasons::PACKAGING_API_MISSING,
        message: format!(
            "the cluster does not serve {what}: kapp-controller is not installed; retried at \
             the interval"
        ),
        retry: Retry::Interval,
        earlier_stages_ran: false,
    }
}

/// `<cache_dir>/<namespace>/.repositories/<name>` (a dot name cannot be a PackageSource's).
pub(super) fn work_dir(cache_dir: &Path, namespace: &str, name: &str) -> PathBuf {
    cache_dir.join(namespace).join(".repositories").join(name)
}

/// Normal `Published` on a new repository digest; Warning on a new failure.
async fn emit_event(
    ctx: &Context,
    obj: &PackageRepositorySource,
    before: &PackageRepositorySourceStatus,
    after: &PackageRepositorySourceStatus,
    failure: Option<&Failure>,
) {
    let ready = |s: &PackageRepositorySourceStatus| {
        conditions::get(&s.conditions, types::READY)
            .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
    };
    let event = match failure {
        None if before.bundle.as_ref().map(|b| &b.image)
            != after.bundle.as_ref().map(|b| &b.image) =>
        {
            KubeEvent {
                type_: EventType::Normal,
                reason: "Published".to_owned(),
                note: ready(after).map(|r| truncate_note(&r.2)),
                action: "Reconcile".to_owned(),
                secondary: None,
            }
        }
        Some(f) if ready(before) != ready(after) => KubeEvent {
            type_: EventType::Warning,
            reason: f.reason.to_owned(),
            note: Some(truncate_note(&f.message)),
            action: "Reconcile".to_owned(),
            secondary: None,
        },
        _ => return,
    };
    publish_event(ctx, obj, event).await;
}

#[cfg(test)]
mod tests {
    use super::collect::clean_package;
    use super::package_repository::{desired_package_repository, in_place};
    use super::*;
    use crate::api::PackageSource;
    use crate::carvel::Package;
    use crate::controller::labels::{
        LABEL_MANAGED_BY, LABEL_REPOSITORY_SOURCE_NAME, MANAGED_BY, placement_changed, selecting,
    };
    use std::collections::BTreeMap;

    fn repository_source(
        name: &str,
        ns: &str,
        selector: serde_json::Value,
    ) -> PackageRepositorySource {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "packsmith.dev/v1alpha1",
            "kind": "PackageRepositorySource",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"selector": selector, "bundle": {"repository": "r.io/repo"}},
        }))
        .unwrap()
    }

    fn source(ns: &str, labels: serde_json::Value) -> PackageSource {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "packsmith.dev/v1alpha1",
            "kind": "PackageSource",
            "metadata": {"name": "s", "namespace": ns, "labels": labels},
            "spec": {
                "package": {"refName": "a.b.c", "version": "1.0.0"},
                "contents": [],
                "bundle": {"repository": "r.io/a"},
            },
        }))
        .unwrap()
    }

    #[test]
    fn a_source_change_maps_to_the_repositories_selecting_it() {
        let repos = [
            repository_source(
                "main",
                "ns",
                serde_json::json!({"matchLabels": {"repo": "main"}}),
            ),
            repository_source("all", "ns", serde_json::json!({})),
            repository_source("other-ns", "elsewhere", serde_json::json!({})),
            repository_source(
                "beta",
                "ns",
                serde_json::json!({"matchExpressions": [{"key": "repo", "operator": "In", "values": ["beta"]}]}),
            ),
        ];
        let names = |s: &PackageSource| {
            selecting(repos.iter(), s)
                .into_iter()
                .map(|r| r.name)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names(&source("ns", serde_json::json!({"repo": "main"}))),
            ["main", "all"]
        );
        assert_eq!(
            names(&source("ns", serde_json::json!({"repo": "beta"}))),
            ["all", "beta"]
        );
        assert_eq!(
            names(&source("elsewhere", serde_json::json!({}))),
            ["other-ns"]
        );
    }

    #[test]
    fn a_repository_change_re_runs_the_sources_it_moves() {
        use crate::api::source::PackageStatus;
        let placed = |labels, enabled: Option<bool>, in_cluster: Option<bool>| {
            let mut s = source("ns", labels);
            s.spec.publish.enabled = enabled;
            s.status = in_cluster.map(|c| crate::api::PackageSourceStatus {
                package: Some(PackageStatus {
                    namespace: c.then(|| "ns".to_owned()),
                    config_map: (!c).then(|| "a.b.c.1.0.0".to_owned()),
                    ..PackageStatus::default()
                }),
                ..Default::default()
            });
            s
        };
        let main = [repository_source(
            "main",
            "ns",
            serde_json::json!({"matchLabels": {"repo": "main"}}),
        )];
        let labelled = || serde_json::json!({"repo": "main"});
        let moved = |repos: &[PackageRepositorySource], s: PackageSource| {
            !placement_changed(repos.iter(), [&s]).is_empty()
        };
        // Selected now, applied in-cluster before: must move into the repository.
        assert!(moved(&main, placed(labelled(), None, Some(true))));
        // Already recorded: nothing to do.
        assert!(!moved(&main, placed(labelled(), None, Some(false))));
        // Asked to stay in-cluster.
        assert!(!moved(&main, placed(labelled(), Some(true), Some(true))));
        // Not selected (any more): back in-cluster.
        assert!(moved(&[], placed(labelled(), None, Some(false))));
        assert!(!moved(&[], placed(labelled(), None, Some(true))));
        // Never released: maybe mid-run, so run it (again).
        assert!(moved(&main, placed(labelled(), None, None)));
    }

    #[test]
    fn package_repository_defaults_and_labels() {
        let mut r = repository_source("main", "ns", serde_json::json!({}));
        assert_eq!(package_repository_name(&r), ("main".into(), "ns".into()));
        r.spec.package_repository.name = Some("x".into());
        r.spec.package_repository.namespace = Some("kapp".into());
        assert_eq!(package_repository_name(&r), ("x".into(), "kapp".into()));
        let d = desired_package_repository(&r, "x", "kapp", "r.io/repo@sha256:00");
        assert_eq!(d.labels()[LABEL_MANAGED_BY], MANAGED_BY);
        assert_eq!(d.labels()[LABEL_REPOSITORY_SOURCE_NAME], "main");
        assert_eq!(d.metadata.namespace.as_deref(), Some("kapp"));
        assert_eq!(
            work_dir(Path::new("/c"), "ns", "main"),
            Path::new("/c/ns/.repositories/main")
        );
    }

    #[test]
    fn a_package_repository_is_in_place_only_when_ours_and_as_applied() {
        let obj = repository_source("main", "ns", serde_json::json!({}));
        let owner = Owner::new(KIND, "ns", "main", "uid-main");
        let image = "r.io/repo@sha256:00";
        let desired = desired_package_repository(&obj, "main", "ns", image);
        let applied = || {
            let mut r = desired.clone();
            r.metadata
                .annotations
                .get_or_insert_with(Default::default)
                .extend(owner.annotations());
            r
        };
        assert!(in_place(&applied(), &desired, &owner));

        // kapp-controller's status and another manager's extra field are not drift.
        let mut reconciled = applied();
        reconciled.status = Some(Default::default());
        reconciled.spec.sync_period = Some("5m".to_owned());
        reconciled
            .labels_mut()
            .insert("team".to_owned(), "a".to_owned());
        assert!(in_place(&reconciled, &desired, &owner));

        // Pointed at another bundle, or at two sources.
        let mut moved = applied();
        if let Some(b) = moved.spec.fetch.imgpkg_bundle.as_mut() {
            b.image = "r.io/attacker@sha256:11".to_owned();
        }
        assert!(!in_place(&moved, &desired, &owner));
        let mut unfetched = applied();
        unfetched.spec.fetch.imgpkg_bundle = None;
        assert!(!in_place(&unfetched, &desired, &owner));

        // A label it is found by removed, or not ours (someone else's, or no annotation).
        let mut unlabelled = applied();
        unlabelled.labels_mut().remove(LABEL_REPOSITORY_SOURCE_NAME);
        assert!(!in_place(&unlabelled, &desired, &owner));
        let other = Owner::new(KIND, "ns", "main", "uid-recreated");
        assert!(!in_place(&applied(), &desired, &other));
        assert!(!in_place(&desired, &desired, &owner));
    }

    #[test]
    fn cluster_metadata_is_dropped_from_repository_documents() {
        let mut p = Package::new("a.b.c", "1.0.0", Default::default());
        p.metadata.namespace = Some("ns".into());
        p.metadata.resource_version = Some("7".into());
        p.metadata.labels = Some(BTreeMap::from([("k".into(), "v".into())]));
        let c = clean_package(p.clone());
        assert_eq!(c.metadata.name, p.metadata.name);
        assert!(c.metadata.namespace.is_none() && c.metadata.labels.is_none());
        assert_eq!(c.spec, p.spec);
    }
}
