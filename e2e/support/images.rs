//! Synthetic container images for the bed's registries.
//!
//! Every image is small but real: its layer is a gzip'd tar holding one file, its config names
//! the layer's uncompressed digest in `rootfs.diff_ids`, and its manifests carry the media types
//! of the format they claim (Docker schema 2, OCI, OCI index, Docker manifest list). The content
//! is derived from the repository, tag, seed and platform only, so the same arguments always give
//! the same digests and different arguments give different ones.

use std::io::Write as _;

use anyhow::Context as _;
use oci_client::Reference;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::manifest::{
    IMAGE_DOCKER_CONFIG_MEDIA_TYPE, IMAGE_DOCKER_LAYER_GZIP_MEDIA_TYPE,
    IMAGE_LAYER_GZIP_MEDIA_TYPE, IMAGE_MANIFEST_LIST_MEDIA_TYPE, IMAGE_MANIFEST_MEDIA_TYPE,
    OCI_IMAGE_INDEX_MEDIA_TYPE, OCI_IMAGE_MEDIA_TYPE,
};
use oci_client::secrets::RegistryAuth;
use serde_json::json;

use super::Bed;

/// The media type of an OCI image config (`oci_client` names it `IMAGE_CONFIG_MEDIA_TYPE`).
pub const OCI_CONFIG_MEDIA_TYPE: &str = oci_client::manifest::IMAGE_CONFIG_MEDIA_TYPE;

/// Every manifest media type a registry may answer with; what a lock stage would accept.
pub const MANIFEST_MEDIA_TYPES: &[&str] = &[
    IMAGE_MANIFEST_MEDIA_TYPE,
    IMAGE_MANIFEST_LIST_MEDIA_TYPE,
    OCI_IMAGE_MEDIA_TYPE,
    OCI_IMAGE_INDEX_MEDIA_TYPE,
];

/// One of the bed's registries, as a client sees it. Plain HTTP when `tls_ca_pem` is `None`,
/// HTTPS trusting that CA otherwise.
#[derive(Clone)]
pub struct Registry {
    /// `127.0.0.1:port`.
    pub host: String,
    pub auth: RegistryAuth,
    pub tls_ca_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("host", &self.host)
            .field("auth", &self.auth)
            .field("tls", &self.tls_ca_pem.is_some())
            .finish()
    }
}

impl Registry {
    /// The anonymous plain-HTTP registry.
    pub fn plain(bed: &Bed) -> Self {
        Self {
            host: bed.registry.clone(),
            auth: RegistryAuth::Anonymous,
            tls_ca_pem: None,
        }
    }

    /// The HTTPS registry, with the bed's credentials and CA.
    ///
    /// Panics if the CA file cannot be read: the bed is broken, no test can go on.
    pub fn tls(bed: &Bed) -> Self {
        let ca = std::fs::read(&bed.registry_tls_ca).unwrap_or_else(|e| {
            panic!(
                "reading the TLS registry's CA {}: {e}",
                bed.registry_tls_ca.display()
            )
        });
        Self {
            host: bed.registry_tls.clone(),
            auth: RegistryAuth::Basic(bed.registry_user.clone(), bed.registry_password.clone()),
            tls_ca_pem: Some(ca),
        }
    }

    /// The same registry with other credentials.
    pub fn with_auth(&self, auth: RegistryAuth) -> Self {
        Self {
            auth,
            ..self.clone()
        }
    }

