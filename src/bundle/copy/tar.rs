//! imgpkg's tar (`imgpkg copy --to-tar`, read back by `imgpkg copy --tar`), both ways, so a
//! tar written by either tool is read by the other. The format, as imgpkg's source has it:
//!
//! - A plain (not compressed) tar whose first entry is `manifest.json`, followed by each
//!   distributable layer once, named `sha256-<hex>.tar.gz` whatever its media type, sorted by
//!   digest; headers carry name, mode 0644, typeflag `0` and size only (Go's `archive/tar`:
//!   USTAR, zero times and owners), and the archive ends with two zero blocks
//!   (`pkg/imgpkg/imagetar/tar_writer.go`: `Write`, `writeLayers`, `writeTarEntry`).
//! - `manifest.json` is a JSON list of `{ImageIndex, Image}` with Go's field names (the
//!   structs have no json tags; nil becomes `null`); manifests and configs are inline as
//!   strings (`Raw`), an index's platform manifests nested under `Images`/`Indexes` with its
//!   Tag and Labels (`pkg/imgpkg/imagedesc/types.go`; `image_ref_descriptors.go`:
//!   `buildImage`, `buildImageIndex`). `Refs[0]` is the digest reference the item was read
//!   from, `DiffID` is set for layer media types only, and items are sorted by `SortKey`
//!   (an index by its digest, an image by `manifest digest + "/" + config digest`).
//! - The bundle a copy started from carries the label `dev.carvel.imgpkg.copy.root-bundle`
//!   and its tag (`pkg/imgpkg/v1/copy.go`: `rootBundleLabelKey`); nested bundles, their
//!   images and cosign signatures (tag `sha256-<hex>.sig`) are ordinary items of the flat list.
//! - The reader finds entries by exact name (`pkg/imgpkg/imagetar/tar_file.go`: `openChunk`),
//!   checking each layer's digest as it is read.
//! - `--resume` reads the old tar's `manifest.json`, keeps each layer whose size and sha256
//!   check out, and writes the whole tar again (`pkg/imgpkg/imageset/tar_image_set.go`:
//!   `Export`; `tar_reader.go`: `PresentLayers`).
//!
//! Go's `encoding/json` escapes `<`, `>`, `&`, U+2028 and U+2029 in strings; so does
//! [`go_json`], so the same graph always gives the same bytes as imgpkg would write for it.
//!
//! The tar is written as imgpkg's parallel writer does: every header first (sizes are known),
//! then each layer streamed into its place by its own task, checked against its digest as it
//! goes.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::{Read as _, Seek as _};
use std::path::Path;

use bytes::Bytes;
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncSeekExt as _, AsyncWriteExt as _};

use super::super::gotar;
use super::graph::{self, Blob, Graph, Kind, Manifest, Named, Origin, WalkLimits};
use super::{CopyEvent, CopyOptions, Written};
use crate::bundle::BundleError;
use crate::registry::{Registry, is_sha256_digest, sha256_digest};

/// The label imgpkg gives the bundle a copy started from.
pub(super) const ROOT_BUNDLE_LABEL: &str = "dev.carvel.imgpkg.copy.root-bundle";
const MANIFEST_JSON: &str = "manifest.json";
/// `manifest.json` holds every manifest and config inline; far above a real repository's.
const MAX_MANIFEST_JSON: u64 = 256 << 20;
/// Entries a tar may hold.
const MAX_ENTRIES: usize = 200_000;

#[derive(Serialize, Deserialize, Default)]
struct Item {
    #[serde(rename = "ImageIndex", default)]
    image_index: Option<IndexDesc>,
    #[serde(rename = "Image", default)]
    image: Option<ImageDesc>,
}

#[derive(Serialize, Deserialize, Default, Clone)]
struct IndexDesc {
    #[serde(rename = "Refs", default)]
    refs: Option<Vec<String>>,
    #[serde(rename = "Images", default)]
    images: Option<Vec<ImageDesc>>,
    #[serde(rename = "Indexes", default)]
    indexes: Option<Vec<IndexDesc>>,
    #[serde(rename = "MediaType", default)]
    media_type: String,
    #[serde(rename = "Digest", default)]
    digest: String,
    #[serde(rename = "Raw", default)]
    raw: String,
    #[serde(rename = "Tag", default)]
    tag: String,
    #[serde(rename = "OrigRef", default)]
    orig_ref: String,
    #[serde(rename = "Labels", default)]
    labels: Option<BTreeMap<String, String>>,
}

#[derive(Serialize, Deserialize, Default, Clone)]
struct ImageDesc {
    #[serde(rename = "Refs", default)]
    refs: Option<Vec<String>>,
    #[serde(rename = "Layers", default)]
    layers: Option<Vec<LayerDesc>>,
    #[serde(rename = "Config", default)]
    config: ConfigDesc,
    #[serde(rename = "Manifest", default)]
    manifest: ManifestDesc,
    #[serde(rename = "Tag", default)]
    tag: String,
    #[serde(rename = "OrigRef", default)]
    orig_ref: String,
    #[serde(rename = "Labels", default)]
    labels: Option<BTreeMap<String, String>>,
}

#[derive(Serialize, Deserialize, Default, Clone)]
struct LayerDesc {
    #[serde(rename = "MediaType", default)]
    media_type: String,
    #[serde(rename = "Digest", default)]
    digest: String,
    #[serde(rename = "DiffID", default)]
    diff_id: String,
    #[serde(rename = "Size", default)]
    size: i64,
}

#[derive(Serialize, Deserialize, Default, Clone)]
struct ConfigDesc {
    #[serde(rename = "Digest", default)]
    digest: String,
    #[serde(rename = "Raw", default)]
    raw: String,
}

