//! Building a delta image from a source and a target image.

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::sync_channel;
use std::sync::Arc;

use bru_oci::{Descriptor, Digest, ImageSink, ImageSource, PulledImage};
use bru_rsync::{Bandwidth, DeviceCost};
use flate2::write::GzEncoder;
use serde::Serialize;

use crate::chain::common_prefix;
use crate::config::delta_config;
use crate::error::{blocking, DeltaError, Role};
use crate::fanout::{self, ChannelReader, FanOut};
use crate::fetch::{fetch_layer, two_images};
use crate::hashio::{write_on_thread, CompareWriter, HashWriter};
use crate::layer::{EMPTY_TAR, EMPTY_TAR_DIFF_ID};
use crate::manifest::{manifest_bytes, Format};
use crate::progress::{Event, Progress, Step};
use crate::{engine, gzlayer, publish, workdir};

/// Options of [`create`].
#[derive(Debug, Clone)]
pub struct CreateOptions {
    /// Where to keep the decompressed layers while working (a fresh temporary
    /// directory is made inside it and removed afterwards). Default: the
    /// system temporary directory.
    pub workdir: Option<PathBuf>,
    /// Manifest flavour of the delta image.
    pub format: Format,
    /// gzip level of the delta layers (0–9).
    pub gzip_level: u32,
    /// Build for a device with this download bandwidth: fewest bytes when it
    /// is slow, cheapest apply when it is fast (see [`bru_rsync::DeviceCost`]).
    /// `None` minimises bytes alone. Default: 1 MB/s.
    pub device_bandwidth: Option<Bandwidth>,
}

impl Default for CreateOptions {
    fn default() -> Self {
        CreateOptions {
            workdir: None,
            format: Format::Docker,
            gzip_level: 9,
            device_bandwidth: Some(Bandwidth::default()),
        }
    }
}

/// One layer of a delta image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LayerInfo {
    /// Position in the image, bottom first.
    pub index: usize,
    /// `common` (an empty tar: the device keeps its own layer) or `delta`.
    pub kind: LayerKind,
    /// Digest of the compressed layer blob.
    pub digest: Digest,
    /// Size of the compressed layer blob: what a device downloads for it.
    pub compressed_bytes: u64,
    /// Size of the raw librsync delta stream (known when the delta was just built).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delta_bytes: Option<u64>,
    /// Bytes of the target layer the delta copies from the basis (when just built).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub copied_bytes: Option<u64>,
    /// Bytes of the target layer the delta carries literally (when just built).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub literal_bytes: Option<u64>,
    /// COPY commands of the delta stream (when just built): each costs a device a basis
    /// read and file opens.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub copy_commands: Option<u64>,
    /// LITERAL commands of the delta stream (when just built).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub literal_commands: Option<u64>,
    /// The source layer (index) this target layer is, moved to another position or above
    /// other layers (same DiffID; when just built). Its delta is one COPY of that layer:
    /// the blob is tiny, and a device rebuilds the layer by reading the one it has.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub copies_source_layer: Option<usize>,
}

impl LayerInfo {
    /// A layer known by its descriptor alone (a common layer, a layer of an inspected
    /// image): no delta statistics.
    pub(crate) fn without_stats(index: usize, kind: LayerKind, desc: &Descriptor) -> Self {
        LayerInfo {
            index,
            kind,
            digest: desc.digest.clone(),
            compressed_bytes: desc.size,
            delta_bytes: None,
            copied_bytes: None,
            literal_bytes: None,
            copy_commands: None,
            literal_commands: None,
            copies_source_layer: None,
        }
    }
}

/// Kind of a delta image layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LayerKind {
    /// In the common ChainID prefix: an empty tar, never downloaded.
    Common,
    /// A librsync delta against the basis.
    Delta,
}

