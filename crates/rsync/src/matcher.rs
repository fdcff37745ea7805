//! Byte-granular matcher: finds COPYs of any offset and length against a whole basis.
//!
//! * A global index over the basis stores the positions of content-defined anchors: windows of
//!   `window` bytes whose rolling hash has its top bits clear (about one position in
//!   `anchor_spacing`). The table is a flat array of `u64` entries (position and check bits),
//!   filled by several threads with `fetch_max`, so its contents do not depend on the thread
//!   count.
//! * For each target position without a match, candidates come from (1) the diagonals of the
//!   last few COPYs (a changed field or a shifted instruction leaves the next bytes on the same
//!   diagonal), (2) the hint's diagonal and, after a few literal bytes, a dense hash-chain index
//!   of the hinted basis range (built lazily per hint), and (3) the global index when the target
//!   window is an anchor. Every candidate is extended forwards and backwards (eating into the
//!   pending literal); the longest wins, after a one-byte lazy look-ahead for short ones.
//! * A second pass (`refine.rs`) turns dense short COPYs into literals where that deflates
//!   smaller.
//! * The target is cut into fixed-size chunks matched in parallel and stitched in order, so the
//!   output is the same whatever the number of threads.
//!
//! `DESIGN.md` ("Reading the matcher's code") derives the hash, table and candidate arithmetic
//! behind the names used here.

use std::io::{self, Write};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::device::BasisLayout;
use crate::encode::DeltaStats;
use crate::op::Op;
pub use crate::options::MatchOptions;
use crate::refine::Refiner;
use crate::stitch::stitch;

/// "This target range probably resembles this basis range" (e.g. a file's old version).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hint {
    /// Range of the target.
    pub target: Range<u64>,
    /// Range of the basis.
    pub basis: Range<u64>,
}

/// Multiplier of the polynomial rolling hash (and of the hint index's short-window hash).
const MUL: u64 = 0x9E37_79B9_7F4A_7C15;
/// Multiplier of the final mix that spreads the rolling hash over all 64 bits.
const MIX: u64 = 0xD6E8_FEB8_6659_FD93;

/// Polynomial rolling hash of a fixed-size window: for bytes `b[0..w]`,
/// `hash = Σ (b[i] + 1) · MUL^(w-1-i)` (mod 2^64), so sliding the window by one byte is one
/// subtraction, one multiplication and one addition.
#[derive(Debug, Clone, Copy)]
struct Roll {
    hash: u64,
    /// `MUL^(window-1)`, to remove the outgoing byte.
    out_factor: u64,
}

impl Roll {
    fn new(window: usize) -> Self {
        let mut out_factor = 1u64;
        for _ in 1..window {
            out_factor = out_factor.wrapping_mul(MUL);
        }
        Self {
            hash: 0,
            out_factor,
        }
    }

    /// Hashes `bytes` from scratch (they must be one window long).
    fn reset(&mut self, bytes: &[u8]) {
        self.hash = bytes.iter().fold(0u64, |hash, &byte| {
            hash.wrapping_mul(MUL).wrapping_add(u64::from(byte) + 1)
        });
    }

    /// Slides the window one byte: `outgoing` leaves at the front, `incoming` enters at the end.
    fn roll(&mut self, outgoing: u8, incoming: u8) {
        self.hash = self
            .hash
            .wrapping_sub((u64::from(outgoing) + 1).wrapping_mul(self.out_factor))
            .wrapping_mul(MUL)
            .wrapping_add(u64::from(incoming) + 1);
    }

    /// The hash, mixed so that its top bits (anchor test, table slot) depend on every byte.
    fn mixed(&self) -> u64 {
        (self.hash ^ (self.hash >> 29)).wrapping_mul(MIX)
    }

    /// `(byte + 1) · out_factor` for every byte: the term a roll step subtracts, looked up
    /// instead of multiplied where every position is rolled.
    fn out_terms(&self) -> [u64; 256] {
        std::array::from_fn(|byte| (byte as u64 + 1).wrapping_mul(self.out_factor))
    }

    /// [`Roll::roll`] with the outgoing byte's term from [`Roll::out_terms`].
    fn roll_term(&mut self, out_term: u64, incoming: u8) {
        self.hash = self
            .hash
            .wrapping_sub(out_term)
            .wrapping_mul(MUL)
            .wrapping_add(u64::from(incoming) + 1);
    }
}

/// Index of a basis for [`diff`]. Cheap to share between threads (`Sync`).
#[derive(Debug)]
pub struct BasisIndex<'a> {
    basis: &'a [u8],
    opts: MatchOptions,
    /// Slot = the `table_bits` of the mixed hash just below its anchor bits; value = an
    /// [`entry`]: position + 1 and check bits (0 = empty).
    table: Vec<AtomicU64>,
    /// log2 of the number of slots.
    table_bits: u32,
    /// A window is an anchor when its mixed hash has this many top bits clear
    /// (log2 of [`MatchOptions::anchor_spacing`]).
    anchor_bits: u32,
}

impl<'a> BasisIndex<'a> {
    /// Indexes `basis` (in production a memory map of all source layer tars). Positions beyond
    /// 4 GiB are not indexed globally (hints still reach them).
    pub fn new(basis: &'a [u8], opts: MatchOptions) -> Self {
        Self::new_with_release(basis, opts, &|_| {})
    }

    /// Like [`BasisIndex::new`], and calls `release` with each basis range (about 8 MiB) the
    /// indexer has finished reading, so that a caller holding the basis in a memory map can drop
    /// those pages from its resident set while indexing goes on. Called from indexing threads.
    pub fn new_with_release(
        basis: &'a [u8],
        opts: MatchOptions,
        release: &(dyn Fn(Range<usize>) + Sync),
    ) -> Self {
        let index = Self::empty(basis, basis.len(), opts);
        let started = std::time::Instant::now();
        index.build(release);
        tracing::debug!(
            basis_bytes = basis.len(),
            index_bytes = index.index_bytes(),
            seconds = started.elapsed().as_secs_f64(),
            "basis indexed"
        );
        index
    }

