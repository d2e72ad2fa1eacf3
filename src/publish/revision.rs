//! Immutable versions: a version published with one content is not published again with
//! other content under the same tag unless the source asks for it
//! (`spec.publish.versionPolicy`). The registry is the record: the version's tag says what
//! was published, and the revision tags (`1.9.1_packsmith.2`, Helm's `+` → `_` for OCI tags)
//! say which revisions exist, so a restarted controller — or a CI run of the CLI — decides
//! exactly as the last one did.
//!
//! Content is compared uncompressed: the bundle config's `rootfs.diff_ids`, not the manifest
//! digest. A new packsmith that compresses differently yields a new digest for the same
//! files, and must not turn every package of a fleet into a new revision.

use serde::Deserialize;

use crate::api::source::VersionPolicy;
use crate::bundle::BuiltBundle;
use crate::registry::{Reference, Registry, RegistryError};

/// The build metadata a revision adds to the declared version.
const REVISION_PREFIX: &str = "packsmith.";
/// Largest config blob read to compare content (a bundle config is a few hundred bytes).
const MAX_CONFIG_BYTES: u64 = 64 * 1024;

const MANIFEST_TYPES: [&str; 2] = [
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// What to publish for a declared version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Push the bundle as `version` (the declared one, or its next revision).
    Push {
        version: String,
        /// The declared version's bundle, when the content changed under it (Revision and
        /// Overwrite): the event says what was there before.
        changed_from: Option<String>,
        /// Where `version`'s tag points now, as read for this decision (`None`: no such
        /// tag), so the push does not ask again.
        tag_digest: Option<String>,
    },
    /// The registry already holds this content as `version` (`image`, possibly compressed
    /// differently): publish that, push nothing.
    Existing { version: String, image: String },
}

impl Decision {
    pub fn version(&self) -> &str {
        match self {
            Decision::Push { version, .. } | Decision::Existing { version, .. } => version,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RevisionError {
    #[error(
        "version {version} is already published as {image} with other content, and \
         spec.publish.versionPolicy is Refuse: bump spec.package.version, or set versionPolicy \
         to Revision (publish {version}+packsmith.N) or Overwrite (move the tag)"
    )]
    Refused { version: String, image: String },
    #[error("reading what {reference} holds: {source}")]
    Registry {
        reference: String,
        #[source]
        source: RegistryError,
    },
    #[error("{reference}: {message}")]
    Malformed { reference: String, message: String },
}

impl RevisionError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, RevisionError::Registry { source, .. } if source.is_retryable())
    }
}

/// The OCI tag of a version (semver build metadata `+` is not allowed in tags).
pub fn tag_of(version: &str) -> String {
    version.replace('+', "_")
}

/// `version` as revision `n`: `1.9.1+packsmith.2`, or `1.9.1+build.4.packsmith.2` when the
/// version already has build metadata (one `+` only, as semver allows).
pub fn revision_version(version: &str, n: u32) -> String {
    let separator = if version.contains('+') { '.' } else { '+' };
    format!("{version}{separator}{REVISION_PREFIX}{n}")
}

/// The revision number a tag names for `version`, if it is one of its revision tags.
fn revision_of(tag: &str, version: &str) -> Option<u32> {
    let prefix = tag_of(&revision_version(version, 0));
    let prefix = prefix.strip_suffix('0')?;
    let n = tag.strip_prefix(prefix)?;
    // Canonical numbers only: `02` is not revision 2.
    if n.starts_with('0') {
        return None;
    }
    n.parse().ok()
}

/// Decides what to publish for `version` of `bundle` in `repository` under `policy`.
pub async fn decide(
    registry: &Registry,
    repository: &Reference,
    version: &str,
    bundle: &BuiltBundle,
    policy: VersionPolicy,
) -> Result<Decision, RevisionError> {
    let client = registry.distribution();
    let tag = tag_of(version);
    let whole = |target: &str| {
        format!(
            "{}/{}:{target}",
            repository.registry(),
            repository.repository()
        )
    };
    let published = client
        .manifest_digest_at(repository, &tag)
        .await
        .map_err(|source| RevisionError::Registry {
            reference: whole(&tag),
            source,
        })?;
    let Some(published) = published else {
        return Ok(push(version, None, None));
    };
    let image_of = |digest: &str| {
        format!(
            "{}/{}@{digest}",
            repository.registry(),
            repository.repository()
        )
    };
    if published == bundle.digest() {
        return Ok(push(version, None, Some(published)));
    }
    if same_content(&client, repository, &published, bundle).await? {
        return Ok(Decision::Existing {
            version: version.to_owned(),
            image: image_of(&published),
        });
    }
    match policy {
        VersionPolicy::Overwrite => Ok(push(
            version,
            Some(image_of(&published)),
            Some(published.clone()),
        )),
        VersionPolicy::Refuse => Err(RevisionError::Refused {
            version: version.to_owned(),
            image: image_of(&published),
        }),
        VersionPolicy::Revision => {
            let tags =
                client
                    .list_tags(repository)
                    .await
                    .map_err(|source| RevisionError::Registry {
                        reference: format!("{}/{}", repository.registry(), repository.repository()),
                        source,
                    })?;
            let latest = tags.iter().filter_map(|t| revision_of(t, version)).max();
            // The latest revision may already hold this content (the steady state after a
            // revision, or a controller restarted after pushing it): publish it again.
            if let Some(n) = latest {
                let revision = revision_version(version, n);
                let revision_tag = tag_of(&revision);
                if let Some(digest) = client
                    .manifest_digest_at(repository, &revision_tag)
                    .await
                    .map_err(|source| RevisionError::Registry {
                        reference: whole(&revision_tag),
                        source,
                    })?
                    && (digest == bundle.digest()
                        || same_content(&client, repository, &digest, bundle).await?)
                {
                    return Ok(if digest == bundle.digest() {
                        push(&revision, Some(image_of(&published)), Some(digest))
                    } else {
                        Decision::Existing {
                            version: revision,
                            image: image_of(&digest),
                        }
                    });
                }
            }
            // The declared version is revision 1.
            let next = latest.map_or(2, |n| n.saturating_add(1));
            // Absent from the tags just listed.
            Ok(push(
                &revision_version(version, next),
                Some(image_of(&published)),
                None,
            ))
        }
    }
}

