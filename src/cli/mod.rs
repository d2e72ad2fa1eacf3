//! The `packsmith` command line: one subcommand per pipeline stage plus the controller.
//!
//! Each subcommand is a thin front end over the library stage of the same name; exit codes:
//! 0 success, 1 failure (the error is on stderr), 2 usage errors and commands not built yet.

mod all;
mod cluster;
mod copy;
mod describe;
mod init;
mod lock;
mod pull;
mod push;
mod registry;
mod release;
mod repo;
mod sign;
mod sync;
mod table;
mod values;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(name = "packsmith", version, about = "Turns upstream software into published Carvel packages: sync, lock, push, publish.", long_about = None)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "PACKSMITH_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the operator: reconcile PackageSource and PackageRepositorySource objects.
    Controller(ControllerArgs),
    /// Scaffold a new package: PackageSource, installer RBAC, PackageInstall, values.
    Init(init::InitArgs),
    /// Sync upstream contents from vendir.yml into directories and write vendir.lock.yml.
    Sync(sync::SyncArgs),
    /// Lock every image referenced by the manifests to a digest (.imgpkg/images.yml).
    Lock(lock::LockArgs),
    /// Push a directory as an imgpkg bundle.
    Push(push::PushArgs),
    /// Pull an imgpkg bundle into a directory.
    Pull(pull::PullArgs),
    /// Copy a bundle with its images (or images) into another repository or a tar (imgpkg copy).
    Copy(copy::CopyArgs),
    /// Print a package's default values, or its values schema, from a directory or a bundle.
    Values(values::ValuesArgs),
    /// Show what a bundle holds: files, locked images, nested bundles, packages.
    Describe(describe::DescribeArgs),
    /// Verify an image's or bundle's cosign signatures with public keys (cosign verify --key).
    Verify(sign::VerifyArgs),
    /// Write a cosign key pair: cosign.key (encrypted with COSIGN_PASSWORD) and cosign.pub.
    GenerateKeyPair(sign::GenerateKeyPairArgs),
    /// Sync, lock, push and write Package + PackageMetadata for a package directory.
    Release(release::ReleaseArgs),
    /// Package repositories.
    #[command(subcommand)]
    Repo(RepoCommand),
    /// Ask the controller to reconcile a source or repository now (flux reconcile).
    Reconcile(cluster::ReconcileArgs),
    /// Stop reconciling a source or repository until resumed (flux suspend).
    Suspend(cluster::SuspendArgs),
    /// Reconcile a suspended source or repository again, at once (flux resume).
    Resume(cluster::SuspendArgs),
    /// List sources or repositories with their printer columns (kubectl get).
    Get(cluster::GetArgs),
    /// Print packsmith's CustomResourceDefinitions, or write them into a directory.
    Crds(CrdsArgs),
    /// Print the version.
    Version,
}

/// The helm the lock stage renders Helm charts with: one flag for every command that locks.
#[derive(Args, Debug, Clone)]
pub(super) struct HelmArgs {
    /// The helm that renders Helm charts (directories with Chart.yaml) before their images
    /// are locked: a path, or a name on PATH. The container image ships the tested version
    /// at /usr/local/bin/helm.
    #[arg(
        long,
        env = "PACKSMITH_HELM_BINARY",
        default_value = "helm",
        value_name = "PATH"
    )]
    pub(super) helm_binary: PathBuf,
}

