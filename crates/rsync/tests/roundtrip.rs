//! Property tests: whatever the encoder writes, `patch` rebuilds.

use bru_rsync::{patch, DeltaWriter};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Literal(Vec<u8>),
    /// A copy at a fraction (per mille) of the basis, of up to `len` bytes.
    Copy(u16, u16),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..300).prop_map(Op::Literal),
        (0u16..1000, 0u16..2000).prop_map(|(o, l)| Op::Copy(o, l)),
    ]
}

proptest! {
    #[test]
    fn encoded_ops_round_trip(
        basis in proptest::collection::vec(any::<u8>(), 0..5000),
        ops in proptest::collection::vec(op(), 0..40),
    ) {
        let mut w = DeltaWriter::new(Vec::new()).unwrap();
        let mut expected = Vec::new();
        for op in ops {
            match op {
                Op::Literal(data) => {
                    w.literal(&data).unwrap();
                    expected.extend_from_slice(&data);
                }
                Op::Copy(frac, len) => {
                    let start = basis.len() * usize::from(frac) / 1000;
                    let len = usize::from(len).min(basis.len() - start);
                    w.copy(start as u64, len as u64).unwrap();
                    expected.extend_from_slice(&basis[start..start + len]);
                }
            }
        }
        let (delta, stats) = w.finish_with_stats().unwrap();
        prop_assert_eq!(stats.delta_bytes, delta.len() as u64);
        prop_assert_eq!(stats.target_bytes(), expected.len() as u64);
        let mut out = Vec::new();
        let n = patch(&basis, &delta[..], &mut out).unwrap();
        prop_assert_eq!(n, expected.len() as u64);
        prop_assert_eq!(out, expected);
    }

    /// Any byte string: `patch` returns (Ok or a structured error) and never panics.
    #[test]
    fn arbitrary_deltas_never_panic(
        basis in proptest::collection::vec(any::<u8>(), 0..64),
        body in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let delta = [&[0x72, 0x73, 0x02, 0x36][..], &body].concat();
        let mut out = Vec::new();
        if let Ok(n) = patch(&basis, &delta[..], &mut out) {
            prop_assert_eq!(n, out.len() as u64);
        }
    }
}
