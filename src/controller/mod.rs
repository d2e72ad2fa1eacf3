//! `packsmith controller`: the operator reconciling PackageSource objects.
//!
//! One [`kube::runtime::Controller`] over PackageSources (all namespaces, or one with
//! `--namespace`), triggered only by a new generation, a new `packsmith.dev/requestedAt`
//! annotation or a finalizer/deletion change — never by its own status writes — plus its own
//! requeues (interval with jitter after success, exponential backoff after a retryable
//! failure). Each reconcile runs [`crate::pipeline::run`] (see [`source`]). A second
//! Controller in the same process reconciles PackageRepositorySources ([`repository`]),
//! sharing the context, metrics and shutdown, and re-runs one whenever a PackageSource its
//! selector matches changes. What they publish (Packages, PackageMetadata, release records,
//! PackageRepositories) is watched as metadata only: one deleted or edited makes its owner
//! reconcile at once, whatever the interval. Probes and
//! Prometheus metrics are served on their own ports ([`health`], [`metrics`]).
//!
//! ```no_run
//! # async fn example(client: kube::Client) -> Result<(), packsmith::controller::ControllerError> {
//! use packsmith::controller::{Controller, Options};
//! let controller = Controller::bind(client, Options::default()).await?;
//! println!("metrics on {}", controller.metrics_addr());
//! controller.run(std::future::pending()).await
//! # }
//! ```

mod context;
mod health;
mod inputs;
mod labels;
mod leader;
mod metrics;
mod ownership;
mod reconcile;
mod repository_source;
mod schedule;
mod source;
mod stalls;
mod triggers;
mod workdirs;

use crate::registry::Egress;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::ListParams;
use kube::core::PartialObjectMeta;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::{
    Controller as KubeController, Predicate, WatchStreamExt, predicates, reflector, watcher,
};
use kube::{Client, ResourceExt};
use tokio::net::TcpListener;

use crate::api::{PackageRepositorySource, PackageSource};
use crate::registry::Credentials;
pub use context::FINALIZER;
use context::{Context, Settings};
use health::{Endpoints, Probes};
pub use leader::{DEFAULT_LEASE_NAME, LeaderElection, default_identity};
use metrics::Metrics;
pub use schedule::parse_duration;
use triggers::*;

/// Default work directory root (`--cache-dir`, `$PACKSMITH_CACHE_DIR`).
pub const DEFAULT_CACHE_DIR: &str = "/tmp/packsmith";

/// Default per-object disk budget (`--max-object-disk`): far above any real package (the
/// largest fixture is a few MiB), far below a volume that many tenants share.
pub const DEFAULT_MAX_OBJECT_DISK: u64 = 4 * 1024 * 1024 * 1024;

/// How to run the controller.
#[derive(Debug, Clone)]
pub struct Options {
    /// Watch only this namespace (multi-tenant clusters, tests); all namespaces when `None`.
    pub namespace: Option<String>,
    /// PackageSources reconciled at the same time.
    pub concurrency: u16,
    /// Root of the per-object work directories.
    pub cache_dir: PathBuf,
    /// Cap on the bytes under `cache_dir`; `None`: no cap.
    pub cache_max_size: Option<u64>,
    /// `host:port` of `/metrics` (port 0 picks a free port).
    pub metrics_addr: String,
    /// `host:port` of `/healthz` and `/readyz`; may equal `metrics_addr`.
    pub health_addr: String,
    /// The controller's own registry credentials.
    pub credentials: Credentials,
    /// Stop on SIGTERM / Ctrl-C (off for a controller embedded in tests).
    pub handle_signals: bool,
    /// Reconcile only while holding this Lease (`--leader-elect`); always when `None`.
    pub leader_election: Option<LeaderElection>,
    /// Namespaces other than its own that a source may publish Packages or a
    /// PackageRepository into (`--allowed-publish-namespaces`); none by default.
    pub allowed_publish_namespaces: Vec<String>,
    /// Namespaces whose objects may use `credentials` (`--registry-config-namespaces`).
    pub credentials_namespaces: Vec<String>,
    /// The shortest interval honoured (`--min-interval`); none in an embedding.
    pub min_interval: std::time::Duration,
    /// Addresses upstreams may not be reached at (`--deny-local-upstreams`,
    /// `--deny-upstream-cidrs`); nothing is denied by default.
    pub egress: Egress,
    /// Bytes one PackageSource's synced tree and caches may take (`--max-object-disk`);
    /// `None`: no budget.
    pub max_object_disk: Option<u64>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            namespace: None,
            concurrency: 2,
            cache_dir: PathBuf::from(DEFAULT_CACHE_DIR),
            cache_max_size: None,
            metrics_addr: "0.0.0.0:8080".to_owned(),
            health_addr: "0.0.0.0:9440".to_owned(),
            credentials: Credentials::default(),
            handle_signals: true,
            leader_election: None,
            allowed_publish_namespaces: Vec::new(),
            credentials_namespaces: Vec::new(),
            min_interval: std::time::Duration::ZERO,
            egress: Egress::default(),
            max_object_disk: Some(DEFAULT_MAX_OBJECT_DISK),
        }
    }
}

