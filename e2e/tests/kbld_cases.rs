//! kbld's own end-to-end cases, ported as facts: each case's input and the output kbld's
//! tests expect (carvel-dev/kbld `test/e2e/resolve_test.go` and `lock_output_test.go`, quoted
//! per case), run through packsmith's lock stage. Docker Hub is answered by the bed's registry
//! (a `docker.io` mirror) holding the same tags; kbld's digests are Docker Hub's, so the
//! expected texts name digests by what they are (`{1.14.2}`, `{arm64}`) and are filled in with
//! what the bed holds. Where packsmith differs from kbld on purpose, the case says so and
//! asserts packsmith's documented behaviour instead.

use std::collections::BTreeMap;
use std::future::Future;

use anyhow::ensure;
use libtest_mimic::Trial;
use pretty_assertions::assert_eq;

use packsmith::lock::{self, LockConfig, ResolveOptions};
use packsmith::registry::{Mirror, Registry, RegistryOptions};

use crate::support::images::{self, ImageKind};
use crate::support::{self, Bed, bed};

/// `nginx` as the bed serves it: three tags, 1.14.2 a two-platform index as on Docker Hub.
struct Hub {
    registry: Registry,
    /// Placeholder (`1.14.2`, `amd64`, …) → digest.
    digests: BTreeMap<&'static str, String>,
    dir: tempfile::TempDir,
}

impl Hub {
    async fn up(bed: &Bed, case: &str) -> anyhow::Result<Hub> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .subsec_nanos();
        let prefix = format!("e2e-kbld/{case}-{nanos:x}");
        let plain = images::Registry::plain(bed);
        let repository = format!("{prefix}/library/nginx");
        let mut digests = BTreeMap::new();
        for (tag, kind) in [("1.14.1", ImageKind::DockerV2), ("1.15.1", ImageKind::Oci)] {
            let digest = images::push_image(&plain, &repository, tag, kind, tag).await?;
            digests.insert(tag, digest);
        }
        let multi = images::fixture(&repository, "1.14.2", ImageKind::MultiArch, "1.14.2")?;
        images::push_fixture(&plain, &repository, "1.14.2", &multi).await?;
        digests.insert("1.14.2", multi.digest().to_owned());
        for image in &multi.images {
            digests.insert(image.architecture, image.manifest.digest.clone());
        }
        let registry = Registry::new(RegistryOptions {
            mirrors: vec![Mirror {
                from: "docker.io".to_owned(),
                to: format!("{}/{prefix}", bed.registry),
                insecure: true,
            }],
            ..RegistryOptions::default()
        })?;
        Ok(Hub {
            registry,
            digests,
            dir: tempfile::tempdir()?,
        })
    }

    /// `text` with every `{placeholder}` replaced by its digest.
    fn fill(&self, text: &str) -> String {
        self.digests
            .iter()
            .fold(text.to_owned(), |text, (name, digest)| {
                text.replace(&format!("{{{name}}}"), digest)
            })
    }

    /// Locks `input` as kbld reads standard input; returns the manifests as
    /// `kbld -f - --images-annotation=false` prints them, and the ImagesLock as
    /// `--imgpkg-lock-output` writes it.
    async fn lock(
        &self,
        input: &str,
        options: &ResolveOptions,
    ) -> anyhow::Result<(String, String)> {
        let path = self.dir.path().join("input.yml");
        std::fs::write(&path, input)?;
        let config = LockConfig::default();
        let locked = lock::run(&[path], &config, &self.registry, options, None).await?;
        Ok((
            lock::render_manifests(&locked.discovery, &locked.resolution, &config.yaml),
            locked.resolution.lock().to_kbld_yaml()?,
        ))
    }
}

