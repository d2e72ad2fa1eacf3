//! The four TCE packages of `testdata/tce`, released from scratch with
//! `packsmith release` and checked against what TCE published, then gathered into one
//! repository with `packsmith repo release`.
//!
//! For each fixture: its upstream files are served from a bare git repository laid out like
//! the real upstream (under the vendir.yml's `newRootPath`, with decoys its filters must drop),
//! its vendir.yml becomes `spec.contents` pointing there and its kbld-config becomes
//! `spec.images`; every image it names is a synthetic image in the bed's registry, reached
//! through `--registry-mirror HOST=…` as the public host. The recorded `.imgpkg/images.yml`
//! is removed so the lock really resolves (the lock trials cover preresolution). The Package
//! must then have TCE's shape: refName, version, licenses and notes, fetch of our bundle by
//! digest, ytt over config/, kbld with the bundle's lock, kapp; and its values schema must
//! have the fixture's property names, types and defaults (derived from the bundle's ytt schema
//! or values; cert-manager has neither, so its schema is given explicitly and must pass
//! through).

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, ensure};
use libtest_mimic::Trial;
use serde_json::{Value, json};

use packsmith::carvel::imgpkg::ImagesLock;
use packsmith::carvel::{Package, PackageMetadata, PackageRepository};
use packsmith::publish::repository::read_packages;

use super::repo::{packsmith, pushed_image};
use crate::support::images::{ImageKind, Registry, push_image};
use crate::support::{self, bed};
use crate::tests::git::make_repo;

/// Where the synthetic public images live on the plain registry: `MIRROR/<host>/<repo>`.
/// Their content depends only on their name, so runs can share them.
const MIRROR: &str = "e2e-tce/mirror";
/// Every registry host the fixtures name (k8s.gcr.io only before kbld's override).
const HOSTS: &[&str] = &[
    "quay.io",
    "ghcr.io",
    "docker.io",
    "projects.registry.vmware.com",
    "k8s.gcr.io",
];

struct Fixture {
    /// `<name>/<version>` under the fixtures directory.
    dir: &'static str,
    /// The tagged references the manifests name after kbld's overrides: `(host, repo, tag)`.
    images: &'static [(&'static str, &'static str, &'static str)],
    /// The values schema is not in the bundle; it is given in `spec.package.valuesSchema`.
    explicit_schema: bool,
}

const FIXTURES: &[Fixture] = &[
    Fixture {
        dir: "cert-manager/1.9.1",
        images: &[
            ("quay.io", "jetstack/cert-manager-cainjector", "v1.9.1"),
            ("quay.io", "jetstack/cert-manager-controller", "v1.9.1"),
            ("quay.io", "jetstack/cert-manager-webhook", "v1.9.1"),
        ],
        explicit_schema: true,
    },
    Fixture {
        dir: "contour/1.22.3",
        images: &[
            ("docker.io", "envoyproxy/envoy", "v1.23.3"),
            ("ghcr.io", "projectcontour/contour", "v1.22.3"),
        ],
        explicit_schema: false,
    },
    Fixture {
        // kbld-config.yml overrides k8s.gcr.io/external-dns/external-dns with this.
        dir: "external-dns/0.12.2",
        images: &[("docker.io", "bitnami/external-dns", "0.12.2")],
        explicit_schema: false,
    },
    Fixture {
        // busybox is found by kbld-config.yaml's searchRule inside a ConfigMap's YAML string.
        dir: "local-path-storage/0.0.22",
        images: &[
            ("docker.io", "library/busybox", "latest"),
            (
                "projects.registry.vmware.com",
                "tce/local-path-provisioner",
                "v0.0.22",
            ),
        ],
        explicit_schema: false,
    },
];

pub fn trials() -> Vec<Trial> {
    vec![Trial::test(
        "tce::four_packages_release_like_tce_and_form_a_repository",
        || support::block_on(four_packages()),
    )]
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/tce")
}

/// A suffix no other run of this test uses (git repositories cannot be pushed twice).
fn run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{:x}-{}", nanos & 0xffff_ffff_ffff, std::process::id())
}

