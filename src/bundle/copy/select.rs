//! `--version-constraint`: a package repository bundle copied with only the packages whose
//! version matches. The repository bundle is unpacked (within the pull's caps), the
//! `packages/` files of the other versions removed, its `.imgpkg/images.yml` narrowed to the
//! package bundles the remaining Packages fetch, and the bundle built again — a new digest,
//! deterministic for the same selection — so the walk that follows copies only those
//! package bundles and their images.

use std::collections::BTreeSet;
use std::path::Path;

use bytes::Bytes;

use super::graph::{self, Blob, Graph, Kind, Manifest, Named, Origin, Pending, WalkLimits};
use crate::bundle::{self, BuildOptions, BundleError, PullLimits, image};
use crate::carvel::package::PackageDocument;
use crate::publish::repository;
use crate::registry::{Registry, parse_reference};

/// The narrowed repository bundle as the graph's root, and the package bundles still to walk.
pub(super) async fn narrowed(
    registry: &Registry,
    root: Pending,
    constraint: &semver::VersionReq,
    limits: &WalkLimits,
    scratch: &Path,
) -> Result<(Graph, Vec<Pending>), BundleError> {
    let inflation = std::sync::Arc::new(graph::Inflation::new(limits));
    let fetched = graph::fetch(registry, &root, limits, &inflation, scratch).await?;
    let content = |reason: String| BundleError::Content {
        reference: root.named_as.clone(),
        reason,
    };
    if fetched.manifest.kind != Kind::Bundle {
        return Err(content(
            "--version-constraint applies to a package repository bundle".to_owned(),
        ));
    }
    let parsed = image::parse_bundle_manifest(&fetched.manifest.bytes).map_err(content)?;
    let (Some((_, config)), Some((_, layer))) = (&fetched.config, &fetched.layer_file) else {
        return Err(content(
            "the bundle's config or layer was not read".to_owned(),
        ));
    };
    let diff_id = image::parse_bundle_config(config).map_err(content)?;
    let dir = scratch.join("repository");
    let file = std::fs::File::open(&**layer).map_err(BundleError::io("reading", &**layer))?;
    bundle::unpack_file(
        file,
        parsed.layer.clone(),
        diff_id,
        dir.clone(),
        root.named_as.clone(),
        PullLimits::default(),
    )
    .await?;

    let kept = narrow(&dir, constraint).map_err(content)?;
    let original = fetched.images_lock.clone().unwrap_or_default();
    let mut lock = original.clone();
    lock.images.retain(|i| kept.contains(&i.image));
    let lock_path = dir.join(".imgpkg").join("images.yml");
    let yaml = format!(
        "---\n{}",
        crate::carvel::yaml::to_go_yaml("ImagesLock", &lock).map_err(|e| content(e.to_string()))?
    );
    std::fs::write(&lock_path, yaml).map_err(BundleError::io("writing", &lock_path))?;

    let built = bundle::build(&[dir], &BuildOptions::default())?;
    let mut graph = Graph::default();
    let [config_blob, layer_blob] = built.blobs();
    for blob in [config_blob, layer_blob] {
        let data = blob.data.clone().unwrap_or_default();
        graph.insert_blob(Blob {
            digest: blob.digest.clone(),
            size: blob.size,
            origin: Origin::Inline(data),
            from: None,
        });
    }
    graph.insert_manifest(Manifest {
        digest: built.digest().to_owned(),
        media_type: image::MANIFEST_MEDIA_TYPE.to_owned(),
        bytes: Bytes::copy_from_slice(built.manifest()),
        kind: Kind::Bundle,
        children: Vec::new(),
        blobs: vec![config_blob.digest.clone(), layer_blob.digest.clone()],
        tags: root.tag.iter().cloned().collect(),
        depth: 0,
        source: Some(format!(
            "{}/{}",
            root.reference.registry(),
            root.reference.repository()
        )),
        locked: lock.images.iter().map(|i| i.image.clone()).collect(),
    });
    graph.named.push(Named {
        digest: built.digest().to_owned(),
        reference: root.named_as.clone(),
        kind: Kind::Bundle,
    });
    let pending = lock
        .images
        .iter()
        .map(|i| {
            Ok(Pending {
                reference: parse_reference(&i.image)?,
                named_as: i.image.clone(),
                want: graph::Want::Any,
                depth: 1,
                nesting: 0,
                tag: None,
                record: true,
            })
        })
        .collect::<Result<Vec<_>, BundleError>>()?;
    Ok((graph, pending))
}

