//! balena v3 delta images: build, self-check and apply.
//!
//! A v3 delta image has exactly as many layers as the target image. Layers in
//! the common ChainID prefix are empty tars; every other layer is a tar whose
//! single `delta` entry is a librsync delta stream against the *basis*: the
//! concatenation of all uncompressed source layer tars. Two config labels tell
//! balena-engine which image to patch and which config the result gets.
//!
//! * [`create()`] builds a delta image from two images and self-checks it;
//! * [`apply()`] rebuilds the target from the source and the delta, as a device does;
//! * [`inspect()`] describes a delta image.
//!
//! Images come from any [`bru_oci::ImageSource`] (registry, OCI layout,
//! docker-archive) and go to any [`bru_oci::ImageSink`]. Network I/O runs on
//! tokio; decompression, matching and patching run on blocking threads.
//!
//! Resources: layers are decompressed into a private temporary directory.
//! Building memory-maps the basis and one target layer at a time and releases
//! pages it is done with, so its resident set stays below the source image's
//! uncompressed size; applying reads the basis by offset and needs a few MiB.
//! What applying writes is bounded by limits derived from its inputs, so a gzip
//! bomb or a delta of endless COPYs stops early (see [`limits`]).
//!
//! Speed: fetching (decompress on one thread, hash and write on another),
//! indexing (fed from the fetch), matching (two windows at once), the
//! self-check and gzip of one layer and the encoding of the next overlap;
//! the delta bytes do not depend on any of it (see `DESIGN.md`, "Build speed").

pub mod apply;
pub mod chain;
pub mod config;
pub mod create;
mod engine;
mod error;
mod fetch;
mod hashio;
pub mod inspect;
pub mod layer;
pub mod limits;
pub mod manifest;
pub mod progress;

use std::path::{Path, PathBuf};

use bru_oci::{Descriptor, Digest, ImageSink};

pub use apply::{apply, ApplyInfo, ApplyOptions, RebuiltLayer};
pub use bru_rsync::Bandwidth;
pub use create::{create, CreateOptions, DeltaInfo, LayerInfo, LayerKind};
pub use error::{DeltaError, Role};
pub use inspect::inspect;
pub use limits::{Bound, ByteSize};
pub use manifest::Format;
pub use progress::{Event, NoProgress, Progress, Step};

/// A private temporary directory for one operation.
fn workdir(parent: Option<&Path>) -> Result<tempfile::TempDir, DeltaError> {
    let parent: PathBuf = parent
        .map(Path::to_path_buf)
        .unwrap_or_else(std::env::temp_dir);
    tempfile::Builder::new()
        .prefix("bru-delta-")
        .tempdir_in(&parent)
        .map_err(DeltaError::io(parent))
}

/// Writes blobs, then the config, then the manifest, then finishes the sink.
async fn publish(
    sink: &dyn ImageSink,
    files: &[(PathBuf, Descriptor)],
    config_desc: &Descriptor,
    config: &[u8],
    manifest: &[u8],
    manifest_type: &str,
) -> Result<Digest, DeltaError> {
    let mut done = std::collections::HashSet::new();
    for (path, desc) in files {
        if done.insert(desc.digest.clone()) {
            sink.put_blob(path, desc).await.map_err(DeltaError::Sink)?;
        }
    }
    let written = sink
        .put_blob_bytes(&config_desc.media_type, config)
        .await
        .map_err(DeltaError::Sink)?;
    debug_assert_eq!(&written, config_desc);
    let digest = sink
        .put_manifest(manifest, manifest_type)
        .await
        .map_err(DeltaError::Sink)?;
    sink.finish().await.map_err(DeltaError::Sink)?;
    Ok(digest)
}
