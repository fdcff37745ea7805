//! Bounds on what [`apply`](crate::apply()) reads and writes, derived from its inputs.
//!
//! A delta layer is untrusted input: a small gzip blob can inflate to gigabytes (a gzip bomb),
//! and a few bytes of COPY commands can repeat the whole basis millions of times. Neither is
//! caught by the DiffID check, which only runs at the end. So while rebuilding, `apply` counts
//! and stops at the first byte over a limit, with [`DeltaError::TooLarge`](crate::DeltaError::TooLarge):
//!
//! * **Inflated delta layer** `i`: `max(64 MiB, 32 × Dᵢ)`, where `Dᵢ` is the compressed size of
//!   delta layer `i` from its descriptor (verified while streaming). Real delta layers are
//!   literal data plus commands and compress far less than 32:1; the floor keeps small
//!   layers out of the question.
//! * **Each rebuilt layer** `i`: `4 × max(B, 1 MiB) + max(64 MiB, 32 × Dᵢ)`, where `B` is the
//!   basis length (all uncompressed source layers). A layer is made of COPYs and literals:
//!   literals can be no more than the inflated delta; the COPY allowance of four times the
//!   basis covers a target that repeats the source's content across layers.
//! * **All rebuilt layers together**: `4 × max(B, 1 MiB) + Σᵢ max(64 MiB, 32 × Dᵢ)`: the COPY
//!   allowance is shared, so a delta cannot multiply it by its layer count.
//!
//! * **Inflated source layer** `j` (fetched to build the basis): `max(64 MiB, 32 × Sⱼ)`, `Sⱼ`
//!   its compressed size, so a source image cannot fill the disk either. A source layer
//!   holding, say, a large file of zeros can legitimately exceed it: raise the limit then.
//!
//! Layers of the common prefix are the source's own blobs and are not counted. An explicit
//! limit `N` ([`ApplyOptions::max_output_bytes`](crate::ApplyOptions::max_output_bytes),
//! `--max-output-bytes` on the command line) replaces the derived limits on each layer and
//! on the sum by `N` and raises each inflation limit to at least `N`: an operator who knows
//! the target is large can allow it, or set a smaller one to protect a small disk.

use std::cell::Cell;
use std::fmt;
use std::io::{self, Read, Write};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

/// Floor of the inflation limit of a delta layer.
pub const INFLATE_FLOOR: u64 = 64 * MIB;
/// Largest accepted ratio of a delta layer's inflated bytes to its compressed bytes.
pub const INFLATE_RATIO: u64 = 32;
/// The COPY allowance is this many times the basis length.
pub const COPY_FACTOR: u64 = 4;
/// Floor of the basis length in the COPY allowance.
pub const BASIS_FLOOR: u64 = MIB;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;

/// Which limit was exceeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Bound {
    /// The decompressed bytes of one delta layer.
    InflatedDelta,
    /// The decompressed bytes of one source layer (the basis).
    InflatedSource,
    /// The bytes of one rebuilt layer.
    Layer,
    /// The bytes of all rebuilt layers together.
    Total,
}

impl fmt::Display for Bound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Bound::InflatedDelta => "the inflated delta layer",
            Bound::InflatedSource => "the inflated source layer",
            Bound::Layer => "the rebuilt layer",
            Bound::Total => "the rebuilt layers together",
        })
    }
}

/// The limits of one apply, from [`OutputLimits::derive`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputLimits {
    /// Per rebuilt layer, in order: the inflation limit of its delta layer.
    pub inflated: Vec<u64>,
    /// Per rebuilt layer, in order: the limit of its bytes.
    pub layer: Vec<u64>,
    /// The limit of all rebuilt bytes together.
    pub total: u64,
}

