//! The TCE fixtures are the contract: discovery lists exactly the ids their images.yml
//! records, and re-locking a fixture tree (whose lock is in it) reproduces that file byte for
//! byte without contacting a registry.

use std::path::{Path, PathBuf};

use pretty_assertions::assert_eq;

use super::{LockConfig, ResolveOptions, discover_rendered, resolve};
use crate::carvel::imgpkg::ImagesLock;
use crate::registry::{Registry, RegistryOptions};

pub(crate) const PACKAGES: &[&str] = &[
    "cert-manager/1.9.1",
    "contour/1.22.3",
    "external-dns/0.12.2",
    "local-path-storage/0.0.22",
];

fn bundle(package: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/tce")
        .join(package)
        .join("bundle")
}

fn recorded(package: &str) -> String {
    let path = bundle(package).join(".imgpkg/images.yml");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn discovered_references_are_the_recorded_ids() {
    for package in PACKAGES {
        let discovery = discover_rendered(&[bundle(package)], &LockConfig::default(), &[])
            .unwrap_or_else(|e| panic!("{package}: {e}"));
        let lock = ImagesLock::from_yaml(&recorded(package)).expect("fixture lock");
        let mut ids: Vec<&str> = lock
            .images
            .iter()
            .map(|image| image.original_reference())
            .collect();
        ids.sort_unstable();
        let found: Vec<&str> = discovery.references.keys().map(String::as_str).collect();
        assert_eq!(found, ids, "{package}");
    }
}

#[test]
fn the_fixtures_kbld_configs_shape_discovery() {
    let discovery = discover_rendered(
        &[bundle("local-path-storage/0.0.22")],
        &LockConfig::default(),
        &[],
    )
    .expect("discover");
    // busybox is only inside the ConfigMap's helperPod.yaml string (a yaml searchRule).
    assert!(discovery.references.contains_key("busybox"));
    assert_eq!(discovery.warnings.len(), 1, "{:?}", discovery.warnings);
    assert!(discovery.warnings[0].contains("minimumRequiredVersion 0.15.0"));
}

#[tokio::test]
async fn relocking_a_fixture_tree_reproduces_its_lock() {
    let registry = Registry::new(RegistryOptions::default()).expect("registry");
    for package in PACKAGES {
        let discovery =
            discover_rendered(&[bundle(package)], &LockConfig::default(), &[]).expect("discover");
        let resolution = resolve(&discovery, &registry, &ResolveOptions::default())
            .await
            .unwrap_or_else(|e| panic!("{package}: {e}"));
        assert_eq!(resolution.requests.total(), 0, "{package}");
        assert_eq!(
            resolution.lock().to_kbld_yaml().expect("yaml"),
            recorded(package),
            "{package}"
        );
    }
}

fn corpus_bundles() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/bundles");
    let mut bundles: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .map(|entry| entry.expect("entry").path().join("bundle"))
        .filter(|bundle| bundle.is_dir())
        .collect();
    bundles.sort();
    bundles
}

/// Re-locking a corpus bundle (its lock in the tree) reproduces the publisher's file byte for
/// byte and asks no registry anything: the locks of several kbld versions, written as kbld
/// writes them. The one exception is a lock written by hand (license comments, `images: []`
/// where kbld leaves an empty list out).
#[tokio::test]
async fn relocking_a_corpus_bundle_reproduces_its_lock() {
    const HAND_WRITTEN: &str = "vmware-tanzu__package-for-kpack-dependencies";
    let registry = Registry::new(RegistryOptions::default()).expect("registry");
    let mut reproduced = 0;
    for bundle in corpus_bundles() {
        let discovery =
            discover_rendered(std::slice::from_ref(&bundle), &LockConfig::default(), &[])
                .unwrap_or_else(|e| panic!("{}: {e}", bundle.display()));
        let options = ResolveOptions {
            offline: true,
            ..ResolveOptions::default()
        };
        let resolution = resolve(&discovery, &registry, &options)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", bundle.display()));
        let written = resolution.lock().to_kbld_yaml().expect("yaml");
        let recorded =
            std::fs::read_to_string(bundle.join(".imgpkg/images.yml")).expect("recorded");
        if bundle.parent().is_some_and(|p| p.ends_with(HAND_WRITTEN)) {
            assert_ne!(written, recorded, "the hand-written lock is still there");
            continue;
        }
        assert_eq!(written, recorded, "{}", bundle.display());
        reproduced += 1;
    }
    assert!(reproduced > 0, "no corpus bundle was re-locked");
}

/// The real bundles other publishers committed next to the lock their kbld wrote
/// (`testdata/bundles/`, each with its PROVENANCE): discovery names exactly the recorded ids.
/// testdata/README.md lists the bundles examined and left out, and why.
#[test]
fn corpus_bundles_list_exactly_their_recorded_ids() {
    let bundles = corpus_bundles();
    assert!(!bundles.is_empty(), "testdata/bundles is empty");
    for bundle in &bundles {
        let text = std::fs::read_to_string(bundle.join(".imgpkg/images.yml")).expect("lock");
        let lock =
            ImagesLock::from_yaml(&text).unwrap_or_else(|e| panic!("{}: {e}", bundle.display()));
        let mut ids: Vec<&str> = lock
            .images
            .iter()
            .map(|image| image.original_reference())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        let discovery =
            discover_rendered(std::slice::from_ref(bundle), &LockConfig::default(), &[])
                .unwrap_or_else(|e| panic!("{}: {e}", bundle.display()));
        let found: Vec<&str> = discovery.references.keys().map(String::as_str).collect();
        assert_eq!(found, ids, "{}", bundle.display());
    }
}
