//! Package repository bundles: the `packages/` tree kapp-controller reads from a
//! PackageRepository, and the ImagesLock that pins every package bundle in it (what
//! `kctrl package repository release` and TCE's `generate-package-repo` produce).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::carvel::imgpkg::{ImageRef, ImagesLock};
use crate::carvel::package::{PackageDocument, parse_package_documents};
use crate::carvel::{Package, PackageMetadata};

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
}

/// Writes `packages/<refName>/metadata.yml` and `packages/<refName>/<version>.yml` under
/// `root`, kctrl's layout; returns the two paths.
pub fn write_package_files(
    root: &Path,
    package: &Package,
    metadata: &PackageMetadata,
) -> Result<[PathBuf; 2], RepositoryError> {
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
        std::fs::write(path, text).map_err(|source| RepositoryError::Io {
            path: path.clone(),
            source,
        })?;
    }
    Ok([metadata_path, package_path])
}

/// Every Package and PackageMetadata under `root/packages`, read in sorted path order.
pub fn read_packages(root: &Path) -> Result<Vec<PackageDocument>, RepositoryError> {
    let dir = root.join("packages");
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
        docs.extend(
            parse_package_documents(&text).map_err(|e| RepositoryError::Invalid {
                path: path.clone(),
                reason: e.to_string(),
            })?,
        );
    }
    Ok(docs)
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
}
