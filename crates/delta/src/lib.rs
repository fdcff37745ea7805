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
//! Public surface: the operations and their types are re-exported at the root; three
//! modules stay public on purpose, as building blocks of the format for tests, fuzzing and
//! other tools: [`config`] (the delta labels), [`layer`] (the delta layer tar) and
//! [`limits`] (the apply limits).
//!
//! Speed: fetching (decompress on one thread, hash and write on another),
//! indexing (fed from the fetch), matching (chunks on a pool, windows written
//! in order as they are ready), and a layer's gzip and self-check (fed the
//! delta as it is written) overlap; the delta bytes do not depend on any of it
//! (see `DESIGN.md`, "Build speed").

#![deny(missing_docs)]

mod apply;
mod basis;
mod blockdeflate;
mod chain;
pub mod config;
mod create;
mod engine;
mod error;
mod fanout;
mod fetch;
mod gzlayer;
mod hashio;
mod inspect;
pub mod layer;
pub mod limits;
mod manifest;
mod progress;

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

/// Prefix of the temporary directories of this crate: `bru-delta-<pid>-<start>-<random>`.
const WORKDIR_PREFIX: &str = "bru-delta-";

/// A private temporary directory for one operation, named after this process so that
/// [`clean_dead_workdirs`] can tell whose it is.
fn workdir(parent: Option<&Path>) -> Result<tempfile::TempDir, DeltaError> {
    let parent: PathBuf = parent
        .map(Path::to_path_buf)
        .unwrap_or_else(std::env::temp_dir);
    tempfile::Builder::new()
        .prefix(&format!(
            "{WORKDIR_PREFIX}{}-",
            bru_core::process::ProcessStamp::current()
        ))
        .tempdir_in(&parent)
        .map_err(DeltaError::io(parent))
}

/// Removes the temporary directories left in `parent` (default: the system temporary
/// directory) by processes of this program that no longer run (killed, crashed), and
/// returns how many. Directories of live processes and anything else are left alone.
pub fn clean_dead_workdirs(parent: Option<&Path>) -> Result<usize, DeltaError> {
    let parent: PathBuf = parent
        .map(Path::to_path_buf)
        .unwrap_or_else(std::env::temp_dir);
    let entries = match std::fs::read_dir(&parent) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(DeltaError::io(parent)(e)),
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(WORKDIR_PREFIX)) else {
            continue;
        };
        // `<pid>-<start>-<random>`
        let mut parts = rest.splitn(3, '-');
        let stamp = match (parts.next(), parts.next(), parts.next()) {
            (Some(pid), Some(start), Some(_)) => format!("{pid}-{start}"),
            _ => continue,
        };
        let Ok(owner) = stamp.parse::<bru_core::process::ProcessStamp>() else {
            continue;
        };
        if owner.is_dead() && entry.file_type().is_ok_and(|t| t.is_dir()) {
            match std::fs::remove_dir_all(entry.path()) {
                Ok(()) => {
                    tracing::info!(path = %entry.path().display(), "removed the work directory of a dead build");
                    removed += 1;
                }
                Err(e) => {
                    tracing::warn!(path = %entry.path().display(), error = %e, "cannot remove a dead build's work directory")
                }
            }
        }
    }
    Ok(removed)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_work_directories_of_dead_processes_are_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let mine = workdir(Some(tmp.path())).unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead_pid = child.id();
        child.wait().unwrap();
        let dead = tmp.path().join(format!("{WORKDIR_PREFIX}{dead_pid}-1-abc"));
        std::fs::create_dir_all(dead.join("inner")).unwrap();
        std::fs::write(dead.join("inner/layer"), b"x").unwrap();
        let other = tmp.path().join("bru-delta-not-ours");
        std::fs::create_dir(&other).unwrap();
        let unrelated = tmp.path().join(format!("something-{dead_pid}-1-abc"));
        std::fs::create_dir(&unrelated).unwrap();

        assert_eq!(clean_dead_workdirs(Some(tmp.path())).unwrap(), 1);
        assert!(!dead.exists());
        assert!(mine.path().exists());
        assert!(other.exists() && unrelated.exists());
        assert_eq!(
            clean_dead_workdirs(Some(&tmp.path().join("missing"))).unwrap(),
            0
        );
    }
}
