//! Reconciling one PackageSource: run the pipeline in its work directory, publish what it
//! produced, write status only when it changed, tell people what happened (events), and
//! decide when to look again. Deletion removes what the source published (finalizer).

use std::path::{Path, PathBuf};
use std::time::Instant;

use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event as KubeEvent, EventType};
use kube::{Resource, ResourceExt};

mod publish;
pub(super) mod record;
mod status;

use publish::PublishError;
use status::{Observed, Publication};

use super::context::{Context, KIND};
use super::inputs;
use super::outcome::{Failure, Retry, truncate_note};
use super::ownership::{self, Claim, Owner};
use super::reconcile::{
    ReconcileError, Reconciled, conclude, forget, key, publish_event, still_stalled, write_status,
};
use super::schedule;
use super::stalls::Mark;
use crate::api::conditions::{self, reasons, types};
use crate::api::source::{DeletionPolicy, PackageStatus};
use crate::api::{PackageSource, PackageSourceStatus, REQUESTED_AT_ANNOTATION};
use crate::carvel::package::Package;
use crate::carvel::vendir::LockConfig as VendirLock;
use crate::pipeline::{self, Outcome, PipelineInput, Stage};

impl Reconciled for PackageSource {
    const KIND: &'static str = KIND;
    type Status = PackageSourceStatus;

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

/// How one pipeline run (plus publishing) ended.
struct Produced {
    outcome: Outcome,
    publication: PublicationDone,
}

enum PublicationDone {
    /// Recorded in a ConfigMap instead of applied (or found already recorded).
    Recorded {
        config_map: String,
        selected_by: Vec<String>,
    },
    /// Applied now, or found already applied (nothing written).
    Applied { namespace: String, wrote: bool },
}

async fn apply(
    obj: &PackageSource,
    ctx: &Context,
    api: &Api<PackageSource>,
) -> Result<Action, ReconcileError> {
    let started = Instant::now();
    let key = key(obj);
    let requested_at = obj
        .annotations()
        .get(REQUESTED_AT_ANNOTATION)
        .map(String::as_str);
    let generation = obj.metadata.generation;
    let mut current = obj.status.clone().unwrap_or_default();
    let namespace = obj.namespace().unwrap_or_default();
    let stall = Mark {
        generation,
        requested_at: requested_at.map(str::to_owned),
        inputs: ctx.inputs.fingerprint(
            &namespace,
            inputs::referenced(&obj.spec)
                .iter()
                .map(|(kind, name)| (*kind, name.as_str())),
        ),
    };
    if still_stalled(ctx, obj, &stall) {
        return Ok(Action::await_change());
    }
    let observed = Observed {
        generation,
        requested_at,
        retain: obj.spec.publish.retain,
        now: jiff::Timestamp::now(),
    };
    let new_generation = status::is_new_generation(&current, generation);
    // `Reconciling=True` is written only for a reconcile of a new generation that is still
    // running after BEGIN_DELAY: a quick one goes straight to its result — one status write
    // instead of two, which across a fleet is a third of the writes on the way to Ready —
    // and kstatus reads an object whose observedGeneration lags as in progress anyway (a new
    // one's is the CRD default, -1).
    let begun = new_generation.then(|| status::begin(&current, &observed));
    let mut begun_written = false;
    let result = {
        let production = produce(obj, ctx, &current, new_generation);
        tokio::pin!(production);
        match &begun {
            Some(begun) => {
                tokio::select! {
                    result = &mut production => result,
                    () = tokio::time::sleep(BEGIN_DELAY) => {
                        write_status(ctx, api, obj, &current, begun).await?;
                        begun_written = true;
                        production.await
                    }
                }
            }
            None => production.await,
        }
    };
    if begun_written && let Some(begun) = begun {
        current = begun;
    }
    let (desired, outcome_action) = match &result {
        Ok(produced) => {
            let publication = match &produced.publication {
                PublicationDone::Recorded {
                    config_map,
                    selected_by,
                } => Publication::Recorded {
                    config_map,
                    selected_by,
                },
                PublicationDone::Applied { namespace, .. } => Publication::Applied { namespace },
            };
            (
                status::succeeded(&current, &observed, &produced.outcome, publication),
                None,
            )
        }
        Err((failure, pushed)) => (
            status::failed(&current, &observed, failure, pushed.as_ref()),
            Some(failure),
        ),
    };
    let wrote = write_status(ctx, api, obj, &current, &desired).await?;
    emit_events(ctx, obj, &current, &desired, outcome_action).await;

    let interval = schedule::interval(&obj.spec)
        .ok()
        .map(|i| ctx.settings.interval(i));
    let failure = match result {
        Ok(produced) => {
            let applied = matches!(
                produced.publication,
                PublicationDone::Applied { wrote: true, .. }
            );
            tracing::info!(
                packagesource = %key,
                version = %produced.outcome.version,
                bundle = %produced.outcome.pushed.image,
                status_written = wrote,
                package_applied = applied,
                "reconciled"
            );
            None
        }
        Err((failure, _)) => Some(failure),
    };
    conclude(ctx, obj, started, stall, failure, interval)
}

/// How long a reconcile of a new generation runs before `Reconciling=True` is written.
const BEGIN_DELAY: std::time::Duration = std::time::Duration::from_secs(2);

/// Runs the pipeline (and publishing) within `spec.timeout`.
async fn produce(
    obj: &PackageSource,
    ctx: &Context,
    current: &PackageSourceStatus,
    new_generation: bool,
) -> Result<Produced, (Failure, Option<Outcome>)> {
    let invalid = |e: schedule::DurationError| {
        (
            Failure {
                stage: None,
                reason: reasons::INVALID_SPEC,
                message: e.to_string(),
                retry: Retry::Never,
                earlier_stages_ran: false,
            },
            None,
        )
    };
    schedule::interval(&obj.spec).map_err(invalid)?;
    let timeout = schedule::timeout(&obj.spec).map_err(invalid)?;
    match tokio::time::timeout(timeout, produce_inner(obj, ctx, current, new_generation)).await {
        Ok(result) => result,
        Err(_) => Err((Failure::timeout(timeout), None)),
    }
}

async fn produce_inner(
    obj: &PackageSource,
    ctx: &Context,
    current: &PackageSourceStatus,
    new_generation: bool,
) -> Result<Produced, (Failure, Option<Outcome>)> {
    let spec = &obj.spec;
    let namespace = obj.namespace().unwrap_or_default();
    let name = obj.name_any();
    let no_outcome = |f: Failure| (f, None);

    let secrets = inputs::load_content_secrets(&ctx.client, &namespace, spec)
        .await
        .map_err(no_outcome)?;
    let registry = inputs::registry(
        &ctx.client,
        &ctx.registries,
        &namespace,
        spec,
        &ctx.settings.credentials_for(&namespace),
        &ctx.settings.egress,
    )
    .await
    .map_err(no_outcome)?;
    let signing = ctx
        .signing_keys
        .get(&ctx.client, &namespace, &spec.bundle)
        .await
        .map_err(no_outcome)?;
    let work = work_dir(&ctx.settings.cache_dir, &namespace, &name);
    let _in_use = ctx.work_dirs.use_dir(&work);
    prepare_root(&work, spec, new_generation).map_err(no_outcome)?;

    let previous =
        (!current.contents.is_empty()).then(|| VendirLock::new(current.contents.clone()));
    let publish_namespace = spec
        .publish
        .namespace
        .clone()
        .unwrap_or_else(|| namespace.clone());
    let root = work.join("bundle");
    let metrics = ctx.metrics.clone();
    let on_stage = move |stage: Stage, took: std::time::Duration| {
        metrics.stage(KIND, stage.name(), took);
    };
    let input = PipelineInput {
        spec,
        root: &root,
        exclude: Vec::new(),
        registry: &registry,
        secrets: &secrets,
        cache_dir: Some(work.join("cache")),
        previous: previous.as_ref(),
        tags_override: None,
        repository_override: None,
        now: jiff::Timestamp::now(),
        labels: super::labels::published(obj, ctx.settings.shard_selector.as_deref()),
        namespace: Some(publish_namespace.clone()),
        on_stage: Some(&on_stage),
        sync_policy: crate::sync::Policy::default(),
        egress: ctx.settings.egress.clone(),
        disk_budget: ctx.settings.max_object_disk,
        helm_binary: &ctx.settings.helm_binary,
        signing: signing.as_deref(),
    };
    let started = Instant::now();
    let outcome = pipeline::run(&input).await;
    ctx.metrics.stage(KIND, "pipeline", started.elapsed());
    ctx.metrics
        .registry_requests(KIND, registry.take_requests());
    if matches!(&outcome, Err(e) if e.reason == reasons::DISK_BUDGET_EXCEEDED) {
        // Stalled until a person acts, so nothing would ever reclaim the space: a stalled
        // object keeps no bytes, and its next try syncs cold.
        ctx.work_dirs.discard(&work);
    } else {
        ctx.work_dirs.used(&work);
    }
    let mut outcome = outcome.map_err(|e| (Failure::from(e), None))?;
    let last = match last_release(ctx, &namespace, current, &outcome).await {
        Ok(last) => last,
        Err(e) => return Err((e.to_failure(), Some(outcome))),
    };
    if let Some(last) = &last
        && publish::fetched_image(last) == publish::fetched_image(&outcome.package)
    {
        // The same bundle released again (a re-run, or a move between the cluster and a
        // repository) keeps the time it was first released: no rewrite, no new repository digest.
        outcome.package.spec.released_at = last.spec.released_at;
    }

    let selected_by: Vec<String> =
        super::labels::selecting(ctx.repositories.state().iter().map(|r| r.as_ref()), obj)
            .iter()
            .map(|r| r.name.clone())
            .collect();
    let started = Instant::now();
    if !spec.publish.enabled.unwrap_or(selected_by.is_empty()) {
        let recorded = record_outcome(ctx, obj, current, &outcome).await;
        ctx.metrics.stage(KIND, "publish", started.elapsed());
        return match recorded {
            Ok(config_map) => Ok(Produced {
                outcome,
                publication: PublicationDone::Recorded {
                    config_map,
                    selected_by,
                },
            }),
            Err(e) => Err((e.to_failure(), Some(outcome))),
        };
    }
    let published = publish_outcome(
        ctx,
        obj,
        current,
        &outcome,
        &publish_namespace,
        last.as_ref(),
    )
    .await;
    ctx.metrics.stage(KIND, "publish", started.elapsed());
    match published {
        Ok(wrote) => Ok(Produced {
            outcome,
            publication: PublicationDone::Applied {
                namespace: publish_namespace,
                wrote,
            },
        }),
        Err(e) => Err((e.to_failure(), Some(outcome))),
    }
}

/// The Package this source released last, read from where status says it lives (in-cluster
/// or a release record), when it is `outcome`'s package version.
async fn last_release(
    ctx: &Context,
    namespace: &str,
    current: &PackageSourceStatus,
    outcome: &Outcome,
) -> Result<Option<Package>, PublishError> {
    let Some(last) = current
        .package
        .as_ref()
        .filter(|p| p.name == status::package_name(outcome))
    else {
        return Ok(None);
    };
    // Where status says, then the other place: the status this reconcile sees may predate a
    // move the previous one made (a reflector cache lags the write), and losing the release
    // time would rewrite the record and change the repository's digest.
    let record = record::record_name(&last.name);
    let recorded = || record::package(ctx, namespace, &record);
    if last.config_map.is_some()
        && let Some(found) = recorded().await
    {
        return Ok(Some(found));
    }
    if let Some(ns) = &last.namespace
        && let Some(found) = publish::get(&ctx.client, ns, &last.name).await?
    {
        return Ok(Some(found));
    }
    Ok(if last.config_map.is_none() {
        recorded().await
    } else {
        None
    })
}

/// Applies the Package unless status and cluster already hold exactly this one (`last`, read
/// from where status says it lives); then prunes beyond `retain` and what an earlier
/// `publish.namespace` held. Returns whether it wrote.
async fn publish_outcome(
    ctx: &Context,
    obj: &PackageSource,
    current: &PackageSourceStatus,
    outcome: &Outcome,
    publish_namespace: &str,
    last: Option<&Package>,
) -> Result<bool, PublishError> {
    ctx.settings
        .check_publish_namespace(&obj.namespace().unwrap_or_default(), publish_namespace)
        .map_err(PublishError::NamespaceNotAllowed)?;
    let expected = PackageStatus {
        name: status::package_name(outcome),
        version: outcome.version.clone(),
        namespace: Some(publish_namespace.to_owned()),
        config_map: None,
    };
    let recorded = current.bundle.as_ref().map(|b| b.image.as_str()) == Some(&outcome.pushed.image)
        && current.package.as_ref() == Some(&expected);
    // Skipped only when the Package there is still this source's own and exactly what it
    // would write, and its PackageMetadata is there and its own: status alone is not proof
    // (a person may have deleted or edited them, another source may have replaced them).
    let owner = Owner::of(obj);
    let shard = ctx.settings.shard_selector.as_deref();
    if recorded
        && last.is_some_and(|l| {
            ownership::holds_applied(&l.spec, &outcome.package.spec)
                && ownership::claim(Some(l.meta()), &owner) == Claim::Ours
                && super::labels::labels_in_place(
                    l.metadata.labels.as_ref(),
                    outcome.package.metadata.labels.as_ref(),
                    shard,
                )
        })
        && publish::metadata_in_place(ctx, publish_namespace, &outcome.metadata, &owner).await?
    {
        return Ok(false);
    }
    publish::apply(ctx, publish_namespace, outcome, &owner).await?;
    let deleted = publish::prune(
        ctx,
        publish_namespace,
        &owner,
        &expected.name,
        obj.spec.publish.retain,
    )
    .await?;
    if !deleted.is_empty() {
        tracing::info!(packagesource = %key(obj), deleted = ?deleted, "pruned Packages beyond publish.retain");
    }
    if let Some(old) = current
        .package
        .as_ref()
        .and_then(|p| p.namespace.as_deref())
        .filter(|old| *old != publish_namespace)
    {
        publish::remove_all(ctx, &[old.to_owned()], &owner).await?;
    }
    if current
        .package
        .as_ref()
        .is_some_and(|p| p.config_map.is_some())
    {
        record::remove_all(ctx, &Owner::of(obj)).await?;
    }
    Ok(true)
}

/// Records the release in a ConfigMap unless status and cluster already hold exactly this
/// one, prunes records beyond `retain`, and takes back what the source applied in-cluster
/// before (the repository's PackageRepository now provides it). Returns the ConfigMap's name.
async fn record_outcome(
    ctx: &Context,
    obj: &PackageSource,
    current: &PackageSourceStatus,
    outcome: &Outcome,
) -> Result<String, PublishError> {
    let package_name = status::package_name(outcome);
    let config_map = record::record_name(&package_name);
    let expected = PackageStatus {
        name: package_name,
        version: outcome.version.clone(),
        namespace: None,
        config_map: Some(config_map.clone()),
    };
    let recorded = current.bundle.as_ref().map(|b| b.image.as_str()) == Some(&outcome.pushed.image)
        && current.package.as_ref() == Some(&expected);
    // Skipped only when the record is there, this source's own and holding exactly what it
    // would write (a person may have deleted or edited it; the watch brings us here at once).
    if recorded && record::is_in_place(ctx, obj, outcome).await? {
        return Ok(config_map);
    }
    let deleted = record::apply(ctx, obj, outcome, obj.spec.publish.retain).await?;
    if !deleted.is_empty() {
        tracing::info!(packagesource = %key(obj), deleted = ?deleted, "pruned release records beyond publish.retain");
    }
    if let Some(old) = current
        .package
        .as_ref()
        .and_then(|p| p.namespace.as_deref())
    {
        let removed = publish::remove_all(ctx, &[old.to_owned()], &Owner::of(obj)).await?;
        tracing::info!(packagesource = %key(obj), namespace = old, removed, "removed the in-cluster Packages: now released through a repository");
    }
    Ok(config_map)
}

/// `<cache_dir>/<namespace>/<name>`: `bundle/` is the pipeline's root, `cache/` keeps git
/// objects and downloads between reconciles.
pub(super) fn work_dir(cache_dir: &Path, namespace: &str, name: &str) -> PathBuf {
    cache_dir.join(namespace).join(name)
}

/// Makes `<work>/bundle` hold only what the spec syncs into it: the whole tree is dropped
/// when the spec changed (a removed contents path must not linger in the bundle), and any
/// other top-level entry (a crashed sync's scratch directory) is removed every time.
fn prepare_root(
    work: &Path,
    spec: &crate::api::PackageSourceSpec,
    new_generation: bool,
) -> Result<(), Failure> {
    let root = work.join("bundle");
    let io = |what: String, e: std::io::Error| {
        Failure::before_pipeline(
            Stage::Sync,
            reasons::FETCH_FAILED,
            format!("{what}: {e} (check the controller's --cache-dir volume)"),
            Retry::Backoff,
        )
    };
    if new_generation && root.exists() {
        std::fs::remove_dir_all(&root)
            .map_err(|e| io(format!("clearing {}", root.display()), e))?;
    }
    std::fs::create_dir_all(&root).map_err(|e| io(format!("creating {}", root.display()), e))?;
    std::fs::create_dir_all(work.join("cache"))
        .map_err(|e| io(format!("creating {}/cache", work.display()), e))?;
    let mut keep: Vec<&str> = vec![".imgpkg"];
    keep.extend(
        spec.contents
            .iter()
            .filter_map(|d| d.path.split('/').next()),
    );
    let entries =
        std::fs::read_dir(&root).map_err(|e| io(format!("reading {}", root.display()), e))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if keep.contains(&name.as_str()) {
            continue;
        }
        let path = entry.path();
        let removed = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        removed.map_err(|e| io(format!("removing {}", path.display()), e))?;
    }
    Ok(())
}

