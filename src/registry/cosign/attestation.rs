//! cosign's attestations (sigstore/cosign `specs/ATTESTATION_SPEC.md`, `cmd/cosign/cli/attest`):
//! an OCI image tagged `sha256-<hex>.att` next to the image attested, one layer per
//! attestation — an in-toto Statement in a DSSE envelope (media type
//! `application/vnd.dsse.envelope.v1+json`), the layer annotated with its `predicateType`
//! and an empty `dev.cosignproject.cosign/signature`. The envelope's signatures are over
//! DSSE's pre-authentication encoding of the payload (`DSSEv1 <len> <type> <len> <body>`), so
//! with a key `cosign verify-attestation --key` accepts it; without one it is a document a
//! person or `packsmith describe` reads, not a proof.
//!
//! A new attestation is appended to those there; one with the same statement (and, with a
//! key, a signature of that key) is not written again.

use base64::Engine as _;
use bytes::Bytes;
use serde_json::{Value, json};

use super::{CosignError, OCI_MANIFEST, SIGNATURE_ANNOTATION, SigningKey};
use crate::registry::{Reference, Registry, is_sha256_digest, sha256_digest};

/// The layer media type of an attestation (`types.DssePayloadType`).
pub const DSSE_MEDIA_TYPE: &str = "application/vnd.dsse.envelope.v1+json";
/// The DSSE payload type of an in-toto Statement.
pub const IN_TOTO_PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
/// The layer annotation naming the predicate (cosign's `predicateType`).
pub const PREDICATE_TYPE_ANNOTATION: &str = "predicateType";
/// An attestation envelope read at most: a provenance document is a few KiB.
const MAX_ENVELOPE_BYTES: u64 = 1 << 20;

/// The tag cosign stores `digest`'s attestations under: `sha256-<hex>.att`.
pub fn attestation_tag(digest: &str) -> Option<String> {
    is_sha256_digest(digest).then(|| format!("{}.att", digest.replacen(':', "-", 1)))
}

/// DSSE's pre-authentication encoding: what an envelope's signatures sign.
fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {payload_type} {} ",
        payload_type.len(),
        payload.len()
    )
    .into_bytes();
    out.extend_from_slice(payload);
    out
}

/// An attestation as read back.
#[derive(Debug, Clone)]
pub struct Attestation {
    pub predicate_type: String,
    /// The in-toto Statement.
    pub statement: Value,
    /// Signatures in its envelope.
    pub signatures: usize,
}

/// What [`attach`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attached {
    Present { attestation: String },
    Written { attestation: String },
}

impl Attached {
    /// `repository:sha256-<hex>.att`.
    pub fn attestation(&self) -> &str {
        match self {
            Self::Present { attestation } | Self::Written { attestation } => attestation,
        }
    }
}

/// One layer of an attestation image with its envelope.
struct Layer {
    descriptor: Value,
    digest: String,
    size: u64,
    predicate_type: Option<String>,
}

fn parse_layers(tag: &str, manifest: &[u8]) -> Result<Vec<Layer>, CosignError> {
    Ok(super::descriptors(tag, manifest)?
        .into_iter()
        .map(|(descriptor, digest, size)| Layer {
            predicate_type: descriptor
                .get("annotations")
                .and_then(|a| a.get(PREDICATE_TYPE_ANNOTATION))
                .and_then(Value::as_str)
                .map(str::to_owned),
            descriptor,
            digest,
            size,
        })
        .collect())
}

/// The layers of `repository:tag`, or none when there is no such image.
async fn layers(
    registry: &Registry,
    repository: &Reference,
    tag: &str,
) -> Result<Vec<Layer>, CosignError> {
    let manifest = registry
        .distribution()
        .find_manifest(repository, tag, &[OCI_MANIFEST])
        .await
        .map_err(|source| CosignError::Registry {
            what: format!("reading the attestations {}:{tag}", repository.repository()),
            source,
        })?;
    match manifest {
        Some(manifest) => parse_layers(tag, &manifest),
        None => Ok(Vec::new()),
    }
}

/// A layer's envelope: `(payload type, payload, signatures)`.
async fn envelope(
    registry: &Registry,
    repository: &Reference,
    layer: &Layer,
) -> Result<Option<(String, Vec<u8>, Vec<Vec<u8>>)>, CosignError> {
    let size = layer.size;
    if size > MAX_ENVELOPE_BYTES {
        return Ok(None);
    }
    let bytes = registry
        .distribution()
        .get_blob(repository, &layer.digest, size)
        .await
        .map_err(|source| CosignError::Registry {
            what: format!("reading the attestation {}", layer.digest),
            source,
        })?;
    if sha256_digest(&bytes) != layer.digest {
        return Ok(None);
    }
    let Ok(value) = serde_json::from_slice::<Value>(&bytes) else {
        return Ok(None);
    };
    let b64 = base64::engine::general_purpose::STANDARD;
    let payload_type = value["payloadType"].as_str().unwrap_or_default().to_owned();
    let Some(payload) = value["payload"].as_str().and_then(|p| b64.decode(p).ok()) else {
        return Ok(None);
    };
    let signatures = value["signatures"]
        .as_array()
        .map(|all| {
            all.iter()
                .filter_map(|s| s["sig"].as_str().and_then(|s| b64.decode(s).ok()))
                .collect()
        })
        .unwrap_or_default();
    Ok(Some((payload_type, payload, signatures)))
}

