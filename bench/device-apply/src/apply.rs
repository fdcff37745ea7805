//! The delta executor (as librsync-go's `Patch` runs it) and the synchronous pipe to the
//! DiffID consumer.

use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::basis::{BasisReader, DeviceBasis, ReadModel};
use crate::error::{Error, Result};

/// Go's `io.Copy` buffer size: the largest read and the largest pipe write.
pub const COPY_BUF: usize = 32 * 1024;

// Opcodes of the librsync delta format (see `bru_rsync`'s format module).
const OP_END: u8 = 0x00;
const OP_LITERAL_MAX_SHORT: u8 = 0x40;
const OP_LITERAL_N1: u8 = 0x41;
const OP_COPY_N1_N1: u8 = 0x45;
const OP_COPY_N8_N8: u8 = 0x54;

/// Options of [`apply_with`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ApplyOptions {
    /// How basis reads reach the layer readers.
    pub read_model: ReadModel,
    /// Where the output goes.
    pub pipe_model: PipeModel,
}

impl ApplyOptions {
    /// Options with the given read model.
    pub fn with_read_model(read_model: ReadModel) -> Self {
        Self {
            read_model,
            ..Self::default()
        }
    }

    /// These options with the given pipe model.
    pub fn pipe_model(mut self, pipe_model: PipeModel) -> Self {
        self.pipe_model = pipe_model;
        self
    }
}

/// How the output reaches the DiffID hash.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PipeModel {
    /// A synchronous pipe to a consumer thread; every write waits until the consumer took the
    /// chunk, sleeping in the kernel: an OS-thread rendezvous, ~23 µs per write here, about 20×
    /// what librsync-go's `Patch` costs per command with Go's `io.Pipe` (`bench/patch_cost.sh`).
    /// Issue 7's first model, kept for comparison.
    Thread,
    /// Hashed in the applying thread, no hand-off: the difference to the other models
    /// measures their hand-off cost.
    Inline,
    /// As on a device: a synchronous pipe to a consumer thread (the layer store's goroutine);
    /// every write waits until the consumer took the chunk, both ends waiting by spinning, never
    /// sleeping, so that a hand-off costs about what one between goroutines of Go's `io.Pipe`
    /// does (0.5–0.6 µs per command in all here against librsync-go's own 1.0–1.3 µs; Go's
    /// hand-off 0.5–1.1 µs per write of up to 1 KB; `bench/handoff.sh`, `bench/patch_cost.sh`).
    /// Keeps a second core busy, so its CPU seconds include the spinning.
    #[default]
    Goroutine,
}

/// What one apply did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// COPY commands (zero-length ones included).
    pub copy_commands: u64,
    /// LITERAL commands (zero-length ones included).
    pub literal_commands: u64,
    /// Bytes the COPY commands asked for.
    pub copy_bytes: u64,
    /// Bytes the LITERAL commands carried.
    pub literal_bytes: u64,
    /// Files opened (and closed) to serve basis reads.
    pub file_opens: u64,
    /// Bytes read from those files.
    pub file_bytes_read: u64,
    /// `read` calls on the chained basis (one per ≤ 32 KiB chunk of a COPY).
    pub basis_reads: u64,
    /// Bytes those reads returned.
    pub basis_bytes_read: u64,
    /// Reads that reached a per-layer reader (see [`ReadModel`]).
    pub layer_reads: u64,
    /// Writes into the synchronous pipe (each one a hand-off to the consumer thread).
    pub pipe_writes: u64,
    /// Bytes that came out of the pipe (the rebuilt layer tar).
    pub output_bytes: u64,
    /// Length of the delta stream up to and including END.
    pub delta_bytes: u64,
}

