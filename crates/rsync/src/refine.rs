//! Second pass over a chunk's commands: where short COPYs are dense, the gzip-compressed stream
//! is often smaller if they become literals (a COPY costs 3–17 bytes of poorly compressible
//! operands, while literal bytes of structured data such as relocation or symbol tables compress
//! well). Each dense region is encoded five ways (as found, COPYs shorter than 16, 32 or 64 bytes
//! turned into literals, all literal) and deflated; the smallest wins.
//!
//! With a [`DeviceCost`], the pass minimises download bytes plus the device's apply cost
//! expressed in bytes at its bandwidth (see `device.rs`): COPYs that end a few bytes into a file
//! body are trimmed (a file open saved), the length below which COPYs are candidates for
//! demotion grows with the bandwidth, even a lone short COPY is weighed, and each candidate's
//! cost adds the apply penalty of its commands to its deflated size.

use flate2::{Compress, Compression, FlushCompress};

use crate::device::{BasisLayout, DeviceCost};
use crate::encode::DeltaWriter;
use crate::op::Op;
use crate::options::MatchOptions;

/// Without a device: COPYs at least this long always stay and delimit regions.
const KEEP_LEN: usize = 128;
/// With a device: COPYs stay when at least this many times longer than the cheapest COPY's
/// apply cost in bytes (a literal of them would have to deflate better than this ratio).
const KEEP_FACTOR: f64 = 8.0;
/// Longest COPY ever demoted.
const MAX_KEEP_LEN: usize = 16 << 10;
/// Regions are cut at this many target bytes.
const MAX_REGION: usize = 32 << 10;
/// Without a device, regions with fewer COPYs are left alone.
const MIN_COPIES: usize = 4;
/// Deflate level of the trial compressions. Level 2 (zlib-ng's fast strategy) ranks the
/// candidates as level 6 does at two thirds of the cost: on the corpus (p1–p3, built for
/// 0.1 MB/s, 1 MB/s and fewest bytes) the final layers came out within ±0.4 % of level 6's
/// bytes, with ≤ 3 % more commands at 0.1 MB/s, while p2's build took 7 % less CPU. Level 1
/// (quick) misjudges literals and keeps a third more COPYs.
const TRIAL_LEVEL: u32 = 2;

/// Per-worker state of the refinement pass.
pub(crate) struct Refiner {
    /// [`MatchOptions::refine`]: without it only the device trimming runs.
    enabled: bool,
    device: Option<DeviceCost>,
    /// COPYs at least this long always stay and delimit regions.
    keep_len: usize,
    /// Regions with fewer COPYs are left alone.
    min_copies: usize,
    /// COPYs shorter than each of these are demoted in one candidate.
    thresholds: Vec<usize>,
    /// Reused deflater and buffers of [`Refiner::deflated`].
    deflate: Compress,
    encoded: Vec<u8>,
    compressed: Vec<u8>,
}

impl Refiner {
    pub(crate) fn new(opts: &MatchOptions) -> Self {
        let (keep_len, min_copies) = match &opts.device {
            None => (KEEP_LEN, MIN_COPIES),
            Some(device) => {
                let len = (device.min_copy_penalty() * KEEP_FACTOR).ceil() as usize;
                (len.next_power_of_two().clamp(KEEP_LEN, MAX_KEEP_LEN), 1)
            }
        };
        let thresholds = std::iter::successors(Some(16), |threshold| Some(threshold * 2))
            .take_while(|&threshold| threshold < keep_len)
            .collect();
        Self {
            enabled: opts.refine,
            device: opts.device,
            keep_len,
            min_copies,
            thresholds,
            deflate: Compress::new(Compression::new(TRIAL_LEVEL), false),
            encoded: Vec::new(),
            compressed: Vec::new(),
        }
    }

    /// The chunk's commands `ops` (of `target`), with dense short COPYs turned into literals
    /// where that costs less (and, with a device, COPY ends trimmed).
    pub(crate) fn refine(&mut self, ops: Vec<Op>, target: &[u8], layout: &BasisLayout) -> Vec<Op> {
        let ops = match &self.device {
            Some(device) => trim(ops, layout, device.open_penalty()),
            None => ops,
        };
        if !self.enabled {
            return ops;
        }
        let keep_len = self.keep_len;
        let keep = |op: &Op| op.basis.is_some() && op.len >= keep_len;
        let mut out = Vec::with_capacity(ops.len());
        // Index of the next command to look at.
        let mut next = 0;
        while next < ops.len() {
            if keep(&ops[next]) {
                out.push(ops[next]);
                next += 1;
                continue;
            }
            // A region: the commands up to the next kept COPY, at most MAX_REGION target bytes.
            let first = next;
            let start = ops[first].target;
            while next < ops.len() && !keep(&ops[next]) && ops[next].target - start < MAX_REGION {
                next += 1;
            }
            let region = &ops[first..next];
            let copies = region.iter().filter(|op| op.basis.is_some()).count();
            if copies < self.min_copies {
                out.extend_from_slice(region);
                continue;
            }
            let end = region.last().map_or(start, |op| op.target + op.len);
            let mut candidates: Vec<Vec<Op>> = vec![region.to_vec()];
            // COPYs in the last candidate added (or the region as found).
            let mut fewest_copies = copies;
            for &threshold in &self.thresholds {
                let demoted = demote(region, threshold);
                let demoted_copies = demoted.iter().filter(|op| op.basis.is_some()).count();
                // Same COPY count: the same commands as the previous candidate.
                if demoted_copies < fewest_copies && demoted_copies > 0 {
                    candidates.push(demoted);
                }
                fewest_copies = fewest_copies.min(demoted_copies);
            }
            candidates.push(vec![Op {
                target: start,
                len: end - start,
                basis: None,
            }]);
            let best = self.cheapest(&candidates, target, layout);
            out.extend_from_slice(&candidates[best]);
        }
        out
    }

