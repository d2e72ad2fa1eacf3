//! The bundle layer as one streaming pass: tar bytes are hashed (diff_id) as they are produced
//! and handed to a second thread that gzips and hashes the compressed stream (digest), so the
//! walk and file reads overlap with compression and nothing is read or compressed twice. The
//! gzip stream is deflated in independent 1 MiB pieces on up to four threads (pigz's
//! `--independent` scheme): the bytes depend only on the tar, never on the thread count.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::{OnceLock, mpsc};
use std::thread;

use flate2::{Compress, Compression, FlushCompress};
use sha2::{Digest as _, Sha256};

use super::error::BundleError;
use super::gotar;
use super::image::digest_string;

/// Tar bytes are handed to the compressor in chunks of this size: large enough that channel
/// overhead vanishes, small enough that both threads stay busy on small bundles.
const CHUNK: usize = 1 << 20;

/// A finished layer.
#[derive(Debug)]
pub(super) struct Layer {
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
pub(super) struct LayerWriter {
    buffer: Vec<u8>,
    tar_hash: Sha256,
    tar_size: u64,
    to_compressor: Option<mpsc::SyncSender<Vec<u8>>>,
    compressor: Option<thread::JoinHandle<std::io::Result<Compressed>>>,
    read_buffer: Vec<u8>,
}

impl LayerWriter {
    pub(super) fn new() -> Self {
        // Two chunks in flight keep the compressor fed without holding much memory.
        let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(2);
        let compressor = thread::Builder::new()
            .name("bundle-gzip".to_owned())
            .spawn(move || compress(rx))
            .ok();
        LayerWriter {
            // Grown as the tar is written: most bundles are a few KiB, and a controller
            // building several at once should not hold a MiB each for them.
            buffer: Vec::new(),
            tar_hash: Sha256::new(),
            tar_size: 0,
            to_compressor: compressor.is_some().then_some(tx),
            compressor,
            read_buffer: vec![0; 256 * 1024],
        }
    }

    pub(super) fn append_dir(&mut self, name: &str) -> std::io::Result<()> {
        self.write(&gotar::header(name, gotar::TYPE_DIR, 0o700, 0))
    }