impl std::ops::AddAssign for Counters {
    fn add_assign(&mut self, o: Counters) {
        self.copy_commands += o.copy_commands;
        self.literal_commands += o.literal_commands;
        self.copy_bytes += o.copy_bytes;
        self.literal_bytes += o.literal_bytes;
        self.file_opens += o.file_opens;
        self.file_bytes_read += o.file_bytes_read;
        self.basis_reads += o.basis_reads;
        self.basis_bytes_read += o.basis_bytes_read;
        self.layer_reads += o.layer_reads;
        self.pipe_writes += o.pipe_writes;
        self.output_bytes += o.output_bytes;
        self.delta_bytes += o.delta_bytes;
    }
}

/// The result of [`apply`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApplyReport {
    /// `sha256:` digest of the output (the rebuilt layer's DiffID).
    pub diff_id: String,
    /// What the apply did.
    pub counters: Counters,
    /// Wall-clock seconds of the apply (extraction excluded).
    pub apply_seconds: f64,
    /// CPU seconds of the two apply threads (patcher and pipe consumer), from
    /// `/proc/thread-self/schedstat`; `None` where that file is missing.
    pub cpu_seconds: Option<f64>,
    /// The read model used.
    pub read_model: ReadModel,
    /// The pipe model used.
    pub pipe_model: PipeModel,
}

/// Applies a raw (uncompressed) librsync delta stream to `basis` as a device does, with the
/// default options.
pub fn apply<R: Read>(basis: &DeviceBasis, delta: R) -> Result<ApplyReport> {
    apply_with(basis, delta, &ApplyOptions::default())
}

/// [`apply`] with explicit options.
///
/// Commands are executed as librsync-go executes them: LITERAL bytes go from the delta to the
/// output in chunks of at most 32 KiB; a COPY seeks the basis, allocates a fresh buffer of
/// `min(len, 32 KiB)` and moves the bytes in reads of at most that size, each chunk written to
/// a synchronous pipe whose other end is a thread hashing the output (the DiffID). Bytes after
/// END are not read (librsync-go ignores them).
pub fn apply_with<R: Read>(
    basis: &DeviceBasis,
    delta: R,
    opts: &ApplyOptions,
) -> Result<ApplyReport> {
    let start = Instant::now();
    let cpu0 = thread_cpu_ns();
    let (sink, consumer) = match opts.pipe_model {
        PipeModel::Thread => {
            let (tx, rx) = sync_channel::<Vec<u8>>(0);
            (Sink::Thread(tx), Some(thread::spawn(move || consume(rx))))
        }
        PipeModel::Inline => (Sink::Inline(Sha256::new(), 0), None),
        PipeModel::Goroutine => {
            let slot = Arc::new(SpinSlot::default());
            let consumer = Arc::clone(&slot);
            (
                Sink::Spin(slot),
                Some(thread::spawn(move || consume_spinning(&consumer))),
            )
        }
    };
    let mut exec = Executor {
        delta: DeltaReader {
            inner: BufReader::with_capacity(64 * 1024, delta),
            pos: 0,
        },
        basis: basis.reader(opts.read_model),
        basis_len: basis.len(),
        pipe: Pipe { sink, writes: 0 },
        counters: Counters::default(),
    };
    let run = exec.run();
    let Executor {
        basis: reader,
        pipe,
        mut counters,
        delta,
        ..
    } = exec;
    let pipe_writes = pipe.writes;
    let consumed = match (pipe.sink, consumer) {
        (Sink::Thread(tx), Some(handle)) => {
            drop(tx);
            handle.join().map_err(|_| Error::PipeClosed)
        }
        (Sink::Spin(slot), Some(handle)) => {
            slot.close();
            handle.join().map_err(|_| Error::PipeClosed)
        }
        (Sink::Inline(h, n), _) => Ok((h.finalize().into(), n, Some(0))),
        (Sink::Thread(_) | Sink::Spin(_), None) => Err(Error::PipeClosed),
    };
    let cpu1 = thread_cpu_ns();
    let apply_seconds = start.elapsed().as_secs_f64();
    run?;
    let (digest, output_bytes, consumer_cpu) = consumed?;
    let b = reader.counters();
    counters.file_opens = b.file_opens;
    counters.file_bytes_read = b.file_bytes_read;
    counters.basis_reads = b.basis_reads;
    counters.basis_bytes_read = b.basis_bytes_read;
    counters.layer_reads = b.layer_reads;
    counters.pipe_writes = pipe_writes;
    counters.output_bytes = output_bytes;
    counters.delta_bytes = delta.pos;
    let cpu_seconds = match (cpu0, cpu1, consumer_cpu) {
        (Some(a), Some(b), Some(c)) => Some((b.saturating_sub(a) + c) as f64 / 1e9),
        _ => None,
    };
    Ok(ApplyReport {
        diff_id: format!("sha256:{}", hex::encode(digest)),
        counters,
        apply_seconds,
        cpu_seconds,
        read_model: opts.read_model,
        pipe_model: opts.pipe_model,
    })
}

