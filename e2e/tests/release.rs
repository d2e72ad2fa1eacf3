//! `packsmith release` end to end: a git upstream whose manifests reference a public image
//! name, resolved through a mirror to the bed's registry, synced, locked, pushed and rendered
//! into a Package; the pushed bundle pulls back to the same tree.

use std::process::Command;

use libtest_mimic::Trial;

use crate::support::bed;
use crate::support::images::{ImageKind, Registry, push_image};
use crate::tests::git::make_repo;

pub fn trials() -> Vec<Trial> {
    vec![Trial::test("release::git_upstream_to_package", || {
        crate::support::block_on(git_upstream_to_package())
    })]
}

fn packsmith(args: &[&str]) -> anyhow::Result<(String, String)> {
    let out = Command::new(env!("CARGO_BIN_EXE_packsmith"))
        .args(args)
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    anyhow::ensure!(
        out.status.success(),
        "packsmith {} failed ({}):\n{stdout}{stderr}",
        args.join(" "),
        out.status
    );
    Ok((stdout, stderr))
}

async fn git_upstream_to_package() -> anyhow::Result<()> {
    let reg = bed().registry.clone();
    // The image the manifests name lives in the bed's registry under the same repository.
    let digest = push_image(
        &Registry::plain(bed()),
        "example/release-demo",
        "v1.2.3",
        ImageKind::MultiArch,
        "release",
    )
    .await?;
    make_repo(
        "release-demo",
        &[
            (
                "deploy/deployment.yaml",
                "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: demo\nspec:\n  template:\n    spec:\n      containers:\n      - name: demo\n        image: quay.io/example/release-demo:v1.2.3\n",
            ),
            ("README.md", "not part of the package\n"),
        ],
        "v1.2.3",
    )?;

    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("demo");
    std::fs::create_dir_all(dir.join("config"))?;
    std::fs::write(
        dir.join("config/values.yaml"),
        "#@data/values\n---\n#! Namespace to install into.\nnamespace: demo\n",
    )?;
    std::fs::write(
        dir.join("packagesource.yaml"),
        format!(
            r#"apiVersion: packsmith.dev/v1alpha1
kind: PackageSource
metadata:
  name: demo
spec:
  package:
    refName: demo.packages.example.com
    versionFrom:
      directory: config/upstream
      constraints: ">=1.0.0"
    metadata:
      displayName: Demo
  contents:
  - path: config/upstream
    contents:
    - path: .
      git:
        url: {git}/release-demo.git
        ref: v1.2.3
      includePaths:
      - deploy/**/*
  images:
    mirrors:
    - from: quay.io
      to: {reg}
      insecure: true
  bundle:
    repository: {reg}/packages/release-demo
    insecure: true
"#,
            git = bed().git_url
        ),
    )?;
    let dir_s = dir.to_str().expect("utf-8 path");
    let (stdout, _) = packsmith(&["release", dir_s])?;
    let image = stdout
        .lines()
        .find_map(|l| {
            l.strip_prefix("Pushed '")
                .and_then(|l| l.strip_suffix('\''))
        })
        .ok_or_else(|| anyhow::anyhow!("no Pushed line in {stdout}"))?
        .to_owned();
    anyhow::ensure!(
        image.starts_with(&format!("{reg}/packages/release-demo@sha256:")),
        "{image}"
    );

    // The lock pins the public name to the digest the mirror served.
    let lock = std::fs::read_to_string(dir.join(".imgpkg/images.yml"))?;
    anyhow::ensure!(
        lock.contains(&format!("image: quay.io/example/release-demo@{digest}"))
            && lock.contains("kbld.carvel.dev/id: quay.io/example/release-demo:v1.2.3"),
        "unexpected lock:\n{lock}"
    );
    // vendir's lock records what was fetched.
    let vendir_lock = std::fs::read_to_string(dir.join("vendir.lock.yml"))?;
    anyhow::ensure!(vendir_lock.contains("- v1.2.3"), "{vendir_lock}");

    let package_file = dir.join("carvel-artifacts/packages/demo.packages.example.com/1.2.3.yml");
    let package = packsmith::carvel::Package::from_yaml(&std::fs::read_to_string(&package_file)?)?;
    anyhow::ensure!(package.metadata.name.as_deref() == Some("demo.packages.example.com.1.2.3"));
    let fetch = package.spec.template.spec.fetch[0]
        .imgpkg_bundle
        .as_ref()
        .map(|b| b.image.clone());
    anyhow::ensure!(
        fetch.as_deref() == Some(image.as_str()),
        "Package fetches {fetch:?}, pushed {image}"
    );
    let schema = package
        .spec
        .values_schema
        .and_then(|v| v.open_api_v3)
        .unwrap_or_default();
    anyhow::ensure!(
        schema["properties"]["namespace"]["default"] == "demo",
        "values schema: {schema}"
    );
    anyhow::ensure!(
        dir.join("carvel-artifacts/packages/demo.packages.example.com/metadata.yml")
            .is_file()
    );

    // The bundle holds the package, not its description.
    let out = tmp.path().join("pulled");
    packsmith(&[
        "pull",
        "-b",
        &image,
        "-o",
        out.to_str().expect("utf-8"),
        "--registry-insecure-host",
        &reg,
    ])?;
    anyhow::ensure!(
        out.join("config/upstream/deploy/deployment.yaml").is_file(),
        "deployment missing from the bundle"
    );
    anyhow::ensure!(
        !out.join("config/upstream/README.md").exists(),
        "includePaths ignored"
    );
    anyhow::ensure!(std::fs::read_to_string(out.join(".imgpkg/images.yml"))? == lock);
    for absent in ["packagesource.yaml", "carvel-artifacts", "vendir.lock.yml"] {
        anyhow::ensure!(!out.join(absent).exists(), "{absent} was bundled");
    }

    // Same inputs, same digest: GitOps sees no churn.
    let (again, _) = packsmith(&["release", dir_s])?;
    let lock_again = std::fs::read_to_string(dir.join(".imgpkg/images.yml"))?;
    anyhow::ensure!(
        lock_again == lock,
        "re-release changed the lock:\n{lock}\n---- now:\n{lock_again}"
    );
    anyhow::ensure!(
        again.contains(&format!("Pushed '{image}'")),
        "re-release moved the digest:\n{again}"
    );
    Ok(())
}