/// Normal `Published` for a new version or digest; Warning with the reason for a new
/// failure. The same state again produces no event.
async fn emit_events(
    ctx: &Context,
    obj: &PackageSource,
    before: &PackageSourceStatus,
    after: &PackageSourceStatus,
    failure: Option<&Failure>,
) {
    let event = match failure {
        None => {
            let new_artifact = before.bundle.as_ref().map(|b| &b.image)
                != after.bundle.as_ref().map(|b| &b.image)
                || before.package.as_ref().map(|p| &p.version)
                    != after.package.as_ref().map(|p| &p.version);
            if !new_artifact {
                return;
            }
            KubeEvent {
                type_: EventType::Normal,
                reason: "Published".to_owned(),
                note: conditions::get(&after.conditions, types::READY).map(|c| c.message.clone()),
                action: "Reconcile".to_owned(),
                secondary: None,
            }
        }
        Some(f) => {
            let same = |s: &PackageSourceStatus| {
                conditions::get(&s.conditions, types::READY)
                    .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
            };
            if same(before) == same(after) {
                return;
            }
            KubeEvent {
                type_: EventType::Warning,
                reason: f.reason.to_owned(),
                note: Some(truncate_note(&f.message)),
                action: "Reconcile".to_owned(),
                secondary: None,
            }
        }
    };
    publish_event(ctx, obj, event).await;
}

