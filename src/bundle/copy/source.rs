//! Reading a blob of the graph from wherever the source keeps it, as a stream checked
//! against its digest and size (so neither an upload nor a tar entry completes with other
//! bytes), never whole in memory.

use std::path::Path;

use bytes::Bytes;
use futures::StreamExt as _;
use futures::stream::BoxStream;
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};

use super::graph::{Blob, Origin};
use super::{CopyEvent, Progress};
use crate::registry::{Registry, RegistryError, verified};

/// The bytes of `blob`, checked as they flow. `tar` is the source tar, for tar origins.
pub(super) async fn stream(
    source: &Registry,
    blob: &Blob,
    tar: Option<&Path>,
) -> Result<BoxStream<'static, std::io::Result<Bytes>>, RegistryError> {
    let local = |path: &Path, e: std::io::Error| RegistryError::Write {
        what: "blob",
        url: path.display().to_string(),
        message: e.to_string(),
    };
    let file_stream = |file: tokio::fs::File, what: String| {
        let chunks = tokio_util::io::ReaderStream::with_capacity(file.take(blob.size), 256 << 10);
        verified(chunks, blob.digest.clone(), blob.size, what).boxed()
    };
    match &blob.origin {
        Origin::Registry(repository) => {
            source
                .distribution()
                .blob_stream(repository, &blob.digest, blob.size)
                .await
        }
        Origin::Inline(bytes) => {
            let chunks = futures::stream::iter([Ok::<_, std::io::Error>(bytes.clone())]);
            Ok(verified(chunks, blob.digest.clone(), blob.size, blob.digest.clone()).boxed())
        }
        Origin::File(path) => {
            let file = tokio::fs::File::open(&**path)
                .await
                .map_err(|e| local(path, e))?;
            Ok(file_stream(file, path.display().to_string()))
        }
        Origin::Tar { offset } => {
            let path = tar.ok_or_else(|| RegistryError::Config("no source tar".to_owned()))?;
            let mut file = tokio::fs::File::open(path)
                .await
                .map_err(|e| local(path, e))?;
            file.seek(std::io::SeekFrom::Start(*offset))
                .await
                .map_err(|e| local(path, e))?;
            Ok(file_stream(
                file,
                format!("{} ({})", path.display(), blob.digest),
            ))
        }
    }
}

/// `stream` as an upload body, reporting the bytes sent to `progress`.
pub(super) async fn body(
    source: &Registry,
    blob: &Blob,
    tar: Option<&Path>,
    progress: Option<&Progress>,
) -> Result<reqwest::Body, RegistryError> {
    let chunks = stream(source, blob, tar).await?;
    Ok(reqwest::Body::wrap_stream(counted(
        chunks,
        &blob.digest,
        progress,
    )))
}

/// `chunks`, telling `progress` how many bytes went by.
pub(super) fn counted(
    chunks: BoxStream<'static, std::io::Result<Bytes>>,
    digest: &str,
    progress: Option<&Progress>,
) -> BoxStream<'static, std::io::Result<Bytes>> {
    let Some(progress) = progress.cloned() else {
        return chunks;
    };
    let digest = digest.to_owned();
    let mut sent = 0u64;
    chunks
        .inspect(move |chunk| {
            if let Ok(chunk) = chunk {
                sent += chunk.len() as u64;
                progress(&CopyEvent::BlobProgress {
                    digest: digest.clone(),
                    sent,
                });
            }
        })
        .boxed()
}
