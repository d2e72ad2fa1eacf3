//! imgpkg's bundle metadata: `.imgpkg/images.yml` (ImagesLock), `.imgpkg/bundle.yml` (Bundle)
//! and the `--lock-output` BundleLock.
//!
//! Upstream: imgpkg `pkg/imgpkg/lockconfig/images_lock.go`, `bundle_lock.go`,
//! `pkg/imgpkg/bundle/bundle_config.go`; kbld `pkg/kbld/cmd/resolve.go` for how kbld writes an
//! ImagesLock (`--imgpkg-lock-output`) and its annotations.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::error::expect_type;
use super::{Error, yaml};

pub const API_VERSION: &str = "imgpkg.carvel.dev/v1alpha1";
pub const IMAGES_LOCK_KIND: &str = "ImagesLock";
pub const BUNDLE_KIND: &str = "Bundle";
pub const BUNDLE_LOCK_KIND: &str = "BundleLock";

/// `kbld.carvel.dev/id`: the image reference as written in the manifest, before overrides.
pub const KBLD_ID_ANNOTATION: &str = "kbld.carvel.dev/id";
/// `kbld.carvel.dev/origins`: a YAML list (as a string) of where the digest came from.
pub const KBLD_ORIGINS_ANNOTATION: &str = "kbld.carvel.dev/origins";

/// `.imgpkg/images.yml`: every image a bundle references, by digest.
///
/// imgpkg parses it strictly (`yaml.UnmarshalStrict`), so unknown fields are errors here too.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImagesLock {
    pub api_version: String,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<ImageRef>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageRef {
    /// A digest reference, `repo@sha256:<hex>`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub image: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Default for ImagesLock {
    fn default() -> Self {
        ImagesLock {
            api_version: API_VERSION.to_owned(),
            kind: IMAGES_LOCK_KIND.to_owned(),
            images: Vec::new(),
        }
    }
}

impl ImagesLock {
    pub fn new() -> Self {
        ImagesLock::default()
    }

    /// Parses and validates an images.yml as imgpkg does.
    pub fn from_yaml(text: &str) -> Result<Self, Error> {
        let lock: ImagesLock = yaml::from_str("ImagesLock", text)?;
        lock.validate()?;
        Ok(lock)
    }

    /// imgpkg's checks: the type, and every image a digest reference.
    pub fn validate(&self) -> Result<(), Error> {
        expect_type(
            "ImagesLock",
            API_VERSION,
            IMAGES_LOCK_KIND,
            &self.api_version,
            &self.kind,
        )?;
        for image in &self.images {
            if let Some(problem) = digest_reference_problem(&image.image) {
                return Err(Error::invalid(
                    "ImagesLock",
                    format!("image {:?} {problem}", image.image),
                ));
            }
        }
        Ok(())
    }

    /// Adds an image unless one with the same digest reference is already there (imgpkg's
    /// `AddImageRef`).
    pub fn add_image(&mut self, image: ImageRef) {
        if !self.images.iter().any(|i| i.image == image.image) {
            self.images.push(image);
        }
    }

    /// The file kbld writes with `--imgpkg-lock-output`: a leading `---`, keys sorted, entries
    /// sorted by original reference (`kbld.carvel.dev/id`, else the image) — one per
    /// reference, even when two resolve to the same digest: kbld's `emitLockOutput` appends
    /// every processed image (`pkg/kbld/cmd/resolve.go`), and kapp-controller's kbld step looks
    /// each reference up by its id.
    pub fn to_kbld_yaml(&self) -> Result<String, Error> {
        self.validate()?;
        let mut images: Vec<&ImageRef> = self.images.iter().collect();
        images.sort_by(|a, b| a.original_reference().cmp(b.original_reference()));
        let sorted = ImagesLock {
            images: images.into_iter().cloned().collect(),
            ..self.clone()
        };
        Ok(format!("---\n{}", yaml::to_go_yaml("ImagesLock", &sorted)?))
    }
}

