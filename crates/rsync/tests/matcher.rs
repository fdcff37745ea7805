//! Matcher round trips: every delta `diff` writes must rebuild the target, with our `patch` and
//! with Debian's `rdiff patch` (an independent librsync).

use std::fs;
use std::path::Path;
use std::process::Command;

use bru_rsync::{
    diff, diff_with_layout, patch, tar, BasisIndex, BasisLayout, DeltaStats, DeviceCost, Hint,
    MatchOptions,
};
use proptest::prelude::*;

fn delta_for(basis: &[u8], target: &[u8], hints: &[Hint], opts: MatchOptions) -> Vec<u8> {
    delta_stats(basis, target, hints, opts).0
}

fn delta_stats(
    basis: &[u8],
    target: &[u8],
    hints: &[Hint],
    opts: MatchOptions,
) -> (Vec<u8>, DeltaStats) {
    let index = BasisIndex::new(basis, opts);
    let mut delta = Vec::new();
    let stats = diff(&index, target, hints, &mut delta).unwrap();
    assert_eq!(stats.delta_bytes, delta.len() as u64);
    assert_eq!(stats.target_bytes(), target.len() as u64);
    (delta, stats)
}

fn apply(basis: &[u8], delta: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    patch(basis, delta, &mut out).unwrap();
    out
}

/// Pseudo-random bytes that look like text or like binary.
fn content(seed: u64, n: usize, text: bool) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let words: [&[u8]; 8] = [
        b"import ", b"self.", b"return ", b"\n    ", b"value", b"(x)", b"= ", b"# note",
    ];
    let mut v = Vec::with_capacity(n + 8);
    while v.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if text {
            v.extend_from_slice(words[(x % 8) as usize]);
        } else {
            v.push(x as u8);
        }
    }
    v.truncate(n);
    v
}

#[derive(Debug, Clone)]
enum Edit {
    Insert(u16, Vec<u8>),
    Delete(u16, u16),
    Replace(u16, Vec<u8>),
    /// Move a block from one place to another.
    Move(u16, u16, u16),
}

fn edit() -> impl Strategy<Value = Edit> {
    let bytes = proptest::collection::vec(any::<u8>(), 1..40);
    prop_oneof![
        (any::<u16>(), bytes.clone()).prop_map(|(a, b)| Edit::Insert(a, b)),
        (any::<u16>(), 1u16..300).prop_map(|(a, n)| Edit::Delete(a, n)),
        (any::<u16>(), bytes).prop_map(|(a, b)| Edit::Replace(a, b)),
        (any::<u16>(), 1u16..2000, any::<u16>()).prop_map(|(a, n, b)| Edit::Move(a, n, b)),
    ]
}

fn apply_edits(basis: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut t = basis.to_vec();
    let at = |t: &Vec<u8>, a: u16| {
        if t.is_empty() {
            0
        } else {
            usize::from(a) % (t.len() + 1)
        }
    };
    for e in edits {
        match e {
            Edit::Insert(a, b) => {
                let i = at(&t, *a);
                t.splice(i..i, b.iter().copied());
            }
            Edit::Delete(a, n) => {
                let i = at(&t, *a);
                let j = (i + usize::from(*n)).min(t.len());
                t.drain(i..j);
            }
            Edit::Replace(a, b) => {
                let i = at(&t, *a);
                let j = (i + b.len()).min(t.len());
                t.splice(i..j, b.iter().copied());
            }
            Edit::Move(a, n, b) => {
                let i = at(&t, *a);
                let j = (i + usize::from(*n)).min(t.len());
                let block: Vec<u8> = t.drain(i..j).collect();
                let k = at(&t, *b);
                t.splice(k..k, block);
            }
        }
    }
    t
}

fn small_opts(threads: usize) -> MatchOptions {
    let mut o = MatchOptions::default();
    o.chunk_size = 1 << 16;
    o.threads = threads;
    o
}

/// [`small_opts`] for a device downloading `mbps` MB/s.
fn device_opts(threads: usize, mbps: &str) -> MatchOptions {
    let mut o = small_opts(threads);
    o.device = Some(DeviceCost::for_bandwidth(mbps.parse().unwrap()));
    o
}