#[derive(Serialize, Deserialize, Default, Clone)]
struct ManifestDesc {
    #[serde(rename = "MediaType", default)]
    media_type: String,
    #[serde(rename = "Digest", default)]
    digest: String,
    #[serde(rename = "Raw", default)]
    raw: String,
}

/// JSON as Go's `encoding/json` writes it: serde_json's output with `<`, `>`, `&`, U+2028 and
/// U+2029 escaped (they only ever occur inside strings).
fn go_json(value: &impl Serialize) -> Result<String, String> {
    let text = serde_json::to_string(value).map_err(|e| e.to_string())?;
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    Ok(out)
}

/// A layer media type (go-containerregistry's `MediaType.IsLayer`): only these get a DiffID.
fn is_layer(media_type: &str) -> bool {
    media_type.contains(".layer.") || media_type.contains(".rootfs.")
}

fn layer_name(digest: &str) -> String {
    format!("{}.tar.gz", digest.replacen(':', "-", 1))
}

/// The layers of an image manifest with their media types (foreign ones included: they are
/// listed, not written).
fn manifest_layers(raw: &[u8]) -> Result<Vec<(String, String, u64)>, String> {
    #[derive(Deserialize)]
    struct Raw {
        #[serde(default)]
        layers: Vec<Layer>,
    }
    #[derive(Deserialize)]
    struct Layer {
        #[serde(rename = "mediaType", default)]
        media_type: String,
        digest: String,
        size: u64,
    }
    let parsed: Raw = serde_json::from_slice(raw).map_err(|e| e.to_string())?;
    Ok(parsed
        .layers
        .into_iter()
        .map(|l| (l.media_type, l.digest, l.size))
        .collect())
}

/// The `rootfs.diff_ids` of an image config.
fn diff_ids(config: &[u8]) -> Vec<String> {
    #[derive(Deserialize)]
    struct Config {
        #[serde(default)]
        rootfs: Option<Rootfs>,
    }
    #[derive(Deserialize)]
    struct Rootfs {
        #[serde(default)]
        diff_ids: Vec<String>,
    }
    serde_json::from_slice::<Config>(config)
        .ok()
        .and_then(|c| c.rootfs)
        .map(|r| r.diff_ids)
        .unwrap_or_default()
}

fn utf8(bytes: &[u8], what: &str) -> Result<String, BundleError> {
    String::from_utf8(bytes.to_vec())
        .map_err(|_| BundleError::Invalid(format!("{what} is not UTF-8 and cannot go in a tar")))
}

/// Where the bytes of every layer go in the tar, and the tar's size.
struct Layout {
    header: Vec<u8>,
    json: Vec<u8>,
    /// (digest, size, header offset, data offset)
    layers: Vec<(String, u64, u64, u64)>,
    total: u64,
}

/// Where everything goes in the tar. Sizes are what manifests declare: added with checks,
/// or two layers of `i64::MAX` bytes would wrap the offsets onto `manifest.json`.
fn layout(json: Vec<u8>, layers: &[(String, u64)]) -> Result<Layout, BundleError> {
    let too_large = || {
        BundleError::Invalid("the layers' declared sizes add up past what a tar can hold".into())
    };
    let header = gotar::header(MANIFEST_JSON, gotar::TYPE_REG, 0o644, json.len() as u64);
    let mut offset = (header.len() + json.len() + gotar::padding(json.len() as u64).len()) as u64;
    let mut placed = Vec::with_capacity(layers.len());
    for (digest, size) in layers {
        let h = gotar::header(&layer_name(digest), gotar::TYPE_REG, 0o644, *size).len() as u64;
        let data = offset.checked_add(h).ok_or_else(too_large)?;
        placed.push((digest.clone(), *size, offset, data));
        offset = data
            .checked_add(*size)
            .and_then(|o| o.checked_add(gotar::padding(*size).len() as u64))
            .ok_or_else(too_large)?;
    }
    Ok(Layout {
        header,
        json,
        layers: placed,
        total: offset
            .checked_add(gotar::END_OF_ARCHIVE.len() as u64)
            .ok_or_else(too_large)?,
    })
}

/// Writes `graph` as an imgpkg tar at `path`.
pub(super) async fn write(
    graph: &Graph,
    source: &Registry,
    tar: Option<&Path>,
    path: &Path,
    options: &CopyOptions,
) -> Result<Written, BundleError> {
    let json = go_json(&describe(graph, source, tar, options).await?)
        .map_err(|e| BundleError::Invalid(format!("writing manifest.json: {e}")))?
        .into_bytes();
    let layers = layers(graph);
    let plan = layout(json, &layers)?;

    // --resume: the old tar moves aside; whatever layer of it checks out is copied from there.
    let old = match (options.resume, tokio::fs::try_exists(path).await) {
        (true, Ok(true)) => {
            let aside = path.with_extension("tar.resume");
            tokio::fs::rename(path, &aside)
                .await
                .map_err(BundleError::io("moving aside", path))?;
            Some(aside)
        }
        _ => None,
    };
    let present = match &old {
        Some(aside) => {
            let aside = aside.clone();
            let wanted: HashMap<String, u64> = layers.iter().cloned().collect();
            tokio::task::spawn_blocking(move || present_layers(&aside, &wanted))
                .await
                .map_err(|e| BundleError::Invalid(format!("reading the old tar: {e}")))?
        }
        None => HashMap::new(),
    };
    let result = fill(
        graph,
        source,
        tar,
        path,
        &plan,
        &present,
        old.as_deref(),
        options,
    )
    .await;
    match (&result, &old) {
        (Ok(_), Some(aside)) => {
            let _ = tokio::fs::remove_file(aside).await;
        }
        // As imgpkg: a failed resume puts the old tar back, so the next one can use it.
        (Err(_), Some(aside)) => {
            let _ = tokio::fs::rename(aside, path).await;
        }
        _ => {}
    }
    result
}

