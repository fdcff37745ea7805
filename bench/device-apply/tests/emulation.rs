//! The emulation against hand-made layers and deltas, bru-rsync's decoder and Debian's rdiff.

use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;

use bru_device_apply::{
    apply, apply_with, delta_stream, ApplyOptions, Counters, DeltaKind, DeviceBasis, Error,
    PipeModel, ReadModel, Segment,
};
use sha2::{Digest, Sha256};
use tar::{EntryType, Header};

// ---------------------------------------------------------------- fixtures

/// xorshift64: reproducible random-ish bytes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn file_header(size: u64, kind: EntryType) -> Header {
    let mut h = Header::new_gnu();
    h.set_size(size);
    h.set_mode(0o644);
    h.set_mtime(1_700_000_000);
    h.set_entry_type(kind);
    h
}

/// A tar of regular files built with the `tar` crate (GNU headers, end-of-archive blocks).
fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = file_header(data.len() as u64, EntryType::Regular);
        b.append_data(&mut h, name, *data).unwrap();
    }
    b.into_inner().unwrap()
}

/// A tar with every kind of member the index must handle.
fn varied_tar() -> Vec<u8> {
    let mut rng = Rng(7);
    let mut b = tar::Builder::new(Vec::new());
    let mut dir = file_header(0, EntryType::Directory);
    b.append_data(&mut dir, "usr/lib/", &[][..]).unwrap();
    let big = rng.bytes(3000);
    let mut h = file_header(big.len() as u64, EntryType::Regular);
    b.append_data(&mut h, "usr/lib/big.bin", &big[..]).unwrap();
    let exact = rng.bytes(1024); // no padding after it
    let mut h = file_header(1024, EntryType::Regular);
    b.append_data(&mut h, "usr/lib/exact.bin", &exact[..])
        .unwrap();
    let mut h = file_header(0, EntryType::Regular);
    b.append_data(&mut h, "usr/lib/empty", &[][..]).unwrap();
    // A GNU long name ('L' record): the tar crate writes one for names over 100 bytes.
    let long = format!("usr/lib/{}/file.py", "d".repeat(120));
    let mut h = file_header(5, EntryType::Regular);
    b.append_data(&mut h, &long, &b"hello"[..]).unwrap();
    // A PAX record ('x') carrying the path.
    let pax_path = format!("usr/share/{}/pax.txt", "p".repeat(110));
    let rec = pax_record(&pax_path);
    let mut x = Header::new_ustar();
    x.set_path("PaxHeaders/pax.txt").unwrap();
    x.set_size(rec.len() as u64);
    x.set_entry_type(EntryType::XHeader);
    x.set_mode(0o644);
    x.set_cksum();
    b.append(&x, rec.as_bytes()).unwrap();
    let mut h = Header::new_ustar();
    h.set_path("usr/share/pax.txt").unwrap();
    h.set_size(7);
    h.set_mode(0o644);
    h.set_entry_type(EntryType::Regular);
    h.set_cksum();
    b.append(&h, &b"pax!pax"[..]).unwrap();
    let mut l = file_header(0, EntryType::Symlink);
    b.append_link(&mut l, "usr/lib/link", "big.bin").unwrap();
    let mut l = file_header(0, EntryType::Link);
    b.append_link(&mut l, "usr/lib/hard", "usr/lib/big.bin")
        .unwrap();
    b.into_inner().unwrap()
}

/// A PAX record "<len> path=<p>\n" whose length prefix counts itself.
fn pax_record(path: &str) -> String {
    let body = format!(" path={path}\n");
    let mut len = body.len() + 1;
    while (len.to_string().len() + body.len()) != len {
        len = len.to_string().len() + body.len();
    }
    format!("{len}{body}")
}

