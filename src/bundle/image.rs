//! The bundle image around the layer: config and manifest JSON exactly as imgpkg (through
//! go-containerregistry's `mutate.Append` on `empty.Image`) writes them, and the checks a pull
//! makes before trusting what a registry returned.

use serde::Deserialize;

/// The config label that makes an image an imgpkg bundle.
pub const BUNDLE_LABEL: &str = "dev.carvel.imgpkg.bundle";

pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.docker.container.image.v1+json";
pub const LAYER_MEDIA_TYPE: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// What an OCI-manifest bundle (pushed by other tools) says instead; accepted on pull.
pub const OCI_MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

pub use crate::registry::{digest_string, sha256_digest};

/// The image config: compact JSON in go-containerregistry's field order, zero timestamps.
pub fn config_json(diff_id: &str) -> Vec<u8> {
    config_json_with_labels(diff_id, &std::collections::BTreeMap::new(), true)
}

/// [`config_json`] with `labels` beside the bundle label (imgpkg's `push --labels`), or
/// without it for a plain image (`push -i`): Go's `encoding/json` prints a map with its keys
/// sorted bytewise, as a `BTreeMap` iterates, and omits an empty `Labels` (`omitempty`).
pub fn config_json_with_labels(
    diff_id: &str,
    labels: &std::collections::BTreeMap<String, String>,
    bundle: bool,
) -> Vec<u8> {
    let mut all: std::collections::BTreeMap<&str, &str> = labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    if bundle {
        all.insert(BUNDLE_LABEL, "true");
    }
    let labels = all
        .iter()
        .map(|(k, v)| format!("{}:{}", go_json_string(k), go_json_string(v)))
        .collect::<Vec<_>>()
        .join(",");
    let config = if labels.is_empty() {
        String::new()
    } else {
        format!(r#""Labels":{{{labels}}}"#)
    };
    format!(
        concat!(
            r#"{{"architecture":"","created":"0001-01-01T00:00:00Z","#,
            r#""history":[{{"author":"imgpkg","created":"0001-01-01T00:00:00Z","created_by":"imgpkg"}}],"#,
            r#""os":"","rootfs":{{"type":"layers","diff_ids":["{diff_id}"]}},"#,
            r#""config":{{{config}}}}}"#
        ),
        diff_id = diff_id,
        config = config,
    )
    .into_bytes()
}

/// A JSON string as Go's `encoding/json` writes it: HTML-safe (`<`, `>`, `&` as `\u003c`…),
/// U+2028 and U+2029 escaped, control characters as `\n`, `\r`, `\t`, `\b`, `\f` (Go 1.22 and
/// later) or `\u00XX`.
fn go_json_string(s: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A blob as a manifest references it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
}

/// The Docker schema 2 manifest: compact JSON, go-containerregistry's field order.
pub fn manifest_json(config: &Descriptor, layer: &Descriptor) -> Vec<u8> {
    let descriptor = |d: &Descriptor| {
        format!(
            r#"{{"mediaType":"{}","size":{},"digest":"{}"}}"#,
            d.media_type, d.size, d.digest
        )
    };
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{MANIFEST_MEDIA_TYPE}","config":{},"layers":[{}]}}"#,
        descriptor(config),
        descriptor(layer)
    )
    .into_bytes()
}

