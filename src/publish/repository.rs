//! Package repository bundles: the `packages/` tree kapp-controller reads from a
//! PackageRepository, and the ImagesLock that pins every package bundle in it (what
//! `kctrl package repository release` and TCE's `generate-package-repo` produce).
//!
//! [`release`] is the whole flow on a directory: read and check every document the way
//! kapp-controller will, lock the package bundles, push `packages/` + `.imgpkg/` as an imgpkg
//! bundle, and describe it as a PackageRepository. Nothing is pushed unless every document
//! passes, so a repository kapp-controller would refuse never reaches a registry.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::bundle::{self, BuildOptions, BundleError, Location, PushOptions, Pushed};
use crate::carvel::imgpkg::{ImageRef, ImagesLock};
use crate::carvel::package::{PackageDocument, parse_package_documents};
use crate::carvel::{Package, PackageMetadata, PackageRepository};
use crate::registry::Registry;

/// The directory of a repository bundle that holds the documents.
pub const PACKAGES_DIR: &str = "packages";
/// imgpkg's metadata directory; the only other thing a repository bundle carries.
pub const IMGPKG_DIR: &str = ".imgpkg";

#[derive(Debug, thiserror::Error)]
pub enum RepositoryError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error(
        "{dir} holds no packages/ directory: a repository bundle needs packages/<refName>/*.yml"
    )]
    NoPackages { dir: PathBuf },
    /// Every problem found, so one run tells the user everything to fix.
    #[error(
        "kapp-controller would reject this repository:\n  {}",
        .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n  ")
    )]
    Rejected(Vec<RepositoryError>),
    #[error("invalid PackageRepository name {name:?}: {reason}")]
    InvalidName { name: String, reason: String },
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error("signing or attesting the repository bundle: {0}")]
    Signing(#[from] crate::registry::cosign::CosignError),
}

impl RepositoryError {
    /// Whether retrying later may succeed (the registry was unreachable).
    pub fn is_retryable(&self) -> bool {
        match self {
            RepositoryError::Bundle(e) => e.is_retryable(),
            RepositoryError::Signing(e) => e.is_retryable(),
            _ => false,
        }
    }
}

/// A document of a repository directory and the file it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct RepositoryDocument {
    pub path: PathBuf,
    pub document: PackageDocument,
}

/// Writes `packages/<refName>/metadata.yml` and `packages/<refName>/<version>.yml` under
/// `root`, kctrl's layout; returns the two paths.
pub fn write_package_files(
    root: &Path,
    package: &Package,
    metadata: &PackageMetadata,
) -> Result<[PathBuf; 2], RepositoryError> {
    // Both become path components: from a release record or another source's Package (hostile
    // input) they must not climb out of `packages/` or name a directory.
    for (what, value) in [
        ("refName", package.spec.ref_name.as_str()),
        ("version", package.spec.version.as_str()),
    ] {
        if value.is_empty() || value == "." || value == ".." || value.contains(['/', '\\', '\0']) {
            return Err(RepositoryError::Invalid {
                path: root.join("packages"),
                reason: format!(
                    "the Package's {what} {value:?} cannot be a file name; refusing to write it"
                ),
            });
        }
    }
    let dir = root.join("packages").join(&package.spec.ref_name);
    std::fs::create_dir_all(&dir).map_err(|source| RepositoryError::Io {
        path: dir.clone(),
        source,
    })?;
    let invalid = |path: &Path, e: crate::carvel::Error| RepositoryError::Invalid {
        path: path.to_owned(),
        reason: e.to_string(),
    };
    let metadata_path = dir.join("metadata.yml");
    let package_path = dir.join(format!("{}.yml", package.spec.version));
    let metadata_yaml = metadata.to_yaml().map_err(|e| invalid(&metadata_path, e))?;
    let package_yaml = package.to_yaml().map_err(|e| invalid(&package_path, e))?;
    for (path, text) in [
        (&metadata_path, metadata_yaml),
        (&package_path, package_yaml),
    ] {
        // By rename, as every file the CLI replaces: `packsmith release` writes these into
        // the user's tree.
        crate::lock::write_atomically(path, text.as_bytes()).map_err(|source| {
            RepositoryError::Io {
                path: path.clone(),
                source,
            }
        })?;
    }
    Ok([metadata_path, package_path])
}

