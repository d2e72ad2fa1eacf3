//! Image references parsed by hand, following the distribution reference grammar
//! (`distribution/reference/regexp.go`) and oci-spec's normalisation.
//!
//! `oci_spec::distribution::Reference: FromStr` compiles oci-spec's reference regular expression the first
//! time it runs, about 30 ms of CPU — more than a whole re-push of an unchanged bundle spends
//! on the network. Every CLI process parses at least one reference, so the grammar is checked
//! here directly and the `Reference` built with its plain constructors. The unit tests compare
//! the results with oci-spec's parser on the distribution test cases and on generated inputs.
//!
//! ```text
//! reference  := name [ ":" tag ] [ "@" digest ]
//! name       := [ domain "/" ] component ( "/" component )*
//! domain     := host-label ( "." host-label )* [ ":" port ]
//! host-label := [A-Za-z0-9] | [A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9]
//! component  := [a-z0-9]+ ( ( "." | "_" | "__" | "-"+ ) [a-z0-9]+ )*
//! tag        := [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}
//! digest     := algorithm ":" [0-9A-Fa-f]{32,}
//! algorithm  := [A-Za-z][A-Za-z0-9]* ( [-_+.] [A-Za-z][A-Za-z0-9]* )*
//! ```

use oci_spec::distribution::Reference;

/// Longest repository oci-spec accepts (distribution's `NameTotalLengthMax`).
const NAME_TOTAL_LENGTH_MAX: usize = 255;

/// Why a string is not an image reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error("the reference is empty")]
    Empty,
    #[error(
        "not [registry/]repository[:tag][@digest] (repositories are lower-case letters, \
         digits and single '.', '_', '__' or '-' separators)"
    )]
    Format,
    #[error("the repository name is longer than {NAME_TOTAL_LENGTH_MAX} characters")]
    TooLong,
    #[error("the digest length does not match its algorithm")]
    DigestLength,
    #[error("unsupported digest algorithm (sha256, sha384 or sha512)")]
    DigestAlgorithm,
}

/// Parses `s` exactly as oci-spec's `Reference::from_str` does (default registry `docker.io`,
/// `library/` for official images, tag `latest` when neither tag nor digest is given), except
/// that tags are ASCII as distribution's grammar says (oci-spec's `\w` also admits any Unicode
/// letter, which no registry accepts).
pub(super) fn parse(s: &str) -> Result<Reference, ReferenceError> {
    if s.is_empty() {
        return Err(ReferenceError::Empty);
    }
    // '@' appears in no other part, and ':' in no path component, so a ':' after the last
    // '/' starts the tag; one before it belongs to the domain's port.
    let (rest, digest) = match s.split_once('@') {
        Some((rest, digest)) => (rest, Some(digest)),
        None => (s, None),
    };
    let (name, tag) = match rest.rfind(':') {
        Some(colon) if !rest[colon..].contains('/') => (&rest[..colon], Some(&rest[colon + 1..])),
        _ => (rest, None),
    };
    if !is_name(name) || tag.is_some_and(|t| !is_tag(t)) || digest.is_some_and(|d| !is_digest(d)) {
        return Err(ReferenceError::Format);
    }
    let (registry, repository) = split_domain(name);
    if repository.len() > NAME_TOTAL_LENGTH_MAX {
        return Err(ReferenceError::TooLong);
    }
    if let Some(digest) = digest {
        let (algorithm, hex) = digest.split_once(':').ok_or(ReferenceError::Format)?;
        let expected = match algorithm {
            "sha256" => 64,
            "sha384" => 96,
            "sha512" => 128,
            _ => return Err(ReferenceError::DigestAlgorithm),
        };
        if hex.len() != expected {
            return Err(ReferenceError::DigestLength);
        }
    }
    Ok(match (tag, digest) {
        (Some(tag), Some(digest)) => {
            Reference::with_tag_and_digest(registry, repository, tag.into(), digest.into())
        }
        (None, Some(digest)) => Reference::with_digest(registry, repository, digest.into()),
        (tag, None) => Reference::with_tag(registry, repository, tag.unwrap_or("latest").into()),
    })
}

