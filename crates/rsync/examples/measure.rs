//! Measures the matcher on real layers (a benchmark aid, not a test).
//!
//! usage: measure BASIS_TAR [BASIS_TAR...] -- TARGET_TAR [TARGET_TAR...] [--no-hints | --whole-hint | --hints-file F] [--rdiff]
//!        [--out DIR (save deltas)] [--window N] [--spacing N] [--min-copy N] [--min-rep N] [--hint-window N]
//!        [--max-chain N] [--threads N] [--chunk N] [--bandwidth MBPS (device-aware)]
//!
//! The basis is the concatenation of the BASIS_TARs (as balena-engine builds it). For every target
//! layer it prints raw and gzip -6 delta bytes, op counts and seconds, checks the round trip with
//! our `patch`, and with `--rdiff` also with `rdiff patch` (the delta is written to --out or /tmp).

use std::io::Write;
use std::process::Command;
use std::time::Instant;

use bru_rsync::{diff_with_layout, patch, tar, BasisIndex, BasisLayout, DeviceCost, MatchOptions};
use flate2::write::GzEncoder;
use flate2::Compression;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut opts = MatchOptions::default();
    let (mut basis_files, mut target_files) = (Vec::new(), Vec::new());
    let (mut hints_on, mut rdiff, mut out_dir, mut save) =
        (true, false, std::env::temp_dir(), false);
    let mut in_target = false;
    let mut whole_hint = false;
    let mut hints_file: Option<String> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut num = || -> usize { it.next().and_then(|v| v.parse().ok()).expect("number") };
        match a.as_str() {
            "--" => in_target = true,
            "--no-hints" => hints_on = false,
            "--whole-hint" => whole_hint = true,
            "--hints-file" => hints_file = Some(it.next().expect("file").clone()),
            "--rdiff" => rdiff = true,
            "--no-refine" => opts.refine = false,
            "--out" => {
                out_dir = it.next().expect("dir").into();
                save = true;
            }
            "--window" => opts.window = num(),
            "--spacing" => opts.anchor_spacing = num(),
            "--min-copy" => opts.min_copy = num(),
            "--min-rep" => opts.min_rep_copy = num(),
            "--hint-window" => opts.hint_window = num(),
            "--max-chain" => opts.max_chain = num(),
            "--threads" => opts.threads = num(),
            "--hint-positions" => opts.max_hint_positions = num(),
            "--chunk" => opts.chunk_size = num(),
            "--index-mb" => opts.max_index_bytes = num() << 20,
            "--bandwidth" => {
                let b = it.next().expect("MBPS").parse().expect("bandwidth");
                opts.device = Some(DeviceCost::for_bandwidth(b));
            }
            f if in_target => target_files.push(f.to_string()),
            f => basis_files.push(f.to_string()),
        }
    }
    let total: u64 = basis_files
        .iter()
        .map(|f| std::fs::metadata(f).expect("basis file").len())
        .sum();
    let mut basis = Vec::with_capacity(total as usize);
    for f in &basis_files {
        std::io::Read::read_to_end(&mut std::fs::File::open(f).expect("open basis"), &mut basis)
            .expect("read basis");
    }
    let layout = BasisLayout::from_entries(&tar::entries(&basis));
    let t0 = Instant::now();
    let index = BasisIndex::new(&basis, opts.clone());
    let index_s = t0.elapsed().as_secs_f64();
    eprintln!(
        "basis {} B, index {} MiB built in {index_s:.2} s, {opts:?}",
        basis.len(),
        index.index_bytes() >> 20
    );
    let (mut tot_raw, mut tot_gz, mut tot_s) = (0u64, 0u64, index_s);
    for f in &target_files {
        let target = std::fs::read(f).expect("read target");
        let t1 = Instant::now();
        let hints = if let Some(h) = &hints_file {
            // Lines of "target_start target_end basis_start basis_end".
            std::fs::read_to_string(h)
                .expect("hints file")
                .lines()
                .filter_map(|l| {
                    let v: Vec<u64> = l
                        .split_whitespace()
                        .filter_map(|x| x.parse().ok())
                        .collect();
                    (v.len() == 4).then(|| bru_rsync::Hint {
                        target: v[0]..v[1],
                        basis: v[2]..v[3],
                    })
                })
                .collect()
        } else if whole_hint {
            // Treat the inputs as one old and one new file.
            vec![bru_rsync::Hint {
                target: 0..target.len() as u64,
                basis: 0..basis.len() as u64,
            }]
        } else if hints_on {
            tar::hints(&basis, &target)
        } else {
            Vec::new()
        };
        let hint_s = t1.elapsed().as_secs_f64();
        let mut delta = Vec::new();
        let stats = diff_with_layout(&index, &target, &hints, &layout, &mut delta).expect("diff");
        let diff_s = t1.elapsed().as_secs_f64();
        let mut gz = GzEncoder::new(Vec::new(), Compression::new(6));
        gz.write_all(&delta).unwrap();
        let gz = gz.finish().unwrap();
        let gz_s = t1.elapsed().as_secs_f64();
        let mut check = Compare {
            expected: &target,
            pos: 0,
        };
        patch(&basis, &delta[..], &mut check).expect("round trip failed");
        assert_eq!(check.pos, target.len(), "round trip failed for {f}");
        let name = std::path::Path::new(f)
            .file_name()
            .unwrap()
            .to_string_lossy();
        if save {
            std::fs::write(out_dir.join(format!("{name}.delta")), &delta).unwrap();
        }
        let rd = if rdiff {
            let d = out_dir.join(format!("{name}.delta"));
            std::fs::write(&d, &delta).unwrap();
            let bpath = out_dir.join("basis.tar");
            std::fs::write(&bpath, &basis).unwrap();
            let o = out_dir.join(format!("{name}.rebuilt"));
            let ok = Command::new("rdiff")
                .arg("patch")
                .arg(&bpath)
                .arg(&d)
                .arg(&o)
                .status()
                .unwrap()
                .success()
                && std::fs::read(&o).unwrap() == target;
            let _ = std::fs::remove_file(&o);
            let _ = std::fs::remove_file(&bpath);
            if ok {
                " rdiff-ok"
            } else {
                " RDIFF-FAILED"
            }
        } else {
            ""
        };
        println!(
            "{name}: raw {} gz {} | copies {} ({} B) literals {} ({} B) | hints {} ({hint_s:.2}s) diff {:.2}s gzip {:.2}s{rd}",
            stats.delta_bytes, gz.len(), stats.copy_ops, stats.copy_bytes, stats.literal_ops,
            stats.literal_bytes, hints.len(), diff_s - hint_s, gz_s - diff_s
        );
        let (cmds, copies, reads, opens) = device_counts(&delta, &layout);
        println!(
            "  device model: {cmds} commands, {copies} copies, {reads} reads, {opens} opens; \
             T(0.1/1/10 MB/s, common floor excluded) = {:.2} / {:.3} / {:.4} s",
            model_t(gz.len(), cmds, copies, reads, opens, 0.1e6),
            model_t(gz.len(), cmds, copies, reads, opens, 1e6),
            model_t(gz.len(), cmds, copies, reads, opens, 10e6),
        );
        tot_raw += stats.delta_bytes;
        tot_gz += gz.len() as u64;
        tot_s += gz_s;
    }
    println!("TOTAL raw {tot_raw} gz {tot_gz} seconds {tot_s:.2}");
}

