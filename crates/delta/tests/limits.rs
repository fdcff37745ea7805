//! Fault injection for `apply`'s limits: a gzip bomb and a delta of endless COPYs are stopped
//! at limits derived from the inputs, an explicit limit lowers or raises them, and a failed
//! apply leaves nothing at the output nor in the work directory.

mod support;

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use bru_delta::limits::{BASIS_FLOOR, COPY_FACTOR, INFLATE_FLOOR};
use bru_delta::{ApplyInfo, ApplyOptions, Bound, DeltaError, NoProgress};
use bru_oci::{
    media_type, open_sink, open_source, Digest, ImageReference, Manifest, OciDir, RegistryOptions,
};
use support::{create, layer, noise, Pair};

const MIB: u64 = 1 << 20;

/// Two layers, the first one common, the second one changed.
fn pair() -> Pair {
    Pair::new(
        vec![
            layer(&[("a".into(), noise(1, 50_000))]),
            layer(&[("b".into(), noise(2, 20_000))]),
        ],
        vec![
            layer(&[("a".into(), noise(1, 50_000))]),
            layer(&[("b".into(), noise(3, 20_000))]),
        ],
    )
}

/// A delta stream, produced piece by piece into a gzip'd one-entry delta tar: only the
/// compressed bytes are ever in memory.
struct GzDeltaLayer {
    gz: flate2::write::GzEncoder<Vec<u8>>,
    left: u64,
    len: u64,
}

impl GzDeltaLayer {
    /// A delta tar whose entry holds `len` bytes, to be given with [`GzDeltaLayer::put`].
    fn new(len: u64) -> Self {
        // Level 6: level 1 (zlib-ng's quick strategy) leaves long runs of zeros ten times
        // larger, and a bomb must be small.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        let mut h = tar::Header::new_ustar();
        h.set_path(bru_delta::layer::DELTA_ENTRY).unwrap();
        h.set_size(len);
        h.set_mode(0o600);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        gz.write_all(h.as_bytes()).unwrap();
        GzDeltaLayer { gz, left: len, len }
    }

    fn put(&mut self, bytes: &[u8]) {
        self.left -= bytes.len() as u64;
        self.gz.write_all(bytes).unwrap();
    }

    fn finish(mut self) -> Vec<u8> {
        assert_eq!(self.left, 0);
        let pad = (512 - self.len % 512) % 512;
        self.gz.write_all(&vec![0; pad as usize + 1024]).unwrap();
        self.gz.finish().unwrap()
    }
}

/// Writes a delta image for the pair's source with the given gzip'd layer blobs, tagged `tag`.
fn write_delta(pair: &Pair, tag: &str, blobs: &[Vec<u8>]) {
    write_delta_for(pair, &pair.source.config.digest, tag, blobs)
}

/// Writes a delta image for the source image `base` to the pair's target.
fn write_delta_for(pair: &Pair, base: &Digest, tag: &str, blobs: &[Vec<u8>]) {
    let oci = OciDir::open(pair.dir.path().join("images")).unwrap();
    let layers: Vec<_> = blobs
        .iter()
        .map(|b| oci.write_blob(media_type::DOCKER_LAYER_GZIP, b).unwrap())
        .collect();
    // apply never reads a delta's own DiffIDs; they only have to be there.
    let ids: Vec<String> = blobs.iter().map(|b| Digest::of(b).to_string()).collect();
    let config =
        bru_delta::config::delta_config(&base.to_string(), &pair.target.config_bytes, &ids)
            .unwrap();
    let config = oci.write_blob(media_type::DOCKER_CONFIG, &config).unwrap();
    let manifest = Manifest::new(media_type::DOCKER_MANIFEST, config, layers);
    let desc = oci
        .write_blob(media_type::DOCKER_MANIFEST, &manifest.to_json())
        .unwrap();
    oci.tag(&desc, tag).unwrap();
}

fn empty_layer() -> Vec<u8> {
    bru_oci::gzip_bytes(&bru_delta::layer::EMPTY_TAR)
}

/// Applies with an optional explicit limit, working in `<tmp>/work`, writing to `out`.
async fn apply_to(
    pair: &Pair,
    delta: &ImageReference,
    out: &ImageReference,
    max_output_bytes: Option<u64>,
) -> Result<ApplyInfo, DeltaError> {
    apply_from(pair, "source", delta, out, max_output_bytes).await
}

/// [`apply_to`] from the pair's image tagged `source`.
async fn apply_from(
    pair: &Pair,
    source: &str,
    delta: &ImageReference,
    out: &ImageReference,
    max_output_bytes: Option<u64>,
) -> Result<ApplyInfo, DeltaError> {
    let work = pair.dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let o = RegistryOptions::default();
    let s = open_source(&pair.reference(source), &o).await.unwrap();
    let d = open_source(delta, &o).await.unwrap();
    let sink = open_sink(out, &o).await.unwrap();
    let opts = ApplyOptions {
        workdir: Some(work),
        max_output_bytes,
        ..ApplyOptions::default()
    };
    bru_delta::apply(&*s, &*d, &*sink, &opts, Arc::new(NoProgress)).await
}