impl OutputLimits {
    /// The limits for a basis of `basis_len` bytes and delta layers of `delta_sizes`
    /// compressed bytes (only the layers that are rebuilt), or `explicit` (see the module
    /// docs for the formulas).
    pub fn derive(basis_len: u64, delta_sizes: &[u64], explicit: Option<u64>) -> Self {
        let inflate = |d: u64| -> u64 { d.saturating_mul(INFLATE_RATIO).max(INFLATE_FLOOR) };
        let copies = basis_len.max(BASIS_FLOOR).saturating_mul(COPY_FACTOR);
        let derived = delta_sizes.iter().map(|&d| inflate(d));
        match explicit {
            Some(n) => OutputLimits {
                inflated: derived.map(|i| i.max(n)).collect(),
                layer: vec![n; delta_sizes.len()],
                total: n,
            },
            None => {
                let inflated: Vec<u64> = derived.collect();
                OutputLimits {
                    layer: inflated.iter().map(|i| copies.saturating_add(*i)).collect(),
                    total: inflated
                        .iter()
                        .fold(copies, |sum, i| sum.saturating_add(*i)),
                    inflated,
                }
            }
        }
    }
}

/// The inflation limit of a source layer of `compressed` bytes: `max(64 MiB, 32 ×
/// compressed)`, raised to at least `explicit` when given.
pub fn source_inflated(compressed: u64, explicit: Option<u64>) -> u64 {
    let derived = compressed.saturating_mul(INFLATE_RATIO).max(INFLATE_FLOOR);
    explicit.map_or(derived, |n| derived.max(n))
}

/// A byte count given with an optional unit: `1000`, `64KiB`, `512M`, `10 GB`.
///
/// Units are case-insensitive. `K`, `M`, `G`, `T` and `KiB`, `MiB`, `GiB`, `TiB` are powers of
/// 1024; `KB`, `MB`, `GB`, `TB` are powers of 1000 (as `dd` reads them); `B` or no unit is bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

/// Why a [`ByteSize`] could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ByteSizeError {
    /// No digits before the unit.
    #[error("{input:?} is not a size: expected a number of bytes with an optional unit (e.g. 512MiB, 10GB)")]
    NotANumber {
        /// The text given.
        input: String,
    },
    /// The unit is not one of the known ones.
    #[error("unknown unit {unit:?} in {input:?}: use B, KiB, MiB, GiB, TiB (or K, M, G, T), KB, MB, GB, TB")]
    UnknownUnit {
        /// The text given.
        input: String,
        /// The unit as given.
        unit: String,
    },
    /// The size does not fit in 64 bits.
    #[error("{input:?} is too large")]
    Overflow {
        /// The text given.
        input: String,
    },
}

impl FromStr for ByteSize {
    type Err = ByteSizeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (number, unit) = t.split_at(digits);
        if number.is_empty() {
            return Err(ByteSizeError::NotANumber { input: s.into() });
        }
        let number: u64 = number
            .parse()
            .map_err(|_| ByteSizeError::Overflow { input: s.into() })?;
        let unit = unit.trim_start();
        let scale = match unit.to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kib" => KIB,
            "m" | "mib" => MIB,
            "g" | "gib" => 1 << 30,
            "t" | "tib" => 1 << 40,
            "kb" => 1_000,
            "mb" => 1_000_000,
            "gb" => 1_000_000_000,
            "tb" => 1_000_000_000_000,
            _ => {
                return Err(ByteSizeError::UnknownUnit {
                    input: s.into(),
                    unit: unit.into(),
                })
            }
        };
        number
            .checked_mul(scale)
            .map(ByteSize)
            .ok_or(ByteSizeError::Overflow { input: s.into() })
    }
}

impl fmt::Display for ByteSize {
    /// The largest binary unit that divides the size exactly, or bytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        for (scale, unit) in [
            (1u64 << 40, "TiB"),
            (1 << 30, "GiB"),
            (MIB, "MiB"),
            (KIB, "KiB"),
        ] {
            if n != 0 && n.is_multiple_of(scale) {
                return write!(f, "{}{unit}", n / scale);
            }
        }
        write!(f, "{n}")
    }
}

