//! cosign's key-based image signatures, read and written as cosign reads and writes them, so
//! that `cosign verify --key cosign.pub --insecure-ignore-tlog=true IMAGE` accepts what
//! packsmith signs and packsmith accepts what cosign signs. No Fulcio, no Rekor: keyless
//! signing is out of scope.
//!
//! The format, from cosign's source (sigstore/cosign, cited where used):
//! - the signatures of the manifest `sha256:<hex>` are an OCI image in the same repository,
//!   tagged `sha256-<hex>.sig` (`pkg/oci/remote/remote.go` `normalize`, `SignatureTagSuffix`);
//! - one layer per signature: the simple-signing payload itself, uncompressed, media type
//!   `application/vnd.dev.cosign.simplesigning.v1+json`, with the base64 (standard, padded)
//!   ASN.1 DER ECDSA-P256-SHA256 signature of those bytes in the layer descriptor's annotation
//!   `dev.cosignproject.cosign/signature` (`pkg/oci/static/signature.go`);
//! - a new signature is appended to the image already there (`pkg/oci/mutate/signatures.go`
//!   `AppendSignatures`), which is written back under the same tag;
//! - `cosign verify` checks, for at least one layer, the signature over the payload bytes and
//!   that the payload's `critical.image.docker-manifest-digest` is the image's digest
//!   (`pkg/cosign/verifiers.go` `SimpleClaimVerifier`).
//!
//! Keys are cosign's files ([`key`]). ECDSA signatures are randomised, so a digest is signed
//! again only when no signature of this key is there: a re-run writes nothing.

pub mod attestation;
mod key;
mod payload;

pub use key::{SigningKey, VerificationKey};
pub use payload::payload;

use std::collections::BTreeMap;

use base64::Engine as _;
use bytes::Bytes;
use serde_json::{Value, json};

use super::{Reference, Registry, RegistryError, is_sha256_digest, sha256_digest};

/// The media type of a signature layer (`ctypes.SimpleSigningMediaType`).
pub const SIMPLE_SIGNING_MEDIA_TYPE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// The layer annotation holding the signature (`static.SignatureAnnotationKey`).
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Layers of a signature image read at most: cosign's own cap (`pkg/oci/internal/signature`,
/// `maxLayers = 1000`).
const MAX_SIGNATURES: usize = 1000;
/// A simple-signing payload is a few hundred bytes; its optional annotations are a user's
/// few key/values. Anything larger is not a payload cosign wrote.
const MAX_PAYLOAD_BYTES: u64 = 64 << 10;

/// A signature could not be written or verified.
#[derive(Debug, thiserror::Error)]
pub enum CosignError {
    /// A key file or Secret that cannot be used; the message says why.
    #[error("{0}")]
    Key(String),
    #[error("{what}: {source}")]
    Registry {
        what: String,
        #[source]
        source: RegistryError,
    },
    /// The `.sig` image exists but is not what cosign writes.
    #[error("{tag}: not a cosign signature image: {why}")]
    Malformed { tag: String, why: String },
    #[error(
        "{image} has no cosign signature (no {tag} in its repository): sign it with \
         `cosign sign --key` or packsmith's bundle.signing"
    )]
    Unsigned { image: String, tag: String },
    #[error("{image}: none of its {count} signature(s) verifies with the given key(s): {}", .reasons.join("; "))]
    NoMatch {
        image: String,
        count: usize,
        reasons: Vec<String>,
    },
}

impl CosignError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Registry { source, .. } if source.is_retryable())
    }

    pub fn is_auth(&self) -> bool {
        matches!(self, Self::Registry { source, .. } if source.is_auth())
    }

    pub fn is_denied(&self) -> bool {
        matches!(self, Self::Registry { source, .. } if source.is_denied())
    }

    /// A verification that ran and failed (as opposed to one that could not run).
    pub fn is_verification_failure(&self) -> bool {
        matches!(
            self,
            Self::Unsigned { .. } | Self::NoMatch { .. } | Self::Malformed { .. }
        )
    }
}

/// The tag cosign stores `digest`'s signatures under: `sha256-<hex>.sig`.
pub fn signature_tag(digest: &str) -> Option<String> {
    is_sha256_digest(digest).then(|| format!("{}.sig", digest.replacen(':', "-", 1)))
}

