//! Helpers shared by the delta engine's integration tests.
#![allow(dead_code)]

use std::io::Read;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use bru_delta::{ApplyInfo, ApplyOptions, CreateOptions, DeltaError, DeltaInfo, NoProgress};
use bru_oci::{
    open_sink, open_source, Digest, ImageReference, ImageSpec, OciDir, RegistryOptions,
    WrittenImage,
};

/// A file in a test layer.
pub type File = (String, Vec<u8>);

/// An uncompressed layer tar holding `files` in order.
pub fn layer(files: &[File]) -> Vec<u8> {
    let entries: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(p, d)| (p.as_str(), d.as_slice()))
        .collect();
    bru_oci::tar_of(&entries)
}

pub use bru_test_support::noise;

/// Source and target images written to one OCI layout, tagged `source` and `target`.
pub struct Pair {
    pub dir: tempfile::TempDir,
    pub source: WrittenImage,
    pub target: WrittenImage,
    pub source_layers: Vec<Vec<u8>>,
    pub target_layers: Vec<Vec<u8>>,
}

impl Pair {
    pub fn new(source_layers: Vec<Vec<u8>>, target_layers: Vec<Vec<u8>>) -> Pair {
        let dir = tempfile::tempdir().unwrap();
        let oci = OciDir::create(dir.path().join("images")).unwrap();
        let source = oci
            .write_image("source", &ImageSpec::new(source_layers.clone()))
            .unwrap();
        let target = oci
            .write_image("target", &ImageSpec::new(target_layers.clone()))
            .unwrap();
        Pair {
            dir,
            source,
            target,
            source_layers,
            target_layers,
        }
    }

    pub fn reference(&self, tag: &str) -> ImageReference {
        format!("oci:{}:{tag}", self.dir.path().join("images").display())
            .parse()
            .unwrap()
    }

    pub fn out(&self, name: &str) -> ImageReference {
        format!("oci:{}:{name}", self.dir.path().join(name).display())
            .parse()
            .unwrap()
    }

    /// The basis: all source layer tars concatenated.
    pub fn basis(&self) -> Vec<u8> {
        self.source_layers.concat()
    }
}

pub async fn create(
    source: &ImageReference,
    target: &ImageReference,
    out: &ImageReference,
) -> Result<DeltaInfo, DeltaError> {
    let opts = RegistryOptions::default();
    let s = open_source(source, &opts).await.unwrap();
    let t = open_source(target, &opts).await.unwrap();
    let sink = open_sink(out, &opts).await.unwrap();
    bru_delta::create(
        &*s,
        &*t,
        &*sink,
        &CreateOptions::default(),
        Arc::new(NoProgress),
    )
    .await
}

pub async fn apply(
    source: &ImageReference,
    delta: &ImageReference,
    out: &ImageReference,
) -> Result<ApplyInfo, DeltaError> {
    let opts = RegistryOptions::default();
    let s = open_source(source, &opts).await.unwrap();
    let d = open_source(delta, &opts).await.unwrap();
    let sink = open_sink(out, &opts).await.unwrap();
    bru_delta::apply(
        &*s,
        &*d,
        &*sink,
        &ApplyOptions::default(),
        Arc::new(NoProgress),
    )
    .await
}

/// The raw librsync stream inside each delta layer (None for common layers).
pub async fn delta_streams(delta: &ImageReference) -> Vec<Option<Vec<u8>>> {
    let src = open_source(delta, &RegistryOptions::default())
        .await
        .unwrap();
    let image = src.image().await.unwrap();
    let mut out = Vec::new();
    for desc in &image.manifest.layers {
        let mut blob = Vec::new();
        let mut r = src.blob(desc).await.unwrap();
        tokio::io::AsyncReadExt::read_to_end(&mut r, &mut blob)
            .await
            .unwrap();
        let mut tar_bytes = Vec::new();
        flate2::read::GzDecoder::new(&blob[..])
            .read_to_end(&mut tar_bytes)
            .unwrap();
        let mut archive = tar::Archive::new(&tar_bytes[..]);
        let first = archive.entries().unwrap().next();
        out.push(first.map(|e| {
            let mut e = e.unwrap();
            assert_eq!(e.path().unwrap().to_str(), Some("delta"));
            let mut body = Vec::new();
            e.read_to_end(&mut body).unwrap();
            body
        }));
    }
    out
}

