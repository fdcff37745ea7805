//! The matcher's commands before they are written: what the matcher finds, the refinement
//! pass rewrites and the stitching writes out.

/// One command of a chunk's result: `len` target bytes at `target`, copied from `basis` or
/// carried as a literal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Op {
    pub(crate) target: usize,
    pub(crate) len: usize,
    pub(crate) basis: Option<usize>,
}
