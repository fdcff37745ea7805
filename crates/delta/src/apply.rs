//! Applying a delta image to a source image: what a balena device does on pull.

use std::cell::Cell;
use std::fs::File;
use std::io::BufReader;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use bru_oci::{decompress_read, Descriptor, Digest, ImageConfig, ImageSink, ImageSource};
use serde::Serialize;
use tokio::runtime::Handle;
use tokio_util::io::SyncIoBridge;

use crate::chain::common_prefix;
use crate::config::delta_labels;
use crate::create::write_layer;
use crate::error::{blocking, DeltaError, Role};
use crate::fetch::{fetch_blob, fetch_layer_capped, stream_error, two_images};
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
pub async fn apply(
    source: &dyn ImageSource,
    delta: &dyn ImageSource,
    sink: &dyn ImageSink,
    opts: &ApplyOptions,
    progress: Arc<dyn Progress>,
) -> Result<ApplyInfo, DeltaError> {
    let (src, d) = two_images((source, Role::Source), (delta, Role::Delta)).await?;
    let labels = delta_labels(&d.config.labels)?;
    if labels.base != src.config_digest.to_string() {
        return Err(DeltaError::BaseMismatch {
            expected: labels.base,
            actual: src.config_digest,
        });
    }
    let target = ImageConfig::parse(&labels.target_config).map_err(|source| DeltaError::Image {
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
    let k = common_prefix(&src.config.diff_ids, &target.diff_ids);
    let work = workdir(opts.workdir.as_deref())?;
    let mut files: Vec<(PathBuf, Descriptor)> = Vec::new();
    let mut layers = Vec::new();

    // The common prefix is the source's own layers, reused as they are.
    for i in 0..k {
        let desc = &src.manifest.layers[i];
        let path = work.path().join(format!("source-{i}.blob"));
        fetch_blob(source, Role::Source, i, desc, &path).await?;
        let mut out = desc.clone();
        out.media_type = opts.format.layer_type_like(&desc.media_type);
        layers.push(RebuiltLayer {
            index: i,
            from_source: true,
            diff_id: target.diff_ids[i].clone(),
            compressed_bytes: out.size,
        });
        files.push((path, out));
    }

    if k < target.diff_ids.len() {
        // Every source layer is fetched into a file of its own, all at once
        // (each fetch keeps a decompressing and a hashing/writing thread
        // busy); the basis is their concatenation, read by offset.
        let total = src.manifest.layers.iter().map(|l| l.size).sum();
        progress.event(Event::Begin {
            step: Step::FetchSource,
            total: Some(total),
        });
        let done = std::sync::atomic::AtomicU64::new(0);
        let fetches = src.manifest.layers.iter().enumerate().map(|(i, desc)| {
            let path = work.path().join(format!("basis-{i}.tar"));
            let (progress, done, src) = (&progress, &done, &src);
            async move {
                let file = File::create(&path).map_err(DeltaError::io(&path))?;
                let (file, len) = fetch_layer_capped(
                    source,
                    (Role::Source, i),
                    desc,
                    &src.config.diff_ids[i],
                    (file, &path),
                    None,
                    Some(limits::source_inflated(desc.size, opts.max_output_bytes)),
                )
                .await?;
                let now = done.fetch_add(desc.size, std::sync::atomic::Ordering::Relaxed);
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
        let basis_len = parts.iter().map(|(_, len)| len).sum();
        let delta_sizes: Vec<u64> = d.manifest.layers[k..].iter().map(|l| l.size).collect();
        let limits = OutputLimits::derive(basis_len, &delta_sizes, opts.max_output_bytes);
        tracing::debug!(basis_len, total_limit = limits.total, "apply limits");
        let total = Arc::new(AtomicU64::new(0));

        for i in k..target.diff_ids.len() {
            let step = Step::Rebuild { layer: i };
            progress.event(Event::Begin { step, total: None });
            let reader =
                delta
                    .blob(&d.manifest.layers[i])
                    .await
                    .map_err(|source| DeltaError::Layer {
                        role: Role::Delta,
                        index: i,
                        source,
                    })?;
            let handle = Handle::current();
            let parts = parts.clone();
            let blob_path = work.path().join(format!("layer-{i}.tar.gz"));
            let expected = target.diff_ids[i].clone();
            let (format, level) = (opts.format, opts.gzip_level);
            let (inflated_limit, layer_limit) = (limits.inflated[i - k], limits.layer[i - k]);
            let (total, total_limit) = (Arc::clone(&total), limits.total);
            let desc = blocking(move || {
                let basis = LayeredBasis::open(&parts)?;
                let bridge = SyncIoBridge::new_with_handle(reader, handle);
                let plain = decompress_read(BufReader::new(bridge)).map_err(|source| {
                    DeltaError::Layer {
                        role: Role::Delta,
                        index: i,
                        source,
                    }
                })?;
                let tripped = Cell::new(None);
                let plain =
                    CappedReader::new(plain, inflated_limit, Bound::InflatedDelta, &tripped);
                let mut patched = None;
                let written = write_layer(&blob_path, format, level, |w| {
                    let mut w = CappedWriter::new(w, layer_limit, (&total, total_limit), &tripped);
                    let r =
                        with_first_entry(plain, |entry| bru_rsync::patch(&basis, entry, &mut w));
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
            .await?;
            progress.event(Event::End { step });
            layers.push(RebuiltLayer {
                index: i,
                from_source: false,
                diff_id: target.diff_ids[i].clone(),
                compressed_bytes: desc.size,
            });
            files.push((work.path().join(format!("layer-{i}.tar.gz")), desc));
        }
    }

    let config_desc = Descriptor::of_bytes(opts.format.config_type(), &labels.target_config);
    let layer_descs: Vec<Descriptor> = files.iter().map(|(_, d)| d.clone()).collect();
    let (manifest, manifest_type) = manifest_bytes(opts.format, &config_desc, &layer_descs);
    progress.event(Event::Begin {
        step: Step::Publish,
        total: None,
    });
    let manifest_digest = publish(
        sink,
        &files,
        &config_desc,
        &labels.target_config,
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
        layers,
    })
}

/// The basis as the concatenation of several files (the source layer tars),
/// read by offset.
#[derive(Debug)]
struct LayeredBasis {
    /// Each file with the basis offset it starts at.
    files: Vec<(File, u64)>,
    len: u64,
}

impl LayeredBasis {
    fn open(parts: &[(PathBuf, u64)]) -> Result<Self, DeltaError> {
        let mut files = Vec::with_capacity(parts.len());
        let mut len = 0;
        for (path, part_len) in parts {
            files.push((File::open(path).map_err(DeltaError::io(path))?, len));
            len += part_len;
        }
        Ok(LayeredBasis { files, len })
    }
}

impl bru_rsync::ReadAt for LayeredBasis {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_exact_at(&self, mut buf: &mut [u8], mut offset: u64) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        if buf.is_empty() {
            return if offset <= self.len {
                Ok(())
            } else {
                Err(std::io::ErrorKind::UnexpectedEof.into())
            };
        }
        if offset
            .checked_add(buf.len() as u64)
            .is_none_or(|end| end > self.len)
        {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "read past the end of the basis",
            ));
        }
        // The file holding `offset`: the last one starting at or before it.
        let mut k = self.files.partition_point(|(_, start)| *start <= offset) - 1;
        while !buf.is_empty() {
            let (file, start) = &self.files[k];
            let end = self.files.get(k + 1).map_or(self.len, |(_, s)| *s);
            let n = buf.len().min((end - offset) as usize);
            let (head, rest) = std::mem::take(&mut buf).split_at_mut(n);
            FileExt::read_exact_at(file, head, offset - start)?;
            buf = rest;
            offset += n as u64;
            k += 1;
        }
        Ok(())
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use bru_rsync::ReadAt;

    #[test]
    fn layered_basis_reads_across_files() {
        let dir = tempfile::tempdir().unwrap();
        let parts_data: [&[u8]; 4] = [b"abc", b"", b"defgh", b"ij"];
        let mut parts = Vec::new();
        for (i, data) in parts_data.iter().enumerate() {
            let path = dir.path().join(format!("p{i}"));
            std::fs::write(&path, data).unwrap();
            let len = std::fs::metadata(&path).unwrap().len();
            parts.push((path, len));
        }
        let basis = LayeredBasis::open(&parts).unwrap();
        let all = parts_data.concat();
        assert_eq!(basis.len(), all.len() as u64);
        for start in 0..=all.len() {
            for end in start..=all.len() {
                let mut buf = vec![0; end - start];
                basis.read_exact_at(&mut buf, start as u64).unwrap();
                assert_eq!(buf, &all[start..end]);
            }
            let mut past = vec![0; all.len() - start + 1];
            assert!(basis.read_exact_at(&mut past, start as u64).is_err());
        }
        assert!(basis.read_exact_at(&mut [], 11).is_err());
        let empty = LayeredBasis::open(&[]).unwrap();
        assert!(empty.read_exact_at(&mut [], 0).is_ok());
        assert!(empty.read_exact_at(&mut [0], 0).is_err());
    }
}