/// Applies `delta` to `basis` with Debian's `rdiff` (an independent librsync) and returns the output.
pub fn rdiff_patch(dir: &Path, basis: &[u8], delta: &[u8]) -> Vec<u8> {
    let (b, d, o) = (
        dir.join("rdiff.basis"),
        dir.join("rdiff.delta"),
        dir.join("rdiff.out"),
    );
    std::fs::write(&b, basis).unwrap();
    std::fs::write(&d, delta).unwrap();
    let status = Command::new("rdiff")
        .args(["-f", "patch"])
        .arg(&b)
        .arg(&d)
        .arg(&o)
        .status()
        .expect("Debian's `rdiff` must be installed (apt-get install rdiff) to cross-check deltas");
    assert!(status.success(), "rdiff patch failed");
    std::fs::read(&o).unwrap()
}

/// Rebuilds a target layer from `delta` the way a device does (the device-apply emulation:
/// the source layers extracted to directories, read file by file, librsync-go's executor)
/// and returns what it did.
pub fn device_apply(
    dir: &Path,
    source_layers: &[Vec<u8>],
    delta: &[u8],
) -> bru_device_apply::ApplyReport {
    let basis = bru_device_apply::DeviceBasis::extract(
        source_layers.iter().map(|l| &l[..]),
        &dir.join("device-basis"),
    )
    .expect("extract the source layers as a device stores them");
    let report = bru_device_apply::apply(&basis, delta).expect("device-like apply");
    std::fs::remove_dir_all(dir.join("device-basis")).unwrap();
    report
}

/// Checks everything about a delta of `pair`: rdiff and the device emulation rebuild every
/// target layer, our apply rebuilds the image ID and DiffIDs, common layers are empty tars.
pub async fn check_round_trip(pair: &Pair) -> DeltaInfo {
    let delta_ref = pair.out("delta");
    let info = create(
        &pair.reference("source"),
        &pair.reference("target"),
        &delta_ref,
    )
    .await
    .unwrap();
    assert_eq!(info.layer_count, pair.target_layers.len());
    assert_eq!(info.target_image_id, pair.target.config.digest);
    assert_eq!(info.base_image_id, pair.source.config.digest.to_string());

    let basis = pair.basis();
    let streams = delta_streams(&delta_ref).await;
    assert_eq!(streams.len(), pair.target_layers.len());
    for (i, stream) in streams.iter().enumerate() {
        match stream {
            None => assert!(i < info.common_prefix, "layer {i} is empty but not common"),
            Some(delta) => {
                assert!(i >= info.common_prefix);
                let rebuilt = rdiff_patch(pair.dir.path(), &basis, delta);
                assert_eq!(
                    Digest::of(&rebuilt),
                    pair.target.diff_ids[i],
                    "rdiff rebuilt layer {i} wrongly"
                );
                let device = device_apply(pair.dir.path(), &pair.source_layers, delta);
                assert_eq!(
                    device.diff_id,
                    pair.target.diff_ids[i].to_string(),
                    "the device emulation rebuilt layer {i} wrongly"
                );
                // The build's command counts are what a device executes.
                let layer = &info.layers[i];
                assert_eq!(
                    (layer.copy_commands, layer.literal_commands),
                    (
                        Some(device.counters.copy_commands),
                        Some(device.counters.literal_commands)
                    ),
                    "layer {i}"
                );
            }
        }
    }

    let applied = apply(&pair.reference("source"), &delta_ref, &pair.out("applied"))
        .await
        .unwrap();
    assert_eq!(applied.image_id, pair.target.config.digest);
    let ids: Vec<Digest> = applied.layers.iter().map(|l| l.diff_id.clone()).collect();
    assert_eq!(ids, pair.target.diff_ids);

    // The written image reads back with the target's exact config bytes and DiffIDs.
    let out = open_source(&pair.out("applied"), &RegistryOptions::default())
        .await
        .unwrap();
    let image = out.image().await.unwrap();
    assert_eq!(image.config_bytes, pair.target.config_bytes);
    for (i, desc) in image.manifest.layers.iter().enumerate() {
        let mut r = out.blob(desc).await.unwrap();
        let mut blob = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut r, &mut blob)
            .await
            .unwrap();
        // Reused common layers stay gzip; rebuilt ones are plain tars by default.
        let mut plain = Vec::new();
        bru_oci::decompress_read(&blob[..])
            .unwrap()
            .read_to_end(&mut plain)
            .unwrap();
        assert_eq!(plain, pair.target_layers[i], "rebuilt layer {i} differs");
    }
    info
}
