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

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event as KubeEvent, EventType};
use kube::{Resource, ResourceExt};

mod status;

use status::{self as rstatus, Observed, Published};

use super::context::Context;
use super::inputs;
use super::labels::{
    LABEL_MANAGED_BY, LABEL_REPOSITORY_SOURCE_NAME, LABEL_REPOSITORY_SOURCE_NAMESPACE, MANAGED_BY,
    selector as published_by, selector_string,
};
use super::outcome::{Failure, Retry, truncate_note};
use super::ownership::{self, Claim, Owner};
use super::reconcile::{
    ReconcileError, Reconciled, conclude, forget, key, publish_event, still_stalled, write_status,
};
use super::schedule;
use super::source::record;
use super::stalls::Mark;
use crate::api::conditions::{self, reasons, types};
use crate::api::repository_source::{PackageRepositorySource, PackageRepositorySourceStatus};
use crate::api::{FIELD_MANAGER, PackageSource, REQUESTED_AT_ANNOTATION};
use crate::bundle::{Location, PushOptions};
use crate::carvel::{Package, PackageMetadata, PackageMetadataSpec, PackageRepository};
use crate::publish::repository::{self as repo, ReleaseOptions, RepositoryError};

/// `kind` label value of the metrics.
pub(super) const KIND: &str = "PackageRepositorySource";
/// Labels on the PackageRepository a PackageRepositorySource applies.
/// Tag pushed when `bundle.tags` is unset (`{{version}}` in tags also becomes this).
pub(super) const DEFAULT_TAG: &str = "latest";
/// API group of kapp-controller's PackageRepository.
const PACKAGING_API: &str = "packaging.carvel.dev/v1alpha1";

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

/// What the selected PackageSources published.
#[derive(Default)]
struct Collected {
    /// By `refName.version`.
    packages: BTreeMap<String, Package>,
    /// By refName.
    metadata: BTreeMap<String, PackageMetadata>,
    /// Names of the selected sources.
    selected: Vec<String>,
    /// Selected sources that contributed nothing, with why.
    not_ready: Vec<String>,
    /// Sources that contributed.
    contributing: usize,
}

impl Collected {
    fn names(&self) -> Vec<String> {
        self.packages.keys().cloned().collect()
    }

    fn fingerprint(&self) -> u64 {
        let text = serde_json::to_string(&(
            self.packages.values().collect::<Vec<_>>(),
            self.metadata.values().collect::<Vec<_>>(),
        ))
        .unwrap_or_default();
        crate::controller::triggers::hash(&text)
    }
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
    let fingerprint = collected.fingerprint();
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
        },
    )
    .await;
    ctx.metrics.stage(KIND, "push", started.elapsed());
    ctx.work_dirs.used(&work);
    ctx.metrics
        .registry_requests(KIND, registry.requests_made());
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
        sources: collected.contributing,
        package_repository: applied,
    }))
}

