//! kbld's two override selections, which need more of a registry than a digest:
//!
//! - `tagSelection` (kbld `image/tag_selected_image.go`): list the repository's tags and
//!   take the highest version the constraints allow (vendir's rules, shared with sync);
//! - `platformSelection` (kbld `image/resolved_image.go` with a platform): read the manifest
//!   and, when it is an index, take the digest of the first child whose platform satisfies
//!   the selection, as go-containerregistry's `platform.Satisfies`. A single-platform image
//!   is its own answer, as `remote.Image` with a platform gives it.
//!
//! Both go through the registry's one client, sharing its ping and tokens with the plain
//! tags around them.

use serde::Deserialize;

use crate::carvel::kbld::PlatformSelection;
use crate::carvel::selection::VersionSelection;
use crate::registry::{ErrorClass, Reference, Registry, RegistryError};

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const MANIFEST_TYPES: [&str; 4] = [
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    OCI_INDEX,
    DOCKER_LIST,
];

/// What platform selection reads of a manifest: an index's children and their platforms.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    #[serde(default)]
    media_type: String,
    #[serde(default)]
    manifests: Vec<Child>,
}

#[derive(Debug, Deserialize)]
struct Child {
    digest: String,
    #[serde(default)]
    platform: Option<Platform>,
}

/// The image-spec platform object.
#[derive(Debug, Default, Deserialize)]
struct Platform {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
    #[serde(rename = "os.version", default)]
    os_version: Option<String>,
    #[serde(rename = "os.features", default)]
    os_features: Option<Vec<String>>,
    #[serde(default)]
    variant: Option<String>,
    #[serde(default)]
    features: Option<Vec<String>>,
}

/// The highest tag of `repository` that `selection` allows.
pub(super) async fn select_tag(
    registry: &Registry,
    repository: &Reference,
    selection: &VersionSelection,
) -> Result<String, RegistryError> {
    let contacted = registry.contact(repository);
    let tags = registry.distribution().list_tags(&contacted).await?;
    crate::sync::highest_version(tags.iter().map(String::as_str), selection).map_err(|e| {
        RegistryError::Request {
            operation: "select a tag of",
            reference: contacted.whole(),
            class: ErrorClass::NotFound,
            message: e.to_string(),
        }
    })
}

/// The digest of `reference` for `selection`'s platform.
pub(super) async fn platform_digest(
    registry: &Registry,
    reference: &Reference,
    selection: &PlatformSelection,
) -> Result<String, RegistryError> {
    let contacted = registry.contact(reference);
    let target = contacted.digest().or(contacted.tag()).unwrap_or("latest");
    let bytes = registry
        .distribution()
        .get_manifest(&contacted, target, &MANIFEST_TYPES)
        .await?;
    let digest = crate::registry::sha256_digest(&bytes);
    let not_what_was_asked = |message: String| RegistryError::Request {
        operation: "select a platform of",
        reference: contacted.whole(),
        class: ErrorClass::Permanent,
        message,
    };
    if let Some(wanted) = contacted.digest()
        && wanted != digest
    {
        return Err(not_what_was_asked(format!(
            "the registry returned a manifest with digest {digest}"
        )));
    }
    let index: Manifest = serde_json::from_slice(&bytes)
        .map_err(|e| not_what_was_asked(format!("the manifest is not valid JSON: {e}")))?;
    let is_index =
        !index.manifests.is_empty() || matches!(index.media_type.as_str(), OCI_INDEX | DOCKER_LIST);
    if !is_index {
        return Ok(digest);
    }
    index
        .manifests
        .iter()
        .find(|child| {
            child
                .platform
                .as_ref()
                .is_some_and(|platform| satisfies(platform, selection))
        })
        .map(|child| child.digest.clone())
        .ok_or_else(|| RegistryError::Request {
            operation: "select a platform of",
            reference: contacted.whole(),
            class: ErrorClass::NotFound,
            message: format!(
                "no image of the index is for {} (it has {})",
                describe(selection),
                index
                    .manifests
                    .iter()
                    .filter_map(|child| child.platform.as_ref())
                    .map(|p| format!("{}/{}", p.os, p.architecture))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        })
}

/// go-containerregistry's `platform.Satisfies`: what the selection names must be equal, and
/// its feature lists must be contained in the image's.
fn satisfies(platform: &Platform, selection: &PlatformSelection) -> bool {
    let same = |wanted: &str, have: &str| wanted.is_empty() || wanted == have;
    let subset = |wanted: &[String], have: Option<&Vec<String>>| {
        wanted
            .iter()
            .all(|w| have.is_some_and(|have| have.contains(w)))
    };
    same(&selection.architecture, &platform.architecture)
        && same(&selection.os, &platform.os)
        && same(
            &selection.os_version,
            platform.os_version.as_deref().unwrap_or(""),
        )
        && same(
            &selection.variant,
            platform.variant.as_deref().unwrap_or(""),
        )
        && subset(&selection.os_features, platform.os_features.as_ref())
        && subset(&selection.features, platform.features.as_ref())
}

/// `os/architecture[/variant]`, as the platform is usually written.
pub(super) fn describe(selection: &PlatformSelection) -> String {
    let mut text = format!(
        "{}/{}",
        none_if_empty(&selection.os),
        none_if_empty(&selection.architecture)
    );
    if !selection.variant.is_empty() {
        text.push('/');
        text.push_str(&selection.variant);
    }
    text
}

fn none_if_empty(text: &str) -> &str {
    if text.is_empty() { "*" } else { text }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn platform(json: &str) -> Platform {
        serde_json::from_str(json).expect("platform")
    }

    #[test]
    fn platforms_satisfy_like_go_containerregistry() {
        let arm = platform(r#"{"architecture":"arm64","os":"linux","variant":"v8"}"#);
        let amd = platform(r#"{"architecture":"amd64","os":"linux","features":["sse4"]}"#);
        let select = |json: &str| -> PlatformSelection { serde_json::from_str(json).expect("sel") };

        let arm64 = select(r#"{"architecture":"arm64","os":"linux"}"#);
        assert!(satisfies(&arm, &arm64));
        assert!(!satisfies(&amd, &arm64));
        assert!(satisfies(
            &arm,
            &select(r#"{"architecture":"arm64","variant":"v8"}"#)
        ));
        assert!(!satisfies(
            &arm,
            &select(r#"{"architecture":"arm64","variant":"v7"}"#)
        ));
        assert!(satisfies(
            &amd,
            &select(r#"{"os":"linux","features":["sse4"]}"#)
        ));
        assert!(!satisfies(
            &amd,
            &select(r#"{"os":"linux","features":["avx"]}"#)
        ));
        assert!(!satisfies(&arm, &select(r#"{"os":"windows"}"#)));
        assert_eq!(describe(&arm64), "linux/arm64");
        assert_eq!(
            describe(&select(r#"{"architecture":"arm","variant":"v7"}"#)),
            "*/arm/v7"
        );
    }
}