#[derive(Args, Debug)]
struct ControllerArgs {
    /// Address of the Prometheus metrics endpoint.
    #[arg(long, default_value = "0.0.0.0:8080")]
    metrics_addr: String,
    /// Address of the /healthz and /readyz endpoints.
    #[arg(long, default_value = "0.0.0.0:9440")]
    health_addr: String,
    /// Objects reconciled at the same time.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..))]
    concurrent: u16,
    /// Watch PackageSources in this namespace only [default: all namespaces].
    #[arg(long, env = "PACKSMITH_WATCH_NAMESPACE")]
    namespace: Option<String>,
    /// Root of the per-object work directories (<cache-dir>/<namespace>/<name>).
    #[arg(long, env = "PACKSMITH_CACHE_DIR", default_value = crate::controller::DEFAULT_CACHE_DIR)]
    cache_dir: PathBuf,
    /// Cap on the bytes under --cache-dir (e.g. 5Gi, 500MB); the least recently used work
    /// directories of idle objects are removed while over it (they sync cold next time)
    /// [default: no cap].
    #[arg(long, env = "PACKSMITH_CACHE_MAX_SIZE", value_parser = byte_size)]
    cache_max_size: Option<u64>,
    /// Bytes one PackageSource's work directory (synced tree and caches) may take; an object
    /// over it is Stalled with DiskBudgetExceeded and its directory removed (e.g. 4Gi, 500MB).
    #[arg(long, env = "PACKSMITH_MAX_OBJECT_DISK", default_value = "4Gi", value_parser = byte_size)]
    max_object_disk: u64,
    /// Address of the Receiver webhook server (e.g. 0.0.0.0:9292, the port of Flux's
    /// receiver); Receivers are served only when it is set. Every replica serves it.
    #[arg(long, env = "PACKSMITH_WEBHOOK_ADDR", value_name = "ADDR")]
    webhook_addr: Option<String>,
    #[command(flatten)]
    helm: HelmArgs,
    /// kubeconfig to use [default: $KUBECONFIG, ~/.kube/config, else the in-cluster config].
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
    /// docker config.json with the controller's default registry credentials [default:
    /// $DOCKER_CONFIG/config.json, else ~/.docker/config.json]; a PackageSource's
    /// bundle.secretRef wins for the same host.
    #[arg(long, value_name = "FILE")]
    registry_config: Option<PathBuf>,
    /// Namespaces whose objects may use the --registry-config credentials (comma-separated)
    /// [default: the controller's own namespace, $POD_NAMESPACE]. Objects in other namespaces
    /// use only their own bundle.secretRef.
    #[arg(long, value_delimiter = ',', value_name = "NS,…")]
    registry_config_namespaces: Option<Vec<String>>,
    /// The shortest spec.interval honoured: shorter ones are reconciled this often
    /// (kapp-controller's floor is 30s too).
    #[arg(long, default_value = "30s", value_parser = duration)]
    min_interval: std::time::Duration,
    /// Reconcile only while holding a coordination.k8s.io Lease, so several replicas can run;
    /// a replica that loses the Lease exits non-zero.
    #[arg(long)]
    leader_elect: bool,
    /// Namespace of the Lease [default: the controller's own (in a Pod), else the kubeconfig's].
    #[arg(long, env = "POD_NAMESPACE")]
    leader_election_namespace: Option<String>,
    /// Name of the Lease.
    #[arg(long, default_value = crate::controller::DEFAULT_LEASE_NAME)]
    leader_election_id: String,
    /// Namespaces other than their own that PackageSources may publish Packages into and
    /// PackageRepositorySources may create a PackageRepository in (comma-separated; e.g.
    /// kapp-controller's global packaging namespace). None by default: every object
    /// publishes into its own namespace only.
    #[arg(
        long,
        env = "PACKSMITH_ALLOWED_PUBLISH_NAMESPACES",
        value_delimiter = ',',
        value_name = "NS,…"
    )]
    allowed_publish_namespaces: Vec<String>,
    /// Refuse upstreams (git, HTTP, Helm, GitHub, registries, the bundle's registry) at
    /// loopback, link-local (cloud metadata) and unspecified addresses, checked on the
    /// address connected to, after DNS. For clusters without NetworkPolicy.
    #[arg(long, env = "PACKSMITH_DENY_LOCAL_UPSTREAMS")]
    deny_local_upstreams: bool,
    /// Refuse upstreams in these ranges too (comma-separated CIDRs: the cluster's pod,
    /// service and node ranges), checked the same way.
    #[arg(
        long,
        env = "PACKSMITH_DENY_UPSTREAM_CIDRS",
        value_delimiter = ',',
        value_name = "CIDR,…"
    )]
    deny_upstream_cidrs: Vec<String>,
    /// Reconcile only the PackageSources and PackageRepositorySources these labels select,
    /// e.g. `sharding.packsmith.dev/key in (shard1)` (Flux's sharding convention). Each shard
    /// runs with its own selector and Lease; the unsharded default excludes sharded objects
    /// with `!sharding.packsmith.dev/key`.
    #[arg(long, env = "PACKSMITH_WATCH_LABEL_SELECTOR", value_name = "SELECTOR")]
    watch_label_selector: Option<String>,
    /// How long the Lease is valid after a renewal (whole seconds).
    #[arg(long, default_value = "35s", value_parser = duration)]
    leader_election_lease_duration: std::time::Duration,
    /// A leader that could not renew for this long gives up and exits.
    #[arg(long, default_value = "30s", value_parser = duration)]
    leader_election_renew_deadline: std::time::Duration,
    /// How often the leader renews and followers try to take the Lease.
    #[arg(long, default_value = "5s", value_parser = duration)]
    leader_election_retry_period: std::time::Duration,
}

