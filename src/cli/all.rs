//! `--all ROOT`: the monorepo workflow (the seed Makefile's `vendir-sync-all`, `lock-images`,
//! `push-package-all`). Finds every package directory under ROOT, optionally only those
//! whose files changed since a git ref, runs one command on each with a bounded concurrency,
//! shows progress on a terminal and ends with a summary table; the exit code says whether
//! any failed.
//!
//! A package directory is either
//! - a directory holding `packagesource.yaml` (what `packsmith init` writes), or
//! - TCE's layout, `NAME/VERSION/bundle/vendir.yml` with `NAME/VERSION/package.yaml` and
//!   `NAME/metadata.yaml`: the Package and PackageMetadata give refName, version, licenses,
//!   notes, values schema and metadata; vendir.yml gives the contents; the bundle is pushed to
//!   `--repository-prefix/NAME`, tagged with the version, as TCE's Makefile pushed it.

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use futures::StreamExt as _;

use crate::api::PackageSourceSpec;
use crate::api::common::BundleTarget;
use crate::api::source::PackageSpec;
use crate::carvel::{Package, PackageMetadata, vendir};

/// Directories below ROOT searched for packages, at most this deep (a package tree is
/// shallow; a deep walk is a wrong ROOT).
const MAX_DEPTH: usize = 8;
/// Package directories in one tree, at most.
const MAX_PACKAGES: usize = 10_000;

#[derive(clap::Args, Debug, Clone)]
pub(super) struct AllArgs {
    /// Run over every package directory under ROOT (a packagesource.yaml, or TCE's
    /// NAME/VERSION/bundle/vendir.yml layout) instead of one package.
    #[arg(long, value_name = "ROOT")]
    pub all: Option<PathBuf>,
    /// With --all: packages run at the same time.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64), requires = "all")]
    pub jobs: u16,
    /// With --all: only packages whose files differ between this git ref and HEAD (the
    /// commits of a pull request, as CI sees them; uncommitted changes do not count).
    #[arg(long, value_name = "GIT_REF", requires = "all")]
    pub changed_since: Option<String>,
    /// With --all: where TCE-layout packages are pushed, as PREFIX/NAME:VERSION (packages
    /// with a packagesource.yaml name their own repository).
    #[arg(long, value_name = "REGISTRY/PATH", requires = "all")]
    pub repository_prefix: Option<String>,
}

/// One package directory found under ROOT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Found {
    /// For the summary: the package directory relative to ROOT (TCE: `…/NAME/VERSION`).
    pub(super) name: String,
    pub layout: Layout,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Layout {
    /// A directory with packagesource.yaml: the package directory itself.
    Source { dir: PathBuf },
    /// TCE: `NAME/VERSION`, its `bundle/` the package directory.
    Tce {
        name_dir: PathBuf,
        version_dir: PathBuf,
    },
}

impl Found {
    /// Where the command runs: the directory holding config/ and the contents.
    pub(super) fn dir(&self) -> PathBuf {
        match &self.layout {
            Layout::Source { dir } => dir.clone(),
            Layout::Tce { version_dir, .. } => version_dir.join("bundle"),
        }
    }

    /// The paths whose change marks the package changed (for --changed-since).
    fn inputs(&self) -> Vec<PathBuf> {
        match &self.layout {
            Layout::Source { dir } => vec![dir.clone()],
            Layout::Tce {
                name_dir,
                version_dir,
            } => vec![version_dir.clone(), name_dir.join("metadata.yaml")],
        }
    }

    /// Where release writes the Package files.
    pub(super) fn output_dir(&self) -> PathBuf {
        match &self.layout {
            Layout::Source { dir } => dir.join("carvel-artifacts"),
            Layout::Tce { version_dir, .. } => version_dir.join("carvel-artifacts"),
        }
    }

    /// The PackageSource spec of this package.
    pub(super) fn spec(
        &self,
        repository_prefix: Option<&str>,
    ) -> anyhow::Result<PackageSourceSpec> {
        match &self.layout {
            Layout::Source { dir } => {
                let path = dir.join("packagesource.yaml");
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))?;
                let source: crate::api::PackageSource =
                    crate::carvel::yaml::from_str("PackageSource", &text)
                        .with_context(|| format!("parsing {}", path.display()))?;
                Ok(source.spec)
            }
            Layout::Tce {
                name_dir,
                version_dir,
            } => tce_spec(name_dir, version_dir, repository_prefix),
        }
    }
}

