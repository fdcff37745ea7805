//! Stitching: the refined commands of a target's chunks, matched independently, written as
//! one delta stream, merging literals and extending COPYs across chunk borders.

use std::io::{self, Write};

use crate::encode::{DeltaStats, DeltaWriter};
use crate::op::Op;

/// Writes the chunk results of one target (matched against `basis`) as a delta stream,
/// merging across chunk borders.
pub(crate) fn stitch<W: Write>(
    basis: &[u8],
    target: &[u8],
    hint_count: usize,
    results: Vec<Vec<Op>>,
    out: W,
) -> io::Result<DeltaStats> {
    let mut writer = DeltaWriter::new(out)?;
    // The literal not written yet, as (target start, length): adjacent literals are merged.
    let mut pending: Option<(usize, usize)> = None;
    // Basis end of the COPY just written: chunks are matched independently, so a
    // chunk may start with literal bytes that continue the previous chunk's last COPY.
    let mut copy_end: Option<usize> = None;
    for ops in results {
        for op in ops {
            match op.basis {
                None => {
                    let (mut start, mut len) = (op.target, op.len);
                    if let (None, Some(end)) = (pending, copy_end) {
                        let old = basis.get(end..).unwrap_or_default();
                        let new = &target[start..start + len];
                        let continued = old.iter().zip(new).take_while(|(a, b)| a == b).count();
                        if continued > 0 {
                            writer.copy(end as u64, continued as u64)?;
                            copy_end = Some(end + continued);
                            start += continued;
                            len -= continued;
                        }
                    }
                    if len == 0 {
                        continue;
                    }
                    copy_end = None;
                    match &mut pending {
                        Some((pending_start, pending_len))
                            if *pending_start + *pending_len == start =>
                        {
                            *pending_len += len
                        }
                        _ => {
                            if let Some((pending_start, pending_len)) = pending.take() {
                                writer
                                    .literal(&target[pending_start..pending_start + pending_len])?;
                            }
                            pending = Some((start, len));
                        }
                    }
                }
                Some(basis) => {
                    if let Some((pending_start, pending_len)) = pending.take() {
                        writer.literal(&target[pending_start..pending_start + pending_len])?;
                    }
                    writer.copy(basis as u64, op.len as u64)?;
                    copy_end = Some(basis + op.len);
                }
            }
        }
    }
    if let Some((pending_start, pending_len)) = pending {
        writer.literal(&target[pending_start..pending_start + pending_len])?;
    }
    let (_, stats) = writer.finish_with_stats()?;
    tracing::debug!(
        target_bytes = target.len(),
        hints = hint_count,
        copy_ops = stats.copy_ops,
        literal_bytes = stats.literal_bytes,
        delta_bytes = stats.delta_bytes,
        "delta written"
    );
    Ok(stats)
}