/// Deletion: removes the Packages (and unused PackageMetadata) this source published unless
/// `publish.deletionPolicy` is `Orphan`, and its work directory.
async fn cleanup(obj: &PackageSource, ctx: &Context) -> Result<Action, ReconcileError> {
    let namespace = obj.namespace().unwrap_or_default();
    let name = obj.name_any();
    // Release records are internal: they go whatever the deletion policy (and with the
    // owner by garbage collection, where a cluster runs it).
    record::remove_all(ctx, &Owner::of(obj))
        .await
        .map_err(cleanup_failed)?;
    if obj.spec.publish.deletion_policy == DeletionPolicy::Delete {
        let mut namespaces = vec![
            obj.spec
                .publish
                .namespace
                .clone()
                .unwrap_or_else(|| namespace.clone()),
        ];
        if let Some(ns) = obj
            .status
            .as_ref()
            .and_then(|s| s.package.as_ref())
            .and_then(|p| p.namespace.clone())
            && !namespaces.contains(&ns)
        {
            namespaces.push(ns);
        }
        let removed = publish::remove_all(ctx, &namespaces, &Owner::of(obj))
            .await
            .map_err(cleanup_failed)?;
        tracing::info!(packagesource = %key(obj), removed, "removed what the PackageSource published");
    }
    forget(
        ctx,
        obj,
        &work_dir(&ctx.settings.cache_dir, &namespace, &name),
    );
    Ok(Action::await_change())
}

