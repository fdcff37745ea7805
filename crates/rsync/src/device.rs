//! What applying a delta costs a device, in the unit the matcher trades it against: bytes
//! downloaded.
//!
//! A balena device applies a delta with librsync-go over a basis that balena-engine rebuilds
//! on demand from tar-split metadata and the files of the extracted source layers (see the
//! project's `device-apply` spec): every command costs a decode and a pipe hand-off; every COPY
//! a seek, a fresh buffer and reads of at most 32 KiB, and every read opens, seeks, reads and
//! closes each file whose body it touches, by path. Literal bytes cost their download and
//! their inflation. The update's duration is modelled as
//!
//! `T = download bytes / bandwidth + slowdown × apply seconds on this machine`
//!
//! so one second of device work is worth `bandwidth` bytes: the matcher keeps a COPY only
//! where the bytes it saves outweigh its apply cost at the device's bandwidth.

use std::fmt;
use std::ops::Range;
use std::str::FromStr;

use crate::tar::TarEntry;

/// A device's download bandwidth, parsed from megabytes (10⁶ bytes) per second: `1`, `0.1`,
/// `12.5`. Between 1 kB/s and 100 GB/s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bandwidth {
    bytes_per_second: u64,
}

/// Why a bandwidth did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad device bandwidth {input:?}: expected megabytes per second between 0.001 and 100000, e.g. 1 or 0.5")]
pub struct BandwidthError {
    /// The text that did not parse.
    pub input: String,
}

impl Bandwidth {
    /// Slowest accepted bandwidth, bytes per second.
    pub const MIN: u64 = 1_000;
    /// Fastest accepted bandwidth, bytes per second.
    pub const MAX: u64 = 100_000_000_000;

    /// A bandwidth in bytes per second, if within [`Bandwidth::MIN`]..=[`Bandwidth::MAX`].
    pub fn from_bytes_per_second(bytes_per_second: u64) -> Option<Self> {
        (Self::MIN..=Self::MAX)
            .contains(&bytes_per_second)
            .then_some(Bandwidth { bytes_per_second })
    }

    /// Bytes per second.
    pub fn bytes_per_second(self) -> u64 {
        self.bytes_per_second
    }
}

impl Default for Bandwidth {
    /// 1 MB/s, a device on a modest cellular or Wi-Fi link.
    fn default() -> Self {
        Bandwidth {
            bytes_per_second: 1_000_000,
        }
    }
}

impl FromStr for Bandwidth {
    type Err = BandwidthError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || BandwidthError {
            input: s.chars().take(64).collect(),
        };
        let t = s.trim();
        // Digits with at most one point: no signs, exponents, inf or NaN.
        let (int, frac) = t.split_once('.').unwrap_or((t, ""));
        if int.is_empty() && frac.is_empty()
            || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit())
            || int.len() > 6
            || frac.len() > 6
        {
            return Err(err());
        }
        let int: u64 = if int.is_empty() {
            0
        } else {
            int.parse().map_err(|_| err())?
        };
        let frac_bytes: u64 = if frac.is_empty() {
            0
        } else {
            format!("{frac:0<6}").parse().map_err(|_| err())?
        };
        Bandwidth::from_bytes_per_second(int * 1_000_000 + frac_bytes).ok_or_else(err)
    }
}

impl fmt::Display for Bandwidth {
    /// Megabytes per second, without trailing zeros: `1`, `0.1`, `12.5`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (int, frac) = (
            self.bytes_per_second / 1_000_000,
            self.bytes_per_second % 1_000_000,
        );
        if frac == 0 {
            write!(f, "{int}")
        } else {
            let frac = format!("{frac:06}");
            write!(f, "{int}.{}", frac.trim_end_matches('0'))
        }
    }
}

/// Largest basis read of librsync-go (the buffer of Go's `io.Copy`).
pub const DEVICE_READ_BYTES: u64 = 32 << 10;

/// Cost model of a device applying a delta. The time constants are this machine's (see
/// `DESIGN.md`, "Constants"): the per-command cost is librsync-go's own `Patch` writing into Go's
/// `io.Pipe` (`bench/patch_cost.sh`); opens and layer reads come from targeted deltas (20,000
/// COPYs with and without a file open) and the per-literal-KiB cost from a fit to 20 corpus
/// deltas, both on the device-apply emulation with its Go-like pipe; `slowdown` scales them to
/// the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceCost {
    /// The device's download bandwidth in bytes per second.
    pub bandwidth: u64,
    /// How many times slower the device applies than the machine the constants come from
    /// (5 for a Raspberry Pi 4 class device: an assumption, not a measurement).
    pub slowdown: u32,
    /// Nanoseconds per command: decoding it, its buffer, and handing its output through the
    /// synchronous pipe to the layer store.
    pub command_ns: u32,
    /// Nanoseconds per layer read of a COPY (see [`BasisLayout::reads_and_opens`]).
    pub read_ns: u32,
    /// Nanoseconds per file opened by a layer read (path lookup, open, seek, close).
    pub open_ns: u32,
    /// Nanoseconds per KiB of literal data beyond what a copied KiB costs: inflating it and
    /// passing it through the pipe.
    pub literal_ns_per_kib: u32,
}

