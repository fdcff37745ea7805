//! Emulation of how balena-engine applies a v3 delta on a device, to measure what a delta
//! costs there (see `shared/specs/device-apply.md` for the source reading behind it).
//!
//! # What is emulated
//!
//! * **Source layers as a device holds them** ([`DeviceBasis::extract`]): each uncompressed
//!   layer tar is extracted to `<workdir>/layer-<i>/` (regular files only; directories are
//!   created, links and devices are not) and indexed like tar-split: an ordered list of
//!   [`Segment`]s, bytes in memory for headers, padding, PAX / GNU records and the end of the
//!   archive, and a path plus size for every regular file body. The segments concatenated are
//!   the layer tar, byte for byte ([`LayerIndex::reassemble`]). A duplicate path in one layer is
//!   refused (tar-split refuses it, so no device can hold such a layer); a path escaping the
//!   layer directory is an error.
//! * **The basis served as the engine serves it** ([`BasisReader`]): the layers chained into one
//!   `Read + Seek` stream. Every read that reaches a layer binary-searches its segments and,
//!   for every file the range touches, opens the file by its full path, seeks (when the range
//!   starts inside it), reads and closes it. Nothing is cached between reads. By default
//!   ([`ReadModel::GoBuffer`]) a basis read goes through the engine's concatenating reader,
//!   which fills a growing Go `bytes.Buffer`: a 32 KiB read reaches the layer reader as seven
//!   reads (512 B to 16 KiB), each with its own search and opens. [`ReadModel::Direct`] makes one
//!   layer read per layer instead.
//! * **Commands executed as librsync-go executes them** ([`apply`]): LITERAL bytes are copied
//!   from the delta in chunks of at most 32 KiB; COPY seeks the basis and copies with a fresh
//!   `min(len, 32 KiB)` buffer per command, each chunk written to a synchronous pipe (a
//!   rendezvous channel: every write waits until the consumer thread took it, like Go's
//!   `io.Pipe`) whose reader hashes the output into the DiffID. Zero-length commands are
//!   accepted and counted; bytes after END are not read.
//! * **Counters** ([`Counters`]): commands, bytes, file opens, basis and layer reads, pipe
//!   writes; plus wall and CPU seconds of the apply, extraction excluded (it is reported by
//!   [`DeviceBasis::extract_seconds`]).
//!
//! Where a device would misbehave the emulation stops with an [`Error`] instead: a COPY starting
//! at or past the end of the basis (a device hangs), a COPY running past the end (a device
//! writes a short copy and fails the DiffID check), reserved opcodes, truncated streams.
//!
//! # What is not emulated
//!
//! * Overlay mounts: a device reads the files through a read-only overlay mount per layer
//!   (about 9–12 µs per open there against 6–10 µs from plain directories, measured with the
//!   engine's own code); here they are read from the plain layer directories.
//! * The page cache is warm here (the files were just written); a device reading from SD or
//!   eMMC after a reboot pays about 0.67 ms per uncached 4 KiB read.
//! * Extraction of the output into the layer store (only its DiffID is computed), the download,
//!   and the gzip decompression of the delta layer unless the input is gzip'd (then it is
//!   decompressed while applying, as on a device).
//! * CPU speed: this machine is several times faster than a Raspberry-Pi-class device.
//!
//! # Running it
//!
//! ```sh
//! cargo build --release -p bru-device-apply
//! target/release/device-apply --layers l0.tar l1.tar --delta delta.rdiff --diff-id sha256:…
//! ```
//!
//! It prints one JSON object (per-delta counters, seconds and DiffID checks, plus totals) on
//! stdout. From Rust:
//!
//! ```no_run
//! use bru_device_apply::{apply, DeviceBasis};
//! # fn main() -> Result<(), bru_device_apply::Error> {
//! let basis = DeviceBasis::extract_files(&["l0.tar", "l1.tar"], "/tmp/work".as_ref())?;
//! let report = apply(&basis, std::fs::File::open("delta.rdiff").map_err(|source| {
//!     bru_device_apply::Error::DeltaFile { path: "delta.rdiff".into(), source }
//! })?)?;
//! println!("{} opens, DiffID {}", report.counters.file_opens, report.diff_id);
//! # Ok(()) }
//! ```

#![deny(missing_docs)]

mod apply;
mod basis;
mod error;
mod input;
mod layer;

pub use apply::{apply, apply_with, ApplyOptions, ApplyReport, Counters, PipeModel, COPY_BUF};
pub use basis::{BasisCounters, BasisReader, DeviceBasis, ReadModel};
pub use error::{Error, Result};
pub use input::{delta_stream, DeltaKind, DeltaStream};
pub use layer::{LayerIndex, Segment};
