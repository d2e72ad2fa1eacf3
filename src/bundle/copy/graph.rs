//! What a copy moves: every manifest and blob a source holds, found by walking it the way
//! imgpkg does — a bundle's `.imgpkg/images.yml` lists its images, an image that is itself a
//! bundle (its config carries `dev.carvel.imgpkg.bundle`) is walked in turn, an index brings
//! its platform manifests. Every manifest is checked against the digest it was asked by, and
//! every cost is bounded ([`WalkLimits`]) before it is paid.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read as _;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use serde::Deserialize;

use super::super::error::BundleError;
use super::super::image::BUNDLE_LABEL;
use super::super::push::{PushOptions, retry};
use crate::carvel::ImagesLock;
use crate::registry::{Reference, Registry, is_sha256_digest, parse_reference, sha256_digest};

pub(super) const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub(super) const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub(super) const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub(super) const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const ALL_MANIFESTS: [&str; 4] = [DOCKER_MANIFEST, DOCKER_LIST, OCI_MANIFEST, OCI_INDEX];

/// Bounds on what walking a source may cost. Far above real packages (a TCE repository
/// bundle locks ~40 package bundles of a handful of images each).
#[derive(Debug, Clone, Copy)]
pub struct WalkLimits {
    /// Manifests (images, indexes, bundles, signatures) in all.
    pub max_manifests: usize,
    /// Bundles inside bundles.
    pub max_depth: usize,
    /// Platform manifests of one index, layers of one image.
    pub max_references: usize,
    /// An image config read to tell a bundle from an image.
    pub max_config_bytes: u64,
    /// A bundle's layer, read to find its `.imgpkg/images.yml`.
    pub max_bundle_layer_bytes: u64,
    /// The `.imgpkg/images.yml` of a bundle.
    pub max_images_lock_bytes: u64,
    /// Bundle layers inflated in all, to find their ImagesLocks: one bundle may take
    /// `max_bundle_layer_bytes`, a copy of many bundles no more than this.
    pub max_inflated_bytes: u64,
}

impl Default for WalkLimits {
    fn default() -> Self {
        WalkLimits {
            max_manifests: 20_000,
            max_depth: 8,
            max_references: 1_000,
            max_config_bytes: 16 << 20,
            max_bundle_layer_bytes: 1 << 30,
            max_images_lock_bytes: 16 << 20,
            max_inflated_bytes: 4 << 30,
        }
    }
}

/// What a manifest is, for the copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Image,
    Index,
    Bundle,
}

/// One manifest, as bytes exactly as the source holds them.
#[derive(Debug, Clone)]
pub(super) struct Manifest {
    pub(super) digest: String,
    pub(super) media_type: String,
    pub(super) bytes: Bytes,
    pub(super) kind: Kind,
    /// Platform manifests of an index.
    pub(super) children: Vec<String>,
    /// Config and layers of an image, in manifest order (non-distributable layers left out,
    /// as imgpkg does without `--include-non-distributable-layers`).
    pub(super) blobs: Vec<String>,
    /// Tags it carries in the target besides `sha256-<hex>.imgpkg`: a bundle's own tag, a
    /// signature's `sha256-<hex>.sig`.
    pub(super) tags: Vec<String>,
    /// How deep in bundles it was found (0: named by the source).
    pub(super) depth: usize,
    /// The repository (`registry/path`) it was read from.
    pub(super) source: Option<String>,
    /// A bundle's ImagesLock: each image as it names it.
    pub(super) locked: Vec<String>,
}

/// Where a blob's bytes are read from.
#[derive(Debug, Clone)]
pub(super) enum Origin {
    /// A repository of the source registry (as contacted: mirrors applied).
    Registry(Reference),
    /// Already read (an image config): kept, not fetched twice.
    Inline(Bytes),
    /// Spooled to a file while the walk read it (a bundle's layer).
    File(Arc<tempfile::TempPath>),
    /// A member of the source tar, at this offset.
    Tar { offset: u64 },
}

#[derive(Debug, Clone)]
pub(super) struct Blob {
    pub(super) digest: String,
    pub(super) size: u64,
    pub(super) origin: Origin,
    /// The source repository it was found in (as contacted), which a target in the same
    /// registry can mount it from whatever `origin` it is read from.
    pub(super) from: Option<Reference>,
}

/// What the source named (a bundle, images of a lock, or what a tar holds), and what each
/// bundle's ImagesLock names, with the references they were named by.
#[derive(Debug, Clone)]
pub(super) struct Named {
    pub(super) digest: String,
    /// The reference it was named by (`repo@sha256:…`, or `repo:tag` for a root).
    pub(super) reference: String,
    pub(super) kind: Kind,
}

