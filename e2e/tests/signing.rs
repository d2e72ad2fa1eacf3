//! Signed bundles, checked against cosign's format (facts from cosign's source, see
//! `src/registry/cosign`) by code other than packsmith's: the `sha256-<hex>.sig` image is read
//! with an independent OCI client, its payload compared with the bytes Go's encoder writes,
//! and its signature verified by `openssl dgst -sha256 -verify` with the public key
//! `packsmith generate-key-pair` wrote — as `cosign verify --key` verifies it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{Context as _, ensure};
use base64::Engine as _;
use kube::api::Api;
use libtest_mimic::Trial;
use pretty_assertions::assert_eq;
use serde_json::Value;

use packsmith::api::PackageSource;
use packsmith::api::conditions::{reasons, types};

use super::controller::{Running, condition, has, inline_source, wait_for};
use crate::support::images::{self, ImageKind};
use crate::support::{self, apply_yaml, bed, namespace};

pub fn trials() -> Vec<Trial> {
    vec![
        Trial::test("signing::cli_signatures_are_cosigns", || {
            support::block_on(cli_signatures())
        }),
        Trial::test("signing::controller_signs_bundles_before_tagging", || {
            support::block_on(controller_signs())
        }),
        Trial::test("signing::unsigned_upstreams_are_refused", || {
            support::block_on(upstreams_verified())
        }),
        Trial::test("signing::git_tags_and_commits_are_verified", || {
            support::block_on(git_signatures())
        }),
        Trial::test("signing::helm_provenance_is_verified", || {
            support::block_on(helm_provenance())
        }),
        Trial::test("signing::cli_release_signed_with_provenance", || {
            support::block_on(cli_release_signed_with_provenance())
        }),
    ]
}

const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";

fn packsmith(dir: &Path, password: &str, args: &[&str]) -> anyhow::Result<Output> {
    Command::new(env!("CARGO_BIN_EXE_packsmith"))
        .args(args)
        .current_dir(dir)
        .env("COSIGN_PASSWORD", password)
        .env_remove("PACKSMITH_SIGN_KEY")
        .output()
        .context("running packsmith")
}

