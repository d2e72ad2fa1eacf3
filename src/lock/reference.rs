//! Image reference helpers with kbld's exact semantics.

use crate::registry::{self, Reference, RegistryError};

/// kbld's `URLRepo`: the repository part of a reference as written, without normalising it
/// (no `index.docker.io`, no `library/`), so `imageRepo` matchers compare what users wrote.
///
/// kbld matches `\A(.+?)(:[A-Za-z0-9_\-\.]+)?(@.+:.+)?\z`; this is that regular expression by
/// hand: the shortest non-empty prefix whose remainder is an optional `:tag` and an optional
/// `@algorithm:hex`. Go's `.` does not match a newline, so no value containing one matches.
pub fn url_repo(url: &str) -> Option<&str> {
    if url.is_empty() || url.contains('\n') {
        return None;
    }
    (1..=url.len())
        .filter(|&split| url.is_char_boundary(split))
        .find(|&split| tag_and_digest_suffix(&url[split..]))
        .map(|split| &url[..split])
}

fn tag_and_digest_suffix(rest: &str) -> bool {
    let rest = match rest.strip_prefix(':') {
        Some(tagged) => {
            let tag_len = tagged
                .bytes()
                .take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
                .count();
            if tag_len == 0 {
                return false;
            }
            &tagged[tag_len..]
        }
        None => rest,
    };
    if rest.is_empty() {
        return true;
    }
    // `@.+:.+`: something, a colon, something.
    rest.strip_prefix('@').is_some_and(|digest| {
        digest
            .char_indices()
            .any(|(i, c)| c == ':' && i > 0 && i + 1 < digest.len())
    })
}

/// Parses a reference as go-containerregistry does (default registry, `library/`, `latest`).
pub(super) fn parse(url: &str) -> Result<Reference, RegistryError> {
    let reference = registry::parse_reference(url)?;
    // The docker grammar oci-spec follows takes an upper-case first segment for a registry
    // and lets it through; go-containerregistry allows `[a-z0-9_.-/]` only, so kbld fails.
    if let Some(bad) = reference
        .repository()
        .chars()
        .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '_' | '-' | '.' | '/'))
    {
        return Err(RegistryError::InvalidReference {
            reference: url.to_owned(),
            reason: format!(
                "the repository {:?} contains {bad:?}; repositories are lower-case letters, \
                 digits, '_', '-', '.' and '/'",
                reference.repository()
            ),
        });
    }
    if let Some(digest) = reference.digest()
        && let Some(problem) =
            crate::carvel::imgpkg::digest_reference_problem(&format!("x@{digest}"))
    {
        return Err(RegistryError::InvalidReference {
            reference: url.to_owned(),
            reason: problem.trim_start_matches("has ").to_owned(),
        });
    }
    Ok(reference)
}

/// go-containerregistry's `Repository.Name()`: what kbld writes before `@sha256:…`. Docker
/// Hub is `index.docker.io`, its official images are under `library/`.
pub(super) fn repository_name(reference: &Reference) -> String {
    let registry = match reference.registry() {
        "docker.io" => "index.docker.io",
        other => other,
    };
    format!("{registry}/{}", reference.repository())
}

/// `repository@digest` in go-containerregistry's naming.
pub(super) fn digest_name(reference: &Reference, digest: &str) -> String {
    format!("{}@{digest}", repository_name(reference))
}

/// The tag kbld records in a `resolved` origin (`latest` when none was written).
pub(super) fn tag_of(reference: &Reference) -> &str {
    reference.tag().unwrap_or("latest")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_repo_matches_kbld_regexp() {
        let cases = [
            ("nginx", Some("nginx")),
            ("nginx:1.25", Some("nginx")),
            ("localhost:5000/app:v1", Some("localhost:5000/app")),
            ("localhost:5000/app", Some("localhost:5000/app")),
            ("a@sha256:abc", Some("a")),
            ("a:b@sha256:abc", Some("a")),
            ("quay.io/x/y:v1.9.1", Some("quay.io/x/y")),
            // Not a tag (a slash follows), so it stays in the repository.
            ("host:80/x", Some("host:80/x")),
            ("", None),
            ("a\nb", None),
        ];
        for (url, expected) in cases {
            assert_eq!(url_repo(url), expected, "{url:?}");
        }
    }

    #[test]
    fn names_follow_go_containerregistry() {
        let r = parse("busybox").expect("parse");
        assert_eq!(repository_name(&r), "index.docker.io/library/busybox");
        assert_eq!(tag_of(&r), "latest");
        let r = parse("docker.io/envoyproxy/envoy:v1.23.3").expect("parse");
        assert_eq!(repository_name(&r), "index.docker.io/envoyproxy/envoy");
        let r = parse("127.0.0.1:5000/a/b:1").expect("parse");
        assert_eq!(repository_name(&r), "127.0.0.1:5000/a/b");
        let digest = format!("sha256:{}", "a".repeat(64));
        let r = parse(&format!("nginx:1.25@{digest}")).expect("parse");
        assert_eq!(
            digest_name(&r, r.digest().expect("digest")),
            format!("index.docker.io/library/nginx@{digest}")
        );
    }

    #[test]
    fn malformed_references_are_rejected() {
        for bad in ["", "UPPER/case", "nginx@sha256:abc", "a b", "nginx:"] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