/// Everything a copy moves.
#[derive(Debug, Default)]
pub(super) struct Graph {
    manifests: BTreeMap<String, Manifest>,
    blobs: BTreeMap<String, Blob>,
    /// Roots first, then what bundles name, in the order found.
    pub(super) named: Vec<Named>,
}

impl Graph {
    pub(super) fn manifest(&self, digest: &str) -> Option<&Manifest> {
        self.manifests.get(digest)
    }

    pub(super) fn blobs(&self) -> impl Iterator<Item = &Blob> {
        self.blobs.values()
    }

    pub(super) fn blob(&self, digest: &str) -> Option<&Blob> {
        self.blobs.get(digest)
    }

    pub(super) fn manifest_count(&self) -> usize {
        self.manifests.len()
    }

    /// The roots: what the source itself named.
    pub(super) fn roots(&self) -> impl Iterator<Item = &Named> {
        self.named.iter().filter(|n| {
            self.manifests
                .get(&n.digest)
                .is_some_and(|m| m.depth == 0 && m.tags.iter().all(|t| !is_cosign_tag(t)))
        })
    }

    /// Every manifest in the order a registry accepts them: platform manifests before their
    /// index, images before the bundles that lock them, inner bundles before outer ones, so
    /// that nothing ever names a manifest the target does not hold yet.
    pub(super) fn write_order(&self) -> Vec<&Manifest> {
        let mut order: Vec<&Manifest> = Vec::with_capacity(self.manifests.len());
        let mut seen: HashSet<&str> = HashSet::new();
        // Indexes nest at most MAX_INDEX_NESTING levels (checked while walking, and when a
        // tar is read): the recursion is bounded.
        fn visit<'g>(
            graph: &'g Graph,
            m: &'g Manifest,
            seen: &mut HashSet<&'g str>,
            order: &mut Vec<&'g Manifest>,
        ) {
            if !seen.insert(&m.digest) {
                return;
            }
            for child in &m.children {
                if let Some(c) = graph.manifests.get(child) {
                    visit(graph, c, seen, order);
                }
            }
            order.push(m);
        }
        let (mut bundles, others): (Vec<&Manifest>, Vec<&Manifest>) = self
            .manifests
            .values()
            .partition(|m| m.kind == Kind::Bundle);
        for m in others {
            visit(self, m, &mut seen, &mut order);
        }
        bundles.sort_by(|a, b| b.depth.cmp(&a.depth).then(a.digest.cmp(&b.digest)));
        order.extend(bundles);
        order
    }

    pub(super) fn insert_manifest(&mut self, m: Manifest) {
        match self.manifests.get_mut(&m.digest) {
            // Found twice (a bundle and a nested one lock the same image): the shallowest
            // depth and every tag count.
            Some(existing) => {
                existing.depth = existing.depth.min(m.depth);
                for tag in m.tags {
                    if !existing.tags.contains(&tag) {
                        existing.tags.push(tag);
                    }
                }
            }
            None => {
                self.manifests.insert(m.digest.clone(), m);
            }
        }
    }

    pub(super) fn insert_blob(&mut self, blob: Blob) {
        self.blobs.entry(blob.digest.clone()).or_insert(blob);
    }
}

/// Whether `tag` is one of the cosign tags a copy brings along (`sha256-<hex>.sig|.att`).
pub(super) fn is_cosign_tag(tag: &str) -> bool {
    COSIGN_SUFFIXES.iter().any(|s| {
        tag.strip_suffix(s)
            .and_then(|t| t.strip_prefix("sha256-"))
            .is_some_and(|hex| hex.len() == 64)
    })
}

/// The tags cosign stores a digest's signature and attestations under (cosign's
/// `SignatureTagSuffix`, `AttestationTagSuffix`). imgpkg's `--cosign-signatures` copies the
/// signature only (`pkg/imgpkg/signature/cosign.go`: one tag, `Munge(digest)`); attestations
/// come along here too, as policy engines verify them next to signatures.
pub(super) const COSIGN_SUFFIXES: [&str; 2] = [".sig", ".att"];

/// A manifest or index as far as a copy needs it.
#[derive(Deserialize)]
struct RawManifest {
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    #[serde(default)]
    config: Option<RawDescriptor>,
    #[serde(default)]
    layers: Vec<RawDescriptor>,
    #[serde(default)]
    manifests: Vec<RawDescriptor>,
}