    /// An index with an empty table sized for a basis of `len` bytes.
    fn empty(basis: &'a [u8], len: usize, opts: MatchOptions) -> Self {
        let (slots, anchor_bits) = table_size(len, &opts);
        let table: Vec<AtomicU64> = (0..slots).map(|_| AtomicU64::new(0)).collect();
        Self {
            basis,
            opts,
            table,
            table_bits: slots.trailing_zeros(),
            anchor_bits,
        }
    }

    /// The indexed basis.
    pub fn basis(&self) -> &'a [u8] {
        self.basis
    }

    /// The options the index was built with.
    pub fn options(&self) -> &MatchOptions {
        &self.opts
    }

    /// Approximate heap size of the index in bytes.
    pub fn index_bytes(&self) -> usize {
        self.table.len() * 8
    }

    fn build(&self, release: &(dyn Fn(Range<usize>) + Sync)) {
        let window = self.opts.window;
        let indexed_len = self.basis.len().min(u32::MAX as usize - 1);
        if indexed_len < window || window == 0 {
            return;
        }
        let window_starts = indexed_len - window + 1;
        let threads = self.opts.thread_count().max(1);
        let starts_per_thread = window_starts.div_ceil(threads);
        std::thread::scope(|scope| {
            for thread in 0..threads {
                let start = thread * starts_per_thread;
                let end = ((thread + 1) * starts_per_thread).min(window_starts);
                if start < end {
                    scope.spawn(move || self.build_range(start, end, release));
                }
            }
        });
    }

    /// Inserts the anchors among window starts `start..end`, releasing finished ranges.
    fn build_range(&self, start: usize, end: usize, release: &(dyn Fn(Range<usize>) + Sync)) {
        const RELEASE_EVERY: usize = 8 << 20;
        let window = self.opts.window;
        let mut batch = AnchorBatch::default();
        let mut block_start = start;
        while block_start < end {
            let block_end = end.min(block_start + RELEASE_EVERY);
            self.for_each_anchor(self.basis, block_start..block_end, |pos, mixed| {
                if batch.push(self.slot(mixed), entry(pos, mixed)) {
                    self.insert(&mut batch);
                }
            });
            release(block_start..block_end);
            block_start = block_end;
        }
        self.insert(&mut batch);
        release(end..(end + window - 1).min(self.basis.len()));
    }

    /// Calls `visit(window_start, mixed hash)` for every anchor among the window starts
    /// `starts` of `bytes`, which must hold each of those windows whole.
    ///
    /// A roll step waits for the previous step's multiplication, so one rolling hash keeps
    /// the core mostly idle. The starts are therefore rolled as two halves in one loop, two
    /// independent chains; anchors are visited in no particular order, which the table
    /// (largest entry per slot) does not depend on. With the table of outgoing terms and the
    /// loop over plain slices, the scan takes 40–45 % less CPU than one lane did (p2).
    fn for_each_anchor(
        &self,
        bytes: &[u8],
        starts: Range<usize>,
        mut visit: impl FnMut(usize, u64),
    ) {
        let window = self.opts.window;
        if starts.is_empty() {
            return;
        }
        // An anchor's mixed hash has its top `anchor_bits` clear.
        let anchor_max = u64::MAX >> self.anchor_bits;
        let half = starts.len() / 2;
        let (a, b) = (starts.start, starts.start + half);
        let mut roll_a = Roll::new(window);
        let out_terms = roll_a.out_terms();
        let mut roll_b = roll_a;
        roll_a.reset(&bytes[a..a + window]);
        roll_b.reset(&bytes[b..b + window]);
        // Both lanes step `steps` times with a next window that is complete, so the bytes
        // leaving and entering are plain slices (no bounds checks in the loop).
        let steps = half.saturating_sub(1);
        let lane_a = bytes[a..a + steps]
            .iter()
            .zip(&bytes[a + window..a + window + steps]);
        let lane_b = bytes[b..b + steps]
            .iter()
            .zip(&bytes[b + window..b + window + steps]);
        for (i, ((&out_a, &in_a), (&out_b, &in_b))) in lane_a.zip(lane_b).enumerate() {
            let mixed_a = roll_a.mixed();
            if mixed_a <= anchor_max {
                visit(a + i, mixed_a);
            }
            let mixed_b = roll_b.mixed();
            if mixed_b <= anchor_max {
                visit(b + i, mixed_b);
            }
            roll_a.roll_term(out_terms[usize::from(out_a)], in_a);
            roll_b.roll_term(out_terms[usize::from(out_b)], in_b);
        }
        // The first lane's last start (none when the range has one start), then the rest of
        // the second lane (one start more than the first when their count is odd).
        if half > 0 {
            let mixed = roll_a.mixed();
            if mixed <= anchor_max {
                visit(a + steps, mixed);
            }
        }
        for pos in b + steps..starts.end {
            let mixed = roll_b.mixed();
            if mixed <= anchor_max {
                visit(pos, mixed);
            }
            if let Some(&incoming) = bytes.get(pos + window) {
                roll_b.roll_term(out_terms[usize::from(bytes[pos])], incoming);
            }
        }
    }

    /// Inserts a batch of anchors. The table (32 MiB) is far larger than the
    /// caches and a locked read-modify-write waits for its cache miss before
    /// anything else proceeds, so the slots are first read with plain loads,
    /// whose misses overlap; an entry not above its slot's value is skipped
    /// (values only grow), the rest are `fetch_max`ed on lines now cached.
    /// The table ends up the same: the maximum entry per slot.
    fn insert(&self, batch: &mut AnchorBatch) {
        let count = batch.len;
        let mut current = [0u64; ANCHOR_BATCH];
        for (value, &(slot, _)) in current.iter_mut().zip(&batch.items[..count]) {
            *value = self.table[slot].load(Ordering::Relaxed);
        }
        for (&value, &(slot, entry)) in current.iter().zip(&batch.items[..count]) {
            if entry > value {
                self.table[slot].fetch_max(entry, Ordering::Relaxed);
            }
        }
        batch.len = 0;
    }

    /// True when the window with this mixed hash is an anchor: its top `anchor_bits` are clear.
    fn is_anchor(&self, mixed: u64) -> bool {
        self.anchor_bits == 0 || mixed >> (64 - self.anchor_bits) == 0
    }

    /// The table slot of a mixed hash.
    fn slot(&self, mixed: u64) -> usize {
        // Bits just below the anchor bits (which are all zero for an anchor).
        ((mixed << self.anchor_bits) >> (64 - self.table_bits)) as usize
    }

    /// The basis position indexed for this hash, if its check bits agree: a
    /// candidate is only compared with the basis (a page touched, maybe a
    /// cache miss) when it is likely to be a real match.
    fn lookup(&self, mixed: u64) -> Option<usize> {
        match self.table[self.slot(mixed)].load(Ordering::Relaxed) {
            0 => None,
            entry if entry as u32 == check(mixed) => Some((entry >> 32) as usize - 1),
            _ => None,
        }
    }
}

