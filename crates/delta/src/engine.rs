//! The adapter between image-level work and the byte-level matcher of
//! [`bru_rsync`]: memory-mapped work files, the basis index, tar hints.

use std::fs::File;
use std::io::{self, Write};

use bru_rsync::{BasisIndex, DeltaStats, MatchOptions};
use memmap2::Mmap;

/// Maps a work file read-only.
#[allow(unsafe_code)]
pub(crate) fn map(file: &File) -> io::Result<Mmap> {
    // SAFETY: the file is a private temporary file of this operation inside its own
    // work directory; nothing truncates or writes it while the map is alive.
    unsafe { Mmap::map(file) }
}

/// Indexes the basis (all source layer tars, concatenated) for matching.
pub(crate) fn index(basis: &[u8]) -> BasisIndex<'_> {
    BasisIndex::new(basis, MatchOptions::default())
}

/// Encodes `target` (one uncompressed layer tar) against the basis, guided
/// by the tar structure of both (a file's old version at the same path).
pub(crate) fn encode(
    index: &BasisIndex<'_>,
    basis: &[u8],
    target: &[u8],
    out: impl Write,
) -> io::Result<DeltaStats> {
    let hints = bru_rsync::tar::hints(basis, target);
    let mut out = out;
    let stats = bru_rsync::diff(index, target, &hints, &mut out)?;
    out.flush()?;
    Ok(stats)
}