#[derive(Deserialize)]
struct RawDescriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    size: i64,
}

/// A parsed manifest: its kind and what it refers to.
pub(super) struct Parsed {
    pub(super) media_type: String,
    pub(super) index: bool,
    /// (digest, size) of the config then each distributable layer.
    pub(super) blobs: Vec<(String, u64)>,
    /// (digest, size) of each platform manifest.
    pub(super) children: Vec<(String, u64)>,
}

/// Parses a manifest or index, checking every digest (they become URLs and file names) and
/// every count.
pub(super) fn parse_manifest(bytes: &[u8], limits: &WalkLimits) -> Result<Parsed, String> {
    let raw: RawManifest =
        serde_json::from_slice(bytes).map_err(|e| format!("the manifest is not valid: {e}"))?;
    let index = !raw.manifests.is_empty()
        || matches!(raw.media_type.as_deref(), Some(OCI_INDEX | DOCKER_LIST));
    let media_type = match raw.media_type {
        Some(t) if ALL_MANIFESTS.contains(&t.as_str()) => t,
        Some(t) => return Err(format!("unsupported manifest media type {t:?}")),
        // OCI lets a manifest leave mediaType out; the registry is told what it holds.
        None if index => OCI_INDEX.to_owned(),
        None => OCI_MANIFEST.to_owned(),
    };
    let check = |d: &RawDescriptor| -> Result<(String, u64), String> {
        if !is_sha256_digest(&d.digest) {
            return Err(format!("descriptor digest {:?} is not sha256", d.digest));
        }
        let size = u64::try_from(d.size)
            .map_err(|_| format!("descriptor {} has a negative size", d.digest))?;
        Ok((d.digest.clone(), size))
    };
    if raw.layers.len() > limits.max_references || raw.manifests.len() > limits.max_references {
        return Err(format!(
            "the manifest lists more than {} layers or manifests",
            limits.max_references
        ));
    }
    if index {
        let children = raw.manifests.iter().map(check).collect::<Result<_, _>>()?;
        return Ok(Parsed {
            media_type,
            index,
            blobs: Vec::new(),
            children,
        });
    }
    let config = raw
        .config
        .as_ref()
        .ok_or_else(|| "an image manifest without a config".to_owned())?;
    let mut blobs = vec![check(config)?];
    for layer in &raw.layers {
        // Foreign (Windows base) layers are not copied, as imgpkg does by default: the
        // registry accepts a manifest naming them without holding them.
        if layer.media_type.contains("foreign") || layer.media_type.contains("nondistributable") {
            continue;
        }
        blobs.push(check(layer)?);
    }
    Ok(Parsed {
        media_type,
        index,
        blobs,
        children: Vec::new(),
    })
}

/// Whether an image config carries imgpkg's bundle label.
pub(super) fn config_is_bundle(config: &[u8]) -> Result<bool, String> {
    #[derive(Deserialize)]
    struct Config {
        #[serde(default)]
        config: Option<Inner>,
    }
    #[derive(Deserialize)]
    struct Inner {
        #[serde(rename = "Labels", default)]
        labels: Option<HashMap<String, String>>,
    }
    let parsed: Config =
        serde_json::from_slice(config).map_err(|e| format!("the image config is not JSON: {e}"))?;
    Ok(parsed
        .config
        .and_then(|c| c.labels)
        .is_some_and(|labels| labels.contains_key(BUNDLE_LABEL)))
}