async fn four_packages() -> anyhow::Result<()> {
    let reg = bed().registry.clone();
    let run = run_id();
    let tmp = tempfile::tempdir()?;
    let repo_dir = tmp.path().join("repository");

    let plain = Registry::plain(bed());
    for fixture in FIXTURES {
        for (host, repo, tag) in fixture.images {
            push_image(
                &plain,
                &format!("{MIRROR}/{host}/{repo}"),
                tag,
                ImageKind::DockerV2,
                "tce",
            )
            .await?;
        }
    }

    let mut bundles = BTreeMap::new();
    for fixture in FIXTURES {
        let (ref_name, image) =
            release_fixture(fixture, tmp.path(), &repo_dir, &run).with_context(|| fixture.dir)?;
        bundles.insert(ref_name, image);
    }

    // The four releases form one repository.
    let repository = format!("{reg}/e2e-tce/{run}/repository");
    let out = packsmith(&[
        "repo",
        "release",
        "--packages",
        repo_dir.to_str().expect("utf-8 path"),
        "-b",
        &format!("{repository}:v1"),
        "--name",
        "tce.e2e.packsmith.dev",
        "--registry-insecure-host",
        &reg,
    ])?;
    let image = pushed_image(&out)?;
    let pkgr = PackageRepository::from_yaml(&std::fs::read_to_string(
        repo_dir.join("package-repository.yml"),
    )?)?;
    ensure!(
        pkgr.spec
            .fetch
            .imgpkg_bundle
            .as_ref()
            .map(|b| b.image.as_str())
            == Some(image.as_str()),
        "the PackageRepository does not fetch {image}"
    );
    let pulled = tmp.path().join("pulled-repository");
    packsmith(&[
        "pull",
        "-b",
        &image,
        "-o",
        pulled.to_str().expect("utf-8 path"),
        "--registry-insecure-host",
        &reg,
    ])?;
    let mut listed = BTreeMap::new();
    for doc in read_packages(&pulled)? {
        if let packsmith::carvel::package::PackageDocument::Package(p) = doc {
            let fetch = p.spec.template.spec.fetch[0]
                .imgpkg_bundle
                .as_ref()
                .map(|b| b.image.clone())
                .unwrap_or_default();
            listed.insert(p.spec.ref_name.clone(), fetch);
        }
    }
    ensure!(
        listed == bundles,
        "the repository lists {listed:?}, released {bundles:?}"
    );
    let lock = ImagesLock::from_yaml(&std::fs::read_to_string(pulled.join(".imgpkg/images.yml"))?)?;
    let locked: BTreeSet<&str> = lock.images.iter().map(|i| i.image.as_str()).collect();
    let released: BTreeSet<&str> = bundles.values().map(String::as_str).collect();
    ensure!(
        locked == released,
        "lock {locked:?} != bundles {released:?}"
    );
    Ok(())
}

