//! kbld's two override selections, which need more of a registry than a digest:
//!
//! - `tagSelection` (kbld `image/tag_selected_image.go`): list the repository's tags and
//!   take the highest version the constraints allow (vendir's rules, shared with sync);
//! - `platformSelection` and `--platform` (kbld `image/platform_selected.go`): read the
//!   manifest and, when it is an index, take the digest of the one child whose platform
//!   matches the selection (kbld's `MatchesPlatformSelection`: os and architecture always
//!   compared, so an unnamed one matches only an unnamed one; none or several matching is an
//!   error). An image that is not an index is its own answer.
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

/// What platform selection found: the image's digest and, when it was taken out of an
/// index, the index's digest (kbld records it in a `platformSelected` origin).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Selected {
    pub digest: String,
    pub index: Option<String>,
}

/// The digest of `reference` for `selection`'s platform, as kbld's `PlatformSelectedImage`
/// (`pkg/kbld/image/platform_selected.go`): an image that is not an index is its own
/// answer; in an index exactly one child must match.
pub(super) async fn platform_digest(
    registry: &Registry,
    reference: &Reference,
    selection: &PlatformSelection,
) -> Result<Selected, RegistryError> {
    let contacted = registry.contact(reference);
    let target = contacted.digest().or(contacted.tag()).unwrap_or("latest");
    let bytes = registry
        .distribution()
        .get_manifest(&contacted, target, &MANIFEST_TYPES)
        .await?;
    let digest = crate::registry::sha256_digest(&bytes);
    let failed = |class: ErrorClass, message: String| RegistryError::Request {
        operation: "select a platform of",
        reference: contacted.whole(),
        class,
        message,
    };
    if let Some(wanted) = contacted.digest()
        && wanted != digest
    {
        return Err(failed(
            ErrorClass::Permanent,
            format!("the registry returned a manifest with digest {digest}"),
        ));
    }
    let index: Manifest = serde_json::from_slice(&bytes).map_err(|e| {
        failed(
            ErrorClass::Permanent,
            format!("the manifest is not valid JSON: {e}"),
        )
    })?;
    let is_index =
        !index.manifests.is_empty() || matches!(index.media_type.as_str(), OCI_INDEX | DOCKER_LIST);
    if !is_index {
        return Ok(Selected {
            digest,
            index: None,
        });
    }
    let mut matching = index.manifests.iter().filter(|child| {
        child
            .platform
            .as_ref()
            .is_some_and(|platform| matches_selection(platform, selection))
    });
    match (matching.next(), matching.next()) {
        (Some(child), None) => Ok(Selected {
            digest: child.digest.clone(),
            index: Some(digest),
        }),
        (Some(_), Some(_)) => Err(failed(
            ErrorClass::Permanent,
            format!(
                "more than one image of the index is for {}; name the variant or os.version \
                 too",
                describe(selection)
            ),
        )),
        (None, _) => Err(failed(
            ErrorClass::NotFound,
            format!(
                "no image of the index is for {} (it has {}); os and architecture must both \
                 be named",
                describe(selection),
                index
                    .manifests
                    .iter()
                    .filter_map(|child| child.platform.as_ref())
                    .map(describe_platform)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

/// kbld's `MatchesPlatformSelection` (adapted from go-containerregistry): architecture and
/// os must be identical — an empty one in the selection matches only an empty one —,
/// os.version and variant identical when the selection names them, and the selection's
/// feature lists contained in the image's.
fn matches_selection(platform: &Platform, selection: &PlatformSelection) -> bool {
    let same_if_named = |wanted: &str, have: &str| wanted.is_empty() || wanted == have;
    let subset = |wanted: &[String], have: Option<&Vec<String>>| {
        wanted
            .iter()
            .all(|w| have.is_some_and(|have| have.contains(w)))
    };
    selection.architecture == platform.architecture
        && selection.os == platform.os
        && same_if_named(
            &selection.os_version,
            platform.os_version.as_deref().unwrap_or(""),
        )
        && same_if_named(
            &selection.variant,
            platform.variant.as_deref().unwrap_or(""),
        )
        && subset(&selection.os_features, platform.os_features.as_ref())
        && subset(&selection.features, platform.features.as_ref())
}

fn describe_platform(platform: &Platform) -> String {
    let mut text = format!("{}/{}", platform.os, platform.architecture);
    if let Some(variant) = platform.variant.as_deref().filter(|v| !v.is_empty()) {
        text.push('/');
        text.push_str(variant);
    }
    text
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
    fn platforms_match_as_kbld_matches_them() {
        let arm = platform(r#"{"architecture":"arm64","os":"linux","variant":"v8"}"#);
        let amd = platform(r#"{"architecture":"amd64","os":"linux","features":["sse4"]}"#);
        let select = |json: &str| -> PlatformSelection { serde_json::from_str(json).expect("sel") };

        let arm64 = select(r#"{"architecture":"arm64","os":"linux"}"#);
        assert!(matches_selection(&arm, &arm64));
        assert!(!matches_selection(&amd, &arm64));
        assert!(matches_selection(
            &arm,
            &select(r#"{"architecture":"arm64","os":"linux","variant":"v8"}"#)
        ));
        assert!(!matches_selection(
            &arm,
            &select(r#"{"architecture":"arm64","os":"linux","variant":"v7"}"#)
        ));
        // Unlike go-containerregistry's `Satisfies`, kbld wants os and architecture named.
        assert!(!matches_selection(
            &arm,
            &select(r#"{"architecture":"arm64","variant":"v8"}"#)
        ));
        assert!(!matches_selection(&amd, &select(r#"{"os":"linux"}"#)));
        assert!(matches_selection(
            &amd,
            &select(r#"{"os":"linux","architecture":"amd64","features":["sse4"]}"#)
        ));
        assert!(!matches_selection(
            &amd,
            &select(r#"{"os":"linux","architecture":"amd64","features":["avx"]}"#)
        ));
        assert_eq!(describe(&arm64), "linux/arm64");
        assert_eq!(describe_platform(&arm), "linux/arm64/v8");
        assert_eq!(
            describe(&select(r#"{"architecture":"arm","variant":"v7"}"#)),
            "*/arm/v7"
        );
    }
}