/// Why the controller could not start.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("listening on {addr} ({what}): {source}")]
    Bind {
        what: &'static str,
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "cannot list PackageSources{scope}: {} (is the CRD installed? `packsmith crds | \
         kubectl apply -f -`; does the controller's ServiceAccount may list/watch \
         packagesources?)",
        api_message(source)
    )]
    Api {
        scope: String,
        #[source]
        source: kube::Error,
    },
    #[error("leader election: {0}")]
    LeaderElection(#[from] leader::LeaderError),
    #[error("lost the leadership of the Lease {lease}: {reason}")]
    LeadershipLost { lease: String, reason: String },
    #[error("creating the cache directory {path}: {source}")]
    CacheDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A controller with its probe and metrics ports bound, ready to [`run`](Controller::run).
pub struct Controller {
    client: Client,
    options: Options,
    metrics: Arc<Metrics>,
    probes: Arc<Probes>,
    listeners: Vec<(TcpListener, Endpoints)>,
    metrics_addr: SocketAddr,
    health_addr: SocketAddr,
}

impl Controller {
    /// Binds the metrics and health ports and checks that PackageSources can be listed.
    pub async fn bind(client: Client, options: Options) -> Result<Self, ControllerError> {
        let bind = |what: &'static str, addr: String| async move {
            health::bind(&addr)
                .await
                .map_err(|source| ControllerError::Bind { what, addr, source })
        };
        let mut listeners = Vec::new();
        let (metrics_listener, metrics_addr) =
            bind("metrics", options.metrics_addr.clone()).await?;
        let health_addr = if options.health_addr == options.metrics_addr {
            listeners.push((
                metrics_listener,
                Endpoints {
                    probes: true,
                    metrics: true,
                },
            ));
            metrics_addr
        } else {
            listeners.push((
                metrics_listener,
                Endpoints {
                    probes: false,
                    metrics: true,
                },
            ));
            let (health_listener, health_addr) =
                bind("health", options.health_addr.clone()).await?;
            listeners.push((
                health_listener,
                Endpoints {
                    probes: true,
                    metrics: false,
                },
            ));
            health_addr
        };
        std::fs::create_dir_all(&options.cache_dir).map_err(|source| {
            ControllerError::CacheDir {
                path: options.cache_dir.clone(),
                source,
            }
        })?;
        api(&client, options.namespace.as_deref())
            .list(&ListParams::default().limit(1))
            .await
            .map_err(|source| ControllerError::Api {
                scope: options
                    .namespace
                    .as_deref()
                    .map(|ns| format!(" in namespace {ns}"))
                    .unwrap_or_default(),
                source,
            })?;
        Ok(Self {
            client,
            options,
            metrics: Arc::new(Metrics::new()),
            probes: Arc::new(Probes::default()),
            listeners,
            metrics_addr,
            health_addr,
        })
    }

    /// Where `/metrics` is served.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    /// Where `/healthz` and `/readyz` are served.
    pub fn health_addr(&self) -> SocketAddr {
        self.health_addr
    }

    /// Reconciles until `shutdown` completes (or a signal arrives, with `handle_signals`);
    /// reconciles in flight finish first.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + Sync + 'static,
    ) -> Result<(), ControllerError> {
        let Controller {
            client,
            options,
            metrics,
            probes,
            listeners,
            metrics_addr,
            health_addr,
        } = self;
        let servers: Vec<_> = listeners
            .into_iter()
            .map(|(listener, endpoints)| {
                tokio::spawn(health::serve(
                    listener,
                    endpoints,
                    probes.clone(),
                    metrics.clone(),
                ))
            })
            .collect();
        let stop_servers = move || {
            for server in &servers {
                server.abort();
            }
        };
        let shutdown = futures::FutureExt::shared(shutdown);

        // With leader election, stand by (serving probes, ready: a follower is healthy and a
        // rollout must not wait for it) until this replica holds the Lease.
        let elector = match options.leader_election.clone() {
            Some(config) => {
                let elector = match leader::Elector::new(client.clone(), config).await {
                    Ok(elector) => elector,
                    Err(e) => {
                        stop_servers();
                        return Err(e.into());
                    }
                };
                probes.set_ready(true);
                tracing::info!(lease = %elector.lease(), identity = elector.identity(), "waiting for the leadership");
                let stop = async {
                    if options.handle_signals {
                        tokio::select! {
                            _ = shutdown.clone() => {}
                            _ = terminated() => {}
                        }
                    } else {
                        shutdown.clone().await
                    }
                };
                tokio::select! {
                    _ = elector.acquire() => {}
                    _ = stop => {
                        stop_servers();
                        tracing::info!("packsmith controller stopped (never the leader)");
                        return Ok(());
                    }
                }
                tracing::info!(lease = %elector.lease(), identity = elector.identity(), "became the leader");
                Some(elector)
            }
            None => None,
        };

        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: "packsmith".to_owned(),
                instance: std::env::var("POD_NAME").ok(),
            },
        );

        let (reader, writer) = reflector::store();
        let ready_reader = reader.clone();
        let ready_probes = probes.clone();
        let readiness = tokio::spawn(async move {
            // The store's readiness wakes only one waiter, and the controller waits on it
            // too: poll again now and then rather than wait for a wake-up that may not come.
            loop {
                let wait = ready_reader.wait_until_ready();
                match tokio::time::timeout(std::time::Duration::from_millis(500), wait).await {
                    Ok(Ok(())) => {
                        ready_probes.set_ready(true);
                        break;
                    }
                    Ok(Err(_)) => break,
                    Err(_) => {}
                }
            }
        });
        let triggers = watcher(
            api(&client, options.namespace.as_deref()),
            watcher::Config::default(),
        )
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .predicate_filter(
            predicates::generation
                .combine(requested_at)
                .combine(lifecycle::<PackageSource>),
            Default::default(),
        );
        // A referenced Secret or ConfigMap that is created or changes re-runs the sources that
        // name it (found in the PackageSource store: no API call per event). Secrets are
        // watched as metadata only and their store keeps names and resourceVersions (so a
        // Stalled source sees that its Secret was fixed): no Secret data is ever cached. A
        // resourceVersion filter drops the re-list replays of unchanged objects.
        let secret_store = reader.clone();
        let (secret_reader, secret_writer) = reflector::store();
        let secret_triggers = watcher(
            scoped::<PartialObjectMeta<Secret>>(&client, options.namespace.as_deref()),
            watcher::Config::default(),
        )
        .default_backoff()
        .modify(stalls::strip)
        .reflect(secret_writer)
        .touched_objects()
        .predicate_filter(predicates::resource_version, Default::default());
        let config_map_store = reader.clone();
        let (config_map_reader, config_map_writer) = reflector::store();
        let config_map_triggers = watcher(
            scoped::<PartialObjectMeta<ConfigMap>>(&client, options.namespace.as_deref()),
            watcher::Config::default(),
        )
        .default_backoff()
        .modify(stalls::strip)
        .reflect(config_map_writer)
        .touched_objects()
        .predicate_filter(predicates::resource_version, Default::default());
        // PackageRepositorySources as the source controller sees them: one that selects a
        // source means the source is released through it instead of applied in-cluster. A
        // create, delete or selector change re-runs the sources whose placement it changes
        // (and those with nothing released yet, which may be mid-run).
        let (selection_reader, selection_writer) = reflector::store();
        let selection_sources = reader.clone();
        let selection_store = selection_reader.clone();
        let selection_triggers = watcher(
            scoped::<PackageRepositorySource>(&client, options.namespace.as_deref()),
            watcher::Config::default(),
        )
        .default_backoff()
        .modify(|r: &mut PackageRepositorySource| {
            r.metadata.managed_fields = None;
            r.status = None;
        })
        .reflect(selection_writer)
        .touched_objects();
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
            },
            recorder,
            metrics,
            backoffs: Default::default(),
            repository_fingerprints: Default::default(),
            stalls: Default::default(),
            inputs: stalls::Inputs {
                secrets: secret_reader,
                config_maps: config_map_reader,
            },
            repositories: selection_reader,
            work_dirs: workdirs::WorkDirs::new(options.cache_max_size),
        });
        // What a persistent cache volume kept counts against --cache-max-size from the start.
        let scanning = ctx.clone();
        tokio::task::spawn_blocking(move || {
            scanning.work_dirs.scan(&scanning.settings.cache_dir);
        });
        let mut controller = KubeController::for_stream(triggers, reader)
            .watches_stream(secret_triggers, move |secret: PartialObjectMeta<Secret>| {
                let state = secret_store.state();
                inputs::referencing(
                    state.iter().map(|s| s.as_ref()),
                    inputs::RefKind::Secret,
                    secret.namespace().as_deref(),
                    &secret.name_any(),
                )
            })
            .watches_stream(
                config_map_triggers,
                move |config_map: PartialObjectMeta<ConfigMap>| {
                    let state = config_map_store.state();
                    inputs::referencing(
                        state.iter().map(|s| s.as_ref()),
                        inputs::RefKind::ConfigMap,
                        config_map.namespace().as_deref(),
                        &config_map.name_any(),
                    )
                },
            )
            // What sources published: deleted or edited (a new generation), the owner runs
            // again and restores it. kapp-controller's own changes (status, Packages it
            // creates from a PackageRepository, which carry no owner) map to nothing.
            .watches_stream(
                drift_triggers::<crate::carvel::Package>(&client, options.namespace.as_deref()),
                |package: PartialObjectMeta<crate::carvel::Package>| drifted_owner(&package),
            )
            .watches_stream(
                drift_triggers::<crate::carvel::PackageMetadata>(
                    &client,
                    options.namespace.as_deref(),
                ),
                |metadata: PartialObjectMeta<crate::carvel::PackageMetadata>| {
                    drifted_owner(&metadata)
                },
            )
            // Release records: deleted or edited, the owner records the release again.
            .watches_stream(
                record_triggers(&client, options.namespace.as_deref()),
                |config_map: PartialObjectMeta<ConfigMap>| drifted_owner(&config_map),
            )
            .watches_stream(
                selection_triggers,
                move |repository: PackageRepositorySource| {
                    let repositories = selection_store.state();
                    let sources = selection_sources.state();
                    labels::placement_changed(
                        repositories.iter().map(|r| r.as_ref()),
                        sources
                            .iter()
                            .map(|s| s.as_ref())
                            .filter(|s| s.namespace() == repository.namespace()),
                    )
                },
            )
            .with_config(
                kube::runtime::controller::Config::default().concurrency(options.concurrency),
            );
        if options.handle_signals {
            controller = controller.shutdown_on_signal();
        }
        // PackageRepositorySources: their own triggers (generation, requestedAt), plus any
        // change of a PackageSource their selector matches (its status flips to Ready, a new
        // version is published), found through the reflector store.
        let (repo_reader, repo_writer) = reflector::store();
        let repo_triggers = watcher(
            scoped::<PackageRepositorySource>(&client, options.namespace.as_deref()),
            watcher::Config::default(),
        )
        .default_backoff()
        .reflect(repo_writer)
        .applied_objects()
        .predicate_filter(
            predicates::generation
                .combine(repo_requested_at)
                .combine(lifecycle::<PackageRepositorySource>),
            Default::default(),
        );
        let mapper_store = repo_reader.clone();
        let mut repositories = KubeController::for_stream(repo_triggers, repo_reader)
            .watches(
                api(&client, options.namespace.as_deref()),
                watcher::Config::default(),
                move |source: PackageSource| {
                    let state = mapper_store.state();
                    labels::selecting(state.iter().map(|r| r.as_ref()), &source)
                },
            )
            // Its PackageRepository deleted or edited (a new generation): the owner applies it
            // again. kapp-controller's status writes and finalizers leave the generation alone.
            .watches_stream(
                drift_triggers::<crate::carvel::PackageRepository>(
                    &client,
                    options.namespace.as_deref(),
                ),
                |repository: PartialObjectMeta<crate::carvel::PackageRepository>| {
                    drifted_repository_owner(&repository)
                },
            )
            .with_config(
                kube::runtime::controller::Config::default().concurrency(options.concurrency),
            );
        if options.handle_signals {
            repositories = repositories.shutdown_on_signal();
        }
        tracing::info!(
            namespace = options.namespace.as_deref().unwrap_or("(all)"),
            concurrency = options.concurrency,
            cache_dir = %options.cache_dir.display(),
            metrics = %metrics_addr,
            health = %health_addr,
            "packsmith controller started"
        );
        let sources = controller
            .graceful_shutdown_on(shutdown.clone())
            .run(
                reconcile::reconcile::<PackageSource>,
                reconcile::error_policy::<PackageSource>,
                ctx.clone(),
            )
            .for_each(|result| async move {
                match result {
                    Ok((obj, action)) => {
                        tracing::debug!(object = %obj, ?action, "reconciled");
                    }
                    Err(e) => tracing::debug!(error = %e, "controller"),
                }
            });
        let repositories = repositories
            .graceful_shutdown_on(shutdown)
            .run(
                reconcile::reconcile::<PackageRepositorySource>,
                reconcile::error_policy::<PackageRepositorySource>,
                ctx,
            )
            .for_each(|result| async move {
                match result {
                    Ok((obj, action)) => {
                        tracing::debug!(object = %obj, ?action, "reconciled");
                    }
                    Err(e) => tracing::debug!(error = %e, "repository controller"),
                }
            });
        let work = futures::future::join(sources, repositories);
        let lost = match &elector {
            None => {
                work.await;
                None
            }
            Some(elector) => tokio::select! {
                _ = work => {
                    elector.release().await;
                    None
                }
                reason = elector.hold() => Some(ControllerError::LeadershipLost {
                    lease: elector.lease(),
                    reason,
                }),
            },
        };
        probes.set_ready(false);
        readiness.abort();
        stop_servers();
        if let Some(lost) = lost {
            // Reconciles in flight are dropped with the controllers: nothing runs on a
            // replica that no longer leads. The caller exits non-zero.
            tracing::error!(error = %lost, "stopping");
            return Err(lost);
        }
        tracing::info!("packsmith controller stopped");
        Ok(())
    }
}