/// A delta of `target` against `basis` with its file bodies known from the tar structure.
fn device_delta(basis: &[u8], target: &[u8], opts: MatchOptions) -> (Vec<u8>, DeltaStats) {
    let layout = BasisLayout::from_entries(&tar::entries(basis));
    let index = BasisIndex::new(basis, opts);
    let mut delta = Vec::new();
    let hints = tar::hints(basis, target);
    let stats = diff_with_layout(&index, target, &hints, &layout, &mut delta).unwrap();
    assert_eq!(stats.delta_bytes, delta.len() as u64);
    (delta, stats)
}

/// The commands of a delta stream as (is COPY, offset, length); checks the framing.
fn commands(delta: &[u8]) -> Vec<(bool, u64, u64)> {
    let be = |b: &[u8]| b.iter().fold(0u64, |v, &x| v << 8 | u64::from(x));
    assert_eq!(delta[..4], [0x72, 0x73, 0x02, 0x36]);
    let (mut out, mut p) = (Vec::new(), 4);
    loop {
        let op = delta[p];
        p += 1;
        match op {
            0 => break,
            1..=0x40 => {
                out.push((false, 0, u64::from(op)));
                p += op as usize;
            }
            0x41..=0x44 => {
                let w = 1usize << (op - 0x41);
                let n = be(&delta[p..p + w]);
                out.push((false, 0, n));
                p += w + n as usize;
            }
            0x45..=0x54 => {
                let k = op - 0x45;
                let (ow, lw) = (1usize << (k / 4), 1usize << (k % 4));
                out.push((true, be(&delta[p..p + ow]), be(&delta[p + ow..p + ow + lw])));
                p += ow + lw;
            }
            _ => panic!("reserved opcode {op:#x}"),
        }
    }
    assert_eq!(p, delta.len(), "bytes after END");
    out
}

fn gzip_len(bytes: &[u8]) -> usize {
    use std::io::Write as _;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(9));
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap().len()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Realistic edits of a basis (inserts, deletes, replacements, moved blocks, none at all,
    /// everything deleted): the delta rebuilds the target, with and without a hint.
    #[test]
    fn diff_round_trips(
        seed in any::<u64>(),
        len in 0usize..150_000,
        text in any::<bool>(),
        edits in proptest::collection::vec(edit(), 0..12),
        wipe in proptest::bool::weighted(0.05),
    ) {
        let basis = content(seed, len, text);
        let target = if wipe { Vec::new() } else { apply_edits(&basis, &edits) };
        let hint = Hint { target: 0..target.len() as u64, basis: 0..basis.len() as u64 };
        for hints in [vec![], vec![hint]] {
            let hinted = !hints.is_empty();
            let (delta, stats) = delta_stats(&basis, &target, &hints, small_opts(0));
            prop_assert!(apply(&basis, &delta) == target);
            if edits.is_empty() && !wipe && basis.len() >= 64 && hinted {
                // Identical input of more than one chunk, hinted as the tar hints of the
                // engine do: a single (merged) COPY. (Unhinted repetitive text may start on
                // another occurrence of its first window: the index keeps the last one.)
                prop_assert_eq!((stats.copy_ops, stats.literal_ops), (1, 0));
            }
        }
    }

    /// Output bytes do not depend on the number of threads.
    #[test]
    fn diff_is_deterministic(seed in any::<u64>(), edits in proptest::collection::vec(edit(), 1..8)) {
        let basis = content(seed, 300_000, false);
        let target = apply_edits(&basis, &edits);
        let one = delta_for(&basis, &target, &[], small_opts(1));
        let two = delta_for(&basis, &target, &[], small_opts(2));
        prop_assert!(one == two);
        let one = delta_for(&basis, &target, &[], device_opts(1, "3"));
        let two = delta_for(&basis, &target, &[], device_opts(2, "3"));
        prop_assert!(one == two);
    }

    /// Deltas built for any device bandwidth rebuild the target.
    #[test]
    fn device_aware_diff_round_trips(
        seed in any::<u64>(),
        len in 0usize..150_000,
        text in any::<bool>(),
        edits in proptest::collection::vec(edit(), 0..12),
        mbps in prop::sample::select(vec!["0.001", "0.1", "1", "10", "100000"]),
    ) {
        let basis = content(seed, len, text);
        let target = apply_edits(&basis, &edits);
        let hint = Hint { target: 0..target.len() as u64, basis: 0..basis.len() as u64 };
        let (delta, _) = delta_stats(&basis, &target, &[hint], device_opts(0, mbps));
        prop_assert!(apply(&basis, &delta) == target);
        // What a device could choke on: zero-length commands, a COPY starting past the end
        // of the basis (librsync-go hangs on it), or running past it.
        for (copy, offset, len) in commands(&delta) {
            prop_assert!(len > 0);
            if copy {
                prop_assert!(offset < basis.len() as u64 && offset + len <= basis.len() as u64);
            }
        }
    }
}