/// The consumer end of the pipe: hashes every chunk; returns the digest, the byte count and
/// its own CPU nanoseconds.
fn consume(rx: Receiver<Vec<u8>>) -> ([u8; 32], u64, Option<u64>) {
    let cpu0 = thread_cpu_ns();
    let mut h = Sha256::new();
    let mut n = 0u64;
    for chunk in rx {
        h.update(&chunk);
        n += chunk.len() as u64;
    }
    let cpu = cpu0.zip(thread_cpu_ns()).map(|(a, b)| b.saturating_sub(a));
    (h.finalize().into(), n, cpu)
}

/// The one-slot rendezvous of [`PipeModel::Goroutine`].
#[derive(Default)]
struct SpinSlot {
    /// [`SLOT_EMPTY`], [`SLOT_FULL`], [`SLOT_CLOSED`] (no more writes) or [`SLOT_GONE`] (the
    /// consumer stopped).
    state: AtomicU8,
    data: Mutex<Vec<u8>>,
}

const SLOT_EMPTY: u8 = 0;
const SLOT_FULL: u8 = 1;
const SLOT_CLOSED: u8 = 2;
const SLOT_GONE: u8 = 3;

impl SpinSlot {
    /// Puts `chunk` in the slot and waits until the consumer took it.
    fn send(&self, chunk: &[u8]) -> Result<()> {
        {
            let mut data = self.data.lock().map_err(|_| Error::PipeClosed)?;
            data.clear();
            data.extend_from_slice(chunk);
        }
        if self
            .state
            .compare_exchange(SLOT_EMPTY, SLOT_FULL, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Err(Error::PipeClosed);
        }
        let mut spins = 0u32;
        loop {
            match self.state.load(Ordering::Acquire) {
                SLOT_EMPTY => return Ok(()),
                SLOT_GONE => return Err(Error::PipeClosed),
                _ => wait(&mut spins),
            }
        }
    }

    /// No more writes: the consumer ends once the slot is empty.
    fn close(&self) {
        let _ = self.state.compare_exchange(
            SLOT_EMPTY,
            SLOT_CLOSED,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }
}

/// One turn of a spinning wait: a CPU pause, and a yield now and then so that a busy machine
/// still runs the other end.
fn wait(spins: &mut u32) {
    *spins = spins.wrapping_add(1);
    if spins.is_multiple_of(1024) {
        thread::yield_now();
    } else {
        std::hint::spin_loop();
    }
}

/// The consumer of [`PipeModel::Goroutine`]: as [`consume`], waiting by spinning.
fn consume_spinning(slot: &SpinSlot) -> ([u8; 32], u64, Option<u64>) {
    /// Marks the slot gone however the consumer ends, so that no writer waits for ever.
    struct Gone<'a>(&'a SpinSlot);
    impl Drop for Gone<'_> {
        fn drop(&mut self) {
            self.0.state.store(SLOT_GONE, Ordering::Release);
        }
    }
    let _gone = Gone(slot);
    let cpu0 = thread_cpu_ns();
    let mut h = Sha256::new();
    let mut n = 0u64;
    let mut chunk = Vec::new();
    let mut spins = 0u32;
    loop {
        match slot.state.load(Ordering::Acquire) {
            SLOT_FULL => {
                match slot.data.lock() {
                    Ok(mut data) => std::mem::swap(&mut chunk, &mut *data),
                    Err(_) => break,
                }
                slot.state.store(SLOT_EMPTY, Ordering::Release);
                h.update(&chunk);
                n += chunk.len() as u64;
            }
            SLOT_CLOSED | SLOT_GONE => break,
            _ => wait(&mut spins),
        }
    }
    let cpu = cpu0.zip(thread_cpu_ns()).map(|(a, b)| b.saturating_sub(a));
    (h.finalize().into(), n, cpu)
}

