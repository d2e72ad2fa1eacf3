//! `packsmith release DIR`: sync, lock, push and write Package + PackageMetadata for a package
//! directory (`kctrl package release`), through the same pipeline the controller runs.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Args;

use super::registry::RegistryArgs;
use crate::api::PackageSource;
use crate::carvel::vendir::LockConfig as VendirLock;
use crate::pipeline::{self, PipelineInput};
use crate::publish::repository::write_package_files;
use crate::registry::{Registry, RegistryOptions};
use crate::sync::MemorySecrets;

/// Files `packsmith init` writes next to the bundle: they describe the package, they are not
/// part of it.
const SOURCE_FILES: &[&str] = &[
    "packagesource.yaml",
    "packageinstall.yaml",
    "serviceaccount.yaml",
    "clusterrolebinding.yaml",
];

#[derive(Args, Debug)]
pub(super) struct ReleaseArgs {
    /// Package directory holding packagesource.yaml (and config/).
    #[arg(default_value = ".", conflicts_with = "all")]
    dir: PathBuf,
    #[command(flatten)]
    all: super::all::AllArgs,
    /// OCI repository for the bundle, instead of spec.bundle.repository.
    #[arg(long)]
    repository: Option<String>,
    /// Tag to push, instead of spec.bundle.tags.
    #[arg(long)]
    tag: Option<String>,
    /// Where to write packages/<refName>/{metadata,<version>}.yml [default: DIR/carvel-artifacts].
    #[arg(long)]
    output_dir: Option<PathBuf>,
    /// git over ssh with no ssh-knownhosts in its Secret: accept any host key, as vendir does
    /// (StrictHostKeyChecking=no). Without this flag such a source is refused.
    #[arg(long)]
    allow_unknown_ssh_hosts: bool,
    #[command(flatten)]
    helm: super::HelmArgs,
    #[command(flatten)]
    signing: super::sign::SigningArgs,
    #[command(flatten)]
    registry: RegistryArgs,
}

pub(super) fn run(
    args: &ReleaseArgs,
    runtime: &tokio::runtime::Runtime,
) -> anyhow::Result<std::process::ExitCode> {
    if let Some(root) = &args.all.all {
        return release_all(args, root, runtime);
    }
    let source_path = args.dir.join("packagesource.yaml");
    let text = std::fs::read_to_string(&source_path).with_context(|| {
        format!(
            "reading {} (run `packsmith init` to create one)",
            source_path.display()
        )
    })?;
    let source: PackageSource = crate::carvel::yaml::from_str("PackageSource", &text)
        .with_context(|| format!("parsing {}", source_path.display()))?;
    let output_dir = args
        .output_dir
        .clone()
        .unwrap_or_else(|| args.dir.join("carvel-artifacts"));
    let signing = args.signing.load()?;
    let released = runtime.block_on(release(
        args,
        signing.as_ref(),
        &args.dir,
        &source.spec,
        &output_dir,
    ))?;
    let spec = &source.spec;
    if let Some(before) = &released.outcome.changed_from {
        eprintln!(
            "packsmith: the content under this version changed since {before} was published; \
             published it as {} (spec.publish.versionPolicy: {:?})",
            released.outcome.version, spec.publish.version_policy
        );
    }
    println!("Pushed '{}'", released.outcome.pushed.image);
    println!(
        "packsmith: {} {} with {} locked images",
        spec.package.ref_name,
        released.outcome.version,
        released.outcome.images.len()
    );
    for path in released.written {
        println!("wrote {}", path.display());
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// `release --all ROOT`: every package under ROOT, `--jobs` at a time.
fn release_all(
    args: &ReleaseArgs,
    root: &Path,
    runtime: &tokio::runtime::Runtime,
) -> anyhow::Result<std::process::ExitCode> {
    anyhow::ensure!(
        args.output_dir.is_none() && args.repository.is_none() && args.tag.is_none(),
        "--output-dir, --repository and --tag name one package's bundle: with --all each \
         package uses its own (TCE-layout packages: --repository-prefix)"
    );
    let Some(packages) = super::all::select(root, &args.all)? else {
        return Ok(std::process::ExitCode::SUCCESS);
    };
    let prefix = args.all.repository_prefix.as_deref();
    let signing = args.signing.load()?;
    let signing = &signing;
    let ok = runtime.block_on(super::all::run(
        packages,
        args.all.jobs,
        |found| async move {
            let dir = found.dir();
            let result = async {
                let spec = found.spec(prefix)?;
                super::all::bundle_repository(&found, &spec)?;
                let released =
                    release(args, signing.as_ref(), &dir, &spec, &found.output_dir()).await?;
                anyhow::Ok(released)
            }
            .await;
            match result {
                Ok(released) => super::all::Ran {
                    name: found.name.clone(),
                    version: released.outcome.version.clone(),
                    result: Ok(released.outcome.pushed.image.clone()),
                },
                Err(e) => super::all::Ran {
                    name: found.name.clone(),
                    version: found
                        .spec(prefix)
                        .ok()
                        .and_then(|s| s.package.version)
                        .unwrap_or_default(),
                    result: Err(format!("{e:#}")),
                },
            }
        },
    ));
    Ok(super::all::exit_code(ok))
}

/// What one release produced.
struct Released {
    outcome: pipeline::Outcome,
    written: Vec<PathBuf>,
}

/// One package directory of the CLI, prepared for the pipeline: its registry client (the
/// command line's options, the spec's mirrors, `bundle.insecure`), vendir's previous lock
/// and what stays out of the bundle.
pub(super) struct Prepared<'a> {
    dir: &'a Path,
    spec: &'a crate::api::PackageSourceSpec,
    registry: Registry,
    secrets: MemorySecrets,
    exclude: Vec<String>,
    pub(super) previous: Option<VendirLock>,
    helm_binary: &'a Path,
    signing: Option<std::sync::Arc<crate::registry::cosign::SigningKey>>,
}

impl<'a> Prepared<'a> {
    pub(super) fn new(
        dir: &'a Path,
        spec: &'a crate::api::PackageSourceSpec,
        output_dir: &Path,
        registry_args: &RegistryArgs,
        repository_override: Option<&str>,
        helm_binary: &'a Path,
        signing: Option<std::sync::Arc<crate::registry::cosign::SigningKey>>,
    ) -> anyhow::Result<Self> {
        let repository = repository_override.unwrap_or(&spec.bundle.repository);
        let host = repository.split('/').next().unwrap_or_default();
        let previous = std::fs::read_to_string(dir.join(VENDIR_LOCK))
            .ok()
            .and_then(|t| VendirLock::from_yaml(&t).ok());
        Ok(Self {
            dir,
            spec,
            registry: registry(registry_args, spec, host)?,
            secrets: MemorySecrets::default(),
            exclude: excluded(dir, spec, output_dir)?,
            previous,
            helm_binary,
            signing,
        })
    }

    /// The pipeline's input for this package, as the CLI runs it.
    pub(super) fn input(
        &self,
        tags_override: Option<Vec<String>>,
        repository_override: Option<String>,
        allow_unknown_ssh_hosts: bool,
    ) -> PipelineInput<'_> {
        PipelineInput {
            // The CLI's user chose these upstreams, on their own machine.
            egress: crate::registry::Egress::default(),
            disk_budget: None,
            helm_binary: self.helm_binary,
            spec: self.spec,
            root: self.dir,
            exclude: self.exclude.clone(),
            registry: &self.registry,
            secrets: &self.secrets,
            cache_dir: None,
            previous: self.previous.as_ref(),
            tags_override,
            repository_override,
            now: jiff::Timestamp::now(),
            labels: Default::default(),
            namespace: None,
            on_stage: None,
            sync_policy: crate::sync::Policy::cli(allow_unknown_ssh_hosts),
            signing: self.signing.as_deref(),
        }
    }
}

