//! The adapter between image-level work and the byte-level matcher of
//! [`bru_rsync`]: memory-mapped work files, the basis index, tar hints.
//!
//! Memory: the basis and target are memory-mapped, and pages of a mapping
//! count in the process's resident set once touched. To keep the peak low
//! the engine releases pages it is done with (`MADV_DONTNEED`; the data stays
//! in the page cache and faults back in when needed): basis ranges as soon
//! as the indexer has read them, and the target in windows of
//! [`WINDOW`] bytes, each encoded separately. Window deltas are concatenated
//! into one stream: COPY offsets are absolute in the basis, so a librsync
//! stream is the concatenation of its commands.

use std::fs::File;
use std::io::{self, Write};
use std::ops::Range;

use bru_rsync::tar::TarEntry;
use bru_rsync::{
    BasisIndex, BasisLayout, DeltaStats, DeviceCost, Hint, IndexBuilder, MatchOptions, DELTA_MAGIC,
};
use memmap2::{Mmap, UncheckedAdvice};

/// Target bytes encoded per window.
const WINDOW: usize = 8 << 20;

/// Target bytes matched ahead of the oldest window not yet written: a slow
/// chunk does not leave the other threads idle, and each window's delta is
/// written, in order, as soon as it is ready. Bounds the matched target
/// pages (and window deltas) held in memory.
const LOOKAHEAD: usize = 3 * WINDOW;

/// Maps a work file read-only.
#[allow(unsafe_code)]
pub(crate) fn map(file: &File) -> io::Result<Mmap> {
    // SAFETY: the file is a private temporary file of this operation inside its own
    // work directory; nothing truncates or writes it while the map is alive.
    unsafe { Mmap::map(file) }
}

/// Drops `range` of a read-only file mapping from the resident set.
#[allow(unsafe_code)]
fn release(map: &Mmap, range: Range<usize>) {
    let end = range.end.min(map.len());
    if range.start >= end {
        return;
    }
    // SAFETY: the mapping is read-only and file-backed: dropped pages are read
    // again from the file on the next access, so no data can be lost. Failure
    // only means the pages stay resident.
    let _ = unsafe {
        map.unchecked_advise_range(UncheckedAdvice::DontNeed, range.start, end - range.start)
    };
}

/// The matcher options for a device with this cost model (`None`: fewest bytes).
pub(crate) fn index_options(device: Option<DeviceCost>) -> MatchOptions {
    let mut opts = MatchOptions::default();
    opts.device = device;
    opts
}

/// Starts indexing the basis on a thread of its own from the bytes sent to
/// the returned channel (as the source layers are fetched); the index is
/// completed by [`index_streamed`]: the index of all source layer tars,
/// concatenated, for a device with this cost model (`None`: fewest bytes).
pub(crate) fn start_index(
    device: Option<DeviceCost>,
) -> (crate::fetch::Tee, std::thread::JoinHandle<IndexBuilder>) {
    let (tx, rx) = std::sync::mpsc::sync_channel::<crate::fetch::TeeChunk>(8);
    let opts = index_options(device);
    let handle = std::thread::spawn(move || {
        let mut builder = IndexBuilder::new(opts);
        for chunk in rx {
            builder.feed(chunk.bytes());
        }
        builder
    });
    (tx, handle)
}

/// The index of `basis` from the bytes a [`start_index`] builder was fed (or
/// built anew when they were not all of the basis).
pub(crate) fn index_streamed(basis: &Mmap, builder: IndexBuilder) -> BasisIndex<'_> {
    builder.finish(basis, &|r| release(basis, r))
}

/// The tar structure of the basis, parsed once per build: its members (for
/// hints) and where its file bodies are (for the device's cost of a COPY).
pub(crate) struct BasisTar {
    entries: Vec<TarEntry>,
    layout: BasisLayout,
}

/// Parses the basis's tar headers. Walking them touches most pages of a tar
/// of small files: they are released afterwards.
pub(crate) fn parse_basis(basis: &Mmap) -> BasisTar {
    let entries = bru_rsync::tar::entries(basis);
    release(basis, 0..basis.len());
    let layout = BasisLayout::from_entries(&entries);
    BasisTar { entries, layout }
}