/// Every Package and PackageMetadata under `root/packages`, read in sorted path order.
pub fn read_packages(root: &Path) -> Result<Vec<PackageDocument>, RepositoryError> {
    Ok(read_repository(root)?
        .into_iter()
        .map(|d| d.document)
        .collect())
}

/// Like [`read_packages`], keeping the file each document came from (for error messages).
/// A document that is not a Package or PackageMetadata is an error naming its file:
/// kapp-controller refuses the whole repository for it.
pub fn read_repository(root: &Path) -> Result<Vec<RepositoryDocument>, RepositoryError> {
    let dir = root.join(PACKAGES_DIR);
    if !dir.is_dir() {
        return Err(RepositoryError::NoPackages {
            dir: root.to_owned(),
        });
    }
    let mut files = Vec::new();
    collect(&dir, &mut files)?;
    files.sort();
    let mut docs = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).map_err(|source| RepositoryError::Io {
            path: path.clone(),
            source,
        })?;
        let parsed = parse_package_documents(&text).map_err(|e| RepositoryError::Invalid {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        docs.extend(parsed.into_iter().map(|document| RepositoryDocument {
            path: path.clone(),
            document,
        }));
    }
    Ok(docs)
}

/// Checks what kapp-controller checks when it reconciles a PackageRepository: every Package
/// and PackageMetadata is valid on its own, no two documents define the same object (kapp
/// would refuse the duplicate), and there is at least one Package. Returns every problem.
pub fn validate(docs: &[RepositoryDocument]) -> Result<(), RepositoryError> {
    let mut problems = Vec::new();
    let mut seen: BTreeMap<(&'static str, String), &Path> = BTreeMap::new();
    let mut packages = 0;
    for RepositoryDocument { path, document } in docs {
        let invalid = |reason: String| RepositoryError::Invalid {
            path: path.clone(),
            reason,
        };
        let (kind, name) = match document {
            PackageDocument::Package(p) => {
                packages += 1;
                if let Err(errors) = p.validate() {
                    problems.extend(errors.iter().map(|e| {
                        invalid(format!(
                            "Package {}: {e}",
                            p.metadata.name.as_deref().unwrap_or("<unnamed>")
                        ))
                    }));
                }
                for fetch in &p.spec.template.spec.fetch {
                    if let Some(b) = &fetch.imgpkg_bundle
                        && !b.image.contains("@sha256:")
                    {
                        problems.push(invalid(format!(
                            "Package {}: bundle {} is not pinned by digest; release the package \
                             again so the repository locks exactly what was tested",
                            p.metadata.name.as_deref().unwrap_or("<unnamed>"),
                            b.image
                        )));
                    }
                }
                ("Package", p.metadata.name.clone().unwrap_or_default())
            }
            PackageDocument::Metadata(m) => {
                if let Err(e) = m.validate() {
                    problems.push(invalid(format!("PackageMetadata: {e}")));
                }
                (
                    "PackageMetadata",
                    m.metadata.name.clone().unwrap_or_default(),
                )
            }
        };
        if let Some(first) = seen.insert((kind, name.clone()), path) {
            problems.push(invalid(format!(
                "{kind} {name} is also defined in {}; each object may appear once",
                first.display()
            )));
        }
    }
    if packages == 0 && problems.is_empty() {
        problems.push(RepositoryError::Invalid {
            path: PathBuf::from(PACKAGES_DIR),
            reason: "holds no Package: release packages into it first (packsmith release \
                     DIR --output-dir REPO_DIR)"
                .to_owned(),
        });
    }
    match problems.len() {
        0 => Ok(()),
        1 => Err(problems.remove(0)),
        _ => Err(RepositoryError::Rejected(problems)),
    }
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), RepositoryError> {
    let io = |source| RepositoryError::Io {
        path: dir.to_owned(),
        source,
    };
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let path = entry.path();
        if entry.file_type().map_err(io)?.is_dir() {
            collect(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "yml" || e == "yaml") {
            out.push(path);
        }
    }
    Ok(())
}

/// The repository bundle's `.imgpkg/images.yml`: every package bundle, by digest, so that
/// `imgpkg copy` of the repository carries the packages and kapp-controller's kbld pass
/// finds them. Packages already reference their bundles by digest, so nothing is resolved.
pub fn images_lock(docs: &[PackageDocument]) -> Result<ImagesLock, RepositoryError> {
    let mut by_reference: BTreeMap<String, ImageRef> = BTreeMap::new();
    for doc in docs {
        let PackageDocument::Package(p) = doc else {
            continue;
        };
        for fetch in &p.spec.template.spec.fetch {
            let Some(bundle) = &fetch.imgpkg_bundle else {
                continue;
            };
            if !bundle.image.contains("@sha256:") {
                return Err(RepositoryError::Invalid {
                    path: PathBuf::from(format!(
                        "packages/{}/{}.yml",
                        p.spec.ref_name, p.spec.version
                    )),
                    reason: format!(
                        "bundle {} is not pinned by digest; release the package again so the repository locks exactly what was tested",
                        bundle.image
                    ),
                });
            }
            by_reference
                .entry(bundle.image.clone())
                .or_insert_with(|| ImageRef::kbld(bundle.image.clone(), bundle.image.clone(), &[]));
        }
    }
    let mut lock = ImagesLock::new();
    for image in by_reference.into_values() {
        lock.add_image(image);
    }
    Ok(lock)
}

/// How to release a repository directory.
pub struct ReleaseOptions<'a> {
    /// `metadata.name` of the PackageRepository (a DNS-1123 subdomain).
    pub name: String,
    pub namespace: Option<String>,
    /// Tags to push besides the `sha256-<hex>.imgpkg` tag every bundle gets.
    pub tags: Vec<String>,
    pub push: PushOptions<'a>,
    /// Copy every package bundle (with its images) into the repository bundle's repository
    /// before pushing it (`bundle.relocateImages`, `repo release --relocate-images`).
    pub relocate_images: bool,
    /// Signs the repository bundle, before any tag names it (`bundle.signing`,
    /// `repo release --sign-key`).
    pub signing: Option<&'a crate::registry::cosign::SigningKey>,
}