/// The `.imgpkg/images.yml` of a bundle layer (a gzip'd tar), read within `limits`.
pub(super) fn images_lock_of_layer(
    layer: impl std::io::Read,
    limits: &WalkLimits,
    budget: &Inflation,
) -> Result<ImagesLock, String> {
    let inflated = super::super::CappedReader::new(
        Budgeted {
            inner: flate2::read::GzDecoder::new(layer),
            budget,
        },
        limits.max_bundle_layer_bytes,
    );
    let meter = inflated.header_meter();
    let mut archive = tar::Archive::new(inflated);
    let entries = super::super::tar_entries(&mut archive, &meter)
        .map_err(|e| format!("the bundle layer is not a tar: {e}"))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("reading the bundle layer: {e}"))?;
        let path = entry
            .path()
            .map_err(|e| format!("reading the bundle layer: {e}"))?
            .into_owned();
        let name = path.to_string_lossy();
        if name.trim_start_matches("./") != ".imgpkg/images.yml" {
            continue;
        }
        if entry.size() > limits.max_images_lock_bytes {
            return Err(format!(
                ".imgpkg/images.yml is {} bytes, more than the {} accepted",
                entry.size(),
                limits.max_images_lock_bytes
            ));
        }
        let mut text = String::new();
        entry
            .take(limits.max_images_lock_bytes)
            .read_to_string(&mut text)
            .map_err(|e| format!("reading .imgpkg/images.yml: {e}"))?;
        let mut lock = ImagesLock::from_yaml(&text).map_err(|e| e.to_string())?;
        // The same image named twice is one image; more distinct images than the whole copy
        // may hold cannot be copied (and each entry is kept for every bundle that names it).
        let mut seen = HashSet::new();
        lock.images.retain(|i| seen.insert(i.image.clone()));
        if lock.images.len() > limits.max_manifests {
            return Err(format!(
                ".imgpkg/images.yml names {} images, more than the {} manifests a copy may hold",
                lock.images.len(),
                limits.max_manifests
            ));
        }
        return Ok(lock);
    }
    Err("the bundle has no .imgpkg/images.yml".to_owned())
}

/// What is left of [`WalkLimits::max_inflated_bytes`] in one copy, shared by its bundles.
#[derive(Debug)]
pub(super) struct Inflation(std::sync::atomic::AtomicU64);

impl Inflation {
    pub(super) fn new(limits: &WalkLimits) -> Self {
        Inflation(std::sync::atomic::AtomicU64::new(limits.max_inflated_bytes))
    }

    fn take(&self, n: u64) -> bool {
        use std::sync::atomic::Ordering;
        self.0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                left.checked_sub(n)
            })
            .is_ok()
    }
}

/// A reader that spends [`Inflation`] on what it yields.
struct Budgeted<'a, R> {
    inner: R,
    budget: &'a Inflation,
}

impl<R: std::io::Read> std::io::Read for Budgeted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if !self.budget.take(n as u64) {
            return Err(std::io::Error::other(
                "the bundles' layers inflate to more than a copy may read to find their ImagesLocks",
            ));
        }
        Ok(n)
    }
}

/// What the walk is asked to find at a reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Want {
    /// `-b`: must be a bundle.
    Bundle,
    /// `-i`: must not be one (imgpkg: "use -b").
    Image,
    /// Named by an ImagesLock: whatever it is.
    Any,
}

/// One reference to walk: a root (what the source named) or what a manifest names.
pub(super) struct Pending {
    pub(super) reference: Reference,
    /// As the source wrote it.
    pub(super) named_as: String,
    pub(super) want: Want,
    pub(super) depth: usize,
    /// Indexes above it (an index's platform manifests are at 1): bounded by
    /// [`MAX_INDEX_NESTING`], as everything that walks a graph recurses through indexes.
    pub(super) nesting: usize,
    /// The bundle's own tag, kept in the target (`-b repo:tag`).
    pub(super) tag: Option<String>,
    /// Whether it is recorded in `named` (not a platform manifest of an index).
    pub(super) record: bool,
}

impl Pending {
    /// What the source names itself.
    pub(super) fn root(
        reference: Reference,
        named_as: String,
        want: Want,
        tag: Option<String>,
    ) -> Self {
        Pending {
            reference,
            named_as,
            want,
            depth: 0,
            nesting: 0,
            tag,
            record: true,
        }
    }
}

/// Indexes inside indexes: the OCI spec allows it, registries and runtimes see one level
/// (a multi-platform image), rarely two (an index of attestations). Deeper is refused.
pub(super) const MAX_INDEX_NESTING: usize = 4;

/// Names (references) by which the copied manifests are known, per manifest on average.
const MAX_NAMES_PER_MANIFEST: usize = 4;