/// Releases one fixture into `repo_dir` and checks the result; returns (refName, bundle).
fn release_fixture(
    fixture: &Fixture,
    tmp: &Path,
    repo_dir: &Path,
    run: &str,
) -> anyhow::Result<(String, String)> {
    let reg = &bed().registry;
    let name = fixture.dir.split('/').next().unwrap_or(fixture.dir);
    let src = fixtures().join(fixture.dir).join("bundle");
    let want_package =
        Package::from_yaml(&read(&fixtures().join(fixture.dir).join("package.yaml"))?)?;
    let want_metadata =
        PackageMetadata::from_yaml(&read(&fixtures().join(name).join("metadata.yaml"))?)?;

    // Upstream: the fixture's synced files, where the real upstream keeps them.
    let vendir: Value = serde_saphyr::from_str(&read(&src.join("vendir.yml"))?)?;
    let mut directories = vendir["directories"].clone();
    let repo_name = format!("tce-{name}-{run}");
    let url = format!("{}/{repo_name}.git", bed().git_url);
    let mut upstream: Vec<(String, String)> = vec![("README.md".into(), "decoy\n".into())];
    let mut tags = BTreeSet::new();
    for dir in directories.as_array_mut().into_iter().flatten() {
        let dir_path = dir["path"].as_str().unwrap_or_default().to_owned();
        for content in dir["contents"].as_array_mut().into_iter().flatten() {
            let content_path = content["path"].as_str().unwrap_or(".").to_owned();
            let synced = if content_path == "." {
                src.join(&dir_path)
            } else {
                src.join(&dir_path).join(&content_path)
            };
            let root = content["newRootPath"]
                .as_str()
                .map(|r| format!("{}/", r.trim_end_matches('/')))
                .unwrap_or_default();
            for (rel, text) in files(&synced)? {
                upstream.push((format!("{root}{rel}"), text));
            }
            for exclude in content["excludePaths"].as_array().into_iter().flatten() {
                if let Some(path) = exclude.as_str().filter(|p| !p.contains('*')) {
                    upstream.push((path.to_owned(), "excluded: true\n".into()));
                }
            }
            let content = content.as_object_mut().context("a content is a map")?;
            let tag = if let Some(release) = content.remove("githubRelease") {
                // The GitHub-release path is covered by the sync trials; a git tag serves
                // the same asset here.
                release["tag"].as_str().unwrap_or_default().to_owned()
            } else {
                let git = content
                    .remove("git")
                    .context("a git or githubRelease content")?;
                git["ref"].as_str().unwrap_or_default().to_owned()
            };
            content.insert("git".into(), json!({"url": url, "ref": tag}));
            tags.insert(tag);
        }
    }
    // One upstream per fixture (each has one content), tagged as the real one is.
    let [tag] = <[String; 1]>::try_from(tags.into_iter().collect::<Vec<_>>())
        .map_err(|tags| anyhow::anyhow!("expected one upstream ref, found {tags:?}"))?;
    let upstream: Vec<(&str, &str)> = upstream
        .iter()
        .map(|(p, t)| (p.as_str(), t.as_str()))
        .collect();
    make_repo(&repo_name, &upstream, &tag)?;

    // The package directory: the fixture bundle minus what packsmith must produce itself.
    let dir = tmp.join(name);
    copy_tree(&src, &dir)?;
    std::fs::remove_dir_all(dir.join("config/upstream"))?;
    std::fs::remove_file(dir.join(".imgpkg/images.yml"))?;
    let mut images = json!({});
    for file in [
        "vendir.yml",
        "vendir.lock.yml",
        "kbld-config.yml",
        "kbld-config.yaml",
    ] {
        let path = dir.join(file);
        if !path.exists() {
            continue;
        }
        if file.starts_with("kbld-config") {
            let kbld: Value = serde_saphyr::from_str(&read(&path)?)?;
            for key in ["overrides", "searchRules"] {
                if let Some(v) = kbld.get(key) {
                    images[key] = v.clone();
                }
            }
        }
        std::fs::remove_file(path)?;
    }

    let mut package = json!({
        "refName": want_package.spec.ref_name,
        "version": want_package.spec.version,
        "licenses": want_package.spec.licenses,
        "releaseNotes": want_package.spec.release_notes,
        "capacityRequirementsDescription": want_package.spec.capacity_requirements_description,
        "metadata": want_metadata.spec,
    });
    if fixture.explicit_schema {
        package["valuesSchema"] = want_package
            .spec
            .values_schema
            .as_ref()
            .and_then(|s| s.open_api_v3.clone())
            .context("the fixture has a values schema")?;
    }
    let source = json!({
        "apiVersion": "packsmith.dev/v1alpha1",
        "kind": "PackageSource",
        "metadata": {"name": name},
        "spec": {
            "package": package,
            "contents": directories,
            "images": images,
            "bundle": {"repository": format!("{reg}/e2e-tce/{run}/{name}"), "insecure": true},
        },
    });
    // JSON is YAML: the PackageSource is written exactly as built.
    std::fs::write(
        dir.join("packagesource.yaml"),
        serde_json::to_string_pretty(&source)?,
    )?;

    let mut args: Vec<String> = vec![
        "release".into(),
        dir.display().to_string(),
        "--output-dir".into(),
        repo_dir.display().to_string(),
        "--registry-insecure-host".into(),
        reg.clone(),
    ];
    for host in HOSTS {
        args.push("--registry-mirror".into());
        args.push(format!("{host}={reg}/{MIRROR}/{host}"));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = packsmith(&args)?;
    let image = pushed_image(&out)?;
    ensure!(
        image.starts_with(&format!("{reg}/e2e-tce/{run}/{name}@sha256:")),
        "{image}"
    );

    // Sync reproduced the fixture's upstream, filters and all.
    let synced = files(&dir.join("config/upstream"))?;
    let fixture_upstream = files(&src.join("config/upstream"))?;
    ensure!(
        synced == fixture_upstream,
        "synced {:?}, fixture has {:?}",
        synced.keys().collect::<Vec<_>>(),
        fixture_upstream.keys().collect::<Vec<_>>()
    );

    // Lock: the fixture's ids and repositories, with the local digests.
    let recorded = ImagesLock::from_yaml(&read(&src.join(".imgpkg/images.yml"))?)?;
    let written = ImagesLock::from_yaml(&read(&dir.join(".imgpkg/images.yml"))?)?;
    let shape = |lock: &ImagesLock| -> BTreeSet<(String, String)> {
        lock.images
            .iter()
            .map(|i| {
                let repo = i.image.split('@').next().unwrap_or_default().to_owned();
                (i.original_reference().to_owned(), repo)
            })
            .collect()
    };
    ensure!(
        shape(&written) == shape(&recorded),
        "locked {:?}, TCE locked {:?}",
        shape(&written),
        shape(&recorded)
    );

    // The Package: TCE's, with our bundle.
    let ref_name = &want_package.spec.ref_name;
    let version = &want_package.spec.version;
    let got = Package::from_yaml(&read(
        &repo_dir.join(format!("packages/{ref_name}/{version}.yml")),
    )?)?;
    ensure!(got.metadata.name == want_package.metadata.name);
    ensure!(got.spec.ref_name == *ref_name && got.spec.version == *version);
    ensure!(got.spec.licenses == want_package.spec.licenses);
    ensure!(got.spec.release_notes == want_package.spec.release_notes);
    ensure!(
        got.spec.capacity_requirements_description
            == want_package.spec.capacity_requirements_description
    );
    let mut want_template = want_package.spec.template.clone();
    if let Some(bundle) = want_template.spec.fetch[0].imgpkg_bundle.as_mut() {
        bundle.image = image.clone();
    }
    ensure!(
        got.spec.template == want_template,
        "template {:#?}\nTCE's (with our bundle) {:#?}",
        got.spec.template,
        want_template
    );
    let schema = |p: &Package| {
        p.spec
            .values_schema
            .as_ref()
            .and_then(|s| s.open_api_v3.clone())
            .unwrap_or_default()
    };
    let (got_schema, want_schema) = (schema(&got), schema(&want_package));
    if fixture.explicit_schema {
        ensure!(got_schema == want_schema, "explicit schema changed");
    } else {
        let (got_props, want_props) = (properties(&got_schema), properties(&want_schema));
        ensure!(
            !want_props.is_empty(),
            "the fixture's schema has no properties"
        );
        let mismatches: Vec<String> = want_props
            .iter()
            .filter_map(|(path, want)| match got_props.get(path) {
                None => Some(format!("{path}: missing")),
                Some(got) if !want.matches(got) => {
                    Some(format!("{path}: {got:?}, TCE has {want:?}"))
                }
                Some(_) => None,
            })
            .chain(
                got_props
                    .keys()
                    .filter(|p| !want_props.contains_key(*p))
                    .map(|p| format!("{p}: not in TCE's schema")),
            )
            .collect();
        ensure!(
            mismatches.is_empty(),
            "values schema differs from TCE's:\n  {}",
            mismatches.join("\n  ")
        );
    }
    let got_metadata = PackageMetadata::from_yaml(&read(
        &repo_dir.join(format!("packages/{ref_name}/metadata.yml")),
    )?)?;
    ensure!(got_metadata.metadata.name == want_metadata.metadata.name);
    ensure!(
        got_metadata.spec == want_metadata.spec,
        "PackageMetadata spec"
    );
    Ok((ref_name.clone(), image))
}

/// What the comparison of two schemas looks at, per property.
#[derive(Debug, PartialEq)]
struct Property {
    type_: Option<String>,
    default: Option<Value>,
}

impl Property {
    /// TCE's hand-written schemas leave `type` out for a nullable "any" value.
    fn matches(&self, got: &Property) -> bool {
        (self.type_.is_none() || self.type_ == got.type_) && self.default == got.default
    }
}

/// Every property of an OpenAPI schema by dotted path (`a.b`, `a.items.c`).
fn properties(schema: &Value) -> BTreeMap<String, Property> {
    fn walk(node: &Value, prefix: &str, out: &mut BTreeMap<String, Property>) {
        if let Some(props) = node.get("properties").and_then(Value::as_object) {
            for (name, child) in props {
                let path = if prefix.is_empty() {
                    name.clone()
                } else {
                    format!("{prefix}.{name}")
                };
                out.insert(
                    path.clone(),
                    Property {
                        type_: child.get("type").and_then(Value::as_str).map(str::to_owned),
                        default: child.get("default").cloned(),
                    },
                );
                walk(child, &path, out);
            }
        }
        if let Some(items) = node.get("items") {
            walk(items, &format!("{prefix}.items"), out);
        }
    }
    let mut out = BTreeMap::new();
    walk(schema, "", &mut out);
    out
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// Every file under `root` by `/`-separated relative path.
fn files(root: &Path) -> anyhow::Result<BTreeMap<String, String>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) -> anyhow::Result<()> {
        for entry in std::fs::read_dir(dir).with_context(|| dir.display().to_string())? {
            let entry = entry?;
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                walk(root, &path, out)?;
            } else {
                let rel = path.strip_prefix(root)?.to_string_lossy().into_owned();
                out.insert(rel, read(&path)?);
            }
        }
        Ok(())
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out)?;
    Ok(out)
}

/// Copies a fixture tree (read-only files in the fixtures) as an owner-writable tree.
fn copy_tree(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o644))?;
        }
    }
    Ok(())
}
