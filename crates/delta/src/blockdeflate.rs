//! One raw deflate stream, compressed in fixed-size blocks on several threads.
//!
//! A delta layer's body is deflated while the matcher still produces it. With one deflate
//! thread per layer, the largest layer's compression outlasted its matcher: on the 1.6 GB
//! pair the last half second of a build ran on one core. Here the input is cut into blocks of
//! [`BLOCK`] bytes; each block is deflated on its own, primed with the 32 KiB before it as a
//! preset dictionary (so its matches may still reach back across the cut), and ends with a
//! sync flush (byte-aligned, an empty stored block); the last block ends the stream. The
//! pieces, written in order, are one ordinary deflate stream: an inflater cannot tell it from
//! one compressed in one go. Its bytes depend on the input, the level and [`BLOCK`] only, never
//! on the number of threads or on how the input was written.
//!
//! No crate offers this on top of `flate2`: the parallel gzip crates either pull in another
//! deflate implementation or write one gzip member per block (losing the window at each cut).

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use flate2::{Compress, Compression, FlushCompress, Status};

/// Input bytes per block: large enough that the cost of a cut (a new block header, a flush
/// marker) stays below 0.1 % of the output, small enough that the last block's compression
/// after the input ends is short.
pub(crate) const BLOCK: usize = 1 << 20;

/// Deflate's window: how far back a match may refer.
const WINDOW: usize = 32 << 10;

/// A block to compress: its dictionary (the bytes before it), its bytes, whether it ends the
/// stream, and where to send the result.
struct Job {
    dict: Vec<u8>,
    data: Vec<u8>,
    last: bool,
    reply: SyncSender<io::Result<Vec<u8>>>,
}

/// A [`Write`] that deflates what it receives (raw deflate, no header) into `out`.
/// [`finish`](Self::finish) ends the stream.
pub(crate) struct BlockDeflater<W: Write> {
    /// Taken by [`finish`](Self::finish).
    out: Option<W>,
    /// The block being filled.
    block: Vec<u8>,
    /// Its size when full.
    block_len: usize,
    /// The last [`WINDOW`] bytes before `block`.
    dict: Vec<u8>,
    jobs: Option<SyncSender<Job>>,
    /// Results of submitted blocks, oldest first.
    pending: VecDeque<Receiver<io::Result<Vec<u8>>>>,
    workers: Vec<JoinHandle<()>>,
    /// At most this many blocks in flight.
    depth: usize,
}

impl<W: Write> BlockDeflater<W> {
    /// Deflates at `level` (1–9) with `threads` compressing threads (at least one). Fails
    /// only when the system cannot start a thread.
    pub(crate) fn new(out: W, level: u32, threads: usize) -> io::Result<Self> {
        Self::with_block(out, level, threads, BLOCK)
    }

    /// As [`new`](Self::new), with blocks of `block` bytes (tests cut small streams).
    fn with_block(out: W, level: u32, threads: usize, block: usize) -> io::Result<Self> {
        let threads = threads.max(1);
        let block = block.max(1);
        let (jobs, queue) = sync_channel::<Job>(threads);
        let queue = Arc::new(Mutex::new(queue));
        let level = Compression::new(level.clamp(1, 9));
        let workers = (0..threads)
            .map(|_| {
                let queue = Arc::clone(&queue);
                std::thread::Builder::new()
                    .name("deflate".into())
                    .spawn(move || work(&queue, level))
            })
            .collect::<io::Result<Vec<_>>>()?;
        Ok(BlockDeflater {
            out: Some(out),
            block: Vec::with_capacity(block),
            block_len: block,
            dict: Vec::new(),
            jobs: Some(jobs),
            pending: VecDeque::new(),
            workers,
            depth: 2 * threads + 1,
        })
    }

    /// Compresses what is left, ends the stream and returns the inner writer.
    pub(crate) fn finish(mut self) -> io::Result<W> {
        self.submit(true)?;
        while !self.pending.is_empty() {
            self.write_oldest()?;
        }
        self.stop();
        self.out.take().ok_or_else(stopped)
    }

    /// Hands the filled block to the workers.
    fn submit(&mut self, last: bool) -> io::Result<()> {
        if self.pending.len() >= self.depth {
            self.write_oldest()?;
        }
        let dict = std::mem::take(&mut self.dict);
        let data = if last {
            std::mem::take(&mut self.block)
        } else {
            let data = std::mem::replace(&mut self.block, Vec::with_capacity(self.block_len));
            // With blocks shorter than the window (tests), the dictionary is the last block
            // only: shorter than it could be, still correct.
            self.dict = data[data.len() - data.len().min(WINDOW)..].to_vec();
            data
        };
        let (reply, result) = sync_channel(1);
        let job = Job {
            dict,
            data,
            last,
            reply,
        };
        self.jobs
            .as_ref()
            .ok_or_else(stopped)?
            .send(job)
            .map_err(|_| stopped())?;
        self.pending.push_back(result);
        Ok(())
    }

    /// Waits for the oldest block and writes it out.
    fn write_oldest(&mut self) -> io::Result<()> {
        if let Some(result) = self.pending.pop_front() {
            let bytes = result.recv().map_err(|_| stopped())??;
            self.out.as_mut().ok_or_else(stopped)?.write_all(&bytes)?;
        }
        Ok(())
    }

    /// Closes the queue and waits for the workers.
    fn stop(&mut self) {
        self.jobs = None;
        self.pending.clear();
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

impl<W: Write> Drop for BlockDeflater<W> {
    fn drop(&mut self) {
        self.stop();
    }
}

impl<W: Write> Write for BlockDeflater<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = self.block_len - self.block.len();
        let n = buf.len().min(room);
        self.block.extend_from_slice(&buf[..n]);
        if self.block.len() == self.block_len {
            self.submit(false)?;
        }
        Ok(n)
    }

