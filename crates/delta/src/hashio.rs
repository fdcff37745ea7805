//! Writers that hash, count or compare what passes through them.

use std::io::{self, Write};

use bru_oci::{Digest, Hasher};

/// Passes bytes to `inner` while computing their sha256 and length.
pub(crate) struct HashWriter<W> {
    inner: W,
    hasher: Hasher,
    len: u64,
}

impl<W: Write> HashWriter<W> {
    pub(crate) fn new(inner: W) -> Self {
        HashWriter {
            inner,
            hasher: Hasher::new(),
            len: 0,
        }
    }

    /// The inner writer, the digest and the byte count.
    pub(crate) fn finish(self) -> (W, Digest, u64) {
        (self.inner, self.hasher.finish(), self.len)
    }
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Compares what is written with the bytes `range` of a file, from its start, reading them
/// with `pread` (from the page cache, not through a map); keeps the first difference. A write
/// that differs fails, so that whoever writes stops early.
pub(crate) struct CompareWriter<'a> {
    file: &'a std::fs::File,
    range: std::ops::Range<u64>,
    /// Bytes compared so far.
    at: u64,
    expected: Vec<u8>,
    differs_at: Option<u64>,
}

impl<'a> CompareWriter<'a> {
    pub(crate) fn new(file: &'a std::fs::File, range: std::ops::Range<u64>) -> Self {
        CompareWriter {
            file,
            range,
            at: 0,
            expected: Vec::new(),
            differs_at: None,
        }
    }

    fn len(&self) -> u64 {
        self.range.end.saturating_sub(self.range.start)
    }

    /// The first offset written that differs from the expected bytes (or lies past their end).
    pub(crate) fn differs_at(&self) -> Option<u64> {
        self.differs_at
    }

    /// `None` if exactly the expected bytes were written, else the first offset that differs
    /// (the length written if it was a prefix of them).
    pub(crate) fn finish(self) -> Option<u64> {
        match self.differs_at {
            Some(at) => Some(at),
            None if self.at != self.len() => Some(self.at),
            None => None,
        }
    }
}

impl Write for CompareWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        use std::os::unix::fs::FileExt;
        if self.differs_at.is_none() {
            let n = (buf.len() as u64).min(self.len() - self.at) as usize;
            self.expected.resize(n, 0);
            self.file
                .read_exact_at(&mut self.expected, self.range.start + self.at)?;
            if self.expected[..] != buf[..n] || n < buf.len() {
                let same = self
                    .expected
                    .iter()
                    .zip(buf)
                    .take_while(|(a, b)| a == b)
                    .count();
                self.differs_at = Some(self.at + same as u64);
            }
        }
        if self.differs_at.is_some() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the rebuilt bytes differ from the expected ones",
            ));
        }
        self.at += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Bytes handed to the writer thread at a time.
const PIPE_CHUNK: usize = 256 * 1024;
/// Chunks in flight between the two threads.
const PIPE_DEPTH: usize = 4;

/// The writing end of [`write_on_thread`]: collects bytes into chunks and
/// passes them, in order, to the thread that owns the real writer.
#[derive(Debug)]
pub(crate) struct PipeWriter {
    buf: Vec<u8>,
    tx: std::sync::mpsc::SyncSender<Vec<u8>>,
    spare: std::sync::mpsc::Receiver<Vec<u8>>,
}

impl PipeWriter {
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let next = self
            .spare
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(PIPE_CHUNK));
        let full = std::mem::replace(&mut self.buf, next);
        self.tx
            .send(full)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "writer thread stopped"))
    }
}

impl Write for PipeWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(PIPE_CHUNK - self.buf.len());
        self.buf.extend_from_slice(&buf[..n]);
        if self.buf.len() == PIPE_CHUNK {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        // The inner writer is flushed once, by `write_on_thread`, at the end.
        Ok(())
    }
}

/// Runs `fill` on this thread while another thread writes what it produces
/// to `inner`, so that producing (decompressing, patching, compressing) and
/// consuming (hashing, writing a file) overlap. Bytes reach `inner` in order
/// and unchanged; `inner` is flushed and returned with `fill`'s result. An
/// error of `inner` wins over the `fill` error it causes (a broken pipe).
pub(crate) fn write_on_thread<W: Write + Send, T>(
    inner: W,
    fill: impl FnOnce(&mut PipeWriter) -> io::Result<T>,
) -> io::Result<(W, T)> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(PIPE_DEPTH);
    let (spare_tx, spare) = std::sync::mpsc::sync_channel::<Vec<u8>>(PIPE_DEPTH + 2);
    std::thread::scope(|s| {
        let writer = s.spawn(move || -> io::Result<W> {
            let mut inner = inner;
            for mut chunk in rx {
                inner.write_all(&chunk)?;
                chunk.clear();
                let _ = spare_tx.try_send(chunk);
            }
            inner.flush()?;
            Ok(inner)
        });
        let mut pipe = PipeWriter {
            buf: Vec::with_capacity(PIPE_CHUNK),
            tx,
            spare,
        };
        let filled = fill(&mut pipe).and_then(|t| pipe.send().map(|()| t));
        drop(pipe);
        let written = writer
            .join()
            .map_err(|_| io::Error::other("writer thread panicked"))?;
        match (written, filled) {
            (Err(e), _) | (Ok(_), Err(e)) => Err(e),
            (Ok(w), Ok(t)) => Ok((w, t)),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_writer_finds_the_first_difference_or_none() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), b"xx0123456789yy").unwrap();
        let file = std::fs::File::open(dir.path().join("f")).unwrap();
        let expected = || 2..12u64;
        let mut same = CompareWriter::new(&file, expected());
        same.write_all(b"0123").unwrap();
        same.write_all(b"456789").unwrap();
        assert_eq!(same.finish(), None);

        let mut other = CompareWriter::new(&file, expected());
        other.write_all(b"0123").unwrap();
        let err = other.write_all(b"45x").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert_eq!(other.finish(), Some(6));

        let mut short = CompareWriter::new(&file, expected());
        short.write_all(b"01234").unwrap();
        assert_eq!(short.finish(), Some(5));

        let mut long = CompareWriter::new(&file, expected());
        assert!(long.write_all(b"0123456789+").is_err());
        assert_eq!(long.finish(), Some(10));
    }

    #[test]
    fn write_on_thread_passes_bytes_in_order() {
        let data: Vec<u8> = (0..1_000_003u32).map(|i| (i * 31 % 251) as u8).collect();
        let (out, n) = write_on_thread(Vec::new(), |w| {
            for piece in data.chunks(7777) {
                w.write_all(piece)?;
            }
            Ok(data.len())
        })
        .unwrap();
        assert_eq!(n, data.len());
        assert!(out == data);
    }

    #[test]
    fn write_on_thread_reports_the_writer_error() {
        #[derive(Debug)]
        struct Full;
        impl Write for Full {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::other("disk full"))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let err = write_on_thread(Full, |w| {
            for _ in 0..100 {
                w.write_all(&[0; 100_000])?;
            }
            Ok(())
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "disk full");
    }
}
