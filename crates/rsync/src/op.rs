//! The matcher's commands before they are written: what the matcher finds, the refinement
//! pass rewrites and the stitching writes out.

/// One command of a chunk's result: `len` target bytes at `target`, copied from `basis` or
/// carried as a literal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Op {
    /// Target position of the first byte.
    pub(crate) target: usize,
    /// Number of bytes.
    pub(crate) len: usize,
    /// Basis position copied from; `None` for a literal (the target bytes themselves).
    pub(crate) basis: Option<usize>,
}