/// The packages `--all ROOT` runs on: every one under ROOT, or those `--changed-since` keeps
/// (`None` when that is none: nothing to do).
pub(super) fn select(root: &Path, args: &AllArgs) -> anyhow::Result<Option<Vec<Found>>> {
    let packages = find(root)?;
    let Some(git_ref) = &args.changed_since else {
        return Ok(Some(packages));
    };
    let total = packages.len();
    let changed = changed_since(root, git_ref, packages)?;
    eprintln!(
        "packsmith: {} of {total} packages changed since {git_ref}",
        changed.len()
    );
    Ok((!changed.is_empty()).then_some(changed))
}

/// The process's exit code for a run over a tree.
pub(super) fn exit_code(ok: bool) -> std::process::ExitCode {
    if ok {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}

/// Every package directory under `root`, sorted by path.
pub(super) fn find(root: &Path) -> anyhow::Result<Vec<Found>> {
    anyhow::ensure!(root.is_dir(), "{} is not a directory", root.display());
    let mut found = Vec::new();
    let mut walker = walkdir::WalkDir::new(root)
        .max_depth(MAX_DEPTH)
        .follow_links(false)
        .sort_by_file_name()
        .into_iter();
    while let Some(entry) = walker.next() {
        let entry = entry.with_context(|| format!("reading {}", root.display()))?;
        if !entry.file_type().is_dir() {
            continue;
        }
        let dir = entry.path();
        let name = entry.file_name().to_string_lossy();
        if name.starts_with('.') && entry.depth() > 0 {
            walker.skip_current_dir();
            continue;
        }
        let relative = dir
            .strip_prefix(root)
            .ok()
            .filter(|p| !p.as_os_str().is_empty())
            .map_or_else(|| name.to_string(), |p| p.display().to_string());
        if dir.join("packagesource.yaml").is_file() {
            found.push(Found {
                name: relative,
                layout: Layout::Source {
                    dir: dir.to_owned(),
                },
            });
            walker.skip_current_dir();
        } else if dir.join("bundle/vendir.yml").is_file() && dir.join("package.yaml").is_file() {
            found.push(Found {
                name: relative,
                layout: Layout::Tce {
                    name_dir: dir.parent().unwrap_or(dir).to_owned(),
                    version_dir: dir.to_owned(),
                },
            });
            walker.skip_current_dir();
        }
        if found.len() > MAX_PACKAGES {
            bail!(
                "more than {MAX_PACKAGES} package directories under {}",
                root.display()
            );
        }
    }
    if found.is_empty() {
        bail!(
            "no package directory under {} (a directory with packagesource.yaml, or \
             NAME/VERSION/bundle/vendir.yml with NAME/VERSION/package.yaml)",
            root.display()
        );
    }
    Ok(found)
}

/// The PackageSource spec a TCE package directory stands for.
fn tce_spec(
    name_dir: &Path,
    version_dir: &Path,
    repository_prefix: Option<&str>,
) -> anyhow::Result<PackageSourceSpec> {
    let read = |path: PathBuf| {
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
    };
    let package_path = version_dir.join("package.yaml");
    let package = Package::from_yaml(&read(package_path.clone())?)
        .with_context(|| format!("parsing {}", package_path.display()))?;
    let metadata_path = name_dir.join("metadata.yaml");
    let metadata = if metadata_path.is_file() {
        PackageMetadata::from_yaml(&read(metadata_path.clone())?)
            .with_context(|| format!("parsing {}", metadata_path.display()))?
            .spec
    } else {
        Default::default()
    };
    let vendir_path = version_dir.join("bundle/vendir.yml");
    let config = vendir::Config::from_yaml(&read(vendir_path.clone())?)
        .with_context(|| format!("parsing {}", vendir_path.display()))?;
    let name = name_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let p = package.spec;
    let some = |s: String| (!s.is_empty()).then_some(s);
    Ok(PackageSourceSpec {
        package: PackageSpec {
            ref_name: p.ref_name,
            version: Some(p.version),
            release_notes: some(p.release_notes),
            licenses: p.licenses,
            capacity_requirements_description: some(p.capacity_requirements_description),
            kubernetes_version_selection: p.kubernetes_version_selection,
            kapp_controller_version_selection: p.kapp_controller_version_selection,
            values_schema: p.values_schema.and_then(|s| s.open_api_v3),
            metadata,
            ..Default::default()
        },
        contents: config.directories,
        // Without a prefix there is nowhere to push: [`bundle_repository`] says so.
        bundle: BundleTarget {
            repository: repository_prefix
                .map(|prefix| format!("{}/{name}", prefix.trim_end_matches('/')))
                .unwrap_or_default(),
            ..Default::default()
        },
        images: Default::default(),
        publish: Default::default(),
        interval: "1h".to_owned(),
        timeout: None,
        suspend: false,
    })
}

/// The repository a package is pushed to: its spec's, which a TCE-layout package has only
/// with `--repository-prefix`.
pub(super) fn bundle_repository(found: &Found, spec: &PackageSourceSpec) -> anyhow::Result<String> {
    if spec.bundle.repository.is_empty() {
        bail!(
            "{} is a TCE-layout package: give --repository-prefix REGISTRY/PATH (it is pushed \
             to PREFIX/NAME:VERSION, as TCE's Makefile pushed it)",
            found.dir().display()
        );
    }
    Ok(spec.bundle.repository.clone())
}

/// The packages among `found` whose inputs differ between `git_ref` and HEAD of the git
/// repository holding `root`: a subtree's id is the hash of everything in it, so one lookup
/// per path decides.
pub(super) fn changed_since(
    root: &Path,
    git_ref: &str,
    found: Vec<Found>,
) -> anyhow::Result<Vec<Found>> {
    let repo = gix::discover(root).with_context(|| {
        format!(
            "--changed-since: {} is not in a git repository",
            root.display()
        )
    })?;
    let workdir = repo
        .workdir()
        .context("--changed-since: the repository has no working tree")?
        .canonicalize()?;
    let tree_of = |spec: &str| -> anyhow::Result<gix::Tree<'_>> {
        let id = repo
            .rev_parse_single(spec)
            .with_context(|| format!("--changed-since: {spec:?} names no commit"))?;
        Ok(id.object()?.peel_to_tree()?)
    };
    let before = tree_of(git_ref)?;
    let now = tree_of("HEAD")?;
    let id_at = |tree: &gix::Tree<'_>, path: &Path| -> anyhow::Result<Option<gix::ObjectId>> {
        Ok(tree
            .lookup_entry_by_path(path)?
            .map(|entry| entry.object_id()))
    };
    let mut changed = Vec::new();
    for package in found {
        let mut differs = false;
        for input in package.inputs() {
            let absolute = input.canonicalize().unwrap_or(input.clone());
            let Ok(relative) = absolute.strip_prefix(&workdir) else {
                bail!(
                    "--changed-since: {} is outside the repository at {}",
                    input.display(),
                    workdir.display()
                );
            };
            if id_at(&before, relative)? != id_at(&now, relative)? {
                differs = true;
                break;
            }
        }
        if differs {
            changed.push(package);
        }
    }
    Ok(changed)
}