/// `T = bytes / bw + 5 × (commands, layer reads and opens at DeviceCost's constants)`, the
/// part that differs between deltas of the same pair.
fn model_t(gz: usize, cmds: u64, copies: u64, reads: u64, opens: u64, bw: f64) -> f64 {
    let d = DeviceCost::for_bandwidth(Default::default());
    let _ = copies;
    let ns = cmds as f64 * f64::from(d.command_ns)
        + reads as f64 * f64::from(d.read_ns)
        + opens as f64 * f64::from(d.open_ns);
    gz as f64 / bw + f64::from(d.slowdown) * ns * 1e-9
}

/// Commands, COPYs, basis reads and file opens of a delta stream, as a device would make them.
fn device_counts(delta: &[u8], layout: &BasisLayout) -> (u64, u64, u64, u64) {
    let be = |b: &[u8]| b.iter().fold(0u64, |v, &x| v << 8 | u64::from(x));
    let (mut cmds, mut copies, mut reads, mut opens) = (0, 0, 0, 0);
    let mut p = 4;
    while p < delta.len() {
        let op = delta[p];
        p += 1;
        match op {
            0 => break,
            1..=0x40 => p += op as usize,
            0x41..=0x44 => {
                let w = 1usize << (op - 0x41);
                p += w + be(&delta[p..p + w]) as usize;
            }
            _ => {
                let k = op - 0x45;
                let (ow, lw) = (1usize << (k / 4), 1usize << (k % 4));
                let off = be(&delta[p..p + ow]);
                let len = be(&delta[p + ow..p + ow + lw]);
                p += ow + lw;
                let (r, o) = layout.reads_and_opens(off, len);
                copies += 1;
                reads += r;
                opens += o;
            }
        }
        cmds += 1;
    }
    (cmds, copies, reads, opens)
}

/// A writer that checks the bytes written against the expected target (no second copy in memory).
struct Compare<'a> {
    expected: &'a [u8],
    pos: usize,
}

impl Write for Compare<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let end = self.pos + buf.len();
        if self.expected.get(self.pos..end) != Some(buf) {
            return Err(std::io::Error::other(format!(
                "output differs near {}",
                self.pos
            )));
        }
        self.pos = end;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