/// The tag `tag_of` gives `digest`'s cosign artifact (`.sig`, `.att`), and its reference in
/// `repository`.
fn artifact(
    repository: &Reference,
    digest: &str,
    tag_of: fn(&str) -> Option<String>,
) -> Result<(String, String), CosignError> {
    let tag = tag_of(digest)
        .ok_or_else(|| CosignError::Key(format!("{digest} is not a sha256 digest")))?;
    let reference = format!(
        "{}/{}:{tag}",
        repository.registry(),
        repository.repository()
    );
    Ok((tag, reference))
}

/// What [`sign`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signed {
    /// A signature of this key over this digest was already there: nothing written.
    Present { signature: String },
    /// The signature was appended (to the signatures of other keys, kept).
    Written { signature: String },
}

impl Signed {
    /// `repository:sha256-<hex>.sig`.
    pub fn signature(&self) -> &str {
        match self {
            Self::Present { signature } | Self::Written { signature } => signature,
        }
    }
}

/// One layer of a signature image, as its descriptor says.
struct Layer {
    /// The descriptor as read, kept verbatim when the image is written back: other signers'
    /// annotations (certificates, bundles) are theirs.
    descriptor: Value,
    digest: String,
    size: u64,
    signature: Option<Vec<u8>>,
}

/// The layers of the signature image `tag` of `repository`, or none when there is no image.
async fn signature_layers(
    registry: &Registry,
    repository: &Reference,
    tag: &str,
) -> Result<Vec<Layer>, CosignError> {
    let client = registry.distribution();
    let manifest = client
        .find_manifest(repository, tag, &[OCI_MANIFEST, DOCKER_MANIFEST])
        .await
        .map_err(|source| CosignError::Registry {
            what: format!("reading the signatures {}:{tag}", repository.repository()),
            source,
        })?;
    let Some(manifest) = manifest else {
        return Ok(Vec::new());
    };
    parse_layers(tag, &manifest)
}

/// The layer descriptors of a cosign image (`.sig`, `.att`), each with its digest and size,
/// within cosign's cap on layers.
fn descriptors(tag: &str, manifest: &[u8]) -> Result<Vec<(Value, String, u64)>, CosignError> {
    let malformed = |why: String| CosignError::Malformed {
        tag: tag.to_owned(),
        why,
    };
    let manifest: Value =
        serde_json::from_slice(manifest).map_err(|e| malformed(format!("manifest: {e}")))?;
    let layers = manifest
        .get("layers")
        .and_then(Value::as_array)
        .ok_or_else(|| malformed("the manifest has no layers".to_owned()))?;
    if layers.len() > MAX_SIGNATURES {
        return Err(malformed(format!(
            "{} layers, more than the {MAX_SIGNATURES} cosign reads",
            layers.len()
        )));
    }
    layers
        .iter()
        .map(|descriptor| {
            let digest = descriptor
                .get("digest")
                .and_then(Value::as_str)
                .filter(|d| is_sha256_digest(d))
                .ok_or_else(|| malformed("a layer without a sha256 digest".to_owned()))?;
            let size = descriptor
                .get("size")
                .and_then(Value::as_u64)
                .ok_or_else(|| malformed(format!("layer {digest} has no size")))?;
            Ok((descriptor.clone(), digest.to_owned(), size))
        })
        .collect()
}

fn parse_layers(tag: &str, manifest: &[u8]) -> Result<Vec<Layer>, CosignError> {
    Ok(descriptors(tag, manifest)?
        .into_iter()
        .map(|(descriptor, digest, size)| {
            // A layer without the annotation (or with one that is not base64) is nobody's
            // signature: kept when written back, never verified.
            let signature = descriptor
                .get("annotations")
                .and_then(|a| a.get(SIGNATURE_ANNOTATION))
                .and_then(Value::as_str)
                .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok());
            Layer {
                descriptor,
                digest,
                size,
                signature,
            }
        })
        .collect())
}

/// Writes the cosign image `repository:tag` of `layers` (descriptors whose blobs are in the
/// repository) with its config; `shown` names it in errors.
async fn write_image(
    registry: &Registry,
    repository: &Reference,
    tag: &str,
    shown: &str,
    layers: &[(&Value, &str)],
) -> Result<(), CosignError> {
    let client = registry.distribution();
    let write_error = |what: &str| {
        let what = format!("writing {what} of {shown}");
        move |source| CosignError::Registry { what, source }
    };
    let digests: Vec<&str> = layers.iter().map(|(_, digest)| *digest).collect();
    let config = config(&digests);
    let config_digest = sha256_digest(&config);
    client
        .push_blob(repository, &config_digest, Bytes::from(config.clone()))
        .await
        .map_err(write_error("the config"))?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "size": config.len(), "digest": config_digest},
        "layers": layers.iter().map(|(descriptor, _)| *descriptor).collect::<Vec<_>>(),
    });
    let manifest = serde_json::to_vec(&manifest).map_err(|e| CosignError::Key(e.to_string()))?;
    client
        .put_manifest(repository, tag, OCI_MANIFEST, Bytes::from(manifest))
        .await
        .map_err(write_error("the manifest"))
}