/// Every distributable layer of the graph's images once, sorted by digest (configs are in
/// manifest.json).
fn layers(graph: &Graph) -> Vec<(String, u64)> {
    let mut layers: BTreeSet<(String, u64)> = BTreeSet::new();
    for m in graph.write_order() {
        for digest in m.blobs.iter().skip(1) {
            if let Some(blob) = graph.blob(digest) {
                layers.insert((digest.clone(), blob.size));
            }
        }
    }
    layers.into_iter().collect()
}

#[allow(clippy::too_many_arguments)]
async fn fill(
    graph: &Graph,
    source: &Registry,
    tar: Option<&Path>,
    path: &Path,
    plan: &Layout,
    present: &HashMap<String, u64>,
    old: Option<&Path>,
    options: &CopyOptions,
) -> Result<Written, BundleError> {
    let io = |action: &'static str| BundleError::io(action, path);
    {
        let mut file = tokio::fs::File::create(path)
            .await
            .map_err(io("creating"))?;
        file.set_len(plan.total).await.map_err(io("sizing"))?;
        let mut head = plan.header.clone();
        head.extend_from_slice(&plan.json);
        head.extend_from_slice(gotar::padding(plan.json.len() as u64));
        file.write_all(&head).await.map_err(io("writing"))?;
        for (digest, size, header_at, _) in &plan.layers {
            file.seek(std::io::SeekFrom::Start(*header_at))
                .await
                .map_err(io("writing"))?;
            let header = gotar::header(&layer_name(digest), gotar::TYPE_REG, 0o644, *size);
            file.write_all(&header).await.map_err(io("writing"))?;
        }
        // The padding and the end-of-archive blocks are zeros already (set_len).
        file.flush().await.map_err(io("writing"))?;
    }
    let results = futures::stream::iter(
        plan.layers
            .iter()
            .map(|(digest, size, _, at)| {
                let reused = present.get(digest).copied();
                async move {
                    let blob = match (reused, old) {
                        (Some(offset), Some(old)) => (
                            Blob {
                                digest: digest.clone(),
                                size: *size,
                                origin: Origin::Tar { offset },
                                from: None,
                            },
                            Some(old),
                        ),
                        _ => (
                            graph.blob(digest).cloned().ok_or_else(|| {
                                BundleError::Invalid(format!("layer {digest} has no source"))
                            })?,
                            tar,
                        ),
                    };
                    let (blob, from_tar) = blob;
                    if reused.is_none() {
                        options.emit(CopyEvent::BlobSending {
                            digest: digest.clone(),
                            size: *size,
                        });
                    }
                    let chunks = super::source::stream(source, &blob, from_tar).await?;
                    let mut chunks =
                        super::source::counted(chunks, digest, options.progress.as_ref());
                    let mut file = tokio::fs::OpenOptions::new()
                        .write(true)
                        .open(path)
                        .await
                        .map_err(io("writing"))?;
                    file.seek(std::io::SeekFrom::Start(*at))
                        .await
                        .map_err(io("writing"))?;
                    while let Some(chunk) = chunks.next().await {
                        let chunk = chunk.map_err(io("filling a layer of"))?;
                        file.write_all(&chunk).await.map_err(io("writing"))?;
                    }
                    file.flush().await.map_err(io("writing"))?;
                    match reused {
                        Some(_) => options.emit(CopyEvent::BlobPresent {
                            digest: digest.clone(),
                            size: *size,
                        }),
                        None => options.emit(CopyEvent::BlobSent {
                            digest: digest.clone(),
                            size: *size,
                            mounted: false,
                        }),
                    }
                    Ok::<_, BundleError>((reused.is_some(), *size))
                }
            })
            .collect::<Vec<_>>(),
    )
    .buffer_unordered(source.concurrency())
    .collect::<Vec<_>>()
    .await;
    let mut written = Written::default();
    for result in results {
        match result? {
            (true, _) => written.blobs_present += 1,
            (false, size) => {
                written.blobs_sent += 1;
                written.bytes_sent = written.bytes_sent.saturating_add(size);
            }
        }
    }
    written.manifests_written = graph.manifest_count();
    Ok(written)
}

/// The layers of an old tar (by digest, their data offset) whose size and sha256 are those
/// `wanted` lists; anything unreadable is simply not present.
fn present_layers(path: &Path, wanted: &HashMap<String, u64>) -> HashMap<String, u64> {
    let Ok(entries) = scan(path) else {
        return HashMap::new();
    };
    let mut present = HashMap::new();
    let Ok(mut file) = std::fs::File::open(path) else {
        return present;
    };
    for (name, (offset, size)) in entries {
        let Some(digest) = digest_of_name(&name) else {
            continue;
        };
        if wanted.get(&digest) != Some(&size) {
            continue;
        }
        if file.seek(std::io::SeekFrom::Start(offset)).is_err() {
            continue;
        }
        let mut hash = sha2::Sha256::default();
        let mut reader = (&mut file).take(size);
        let copied = std::io::copy(&mut reader, &mut HashWriter(&mut hash));
        use sha2::Digest as _;
        if copied.ok() == Some(size) && crate::registry::digest_string(&hash.finalize()) == digest {
            present.insert(digest, offset);
        }
    }
    present
}

struct HashWriter<'a>(&'a mut sha2::Sha256);

