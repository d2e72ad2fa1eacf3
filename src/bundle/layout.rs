//! An OCI image layout directory as a bundle store: `oci-layout`, `index.json` naming tags with
//! `org.opencontainers.image.ref.name`, and content-addressed `blobs/sha256/<hex>`.
//!
//! Same guarantees as a registry push: blobs that exist are not rewritten, each file appears
//! atomically (written aside, then renamed), and `index.json` is updated last, under a lock,
//! so a tag never names a manifest whose blobs are missing.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::build::BuiltBundle;
use super::error::BundleError;
use super::image::{is_sha256_digest, sha256_digest};

const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
const REF_NAME: &str = "org.opencontainers.image.ref.name";

#[derive(Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Index {
    schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Vec<IndexEntry>,
    /// Whatever else another tool put there is kept.
    #[serde(flatten)]
    other: serde_json::Map<String, serde_json::Value>,
}

#[derive(Serialize, Deserialize, Clone)]
#[serde(rename_all = "camelCase")]
struct IndexEntry {
    media_type: String,
    digest: String,
    size: u64,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    annotations: std::collections::BTreeMap<String, String>,
    #[serde(flatten)]
    other: serde_json::Map<String, serde_json::Value>,
}

impl IndexEntry {
    fn tag(&self) -> Option<&str> {
        self.annotations.get(REF_NAME).map(String::as_str)
    }
}

/// Writes `bundle` into the layout at `dir` (created if needed) and points `tags` at it.
/// Returns the digests of blobs written and the tags that changed.
pub(super) fn write(
    dir: &Path,
    bundle: &BuiltBundle,
    tags: &[String],
) -> Result<(Vec<String>, Vec<String>), BundleError> {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).map_err(BundleError::io("creating", &blobs))?;
    let marker = dir.join("oci-layout");
    if !marker.exists() {
        write_atomically(&marker, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    }
    let mut written = Vec::new();
    for blob in bundle.blobs().into_iter().chain([&bundle.manifest]) {
        let path = blob_path(dir, &blob.digest);
        if !path.exists() {
            let data = blob.data.as_deref().ok_or_else(|| {
                BundleError::Invalid(format!("blob {} is not in memory", blob.digest))
            })?;
            write_atomically(&path, data)?;
            if blob.digest != bundle.manifest.digest {
                written.push(blob.digest.clone());
            }
        }
    }

    // Serialise index updates between processes; the lock file is never removed, so every
    // writer locks the same inode.
    let lock_path = dir.join("index.json.lock");
    let lock = fs::File::create(&lock_path).map_err(BundleError::io("creating", &lock_path))?;
    lock.lock()
        .map_err(BundleError::io("locking", &lock_path))?;
    let mut index = read_index(dir)?.unwrap_or_else(|| Index {
        schema_version: 2,
        media_type: Some(INDEX_MEDIA_TYPE.to_owned()),
        ..Index::default()
    });
    let mut changed = Vec::new();
    for tag in tags {
        let current = index
            .manifests
            .iter()
            .find(|m| m.tag() == Some(tag.as_str()));
        if current.is_some_and(|m| m.digest == bundle.digest()) {
            continue;
        }
        index.manifests.retain(|m| m.tag() != Some(tag.as_str()));
        index.manifests.push(IndexEntry {
            media_type: bundle.manifest.media_type.to_owned(),
            digest: bundle.digest().to_owned(),
            size: bundle.manifest.size,
            annotations: [(REF_NAME.to_owned(), tag.clone())].into(),
            other: serde_json::Map::new(),
        });
        changed.push(tag.clone());
    }
    if !changed.is_empty() {
        let json = serde_json::to_vec_pretty(&index)
            .map_err(|e| BundleError::Invalid(format!("serialising index.json: {e}")))?;
        write_atomically(&dir.join("index.json"), &json)?;
    }
    drop(lock);
    Ok((written, changed))
}

/// Finds the manifest a tag or digest names. `None` for the tag means the only manifest.
pub(super) fn resolve(
    dir: &Path,
    tag: Option<&str>,
    digest: Option<&str>,
) -> Result<String, BundleError> {
    let not_found = |reason: String| BundleError::Content {
        reference: format!("oci-layout:{}", dir.display()),
        reason,
    };
    let index = read_index(dir)?
        .ok_or_else(|| not_found("no index.json: not an OCI image layout".to_owned()))?;
    if let Some(digest) = digest {
        return if index.manifests.iter().any(|m| m.digest == digest)
            || blob_path(dir, digest).exists()
        {
            Ok(digest.to_owned())
        } else {
            Err(not_found(format!("no manifest {digest}")))
        };
    }
    let matches: Vec<&IndexEntry> = match tag {
        Some(tag) => index
            .manifests
            .iter()
            .filter(|m| m.tag() == Some(tag))
            .collect(),
        None => index.manifests.iter().collect(),
    };
    match matches.as_slice() {
        [one] if is_sha256_digest(&one.digest) => Ok(one.digest.clone()),
        [_] => Err(not_found(
            "index.json names a digest that is not sha256".to_owned(),
        )),
        [] => Err(not_found(format!(
            "no manifest tagged {:?}",
            tag.unwrap_or("")
        ))),
        _ => Err(not_found(
            "several manifests; name one with :TAG or @sha256:…".to_owned(),
        )),
    }
}