impl ImageRef {
    /// An entry as kbld records it: resolved digest reference, original reference, origins.
    pub fn kbld(
        image: impl Into<String>,
        original: impl Into<String>,
        origins: &[ImageOrigin],
    ) -> Self {
        let mut annotations = BTreeMap::new();
        annotations.insert(KBLD_ID_ANNOTATION.to_owned(), original.into());
        if !origins.is_empty() {
            annotations.insert(
                KBLD_ORIGINS_ANNOTATION.to_owned(),
                ImageOrigin::annotation(origins),
            );
        }
        ImageRef {
            image: image.into(),
            annotations,
        }
    }

    /// The reference as written in the manifest (`kbld.carvel.dev/id`), else the image.
    pub fn original_reference(&self) -> &str {
        self.annotations
            .get(KBLD_ID_ANNOTATION)
            .map_or(self.image.as_str(), String::as_str)
    }
}

/// One entry of `kbld.carvel.dev/origins`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ImageOrigin {
    /// A tag kbld resolved against the registry.
    Resolved { url: String, tag: String },
    /// A reference taken as given (an override with `preresolved: true`, or an ImagesLock).
    Preresolved { url: String },
    /// One platform's image taken out of an index (`platformSelection`, `--platform`); kbld's
    /// `OriginPlatformSelected`, every field `omitempty`.
    PlatformSelected {
        /// The index as a digest reference.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        index: String,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        os: String,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        architecture: String,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        variant: String,
    },
}

impl ImageOrigin {
    /// The annotation text: the origins as YAML, the way kbld marshals them.
    pub fn annotation(origins: &[ImageOrigin]) -> String {
        // Serialising a plain enum of string fields cannot fail.
        let value = serde_json::to_value(origins).unwrap_or_default();
        yaml::value_to_go_yaml(&value)
    }

    /// Parses an origins annotation; unknown origin kinds (kbld also records `local` and `git`
    /// builds) are skipped.
    pub fn parse_annotation(text: &str) -> Result<Vec<ImageOrigin>, Error> {
        let entries: Vec<serde_json::Value> = yaml::from_str(KBLD_ORIGINS_ANNOTATION, text)?;
        Ok(entries
            .into_iter()
            .filter_map(|entry| serde_json::from_value(entry).ok())
            .collect())
    }
}

/// Why `reference` is not `repository@sha256:<64 hex>` (go-containerregistry's `NewDigest`).
pub fn digest_reference_problem(reference: &str) -> Option<&'static str> {
    let Some((repository, digest)) = reference.rsplit_once('@') else {
        return Some("is not a digest reference (expected repository@sha256:<64 hex digits>)");
    };
    if repository.is_empty() {
        return Some("has no repository before '@'");
    }
    let Some(hex) = digest.strip_prefix("sha256:") else {
        return Some("has a digest that is not sha256:<64 hex digits>");
    };
    if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Some("has a sha256 digest that is not 64 lower-case hex digits");
    }
    None
}