impl std::io::Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        use sha2::Digest as _;
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `sha256:<hex>` of an entry named `sha256-<hex>.tar.gz`.
fn digest_of_name(name: &str) -> Option<String> {
    let digest = name.strip_suffix(".tar.gz")?.replacen('-', ":", 1);
    is_sha256_digest(&digest).then_some(digest)
}

/// Every regular entry of the tar at `path`: name → (data offset, size). Bounded in entries
/// and header bytes; a truncated tar yields what it holds whole.
fn scan(path: &Path) -> Result<BTreeMap<String, (u64, u64)>, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("opening {}: {e}", path.display()))?;
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let capped = super::super::CappedReader::new(std::io::BufReader::new(file), len + 1);
    let meter = capped.header_meter();
    let mut archive = tar::Archive::new(capped);
    let mut found = BTreeMap::new();
    let entries = super::super::tar_entries(&mut archive, &meter)
        .map_err(|e| format!("{} is not a tar: {e}", path.display()))?;
    for entry in entries {
        // A tar cut short ends here: what came before is kept.
        let Ok(entry) = entry else { break };
        if found.len() >= MAX_ENTRIES {
            return Err(format!("the tar holds more than {MAX_ENTRIES} entries"));
        }
        if entry.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let Ok(name) = entry.path().map(|p| p.to_string_lossy().into_owned()) else {
            continue;
        };
        let offset = entry.raw_file_position();
        let size = entry.size();
        if offset + size > len {
            break;
        }
        found.entry(name).or_insert((offset, size));
    }
    Ok(found)
}

/// The descriptors of `manifest.json` for every manifest of `graph`.
async fn describe(
    graph: &Graph,
    source: &Registry,
    tar: Option<&Path>,
    options: &CopyOptions,
) -> Result<Vec<Item>, BundleError> {
    let children: HashSet<&str> = graph
        .write_order()
        .iter()
        .flat_map(|m| m.children.iter().map(String::as_str))
        .collect();
    let named: HashMap<&str, &Named> = graph.named.iter().map(|n| (n.digest.as_str(), n)).collect();
    // Every image config, read once (into memory: configs are small, and bounded).
    let mut configs: HashMap<String, Bytes> = HashMap::new();
    for m in graph.write_order() {
        if m.kind == Kind::Index {
            continue;
        }
        let Some(digest) = m.blobs.first() else {
            continue;
        };
        if configs.contains_key(digest) {
            continue;
        }
        let blob = graph
            .blob(digest)
            .ok_or_else(|| BundleError::Invalid(format!("config {digest} has no source")))?;
        configs.insert(
            digest.clone(),
            read_small(source, blob, tar, options.limits.max_config_bytes).await?,
        );
    }
    let root = graph
        .roots()
        .find(|n| n.kind == Kind::Bundle)
        .map(|n| n.digest.clone());
    let mut items = Vec::new();
    for m in graph.write_order() {
        if children.contains(m.digest.as_str()) {
            continue;
        }
        let refs = vec![digest_ref(m, named.get(m.digest.as_str()).copied())];
        let orig_ref = named
            .get(m.digest.as_str())
            .map(|n| n.reference.clone())
            .filter(|r| r.contains("@sha256:"))
            .unwrap_or_else(|| refs[0].clone());
        let tag = m.tags.first().cloned().unwrap_or_default();
        let labels = (root.as_deref() == Some(m.digest.as_str()))
            .then(|| BTreeMap::from([(ROOT_BUNDLE_LABEL.to_owned(), String::new())]));
        let item = match m.kind {
            Kind::Index => Item {
                image_index: Some(index_desc(graph, m, &configs, refs, tag, orig_ref, labels)?),
                image: None,
            },
            _ => Item {
                image_index: None,
                image: Some(image_desc(m, &configs, refs, tag, orig_ref, labels)?),
            },
        };
        items.push(item);
    }
    items.sort_by_key(sort_key);
    Ok(items)
}

fn sort_key(item: &Item) -> String {
    match (&item.image_index, &item.image) {
        (Some(index), _) => index.digest.clone(),
        (_, Some(image)) => format!("{}/{}", image.manifest.digest, image.config.digest),
        _ => String::new(),
    }
}

/// `registry/repository@digest` of where the manifest was read.
fn digest_ref(m: &Manifest, named: Option<&Named>) -> String {
    let repository = m
        .source
        .clone()
        .or_else(|| named.and_then(|n| n.reference.split('@').next().map(str::to_owned)))
        .unwrap_or_default();
    format!("{repository}@{}", m.digest)
}

fn image_desc(
    m: &Manifest,
    configs: &HashMap<String, Bytes>,
    refs: Vec<String>,
    tag: String,
    orig_ref: String,
    labels: Option<BTreeMap<String, String>>,
) -> Result<ImageDesc, BundleError> {
    let config_digest = m.blobs.first().cloned().unwrap_or_default();
    let config = configs.get(&config_digest).cloned().unwrap_or_default();
    let ids = diff_ids(&config);
    let layers = manifest_layers(&m.bytes)
        .map_err(|e| BundleError::Invalid(format!("manifest {}: {e}", m.digest)))?;
    let layers: Vec<LayerDesc> = layers
        .into_iter()
        .enumerate()
        .map(|(i, (media_type, digest, size))| LayerDesc {
            diff_id: if is_layer(&media_type) {
                ids.get(i).cloned().unwrap_or_default()
            } else {
                String::new()
            },
            media_type,
            digest,
            size: i64::try_from(size).unwrap_or(i64::MAX),
        })
        .collect();
    Ok(ImageDesc {
        refs: Some(refs),
        layers: (!layers.is_empty()).then_some(layers),
        config: ConfigDesc {
            digest: config_digest,
            raw: utf8(&config, "an image config")?,
        },
        manifest: ManifestDesc {
            media_type: m.media_type.clone(),
            digest: m.digest.clone(),
            raw: utf8(&m.bytes, "a manifest")?,
        },
        tag,
        orig_ref,
        labels,
    })
}

