//! Bad inputs give clear, structured errors and publish nothing.

mod support;

use std::collections::BTreeMap;

use bru_delta::{DeltaError, Role};
use bru_oci::{ImageSpec, OciDir, OciError};
use bru_rsync::{DeltaWriter, PatchError};
use support::{apply, create, layer, noise, Pair};

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

fn blob_path(pair: &Pair, digest: &bru_oci::Digest) -> std::path::PathBuf {
    pair.dir
        .path()
        .join("images/blobs/sha256")
        .join(digest.hex())
}

/// Writes a hand-made "delta image" tagged `tag` next to the pair's images.
fn handmade_delta(pair: &Pair, tag: &str, base: &str, layers: Vec<Vec<u8>>) {
    let oci = OciDir::open(pair.dir.path().join("images")).unwrap();
    let mut spec = ImageSpec::new(layers);
    spec.labels = BTreeMap::from([
        ("io.resin.delta.base".to_owned(), base.to_owned()),
        (
            "io.resin.delta.config".to_owned(),
            String::from_utf8(pair.target.config_bytes.clone()).unwrap(),
        ),
    ]);
    oci.write_image(tag, &spec).unwrap();
}

/// Writes a hand-made delta for the pair's source (tag `bad`) and applies it; returns the error.
async fn apply_handmade(pair: &Pair, layers: Vec<Vec<u8>>) -> DeltaError {
    let base = pair.source.config.digest.to_string();
    handmade_delta(pair, "bad", &base, layers);
    apply(
        &pair.reference("source"),
        &pair.reference("bad"),
        &pair.out("applied"),
    )
    .await
    .unwrap_err()
}

fn delta_tar(stream: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    bru_delta::layer::write_delta_tar(stream, stream.len() as u64, &mut out).unwrap();
    out
}

fn nothing_published(pair: &Pair, name: &str) {
    let dir = pair.dir.path().join(name);
    if let Ok(oci) = OciDir::open(&dir) {
        assert!(
            oci.resolve(Some(name)).is_err(),
            "an image was published to {name} despite the error"
        );
    }
}

#[tokio::test]
async fn corrupt_source_blob_is_a_digest_mismatch_and_publishes_nothing() {
    let pair = pair();
    let path = blob_path(&pair, &pair.source.layers[1].digest);
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&path, bytes).unwrap();
    let err = create(
        &pair.reference("source"),
        &pair.reference("target"),
        &pair.out("delta"),
    )
    .await
    .unwrap_err();
    match &err {
        DeltaError::Layer {
            role: Role::Source,
            index: 1,
            source,
        } => {
            assert!(
                matches!(
                    source,
                    OciError::DigestMismatch { .. } | OciError::Stream(_)
                ),
                "{source:?}"
            )
        }
        other => panic!("unexpected error: {other:?}"),
    }
    nothing_published(&pair, "delta");
}

#[tokio::test]
async fn truncated_delta_blob_fails_apply_and_publishes_nothing() {
    let pair = pair();
    create(
        &pair.reference("source"),
        &pair.reference("target"),
        &pair.out("delta"),
    )
    .await
    .unwrap();
    let oci = OciDir::open(pair.dir.path().join("delta")).unwrap();
    let manifest = oci.resolve(Some("delta")).unwrap();
    let m: serde_json::Value = serde_json::from_slice(&oci.read_blob(&manifest).unwrap()).unwrap();
    let digest: bru_oci::Digest = m["layers"][1]["digest"].as_str().unwrap().parse().unwrap();
    let path = pair
        .dir
        .path()
        .join("delta/blobs/sha256")
        .join(digest.hex());
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let err = apply(
        &pair.reference("source"),
        &pair.out("delta"),
        &pair.out("applied"),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            DeltaError::Layer {
                role: Role::Delta,
                index: 1,
                ..
            }
        ),
        "{err:?}"
    );
    nothing_published(&pair, "applied");
}