/// `[domain "/"] component ("/" component)*`. The first segment may be read either way, as
/// in the regular expression: a domain if it parses as one and a path follows, else a
/// component.
fn is_name(name: &str) -> bool {
    let mut segments = name.split('/');
    let Some(first) = segments.next() else {
        return false;
    };
    let rest_ok = segments.clone().all(is_component);
    rest_ok && (is_component(first) || (segments.next().is_some() && is_domain(first)))
}

fn is_component(s: &str) -> bool {
    let b = s.as_bytes();
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run between two alphanumerics: ".", "_", "__" or "-"+.
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        match &b[start..i] {
            b"." | b"_" | b"__" => {}
            run if run.iter().all(|&c| c == b'-') => {}
            _ => return false,
        }
    }
    true
}

fn is_domain(s: &str) -> bool {
    let (host, port) = match s.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (s, None),
    };
    let label = |l: &str| {
        let b = l.as_bytes();
        !b.is_empty()
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
    };
    host.split('.').all(label)
        && port.is_none_or(|p| !p.is_empty() && p.bytes().all(|c| c.is_ascii_digit()))
}

fn is_tag(s: &str) -> bool {
    let b = s.as_bytes();
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    !b.is_empty()
        && b.len() <= 128
        && word(b[0])
        && b.iter().all(|&c| word(c) || c == b'.' || c == b'-')
}

fn is_digest(s: &str) -> bool {
    let Some((algorithm, hex)) = s.split_once(':') else {
        return false;
    };
    let alg = algorithm.as_bytes();
    let mut ok = !alg.is_empty() && alg[0].is_ascii_alphabetic();
    for (i, &c) in alg.iter().enumerate() {
        let after_separator = i > 0 && matches!(alg[i - 1], b'-' | b'_' | b'+' | b'.');
        ok &= if matches!(c, b'-' | b'_' | b'+' | b'.') {
            // A separator is followed by a letter, never by another separator or the end.
            alg.get(i + 1).is_some_and(u8::is_ascii_alphabetic)
        } else {
            c.is_ascii_alphanumeric() && (!after_separator || c.is_ascii_alphabetic())
        };
    }
    ok && hex.len() >= 32 && hex.bytes().all(|c| c.is_ascii_hexdigit())
}