fn index_desc(
    graph: &Graph,
    m: &Manifest,
    configs: &HashMap<String, Bytes>,
    refs: Vec<String>,
    tag: String,
    orig_ref: String,
    labels: Option<BTreeMap<String, String>>,
) -> Result<IndexDesc, BundleError> {
    let repository = refs[0].split('@').next().unwrap_or_default().to_owned();
    let mut images = Vec::new();
    let mut indexes = Vec::new();
    for child in &m.children {
        let Some(c) = graph.manifest(child) else {
            continue;
        };
        // Platform manifests carry their index's tag and labels (imgpkg's buildImageIndex).
        let child_refs = vec![format!("{repository}@{}", c.digest)];
        match c.kind {
            Kind::Index => indexes.push(index_desc(
                graph,
                c,
                configs,
                child_refs,
                tag.clone(),
                orig_ref.clone(),
                labels.clone(),
            )?),
            _ => images.push(image_desc(
                c,
                configs,
                child_refs,
                tag.clone(),
                orig_ref.clone(),
                labels.clone(),
            )?),
        }
    }
    Ok(IndexDesc {
        refs: Some(vec![repository]),
        images: (!images.is_empty()).then_some(images),
        indexes: (!indexes.is_empty()).then_some(indexes),
        media_type: m.media_type.clone(),
        digest: m.digest.clone(),
        raw: utf8(&m.bytes, "an index")?,
        tag,
        orig_ref,
        labels,
    })
}

/// A small blob (a config) read into memory, at most `limit` bytes, checked.
async fn read_small(
    source: &Registry,
    blob: &Blob,
    tar: Option<&Path>,
    limit: u64,
) -> Result<Bytes, BundleError> {
    if let Origin::Inline(bytes) = &blob.origin {
        return Ok(bytes.clone());
    }
    if blob.size > limit {
        return Err(BundleError::Invalid(format!(
            "config {} is {} bytes, more than the {limit} accepted",
            blob.digest, blob.size
        )));
    }
    let mut chunks = super::source::stream(source, blob, tar).await?;
    let mut data = Vec::with_capacity(blob.size as usize);
    while let Some(chunk) = chunks.next().await {
        data.extend_from_slice(&chunk.map_err(|e| BundleError::Invalid(e.to_string()))?);
    }
    Ok(Bytes::from(data))
}

/// Reads an imgpkg tar (packsmith's or imgpkg's) as a graph whose layers are read from the
/// tar, after checking every manifest and config against its digest.
pub(super) fn read(path: &Path, limits: &WalkLimits) -> Result<Graph, BundleError> {
    let invalid = |reason: String| BundleError::Invalid(format!("{}: {reason}", path.display()));
    let entries = scan(path).map_err(invalid)?;
    let (offset, size) = entries.get(MANIFEST_JSON).copied().ok_or_else(|| {
        invalid("no manifest.json: not a tar written by `copy --to-tar`".to_owned())
    })?;
    if size > MAX_MANIFEST_JSON {
        return Err(invalid(format!(
            "manifest.json is {size} bytes, more than the {MAX_MANIFEST_JSON} accepted"
        )));
    }
    let mut file = std::fs::File::open(path).map_err(BundleError::io("reading", path))?;
    file.seek(std::io::SeekFrom::Start(offset))
        .map_err(BundleError::io("reading", path))?;
    let mut json = Vec::with_capacity(size as usize);
    (&mut file)
        .take(size)
        .read_to_end(&mut json)
        .map_err(BundleError::io("reading", path))?;
    let items: Vec<Item> = serde_json::from_slice(&json).map_err(|e| {
        invalid(format!(
            "manifest.json is not imgpkg's descriptor list: {e}"
        ))
    })?;
    let layers: HashMap<String, (u64, u64)> = entries
        .iter()
        .filter_map(|(name, at)| digest_of_name(name).map(|d| (d, *at)))
        .collect();
    let has_root = items.iter().any(|i| {
        i.image
            .as_ref()
            .and_then(|im| im.labels.as_ref())
            .is_some_and(|l| l.contains_key(ROOT_BUNDLE_LABEL))
    });
    let mut reader = TarGraph {
        graph: Graph::default(),
        layers,
        limits,
        inflation: graph::Inflation::new(limits),
        path,
    };
    for (i, item) in items.iter().enumerate() {
        match (&item.image_index, &item.image) {
            (Some(index), None) => {
                reader.index(index, has_root, true, 0)?;
            }
            (None, Some(image)) => {
                reader.image(image, has_root, true)?;
            }
            _ => {
                return Err(invalid(format!(
                    "descriptor {i} has neither an image nor an image index"
                )));
            }
        }
        if reader.graph.manifest_count() > limits.max_manifests {
            return Err(invalid(format!(
                "more than {} manifests",
                limits.max_manifests
            )));
        }
    }
    Ok(reader.graph)
}

struct TarGraph<'a> {
    graph: Graph,
    layers: HashMap<String, (u64, u64)>,
    limits: &'a WalkLimits,
    inflation: graph::Inflation,
    path: &'a Path,
}