/// Binds and runs until SIGTERM/Ctrl-C (with `options.handle_signals`).
pub async fn run(client: Client, options: Options) -> Result<(), ControllerError> {
    Controller::bind(client, options)
        .await?
        .run(std::future::pending())
        .await
}

/// SIGTERM or Ctrl-C.
async fn terminated() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// A Kubernetes API error as a person reads it: the server's message and code, without the
/// client's debug dump; a 403 says where to grant the permission.
pub fn api_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) if s.code == 403 => format!(
            "{} (403 Forbidden: grant it to the controller's ServiceAccount; the chart's and \
             config/rbac's ClusterRole list what it needs)",
            s.message
        ),
        kube::Error::Api(s) => format!("{} ({} {})", s.message, s.code, s.reason),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::REQUESTED_AT_ANNOTATION;
    use kube::runtime::Predicate;

    fn source(generation: i64, requested: Option<&str>, finalized: bool) -> PackageSource {
        let mut obj: PackageSource = serde_json::from_value(serde_json::json!({
            "apiVersion": "packsmith.dev/v1alpha1",
            "kind": "PackageSource",
            "metadata": {"name": "a", "namespace": "ns", "generation": generation},
            "spec": {
                "package": {"refName": "a.b.c", "version": "1.0.0"},
                "contents": [],
                "bundle": {"repository": "r.io/a"},
            },
        }))
        .unwrap();
        if let Some(r) = requested {
            obj.annotations_mut()
                .insert(REQUESTED_AT_ANNOTATION.to_owned(), r.to_owned());
        }
        if finalized {
            obj.finalizers_mut().push(FINALIZER.to_owned());
        }
        obj
    }

    #[test]
    fn api_errors_read_as_the_server_said_them() {
        let err = |code, message: &str, reason: &str| {
            kube::Error::Api(
                kube::core::Status::failure(message, reason)
                    .with_code(code)
                    .boxed(),
            )
        };
        let forbidden = api_message(&err(403, "configmaps \"x\" is forbidden", "Forbidden"));
        assert!(
            forbidden.starts_with("configmaps \"x\" is forbidden (403 Forbidden: grant it")
                && !forbidden.contains("Status {"),
            "{forbidden}"
        );
        assert_eq!(
            api_message(&err(409, "conflict", "Conflict")),
            "conflict (409 Conflict)"
        );
    }

    fn object(uid: &str, version: &str) -> PartialObjectMeta<ConfigMap> {
        PartialObjectMeta {
            types: None,
            metadata: kube::api::ObjectMeta {
                name: Some(format!("cm-{uid}")),
                uid: Some(uid.to_owned()),
                resource_version: Some(version.to_owned()),
                ..Default::default()
            },
            _phantom: Default::default(),
        }
    }

    #[test]
    fn drift_is_a_new_version_or_a_disappearance_never_a_replay() {
        use watcher::Event;
        let mut drift = Drift::new(|m| m.resource_version.clone());
        let mut names = |event| {
            drift
                .on(event)
                .into_iter()
                .map(|o| o.name_any())
                .collect::<Vec<_>>()
        };
        // The first list: everything is new.
        assert!(names(Event::Init).is_empty());
        assert_eq!(names(Event::InitApply(object("a", "1"))), ["cm-a"]);
        assert_eq!(names(Event::InitApply(object("b", "1"))), ["cm-b"]);
        assert!(names(Event::InitDone).is_empty());
        // An event that changes nothing we compare (a replay) is dropped; a new version and
        // a deletion are drift.
        assert!(names(Event::Apply(object("a", "1"))).is_empty());
        assert_eq!(names(Event::Apply(object("a", "2"))), ["cm-a"]);
        assert_eq!(names(Event::Delete(object("b", "3"))), ["cm-b"]);
        assert_eq!(names(Event::Apply(object("c", "4"))), ["cm-c"]);
        // A re-list after the watch was down: a is unchanged, c went away unseen, d is new.
        assert!(names(Event::Init).is_empty());
        assert!(names(Event::InitApply(object("a", "2"))).is_empty());
        assert_eq!(names(Event::InitApply(object("d", "5"))), ["cm-d"]);
        assert_eq!(names(Event::InitDone), ["cm-c"]);
        // Gone is gone: the next re-list does not report c again.
        assert!(names(Event::Init).is_empty());
        assert!(names(Event::InitApply(object("a", "2"))).is_empty());
        assert!(names(Event::InitApply(object("d", "5"))).is_empty());
        assert!(names(Event::InitDone).is_empty());
    }

    #[test]
    fn status_writes_do_not_trigger_but_spec_requests_and_finalizers_do() {
        let p = predicates::generation
            .combine(requested_at)
            .combine(lifecycle);
        let base = p.hash_property(&source(1, None, true));
        let mut with_status = source(1, None, true);
        with_status.status = Some(Default::default());
        assert_eq!(p.hash_property(&with_status), base);
        assert_ne!(p.hash_property(&source(2, None, true)), base);
        assert_ne!(p.hash_property(&source(1, Some("t1"), true)), base);
        assert_ne!(
            p.hash_property(&source(1, Some("t1"), true)),
            p.hash_property(&source(1, Some("t2"), true))
        );
        assert_ne!(p.hash_property(&source(1, None, false)), base);
    }
}
