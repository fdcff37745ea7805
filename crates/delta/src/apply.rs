//! Applying a delta image to a source image: what a balena device does on pull.

use std::cell::Cell;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bru_oci::{
    decompress_read, Descriptor, Digest, ImageConfig, ImageSink, ImageSource, PulledImage,
};
use serde::Serialize;
use tokio::runtime::Handle;
use tokio_util::io::SyncIoBridge;

use crate::basis::LayeredBasis;
use crate::chain::common_prefix;
use crate::config::delta_labels;
use crate::create::write_layer;
use crate::error::{blocking, DeltaError, Role};
use crate::fetch::{fetch_blob, fetch_layer_capped, inflate_local_layer, stream_error, two_images};
use crate::layer::with_first_entry;
use crate::limits::{self, Bound, CappedReader, CappedWriter, OutputLimits};
use crate::manifest::{manifest_bytes, Format};
use crate::progress::{Event, Progress, Step};
use crate::{publish, workdir};

/// Options of [`apply`].
#[derive(Debug, Clone)]
pub struct ApplyOptions {
    /// Where to keep the basis while working (default: the system temporary directory).
    pub workdir: Option<PathBuf>,
    /// Manifest flavour of the rebuilt image.
    pub format: Format,
    /// gzip level of the rebuilt layers, 1–9, or 0 (the default) for
    /// uncompressed tars, as a device stores them: compression would dominate
    /// the apply time.
    pub gzip_level: u32,
    /// Limit of the bytes rebuilt, for each layer and for all together (uncompressed
    /// tars). `None` (the default): derived from the inputs, see [`crate::limits`].
    pub max_output_bytes: Option<u64>,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        ApplyOptions {
            workdir: None,
            format: Format::Docker,
            gzip_level: 0,
            max_output_bytes: None,
        }
    }
}

/// One layer of the rebuilt image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RebuiltLayer {
    /// Position in the image, bottom first.
    pub index: usize,
    /// True when the layer was taken from the source image (common prefix).
    pub from_source: bool,
    /// DiffID (sha256 of the uncompressed tar), equal to the target's.
    pub diff_id: Digest,
    /// Size of the compressed layer blob written.
    pub compressed_bytes: u64,
}

/// What [`apply`] rebuilt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApplyInfo {
    /// The rebuilt image's ID: the digest of its config, equal to the target's.
    pub image_id: Digest,
    /// Digest of the manifest written.
    pub manifest_digest: Digest,
    /// The layers, bottom first.
    pub layers: Vec<RebuiltLayer>,
}

/// Rebuilds the target image from `source` and the delta image `delta`,
/// verifying every layer's DiffID, and writes it to `sink`.
///
/// The config bytes of the result are the target's, so its image ID equals
/// the target's; the layers are recompressed, so blob and manifest digests
/// differ from the original target's (as on a device).
///
/// Rebuilding stops with [`DeltaError::TooLarge`] at the first byte over a
/// limit derived from the inputs ([`crate::limits`]). All layers are rebuilt
/// in a private work directory before anything is handed to `sink`, so a
/// failure while rebuilding writes nothing to it.
///
/// Each source layer is downloaded once: the layers the target shares with the
/// source (the common prefix) are kept as they are and also decompressed from
/// those local copies into the basis; only the other source layers are
/// fetched for the basis.
pub async fn apply(
    source: &dyn ImageSource,
    delta: &dyn ImageSource,
    sink: &dyn ImageSink,
    opts: &ApplyOptions,
    progress: Arc<dyn Progress>,
) -> Result<ApplyInfo, DeltaError> {
    let plan = Plan::read(source, delta).await?;
    let work = workdir(opts.workdir.as_deref())?;
    let mut rebuilt = reuse_common_prefix(source, &plan, work.path(), opts.format).await?;
    if plan.common < plan.target.diff_ids.len() {
        let parts = fetch_basis(source, &plan, work.path(), opts, &progress).await?;
        let basis_len = parts.iter().map(|(_, len)| len).sum();
        let delta_sizes: Vec<u64> = plan.delta.manifest.layers[plan.common..]
            .iter()
            .map(|l| l.size)
            .collect();
        let limits = OutputLimits::derive(basis_len, &delta_sizes, opts.max_output_bytes);
        tracing::debug!(basis_len, total_limit = limits.total, "apply limits");
        let total = Arc::new(AtomicU64::new(0));
        for i in plan.common..plan.target.diff_ids.len() {
            let step = Step::Rebuild { layer: i };
            progress.event(Event::Begin { step, total: None });
            let blob_path = work.path().join(format!("layer-{i}.tar.gz"));
            let desc =
                rebuild_layer(delta, &plan, i, &parts, &blob_path, opts, (&limits, &total)).await?;
            progress.event(Event::End { step });
            rebuilt.push(
                RebuiltLayer {
                    index: i,
                    from_source: false,
                    diff_id: plan.target.diff_ids[i].clone(),
                    compressed_bytes: desc.size,
                },
                blob_path,
                desc,
            );
        }
    }
    write_image(sink, &plan, rebuilt, opts.format, &progress).await
}

