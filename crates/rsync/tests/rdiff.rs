//! Cross-checks with an independent decoder: Debian's `rdiff patch` (C librsync) must rebuild the
//! same bytes from the deltas we encode. `rdiff` is installed in CI; these tests fail if it is not.

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

use bru_rsync::{patch, DeltaWriter};

/// Runs `rdiff patch basis delta out` and returns the output bytes.
fn rdiff_patch(basis: &Path, delta: &[u8]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let (d, o) = (dir.path().join("delta"), dir.path().join("out"));
    fs::write(&d, delta).unwrap();
    let status = Command::new("rdiff")
        .arg("patch")
        .arg(basis)
        .arg(&d)
        .arg(&o)
        .status()
        .unwrap_or_else(|e| panic!("cannot run `rdiff` (install Debian's rdiff package): {e}"));
    assert!(status.success(), "rdiff patch failed: {status}");
    fs::read(o).unwrap()
}

#[test]
fn rdiff_applies_the_pinned_encoder_vector() {
    // A sparse basis of 4 GiB + 1 byte, so the 8-byte-offset COPY is in range.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("basis");
    let f = File::create(&path).unwrap();
    f.set_len((1 << 32) + 1).unwrap();
    f.write_all_at(b"abcdefgh", 0).unwrap();
    f.write_all_at(b"PQ", 300).unwrap();
    f.write_all_at(&[b'R'; 256], 70_000).unwrap();
    f.write_all_at(b"!", 1 << 32).unwrap();
    drop(f);
    let delta =
        fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/encoder.delta")).unwrap();
    let expected = [
        &b"Hello, abcdefgh"[..],
        &[b'x'; 64],
        &[b'y'; 65],
        b"PQ",
        &[b'R'; 256],
        &[b'z'; 300],
        b"!",
    ]
    .concat();
    assert!(rdiff_patch(&path, &delta) == expected, "rdiff output");
    let mut ours = Vec::new();
    patch(&File::open(&path).unwrap(), &delta[..], &mut ours).unwrap();
    assert!(ours == expected, "our patch output");
}

#[test]
fn rdiff_applies_every_width_combination() {
    // One COPY per (offset width, length width) pair and literals of every header form.
    let mut basis = vec![0u8; 70_000 + 65_536];
    for (i, b) in basis.iter_mut().enumerate() {
        *b = (i * 7 % 251) as u8;
    }
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(&basis).unwrap();
    let mut w = DeltaWriter::new(Vec::new()).unwrap();
    let mut expected = Vec::new();
    for offset in [3u64, 300, 70_000] {
        for len in [5u64, 256, 65_536] {
            if offset + len > basis.len() as u64 {
                continue;
            }
            w.copy(offset, len).unwrap();
            expected.extend_from_slice(&basis[offset as usize..(offset + len) as usize]);
            let lit = vec![(offset + len) as u8; (len as usize % 300) + 1];
            w.literal(&lit).unwrap();
            expected.extend_from_slice(&lit);
        }
    }
    let delta = w.finish().unwrap();
    assert!(rdiff_patch(f.path(), &delta) == expected);
    let mut ours = Vec::new();
    patch(&basis, &delta[..], &mut ours).unwrap();
    assert!(ours == expected);
}