/// What one package's run gave, for the summary.
pub(super) struct Ran {
    pub(super) name: String,
    /// The version, when known.
    pub version: String,
    /// What it produced (e.g. the bundle), or why it failed.
    pub result: Result<String, String>,
}

impl Ran {
    /// The row of `package` for `result`: its version and what it produced, or the error
    /// with its causes.
    pub(super) fn of(package: &Found, result: anyhow::Result<(String, String)>) -> Ran {
        match result {
            Ok((version, produced)) => Ran {
                name: package.name.clone(),
                version,
                result: Ok(produced),
            },
            Err(e) => Ran {
                name: package.name.clone(),
                version: String::new(),
                result: Err(format!("{e:#}")),
            },
        }
    }
}

/// Runs `job` on every package, `jobs` at a time, with a progress line per finished package
/// on a terminal, then prints the summary table. Returns whether every package succeeded.
pub(super) async fn run<F, Fut>(packages: Vec<Found>, jobs: u16, job: F) -> bool
where
    F: Fn(Found) -> Fut,
    Fut: std::future::Future<Output = Ran>,
{
    let total = packages.len();
    let progress = std::io::stderr().is_terminal();
    let mut done = 0usize;
    let mut results: Vec<Ran> = futures::stream::iter(packages)
        .map(job)
        .buffer_unordered(usize::from(jobs))
        .inspect(|ran| {
            done += 1;
            if progress {
                let state = match &ran.result {
                    Ok(_) => "ok",
                    Err(_) => "FAILED",
                };
                eprintln!("[{done}/{total}] {state} {}", ran.name);
            }
        })
        .collect()
        .await;
    results.sort_by(|a, b| a.name.cmp(&b.name));
    let failed = results.iter().filter(|r| r.result.is_err()).count();
    let mut rows = Vec::new();
    for ran in &results {
        let (result, detail) = match &ran.result {
            Ok(detail) => ("ok", detail.clone()),
            // One line per package: the first line of the error says what failed.
            Err(error) => (
                "FAILED",
                error.lines().next().unwrap_or_default().to_owned(),
            ),
        };
        rows.push(vec![
            ran.name.clone(),
            ran.version.clone(),
            result.to_owned(),
            detail,
        ]);
    }
    print!(
        "{}",
        super::table::render(&["PACKAGE", "VERSION", "RESULT", "DETAIL"], &rows)
    );
    println!(
        "{} packages: {} ok, {failed} failed",
        results.len(),
        results.len() - failed
    );
    if failed > 0 {
        for ran in results.iter().filter(|r| r.result.is_err()) {
            if let Err(error) = &ran.result {
                eprintln!("{}: {error}", ran.name);
            }
        }
    }
    failed == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tce_root() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/tce")
    }

    #[test]
    fn tce_packages_are_found_and_read_as_package_sources() {
        let found = find(&tce_root()).unwrap();
        let names: Vec<&str> = found.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "cert-manager/1.9.1",
                "contour/1.22.3",
                "external-dns/0.12.2",
                "local-path-storage/0.0.22"
            ]
        );
        let cert_manager = &found[0];
        assert_eq!(
            cert_manager.dir(),
            tce_root().join("cert-manager/1.9.1/bundle")
        );
        let spec = cert_manager.spec(None).unwrap();
        let error = bundle_repository(cert_manager, &spec)
            .unwrap_err()
            .to_string();
        assert!(error.contains("--repository-prefix"), "{error}");
        let spec = cert_manager
            .spec(Some("registry.example.com/tce/"))
            .unwrap();
        assert_eq!(
            spec.package.ref_name,
            "cert-manager.community.tanzu.vmware.com"
        );
        assert_eq!(spec.package.version.as_deref(), Some("1.9.1"));
        assert_eq!(spec.package.licenses, ["Apache 2.0"]);
        assert_eq!(spec.package.metadata.display_name, "cert-manager");
        assert_eq!(
            spec.package.values_schema.as_ref().unwrap()["properties"]["namespace"]["default"],
            "cert-manager"
        );
        assert_eq!(spec.contents[0].path, "config/upstream");
        assert_eq!(
            spec.bundle.repository,
            "registry.example.com/tce/cert-manager"
        );
        assert_eq!(spec.bundle.tags_for("1.9.1"), ["1.9.1"]);
    }

    #[test]
    fn package_sources_are_found_and_not_searched_inside() {
        let root = tempfile::tempdir().unwrap();
        for dir in ["apps/a", "apps/a/nested", "b", ".hidden/c"] {
            std::fs::create_dir_all(root.path().join(dir)).unwrap();
            std::fs::write(root.path().join(dir).join("packagesource.yaml"), "x").unwrap();
        }
        let names: Vec<String> = find(root.path())
            .unwrap()
            .into_iter()
            .map(|f| f.name)
            .collect();
        assert_eq!(names, ["apps/a", "b"]);
        let empty = tempfile::tempdir().unwrap();
        assert!(find(empty.path()).is_err());
    }
}