fn packsmith_ok(dir: &Path, password: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = packsmith(dir, password, args)?;
    ensure!(
        out.status.success(),
        "packsmith {args:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// The simple-signing payload as Go's `json.Marshal` writes cosign's struct (sigstore
/// `payload_test.go` `TestMarshalCosign`): written out here, not by packsmith's code.
fn go_payload(repository: &str, digest: &str) -> String {
    format!(
        r#"{{"critical":{{"identity":{{"docker-reference":"{repository}"}},"image":{{"docker-manifest-digest":"{digest}"}},"type":"cosign container image signature"}},"optional":null}}"#
    )
}

/// One layer of a `.sig` image, read with the independent client.
struct SigLayer {
    descriptor: Value,
    payload: Vec<u8>,
    signature: Vec<u8>,
}

/// The `sha256-<hex>.sig` image of `repo@digest` in the plain registry: its manifest and each
/// layer's payload and signature. `None` when there is none.
async fn signature_image(
    repo: &str,
    digest: &str,
) -> anyhow::Result<Option<(Value, Vec<SigLayer>)>> {
    let registry = images::Registry::plain(bed());
    let client = registry.client();
    let tag = format!("{}.sig", digest.replacen(':', "-", 1));
    let reference = registry.reference(repo, &tag)?;
    let manifest = match client
        .pull_manifest_raw(
            &reference,
            &registry.auth,
            &["application/vnd.oci.image.manifest.v1+json"],
        )
        .await
    {
        Ok((bytes, _)) => serde_json::from_slice::<Value>(&bytes)?,
        Err(e) if e.to_string().contains("MANIFEST_UNKNOWN") || e.to_string().contains("404") => {
            return Ok(None);
        }
        Err(e) => return Err(e).context(format!("reading {reference}")),
    };
    let mut layers = Vec::new();
    for descriptor in manifest["layers"].as_array().context("layers")? {
        let layer: oci_client::manifest::OciDescriptor =
            serde_json::from_value(descriptor.clone())?;
        let mut payload = Vec::new();
        client.pull_blob(&reference, &layer, &mut payload).await?;
        let signature = base64::engine::general_purpose::STANDARD.decode(
            descriptor["annotations"][SIGNATURE_ANNOTATION]
                .as_str()
                .context("signature annotation")?,
        )?;
        layers.push(SigLayer {
            descriptor: descriptor.clone(),
            payload,
            signature,
        });
    }
    Ok(Some((manifest, layers)))
}

/// Whether `openssl` verifies `signature` (DER ECDSA) over `payload` with `public_key`.
fn openssl_verifies(public_key: &Path, payload: &[u8], signature: &[u8]) -> anyhow::Result<bool> {
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("payload"), payload)?;
    std::fs::write(dir.path().join("sig"), signature)?;
    let out = Command::new("openssl")
        .args(["dgst", "-sha256", "-verify"])
        .arg(public_key)
        .args(["-signature", "sig", "payload"])
        .current_dir(dir.path())
        .output()
        .context("running openssl")?;
    Ok(out.status.success())
}

/// A directory `packsmith push -b` takes as a bundle.
fn bundle_dir(parent: &Path, content: &str) -> anyhow::Result<std::path::PathBuf> {
    let dir = parent.join(format!("bundle-{content}"));
    std::fs::create_dir_all(dir.join(".imgpkg"))?;
    std::fs::write(
        dir.join(".imgpkg/images.yml"),
        "apiVersion: imgpkg.carvel.dev/v1alpha1\nkind: ImagesLock\nimages: []\n",
    )?;
    std::fs::write(dir.join("config.yaml"), format!("content: {content}\n"))?;
    Ok(dir)
}

async fn cli_signatures() -> anyhow::Result<()> {
    let bed = bed();
    let id = support::unique_id()?;
    let work = tempfile::tempdir()?;
    let dir = work.path();
    packsmith_ok(dir, "correct horse", &["generate-key-pair"])?;
    packsmith_ok(
        dir,
        "",
        &["generate-key-pair", "--output-key-prefix", "other"],
    )?;
    let key = std::fs::read_to_string(dir.join("cosign.key"))?;
    ensure!(
        key.starts_with("-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----"),
        "{key}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.join("cosign.key"))?
            .permissions()
            .mode();
        ensure!(
            mode & 0o077 == 0,
            "cosign.key is readable by others: {mode:o}"
        );
    }

    let repo = format!("e2e-signing/{id}/app");
    let repository = format!("{}/{repo}", bed.registry);
    let bundle = bundle_dir(dir, "one")?;
    let push = |password: &str, key: &str| {
        packsmith_ok(
            dir,
            password,
            &[
                "push",
                "-b",
                &format!("{repository}:1.0.0"),
                "-f",
                bundle.to_str().unwrap_or_default(),
                "--sign-key",
                key,
                "--registry-insecure-host",
                &bed.registry,
            ],
        )
    };
    let pushed = push("correct horse", "cosign.key")?;
    let digest = pushed
        .trim()
        .rsplit_once('@')
        .map(|(_, d)| d.trim_end_matches('\'').to_owned())
        .context(pushed.clone())?;

    // cosign's artifact: an OCI image, OCI config, one simple-signing layer whose blob is the
    // payload Go writes, its signature in the annotation, verified by openssl.
    let (manifest, layers) = signature_image(&repo, &digest)
        .await?
        .context("no sha256-<hex>.sig after push --sign-key")?;
    assert_eq!(
        manifest["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.oci.image.config.v1+json"
    );
    assert_eq!(layers.len(), 1);
    let layer = &layers[0];
    assert_eq!(layer.descriptor["mediaType"], SIMPLE_SIGNING);
    assert_eq!(
        String::from_utf8(layer.payload.clone())?,
        go_payload(&repository, &digest)
    );
    ensure!(openssl_verifies(
        &dir.join("cosign.pub"),
        &layer.payload,
        &layer.signature
    )?);
    ensure!(!openssl_verifies(
        &dir.join("other.pub"),
        &layer.payload,
        &layer.signature
    )?);

    // packsmith verify: cosign verify's output, and its refusals.
    let verify = |key: &str, reference: &str| {
        packsmith(
            dir,
            "",
            &[
                "verify",
                reference,
                "--key",
                key,
                "--registry-insecure-host",
                &bed.registry,
            ],
        )
    };
    let out = verify("cosign.pub", &format!("{repository}:1.0.0"))?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let payloads: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(
        payloads[0]["critical"]["image"]["docker-manifest-digest"],
        digest.as_str()
    );
    ensure!(
        String::from_utf8_lossy(&out.stderr)
            .contains("The signatures were verified against the specified public key")
    );
    let out = verify("other.pub", &format!("{repository}@{digest}"))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && stderr.contains("another key"),
        "{stderr}"
    );
    let unsigned = images::push_image(
        &images::Registry::plain(bed),
        &repo,
        "unsigned",
        ImageKind::Oci,
        &id,
    )
    .await?;
    let out = verify("cosign.pub", &format!("{repository}:unsigned"))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && stderr.contains("has no cosign signature"),
        "{stderr}"
    );

    // Signed again with the same key: nothing written (ECDSA is randomised, so a second
    // signature would be a new layer). With another key: appended, the first kept verbatim.
    push("correct horse", "cosign.key")?;
    let (_, again) = signature_image(&repo, &digest).await?.context("sig")?;
    assert_eq!(
        again.len(),
        1,
        "a re-push with the same key added a signature"
    );
    push("", "other.key")?;
    let (_, both) = signature_image(&repo, &digest).await?.context("sig")?;
    assert_eq!(both.len(), 2);
    assert_eq!(both[0].descriptor, layer.descriptor);
    ensure!(openssl_verifies(
        &dir.join("other.pub"),
        &both[1].payload,
        &both[1].signature
    )?);
    for key in ["cosign.pub", "other.pub"] {
        let out = verify(key, &format!("{repository}:1.0.0"))?;
        ensure!(
            out.status.success(),
            "{key}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // A signature moved onto another image: it verifies as a signature, but claims the other
    // digest, and `cosign verify` refuses that claim.
    let registry = images::Registry::plain(bed);
    let client = registry.client();
    let moved_tag = format!("{}.sig", unsigned.replacen(':', "-", 1));
    let sig_ref = registry.reference(&repo, &format!("{}.sig", digest.replacen(':', "-", 1)))?;
    let (bytes, _) = client
        .pull_manifest_raw(
            &sig_ref,
            &registry.auth,
            &["application/vnd.oci.image.manifest.v1+json"],
        )
        .await?;
    client
        .push_manifest_raw(
            &registry.reference(&repo, &moved_tag)?,
            bytes,
            "application/vnd.oci.image.manifest.v1+json".parse()?,
        )
        .await?;
    let out = verify("cosign.pub", &format!("{repository}:unsigned"))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && stderr.contains("for another digest"),
        "{stderr}"
    );

    // A wrong password says so, before anything is pushed.
    let out = packsmith(
        dir,
        "wrong",
        &[
            "push",
            "-b",
            &format!("{repository}:2.0.0"),
            "-f",
            bundle.to_str().unwrap_or_default(),
            "--sign-key",
            "cosign.key",
            "--registry-insecure-host",
            &bed.registry,
        ],
    )?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && stderr.contains("password is wrong"),
        "{stderr}"
    );
    Ok(())
}

