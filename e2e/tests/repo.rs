//! `packsmith repo release` end to end: packages released with `packsmith release` into one
//! repository directory become a repository bundle that pulls back to the same `packages/`
//! tree plus an ImagesLock of every package bundle, and a PackageRepository that the API
//! server accepts; a document kapp-controller would refuse stops the release before any push.

use std::path::Path;
use std::process::{Command, Output};

use anyhow::ensure;
use libtest_mimic::Trial;

use packsmith::carvel::package::PackageDocument;
use packsmith::carvel::{BundleLock, ImagesLock, PackageRepository};
use packsmith::publish::repository::read_packages;

use crate::support::images::{Registry, head_digest};
use crate::support::{self, bed};

pub fn trials() -> Vec<Trial> {
    vec![
        Trial::test("repo::release_merged_packages_and_pull_back", || {
            support::block_on(release_merged_packages_and_pull_back())
        }),
        Trial::test("repo::packages_are_added_to_an_existing_repository", || {
            crate::support::block_on(packages_are_added_to_an_existing_repository())
        }),
        Trial::test("repo::foreign_document_stops_the_release", || {
            support::block_on(foreign_document_stops_the_release())
        }),
    ]
}

/// Runs the packsmith binary.
pub fn packsmith_output(args: &[&str]) -> anyhow::Result<Output> {
    Ok(Command::new(env!("CARGO_BIN_EXE_packsmith"))
        .args(args)
        .output()?)
}

/// Runs the packsmith binary and returns its stdout, failing with its output if it failed.
pub fn packsmith(args: &[&str]) -> anyhow::Result<String> {
    let out = packsmith_output(args)?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        out.status.success(),
        "packsmith {} failed ({}):\n{stdout}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(stdout)
}

/// The image of the `Pushed '…'` line.
pub fn pushed_image(stdout: &str) -> anyhow::Result<String> {
    stdout
        .lines()
        .find_map(|l| {
            l.strip_prefix("Pushed '")
                .and_then(|l| l.strip_suffix('\''))
        })
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("no Pushed line in {stdout}"))
}

/// A package directory whose only content is inline: releasing it needs no upstream.
pub fn inline_package(root: &Path, name: &str, version: &str, reg: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(root.join("config"))?;
    std::fs::write(
        root.join("config/values.yaml"),
        format!("#@data/values\n---\n#! Namespace to install {name} into.\nnamespace: {name}\n"),
    )?;
    std::fs::write(
        root.join("packagesource.yaml"),
        format!(
            r#"apiVersion: packsmith.dev/v1alpha1
kind: PackageSource
metadata:
  name: {name}
spec:
  package:
    refName: {name}.repo.e2e.packsmith.dev
    version: {version}
    metadata:
      displayName: {name}
  contents:
  - path: config/upstream
    contents:
    - path: .
      inline:
        paths:
          configmap.yaml: |
            apiVersion: v1
            kind: ConfigMap
            metadata:
              name: {name}
            data:
              version: "{version}"
  bundle:
    repository: {reg}/e2e-repo/packages/{name}
    insecure: true
"#
        ),
    )?;
    Ok(())
}