/// Encodes `target` (one uncompressed layer tar) against the basis, guided
/// by the tar structure of both (a file's old version at the same path).
pub(crate) fn encode(
    index: &BasisIndex<'_>,
    basis: &Mmap,
    basis_tar: &BasisTar,
    target: &Mmap,
    out: impl Write,
) -> io::Result<DeltaStats> {
    let new = bru_rsync::tar::entries(target);
    release(target, 0..target.len());
    let hints = bru_rsync::tar::hints_from_entries(&basis_tar.entries, &new);
    drop(new);
    let mut out = out;
    out.write_all(&DELTA_MAGIC)?;
    let mut total = DeltaStats {
        delta_bytes: FRAMING,
        ..DeltaStats::default()
    };
    let windows: Vec<Range<usize>> = (0..target.len())
        .step_by(WINDOW)
        .map(|start| start..(start + WINDOW).min(target.len()))
        .collect();
    let window_hints: Vec<Vec<Hint>> = windows
        .iter()
        .map(|w| rebase(&hints, w.start as u64..w.end as u64))
        .collect();
    let jobs: Vec<(&[u8], &[Hint])> = windows
        .iter()
        .zip(&window_hints)
        .map(|(w, h)| (&target[w.clone()], &h[..]))
        .collect();
    bru_rsync::diff_many_in_order(
        index,
        &jobs,
        &basis_tar.layout,
        LOOKAHEAD,
        |window, delta, stats| {
            let mut body = Unframe::new(&mut out);
            body.write_all(&delta)?;
            body.finish()?;
            total.copy_ops += stats.copy_ops;
            total.copy_bytes += stats.copy_bytes;
            total.literal_ops += stats.literal_ops;
            total.literal_bytes += stats.literal_bytes;
            total.delta_bytes += stats.delta_bytes - FRAMING;
            release(target, windows[window].clone());
            release(basis, 0..basis.len());
            Ok(())
        },
    )?;
    out.write_all(&[0])?;
    out.flush()?;
    Ok(total)
}

/// The delta of a target layer that is the basis range `range` (a source
/// layer with the same DiffID): one COPY of it.
pub(crate) fn encode_copy(range: Range<u64>, out: impl Write) -> io::Result<DeltaStats> {
    let mut delta = bru_rsync::DeltaWriter::new(out)?;
    delta.copy(range.start, range.end - range.start)?;
    delta.finish_with_stats().map(|(_, stats)| stats)
}

/// Magic plus END: what every stream has besides its commands.
const FRAMING: u64 = 5;

/// The hints overlapping `window`, clipped to it and in window coordinates.
/// A clipped hint keeps its diagonal (old file at the same relative offset).
fn rebase(hints: &[Hint], window: Range<u64>) -> Vec<Hint> {
    hints
        .iter()
        .filter(|h| h.target.start < window.end && h.target.end > window.start)
        .map(|h| {
            let start = h.target.start.max(window.start);
            let end = h.target.end.min(window.end);
            let shift = start - h.target.start;
            Hint {
                target: start - window.start..end - window.start,
                basis: (h.basis.start + shift).min(h.basis.end)..h.basis.end,
            }
        })
        .collect()
}

/// Passes a complete delta stream's commands through: drops the magic and
/// holds back the final END byte (checked by [`Unframe::finish`]).
struct Unframe<W> {
    inner: W,
    magic_left: usize,
    held: Option<u8>,
}

impl<W: Write> Unframe<W> {
    fn new(inner: W) -> Self {
        Unframe {
            inner,
            magic_left: DELTA_MAGIC.len(),
            held: None,
        }
    }

    fn finish(self) -> io::Result<()> {
        if self.magic_left == 0 && self.held == Some(0) {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "matcher output is not a framed delta stream",
            ))
        }
    }
}

impl<W: Write> Write for Unframe<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let skip = self.magic_left.min(buf.len());
        self.magic_left -= skip;
        let rest = &buf[skip..];
        if let Some((&last, body)) = rest.split_last() {
            if let Some(held) = self.held.take() {
                self.inner.write_all(&[held])?;
            }
            self.inner.write_all(body)?;
            self.held = Some(last);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unframe_strips_magic_and_end_across_split_writes() {
        let mut out = Vec::new();
        let mut u = Unframe::new(&mut out);
        for piece in [
            &[0x72u8, 0x73][..],
            &[0x02, 0x36, 0x41],
            &[3, b'a', b'b'],
            &[b'c', 0],
        ] {
            u.write_all(piece).unwrap();
        }
        u.finish().unwrap();
        assert_eq!(out, [0x41, 3, b'a', b'b', b'c']);
    }

    #[test]
    fn unframe_rejects_a_stream_without_end() {
        let mut out = Vec::new();
        let mut u = Unframe::new(&mut out);
        u.write_all(&[0x72, 0x73, 0x02, 0x36, 0x41, 1, b'x'])
            .unwrap();
        assert!(u.finish().is_err());
    }

    #[test]
    fn hints_are_clipped_to_the_window_and_keep_their_diagonal() {
        let hints = [
            Hint {
                target: 10..50,
                basis: 1000..1040,
            },
            Hint {
                target: 60..70,
                basis: 5..15,
            },
            Hint {
                target: 200..300,
                basis: 0..100,
            },
        ];
        let got = rebase(&hints, 30..100);
        assert_eq!(
            got,
            [
                Hint {
                    target: 0..20,
                    basis: 1020..1040
                },
                Hint {
                    target: 30..40,
                    basis: 5..15
                },
            ]
        );
    }
}
