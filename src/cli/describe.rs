//! `packsmith describe REF [-o table|yaml|json]`: what a bundle holds — imgpkg describe's
//! information in kubectl's output conventions. The bundle is pulled (every digest checked)
//! into a scratch directory; what it lists is read from there: its files, the images of its
//! `.imgpkg/images.yml` with the references they were locked from (`kbld.carvel.dev/id`) and
//! whether each is itself a bundle (nested), and, for a package repository bundle, the
//! Packages and PackageMetadata under `packages/`.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use futures::StreamExt as _;
use serde::Serialize;

use super::registry::{RegistryArgs, registry_host};
use crate::bundle::{self, Location};
use crate::carvel::imgpkg::{KBLD_ID_ANNOTATION, KBLD_ORIGINS_ANNOTATION};
use crate::carvel::{ImagesLock, Package, PackageMetadata, yaml};

#[derive(Copy, Clone, Debug, ValueEnum)]
enum Output {
    Table,
    Yaml,
    Json,
}

#[derive(Args, Debug)]
pub(super) struct DescribeArgs {
    /// Bundle to describe: REPO:TAG, REPO@sha256:…, or oci-layout:DIR[:TAG].
    #[arg(value_name = "REF")]
    bundle: String,
    /// Output format.
    #[arg(short, long, value_enum, default_value = "table")]
    output: Output,
    #[command(flatten)]
    registry: RegistryArgs,
}

/// What `-o yaml|json` prints.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Description {
    bundle: String,
    files: Vec<File>,
    images: Vec<Image>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    packages: Vec<PackageEntry>,
    /// What went into the bundle: its SLSA provenance (`sha256-<hex>.att`), when attached.
    #[serde(skip_serializing_if = "Option::is_none")]
    provenance: Option<Provenance>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Provenance {
    /// Signatures on its envelope (verify them with `cosign verify-attestation --key`).
    signatures: usize,
    builder: String,
    /// `sha256:…` of the spec's inputs (package, contents, images).
    inputs: String,
    dependencies: Vec<Dependency>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Dependency {
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    uri: Option<String>,
    /// `ALGORITHM:VALUE` pairs (`gitCommit:…`, `sha256:…`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    digest: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    annotations: Option<serde_json::Value>,
}

#[derive(Debug, Serialize)]
struct File {
    path: String,
    size: u64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Image {
    image: String,
    /// The reference it was locked from (`kbld.carvel.dev/id`).
    #[serde(skip_serializing_if = "Option::is_none")]
    original: Option<String>,
    /// `kbld.carvel.dev/origins`, as recorded.
    #[serde(skip_serializing_if = "Option::is_none")]
    origins: Option<String>,
    /// Whether the image is itself an imgpkg bundle.
    bundle: bool,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct PackageEntry {
    ref_name: String,
    version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    display_name: Option<String>,
    image: String,
}

pub(super) fn run(args: &DescribeArgs, runtime: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    let location = Location::parse(&args.bundle)?;
    let registry = args.registry.registry(registry_host(&location))?;
    let work = tempfile::tempdir().context("creating a scratch directory")?;
    let root = work.path().join("bundle");
    let pulled = runtime.block_on(bundle::pull(&registry, &location, &root))?;

    let lock_path = root.join(".imgpkg/images.yml");
    let lock = match std::fs::read_to_string(&lock_path) {
        Ok(text) => ImagesLock::from_yaml(&text)
            .with_context(|| format!("{} in {}", ".imgpkg/images.yml", pulled.image))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => ImagesLock::new(),
        Err(e) => return Err(e).context("reading .imgpkg/images.yml"),
    };
    // Whether each image is a bundle: one manifest and one config each, asked concurrently.
    let limits = crate::sync::Limits::default();
    let checks = lock.images.iter().map(|locked| {
        let (registry, limits) = (&registry, &limits);
        async move {
            let reference = crate::registry::parse_reference(&locked.image)?;
            let nested = crate::sync::is_bundle(registry, &reference, limits)
                .await
                .with_context(|| format!("inspecting {}", locked.image))?;
            anyhow::Ok(Image {
                image: locked.image.clone(),
                original: locked.annotations.get(KBLD_ID_ANNOTATION).cloned(),
                origins: locked.annotations.get(KBLD_ORIGINS_ANNOTATION).cloned(),
                bundle: nested,
            })
        }
    });
    let images: Vec<Image> = runtime
        .block_on(
            futures::stream::iter(checks)
                .buffered(registry.concurrency())
                .collect::<Vec<_>>(),
        )
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    let provenance = match &location {
        Location::Registry(reference) => {
            let digest = pulled
                .image
                .rsplit_once('@')
                .map(|(_, d)| d.to_owned())
                .unwrap_or_default();
            let contacted = registry.contact(reference);
            runtime
                .block_on(crate::registry::cosign::attestation::read(
                    &registry, &contacted, &digest,
                ))
                .with_context(|| format!("reading the attestations of {}", pulled.image))?
                .into_iter()
                .rev()
                .find(|a| a.predicate_type == crate::publish::provenance::PREDICATE_TYPE)
                .map(|a| provenance(&a))
        }
        Location::Layout(_) => None,
    };
    let description = Description {
        bundle: pulled.image.clone(),
        files: files(&root)?,
        images,
        packages: packages(&root)?,
        provenance,
    };
    match args.output {
        Output::Yaml => print!("{}", yaml::to_go_yaml("description", &description)?),
        Output::Json => println!("{}", serde_json::to_string_pretty(&description)?),
        Output::Table => print!("{}", table(&description)),
    }
    Ok(())
}

/// The parts of a SLSA provenance statement a person reads.
fn provenance(attestation: &crate::registry::cosign::attestation::Attestation) -> Provenance {
    let definition = &attestation.statement["predicate"]["buildDefinition"];
    let builder = &attestation.statement["predicate"]["runDetails"]["builder"];
    let text = |v: &serde_json::Value| v.as_str().map(str::to_owned);
    let dependencies = definition["resolvedDependencies"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|d| Dependency {
            name: text(&d["name"]).unwrap_or_default(),
            uri: text(&d["uri"]),
            digest: d["digest"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| format!("{k}:{}", v.as_str().unwrap_or_default()))
                        .collect()
                })
                .unwrap_or_default(),
            annotations: d.get("annotations").cloned(),
        })
        .collect();
    Provenance {
        signatures: attestation.signatures,
        builder: format!(
            "{} {}",
            text(&builder["id"]).unwrap_or_default(),
            text(&builder["version"]["packsmith"]).unwrap_or_default()
        ),
        inputs: format!(
            "sha256:{}",
            text(&definition["externalParameters"]["inputs"]["sha256"]).unwrap_or_default()
        ),
        dependencies,
    }
}

/// Every regular file under `root`, by path, sorted.
fn files(root: &Path) -> anyhow::Result<Vec<File>> {
    let mut files = Vec::new();
    let mut pending = vec![root.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))?
        {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_dir() {
                pending.push(entry.path());
            } else {
                let path = entry.path();
                let relative = path.strip_prefix(root).unwrap_or(&path);
                files.push(File {
                    path: relative.to_string_lossy().into_owned(),
                    size: meta.len(),
                });
            }
        }
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
}