fn duration(value: &str) -> Result<std::time::Duration, String> {
    crate::controller::parse_duration("duration", value).map_err(|e| e.to_string())
}

#[derive(Subcommand, Debug)]
enum RepoCommand {
    /// Build and push a repository bundle from a packages directory.
    Release(repo::RepoReleaseArgs),
}

#[derive(Args, Debug)]
struct CrdsArgs {
    /// Write one file per CRD into this directory instead of printing them.
    #[arg(long)]
    output_dir: Option<PathBuf>,
}

/// Entry point of the `packsmith` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    match run(cli.command) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {}", report(&err));
            ExitCode::FAILURE
        }
    }
}

/// The error and each of its causes once. Most of our errors already end with their cause's
/// message, so that a status condition (one string) is complete; anyhow's `{:#}` would print
/// the cause a second time.
fn report(err: &anyhow::Error) -> String {
    let mut out = err.to_string();
    for cause in err.chain().skip(1) {
        let text = cause.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
    }
    out
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    // One runtime for the process, built only by the commands that do I/O through it.
    let runtime = || {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(|e| anyhow::anyhow!("starting the async runtime: {e}"))
    };
    match command {
        Command::Init(args) => init::run(&args).map(|()| ExitCode::SUCCESS),
        Command::Crds(args) => crds(&args).map(|()| ExitCode::SUCCESS),
        Command::Version => {
            println!("packsmith {}", env!("CARGO_PKG_VERSION"));
            Ok(ExitCode::SUCCESS)
        }
        Command::Controller(args) => controller(args, &runtime()?).map(|()| ExitCode::SUCCESS),
        Command::Sync(args) => sync::run(&args, &runtime()?),
        Command::Lock(args) => lock::run(&args, &runtime()?),
        Command::Push(args) => push::run(&args, &runtime()?),
        Command::Pull(args) => pull::run(&args, &runtime()?).map(|()| ExitCode::SUCCESS),
        Command::Copy(args) => copy::run(&args, &runtime()?).map(|()| ExitCode::SUCCESS),
        Command::Values(args) => values::run(&args, &runtime()?).map(|()| ExitCode::SUCCESS),
        Command::Describe(args) => describe::run(&args, &runtime()?).map(|()| ExitCode::SUCCESS),
        Command::Verify(args) => sign::verify(&args, &runtime()?).map(|()| ExitCode::SUCCESS),
        Command::GenerateKeyPair(args) => {
            sign::generate_key_pair(&args).map(|()| ExitCode::SUCCESS)
        }
        Command::Release(args) => release::run(&args, &runtime()?),
        Command::Repo(RepoCommand::Release(args)) => {
            repo::run(&args, &runtime()?).map(|()| ExitCode::SUCCESS)
        }
        Command::Reconcile(args) => cluster::reconcile(&args, &runtime()?),
        Command::Suspend(args) => cluster::suspend(&args, true, &runtime()?),
        Command::Resume(args) => cluster::suspend(&args, false, &runtime()?),
        Command::Get(args) => cluster::get(&args, &runtime()?),
    }
}