/// Removes from the repository tree at `dir` every Package whose version `constraint` does not
/// match, and the metadata of packages left without a version; returns the bundle images the
/// remaining Packages fetch.
fn narrow(dir: &Path, constraint: &semver::VersionReq) -> Result<BTreeSet<String>, String> {
    let docs = repository::read_repository(dir).map_err(|e| e.to_string())?;
    let mut keep_files: BTreeSet<&Path> = BTreeSet::new();
    let mut drop_files: BTreeSet<&Path> = BTreeSet::new();
    let mut kept_names: BTreeSet<&str> = BTreeSet::new();
    let mut kept = Vec::new();
    for doc in &docs {
        let PackageDocument::Package(p) = &doc.document else {
            continue;
        };
        let version = semver::Version::parse(&p.spec.version).map_err(|e| {
            format!(
                "{}: version {:?} is not semver ({e})",
                doc.path.display(),
                p.spec.version
            )
        })?;
        if constraint.matches(&version) {
            keep_files.insert(&doc.path);
            kept_names.insert(&p.spec.ref_name);
            kept.push(doc.document.clone());
        } else {
            drop_files.insert(&doc.path);
        }
    }
    if kept.is_empty() {
        return Err(format!(
            "no package of the repository has a version matching {constraint}"
        ));
    }
    for doc in &docs {
        if let PackageDocument::Metadata(m) = &doc.document {
            let name = m.metadata.name.as_deref().unwrap_or_default();
            if kept_names.contains(name) {
                keep_files.insert(&doc.path);
            } else {
                drop_files.insert(&doc.path);
            }
        }
    }
    if let Some(mixed) = drop_files.intersection(&keep_files).next() {
        return Err(format!(
            "{} holds packages of versions both inside and outside the constraint; split it \
             into one file per version to narrow it",
            mixed.display()
        ));
    }
    for path in drop_files {
        std::fs::remove_file(path).map_err(|e| format!("removing {}: {e}", path.display()))?;
    }
    let lock = repository::images_lock(&kept).map_err(|e| e.to_string())?;
    Ok(lock.images.into_iter().map(|i| i.image).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn package(name: &str, version: &str, image: &str) -> String {
        format!(
            "apiVersion: data.packaging.carvel.dev/v1alpha1\nkind: Package\nmetadata:\n  name: {name}.{version}\nspec:\n  refName: {name}\n  version: {version}\n  template:\n    spec:\n      fetch:\n      - imgpkgBundle:\n          image: {image}\n      template:\n      - ytt: {{}}\n      deploy:\n      - kapp: {{}}\n"
        )
    }

    #[test]
    fn only_matching_versions_and_their_metadata_stay() {
        let dir = tempfile::tempdir().unwrap();
        let a = |v: &str| format!("r.io/a@sha256:{}", v.repeat(64));
        for (name, version, image) in [
            ("a.example.com", "1.0.0", a("1")),
            ("a.example.com", "2.0.0", a("2")),
            ("b.example.com", "1.5.0", a("3")),
        ] {
            let pkg_dir = dir.path().join("packages").join(name);
            std::fs::create_dir_all(&pkg_dir).unwrap();
            std::fs::write(
                pkg_dir.join(format!("{version}.yml")),
                package(name, version, &image),
            )
            .unwrap();
            std::fs::write(
                pkg_dir.join("metadata.yml"),
                format!(
                    "apiVersion: data.packaging.carvel.dev/v1alpha1\nkind: PackageMetadata\nmetadata:\n  name: {name}\nspec: {{}}\n"
                ),
            )
            .unwrap();
        }
        let kept = narrow(dir.path(), &semver::VersionReq::parse(">=2.0.0").unwrap()).unwrap();
        assert_eq!(kept, BTreeSet::from([a("2")]));
        let left = |p: &str| dir.path().join("packages").join(p).exists();
        assert!(left("a.example.com/2.0.0.yml"));
        assert!(left("a.example.com/metadata.yml"));
        assert!(!left("a.example.com/1.0.0.yml"));
        assert!(!left("b.example.com/1.5.0.yml"));
        assert!(!left("b.example.com/metadata.yml"));

        let err = narrow(dir.path(), &semver::VersionReq::parse(">=9").unwrap()).unwrap_err();
        assert!(err.contains("no package"), "{err}");
    }
}
