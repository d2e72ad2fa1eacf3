//! Content addresses: `sha256:<hex>`, the only digest algorithm packsmith writes or accepts
//! (as go-containerregistry).

use sha2::{Digest as _, Sha256};

/// `sha256:<hex>` of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    digest_string(&Sha256::digest(data))
}

/// `sha256:<hex>` of a finished sha256 `hash`.
pub fn digest_string(hash: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(7 + 2 * hash.len());
    out.push_str("sha256:");
    for byte in hash {
        let _ = write!(out, "{byte:02x}");
    }
    out
}

/// Whether `digest` is `sha256:` and 64 lowercase hex digits. Digests come from manifests,
/// so from registries, and become parts of URLs and file names.
pub fn is_sha256_digest(digest: &str) -> bool {
    digest.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_sha256_hex() {
        let empty = sha256_digest(b"");
        assert_eq!(
            empty,
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert!(is_sha256_digest(&empty));
        assert!(!is_sha256_digest(&empty.to_uppercase()));
        assert!(!is_sha256_digest("sha256:../../../v2/other/blobs"));
        assert!(!is_sha256_digest(&empty.replace("sha256", "sha512")));
        assert!(!is_sha256_digest(&empty[..70]));
    }
}