/// Signs the manifest `digest` of `repository` with `key`, as `cosign sign --key` does: the
/// simple-signing payload as a layer of `sha256-<hex>.sig`, appended to the signatures there.
/// Nothing is written when a signature of this key over this digest is already there.
pub async fn sign(
    registry: &Registry,
    repository: &Reference,
    digest: &str,
    key: &SigningKey,
) -> Result<Signed, CosignError> {
    let (tag, signature) = artifact(repository, digest, signature_tag)?;
    let payload = payload(repository, digest);
    let payload_digest = sha256_digest(&payload);
    let mut layers = signature_layers(registry, repository, &tag).await?;
    let present = layers.iter().any(|layer| {
        layer.digest == payload_digest
            && layer
                .signature
                .as_deref()
                .is_some_and(|s| key.public().verifies(s, &payload))
    });
    if present {
        return Ok(Signed::Present { signature });
    }
    let client = registry.distribution();
    let write_error = |what: &str| {
        let what = format!("writing {what} of {signature}");
        move |source| CosignError::Registry { what, source }
    };
    // The same payload signed by another key is already a blob of this image.
    if !layers.iter().any(|l| l.digest == payload_digest) {
        client
            .push_blob(repository, &payload_digest, Bytes::from(payload.clone()))
            .await
            .map_err(write_error("the payload"))?;
    }
    let signed = key.sign(&payload)?;
    layers.push(Layer {
        descriptor: json!({
            "mediaType": SIMPLE_SIGNING_MEDIA_TYPE,
            "size": payload.len(),
            "digest": payload_digest,
            "annotations": {
                SIGNATURE_ANNOTATION: base64::engine::general_purpose::STANDARD.encode(&signed),
            },
        }),
        digest: payload_digest,
        size: payload.len() as u64,
        signature: Some(signed),
    });
    let written: Vec<(&Value, &str)> = layers
        .iter()
        .map(|l| (&l.descriptor, l.digest.as_str()))
        .collect();
    write_image(registry, repository, &tag, &signature, &written).await?;
    Ok(Signed::Written { signature })
}