/// Description of a delta image, as built or as inspected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeltaInfo {
    /// Digest of the delta image's manifest.
    pub manifest_digest: Digest,
    /// `io.resin.delta.base`: ID of the source image the delta applies to.
    pub base_image_id: String,
    /// ID of the image the delta rebuilds (digest of the target config).
    pub target_image_id: Digest,
    /// Number of layers (always the target's layer count).
    pub layer_count: usize,
    /// Number of leading layers shared with the source (empty tars).
    pub common_prefix: usize,
    /// The layers, bottom first.
    pub layers: Vec<LayerInfo>,
    /// Size of the delta image config blob.
    pub config_bytes: u64,
    /// Sum of the compressed sizes of the delta layers (common layers excluded).
    pub total_compressed_bytes: u64,
    /// What a device downloads: the config blob plus the delta layers.
    pub download_bytes: u64,
}

impl DeltaInfo {
    pub(crate) fn new(
        manifest_digest: Digest,
        base_image_id: String,
        target_image_id: Digest,
        config_bytes: u64,
        layers: Vec<LayerInfo>,
    ) -> Self {
        let common_prefix = layers
            .iter()
            .take_while(|l| l.kind == LayerKind::Common)
            .count();
        let total_compressed_bytes = layers
            .iter()
            .filter(|l| l.kind == LayerKind::Delta)
            .map(|l| l.compressed_bytes)
            .sum();
        DeltaInfo {
            manifest_digest,
            base_image_id,
            target_image_id,
            layer_count: layers.len(),
            common_prefix,
            layers,
            config_bytes,
            total_compressed_bytes,
            download_bytes: config_bytes + total_compressed_bytes,
        }
    }
}

/// A layer blob written to the work directory.
struct LayerBlob {
    path: PathBuf,
    desc: Descriptor,
    diff_id: Digest,
    info: LayerInfo,
}

