//! Progress as data: the engine reports typed events; binaries render them.

/// A step of building or applying a delta.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Step {
    /// Fetching and decompressing the source image's layers (the basis).
    FetchSource,
    /// Fetching and decompressing the target layers to encode.
    FetchTarget,
    /// Indexing the basis for matching.
    Index,
    /// Encoding one target layer against the basis (and self-checking it).
    Encode {
        /// Layer index.
        layer: usize,
    },
    /// Rebuilding one target layer from its delta.
    Rebuild {
        /// Layer index.
        layer: usize,
    },
    /// Writing the output image.
    Publish,
}

/// An event of a long-running delta operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A step starts; `total` is its size in bytes when known.
    Begin {
        /// The step.
        step: Step,
        /// Bytes the step will process, if known.
        total: Option<u64>,
    },
    /// Bytes processed so far in the current step (may be coalesced).
    Advance {
        /// Bytes done since the step began.
        done: u64,
    },
    /// The current step finished.
    End {
        /// The step.
        step: Step,
    },
}

/// Receives progress events. Implementations must be cheap: events arrive from
/// worker threads.
pub trait Progress: Send + Sync {
    /// Called for every event.
    fn event(&self, event: Event);
}

/// Discards all events.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn event(&self, _event: Event) {}
}