async fn release_merged_packages_and_pull_back() -> anyhow::Result<()> {
    let reg = bed().registry.clone();
    let tmp = tempfile::tempdir()?;
    let repo_dir = tmp.path().join("repo");
    let repo_s = repo_dir.to_str().expect("utf-8 path");

    // Three releases (two versions of one package) merge into one repository directory.
    let mut bundles = Vec::new();
    for (name, version) in [("alpha", "1.0.0"), ("alpha", "1.1.0"), ("beta", "0.2.0")] {
        let dir = tmp.path().join(format!("{name}-{version}"));
        inline_package(&dir, name, version, &reg)?;
        let out = packsmith(&[
            "release",
            dir.to_str().expect("utf-8 path"),
            "--output-dir",
            repo_s,
        ])?;
        bundles.push(pushed_image(&out)?);
    }
    // Something else lives in the directory too; it must stay out of the bundle.
    std::fs::write(repo_dir.join("README.md"), "# e2e repository\n")?;

    let lock_output = tmp.path().join("repo-lock.yml");
    let repository = format!("{reg}/e2e-repo/main");
    let out = packsmith(&[
        "repo",
        "release",
        "--packages",
        repo_s,
        "-b",
        &format!("{repository}:v1"),
        "--lock-output",
        lock_output.to_str().expect("utf-8 path"),
        "--name",
        "e2e.packsmith.dev",
        "--namespace",
        "packaging",
        "--registry-insecure-host",
        &reg,
    ])?;
    let image = pushed_image(&out)?;
    ensure!(
        image.starts_with(&format!("{repository}@sha256:")),
        "{image}"
    );
    ensure!(
        out.contains("2 packages (3 versions)"),
        "unexpected summary:\n{out}"
    );

    // The PackageRepository fetches exactly what was pushed.
    let pkgr_text = std::fs::read_to_string(repo_dir.join("package-repository.yml"))?;
    let pkgr = PackageRepository::from_yaml(&pkgr_text)?;
    let fetched = pkgr
        .spec
        .fetch
        .imgpkg_bundle
        .as_ref()
        .map(|b| b.image.as_str());
    ensure!(fetched == Some(image.as_str()), "{pkgr_text}");
    ensure!(pkgr.metadata.name.as_deref() == Some("e2e.packsmith.dev"));
    ensure!(pkgr.metadata.namespace.as_deref() == Some("packaging"));
    let lock = BundleLock::from_yaml(&std::fs::read_to_string(&lock_output)?)?;
    ensure!(lock.bundle.image == image && lock.bundle.tag == "v1");

    // The bundle pulls back (by tag) to packages/ and the lock of every package bundle.
    let pulled = tmp.path().join("pulled");
    packsmith(&[
        "pull",
        "-b",
        &format!("{repository}:v1"),
        "-o",
        pulled.to_str().expect("utf-8 path"),
        "--registry-insecure-host",
        &reg,
    ])?;
    let mut top: Vec<String> = std::fs::read_dir(&pulled)?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<anyhow::Result<_>>()?;
    top.sort();
    ensure!(top == [".imgpkg", "packages"], "bundle holds {top:?}");
    ensure!(read_packages(&pulled)? == read_packages(&repo_dir)?);
    for file in [
        "packages/alpha.repo.e2e.packsmith.dev/metadata.yml",
        "packages/alpha.repo.e2e.packsmith.dev/1.0.0.yml",
        "packages/alpha.repo.e2e.packsmith.dev/1.1.0.yml",
        "packages/beta.repo.e2e.packsmith.dev/0.2.0.yml",
    ] {
        ensure!(
            std::fs::read(pulled.join(file))? == std::fs::read(repo_dir.join(file))?,
            "{file} differs after the round trip"
        );
    }
    let images =
        ImagesLock::from_yaml(&std::fs::read_to_string(pulled.join(".imgpkg/images.yml"))?)?;
    let mut locked: Vec<String> = images.images.iter().map(|i| i.image.clone()).collect();
    locked.sort();
    bundles.sort();
    ensure!(locked == bundles, "lock {locked:?} != released {bundles:?}");

    // What kapp-controller would apply is accepted by the API server (stand-in CRDs).
    let client = bed().client().await?;
    let ns = support::namespace(&client, "e2e-repo").await?;
    let mut stream = String::new();
    for doc in read_packages(&repo_dir)? {
        let yaml = match doc {
            PackageDocument::Package(p) => p.to_yaml()?,
            PackageDocument::Metadata(m) => m.to_yaml()?,
        };
        stream.push_str("---\n");
        stream.push_str(&yaml);
    }
    let mut pkgr_here = pkgr.clone();
    pkgr_here.metadata.namespace = Some(ns.clone());
    stream.push_str("---\n");
    stream.push_str(&pkgr_here.to_yaml()?);
    let applied = support::apply_yaml(&client, &ns, &stream).await?;
    ensure!(applied.len() == 6, "applied {} objects", applied.len());

    // Releasing again pushes the same digest.
    let again = packsmith(&[
        "repo",
        "release",
        "--packages",
        repo_s,
        "-b",
        &format!("{repository}:v1"),
        "--registry-insecure-host",
        &reg,
    ])?;
    ensure!(pushed_image(&again)? == image, "digest moved:\n{again}");
    Ok(())
}