/// Nothing at `name` in the pair's directory, no staging directory beside it, and an empty
/// work directory.
fn no_partial_output(pair: &Pair, name: &str) {
    let entries: Vec<String> = std::fs::read_dir(pair.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        entries
            .iter()
            .all(|e| !e.contains(name) && !e.starts_with('.')),
        "output left behind: {entries:?}"
    );
    let work: Vec<_> = std::fs::read_dir(pair.dir.path().join("work"))
        .unwrap()
        .collect();
    assert!(work.is_empty(), "work files left behind: {work:?}");
}

fn archive(dir: &Path, name: &str) -> ImageReference {
    format!("docker-archive:{}", dir.join(name).display())
        .parse()
        .unwrap()
}

#[tokio::test]
async fn a_gzip_bomb_stops_at_the_inflation_limit() {
    let pair = pair();
    // One literal of 128 MiB of zeros: about 128 KiB compressed.
    let bomb_len: u64 = 128 * MIB;
    let mut head = bru_rsync::DELTA_MAGIC.to_vec();
    head.push(0x44); // LITERAL with an 8-byte length
    head.extend_from_slice(&bomb_len.to_be_bytes());
    let mut layer = GzDeltaLayer::new(head.len() as u64 + bomb_len + 1);
    layer.put(&head);
    let zeros = vec![0u8; MIB as usize];
    for _ in 0..bomb_len / MIB {
        layer.put(&zeros);
    }
    layer.put(&[0]); // END
    let bomb = layer.finish();
    assert!((bomb.len() as u64) < MIB, "{} bytes", bomb.len());
    write_delta(&pair, "bomb", &[empty_layer(), bomb]);

    for (out, name) in [
        (pair.out("applied"), "applied"),
        (archive(pair.dir.path(), "applied.tar"), "applied.tar"),
    ] {
        let err = apply_to(&pair, &pair.reference("bomb"), &out, None)
            .await
            .unwrap_err();
        match err {
            DeltaError::TooLarge {
                index: 1,
                bound: Bound::InflatedDelta,
                limit,
            } => assert_eq!(limit, INFLATE_FLOOR),
            other => panic!("unexpected error: {other:?}"),
        }
        no_partial_output(&pair, name);
    }
}

#[tokio::test]
async fn a_gzip_bomb_in_the_source_stops_at_its_inflation_limit() {
    let pair = pair();
    let oci = OciDir::open(pair.dir.path().join("images")).unwrap();
    // A source image whose one layer is a tar of 128 MiB of zeros.
    let len = 128 * MIB;
    let mut layer = GzDeltaLayer::new(len);
    let zeros = vec![0u8; MIB as usize];
    for _ in 0..len / MIB {
        layer.put(&zeros);
    }
    let bomb = layer.finish();
    let blob = oci
        .write_blob(media_type::DOCKER_LAYER_GZIP, &bomb)
        .unwrap();
    // The DiffID is never reached: the limit stops the fetch first.
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [Digest::of(b"").to_string()]},
    });
    let config = oci
        .write_blob(
            media_type::DOCKER_CONFIG,
            &serde_json::to_vec(&config).unwrap(),
        )
        .unwrap();
    let manifest = Manifest::new(media_type::DOCKER_MANIFEST, config.clone(), vec![blob]);
    let desc = oci
        .write_blob(media_type::DOCKER_MANIFEST, &manifest.to_json())
        .unwrap();
    oci.tag(&desc, "bomb-source").unwrap();
    write_delta_for(
        &pair,
        &config.digest,
        "for-bomb",
        &[empty_layer(), empty_layer()],
    );

    let err = apply_from(
        &pair,
        "bomb-source",
        &pair.reference("for-bomb"),
        &pair.out("applied"),
        None,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            DeltaError::TooLarge {
                index: 0,
                bound: Bound::InflatedSource,
                limit: INFLATE_FLOOR
            }
        ),
        "{err:?}"
    );
    no_partial_output(&pair, "applied");

    // Raised above the layer's size, the fetch completes and the DiffID check refuses it.
    let err = apply_from(
        &pair,
        "bomb-source",
        &pair.reference("for-bomb"),
        &pair.out("applied"),
        Some(256 * MIB),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            DeltaError::DiffIdMismatch {
                role: bru_delta::Role::Source,
                index: 0,
                ..
            }
        ),
        "{err:?}"
    );
    no_partial_output(&pair, "applied");
}

/// A delta stream of `n` COPYs of `len` bytes at offset 0.
fn copies(n: usize, len: u32) -> Vec<u8> {
    let mut stream = bru_rsync::DELTA_MAGIC.to_vec();
    for _ in 0..n {
        stream.push(0x47); // COPY, 1-byte offset, 4-byte length
        stream.push(0);
        stream.extend_from_slice(&len.to_be_bytes());
    }
    stream.push(0); // END
    stream
}

