//! Streaming decoder ("patch") of the librsync delta stream.

use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::FileExt;

use crate::format::{
    DELTA_MAGIC, OP_COPY_N1_N1, OP_COPY_N8_N8, OP_END, OP_LITERAL_MAX_SHORT, OP_LITERAL_N1,
};

/// Size of the buffers used to read the delta and to move bytes from the basis.
const BUF_SIZE: usize = 64 * 1024;

/// Random-access reads from a basis (the old bytes a delta's COPY commands refer to).
pub trait ReadAt {
    /// Length of the basis in bytes.
    fn len(&self) -> u64;

    /// True when the basis is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Fills `buf` with the bytes at `offset..offset + buf.len()`; fails if they are not all there.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

impl ReadAt for [u8] {
    fn len(&self) -> u64 {
        <[u8]>::len(self) as u64
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let src = usize::try_from(offset)
            .ok()
            .and_then(|start| self.get(start..start.checked_add(buf.len())?))
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

impl ReadAt for Vec<u8> {
    fn len(&self) -> u64 {
        self.as_slice().len() as u64
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.as_slice().read_exact_at(buf, offset)
    }
}

/// Positioned reads (`pread`); the file offset is not used, so one `File` can serve several
/// readers. The length is taken from the file's metadata (0 if that fails, which makes every
/// COPY out of range rather than reading garbage).
impl ReadAt for File {
    fn len(&self) -> u64 {
        self.metadata().map(|m| m.len()).unwrap_or(0)
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(self, buf, offset)
    }
}

impl<T: ReadAt + ?Sized> ReadAt for &T {
    fn len(&self) -> u64 {
        (**self).len()
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        (**self).read_exact_at(buf, offset)
    }
}

/// Why a delta could not be applied. `offset` fields are byte positions in the delta stream.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PatchError {
    /// The stream does not start with `72 73 02 36`.
    #[error("bad delta magic {found:02x?}, expected 72 73 02 36")]
    BadMagic {
        /// The first four bytes of the stream.
        found: [u8; 4],
    },
    /// A reserved opcode (`0x55`–`0xff`).
    #[error("bogus opcode {opcode:#04x} at delta offset {offset}")]
    BogusOpcode {
        /// The opcode byte.
        opcode: u8,
        /// Position of the opcode.
        offset: u64,
    },
    /// The stream ended before its END command (or inside a command).
    #[error("delta truncated at offset {offset} (no END command)")]
    Truncated {
        /// Length of the stream that was read.
        offset: u64,
    },
    /// A COPY whose range is not inside the basis (or overflows `u64`).
    #[error(
        "copy of {len} bytes at basis offset {copy_offset} is outside the {basis_len}-byte basis (delta offset {offset})"
    )]
    CopyOutOfRange {
        /// Position of the COPY opcode.
        offset: u64,
        /// Basis offset of the copy.
        copy_offset: u64,
        /// Length of the copy.
        len: u64,
        /// Length of the basis.
        basis_len: u64,
    },
    /// Bytes follow the END command.
    #[error("unexpected data after END at delta offset {offset}")]
    TrailingData {
        /// Position of the first byte after END.
        offset: u64,
    },
    /// Reading the delta failed.
    #[error("reading the delta at offset {offset}")]
    ReadDelta {
        /// Position where the read failed.
        offset: u64,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// Reading the basis failed (e.g. the file shrank while patching).
    #[error("reading {len} basis bytes at offset {basis_offset}")]
    ReadBasis {
        /// Basis offset of the failed read.
        basis_offset: u64,
        /// Length of the failed read.
        len: u64,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// Writing the output failed.
    #[error("writing the output at offset {written}")]
    Write {
        /// Bytes written before the failure.
        written: u64,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
}

/// The delta reader: counts consumed bytes and turns EOF into [`PatchError::Truncated`].
struct DeltaReader<R: Read> {
    inner: BufReader<R>,
    pos: u64,
}

impl<R: Read> DeltaReader<R> {
    /// Reads exactly `buf.len()` bytes.
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), PatchError> {
        let mut done = 0;
        while done < buf.len() {
            match self.inner.read(&mut buf[done..]) {
                Ok(0) => return Err(PatchError::Truncated { offset: self.pos }),
                Ok(n) => {
                    done += n;
                    self.pos += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(PatchError::ReadDelta {
                        offset: self.pos,
                        source,
                    })
                }
            }
        }
        Ok(())
    }

    fn byte(&mut self) -> Result<u8, PatchError> {
        let mut b = [0u8; 1];
        self.fill(&mut b)?;
        Ok(b[0])
    }

    /// Reads a big-endian unsigned integer of `1 << w` bytes.
    fn be(&mut self, w: u8) -> Result<u64, PatchError> {
        let mut b = [0u8; 8];
        let n = 1usize << w;
        self.fill(&mut b[8 - n..])?;
        Ok(u64::from_be_bytes(b))
    }

    /// True if the stream has no more bytes.
    fn at_eof(&mut self) -> Result<bool, PatchError> {
        let mut b = [0u8; 1];
        loop {
            match self.inner.read(&mut b) {
                Ok(n) => return Ok(n == 0),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(PatchError::ReadDelta {
                        offset: self.pos,
                        source,
                    })
                }
            }
        }
    }
}

/// Applies the delta stream `delta` to `basis`, writing the rebuilt bytes to `out`.
///
/// Returns the number of bytes written. Memory use is bounded (two 64 KiB buffers) whatever the
/// lengths in the stream say. The decoder is strict and reports, with the delta offset of the
/// offending command:
/// * a wrong magic, a reserved opcode (`0x55`–`0xff`), a stream that ends before END;
/// * a COPY reaching outside the basis. A zero-length COPY is accepted (as librsync-go and C
///   librsync do) when its offset is within the basis; our encoder never writes one.
/// * any byte after END ([`PatchError::TrailingData`]). balena-engine's librsync-go ignores
///   trailing bytes; we reject them so a corrupt or concatenated stream is not silently accepted.
///
/// On error, `out` may have received part of the output; callers write to a temporary place and
/// verify a digest before using it.
pub fn patch<B: ReadAt + ?Sized, R: Read, W: Write>(
    basis: &B,
    delta: R,
    mut out: W,
) -> Result<u64, PatchError> {
    let basis_len = basis.len();
    let mut rd = DeltaReader {
        inner: BufReader::with_capacity(BUF_SIZE, delta),
        pos: 0,
    };
    let mut magic = [0u8; 4];
    rd.fill(&mut magic).map_err(|e| match e {
        PatchError::Truncated { .. } => PatchError::BadMagic { found: magic },
        e => e,
    })?;
    if magic != DELTA_MAGIC {
        return Err(PatchError::BadMagic { found: magic });
    }
    let mut buf = vec![0u8; BUF_SIZE];
    let mut written: u64 = 0;
    loop {
        let op_pos = rd.pos;
        let op = rd.byte()?;
        match op {
            OP_END => break,
            1..OP_COPY_N1_N1 => {
                let len = if op <= OP_LITERAL_MAX_SHORT {
                    u64::from(op)
                } else {
                    rd.be(op - OP_LITERAL_N1)?
                };
                let mut left = len;
                while left > 0 {
                    let n = left.min(BUF_SIZE as u64) as usize;
                    let chunk = &mut buf[..n];
                    rd.fill(chunk)?;
                    write(&mut out, chunk, &mut written)?;
                    left -= n as u64;
                }
            }
            OP_COPY_N1_N1..=OP_COPY_N8_N8 => {
                let c = op - OP_COPY_N1_N1;
                let copy_offset = rd.be(c / 4)?;
                let len = rd.be(c % 4)?;
                let in_range = copy_offset
                    .checked_add(len)
                    .is_some_and(|end| end <= basis_len);
                if !in_range {
                    return Err(PatchError::CopyOutOfRange {
                        offset: op_pos,
                        copy_offset,
                        len,
                        basis_len,
                    });
                }
                let mut done = 0;
                while done < len {
                    let n = (len - done).min(BUF_SIZE as u64) as usize;
                    let chunk = &mut buf[..n];
                    let at = copy_offset + done;
                    basis
                        .read_exact_at(chunk, at)
                        .map_err(|source| PatchError::ReadBasis {
                            basis_offset: at,
                            len: n as u64,
                            source,
                        })?;
                    write(&mut out, chunk, &mut written)?;
                    done += n as u64;
                }
            }
            _ => {
                return Err(PatchError::BogusOpcode {
                    opcode: op,
                    offset: op_pos,
                })
            }
        }
    }
    if !rd.at_eof()? {
        return Err(PatchError::TrailingData { offset: rd.pos });
    }
    out.flush()
        .map_err(|source| PatchError::Write { written, source })?;
    Ok(written)
}

fn write<W: Write>(out: &mut W, chunk: &[u8], written: &mut u64) -> Result<(), PatchError> {
    out.write_all(chunk).map_err(|source| PatchError::Write {
        written: *written,
        source,
    })?;
    *written = written.saturating_add(chunk.len() as u64);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(basis: &[u8], delta: &[u8]) -> Result<Vec<u8>, PatchError> {
        let mut out = Vec::new();
        let n = patch(basis, delta, &mut out)?;
        assert_eq!(n, out.len() as u64);
        Ok(out)
    }

    const M: [u8; 4] = DELTA_MAGIC;

    fn d(cmds: &[u8]) -> Vec<u8> {
        [&M[..], cmds].concat()
    }

    #[test]
    fn applies_every_command_form() {
        let basis = b"0123456789";
        let delta = d(&[
            2, b'h', b'i', // short literal
            0x41, 1, b'!', // 1-byte length literal
            0x42, 0, 1, b'-', // 2-byte length literal
            0x43, 0, 0, 0, 1, b'+', // 4-byte length literal
            0x44, 0, 0, 0, 0, 0, 0, 0, 1, b'=', // 8-byte length literal
            0x45, 3, 2, // COPY(3, 2)
            0x54, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 2, // COPY(8, 2), 8/8 widths
            0x49, 0, 0, 0, // COPY(0, 0) with a 2-byte offset: accepted, writes nothing
            0x00,
        ]);
        assert_eq!(apply(basis, &delta).unwrap(), b"hi!-+=3489");
    }

    #[test]
    fn rejects_bad_magic_and_short_header() {
        assert!(matches!(
            apply(b"", b"rs\x016\x00"),
            Err(PatchError::BadMagic { found }) if found == *b"rs\x016"
        ));
        assert!(matches!(
            apply(b"", b"rs"),
            Err(PatchError::BadMagic { .. })
        ));
    }

    #[test]
    fn rejects_bogus_opcodes() {
        for op in 0x55..=0xffu8 {
            match apply(b"abc", &d(&[1, b'x', op])) {
                Err(PatchError::BogusOpcode { opcode, offset }) => {
                    assert_eq!((opcode, offset), (op, 6));
                }
                other => panic!("{op:#x}: {other:?}"),
            }
        }
    }

    #[test]
    fn rejects_truncation_everywhere() {
        let full = d(&[3, b'a', b'b', b'c', 0x46, 1, 0, 2, 0x41, 2, b'x', b'y', 0]);
        assert_eq!(apply(b"0123", &full).unwrap(), b"abc12xy");
        for cut in 4..full.len() {
            match apply(b"0123", &full[..cut]) {
                Err(PatchError::Truncated { offset }) => assert_eq!(offset, cut as u64),
                other => panic!("cut {cut}: {other:?}"),
            }
        }
    }

    #[test]
    fn rejects_copies_outside_the_basis() {
        let cases: [(&[u8], u64, u64); 3] = [
            (&[0x45, 3, 2], 3, 2),
            (&[0x45, 5, 0], 5, 0),
            (
                &[
                    0x54, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 2,
                ],
                u64::MAX,
                2,
            ),
        ];
        for (cmd, o, l) in cases {
            match apply(b"0123", &d(&[&[1, b'x'], cmd, &[0]].concat())) {
                Err(PatchError::CopyOutOfRange {
                    offset,
                    copy_offset,
                    len,
                    basis_len,
                }) => assert_eq!((offset, copy_offset, len, basis_len), (6, o, l, 4)),
                other => panic!("{cmd:?}: {other:?}"),
            }
        }
        assert_eq!(apply(b"0123", &d(&[0x45, 4, 0, 0])).unwrap(), b"");
    }

    #[test]
    fn rejects_trailing_data() {
        assert!(matches!(
            apply(b"", &d(&[1, b'a', 0, 0])),
            Err(PatchError::TrailingData { offset: 7 })
        ));
    }

    #[test]
    fn huge_declared_lengths_do_not_allocate() {
        // An 8-byte literal length of 2^63 with 1 byte of data: truncation, not an allocation.
        let delta = d(&[0x44, 0x80, 0, 0, 0, 0, 0, 0, 0, b'a']);
        assert!(matches!(
            apply(b"", &delta),
            Err(PatchError::Truncated { offset: 14 })
        ));
    }

    #[test]
    fn file_basis_uses_positioned_reads() {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(b"hello world").unwrap();
        let mut out = Vec::new();
        patch(&f, &d(&[0x45, 6, 5, 0x45, 0, 5, 0])[..], &mut out).unwrap();
        assert_eq!(out, b"worldhello");
        assert!(matches!(
            patch(&f, &d(&[0x45, 6, 6, 0])[..], &mut Vec::new()),
            Err(PatchError::CopyOutOfRange { basis_len: 11, .. })
        ));
    }

    #[test]
    fn write_errors_are_reported() {
        struct Full;
        impl Write for Full {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::other("disk full"))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        assert!(matches!(
            patch(&b""[..], &d(&[1, b'a', 0])[..], Full),
            Err(PatchError::Write { written: 0, .. })
        ));
    }
}