    /// The client configuration `client` uses, for tests that need to change it (timeouts, no
    /// CA, …). Index manifests resolve to linux/amd64 whatever the host's platform.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig {
            platform_resolver: Some(Box::new(oci_client::client::linux_amd64_resolver)),
            ..ClientConfig::default()
        };
        match &self.tls_ca_pem {
            None => config.protocol = ClientProtocol::Http,
            Some(pem) => {
                config.protocol = ClientProtocol::Https;
                config.extra_root_certificates = vec![Certificate {
                    encoding: CertificateEncoding::Pem,
                    data: pem.clone(),
                }];
            }
        }
        config
    }

    /// A fresh client for this registry. `oci_client::Client::new` would silently fall back to a
    /// default configuration (no CA) if this one were unusable; here that is a panic instead.
    pub fn client(&self) -> oci_client::Client {
        oci_client::Client::try_from(self.client_config())
            .unwrap_or_else(|e| panic!("building an OCI client for {}: {e}", self.host))
    }

    /// `host/repo:tag`.
    pub fn reference(&self, repo: &str, tag: &str) -> anyhow::Result<Reference> {
        let s = format!("{}/{repo}:{tag}", self.host);
        s.parse().with_context(|| format!("image reference {s}"))
    }

    /// `host/repo@digest`.
    pub fn reference_by_digest(&self, repo: &str, digest: &str) -> anyhow::Result<Reference> {
        let s = format!("{}/{repo}@{digest}", self.host);
        s.parse().with_context(|| format!("image reference {s}"))
    }
}

/// The format of a synthetic image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageKind {
    /// A Docker schema 2 manifest.
    DockerV2,
    /// An OCI image manifest.
    Oci,
    /// An OCI index of linux/amd64 and linux/arm64 OCI image manifests.
    MultiArch,
    /// A Docker manifest list of linux/amd64 and linux/arm64 Docker schema 2 manifests.
    DockerManifestList,
}

impl ImageKind {
    pub const ALL: [ImageKind; 4] = [
        ImageKind::DockerV2,
        ImageKind::Oci,
        ImageKind::MultiArch,
        ImageKind::DockerManifestList,
    ];

    /// The media type of the top manifest (what a tag points at).
    pub fn media_type(self) -> &'static str {
        match self {
            ImageKind::DockerV2 => IMAGE_MANIFEST_MEDIA_TYPE,
            ImageKind::Oci => OCI_IMAGE_MEDIA_TYPE,
            ImageKind::MultiArch => OCI_IMAGE_INDEX_MEDIA_TYPE,
            ImageKind::DockerManifestList => IMAGE_MANIFEST_LIST_MEDIA_TYPE,
        }
    }

    /// A short snake_case name, usable in trial names, tags and repository paths.
    pub fn name(self) -> &'static str {
        match self {
            ImageKind::DockerV2 => "docker_v2",
            ImageKind::Oci => "oci",
            ImageKind::MultiArch => "multi_arch",
            ImageKind::DockerManifestList => "docker_manifest_list",
        }
    }

    fn is_docker(self) -> bool {
        matches!(self, ImageKind::DockerV2 | ImageKind::DockerManifestList)
    }
}

/// A blob (config or layer) of a fixture.
#[derive(Debug, Clone)]
pub struct Blob {
    pub media_type: &'static str,
    pub data: Vec<u8>,
    pub digest: String,
}

/// A manifest (image manifest, index or list) of a fixture, exactly as pushed.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub media_type: &'static str,
    pub data: Vec<u8>,
    pub digest: String,
}

/// One platform image of a fixture.
#[derive(Debug, Clone)]
pub struct PlatformImage {
    /// `amd64` or `arm64`.
    pub architecture: &'static str,
    pub config: Blob,
    pub layer: Blob,
    /// The uncompressed layer (a tar), whose digest is the config's only `diff_id`.
    pub layer_tar: Vec<u8>,
    pub manifest: Manifest,
}

/// Everything `push_image` pushes, for tests that compare what they pull with what went in.
#[derive(Debug, Clone)]
pub struct Fixture {
    pub kind: ImageKind,
    /// One image, or the amd64 and arm64 images of a multi-arch fixture.
    pub images: Vec<PlatformImage>,
    /// The index or manifest list of a multi-arch fixture.
    pub index: Option<Manifest>,
}

impl Fixture {
    /// What the tag points at: the index/list, or the only image manifest.
    pub fn top(&self) -> &Manifest {
        self.index.as_ref().unwrap_or(&self.images[0].manifest)
    }

    /// The digest of `top`.
    pub fn digest(&self) -> &str {
        &self.top().digest
    }