/// Slots of the global table and anchor bits for a basis of `len` bytes: twice the expected
/// number of anchors, rounded up to a power of two, at most `max_index_bytes` of 8-byte slots.
fn table_size(len: usize, opts: &MatchOptions) -> (usize, u32) {
    let anchor_bits = opts
        .anchor_spacing
        .max(1)
        .next_power_of_two()
        .trailing_zeros();
    let expected_anchors = (len >> anchor_bits).max(1);
    let max_slots = (opts.max_index_bytes / 8).max(1024);
    let slots = (expected_anchors.saturating_mul(2))
        .next_power_of_two()
        .min(prev_power_of_two(max_slots));
    (slots, anchor_bits)
}

/// Builds the global table of a [`BasisIndex`] from the basis bytes as they arrive (e.g. while
/// the source layers are decompressed), so that indexing overlaps fetching instead of
/// following it, and without reading the basis a second time.
///
/// [`IndexBuilder::finish`] gives exactly the index [`BasisIndex::new`] builds from the same
/// bytes: the table holds the largest entry per slot, whatever the order of insertion. The
/// table is sized for a large basis, one whose table reaches [`MatchOptions::max_index_bytes`]
/// (64 MiB and more with the defaults); for a smaller basis `finish` indexes it again the
/// ordinary way.
#[derive(Debug)]
pub struct IndexBuilder {
    /// The table being filled (its basis is empty until `finish`).
    index: BasisIndex<'static>,
    /// Last `window - 1` bytes seen: the windows starting there are not complete yet.
    carry: Vec<u8>,
    /// Bytes seen so far.
    seen: usize,
    /// Anchors found but not yet in the table.
    batch: AnchorBatch,
}

impl IndexBuilder {
    /// A builder for an index with these options.
    pub fn new(opts: MatchOptions) -> Self {
        IndexBuilder {
            index: BasisIndex::empty(&[], usize::MAX, opts),
            carry: Vec::new(),
            seen: 0,
            batch: AnchorBatch::default(),
        }
    }

    /// Bytes fed so far.
    pub fn len(&self) -> usize {
        self.seen
    }

    /// True when nothing was fed yet.
    pub fn is_empty(&self) -> bool {
        self.seen == 0
    }

    /// Indexes the next bytes of the basis.
    pub fn feed(&mut self, bytes: &[u8]) {
        let window = self.index.opts.window;
        let before = self.seen;
        self.seen += bytes.len();
        if window == 0 {
            return;
        }
        // The windows that start in the carry end in the first `window - 1` new bytes: they
        // are scanned from a copy of those few bytes, the rest straight from `bytes`.
        let head = &bytes[..bytes.len().min(window - 1)];
        let mut joined = std::mem::take(&mut self.carry);
        let joined_start = before - joined.len();
        joined.extend_from_slice(head);
        self.scan(&joined, joined_start);
        self.scan(bytes, before);
        if bytes.len() >= window - 1 {
            joined.clear();
            joined.extend_from_slice(&bytes[bytes.len() - (window - 1)..]);
        } else {
            // `joined` is the carry and all of `bytes`.
            joined.drain(..joined.len().saturating_sub(window - 1));
        }
        self.carry = joined;
    }

    /// Indexes the complete windows of `buf`, whose first byte is at basis position `start`.
    fn scan(&mut self, buf: &[u8], start: usize) {
        let window = self.index.opts.window;
        // Window starts at or beyond 4 GiB - 1 - window are not indexed (as in `build`).
        let max_start = (u32::MAX as usize - 1).checked_sub(window);
        // The last window start to index, relative to buf[0]: the last complete window, and
        // none beyond `max_start`.
        let Some(last_start) = buf
            .len()
            .checked_sub(window)
            .zip(max_start.and_then(|max| max.checked_sub(start)))
            .map(|(last_complete, last_allowed)| last_complete.min(last_allowed))
        else {
            return;
        };
        let (index, batch) = (&self.index, &mut self.batch);
        index.for_each_anchor(buf, 0..last_start + 1, |window_start, mixed| {
            if batch.push(index.slot(mixed), entry(start + window_start, mixed)) {
                index.insert(batch);
            }
        });
    }

    /// The index of `basis`, which must be the bytes fed; if its length differs from what was
    /// fed, or the table would have another size, `basis` is indexed the ordinary way.
    pub fn finish<'a>(
        mut self,
        basis: &'a [u8],
        release: &(dyn Fn(Range<usize>) + Sync),
    ) -> BasisIndex<'a> {
        self.index.insert(&mut self.batch);
        let opts = self.index.opts.clone();
        if basis.len() != self.seen || table_size(basis.len(), &opts).0 != self.index.table.len() {
            return BasisIndex::new_with_release(basis, opts, release);
        }
        tracing::debug!(
            basis_bytes = basis.len(),
            index_bytes = self.index.index_bytes(),
            "basis indexed while fetched"
        );
        BasisIndex {
            basis,
            opts,
            table: self.index.table,
            table_bits: self.index.table_bits,
            anchor_bits: self.index.anchor_bits,
        }
    }
}

/// Anchors inserted into the global table together (see `BasisIndex::insert`).
const ANCHOR_BATCH: usize = 32;

/// Anchors found but not yet inserted: `(slot, entry)`.
#[derive(Debug)]
struct AnchorBatch {
    /// `(slot, entry)` pairs; the first `len` are valid.
    items: [(usize, u64); ANCHOR_BATCH],
    len: usize,
}

