//! Opcode table of the librsync delta stream (all integers big-endian).

/// Magic number that starts every delta stream: `72 73 02 36` ("rs\x026").
pub const DELTA_MAGIC: [u8; 4] = [0x72, 0x73, 0x02, 0x36];

/// END: the last command of a stream.
pub(crate) const OP_END: u8 = 0x00;
/// Largest literal length carried in the opcode itself (`0x01`–`0x40`).
pub(crate) const OP_LITERAL_MAX_SHORT: u8 = 0x40;
/// LITERAL with a 1-byte length; `+1`, `+2`, `+3` for 2, 4 and 8-byte lengths.
pub(crate) const OP_LITERAL_N1: u8 = 0x41;
/// COPY with 1-byte offset and 1-byte length; see [`copy_opcode`].
pub(crate) const OP_COPY_N1_N1: u8 = 0x45;
/// Last COPY opcode (8-byte offset, 8-byte length). Everything above is reserved.
pub(crate) const OP_COPY_N8_N8: u8 = 0x54;

/// log2 of the narrowest of the widths 1, 2, 4, 8 bytes that holds `v`.
pub(crate) fn width_log2(v: u64) -> u8 {
    if v <= u64::from(u8::MAX) {
        0
    } else if v <= u64::from(u16::MAX) {
        1
    } else if v <= u64::from(u32::MAX) {
        2
    } else {
        3
    }
}

/// COPY opcode for the given width exponents (`0x45 + 4·log2(offset width) + log2(length width)`).
pub(crate) fn copy_opcode(offset_w: u8, len_w: u8) -> u8 {
    OP_COPY_N1_N1 + 4 * offset_w + len_w
}

/// Appends `v` as a big-endian integer of `1 << w` bytes.
pub(crate) fn put_be(buf: &mut Vec<u8>, v: u64, w: u8) {
    let bytes = v.to_be_bytes();
    let n = 1usize << w;
    buf.extend_from_slice(&bytes[8 - n..]);
}

/// Encoded size in bytes of a COPY command (opcode + operands).
pub fn copy_cost(offset: u64, len: u64) -> u64 {
    1 + (1u64 << width_log2(offset)) + (1u64 << width_log2(len))
}

/// Encoded size in bytes of a LITERAL command header (without the data).
pub fn literal_header_cost(len: u64) -> u64 {
    if len == 0 {
        0
    } else if len <= u64::from(OP_LITERAL_MAX_SHORT) {
        1
    } else {
        1 + (1u64 << width_log2(len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widths_are_narrowest() {
        assert_eq!(width_log2(0), 0);
        assert_eq!(width_log2(255), 0);
        assert_eq!(width_log2(256), 1);
        assert_eq!(width_log2(65_535), 1);
        assert_eq!(width_log2(65_536), 2);
        assert_eq!(width_log2(u64::from(u32::MAX)), 2);
        assert_eq!(width_log2(u64::from(u32::MAX) + 1), 3);
        assert_eq!(copy_opcode(0, 0), OP_COPY_N1_N1);
        assert_eq!(copy_opcode(3, 3), OP_COPY_N8_N8);
        assert_eq!(copy_opcode(2, 1), 0x45 + 8 + 1);
    }

    #[test]
    fn costs() {
        assert_eq!(copy_cost(0, 1), 3);
        assert_eq!(copy_cost(1 << 40, 1 << 40), 17);
        assert_eq!(literal_header_cost(64), 1);
        assert_eq!(literal_header_cost(65), 2);
        assert_eq!(literal_header_cost(256), 3);
        assert_eq!(literal_header_cost(70_000), 5);
    }
}