fn trial<F, Fut>(name: &'static str, body: F) -> Trial
where
    F: FnOnce(Hub) -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>>,
{
    Trial::test(format!("kbld_cases::{name}"), move || {
        support::block_on(async move { body(Hub::up(bed(), name).await?).await })
    })
}

pub fn trials() -> Vec<Trial> {
    vec![
        trial("resolve_successful", resolve_successful),
        trial("resolve_with_image_keys", resolve_with_image_keys),
        trial(
            "resolve_with_override_matching_image_repo",
            override_matching_image_repo,
        ),
        trial("resolve_successful_with_search_rules", search_rules),
        trial(
            "resolve_successful_with_duplicate_search_rules",
            duplicate_search_rules,
        ),
        trial("resolve_successful_with_tag_selection", tag_selection),
        trial(
            "resolve_successful_with_platform_selection",
            platform_selection,
        ),
        trial("imgpkg_lock_output_successful", imgpkg_lock_output),
        trial("imgpkg_lock_file_not_in_output", lock_file_not_in_output),
        trial("imgpkg_lock_file_input_successful", lock_file_input),
        trial(
            "digested_image_has_no_origins",
            digested_image_has_no_origins,
        ),
        trial("resolve_with_override", resolve_with_override),
        trial("resolve_invalid_digest", resolve_invalid_digest),
    ]
}

const NGINX: &str = "index.docker.io/library/nginx";

/// `TestResolveSuccessful`: every spelling of a Docker Hub name resolves to the same digest;
/// a digest reference is kept, normalised.
async fn resolve_successful(hub: Hub) -> anyhow::Result<()> {
    let input = "
kind: Object
spec:
- image: nginx:1.14.2
- image: library/nginx:1.14.2
- image: docker.io/library/nginx:1.14.2
- image: index.docker.io/library/nginx:1.14.2
- image: nginx@sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa
";
    let expected = "---
kind: Object
spec:
- image: index.docker.io/library/nginx@{1.14.2}
- image: index.docker.io/library/nginx@{1.14.2}
- image: index.docker.io/library/nginx@{1.14.2}
- image: index.docker.io/library/nginx@{1.14.2}
- image: index.docker.io/library/nginx@sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa
";
    let (out, _) = hub.lock(input, &ResolveOptions::default()).await?;
    assert_eq!(out, hub.fill(expected));
    Ok(())
}

/// `TestResolveWithImageKeys`: an `ImageKeys` document adds key names, at any depth.
async fn resolve_with_image_keys(hub: Hub) -> anyhow::Result<()> {
    let input = "
kind: Object
spec:
- image: nginx:1.14.2
- customImage: nginx:1.14.2
- subPath:
    anotherCustomImage: nginx:1.14.2
---
apiVersion: kbld.k14s.io/v1alpha1
kind: ImageKeys
keys:
- customImage
- anotherCustomImage
";
    let expected = "---
kind: Object
spec:
- image: index.docker.io/library/nginx@{1.14.2}
- customImage: index.docker.io/library/nginx@{1.14.2}
- subPath:
    anotherCustomImage: index.docker.io/library/nginx@{1.14.2}
";
    let (out, _) = hub.lock(input, &ResolveOptions::default()).await?;
    assert_eq!(out, hub.fill(expected));
    Ok(())
}

/// `TestResolveWithOverrideMatchingImageRepo`: `imageRepo` matches the repository whatever
/// follows it (no tag, a tag, a tag and a digest).
async fn override_matching_image_repo(hub: Hub) -> anyhow::Result<()> {
    let input = "
kind: Object
spec:
- image: docker.io/library/not-nginx
- image: docker.io/library/not-nginx:1.14.2
- image: docker.io/library/not-nginx:1.20@sha256:f7988fb6c02e0ce69257d9bd9cf37ae20a60f1df7563c3a2a6abe24160306b8d
---
apiVersion: kbld.k14s.io/v1alpha1
kind: ImageOverrides
overrides:
- imageRepo: docker.io/library/not-nginx
  newImage: docker.io/library/nginx:1.14.2
";
    let expected = "---
kind: Object
spec:
- image: index.docker.io/library/nginx@{1.14.2}
- image: index.docker.io/library/nginx@{1.14.2}
- image: index.docker.io/library/nginx@{1.14.2}
";
    let (out, _) = hub.lock(input, &ResolveOptions::default()).await?;
    assert_eq!(out, hub.fill(expected));
    Ok(())
}

/// `TestResolveSuccessfulWithSearchRules`: key names, value matchers, paths with
/// `allIndexes`/`index`, a nested `yaml` strategy (re-encoded with a leading `---`, as
/// kbld's YAML encoder writes it) and a `none` strategy that leaves `skip` alone.
async fn search_rules(hub: Hub) -> anyhow::Result<()> {
    let input = "
kind: Object
spec:
- image: nginx:1.14.2
- sidecarImage: index.docker.io/library/nginx:1.14.2
- some_key: nginx:1.14.2
- nestedkey:
    data: |
      nested:
        image: nginx:1.14.2
- images:
  - nginx:1.14.2
  - nginxImage: nginx:1.14.2
    nginxImages:
      value: nginx:1.14.2
- image: skip
---
apiVersion: kbld.k14s.io/v1alpha1
kind: Config
searchRules:
- keyMatcher:
    name: sidecarImage
- valueMatcher:
    imageRepo: nginx
- keyMatcher:
    name: data
  updateStrategy:
    yaml:
      searchRules:
      - keyMatcher:
          name: image
- keyMatcher:
    path: [spec, {allIndexes: true}, images, {index: 0}]
- keyMatcher:
    path: [spec, {allIndexes: true}, nginxImage]
- keyMatcher:
    path: [spec, {allIndexes: true}, nginxImages, value]
- valueMatcher:
    image: skip
  updateStrategy:
    none: {}
";
    let expected = "---
kind: Object
spec:
- image: index.docker.io/library/nginx@{1.14.2}
- sidecarImage: index.docker.io/library/nginx@{1.14.2}
- some_key: index.docker.io/library/nginx@{1.14.2}
- nestedkey:
    data: |
      ---
      nested:
        image: index.docker.io/library/nginx@{1.14.2}
- images:
  - index.docker.io/library/nginx@{1.14.2}
  - nginxImage: index.docker.io/library/nginx@{1.14.2}
    nginxImages:
      value: index.docker.io/library/nginx@{1.14.2}
- image: skip
";
    let (out, _) = hub.lock(input, &ResolveOptions::default()).await?;
    assert_eq!(out, hub.fill(expected));
    Ok(())
}

/// `TestResolveSuccessfulWithDuplicateSearchRules`: a rule given twice counts once.
async fn duplicate_search_rules(hub: Hub) -> anyhow::Result<()> {
    let input = "
kind: Object
spec:
- sidecarImage: index.docker.io/library/nginx:1.14.2
---
apiVersion: kbld.k14s.io/v1alpha1
kind: Config
searchRules:
- keyMatcher:
    name: sidecarImage
- keyMatcher:
    name: sidecarImage
";
    let expected = "---
kind: Object
spec:
- sidecarImage: index.docker.io/library/nginx@{1.14.2}
";
    let (out, _) = hub.lock(input, &ResolveOptions::default()).await?;
    assert_eq!(out, hub.fill(expected));
    Ok(())
}

/// `TestResolveSuccessfulWithTagSelection`: the highest tag within the constraints, its
/// `resolved` origin naming the chosen tag.
async fn tag_selection(hub: Hub) -> anyhow::Result<()> {
    let input = "
kind: Object
spec:
- image: nginx1
- image: nginx2
---
apiVersion: kbld.k14s.io/v1alpha1
kind: ImageOverrides
overrides:
- image: nginx1
  newImage: index.docker.io/library/nginx
  tagSelection:
    semver:
      constraints: \"<=1.14.2\"
- image: nginx2
  newImage: index.docker.io/library/nginx
  tagSelection:
    semver:
      constraints: \"<1.14.2\"
";
    let expected = "---
kind: Object
spec:
- image: index.docker.io/library/nginx@{1.14.2}
- image: index.docker.io/library/nginx@{1.14.1}
";
    let (out, lock) = hub.lock(input, &ResolveOptions::default()).await?;
    assert_eq!(out, hub.fill(expected));
    for (id, tag) in [("nginx1", "1.14.2"), ("nginx2", "1.14.1")] {
        let origins = format!(
            "    kbld.carvel.dev/id: {id}\n    kbld.carvel.dev/origins: |\n      - resolved:\n          \
             tag: {tag}\n          url: {NGINX}:{tag}\n"
        );
        ensure!(lock.contains(&origins), "{origins}\nnot in\n{lock}");
    }
    Ok(())
}

/// `TestResolveSuccessfulWithPlatformSelectionConfig` and `…WithGlobalFlag`: each
/// override's own platform wins, `--platform` applies to the rest; the image taken out of
/// the index records a `platformSelected` origin after the `resolved` one.
async fn platform_selection(hub: Hub) -> anyhow::Result<()> {
    let input = "
kind: Object
spec:
- image: nginx-arm64
- image: nginx-amd64
- image: nginx-all
---
apiVersion: kbld.k14s.io/v1alpha1
kind: ImageOverrides
overrides:
- image: nginx-arm64
  newImage: index.docker.io/library/nginx:1.14.2
  platformSelection:
    os: linux
    architecture: arm64
- image: nginx-amd64
  newImage: index.docker.io/library/nginx:1.14.2
  platformSelection:
    os: linux
    architecture: amd64
- image: nginx-all
  newImage: index.docker.io/library/nginx:1.14.2
";
    let selected = |architecture: &str| {
        format!(
            "      - resolved:\n          tag: 1.14.2\n          url: {NGINX}:1.14.2\n      - \
             platformSelected:\n          architecture: {architecture}\n          index: \
             {NGINX}@{{1.14.2}}\n          os: linux\n  image: {NGINX}@{{{architecture}}}\n"
        )
    };
    let (out, lock) = hub.lock(input, &ResolveOptions::default()).await?;
    let expected = "---
kind: Object
spec:
- image: index.docker.io/library/nginx@{arm64}
- image: index.docker.io/library/nginx@{amd64}
- image: index.docker.io/library/nginx@{1.14.2}
";
    assert_eq!(out, hub.fill(expected));
    for architecture in ["arm64", "amd64"] {
        let entry = hub.fill(&selected(architecture));
        ensure!(lock.contains(&entry), "{entry}\nnot in\n{lock}");
    }
    ensure!(
        lock.contains(&hub.fill(&format!(
            "      - resolved:\n          tag: 1.14.2\n          url: {NGINX}:1.14.2\n  image: \
             {NGINX}@{{1.14.2}}\n"
        ))),
        "nginx-all is the index: {lock}"
    );

    let options = ResolveOptions {
        platform: Some("linux/amd64".parse().map_err(anyhow::Error::msg)?),
        ..ResolveOptions::default()
    };
    let (out, _) = hub.lock(input, &options).await?;
    let expected = "---
kind: Object
spec:
- image: index.docker.io/library/nginx@{arm64}
- image: index.docker.io/library/nginx@{amd64}
- image: index.docker.io/library/nginx@{amd64}
";
    assert_eq!(out, hub.fill(expected));
    Ok(())
}

const LOCK_INPUT: &str = "
images:
- image: nginx:1.14.2
- image: sample-app
- sidecarImage: sample-app
- - sample-app
---
apiVersion: kbld.k14s.io/v1alpha1
kind: ImageOverrides
overrides:
- image: sample-app
  newImage: nginx:1.15.1
---
apiVersion: kbld.k14s.io/v1alpha1
kind: ImageKeys
keys:
- sidecarImage
---
apiVersion: kbld.k14s.io/v1alpha1
kind: Config
searchRules:
- keyMatcher:
    path: [images, {allIndexes: true}, {index: 0}]
";

/// kbld's `imgLockWithResolvedOrigins`.
const LOCK_WITH_RESOLVED_ORIGINS: &str = "---
apiVersion: imgpkg.carvel.dev/v1alpha1
images:
- annotations:
    kbld.carvel.dev/id: nginx:1.14.2
    kbld.carvel.dev/origins: |
      - resolved:
          tag: 1.14.2
          url: nginx:1.14.2
  image: index.docker.io/library/nginx@{1.14.2}
- annotations:
    kbld.carvel.dev/id: sample-app
    kbld.carvel.dev/origins: |
      - resolved:
          tag: 1.15.1
          url: nginx:1.15.1
  image: index.docker.io/library/nginx@{1.15.1}
kind: ImagesLock
";

/// `TestImgpkgLockOutputSuccessful`: overrides, ImageKeys and an index path together; the
/// ImagesLock byte for byte.
async fn imgpkg_lock_output(hub: Hub) -> anyhow::Result<()> {
    let expected = "---
images:
- image: index.docker.io/library/nginx@{1.14.2}
- image: index.docker.io/library/nginx@{1.15.1}
- sidecarImage: index.docker.io/library/nginx@{1.15.1}
- - index.docker.io/library/nginx@{1.15.1}
";
    let (out, lock) = hub.lock(LOCK_INPUT, &ResolveOptions::default()).await?;
    assert_eq!(out, hub.fill(expected));
    assert_eq!(lock, hub.fill(LOCK_WITH_RESOLVED_ORIGINS));
    Ok(())
}

/// `TestImgpkgLockFileNotInOutput`: an ImagesLock is configuration, not a manifest.
async fn lock_file_not_in_output(hub: Hub) -> anyhow::Result<()> {
    let input = "---
apiVersion: imgpkg.carvel.dev/v1alpha1
images:
- annotations:
    kbld.carvel.dev/id: index.docker.io/library/nginx@{1.15.1}
  image: index.docker.io/library/nginx@{1.15.1}
kind: ImagesLock
";
    let (out, _) = hub
        .lock(&hub.fill(input), &ResolveOptions::default())
        .await?;
    assert_eq!(out, "");
    Ok(())
}

/// `TestImgpkgLockFileInputSuccessful`: an ImagesLock in the input answers for the
/// references it records. kbld then appends a `preresolved` origin to each entry it
/// re-writes; packsmith reproduces the entry as recorded, on purpose (ARCHITECTURE.md: a
/// re-lock of an unchanged package changes nothing), so only the manifests are compared.
async fn lock_file_input(hub: Hub) -> anyhow::Result<()> {
    let input = format!(
        "\nimages:\n- image: nginx:1.14.2\n- image: sample-app\n{}",
        hub.fill(LOCK_WITH_RESOLVED_ORIGINS)
    );
    let expected = "---
images:
- image: index.docker.io/library/nginx@{1.14.2}
- image: index.docker.io/library/nginx@{1.15.1}
";
    let (out, lock) = hub.lock(&input, &ResolveOptions::default()).await?;
    assert_eq!(out, hub.fill(expected));
    assert_eq!(lock, hub.fill(LOCK_WITH_RESOLVED_ORIGINS));
    Ok(())
}

/// `TestImgpkgLockOutputSuccessfulDigestedImageHasNoOrigins`: digest references are kept
/// and recorded without origins, in kbld's order.
async fn digested_image_has_no_origins(hub: Hub) -> anyhow::Result<()> {
    let a = "sha256:f7988fb6c02e0ce69257d9bd9cf37ae20a60f1df7563c3a2a6abe24160306b8d";
    let b = "sha256:4a5573037f358b6cdfa2f3e8a9c33a5cf11bcd1675ca72ca76fbe5bd77d0d682";
    let input = format!("\nimages:\n- image: {NGINX}@{a}\n- image: {NGINX}@{b}\n");
    let expected_lock = format!(
        "---\napiVersion: imgpkg.carvel.dev/v1alpha1\nimages:\n- annotations:\n    \
         kbld.carvel.dev/id: {NGINX}@{b}\n  image: {NGINX}@{b}\n- annotations:\n    \
         kbld.carvel.dev/id: {NGINX}@{a}\n  image: {NGINX}@{a}\nkind: ImagesLock\n"
    );
    let (out, lock) = hub.lock(&input, &ResolveOptions::default()).await?;
    assert_eq!(
        out,
        format!("---\nimages:\n- image: {NGINX}@{a}\n- image: {NGINX}@{b}\n")
    );
    assert_eq!(lock, expected_lock);
    Ok(())
}

/// `TestResolveWithOverride`: an override resolves its newImage. kbld also takes a
/// `preresolved` newImage that is a tag (`docker.io/library/nginx:1.14.2`) as is; packsmith
/// refuses it, on purpose: an ImagesLock holds digests only and imgpkg would refuse the lock
/// at push time, far from the cause.
async fn resolve_with_override(hub: Hub) -> anyhow::Result<()> {
    let input = "
kind: Object
spec:
- image: unknown
---
apiVersion: kbld.k14s.io/v1alpha1
kind: ImageOverrides
overrides:
- image: unknown
  newImage: docker.io/library/nginx:1.14.2
";
    let (out, _) = hub.lock(input, &ResolveOptions::default()).await?;
    assert_eq!(
        out,
        hub.fill("---\nkind: Object\nspec:\n- image: index.docker.io/library/nginx@{1.14.2}\n")
    );

    let preresolved_tag = "
kind: Object
spec:
- image: final
---
apiVersion: kbld.k14s.io/v1alpha1
kind: ImageOverrides
overrides:
- image: final
  newImage: docker.io/library/nginx:1.14.2
  preresolved: true
";
    let error = hub
        .lock(preresolved_tag, &ResolveOptions::default())
        .await
        .expect_err("a preresolved tag is not a digest")
        .to_string();
    ensure!(
        error.contains("final") && error.contains("docker.io/library/nginx:1.14.2"),
        "{error}"
    );
    Ok(())
}

/// `TestResolveInvalidDigest`: a malformed digest is an error naming the reference.
async fn resolve_invalid_digest(hub: Hub) -> anyhow::Result<()> {
    let error = hub
        .lock(
            "\nkind: Object\nspec:\n- image: nginx@sha256:digest\n",
            &ResolveOptions::default(),
        )
        .await
        .expect_err("invalid digest")
        .to_string();
    ensure!(error.contains("nginx@sha256:digest"), "{error}");
    Ok(())
}