    /// Blocks are written when full; a flush cannot cut one short without changing the bytes.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn stopped() -> io::Error {
    io::Error::other("a deflate worker stopped")
}

/// A worker: compresses jobs until the queue closes.
fn work(queue: &Mutex<Receiver<Job>>, level: Compression) {
    loop {
        let job = match queue.lock() {
            Ok(queue) => queue.recv(),
            Err(_) => return,
        };
        let Ok(job) = job else { return };
        let result = deflate_block(level, &job.dict, &job.data, job.last);
        // The writer may have given up; nothing is waiting for this block then.
        let _ = job.reply.send(result);
    }
}

/// `data` as raw deflate blocks that may refer back into `dict`: ending the stream if `last`,
/// else ending with a sync flush.
pub(crate) fn deflate_block(
    level: Compression,
    dict: &[u8],
    data: &[u8],
    last: bool,
) -> io::Result<Vec<u8>> {
    let mut deflate = Compress::new(level, false);
    if !dict.is_empty() {
        deflate.set_dictionary(dict).map_err(io::Error::other)?;
    }
    let flush = if last {
        FlushCompress::Finish
    } else {
        FlushCompress::Sync
    };
    let mut out = Vec::with_capacity(data.len() / 2 + 4096);
    loop {
        let consumed = deflate.total_in() as usize;
        let status = deflate
            .compress_vec(&data[consumed..], &mut out, flush)
            .map_err(io::Error::other)?;
        let all_in = deflate.total_in() as usize == data.len();
        // Room left after a call means the flush completed (zlib's contract).
        let done = if last {
            status == Status::StreamEnd
        } else {
            all_in && out.len() < out.capacity()
        };
        if done {
            return Ok(out);
        }
        out.reserve(out.capacity().max(4096));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::read::DeflateDecoder;
    use proptest::prelude::*;
    use std::io::Read;

    fn compress(data: &[u8], piece: usize, threads: usize, block: usize) -> Vec<u8> {
        let mut d = BlockDeflater::with_block(Vec::new(), 9, threads, block).unwrap();
        for p in data.chunks(piece.max(1)) {
            d.write_all(p).unwrap();
        }
        d.finish().unwrap()
    }

    fn inflate(raw: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut d = DeflateDecoder::new(raw);
        d.read_to_end(&mut out).unwrap();
        out
    }

    #[test]
    fn one_stream_at_every_length_around_the_cuts() {
        for len in [
            0,
            1,
            WINDOW,
            BLOCK - 1,
            BLOCK,
            BLOCK + 1,
            3 * BLOCK + 12_345,
        ] {
            let data = bru_test_support::half_compressible(len as u64, len);
            let raw = compress(&data, 65_537, 2, BLOCK);
            assert!(inflate(&raw) == data, "len {len}: other bytes back");
        }
    }

    #[test]
    fn threads_and_pieces_do_not_change_the_bytes() {
        let data = bru_test_support::half_compressible(5, 2 * BLOCK + 777);
        let a = compress(&data, 1 << 16, 1, BLOCK);
        let b = compress(&data, 4093, 2, BLOCK);
        let c = compress(&data, BLOCK + 3, 5, BLOCK);
        assert!(a == b && b == c);
    }

    #[test]
    fn matches_reach_back_across_a_cut() {
        // The second block starts with the last 20,000 bytes of the first: with the first
        // block's tail as dictionary they cost a few bytes, without it 20,000.
        let first = bru_test_support::noise(9, BLOCK);
        let mut data = first.clone();
        data.extend_from_slice(&first[BLOCK - 20_000..]);
        let alone = compress(&first, BLOCK, 1, BLOCK).len();
        let both = compress(&data, BLOCK, 2, BLOCK).len();
        assert!(both < alone + 500, "{both} vs {alone}");
    }

    #[test]
    fn a_deflate_of_its_own_inflates_back_the_same() {
        // The independent check: the whole stream is what one deflate call would give back.
        let data = bru_test_support::half_compressible(17, BLOCK + BLOCK / 2);
        let raw = compress(&data, 100_000, 2, BLOCK);
        let mut whole = Vec::new();
        flate2::write::DeflateEncoder::new(&mut whole, Compression::new(9))
            .write_all(&data)
            .unwrap();
        assert!(inflate(&raw) == inflate(&whole));
        // The cut costs little: within 0.1 % of one deflate (plus a block header).
        assert!(
            raw.len() < whole.len() + whole.len() / 1000 + 300,
            "{} vs {}",
            raw.len(),
            whole.len()
        );
    }

    #[test]
    fn a_failing_writer_is_an_error_not_a_hang() {
        struct Full;
        impl Write for Full {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::new(io::ErrorKind::StorageFull, "disk full"))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let data = bru_test_support::half_compressible(3, 4 * 4096);
        let mut d = BlockDeflater::with_block(Full, 6, 2, 4096).unwrap();
        let mut err = None;
        for p in data.chunks(1000) {
            if let Err(e) = d.write_all(p) {
                err = Some(e);
                break;
            }
        }
        let err = match err {
            Some(e) => e,
            None => d.finish().map(|_| ()).unwrap_err(),
        };
        assert_eq!(err.kind(), io::ErrorKind::StorageFull);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn any_input_cut_anywhere_inflates_back(
            data in proptest::collection::vec(0u8..4, 0..20_000),
            block in 1usize..6_000,
            piece in 1usize..3_000,
            threads in 1usize..4,
        ) {
            let raw = compress(&data, piece, threads, block);
            prop_assert_eq!(inflate(&raw), data.clone());
            prop_assert!(raw == compress(&data, 7_000, 1, block));
        }
    }
}