    /// The digest of the image for `architecture` (`amd64`, `arm64`).
    pub fn platform_digest(&self, architecture: &str) -> anyhow::Result<String> {
        self.images
            .iter()
            .find(|image| image.architecture == architecture)
            .map(|image| image.manifest.digest.clone())
            .with_context(|| format!("the fixture has no {architecture} image"))
    }

    /// Every blob, configs and layers.
    pub fn blobs(&self) -> impl Iterator<Item = &Blob> {
        self.images.iter().flat_map(|i| [&i.config, &i.layer])
    }
}

/// `sha256:<hex>` of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    use sha2::Digest as _;
    let hash = sha2::Sha256::digest(data);
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    for b in hash.iter() {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// The path of the single file in every fixture layer.
pub const LAYER_FILE: &str = "etc/packsmith-fixture";

/// Builds the fixture `push_image` would push, without pushing it.
pub fn fixture(repo: &str, tag: &str, kind: ImageKind, seed: &str) -> anyhow::Result<Fixture> {
    let docker = kind.is_docker();
    let arches: &[&'static str] = match kind {
        ImageKind::DockerV2 | ImageKind::Oci => &["amd64"],
        ImageKind::MultiArch | ImageKind::DockerManifestList => &["amd64", "arm64"],
    };
    let images = arches
        .iter()
        .map(|arch| platform_image(repo, tag, seed, arch, docker))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let index = match kind {
        ImageKind::DockerV2 | ImageKind::Oci => None,
        ImageKind::MultiArch | ImageKind::DockerManifestList => {
            let manifests: Vec<_> = images
                .iter()
                .map(|i| {
                    let mut platform = json!({ "architecture": i.architecture, "os": "linux" });
                    if i.architecture == "arm64" {
                        platform["variant"] = json!("v8");
                    }
                    json!({
                        "mediaType": i.manifest.media_type,
                        "digest": i.manifest.digest,
                        "size": i.manifest.data.len(),
                        "platform": platform,
                    })
                })
                .collect();
            let media_type = kind.media_type();
            let data = serde_json::to_vec_pretty(&json!({
                "schemaVersion": 2,
                "mediaType": media_type,
                "manifests": manifests,
            }))?;
            Some(Manifest {
                media_type,
                digest: sha256_digest(&data),
                data,
            })
        }
    };
    Ok(Fixture {
        kind,
        images,
        index,
    })
}

fn platform_image(
    repo: &str,
    tag: &str,
    seed: &str,
    arch: &'static str,
    docker: bool,
) -> anyhow::Result<PlatformImage> {
    let content = format!(
        "packsmith e2e fixture\nrepository: {repo}\ntag: {tag}\nseed: {seed}\narchitecture: {arch}\n"
    );
    let layer_tar = tar_with_one_file(LAYER_FILE, content.as_bytes())?;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&layer_tar)?;
    let layer_gz = gz.finish()?;
    let layer = Blob {
        media_type: if docker {
            IMAGE_DOCKER_LAYER_GZIP_MEDIA_TYPE
        } else {
            IMAGE_LAYER_GZIP_MEDIA_TYPE
        },
        digest: sha256_digest(&layer_gz),
        data: layer_gz,
    };
    let diff_id = sha256_digest(&layer_tar);

    let mut config = json!({
        "architecture": arch,
        "os": "linux",
        "created": "2024-01-01T00:00:00Z",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["/bin/cat", format!("/{LAYER_FILE}")],
            "Labels": { "dev.packsmith.e2e.seed": seed },
        },
        "rootfs": { "type": "layers", "diff_ids": [diff_id] },
        "history": [{
            "created": "2024-01-01T00:00:00Z",
            "created_by": format!("packsmith e2e fixture {repo}:{tag}"),
        }],
    });
    if arch == "arm64" {
        config["variant"] = json!("v8");
    }
    let config_data = serde_json::to_vec(&config)?;
    let config = Blob {
        media_type: if docker {
            IMAGE_DOCKER_CONFIG_MEDIA_TYPE
        } else {
            OCI_CONFIG_MEDIA_TYPE
        },
        digest: sha256_digest(&config_data),
        data: config_data,
    };

    let manifest_media_type = if docker {
        IMAGE_MANIFEST_MEDIA_TYPE
    } else {
        OCI_IMAGE_MEDIA_TYPE
    };
    let descriptor =
        |b: &Blob| json!({ "mediaType": b.media_type, "digest": b.digest, "size": b.data.len() });
    let manifest_data = serde_json::to_vec_pretty(&json!({
        "schemaVersion": 2,
        "mediaType": manifest_media_type,
        "config": descriptor(&config),
        "layers": [descriptor(&layer)],
    }))?;
    let manifest = Manifest {
        media_type: manifest_media_type,
        digest: sha256_digest(&manifest_data),
        data: manifest_data,
    };
    Ok(PlatformImage {
        architecture: arch,
        config,
        layer,
        layer_tar,
        manifest,
    })
}