/// CPU time of the calling thread in nanoseconds (first field of its schedstat).
fn thread_cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

/// The writing end of a Go-style `io.Pipe`: every write blocks until the consumer took it.
struct Pipe {
    sink: Sink,
    writes: u64,
}

enum Sink {
    /// Rendezvous with the consumer thread.
    Thread(SyncSender<Vec<u8>>),
    /// Hash and byte count, in the applying thread.
    Inline(Sha256, u64),
    /// Spinning rendezvous with the consumer thread.
    Spin(Arc<SpinSlot>),
}

impl Pipe {
    fn write(&mut self, chunk: &[u8]) -> Result<()> {
        self.writes += 1;
        match &mut self.sink {
            // The consumer copies the bytes out of the writer's buffer, as a Go pipe reader
            // does.
            Sink::Thread(tx) => tx.send(chunk.to_vec()).map_err(|_| Error::PipeClosed),
            Sink::Inline(h, n) => {
                h.update(chunk);
                *n += chunk.len() as u64;
                Ok(())
            }
            Sink::Spin(slot) => slot.send(chunk),
        }
    }
}

/// The delta reader: counts consumed bytes and turns EOF into [`Error::Truncated`].
struct DeltaReader<R> {
    inner: BufReader<R>,
    pos: u64,
}

impl<R: Read> DeltaReader<R> {
    /// Reads until `buf` is full or the stream ends; returns the bytes read.
    fn read_full(&mut self, buf: &mut [u8]) -> Result<usize> {
        let (n, result) = crate::layer::read_full(&mut self.inner, buf);
        self.pos += n as u64;
        result.map_err(|source| Error::ReadDelta {
            offset: self.pos,
            source,
        })?;
        Ok(n)
    }

    fn fill(&mut self, buf: &mut [u8]) -> Result<()> {
        if self.read_full(buf)? < buf.len() {
            return Err(Error::Truncated { offset: self.pos });
        }
        Ok(())
    }

    /// A big-endian unsigned integer of `n` bytes (1, 2, 4 or 8).
    fn be(&mut self, n: usize) -> Result<u64> {
        let mut b = [0u8; 8];
        self.fill(&mut b[8 - n..])?;
        Ok(u64::from_be_bytes(b))
    }
}

struct Executor<'a, R> {
    delta: DeltaReader<R>,
    basis: BasisReader<'a>,
    basis_len: u64,
    pipe: Pipe,
    counters: Counters,
}

