//! Second pass over a chunk's commands: where short COPYs are dense, the gzip-compressed stream
//! is often smaller if they become literals (a COPY costs 3–17 bytes of poorly compressible
//! operands, while literal bytes of structured data such as relocation or symbol tables compress
//! well). Each dense region is encoded five ways (as found, COPYs shorter than 16, 32 or 64 bytes
//! turned into literals, all literal) and deflated; the smallest wins.

use flate2::{Compress, Compression, FlushCompress};

use crate::encode::DeltaWriter;
use crate::matcher::{MatchOptions, Op};

/// COPYs at least this long always stay and delimit regions.
const KEEP_LEN: usize = 128;
/// Regions are cut at this many target bytes.
const MAX_REGION: usize = 32 << 10;
/// Regions with fewer COPYs are left alone.
const MIN_COPIES: usize = 4;

/// Per-worker state of the refinement pass.
pub(crate) struct Refiner {
    enabled: bool,
    deflate: Compress,
    encoded: Vec<u8>,
    compressed: Vec<u8>,
}

impl Refiner {
    pub(crate) fn new(opts: &MatchOptions) -> Self {
        Self {
            enabled: opts.refine,
            deflate: Compress::new(Compression::new(6), false),
            encoded: Vec::new(),
            compressed: Vec::new(),
        }
    }

    pub(crate) fn refine(&mut self, ops: Vec<Op>, target: &[u8]) -> Vec<Op> {
        if !self.enabled {
            return ops;
        }
        let mut out = Vec::with_capacity(ops.len());
        let mut i = 0;
        while i < ops.len() {
            if keep(&ops[i]) {
                out.push(ops[i]);
                i += 1;
                continue;
            }
            let j = i;
            let start = ops[j].target;
            while i < ops.len() && !keep(&ops[i]) && ops[i].target - start < MAX_REGION {
                i += 1;
            }
            let region = &ops[j..i];
            if region.iter().filter(|o| o.basis.is_some()).count() < MIN_COPIES {
                out.extend_from_slice(region);
                continue;
            }
            let end = region.last().map_or(start, |o| o.target + o.len);
            let literal = [Op {
                target: start,
                len: end - start,
                basis: None,
            }];
            let (d16, d32, d64) = (demote(region, 16), demote(region, 32), demote(region, 64));
            let cands: [&[Op]; 5] = [region, &d16, &d32, &d64, &literal];
            let mut best = 0;
            let mut best_cost = usize::MAX;
            for (k, c) in cands.iter().enumerate() {
                let cost = self.cost(c, target);
                if cost < best_cost {
                    best = k;
                    best_cost = cost;
                }
            }
            out.extend_from_slice(cands[best]);
        }
        out
    }

    /// Deflated size of the commands, encoded as in the delta stream.
    fn cost(&mut self, ops: &[Op], target: &[u8]) -> usize {
        self.encoded.clear();
        let mut w = match DeltaWriter::new(&mut self.encoded) {
            Ok(w) => w,
            Err(_) => return usize::MAX,
        };
        for op in ops {
            let r = match op.basis {
                Some(b) => w.copy(b as u64, op.len as u64),
                None => w.literal(&target[op.target..op.target + op.len]),
            };
            if r.is_err() {
                return usize::MAX;
            }
        }
        if w.finish().is_err() {
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

fn keep(op: &Op) -> bool {
    op.basis.is_some() && op.len >= KEEP_LEN
}

/// The region with COPYs shorter than `min` turned into literals (adjacent literals merged).
fn demote(region: &[Op], min: usize) -> Vec<Op> {
    let mut v: Vec<Op> = Vec::with_capacity(region.len());
    for op in region {
        let op = if op.basis.is_some() && op.len < min {
            Op { basis: None, ..*op }
        } else {
            *op
        };
        match v.last_mut() {
            Some(last) if last.basis.is_none() && op.basis.is_none() => last.len += op.len,
            _ => v.push(op),
        }
    }
    v
}