/// vendir's lock, next to the contents.
const VENDIR_LOCK: &str = "vendir.lock.yml";

/// A failed stage as the CLI says it.
pub(super) fn stage_failed(e: &pipeline::PipelineError) -> anyhow::Error {
    anyhow::anyhow!(
        "{} stage failed ({}): {}",
        format!("{:?}", e.stage).to_lowercase(),
        e.reason,
        e.message
    )
}

/// Releases the package at `dir` (its spec already read): the pipeline, then vendir's lock and
/// the Package files.
async fn release(
    args: &ReleaseArgs,
    signing: Option<&std::sync::Arc<crate::registry::cosign::SigningKey>>,
    dir: &Path,
    spec: &crate::api::PackageSourceSpec,
    output_dir: &Path,
) -> anyhow::Result<Released> {
    let prepared = Prepared::new(
        dir,
        spec,
        output_dir,
        &args.registry,
        args.repository.as_deref(),
        &args.helm.helm_binary,
        super::sign::for_spec(signing, spec)?,
    )?;
    let input = prepared.input(
        args.tag.clone().map(|t| vec![t]),
        args.repository.clone(),
        args.allow_unknown_ssh_hosts,
    );
    let outcome = pipeline::run(&input).await.map_err(|e| stage_failed(&e))?;
    let previous_path = dir.join(VENDIR_LOCK);
    crate::lock::write_atomically(&previous_path, outcome.contents.to_yaml()?.as_bytes())
        .with_context(|| format!("writing {}", previous_path.display()))?;
    let written = write_package_files(output_dir, &outcome.package, &outcome.metadata)?;
    Ok(Released {
        outcome,
        written: written.to_vec(),
    })
}

fn registry(
    registry_args: &RegistryArgs,
    spec: &crate::api::PackageSourceSpec,
    host: &str,
) -> anyhow::Result<Registry> {
    let mut options: RegistryOptions = registry_args.options(Some(host))?;
    // The command line's mirrors come first: they are the operator's override of the spec's.
    options
        .mirrors
        .extend(spec.images.mirrors.iter().map(|m| m.to_registry_mirror()));
    if spec.bundle.insecure {
        options.insecure_hosts.push(host.to_owned());
    }
    Ok(Registry::new(options)?)
}

/// Everything at the top of DIR that is neither a contents directory, `config/` nor
/// `.imgpkg/` stays out of the bundle: the source files, the output, vendir's lock, VCS data.
fn excluded(
    dir: &Path,
    spec: &crate::api::PackageSourceSpec,
    output_dir: &Path,
) -> anyhow::Result<Vec<String>> {
    let mut keep: BTreeSet<String> = ["config".to_owned(), ".imgpkg".to_owned()].into();
    for d in &spec.contents {
        if let Some(top) = d.path.split('/').next() {
            keep.insert(top.to_owned());
        }
    }
    let mut exclude: Vec<String> = SOURCE_FILES.iter().map(|s| s.to_string()).collect();
    exclude.push(".git".to_owned());
    if let Ok(rel) = output_dir.strip_prefix(dir)
        && let Some(top) = rel.components().next()
    {
        exclude.push(top.as_os_str().to_string_lossy().into_owned());
    }
    if dir.is_dir() {
        for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if !keep.contains(&name) && !exclude.contains(&name) {
                exclude.push(name);
            }
        }
    }
    exclude.sort();
    exclude.dedup();
    Ok(exclude)
}