/// Attaches `statement` (an in-toto Statement of `predicate_type` about the manifest
/// `digest` of `repository`) as cosign attaches an attestation, signed with `key` when given.
/// Nothing is written when the same statement is there (signed by `key`, when given) — or,
/// with `any_of_type`, any attestation of `predicate_type` (signed by `key`): a bundle pushed
/// before keeps the provenance of its push, not one rewritten by every newer packsmith.
pub async fn attach(
    registry: &Registry,
    repository: &Reference,
    digest: &str,
    predicate_type: &str,
    statement: &[u8],
    key: Option<&SigningKey>,
    any_of_type: bool,
) -> Result<Attached, CosignError> {
    let (tag, attestation) = super::artifact(repository, digest, attestation_tag)?;
    let mut existing = layers(registry, repository, &tag).await?;
    let signed_by_key = |payload: &[u8], signatures: &[Vec<u8>]| match key {
        Some(key) => signatures.iter().any(|s| {
            key.public()
                .verifies(s, &pae(IN_TOTO_PAYLOAD_TYPE, payload))
        }),
        None => true,
    };
    let of_type = || {
        existing
            .iter()
            .filter(|l| l.predicate_type.as_deref() == Some(predicate_type))
    };
    // Any attestation of the type will do and no key must have signed it: the manifest says
    // enough, no envelope is read (the steady state of an unsigned bundle).
    if any_of_type && key.is_none() && of_type().next().is_some() {
        return Ok(Attached::Present { attestation });
    }
    for layer in of_type() {
        if let Some((payload_type, payload, signatures)) =
            envelope(registry, repository, layer).await?
            && payload_type == IN_TOTO_PAYLOAD_TYPE
            && (any_of_type || payload == statement)
            && signed_by_key(&payload, &signatures)
        {
            return Ok(Attached::Present { attestation });
        }
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    let signatures = match key {
        Some(key) => vec![json!({
            "keyid": "",
            "sig": b64.encode(key.sign(&pae(IN_TOTO_PAYLOAD_TYPE, statement))?),
        })],
        None => Vec::new(),
    };
    let envelope = serde_json::to_vec(&json!({
        "payloadType": IN_TOTO_PAYLOAD_TYPE,
        "payload": b64.encode(statement),
        "signatures": signatures,
    }))
    .map_err(|e| CosignError::Key(e.to_string()))?;
    let envelope_digest = sha256_digest(&envelope);
    registry
        .distribution()
        .push_blob(repository, &envelope_digest, Bytes::from(envelope.clone()))
        .await
        .map_err(|source| CosignError::Registry {
            what: format!("writing the attestation of {attestation}"),
            source,
        })?;
    existing.push(Layer {
        descriptor: json!({
            "mediaType": DSSE_MEDIA_TYPE,
            "size": envelope.len(),
            "digest": envelope_digest,
            "annotations": {
                PREDICATE_TYPE_ANNOTATION: predicate_type,
                SIGNATURE_ANNOTATION: "",
            },
        }),
        digest: envelope_digest,
        size: envelope.len() as u64,
        predicate_type: Some(predicate_type.to_owned()),
    });
    let written: Vec<(&Value, &str)> = existing
        .iter()
        .map(|l| (&l.descriptor, l.digest.as_str()))
        .collect();
    super::write_image(registry, repository, &tag, &attestation, &written).await?;
    Ok(Attached::Written { attestation })
}

/// Every attestation of the manifest `digest` in `repository` (as contacted) that is an
/// in-toto Statement, newest last.
pub async fn read(
    registry: &Registry,
    repository: &Reference,
    digest: &str,
) -> Result<Vec<Attestation>, CosignError> {
    let Some(tag) = attestation_tag(digest) else {
        return Ok(Vec::new());
    };
    let mut found = Vec::new();
    for layer in layers(registry, repository, &tag).await? {
        let Some(predicate_type) = layer.predicate_type.clone() else {
            continue;
        };
        if let Some((payload_type, payload, signatures)) =
            envelope(registry, repository, &layer).await?
            && payload_type == IN_TOTO_PAYLOAD_TYPE
            && let Ok(statement) = serde_json::from_slice(&payload)
        {
            found.push(Attestation {
                predicate_type,
                statement,
                signatures: signatures.len(),
            });
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// DSSE v1.0's protocol (secure-systems-lab/dsse `protocol.md`): `PAE(type, body)` is
    /// `"DSSEv1" SP LEN(type) SP type SP LEN(body) SP body`, lengths in ASCII decimal; the
    /// spec's own example is `DSSEv1 29 http://example.com/HelloWorld 11 hello world`.
    #[test]
    fn pre_authentication_encoding_is_dsses() {
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
        );
    }

    #[test]
    fn the_attestation_tag_is_cosigns() {
        let hex = "ab".repeat(32);
        assert_eq!(
            attestation_tag(&format!("sha256:{hex}")).as_deref(),
            Some(format!("sha256-{hex}.att").as_str())
        );
        assert_eq!(attestation_tag("sha256:x/../y"), None);
    }
}