fn controller(args: ControllerArgs, runtime: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    use crate::registry::Credentials;
    use anyhow::Context as _;
    let credentials = match &args.registry_config {
        Some(path) => {
            let bytes =
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            Credentials::from_docker_config_json(&bytes, &path.display().to_string())?
        }
        None => Credentials::from_default_docker_config()?,
    };
    let options = crate::controller::Options {
        namespace: args.namespace,
        concurrency: args.concurrent,
        cache_dir: args.cache_dir,
        cache_max_size: args.cache_max_size,
        max_object_disk: Some(args.max_object_disk),
        webhook_addr: args.webhook_addr.clone().filter(|a| !a.is_empty()),
        helm_binary: args.helm.helm_binary,
        metrics_addr: args.metrics_addr,
        health_addr: args.health_addr,
        credentials,
        allowed_publish_namespaces: args.allowed_publish_namespaces,
        min_interval: args.min_interval,
        egress: crate::registry::Egress {
            deny_local: args.deny_local_upstreams,
            deny: crate::registry::Egress::parse_cidrs(&args.deny_upstream_cidrs)
                .map_err(|e| anyhow::anyhow!("--deny-upstream-cidrs: {e}"))?,
        },
        credentials_namespaces: args.registry_config_namespaces.unwrap_or_else(|| {
            std::env::var("POD_NAMESPACE")
                .ok()
                .filter(|n| !n.is_empty())
                .into_iter()
                .collect()
        }),
        handle_signals: true,
        label_selector: args
            .watch_label_selector
            .clone()
            .filter(|s| !s.trim().is_empty()),
        leader_election: args
            .leader_elect
            .then(|| crate::controller::LeaderElection {
                namespace: args.leader_election_namespace,
                lease_name: crate::controller::shard_lease_name(
                    &args.leader_election_id,
                    args.watch_label_selector.as_deref(),
                ),
                identity: crate::controller::default_identity(),
                lease_duration: args.leader_election_lease_duration,
                renew_deadline: args.leader_election_renew_deadline,
                retry_period: args.leader_election_retry_period,
            }),
    };
    if let Some(election) = &options.leader_election {
        election.validate()?;
    }
    runtime.block_on(async move {
        let config = kube_config(args.kubeconfig.as_deref()).await?;
        let client = kube::Client::try_from(config)?;
        crate::controller::run(client, options).await?;
        anyhow::Ok(())
    })
}

/// The client configuration: `--kubeconfig`, else `$KUBECONFIG`, `~/.kube/config` or the
/// in-cluster service account, as kubectl finds it.
async fn kube_config(path: Option<&std::path::Path>) -> anyhow::Result<kube::Config> {
    use anyhow::Context as _;
    match path {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            Ok(kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?)
        }
        None => kube::Config::infer()
            .await
            .context("no kubeconfig ($KUBECONFIG, ~/.kube/config) and not in a cluster"),
    }
}

fn crds(args: &CrdsArgs) -> anyhow::Result<()> {
    match &args.output_dir {
        None => print!("{}", crate::api::crds::render_all()?),
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            for (file, crd) in crate::api::crds::all() {
                let path = dir.join(file);
                std::fs::write(&path, crate::api::crds::to_yaml(&crd)?)?;
                eprintln!("wrote {}", path.display());
            }
        }
    }
    Ok(())
}

/// `5Gi`, `500MB`, `1048576`: binary (Ki, Mi, Gi) and decimal (K, M, G) units.
pub(super) fn byte_size(s: &str) -> Result<u64, String> {
    parse_size::parse_size(s).map_err(|e| format!("{e}: expected a size like 5Gi or 500MB"))
}

fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env("PACKSMITH_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only on a terminal: log files and `kubectl logs` get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[derive(Debug, thiserror::Error)]
    #[error("contents x: git {url}: {cause}")]
    struct Outer {
        url: &'static str,
        #[source]
        cause: std::io::Error,
    }

    #[test]
    fn report_prints_each_cause_once() {
        let inner = std::io::Error::other("connection refused");
        let err = anyhow::Error::new(Outer {
            url: "https://example.com/r.git",
            cause: inner,
        })
        .context("syncing vendir.yml");
        assert_eq!(
            report(&err),
            "syncing vendir.yml: contents x: git https://example.com/r.git: connection refused"
        );
        // A cause the message does not already end with is still shown.
        let plain = anyhow::Error::new(std::io::Error::other("disk full")).context("writing");
        assert_eq!(report(&plain), "writing: disk full");
    }
}