async fn controller_signs() -> anyhow::Result<()> {
    let bed = bed();
    let client = bed.client().await?;
    let ns = namespace(&client, "signing").await?;
    let work = tempfile::tempdir()?;
    packsmith_ok(work.path(), "s3cret", &["generate-key-pair"])?;
    let key = std::fs::read_to_string(work.path().join("cosign.key"))?;
    let secret = |name: &str, password: &str| {
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}}}\nstringData:\n  \
             cosign.password: {password}\n  cosign.key: |\n{}",
            key.lines()
                .map(|l| format!("    {l}\n"))
                .collect::<String>()
        )
    };
    apply_yaml(&client, &ns, &secret("sign", "s3cret")).await?;
    apply_yaml(&client, &ns, &secret("wrong", "guess")).await?;
    let controller = Running::start(&ns).await?;
    let sources: Api<PackageSource> = Api::namespaced(client.clone(), &ns);
    for (name, secret) in [("signed", "sign"), ("misconfigured", "wrong")] {
        let repository = format!("{}/e2e-signing-{ns}/{name}", bed.registry);
        apply_yaml(
            &client,
            &ns,
            &inline_source(
                name,
                &ns,
                &repository,
                &format!("    insecure: true\n    signing:\n      secretRef: {{name: {secret}}}\n"),
            ),
        )
        .await?;
    }
    let signed = wait_for(&sources, "signed", Duration::from_secs(60), "Ready", |o| {
        has(o, types::READY, "True", reasons::SUCCEEDED)
    })
    .await?;
    let bundle = signed
        .status
        .as_ref()
        .and_then(|s| s.bundle.clone())
        .context("status.bundle")?;
    let (_, digest) = bundle.image.rsplit_once('@').context("digest")?;
    let repo = format!("e2e-signing-{ns}/signed");
    assert_eq!(
        bundle.signature.as_deref(),
        Some(
            format!(
                "{}/{repo}:{}.sig",
                bed.registry,
                digest.replacen(':', "-", 1)
            )
            .as_str()
        )
    );
    let (_, layers) = signature_image(&repo, digest).await?.context("sig")?;
    assert_eq!(
        String::from_utf8(layers[0].payload.clone())?,
        go_payload(&format!("{}/{repo}", bed.registry), digest)
    );
    ensure!(openssl_verifies(
        &work.path().join("cosign.pub"),
        &layers[0].payload,
        &layers[0].signature
    )?);

    // The provenance next to it: readable with `packsmith describe`, its DSSE envelope signed
    // with the same key over DSSE's pre-authentication encoding (checked by openssl).
    let described = packsmith_ok(
        work.path(),
        "",
        &[
            "describe",
            &bundle.image,
            "-o",
            "json",
            "--registry-insecure-host",
            &bed.registry,
        ],
    )?;
    let described: Value = serde_json::from_str(&described)?;
    let provenance = &described["provenance"];
    assert_eq!(provenance["signatures"], 1, "{described}");
    let names: Vec<&str> = provenance["dependencies"]
        .as_array()
        .context("dependencies")?
        .iter()
        .filter_map(|d| d["name"].as_str())
        .collect();
    assert_eq!(names, ["config/app/.", ".imgpkg/images.yml"]);
    ensure!(
        provenance["builder"]
            .as_str()
            .is_some_and(|b| b.starts_with("https://packsmith.dev/packsmith ")),
        "{provenance}"
    );
    let registry = images::Registry::plain(bed);
    let att = registry.reference(&repo, &format!("{}.att", digest.replacen(':', "-", 1)))?;
    let att_manifest = || async {
        let (bytes, _) = registry
            .client()
            .pull_manifest_raw(
                &att,
                &registry.auth,
                &["application/vnd.oci.image.manifest.v1+json"],
            )
            .await?;
        anyhow::Ok(serde_json::from_slice::<Value>(&bytes)?)
    };
    let manifest = att_manifest().await?;
    let layer = &manifest["layers"][0];
    assert_eq!(layer["mediaType"], "application/vnd.dsse.envelope.v1+json");
    assert_eq!(
        layer["annotations"]["predicateType"],
        "https://slsa.dev/provenance/v1"
    );
    let descriptor: oci_client::manifest::OciDescriptor = serde_json::from_value(layer.clone())?;
    let mut envelope = Vec::new();
    registry
        .client()
        .pull_blob(&att, &descriptor, &mut envelope)
        .await?;
    let envelope: Value = serde_json::from_slice(&envelope)?;
    let b64 = base64::engine::general_purpose::STANDARD;
    let payload = b64.decode(envelope["payload"].as_str().context("payload")?)?;
    let statement: Value = serde_json::from_slice(&payload)?;
    assert_eq!(
        statement["subject"][0]["digest"]["sha256"],
        digest.trim_start_matches("sha256:")
    );
    let payload_type = "application/vnd.in-toto+json";
    let mut pae = format!(
        "DSSEv1 {} {payload_type} {} ",
        payload_type.len(),
        payload.len()
    )
    .into_bytes();
    pae.extend_from_slice(&payload);
    let sig = b64.decode(envelope["signatures"][0]["sig"].as_str().context("sig")?)?;
    ensure!(openssl_verifies(
        &work.path().join("cosign.pub"),
        &pae,
        &sig
    )?);

    // A key that cannot be decrypted stalls the push before any tag is written.
    let misconfigured = wait_for(
        &sources,
        "misconfigured",
        Duration::from_secs(60),
        "Stalled SigningFailed",
        |o| has(o, types::STALLED, "True", reasons::SIGNING_FAILED),
    )
    .await?;
    let message = condition(&misconfigured, types::READY)
        .map(|c| c.message.clone())
        .unwrap_or_default();
    ensure!(
        message.contains("password is wrong") && message.contains(&format!("{ns}/wrong")),
        "{message}"
    );
    let tags = packsmith::registry::Registry::new(packsmith::registry::RegistryOptions {
        insecure_hosts: vec![bed.registry.clone()],
        ..Default::default()
    })?
    .distribution()
    .manifest_digest_at(
        &packsmith::registry::parse_reference(&format!(
            "{}/e2e-signing-{ns}/misconfigured:0.1.0",
            bed.registry
        ))?,
        "0.1.0",
    )
    .await?;
    ensure!(tags.is_none(), "an unsigned bundle was tagged: {tags:?}");

    // A steady state writes no second signature.
    let before = signature_image(&repo, digest)
        .await?
        .context("sig")?
        .1
        .len();
    let asked = jiff::Timestamp::now().to_string();
    sources
        .patch(
            "signed",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(serde_json::json!({
                "metadata": {"annotations": {packsmith::api::REQUESTED_AT_ANNOTATION: asked}}
            })),
        )
        .await?;
    wait_for(
        &sources,
        "signed",
        Duration::from_secs(60),
        "handled",
        |o| {
            o.status
                .as_ref()
                .and_then(|s| s.last_handled_reconcile_at.as_deref())
                == Some(asked.as_str())
        },
    )
    .await?;
    let after = signature_image(&repo, digest)
        .await?
        .context("sig")?
        .1
        .len();
    assert_eq!(before, after);
    let after_att = att_manifest().await?;
    assert_eq!(
        after_att["layers"], manifest["layers"],
        "a steady state re-attested"
    );
    controller.stop().await
}