fn sha256(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

fn extract(layers: &[&[u8]]) -> (tempfile::TempDir, DeviceBasis) {
    let dir = tempfile::tempdir().unwrap();
    let basis = DeviceBasis::extract(layers.iter().copied(), dir.path()).unwrap();
    (dir, basis)
}

/// Encoder for hand-made deltas.
struct Delta(Vec<u8>);

/// log2 of the narrowest of the widths 1, 2, 4, 8 bytes that holds `v`.
fn width(v: u64) -> u8 {
    match v {
        0..=0xff => 0,
        0x100..=0xffff => 1,
        0x1_0000..=0xffff_ffff => 2,
        _ => 3,
    }
}

impl Delta {
    fn new() -> Self {
        Delta(bru_rsync::DELTA_MAGIC.to_vec())
    }

    fn be(&mut self, v: u64, w: u8) {
        let n = 1usize << w;
        self.0.extend_from_slice(&v.to_be_bytes()[8 - n..]);
    }

    fn literal(mut self, data: &[u8]) -> Self {
        let len = data.len() as u64;
        if (1..=64).contains(&len) {
            self.0.push(len as u8);
        } else {
            let w = width(len);
            self.0.push(0x41 + w);
            self.be(len, w);
        }
        self.0.extend_from_slice(data);
        self
    }

    fn copy(mut self, offset: u64, len: u64) -> Self {
        let (ow, lw) = (width(offset), width(len));
        self.0.push(0x45 + 4 * ow + lw);
        self.be(offset, ow);
        self.be(len, lw);
        self
    }

    fn end(mut self) -> Vec<u8> {
        self.0.push(0);
        self.0
    }
}

/// A tiny independent parser: (COPY count, LITERAL count, COPY bytes, LITERAL bytes).
fn count_commands(d: &[u8]) -> (u64, u64, u64, u64) {
    assert_eq!(&d[..4], b"rs\x026");
    let (mut i, mut c) = (4usize, (0, 0, 0, 0));
    let int = |b: &[u8]| b.iter().fold(0u64, |v, &x| v << 8 | u64::from(x));
    loop {
        let op = d[i];
        i += 1;
        match op {
            0 => return c,
            1..=0x40 => {
                c.1 += 1;
                c.3 += u64::from(op);
                i += usize::from(op);
            }
            0x41..=0x44 => {
                let w = 1usize << (op - 0x41);
                let len = int(&d[i..i + w]);
                c.1 += 1;
                c.3 += len;
                i += w + len as usize;
            }
            0x45..=0x54 => {
                let (ow, lw) = (1usize << ((op - 0x45) / 4), 1usize << ((op - 0x45) % 4));
                c.0 += 1;
                c.2 += int(&d[i + ow..i + ow + lw]);
                i += ow + lw;
            }
            _ => panic!("bad opcode {op:#x}"),
        }
    }
}

fn assert_commands_match(delta: &[u8], c: &Counters) {
    let (copies, literals, copy_bytes, literal_bytes) = count_commands(delta);
    assert_eq!(
        (
            c.copy_commands,
            c.literal_commands,
            c.copy_bytes,
            c.literal_bytes
        ),
        (copies, literals, copy_bytes, literal_bytes)
    );
}

// ---------------------------------------------------------------- the layer index

#[test]
fn segments_reassemble_the_layer_byte_for_byte() {
    let t = varied_tar();
    let (dir, basis) = extract(&[&t]);
    let layer = &basis.layers()[0];
    let mut again = Vec::new();
    layer.reassemble(&mut again).unwrap();
    assert_eq!(again, t);
    assert_eq!(layer.len(), t.len() as u64);
    // File segments: big.bin, exact.bin, the long-named file, pax.txt; the empty file, links and
    // the directory are headers only.
    let files: Vec<(String, u64)> = layer
        .segments()
        .iter()
        .filter_map(|s| match s {
            Segment::File { path, size } => Some((
                path.strip_prefix(dir.path().join("layer-0"))
                    .unwrap()
                    .display()
                    .to_string(),
                *size,
            )),
            Segment::Bytes(_) => None,
        })
        .collect();
    let long = format!("usr/lib/{}/file.py", "d".repeat(120));
    let pax = format!("usr/share/{}/pax.txt", "p".repeat(110));
    assert_eq!(
        files,
        [
            ("usr/lib/big.bin".to_owned(), 3000),
            ("usr/lib/exact.bin".to_owned(), 1024),
            (long.clone(), 5),
            (pax.clone(), 7)
        ]
    );
    assert_eq!(layer.file_count(), 4);
    let root = dir.path().join("layer-0");
    assert_eq!(std::fs::read(root.join(&long)).unwrap(), b"hello");
    assert_eq!(std::fs::read(root.join(&pax)).unwrap(), b"pax!pax");
    assert_eq!(std::fs::read(root.join("usr/lib/empty")).unwrap(), b"");
    assert!(!root.join("usr/lib/link").exists());
    assert!(!root.join("usr/lib/hard").exists());
    assert!(!root.join("usr/share/pax.txt").exists());
    // Segments alternate: no two Bytes in a row, none empty.
    for w in layer.segments().windows(2) {
        assert!(!matches!(w, [Segment::Bytes(_), Segment::Bytes(_)]));
    }
    assert!(layer.segments().iter().all(|s| !s.is_empty()));
}

#[test]
fn several_layers_and_trailing_bytes_round_trip() {
    let mut a = tar_of(&[("a", b"x"), ("dir/b", &[9u8; 600])]);
    a.extend_from_slice(&[0u8; 10240 - 2048]); // record padding, as GNU tar writes it
    let b = tar_of(&[("a", b"shadowed in the upper layer")]);
    let (_dir, basis) = extract(&[&a, &b]);
    assert_eq!(basis.len(), (a.len() + b.len()) as u64);
    for (l, t) in basis.layers().iter().zip([&a, &b]) {
        let mut v = Vec::new();
        l.reassemble(&mut v).unwrap();
        assert_eq!(&v, t);
    }
}

/// A raw ustar header block with a valid checksum.
fn raw_header(name: &[u8], size: u64, typeflag: u8) -> Vec<u8> {
    let mut h = vec![0u8; 512];
    h[..name.len()].copy_from_slice(name);
    h[100..108].copy_from_slice(b"0000644\0");
    h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
    h[136..148].copy_from_slice(b"14712345670\0");
    h[156] = typeflag;
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

fn extract_err(layers: &[&[u8]]) -> Error {
    let dir = tempfile::tempdir().unwrap();
    DeviceBasis::extract(layers.iter().copied(), dir.path()).unwrap_err()
}

#[test]
fn duplicate_paths_are_refused() {
    let t = tar_of(&[("etc/x", b"1"), ("etc/y", b"2"), ("./etc/x", b"3")]);
    let e = extract_err(&[&t]);
    assert!(
        matches!(&e, Error::DuplicatePath { layer: 0, path } if path == "etc/x"),
        "{e:?}"
    );
    assert!(e.to_string().contains("tar-split refuses"));
    // A directory and a file of the same path, in the second layer.
    let ok = tar_of(&[("etc/x", b"1")]);
    let t = [raw_header(b"d/", 0, b'5'), raw_header(b"d", 0, b'0')].concat();
    assert!(matches!(
        extract_err(&[&ok, &t]),
        Error::DuplicatePath { layer: 1, .. }
    ));
    // The same path in two layers is fine (an upper layer shadows a lower one).
    extract(&[&ok, &ok]);
}

#[test]
fn bad_layers_are_errors_not_panics() {
    let mut escape = raw_header(b"a/../../etc/passwd", 1, b'0');
    escape.extend_from_slice(&[b'x'; 512]);
    assert!(matches!(
        extract_err(&[&escape]),
        Error::PathEscape { layer: 0, .. }
    ));
    let mut bad_sum = raw_header(b"f", 1, b'0');
    bad_sum[0] = b'g';
    assert!(matches!(
        extract_err(&[&bad_sum]),
        Error::BadHeader {
            layer: 0,
            offset: 0
        }
    ));
    let t = tar_of(&[("f", &[1u8; 2000])]);
    for cut in [100, 512, 1500, 2500] {
        assert!(
            matches!(extract_err(&[&t[..cut]]), Error::TruncatedLayer { .. }),
            "cut {cut}"
        );
    }
    let sparse = raw_header(b"s", 10, b'S');
    assert!(matches!(
        extract_err(&[&sparse]),
        Error::UnsupportedMember { typeflag: 'S', .. }
    ));
    // Garbage of every small length: an error or an empty layer, never a panic.
    let mut rng = Rng(99);
    for n in 0..1200 {
        let junk = rng.bytes(n);
        let dir = tempfile::tempdir().unwrap();
        let _ = DeviceBasis::extract([&junk[..]], dir.path());
    }
}

// ---------------------------------------------------------------- hand-made deltas

/// Two layers. Layer 0: a (10000 B), b (20000 B), c (30000 B); layer 1: d (5000 B), e (empty).
/// With one 512-byte GNU header per file and 1024 end-of-archive bytes from the tar crate:
/// layer 0: a header 0, a body 512..10512, b header 10752, b body 11264..31264, c header 31744,
/// c body 32256..62256, end of archive 62464..63488; layer 1 starts at 63488: d header,
/// d body 64000..69000.
fn two_layers() -> (Vec<u8>, Vec<u8>) {
    let mut rng = Rng(1);
    let (a, b, c, d) = (
        rng.bytes(10_000),
        rng.bytes(20_000),
        rng.bytes(30_000),
        rng.bytes(5_000),
    );
    (
        tar_of(&[("a", &a), ("b", &b), ("c", &c)]),
        tar_of(&[("d", &d), ("e", b"")]),
    )
}

fn run(basis: &DeviceBasis, model: ReadModel, delta: &[u8]) -> bru_device_apply::ApplyReport {
    let r = apply_with(basis, delta, &ApplyOptions::with_read_model(model)).unwrap();
    assert_commands_match(delta, &r.counters);
    r
}

#[test]
fn layout_of_the_two_layers() {
    let (l0, l1) = two_layers();
    assert_eq!((l0.len(), l1.len()), (63_488, 512 + 5120 + 512 + 1024));
    let (_d, basis) = extract(&[&l0, &l1]);
    let starts: Vec<u64> = basis.layers()[0]
        .segments()
        .iter()
        .scan(0u64, |o, s| {
            let at = *o;
            *o += s.len();
            Some(at)
        })
        .collect();
    assert_eq!(starts, [0, 512, 10_512, 11_264, 31_264, 32_256, 62_256]);
}

#[test]
fn copy_of_40k_across_three_files() {
    let (l0, l1) = two_layers();
    let (_d, basis) = extract(&[&l0, &l1]);
    let all = [&l0[..], &l1[..]].concat();
    // COPY(5512, 40960): from inside a (offset 5000 of its body) to 46472, inside c.
    let delta = Delta::new().copy(5512, 40_960).end();
    let want = sha256(&all[5512..5512 + 40_960]);

    // Direct: the COPY buffer is 32 KiB, so two basis reads: 5512..38280 touches a, b and c
    // (3 opens), 38280..46472 touches c only (1 open). Two pipe writes.
    let r = run(&basis, ReadModel::Direct, &delta);
    assert_eq!(r.diff_id, want);
    let c = r.counters;
    assert_eq!(
        (c.basis_reads, c.layer_reads, c.file_opens, c.pipe_writes),
        (2, 2, 4, 2)
    );
    assert_eq!((c.basis_bytes_read, c.output_bytes), (40_960, 40_960));
    // File bytes: a 5512..10512, b whole, c 32256..38280, then c again for 8192.
    assert_eq!(c.file_bytes_read, 5000 + 20_000 + 6024 + 8192);

    // GoBuffer: the first 32 KiB read reaches the layer as reads of 512, 512, 1024, 2048, 4096,
    // 8192 and 16384 bytes: 5512.., 6024.., 6536.., 7560.. all in a (1 open each); 9608..13704
    // spans a and b (2); 13704..21896 in b (1); 21896..38280 spans b and c (2): 9 opens. The
    // second read (8192 bytes, 38280..46472, all in c) is 512, 512, 1024, 2048, 4096: 5 opens.
    let r = run(&basis, ReadModel::GoBuffer, &delta);
    assert_eq!(r.diff_id, want);
    let c = r.counters;
    assert_eq!(
        (c.basis_reads, c.layer_reads, c.file_opens, c.pipe_writes),
        (2, 12, 14, 2)
    );
}

#[test]
fn copy_across_the_layer_boundary() {
    let (l0, l1) = two_layers();
    let (_d, basis) = extract(&[&l0, &l1]);
    let all = [&l0[..], &l1[..]].concat();
    // COPY(62000, 2100): the last 256 bytes of c, c's padding, layer 0's end of archive,
    // layer 1's d header and the first 100 bytes of d.
    let delta = Delta::new().copy(62_000, 2100).end();
    let want = sha256(&all[62_000..64_100]);

    // Direct: one basis read, one layer read per layer; opens c and d.
    let c = run(&basis, ReadModel::Direct, &delta).counters;
    assert_eq!((c.basis_reads, c.layer_reads, c.file_opens), (1, 2, 2));

    // GoBuffer (buffer 2100): 512 at 62000 (c: 1 open), 512 at 62512 (padding/end: 0), 1024
    // asked at 63024 returns the 464 bytes left in layer 0 (0 opens), a read at layer 0's end
    // returns 0 (EOF), then layer 1: 560 bytes (header + 48 of d: 1 open) and, after the
    // buffer grows, the last 52 bytes (d: 1 open). 6 layer reads, 3 opens.
    let r = run(&basis, ReadModel::GoBuffer, &delta);
    assert_eq!(r.diff_id, want);
    let c = r.counters;
    assert_eq!((c.basis_reads, c.layer_reads, c.file_opens), (1, 6, 3));
}

#[test]
fn literal_only_and_header_only_copies() {
    let (l0, l1) = two_layers();
    let (_d, basis) = extract(&[&l0, &l1]);
    let all = [&l0[..], &l1[..]].concat();
    let mut rng = Rng(5);
    let (small, big) = (rng.bytes(100), rng.bytes(70_000));
    let delta = Delta::new().literal(&small).literal(&big).end();
    for model in [ReadModel::Direct, ReadModel::GoBuffer] {
        let r = run(&basis, model, &delta);
        assert_eq!(r.diff_id, sha256(&[&small[..], &big[..]].concat()));
        let c = r.counters;
        // 100 bytes in one write, 70000 in 32768 + 32768 + 4464.
        assert_eq!((c.pipe_writes, c.basis_reads, c.file_opens), (4, 0, 0));
        assert_eq!(c.delta_bytes, delta.len() as u64);
    }
    // a's header, then b's padding and header, then the end of layer 0: bytes from memory.
    let delta = Delta::new()
        .copy(0, 512)
        .copy(10_512, 752)
        .copy(62_464, 1024)
        .end();
    for model in [ReadModel::Direct, ReadModel::GoBuffer] {
        let r = run(&basis, model, &delta);
        let want = [&all[..512], &all[10_512..11_264], &all[62_464..63_488]].concat();
        assert_eq!(r.diff_id, sha256(&want));
        assert_eq!(r.counters.file_opens, 0);
        assert_eq!(r.counters.basis_reads, 3);
    }
}

#[test]
fn zero_length_commands_are_accepted_and_counted() {
    let (l0, l1) = two_layers();
    let (_d, basis) = extract(&[&l0, &l1]);
    let mut delta = Delta::new().copy(0, 0).copy(1 << 40, 0).end();
    delta.splice(4..4, [0x41, 0]); // LITERAL with a 1-byte length of 0
    let r = apply(&basis, &delta[..]).unwrap();
    assert_eq!(r.diff_id, sha256(b""));
    let c = r.counters;
    assert_eq!((c.copy_commands, c.literal_commands), (2, 1));
    assert_eq!((c.basis_reads, c.pipe_writes, c.file_opens), (0, 0, 0));
}

#[test]
fn bad_deltas_are_errors_not_panics() {
    let (l0, l1) = two_layers();
    let (dir, basis) = extract(&[&l0, &l1]);
    let len = basis.len();
    let err = |d: &[u8]| apply(&basis, d).unwrap_err();
    assert!(matches!(err(b"rs\x016\0"), Error::BadMagic { found } if found == b"rs\x016"));
    assert!(matches!(err(b"rs"), Error::BadMagic { found } if found == b"rs"));
    let full = Delta::new().literal(b"abc").copy(100, 700).end();
    for cut in 4..full.len() {
        assert!(
            matches!(err(&full[..cut]), Error::Truncated { offset } if offset == cut as u64),
            "cut {cut}"
        );
    }
    for op in [0x55, 0x80, 0xff] {
        let mut d = Delta::new().literal(b"x").end();
        d.insert(6, op);
        assert!(matches!(
            err(&d),
            Error::ReservedOpcode { opcode, offset: 6 } if opcode == op
        ));
    }
    let past = Delta::new().copy(len, 1).end();
    let e = err(&past);
    assert!(matches!(e, Error::CopyStartsPastEnd { .. }), "{e:?}");
    assert!(e.to_string().contains("hangs"));
    assert!(matches!(
        err(&Delta::new().copy(len - 10, 11).end()),
        Error::CopyPastEnd { .. }
    ));
    assert!(matches!(
        err(&Delta::new().copy(u64::MAX, 2).end()),
        Error::CopyStartsPastEnd { .. }
    ));
    // A file that disappeared from the layer directory.
    std::fs::remove_file(dir.path().join("layer-0/b")).unwrap();
    assert!(matches!(
        err(&Delta::new().copy(11_264, 10).end()),
        Error::ReadBasisFile { .. }
    ));
    // Bytes after END are ignored, as librsync-go does.
    let mut trailing = Delta::new().literal(b"ok").end();
    trailing.extend_from_slice(b"junk");
    assert_eq!(apply(&basis, &trailing[..]).unwrap().diff_id, sha256(b"ok"));
}

// ---------------------------------------------------------------- real deltas

/// A source image of two layers and a target layer with about 5 % of the files changed.
fn realistic() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let mut rng = Rng(42);
    let names: Vec<String> = (0..60).map(|i| format!("usr/lib/pkg{i}/mod.py")).collect();
    let data: Vec<Vec<u8>> = (0..60)
        .map(|i| {
            let n = 200 + (rng.next() % 9000) as usize;
            let mut v = rng.bytes(n);
            v[0] = i as u8;
            v
        })
        .collect();
    let entries: Vec<(&str, &[u8])> = names
        .iter()
        .map(String::as_str)
        .zip(data.iter().map(Vec::as_slice))
        .collect();
    let l0 = tar_of(&entries[..30]);
    let l1 = tar_of(&entries[30..]);
    let mut changed = data.clone();
    for (i, v) in changed.iter_mut().enumerate() {
        if i % 20 == 3 {
            let at = v.len() / 2;
            v[at..at + 50].copy_from_slice(&rng.bytes(50));
        }
    }
    let target: Vec<(&str, &[u8])> = names
        .iter()
        .map(String::as_str)
        .zip(changed.iter().map(Vec::as_slice))
        .collect();
    (l0, l1, tar_of(&target))
}

#[test]
fn agrees_with_bru_rsync_patch() {
    let (l0, l1, target) = realistic();
    let basis_bytes = [&l0[..], &l1[..]].concat();
    let index = bru_rsync::BasisIndex::new(&basis_bytes, bru_rsync::MatchOptions::default());
    let hints = bru_rsync::tar::hints(&basis_bytes, &target);
    let mut delta = Vec::new();
    bru_rsync::diff(&index, &target, &hints, &mut delta).unwrap();
    let mut patched = Vec::new();
    bru_rsync::patch(&basis_bytes[..], &delta[..], &mut patched).unwrap();
    assert_eq!(patched, target);

    let (_d, basis) = extract(&[&l0, &l1]);
    for model in [ReadModel::Direct, ReadModel::GoBuffer] {
        let r = run(&basis, model, &delta);
        assert_eq!(r.diff_id, sha256(&target));
        for pipe in [PipeModel::Inline, PipeModel::Thread] {
            let opts = ApplyOptions::with_read_model(model).pipe_model(pipe);
            let other = apply_with(&basis, &delta[..], &opts).unwrap();
            assert_eq!(
                (other.diff_id.as_str(), other.counters),
                (r.diff_id.as_str(), r.counters),
                "{pipe:?}"
            );
        }
        let c = r.counters;
        assert_eq!(c.output_bytes, target.len() as u64);
        assert_eq!(c.basis_bytes_read, c.copy_bytes);
        assert_eq!(c.copy_bytes + c.literal_bytes, target.len() as u64);
        assert!(c.copy_commands > 0 && c.literal_commands > 0);
        assert!(c.file_opens >= c.copy_commands / 2);
    }
}

#[test]
fn delta_inputs_are_recognised_by_magic() {
    let (l0, l1, target) = realistic();
    let basis_bytes = [&l0[..], &l1[..]].concat();
    let index = bru_rsync::BasisIndex::new(&basis_bytes, bru_rsync::MatchOptions::default());
    let mut raw = Vec::new();
    bru_rsync::diff(&index, &target, &[], &mut raw).unwrap();
    let gz = |b: &[u8]| {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(b).unwrap();
        e.finish().unwrap()
    };
    let layer_tar = tar_of(&[("delta", &raw)]);
    let (_d, basis) = extract(&[&l0, &l1]);
    let cases = [
        (raw.clone(), DeltaKind::Raw),
        (gz(&raw), DeltaKind::GzipRaw),
        (layer_tar.clone(), DeltaKind::Tar),
        (gz(&layer_tar), DeltaKind::GzipTar),
    ];
    for (bytes, kind) in cases {
        let s = delta_stream(&bytes[..]).unwrap();
        assert_eq!(s.kind, kind);
        let r = apply(&basis, s.stream.unwrap()).unwrap();
        assert_eq!(r.diff_id, sha256(&target), "{kind:?}");
        assert_commands_match(&raw, &r.counters);
    }
    let empty = gz(&tar_of(&[]));
    let s = delta_stream(&empty[..]).unwrap();
    assert_eq!(s.kind, DeltaKind::GzipTar);
    assert!(s.stream.is_none());
    assert!(delta_stream(&b""[..]).unwrap().stream.is_none());
    assert!(delta_stream(&b"neither"[..]).is_err());
    let junk = [7u8; 600];
    assert!(delta_stream(&junk[..]).is_err());
}

#[test]
fn applies_an_rdiff_delta() {
    let rdiff = Path::new("/usr/bin/rdiff");
    if !rdiff.exists() {
        eprintln!("SKIPPED: /usr/bin/rdiff is not installed");
        return;
    }
    let (l0, l1, target) = realistic();
    let work = tempfile::tempdir().unwrap();
    let p = |n: &str| work.path().join(n);
    std::fs::write(p("basis"), [&l0[..], &l1[..]].concat()).unwrap();
    std::fs::write(p("target"), &target).unwrap();
    let ok = |args: &[&Path]| {
        let s = Command::new(rdiff).args(args).status().unwrap();
        assert!(s.success(), "rdiff {args:?}");
    };
    let (basis_f, sig, target_f, delta_f) = (p("basis"), p("sig"), p("target"), p("delta"));
    let bs = Path::new("--block-size=512");
    ok(&[bs, Path::new("signature"), &basis_f, &sig]);
    ok(&[Path::new("delta"), &sig, &target_f, &delta_f]);
    let delta = std::fs::read(&delta_f).unwrap();
    let (_d, basis) = extract(&[&l0, &l1]);
    let r = run(&basis, ReadModel::GoBuffer, &delta);
    assert_eq!(r.diff_id, sha256(&target));
    let mut s = Vec::new();
    std::fs::File::open(&delta_f)
        .unwrap()
        .read_to_end(&mut s)
        .unwrap();
    assert_eq!(r.counters.delta_bytes, s.len() as u64);
}