fn cleanup_failed(e: PublishError) -> ReconcileError {
    ReconcileError::Cleanup {
        kind: KIND,
        source: Box::new(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(contents: &[&str]) -> crate::api::PackageSourceSpec {
        let dirs: Vec<String> = contents
            .iter()
            .map(|p| {
                format!("- path: {p}\n  contents:\n  - path: .\n    inline: {{paths: {{a: b}}}}\n")
            })
            .collect();
        crate::carvel::yaml::from_str(
            "spec",
            &format!(
                "package: {{refName: a.b.c, version: 1.0.0}}\nbundle: {{repository: r.io/a}}\ncontents:\n{}",
                dirs.concat()
            ),
        )
        .unwrap()
    }

    #[test]
    fn root_keeps_only_what_the_spec_syncs() {
        let tmp = tempfile::tempdir().unwrap();
        let work = work_dir(tmp.path(), "ns", "demo");
        assert_eq!(work, tmp.path().join("ns/demo"));
        let root = work.join("bundle");
        for d in ["config/upstream", "stale", ".packsmith-sync-x", ".imgpkg"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::write(root.join("loose.yaml"), "x").unwrap();
        prepare_root(&work, &spec(&["config/upstream"]), false).unwrap();
        let mut left: Vec<String> = std::fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, [".imgpkg", "config"]);
        assert!(work.join("cache").is_dir());

        // A new generation starts from an empty tree.
        prepare_root(&work, &spec(&["other"]), true).unwrap();
        assert_eq!(std::fs::read_dir(&root).unwrap().count(), 0);
    }
}