/// The Packages of a package repository bundle (`packages/**.yml`), with the display names
/// of their PackageMetadata; none for a package bundle.
fn packages(root: &Path) -> anyhow::Result<Vec<PackageEntry>> {
    let dir = root.join("packages");
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut packages = Vec::new();
    let mut display_names = BTreeMap::new();
    for file in files(&dir)? {
        if !(file.path.ends_with(".yml") || file.path.ends_with(".yaml")) {
            continue;
        }
        let path = dir.join(&file.path);
        let text = std::fs::read_to_string(&path)?;
        let documents: Vec<serde_json::Value> = yaml::from_str_multiple("packages", &text)
            .with_context(|| format!("packages/{}", file.path))?;
        for document in documents {
            match document.get("kind").and_then(|k| k.as_str()) {
                Some("Package") => {
                    let package: Package = serde_json::from_value(document)
                        .with_context(|| format!("a Package in packages/{}", file.path))?;
                    let image = package
                        .spec
                        .template
                        .spec
                        .fetch
                        .iter()
                        .find_map(|f| f.imgpkg_bundle.as_ref().map(|b| b.image.clone()))
                        .unwrap_or_default();
                    packages.push(PackageEntry {
                        ref_name: package.spec.ref_name.clone(),
                        version: package.spec.version.clone(),
                        display_name: None,
                        image,
                    });
                }
                Some("PackageMetadata") => {
                    let metadata: PackageMetadata = serde_json::from_value(document)
                        .with_context(|| format!("a PackageMetadata in packages/{}", file.path))?;
                    if let Some(name) = metadata.metadata.name.clone() {
                        display_names.insert(name, metadata.spec.display_name.clone());
                    }
                }
                _ => {}
            }
        }
    }
    for package in &mut packages {
        package.display_name = display_names
            .get(&package.ref_name)
            .filter(|name| !name.is_empty())
            .cloned();
    }
    // Versions in semver order (1.9.0 before 1.10.0); one that is not semver by its text.
    packages.sort_by(|a, b| {
        let version = |p: &PackageEntry| semver::Version::parse(&p.version).ok();
        a.ref_name
            .cmp(&b.ref_name)
            .then_with(|| version(a).cmp(&version(b)))
            .then_with(|| a.version.cmp(&b.version))
    });
    Ok(packages)
}

