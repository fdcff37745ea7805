//! Tuning of the matcher.

use crate::device::DeviceCost;

/// Tuning of the matcher. The defaults were chosen from measurements (see `DESIGN.md`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MatchOptions {
    /// Length of the rolling-hash window of the global index.
    pub window: usize,
    /// About one basis position in `anchor_spacing` is indexed (a power of two).
    pub anchor_spacing: usize,
    /// Upper bound of the global table, in bytes (rounded down to a power of two of 8-byte
    /// slots).
    pub max_index_bytes: usize,
    /// Window of the dense per-hint index (4–8 bytes).
    pub hint_window: usize,
    /// Longest hash chain walked in a hint index.
    pub max_chain: usize,
    /// Largest number of positions indexed per hint; longer hinted ranges are sampled.
    pub max_hint_positions: usize,
    /// Shortest COPY emitted from the global or hint index.
    pub min_copy: usize,
    /// Shortest COPY emitted on the diagonal of a recent COPY.
    pub min_rep_copy: usize,
    /// Target bytes matched per work item; fixed so that output does not depend on `threads`.
    pub chunk_size: usize,
    /// Worker threads for index build and matching (0 = available parallelism).
    pub threads: usize,
    /// Second pass: where short COPYs are dense, keep whichever of the COPYs, only the longer
    /// COPYs, or a plain literal deflates smallest (see `DESIGN.md`).
    pub refine: bool,
    /// Minimise download plus the device's apply cost instead of bytes alone (see
    /// [`DeviceCost`]); `None` minimises the compressed delta size.
    pub device: Option<DeviceCost>,
}

impl Default for MatchOptions {
    fn default() -> Self {
        Self {
            window: 32,
            anchor_spacing: 32,
            max_index_bytes: 32 << 20,
            hint_window: 8,
            max_chain: 32,
            max_hint_positions: 1 << 22,
            min_copy: 12,
            min_rep_copy: 8,
            chunk_size: 4 << 20,
            threads: 0,
            refine: true,
            device: None,
        }
    }
}

impl MatchOptions {
    pub(crate) fn thread_count(&self) -> usize {
        if self.threads > 0 {
            self.threads
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }
}
