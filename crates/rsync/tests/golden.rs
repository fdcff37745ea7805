//! Golden vectors: deltas made by Debian's `rdiff` (C librsync) must apply with our `patch`,
//! and our encoder's bytes for a fixed command sequence are pinned.

use std::fs;
use std::path::{Path, PathBuf};

use bru_rsync::{patch, DeltaWriter};

fn golden() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn cases() -> Vec<PathBuf> {
    let mut v: Vec<_> = fs::read_dir(golden())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("basis").is_file())
        .collect();
    v.sort();
    v
}

#[test]
fn rdiff_deltas_apply() {
    let cases = cases();
    assert_eq!(cases.len(), 5, "golden case folders");
    for dir in cases {
        let basis = fs::read(dir.join("basis")).unwrap();
        let target = fs::read(dir.join("target")).unwrap();
        for name in ["b512.rdiff-delta", "default.rdiff-delta"] {
            let delta = fs::read(dir.join(name)).unwrap();
            let mut out = Vec::new();
            let n = patch(&basis, &delta[..], &mut out)
                .unwrap_or_else(|e| panic!("{}/{name}: {e}", dir.display()));
            assert_eq!(n, target.len() as u64);
            assert!(out == target, "{}/{name}: output differs", dir.display());
        }
    }
}

#[test]
fn rdiff_deltas_have_copies_where_expected() {
    // Guards the vectors themselves: the "identical" case must be a single COPY.
    let delta = fs::read(golden().join("identical/b512.rdiff-delta")).unwrap();
    assert_eq!(
        delta,
        [0x72, 0x73, 0x02, 0x36, 0x46, 0x00, 0x23, 0x28, 0x00]
    );
}

/// The fixed command sequence whose encoding is pinned in `encoder.delta`.
fn fixed_sequence() -> Vec<u8> {
    let mut w = DeltaWriter::new(Vec::new()).unwrap();
    w.literal(b"Hello, ").unwrap();
    w.copy(0, 5).unwrap();
    w.copy(5, 3).unwrap(); // merged with the previous copy
    w.literal(&[b'x'; 64]).unwrap(); // longest short-form literal
    w.literal(&[b'y'; 65]).unwrap(); // shortest 1-byte-length literal
    w.copy(300, 2).unwrap(); // 2-byte offset, 1-byte length
    w.copy(70_000, 256).unwrap(); // 4-byte offset, 2-byte length
    w.literal(&[b'z'; 300]).unwrap(); // 2-byte length literal
    w.copy(1 << 32, 1).unwrap(); // 8-byte offset
    w.finish().unwrap()
}

#[test]
fn encoder_output_is_pinned() {
    let ours = fixed_sequence();
    let pinned = fs::read(golden().join("encoder.delta")).unwrap();
    assert!(ours == pinned, "encoder output changed: {ours:02x?}");
    // Spot-check the header of each command against the opcode table.
    assert_eq!(&ours[..5], &[0x72, 0x73, 0x02, 0x36, 7]);
    assert_eq!(&ours[12..15], &[0x45, 0, 8]);
    assert_eq!(ours[15], 0x40);
    assert_eq!(&ours[80..82], &[0x41, 65]);
    assert_eq!(&ours[147..151], &[0x49, 0x01, 0x2c, 2]);
    assert_eq!(&ours[151..158], &[0x4e, 0, 1, 0x11, 0x70, 1, 0]);
    assert_eq!(&ours[158..161], &[0x42, 1, 0x2c]);
    assert_eq!(&ours[461..], &[0x51, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0x00]);
}
