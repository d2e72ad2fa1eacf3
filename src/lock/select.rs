//! kbld's two override selections, which need more of a registry than a digest:
//!
//! - `tagSelection` (kbld `image/tag_selected_image.go`): list the repository's tags and
//!   take the highest version the constraints allow (vendir's rules, shared with sync);
//! - `platformSelection` (kbld `image/resolved_image.go` with a platform): read the manifest
//!   and, when it is an index, take the digest of the first child whose platform satisfies
//!   the selection, as go-containerregistry's `platform.Satisfies`. A single-platform image
//!   is its own answer, as `remote.Image` with a platform gives it.
//!
//! Both go through the shared oci-client, so they cost what it costs (a `/v2/` ping and
//! possibly a token per call); they are rare next to plain tags, which stay on the
//! one-request path.

use oci_client::manifest::{OciManifest, Platform};

use crate::carvel::kbld::PlatformSelection;
use crate::carvel::selection::VersionSelection;
use crate::registry::{ErrorClass, Reference, Registry, RegistryError};

/// Pages of the tags list asked for at most; a registry that keeps answering stops here.
const MAX_TAG_PAGES: usize = 100;
const TAG_PAGE: usize = 1000;

/// The highest tag of `repository` that `selection` allows.
pub async fn select_tag(
    registry: &Registry,
    repository: &Reference,
    selection: &VersionSelection,
) -> Result<String, RegistryError> {
    let contacted = registry.contact(repository);
    let auth = registry.auth(&contacted);
    let mut tags: Vec<String> = Vec::new();
    for _ in 0..MAX_TAG_PAGES {
        let page = registry
            .client()
            .list_tags(
                &contacted,
                &auth,
                Some(TAG_PAGE),
                tags.last().map(String::as_str),
            )
            .await
            .map_err(|e| RegistryError::request("list tags", &contacted, &e))?;
        let done = page.tags.len() < TAG_PAGE || page.tags.last() == tags.last();
        tags.extend(page.tags);
        if done {
            break;
        }
    }
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
pub async fn platform_digest(
    registry: &Registry,
    reference: &Reference,
    selection: &PlatformSelection,
) -> Result<String, RegistryError> {
    let contacted = registry.contact(reference);
    let auth = registry.auth(&contacted);
    let (manifest, digest) = registry
        .client()
        .pull_manifest(&contacted, &auth)
        .await
        .map_err(|e| RegistryError::request("GET manifest", &contacted, &e))?;
    let OciManifest::ImageIndex(index) = manifest else {
        return Ok(digest);
    };
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
    same(&selection.architecture, &platform.architecture.to_string())
        && same(&selection.os, &platform.os.to_string())
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
pub fn describe(selection: &PlatformSelection) -> String {
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