/// The config of a signature image as go-containerregistry's `mutate.Append` leaves it: the
/// layers' diff IDs (their digests: the layers are uncompressed), so that a later
/// `cosign sign` appends onto this image cleanly. Verification never reads it.
fn config(diff_ids: &[&str]) -> Vec<u8> {
    let config = json!({
        "architecture": "",
        "os": "",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    serde_json::to_vec(&config).unwrap_or_default()
}

/// A signature that verified.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The signed payload, as JSON.
    pub payload: Value,
    /// Which of the keys verified it (its index in the keys given).
    pub key: usize,
}

/// Verifies the cosign signatures of `image` (a tag or digest reference) with `keys`, as
/// `cosign verify --key --insecure-ignore-tlog` does. Returns the image's digest and every
/// signature that verifies with one of the keys and claims that digest; an error when none
/// does (saying why each one did not).
pub async fn verify(
    registry: &Registry,
    image: &Reference,
    keys: &[VerificationKey],
) -> Result<(String, Vec<Verified>), CosignError> {
    let client = registry.distribution();
    let shown = image.whole();
    let digest = match image.digest() {
        Some(digest) => digest.to_owned(),
        None => client
            .digest(image)
            .await
            .map_err(|source| CosignError::Registry {
                what: format!("resolving {shown}"),
                source,
            })?,
    };
    let tag = signature_tag(&digest).ok_or_else(|| CosignError::Malformed {
        tag: shown.clone(),
        why: format!("{digest} is not a sha256 digest"),
    })?;
    let repository = registry.contact(image);
    let layers = signature_layers(registry, &repository, &tag).await?;
    if layers.is_empty() {
        return Err(CosignError::Unsigned { image: shown, tag });
    }
    let mut verified = Vec::new();
    let mut reasons = BTreeMap::<String, usize>::new();
    for layer in &layers {
        let Some(signature) = &layer.signature else {
            *reasons
                .entry(format!("a layer without {SIGNATURE_ANNOTATION}"))
                .or_default() += 1;
            continue;
        };
        if layer.size > MAX_PAYLOAD_BYTES {
            *reasons
                .entry(format!("a payload over {MAX_PAYLOAD_BYTES} bytes"))
                .or_default() += 1;
            continue;
        }
        // Which key, if any, signed it is known only with the payload: read it (and check it
        // is the blob its descriptor names: a registry may not swap it).
        let payload = client
            .get_blob(&repository, &layer.digest, layer.size)
            .await
            .map_err(|source| CosignError::Registry {
                what: format!("reading the signed payload {}", layer.digest),
                source,
            })?;
        if sha256_digest(&payload) != layer.digest {
            *reasons
                .entry("a payload that is not the blob its descriptor names".to_owned())
                .or_default() += 1;
            continue;
        }
        let Some(key) = keys.iter().position(|k| k.verifies(signature, &payload)) else {
            *reasons
                .entry("a signature of another key".to_owned())
                .or_default() += 1;
            continue;
        };
        match claimed_digest(&payload) {
            Some(claimed) if claimed == digest => {}
            claimed => {
                *reasons
                    .entry(format!(
                        "a signature for another digest ({})",
                        claimed.unwrap_or_else(|| "none".to_owned())
                    ))
                    .or_default() += 1;
                continue;
            }
        }
        verified.push(Verified {
            payload: serde_json::from_slice(&payload).unwrap_or(Value::Null),
            key,
        });
    }
    if verified.is_empty() {
        return Err(CosignError::NoMatch {
            image: format!("{shown} ({digest})"),
            count: layers.len(),
            reasons: reasons
                .into_iter()
                .map(|(why, n)| if n == 1 { why } else { format!("{n}× {why}") })
                .collect(),
        });
    }
    Ok((digest, verified))
}

/// `critical.image.docker-manifest-digest` of a simple-signing payload: all `cosign verify`
/// checks of the claim without `-a` annotations.
fn claimed_digest(payload: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(payload).ok()?;
    value
        .pointer("/critical/image/docker-manifest-digest")
        .and_then(Value::as_str)
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_tag_is_cosigns() {
        let hex = "f3cfc9d0dbf931d3db4685ec659b7ac68e2a578219da4aae65427886e649b06b";
        assert_eq!(
            signature_tag(&format!("sha256:{hex}")).as_deref(),
            Some(format!("sha256-{hex}.sig").as_str())
        );
        assert_eq!(signature_tag("sha256:../../x"), None);
    }

    #[test]
    fn layers_keep_their_descriptors_and_skip_unsigned_ones() {
        let manifest = json!({
            "schemaVersion": 2,
            "layers": [
                {"mediaType": SIMPLE_SIGNING_MEDIA_TYPE, "size": 3,
                 "digest": sha256_digest(b"abc"),
                 "annotations": {SIGNATURE_ANNOTATION: "AAEC", "dev.sigstore.cosign/bundle": "{}"}},
                {"mediaType": SIMPLE_SIGNING_MEDIA_TYPE, "size": 3, "digest": sha256_digest(b"def")},
            ],
        });
        let layers = parse_layers("t", &serde_json::to_vec(&manifest).unwrap()).unwrap();
        assert_eq!(layers[0].signature.as_deref(), Some(&[0u8, 1, 2][..]));
        assert_eq!(
            layers[0].descriptor["annotations"]["dev.sigstore.cosign/bundle"],
            "{}"
        );
        assert!(layers[1].signature.is_none());
    }

    #[test]
    fn hostile_signature_images_are_refused() {
        let too_many = json!({"layers": vec![json!({"digest": sha256_digest(b""), "size": 0}); MAX_SIGNATURES + 1]});
        let e = parse_layers("t", &serde_json::to_vec(&too_many).unwrap())
            .err()
            .unwrap();
        assert!(e.to_string().contains("more than the 1000"), "{e}");
        let traversal = json!({"layers": [{"digest": "sha256:../../etc", "size": 1}]});
        assert!(parse_layers("t", &serde_json::to_vec(&traversal).unwrap()).is_err());
        assert!(parse_layers("t", b"[").is_err());
    }

    #[test]
    fn the_config_lists_every_layer_as_a_diff_id() {
        let (a, b) = (sha256_digest(b"a"), sha256_digest(b"b"));
        let config: Value = serde_json::from_slice(&config(&[&a, &b])).unwrap();
        assert_eq!(
            config["rootfs"]["diff_ids"],
            json!([sha256_digest(b"a"), sha256_digest(b"b")])
        );
    }
}