impl<R: Read> Executor<'_, R> {
    fn run(&mut self) -> Result<()> {
        let mut magic = [0u8; 4];
        let n = self.delta.read_full(&mut magic)?;
        if n < 4 || magic != bru_rsync::DELTA_MAGIC {
            return Err(Error::BadMagic {
                found: magic[..n].to_vec(),
            });
        }
        loop {
            let at = self.delta.pos;
            let mut op = [0u8; 1];
            self.delta.fill(&mut op)?;
            match op[0] {
                OP_END => return Ok(()),
                op @ 1..=OP_LITERAL_MAX_SHORT => self.literal(u64::from(op))?,
                op @ OP_LITERAL_N1..OP_COPY_N1_N1 => {
                    let len = self.delta.be(1 << (op - OP_LITERAL_N1))?;
                    self.literal(len)?;
                }
                op @ OP_COPY_N1_N1..=OP_COPY_N8_N8 => {
                    let c = op - OP_COPY_N1_N1;
                    let offset = self.delta.be(1 << (c / 4))?;
                    let len = self.delta.be(1 << (c % 4))?;
                    self.copy(at, offset, len)?;
                }
                opcode => return Err(Error::ReservedOpcode { opcode, offset: at }),
            }
        }
    }

    /// `io.CopyN(out, delta, len)`: a buffer of `min(len, 32 KiB)`, chunks written as read.
    fn literal(&mut self, len: u64) -> Result<()> {
        self.counters.literal_commands += 1;
        self.counters.literal_bytes += len;
        let mut buf = vec![0u8; chunk_buf_len(len)];
        let mut left = len;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            // Filled before writing; on a device, the gzip and tar readers below the delta may
            // return shorter chunks and so make more (smaller) pipe writes.
            self.delta.fill(&mut buf[..n])?;
            self.pipe.write(&buf[..n])?;
            left -= n as u64;
        }
        Ok(())
    }

    /// `Seek(offset)` then `io.CopyN(out, basis, len)`.
    fn copy(&mut self, at: u64, offset: u64, len: u64) -> Result<()> {
        self.counters.copy_commands += 1;
        self.counters.copy_bytes += len;
        if len > 0 {
            let basis_len = self.basis_len;
            if offset >= basis_len {
                return Err(Error::CopyStartsPastEnd {
                    offset: at,
                    copy_offset: offset,
                    len,
                    basis_len,
                });
            }
            if offset.checked_add(len).is_none_or(|end| end > basis_len) {
                return Err(Error::CopyPastEnd {
                    offset: at,
                    copy_offset: offset,
                    len,
                    basis_len,
                });
            }
        }
        self.basis
            .seek(SeekFrom::Start(offset))
            .map_err(|e| self.basis_failure(e))?;
        let mut buf = vec![0u8; chunk_buf_len(len)];
        let mut left = len;
        while left > 0 {
            let want = left.min(buf.len() as u64) as usize;
            let n = self
                .basis
                .read(&mut buf[..want])
                .map_err(|e| self.basis_failure(e))?;
            if n == 0 {
                // Unreachable after the range check, unless files changed under us.
                return Err(Error::CopyPastEnd {
                    offset: at,
                    copy_offset: offset,
                    len,
                    basis_len: self.basis_len,
                });
            }
            self.pipe.write(&buf[..n])?;
            left -= n as u64;
        }
        Ok(())
    }

    /// The structured error behind a failed basis call (the `io::Error` only carries text).
    fn basis_failure(&mut self, source: io::Error) -> Error {
        self.basis
            .take_failure()
            .unwrap_or(Error::ReadBasis { source })
    }
}

/// Go's `io.CopyN` buffer: `min(len, 32 KiB)`, at least 1 byte.
fn chunk_buf_len(len: u64) -> usize {
    len.clamp(1, COPY_BUF as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spinning_pipe_hands_every_chunk_over_in_order() {
        let slot = Arc::new(SpinSlot::default());
        let consumer = {
            let slot = Arc::clone(&slot);
            thread::spawn(move || consume_spinning(&slot))
        };
        let chunks: Vec<Vec<u8>> = (0..500u32)
            .map(|i| vec![i as u8; (i % 97) as usize])
            .collect();
        for chunk in &chunks {
            slot.send(chunk).unwrap();
        }
        slot.close();
        let (digest, n, _) = consumer.join().unwrap();
        let all = chunks.concat();
        assert_eq!(n, all.len() as u64);
        assert_eq!(digest, <[u8; 32]>::from(Sha256::digest(&all)));
    }

    #[test]
    fn a_write_after_the_consumer_stopped_is_an_error_not_a_hang() {
        let slot = SpinSlot::default();
        slot.state.store(SLOT_GONE, Ordering::Release);
        assert!(matches!(slot.send(b"x"), Err(Error::PipeClosed)));
    }
}