/// Builds the v3 delta image that turns `source` into `target` on a balena
/// device, self-checks every layer, and writes it to `sink`.
///
/// Nothing is written to `sink` unless every delta layer, applied to the
/// basis, rebuilt the target layer's DiffID.
pub async fn create(
    source: &dyn ImageSource,
    target: &dyn ImageSource,
    sink: &dyn ImageSink,
    opts: &CreateOptions,
    progress: Arc<dyn Progress>,
) -> Result<DeltaInfo, DeltaError> {
    let (src, dst) = two_images((source, Role::Source), (target, Role::Target)).await?;
    let k = common_prefix(&src.config.diff_ids, &dst.config.diff_ids);
    tracing::info!(
        source_layers = src.manifest.layers.len(),
        target_layers = dst.manifest.layers.len(),
        common_prefix = k,
        "creating delta"
    );
    let work = workdir(opts.workdir.as_deref())?;

    let changed = k < dst.manifest.layers.len();
    let mut blobs = Vec::new();
    if changed {
        let basis_path = work.path().join("basis.tar");
        // The target layers are fetched while the basis is: each fetch keeps
        // a decompressing and a hashing/writing thread busy. Their progress is
        // reported as one step after the basis' (events carry no layer).
        let quiet: Arc<dyn Progress> = Arc::new(crate::progress::NoProgress);
        // The basis is indexed as it is fetched, on a thread of its own.
        let device = opts.device_bandwidth.map(DeviceCost::for_bandwidth);
        let (index_feed, indexer) = engine::start_index(device);
        let fetch_targets = async {
            let mut targets = Vec::new();
            for i in k..dst.manifest.layers.len() {
                let diff_id = &dst.config.diff_ids[i];
                // A layer the source has too (moved up or down the stack) is not
                // fetched: its delta copies the source's layer, whose bytes the
                // basis fetch verifies against this same DiffID.
                if let Some(j) = src.config.diff_ids.iter().position(|d| d == diff_id) {
                    targets.push(TargetLayer {
                        index: i,
                        bytes: TargetBytes::SourceLayer(j),
                    });
                    continue;
                }
                let path = work.path().join(format!("target-{i}.tar"));
                fetch_all(
                    target,
                    &dst,
                    Role::Target,
                    i,
                    &path,
                    &quiet,
                    (Step::FetchTarget, None),
                )
                .await?;
                targets.push(TargetLayer {
                    index: i,
                    bytes: TargetBytes::Fetched(path),
                });
            }
            Ok::<_, DeltaError>(targets)
        };
        let fetch_basis = fetch_all(
            source,
            &src,
            Role::Source,
            0,
            &basis_path,
            &progress,
            (Step::FetchSource, Some(index_feed)),
        );
        let (source_lens, targets) = tokio::try_join!(fetch_basis, fetch_targets)?;
        let builder = indexer
            .join()
            .map_err(|_| DeltaError::Task("basis indexer panicked".into()))?;
        // What was downloaded of the target: moved layers were not.
        let target_total = targets
            .iter()
            .filter(|t| matches!(t.bytes, TargetBytes::Fetched(_)))
            .map(|t| dst.manifest.layers[t.index].size)
            .sum();
        progress.event(Event::Begin {
            step: Step::FetchTarget,
            total: Some(target_total),
        });
        progress.event(Event::End {
            step: Step::FetchTarget,
        });
        let dir = work.path().to_path_buf();
        let (format, level) = (opts.format, opts.gzip_level);
        let progress = progress.clone();
        blobs = blocking(move || {
            encode_all(
                &dir,
                (&basis_path, &source_lens),
                targets,
                (format, level),
                builder,
                &*progress,
            )
        })
        .await?;
    }

    // Layers of the common prefix are the (shared) empty tar.
    let empty = if k > 0 {
        Some(write_empty_layer(
            work.path(),
            opts.format,
            opts.gzip_level,
        )?)
    } else {
        None
    };
    let mut layer_descs = Vec::new();
    let mut diff_ids = Vec::new();
    let mut infos = Vec::new();
    for i in 0..k {
        if let Some((_, desc)) = &empty {
            layer_descs.push(desc.clone());
            diff_ids.push(EMPTY_TAR_DIFF_ID.to_owned());
            infos.push(LayerInfo::without_stats(i, LayerKind::Common, desc));
        }
    }
    for blob in &blobs {
        layer_descs.push(blob.desc.clone());
        diff_ids.push(blob.diff_id.to_string());
        infos.push(blob.info.clone());
    }
    let config = delta_config(&src.config_digest.to_string(), &dst.config_bytes, &diff_ids)?;
    let config_desc = Descriptor::of_bytes(opts.format.config_type(), &config);
    let (manifest, manifest_type) = manifest_bytes(opts.format, &config_desc, &layer_descs);

    let mut files: Vec<(PathBuf, Descriptor)> = Vec::new();
    if let Some((path, desc)) = empty {
        files.push((path, desc));
    }
    files.extend(blobs.into_iter().map(|b| (b.path, b.desc)));
    progress.event(Event::Begin {
        step: Step::Publish,
        total: None,
    });
    let manifest_digest = publish(
        sink,
        &files,
        &config_desc,
        &config,
        &manifest,
        manifest_type,
    )
    .await?;
    progress.event(Event::End {
        step: Step::Publish,
    });

    Ok(DeltaInfo::new(
        manifest_digest,
        src.config_digest.to_string(),
        dst.config_digest.clone(),
        config_desc.size,
        infos,
    ))
}