#[tokio::test]
async fn delta_for_another_base_is_refused() {
    let pair = pair();
    create(
        &pair.reference("source"),
        &pair.reference("target"),
        &pair.out("delta"),
    )
    .await
    .unwrap();
    // Apply to the target instead of the source.
    let err = apply(
        &pair.reference("target"),
        &pair.out("delta"),
        &pair.out("applied"),
    )
    .await
    .unwrap_err();
    match err {
        DeltaError::BaseMismatch { expected, actual } => {
            assert_eq!(expected, pair.source.config.digest.to_string());
            assert_eq!(actual, pair.target.config.digest);
        }
        other => panic!("unexpected error: {other:?}"),
    }
}

#[tokio::test]
async fn out_of_range_copy_is_rejected() {
    let pair = pair();
    let basis_len = pair.basis().len() as u64;
    let mut w = DeltaWriter::new(Vec::new()).unwrap();
    w.copy(basis_len - 10, 20).unwrap();
    let stream = w.finish().unwrap();
    let err = apply_handmade(
        &pair,
        vec![bru_delta::layer::EMPTY_TAR.to_vec(), delta_tar(&stream)],
    )
    .await;
    match err {
        DeltaError::Patch {
            index: 1,
            source:
                PatchError::CopyOutOfRange {
                    copy_offset,
                    len,
                    basis_len: b,
                    ..
                },
        } => {
            assert_eq!((copy_offset, len, b), (basis_len - 10, 20, basis_len));
        }
        other => panic!("unexpected error: {other:?}"),
    }
    nothing_published(&pair, "applied");
}

#[tokio::test]
async fn bogus_opcode_is_rejected() {
    let pair = pair();
    let stream = [0x72, 0x73, 0x02, 0x36, 0x60, 0x00];
    let err = apply_handmade(
        &pair,
        vec![bru_delta::layer::EMPTY_TAR.to_vec(), delta_tar(&stream)],
    )
    .await;
    assert!(
        matches!(
            err,
            DeltaError::Patch {
                index: 1,
                source: PatchError::BogusOpcode {
                    opcode: 0x60,
                    offset: 4
                }
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn wrong_layer_count_is_rejected_like_the_engine_does() {
    let pair = pair();
    let err = apply_handmade(&pair, vec![bru_delta::layer::EMPTY_TAR.to_vec()]).await;
    assert!(
        matches!(
            err,
            DeltaError::LayerCount {
                role: Role::Delta,
                layers: 1,
                diff_ids: 2
            }
        ),
        "{err:?}"
    );
    let err = bru_delta::inspect(&*support_source(&pair, "bad").await)
        .await
        .unwrap_err();
    assert!(matches!(err, DeltaError::LayerCount { .. }), "{err:?}");
}

#[tokio::test]
async fn valid_stream_with_wrong_content_fails_the_diff_id_check() {
    let pair = pair();
    let mut w = DeltaWriter::new(Vec::new()).unwrap();
    w.literal(b"not the target layer").unwrap();
    let stream = w.finish().unwrap();
    let err = apply_handmade(
        &pair,
        vec![bru_delta::layer::EMPTY_TAR.to_vec(), delta_tar(&stream)],
    )
    .await;
    match err {
        DeltaError::RebuiltMismatch {
            index: 1, expected, ..
        } => assert_eq!(expected, pair.target.diff_ids[1]),
        other => panic!("unexpected error: {other:?}"),
    }
    nothing_published(&pair, "applied");
}

#[tokio::test]
async fn empty_tar_where_a_delta_is_needed_is_rejected() {
    let pair = pair();
    let empty = bru_delta::layer::EMPTY_TAR.to_vec();
    let err = apply_handmade(&pair, vec![empty.clone(), empty]).await;
    assert!(
        matches!(
            err,
            DeltaError::LayerTar {
                index: 1,
                source: bru_delta::layer::LayerTarError::NoEntry
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn an_ordinary_image_is_not_a_delta() {
    let pair = pair();
    let err = apply(
        &pair.reference("source"),
        &pair.reference("target"),
        &pair.out("applied"),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            DeltaError::Config(bru_delta::config::ConfigError::MissingLabel { .. })
        ),
        "{err:?}"
    );
}

async fn support_source(pair: &Pair, tag: &str) -> Box<dyn bru_oci::ImageSource> {
    bru_oci::open_source(&pair.reference(tag), &bru_oci::RegistryOptions::default())
        .await
        .unwrap()
}