impl DeviceCost {
    /// The calibrated model for a device downloading at `bandwidth`.
    pub fn for_bandwidth(bandwidth: Bandwidth) -> Self {
        DeviceCost {
            bandwidth: bandwidth.bytes_per_second(),
            slowdown: 5,
            command_ns: 1_200,
            read_ns: 300,
            open_ns: 3_000,
            literal_ns_per_kib: 2_000,
        }
    }

    /// Bytes of download that cost the device as much time as `ns` nanoseconds of apply work
    /// on this machine.
    pub fn bytes_for_ns(&self, ns: f64) -> f64 {
        ns * 1e-9 * f64::from(self.slowdown) * self.bandwidth as f64
    }

    /// Apply cost, in download bytes, of a COPY of `len` bytes at `offset` of the basis.
    pub fn copy_penalty(&self, layout: &BasisLayout, offset: u64, len: u64) -> f64 {
        let (reads, opens) = layout.reads_and_opens(offset, len);
        self.bytes_for_ns(
            f64::from(self.command_ns)
                + reads as f64 * f64::from(self.read_ns)
                + opens as f64 * f64::from(self.open_ns),
        )
    }

    /// Apply cost, in download bytes, of a LITERAL carrying `len` bytes.
    pub fn literal_penalty(&self, len: u64) -> f64 {
        self.bytes_for_ns(
            f64::from(self.command_ns) + len as f64 * f64::from(self.literal_ns_per_kib) / 1024.0,
        )
    }

    /// Apply cost, in download bytes, of the cheapest possible COPY (one read, one file).
    pub fn min_copy_penalty(&self) -> f64 {
        self.bytes_for_ns(
            f64::from(self.command_ns) + f64::from(self.read_ns) + f64::from(self.open_ns),
        )
    }

    /// Apply cost, in download bytes, of opening one more file.
    pub fn open_penalty(&self) -> f64 {
        self.bytes_for_ns(f64::from(self.open_ns))
    }
}

/// Where the basis keeps file bodies: a device reads those bytes from files (one open per
/// file and read), and everything else (tar headers, padding) from memory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BasisLayout {
    /// Sorted, non-overlapping, non-empty bodies of regular files.
    bodies: Vec<Range<u64>>,
}

impl BasisLayout {
    /// The file bodies of a basis made of tar layers, from its parsed members: regular files
    /// (type `0`, NUL or `7`) with data. Other members' bytes are tar-split segments.
    pub fn from_entries(entries: &[TarEntry]) -> Self {
        let mut bodies: Vec<Range<u64>> = entries
            .iter()
            .filter(|e| matches!(e.typeflag, b'0' | 0 | b'7') && e.data.start < e.data.end)
            .map(|e| e.data.clone())
            .collect();
        bodies.sort_by_key(|r| r.start);
        let mut end = 0;
        bodies.retain_mut(|r| {
            r.start = r.start.max(end);
            end = end.max(r.end);
            r.start < r.end
        });
        BasisLayout { bodies }
    }

    /// Number of file bodies.
    pub fn files(&self) -> usize {
        self.bodies.len()
    }

    /// The file body containing basis position `pos`, if any.
    pub fn body_at(&self, pos: u64) -> Option<Range<u64>> {
        let i = self.bodies.partition_point(|b| b.end <= pos);
        self.bodies.get(i).filter(|b| b.start <= pos).cloned()
    }

    /// How many layer reads and file opens a device makes for a COPY of `len` bytes at
    /// `offset`. librsync-go reads the basis [`DEVICE_READ_BYTES`] at a time; balena-engine's
    /// concatenating reader fills each such read through a growing Go `bytes.Buffer`, so it
    /// reaches the layers as reads of 512 B, 512 B, 1 KiB, … 16 KiB ([`LAYER_READ_ENDS`]), and
    /// each of those opens every file body it touches.
    pub fn reads_and_opens(&self, offset: u64, len: u64) -> (u64, u64) {
        let end = offset.saturating_add(len);
        let mut i = self.bodies.partition_point(|b| b.end <= offset);
        let (mut reads, mut opens) = (0, 0);
        let mut read_start = offset;
        while read_start < end {
            let mut pos = read_start;
            for &sub_end in &LAYER_READ_ENDS {
                let sub_end = read_start.saturating_add(sub_end).min(end);
                if pos >= sub_end {
                    break;
                }
                reads += 1;
                while i < self.bodies.len() && self.bodies[i].end <= pos {
                    i += 1;
                }
                let mut j = i;
                while j < self.bodies.len() && self.bodies[j].start < sub_end {
                    opens += 1;
                    j += 1;
                }
                pos = sub_end;
            }
            read_start = pos;
        }
        (reads, opens)
    }
}