/// Fetches layers of `image` into the file at `path`: all of them for the
/// basis (`from == 0` with `role == Source`), or the single layer `from`.
/// Returns the decompressed length of each layer fetched.
async fn fetch_all(
    src: &dyn ImageSource,
    image: &PulledImage,
    role: Role,
    from: usize,
    path: &Path,
    progress: &Arc<dyn Progress>,
    (step, tee): (Step, Option<crate::fetch::Tee>),
) -> Result<Vec<u64>, DeltaError> {
    let range = if role == Role::Source {
        0..image.manifest.layers.len()
    } else {
        from..from + 1
    };
    let total = range.clone().map(|i| image.manifest.layers[i].size).sum();
    progress.event(Event::Begin {
        step,
        total: Some(total),
    });
    let mut file = File::create(path).map_err(DeltaError::io(path))?;
    let mut done = 0;
    let mut lens = Vec::new();
    for i in range {
        let (f, len) = fetch_layer(
            src,
            role,
            i,
            &image.manifest.layers[i],
            &image.config.diff_ids[i],
            file,
            path,
            tee.clone(),
        )
        .await?;
        file = f;
        lens.push(len);
        done += image.manifest.layers[i].size;
        progress.event(Event::Advance { done });
    }
    progress.event(Event::End { step });
    Ok(lens)
}

/// A changed layer of the target, to encode against the basis.
struct TargetLayer {
    /// Position in the target image.
    index: usize,
    /// Its bytes, verified against its DiffID (the self-check compares the rebuild with them).
    bytes: TargetBytes,
}

/// Where the bytes of a [`TargetLayer`] are.
enum TargetBytes {
    /// Fetched and decompressed into this work file.
    Fetched(PathBuf),
    /// The source's layer at this position: the same DiffID.
    SourceLayer(usize),
}

