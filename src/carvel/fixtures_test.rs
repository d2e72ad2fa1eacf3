//! Every Carvel document in the TCE fixtures parses into its typed model and writes back
//! without losing or inventing anything; the files Carvel tools generate (images.yml,
//! vendir.lock.yml) are reproduced byte for byte.

use std::path::{Path, PathBuf};

use pretty_assertions::assert_eq;
use serde_json::Value;

use super::{imgpkg, kbld, package, vendir, yaml};

fn fixtures_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/tce")
}

/// The YAML files of the fixtures, skipping `config/` (upstream manifests and ytt overlays,
/// which are not Carvel documents).
fn carvel_files(dir: &Path, found: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading fixture directory {}: {e}", dir.display()));
    let mut paths: Vec<PathBuf> = entries
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()));
    paths.sort();
    for path in paths {
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n != "config") {
                carvel_files(&path, found);
            }
        } else if path.extension().is_some_and(|e| e == "yml" || e == "yaml") {
            found.push(path);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    PackageMetadata,
    Package,
    VendirConfig,
    VendirLock,
    ImagesLock,
    Bundle,
    KbldConfig,
}

fn family_of(path: &Path) -> Option<Family> {
    let name = path.file_name()?.to_str()?;
    let in_imgpkg = path
        .parent()
        .and_then(Path::file_name)
        .is_some_and(|n| n == ".imgpkg");
    Some(match name {
        "metadata.yaml" | "metadata.yml" => Family::PackageMetadata,
        "package.yaml" | "package.yml" => Family::Package,
        "vendir.yml" | "vendir.yaml" => Family::VendirConfig,
        "vendir.lock.yml" | "vendir.lock.yaml" => Family::VendirLock,
        "images.yml" if in_imgpkg => Family::ImagesLock,
        "bundle.yml" | "bundle.yaml" if in_imgpkg => Family::Bundle,
        "kbld-config.yml" | "kbld-config.yaml" => Family::KbldConfig,
        _ => return None,
    })
}

/// Parses with the typed model, writes it back and returns (original, rewritten, exact text).
fn round_trip(family: Family, text: &str) -> Result<(String, Option<String>), String> {
    let e = |e: super::Error| e.to_string();
    Ok(match family {
        Family::PackageMetadata => {
            let metadata = package::PackageMetadata::from_yaml(text).map_err(e)?;
            metadata.validate().map_err(|e| e.to_string())?;
            (metadata.to_yaml().map_err(e)?, None)
        }
        Family::Package => {
            let package = package::Package::from_yaml(text).map_err(e)?;
            package.validate().map_err(|errors| {
                errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")
            })?;
            (package.to_yaml().map_err(e)?, None)
        }
        Family::VendirConfig => {
            let config = vendir::Config::from_yaml(text).map_err(e)?;
            (config.to_yaml().map_err(e)?, None)
        }
        Family::VendirLock => {
            let lock = vendir::LockConfig::from_yaml(text).map_err(e)?;
            let written = lock.to_yaml().map_err(e)?;
            (written.clone(), Some(written))
        }
        Family::ImagesLock => {
            let lock = imgpkg::ImagesLock::from_yaml(text).map_err(e)?;
            let written = lock.to_kbld_yaml().map_err(e)?;
            (written.clone(), Some(written))
        }
        Family::Bundle => {
            let bundle = imgpkg::Bundle::from_yaml(text).map_err(e)?;
            (bundle.to_yaml().map_err(e)?, None)
        }
        Family::KbldConfig => {
            let config = kbld::Config::from_yaml(text).map_err(e)?;
            (config.to_yaml().map_err(e)?, None)
        }
    })
}