/// Where the layer reads of one basis read end, relative to its start: Go's `bytes.Buffer`
/// makes room for 512 bytes, then doubles.
pub const LAYER_READ_ENDS: [u64; 7] = [512, 1024, 2048, 4096, 8192, 16384, 32768];

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A layout with regular-file bodies at these `(start, end)` basis ranges.
    pub(crate) fn layout(bodies: &[(u64, u64)]) -> BasisLayout {
        let entries: Vec<TarEntry> = bodies
            .iter()
            .map(|&(s, e)| TarEntry {
                path: b"f".to_vec(),
                typeflag: b'0',
                start: s.saturating_sub(512),
                data: s..e,
                end: e,
            })
            .collect();
        BasisLayout::from_entries(&entries)
    }

    #[test]
    fn reads_and_opens_follow_32k_reads() {
        // Bodies: [512, 1512), [2048, 100_000), [100_512, 100_612).
        let l = layout(&[(512, 1512), (2048, 100_000), (100_512, 100_612)]);
        // Inside the header before the first body: one read, no open.
        assert_eq!(l.reads_and_opens(0, 100), (1, 0));
        // 2000 bytes from 1000: layer reads [1000,1512) (body 1), [1512,2024) (the header
        // between the bodies) and [2024,3000) (body 2): 3 reads, 2 opens.
        assert_eq!(l.reads_and_opens(1000, 2000), (3, 2));
        // 96 KiB inside the 97,952-byte body: three basis reads of 7 layer reads, each
        // inside the body.
        assert_eq!(l.reads_and_opens(2048, 3 * 32768), (21, 21));
        // From the big body's end over the header into the last body: 2 reads
        // ([99990,100502) and [100502,100590)), 2 opens.
        assert_eq!(l.reads_and_opens(99_990, 600), (2, 2));
        assert_eq!(l.reads_and_opens(99_990, 200), (1, 1));
        // A 40 KiB COPY: 7 layer reads for the first 32 KiB, 5 for the other 8 KiB.
        assert_eq!(l.reads_and_opens(150_000, 40 << 10), (12, 0));
        // Past every body.
        assert_eq!(l.reads_and_opens(200_000, 10), (1, 0));
        assert_eq!(l.reads_and_opens(5, 0), (0, 0));
    }

    #[test]
    fn non_files_are_segments() {
        let mut entries = vec![TarEntry {
            path: b"d".to_vec(),
            typeflag: b'5',
            start: 0,
            data: 512..512,
            end: 512,
        }];
        entries.push(TarEntry {
            path: b"l".to_vec(),
            typeflag: b'2',
            start: 512,
            data: 1024..1024,
            end: 1024,
        });
        entries.push(TarEntry {
            path: b"f".to_vec(),
            typeflag: b'0',
            start: 1024,
            data: 1536..1540,
            end: 2048,
        });
        let l = BasisLayout::from_entries(&entries);
        assert_eq!(l.files(), 1);
        assert_eq!(l.body_at(1537), Some(1536..1540));
        assert_eq!(l.body_at(1540), None);
        assert_eq!(l.reads_and_opens(0, 2048), (3, 1));
    }

    #[test]
    fn bandwidth_parses_megabytes_per_second() {
        let ok = [
            ("1", 1_000_000),
            ("0.1", 100_000),
            (".5", 500_000),
            ("12.5", 12_500_000),
            ("0.001", 1_000),
            ("100000", 100_000_000_000),
            (" 2 ", 2_000_000),
        ];
        for (s, bps) in ok {
            let b: Bandwidth = s.parse().unwrap();
            assert_eq!(b.bytes_per_second(), bps, "{s}");
            assert_eq!(b.to_string().parse::<Bandwidth>().unwrap(), b);
        }
        assert_eq!("0.10".parse::<Bandwidth>().unwrap().to_string(), "0.1");
        for bad in [
            "",
            ".",
            "0",
            "0.0009",
            "100001",
            "-1",
            "+1",
            "1e3",
            "inf",
            "NaN",
            "1.2.3",
            "1,5",
            "0.0000001",
            "abc",
            "1 MB",
        ] {
            let e = bad.parse::<Bandwidth>().unwrap_err();
            assert!(e.to_string().contains("bad device bandwidth"), "{bad}: {e}");
        }
    }

    #[test]
    fn penalties_scale_with_bandwidth() {
        let l = layout(&[(512, 1512)]);
        let slow = DeviceCost::for_bandwidth("0.1".parse().unwrap());
        let fast = DeviceCost::for_bandwidth("10".parse().unwrap());
        let p_slow = slow.copy_penalty(&l, 600, 100);
        let p_fast = fast.copy_penalty(&l, 600, 100);
        assert!((p_fast / p_slow - 100.0).abs() < 1e-9);
        // One file: command + copy + read + open = the cheapest COPY.
        assert!((fast.min_copy_penalty() - p_fast).abs() < 1e-9);
        // (1.2 + 0.3 + 3) µs × 5 at 10 MB/s = 225 bytes.
        assert!((p_fast - 225.0).abs() < 1e-6, "{p_fast}");
        assert!(fast.literal_penalty(1024) > fast.literal_penalty(0));
    }
}
