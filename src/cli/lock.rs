//! `packsmith lock`: kbld's `--imgpkg-lock-output` step of a package release.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;

use super::registry::RegistryArgs;
use crate::carvel::kbld::PlatformSelection;
use crate::lock::{self, LockConfig, ResolveOptions, Written};
use crate::registry::{Registry, RegistryOptions};

#[derive(Args, Debug)]
pub(super) struct LockArgs {
    /// Files or directories of manifests to scan (repeatable; - reads standard input). An
    /// ImagesLock inside them (.imgpkg/images.yml) is reused for the references it records,
    /// as kbld does, so re-locking an unchanged tree asks no registry anything.
    #[arg(short, long, required_unless_present = "all", conflicts_with = "all")]
    file: Vec<PathBuf>,
    /// With --all ROOT: each package's tree is locked into its .imgpkg/images.yml with its
    /// PackageSource's images settings (overrides, search rules, mirrors, Helm values).
    #[command(flatten)]
    all: super::all::AllArgs,
    /// Where to write the ImagesLock, e.g. DIR/.imgpkg/images.yml. Without it (and without
    /// --output) the lock is printed.
    #[arg(long, value_name = "FILE")]
    imgpkg_lock_output: Option<PathBuf>,
    /// Also write the manifests with references replaced by digests, as kbld prints them
    /// (FILE, or - for stdout).
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Rewrite the manifest files themselves with references replaced by digests, keeping
    /// comments, ytt annotations and layout. A file whose text cannot be rewritten exactly
    /// as kbld would replace its values is refused (use --output for it).
    #[arg(long)]
    in_place: bool,
    /// Registry lookups in flight at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Print each discovered reference once, sorted, exactly as the manifests write it;
    /// contact no registry.
    #[arg(long)]
    list: bool,
    /// Lock from the existing lock only, as cargo's --locked: contact no registry, fail if a
    /// reference is neither in a lock (one in the input, or the --imgpkg-lock-output file)
    /// nor pinned by digest, and fail rather than change the --imgpkg-lock-output file
    /// (missing, or with entries no manifest uses). For CI and reproducible releases.
    #[arg(long, conflicts_with = "list")]
    locked: bool,
    /// Lock every multi-platform index to this platform's image, as kbld's --platform
    /// (os/arch[/variant][:os.version], e.g. linux/arm64). Digest references are looked up
    /// too; preresolved entries are not; an override's own platformSelection wins.
    #[arg(long, value_name = "OS/ARCH")]
    platform: Option<PlatformSelection>,
    #[command(flatten)]
    helm: super::HelmArgs,
    /// Values files for rendering charts, after each chart's values.yaml (repeatable, as
    /// helm's --values).
    #[arg(long, value_name = "FILE")]
    helm_values: Vec<PathBuf>,
    /// Release name charts are rendered with [default: the chart's name].
    #[arg(long, value_name = "NAME")]
    helm_release_name: Option<String>,
    /// Kubernetes version charts are rendered for (helm's --kube-version).
    #[arg(long, value_name = "VERSION")]
    kube_version: Option<String>,
    #[command(flatten)]
    registry: RegistryArgs,
}

/// `lock --all ROOT`: the lock stage of every package under ROOT, as `release` runs it.
fn lock_all(
    args: &LockArgs,
    root: &Path,
    runtime: &tokio::runtime::Runtime,
) -> anyhow::Result<ExitCode> {
    let Some(packages) = super::all::select(root, &args.all)? else {
        return Ok(ExitCode::SUCCESS);
    };
    let ok = runtime.block_on(super::all::run(
        packages,
        args.all.jobs,
        |found| async move {
            let result = async {
                let spec = found.spec(args.all.repository_prefix.as_deref())?;
                let dir = found.dir();
                let output = found.output_dir();
                let prepared = super::release::Prepared::new(
                    &dir,
                    &spec,
                    &output,
                    &args.registry,
                    None,
                    &args.helm.helm_binary,
                    None,
                )?;
                let input = prepared.input(None, None, false);
                let (images, _) = crate::pipeline::lock_stage(&input)
                    .await
                    .map_err(|e| super::release::stage_failed(&e))?;
                anyhow::Ok((
                    spec.package.version.clone().unwrap_or_default(),
                    images.len(),
                ))
            }
            .await;
            super::all::Ran::of(
                &found,
                result.map(|(version, n)| (version, format!("locked {n} images"))),
            )
        },
    ));
    Ok(super::all::exit_code(ok))
}

