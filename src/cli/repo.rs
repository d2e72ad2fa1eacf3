//! `packsmith repo release`: a package repository bundle from a directory of released
//! packages (`kctrl package repository release`, TCE's `generate-package-repo`).

use std::io::IsTerminal as _;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;

use super::registry::{RegistryArgs, registry_host};
use crate::bundle::{Location, PushEvent, PushOptions};
use crate::carvel::BundleLock;
use crate::publish::repository::{self, ReleaseOptions};

#[derive(Args, Debug)]
pub(super) struct RepoReleaseArgs {
    /// Directory holding packages/<refName>/{metadata,<version>}.yml (what `packsmith release`
    /// writes under carvel-artifacts/; several releases may share one directory).
    #[arg(long, value_name = "DIR")]
    packages: PathBuf,
    /// Where to push the repository bundle: REPO:TAG.
    #[arg(short, long, value_name = "REF")]
    bundle: String,
    /// Write an imgpkg BundleLock (the pushed digest and tag) here.
    #[arg(long, value_name = "FILE")]
    lock_output: Option<PathBuf>,
    /// Where to write the PackageRepository [default: DIR/package-repository.yml].
    #[arg(long, value_name = "FILE")]
    package_repository_output: Option<PathBuf>,
    /// metadata.name of the PackageRepository [default: the bundle repository's last path
    /// segment].
    #[arg(long)]
    name: Option<String>,
    /// metadata.namespace of the PackageRepository (kapp-controller's global packaging
    /// namespace makes its packages visible in every namespace).
    #[arg(long)]
    namespace: Option<String>,
    /// Add the packages of --packages to the repository bundle REF (pulled, merged, pushed as
    /// --bundle) instead of building the repository from --packages alone. A version it
    /// already holds with other content is refused: published versions do not change.
    #[arg(long, value_name = "REF")]
    add_to: Option<String>,
    /// Copy every package bundle, with its images, into the repository bundle's repository
    /// first (imgpkg copy --to-repo), so the repository installs from that registry alone.
    #[arg(long)]
    relocate_images: bool,
    #[command(flatten)]
    signing: super::sign::SigningArgs,
    #[command(flatten)]
    registry: RegistryArgs,
}