impl Default for AnchorBatch {
    fn default() -> Self {
        AnchorBatch {
            items: [(0, 0); ANCHOR_BATCH],
            len: 0,
        }
    }
}

impl AnchorBatch {
    /// Adds an anchor; true when the batch is full.
    fn push(&mut self, slot: usize, entry: u64) -> bool {
        self.items[self.len] = (slot, entry);
        self.len += 1;
        self.len == ANCHOR_BATCH
    }
}

/// Check bits of a hash: its low half, independent of the bits that pick the
/// slot (the top ones) as long as anchor and table bits fit in 32.
fn check(mixed: u64) -> u32 {
    mixed as u32
}

/// A table entry: position + 1 in the high half (so `fetch_max` keeps the
/// last position, whatever the thread order), check bits in the low half.
fn entry(pos: usize, mixed: u64) -> u64 {
    ((pos as u64 + 1) << 32) | u64::from(check(mixed))
}

fn prev_power_of_two(n: usize) -> usize {
    if n.is_power_of_two() {
        n
    } else {
        n.next_power_of_two() / 2
    }
}

/// Number of equal leading bytes of `a` and `b`, compared eight at a time.
fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    let len = a.len().min(b.len());
    let (a, b) = (&a[..len], &b[..len]);
    let mut equal = 0;
    for (x, y) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
        let x = u64::from_le_bytes([x[0], x[1], x[2], x[3], x[4], x[5], x[6], x[7]]);
        let y = u64::from_le_bytes([y[0], y[1], y[2], y[3], y[4], y[5], y[6], y[7]]);
        let differing_bits = x ^ y;
        if differing_bits != 0 {
            // Little-endian: the lowest set bit is in the first differing byte.
            return equal + (differing_bits.trailing_zeros() / 8) as usize;
        }
        equal += 8;
    }
    equal
        + a[equal..]
            .iter()
            .zip(&b[equal..])
            .take_while(|(x, y)| x == y)
            .count()
}

/// Number of equal trailing bytes of `a` and `b`.
fn common_suffix(a: &[u8], b: &[u8]) -> usize {
    a.iter()
        .rev()
        .zip(b.iter().rev())
        .take_while(|(x, y)| x == y)
        .count()
}

/// Dense hash-chain index of one hinted basis range (reused between hints of a worker).
///
/// Sample `k` is the window at basis position `basis_start + k · stride`; samples with the same
/// short-window hash form a chain, newest first: `chain_head[bucket]` is the last sample of a
/// bucket, `chain_next[k]` the sample before `k` in its bucket (`u32::MAX` ends a chain).
#[derive(Debug, Default)]
struct HintIndex {
    /// Which hint (index into the normalized list) the tables describe.
    hint: Option<usize>,
    /// Basis position of the hinted range's first byte (sample 0).
    basis_start: usize,
    /// Distance between indexed window starts (1 unless the range has more than
    /// [`MatchOptions::max_hint_positions`] windows).
    stride: usize,
    /// log2 of the number of buckets.
    bucket_bits: u32,
    chain_head: Vec<u32>,
    chain_next: Vec<u32>,
}

/// Bucket of a window of at most 8 bytes: the top `bucket_bits` of the bytes times [`MUL`].
fn hash_short(bytes: &[u8], bucket_bits: u32) -> usize {
    let mut word = [0u8; 8];
    word[..bytes.len()].copy_from_slice(bytes);
    (u64::from_le_bytes(word).wrapping_mul(MUL) >> (64 - bucket_bits)) as usize
}

impl HintIndex {
    /// Indexes `range`, the basis bytes of hint `hint` starting at basis position `basis_start`.
    fn build(&mut self, hint: usize, range: &[u8], basis_start: usize, opts: &MatchOptions) {
        let hint_window = opts.hint_window;
        self.hint = Some(hint);
        self.basis_start = basis_start;
        let window_starts = (range.len() + 1).saturating_sub(hint_window);
        self.stride = window_starts
            .div_ceil(opts.max_hint_positions.max(1))
            .max(1);
        let samples = window_starts.div_ceil(self.stride);
        self.bucket_bits = samples.next_power_of_two().max(256).trailing_zeros();
        self.chain_head.clear();
        self.chain_head.resize(1 << self.bucket_bits, u32::MAX);
        self.chain_next.clear();
        self.chain_next.resize(samples, u32::MAX);
        // Two passes: the buckets first (independent hashes, in `chain_next`), then the
        // links, whose random accesses to `chain_head` no longer wait behind the hashing.
        let stride = self.stride;
        let bucket_bits = self.bucket_bits;
        for (sample, next) in self.chain_next.iter_mut().enumerate() {
            let offset = sample * stride;
            *next = hash_short(&range[offset..offset + hint_window], bucket_bits) as u32;
        }
        for (sample, next) in self.chain_next.iter_mut().enumerate() {
            let bucket = *next as usize;
            *next = self.chain_head[bucket];
            self.chain_head[bucket] = sample as u32;
        }
    }

    /// Calls `visit` with candidate basis positions for the window `bytes`, most recent first,
    /// at most `max_chain` of them.
    fn candidates(&self, bytes: &[u8], max_chain: usize, mut visit: impl FnMut(usize)) {
        let mut sample = self.chain_head[hash_short(bytes, self.bucket_bits)];
        let mut walked = 0;
        while sample != u32::MAX && walked < max_chain {
            visit(self.basis_start + sample as usize * self.stride);
            sample = self.chain_next[sample as usize];
            walked += 1;
        }
    }
}

/// Matches `target` against the index and writes a complete delta stream (magic … END) to `out`.
///
/// `hints` may be empty, unsorted or overlapping; ranges outside the inputs are clipped. The
/// target is matched in chunks of [`MatchOptions::chunk_size`] on up to
/// [`MatchOptions::threads`] threads; the output depends only on the inputs and the index
/// options, not on the thread count. Besides the index, each thread holds the hash chains of one
/// hint (at most `12 ×` [`MatchOptions::max_hint_positions`] bytes) and the commands of its chunk.
/// The index can serve several `diff` calls at once.
pub fn diff<W: Write>(
    index: &BasisIndex,
    target: &[u8],
    hints: &[Hint],
    out: W,
) -> io::Result<DeltaStats> {
    diff_with_layout(index, target, hints, &BasisLayout::default(), out)
}

