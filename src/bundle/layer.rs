//! The bundle layer as one streaming pass: tar bytes are hashed (diff_id) as they are produced
//! and handed to a second thread that gzips and hashes the compressed stream (digest), so the
//! walk and file reads overlap with compression and nothing is read or compressed twice.

use std::io::{Read, Write};
use std::path::Path;
use std::sync::mpsc;
use std::thread;

use flate2::{Compression, GzBuilder};
use sha2::{Digest as _, Sha256};

use super::error::BundleError;
use super::gotar;
use super::image::digest_string;

/// Tar bytes are handed to the compressor in chunks of this size: large enough that channel
/// overhead vanishes, small enough that both threads stay busy on small bundles.
const CHUNK: usize = 1 << 20;

/// A finished layer.
#[derive(Debug)]
pub struct Layer {
    /// The gzip'd tar.
    pub data: Vec<u8>,
    /// `sha256:` of `data`.
    pub digest: String,
    /// `sha256:` of the uncompressed tar.
    pub diff_id: String,
    /// Size of the uncompressed tar.
    pub tar_size: u64,
}

/// Writes tar entries, Go's encoding, into the hashing + compressing pipeline.
pub struct LayerWriter {
    buffer: Vec<u8>,
    tar_hash: Sha256,
    tar_size: u64,
    to_compressor: Option<mpsc::SyncSender<Vec<u8>>>,
    compressor: Option<thread::JoinHandle<std::io::Result<Compressed>>>,
    read_buffer: Vec<u8>,
}

impl LayerWriter {
    pub fn new() -> Self {
        // Two chunks in flight keep the compressor fed without holding much memory.
        let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(2);
        let compressor = thread::Builder::new()
            .name("bundle-gzip".to_owned())
            .spawn(move || compress(rx))
            .ok();
        LayerWriter {
            buffer: Vec::with_capacity(CHUNK),
            tar_hash: Sha256::new(),
            tar_size: 0,
            to_compressor: compressor.is_some().then_some(tx),
            compressor,
            read_buffer: vec![0; 256 * 1024],
        }
    }

    pub fn append_dir(&mut self, name: &str) -> std::io::Result<()> {
        self.write(&gotar::header(name, gotar::TYPE_DIR, 0o700, 0))
    }

    /// Appends a regular file of `size` bytes read from `reader`; fails with
    /// [`BundleError::Changed`] if the file does not hold exactly `size` bytes any more.
    pub fn append_file(
        &mut self,
        name: &str,
        mode: u32,
        size: u64,
        reader: &mut impl Read,
        path: &Path,
    ) -> Result<(), BundleError> {
        let write_err = |e| BundleError::Io {
            action: "archiving",
            path: path.to_owned(),
            source: e,
        };
        self.write(&gotar::header(name, gotar::TYPE_REG, mode, size))
            .map_err(write_err)?;
        let mut remaining = size;
        let mut buf = std::mem::take(&mut self.read_buffer);
        let result = (|| {
            while remaining > 0 {
                let want = buf
                    .len()
                    .min(usize::try_from(remaining).unwrap_or(usize::MAX));
                let n = reader
                    .read(&mut buf[..want])
                    .map_err(BundleError::io("reading", path))?;
                if n == 0 {
                    return Err(BundleError::Changed {
                        path: path.to_owned(),
                        expected: size,
                    });
                }
                self.write(&buf[..n]).map_err(write_err)?;
                remaining -= n as u64;
            }
            // One more byte means the file grew after we looked at its size.
            if reader
                .read(&mut buf[..1])
                .map_err(BundleError::io("reading", path))?
                != 0
            {
                return Err(BundleError::Changed {
                    path: path.to_owned(),
                    expected: size,
                });
            }
            Ok(())
        })();
        self.read_buffer = buf;
        result?;
        self.write(gotar::padding(size)).map_err(write_err)
    }

    pub fn finish(mut self) -> std::io::Result<Layer> {
        self.write(&gotar::END_OF_ARCHIVE)?;
        self.flush_chunk()?;
        let diff_id = digest_string(&std::mem::take(&mut self.tar_hash).finalize());
        drop(self.to_compressor.take());
        let (data, digest) = match self.compressor.take() {
            Some(handle) => handle
                .join()
                .map_err(|_| std::io::Error::other("the gzip thread panicked"))??,
            None => {
                return Err(std::io::Error::other(
                    "the gzip thread could not be started",
                ));
            }
        };
        Ok(Layer {
            data,
            digest,
            diff_id,
            tar_size: self.tar_size,
        })
    }

