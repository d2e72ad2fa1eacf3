//! How the process is put together: the watches, the shared [`Context`], the two
//! [`kube::runtime::Controller`]s and what maps a change of one object to the reconciles it
//! causes. [`super::Controller::run`] calls these in order; each is one decision.

use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::core::PartialObjectMeta;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{Controller as KubeController, WatchStreamExt, predicates, watcher};
use kube::runtime::{Predicate, controller};
use kube::{Client, Resource, ResourceExt};
use tokio::task::JoinHandle;

use super::context::{Context, Settings};
use super::health::Probes;
use super::metrics::Metrics;
use super::triggers::{
    api, drift_triggers, drifted_owner, drifted_repository_owner, lifecycle, record_triggers,
    repo_requested_at, requested_at, scoped,
};
use super::{Options, inputs, labels, reconcile, stalls, workdirs};
use crate::api::{PackageRepositorySource, PackageSource};
use crate::carvel::{Package, PackageMetadata, PackageRepository};

/// A stream of objects to reconcile, as the kube runtime's watches yield them.
type Triggers<K> = std::pin::Pin<Box<dyn Stream<Item = Result<K, watcher::Error>> + Send>>;

/// The watches every PackageSource reconcile reads from: the sources themselves, the
/// Secrets and ConfigMaps they reference (metadata only), and the PackageRepositorySources
/// that may select them.
pub(super) struct Watches {
    sources: Store<PackageSource>,
    source_triggers: Triggers<PackageSource>,
    secrets: Store<PartialObjectMeta<Secret>>,
    secret_triggers: Triggers<PartialObjectMeta<Secret>>,
    config_maps: Store<PartialObjectMeta<ConfigMap>>,
    config_map_triggers: Triggers<PartialObjectMeta<ConfigMap>>,
    selections: Store<PackageRepositorySource>,
    selection_triggers: Triggers<PackageRepositorySource>,
}

impl Watches {
    pub(super) fn start(client: &Client, namespace: Option<&str>, selector: Option<&str>) -> Self {
        let (sources, writer) = reflector::store();
        let source_triggers = watcher(api(client, namespace), sharded(selector))
            .default_backoff()
            // Nothing reads managedFields, and each status write adds to them: the store of
            // every source of the shard would hold the API server's field sets, parsed.
            .modify(|s: &mut PackageSource| s.metadata.managed_fields = None)
            .reflect(writer)
            .applied_objects()
            .predicate_filter(
                predicates::generation
                    .combine(requested_at)
                    .combine(lifecycle::<PackageSource>),
                Default::default(),
            )
            .boxed();
        // A referenced Secret or ConfigMap that is created or changes re-runs the sources
        // that name it (found in the PackageSource store: no API call per event). They are
        // watched as metadata only and their store keeps names and resourceVersions (so a
        // Stalled source sees that its Secret was fixed): no Secret data is ever cached.
        let (secrets, secret_triggers) = metadata_watch::<Secret>(client, namespace);
        let (config_maps, config_map_triggers) = metadata_watch::<ConfigMap>(client, namespace);
        // PackageRepositorySources as the source controller sees them: one that selects a
        // source means the source is released through it instead of applied in-cluster.
        let (selections, writer) = reflector::store();
        let selection_triggers = watcher(
            scoped::<PackageRepositorySource>(client, namespace),
            watcher::Config::default(),
        )
        .default_backoff()
        .modify(|r: &mut PackageRepositorySource| {
            r.metadata.managed_fields = None;
            r.status = None;
        })
        .reflect(writer)
        .touched_objects()
        .boxed();
        Watches {
            sources,
            source_triggers,
            secrets,
            secret_triggers,
            config_maps,
            config_map_triggers,
            selections,
            selection_triggers,
        }
    }

    /// Marks the process ready once the PackageSource store has its first full list.
    pub(super) fn report_ready(&self, probes: Arc<Probes>) -> JoinHandle<()> {
        let store = self.sources.clone();
        tokio::spawn(async move {
            // The store's readiness wakes only one waiter, and the controller waits on it
            // too: poll again now and then rather than wait for a wake-up that may not come.
            loop {
                let wait = store.wait_until_ready();
                match tokio::time::timeout(Duration::from_millis(500), wait).await {
                    Ok(Ok(())) => {
                        probes.set_ready(true);
                        break;
                    }
                    Ok(Err(_)) => break,
                    Err(_) => {}
                }
            }
        })
    }
}