/// Encodes every changed target layer against the basis, self-checks it and
/// writes its compressed delta layer blob.
///
/// While a layer is encoded its delta bytes stream to two threads: one
/// compresses them (see [`gzlayer`]: gzip no longer waits for the delta's
/// length; it deflates fixed-size blocks on several threads, so the blob's
/// bytes do not depend on any thread count) and one applies them to the basis
/// and compares the result with the verified target bytes. Both overlap the
/// matching instead of following it, and a layer's last steps overlap the
/// next layer's encoding.
fn encode_all(
    dir: &Path,
    (basis_path, source_lens): (&Path, &[u64]),
    targets: Vec<TargetLayer>,
    (format, level): (Format, u32),
    builder: bru_rsync::IndexBuilder,
    progress: &dyn Progress,
) -> Result<Vec<LayerBlob>, DeltaError> {
    let basis_file = Arc::new(File::open(basis_path).map_err(DeltaError::io(basis_path))?);
    let basis = engine::map(&basis_file).map_err(DeltaError::io(basis_path))?;
    // From here on the basis is reached only through these handles. Unlinked now, its
    // blocks are freed when the last handle goes (after the last layer is matched and
    // checked), beside the last layer's compression instead of after it: freeing the
    // 1.6 GB basis of the large pair took 0.13 s.
    let _ = std::fs::remove_file(basis_path);
    std::thread::scope(|s| {
        progress.event(Event::Begin {
            step: Step::Index,
            total: Some(basis.len() as u64),
        });
        let index = engine::index_streamed(&basis, builder);
        progress.event(Event::End { step: Step::Index });
        let basis_tar = engine::parse_basis(&basis);
        let mut finishing = Vec::new();
        for TargetLayer { index: i, bytes } in targets {
            let step = Step::Encode { layer: i };
            let copies = match bytes {
                TargetBytes::SourceLayer(j) => Some(j),
                TargetBytes::Fetched(_) => None,
            };
            let input = match bytes {
                TargetBytes::Fetched(path) => {
                    let file = File::open(&path).map_err(DeltaError::io(&path))?;
                    let map = engine::map(&file).map_err(DeltaError::io(&path))?;
                    Input::Mapped(map, path)
                }
                TargetBytes::SourceLayer(j) => Input::Copy(layer_range(source_lens, j)),
            };
            progress.event(Event::Begin {
                step,
                total: Some(match &input {
                    Input::Mapped(target, _) => target.len() as u64,
                    Input::Copy(range) => range.end - range.start,
                }),
            });

            let paths = LayerPaths {
                delta: dir.join(format!("delta-{i}")),
                body: dir.join(format!("body-{i}")),
                blob: dir.join(format!("layer-{i}.tar.gz")),
            };
            let delta_file = File::create(&paths.delta).map_err(DeltaError::io(&paths.delta))?;
            let (deflate_tx, deflate_rx) = sync_channel(fanout::DEPTH);
            let (check_tx, check_rx) = sync_channel(fanout::DEPTH);
            let body_path = paths.body.clone();
            let deflating = s.spawn(move || gzlayer::deflate_body(deflate_rx, level, &body_path));
            let basis_file = Arc::clone(&basis_file);
            // The rebuild is compared with bytes already verified against this layer's DiffID:
            // the fetched target layer, or the basis' copy of the source layer it is.
            // Read back from the files, not through the maps: page-cache reads do not count
            // against the build's memory, mapped pages touched again would.
            let expected = match &input {
                Input::Mapped(target, path) => {
                    let file = File::open(path).map_err(DeltaError::io(path))?;
                    (Arc::new(file), 0..target.len() as u64)
                }
                Input::Copy(range) => (Arc::clone(&basis_file), range.clone()),
            };
            let checking = s.spawn(move || self_check(&basis_file, check_rx, i, expected));
            let encoded = {
                let mut out = FanOut::new(delta_file, vec![deflate_tx, check_tx]);
                match &input {
                    Input::Mapped(target, _) => {
                        engine::encode(&index, &basis, &basis_tar, target, &mut out)
                    }
                    Input::Copy(range) => engine::encode_copy(range.clone(), &mut out),
                }
                .and_then(|stats| out.finish().map(|_| stats))
            };
            if let Input::Mapped(target, path) = input {
                drop(target);
                let _ = std::fs::remove_file(path);
            }
            // After a failed layer no other is started: its finisher reports why.
            let failed = encoded.is_err();
            finishing.push(s.spawn(move || {
                let streams = Streams {
                    encoded,
                    deflated: deflating.join().unwrap_or_else(|_| {
                        Err(std::io::Error::other("layer compressor panicked"))
                    }),
                    checked: checking
                        .join()
                        .unwrap_or_else(|_| Err(DeltaError::Task("self-check panicked".into()))),
                };
                let r = finish_layer(i, streams, &paths, format, level).map(|mut blob| {
                    blob.info.copies_source_layer = copies;
                    blob
                });
                let _ = std::fs::remove_file(&paths.delta);
                let _ = std::fs::remove_file(&paths.body);
                progress.event(Event::End { step });
                r
            }));
            if failed {
                break;
            }
        }
        drop(index);
        drop(basis_tar);
        drop(basis);
        drop(basis_file);
        finishing
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| DeltaError::Task("layer finisher panicked".into()))?
            })
            .collect()
    })
}

/// What one layer's delta is encoded from.
enum Input {
    /// The target layer's bytes, mapped from this work file.
    Mapped(memmap2::Mmap, PathBuf),
    /// This range of the basis (a source layer with the target layer's DiffID).
    Copy(std::ops::Range<u64>),
}

/// Where source layer `j` lies in the basis (all source layers, concatenated,
/// of lengths `lens`).
fn layer_range(lens: &[u64], j: usize) -> std::ops::Range<u64> {
    let start = lens.iter().take(j).sum::<u64>();
    start..start + lens.get(j).copied().unwrap_or(0)
}

/// The work files of one delta layer.
struct LayerPaths {
    /// The raw delta stream.
    delta: PathBuf,
    /// Its compressed body (see [`gzlayer`]).
    body: PathBuf,
    /// The finished layer blob.
    blob: PathBuf,
}

/// What the encoder and the two threads it fed produced for one layer.
struct Streams {
    encoded: std::io::Result<bru_rsync::DeltaStats>,
    deflated: std::io::Result<gzlayer::Body>,
    checked: Result<(), DeltaError>,
}