    fn write(&mut self, mut bytes: &[u8]) -> std::io::Result<()> {
        self.tar_hash.update(bytes);
        self.tar_size += bytes.len() as u64;
        while !bytes.is_empty() {
            let room = CHUNK - self.buffer.len();
            let n = room.min(bytes.len());
            self.buffer.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            if self.buffer.len() == CHUNK {
                self.flush_chunk()?;
            }
        }
        Ok(())
    }

    fn flush_chunk(&mut self) -> std::io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buffer, Vec::with_capacity(CHUNK));
        let sent = self
            .to_compressor
            .as_ref()
            .is_some_and(|tx| tx.send(chunk).is_ok());
        if sent {
            Ok(())
        } else {
            // The compressor stopped early; its own error is the one worth reporting.
            drop(self.to_compressor.take());
            match self.compressor.take().map(thread::JoinHandle::join) {
                Some(Ok(Err(e))) => Err(e),
                _ => Err(std::io::Error::other("the gzip thread stopped")),
            }
        }
    }
}

impl Default for LayerWriter {
    fn default() -> Self {
        Self::new()
    }
}

/// The gzip'd layer and its digest.
type Compressed = (Vec<u8>, String);

/// Gzip (level 1 like imgpkg, no name, mtime 0, OS "unknown") and hash the compressed bytes.
fn compress(chunks: mpsc::Receiver<Vec<u8>>) -> std::io::Result<Compressed> {
    let mut encoder = GzBuilder::new()
        .mtime(0)
        .write(HashingWriter::default(), Compression::fast());
    for chunk in chunks {
        encoder.write_all(&chunk)?;
    }
    let out = encoder.finish()?;
    Ok((out.data, digest_string(&out.hash.finalize())))
}

#[derive(Default)]
struct HashingWriter {
    data: Vec<u8>,
    hash: Sha256,
}

impl Write for HashingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.hash.update(buf);
        self.data.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::image::sha256_digest;

    #[test]
    fn digests_describe_the_streams_and_the_tar_reads_back() {
        let mut writer = LayerWriter::new();
        writer.append_dir(".").unwrap();
        let big: Vec<u8> = (0..3 * CHUNK + 17).map(|i| (i % 251) as u8).collect();
        writer
            .append_file(
                "big.bin",
                0o600,
                big.len() as u64,
                &mut big.as_slice(),
                Path::new("big"),
            )
            .unwrap();
        let layer = writer.finish().unwrap();
        assert_eq!(layer.digest, sha256_digest(&layer.data));

        let mut tar = Vec::new();
        flate2::read::GzDecoder::new(layer.data.as_slice())
            .read_to_end(&mut tar)
            .unwrap();
        assert_eq!(layer.diff_id, sha256_digest(&tar));
        assert_eq!(layer.tar_size, tar.len() as u64);
        // Go's gzip header for BestSpeed: no flags, mtime 0, XFL 4, OS 255.
        assert_eq!(&layer.data[..10], &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 4, 255]);

        let mut archive = tar::Archive::new(tar.as_slice());
        let mut entries = archive.entries().unwrap();
        let root = entries.next().unwrap().unwrap();
        assert_eq!(root.path().unwrap().to_str(), Some("."));
        let mut file = entries.next().unwrap().unwrap();
        assert_eq!(file.header().mode().unwrap(), 0o600);
        let mut content = Vec::new();
        file.read_to_end(&mut content).unwrap();
        assert_eq!(content, big);
        assert!(entries.next().is_none());
    }

    #[test]
    fn a_file_that_shrinks_or_grows_is_an_error() {
        for (claimed, actual) in [(10u64, 5usize), (5, 10)] {
            let mut writer = LayerWriter::new();
            let data = vec![b'x'; actual];
            let err = writer
                .append_file("f", 0o600, claimed, &mut data.as_slice(), Path::new("f"))
                .unwrap_err();
            assert!(matches!(err, BundleError::Changed { expected, .. } if expected == claimed));
        }
    }
}