/// The most an `index.json` or a manifest of a layout may take (as a registry's manifest).
pub(super) const MAX_DOCUMENT_BYTES: u64 = 4 << 20;

/// `path` whole, when it is a regular file of at most `max` bytes. A layout is a directory
/// anyone can hand over: a link to `/dev/zero`, a FIFO or a file of gigabytes where a manifest
/// should be must end as an error, not a hang or a process out of memory.
fn read_file(path: &Path, max: u64) -> Result<Vec<u8>, BundleError> {
    let meta = fs::symlink_metadata(path).map_err(BundleError::io("reading", path))?;
    regular(path, &meta)?;
    if meta.len() > max {
        return Err(BundleError::Content {
            reference: path.display().to_string(),
            reason: format!("{} bytes, more than the {max} accepted", meta.len()),
        });
    }
    let mut data = Vec::with_capacity(meta.len() as usize);
    fs::File::open(path)
        .and_then(|f| std::io::Read::read_to_end(&mut std::io::Read::take(f, max), &mut data))
        .map_err(BundleError::io("reading", path))?;
    Ok(data)
}

fn regular(path: &Path, meta: &fs::Metadata) -> Result<(), BundleError> {
    if meta.file_type().is_file() {
        Ok(())
    } else {
        Err(BundleError::Content {
            reference: path.display().to_string(),
            reason: "not a regular file (a layout's files are never links or devices)".to_owned(),
        })
    }
}

/// Reads a blob of at most `max` bytes and checks it is what its digest says.
pub(super) fn read_blob(dir: &Path, digest: &str, max: u64) -> Result<Vec<u8>, BundleError> {
    if !is_sha256_digest(digest) {
        return Err(BundleError::Content {
            reference: format!("oci-layout:{}", dir.display()),
            reason: format!("{digest:?} is not a sha256 digest"),
        });
    }
    let path = blob_path(dir, digest);
    let data = read_file(&path, max)?;
    let actual = sha256_digest(&data);
    if actual != digest {
        return Err(BundleError::Content {
            reference: format!("oci-layout:{}", dir.display()),
            reason: format!("blob {digest} holds content with digest {actual}"),
        });
    }
    Ok(data)
}

/// The blob `digest` of the layout, opened for streaming: the caller checks its digest as it
/// reads (a layer is not read into memory).
pub(super) fn open_blob(dir: &Path, digest: &str) -> Result<fs::File, BundleError> {
    if !is_sha256_digest(digest) {
        return Err(BundleError::Content {
            reference: format!("oci-layout:{}", dir.display()),
            reason: format!("{digest:?} is not a sha256 digest"),
        });
    }
    let path = blob_path(dir, digest);
    let meta = fs::symlink_metadata(&path).map_err(BundleError::io("reading", &path))?;
    regular(&path, &meta)?;
    fs::File::open(&path).map_err(BundleError::io("reading", &path))
}

fn blob_path(dir: &Path, digest: &str) -> PathBuf {
    dir.join("blobs/sha256")
        .join(digest.strip_prefix("sha256:").unwrap_or(digest))
}

fn read_index(dir: &Path) -> Result<Option<Index>, BundleError> {
    let path = dir.join("index.json");
    if fs::symlink_metadata(&path).is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound) {
        return Ok(None);
    }
    let bytes = read_file(&path, MAX_DOCUMENT_BYTES)?;
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| BundleError::Content {
            reference: path.display().to_string(),
            reason: format!("not a valid OCI index: {e}"),
        })
}

fn write_atomically(path: &Path, data: &[u8]) -> Result<(), BundleError> {
    let parent = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(parent)
        .map_err(BundleError::io("creating a file in", parent))?;
    tmp.write_all(data)
        .and_then(|()| tmp.as_file().sync_data())
        .map_err(BundleError::io("writing", path))?;
    tmp.persist(path)
        .map_err(|e| BundleError::io("writing", path)(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A layout handed over may hold anything where its documents should be: a link (to
    /// `/dev/zero`, which would never end), or a file far larger than any manifest.
    #[test]
    fn a_layouts_files_are_regular_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/dev/zero", dir.path().join("index.json")).unwrap();
        let err = resolve(dir.path(), None, None).unwrap_err().to_string();
        assert!(err.contains("not a regular file"), "{err}");

        let digest = sha256_digest(b"");
        let path = blob_path(dir.path(), &digest);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::File::create(&path)
            .unwrap()
            .set_len(MAX_DOCUMENT_BYTES + 1)
            .unwrap();
        let err = read_blob(dir.path(), &digest, MAX_DOCUMENT_BYTES)
            .unwrap_err()
            .to_string();
        assert!(err.contains("more than the 4194304 accepted"), "{err}");
        fs::remove_file(&path).unwrap();
        fs::write(&path, b"").unwrap();
        assert_eq!(read_blob(dir.path(), &digest, 0).unwrap(), b"");
    }
}