/// Waits for each of `ready` to be Ready, and each of `refused` to be Stalled
/// `VerificationFailed` with a Ready message that says why, and no bundle pushed.
async fn verified_and_refused(
    sources: &Api<PackageSource>,
    ready: &[&str],
    refused: &[(&str, &str)],
) -> anyhow::Result<()> {
    for name in ready {
        wait_for(sources, name, Duration::from_secs(60), "Ready", |o| {
            has(o, types::READY, "True", reasons::SUCCEEDED)
        })
        .await?;
    }
    for (name, says) in refused {
        let stalled = wait_for(
            sources,
            name,
            Duration::from_secs(60),
            "Stalled VerificationFailed",
            |o| has(o, types::STALLED, "True", reasons::VERIFICATION_FAILED),
        )
        .await?;
        let message = condition(&stalled, types::READY)
            .map(|c| c.message.clone())
            .unwrap_or_default();
        ensure!(message.contains(says), "{name}: {message}");
        ensure!(
            stalled.status.and_then(|s| s.bundle).is_none(),
            "{name}: a bundle was pushed"
        );
    }
    Ok(())
}

/// `verify` of registry contents: a signed image and a signed bundle are synced and
/// published; an unsigned image and one signed by another key are Stalled
/// `VerificationFailed`, and nothing of theirs is pushed.
async fn upstreams_verified() -> anyhow::Result<()> {
    let bed = bed();
    let client = bed.client().await?;
    let ns = namespace(&client, "verify").await?;
    let work = tempfile::tempdir()?;
    let dir = work.path();
    packsmith_ok(dir, "", &["generate-key-pair"])?;
    packsmith_ok(
        dir,
        "",
        &["generate-key-pair", "--output-key-prefix", "other"],
    )?;
    let upstream = format!("{}/e2e-verify-{ns}/upstream", bed.registry);
    let bundle_files = bundle_dir(dir, "upstream")?;
    let push = |flag: &str, tag: &str, key: Option<&str>| {
        let target = format!("{upstream}:{tag}");
        // Each tag its own content, so its own digest and signatures.
        let image_files = dir.join(format!("image-{tag}"));
        std::fs::create_dir_all(&image_files)?;
        std::fs::write(
            image_files.join("app.yaml"),
            format!("kind: ConfigMap # {tag}\n"),
        )?;
        let files = if flag == "-b" {
            &bundle_files
        } else {
            &image_files
        };
        let mut args = vec![
            "push",
            flag,
            target.as_str(),
            "-f",
            files.to_str().unwrap_or_default(),
            "--registry-insecure-host",
            bed.registry.as_str(),
        ];
        if let Some(key) = key {
            args.extend(["--sign-key", key]);
        }
        packsmith_ok(dir, "", &args)
    };
    push("-i", "signed", Some("cosign.key"))?;
    push("-i", "unsigned", None)?;
    push("-i", "foreign", Some("other.key"))?;
    push("-b", "bundle", Some("cosign.key"))?;
    let public = std::fs::read_to_string(dir.join("cosign.pub"))?;
    apply_yaml(
        &client,
        &ns,
        &format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: keys}}\nstringData:\n  cosign.pub: |\n{}",
            public.lines().map(|l| format!("    {l}\n")).collect::<String>()
        ),
    )
    .await?;
    let controller = Running::start(&ns).await?;
    let sources: Api<PackageSource> = Api::namespaced(client.clone(), &ns);
    for (name, kind, tag) in [
        ("signed", "image", "signed"),
        ("bundle", "imgpkgBundle", "bundle"),
        ("unsigned", "image", "unsigned"),
        ("foreign", "image", "foreign"),
    ] {
        let field = if kind == "image" { "url" } else { "image" };
        apply_yaml(
            &client,
            &ns,
            &format!(
                r#"apiVersion: packsmith.dev/v1alpha1
kind: PackageSource
metadata:
  name: {name}
spec:
  package:
    refName: {name}.verify.example.com
    version: 1.0.0
  contents:
  - path: config
    contents:
    - path: upstream
      excludePaths: [".imgpkg/**"]
      {kind}:
        {field}: {upstream}:{tag}
        verify:
          provider: cosign
          secretRef: {{name: keys}}
  bundle:
    repository: {}/e2e-verify-{ns}/{name}
    insecure: true
"#,
                bed.registry
            ),
        )
        .await?;
    }
    verified_and_refused(
        &sources,
        &["signed", "bundle"],
        &[
            ("unsigned", "has no cosign signature"),
            ("foreign", "signature of another key"),
        ],
    )
    .await?;
    controller.stop().await
}