    /// The candidate with the smallest cost (deflated size plus, with a device, the apply
    /// cost of its commands in bytes); the first of equals.
    ///
    /// Candidates are tried from the last (fewest commands, smallest apply cost) to the
    /// first, and one whose apply cost alone reaches the best cost so far is not deflated:
    /// its deflated size is positive, so it could neither win nor tie. The choice is the
    /// one trying all would make, for less deflating where COPYs are dear.
    fn cheapest(&mut self, candidates: &[Vec<Op>], target: &[u8], layout: &BasisLayout) -> usize {
        let mut best = 0;
        let mut best_cost = f64::INFINITY;
        for (candidate, ops) in candidates.iter().enumerate().rev() {
            let penalty = self.apply_cost(ops, layout);
            if penalty >= best_cost {
                continue;
            }
            let cost = penalty + self.deflated(ops, target) as f64;
            if cost <= best_cost {
                best = candidate;
                best_cost = cost;
            }
        }
        best
    }

    /// With a device, what applying the commands costs it, in bytes at its bandwidth.
    fn apply_cost(&self, ops: &[Op], layout: &BasisLayout) -> f64 {
        let Some(device) = &self.device else {
            return 0.0;
        };
        ops.iter()
            .map(|op| match op.basis {
                Some(basis) => device.copy_penalty(layout, basis as u64, op.len as u64),
                None => device.literal_penalty(op.len as u64),
            })
            .sum::<f64>()
    }

    /// Deflated size of the commands, encoded as in the delta stream.
    fn deflated(&mut self, ops: &[Op], target: &[u8]) -> usize {
        self.encoded.clear();
        let mut writer = match DeltaWriter::new(&mut self.encoded) {
            Ok(writer) => writer,
            Err(_) => return usize::MAX,
        };
        for op in ops {
            let written = match op.basis {
                Some(basis) => writer.copy(basis as u64, op.len as u64),
                None => writer.literal(&target[op.target..op.target + op.len]),
            };
            if written.is_err() {
                return usize::MAX;
            }
        }
        if writer.finish().is_err() {
            return usize::MAX;
        }
        self.deflate.reset();
        self.compressed.clear();
        self.compressed
            .reserve(self.encoded.len() + self.encoded.len() / 8 + 64);
        match self
            .deflate
            .compress_vec(&self.encoded, &mut self.compressed, FlushCompress::Finish)
        {
            Ok(_) => self.compressed.len(),
            Err(_) => usize::MAX,
        }
    }
}

/// Trims the ends of COPYs that reach at most `max_bytes` into a file body the rest of the
/// COPY does not need: carried as literals, those bytes save the device a file open.
fn trim(ops: Vec<Op>, layout: &BasisLayout, max_bytes: f64) -> Vec<Op> {
    let mut out: Vec<Op> = Vec::with_capacity(ops.len());
    for op in ops {
        let Some(mut basis) = op.basis else {
            push(&mut out, op);
            continue;
        };
        let (mut target, mut len) = (op.target, op.len);
        if let Some(body) = layout.body_at(basis as u64) {
            let part = (body.end - basis as u64) as usize;
            if part < len && part as f64 <= max_bytes {
                push(
                    &mut out,
                    Op {
                        target,
                        len: part,
                        basis: None,
                    },
                );
                (target, basis, len) = (target + part, basis + part, len - part);
            }
        }
        // Bytes at the COPY's end, in a body the rest of it does not reach.
        let mut tail = 0;
        if let Some(body) = layout.body_at((basis + len - 1) as u64) {
            let part = ((basis + len) as u64 - body.start) as usize;
            if part < len && part as f64 <= max_bytes {
                tail = part;
            }
        }
        push(
            &mut out,
            Op {
                target,
                len: len - tail,
                basis: Some(basis),
            },
        );
        if tail > 0 {
            push(
                &mut out,
                Op {
                    target: target + len - tail,
                    len: tail,
                    basis: None,
                },
            );
        }
    }
    out
}

/// Appends `op`, merging adjacent literals.
fn push(out: &mut Vec<Op>, op: Op) {
    match out.last_mut() {
        Some(last) if last.basis.is_none() && op.basis.is_none() => last.len += op.len,
        _ => out.push(op),
    }
}