    /// Appends a regular file of `size` bytes read from `reader`; fails with
    /// [`BundleError::Changed`] if the file does not hold exactly `size` bytes any more.
    pub(super) fn append_file(
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

    pub(super) fn finish(mut self) -> std::io::Result<Layer> {
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
        // After a full chunk more is likely to follow: size the next one at once.
        let next = if self.buffer.len() == CHUNK {
            Vec::with_capacity(CHUNK)
        } else {
            Vec::new()
        };
        let chunk = std::mem::replace(&mut self.buffer, next);
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

/// gzip's header as Go's `compress/gzip` writes it for BestSpeed: no name, mtime 0, XFL 4
/// (fastest), OS 255 (unknown).
const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 4, 255];

/// A final, empty, fixed-Huffman deflate block: ends a stream whose blocks all ended in a
/// sync flush (what zlib's `Z_FINISH` emits after one).
const FINAL_EMPTY_BLOCK: [u8; 2] = [0x03, 0x00];

/// Chunks deflated at once at most, whatever the machine.
const MAX_WORKERS: usize = 4;

/// Deflates one chunk of the tar on its own, ending in a sync flush so that chunks
/// concatenate into one valid deflate stream. Each chunk starts with an empty window, so the
/// output depends on the chunk boundaries (fixed: [`CHUNK`] bytes of tar) and never on how
/// many chunks were compressed side by side. A chunk level 1 cannot shrink (random or
/// already-compressed data, and base64: zlib-rs's level 1 uses fixed Huffman codes only, which
/// give text of a 64-letter alphabet nothing) is written as stored blocks, which costs a copy
/// instead of a deflate pass several times slower than the upload; see [`is_incompressible`].
fn deflate_chunk(chunk: &[u8]) -> std::io::Result<Vec<u8>> {
    let level = if is_incompressible(chunk)? {
        Compression::none()
    } else {
        // Level 1, like imgpkg.
        Compression::fast()
    };
    deflate_with(level, chunk)
}

fn deflate_with(level: Compression, chunk: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut deflate = Compress::new(level, false);
    let mut out = Vec::with_capacity(chunk.len() + chunk.len() / 16 + 64);
    loop {
        if out.len() == out.capacity() {
            out.reserve(64 * 1024);
        }
        let consumed = usize::try_from(deflate.total_in()).unwrap_or(chunk.len());
        deflate
            .compress_vec(&chunk[consumed..], &mut out, FlushCompress::Sync)
            .map_err(std::io::Error::other)?;
        // zlib's rule: the flush is complete once a call leaves output space unused.
        if deflate.total_in() as usize == chunk.len() && out.len() < out.capacity() {
            return Ok(out);
        }
    }
}

/// Bytes deflated at each probe of a chunk, and how many probes, spread evenly over it.
const PROBE: usize = 16 * 1024;
const PROBES: usize = 4;

/// Whether level 1 would not shrink `chunk` by a tenth: true when none of [`PROBES`] samples
/// of it does. A function of the chunk's bytes only, so the layer stays deterministic; the
/// probes cost about 6% of deflating the chunk. Chunks too small to probe are compressed.
fn is_incompressible(chunk: &[u8]) -> std::io::Result<bool> {
    if chunk.len() < PROBE * PROBES {
        return Ok(false);
    }
    let stride = (chunk.len() - PROBE) / (PROBES - 1);
    for i in 0..PROBES {
        let sample = &chunk[i * stride..i * stride + PROBE];
        let deflated = deflate_with(Compression::fast(), sample)?;
        if deflated.len() * 10 < sample.len() * 9 {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Gzip as the layer is gzip'd, on one thread: what [`encoder_fingerprint`] measures.
fn gzip(data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut out = HashingWriter::default();
    let mut crc = crc32fast::Hasher::new();
    let mut size: u64 = 0;
    out.write_all(&GZIP_HEADER)?;
    for chunk in data.chunks(CHUNK) {
        crc.update(chunk);
        size += chunk.len() as u64;
        out.write_all(&deflate_chunk(chunk)?)?;
    }
    finish_gzip(&mut out, crc, size)?;
    Ok(out.data)
}

fn finish_gzip(out: &mut impl Write, crc: crc32fast::Hasher, size: u64) -> std::io::Result<()> {
    out.write_all(&FINAL_EMPTY_BLOCK)?;
    out.write_all(&crc.finalize().to_le_bytes())?;
    // ISIZE is the size modulo 2^32.
    out.write_all(&(size as u32).to_le_bytes())
}

/// A digest of what the encoder makes of a fixed sample: it changes when the compressor (its
/// backend, version, level or chunking) would give other bytes for the same tar, so cached
/// layer digests are never reused across compressors.
pub(crate) fn encoder_fingerprint() -> &'static str {
    static FINGERPRINT: OnceLock<String> = OnceLock::new();
    FINGERPRINT.get_or_init(|| {
        // YAML-ish text with repeats at several distances, so matching and literals both count.
        let mut sample = Vec::with_capacity(64 * 1024);
        let mut state = 0x2545_f491_4f6c_dd1du64;
        while sample.len() < 64 * 1024 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let line = format!("key{}: value-{:x}\n", state % 97, state >> 40);
            sample.extend_from_slice(line.as_bytes());
        }
        // And a chunk of noise, which is stored rather than deflated.
        let noise: Vec<u8> = std::iter::repeat_with(|| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()
        })
        .flatten()
        .take(PROBE * PROBES)
        .collect();
        // An error would only make every lookup miss.
        let mut hash = Sha256::new();
        for part in [&sample, &noise] {
            hash.update(gzip(part).unwrap_or_default());
        }
        digest_string(&hash.finalize())
    })
}

/// Gzips the chunks as they come, deflating several side by side (the chunks are
/// independent), and hashes the compressed bytes in order.
fn compress(chunks: mpsc::Receiver<Vec<u8>>) -> std::io::Result<Compressed> {
    let workers = thread::available_parallelism()
        .map_or(1, usize::from)
        .clamp(1, MAX_WORKERS);
    compress_with(chunks, workers)
}

fn compress_with(chunks: mpsc::Receiver<Vec<u8>>, workers: usize) -> std::io::Result<Compressed> {
    let mut out = HashingWriter::default();
    let mut crc = crc32fast::Hasher::new();
    let mut size: u64 = 0;
    out.write_all(&GZIP_HEADER)?;
    let mut in_flight: VecDeque<thread::JoinHandle<std::io::Result<Vec<u8>>>> = VecDeque::new();
    let join = |handle: thread::JoinHandle<std::io::Result<Vec<u8>>>| {
        handle
            .join()
            .map_err(|_| std::io::Error::other("a gzip thread panicked"))?
    };
    for chunk in chunks {
        crc.update(&chunk);
        size += chunk.len() as u64;
        if in_flight.len() >= workers
            && let Some(oldest) = in_flight.pop_front()
        {
            out.write_all(&join(oldest)?)?;
        }
        in_flight.push_back(
            thread::Builder::new()
                .name("bundle-deflate".to_owned())
                .spawn(move || deflate_chunk(&chunk))?,
        );
    }
    while let Some(oldest) = in_flight.pop_front() {
        out.write_all(&join(oldest)?)?;
    }
    finish_gzip(&mut out, crc, size)?;
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
    fn the_gzip_stream_is_the_same_whatever_the_thread_count() {
        let data: Vec<u8> = (0..5 * CHUNK / 2)
            .map(|i| b"key: value-0123456789abcdef\n"[i % 28] ^ (i / 4096 % 3) as u8)
            .collect();
        let run = |workers| {
            let (tx, rx) = mpsc::sync_channel(8);
            for chunk in data.chunks(CHUNK) {
                tx.send(chunk.to_vec()).unwrap();
            }
            drop(tx);
            compress_with(rx, workers).unwrap()
        };
        let one = run(1);
        assert_eq!(one, run(3));
        assert_eq!(one.0, gzip(&data).unwrap());
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(one.0.as_slice())
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, data);
    }

    #[test]
    fn incompressible_chunks_are_stored_and_text_is_deflated() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut letter = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
                [(state % 64) as usize]
        };
        // base64 of random bytes: level 1's fixed codes save nothing on it.
        let base64: Vec<u8> = (0..CHUNK).map(|_| letter()).collect();
        assert!(is_incompressible(&base64).unwrap());
        let stored = deflate_chunk(&base64).unwrap();
        // Stored blocks: the data plus 5 bytes per 64 KiB block and the sync flush.
        assert!(
            stored.len() > CHUNK && stored.len() < CHUNK + 1024,
            "{}",
            stored.len()
        );

        let text: Vec<u8> = (0..CHUNK)
            .map(|i| b"key: value-0123456789abcdef\n"[i % 28])
            .collect();
        assert!(!is_incompressible(&text).unwrap());
        assert!(deflate_chunk(&text).unwrap().len() < CHUNK / 10);
        // Too small to probe: deflated whatever it holds.
        assert!(!is_incompressible(&base64[..PROBE]).unwrap());

        let mut data = base64.clone();
        data.extend_from_slice(&text);
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(gzip(&data).unwrap().as_slice())
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, data);
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