fn push(version: &str, changed_from: Option<String>, tag_digest: Option<String>) -> Decision {
    Decision::Push {
        version: version.to_owned(),
        changed_from,
        tag_digest,
    }
}

/// Whether the manifest `digest` holds the same uncompressed layer as `bundle`.
async fn same_content(
    client: &crate::registry::DistributionClient<'_>,
    repository: &Reference,
    digest: &str,
    bundle: &BuiltBundle,
) -> Result<bool, RevisionError> {
    #[derive(Deserialize)]
    struct Descriptor {
        digest: String,
        size: u64,
    }
    #[derive(Deserialize)]
    struct Manifest {
        config: Descriptor,
    }
    #[derive(Deserialize)]
    struct RootFs {
        #[serde(default)]
        diff_ids: Vec<String>,
    }
    #[derive(Deserialize)]
    struct Config {
        rootfs: RootFs,
    }
    let reference = format!(
        "{}/{}@{digest}",
        repository.registry(),
        repository.repository()
    );
    let registry_error = |source| RevisionError::Registry {
        reference: reference.clone(),
        source,
    };
    let malformed = |message: String| RevisionError::Malformed {
        reference: reference.clone(),
        message,
    };
    let bytes = client
        .get_manifest(repository, digest, &MANIFEST_TYPES)
        .await
        .map_err(registry_error)?;
    if crate::registry::sha256_digest(&bytes) != digest {
        return Err(malformed(
            "the registry returned a manifest of another digest".into(),
        ));
    }
    let manifest: Manifest = serde_json::from_slice(&bytes)
        .map_err(|e| malformed(format!("not an image manifest: {e}")))?;
    if manifest.config.size > MAX_CONFIG_BYTES {
        // Not a bundle packsmith wrote; its content is not this bundle's.
        return Ok(false);
    }
    let config = client
        .get_blob(repository, &manifest.config.digest, manifest.config.size)
        .await
        .map_err(registry_error)?;
    if crate::registry::sha256_digest(&config) != manifest.config.digest {
        return Err(malformed("its config does not match its digest".into()));
    }
    let config: Config = serde_json::from_slice(&config)
        .map_err(|e| malformed(format!("its config is not an image config: {e}")))?;
    Ok(config.rootfs.diff_ids == [bundle.diff_id()])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revisions_are_semver_build_metadata_and_oci_tags() {
        assert_eq!(revision_version("1.9.1", 2), "1.9.1+packsmith.2");
        assert_eq!(tag_of(&revision_version("1.9.1", 2)), "1.9.1_packsmith.2");
        // One `+` at most: build metadata already there is extended.
        assert_eq!(
            revision_version("1.2.3+build.4", 3),
            "1.2.3+build.4.packsmith.3"
        );
        assert!(semver::Version::parse(&revision_version("1.2.3+build.4", 3)).is_ok());
        assert!(semver::Version::parse(&revision_version("1.9.1-rc.1", 2)).is_ok());
    }

    #[test]
    fn only_this_versions_revision_tags_count() {
        assert_eq!(revision_of("1.9.1_packsmith.2", "1.9.1"), Some(2));
        assert_eq!(revision_of("1.9.1_packsmith.12", "1.9.1"), Some(12));
        assert_eq!(revision_of("1.9.10_packsmith.2", "1.9.1"), None);
        assert_eq!(revision_of("1.9.1_packsmith.02", "1.9.1"), None);
        assert_eq!(revision_of("1.9.1_packsmith.x", "1.9.1"), None);
        assert_eq!(revision_of("1.9.1", "1.9.1"), None);
        assert_eq!(
            revision_of("1.2.3_build.4.packsmith.3", "1.2.3+build.4"),
            Some(3)
        );
    }
}