/// Walks `roots` in the source registry: every manifest and blob, bundles through their
/// ImagesLock, with `cosign` artifacts of every image when asked. `scratch` holds bundle
/// layers while the copy runs.
pub(super) async fn walk_registry(
    registry: &Registry,
    mut graph: Graph,
    mut pending: Vec<Pending>,
    cosign: bool,
    limits: &WalkLimits,
    scratch: &Path,
) -> Result<Graph, BundleError> {
    let mut seen: HashSet<String> = graph.manifests.keys().cloned().collect();
    let concurrency = registry.concurrency();
    let inflation = Arc::new(Inflation::new(limits));
    let inflation = &inflation;
    while !pending.is_empty() {
        use futures::StreamExt as _;
        let level = std::mem::take(&mut pending);
        let mut found = futures::stream::iter(
            level
                .into_iter()
                .map(|p| async move {
                    let fetched = fetch(registry, &p, limits, inflation, scratch).await;
                    (p, fetched)
                })
                .collect::<Vec<_>>(),
        )
        .buffer_unordered(concurrency);
        let mut results = Vec::new();
        while let Some(result) = found.next().await {
            results.push(result);
        }
        drop(found);
        // Results in a stable order: what a bundle lists is recorded in its order.
        results.sort_by(|a, b| a.0.named_as.cmp(&b.0.named_as));
        for (p, fetched) in results {
            let fetched = fetched?;
            if p.record {
                graph.named.push(Named {
                    digest: fetched.manifest.digest.clone(),
                    reference: p.named_as.clone(),
                    kind: fetched.manifest.kind,
                });
            }
            let contacted = registry.contact(&p.reference);
            for blob in fetched.blob_origins(&contacted) {
                graph.insert_blob(blob);
            }
            if !seen.insert(fetched.manifest.digest.clone()) {
                graph.insert_manifest(fetched.manifest);
                continue;
            }
            let digest = fetched.manifest.digest.clone();
            let repository = format!("{}/{}", p.reference.registry(), p.reference.repository());
            if !fetched.children.is_empty() && p.nesting + 1 > MAX_INDEX_NESTING {
                return Err(BundleError::Content {
                    reference: p.named_as,
                    reason: format!("image indexes nest more than {MAX_INDEX_NESTING} deep"),
                });
            }
            for (child, _) in &fetched.children {
                if seen.contains(child) {
                    continue;
                }
                pending.push(Pending {
                    reference: parse_reference(&format!("{repository}@{child}"))?,
                    named_as: format!("{repository}@{child}"),
                    want: Want::Any,
                    depth: p.depth,
                    nesting: p.nesting + 1,
                    tag: None,
                    record: false,
                });
            }
            if let Some(lock) = &fetched.images_lock {
                if p.depth + 1 > limits.max_depth {
                    return Err(BundleError::Content {
                        reference: p.named_as,
                        reason: format!("bundles nest more than {} deep", limits.max_depth),
                    });
                }
                for image in &lock.images {
                    if let Some(known) = image
                        .image
                        .rsplit_once('@')
                        .and_then(|(_, d)| graph.manifests.get(d))
                    {
                        graph.named.push(Named {
                            digest: known.digest.clone(),
                            reference: image.image.clone(),
                            kind: known.kind,
                        });
                        continue;
                    }
                    pending.push(Pending {
                        reference: parse_reference(&image.image)?,
                        named_as: image.image.clone(),
                        want: Want::Any,
                        depth: p.depth + 1,
                        nesting: 0,
                        tag: None,
                        record: true,
                    });
                }
            }
            if cosign && fetched.manifest.kind != Kind::Index {
                for (tag, bytes) in cosign_artifacts(registry, &contacted, &digest).await? {
                    // A signature is an image in the same repository; its blobs are walked
                    // like any image's.
                    let parsed =
                        parse_manifest(&bytes, limits).map_err(|reason| BundleError::Content {
                            reference: format!("{repository}:{tag}"),
                            reason,
                        })?;
                    for (d, size) in &parsed.blobs {
                        graph.insert_blob(Blob {
                            digest: d.clone(),
                            size: *size,
                            origin: Origin::Registry(contacted.clone()),
                            from: Some(contacted.clone()),
                        });
                    }
                    graph.insert_manifest(Manifest {
                        digest: sha256_digest(&bytes),
                        media_type: parsed.media_type,
                        bytes,
                        kind: Kind::Image,
                        children: Vec::new(),
                        blobs: parsed.blobs.into_iter().map(|(d, _)| d).collect(),
                        tags: vec![tag],
                        depth: p.depth,
                        source: Some(repository.clone()),
                        locked: Vec::new(),
                    });
                }
            }
            graph.insert_manifest(fetched.manifest);
            // Names of images already known cost no manifest but are kept, one per bundle
            // that names them: bounded by the bundles (max_manifests) times one lock each.
            if graph.named.len() > MAX_NAMES_PER_MANIFEST * limits.max_manifests {
                return Err(BundleError::Content {
                    reference: p.named_as,
                    reason: format!(
                        "the bundles name images more than {} times",
                        MAX_NAMES_PER_MANIFEST * limits.max_manifests
                    ),
                });
            }
            if graph.manifest_count() + pending.len() > limits.max_manifests {
                return Err(BundleError::Content {
                    reference: p.named_as,
                    reason: format!(
                        "the copy would hold more than {} manifests",
                        limits.max_manifests
                    ),
                });
            }
        }
    }
    Ok(graph)
}