fn gz_delta_layer(stream: &[u8]) -> Vec<u8> {
    let mut layer = GzDeltaLayer::new(stream.len() as u64);
    layer.put(stream);
    layer.finish()
}

#[tokio::test]
async fn a_million_copies_of_the_basis_stop_at_the_layer_limit() {
    let pair = pair();
    let basis_len = pair.basis().len() as u64;
    let stream = copies(1_000_000, basis_len as u32);
    write_delta(&pair, "copies", &[empty_layer(), gz_delta_layer(&stream)]);
    let err = apply_to(&pair, &pair.reference("copies"), &pair.out("applied"), None)
        .await
        .unwrap_err();
    match err {
        DeltaError::TooLarge {
            index: 1,
            bound: Bound::Layer,
            limit,
        } => assert_eq!(
            limit,
            COPY_FACTOR * basis_len.max(BASIS_FLOOR) + INFLATE_FLOOR
        ),
        other => panic!("unexpected error: {other:?}"),
    }
    no_partial_output(&pair, "applied");

    // A few whole-basis COPYs are within the limit: the apply then fails only the DiffID check.
    write_delta(
        &pair,
        "few",
        &[empty_layer(), gz_delta_layer(&copies(3, basis_len as u32))],
    );
    let err = apply_to(&pair, &pair.reference("few"), &pair.out("applied"), None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, DeltaError::RebuiltMismatch { index: 1, .. }),
        "{err:?}"
    );
    no_partial_output(&pair, "applied");
}

#[tokio::test]
async fn the_sum_of_the_rebuilt_layers_is_limited_too() {
    // Both layers change, so both are rebuilt; each fits the limit, the two together do not.
    let pair = Pair::new(
        vec![layer(&[("a".into(), noise(1, 50_000))])],
        vec![
            layer(&[("a".into(), noise(4, 50_000))]),
            layer(&[("b".into(), noise(5, 50_000))]),
        ],
    );
    create(
        &pair.reference("source"),
        &pair.reference("target"),
        &pair.out("delta"),
    )
    .await
    .unwrap();
    let sizes: Vec<u64> = pair.target_layers.iter().map(|l| l.len() as u64).collect();
    let limit = sizes[0].max(sizes[1]) + 1000;
    assert!(limit < sizes[0] + sizes[1]);
    let err = apply_to(&pair, &pair.out("delta"), &pair.out("applied"), Some(limit))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            DeltaError::TooLarge {
                index: 1,
                bound: Bound::Total,
                limit: l
            } if l == limit
        ),
        "{err:?}"
    );
    no_partial_output(&pair, "applied");
    // With room for both, the same delta applies.
    let info = apply_to(
        &pair,
        &pair.out("delta"),
        &pair.out("applied"),
        Some(sizes[0] + sizes[1]),
    )
    .await
    .unwrap();
    assert_eq!(info.image_id, pair.target.config.digest);
}

#[tokio::test]
async fn an_explicit_limit_lowers_or_raises_the_derived_one() {
    let pair = pair();
    create(
        &pair.reference("source"),
        &pair.reference("target"),
        &pair.out("delta"),
    )
    .await
    .unwrap();
    let rebuilt = pair.target_layers[1].len() as u64;

    // Derived limits: a real delta applies.
    let info = apply_to(&pair, &pair.out("delta"), &pair.out("default"), None)
        .await
        .unwrap();
    assert_eq!(info.image_id, pair.target.config.digest);

    // One byte less than the rebuilt layer: refused, nothing written.
    let err = apply_to(
        &pair,
        &pair.out("delta"),
        &pair.out("small"),
        Some(rebuilt - 1),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            DeltaError::TooLarge {
                index: 1,
                bound: Bound::Layer,
                limit
            } if limit == rebuilt - 1
        ),
        "{err:?}"
    );
    no_partial_output(&pair, "small");

    // Exactly the rebuilt size is enough.
    let info = apply_to(&pair, &pair.out("delta"), &pair.out("exact"), Some(rebuilt))
        .await
        .unwrap();
    assert_eq!(info.image_id, pair.target.config.digest);

    // Raised above the derived limit, the COPY bomb gets further: it then stops at the new
    // limit instead of the derived one.
    let basis_len = pair.basis().len() as u64;
    let stream = copies(1_000_000, basis_len as u32);
    write_delta(&pair, "copies", &[empty_layer(), gz_delta_layer(&stream)]);
    let raised = 80 * MIB;
    assert!(raised > COPY_FACTOR * basis_len.max(BASIS_FLOOR) + INFLATE_FLOOR);
    let err = apply_to(
        &pair,
        &pair.reference("copies"),
        &pair.out("raised"),
        Some(raised),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            DeltaError::TooLarge {
                bound: Bound::Layer,
                limit,
                ..
            } if limit == raised
        ),
        "{err:?}"
    );
    no_partial_output(&pair, "raised");
}
