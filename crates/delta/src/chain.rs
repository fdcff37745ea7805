//! OCI ChainIDs and the common layer prefix of two images.
//!
//! balena-engine (since 17.12) treats target layer `i` as *common* when
//! `ChainID(source[0..=i]) == ChainID(target[0..=i])`; by construction the
//! common layers form a prefix. Those layers travel as empty tars and the
//! device keeps its own copy.

use sha2::{Digest as _, Sha256};

/// ChainIDs of a stack of layers, bottom first: `ChainID(L0) = DiffID(L0)` and
/// `ChainID(L0..Ln) = "sha256:" + hex(sha256(ChainID(L0..Ln-1) + " " + DiffID(Ln)))`.
pub fn chain_ids<S: std::fmt::Display>(diff_ids: &[S]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for diff_id in diff_ids {
        let next = match out.last() {
            None => diff_id.to_string(),
            Some(parent) => {
                let mut h = Sha256::new();
                h.update(parent.as_bytes());
                h.update(b" ");
                h.update(diff_id.to_string().as_bytes());
                format!("sha256:{}", hex::encode(h.finalize()))
            }
        };
        out.push(next);
    }
    out
}

/// Number of leading target layers whose ChainID equals the source's at the same depth.
pub fn common_prefix<S: std::fmt::Display, T: std::fmt::Display>(
    source: &[S],
    target: &[T],
) -> usize {
    chain_ids(source)
        .iter()
        .zip(chain_ids(target).iter())
        .take_while(|(a, b)| a == b)
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    const C: &str = "sha256:cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc";

    #[test]
    fn chain_of_one_is_the_diff_id() {
        assert_eq!(chain_ids(&[A]), vec![A.to_owned()]);
    }

    #[test]
    fn chain_id_follows_the_oci_rule() {
        let ids = chain_ids(&[A, B]);
        let mut h = Sha256::new();
        h.update(format!("{A} {B}").as_bytes());
        assert_eq!(ids[1], format!("sha256:{}", hex::encode(h.finalize())));
        assert_ne!(chain_ids(&[B, A])[1], ids[1], "order matters");
    }

    #[test]
    fn common_prefix_stops_at_first_difference_even_if_later_layers_match() {
        assert_eq!(common_prefix(&[A, B, C], &[A, B, C]), 3);
        assert_eq!(common_prefix(&[A, B, C], &[A, C, C]), 1);
        // Same DiffID at index 2 but a different parent: not common.
        assert_eq!(common_prefix(&[A, B, C], &[B, B, C]), 0);
        assert_eq!(common_prefix(&[A], &[A, B]), 1);
        assert_eq!(common_prefix::<&str, &str>(&[], &[A]), 0);
    }
}
