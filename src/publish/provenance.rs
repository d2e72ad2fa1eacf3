//! What went into a bundle, as an in-toto Statement with a SLSA Provenance v1 predicate
//! (`https://slsa.dev/provenance/v1`): the bundle is the subject; every upstream with what
//! it resolved to (git commit, image or bundle digest, chart version, archive checksum), the
//! images lock and the spec's inputs are its resolved dependencies; packsmith is the builder.
//! It is attached next to the bundle (cosign's `.att`), never inside it, so the bundle's
//! digest stays what its content makes it. No timestamps: the same inputs give the same
//! document, so a re-run finds it there and writes nothing.
//!
//! Comparing two versions' provenance answers "why did this version change": an upstream
//! commit or digest, the images lock, or the spec (overlays, inline files, values) moved.

use serde_json::{Value, json};

use crate::api::PackageSourceSpec;
use crate::carvel::vendir::{LockConfig, Source};
use crate::registry::sha256_digest;
use crate::sync::redact_url;

/// The predicate type (SLSA Provenance v1; `cosign verify-attestation --type slsaprovenance1`,
/// cosign `pkg/policy/attestation.go` `PredicateTypeMap`).
pub const PREDICATE_TYPE: &str = "https://slsa.dev/provenance/v1";
/// How packsmith builds a bundle from a PackageSource: the `buildType` of its provenance.
pub const BUILD_TYPE: &str = "https://packsmith.dev/provenance/packagesource/v1";
/// The builder's identity.
pub const BUILDER_ID: &str = "https://packsmith.dev/packsmith";

/// The Statement for the bundle `repository@digest` built from `spec`, whose contents
/// resolved to `lock`, with `images_lock` (the bundle's `.imgpkg/images.yml`, as bytes).
pub fn statement(
    repository: &str,
    digest: &str,
    version: &str,
    spec: &PackageSourceSpec,
    lock: &LockConfig,
    images_lock: &[u8],
) -> Vec<u8> {
    let mut dependencies: Vec<Value> = Vec::new();
    for directory in &spec.contents {
        for contents in &directory.contents {
            let name = format!("{}/{}", directory.path, contents.path);
            let locked = lock.find_contents(&directory.path, &contents.path);
            dependencies.push(dependency(&name, contents, locked));
        }
    }
    dependencies.push(json!({
        "name": ".imgpkg/images.yml",
        "digest": {"sha256": hex(&sha256_digest(images_lock))},
    }));
    // The spec's inputs (not its schedule or publishing): an overlay, an inline file or a
    // value changed here is a new `inputs` digest.
    let inputs = json!({
        "package": spec.package,
        "contents": spec.contents,
        "images": spec.images,
    });
    let inputs = serde_json::to_vec(&inputs).unwrap_or_default();
    provenance(
        repository,
        digest,
        BUILD_TYPE,
        json!({
            "package": {"refName": spec.package.ref_name, "version": version},
            "inputs": {"sha256": hex(&sha256_digest(&inputs))},
        }),
        dependencies,
    )
}

/// The Statement of SLSA provenance about `repository@digest`, packsmith as the builder.
fn provenance(
    repository: &str,
    digest: &str,
    build_type: &str,
    external_parameters: Value,
    dependencies: Vec<Value>,
) -> Vec<u8> {
    let statement = json!({
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": repository, "digest": {"sha256": hex(digest)}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": build_type,
                "externalParameters": external_parameters,
                "resolvedDependencies": dependencies,
            },
            "runDetails": {
                "builder": {
                    "id": BUILDER_ID,
                    "version": {"packsmith": env!("CARGO_PKG_VERSION")},
                },
            },
        },
    });
    serde_json::to_vec(&statement).unwrap_or_default()
}

/// How packsmith builds a package repository bundle: the `buildType` of its provenance.
pub const REPOSITORY_BUILD_TYPE: &str = "https://packsmith.dev/provenance/packagerepository/v1";

/// The Statement for the repository bundle `repository@digest`: every package bundle it
/// locks (`lock`), and its packages as `(refName, version)`.
pub fn repository_statement(
    repository: &str,
    digest: &str,
    lock: &crate::carvel::ImagesLock,
    packages: &[(String, String)],
) -> Vec<u8> {
    let dependencies: Vec<Value> = lock
        .images
        .iter()
        .map(|image| {
            let mut dependency = json!({"uri": format!("oci://{}", image.image)});
            if let Some((_, digest)) = image.image.rsplit_once('@') {
                dependency["digest"] = json!({"sha256": hex(digest)});
            }
            dependency
        })
        .collect();
    let packages: Vec<Value> = packages
        .iter()
        .map(|(ref_name, version)| json!({"refName": ref_name, "version": version}))
        .collect();
    provenance(
        repository,
        digest,
        REPOSITORY_BUILD_TYPE,
        json!({"packages": packages}),
        dependencies,
    )
}

