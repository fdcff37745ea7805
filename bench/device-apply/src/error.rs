//! The error type of the emulation.

use std::io;
use std::path::PathBuf;

/// Why a layer could not be extracted or a delta could not be applied.
///
/// Layer numbers are 0-based positions in the list of source layers; delta offsets are byte
/// positions in the (uncompressed) delta stream.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading a source layer tar failed.
    #[error("layer {layer}: reading the tar at offset {offset}")]
    ReadLayer {
        /// Index of the layer.
        layer: usize,
        /// Tar offset of the failed read.
        offset: u64,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A block that should be a tar header is not one (bad checksum or number field).
    #[error("layer {layer}: invalid tar header at offset {offset}")]
    BadHeader {
        /// Index of the layer.
        layer: usize,
        /// Tar offset of the header block.
        offset: u64,
    },
    /// The layer tar ends inside a header or a member's data.
    #[error("layer {layer}: tar truncated at offset {offset}")]
    TruncatedLayer {
        /// Index of the layer.
        layer: usize,
        /// Length of the tar that was read.
        offset: u64,
    },
    /// A member path leaves the layer directory (`..` above the root).
    #[error("layer {layer}: member path {path:?} escapes the layer directory")]
    PathEscape {
        /// Index of the layer.
        layer: usize,
        /// The path as stored in the tar (lossy UTF-8).
        path: String,
    },
    /// Two members of one layer have the same (cleaned) path.
    #[error(
        "layer {layer}: duplicate path {path:?}; tar-split refuses such a layer, so no device can hold it"
    )]
    DuplicatePath {
        /// Index of the layer.
        layer: usize,
        /// The cleaned path.
        path: String,
    },
    /// A member type the device's layer store does not handle here (e.g. GNU sparse files).
    #[error("layer {layer}: unsupported tar member type {typeflag:?} for {path:?}")]
    UnsupportedMember {
        /// Index of the layer.
        layer: usize,
        /// The type flag, as a character.
        typeflag: char,
        /// The cleaned path.
        path: String,
    },
    /// Writing an extracted file or directory failed.
    #[error("extracting {path}")]
    Extract {
        /// The file or directory being written.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The delta stream does not start with `72 73 02 36`.
    #[error("bad delta magic {found:02x?}, expected 72 73 02 36")]
    BadMagic {
        /// The first bytes of the stream (fewer than four if it is shorter).
        found: Vec<u8>,
    },
    /// A reserved opcode (`0x55`–`0xff`).
    #[error("reserved opcode {opcode:#04x} at delta offset {offset}")]
    ReservedOpcode {
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
    /// Reading the delta failed.
    #[error("reading the delta at offset {offset}")]
    ReadDelta {
        /// Position where the read failed.
        offset: u64,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A COPY whose first byte is at or past the end of the basis.
    #[error(
        "COPY of {len} bytes at delta offset {offset} starts at basis offset {copy_offset}, at or \
         past the end of the {basis_len}-byte basis: on a device the concatenated basis returns \
         0 bytes forever and the pull hangs"
    )]
    CopyStartsPastEnd {
        /// Position of the COPY opcode.
        offset: u64,
        /// Basis offset of the copy.
        copy_offset: u64,
        /// Length of the copy.
        len: u64,
        /// Length of the basis.
        basis_len: u64,
    },
    /// A COPY that starts inside the basis but runs past its end.
    #[error(
        "COPY of {len} bytes at delta offset {offset} from basis offset {copy_offset} runs past \
         the end of the {basis_len}-byte basis: a device would write a short copy and fail the \
         DiffID check"
    )]
    CopyPastEnd {
        /// Position of the COPY opcode.
        offset: u64,
        /// Basis offset of the copy.
        copy_offset: u64,
        /// Length of the copy.
        len: u64,
        /// Length of the basis.
        basis_len: u64,
    },
    /// Reading an extracted file of the basis failed (missing, shorter than its tar entry).
    #[error("reading basis file {path} at offset {offset}")]
    ReadBasisFile {
        /// The file.
        path: PathBuf,
        /// Offset inside the file.
        offset: u64,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A seek or read on the chained basis failed without a more precise cause.
    #[error("reading the basis")]
    ReadBasis {
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The consumer (DiffID) side of the pipe went away.
    #[error("the pipe consumer stopped before the end of the output")]
    PipeClosed,
    /// A delta file could not be opened or recognised.
    #[error("delta file {path}")]
    DeltaFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
}

/// Result with the emulation's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