/// `(name, namespace)` of the PackageRepository: `packageRepository.name`/`.namespace`, else
/// the object's own.
pub(super) fn package_repository_name(obj: &PackageRepositorySource) -> (String, String) {
    let target = &obj.spec.package_repository;
    (
        target.name.clone().unwrap_or_else(|| obj.name_any()),
        target
            .namespace
            .clone()
            .unwrap_or_else(|| obj.namespace().unwrap_or_default()),
    )
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

/// Lists the selected PackageSources and reads the Packages each Ready one published.
async fn collect(ctx: &Context, namespace: &str, query: &str) -> Result<Collected, Failure> {
    let sources: Api<PackageSource> = Api::namespaced(ctx.client.clone(), namespace);
    let list = sources
        .list(&ListParams::default().labels(query))
        .await
        .map_err(|e| api_failure(format!("listing PackageSources in {namespace}"), &e))?;
    let mut out = Collected::default();
    for source in list.items {
        let name = source.name_any();
        out.selected.push(name.clone());
        let status = source.status.clone().unwrap_or_default();
        if !conditions::is_true(&status.conditions, types::READY) {
            out.not_ready.push(format!("{name} (not Ready)"));
            continue;
        }
        let Some(published) = status.package.as_ref() else {
            out.not_ready.push(format!("{name} (nothing released yet)"));
            continue;
        };
        if published.namespace.is_none() {
            // Recorded, not applied in-cluster: the ConfigMaps hold every retained release.
            let records = record::read_all(ctx, &Owner::of(&source))
                .await
                .map_err(|e| Failure {
                    stage: None,
                    reason: reasons::PUBLISH_FAILED,
                    message: format!("reading the releases of PackageSource {namespace}/{name}: {e} (retrying with backoff)"),
                    retry: Retry::Backoff,
                    earlier_stages_ran: false,
                })?;
            if records.is_empty() {
                out.not_ready
                    .push(format!("{name} (no release ConfigMap in {namespace})"));
                continue;
            }
            out.contributing += 1;
            for r in records {
                let ref_name = r.package.spec.ref_name.clone();
                out.metadata
                    .entry(ref_name.clone())
                    .or_insert_with(|| clean_metadata(r.metadata));
                out.packages.insert(
                    format!("{ref_name}.{}", r.package.spec.version),
                    clean_package(r.package),
                );
            }
            continue;
        }
        let publish_ns = published
            .namespace
            .clone()
            .or_else(|| source.spec.publish.namespace.clone())
            .unwrap_or_else(|| namespace.to_owned());
        let packages: Api<Package> = Api::namespaced(ctx.client.clone(), &publish_ns);
        let found = match packages
            .list(&ListParams::default().labels(&published_by(namespace, &name)))
            .await
        {
            // Labels find them; only the owner annotation proves they are this source's.
            Ok(l) => {
                let owner = Owner::of(&source);
                l.items
                    .into_iter()
                    .filter(|p| ownership::is_ours(kube::Resource::meta(p), &owner))
                    .collect::<Vec<_>>()
            }
            Err(e) if is_not_found(&e) => return Err(api_missing("data.packaging.carvel.dev")),
            Err(e) => {
                return Err(api_failure(
                    format!("listing the Packages of PackageSource {namespace}/{name}"),
                    &e,
                ));
            }
        };
        if found.is_empty() {
            out.not_ready
                .push(format!("{name} (no Package in {publish_ns})"));
            continue;
        }
        out.contributing += 1;
        let metadata_api: Api<PackageMetadata> = Api::namespaced(ctx.client.clone(), &publish_ns);
        for package in found {
            let ref_name = package.spec.ref_name.clone();
            if !out.metadata.contains_key(&ref_name) {
                let metadata = metadata_api
                    .get_opt(&ref_name)
                    .await
                    .map_err(|e| {
                        api_failure(
                            format!("reading PackageMetadata {publish_ns}/{ref_name}"),
                            &e,
                        )
                    })?
                    .map(clean_metadata)
                    .unwrap_or_else(|| {
                        PackageMetadata::new(ref_name.clone(), PackageMetadataSpec::default())
                    });
                out.metadata.insert(ref_name.clone(), metadata);
            }
            let package = clean_package(package);
            out.packages
                .insert(format!("{ref_name}.{}", package.spec.version), package);
        }
    }
    Ok(out)
}

/// A Package as it goes into a repository: name and spec, none of the cluster's metadata.
pub(super) fn clean_package(p: Package) -> Package {
    Package {
        metadata: ObjectMeta {
            name: p.metadata.name,
            ..ObjectMeta::default()
        },
        ..p
    }
}

/// A PackageMetadata as it goes into a repository.
pub(super) fn clean_metadata(m: PackageMetadata) -> PackageMetadata {
    PackageMetadata {
        metadata: ObjectMeta {
            name: m.metadata.name,
            ..ObjectMeta::default()
        },
        ..m
    }
}

/// `<cache_dir>/<namespace>/.repositories/<name>` (a dot name cannot be a PackageSource's).
pub(super) fn work_dir(cache_dir: &Path, namespace: &str, name: &str) -> PathBuf {
    cache_dir.join(namespace).join(".repositories").join(name)
}

/// Replaces `<work>/packages` and `<work>/.imgpkg` with the collected documents.
fn write_tree(work: &Path, collected: &Collected) -> Result<(), Failure> {
    let io = |what: String, e: std::io::Error| Failure {
        stage: None,
        reason: reasons::PUSH_FAILED,
        message: format!("{what}: {e} (check the controller's --cache-dir volume)"),
        retry: Retry::Backoff,
        earlier_stages_ran: false,
    };
    for dir in [repo::PACKAGES_DIR, repo::IMGPKG_DIR] {
        let path = work.join(dir);
        if path.exists() {
            std::fs::remove_dir_all(&path)
                .map_err(|e| io(format!("clearing {}", path.display()), e))?;
        }
    }
    std::fs::create_dir_all(work).map_err(|e| io(format!("creating {}", work.display()), e))?;
    for package in collected.packages.values() {
        let metadata = &collected.metadata[&package.spec.ref_name];
        repo::write_package_files(work, package, metadata).map_err(|e| Failure {
            stage: None,
            reason: reasons::PUBLISH_FAILED,
            message: e.to_string(),
            retry: Retry::Backoff,
            earlier_stages_ran: false,
        })?;
    }
    Ok(())
}

/// The PackageRepository as applied: fetches `image`, labelled as owned by packsmith.
pub(super) fn desired_package_repository(
    obj: &PackageRepositorySource,
    name: &str,
    namespace: &str,
    image: &str,
) -> PackageRepository {
    let mut r = PackageRepository::for_bundle(name, image);
    r.metadata.namespace = Some(namespace.to_owned());
    r.metadata.labels = Some(BTreeMap::from([
        (LABEL_MANAGED_BY.to_owned(), MANAGED_BY.to_owned()),
        (LABEL_REPOSITORY_SOURCE_NAME.to_owned(), obj.name_any()),
        (
            LABEL_REPOSITORY_SOURCE_NAMESPACE.to_owned(),
            obj.namespace().unwrap_or_default(),
        ),
    ]));
    r
}

/// Whether `existing` is `owner`'s and holds what applying `desired` would write: its labels
/// and every spec field packsmith sets. Status (kapp-controller's) and fields others add
/// beside packsmith's are not compared: applying would not change them, so counting them
/// would re-apply at every reconcile.
pub(super) fn in_place(
    existing: &PackageRepository,
    desired: &PackageRepository,
    owner: &Owner,
) -> bool {
    ownership::claim(Some(existing.meta()), owner) == Claim::Ours
        && desired
            .labels()
            .iter()
            .all(|(k, v)| existing.labels().get(k) == Some(v))
        && ownership::holds_applied(&existing.spec, &desired.spec)
}

/// Applies the PackageRepository unless it is there, ours, and holds what we apply: status
/// alone is not proof (a person may have deleted or edited it since).
async fn ensure_package_repository(
    ctx: &Context,
    obj: &PackageRepositorySource,
    name: &str,
    namespace: &str,
    image: &str,
) -> Result<(), Failure> {
    if let Err(message) = ctx
        .settings
        .check_publish_namespace(&obj.namespace().unwrap_or_default(), namespace)
    {
        return Err(Failure {
            stage: None,
            reason: reasons::PUBLISH_NAMESPACE_NOT_ALLOWED,
            message,
            retry: Retry::Never,
            earlier_stages_ran: false,
        });
    }
    let api: Api<PackageRepository> = Api::namespaced(ctx.client.clone(), namespace);
    let desired = desired_package_repository(obj, name, namespace, image);
    let action = format!("applying PackageRepository {namespace}/{name}");
    let existing = match api.get_opt(name).await {
        Ok(e) => e,
        Err(e) if is_not_found(&e) => return Err(missing_or(ctx, action, e).await),
        Err(e) => return Err(api_failure(action, &e)),
    };
    let owner = Owner::of(obj);
    let claim = ownership::claim(existing.as_ref().map(|e| e.meta()), &owner);
    if let Claim::Conflict(holder) = claim {
        return Err(Failure {
            stage: None,
            reason: reasons::OWNERSHIP_CONFLICT,
            message: format!(
                "PackageRepository {namespace}/{name} belongs to {holder}; it was left \
                 untouched. Set packageRepository.name, or delete that object if it is stale \
                 (checked again at every interval)"
            ),
            retry: Retry::Interval,
            earlier_stages_ran: false,
        });
    }
    if existing
        .as_ref()
        .is_some_and(|existing| in_place(existing, &desired, &owner))
    {
        return Ok(());
    }
    let mut desired = desired;
    desired
        .metadata
        .annotations
        .get_or_insert_with(Default::default)
        .extend(owner.annotations());
    let result = match &existing {
        None => api
            .create(&kube::api::PostParams::default(), &desired)
            .await
            .map(|_| "create"),
        Some(existing) => {
            desired.metadata.resource_version = existing.meta().resource_version.clone();
            api.patch(
                name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&desired),
            )
            .await
            .map(|_| "apply")
        }
    };
    match result {
        Ok(verb) => {
            ctx.metrics.wrote(KIND, "packagerepositories", verb);
            Ok(())
        }
        Err(e) if is_not_found(&e) => Err(missing_or(ctx, action, e).await),
        Err(e) => Err(api_failure(action, &e)),
    }
}

/// A 404 is either a missing API (kapp-controller absent) or a missing namespace.
async fn missing_or(ctx: &Context, action: String, e: kube::Error) -> Failure {
    match ctx.client.list_api_group_resources(PACKAGING_API).await {
        Ok(list)
            if list
                .resources
                .iter()
                .any(|r| r.name == "packagerepositories") =>
        {
            Failure {
                stage: None,
                reason: reasons::PUBLISH_FAILED,
                message: format!(
                    "{action}: {} (does namespace packageRepository.namespace exist?)",
                    crate::controller::outcome::api_message(&e)
                ),
                retry: Retry::Backoff,
                earlier_stages_ran: false,
            }
        }
        _ => api_missing(PACKAGING_API),
    }
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
    use super::*;
    use crate::controller::labels::{placement_changed, selecting};

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