/// [`diff`] for a basis whose file bodies are known: with [`MatchOptions::device`], the
/// device's cost of each COPY counts the files it opens (see [`BasisLayout`]).
pub fn diff_with_layout<W: Write>(
    index: &BasisIndex,
    target: &[u8],
    hints: &[Hint],
    layout: &BasisLayout,
    out: W,
) -> io::Result<DeltaStats> {
    let hints = normalize_hints(hints, index.basis.len(), target.len());
    let mut ops = Vec::new();
    match_chunks(
        index,
        &[(target, &hints[..])],
        layout,
        usize::MAX,
        |_, _, chunk| {
            ops.push(chunk);
            Ok(())
        },
    )?;
    stitch(index.basis, target, hints.len(), ops, out)
}

/// Several independent [`diff_with_layout`] calls at once: `jobs` are `(target, hints)` pairs,
/// and the result is, per job, the complete delta stream and its statistics, exactly as
/// [`diff_with_layout`] would write them. The chunks of all jobs share one pool of
/// [`MatchOptions::threads`] threads, so that a slow chunk of one job overlaps the chunks of the
/// others instead of leaving threads idle. Each job's stream is held in memory.
pub fn diff_many_with_layout(
    index: &BasisIndex,
    jobs: &[(&[u8], &[Hint])],
    layout: &BasisLayout,
) -> io::Result<Vec<(Vec<u8>, DeltaStats)>> {
    let mut out = Vec::with_capacity(jobs.len());
    diff_many_in_order(index, jobs, layout, usize::MAX, |_, delta, stats| {
        out.push((delta, stats));
        Ok(())
    })?;
    Ok(out)
}

/// [`diff_many_with_layout`] with each job's stream handed to `emit(job, stream, stats)` on
/// the calling thread, in job order, as soon as the job's chunks are matched, while the
/// threads go on with later chunks: at most `lookahead_bytes` of target (rounded up to whole
/// chunks) are matched ahead of the oldest job not yet emitted. The streams are the same as
/// [`diff_many_with_layout`]'s. An error of `emit` stops the matching and is returned.
pub fn diff_many_in_order(
    index: &BasisIndex,
    jobs: &[(&[u8], &[Hint])],
    layout: &BasisLayout,
    lookahead_bytes: usize,
    mut emit: impl FnMut(usize, Vec<u8>, DeltaStats) -> io::Result<()>,
) -> io::Result<()> {
    let hints: Vec<_> = jobs
        .iter()
        .map(|(t, h)| normalize_hints(h, index.basis.len(), t.len()))
        .collect();
    let normalized: Vec<(&[u8], &NormalizedHints)> = jobs
        .iter()
        .zip(&hints)
        .map(|((t, _), h)| (*t, &h[..]))
        .collect();
    let mut chunks: Vec<Vec<Op>> = Vec::new();
    match_chunks(
        index,
        &normalized,
        layout,
        lookahead_bytes,
        |job, last, ops| {
            chunks.push(ops);
            if !last {
                return Ok(());
            }
            let (target, hints) = normalized[job];
            let mut out = Vec::new();
            let stats = stitch(
                index.basis,
                target,
                hints.len(),
                std::mem::take(&mut chunks),
                &mut out,
            )?;
            emit(job, out, stats)
        },
    )
}

/// Normalized hints of one job: `(target range, basis range)`.
type NormalizedHints = [(Range<usize>, Range<usize>)];

/// Matches and refines every chunk of every job on a pool of threads (see
/// [`crate::schedule`]); calls `take(job, last chunk of the job?, ops)` for every chunk in
/// order, on the calling thread. A job without bytes has one empty chunk.
fn match_chunks(
    index: &BasisIndex,
    jobs: &[(&[u8], &NormalizedHints)],
    layout: &BasisLayout,
    lookahead_bytes: usize,
    mut take: impl FnMut(usize, bool, Vec<Op>) -> io::Result<()>,
) -> io::Result<()> {
    let chunk_size = index.opts.chunk_size.max(1 << 16);
    // Work items in order: (job, chunk of the job, last chunk of the job?).
    let items: Vec<(usize, usize, bool)> = jobs
        .iter()
        .enumerate()
        .flat_map(|(job, (target, _))| {
            let chunks = target.len().div_ceil(chunk_size).max(1);
            (0..chunks).map(move |chunk| (job, chunk, chunk + 1 == chunks))
        })
        .collect();
    let lookahead = lookahead_bytes.div_ceil(chunk_size);
    crate::schedule::run_ordered(
        items.len(),
        index.opts.thread_count(),
        lookahead,
        || {
            // The hint chains are kept while the job stays the same.
            let current: Option<(usize, ChunkMatcher)> = None;
            (Refiner::new(&index.opts), current)
        },
        |(refiner, current), item| {
            let (job, chunk, _) = items[item];
            let (target, hints) = jobs[job];
            if target.is_empty() {
                return Vec::new();
            }
            let matcher = match current {
                Some((matcher_job, matcher)) if *matcher_job == job => matcher,
                _ => {
                    &mut current
                        .insert((job, ChunkMatcher::new(index, target, hints)))
                        .1
                }
            };
            let range = chunk * chunk_size..((chunk + 1) * chunk_size).min(target.len());
            let ops = matcher.run(range);
            refiner.refine(ops, target, layout)
        },
        |item, ops| {
            let (job, _, last) = items[item];
            take(job, last, ops)
        },
    )
}

/// Sorted, non-overlapping hints with in-bounds ranges, as `(target range, basis range)`.
fn normalize_hints(
    hints: &[Hint],
    basis_len: usize,
    target_len: usize,
) -> Vec<(Range<usize>, Range<usize>)> {
    let clip = |r: &Range<u64>, len: usize| {
        let s = usize::try_from(r.start).unwrap_or(usize::MAX).min(len);
        let e = usize::try_from(r.end).unwrap_or(usize::MAX).min(len);
        s..e.max(s)
    };
    let mut v: Vec<_> = hints
        .iter()
        .map(|h| (clip(&h.target, target_len), clip(&h.basis, basis_len)))
        .filter(|(t, b)| !t.is_empty() && !b.is_empty())
        .collect();
    v.sort_by_key(|(t, b)| (t.start, t.end, b.start, b.end));
    let mut end: usize = 0;
    v.retain_mut(|(t, _)| {
        t.start = t.start.max(end);
        end = end.max(t.end);
        t.start < t.end
    });
    v
}