/// Applies the delta bytes received on `chunks` to the basis and checks that the result is
/// `expected`: the bytes `range` of a file whose bytes were verified against the target layer's
/// DiffID when fetched. Comparing costs a read from the page cache where hashing again cost a
/// sha256.
fn self_check(
    basis: &File,
    chunks: std::sync::mpsc::Receiver<Arc<[u8]>>,
    i: usize,
    (file, range): (Arc<File>, std::ops::Range<u64>),
) -> Result<(), DeltaError> {
    let mut delta = BufReader::with_capacity(1 << 16, ChannelReader::new(chunks));
    let mut check = CompareWriter::new(&file, range);
    let patched = bru_rsync::patch(basis, &mut delta, &mut check);
    // Whatever follows the END command (nothing, from our encoder) is read
    // and dropped, so that the encoder is not stopped by a closed channel.
    delta.into_inner().drain();
    // A wrong byte is the news; a rebuild cut short by a bad stream is the decoder's error.
    if let Some(offset) = check.differs_at() {
        return Err(DeltaError::RebuiltDiffers { index: i, offset });
    }
    patched.map_err(|source| DeltaError::Patch { index: i, source })?;
    match check.finish() {
        Some(offset) => Err(DeltaError::RebuiltDiffers { index: i, offset }),
        None => Ok(()),
    }
}

/// Writes layer `i`'s blob once its delta is encoded, compressed and checked.
/// The first real failure wins: a consumer's error over the broken pipe it
/// caused the encoder, the encoder's own error over the truncated stream it
/// left the consumers.
fn finish_layer(
    i: usize,
    streams: Streams,
    paths: &LayerPaths,
    format: Format,
    level: u32,
) -> Result<LayerBlob, DeltaError> {
    let Streams {
        encoded,
        deflated,
        checked,
    } = streams;
    let stats = match encoded {
        Ok(stats) => stats,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            deflated.map_err(DeltaError::io(&paths.body))?;
            checked?;
            return Err(DeltaError::io(&paths.delta)(e));
        }
        Err(e) => return Err(DeltaError::io(&paths.delta)(e)),
    };
    let body = deflated.map_err(DeltaError::io(&paths.body))?;
    checked?;
    let blob = gzlayer::assemble(&paths.blob, level, body, &paths.delta)
        .map_err(DeltaError::io(&paths.blob))?;
    let delta_len = blob.delta_len;
    let media_type = if level == 0 {
        format.tar_layer_type()
    } else {
        format.gzip_layer_type()
    };
    let desc = Descriptor {
        media_type: media_type.to_owned(),
        digest: blob.digest,
        size: blob.size,
        annotations: None,
        platform: None,
    };
    tracing::info!(
        layer = i,
        delta_bytes = delta_len,
        compressed = desc.size,
        "layer encoded"
    );
    Ok(LayerBlob {
        path: paths.blob.clone(),
        info: LayerInfo {
            index: i,
            kind: LayerKind::Delta,
            digest: desc.digest.clone(),
            compressed_bytes: desc.size,
            delta_bytes: Some(delta_len),
            copied_bytes: Some(stats.copy_bytes),
            literal_bytes: Some(stats.literal_bytes),
            copy_commands: Some(stats.copy_ops),
            literal_commands: Some(stats.literal_ops),
            copies_source_layer: None,
        },
        desc,
        diff_id: blob.diff_id,
    })
}

