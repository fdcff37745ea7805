//! Encoder of the librsync delta stream.

use std::io::{self, Write};

use crate::format::{
    copy_opcode, put_be, width_log2, DELTA_MAGIC, OP_END, OP_LITERAL_MAX_SHORT, OP_LITERAL_N1,
};

/// Counters of what a delta stream contains, after adjacent COPYs were merged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeltaStats {
    /// Number of COPY commands written.
    pub copy_ops: u64,
    /// Target bytes produced by COPY commands.
    pub copy_bytes: u64,
    /// Number of LITERAL commands written.
    pub literal_ops: u64,
    /// Target bytes carried as literal data.
    pub literal_bytes: u64,
    /// Size of the encoded stream, magic and END included.
    pub delta_bytes: u64,
}

impl DeltaStats {
    /// Size of the target the stream rebuilds.
    pub fn target_bytes(&self) -> u64 {
        self.copy_bytes + self.literal_bytes
    }
}

/// Writes a librsync delta stream: magic, LITERAL/COPY commands, END.
///
/// * Literals use the shortest encoding: the length in the opcode (`0x01`–`0x40`) up to 64 bytes,
///   otherwise `0x41`–`0x44` with the narrowest 1/2/4/8-byte length. Each [`literal`](Self::literal)
///   call becomes one command (callers pass whole runs).
/// * COPY commands use the narrowest offset and length widths; a COPY that continues the previous
///   one in the basis is merged into it.
/// * Empty literals and zero-length COPYs are not written.
///
/// Nothing is complete until [`finish`](Self::finish) writes END; dropping the writer leaves a
/// truncated stream that every decoder rejects.
#[derive(Debug)]
pub struct DeltaWriter<W: Write> {
    out: W,
    pending_copy: Option<(u64, u64)>,
    stats: DeltaStats,
    scratch: Vec<u8>,
}

impl<W: Write> DeltaWriter<W> {
    /// Starts a stream on `out` by writing the magic number.
    pub fn new(mut out: W) -> io::Result<Self> {
        out.write_all(&DELTA_MAGIC)?;
        Ok(Self {
            out,
            pending_copy: None,
            stats: DeltaStats {
                delta_bytes: DELTA_MAGIC.len() as u64,
                ..DeltaStats::default()
            },
            scratch: Vec::with_capacity(17),
        })
    }

