//! Writing a [`Graph`] into one repository, as `imgpkg copy --to-repo` does: every blob the
//! repository lacks (HEADed first; mounted from another repository of the same registry when
//! it offers that; otherwise streamed from the source, checked against its digest on the
//! way), then every manifest by digest, children before what names them, each image tagged
//! `sha256-<hex>.imgpkg` so that registries that collect untagged manifests keep it, and the
//! bundle under its own tag last. A copy cut off anywhere leaves no tag pointing at a
//! manifest whose content is incomplete, and running it again sends only what is missing.

use std::collections::{HashMap, HashSet};

use futures::StreamExt as _;

use super::graph::{Blob, Graph, Kind, Manifest};
use super::{CopyEvent, CopyOptions, Written};
use crate::bundle::BundleError;
use crate::bundle::push::{digest_tag, retry};
use crate::registry::{Reference, Registry, Upload};

/// Copies `graph` into `target` (a repository). Blobs are read from `source` (registry
/// origins) or from `tar` (tar origins).
pub(super) async fn write(
    graph: &Graph,
    source: &Registry,
    target_registry: &Registry,
    target: &Reference,
    tar: Option<&std::path::Path>,
    options: &CopyOptions,
) -> Result<Written, BundleError> {
    let contacted = target_registry.contact(target);
    let client = target_registry.distribution();
    let push = options.push_options();
    let mut written = Written::default();
    let order = graph.write_order();
    let children: HashSet<&str> = order
        .iter()
        .flat_map(|m| m.children.iter().map(String::as_str))
        .collect();

    // What the target holds whole already: a manifest a copy named with its
    // `sha256-<hex>.imgpkg` tag, and everything below it (a registry accepts a manifest only
    // once what it names is there; a copy tags an image only after its blobs, an index only
    // after its platform manifests, a bundle only after the images it locks). One HEAD per
    // image makes a re-run, or a steady-state relocation, cheap.
    let tops: Vec<&Manifest> = order
        .iter()
        .copied()
        .filter(|m| !children.contains(m.digest.as_str()))
        .collect();
    let heads = futures::stream::iter(
        tops.iter()
            .map(|m| {
                let (client, contacted, push) = (&client, &contacted, &push);
                async move {
                    let tag = digest_tag(&m.digest);
                    let now = retry(push, "HEAD manifest", contacted, || {
                        client.manifest_digest_at(contacted, &tag)
                    })
                    .await?;
                    Ok::<_, BundleError>((m, now.as_deref() == Some(m.digest.as_str())))
                }
            })
            .collect::<Vec<_>>(),
    )
    .buffer_unordered(target_registry.concurrency())
    .collect::<Vec<_>>()
    .await;
    let mut complete: HashSet<&str> = HashSet::new();
    for head in heads {
        let (m, there) = head?;
        if there {
            mark_complete(graph, m, &mut complete);
        }
    }
    let needed: HashSet<&str> = order
        .iter()
        .filter(|m| !complete.contains(m.digest.as_str()))
        .flat_map(|m| m.blobs.iter().map(String::as_str))
        .collect();
    written.blobs_present += graph
        .blobs()
        .filter(|b| !needed.contains(b.digest.as_str()))
        .count();

    let blobs: Vec<&Blob> = graph
        .blobs()
        .filter(|b| needed.contains(b.digest.as_str()))
        .collect();
    let results = futures::stream::iter(
        blobs
            .into_iter()
            .map(|blob| {
                let (client, contacted, push) = (&client, &contacted, &push);
                async move {
                    let present = retry(push, "HEAD blob", contacted, || {
                        client.blob_exists(contacted, &blob.digest)
                    })
                    .await?;
                    if present {
                        options.emit(CopyEvent::BlobPresent {
                            digest: blob.digest.clone(),
                            size: blob.size,
                        });
                        return Ok::<_, BundleError>((blob.size, None));
                    }
                    let mount_from = match &blob.from {
                        Some(from) if from.resolve_registry() == contacted.resolve_registry() => {
                            Some(from.repository().to_owned())
                        }
                        _ => None,
                    };
                    options.emit(CopyEvent::BlobSending {
                        digest: blob.digest.clone(),
                        size: blob.size,
                    });
                    let how = retry(push, "upload blob", contacted, || {
                        client.upload_blob(
                            contacted,
                            &blob.digest,
                            blob.size,
                            mount_from.as_deref(),
                            || super::source::body(source, blob, tar, options.progress.as_ref()),
                        )
                    })
                    .await?;
                    options.emit(CopyEvent::BlobSent {
                        digest: blob.digest.clone(),
                        size: blob.size,
                        mounted: how == Upload::Mounted,
                    });
                    Ok((blob.size, Some(how)))
                }
            })
            .collect::<Vec<_>>(),
    )
    .buffer_unordered(target_registry.concurrency())
    .collect::<Vec<_>>()
    .await;
    for result in results {
        match result? {
            (_, None) => written.blobs_present += 1,
            (_, Some(Upload::Mounted)) => written.blobs_mounted += 1,
            (size, Some(Upload::Sent)) => {
                written.blobs_sent += 1;
                written.bytes_sent = written.bytes_sent.saturating_add(size);
            }
        }
    }

    // Manifests by height: a manifest is written only once everything it names is there.
    let mut heights: HashMap<&str, usize> = HashMap::new();
    for m in &order {
        let h = m
            .children
            .iter()
            .filter_map(|c| heights.get(c.as_str()))
            .max()
            .map_or(0, |h| h + 1);
        heights.insert(&m.digest, h);
    }
    let max_plain = order
        .iter()
        .filter(|m| m.kind != Kind::Bundle)
        .map(|m| heights[m.digest.as_str()])
        .max()
        .unwrap_or(0);
    let max_depth = order.iter().map(|m| m.depth).max().unwrap_or(0);
    let height = |m: &Manifest| match m.kind {
        // Inner bundles (deeper) before outer ones, all after every image.
        Kind::Bundle => max_plain + 1 + (max_depth - m.depth),
        _ => heights[m.digest.as_str()],
    };
    let top = order.iter().map(|m| height(m)).max().unwrap_or(0);
    for level in 0..=top {
        let group: Vec<&Manifest> = order
            .iter()
            .copied()
            .filter(|m| height(m) == level)
            .collect();
        let results = futures::stream::iter(
            group
                .into_iter()
                .map(|m| {
                    let mut tags = tags_of(m, children.contains(m.digest.as_str()));
                    if complete.contains(m.digest.as_str()) {
                        // Known to be there: only its other tags (a bundle's own, moved) may not be.
                        let own = digest_tag(&m.digest);
                        tags.retain(|t| *t != own);
                        if tags.is_empty() {
                            return futures::future::Either::Left(async { Ok(0) });
                        }
                    }
                    let (client, contacted, push) = (&client, &contacted, &push);
                    let write = async move {
                        let mut wrote = 0usize;
                        for tag in tags.iter().map(Some).chain(tags.is_empty().then_some(None)) {
                            let at = tag.map_or(m.digest.as_str(), String::as_str);
                            let now = retry(push, "HEAD manifest", contacted, || {
                                client.manifest_digest_at(contacted, at)
                            })
                            .await?;
                            if now.as_deref() == Some(m.digest.as_str()) {
                                continue;
                            }
                            retry(push, "PUT manifest", contacted, || {
                                client.put_manifest(contacted, at, &m.media_type, m.bytes.clone())
                            })
                            .await?;
                            wrote += 1;
                            if let Some(tag) = tag {
                                options.emit(CopyEvent::Tagged {
                                    reference: format!("{}:{tag}", repository(target)),
                                });
                            }
                        }
                        Ok::<_, BundleError>(wrote)
                    };
                    futures::future::Either::Right(write)
                })
                .collect::<Vec<_>>(),
        )
        .buffer_unordered(target_registry.concurrency())
        .collect::<Vec<_>>()
        .await;
        for result in results {
            let wrote = result?;
            if wrote == 0 {
                written.manifests_present += 1;
            } else {
                written.manifests_written += 1;
            }
        }
    }
    // Last, as imgpkg's NoteCopy: where each bundle's images now are (known to be there for
    // a bundle that was).
    for m in order
        .iter()
        .filter(|m| m.kind == Kind::Bundle && !complete.contains(m.digest.as_str()))
    {
        let images: Vec<(String, bool)> = m
            .locked
            .iter()
            .map(|image| {
                let is_bundle = image
                    .rsplit_once('@')
                    .and_then(|(_, d)| graph.manifest(d))
                    .is_some_and(|l| l.kind == Kind::Bundle);
                (image.clone(), is_bundle)
            })
            .collect();
        let yaml = super::locations::yaml(&images)
            .map_err(|e| BundleError::Invalid(format!("image locations: {e}")))?;
        let image = super::locations::image(&yaml);
        for (digest, data) in [&image.config, &image.layer] {
            let present = retry(&push, "HEAD blob", &contacted, || {
                client.blob_exists(&contacted, digest)
            })
            .await?;
            if !present {
                retry(&push, "upload blob", &contacted, || {
                    client.push_blob(&contacted, digest, data.clone())
                })
                .await?;
            }
        }
        let digest = crate::registry::sha256_digest(&image.manifest);
        for tag in [super::locations::tag(&m.digest), digest_tag(&digest)] {
            let now = retry(&push, "HEAD manifest", &contacted, || {
                client.manifest_digest_at(&contacted, &tag)
            })
            .await?;
            if now.as_deref() != Some(digest.as_str()) {
                retry(&push, "PUT manifest", &contacted, || {
                    client.put_manifest(
                        &contacted,
                        &tag,
                        crate::bundle::image::MANIFEST_MEDIA_TYPE,
                        image.manifest.clone(),
                    )
                })
                .await?;
            }
        }
    }
    written.target_requests = client.stats().total();
    drop(client);
    Ok(written)
}

/// Marks `m` and every manifest below it complete.
fn mark_complete<'g>(graph: &'g Graph, m: &'g Manifest, complete: &mut HashSet<&'g str>) {
    if !complete.insert(&m.digest) {
        return;
    }
    for child in &m.children {
        if let Some(c) = graph.manifest(child) {
            mark_complete(graph, c, complete);
        }
    }
}

/// The tags a manifest carries in the target: none for a platform manifest (its index names
/// it), the cosign tag alone for a signature, else its own tags and `sha256-<hex>.imgpkg`.
fn tags_of(m: &Manifest, platform: bool) -> Vec<String> {
    if platform && m.tags.is_empty() {
        return Vec::new();
    }
    let mut tags = m.tags.clone();
    let own = digest_tag(&m.digest);
    if !tags.contains(&own) {
        tags.push(own);
    }
    tags
}

/// `registry/repository` of `reference`.
pub(super) fn repository(reference: &Reference) -> String {
    format!("{}/{}", reference.registry(), reference.repository())
}