/// The parts of a pulled manifest a bundle pull needs, after imgpkg's checks.
#[derive(Debug, Clone)]
pub struct BundleManifest {
    pub config: Descriptor,
    pub layer: Descriptor,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    schema_version: u32,
    #[serde(default)]
    media_type: Option<String>,
    config: Option<RawDescriptor>,
    #[serde(default)]
    layers: Vec<RawDescriptor>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDescriptor {
    media_type: String,
    digest: String,
    size: i64,
}

impl RawDescriptor {
    fn check(self) -> Result<Descriptor, String> {
        if !is_sha256_digest(&self.digest) {
            return Err(format!(
                "descriptor digest {:?} is not sha256:<64 hex>",
                self.digest
            ));
        }
        let size = u64::try_from(self.size)
            .map_err(|_| format!("descriptor {} has a negative size", self.digest))?;
        Ok(Descriptor {
            media_type: self.media_type,
            digest: self.digest,
            size,
        })
    }
}

/// Parses an image manifest and applies imgpkg's rule: exactly one layer, gzip'd tar.
pub fn parse_bundle_manifest(bytes: &[u8]) -> Result<BundleManifest, String> {
    let raw: RawManifest =
        serde_json::from_slice(bytes).map_err(|e| format!("manifest is not valid JSON: {e}"))?;
    if raw.schema_version != 2 {
        return Err(format!(
            "manifest schemaVersion {} is not 2",
            raw.schema_version
        ));
    }
    if let Some(media_type) = &raw.media_type
        && media_type != MANIFEST_MEDIA_TYPE
        && media_type != OCI_MANIFEST_MEDIA_TYPE
    {
        return Err(format!(
            "manifest media type {media_type} is not an image manifest (an index is not a bundle)"
        ));
    }
    let config = raw
        .config
        .ok_or("manifest has no config: an index is not a bundle")?
        .check()?;
    let mut layers = raw.layers.into_iter();
    let (Some(layer), None) = (layers.next(), layers.next()) else {
        return Err("a bundle image has exactly one layer".to_owned());
    };
    let layer = layer.check()?;
    if layer.media_type != LAYER_MEDIA_TYPE {
        return Err(format!(
            "bundle layer media type {} is not {LAYER_MEDIA_TYPE}",
            layer.media_type
        ));
    }
    Ok(BundleManifest { config, layer })
}

#[derive(Deserialize)]
struct RawConfig {
    #[serde(default)]
    config: RawContainerConfig,
    rootfs: Option<RawRootfs>,
}

#[derive(Deserialize, Default)]
struct RawContainerConfig {
    #[serde(rename = "Labels", default)]
    labels: Option<std::collections::BTreeMap<String, String>>,
}

#[derive(Deserialize)]
struct RawRootfs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

/// The diff_id of a bundle's only layer, after checking the config carries the bundle label.
pub fn parse_bundle_config(bytes: &[u8]) -> Result<String, String> {
    let raw: RawConfig = serde_json::from_slice(bytes)
        .map_err(|e| format!("image config is not valid JSON: {e}"))?;
    if !raw
        .config
        .labels
        .as_ref()
        .is_some_and(|labels| labels.contains_key(BUNDLE_LABEL))
    {
        return Err(format!(
            "the image is not an imgpkg bundle (its config lacks the {BUNDLE_LABEL} label)"
        ));
    }
    let diff_ids = raw.rootfs.map(|r| r.diff_ids).unwrap_or_default();
    match diff_ids.as_slice() {
        [diff_id] if is_sha256_digest(diff_id) => Ok(diff_id.clone()),
        _ => Err(format!(
            "image config lists {} diff_ids, a bundle has exactly one sha256",
            diff_ids.len()
        )),
    }
}

pub fn is_sha256_digest(s: &str) -> bool {
    s.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_written_as_go_encoding_json_writes_a_map() {
        // What Go 1.26's encoding/json prints for this map (a config's Labels), as a fact:
        // {"a.b/c":"x","dev.carvel.imgpkg.bundle":"true","team":"a\u0026b \u003cc\u003e \"q\"
        // \\ \n\t\u2028 é\b\f\u0001","z":"1"}
        let labels = std::collections::BTreeMap::from([
            (
                "team".to_owned(),
                "a&b <c> \"q\" \\ \n\t\u{2028} é\u{8}\u{c}\u{1}".to_owned(),
            ),
            ("z".to_owned(), "1".to_owned()),
            ("a.b/c".to_owned(), "x".to_owned()),
        ]);
        let config = String::from_utf8(config_json_with_labels("sha256:d", &labels, true)).unwrap();
        assert!(
            config.ends_with(concat!(
                r#""config":{"Labels":{"a.b/c":"x","dev.carvel.imgpkg.bundle":"true","#,
                r#""team":"a\u0026b \u003cc\u003e \"q\" \\ \n\t\u2028 é\b\f\u0001","z":"1"}}}"#
            )),
            "{config}"
        );
        // No labels: the bytes every bundle had before.
        assert_eq!(
            config_json("sha256:d"),
            config_json_with_labels("sha256:d", &Default::default(), true)
        );
        assert!(
            String::from_utf8(config_json("sha256:d"))
                .unwrap()
                .ends_with(r#""config":{"Labels":{"dev.carvel.imgpkg.bundle":"true"}}}"#)
        );
    }
    use pretty_assertions::assert_eq;

    const DIFF_ID: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn config_is_imgpkgs_byte_for_byte() {
        let expected = format!(
            "{{\"architecture\":\"\",\"created\":\"0001-01-01T00:00:00Z\",\"history\":[{{\"author\":\"imgpkg\",\"created\":\"0001-01-01T00:00:00Z\",\"created_by\":\"imgpkg\"}}],\"os\":\"\",\"rootfs\":{{\"type\":\"layers\",\"diff_ids\":[\"{DIFF_ID}\"]}},\"config\":{{\"Labels\":{{\"dev.carvel.imgpkg.bundle\":\"true\"}}}}}}"
        );
        let config = config_json(DIFF_ID);
        assert_eq!(String::from_utf8(config.clone()).unwrap(), expected);
        assert_eq!(parse_bundle_config(&config).unwrap(), DIFF_ID);
    }

    #[test]
    fn manifest_round_trips_through_the_pull_checks() {
        let config = Descriptor {
            media_type: CONFIG_MEDIA_TYPE.to_owned(),
            digest: DIFF_ID.to_owned(),
            size: 300,
        };
        let layer = Descriptor {
            media_type: LAYER_MEDIA_TYPE.to_owned(),
            digest: DIFF_ID.replace('0', "f"),
            size: 12345,
        };
        let bytes = manifest_json(&config, &layer);
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.starts_with(
            r#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{"mediaType":"application/vnd.docker.container.image.v1+json","size":300,"digest":"sha256:0123"#
        ));
        let parsed = parse_bundle_manifest(&bytes).unwrap();
        assert_eq!(parsed.config, config);
        assert_eq!(parsed.layer, layer);
    }

    #[test]
    fn pull_checks_reject_what_imgpkg_rejects() {
        let layer = |media_type: &str| {
            format!(r#"{{"mediaType":"{media_type}","size":1,"digest":"{DIFF_ID}"}}"#)
        };
        let manifest = |layers: &[String]| {
            format!(
                r#"{{"schemaVersion":2,"config":{},"layers":[{}]}}"#,
                layer(CONFIG_MEDIA_TYPE),
                layers.join(",")
            )
        };
        let good = layer(LAYER_MEDIA_TYPE);
        assert!(parse_bundle_manifest(manifest(std::slice::from_ref(&good)).as_bytes()).is_ok());
        let two = parse_bundle_manifest(manifest(&[good.clone(), good]).as_bytes()).unwrap_err();
        assert!(two.contains("exactly one layer"), "{two}");
        let none = parse_bundle_manifest(manifest(&[]).as_bytes()).unwrap_err();
        assert!(none.contains("exactly one layer"), "{none}");
        let oci = parse_bundle_manifest(
            manifest(&[layer("application/vnd.oci.image.layer.v1.tar+gzip")]).as_bytes(),
        )
        .unwrap_err();
        assert!(oci.contains("media type"), "{oci}");
        let index = parse_bundle_manifest(
            br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#,
        )
        .unwrap_err();
        assert!(index.contains("index"), "{index}");

        let plain = r#"{"rootfs":{"type":"layers","diff_ids":[]},"config":{}}"#;
        let err = parse_bundle_config(plain.as_bytes()).unwrap_err();
        assert!(err.contains("not an imgpkg bundle"), "{err}");
    }
}