pub(super) fn run(args: &LockArgs, runtime: &tokio::runtime::Runtime) -> anyhow::Result<ExitCode> {
    if let Some(root) = &args.all.all {
        return lock_all(args, root, runtime);
    }
    let mut config = LockConfig::default();
    config.helm.binary = args.helm.helm_binary.clone();
    config.helm.release_name = args.helm_release_name.clone();
    config.helm.kube_version = args.kube_version.clone();
    for path in &args.helm_values {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading --helm-values {}", path.display()))?;
        let name = path.display().to_string();
        let values: serde_json::Value = crate::carvel::yaml::from_str("Helm values", &text)
            .with_context(|| format!("parsing --helm-values {name}"))?;
        config.helm.values.push((name, values));
    }
    if args.list {
        let discovery = runtime.block_on(lock::discover(&args.file, &config))?;
        let mut stdout = std::io::stdout().lock();
        for reference in discovery.references.keys() {
            writeln!(stdout, "{reference}")?;
        }
        return Ok(ExitCode::SUCCESS);
    }

    let registry = Registry::new(registry_options(args)?)?;
    let options = ResolveOptions {
        concurrency: Some(args.concurrency),
        offline: args.locked,
        platform: args.platform.clone(),
        ..ResolveOptions::default()
    };
    let mut inputs = args.file.clone();
    if args.locked
        && let Some(output) = &args.imgpkg_lock_output
        && output.is_file()
        && !inside_any(output, &args.file)
    {
        inputs.push(output.clone());
    }
    let locked = runtime.block_on(lock::run(
        &inputs,
        &config,
        &registry,
        &options,
        args.imgpkg_lock_output.as_deref(),
    ))?;

    if args.in_place {
        for path in lock::rewrite_in_place(&locked.discovery, &locked.resolution, &config.yaml)? {
            eprintln!("rewrote {}", path.display());
        }
    }
    if let Some(output) = &args.output {
        let manifests = lock::render_manifests(&locked.discovery, &locked.resolution, &config.yaml);
        write_output(output, &manifests)?;
    } else if args.imgpkg_lock_output.is_none() && !args.in_place {
        print!("{}", locked.resolution.lock().to_kbld_yaml()?);
    }

    let requests = locked.resolution.requests;
    let destination = match (&args.imgpkg_lock_output, locked.written) {
        (Some(path), Some(Written::Changed)) => format!(", wrote {}", path.display()),
        (Some(path), Some(Written::Unchanged)) => format!(", {} unchanged", path.display()),
        _ => String::new(),
    };
    let selections = match locked.resolution.selections {
        0 => String::new(),
        n => format!(", {n} tag lists or platform manifests read"),
    };
    eprintln!(
        "locked {} images ({} looked up: {} manifest requests, {} other requests{selections})\
         {destination}",
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

/// Whether `path` is one of `inputs` or under one of them (then discovery reads it anyway).
fn inside_any(path: &Path, inputs: &[PathBuf]) -> bool {
    let Ok(path) = path.canonicalize() else {
        return false;
    };
    inputs
        .iter()
        .filter_map(|input| input.canonicalize().ok())
        .any(|input| path.starts_with(input))
}

fn write_output(path: &Path, text: &str) -> anyhow::Result<()> {
    if path == Path::new("-") {
        print!("{text}");
        return Ok(());
    }
    crate::lock::write_atomically(path, text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}
