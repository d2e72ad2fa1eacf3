//! What a distribution client counts: every request, by kind.

use std::sync::atomic::AtomicUsize;

/// Requests made, by kind, for reporting and for the benchmark's requests-per-reference.
#[derive(Debug, Default)]
pub(super) struct RequestCounts {
    pub pings: AtomicUsize,
    pub tokens: AtomicUsize,
    pub manifest_heads: AtomicUsize,
    pub manifest_gets: AtomicUsize,
    pub manifest_puts: AtomicUsize,
    pub blob_heads: AtomicUsize,
    pub blob_gets: AtomicUsize,
    pub tag_lists: AtomicUsize,
    /// Upload sessions started (each is a POST and a PUT).
    pub blob_uploads: AtomicUsize,
}

/// A snapshot of [`RequestCounts`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestStats {
    pub pings: usize,
    pub tokens: usize,
    pub manifest_heads: usize,
    pub manifest_gets: usize,
    pub manifest_puts: usize,
    pub blob_heads: usize,
    pub blob_gets: usize,
    pub tag_lists: usize,
    pub blob_uploads: usize,
}

impl RequestStats {
    /// HTTP requests made; an upload counts twice (POST and PUT).
    pub fn total(&self) -> usize {
        self.pings
            + self.tokens
            + self.manifest_requests()
            + self.manifest_puts
            + self.blob_heads
            + self.blob_gets
            + self.tag_lists
            + 2 * self.blob_uploads
    }

    pub fn manifest_requests(&self) -> usize {
        self.manifest_heads + self.manifest_gets
    }
}
