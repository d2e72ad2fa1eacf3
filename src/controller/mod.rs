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
mod http;
mod inputs;
mod labels;
mod leader;
mod metrics;
mod outcome;
mod ownership;
mod receiver;
mod reconcile;
mod registries;
mod repository_source;
mod schedule;
mod signing;
mod source;
mod stalls;
mod triggers;
mod wiring;
mod workdirs;

use crate::registry::Egress;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use kube::Client;
use kube::api::ListParams;
use tokio::net::TcpListener;

use crate::registry::Credentials;
pub use context::FINALIZER;
use health::{Endpoints, Probes};
pub use leader::{DEFAULT_LEASE_NAME, LeaderElection, default_identity, shard_lease_name};
use metrics::Metrics;
use outcome::api_message;
pub use schedule::parse_duration;
use triggers::api;

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
    /// Reconcile only PackageSources and PackageRepositorySources these labels select
    /// (`--watch-label-selector`, Flux's sharding convention); all when `None`. What a
    /// reconcile reads of other objects (the repositories that may select a source, the
    /// sources a repository selects) is never narrowed by it.
    pub label_selector: Option<String>,
    /// `host:port` of the Receiver webhook server (`--webhook-addr`; port 0 picks a free
    /// port); no Receivers are served when `None`.
    pub webhook_addr: Option<String>,
    /// The helm that renders charts for the lock (`--helm-binary`): a path, or a name on
    /// PATH. The container image ships it at /usr/local/bin/helm.
    pub helm_binary: PathBuf,
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
            label_selector: None,
            webhook_addr: None,
            helm_binary: PathBuf::from("helm"),
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
    webhook: Option<(TcpListener, SocketAddr)>,
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
        let webhook = match &options.webhook_addr {
            Some(addr) => Some(bind("webhook", addr.clone()).await?),
            None => None,
        };
        std::fs::create_dir_all(&options.cache_dir).map_err(|source| {
            ControllerError::CacheDir {
                path: options.cache_dir.clone(),
                source,
            }
        })?;
        // With the label selector, so a selector the API server cannot parse stops the
        // process here, named, rather than failing every watch in a loop.
        let mut probe = ListParams::default().limit(1);
        if let Some(selector) = &options.label_selector {
            probe = probe.labels(selector);
        }
        api(&client, options.namespace.as_deref())
            .list(&probe)
            .await
            .map_err(|source| ControllerError::Api {
                scope: [
                    options
                        .namespace
                        .as_deref()
                        .map(|ns| format!(" in namespace {ns}")),
                    options
                        .label_selector
                        .as_deref()
                        .map(|s| format!(" with --watch-label-selector {s:?}")),
                ]
                .into_iter()
                .flatten()
                .collect(),
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
            webhook,
        })
    }

    /// Where Receivers' webhooks are served (`--webhook-addr`).
    pub fn webhook_addr(&self) -> Option<SocketAddr> {
        self.webhook.as_ref().map(|(_, addr)| *addr)
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
            webhook,
        } = self;
        let mut servers = Servers::start(listeners, &probes, &metrics);
        // Every replica serves webhooks, leader or not (a Service may send them to any); only
        // the leader's Receiver controller writes status.
        let webhooks = webhook.map(|(listener, _)| {
            let (store, writer) = kube::runtime::reflector::store();
            let receivers: kube::Api<crate::api::receiver::Receiver> =
                triggers::scoped(&client, options.namespace.as_deref());
            use kube::runtime::WatchStreamExt as _;
            let watch = kube::runtime::watcher(receivers, Default::default())
                .default_backoff()
                .reflect(writer);
            let watch = futures::StreamExt::for_each(watch, |_| std::future::ready(()));
            servers.0.push(tokio::spawn(watch));
            servers.0.push(tokio::spawn(receiver::server::serve(
                listener,
                Arc::new(receiver::server::Webhooks {
                    client: client.clone(),
                    receivers: store,
                }),
            )));
        });
        let shutdown = futures::FutureExt::shared(shutdown);
        let elector = match lead(&client, &options, &probes, shutdown.clone()).await {
            Ok(Leadership::Stopped) => {
                servers.stop();
                tracing::info!("packsmith controller stopped (never the leader)");
                return Ok(());
            }
            Ok(Leadership::Leader(elector)) => Some(*elector),
            Ok(Leadership::NotElected) => None,
            Err(e) => {
                servers.stop();
                return Err(e);
            }
        };

        let watches = wiring::Watches::start(
            &client,
            options.namespace.as_deref(),
            options.label_selector.as_deref(),
        );
        let readiness = watches.report_ready(probes.clone());
        let ctx = wiring::context(&client, &options, metrics, &watches);
        let sources = wiring::source_controller(&client, &options, watches);
        let repositories = wiring::repository_controller(&client, &options);
        tracing::info!(
            namespace = options.namespace.as_deref().unwrap_or("(all)"),
            concurrency = options.concurrency,
            cache_dir = %options.cache_dir.display(),
            metrics = %metrics_addr,
            health = %health_addr,
            "packsmith controller started"
        );
        let receivers = webhooks.map(|()| {
            let (controller, _) = receiver::controller(
                &client,
                options.namespace.as_deref(),
                options.handle_signals,
            );
            receiver::drive(controller, client.clone(), shutdown.clone())
        });
        let work = futures::future::join3(
            wiring::drive(sources, ctx.clone(), shutdown.clone()),
            wiring::drive(repositories, ctx, shutdown),
            async move {
                if let Some(receivers) = receivers {
                    receivers.await;
                }
            },
        );
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
        servers.stop();
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

/// The probe and metrics servers of the process.
struct Servers(Vec<tokio::task::JoinHandle<()>>);

impl Servers {
    fn start(
        listeners: Vec<(TcpListener, Endpoints)>,
        probes: &Arc<Probes>,
        metrics: &Arc<Metrics>,
    ) -> Self {
        Servers(
            listeners
                .into_iter()
                .map(|(listener, endpoints)| {
                    tokio::spawn(health::serve(
                        listener,
                        endpoints,
                        probes.clone(),
                        metrics.clone(),
                    ))
                })
                .collect(),
        )
    }

    fn stop(&self) {
        for server in &self.0 {
            server.abort();
        }
    }
}

enum Leadership {
    /// No `--leader-elect`: reconcile at once.
    NotElected,
    Leader(Box<leader::Elector>),
    /// Shut down while standing by.
    Stopped,
}

/// With leader election, stands by (serving probes, ready: a follower is healthy and a
/// rollout must not wait for it) until this replica holds the Lease or `shutdown` comes.
async fn lead(
    client: &Client,
    options: &Options,
    probes: &Probes,
    shutdown: impl Future<Output = ()>,
) -> Result<Leadership, ControllerError> {
    let Some(config) = options.leader_election.clone() else {
        return Ok(Leadership::NotElected);
    };
    let elector = leader::Elector::new(client.clone(), config).await?;
    probes.set_ready(true);
    tracing::info!(lease = %elector.lease(), identity = elector.identity(), "waiting for the leadership");
    let stop = async {
        if options.handle_signals {
            tokio::select! {
                _ = shutdown => {}
                _ = terminated() => {}
            }
        } else {
            shutdown.await
        }
    };
    tokio::select! {
        _ = elector.acquire() => {}
        _ = stop => return Ok(Leadership::Stopped),
    }
    tracing::info!(lease = %elector.lease(), identity = elector.identity(), "became the leader");
    Ok(Leadership::Leader(Box::new(elector)))
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