async fn foreign_document_stops_the_release() -> anyhow::Result<()> {
    let reg = bed().registry.clone();
    let tmp = tempfile::tempdir()?;
    let root = tmp.path();
    let digest = format!("sha256:{}", "c".repeat(64));
    let package = packsmith::carvel::Package::new(
        "gamma.repo.e2e.packsmith.dev",
        "1.0.0",
        packsmith::carvel::package::PackageSpec {
            template: packsmith::carvel::package::AppTemplateSpec {
                spec: packsmith::carvel::AppSpec::for_bundle(format!(
                    "{reg}/e2e-repo/gamma@{digest}"
                )),
            },
            ..Default::default()
        },
    );
    let metadata =
        packsmith::carvel::PackageMetadata::new("gamma.repo.e2e.packsmith.dev", Default::default());
    packsmith::publish::repository::write_package_files(root, &package, &metadata)?;
    std::fs::write(
        root.join("packages/gamma.repo.e2e.packsmith.dev/extra.yml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: sneaky\n",
    )?;

    let tag = "foreign";
    let out = packsmith_output(&[
        "repo",
        "release",
        "--packages",
        root.to_str().expect("utf-8 path"),
        "-b",
        &format!("{reg}/e2e-repo/foreign:{tag}"),
        "--registry-insecure-host",
        &reg,
    ])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.code() == Some(1),
        "exit {:?}:\n{stderr}",
        out.status
    );
    ensure!(
        stderr.contains("extra.yml") && stderr.contains("kind \"ConfigMap\""),
        "the error does not name the file and kind:\n{stderr}"
    );
    ensure!(
        !root.join(".imgpkg").exists() && !root.join("package-repository.yml").exists(),
        "a refused repository left files behind"
    );
    ensure!(
        head_digest(&Registry::plain(bed()), "e2e-repo/foreign", tag)
            .await
            .is_err(),
        "a refused repository was pushed"
    );
    Ok(())
}

/// `repo release --add-to`: a repository of alpha 1.0.0 gains gamma 3.0.0 without rebuilding
/// from every release directory; the new bundle holds both, and a changed alpha 1.0.0 is
/// refused (a published version does not change).
async fn packages_are_added_to_an_existing_repository() -> anyhow::Result<()> {
    let reg = bed().registry.clone();
    let tmp = tempfile::tempdir()?;
    let id = crate::support::unique_id()?;
    let repository = format!("{reg}/e2e-repo/add-{id}");
    let release_into = |name: &str, version: &str, out: &Path| -> anyhow::Result<()> {
        let dir = tmp.path().join(format!("{name}-{version}"));
        inline_package(&dir, name, version, &reg)?;
        packsmith(&[
            "release",
            dir.to_str().expect("utf-8"),
            "--output-dir",
            out.to_str().expect("utf-8"),
        ])?;
        Ok(())
    };
    let first = tmp.path().join("first");
    release_into("alpha", "1.0.0", &first)?;
    packsmith(&[
        "repo",
        "release",
        "--packages",
        first.to_str().expect("utf-8"),
        "-b",
        &format!("{repository}:v1"),
        "--registry-insecure-host",
        &reg,
    ])?;
    let second = tmp.path().join("second");
    release_into("gamma", "3.0.0", &second)?;
    let out = packsmith(&[
        "repo",
        "release",
        "--packages",
        second.to_str().expect("utf-8"),
        "-b",
        &format!("{repository}:v2"),
        "--add-to",
        &format!("{repository}:v1"),
        "--registry-insecure-host",
        &reg,
    ])?;
    ensure!(out.contains("2 packages (2 versions)"), "{out}");
    let pulled = tmp.path().join("pulled");
    packsmith(&[
        "pull",
        "-b",
        &format!("{repository}:v2"),
        "-o",
        pulled.to_str().expect("utf-8"),
        "--registry-insecure-host",
        &reg,
    ])?;
    let refs: Vec<(String, String)> = read_packages(&pulled)?
        .into_iter()
        .filter_map(|d| match d {
            PackageDocument::Package(p) => Some((p.spec.ref_name, p.spec.version)),
            _ => None,
        })
        .collect();
    ensure!(
        refs == [
            (
                "alpha.repo.e2e.packsmith.dev".to_owned(),
                "1.0.0".to_owned()
            ),
            (
                "gamma.repo.e2e.packsmith.dev".to_owned(),
                "3.0.0".to_owned()
            )
        ],
        "{refs:?}"
    );
    // alpha 1.0.0 again, but its Package now says something else: refused.
    let file = first.join("packages/alpha.repo.e2e.packsmith.dev/1.0.0.yml");
    let text = std::fs::read_to_string(&file)?;
    std::fs::write(
        &file,
        text.replacen("releasedAt:", "releaseNotes: changed\n  releasedAt:", 1),
    )?;
    let out = packsmith_output(&[
        "repo",
        "release",
        "--packages",
        first.to_str().expect("utf-8"),
        "-b",
        &format!("{repository}:v3"),
        "--add-to",
        &format!("{repository}:v2"),
        "--registry-insecure-host",
        &reg,
    ])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success()
            && stderr.contains("packages/alpha.repo.e2e.packsmith.dev/1.0.0.yml is already in")
            && stderr.contains("a published version does not change"),
        "{stderr}"
    );
    Ok(())
}