fn hex(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

/// A registry content as written (`oci://…`) and the digest it resolved to (`repo@sha256:…`
/// as locked, or as written when it names one).
fn oci(set: &mut impl FnMut(&str, Value), written: &str, resolved: Option<&str>) {
    set("uri", json!(format!("oci://{written}")));
    if let Some((_, digest)) = resolved.unwrap_or(written).rsplit_once('@') {
        set("digest", json!({"sha256": hex(digest)}));
    }
}

/// One content as a SLSA ResourceDescriptor: where it came from and what it resolved to.
fn dependency(
    name: &str,
    contents: &crate::carvel::vendir::DirectoryContents,
    locked: Option<&crate::carvel::vendir::LockDirectoryContents>,
) -> Value {
    let mut out = json!({"name": name});
    let mut set = |key: &str, value: Value| {
        out[key] = value;
    };
    match contents.source() {
        Ok(Source::Git(git)) => {
            set("uri", json!(format!("git+{}", redact_url(&git.url))));
            if let Some(git) = locked.and_then(|l| l.git.as_ref()) {
                set("digest", json!({"gitCommit": git.sha}));
                set(
                    "annotations",
                    json!({"tags": git.tags, "commitTitle": git.commit_title}),
                );
            }
        }
        Ok(Source::Http(http)) => {
            set("uri", json!(redact_url(&http.url)));
            if !http.sha256.is_empty() {
                set("digest", json!({"sha256": http.sha256}));
            }
        }
        Ok(Source::Image(image)) => {
            let resolved = locked
                .and_then(|l| l.image.as_ref())
                .map(|l| l.url.as_str());
            oci(&mut set, &image.url, resolved);
        }
        Ok(Source::ImgpkgBundle(bundle)) => {
            let resolved = locked
                .and_then(|l| l.imgpkg_bundle.as_ref())
                .map(|l| l.image.as_str());
            oci(&mut set, &bundle.image, resolved);
        }
        Ok(Source::GithubRelease(release)) => {
            set("uri", json!(format!("https://github.com/{}", release.slug)));
            if let Some(release) = locked.and_then(|l| l.github_release.as_ref()) {
                set(
                    "annotations",
                    json!({"tag": release.tag, "release": release.url}),
                );
            }
        }
        Ok(Source::HelmChart(chart)) => {
            let repository = chart
                .repository
                .as_ref()
                .map(|r| redact_url(&r.url))
                .unwrap_or_default();
            set("uri", json!(format!("{repository}#{}", chart.name)));
            if let Some(chart) = locked.and_then(|l| l.helm_chart.as_ref()) {
                set(
                    "annotations",
                    json!({"version": chart.version, "appVersion": chart.app_version}),
                );
            }
        }
        // Written from the spec itself: what they hold is in `inputs`.
        Ok(Source::Inline(_) | Source::Manual(_) | Source::Directory(_) | Source::Hg(_))
        | Err(_) => {
            let config = serde_json::to_vec(contents).unwrap_or_default();
            set("digest", json!({"sha256": hex(&sha256_digest(&config))}));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::carvel::vendir::{
        Directory, DirectoryContents, GitSource, LockDirectory, LockDirectoryContents, LockGit,
    };

    fn spec(git_ref: &str) -> PackageSourceSpec {
        let mut spec: PackageSourceSpec = serde_json::from_value(json!({
            "package": {"refName": "demo.example.com", "version": "1.0.0"},
            "contents": [],
            "bundle": {"repository": "registry.example.com/demo"},
        }))
        .unwrap();
        spec.contents = vec![Directory {
            path: "config".into(),
            contents: vec![DirectoryContents {
                path: "upstream".into(),
                git: Some(GitSource {
                    url: "https://user:secret@git.example.com/demo.git".into(),
                    git_ref: git_ref.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }];
        spec
    }

    fn lock(sha: &str) -> LockConfig {
        LockConfig::new(vec![LockDirectory {
            path: "config".into(),
            contents: vec![LockDirectoryContents {
                path: "upstream".into(),
                git: Some(LockGit {
                    sha: sha.into(),
                    tags: vec!["v1.0.0".into()],
                    commit_title: "release".into(),
                }),
                ..Default::default()
            }],
        }])
    }

    #[test]
    fn same_inputs_same_bytes_and_what_changed_is_visible() {
        let digest = format!("sha256:{}", "ab".repeat(32));
        let one = statement(
            "r/demo",
            &digest,
            "1.0.0",
            &spec("v1.0.0"),
            &lock("a"),
            b"lock",
        );
        assert_eq!(
            one,
            statement(
                "r/demo",
                &digest,
                "1.0.0",
                &spec("v1.0.0"),
                &lock("a"),
                b"lock"
            )
        );
        let value: Value = serde_json::from_slice(&one).unwrap();
        assert_eq!(value["subject"][0]["digest"]["sha256"], "ab".repeat(32));
        let upstream = &value["predicate"]["buildDefinition"]["resolvedDependencies"][0];
        assert_eq!(
            upstream["uri"],
            "git+https://redacted@git.example.com/demo.git"
        );
        assert_eq!(upstream["digest"]["gitCommit"], "a");
        assert!(!String::from_utf8(one.clone()).unwrap().contains("secret"));

        let moved: Value = serde_json::from_slice(&statement(
            "r/demo",
            &digest,
            "1.0.0",
            &spec("v1.0.0"),
            &lock("b"),
            b"lock",
        ))
        .unwrap();
        assert_eq!(
            moved["predicate"]["buildDefinition"]["resolvedDependencies"][0]["digest"]["gitCommit"],
            "b"
        );
        let respecified: Value = serde_json::from_slice(&statement(
            "r/demo",
            &digest,
            "1.0.0",
            &spec("v1.0.1"),
            &lock("a"),
            b"lock",
        ))
        .unwrap();
        assert_ne!(
            respecified["predicate"]["buildDefinition"]["externalParameters"]["inputs"],
            value["predicate"]["buildDefinition"]["externalParameters"]["inputs"]
        );
    }
}