pub(super) fn run(args: &RepoReleaseArgs, runtime: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    let location = Location::parse(&args.bundle)?;
    // kapp-controller fetches a PackageRepository from a registry; a bundle in a local OCI
    // layout could never be installed from, and a digest cannot be pushed to.
    let tag = match (&location, location.tag(), location.digest()) {
        (Location::Layout(_), _, _) => anyhow::bail!(
            "--bundle {}: a package repository must be pushed to a registry that \
             kapp-controller can fetch from (REPO:TAG)",
            args.bundle
        ),
        (_, _, Some(_)) | (_, None, _) => anyhow::bail!(
            "--bundle {}: repo release needs a tag (REPO:TAG), not a digest",
            args.bundle
        ),
        (_, Some(tag), None) => tag.to_owned(),
    };
    let name = match &args.name {
        Some(name) => name.clone(),
        None => default_name(&location.repository()),
    };
    let registry = args.registry.registry(registry_host(&location))?;
    let signing = args.signing.load()?;

    let verbose = std::io::stderr().is_terminal();
    let progress = |event: &PushEvent| match event {
        PushEvent::Uploaded { digest, .. } => eprintln!("packsmith: uploaded {digest}"),
        PushEvent::Tagged { tag } => eprintln!("packsmith: tagged {tag}"),
        PushEvent::Retrying { what, error, delay } => {
            eprintln!("packsmith: {what} failed ({error}); retrying in {delay:.1?}");
        }
        PushEvent::BlobExists { .. } | PushEvent::Uploading { .. } => {}
    };
    let options = ReleaseOptions {
        name,
        namespace: args.namespace.clone(),
        tags: vec![tag.clone()],
        push: PushOptions {
            progress: verbose.then_some(&progress as &(dyn Fn(&PushEvent) + Send + Sync)),
            ..PushOptions::default()
        },
        relocate_images: args.relocate_images,
        signing: signing.as_deref(),
    };
    // With --add-to: the existing repository's packages/ with the new files over it, in a
    // directory of its own (the user's --packages is only read).
    let merged = match &args.add_to {
        Some(existing) => {
            Some(runtime.block_on(merge_into(&registry, existing, &args.packages))?)
        }
        None => None,
    };
    let root = merged
        .as_ref()
        .map_or(args.packages.as_path(), |(_, root)| root.as_path());
    let released = runtime.block_on(repository::release(&registry, root, &location, &options))?;

    if let Some(path) = &args.lock_output {
        let lock = BundleLock::new(&released.pushed.image, &tag);
        std::fs::write(path, lock.to_yaml()?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let output = args
        .package_repository_output
        .clone()
        .unwrap_or_else(|| args.packages.join("package-repository.yml"));
    std::fs::write(&output, released.repository.to_yaml()?)
        .with_context(|| format!("writing {}", output.display()))?;

    println!("Pushed '{}'", released.pushed.image);
    let names: std::collections::BTreeSet<&str> =
        released.packages.iter().map(|(r, _)| r.as_str()).collect();
    match &args.add_to {
        Some(existing) => println!(
            "packsmith: {} packages ({} versions): {existing} plus {}",
            names.len(),
            released.packages.len(),
            args.packages.display()
        ),
        None => println!(
            "packsmith: {} packages ({} versions) locked in {}",
            names.len(),
            released.packages.len(),
            args.packages.join(".imgpkg/images.yml").display()
        ),
    }
    println!("wrote {}", output.display());
    Ok(())
}

/// Pulls the repository bundle `existing` and lays the files of `packages/packages/` over its
/// `packages/`, in a temporary directory (returned with the merged root inside it). A file it
/// already holds must be byte for byte the same: a published Package version never changes
/// under its name.
async fn merge_into(
    registry: &crate::registry::Registry,
    existing: &str,
    packages: &std::path::Path,
) -> anyhow::Result<(tempfile::TempDir, PathBuf)> {
    let location = Location::parse(existing).with_context(|| format!("--add-to {existing}"))?;
    let tmp = tempfile::Builder::new()
        .prefix("packsmith-repo-")
        .tempdir()
        .context("creating a directory to merge the repositories in")?;
    let pulled = tmp.path().join("repository");
    crate::bundle::pull(registry, &location, &pulled)
        .await
        .with_context(|| format!("pulling the repository bundle {existing}"))?;
    let from_existing = pulled.join("packages");
    anyhow::ensure!(
        from_existing.is_dir(),
        "{existing} is not a package repository bundle: it has no packages/ directory"
    );
    let added = packages.join("packages");
    anyhow::ensure!(
        added.is_dir(),
        "{} holds no packages/ directory",
        packages.display()
    );
    let merged = tmp.path().join("merged");
    copy_tree(&from_existing, &merged.join("packages"), None)?;
    copy_tree(&added, &merged.join("packages"), Some(existing))?;
    Ok((tmp, merged))
}

/// Copies the regular files under `from` to the same paths under `to`. With `refuse_changes`
/// (the repository being added to), a Package version already at `to` must be identical.
fn copy_tree(
    from: &std::path::Path,
    to: &std::path::Path,
    refuse_changes: Option<&str>,
) -> anyhow::Result<()> {
    for entry in walkdir::WalkDir::new(from).follow_links(false) {
        let entry = entry.with_context(|| format!("reading {}", from.display()))?;
        if !entry.file_type().is_file() {
            continue;
        }
        let relative = entry.path().strip_prefix(from)?;
        let target = to.join(relative);
        let bytes = std::fs::read(entry.path())
            .with_context(|| format!("reading {}", entry.path().display()))?;
        // PackageMetadata is not versioned: the newer description wins.
        let versioned = relative.file_name().is_some_and(|n| n != "metadata.yml");
        if let Some(existing) = refuse_changes
            && versioned
            && let Ok(current) = std::fs::read(&target)
        {
            anyhow::ensure!(
                current == bytes,
                "packages/{} is already in {existing} with other content: a published version \
                 does not change (release it as a new version)",
                relative.display()
            );
            continue;
        }
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&target, bytes).with_context(|| format!("writing {}", target.display()))?;
    }
    Ok(())
}

/// The repository's last path segment, made a valid object name (kctrl asks for one; a
/// default that needs no thought is friendlier for the common one-repository case).
fn default_name(repository: &str) -> String {
    let last = repository.rsplit('/').next().unwrap_or(repository);
    let name: String = last
        .chars()
        .map(|c| if c == '_' { '-' } else { c })
        .collect();
    let name = name.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    if name.is_empty() {
        "packages".to_owned()
    } else {
        name.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::default_name;

    #[test]
    fn default_names_are_object_names() {
        assert_eq!(default_name("127.0.0.1:5000/tce/main"), "main");
        assert_eq!(default_name("r.io/my_repo"), "my-repo");
        assert_eq!(default_name("r.io/a/_"), "packages");
    }
}