/// The cosign artifacts (`sha256-<hex>.sig|.att|.sbom`) of `digest` in `repository`, as
/// imgpkg's `--cosign-signatures` finds them: by their tags, each HEADed.
async fn cosign_artifacts(
    registry: &Registry,
    repository: &Reference,
    digest: &str,
) -> Result<Vec<(String, Bytes)>, BundleError> {
    let client = registry.distribution();
    let options = PushOptions::default();
    let mut found = Vec::new();
    for suffix in COSIGN_SUFFIXES {
        let tag = format!("{}{suffix}", digest.replacen(':', "-", 1));
        let present = retry(&options, "HEAD manifest", repository, || {
            client.manifest_digest_at(repository, &tag)
        })
        .await?;
        if present.is_none() {
            continue;
        }
        let bytes = retry(&options, "GET manifest", repository, || {
            client.get_manifest(repository, &tag, &ALL_MANIFESTS)
        })
        .await?;
        found.push((tag, bytes));
    }
    Ok(found)
}

/// One manifest as read, with what it names.
pub(super) struct Fetched {
    pub(super) manifest: Manifest,
    pub(super) blobs: Vec<(String, u64)>,
    pub(super) children: Vec<(String, u64)>,
    /// An image's config, read to tell a bundle.
    pub(super) config: Option<(String, Bytes)>,
    /// A bundle's layer, spooled to read its ImagesLock.
    pub(super) layer_file: Option<(String, Arc<tempfile::TempPath>)>,
    pub(super) images_lock: Option<ImagesLock>,
}

impl Fetched {
    /// Where each of its blobs is read from.
    pub(super) fn blob_origins(&self, contacted: &Reference) -> Vec<Blob> {
        self.blobs
            .iter()
            .map(|(digest, size)| {
                let origin = match (&self.config, &self.layer_file) {
                    (Some((d, bytes)), _) if d == digest => Origin::Inline(bytes.clone()),
                    (_, Some((d, file))) if d == digest => Origin::File(Arc::clone(file)),
                    _ => Origin::Registry(contacted.clone()),
                };
                Blob {
                    digest: digest.clone(),
                    size: *size,
                    origin,
                    from: Some(contacted.clone()),
                }
            })
            .collect()
    }
}