    /// Appends a LITERAL command carrying `data`.
    pub fn literal(&mut self, data: &[u8]) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        self.flush_copy()?;
        let len = data.len() as u64;
        self.scratch.clear();
        if len <= u64::from(OP_LITERAL_MAX_SHORT) {
            self.scratch.push(len as u8);
        } else {
            let w = width_log2(len);
            self.scratch.push(OP_LITERAL_N1 + w);
            put_be(&mut self.scratch, len, w);
        }
        self.out.write_all(&self.scratch)?;
        self.out.write_all(data)?;
        self.stats.literal_ops += 1;
        self.stats.literal_bytes += len;
        self.stats.delta_bytes += self.scratch.len() as u64 + len;
        Ok(())
    }

    /// Appends a COPY of `len` basis bytes starting at `offset`, merged with the previous COPY
    /// when it continues it. Fails with `InvalidInput` if `offset + len` overflows `u64`.
    pub fn copy(&mut self, offset: u64, len: u64) -> io::Result<()> {
        if len == 0 {
            return Ok(());
        }
        if offset.checked_add(len).is_none() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "copy range overflows u64",
            ));
        }
        match &mut self.pending_copy {
            Some((o, l)) if o.checked_add(*l) == Some(offset) && l.checked_add(len).is_some() => {
                *l += len;
            }
            _ => {
                self.flush_copy()?;
                self.pending_copy = Some((offset, len));
            }
        }
        Ok(())
    }

    /// Counters of the commands written so far (a pending COPY is counted once flushed).
    pub fn stats(&self) -> DeltaStats {
        self.stats
    }

    /// Writes END, flushes and returns the inner writer and the final counters.
    pub fn finish_with_stats(mut self) -> io::Result<(W, DeltaStats)> {
        self.flush_copy()?;
        self.out.write_all(&[OP_END])?;
        self.stats.delta_bytes += 1;
        self.out.flush()?;
        Ok((self.out, self.stats))
    }

    /// Writes END, flushes and returns the inner writer.
    pub fn finish(self) -> io::Result<W> {
        self.finish_with_stats().map(|(w, _)| w)
    }

    fn flush_copy(&mut self) -> io::Result<()> {
        let Some((offset, len)) = self.pending_copy.take() else {
            return Ok(());
        };
        let (ow, lw) = (width_log2(offset), width_log2(len));
        self.scratch.clear();
        self.scratch.push(copy_opcode(ow, lw));
        put_be(&mut self.scratch, offset, ow);
        put_be(&mut self.scratch, len, lw);
        self.out.write_all(&self.scratch)?;
        self.stats.copy_ops += 1;
        self.stats.copy_bytes += len;
        self.stats.delta_bytes += self.scratch.len() as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(f: impl FnOnce(&mut DeltaWriter<Vec<u8>>) -> io::Result<()>) -> Vec<u8> {
        let mut w = DeltaWriter::new(Vec::new()).unwrap();
        f(&mut w).unwrap();
        w.finish().unwrap()
    }

    #[test]
    fn empty_stream_is_magic_and_end() {
        assert_eq!(encode(|_| Ok(())), [0x72, 0x73, 0x02, 0x36, 0x00]);
    }

    #[test]
    fn literal_forms() {
        let d = encode(|w| w.literal(b"abc"));
        assert_eq!(&d[4..], &[3, b'a', b'b', b'c', 0]);
        let d = encode(|w| w.literal(&[7u8; 64]));
        assert_eq!(d[4], 0x40);
        assert_eq!(d.len(), 4 + 1 + 64 + 1);
        let d = encode(|w| w.literal(&[7u8; 65]));
        assert_eq!(&d[4..6], &[0x41, 65]);
        let d = encode(|w| w.literal(&[7u8; 256]));
        assert_eq!(&d[4..7], &[0x42, 1, 0]);
        let d = encode(|w| w.literal(&[7u8; 65_536]));
        assert_eq!(&d[4..9], &[0x43, 0, 1, 0, 0]);
    }

    #[test]
    fn copies_are_narrow_and_merged() {
        let d = encode(|w| {
            w.copy(10, 5)?;
            w.copy(15, 300)?; // continues: merged into COPY(10, 305)
            w.copy(70_000, 1)?;
            w.copy(0, 0) // ignored
        });
        assert_eq!(
            &d[4..],
            &[0x46, 10, 0x01, 0x31, 0x4D, 0x00, 0x01, 0x11, 0x70, 1, 0x00]
        );
    }

    #[test]
    fn literal_breaks_copy_merge_and_stats_count() {
        let mut w = DeltaWriter::new(Vec::new()).unwrap();
        w.copy(0, 4).unwrap();
        w.literal(b"x").unwrap();
        w.copy(4, 4).unwrap();
        let (d, s) = w.finish_with_stats().unwrap();
        assert_eq!(&d[4..], &[0x45, 0, 4, 1, b'x', 0x45, 4, 4, 0]);
        assert_eq!(
            s,
            DeltaStats {
                copy_ops: 2,
                copy_bytes: 8,
                literal_ops: 1,
                literal_bytes: 1,
                delta_bytes: d.len() as u64
            }
        );
    }

    #[test]
    fn overflowing_copy_is_rejected() {
        let mut w = DeltaWriter::new(Vec::new()).unwrap();
        let e = w.copy(u64::MAX, 1).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        w.copy(u64::MAX - 1, 1).unwrap();
        let d = w.finish().unwrap();
        assert_eq!(d[4], 0x45 + 12);
    }
}
