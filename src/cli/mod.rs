//! The `packsmith` command line: one subcommand per pipeline stage plus the controller.
//!
//! Each subcommand is a thin front end over the library stage of the same name; exit codes:
//! 0 success, 1 failure (the error is on stderr), 2 usage errors and commands not built yet.

mod init;

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
    Sync(SyncArgs),
    /// Lock every image referenced by the manifests to a digest (.imgpkg/images.yml).
    Lock(LockArgs),
    /// Push a directory as an imgpkg bundle.
    Push(PushArgs),
    /// Pull an imgpkg bundle into a directory.
    Pull(PullArgs),
    /// Sync, lock, push and write Package + PackageMetadata for a package directory.
    Release(ReleaseArgs),
    /// Package repositories.
    #[command(subcommand)]
    Repo(RepoCommand),
    /// Print packsmith's CustomResourceDefinitions, or write them into a directory.
    Crds(CrdsArgs),
    /// Print the version.
    Version,
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
    #[arg(long, default_value_t = 2)]
    concurrent: u16,
}

#[derive(Args, Debug)]
struct SyncArgs {
    /// Work in this directory.
    #[arg(long)]
    chdir: Option<PathBuf>,
    /// vendir Config to read.
    #[arg(short, long, default_value = "vendir.yml")]
    file: PathBuf,
    /// Fetch exactly what vendir.lock.yml records.
    #[arg(long)]
    locked: bool,
}

#[derive(Args, Debug)]
struct LockArgs {
    /// Files or directories of manifests to scan.
    #[arg(short, long, required = true)]
    file: Vec<PathBuf>,
    /// Where to write the ImagesLock.
    #[arg(long)]
    imgpkg_lock_output: Option<PathBuf>,
    /// Resolve FROM's repositories through the registry TO (repeatable).
    #[arg(long, value_name = "FROM=TO")]
    registry_mirror: Vec<String>,
    /// Print each discovered reference once, sorted; contact no registry.
    #[arg(long)]
    list: bool,
}

#[derive(Args, Debug)]
struct PushArgs {
    /// Bundle reference REPO:TAG.
    #[arg(short, long)]
    bundle: String,
    /// Directory to push.
    #[arg(short, long, required = true)]
    file: Vec<PathBuf>,
    /// Write an imgpkg BundleLock here.
    #[arg(long)]
    lock_output: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct PullArgs {
    /// Bundle reference REPO:TAG or REPO@sha256:….
    #[arg(short, long)]
    bundle: String,
    /// Directory to write; replaced.
    #[arg(short, long)]
    output: PathBuf,
}

#[derive(Args, Debug)]
struct ReleaseArgs {
    /// Package directory (holding packagesource.yaml).
    #[arg(default_value = ".")]
    dir: PathBuf,
    /// OCI repository for the bundle.
    #[arg(long)]
    repository: Option<String>,
    /// Tag to push.
    #[arg(long)]
    tag: Option<String>,
    /// Where to write Package and PackageMetadata YAML.
    #[arg(long)]
    output_dir: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum RepoCommand {
    /// Build and push a repository bundle from a packages directory.
    Release(RepoReleaseArgs),
}

#[derive(Args, Debug)]
struct RepoReleaseArgs {
    /// Directory of packages/<refName>/{metadata,<version>}.yml.
    #[arg(long)]
    packages: PathBuf,
    /// Bundle reference REPO:TAG.
    #[arg(short, long)]
    bundle: String,
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
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Init(args) => init::run(&args).map(|()| ExitCode::SUCCESS),
        Command::Crds(args) => crds(&args).map(|()| ExitCode::SUCCESS),
        Command::Version => {
            println!("packsmith {}", env!("CARGO_PKG_VERSION"));
            Ok(ExitCode::SUCCESS)
        }
        Command::Controller(_) => Ok(not_implemented("controller")),
        Command::Sync(_) => Ok(not_implemented("sync")),
        Command::Lock(_) => Ok(not_implemented("lock")),
        Command::Push(_) => Ok(not_implemented("push")),
        Command::Pull(_) => Ok(not_implemented("pull")),
        Command::Release(_) => Ok(not_implemented("release")),
        Command::Repo(RepoCommand::Release(_)) => Ok(not_implemented("repo release")),
    }
}

/// Commands whose stage is not built yet say so and exit 2, rather than pretend.
fn not_implemented(name: &str) -> ExitCode {
    eprintln!("packsmith {name}: not implemented yet");
    ExitCode::from(2)
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

fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env("PACKSMITH_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
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
}