/// The error a capped reader or writer returns; `apply` looks at its tripwire instead of
/// digging this out of whatever wrapped it.
#[derive(Debug, thiserror::Error)]
#[error("{bound} exceeds its limit")]
pub(crate) struct Exceeded {
    bound: Bound,
}

fn exceeded(bound: Bound, tripped: &Cell<Option<Bound>>) -> io::Error {
    tripped.set(Some(bound));
    io::Error::other(Exceeded { bound })
}

/// Passes at most `limit` bytes of `inner` through; one more is an error (and trips `bound`).
pub(crate) struct CappedReader<'a, R> {
    inner: R,
    left: u64,
    bound: Bound,
    tripped: &'a Cell<Option<Bound>>,
}

impl<'a, R: Read> CappedReader<'a, R> {
    pub(crate) fn new(
        inner: R,
        limit: u64,
        bound: Bound,
        tripped: &'a Cell<Option<Bound>>,
    ) -> Self {
        CappedReader {
            inner,
            left: limit,
            bound,
            tripped,
        }
    }
}

impl<R: Read> Read for CappedReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.left == 0 {
            // At the limit: only the end of the stream is acceptable.
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => Err(exceeded(self.bound, self.tripped)),
            };
        }
        let max = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..max])?;
        self.left -= n as u64;
        Ok(n)
    }
}

/// Passes bytes to `inner` while the layer stays within `layer_limit` and all layers
/// (counted in `total`) within `total_limit`; a write that would exceed either is refused
/// whole, so `inner` never receives more than the limits (and the writer trips).
pub(crate) struct CappedWriter<'a, W> {
    inner: W,
    written: u64,
    layer_limit: u64,
    total: &'a AtomicU64,
    total_limit: u64,
    tripped: &'a Cell<Option<Bound>>,
}

impl<'a, W: Write> CappedWriter<'a, W> {
    pub(crate) fn new(
        inner: W,
        layer_limit: u64,
        (total, total_limit): (&'a AtomicU64, u64),
        tripped: &'a Cell<Option<Bound>>,
    ) -> Self {
        CappedWriter {
            inner,
            written: 0,
            layer_limit,
            total,
            total_limit,
            tripped,
        }
    }
}

impl<W: Write> Write for CappedWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let len = buf.len() as u64;
        if self.written.saturating_add(len) > self.layer_limit {
            return Err(exceeded(Bound::Layer, self.tripped));
        }
        if self.total.load(Ordering::Relaxed).saturating_add(len) > self.total_limit {
            return Err(exceeded(Bound::Total, self.tripped));
        }
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        self.total.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    #[test]
    fn derived_limits_follow_the_documented_formulas() {
        let l = OutputLimits::derive(100 * MIB, &[10 * MIB, 1], None);
        let copies = 400 * MIB;
        assert_eq!(l.inflated, [320 * MIB, 64 * MIB]);
        assert_eq!(l.layer, [copies + 320 * MIB, copies + 64 * MIB]);
        assert_eq!(l.total, copies + 384 * MIB);
        // A tiny basis still gets 4 MiB of COPYs.
        let l = OutputLimits::derive(10, &[1], None);
        assert_eq!(l.layer, [4 * MIB + 64 * MIB]);
        // An explicit limit replaces the output limits and raises the inflation limits.
        let l = OutputLimits::derive(100 * MIB, &[10 * MIB, 1], Some(200 * MIB));
        assert_eq!(l.inflated, [320 * MIB, 200 * MIB]);
        assert_eq!(l.layer, [200 * MIB, 200 * MIB]);
        assert_eq!(l.total, 200 * MIB);
        assert_eq!(source_inflated(MIB, None), 64 * MIB);
        assert_eq!(source_inflated(10 * MIB, None), 320 * MIB);
        assert_eq!(source_inflated(MIB, Some(GIB)), GIB);
        assert_eq!(source_inflated(10 * MIB, Some(MIB)), 320 * MIB);
        // Nothing overflows.
        let l = OutputLimits::derive(u64::MAX, &[u64::MAX, u64::MAX], None);
        assert_eq!(l.total, u64::MAX);
    }