/// What an apply works from: both images, the delta's target config and how many
/// bottom layers the target shares with the source.
struct Plan {
    src: PulledImage,
    delta: PulledImage,
    labels: crate::config::DeltaLabels,
    target: ImageConfig,
    /// Layers shared by source and target (the common prefix of their DiffIDs).
    common: usize,
}

impl Plan {
    /// Reads both images and checks that the delta is for this source and consistent.
    async fn read(source: &dyn ImageSource, delta: &dyn ImageSource) -> Result<Plan, DeltaError> {
        let (src, d) = two_images((source, Role::Source), (delta, Role::Delta)).await?;
        let labels = delta_labels(&d.config.labels)?;
        if labels.base != src.config_digest.to_string() {
            return Err(DeltaError::BaseMismatch {
                expected: labels.base,
                actual: src.config_digest,
            });
        }
        let target =
            ImageConfig::parse(&labels.target_config).map_err(|source| DeltaError::Image {
                role: Role::Target,
                source,
            })?;
        if d.manifest.layers.len() != target.diff_ids.len() {
            return Err(DeltaError::LayerCount {
                role: Role::Delta,
                layers: d.manifest.layers.len(),
                diff_ids: target.diff_ids.len(),
            });
        }
        let common = common_prefix(&src.config.diff_ids, &target.diff_ids);
        Ok(Plan {
            src,
            delta: d,
            labels,
            target,
            common,
        })
    }
}

/// The rebuilt image so far: its layers and the blob files that hold them.
#[derive(Default)]
struct Rebuilt {
    layers: Vec<RebuiltLayer>,
    files: Vec<(PathBuf, Descriptor)>,
}

impl Rebuilt {
    fn push(&mut self, layer: RebuiltLayer, path: PathBuf, desc: Descriptor) {
        self.layers.push(layer);
        self.files.push((path, desc));
    }
}

/// The common prefix is the source's own layers, reused as they are: their blobs are
/// fetched (verified) into `work` as `source-<i>.blob`.
async fn reuse_common_prefix(
    source: &dyn ImageSource,
    plan: &Plan,
    work: &Path,
    format: Format,
) -> Result<Rebuilt, DeltaError> {
    let mut rebuilt = Rebuilt::default();
    for i in 0..plan.common {
        let desc = &plan.src.manifest.layers[i];
        let path = work.join(format!("source-{i}.blob"));
        fetch_blob(source, Role::Source, i, desc, &path).await?;
        let mut out = desc.clone();
        out.media_type = format.layer_type_like(&desc.media_type);
        let layer = RebuiltLayer {
            index: i,
            from_source: true,
            diff_id: plan.target.diff_ids[i].clone(),
            compressed_bytes: out.size,
        };
        rebuilt.push(layer, path, out);
    }
    Ok(rebuilt)
}

/// Decompresses every source layer into a file of its own, all at once (each keeps a
/// decompressing and a hashing/writing thread busy): the common prefix from the blobs
/// [`reuse_common_prefix`] fetched, the others from the source. The basis is their
/// concatenation, read by offset; returns each file with its length.
async fn fetch_basis(
    source: &dyn ImageSource,
    plan: &Plan,
    work: &Path,
    opts: &ApplyOptions,
    progress: &Arc<dyn Progress>,
) -> Result<Vec<(PathBuf, u64)>, DeltaError> {
    let layers = &plan.src.manifest.layers;
    let total = layers.iter().map(|l| l.size).sum();
    progress.event(Event::Begin {
        step: Step::FetchSource,
        total: Some(total),
    });
    let done = AtomicU64::new(0);
    let fetches = layers.iter().enumerate().map(|(i, desc)| {
        let path = work.join(format!("basis-{i}.tar"));
        let (progress, done) = (progress, &done);
        let diff_id = &plan.src.config.diff_ids[i];
        let cap = Some(limits::source_inflated(desc.size, opts.max_output_bytes));
        async move {
            let file = File::create(&path).map_err(DeltaError::io(&path))?;
            let (file, len) = if i < plan.common {
                let blob = work.join(format!("source-{i}.blob"));
                inflate_local_layer(&blob, (Role::Source, i), diff_id, (file, &path), cap).await?
            } else {
                let at = (file, path.as_path());
                fetch_layer_capped(source, (Role::Source, i), desc, diff_id, at, None, cap).await?
            };
            let now = done.fetch_add(desc.size, Ordering::Relaxed);
            progress.event(Event::Advance {
                done: now + desc.size,
            });
            drop(file);
            Ok::<_, DeltaError>((path, len))
        }
    });
    let parts = futures::future::try_join_all(fetches).await?;
    progress.event(Event::End {
        step: Step::FetchSource,
    });
    Ok(parts)
}