/// Per-worker matching state.
struct ChunkMatcher<'i, 'a> {
    index: &'i BasisIndex<'a>,
    target: &'i [u8],
    hints: &'i [(Range<usize>, Range<usize>)],
    /// Hash chains of the hint last searched.
    hint_index: HintIndex,
    /// Diagonals (basis − target) of recent COPYs, most recent first.
    recent_diagonals: Vec<isize>,
}

/// A verified candidate: COPY of `len` bytes from `basis`, starting at target `start`.
#[derive(Debug, Clone, Copy)]
struct Found {
    start: usize,
    basis: usize,
    len: usize,
    /// Found on a recent COPY's or the hint's diagonal, so held to
    /// [`MatchOptions::min_rep_copy`] instead of [`MatchOptions::min_copy`].
    on_diagonal: bool,
}

/// Recent diagonals kept (measured: 1, 2, 4, 8, 16).
const MAX_RECENT_DIAGONALS: usize = 4;
/// A candidate at least this long is taken without searching the hint's hash chains.
const GOOD_ENOUGH: usize = 256;
/// Pending literal bytes before a hint's hash chains are searched (measured: 0, 4, 8, 16).
const CHAIN_DELAY: usize = 4;
/// Matches shorter than this are checked against the match one byte later (measured: 32, 64,
/// 256, unbounded).
const LAZY_BELOW: usize = 256;
/// ... which wins if it reaches this many bytes further (measured: 1, 2, 4, 8).
const LAZY_GAIN: usize = 2;

impl<'i, 'a> ChunkMatcher<'i, 'a> {
    fn new(
        index: &'i BasisIndex<'a>,
        target: &'i [u8],
        hints: &'i [(Range<usize>, Range<usize>)],
    ) -> Self {
        Self {
            index,
            target,
            hints,
            hint_index: HintIndex::default(),
            recent_diagonals: Vec::with_capacity(MAX_RECENT_DIAGONALS),
        }
    }

    /// Matches the target bytes `range` (one chunk): the chunk's commands, in target order,
    /// covering the range exactly.
    fn run(&mut self, range: Range<usize>) -> Vec<Op> {
        let opts = &self.index.opts;
        let (target, hints) = (self.target, self.hints);
        let (chunk_start, chunk_end) = (range.start, range.end);
        let window = opts.window;
        let min_len = opts.min_copy.min(opts.min_rep_copy).max(1);
        self.recent_diagonals.clear();
        let mut ops = Vec::new();
        // Start of the pending literal: target bytes from here to `pos` have no COPY yet.
        let mut literal_start = chunk_start;
        // The target position searched for a match.
        let mut pos = chunk_start;
        // Rolling hash of the window at `pos`, when `roll_valid`.
        let mut roll = Roll::new(window);
        let mut roll_valid = false;
        // The first hint that does not end at or before `pos`.
        let mut hint = hints.partition_point(|(hint_target, _)| hint_target.end <= chunk_start);
        while pos + min_len <= chunk_end {
            while hint < hints.len() && hints[hint].0.end <= pos {
                hint += 1;
            }
            let mixed = if pos + window <= target.len() {
                if !roll_valid {
                    roll.reset(&target[pos..pos + window]);
                    roll_valid = true;
                }
                Some(roll.mixed())
            } else {
                None
            };
            let mut found = self.search(pos, literal_start, chunk_end, hint, mixed);
            // Lazy evaluation: a short match may hide a longer one starting a byte later.
            if let Some(here) =
                found.filter(|here| here.len < LAZY_BELOW && pos + 1 + min_len <= chunk_end)
            {
                let next_mixed = (roll_valid && pos + window < target.len()).then(|| {
                    let mut next_roll = roll;
                    next_roll.roll(target[pos], target[pos + window]);
                    next_roll.mixed()
                });
                let next_hint = if hints
                    .get(hint)
                    .is_some_and(|(hint_target, _)| hint_target.end <= pos + 1)
                {
                    hint + 1
                } else {
                    hint
                };
                if let Some(later) =
                    self.search(pos + 1, literal_start, chunk_end, next_hint, next_mixed)
                {
                    if later.start + later.len > here.start + here.len + LAZY_GAIN {
                        found = None;
                    }
                }
            }
            if let Some(copy) = found {
                if copy.start > literal_start {
                    ops.push(Op {
                        target: literal_start,
                        len: copy.start - literal_start,
                        basis: None,
                    });
                }
                ops.push(Op {
                    target: copy.start,
                    len: copy.len,
                    basis: Some(copy.basis),
                });
                debug_assert_eq!(
                    target[copy.start..copy.start + copy.len],
                    self.index.basis[copy.basis..copy.basis + copy.len]
                );
                let diagonal = copy.basis as isize - copy.start as isize;
                self.recent_diagonals.retain(|&known| known != diagonal);
                self.recent_diagonals.insert(0, diagonal);
                self.recent_diagonals.truncate(MAX_RECENT_DIAGONALS);
                pos = copy.start + copy.len;
                literal_start = pos;
                roll_valid = false;
            } else {
                if roll_valid && pos + window < target.len() {
                    roll.roll(target[pos], target[pos + window]);
                } else {
                    roll_valid = false;
                }
                pos += 1;
            }
        }
        if literal_start < chunk_end {
            ops.push(Op {
                target: literal_start,
                len: chunk_end - literal_start,
                basis: None,
            });
        }
        ops
    }