/// kubectl's table conventions (see [`super::table::render`]).
fn table(d: &Description) -> String {
    use super::table::render;
    let mut out = format!("Bundle: {}\n\n", d.bundle);
    out.push_str(&render(
        &["PATH", "SIZE"],
        &d.files
            .iter()
            .map(|f| vec![f.path.clone(), f.size.to_string()])
            .collect::<Vec<_>>(),
    ));
    out.push('\n');
    if d.images.is_empty() {
        out.push_str("No images locked.\n");
    } else {
        out.push_str(&render(
            &["IMAGE", "LOCKED FROM", "BUNDLE"],
            &d.images
                .iter()
                .map(|i| {
                    vec![
                        i.image.clone(),
                        i.original.clone().unwrap_or_else(|| "-".to_owned()),
                        if i.bundle { "yes" } else { "no" }.to_owned(),
                    ]
                })
                .collect::<Vec<_>>(),
        ));
    }
    if !d.packages.is_empty() {
        out.push('\n');
        out.push_str(&render(
            &["PACKAGE", "VERSION", "DISPLAY NAME", "BUNDLE"],
            &d.packages
                .iter()
                .map(|p| {
                    vec![
                        p.ref_name.clone(),
                        p.version.clone(),
                        p.display_name.clone().unwrap_or_else(|| "-".to_owned()),
                        p.image.clone(),
                    ]
                })
                .collect::<Vec<_>>(),
        ));
    }
    if let Some(p) = &d.provenance {
        out.push_str(&format!(
            "\nProvenance: built by {}, inputs {}, {} signature(s)\n",
            p.builder, p.inputs, p.signatures
        ));
        out.push_str(&render(
            &["DEPENDENCY", "FROM", "RESOLVED"],
            &p.dependencies
                .iter()
                .map(|dep| {
                    vec![
                        dep.name.clone(),
                        dep.uri.clone().unwrap_or_else(|| "-".to_owned()),
                        if dep.digest.is_empty() {
                            dep.annotations
                                .as_ref()
                                .map_or_else(|| "-".to_owned(), ToString::to_string)
                        } else {
                            dep.digest.join(" ")
                        },
                    ]
                })
                .collect::<Vec<_>>(),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::carvel::{PackageMetadataSpec, PackageSpec};

    #[test]
    fn a_repository_bundle_lists_its_packages_with_display_names() {
        let dir = tempfile::tempdir().expect("tempdir");
        let packages_dir = dir.path().join("packages/app.example.com");
        std::fs::create_dir_all(&packages_dir).expect("mkdir");
        let metadata = PackageMetadata::new(
            "app.example.com",
            PackageMetadataSpec {
                display_name: "App".to_owned(),
                ..Default::default()
            },
        );
        let mut text = yaml::to_go_yaml("metadata", &metadata).expect("yaml");
        for version in ["1.10.0", "1.9.0"] {
            let package = Package::new("app.example.com", version, PackageSpec::default());
            text.push_str("---\n");
            text.push_str(&yaml::to_go_yaml("package", &package).expect("yaml"));
        }
        std::fs::write(packages_dir.join("all.yml"), text).expect("write");
        std::fs::write(packages_dir.join("README.md"), "not yaml: [").expect("write");

        let listed = packages(dir.path()).expect("packages");
        let summary: Vec<(&str, &str, Option<&str>)> = listed
            .iter()
            .map(|p| {
                (
                    p.ref_name.as_str(),
                    p.version.as_str(),
                    p.display_name.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("app.example.com", "1.9.0", Some("App")),
                ("app.example.com", "1.10.0", Some("App")),
            ]
        );
        assert!(
            packages(&dir.path().join("nothing"))
                .expect("none")
                .is_empty()
        );
    }
}