/// `.imgpkg/bundle.yml`: optional descriptive metadata of a bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Bundle {
    pub api_version: String,
    pub kind: String,
    #[serde(default)]
    pub metadata: BundleMetadata,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub authors: Vec<BundleAuthor>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub websites: Vec<BundleWebsite>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleMetadata {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleAuthor {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub email: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleWebsite {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub url: String,
}

impl Bundle {
    pub fn new(name: impl Into<String>) -> Self {
        Bundle {
            api_version: API_VERSION.to_owned(),
            kind: BUNDLE_KIND.to_owned(),
            metadata: BundleMetadata { name: name.into() },
            authors: Vec::new(),
            websites: Vec::new(),
        }
    }

    pub fn from_yaml(text: &str) -> Result<Self, Error> {
        let bundle: Bundle = yaml::from_str("imgpkg Bundle", text)?;
        expect_type(
            "imgpkg Bundle",
            API_VERSION,
            BUNDLE_KIND,
            &bundle.api_version,
            &bundle.kind,
        )?;
        Ok(bundle)
    }

    pub fn to_yaml(&self) -> Result<String, Error> {
        yaml::to_go_yaml("imgpkg Bundle", self)
    }
}

/// What `imgpkg push --lock-output` writes: the pushed bundle by digest and tag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BundleLock {
    pub api_version: String,
    pub kind: String,
    pub bundle: BundleRef,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleRef {
    /// `repo@sha256:<hex>`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub image: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tag: String,
}

impl BundleLock {
    pub fn new(image: impl Into<String>, tag: impl Into<String>) -> Self {
        BundleLock {
            api_version: API_VERSION.to_owned(),
            kind: BUNDLE_LOCK_KIND.to_owned(),
            bundle: BundleRef {
                image: image.into(),
                tag: tag.into(),
            },
        }
    }

    pub fn from_yaml(text: &str) -> Result<Self, Error> {
        let lock: BundleLock = yaml::from_str("BundleLock", text)?;
        lock.validate()?;
        Ok(lock)
    }

    pub fn validate(&self) -> Result<(), Error> {
        expect_type(
            "BundleLock",
            API_VERSION,
            BUNDLE_LOCK_KIND,
            &self.api_version,
            &self.kind,
        )?;
        match digest_reference_problem(&self.bundle.image) {
            Some(problem) => Err(Error::invalid(
                "BundleLock",
                format!("bundle image {:?} {problem}", self.bundle.image),
            )),
            None => Ok(()),
        }
    }

    /// Byte for byte what imgpkg writes.
    pub fn to_yaml(&self) -> Result<String, Error> {
        self.validate()?;
        Ok(format!("---\n{}", yaml::to_go_yaml("BundleLock", self)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;

    const DIGEST_A: &str =
        "sha256:df7f0b5186ddb84eccb383ed4b10ec8b8e2a52e0e599ec51f98086af5f4b4938";
    const DIGEST_B: &str =
        "sha256:cd9bf3d48b6b8402a2a8b11953f9dc0275ba4beec14da47e31823a0515cde7e2";

    #[test]
    fn images_lock_writer_matches_kbld() {
        let mut lock = ImagesLock::new();
        // Added out of order, and with a duplicate digest, to exercise sorting and dedup.
        lock.images.push(ImageRef::kbld(
            format!("quay.io/jetstack/cert-manager-controller@{DIGEST_B}"),
            "quay.io/jetstack/cert-manager-controller:v1.9.1",
            &[ImageOrigin::Resolved {
                url: "quay.io/jetstack/cert-manager-controller:v1.9.1".to_owned(),
                tag: "v1.9.1".to_owned(),
            }],
        ));
        lock.images.push(ImageRef::kbld(
            format!("quay.io/jetstack/cert-manager-cainjector@{DIGEST_A}"),
            "quay.io/jetstack/cert-manager-cainjector:v1.9.1",
            &[ImageOrigin::Resolved {
                url: "quay.io/jetstack/cert-manager-cainjector:v1.9.1".to_owned(),
                tag: "v1.9.1".to_owned(),
            }],
        ));
        lock.images.push(ImageRef::kbld(
            format!("quay.io/jetstack/cert-manager-controller@{DIGEST_B}"),
            "quay.io/jetstack/cert-manager-controller:v1.9",
            &[],
        ));
        let expected = format!(
            "---
apiVersion: imgpkg.carvel.dev/v1alpha1
images:
- annotations:
    kbld.carvel.dev/id: quay.io/jetstack/cert-manager-cainjector:v1.9.1
    kbld.carvel.dev/origins: |
      - resolved:
          tag: v1.9.1
          url: quay.io/jetstack/cert-manager-cainjector:v1.9.1
  image: quay.io/jetstack/cert-manager-cainjector@{DIGEST_A}
- annotations:
    kbld.carvel.dev/id: quay.io/jetstack/cert-manager-controller:v1.9
  image: quay.io/jetstack/cert-manager-controller@{DIGEST_B}
- annotations:
    kbld.carvel.dev/id: quay.io/jetstack/cert-manager-controller:v1.9.1
    kbld.carvel.dev/origins: |
      - resolved:
          tag: v1.9.1
          url: quay.io/jetstack/cert-manager-controller:v1.9.1
  image: quay.io/jetstack/cert-manager-controller@{DIGEST_B}
kind: ImagesLock
"
        );
        assert_eq!(lock.to_kbld_yaml().expect("write"), expected);
    }

    #[test]
    fn bundle_lock_writer_matches_imgpkg() {
        let lock = BundleLock::new(format!("registry.example.com/pkg@{DIGEST_A}"), "1.0.0");
        assert_eq!(
            lock.to_yaml().expect("write"),
            format!(
                "---\napiVersion: imgpkg.carvel.dev/v1alpha1\nbundle:\n  image: \
                 registry.example.com/pkg@{DIGEST_A}\n  tag: 1.0.0\nkind: BundleLock\n"
            )
        );
        assert_eq!(
            BundleLock::from_yaml(&lock.to_yaml().expect("write")).expect("read"),
            lock
        );
    }

    #[test]
    fn images_lock_rejects_unknown_fields() {
        let text = format!(
            "apiVersion: imgpkg.carvel.dev/v1alpha1\nkind: ImagesLock\nimages:\n- image: \
             a/b@{DIGEST_A}\n  annotation: {{}}\n"
        );
        let error = ImagesLock::from_yaml(&text)
            .expect_err("unknown field")
            .to_string();
        assert!(error.contains("annotation"), "{error}");

        let text = "apiVersion: imgpkg.carvel.dev/v1alpha1\nkind: ImagesLock\nextra: 1\n";
        assert!(ImagesLock::from_yaml(text).is_err());
    }

    #[test]
    fn images_lock_rejects_tag_references() {
        let text = "apiVersion: imgpkg.carvel.dev/v1alpha1\nkind: ImagesLock\nimages:\n- image: \
                    nginx:1.25\n";
        let error = ImagesLock::from_yaml(text).expect_err("tag").to_string();
        assert!(error.contains("not a digest reference"), "{error}");
    }

    #[test]
    fn origins_annotation_round_trips() {
        let origins = vec![
            ImageOrigin::Resolved {
                url: "bitnami/external-dns:0.11.0".to_owned(),
                tag: "0.11.0".to_owned(),
            },
            ImageOrigin::Preresolved {
                url: format!("index.docker.io/bitnami/external-dns@{DIGEST_A}"),
            },
        ];
        let text = ImageOrigin::annotation(&origins);
        assert_eq!(
            text,
            format!(
                "- resolved:\n    tag: 0.11.0\n    url: bitnami/external-dns:0.11.0\n- \
                 preresolved:\n    url: index.docker.io/bitnami/external-dns@{DIGEST_A}\n"
            )
        );
        assert_eq!(
            ImageOrigin::parse_annotation(&text).expect("parse"),
            origins
        );
    }

    /// kbld's own expected output (`test/e2e/resolve_test.go`,
    /// `TestResolveSuccessfulWithPlatformSelectionConfig`): the resolved tag, then the
    /// platform taken out of the index, keys sorted, the empty variant left out.
    #[test]
    fn platform_selected_origins_are_written_as_kbld_writes_them() {
        let index = "index.docker.io/library/nginx@sha256:\
                     f7988fb6c02e0ce69257d9bd9cf37ae20a60f1df7563c3a2a6abe24160306b8d";
        let origins = vec![
            ImageOrigin::Resolved {
                url: "index.docker.io/library/nginx:1.14.2".to_owned(),
                tag: "1.14.2".to_owned(),
            },
            ImageOrigin::PlatformSelected {
                index: index.to_owned(),
                os: "linux".to_owned(),
                architecture: "amd64".to_owned(),
                variant: String::new(),
            },
        ];
        let text = ImageOrigin::annotation(&origins);
        assert_eq!(
            text,
            format!(
                "- resolved:\n    tag: 1.14.2\n    url: index.docker.io/library/nginx:1.14.2\n\
                 - platformSelected:\n    architecture: amd64\n    index: {index}\n    os: linux\n"
            )
        );
        assert_eq!(
            ImageOrigin::parse_annotation(&text).expect("parse"),
            origins
        );
    }
}