/// git with the e2e identity and `GNUPGHOME`, in `dir`.
fn git_signing(dir: &Path, gnupg: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("git")
        .current_dir(dir)
        .args([
            "-c",
            "user.name=e2e",
            "-c",
            "user.email=e2e@packsmith.dev",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .env("GNUPGHOME", gnupg)
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()?;
    ensure!(
        out.status.success(),
        "git {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

/// A private GNUPGHOME for one test; its agent is stopped when it is dropped.
struct Gnupg {
    home: PathBuf,
}

impl Gnupg {
    fn new(parent: &Path) -> anyhow::Result<Self> {
        let home = parent.join("gnupg");
        std::fs::create_dir_all(&home)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700))?;
        }
        Ok(Self { home })
    }

    /// `gpg --batch` (no passphrase) with `args`; its stdout.
    fn run(&self, args: &[&str]) -> anyhow::Result<Vec<u8>> {
        let out = Command::new("gpg")
            .args(["--batch", "--passphrase", ""])
            .args(args)
            .env("GNUPGHOME", &self.home)
            .output()
            .context("running gpg")?;
        ensure!(
            out.status.success(),
            "gpg {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(out.stdout)
    }

    /// A new signing key of `algorithm` for `uid`; its fingerprint.
    fn key(&self, uid: &str, algorithm: &str) -> anyhow::Result<String> {
        self.run(&["--quick-gen-key", uid, algorithm, "sign", "never"])?;
        String::from_utf8(self.run(&["--with-colons", "--list-secret-keys", uid])?)?
            .lines()
            .find_map(|l| {
                l.strip_prefix("fpr:")
                    .map(|f| f.trim_matches(':').to_owned())
            })
            .context("gpg printed no fingerprint")
    }
}

impl Drop for Gnupg {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf")
            .args(["--kill", "all"])
            .env("GNUPGHOME", &self.home)
            .output();
    }
}

/// vendir's `git.verification` with real signatures made by git, gpg and ssh-keygen: a tag
/// signed by a trusted OpenPGP key and a commit signed by a trusted SSH key are synced; a tag
/// signed by another key, and an annotated tag with no signature (on a signed commit: vendir
/// verifies the tag), are Stalled `VerificationFailed`.
async fn git_signatures() -> anyhow::Result<()> {
    let bed = bed();
    let client = bed.client().await?;
    let ns = namespace(&client, "gitsig").await?;
    let tmp = tempfile::tempdir()?;
    let gpg = Gnupg::new(tmp.path())?;
    let gnupg = gpg.home.clone();
    let trusted = gpg.key("Trusted <trusted@example.com>", "ed25519")?;
    let forger = gpg.key("Forger <forger@example.com>", "ed25519")?;
    let ssh_key = tmp.path().join("ssh-signer");
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "signer", "-f"])
        .arg(&ssh_key)
        .output()?;
    ensure!(
        out.status.success(),
        "ssh-keygen: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let work = tmp.path().join("work");
    std::fs::create_dir_all(work.join("config"))?;
    let g = |args: &[&str]| git_signing(&work, &gnupg, args);
    g(&["init", "-q", "."])?;
    std::fs::write(work.join("config/app.yaml"), "kind: ConfigMap # one\n")?;
    g(&["add", "-A"])?;
    g(&[
        "-c",
        &format!("user.signingkey={trusted}"),
        "commit",
        "-q",
        "-S",
        "-m",
        "one",
    ])?;
    g(&[
        "-c",
        &format!("user.signingkey={trusted}"),
        "tag",
        "-s",
        "v1.0.0",
        "-m",
        "v1.0.0",
    ])?;
    g(&[
        "-c",
        &format!("user.signingkey={forger}"),
        "tag",
        "-s",
        "v1.0.1",
        "-m",
        "v1.0.1",
    ])?;
    std::fs::write(work.join("config/app.yaml"), "kind: ConfigMap # two\n")?;
    g(&["add", "-A"])?;
    let ssh_pub = format!("{}.pub", ssh_key.display());
    g(&[
        "-c",
        "gpg.format=ssh",
        "-c",
        &format!("user.signingkey={ssh_pub}"),
        "commit",
        "-q",
        "-S",
        "-m",
        "two",
    ])?;
    g(&["tag", "-a", "v2.0.0", "-m", "v2.0.0 (unsigned)"])?;
    let name = format!("e2e-gitsig-{ns}");
    let bare = bed.git_dir.join(format!("{name}.git"));
    let _ = std::fs::remove_dir_all(&bare);
    g(&["init", "-q", "--bare", bare.to_str().context("utf-8 path")?])?;
    g(&[
        "push",
        "-q",
        bare.to_str().context("utf-8 path")?,
        "main",
        "--tags",
    ])?;

    let armored = String::from_utf8(gpg.run(&["--armor", "--export", &trusted])?)?;
    let ssh_line = std::fs::read_to_string(&ssh_pub)?;
    let indent = |text: &str| {
        text.lines()
            .map(|l| format!("    {l}\n"))
            .collect::<String>()
    };
    apply_yaml(
        &client,
        &ns,
        &format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: signers}}\nstringData:\n  \
             trusted.asc: |\n{}  ssh: |\n{}",
            indent(&armored),
            indent(&ssh_line)
        ),
    )
    .await?;
    let controller = Running::start(&ns).await?;
    let sources: Api<PackageSource> = Api::namespaced(client.clone(), &ns);
    for (source, reference) in [
        ("pgp-tag", "v1.0.0"),
        ("ssh-commit", "main"),
        ("forged-tag", "v1.0.1"),
        ("unsigned-tag", "v2.0.0"),
    ] {
        apply_yaml(
            &client,
            &ns,
            &format!(
                r#"apiVersion: packsmith.dev/v1alpha1
kind: PackageSource
metadata:
  name: {source}
spec:
  package:
    refName: {source}.gitsig.example.com
    version: 1.0.0
  contents:
  - path: config
    contents:
    - path: upstream
      git:
        url: {}/{name}.git
        ref: {reference}
        verification:
          publicKeysSecretRef: {{name: signers}}
  bundle:
    repository: {}/e2e-gitsig-{ns}/{source}
    insecure: true
"#,
                bed.git_url, bed.registry
            ),
        )
        .await?;
    }
    verified_and_refused(
        &sources,
        &["pgp-tag", "ssh-commit"],
        &[
            ("forged-tag", "OpenPGP signature by none of the keys"),
            ("unsigned-tag", "is not signed"),
        ],
    )
    .await?;
    controller.stop().await
}