/// Metadata of every `K`, without annotations, labels or managed fields (see
/// [`stalls::strip`]); a resourceVersion filter drops the re-list replays of unchanged
/// objects.
fn metadata_watch<K>(
    client: &Client,
    namespace: Option<&str>,
) -> (Store<PartialObjectMeta<K>>, Triggers<PartialObjectMeta<K>>)
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store();
    let triggers = watcher(
        scoped::<PartialObjectMeta<K>>(client, namespace),
        watcher::Config::default(),
    )
    .default_backoff()
    .modify(stalls::strip)
    .reflect(writer)
    .touched_objects()
    .predicate_filter(predicates::resource_version, Default::default())
    .boxed();
    (store, triggers)
}

/// What every reconcile shares.
pub(super) fn context(
    client: &Client,
    options: &Options,
    metrics: Arc<Metrics>,
    watches: &Watches,
) -> Arc<Context> {
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "packsmith".to_owned(),
            instance: std::env::var("POD_NAME").ok(),
        },
    );
    let ctx = Arc::new(Context {
        client: client.clone(),
        settings: Settings {
            allowed_publish_namespaces: options.allowed_publish_namespaces.clone(),
            credentials_namespaces: options.credentials_namespaces.clone(),
            min_interval: options.min_interval,
            cache_dir: options.cache_dir.clone(),
            credentials: options.credentials.clone(),
            egress: options.egress.clone(),
            max_object_disk: options.max_object_disk,
            helm_binary: options.helm_binary.clone(),
            shard_selector: options.label_selector.clone(),
        },
        recorder,
        metrics,
        backoffs: Default::default(),
        repository_fingerprints: Default::default(),
        stalls: Default::default(),
        inputs: stalls::Inputs {
            secrets: watches.secrets.clone(),
            config_maps: watches.config_maps.clone(),
        },
        repositories: watches.selections.clone(),
        work_dirs: workdirs::WorkDirs::new(options.cache_max_size),
        registries: Default::default(),
        signing_keys: super::signing::SigningKeys::new(),
    });
    // What a persistent cache volume kept counts against --cache-max-size from the start.
    let scanning = ctx.clone();
    tokio::task::spawn_blocking(move || {
        scanning.work_dirs.scan(&scanning.settings.cache_dir);
    });
    ctx
}

/// The PackageSource controller: its own triggers, plus every change that should re-run a
/// source — a referenced Secret or ConfigMap, a published object deleted or edited by
/// someone else, a PackageRepositorySource that changes where it is released.
pub(super) fn source_controller(
    client: &Client,
    options: &Options,
    watches: Watches,
) -> KubeController<PackageSource> {
    let namespace = options.namespace.as_deref();
    // What this shard's sources published carries their shard label (`labels::shard_labels`):
    // the shard watches its own share of the fleet's published objects, not all of them.
    let shard = options.label_selector.as_deref();
    let Watches {
        sources,
        source_triggers,
        secret_triggers,
        config_map_triggers,
        selections,
        selection_triggers,
        ..
    } = watches;
    let by_secret = sources.clone();
    let by_config_map = sources.clone();
    let by_selection = sources.clone();
    let (by_package, by_metadata, by_record) = (sources.clone(), sources.clone(), sources.clone());
    let publish_namespaces: Arc<[String]> = options.allowed_publish_namespaces.clone().into();
    let metadata_namespaces = publish_namespaces.clone();
    let controller = KubeController::for_stream(source_triggers, sources)
        .watches_stream(secret_triggers, move |secret| {
            referencing(&by_secret, inputs::RefKind::Secret, &secret)
        })
        .watches_stream(config_map_triggers, move |config_map| {
            referencing(&by_config_map, inputs::RefKind::ConfigMap, &config_map)
        })
        // What sources published: deleted or edited (a new generation), the owner runs
        // again and restores it. kapp-controller's own changes (status, Packages it creates
        // from a PackageRepository, which carry no owner) map to nothing.
        .watches_stream(
            drift_triggers::<Package>(client, namespace, shard),
            move |package: PartialObjectMeta<Package>| {
                drifted_owner(&package, &by_package, &publish_namespaces)
            },
        )
        .watches_stream(
            drift_triggers::<PackageMetadata>(client, namespace, shard),
            move |metadata: PartialObjectMeta<PackageMetadata>| {
                drifted_owner(&metadata, &by_metadata, &metadata_namespaces)
            },
        )
        // Release records: deleted or edited, the owner records the release again. A record
        // lives in its source's namespace, never elsewhere.
        .watches_stream(
            record_triggers(client, namespace, shard),
            move |config_map: PartialObjectMeta<ConfigMap>| {
                drifted_owner(&config_map, &by_record, &[])
            },
        )
        // A create, delete or selector change re-runs the sources whose placement it changes
        // (and those with nothing released yet, which may be mid-run).
        .watches_stream(
            selection_triggers,
            move |repository: PackageRepositorySource| {
                let repositories = selections.state();
                let sources = by_selection.state();
                labels::placement_changed(
                    repositories.iter().map(|r| r.as_ref()),
                    sources
                        .iter()
                        .map(|s| s.as_ref())
                        .filter(|s| s.namespace() == repository.namespace()),
                )
            },
        );
    configured(controller, options)
}