impl TarGraph<'_> {
    fn invalid(&self, reason: String) -> BundleError {
        BundleError::Invalid(format!("{}: {reason}", self.path.display()))
    }

    /// The images a bundle's layer (in the tar) locks.
    fn images_lock(&self, blobs: &[(String, u64)]) -> Result<Vec<String>, BundleError> {
        let Some((layer, size)) = blobs.get(1) else {
            return Err(self.invalid("a bundle without a layer".to_owned()));
        };
        let Some((offset, _)) = self.layers.get(layer).copied() else {
            return Err(self.invalid(format!("bundle layer {layer} is not in the tar")));
        };
        let mut file =
            std::fs::File::open(self.path).map_err(BundleError::io("reading", self.path))?;
        file.seek(std::io::SeekFrom::Start(offset))
            .map_err(BundleError::io("reading", self.path))?;
        let lock = graph::images_lock_of_layer(
            std::io::BufReader::new(file.take(*size)),
            self.limits,
            &self.inflation,
        )
        .map_err(|e| self.invalid(format!("bundle layer {layer}: {e}")))?;
        Ok(lock.images.into_iter().map(|i| i.image).collect())
    }

    /// `Refs[0]`: a digest reference, whose repository the item came from.
    fn source(&self, refs: &Option<Vec<String>>, digest: &str) -> Result<String, BundleError> {
        let first = refs
            .as_ref()
            .and_then(|r| r.first())
            .ok_or_else(|| self.invalid(format!("{digest} has no Refs")))?;
        let repository = first.split('@').next().unwrap_or(first);
        crate::registry::parse_reference(&format!("{repository}@{digest}"))
            .map_err(|e| self.invalid(format!("{digest}: {e}")))?;
        Ok(repository.to_owned())
    }

    /// A tag the tar names, which becomes part of a URL in the target: `../` in it would
    /// write to another repository with the target's credentials.
    fn tag(&self, tag: &str) -> Result<String, BundleError> {
        if super::super::target::is_valid_tag(tag) {
            Ok(tag.to_owned())
        } else {
            Err(self.invalid(format!(
                "{tag:?} is not a tag ([A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}})"
            )))
        }
    }

    fn image(&mut self, d: &ImageDesc, has_root: bool, top: bool) -> Result<String, BundleError> {
        let raw = d.manifest.raw.as_bytes();
        let digest = sha256_digest(raw);
        if digest != d.manifest.digest {
            return Err(self.invalid(format!(
                "manifest {} has digest {digest}",
                d.manifest.digest
            )));
        }
        let parsed = graph::parse_manifest(raw, self.limits)
            .map_err(|e| self.invalid(format!("manifest {digest}: {e}")))?;
        if parsed.index {
            return Err(self.invalid(format!("{digest} is an index listed as an image")));
        }
        let config = Bytes::copy_from_slice(d.config.raw.as_bytes());
        let (config_digest, config_size) = parsed.blobs[0].clone();
        if sha256_digest(&config) != config_digest || config.len() as u64 != config_size {
            return Err(self.invalid(format!("config {config_digest} of {digest} differs")));
        }
        let bundle = graph::config_is_bundle(&config).unwrap_or(false);
        let source = self.source(&d.refs, &digest)?;
        self.graph.insert_blob(Blob {
            digest: config_digest,
            size: config_size,
            origin: Origin::Inline(config),
            from: None,
        });
        for (layer, size) in parsed.blobs.iter().skip(1) {
            let Some((offset, stored)) = self.layers.get(layer).copied() else {
                return Err(self.invalid(format!(
                    "layer {layer} of {digest} is not in the tar (a tar written without \
                     non-distributable layers cannot carry them)"
                )));
            };
            if stored != *size {
                return Err(self.invalid(format!(
                    "layer {layer} is {stored} bytes in the tar, its manifest says {size}"
                )));
            }
            self.graph.insert_blob(Blob {
                digest: layer.clone(),
                size: *size,
                origin: Origin::Tar { offset },
                from: None,
            });
        }
        let root = d
            .labels
            .as_ref()
            .is_some_and(|l| l.contains_key(ROOT_BUNDLE_LABEL));
        let depth = if root || (top && !has_root) { 0 } else { 1 };
        let tags = if top && !d.tag.is_empty() {
            vec![self.tag(&d.tag)?]
        } else {
            Vec::new()
        };
        let kind = if bundle { Kind::Bundle } else { Kind::Image };
        let locked = if bundle {
            self.images_lock(&parsed.blobs)?
        } else {
            Vec::new()
        };
        if top {
            self.graph.named.push(Named {
                digest: digest.clone(),
                reference: if d.orig_ref.is_empty() {
                    format!("{source}@{digest}")
                } else {
                    d.orig_ref.clone()
                },
                kind,
            });
        }
        self.graph.insert_manifest(Manifest {
            digest: digest.clone(),
            media_type: parsed.media_type,
            bytes: Bytes::copy_from_slice(raw),
            kind,
            children: Vec::new(),
            blobs: parsed.blobs.into_iter().map(|(d, _)| d).collect(),
            tags,
            depth,
            source: Some(source),
            locked,
        });
        Ok(digest)
    }

    fn index(
        &mut self,
        d: &IndexDesc,
        has_root: bool,
        top: bool,
        nesting: usize,
    ) -> Result<String, BundleError> {
        if nesting >= graph::MAX_INDEX_NESTING {
            return Err(self.invalid(format!(
                "image indexes nest more than {} deep",
                graph::MAX_INDEX_NESTING
            )));
        }
        let raw = d.raw.as_bytes();
        let digest = sha256_digest(raw);
        if digest != d.digest {
            return Err(self.invalid(format!("index {} has digest {digest}", d.digest)));
        }
        let parsed = graph::parse_manifest(raw, self.limits)
            .map_err(|e| self.invalid(format!("index {digest}: {e}")))?;
        let mut present = HashSet::new();
        for image in d.images.iter().flatten() {
            present.insert(self.image(image, has_root, false)?);
        }
        for index in d.indexes.iter().flatten() {
            present.insert(self.index(index, has_root, false, nesting + 1)?);
        }
        for (child, _) in &parsed.children {
            if !present.contains(child) {
                return Err(self.invalid(format!(
                    "index {digest} lists {child}, which the tar does not hold"
                )));
            }
        }
        let source = d
            .refs
            .as_ref()
            .and_then(|r| r.first())
            .map(|r| r.split('@').next().unwrap_or(r).to_owned())
            .ok_or_else(|| self.invalid(format!("{digest} has no Refs")))?;
        let depth = usize::from(has_root);
        if top {
            self.graph.named.push(Named {
                digest: digest.clone(),
                reference: if d.orig_ref.is_empty() {
                    format!("{source}@{digest}")
                } else {
                    d.orig_ref.clone()
                },
                kind: Kind::Index,
            });
        }
        self.graph.insert_manifest(Manifest {
            digest: digest.clone(),
            media_type: parsed.media_type,
            bytes: Bytes::copy_from_slice(raw),
            kind: Kind::Index,
            children: parsed.children.into_iter().map(|(d, _)| d).collect(),
            blobs: Vec::new(),
            tags: if !top || d.tag.is_empty() {
                Vec::new()
            } else {
                vec![self.tag(&d.tag)?]
            },
            depth,
            source: Some(source),
            locked: Vec::new(),
        });
        Ok(digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
    const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

    /// An image of one layer as a registry holds it: (manifest, config, layer) bytes.
    fn image(labels: &str, layer: &[u8], diff_id: &str) -> (String, String, Vec<u8>) {
        let config = format!(
            r#"{{"architecture":"amd64","config":{{"Labels":{labels}}},"os":"linux","rootfs":{{"type":"layers","diff_ids":["{diff_id}"]}}}}"#
        );
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","config":{{"mediaType":"{DOCKER_CONFIG}","size":{},"digest":"{}"}},"layers":[{{"mediaType":"{DOCKER_LAYER}","size":{},"digest":"{}"}}]}}"#,
            config.len(),
            sha256_digest(config.as_bytes()),
            layer.len(),
            sha256_digest(layer)
        );
        (manifest, config, layer.to_vec())
    }

    fn json_string(s: &str) -> String {
        serde_json::to_string(s).unwrap()
    }

    /// One item of manifest.json exactly as imgpkg's `buildImage` fills it and Go's
    /// `encoding/json` prints `ImageOrImageIndexDescriptor` (field order, `null` for nil).
    fn item(
        repo: &str,
        (manifest, config, layer): &(String, String, Vec<u8>),
        diff_id: &str,
        tag: &str,
        labels: &str,
    ) -> String {
        let m = sha256_digest(manifest.as_bytes());
        format!(
            r#"{{"ImageIndex":null,"Image":{{"Refs":["{repo}@{m}"],"Layers":[{{"MediaType":"{DOCKER_LAYER}","Digest":"{}","DiffID":"{diff_id}","Size":{}}}],"Config":{{"Digest":"{}","Raw":{}}},"Manifest":{{"MediaType":"{DOCKER_MANIFEST}","Digest":"{m}","Raw":{}}},"Tag":"{tag}","OrigRef":"{repo}@{m}","Labels":{labels}}}}}"#,
            sha256_digest(layer),
            layer.len(),
            sha256_digest(config.as_bytes()),
            json_string(config),
            json_string(manifest),
        )
    }

    /// A tar built from the facts of imgpkg's `tar_writer.go` and `imagedesc` (see the module
    /// documentation), not by the writer under test: a root bundle (labelled, tagged) that
    /// locks one image.
    fn fixture_tar() -> (Vec<u8>, String, String) {
        let diff = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let app = image("null", b"app layer bytes", &diff('1'));
        let app_digest = sha256_digest(app.0.as_bytes());
        // The bundle's layer: a gzip'd tar holding its ImagesLock, which locks the app.
        let lock = format!(
            "apiVersion: imgpkg.carvel.dev/v1alpha1\nkind: ImagesLock\nimages:\n- image: r.example/app@{app_digest}\n"
        );
        let mut layer_tar = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_ustar();
        header.set_size(lock.len() as u64);
        header.set_mode(0o600);
        header.set_entry_type(tar::EntryType::Regular);
        layer_tar
            .append_data(&mut header, ".imgpkg/images.yml", lock.as_bytes())
            .unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &layer_tar.into_inner().unwrap()).unwrap();
        let bundle = image(
            r#"{"dev.carvel.imgpkg.bundle":"true"}"#,
            &gz.finish().unwrap(),
            &diff('2'),
        );
        let bundle_digest = sha256_digest(bundle.0.as_bytes());
        let mut items = vec![
            (
                format!("{app_digest}/{}", sha256_digest(app.1.as_bytes())),
                item("r.example/app", &app, &diff('1'), "", "null"),
            ),
            (
                format!("{bundle_digest}/{}", sha256_digest(bundle.1.as_bytes())),
                item(
                    "r.example/bundle",
                    &bundle,
                    &diff('2'),
                    "v1",
                    r#"{"dev.carvel.imgpkg.copy.root-bundle":""}"#,
                ),
            ),
        ];
        items.sort();
        let json = format!(
            "[{}]",
            items
                .into_iter()
                .map(|(_, i)| i)
                .collect::<Vec<_>>()
                .join(",")
        );
        let mut layers = vec![
            (sha256_digest(&app.2), app.2.clone()),
            (sha256_digest(&bundle.2), bundle.2.clone()),
        ];
        layers.sort();
        let mut tar = gotar::header("manifest.json", gotar::TYPE_REG, 0o644, json.len() as u64);
        tar.extend_from_slice(json.as_bytes());
        tar.extend_from_slice(gotar::padding(json.len() as u64));
        for (digest, data) in &layers {
            let name = format!("sha256-{}.tar.gz", &digest[7..]);
            tar.extend(gotar::header(
                &name,
                gotar::TYPE_REG,
                0o644,
                data.len() as u64,
            ));
            tar.extend_from_slice(data);
            tar.extend_from_slice(gotar::padding(data.len() as u64));
        }
        tar.extend_from_slice(&gotar::END_OF_ARCHIVE);
        (tar, app_digest, bundle_digest)
    }

    /// An imgpkg tar reads as what it holds — the root bundle with its tag, its image, every
    /// blob at its place — and writing that graph gives the same tar, byte for byte.
    #[tokio::test]
    async fn an_imgpkg_tar_reads_and_writes_back_byte_for_byte() {
        let (bytes, app, bundle) = fixture_tar();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("imgpkg.tar");
        std::fs::write(&path, &bytes).unwrap();
        let graph = read(&path, &WalkLimits::default()).unwrap();
        assert_eq!(graph.manifest_count(), 2);
        let root: Vec<&Named> = graph.roots().collect();
        assert_eq!(root.len(), 1);
        assert_eq!(root[0].digest, bundle);
        assert_eq!(root[0].kind, Kind::Bundle);
        assert_eq!(graph.manifest(&bundle).unwrap().tags, vec!["v1".to_owned()]);
        assert_eq!(graph.manifest(&app).unwrap().kind, Kind::Image);
        assert_eq!(
            graph.manifest(&bundle).unwrap().locked,
            vec![format!("r.example/app@{app}")]
        );
        assert_eq!(graph.blobs().count(), 4);

        let registry = Registry::new(Default::default()).unwrap();
        let out = dir.path().join("packsmith.tar");
        let written = write(
            &graph,
            &registry,
            Some(&path),
            &out,
            &CopyOptions::default(),
        )
        .await
        .unwrap();
        assert_eq!(written.blobs_sent, 2);
        assert!(
            std::fs::read(&out).unwrap() == bytes,
            "the tar written differs"
        );
    }

    /// Every manifest and blob of a tar is checked: an altered manifest, a layer the tar
    /// lacks, or a layer of another size is an error naming it.
    #[test]
    fn a_tampered_tar_is_refused() {
        let (bytes, _, _) = fixture_tar();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.tar");
        let text = String::from_utf8_lossy(&bytes).into_owned();
        // A manifest's bytes changed (same length, so the tar stays well formed).
        let altered = text.replacen("schemaVersion\\\":2", "schemaVersion\\\":3", 1);
        std::fs::write(&path, altered.as_bytes()).unwrap();
        let err = read(&path, &WalkLimits::default()).unwrap_err().to_string();
        assert!(err.contains("has digest"), "{err}");
        // No layers at all: the first is missing.
        let json_end = bytes.len() - 1024 - 2 * 1024;
        let mut cut = bytes[..json_end].to_vec();
        cut.extend_from_slice(&gotar::END_OF_ARCHIVE);
        std::fs::write(&path, &cut).unwrap();
        let err = read(&path, &WalkLimits::default()).unwrap_err().to_string();
        assert!(err.contains("is not in the tar"), "{err}");
        std::fs::write(&path, b"not a tar at all").unwrap();
        assert!(read(&path, &WalkLimits::default()).is_err());
        // A tag that is a path: in the target's URL, `..` climbs out of the repository.
        let climbing = text.replacen("\"Tag\":\"v1\"", "\"Tag\":\"..\"", 1);
        assert_ne!(climbing, text);
        std::fs::write(&path, climbing.as_bytes()).unwrap();
        let err = read(&path, &WalkLimits::default()).unwrap_err().to_string();
        assert!(err.contains("\"..\" is not a tag"), "{err}");
    }

    /// Declared sizes are the source's word: two layers of `i64::MAX` bytes add up past a
    /// u64 and would wrap the offsets (release builds do not check overflow).
    #[test]
    fn declared_sizes_cannot_wrap_the_layout() {
        let huge = i64::MAX as u64;
        let layers = vec![
            (format!("sha256:{}", "a".repeat(64)), huge),
            (format!("sha256:{}", "b".repeat(64)), huge),
            (format!("sha256:{}", "c".repeat(64)), huge),
        ];
        assert!(layout(b"[]".to_vec(), &layers[..1]).is_ok());
        let err = layout(b"[]".to_vec(), &layers).err().unwrap().to_string();
        assert!(err.contains("add up past"), "{err}");
    }

    #[test]
    fn json_is_escaped_as_go_escapes_it() {
        let text = go_json(&vec!["<a href=\"x\">&\u{2028}"]).unwrap();
        assert_eq!(text, r#"["\u003ca href=\"x\"\u003e\u0026\u2028"]"#);
    }

    #[test]
    fn layer_entries_are_named_as_imgpkg_names_them() {
        let digest = format!("sha256:{}", "ab".repeat(32));
        let name = layer_name(&digest);
        assert_eq!(name, format!("sha256-{}.tar.gz", "ab".repeat(32)));
        assert_eq!(digest_of_name(&name), Some(digest));
        assert_eq!(digest_of_name("manifest.json"), None);
        assert_eq!(digest_of_name("sha256-../../x.tar.gz"), None);
    }
}