fn rdiff_patch(basis: &[u8], delta: &[u8]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let (b, d, o) = (
        dir.path().join("b"),
        dir.path().join("d"),
        dir.path().join("o"),
    );
    fs::write(&b, basis).unwrap();
    fs::write(&d, delta).unwrap();
    let status = Command::new("rdiff")
        .arg("patch")
        .args([&b, &d, &o])
        .status()
        .unwrap_or_else(|e| panic!("cannot run `rdiff` (install Debian's rdiff package): {e}"));
    assert!(status.success(), "rdiff patch failed: {status}");
    fs::read(o).unwrap()
}

#[test]
fn rdiff_applies_matcher_deltas_for_the_golden_cases() {
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    for case in ["text", "binary", "identical", "empty-target", "empty-basis"] {
        let basis = fs::read(golden.join(case).join("basis")).unwrap();
        let target = fs::read(golden.join(case).join("target")).unwrap();
        let delta = delta_for(&basis, &target, &[], MatchOptions::default());
        assert!(rdiff_patch(&basis, &delta) == target, "{case}");
        // Ours is smaller than rdiff's own 512-byte-block delta.
        let theirs = fs::read(golden.join(case).join("b512.rdiff-delta")).unwrap();
        assert!(
            delta.len() <= theirs.len(),
            "{case}: {} > {}",
            delta.len(),
            theirs.len()
        );
    }
}

/// A rebuilt "binary": a change every ~100 bytes, as relocated code has. The faster the
/// device's link, the fewer commands its delta has, paid for with bytes; every delta applies
/// (our `patch` and Debian's `rdiff`).
#[test]
fn faster_links_get_fewer_commands_for_more_bytes() {
    let old = content(7, 400_000, false);
    let mut new = old.clone();
    let mut x = 11u64;
    let mut i = 0;
    while i < new.len() {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        new[i] ^= (x >> 56) as u8 | 1;
        i += 40 + (x >> 33) as usize % 120;
    }
    let basis = gnu_tar(
        &[("app/bin", old), ("app/data", content(8, 50_000, true))],
        "gnu",
        "@1",
    );
    let target = gnu_tar(
        &[("app/bin", new), ("app/data", content(8, 50_000, true))],
        "gnu",
        "@2",
    );
    let mut last: Option<(u64, usize)> = None;
    for mbps in ["0.001", "0.1", "1", "10", "100000"] {
        let (delta, stats) = device_delta(&basis, &target, device_opts(0, mbps));
        assert!(apply(&basis, &delta) == target, "{mbps}");
        assert!(rdiff_patch(&basis, &delta) == target, "{mbps}");
        let (commands, bytes) = (stats.copy_ops + stats.literal_ops, gzip_len(&delta));
        if let Some((c, b)) = last {
            assert!(commands <= c, "{mbps} MB/s: {commands} commands after {c}");
            assert!(bytes + 64 >= b, "{mbps} MB/s: {bytes} bytes after {b}");
        }
        last = Some((commands, bytes));
    }
    // Fewest bytes vs cheapest apply: the two ends are far apart.
    let (slow, _) = device_delta(&basis, &target, device_opts(0, "0.001"));
    let (_, fast) = device_delta(&basis, &target, device_opts(0, "100000"));
    let (_, bytes_only) = device_delta(&basis, &target, small_opts(0));
    assert!(
        fast.copy_ops * 20 < bytes_only.copy_ops,
        "{fast:?} {bytes_only:?}"
    );
    assert!(gzip_len(&slow) <= gzip_len(&delta_for(&basis, &target, &[], small_opts(0))) + 64);
}

