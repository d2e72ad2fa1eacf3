//! imgpkg's image-locations image: after a bundle is copied into a repository, imgpkg writes
//! `REPO:sha256-<bundle hex>.image-locations.imgpkg`, a one-layer image whose
//! `image-locations.yml` lists the images the bundle's ImagesLock names and which of them are
//! bundles, so that `imgpkg pull` rewrites the pulled lock without asking the registry for
//! every image (`pkg/imgpkg/bundle/bundle.go`: `NoteCopy`; `locations_configs.go`:
//! `locationsTagFmt = "%s-%s.image-locations.imgpkg"`; `locations_config.go`:
//! `ImageLocationsConfig`, written with a leading `---` by sigs.k8s.io/yaml; the layer as
//! `image/tar_image.go` writes it: a `.` directory (0700) and the file (0600), zero times).

use bytes::Bytes;
use serde::Serialize;

use super::super::{gotar, image};
use crate::registry::sha256_digest;

/// The tag of a bundle's locations image.
pub(super) fn tag(bundle_digest: &str) -> String {
    format!(
        "{}.image-locations.imgpkg",
        bundle_digest.replacen(':', "-", 1)
    )
}

#[derive(Serialize)]
struct Config<'a> {
    #[serde(rename = "apiVersion")]
    api_version: &'static str,
    kind: &'static str,
    images: Vec<Location<'a>>,
}

#[derive(Serialize)]
struct Location<'a> {
    image: &'a str,
    #[serde(rename = "isBundle")]
    is_bundle: bool,
}

/// `image-locations.yml` for `images` (each image as the bundle's ImagesLock names it, and
/// whether it is a bundle).
pub(super) fn yaml(images: &[(String, bool)]) -> Result<String, crate::carvel::Error> {
    let config = Config {
        api_version: crate::carvel::imgpkg::API_VERSION,
        kind: "ImageLocations",
        images: images
            .iter()
            .map(|(image, is_bundle)| Location {
                image,
                is_bundle: *is_bundle,
            })
            .collect(),
    };
    Ok(format!(
        "---\n{}",
        crate::carvel::yaml::to_go_yaml("ImageLocations", &config)?
    ))
}

/// The image: (manifest, config, layer), each with its digest.
pub(super) struct LocationsImage {
    pub(super) manifest: Bytes,
    pub(super) config: (String, Bytes),
    pub(super) layer: (String, Bytes),
}

pub(super) fn image(yaml: &str) -> LocationsImage {
    let mut tar = gotar::header(".", gotar::TYPE_DIR, 0o700, 0);
    tar.extend(gotar::header(
        "image-locations.yml",
        gotar::TYPE_REG,
        0o600,
        yaml.len() as u64,
    ));
    tar.extend_from_slice(yaml.as_bytes());
    tar.extend_from_slice(gotar::padding(yaml.len() as u64));
    tar.extend_from_slice(&gotar::END_OF_ARCHIVE);
    let diff_id = sha256_digest(&tar);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    // Writing into a Vec cannot fail.
    let _ = std::io::Write::write_all(&mut gz, &tar);
    let layer = gz.finish().unwrap_or_default();
    let config = image::config_json_with_labels(&diff_id, &Default::default(), false);
    let descriptor = |media_type: &str, data: &[u8]| image::Descriptor {
        media_type: media_type.to_owned(),
        digest: sha256_digest(data),
        size: data.len() as u64,
    };
    let manifest = image::manifest_json(
        &descriptor(image::CONFIG_MEDIA_TYPE, &config),
        &descriptor(image::LAYER_MEDIA_TYPE, &layer),
    );
    LocationsImage {
        manifest: Bytes::from(manifest),
        config: (sha256_digest(&config), Bytes::from(config)),
        layer: (sha256_digest(&layer), Bytes::from(layer)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_are_written_as_imgpkg_writes_them() {
        let digest = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            tag(&digest),
            format!("sha256-{}.image-locations.imgpkg", "a".repeat(64))
        );
        let text = yaml(&[
            (format!("r.io/app@{digest}"), false),
            (format!("r.io/inner@{digest}"), true),
        ])
        .unwrap();
        assert_eq!(
            text,
            format!(
                "---\napiVersion: imgpkg.carvel.dev/v1alpha1\nimages:\n- image: r.io/app@{digest}\n  isBundle: false\n- image: r.io/inner@{digest}\n  isBundle: true\nkind: ImageLocations\n"
            )
        );
        // The layer holds the file where imgpkg's reader looks for it.
        let built = image(&text);
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&built.layer.1[..]));
        let names: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(names, vec![".", "image-locations.yml"]);
        assert!(!graph_is_bundle(&built.config.1));
    }

    fn graph_is_bundle(config: &[u8]) -> bool {
        super::super::graph::config_is_bundle(config).unwrap()
    }
}
