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

/// `chunks` passed through unchanged while their size and sha256 are checked: past `size`
/// bytes the stream ends with an error at once, and at its end a size or digest other than
/// `size` and `digest` ends it with an error in place of the end. A consumer that stops on
/// the first error (an upload body, a tar writer) therefore never completes with bytes that
/// are not the blob. `what` names the source in errors.
pub fn verified<S>(
    chunks: S,
    digest: String,
    size: u64,
    what: String,
) -> impl futures::Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static
where
    S: futures::Stream<Item = std::io::Result<bytes::Bytes>> + Send + Unpin + 'static,
{
    struct State<S> {
        chunks: S,
        hash: Sha256,
        received: u64,
        done: bool,
    }
    let state = State {
        chunks,
        hash: Sha256::new(),
        received: 0,
        done: false,
    };
    futures::stream::unfold(state, move |mut state| {
        let (digest, what) = (digest.clone(), what.clone());
        async move {
            use futures::StreamExt as _;
            if state.done {
                return None;
            }
            let mismatch = |reason: String| {
                std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{what}: {reason}"))
            };
            match state.chunks.next().await {
                Some(Ok(chunk)) => {
                    state.received += chunk.len() as u64;
                    if state.received > size {
                        state.done = true;
                        let e = mismatch(format!("more than the {size} bytes of {digest}"));
                        return Some((Err(e), state));
                    }
                    state.hash.update(&chunk);
                    Some((Ok(chunk), state))
                }
                Some(Err(e)) => {
                    state.done = true;
                    Some((Err(e), state))
                }
                None => {
                    state.done = true;
                    let actual = digest_string(&std::mem::take(&mut state.hash).finalize());
                    if state.received == size && actual == digest {
                        None
                    } else {
                        let e = mismatch(format!(
                            "{} bytes with digest {actual}, expected {size} bytes with {digest}",
                            state.received
                        ));
                        Some((Err(e), state))
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(
        parts: &[&'static [u8]],
        digest: &str,
        size: u64,
    ) -> Vec<std::io::Result<bytes::Bytes>> {
        let chunks = futures::stream::iter(
            parts
                .iter()
                .map(|p| Ok(bytes::Bytes::from_static(p)))
                .collect::<Vec<_>>(),
        );
        futures::executor::block_on(futures::StreamExt::collect(verified(
            chunks,
            digest.to_owned(),
            size,
            "blob".to_owned(),
        )))
    }

    /// The stream is the blob or ends in an error: a short, long or altered blob is never
    /// a clean end, so an upload or a tar entry fed from it cannot complete.
    #[test]
    fn verified_streams_end_in_an_error_unless_they_are_the_blob() {
        let digest = sha256_digest(b"hello world");
        let ok = collect(&[b"hello ", b"world"], &digest, 11);
        assert_eq!(ok.len(), 2);
        assert!(ok.iter().all(Result::is_ok));
        let altered = collect(&[b"hello ", b"WORLD"], &digest, 11);
        let last = altered.last().unwrap().as_ref().unwrap_err().to_string();
        assert!(last.contains("expected 11 bytes with sha256:"), "{last}");
        let short = collect(&[b"hello "], &digest, 11);
        assert!(short.last().unwrap().is_err());
        let long = collect(&[b"hello world", b"!"], &digest, 11);
        assert_eq!(long.len(), 2);
        assert!(long[1].is_err());
    }

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