    /// The best acceptable COPY covering target position `pos` (extended backwards down to
    /// `literal_start`, forwards up to `chunk_end`), from the recent diagonals, the hint `hint`
    /// (if it covers `pos`) and the global index (`mixed` = rolling hash of the window at `pos`).
    fn search(
        &mut self,
        pos: usize,
        literal_start: usize,
        chunk_end: usize,
        hint: usize,
        mixed: Option<u64>,
    ) -> Option<Found> {
        let opts = &self.index.opts;
        let (target, basis) = (self.target, self.index.basis);
        let hint_window = opts.hint_window.clamp(1, 8);
        let covering_hint = self
            .hints
            .get(hint)
            .filter(|(hint_target, _)| hint_target.start <= pos && pos < hint_target.end);
        let mut best: Option<Found> = None;
        // Extends a candidate basis position: `pos` ↔ `basis_pos`.
        let consider = |basis_pos: usize, on_diagonal: bool, best: &mut Option<Found>| {
            if basis_pos >= basis.len() {
                return;
            }
            let forward = common_prefix(&target[pos..chunk_end], &basis[basis_pos..]);
            if forward == 0 {
                return;
            }
            let backward = common_suffix(&target[literal_start..pos], &basis[..basis_pos]);
            let len = forward + backward;
            if best.is_none_or(|best| len > best.len) {
                *best = Some(Found {
                    start: pos - backward,
                    basis: basis_pos - backward,
                    len,
                    on_diagonal,
                });
            }
        };
        for &diagonal in &self.recent_diagonals {
            if let Some(basis_pos) = pos.checked_add_signed(diagonal) {
                consider(basis_pos, true, &mut best);
            }
        }
        if let Some((hint_target, hint_basis)) = covering_hint {
            // The hint's own diagonal: the old file at the same relative offset.
            let basis_pos = hint_basis.start + (pos - hint_target.start);
            if basis_pos < hint_basis.end {
                consider(basis_pos, true, &mut best);
            }
            // Chains only once the diagonals failed for a few bytes (backward extension
            // recovers them), so in-place edits never pay for building the hint's index.
            let good_enough = best.is_some_and(|best| best.len >= GOOD_ENOUGH);
            if !good_enough
                && pos - literal_start >= CHAIN_DELAY
                && pos + hint_window <= target.len()
                && hint_basis.len() >= hint_window
            {
                if self.hint_index.hint != Some(hint) {
                    self.hint_index
                        .build(hint, &basis[hint_basis.clone()], hint_basis.start, opts);
                }
                self.hint_index.candidates(
                    &target[pos..pos + hint_window],
                    opts.max_chain,
                    |basis_pos| consider(basis_pos, false, &mut best),
                );
            }
        }
        if let Some(anchor) = mixed.filter(|&mixed| self.index.is_anchor(mixed)) {
            if let Some(basis_pos) = self.index.lookup(anchor) {
                consider(basis_pos, false, &mut best);
            }
        }
        best.filter(|found| {
            found.len
                >= if found.on_diagonal {
                    opts.min_rep_copy
                } else {
                    opts.min_copy
                }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::patch::patch;

    fn roundtrip(basis: &[u8], target: &[u8], hints: &[Hint], opts: MatchOptions) -> DeltaStats {
        let index = BasisIndex::new(basis, opts);
        let mut delta = Vec::new();
        let stats = diff(&index, target, hints, &mut delta).unwrap();
        assert_eq!(stats.delta_bytes, delta.len() as u64);
        let mut out = Vec::new();
        patch(basis, &delta[..], &mut out).unwrap();
        assert!(out == target, "round trip");
        stats
    }

    fn noise(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn index_is_shareable_between_threads() {
        fn sync<T: Sync + Send>() {}
        sync::<BasisIndex<'static>>();
        sync::<Hint>();
    }

    #[test]
    fn common_prefix_counts_bytes() {
        assert_eq!(common_prefix(b"abcdefghijk", b"abcdefghijX"), 10);
        assert_eq!(common_prefix(b"abcdefghijk", b"abcdeXghijk"), 5);
        assert_eq!(common_prefix(b"abc", b"abcdef"), 3);
        assert_eq!(common_suffix(b"xxabc", b"yabc"), 3);
    }

    #[test]
    fn finds_unaligned_moves_anywhere() {
        let basis = noise(200_000, 1);
        let mut target = basis[123_457..150_001].to_vec();
        target.extend_from_slice(b"new bytes in between");
        target.extend_from_slice(&basis[7..20_000]);
        let s = roundtrip(&basis, &target, &[], MatchOptions::default());
        assert_eq!(s.literal_bytes, 20);
        assert_eq!(s.copy_ops, 2);
    }

    #[test]
    fn rep_diagonal_resumes_after_small_changes() {
        let basis = noise(100_000, 2);
        let mut target = basis.clone();
        for i in (1000..90_000).step_by(50) {
            target[i] ^= 0xff;
        }
        let s = roundtrip(&basis, &target, &[], MatchOptions::default());
        assert_eq!(s.literal_bytes, 1780);
    }

    #[test]
    fn hints_find_short_matches_the_global_index_misses() {
        let basis = noise(300_000, 3);
        // Old "file" at 100_000..110_000; new version has a change every 20 bytes plus a shift.
        let mut file = basis[100_000..110_000].to_vec();
        file.insert(5000, b'!');
        for i in (0..file.len()).step_by(20) {
            file[i] = file[i].wrapping_add(1);
        }
        let target = [&noise(1000, 4)[..], &file].concat();
        let without = roundtrip(&basis, &target, &[], MatchOptions::default());
        let hint = Hint {
            target: 1000..target.len() as u64,
            basis: 100_000..110_000,
        };
        let with = roundtrip(&basis, &target, &[hint], MatchOptions::default());
        assert!(with.literal_bytes < 2000, "{with:?}");
        assert!(
            with.literal_bytes * 4 < without.literal_bytes,
            "{with:?} {without:?}"
        );
    }

    #[test]
    fn output_does_not_depend_on_threads() {
        let basis = noise(600_000, 5);
        let mut target = basis[1000..400_000].to_vec();
        for i in (0..target.len()).step_by(997) {
            target[i] = 0;
        }
        let run = |threads| {
            let opts = MatchOptions {
                threads,
                chunk_size: 1 << 16,
                ..MatchOptions::default()
            };
            let index = BasisIndex::new(&basis, opts);
            let mut d = Vec::new();
            diff(&index, &target, &[], &mut d).unwrap();
            d
        };
        let one = run(1);
        assert!(one == run(2) && one == run(3));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]

        /// However the basis is cut into fed pieces, and whatever the thread count of the
        /// ordinary build, both fill the same table (both scan with two lanes).
        #[test]
        fn streamed_index_equals_built_index_for_any_cuts(
            seed in proptest::prelude::any::<u64>(),
            len in 4096usize..40_000,
            cuts in proptest::collection::vec(0usize..40_000, 0..10),
            window in proptest::prop_oneof![
                proptest::strategy::Just(4usize),
                proptest::strategy::Just(13),
                proptest::strategy::Just(32),
            ],
            threads in 1usize..4,
        ) {
            // Few distinct bytes: repeated windows, so slots are contended.
            let basis: Vec<u8> = noise(len, seed).iter().map(|b| b % 4).collect();
            // Small enough a table that the builder's (sized for any basis) is the one
            // `finish` keeps instead of indexing again.
            let opts = MatchOptions {
                window,
                anchor_spacing: 4,
                max_index_bytes: 8 << 10,
                threads,
                ..MatchOptions::default()
            };
            let built = BasisIndex::new(&basis, opts.clone());
            let mut builder = IndexBuilder::new(opts);
            proptest::prop_assert_eq!(builder.index.table.len(), built.table.len());
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % len).collect();
            cuts.push(0);
            cuts.push(len);
            cuts.sort_unstable();
            for piece in cuts.windows(2) {
                builder.feed(&basis[piece[0]..piece[1]]);
            }
            let streamed = builder.finish(&basis, &|_| {});
            let table = |index: &BasisIndex| -> Vec<u64> {
                index.table.iter().map(|slot| slot.load(Ordering::Relaxed)).collect()
            };
            proptest::prop_assert_eq!(table(&streamed), table(&built));
            proptest::prop_assert!(table(&built).iter().any(|&entry| entry != 0));
        }
    }

    #[test]
    fn streamed_index_equals_built_index() {
        let basis = noise(3 << 20, 8);
        for (opts, pieces) in [
            (
                MatchOptions::default(),
                vec![1usize, 31, 32, 33, 100_000, 7, 1 << 20],
            ),
            (
                MatchOptions {
                    max_index_bytes: 64 << 10,
                    ..MatchOptions::default()
                },
                vec![5, 65_536, 3],
            ),
        ] {
            let built = BasisIndex::new(&basis, opts.clone());
            let mut b = IndexBuilder::new(opts);
            let mut at = 0;
            let mut k = 0;
            while at < basis.len() {
                let n = pieces[k % pieces.len()].min(basis.len() - at);
                b.feed(&basis[at..at + n]);
                at += n;
                k += 1;
            }
            let streamed = b.finish(&basis, &|_| {});
            assert_eq!(streamed.table.len(), built.table.len());
            assert!(streamed
                .table
                .iter()
                .zip(&built.table)
                .all(|(a, b)| a.load(Ordering::Relaxed) == b.load(Ordering::Relaxed)));
        }
    }

    #[test]
    fn diff_many_equals_separate_diffs() {
        let basis = noise(600_000, 6);
        let mut a = basis[5000..300_000].to_vec();
        for i in (0..a.len()).step_by(1013) {
            a[i] = 1;
        }
        let b = [&noise(70_000, 7)[..], &basis[100..200_000]].concat();
        let hint = [Hint {
            target: 70_000..270_000,
            basis: 100..200_100,
        }];
        for threads in [1, 2, 3] {
            let opts = MatchOptions {
                threads,
                chunk_size: 1 << 16,
                ..MatchOptions::default()
            };
            let index = BasisIndex::new(&basis, opts);
            let layout = BasisLayout::default();
            let jobs: [(&[u8], &[Hint]); 3] = [(&a, &[]), (&b, &hint), (&[], &[])];
            let many = diff_many_with_layout(&index, &jobs, &layout).unwrap();
            for ((t, h), (got, stats)) in jobs.iter().zip(&many) {
                let mut want = Vec::new();
                let s = diff_with_layout(&index, t, h, &layout, &mut want).unwrap();
                assert!(*got == want);
                assert_eq!(*stats, s);
            }
            // In order, with a look-ahead of one chunk or of a few: the same streams.
            for lookahead in [1, 3 << 16] {
                let mut emitted = Vec::new();
                diff_many_in_order(&index, &jobs, &layout, lookahead, |job, delta, stats| {
                    emitted.push((job, delta, stats));
                    Ok(())
                })
                .unwrap();
                assert_eq!(emitted.len(), jobs.len());
                for (k, (job, delta, stats)) in emitted.into_iter().enumerate() {
                    assert_eq!(job, k, "jobs out of order");
                    assert!(delta == many[k].0, "job {k}: other bytes");
                    assert_eq!(stats, many[k].1);
                }
            }
        }
    }

    #[test]
    fn an_emit_error_stops_diff_many_in_order() {
        let basis = noise(300_000, 2);
        let target = noise(400_000, 3);
        let opts = MatchOptions {
            threads: 2,
            chunk_size: 1 << 16,
            ..MatchOptions::default()
        };
        let index = BasisIndex::new(&basis, opts);
        let jobs: Vec<(&[u8], &[Hint])> = target.chunks(100_000).map(|t| (t, &[][..])).collect();
        let mut calls = 0;
        let err = diff_many_in_order(
            &index,
            &jobs,
            &BasisLayout::default(),
            1 << 16,
            |_, _, _| {
                calls += 1;
                Err(io::Error::other("disk full"))
            },
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "disk full");
        assert_eq!(calls, 1);
    }

    #[test]
    fn bad_hints_and_tiny_inputs_are_harmless() {
        let hints = [
            Hint {
                target: 50..u64::MAX,
                basis: u64::MAX - 5..u64::MAX,
            },
            Hint {
                target: std::ops::Range { start: 10, end: 0 },
                basis: 0..3,
            },
            Hint {
                target: 0..100,
                basis: 0..1_000_000,
            },
        ];
        for (b, t) in [
            (&b""[..], &b""[..]),
            (b"", b"abc"),
            (b"abc", b""),
            (b"abcdefgh", b"abcdefgh"),
        ] {
            roundtrip(b, t, &hints, MatchOptions::default());
        }
    }
}