/// Rebuilds target layer `i` from its delta layer against the basis `parts` into the
/// compressed blob `blob_path`, within `limits` (the running total of all layers in
/// `total`), and checks its DiffID. Returns the blob's descriptor.
async fn rebuild_layer(
    delta: &dyn ImageSource,
    plan: &Plan,
    i: usize,
    parts: &[(PathBuf, u64)],
    blob_path: &Path,
    opts: &ApplyOptions,
    (limits, total): (&OutputLimits, &Arc<AtomicU64>),
) -> Result<Descriptor, DeltaError> {
    let reader = delta
        .blob(&plan.delta.manifest.layers[i])
        .await
        .map_err(|source| DeltaError::Layer {
            role: Role::Delta,
            index: i,
            source,
        })?;
    let handle = Handle::current();
    let parts = parts.to_vec();
    let blob_path = blob_path.to_path_buf();
    let expected = plan.target.diff_ids[i].clone();
    let (format, level) = (opts.format, opts.gzip_level);
    let k = plan.common;
    let (inflated_limit, layer_limit) = (limits.inflated[i - k], limits.layer[i - k]);
    let (total, total_limit) = (Arc::clone(total), limits.total);
    blocking(move || {
        let basis = LayeredBasis::open(&parts)?;
        let bridge = SyncIoBridge::new_with_handle(reader, handle);
        let plain =
            decompress_read(BufReader::new(bridge)).map_err(|source| DeltaError::Layer {
                role: Role::Delta,
                index: i,
                source,
            })?;
        let tripped = Cell::new(None);
        let plain = CappedReader::new(plain, inflated_limit, Bound::InflatedDelta, &tripped);
        let mut patched = None;
        let written = write_layer(&blob_path, format, level, |w| {
            let mut w = CappedWriter::new(w, layer_limit, (&total, total_limit), &tripped);
            let r = with_first_entry(plain, |entry| bru_rsync::patch(&basis, entry, &mut w));
            patched = Some(r);
            Ok(())
        });
        // A limit wins over the errors it caused, however they were wrapped.
        if let Some(bound) = tripped.get() {
            let limit = match bound {
                Bound::InflatedDelta | Bound::InflatedSource => inflated_limit,
                Bound::Layer => layer_limit,
                _ => total_limit,
            };
            return Err(DeltaError::TooLarge {
                index: i,
                bound,
                limit,
            });
        }
        let (desc, rebuilt) = written?;
        match patched {
            Some(Ok(Ok(_))) => {}
            Some(Ok(Err(source))) => return Err(patch_error(i, source)),
            Some(Err(source)) => return Err(layer_tar_error(i, source)),
            None => return Err(DeltaError::Task("delta layer was not read".into())),
        }
        if rebuilt != expected {
            return Err(DeltaError::RebuiltMismatch {
                index: i,
                expected,
                actual: rebuilt,
            });
        }
        Ok(desc)
    })
    .await
}

/// Writes the rebuilt image (the target's config bytes, the rebuilt layers) to `sink`.
async fn write_image(
    sink: &dyn ImageSink,
    plan: &Plan,
    rebuilt: Rebuilt,
    format: Format,
    progress: &Arc<dyn Progress>,
) -> Result<ApplyInfo, DeltaError> {
    let config = &plan.labels.target_config;
    let config_desc = Descriptor::of_bytes(format.config_type(), config);
    let layer_descs: Vec<Descriptor> = rebuilt.files.iter().map(|(_, d)| d.clone()).collect();
    let (manifest, manifest_type) = manifest_bytes(format, &config_desc, &layer_descs);
    progress.event(Event::Begin {
        step: Step::Publish,
        total: None,
    });
    let manifest_digest = publish(
        sink,
        &rebuilt.files,
        &config_desc,
        config,
        &manifest,
        manifest_type,
    )
    .await?;
    progress.event(Event::End {
        step: Step::Publish,
    });
    Ok(ApplyInfo {
        image_id: config_desc.digest,
        manifest_digest,
        layers: rebuilt.layers,
    })
}

/// A decoder error, or the blob stream's own error surfacing through it.
fn patch_error(index: usize, source: bru_rsync::PatchError) -> DeltaError {
    match source {
        bru_rsync::PatchError::ReadDelta { source: e, .. }
            if e.get_ref()
                .is_some_and(|inner| inner.is::<bru_oci::OciError>()) =>
        {
            stream_error(Role::Delta, index, e)
        }
        source => DeltaError::Patch { index, source },
    }
}

fn layer_tar_error(index: usize, source: crate::layer::LayerTarError) -> DeltaError {
    match source {
        crate::layer::LayerTarError::Io(e) => stream_error(Role::Delta, index, e),
        source => DeltaError::LayerTar { index, source },
    }
}