/// A reproducible tar archive (fixed mtime, owner and mode) of one regular file.
fn tar_with_one_file(path: &str, data: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut header = tar::Header::new_ustar();
    header.set_path(path)?;
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(1_704_067_200); // 2024-01-01T00:00:00Z
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    let mut builder = tar::Builder::new(Vec::new());
    builder.append(&header, data)?;
    Ok(builder.into_inner()?)
}

/// Pushes a fixture as `repo:tag`: blobs, then platform manifests by digest, then the top
/// manifest by tag. Returns the top manifest's digest as the registry reported it (checked
/// against the fixture's own).
pub async fn push_fixture(
    reg: &Registry,
    repo: &str,
    tag: &str,
    fixture: &Fixture,
) -> anyhow::Result<String> {
    let client = reg.client();
    let tagged = reg.reference(repo, tag)?;
    client.store_auth_if_needed(&reg.host, &reg.auth).await;

    for blob in fixture.blobs() {
        client
            .push_blob(&tagged, blob.data.clone(), &blob.digest)
            .await
            .with_context(|| format!("pushing blob {} to {tagged}", blob.digest))?;
    }
    let mut children = Vec::new();
    if fixture.index.is_some() {
        children.extend(fixture.images.iter().map(|i| &i.manifest));
    }
    for manifest in children {
        let by_digest = reg.reference_by_digest(repo, &manifest.digest)?;
        push_manifest(&client, &by_digest, manifest).await?;
    }
    let top = fixture.top();
    let url = push_manifest(&client, &tagged, top).await?;
    anyhow::ensure!(
        url.ends_with(&top.digest),
        "the registry stored {tagged} at {url}, not at its digest {}",
        top.digest
    );
    Ok(top.digest.clone())
}

pub async fn push_manifest(
    client: &oci_client::Client,
    reference: &Reference,
    manifest: &Manifest,
) -> anyhow::Result<String> {
    let content_type = manifest
        .media_type
        .parse()
        .with_context(|| format!("media type {}", manifest.media_type))?;
    client
        .push_manifest_raw(reference, manifest.data.clone(), content_type)
        .await
        .with_context(|| format!("pushing manifest {} as {reference}", manifest.digest))
}

/// Pushes a small synthetic image as `repo:tag` and returns the digest of its top manifest
/// (the index/list for the multi-arch kinds). Same arguments, same digest; any argument changed,
/// another digest.
pub async fn push_image(
    reg: &Registry,
    repo: &str,
    tag: &str,
    kind: ImageKind,
    seed: &str,
) -> anyhow::Result<String> {
    let fixture = fixture(repo, tag, kind, seed)?;
    push_fixture(reg, repo, tag, &fixture).await
}

/// The digest `repo:tag` resolves to, from a HEAD request accepting every manifest type (what a
/// lock stage gets).
pub async fn head_digest(reg: &Registry, repo: &str, tag: &str) -> anyhow::Result<String> {
    let reference = reg.reference(repo, tag)?;
    reg.client()
        .fetch_manifest_digest(&reference, &reg.auth)
        .await
        .with_context(|| format!("resolving {reference}"))
}