/// Builds a tar archive of `files` with GNU tar in the given format.
fn gnu_tar(files: &[(&str, Vec<u8>)], format: &str, mtime: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    for (name, data) in files {
        let p = root.join(name);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, data).unwrap();
    }
    let out = dir.path().join("out.tar");
    let status = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .args(["--sort=name", "--numeric-owner", "--owner=0", "--group=0"])
        .arg(format!("--format={format}"))
        .arg(format!("--mtime={mtime}"))
        .arg("-cf")
        .arg(&out)
        .arg(".")
        .status()
        .expect("GNU tar");
    assert!(status.success());
    fs::read(out).unwrap()
}

#[test]
fn tar_hints_from_gnu_tar_archives_pair_files_and_shrink_deltas() {
    let long = format!("{}/deep.bin", "d".repeat(120)); // longer than the 100-byte name field
    let lib = content(1, 200_000, false);
    // A "rebuilt binary": a changed byte every 40 bytes, an inserted byte every 1000, so no
    // stretch is long enough for the global index and the diagonal keeps moving.
    let mut lib2 = Vec::new();
    for (i, &b) in lib.iter().enumerate() {
        lib2.push(if i % 40 == 0 { b.wrapping_add(1) } else { b });
        if i % 1000 == 500 {
            lib2.push(0x90);
        }
    }
    let text = content(2, 30_000, true);
    for format in ["posix", "gnu"] {
        let basis = [
            gnu_tar(
                &[("other/file", content(3, 5000, false))],
                format,
                "2024-01-01",
            ),
            gnu_tar(
                &[("lib/libx.so", lib.clone()), (long.as_str(), text.clone())],
                format,
                "2024-01-01",
            ),
        ]
        .concat();
        let target = gnu_tar(
            &[
                ("lib/libx.so", lib2.clone()),
                (long.as_str(), text.clone()),
                ("new", vec![7; 10]),
            ],
            format,
            "2024-02-02",
        );
        let entries = tar::entries(&target);
        let names: Vec<String> = entries
            .iter()
            .map(|e| String::from_utf8_lossy(&e.path).into_owned())
            .collect();
        assert!(names.contains(&long), "{format}: {names:?}");
        let hints = tar::hints(&basis, &target);
        // lib/libx.so and the long name pair up, so do the directories "lib/", "./" and d…d/.
        let old = tar::entries(&basis);
        let find = |es: &[tar::TarEntry], p: &str| {
            es.iter()
                .rev()
                .find(|e| e.path == p.as_bytes())
                .cloned()
                .unwrap()
        };
        for p in ["lib/libx.so", long.as_str()] {
            let (t, b) = (find(&entries, p), find(&old, p));
            assert!(
                hints.contains(&Hint {
                    target: t.start..t.end,
                    basis: b.start..b.end
                }),
                "{format}: no hint for {p}"
            );
        }
        let (with, ws) = delta_stats(&basis, &target, &hints, MatchOptions::default());
        let (without, wos) = delta_stats(&basis, &target, &[], MatchOptions::default());
        assert!(apply(&basis, &with) == target && apply(&basis, &without) == target);
        assert!(rdiff_patch(&basis, &with) == target);
        eprintln!("{format}: with hints {ws:?}, without {wos:?}");
        assert!(with.len() < without.len(), "{format}: {ws:?} vs {wos:?}");
        assert!(
            ws.literal_bytes * 2 < wos.literal_bytes,
            "{format}: {ws:?} vs {wos:?}"
        );
    }
}
