//! Where a bundle goes to or comes from: a registry repository, or an OCI image layout
//! directory (`oci-layout:DIR[:TAG]`, `oci-layout:DIR@sha256:…`), which is what the controller
//! uses when no registry is configured.

use std::path::PathBuf;

use super::error::BundleError;
use super::image::is_sha256_digest;
use crate::registry::{Reference, parse_reference};

pub const LAYOUT_PREFIX: &str = "oci-layout:";

/// A parsed `-b`/`--bundle` argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Registry(Reference),
    Layout(LayoutRef),
}

/// A bundle in an OCI image layout directory, by tag or digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayoutRef {
    pub dir: PathBuf,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

impl Location {
    /// Parses `REPO[:TAG|@DIGEST]` or `oci-layout:DIR[:TAG|@DIGEST]`.
    pub fn parse(s: &str) -> Result<Self, BundleError> {
        let Some(rest) = s.strip_prefix(LAYOUT_PREFIX) else {
            return Ok(Location::Registry(parse_reference(s)?));
        };
        let invalid = |reason: &str| BundleError::Reference {
            reference: s.to_owned(),
            reason: reason.to_owned(),
        };
        let (dir, tag, digest) = if let Some((dir, digest)) = rest.rsplit_once('@') {
            if !is_sha256_digest(digest) {
                return Err(invalid(
                    "the digest after '@' must be sha256:<64 hex digits>",
                ));
            }
            (dir, None, Some(digest.to_owned()))
        } else {
            // A tag never contains '/', so a ':' followed by one belongs to the path.
            match rest.rsplit_once(':') {
                Some((dir, tag)) if !tag.contains('/') => {
                    if !is_valid_tag(tag) {
                        return Err(invalid(
                            "a tag is 1-128 of [A-Za-z0-9_.-], not starting with '.' or '-'",
                        ));
                    }
                    (dir, Some(tag.to_owned()), None)
                }
                _ => (rest, None, None),
            }
        };
        if dir.is_empty() {
            return Err(invalid(
                "oci-layout: needs a directory, e.g. oci-layout:./bundles:1.0.0",
            ));
        }
        Ok(Location::Layout(LayoutRef {
            dir: PathBuf::from(dir),
            tag,
            digest,
        }))
    }

    /// How the pushed image is named in output: `REPO` or `oci-layout:DIR`.
    pub fn repository(&self) -> String {
        match self {
            Location::Registry(r) => format!("{}/{}", r.registry(), r.repository()),
            Location::Layout(l) => format!("{LAYOUT_PREFIX}{}", l.dir.display()),
        }
    }

    /// The tag named in the reference, if any (`latest` when a registry reference has neither
    /// tag nor digest, as in go-containerregistry).
    pub fn tag(&self) -> Option<&str> {
        match self {
            Location::Registry(r) => r.tag(),
            Location::Layout(l) => l.tag.as_deref(),
        }
    }

    pub fn digest(&self) -> Option<&str> {
        match self {
            Location::Registry(r) => r.digest(),
            Location::Layout(l) => l.digest.as_deref(),
        }
    }
}

/// Docker's tag grammar: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
pub(super) fn is_valid_tag(tag: &str) -> bool {
    let bytes = tag.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 128
        && (bytes[0].is_ascii_alphanumeric() || bytes[0] == b'_')
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn layout(dir: &str, tag: Option<&str>, digest: Option<&str>) -> Location {
        Location::Layout(LayoutRef {
            dir: dir.into(),
            tag: tag.map(str::to_owned),
            digest: digest.map(str::to_owned),
        })
    }

    #[test]
    fn parses_layout_references() {
        assert_eq!(
            Location::parse("oci-layout:/var/lib/bundles:1.0.0").unwrap(),
            layout("/var/lib/bundles", Some("1.0.0"), None)
        );
        assert_eq!(
            Location::parse("oci-layout:./a:b/dir").unwrap(),
            layout("./a:b/dir", None, None)
        );
        assert_eq!(
            Location::parse(&format!("oci-layout:dir@{DIGEST}")).unwrap(),
            layout("dir", None, Some(DIGEST))
        );
        for bad in [
            "oci-layout:",
            "oci-layout::tag",
            "oci-layout:d:-x",
            "oci-layout:d@sha256:1",
        ] {
            assert!(Location::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn parses_registry_references() {
        let loc = Location::parse("127.0.0.1:5000/packages/cert-manager:1.9.1").unwrap();
        assert_eq!(loc.repository(), "127.0.0.1:5000/packages/cert-manager");
        assert_eq!(loc.tag(), Some("1.9.1"));
        assert!(Location::parse("Not/Valid:ref").is_err());
    }
}
