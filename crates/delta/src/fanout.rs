//! One producer, several consumers on threads of their own: the encoder's delta bytes go to
//! a file and, as they are produced, to the layer's compressor and to its self-check.

use std::io::{self, Read, Write};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::Arc;

/// Bytes handed to the consumers at a time.
const CHUNK: usize = 1 << 20;

/// Chunks in flight to each consumer: a bound on the memory a slow consumer can hold up.
pub(crate) const DEPTH: usize = 4;

/// A writer that writes to `file` and passes the same bytes, in chunks, to every consumer.
/// If a consumer stops (its receiver is dropped, on error) writing fails with
/// [`io::ErrorKind::BrokenPipe`]: the consumer's own result says why.
pub(crate) struct FanOut<W: Write> {
    file: W,
    consumers: Vec<SyncSender<Arc<[u8]>>>,
    buf: Vec<u8>,
}

impl<W: Write> FanOut<W> {
    pub(crate) fn new(file: W, consumers: Vec<SyncSender<Arc<[u8]>>>) -> Self {
        FanOut {
            file,
            consumers,
            buf: Vec::with_capacity(CHUNK),
        }
    }

    fn ship(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.file.write_all(&self.buf)?;
        let chunk: Arc<[u8]> = Arc::from(&self.buf[..]);
        self.buf.clear();
        for consumer in &self.consumers {
            consumer
                .send(Arc::clone(&chunk))
                .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "a consumer stopped"))?;
        }
        Ok(())
    }

    /// Passes on what is left, flushes the file and closes the consumers' channels.
    pub(crate) fn finish(mut self) -> io::Result<W> {
        self.ship()?;
        self.file.flush()?;
        Ok(self.file)
    }
}

impl<W: Write> Write for FanOut<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&buf[..n]);
        if self.buf.len() == CHUNK {
            self.ship()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        // Chunks are passed on when full and by `finish`: flushing early would only make
        // the consumers' pieces smaller.
        Ok(())
    }
}

/// The receiving end of one [`FanOut`] consumer as a reader; end of stream when the producer
/// is done (or gone).
pub(crate) struct ChannelReader {
    chunks: Receiver<Arc<[u8]>>,
    current: Arc<[u8]>,
    at: usize,
}

impl ChannelReader {
    pub(crate) fn new(chunks: Receiver<Arc<[u8]>>) -> Self {
        ChannelReader {
            chunks,
            current: Arc::from(&[][..]),
            at: 0,
        }
    }

    /// Receives and drops everything still to come (so that the producer is not stopped).
    pub(crate) fn drain(self) {
        for _ in self.chunks {}
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at == self.current.len() {
            match self.chunks.recv() {
                Ok(chunk) => {
                    self.current = chunk;
                    self.at = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len() - self.at);
        buf[..n].copy_from_slice(&self.current[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::sync_channel;

    #[test]
    fn every_consumer_and_the_file_get_the_same_bytes_in_order() {
        let data = bru_test_support::noise(9, 3 * CHUNK + 12_345);
        let (a_tx, a_rx) = sync_channel(DEPTH);
        let (b_tx, b_rx) = sync_channel(DEPTH);
        let (file, a, b) = std::thread::scope(|s| {
            let a = s.spawn(|| {
                let mut v = Vec::new();
                ChannelReader::new(a_rx).read_to_end(&mut v).map(|_| v)
            });
            let b = s.spawn(|| {
                let mut v = Vec::new();
                ChannelReader::new(b_rx).read_to_end(&mut v).map(|_| v)
            });
            let mut out = FanOut::new(Vec::new(), vec![a_tx, b_tx]);
            for piece in data.chunks(70_001) {
                out.write_all(piece).unwrap();
            }
            let file = out.finish().unwrap();
            (file, a.join().unwrap().unwrap(), b.join().unwrap().unwrap())
        });
        assert!(file == data && a == data && b == data);
    }

    #[test]
    fn a_stopped_consumer_stops_the_producer() {
        let (tx, rx) = sync_channel(1);
        drop(rx);
        let mut out = FanOut::new(Vec::new(), vec![tx]);
        let err = out.write_all(&vec![0; 2 * CHUNK]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    }
}