/// What [`release`] produced.
#[derive(Debug, Clone)]
pub struct RepositoryRelease {
    pub pushed: Pushed,
    /// The repository bundle's `.imgpkg/images.yml`, as written and pushed.
    pub lock: ImagesLock,
    /// `(refName, version)` of every Package, sorted.
    pub packages: Vec<(String, String)>,
    /// Fetches the pushed bundle by digest.
    pub repository: PackageRepository,
    /// With `relocate_images`: every bundle and image copied next to the repository bundle,
    /// as `repository@sha256:…`.
    pub relocated: Vec<String>,
    /// The repository bundle's cosign signature, `repository:sha256-<hex>.sig`, when signed.
    pub signature: Option<String>,
}

/// Releases `root` (holding `packages/`) as a repository bundle at `target`: validates every
/// document, writes `root/.imgpkg/images.yml` locking each package bundle, pushes `packages/`
/// and `.imgpkg/` (nothing else under `root`), and returns the PackageRepository to apply.
pub async fn release(
    registry: &Registry,
    root: &Path,
    target: &Location,
    options: &ReleaseOptions<'_>,
) -> Result<RepositoryRelease, RepositoryError> {
    if let Some(reason) = crate::carvel::package::dns1123_subdomain_problem(&options.name) {
        return Err(RepositoryError::InvalidName {
            name: options.name.clone(),
            reason,
        });
    }
    let docs = read_repository(root)?;
    validate(&docs)?;
    let plain: Vec<PackageDocument> = docs.iter().map(|d| d.document.clone()).collect();
    let lock = images_lock(&plain)?;

    let imgpkg = root.join(IMGPKG_DIR);
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| RepositoryError::Io { path, source }
    };
    std::fs::create_dir_all(&imgpkg).map_err(io(&imgpkg))?;
    let lock_path = imgpkg.join("images.yml");
    let lock_yaml = lock.to_kbld_yaml().map_err(|e| RepositoryError::Invalid {
        path: lock_path.clone(),
        reason: e.to_string(),
    })?;
    std::fs::write(&lock_path, lock_yaml).map_err(io(&lock_path))?;

    // Only packages/ and .imgpkg/ go into the bundle: a repository directory often also
    // holds the PackageRepository written last time, a Makefile, a README.
    let mut exclude = vec![".git".to_owned()];
    for entry in std::fs::read_dir(root).map_err(io(root))? {
        let name = entry.map_err(io(root))?.file_name();
        let name = name.to_string_lossy();
        if name != PACKAGES_DIR && name != IMGPKG_DIR {
            exclude.push(name.into_owned());
        }
    }
    let built = bundle::build(
        &[root.to_owned()],
        &BuildOptions {
            exclude,
            ..BuildOptions::default()
        },
    )?;
    // The package bundles first: the repository's tag never names one that is not there yet.
    let relocated = match target {
        Location::Registry(reference) if options.relocate_images && !lock.images.is_empty() => {
            let copied = bundle::copy(
                registry,
                registry,
                &bundle::CopySource::Locked(lock.clone()),
                &bundle::CopyTarget::Repo(format!(
                    "{}/{}",
                    reference.registry(),
                    reference.repository()
                )),
                &bundle::CopyOptions::default(),
            )
            .await?;
            let mut relocated: Vec<String> = copied.images.into_iter().map(|(_, to)| to).collect();
            relocated.sort();
            relocated.dedup();
            relocated
        }
        _ => Vec::new(),
    };
    let signature = match (target, options.signing) {
        (Location::Registry(reference), Some(key)) => Some(
            crate::registry::cosign::sign(registry, reference, built.digest(), key)
                .await?
                .signature()
                .to_owned(),
        ),
        _ => None,
    };
    let mut packages: Vec<(String, String)> = plain
        .iter()
        .filter_map(|d| match d {
            PackageDocument::Package(p) => Some((p.spec.ref_name.clone(), p.spec.version.clone())),
            PackageDocument::Metadata(_) => None,
        })
        .collect();
    packages.sort();
    if let Location::Registry(reference) = target {
        let statement = super::provenance::repository_statement(
            &format!("{}/{}", reference.registry(), reference.repository()),
            built.digest(),
            &lock,
            &packages,
        );
        crate::registry::cosign::attestation::attach(
            registry,
            reference,
            built.digest(),
            super::provenance::PREDICATE_TYPE,
            &statement,
            options.signing,
            false,
        )
        .await?;
    }
    let pushed = bundle::push(registry, &built, target, &options.tags, &options.push).await?;

    let mut repository = PackageRepository::for_bundle(&options.name, &pushed.image);
    repository.metadata.namespace = options.namespace.clone();
    Ok(RepositoryRelease {
        pushed,
        lock,
        packages,
        repository,
        relocated,
        signature,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::carvel::package::PackageSpec;
    use crate::carvel::{AppSpec, PackageMetadataSpec};

    fn package(ref_name: &str, version: &str, image: &str) -> Package {
        Package::new(
            ref_name,
            version,
            PackageSpec {
                template: crate::carvel::package::AppTemplateSpec {
                    spec: AppSpec::for_bundle(image),
                },
                ..Default::default()
            },
        )
    }

    #[test]
    fn writes_reads_and_locks_a_repository() {
        let tmp = tempfile::tempdir().unwrap();
        let digest = format!("sha256:{}", "a".repeat(64));
        for (name, version) in [
            ("a.example.com.x", "1.0.0"),
            ("a.example.com.x", "1.1.0"),
            ("b.example.com.x", "0.1.0"),
        ] {
            let p = package(name, version, &format!("r.io/{name}@{digest}"));
            let m = PackageMetadata::new(name, PackageMetadataSpec::default());
            write_package_files(tmp.path(), &p, &m).unwrap();
        }
        assert!(
            tmp.path()
                .join("packages/a.example.com.x/1.1.0.yml")
                .is_file()
        );
        let docs = read_packages(tmp.path()).unwrap();
        let packages = docs
            .iter()
            .filter(|d| matches!(d, PackageDocument::Package(_)))
            .count();
        assert_eq!((docs.len(), packages), (5, 3));
        let lock = images_lock(&docs).unwrap();
        let images: Vec<_> = lock.images.iter().map(|i| i.image.as_str()).collect();
        assert_eq!(
            images,
            [
                format!("r.io/a.example.com.x@{digest}"),
                format!("r.io/b.example.com.x@{digest}")
            ]
        );
    }

    #[test]
    fn refuses_unpinned_bundles_and_foreign_documents() {
        let tmp = tempfile::tempdir().unwrap();
        let p = package("a.example.com.x", "1.0.0", "r.io/a:1.0.0");
        let docs = vec![PackageDocument::Package(Box::new(p))];
        let err = images_lock(&docs).unwrap_err().to_string();
        assert!(err.contains("not pinned by digest"), "{err}");

        std::fs::create_dir_all(tmp.path().join("packages/x")).unwrap();
        std::fs::write(
            tmp.path().join("packages/x/cm.yml"),
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n",
        )
        .unwrap();
        let err = read_packages(tmp.path()).unwrap_err().to_string();
        assert!(err.contains("cm.yml"), "{err}");
        let err = read_packages(&tmp.path().join("packages/x"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("no packages/"), "{err}");
    }

    fn write(root: &Path, rel: &str, text: &str) {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    fn repository_dir() -> tempfile::TempDir {
        let tmp = tempfile::tempdir().unwrap();
        let digest = format!("sha256:{}", "b".repeat(64));
        for (name, version) in [("a.example.com", "1.0.0"), ("b.example.com", "2.0.0")] {
            let p = package(name, version, &format!("r.io/{name}@{digest}"));
            let m = PackageMetadata::new(name, PackageMetadataSpec::default());
            write_package_files(tmp.path(), &p, &m).unwrap();
        }
        tmp
    }

    #[test]
    fn validation_reports_every_problem_with_its_file() {
        let tmp = repository_dir();
        let root = tmp.path();
        assert!(validate(&read_repository(root).unwrap()).is_ok());

        // A second copy of a Package, a bad version and an unpinned bundle, in other files.
        let copy = std::fs::read_to_string(root.join("packages/a.example.com/1.0.0.yml")).unwrap();
        write(root, "packages/a.example.com/copy.yml", &copy);
        let mut bad = package("c.example.com", "v1", "r.io/c:1.0.0");
        bad.metadata.name = Some("c.example.com.v1".into());
        write(
            root,
            "packages/c.example.com/v1.yml",
            &bad.to_yaml().unwrap(),
        );
        let err = validate(&read_repository(root).unwrap()).unwrap_err();
        let RepositoryError::Rejected(problems) = &err else {
            panic!("expected every problem, got {err}");
        };
        let text = err.to_string();
        assert_eq!(problems.len(), 3, "{text}");
        assert!(
            text.contains("copy.yml: Package a.example.com.1.0.0 is also defined in")
                && text.contains("v1.yml: Package c.example.com.v1: spec.version \"v1\"")
                && text.contains("r.io/c:1.0.0 is not pinned by digest"),
            "{text}"
        );
    }

    #[test]
    fn a_repository_without_packages_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        write(
            tmp.path(),
            "packages/a.example.com/metadata.yml",
            &PackageMetadata::new("a.example.com", PackageMetadataSpec::default())
                .to_yaml()
                .unwrap(),
        );
        let err = validate(&read_repository(tmp.path()).unwrap()).unwrap_err();
        assert!(err.to_string().contains("holds no Package"), "{err}");
    }

    /// The whole flow into an OCI layout (no registry needed): the bundle holds packages/ and
    /// the lock and nothing else, and the PackageRepository fetches it by digest.
    #[tokio::test]
    async fn release_bundles_packages_and_lock_only() {
        let tmp = repository_dir();
        let root = tmp.path();
        write(root, "package-repository.yml", "left over\n");
        write(root, "README.md", "not bundled\n");
        let layout = tempfile::tempdir().unwrap();
        let target = Location::parse(&format!(
            "{}{}:1.0.0",
            crate::bundle::LAYOUT_PREFIX,
            layout.path().display()
        ))
        .unwrap();
        let registry = Registry::new(Default::default()).unwrap();
        let options = ReleaseOptions {
            name: "repo.example.com".into(),
            namespace: Some("packages".into()),
            tags: vec!["1.0.0".into()],
            push: PushOptions::default(),
            relocate_images: false,
            signing: None,
        };
        let released = release(&registry, root, &target, &options).await.unwrap();
        assert_eq!(
            released.packages,
            [
                ("a.example.com".to_owned(), "1.0.0".to_owned()),
                ("b.example.com".to_owned(), "2.0.0".to_owned())
            ]
        );
        assert_eq!(released.lock.images.len(), 2);
        let fetch = released
            .repository
            .spec
            .fetch
            .imgpkg_bundle
            .as_ref()
            .unwrap();
        assert_eq!(fetch.image, released.pushed.image);
        assert_eq!(
            released.repository.metadata.namespace.as_deref(),
            Some("packages")
        );

        let out = tempfile::tempdir().unwrap();
        let pulled = out.path().join("pulled");
        crate::bundle::pull(
            &registry,
            &Location::parse(&released.pushed.image).unwrap(),
            &pulled,
        )
        .await
        .unwrap();
        let mut top: Vec<String> = std::fs::read_dir(&pulled)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        top.sort();
        assert_eq!(top, [".imgpkg", "packages"]);
        assert_eq!(
            std::fs::read_to_string(pulled.join(".imgpkg/images.yml")).unwrap(),
            std::fs::read_to_string(root.join(".imgpkg/images.yml")).unwrap()
        );
    }

    #[tokio::test]
    async fn nothing_is_written_or_pushed_for_a_foreign_document() {
        let tmp = repository_dir();
        write(
            tmp.path(),
            "packages/a.example.com/cm.yml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n",
        );
        let layout = tempfile::tempdir().unwrap();
        let target = Location::parse(&format!(
            "{}{}:1",
            crate::bundle::LAYOUT_PREFIX,
            layout.path().display()
        ))
        .unwrap();
        let registry = Registry::new(Default::default()).unwrap();
        let options = ReleaseOptions {
            name: "repo.example.com".into(),
            namespace: None,
            tags: vec!["1".into()],
            push: PushOptions::default(),
            relocate_images: false,
            signing: None,
        };
        let err = release(&registry, tmp.path(), &target, &options)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("cm.yml") && err.contains("ConfigMap"), "{err}");
        assert!(!tmp.path().join(".imgpkg").exists());
        assert_eq!(std::fs::read_dir(layout.path()).unwrap().count(), 0);

        let bad_name = ReleaseOptions {
            name: "Not_A_Name".into(),
            ..options
        };
        let err = release(&registry, tmp.path(), &target, &bad_name)
            .await
            .unwrap_err();
        assert!(matches!(err, RepositoryError::InvalidName { .. }), "{err}");
    }

    #[test]
    fn ref_names_and_versions_never_leave_packages() {
        let tmp = tempfile::tempdir().unwrap();
        for (ref_name, version) in [
            ("../../etc", "1.0.0"),
            ("a.example.com", "../../../x"),
            ("a.example.com", ".."),
            ("a/b.example.com", "1.0.0"),
            ("", "1.0.0"),
        ] {
            let p = Package::new(ref_name, version, Default::default());
            let m = PackageMetadata::new(ref_name, Default::default());
            let err = write_package_files(tmp.path(), &p, &m).unwrap_err();
            assert!(err.to_string().contains("cannot be a file name"), "{err}");
        }
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
    }
}