#[test]
fn every_fixture_document_round_trips() {
    let root = fixtures_root();
    let mut files = Vec::new();
    carvel_files(&root, &mut files);

    let mut failures = Vec::new();
    let mut checked = Vec::new();
    for path in &files {
        let shown = path
            .strip_prefix(&root)
            .unwrap_or(path)
            .display()
            .to_string();
        let Some(family) = family_of(path) else {
            failures.push(format!(
                "{shown}: not a known Carvel document; teach fixtures_test.rs about it"
            ));
            continue;
        };
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) => {
                failures.push(format!("{shown}: {e}"));
                continue;
            }
        };
        let original: Value = match yaml::from_str("fixture", &text) {
            Ok(value) => value,
            Err(e) => {
                failures.push(format!("{shown}: not YAML: {e}"));
                continue;
            }
        };
        let (written, exact) = match round_trip(family, &text) {
            Ok(result) => result,
            Err(e) => {
                failures.push(format!("{shown} ({family:?}): {e}"));
                continue;
            }
        };
        match yaml::from_str::<Value>("rewritten fixture", &written) {
            Ok(rewritten) if rewritten == original => {}
            Ok(rewritten) => failures.push(format!(
                "{shown} ({family:?}): changed by the round trip\n  original:  {original}\n  \
                 rewritten: {rewritten}"
            )),
            Err(e) => failures.push(format!(
                "{shown} ({family:?}): written YAML does not parse: {e}\n{written}"
            )),
        }
        if let Some(exact) = exact
            && exact != text
        {
            failures.push(format!(
                "{shown} ({family:?}): not reproduced byte for byte\n--- fixture\n{text}--- \
                 written\n{exact}"
            ));
        }
        checked.push((family, shown));
    }

    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    let count = |family| checked.iter().filter(|(f, _)| *f == family).count();
    assert_eq!(
        [
            count(Family::PackageMetadata),
            count(Family::Package),
            count(Family::VendirConfig),
            count(Family::VendirLock),
            count(Family::ImagesLock),
            count(Family::Bundle),
            count(Family::KbldConfig),
        ],
        [4, 4, 4, 4, 4, 3, 2],
        "fixture files checked: {checked:#?}"
    );
}

#[test]
fn fixture_images_locks_record_kbld_ids() {
    let text = std::fs::read_to_string(
        fixtures_root().join("external-dns/0.12.2/bundle/.imgpkg/images.yml"),
    )
    .expect("read external-dns images.yml");
    let lock = imgpkg::ImagesLock::from_yaml(&text).expect("parse");
    assert_eq!(
        lock.images[0].original_reference(),
        "k8s.gcr.io/external-dns/external-dns"
    );
    let origins = imgpkg::ImageOrigin::parse_annotation(
        &lock.images[0].annotations[imgpkg::KBLD_ORIGINS_ANNOTATION],
    )
    .expect("origins");
    assert!(matches!(
        origins.as_slice(),
        [imgpkg::ImageOrigin::Resolved { tag, .. }, imgpkg::ImageOrigin::Preresolved { .. }]
            if tag == "0.11.0"
    ));
}

#[test]
fn fixture_sources_are_typed() {
    let config = vendir::Config::from_yaml(
        &std::fs::read_to_string(fixtures_root().join("cert-manager/1.9.1/bundle/vendir.yml"))
            .expect("read"),
    )
    .expect("parse");
    let contents = &config.directories[0].contents[0];
    let release = contents.github_release.as_ref().expect("githubRelease");
    assert_eq!(release.slug, "jetstack/cert-manager");
    assert!(release.disable_auto_checksum_validation);
    assert_eq!(contents.include_paths, vec!["cert-manager.yaml"]);

    let kbld = kbld::Config::from_yaml(
        &std::fs::read_to_string(
            fixtures_root().join("local-path-storage/0.0.22/bundle/kbld-config.yaml"),
        )
        .expect("read"),
    )
    .expect("parse");
    let nested = kbld.search_rules[0]
        .update_strategy
        .as_ref()
        .and_then(|s| s.yaml.as_ref())
        .expect("yaml strategy");
    assert_eq!(
        nested.search_rules[0]
            .key_matcher
            .as_ref()
            .map(|k| k.name.as_str()),
        Some("image")
    );
}
