//! The simple-signing payload cosign signs (sigstore/sigstore `pkg/signature/payload`):
//!
//! ```go
//! type SimpleContainerImage struct { Critical Critical `json:"critical"`; Optional map[string]interface{} `json:"optional"` }
//! type Critical struct { Identity Identity `json:"identity"`; Image Image `json:"image"`; Type string `json:"type"` }
//! type Identity struct { DockerReference string `json:"docker-reference"` }
//! type Image struct { DockerManifestDigest string `json:"docker-manifest-digest"` }
//! ```
//!
//! marshalled by Go's `json.Marshal`: compact, fields in struct order, a nil `Optional` as
//! `null`. `docker-reference` is go-containerregistry's `Repository.Name()`: registry, `/`,
//! repository, no tag or digest, Docker Hub as `index.docker.io`. The bytes are written
//! exactly, so a payload packsmith signs is byte for byte the one `cosign sign` would.

use crate::registry::Reference;

/// `critical.type` of an image signature (`payload.CosignSignatureType`).
const SIGNATURE_TYPE: &str = "cosign container image signature";

/// The payload signing the manifest `digest` of `repository`.
pub fn payload(repository: &Reference, digest: &str) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct Payload<'a> {
        critical: Critical<'a>,
        optional: Option<()>,
    }
    #[derive(serde::Serialize)]
    struct Critical<'a> {
        identity: Identity,
        image: Image<'a>,
        #[serde(rename = "type")]
        type_: &'a str,
    }
    #[derive(serde::Serialize)]
    struct Identity {
        #[serde(rename = "docker-reference")]
        docker_reference: String,
    }
    #[derive(serde::Serialize)]
    struct Image<'a> {
        #[serde(rename = "docker-manifest-digest")]
        docker_manifest_digest: &'a str,
    }
    let registry = match repository.registry() {
        "docker.io" => "index.docker.io",
        other => other,
    };
    // Reference grammar and sha256 digests hold none of the characters Go's encoder escapes
    // (`<`, `>`, `&`), so serde_json's bytes are Go's.
    serde_json::to_vec(&Payload {
        critical: Critical {
            identity: Identity {
                docker_reference: format!("{registry}/{}", repository.repository()),
            },
            image: Image {
                docker_manifest_digest: digest,
            },
            type_: SIGNATURE_TYPE,
        },
        optional: None,
    })
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// sigstore/sigstore `pkg/signature/payload/payload_test.go` `TestMarshalCosign`, and the
    /// payload of a real cosign signature (sigstore-rs `src/cosign/signature_layers.rs`).
    #[test]
    fn bytes_are_gos() {
        let reference: Reference = "registry-testing.svc.lan/busybox:latest".parse().unwrap();
        let digest = "sha256:f3cfc9d0dbf931d3db4685ec659b7ac68e2a578219da4aae65427886e649b06b";
        assert_eq!(
            String::from_utf8(payload(&reference, digest)).unwrap(),
            r#"{"critical":{"identity":{"docker-reference":"registry-testing.svc.lan/busybox"},"image":{"docker-manifest-digest":"sha256:f3cfc9d0dbf931d3db4685ec659b7ac68e2a578219da4aae65427886e649b06b"},"type":"cosign container image signature"},"optional":null}"#
        );
        let hub: Reference = "busybox".parse().unwrap();
        assert!(
            String::from_utf8(payload(&hub, digest))
                .unwrap()
                .contains(r#""docker-reference":"index.docker.io/library/busybox""#)
        );
    }
}
