//! librsync delta format (encoder, streaming decoder) and a byte-granular matcher.
//!
//! A delta stream is the magic `72 73 02 36`, then LITERAL and COPY commands, then END
//! (see the librsync format; balena-engine applies these streams with librsync-go).
//! * [`DeltaWriter`] encodes a stream from LITERAL/COPY operations.
//! * [`patch()`] applies a stream to a basis ([`ReadAt`]) with bounded memory and strict checks.
//! * [`BasisIndex`] and [`diff`] find byte-granular COPYs against a whole basis and write the
//!   stream; [`Hint`]s (e.g. from [`tar::hints`]) point target ranges at their likely old bytes.
//! * [`DeviceCost`] and [`BasisLayout`] model what a device pays to apply each command, so that
//!   [`diff_with_layout`] can minimise download plus apply time instead of bytes alone.

#![deny(missing_docs)]

mod device;
mod encode;
mod format;
mod matcher;
mod op;
mod options;
mod patch;
mod refine;
mod schedule;
mod stitch;
pub mod tar;

pub use device::{
    Bandwidth, BandwidthError, BasisLayout, DeviceCost, DEVICE_READ_BYTES, LAYER_READ_ENDS,
};
pub use encode::{DeltaStats, DeltaWriter};
pub use format::{copy_cost, literal_header_cost, DELTA_MAGIC};
pub use matcher::{
    diff, diff_many_in_order, diff_many_with_layout, diff_with_layout, BasisIndex, Hint,
    IndexBuilder, MatchOptions,
};
pub use patch::{patch, PatchError, ReadAt};