fn ok(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output()?;
    ensure!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// Helm provenance: charts signed by the real `helm package --sign` (an RSA key made by gpg)
/// on the bed's HTTP chart repository, synced with `verify.provider: helm`. The chart signed
/// by the trusted key syncs; signed by another key, unsigned (no `.prov`), or replaced under
/// its old `.prov`, it is refused, each saying why.
async fn helm_provenance() -> anyhow::Result<()> {
    let bed = bed();
    let helm = super::ship::helm_binary()?;
    let id = support::unique_id()?;
    let tmp = tempfile::tempdir()?;
    let gnupg = Gnupg::new(tmp.path())?;
    gnupg.key("Charts <charts@example.com>", "rsa2048")?;
    gnupg.key("Other <other@example.com>", "rsa2048")?;
    let gpg = |args: &[&str]| gnupg.run(args);
    let secring = tmp.path().join("secring.gpg");
    std::fs::write(&secring, gpg(&["--export-secret-keys"])?)?;
    let trusted = String::from_utf8(gpg(&["--armor", "--export", "charts@example.com"])?)?;
    let other = String::from_utf8(gpg(&["--armor", "--export", "other@example.com"])?)?;

    let www = bed.www_dir.join(format!("e2e-prov-{id}"));
    std::fs::create_dir_all(&www)?;
    let url = format!("{}/e2e-prov-{id}", bed.http_url);
    let helm_home = tmp.path().join(".helm");
    let chart = |name: &str, note: &str| -> anyhow::Result<PathBuf> {
        let dir = tmp.path().join("charts").join(name);
        std::fs::create_dir_all(dir.join("templates"))?;
        std::fs::write(
            dir.join("Chart.yaml"),
            format!("apiVersion: v2\nname: {name}\nversion: 0.1.0\n"),
        )?;
        std::fs::write(
            dir.join("templates/cm.yaml"),
            format!(
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}}}\ndata: {{note: {note}}}\n"
            ),
        )?;
        Ok(dir)
    };
    let package = |dir: &Path, signer: Option<&str>| -> anyhow::Result<()> {
        let mut cmd = Command::new(&helm);
        cmd.arg("package").arg(dir).arg("-d").arg(&www);
        if let Some(signer) = signer {
            cmd.args(["--sign", "--key", signer, "--keyring"])
                .arg(&secring);
        }
        ok(cmd.env("HELM_CONFIG_HOME", &helm_home))?;
        Ok(())
    };
    package(&chart("trusted", "a")?, Some("charts@example.com"))?;
    package(&chart("foreign", "a")?, Some("other@example.com"))?;
    package(&chart("unsigned", "a")?, None)?;
    // Signed, then replaced by other content under the same name; the old .prov stays.
    package(&chart("replaced", "a")?, Some("charts@example.com"))?;
    package(&chart("replaced", "b")?, None)?;
    ok(Command::new(&helm)
        .args(["repo", "index"])
        .arg(&www)
        .args(["--url", &url])
        .env("HELM_CONFIG_HOME", &helm_home))?;

    let indent = |text: &str| {
        text.lines()
            .map(|l| format!("    {l}\n"))
            .collect::<String>()
    };
    let sync = |name: &str, keys: &str| -> anyhow::Result<(PathBuf, Output)> {
        // A directory per run: a second run in the same one would find it synced (the warm
        // path, which verified it the first time).
        let dir = tempfile::tempdir_in(tmp.path())?.keep();
        std::fs::create_dir_all(&dir)?;
        std::fs::write(
            dir.join("vendir.yml"),
            format!(
                "apiVersion: vendir.k14s.io/v1alpha1\nkind: Config\ndirectories:\n- path: vendor\n  \
                 contents:\n  - path: {name}\n    helmChart:\n      name: {name}\n      version: 0.1.0\n      \
                 repository: {{url: {url}}}\n      verify:\n        provider: helm\n        \
                 secretRef: {{name: chart-keys}}\n---\napiVersion: v1\nkind: Secret\nmetadata: \
                 {{name: chart-keys}}\nstringData:\n  keys.asc: |\n{}",
                indent(keys)
            ),
        )?;
        let out = Command::new(env!("CARGO_BIN_EXE_packsmith"))
            .args(["sync", "-f", "vendir.yml"])
            .current_dir(&dir)
            .output()?;
        Ok((dir, out))
    };
    let (dir, out) = sync("trusted", &trusted)?;
    ensure!(
        out.status.success(),
        "trusted: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        dir.join("vendor/trusted/templates/cm.yaml").is_file(),
        "the verified chart was not written"
    );
    for (name, keys, says) in [
        ("trusted", other.as_str(), "signed by none of the keys"),
        ("foreign", trusted.as_str(), "signed by none of the keys"),
        ("unsigned", trusted.as_str(), "no provenance file"),
        ("replaced", trusted.as_str(), "but the chart downloaded is"),
    ] {
        let (_, out) = sync(name, keys)?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(
            !out.status.success()
                && stderr.contains(says)
                && stderr.contains("verification failed"),
            "{name}: {stderr}"
        );
    }
    Ok(())
}