    #[test]
    fn parses_sizes_with_units() {
        let ok = [
            ("0", 0),
            ("1000", 1000),
            ("64KiB", 64 * KIB),
            ("64k", 64 * KIB),
            ("512M", 512 * MIB),
            (" 10 GB ", 10_000_000_000),
            ("3gib", 3 << 30),
            ("2TB", 2_000_000_000_000),
            ("7b", 7),
        ];
        for (s, n) in ok {
            assert_eq!(s.parse::<ByteSize>(), Ok(ByteSize(n)), "{s}");
        }
        assert!(matches!(
            "".parse::<ByteSize>(),
            Err(ByteSizeError::NotANumber { .. })
        ));
        assert!(matches!(
            "-1".parse::<ByteSize>(),
            Err(ByteSizeError::NotANumber { .. })
        ));
        assert!(matches!(
            "1.5G".parse::<ByteSize>(),
            Err(ByteSizeError::UnknownUnit { .. })
        ));
        assert!(matches!(
            "5 parsecs".parse::<ByteSize>(),
            Err(ByteSizeError::UnknownUnit { .. })
        ));
        assert!(matches!(
            "16777216TiB".parse::<ByteSize>(),
            Err(ByteSizeError::Overflow { .. })
        ));
        assert!(matches!(
            "99999999999999999999999".parse::<ByteSize>(),
            Err(ByteSizeError::Overflow { .. })
        ));
    }

    proptest::proptest! {
        #[test]
        fn display_parses_back(any in proptest::num::u64::ANY, small in 0u64..1 << 20, shift in 0u32..44) {
            for size in [ByteSize(any), ByteSize(small << shift)] {
                proptest::prop_assert_eq!(size.to_string().parse::<ByteSize>(), Ok(size));
            }
        }
    }

    #[test]
    fn the_reader_passes_the_limit_and_refuses_one_byte_more() {
        let tripped = Cell::new(None);
        let mut out = Vec::new();
        CappedReader::new(&[7u8; 100][..], 100, Bound::InflatedDelta, &tripped)
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!((out.len(), tripped.get()), (100, None));
        out.clear();
        let e = CappedReader::new(&[7u8; 101][..], 100, Bound::InflatedDelta, &tripped)
            .read_to_end(&mut out)
            .unwrap_err();
        assert!(e.get_ref().is_some_and(|e| e.is::<Exceeded>()));
        assert_eq!(
            (out.len(), tripped.get()),
            (100, Some(Bound::InflatedDelta))
        );
    }

    #[test]
    fn the_writer_never_passes_more_than_the_limits() {
        let tripped = Cell::new(None);
        let total = AtomicU64::new(0);
        let mut sink = Vec::new();
        let mut w = CappedWriter::new(&mut sink, 1000, (&total, 1500), &tripped);
        w.write_all(&[1; 600]).unwrap();
        let e = w.write_all(&[1; 401]).unwrap_err();
        assert!(e.get_ref().is_some_and(|e| e.is::<Exceeded>()));
        assert_eq!(tripped.get(), Some(Bound::Layer));
        w.write_all(&[1; 400]).unwrap();
        assert_eq!(sink.len(), 1000);
        // The next layer shares the total.
        let tripped = Cell::new(None);
        let mut sink = Vec::new();
        let mut w = CappedWriter::new(&mut sink, 1000, (&total, 1500), &tripped);
        w.write_all(&[1; 500]).unwrap();
        assert!(w.write_all(&[1]).is_err());
        assert_eq!(tripped.get(), Some(Bound::Total));
        assert_eq!(total.load(Ordering::Relaxed), 1500);
    }
}
