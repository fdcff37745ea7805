//! Errors of the delta engine.

use std::fmt;
use std::io;
use std::path::PathBuf;

use bru_oci::{Digest, OciError};
use bru_rsync::PatchError;

use crate::config::ConfigError;
use crate::layer::LayerTarError;
use crate::limits::Bound;

/// Which image an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The image the device already has.
    Source,
    /// The image the device should end up with.
    Target,
    /// The delta image.
    Delta,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Source => "source",
            Role::Target => "target",
            Role::Delta => "delta",
        })
    }
}

/// Errors building, checking or applying a delta image.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeltaError {
    /// Reading an image (manifest, config or blob) failed.
    #[error("cannot read the {role} image")]
    Image {
        /// Which image.
        role: Role,
        /// What went wrong.
        #[source]
        source: OciError,
    },
    /// Reading one layer blob of an image failed (corrupt, truncated, wrong digest...).
    #[error("cannot read layer {index} of the {role} image")]
    Layer {
        /// Which image.
        role: Role,
        /// Layer index, bottom first.
        index: usize,
        /// What went wrong.
        #[source]
        source: OciError,
    },
    /// An uncompressed layer does not hash to the DiffID its config lists.
    #[error("layer {index} of the {role} image does not match its DiffID: expected {expected}, got {actual}")]
    DiffIdMismatch {
        /// Which image.
        role: Role,
        /// Layer index, bottom first.
        index: usize,
        /// DiffID from the config.
        expected: Digest,
        /// sha256 of the uncompressed layer.
        actual: Digest,
    },
    /// The manifest and the config disagree on the number of layers.
    #[error("{role} image has {layers} layers but {diff_ids} DiffIDs")]
    LayerCount {
        /// Which image.
        role: Role,
        /// Layers in the manifest.
        layers: usize,
        /// DiffIDs in the config (for a delta: in the target config label).
        diff_ids: usize,
    },
    /// The delta was made for another source image.
    #[error("delta applies to base image {expected}, but the source image is {actual}")]
    BaseMismatch {
        /// `io.resin.delta.base` of the delta.
        expected: String,
        /// ID of the given source image.
        actual: Digest,
    },
    /// A delta, target or source config could not be used.
    #[error("invalid image config")]
    Config(#[from] ConfigError),
    /// A delta layer is not a tar with a delta entry.
    #[error("layer {index} of the delta image is not a delta layer")]
    LayerTar {
        /// Layer index.
        index: usize,
        /// What is wrong with it.
        #[source]
        source: LayerTarError,
    },
    /// A delta stream could not be applied.
    #[error("cannot apply the delta of layer {index}")]
    Patch {
        /// Layer index.
        index: usize,
        /// What the decoder rejected.
        #[source]
        source: PatchError,
    },
    /// The rebuilt layer does not match the target (self-check before publishing, or apply).
    #[error("rebuilt layer {index} does not match the target: expected {expected}, got {actual}")]
    RebuiltMismatch {
        /// Layer index.
        index: usize,
        /// The target's DiffID.
        expected: Digest,
        /// sha256 of what the delta rebuilt.
        actual: Digest,
    },
    /// The self-check's rebuild of a delta layer differs from the target layer's bytes (which
    /// were verified against its DiffID when fetched).
    #[error(
        "rebuilt layer {index} does not match the target: the bytes differ from offset {offset}"
    )]
    RebuiltDiffers {
        /// Layer index.
        index: usize,
        /// First byte of the layer where they differ (the target's length if the rebuild is
        /// shorter).
        offset: u64,
    },
    /// Rebuilding stopped at a limit derived from the inputs (see [`crate::limits`]): a gzip
    /// bomb, or COPYs that repeat the basis too often. Nothing beyond the limit was written
    /// and nothing was published. Permanent for these inputs; an explicit
    /// [`ApplyOptions::max_output_bytes`](crate::ApplyOptions::max_output_bytes) raises it.
    #[error("layer {index}: {bound} exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Layer index.
        index: usize,
        /// Which limit.
        bound: Bound,
        /// The limit, in bytes.
        limit: u64,
    },
    /// Writing the output image failed.
    #[error("cannot write the output image")]
    Sink(#[source] OciError),
    /// Local file I/O in the work directory failed.
    #[error("i/o error on {}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A worker thread panicked or was cancelled.
    #[error("background task failed: {0}")]
    Task(String),
}

impl DeltaError {
    /// Whether building (or applying) again later may succeed: an image could not be read
    /// or written for a transient reason ([`OciError::is_transient`]), the work directory's
    /// disk is full, or a worker was cancelled. Bad images and bad deltas are permanent.
    pub fn is_transient(&self) -> bool {
        match self {
            DeltaError::Image { source, .. }
            | DeltaError::Layer { source, .. }
            | DeltaError::Sink(source) => source.is_transient(),
            DeltaError::Io { source, .. } => bru_core::retry::io_is_transient(source),
            DeltaError::Task(_) => true,
            _ => false,
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> DeltaError {
        let path = path.into();
        move |source| DeltaError::Io { path, source }
    }
}

/// Runs CPU-heavy or blocking work off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, DeltaError> + Send + 'static,
) -> Result<T, DeltaError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| DeltaError::Task(e.to_string()))?
}