/// Reads one manifest (and, for an image, its config; for a bundle, its layer) from the
/// source registry.
pub(super) async fn fetch(
    registry: &Registry,
    p: &Pending,
    limits: &WalkLimits,
    inflation: &Arc<Inflation>,
    scratch: &Path,
) -> Result<Fetched, BundleError> {
    let content = |reason: String| BundleError::Content {
        reference: p.named_as.clone(),
        reason,
    };
    let contacted = registry.contact(&p.reference);
    let client = registry.distribution();
    let options = PushOptions::default();
    let target = contacted
        .digest()
        .or(contacted.tag())
        .unwrap_or("latest")
        .to_owned();
    let bytes = retry(&options, "GET manifest", &contacted, || {
        client.get_manifest(&contacted, &target, &ALL_MANIFESTS)
    })
    .await?;
    let digest = sha256_digest(&bytes);
    if let Some(wanted) = p.reference.digest()
        && wanted != digest
    {
        return Err(content(format!(
            "the registry returned a manifest with digest {digest}"
        )));
    }
    let parsed = parse_manifest(&bytes, limits).map_err(content)?;
    let mut fetched = Fetched {
        manifest: Manifest {
            digest: digest.clone(),
            media_type: parsed.media_type.clone(),
            bytes,
            kind: if parsed.index {
                Kind::Index
            } else {
                Kind::Image
            },
            children: parsed.children.iter().map(|(d, _)| d.clone()).collect(),
            blobs: parsed.blobs.iter().map(|(d, _)| d.clone()).collect(),
            tags: Vec::new(),
            depth: p.depth,
            source: Some(format!(
                "{}/{}",
                p.reference.registry(),
                p.reference.repository()
            )),
            locked: Vec::new(),
        },
        blobs: parsed.blobs.clone(),
        children: parsed.children,
        config: None,
        layer_file: None,
        images_lock: None,
    };
    // What the source names by tag keeps that tag in the target (imgpkg's `tagAllImages`).
    if p.depth == 0
        && let Some(tag) = &p.tag
    {
        fetched.manifest.tags.push(tag.clone());
    }
    if parsed.index {
        if p.want == Want::Bundle {
            return Err(content(
                "this is an image index, not a bundle (copy it with -i)".to_owned(),
            ));
        }
        return Ok(fetched);
    }
    let (config_digest, config_size) = parsed.blobs[0].clone();
    if config_size > limits.max_config_bytes {
        return Err(content(format!(
            "its config is {config_size} bytes, more than the {} accepted",
            limits.max_config_bytes
        )));
    }
    let config = retry(&options, "GET blob", &contacted, || {
        client.get_blob(&contacted, &config_digest, config_size)
    })
    .await?;
    if sha256_digest(&config) != config_digest {
        return Err(content(format!(
            "config {config_digest} has another digest"
        )));
    }
    let bundle = config_is_bundle(&config).map_err(content)?;
    fetched.config = Some((config_digest, config));
    match (p.want, bundle) {
        (Want::Bundle, false) => {
            return Err(content(
                "this is an image, not a bundle (its config lacks the dev.carvel.imgpkg.bundle \
                 label; copy it with -i)"
                    .to_owned(),
            ));
        }
        (Want::Image, true) => {
            return Err(content(
                "this is a bundle: copy it with -b so that its images come along (imgpkg: \
                 \"Use -b instead of -i for bundles\"; an ImagesLock cannot copy bundles either)"
                    .to_owned(),
            ));
        }
        _ => {}
    }
    if !bundle {
        return Ok(fetched);
    }
    fetched.manifest.kind = Kind::Bundle;
    let Some((layer_digest, layer_size)) = parsed.blobs.get(1).cloned() else {
        return Err(content("a bundle without a layer".to_owned()));
    };
    if layer_size > limits.max_bundle_layer_bytes {
        return Err(content(format!(
            "its layer is {layer_size} bytes, more than the {} accepted",
            limits.max_bundle_layer_bytes
        )));
    }
    let named = tempfile::Builder::new()
        .prefix(".packsmith-copy-")
        .tempfile_in(scratch)
        .map_err(BundleError::io("creating a file in", scratch))?;
    retry(&options, "GET blob", &contacted, || async {
        let write = |e: std::io::Error| crate::registry::RegistryError::Write {
            what: "blob",
            url: named.path().display().to_string(),
            message: e.to_string(),
        };
        let mut file = tokio::fs::File::from_std(named.reopen().map_err(write)?);
        file.set_len(0).await.map_err(write)?;
        client
            .blob_to_file(&contacted, &layer_digest, layer_size, &mut file)
            .await
    })
    .await?;
    let path = named.into_temp_path();
    let layer_path = path.to_path_buf();
    let limits_copy = *limits;
    let budget = inflation.clone();
    let lock = tokio::task::spawn_blocking(move || {
        let file = std::fs::File::open(&layer_path)
            .map_err(|e| format!("reading the spooled layer: {e}"))?;
        images_lock_of_layer(std::io::BufReader::new(file), &limits_copy, &budget)
    })
    .await
    .map_err(|e| content(format!("reading the bundle layer: {e}")))?
    .map_err(content)?;
    fetched.layer_file = Some((layer_digest, Arc::new(path)));
    fetched.manifest.locked = lock.images.iter().map(|i| i.image.clone()).collect();
    fetched.images_lock = Some(lock);
    Ok(fetched)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    #[test]
    fn manifests_and_indexes_are_told_apart_and_checked() {
        let limits = WalkLimits::default();
        let image = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"x","digest":"{}","size":2}},
               "layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{}","size":3}},
                         {{"mediaType":"application/vnd.docker.image.rootfs.foreign.diff.tar.gzip","digest":"{}","size":4}}]}}"#,
            digest('a'),
            digest('b'),
            digest('c')
        );
        let parsed = parse_manifest(image.as_bytes(), &limits).unwrap();
        assert!(!parsed.index);
        assert_eq!(parsed.media_type, OCI_MANIFEST);
        // The foreign layer is not copied.
        assert_eq!(parsed.blobs, vec![(digest('a'), 2), (digest('b'), 3)]);

        let index = format!(
            r#"{{"mediaType":"{DOCKER_LIST}","manifests":[{{"mediaType":"{DOCKER_MANIFEST}","digest":"{}","size":9}}]}}"#,
            digest('d')
        );
        let parsed = parse_manifest(index.as_bytes(), &limits).unwrap();
        assert!(parsed.index);
        assert_eq!(parsed.children, vec![(digest('d'), 9)]);

        // A digest that would walk a URL, a negative size, an unknown type: refused.
        let hostile = r#"{"config":{"digest":"sha256:../../x","size":1}}"#;
        assert!(parse_manifest(hostile.as_bytes(), &limits).is_err());
        let negative = format!(r#"{{"config":{{"digest":"{}","size":-1}}}}"#, digest('a'));
        assert!(parse_manifest(negative.as_bytes(), &limits).is_err());
        let unknown = r#"{"mediaType":"text/html"}"#;
        assert!(parse_manifest(unknown.as_bytes(), &limits).is_err());
        let many = format!(
            r#"{{"manifests":[{}]}}"#,
            vec![format!(r#"{{"digest":"{}","size":1}}"#, digest('e')); 1001].join(",")
        );
        let err = parse_manifest(many.as_bytes(), &limits).err().unwrap();
        assert!(err.contains("more than 1000"), "{err}");
    }

    #[test]
    fn cosign_tags_are_recognised() {
        let hex = "a".repeat(64);
        assert!(is_cosign_tag(&format!("sha256-{hex}.sig")));
        assert!(is_cosign_tag(&format!("sha256-{hex}.att")));
        assert!(!is_cosign_tag(&format!("sha256-{hex}.sbom")));
        assert!(!is_cosign_tag(&format!("sha256-{hex}.imgpkg")));
        assert!(!is_cosign_tag("v1.sig"));
    }

    #[test]
    fn bundles_are_known_by_their_label() {
        assert!(
            config_is_bundle(br#"{"config":{"Labels":{"dev.carvel.imgpkg.bundle":"true"}}}"#)
                .unwrap()
        );
        assert!(!config_is_bundle(br#"{"config":{}}"#).unwrap());
        assert!(config_is_bundle(b"not json").is_err());
    }

    /// A bundle's ImagesLock: each image once, and no more images than a copy may hold
    /// (every entry is kept for the walk, whatever it repeats).
    #[test]
    fn a_bundle_lock_is_deduplicated_and_bounded() {
        let layer = |images: &[String]| {
            let mut yaml =
                String::from("apiVersion: imgpkg.carvel.dev/v1alpha1\nkind: ImagesLock\nimages:\n");
            for image in images {
                yaml.push_str(&format!("- image: {image}\n"));
            }
            let mut tar = tar::Builder::new(Vec::new());
            let mut header = tar::Header::new_ustar();
            header.set_size(yaml.len() as u64);
            header.set_mode(0o600);
            tar.append_data(&mut header, ".imgpkg/images.yml", yaml.as_bytes())
                .unwrap();
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            std::io::Write::write_all(&mut gz, &tar.into_inner().unwrap()).unwrap();
            gz.finish().unwrap()
        };
        let image = |i: usize| format!("r.example/app@sha256:{i:064x}");
        let repeated: Vec<String> = (0..300).map(|i| image(i % 3)).collect();
        let budget = Inflation::new(&WalkLimits::default());
        let lock =
            images_lock_of_layer(&layer(&repeated)[..], &WalkLimits::default(), &budget).unwrap();
        assert_eq!(
            lock.images
                .iter()
                .map(|i| i.image.clone())
                .collect::<Vec<_>>(),
            [image(0), image(1), image(2)]
        );
        let limits = WalkLimits {
            max_manifests: 10,
            ..WalkLimits::default()
        };
        let many: Vec<String> = (0..11).map(image).collect();
        let err =
            images_lock_of_layer(&layer(&many)[..], &limits, &Inflation::new(&limits)).unwrap_err();
        assert!(err.contains("names 11 images"), "{err}");

        // Bundles share one inflation budget: each layer is within its own cap, together
        // they are not (a thousand bundles of one bomb layer each would be hours of CPU).
        let one = layer(&many);
        let inflated = {
            let probe = Inflation::new(&WalkLimits::default());
            images_lock_of_layer(&one[..], &WalkLimits::default(), &probe).unwrap();
            WalkLimits::default().max_inflated_bytes
                - probe.0.load(std::sync::atomic::Ordering::Relaxed)
        };
        assert!(inflated > 0);
        let limits = WalkLimits {
            max_inflated_bytes: 2 * inflated + inflated / 2,
            ..WalkLimits::default()
        };
        let budget = Inflation::new(&limits);
        for _ in 0..2 {
            images_lock_of_layer(&one[..], &limits, &budget).unwrap();
        }
        let err = images_lock_of_layer(&one[..], &limits, &budget).unwrap_err();
        assert!(err.contains("inflate to more than"), "{err}");
    }
}