/// `packsmith verify REFERENCE --key cosign.pub` succeeds; the provenance `describe` reads.
fn verified_provenance(dir: &Path, reference: &str) -> anyhow::Result<Value> {
    let verified = packsmith(dir, "", &["verify", reference, "--key", "cosign.pub"])?;
    ensure!(
        verified.status.success(),
        "{reference}: {}",
        String::from_utf8_lossy(&verified.stderr)
    );
    let described: Value = serde_json::from_str(&packsmith_ok(
        dir,
        "",
        &["describe", reference, "-o", "json"],
    )?)?;
    Ok(described["provenance"].clone())
}

/// The CLI's pipeline and repository release sign what they push and attach provenance:
/// `release --sign-key` and `repo release --sign-key` bundles verify with `packsmith verify`,
/// `describe` reads their provenance; a packagesource.yaml that asks for signatures is not
/// released without a key.
async fn cli_release_signed_with_provenance() -> anyhow::Result<()> {
    let bed = bed();
    let id = support::unique_id()?;
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    packsmith_ok(dir, "pw", &["generate-key-pair"])?;
    let name = format!("signed-{id}");
    let package = dir.join("package");
    super::repo::inline_package(&package, &name, "1.0.0", &bed.registry)?;
    let output = dir.join("repo");
    let release = |password: &str, key: Option<&str>| {
        let mut args = vec![
            "release".to_owned(),
            package.display().to_string(),
            "--output-dir".to_owned(),
            output.display().to_string(),
        ];
        if let Some(key) = key {
            args.extend(["--sign-key".to_owned(), key.to_owned()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        packsmith(dir, password, &args)
    };
    let out = release("pw", Some("cosign.key"))?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout)?;
    let bundle = stdout
        .split_whitespace()
        .find(|w| w.contains("@sha256:"))
        .map(|w| w.trim_matches(|c: char| c == '\'' || c == ',' || c == ')' || c == '('))
        .context(stdout.clone())?
        .to_owned();
    let provenance = verified_provenance(dir, &bundle)?;
    assert_eq!(provenance["signatures"], 1, "{provenance}");

    // The spec asks for signatures: without --sign-key nothing is pushed.
    let spec_path = package.join("packagesource.yaml");
    let spec = std::fs::read_to_string(&spec_path)?;
    std::fs::write(
        &spec_path,
        spec.replace(
            "    insecure: true\n",
            "    insecure: true\n    signing:\n      secretRef: {name: cosign}\n",
        ),
    )?;
    let out = release("", None)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && stderr.contains("--sign-key"),
        "{stderr}"
    );

    // The repository bundle: signed, and its provenance lists the package bundle.
    let repository = format!("{}/e2e-signing/repo-{id}", bed.registry);
    let out = packsmith(
        dir,
        "pw",
        &[
            "repo",
            "release",
            "--packages",
            &output.display().to_string(),
            "-b",
            &format!("{repository}:v1"),
            "--sign-key",
            "cosign.key",
        ],
    )?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let provenance = verified_provenance(dir, &format!("{repository}:v1"))?;
    let dependencies = provenance["dependencies"].to_string();
    ensure!(
        dependencies.contains(&format!("oci://{bundle}")),
        "{bundle} not in {dependencies}"
    );
    Ok(())
}