/// The sources in `store` that reference `object` (a Secret or a ConfigMap).
fn referencing<K: Resource>(
    store: &Store<PackageSource>,
    kind: inputs::RefKind,
    object: &PartialObjectMeta<K>,
) -> Vec<ObjectRef<PackageSource>> {
    let state = store.state();
    inputs::referencing(
        state.iter().map(|s| s.as_ref()),
        kind,
        object.namespace().as_deref(),
        &object.name_any(),
    )
}

/// The PackageRepositorySource controller: its own triggers (generation, requestedAt), plus
/// any change of a PackageSource its selector matches (its status flips to Ready, a new
/// version is published), and its PackageRepository deleted or edited (a new generation:
/// kapp-controller's status writes and finalizers leave the generation alone).
pub(super) fn repository_controller(
    client: &Client,
    options: &Options,
) -> KubeController<PackageRepositorySource> {
    let namespace = options.namespace.as_deref();
    let (repositories, writer) = reflector::store();
    let triggers = watcher(
        scoped::<PackageRepositorySource>(client, namespace),
        sharded(options.label_selector.as_deref()),
    )
    .default_backoff()
    .reflect(writer)
    .applied_objects()
    .predicate_filter(
        predicates::generation
            .combine(repo_requested_at)
            .combine(lifecycle::<PackageRepositorySource>),
        Default::default(),
    );
    let selecting = repositories.clone();
    let by_repository = repositories.clone();
    let publish_namespaces: Arc<[String]> = options.allowed_publish_namespaces.clone().into();
    let controller = KubeController::for_stream(triggers, repositories)
        // Every source of every shard (a repository selects across shards), as metadata:
        // the mapping reads only labels and namespace, and each shard sees every status write
        // of the fleet go by — full objects would be the fleet's bytes, over and over.
        .watches_stream(
            watcher(
                scoped::<PartialObjectMeta<PackageSource>>(client, namespace),
                watcher::Config::default(),
            )
            .default_backoff()
            .touched_objects(),
            move |source: PartialObjectMeta<PackageSource>| {
                let state = selecting.state();
                labels::selecting(state.iter().map(|r| r.as_ref()), &source)
            },
        )
        .watches_stream(
            drift_triggers::<PackageRepository>(client, namespace, None),
            move |repository: PartialObjectMeta<PackageRepository>| {
                drifted_repository_owner(&repository, &by_repository, &publish_namespaces)
            },
        );
    configured(controller, options)
}

/// The watch of the objects this process reconciles: only those `selector` selects, when
/// sharded. An object relabelled out of the selector leaves the watch (the API server sends
/// it as deleted): this shard stops reconciling it and the shard it moved to takes over.
fn sharded(selector: Option<&str>) -> watcher::Config {
    match selector {
        Some(selector) => watcher::Config::default().labels(selector),
        None => watcher::Config::default(),
    }
}

fn configured<K: reconcile::Reconciled>(
    controller: KubeController<K>,
    options: &Options,
) -> KubeController<K> {
    let controller =
        controller.with_config(controller::Config::default().concurrency(options.concurrency));
    if options.handle_signals {
        controller.shutdown_on_signal()
    } else {
        controller
    }
}

/// Runs `controller` with the shared reconcile shell until `shutdown`; reconciles in flight
/// finish first.
pub(super) async fn drive<K>(
    controller: KubeController<K>,
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) where
    K: reconcile::Reconciled,
{
    controller
        .graceful_shutdown_on(shutdown)
        .run(reconcile::reconcile::<K>, reconcile::error_policy::<K>, ctx)
        .for_each(|result| async move {
            match result {
                Ok((obj, action)) => {
                    tracing::debug!(kind = K::KIND, object = %obj, ?action, "reconciled");
                }
                Err(e) => tracing::debug!(kind = K::KIND, error = %e, "controller"),
            }
        })
        .await
}
