//! `packsmith lock`: kbld's `--imgpkg-lock-output` step of a package release.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;

use super::registry::RegistryArgs;
use crate::lock::{self, LockConfig, ResolveOptions, Written};
use crate::registry::{Registry, RegistryOptions};

#[derive(Args, Debug)]
pub struct LockArgs {
    /// Files or directories of manifests to scan (repeatable). An ImagesLock inside them
    /// (.imgpkg/images.yml) is reused for the references it records, as kbld does.
    #[arg(short, long, required = true)]
    file: Vec<PathBuf>,
    /// Where to write the ImagesLock, e.g. DIR/.imgpkg/images.yml. Without it (and without
    /// --output) the lock is printed.
    #[arg(long, value_name = "FILE")]
    imgpkg_lock_output: Option<PathBuf>,
    /// Also write the manifests with references replaced by digests, as kbld prints them
    /// (FILE, or - for stdout).
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Registry lookups in flight at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Print each discovered reference once, sorted, exactly as the manifests write it;
    /// contact no registry.
    #[arg(long)]
    list: bool,
    #[command(flatten)]
    registry: RegistryArgs,
}

pub fn run(args: &LockArgs) -> anyhow::Result<ExitCode> {
    let config = LockConfig::default();
    if args.list {
        let discovery = lock::discover(&args.file, &config)?;
        let mut stdout = std::io::stdout().lock();
        for reference in discovery.references.keys() {
            writeln!(stdout, "{reference}")?;
        }
        return Ok(ExitCode::SUCCESS);
    }

    let registry = Registry::new(registry_options(args)?)?;
    let options = ResolveOptions {
        concurrency: Some(args.concurrency),
        ..ResolveOptions::default()
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let locked = runtime.block_on(lock::run(
        &args.file,
        &config,
        &registry,
        &options,
        args.imgpkg_lock_output.as_deref(),
    ))?;

    if let Some(output) = &args.output {
        let manifests = lock::render_manifests(&locked.discovery, &locked.resolution, &config.yaml);
        write_output(output, &manifests)?;
    } else if args.imgpkg_lock_output.is_none() {
        print!("{}", locked.resolution.lock().to_kbld_yaml()?);
    }

    let requests = locked.resolution.requests;
    let destination = match (&args.imgpkg_lock_output, locked.written) {
        (Some(path), Some(Written::Changed)) => format!(", wrote {}", path.display()),
        (Some(path), Some(Written::Unchanged)) => format!(", {} unchanged", path.display()),
        _ => String::new(),
    };
    eprintln!(
        "locked {} images ({} looked up: {} manifest requests, {} other requests){destination}",
        locked.resolution.images.len(),
        locked.resolution.contacted,
        requests.manifest_requests(),
        requests.total() - requests.manifest_requests(),
    );
    Ok(ExitCode::SUCCESS)
}

fn registry_options(args: &LockArgs) -> anyhow::Result<RegistryOptions> {
    let mut options = args.registry.options(None)?;
    options.max_concurrency = args.concurrency;
    Ok(options)
}

fn write_output(path: &Path, text: &str) -> anyhow::Result<()> {
    if path == Path::new("-") {
        print!("{text}");
        return Ok(());
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}