/// The region with COPYs shorter than `min` turned into literals (adjacent literals merged).
fn demote(region: &[Op], min: usize) -> Vec<Op> {
    let mut demoted: Vec<Op> = Vec::with_capacity(region.len());
    for op in region {
        let op = if op.basis.is_some() && op.len < min {
            Op { basis: None, ..*op }
        } else {
            *op
        };
        push(&mut demoted, op);
    }
    demoted
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::tests::layout;

    fn copy(target: usize, len: usize, basis: usize) -> Op {
        Op {
            target,
            len,
            basis: Some(basis),
        }
    }

    fn lit(target: usize, len: usize) -> Op {
        Op {
            target,
            len,
            basis: None,
        }
    }

    #[test]
    fn trim_drops_the_few_bytes_that_would_open_a_file() {
        // File bodies [512, 1512) and [2048, 9000).
        let l = layout(&[(512, 1512), (2048, 9000)]);
        // 10 bytes of the first body, its padding and header, then 4000 bytes of the second.
        let ops = vec![lit(0, 5), copy(5, 4546, 1502), lit(4551, 3)];
        let got = trim(ops, &l, 64.0);
        assert_eq!(got, vec![lit(0, 15), copy(15, 4536, 1512), lit(4551, 3)]);
        // The same COPY ending 20 bytes into a third body: the tail goes too.
        let l = layout(&[(512, 1512), (2048, 6000), (6512, 9000)]);
        let ops = vec![copy(0, 5030, 1502)];
        let got = trim(ops, &l, 64.0);
        assert_eq!(got, vec![lit(0, 10), copy(10, 5000, 1512), lit(5010, 20)]);
        // Parts longer than the limit, and COPYs inside one body, stay as they are.
        let ops = vec![copy(0, 5030, 1502), copy(5030, 100, 3000)];
        assert_eq!(trim(ops.clone(), &l, 5.0), ops);
    }

    #[test]
    fn pruned_choice_is_the_exhaustive_one() {
        // Structured target bytes (they deflate), a basis of file bodies, and a region with
        // COPYs of many lengths: every candidate is deflated by the exhaustive search. From
        // 0.01 to 100 MB/s the winner moves from the region with COPYs under 32 bytes demoted
        // to the all-literal one, its apply cost 3–92 % of its total.
        let target: Vec<u8> = (0..24_000u32)
            .map(|i| ((i % 251) ^ (i / 97)) as u8)
            .collect();
        let l = layout(&[(512, 40_000), (40_512, 90_000)]);
        let mut region = Vec::new();
        let mut at = 0;
        for (i, len) in [6, 40, 9, 300, 17, 70, 12, 33, 5, 150, 24, 60]
            .iter()
            .cycle()
            .take(120)
            .enumerate()
        {
            region.push(lit(at, 20 + i % 7));
            at += 20 + i % 7;
            region.push(copy(at, *len, (at * 3 + i * 1000) % 80_000 + 600));
            at += len;
        }
        assert!(at < target.len());
        for mbps in [
            "0.01", "0.03", "0.05", "0.08", "0.1", "0.15", "0.2", "0.3", "1", "10", "100",
        ] {
            let opts = MatchOptions {
                device: Some(DeviceCost::for_bandwidth(mbps.parse().unwrap())),
                ..MatchOptions::default()
            };
            let mut refiner = Refiner::new(&opts);
            let mut candidates = vec![region.clone()];
            for threshold in [16, 32, 64, 128, 256] {
                candidates.push(demote(&region, threshold));
            }
            candidates.push(vec![lit(0, at)]);
            // Trying all, in order, keeping the first of equals.
            let mut best = (0, f64::INFINITY);
            for (candidate, ops) in candidates.iter().enumerate() {
                let cost = refiner.apply_cost(ops, &l) + refiner.deflated(ops, &target) as f64;
                if cost < best.1 {
                    best = (candidate, cost);
                }
            }
            assert_eq!(
                refiner.cheapest(&candidates, &target, &l),
                best.0,
                "{mbps} MB/s"
            );
        }
    }

    #[test]
    fn keep_length_grows_with_bandwidth() {
        let refiner = |mbps: &str| {
            let opts = MatchOptions {
                device: Some(DeviceCost::for_bandwidth(mbps.parse().unwrap())),
                ..MatchOptions::default()
            };
            Refiner::new(&opts)
        };
        let bytes_only = Refiner::new(&MatchOptions::default());
        assert_eq!((bytes_only.keep_len, bytes_only.min_copies), (128, 4));
        let (slow, mid, fast) = (refiner("0.1"), refiner("1"), refiner("10"));
        // 8 × the cheapest COPY's cost (22.5 bytes at 1 MB/s), rounded up to a power of two,
        // at least 128 B, at most 16 KiB.
        assert_eq!(
            (slow.keep_len, mid.keep_len, fast.keep_len),
            (128, 256, 2048)
        );
        assert_eq!(mid.min_copies, 1);
        assert_eq!(*fast.thresholds.last().unwrap() * 2, fast.keep_len);
    }
}
