//! librsync delta format (encoder, streaming decoder) and a byte-granular matcher.
//!
//! A delta stream is the magic `72 73 02 36`, then LITERAL and COPY commands, then END
//! (see the librsync format; balena-engine applies these streams with librsync-go).
//! * [`DeltaWriter`] encodes a stream from LITERAL/COPY operations.
//! * [`patch`] applies a stream to a basis ([`ReadAt`]) with bounded memory and strict checks.

mod encode;
mod format;
mod patch;

pub use encode::{DeltaStats, DeltaWriter};
pub use format::{copy_cost, literal_header_cost, DELTA_MAGIC};
pub use patch::{patch, PatchError, ReadAt};