/// distribution's `splitDockerDomain`, as oci-spec ports it.
fn split_domain(name: &str) -> (String, String) {
    let (mut domain, mut remainder) = match name.split_once('/') {
        Some((left, right)) if left.contains(['.', ':']) || left == "localhost" => {
            (left.to_owned(), right.to_owned())
        }
        _ => ("docker.io".to_owned(), name.to_owned()),
    };
    if domain == "index.docker.io" {
        domain = "docker.io".to_owned();
    }
    if domain == "docker.io" && !remainder.contains('/') {
        remainder = format!("library/{remainder}");
    }
    (domain, remainder)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ours and oci-spec's must agree: same parts when both accept, both refuse otherwise.
    fn agree(input: &str) {
        let ours = parse(input);
        let theirs = input.parse::<Reference>();
        let parts = |r: &Reference| {
            (
                r.registry().to_owned(),
                r.repository().to_owned(),
                r.tag().map(str::to_owned),
                r.digest().map(str::to_owned),
            )
        };
        match (&ours, &theirs) {
            (Ok(a), Ok(b)) => assert_eq!(parts(a), parts(b), "{input:?}"),
            (Err(_), Err(_)) => {}
            _ => panic!("{input:?}: ours {ours:?}, oci-spec {theirs:?}"),
        }
    }

    const HEX64: &str = "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff";

    #[test]
    fn agrees_with_oci_spec_on_distribution_cases() {
        let long = "a".repeat(256);
        let cases = [
            "busybox".to_owned(),
            "test.com:tag".into(),
            "test.com:5000".into(),
            "test.com/repo:tag".into(),
            "test:5000/repo".into(),
            "test:5000/repo:tag".into(),
            format!("test:5000/repo@sha256:{HEX64}"),
            format!("test:5000/repo:tag@sha256:{HEX64}"),
            "lowercase:Uppercase".into(),
            "sub-dom1.foo.com/bar/baz/quux".into(),
            "sub-dom1.foo.com/bar/baz/quux:some-long-tag".into(),
            "b.gcr.io/test.example.com/my-app:test.example.com".into(),
            "xn--n3h.com/myimage:xn--n3h.com".into(),
            format!("xn--7o8h.com/myimage:xn--7o8h.com@sha512:{HEX64}{HEX64}"),
            "foo_bar.com:8080".into(),
            "foo/foo_bar.com:8080".into(),
            "opensuse/leap:15.3".into(),
            "localhost/a:1".into(),
            "localhost:5000/a/b/c".into(),
            "index.docker.io/nginx".into(),
            "docker.io/bitnami/external-dns:0.12.2".into(),
            "127.0.0.1:5000/packages/cert-manager:1.9.1".into(),
            "a__b/c---d/e.f_g:t".into(),
            "Upper.io/lower:tag".into(),
            // Refused.
            String::new(),
            ":justtag".into(),
            format!("@sha256:{HEX64}"),
            "repo@sha256:ffffffffffffffffffffffffffffffffff".into(),
            format!("validname@invaliddigest:{HEX64}"),
            "Uppercase:tag".into(),
            "test:5000/Uppercase/lowercase:tag".into(),
            long.clone(),
            format!("r.io/{long}"),
            "aa/asdf$$^/aa".into(),
            "a___b".into(),
            "a._b".into(),
            "a/".into(),
            "/a".into(),
            "a//b".into(),
            "-a.io/b".into(),
            "a.io:/b".into(),
            "a.io:x/b".into(),
            "a:".into(),
            "a@".into(),
            "a:-tag".into(),
            format!("a:{}", "t".repeat(129)),
            format!("a:{}", "t".repeat(128)),
            format!("a@sha256:{}", "g".repeat(64)),
            format!("a@sha256:{}", "F".repeat(64)),
            format!("a@sha+256:{HEX64}"),
            format!("a@sha256+:{HEX64}"),
            format!("a@sha2-5x:{HEX64}"),
            format!("a@sha2-56:{HEX64}"),
            format!("a@1sha:{HEX64}"),
            "a@b@c".into(),
            "a:b:c".into(),
        ];
        for case in &cases {
            agree(case);
        }
    }

    /// Every string of up to 5 characters from an alphabet that exercises each rule, plus
    /// random longer ones: the two parsers must agree on all of them.
    #[test]
    fn agrees_with_oci_spec_on_generated_inputs() {
        let alphabet = ['a', 'B', '0', '.', '_', '-', ':', '/', '@'];
        let mut stack = vec![String::new()];
        while let Some(s) = stack.pop() {
            agree(&s);
            if s.len() < 5 {
                for c in alphabet {
                    stack.push(format!("{s}{c}"));
                }
            }
        }
        // A small xorshift keeps the longer cases reproducible without a dependency.
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let pieces = [
            "a",
            "b9",
            ".",
            "_",
            "__",
            "-",
            "--",
            ":",
            "5000",
            "/",
            "x.io",
            "localhost",
            "Tag",
            "@",
            "sha256",
            "sha512",
            HEX64,
            "f",
        ];
        for _ in 0..20_000 {
            let mut s = String::new();
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            for i in 0..(state % 9) {
                s.push_str(pieces[((state >> (i * 5)) % pieces.len() as u64) as usize]);
            }
            agree(&s);
        }
    }

    #[test]
    fn tags_are_ascii_as_distribution_says() {
        assert!(parse("nginx:étiquette").is_err());
        assert!(
            "nginx:étiquette".parse::<Reference>().is_ok(),
            "oci-spec's \\w is Unicode"
        );
    }

    #[test]
    fn errors_say_what_is_wrong() {
        assert_eq!(parse(""), Err(ReferenceError::Empty));
        assert_eq!(
            parse("a@sha256:ffff"),
            Err(ReferenceError::Format),
            "fewer than 32 hex digits is not a digest at all"
        );
        assert_eq!(
            parse(&format!("a@sha256:{HEX64}ff")),
            Err(ReferenceError::DigestLength)
        );
        assert_eq!(
            parse(&format!("a@md5:{HEX64}")),
            Err(ReferenceError::DigestAlgorithm)
        );
        assert_eq!(
            parse(&format!("r.io/{}", "a".repeat(256))),
            Err(ReferenceError::TooLong)
        );
    }
}