/// Writes a layer blob to `path` from what `fill` writes, gzip-compressed at
/// `level` (0 = an uncompressed tar); returns its descriptor and the DiffID
/// (sha256 of the uncompressed bytes).
pub(crate) fn write_layer(
    path: &Path,
    format: Format,
    level: u32,
    fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<(Descriptor, Digest), DeltaError> {
    let file = File::create(path).map_err(DeltaError::io(path))?;
    let out = HashWriter::new(BufWriter::with_capacity(1 << 20, file));
    // The blob is hashed and written on a thread of its own.
    let (out, diff_id) = write_on_thread(out, |pipe| {
        if level == 0 {
            fill(pipe)?;
            return Ok(None);
        }
        let gz = GzEncoder::new(pipe, flate2::Compression::new(level.min(9)));
        let mut plain = HashWriter::new(gz);
        fill(&mut plain)?;
        let (gz, diff_id, _) = plain.finish();
        gz.finish()?;
        Ok(Some(diff_id))
    })
    .map_err(DeltaError::io(path))?;
    let media_type = if level == 0 {
        format.tar_layer_type()
    } else {
        format.gzip_layer_type()
    };
    let (mut buffered, digest, size) = out.finish();
    buffered.flush().map_err(DeltaError::io(path))?;
    // An uncompressed blob is its own DiffID.
    let diff_id = diff_id.unwrap_or_else(|| digest.clone());
    let desc = Descriptor {
        media_type: media_type.to_owned(),
        digest,
        size,
        annotations: None,
        platform: None,
    };
    Ok((desc, diff_id))
}

fn write_empty_layer(
    dir: &Path,
    format: Format,
    level: u32,
) -> Result<(PathBuf, Descriptor), DeltaError> {
    let path = dir.join("empty.tar.gz");
    let (desc, _) = write_layer(&path, format, level, |w| w.write_all(&EMPTY_TAR))?;
    Ok((path, desc))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    fn paths(dir: &Path) -> LayerPaths {
        LayerPaths {
            delta: dir.join("delta-1"),
            body: dir.join("body-1"),
            blob: dir.join("layer-1.tar.gz"),
        }
    }

    /// A real (empty) compressed body, as the compressor thread returns it.
    fn body(dir: &Path) -> io::Result<gzlayer::Body> {
        let (tx, rx) = sync_channel(1);
        drop(tx);
        gzlayer::deflate_body(rx, 9, &dir.join("body-1"))
    }

    fn broken_pipe() -> io::Result<bru_rsync::DeltaStats> {
        Err(io::Error::new(
            io::ErrorKind::BrokenPipe,
            "a consumer stopped",
        ))
    }

    #[test]
    fn a_source_layer_lies_after_the_ones_below_it_in_the_basis() {
        let lens = [1024, 2048, 512];
        assert_eq!(layer_range(&lens, 0), 0..1024);
        assert_eq!(layer_range(&lens, 1), 1024..3072);
        assert_eq!(layer_range(&lens, 2), 3072..3584);
        // Past the last layer: an empty range at the end (whose COPY-less delta the
        // self-check then refuses), never a panic.
        assert_eq!(layer_range(&lens, 3), 3584..3584);
    }

    #[test]
    fn a_full_disk_under_the_compressor_is_reported_not_the_broken_pipe_it_caused() {
        let dir = tempfile::tempdir().unwrap();
        let paths = paths(dir.path());
        let streams = Streams {
            encoded: broken_pipe(),
            deflated: Err(io::Error::from_raw_os_error(28)), // ENOSPC
            checked: Ok(()),
        };
        let err = finish_layer(1, streams, &paths, Format::Docker, 9)
            .err()
            .unwrap();
        match &err {
            DeltaError::Io { path, source } => {
                assert_eq!(path, &paths.body);
                assert_eq!(source.kind(), io::ErrorKind::StorageFull);
            }
            other => panic!("{other:?}"),
        }
        assert!(err.is_transient(), "a full disk is transient");
    }

    #[test]
    fn a_failed_self_check_is_reported_not_the_broken_pipe_it_caused() {
        let dir = tempfile::tempdir().unwrap();
        let streams = Streams {
            encoded: broken_pipe(),
            deflated: body(dir.path()),
            checked: Err(DeltaError::Patch {
                index: 1,
                source: bru_rsync::PatchError::Truncated { offset: 9 },
            }),
        };
        let err = finish_layer(1, streams, &paths(dir.path()), Format::Docker, 9)
            .err()
            .unwrap();
        assert!(matches!(err, DeltaError::Patch { index: 1, .. }), "{err:?}");
        assert!(!err.is_transient());
    }

    #[test]
    fn the_encoder_own_error_wins_over_the_truncated_stream_it_left() {
        let dir = tempfile::tempdir().unwrap();
        let paths = paths(dir.path());
        let streams = Streams {
            encoded: Err(io::Error::from_raw_os_error(28)),
            deflated: body(dir.path()),
            checked: Err(DeltaError::Patch {
                index: 1,
                source: bru_rsync::PatchError::Truncated { offset: 4 },
            }),
        };
        let err = finish_layer(1, streams, &paths, Format::Docker, 9)
            .err()
            .unwrap();
        assert!(
            matches!(&err, DeltaError::Io { path, .. } if path == &paths.delta),
            "{err:?}"
        );
        assert!(err.is_transient());
    }

    /// Runs the self-check of `stream` against a basis of `basis` bytes, expecting `expected`.
    fn check(basis: &[u8], stream: &[u8], expected: &[u8]) -> Result<(), DeltaError> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("basis"), basis).unwrap();
        std::fs::write(dir.path().join("target"), expected).unwrap();
        let basis = File::open(dir.path().join("basis")).unwrap();
        let target = Arc::new(File::open(dir.path().join("target")).unwrap());
        let (tx, rx) = sync_channel(4);
        for piece in stream.chunks(7) {
            tx.send(Arc::from(piece)).unwrap();
        }
        drop(tx);
        self_check(&basis, rx, 3, (target, 0..expected.len() as u64))
    }

    enum Cmd<'a> {
        Lit(&'a [u8]),
        Copy(u64, u64),
    }

    fn stream(cmds: &[Cmd]) -> Vec<u8> {
        let mut w = bru_rsync::DeltaWriter::new(Vec::new()).unwrap();
        for cmd in cmds {
            match cmd {
                Cmd::Lit(bytes) => w.literal(bytes).unwrap(),
                Cmd::Copy(at, len) => w.copy(*at, *len).unwrap(),
            }
        }
        w.finish().unwrap()
    }

    #[test]
    fn the_self_check_compares_the_rebuild_with_the_verified_target() {
        let basis = b"0123456789abcdefghij";
        let target = b"xx0123456789yy";
        let good = stream(&[Cmd::Lit(b"xx"), Cmd::Copy(0, 10), Cmd::Lit(b"yy")]);
        check(basis, &good, target).unwrap();

        // One wrong byte: where it is.
        let wrong = stream(&[Cmd::Lit(b"xx"), Cmd::Copy(0, 10), Cmd::Lit(b"yz")]);
        let err = check(basis, &wrong, target).unwrap_err();
        assert!(
            matches!(
                err,
                DeltaError::RebuiltDiffers {
                    index: 3,
                    offset: 13
                }
            ),
            "{err:?}"
        );
        // A rebuild that stops short, and one that goes on.
        let short = stream(&[Cmd::Lit(b"xx"), Cmd::Copy(0, 10)]);
        let err = check(basis, &short, target).unwrap_err();
        assert!(
            matches!(err, DeltaError::RebuiltDiffers { offset: 12, .. }),
            "{err:?}"
        );
        let long = stream(&[Cmd::Lit(b"xx"), Cmd::Copy(0, 10), Cmd::Lit(b"yy!")]);
        let err = check(basis, &long, target).unwrap_err();
        assert!(
            matches!(err, DeltaError::RebuiltDiffers { offset: 14, .. }),
            "{err:?}"
        );
        assert!(!err.is_transient());
        // A stream cut in the middle is the decoder's error, not a difference.
        let cut = &good[..good.len() - 3];
        let err = check(basis, cut, target).unwrap_err();
        assert!(matches!(err, DeltaError::Patch { index: 3, .. }), "{err:?}");
    }
}
