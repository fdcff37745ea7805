//! Fuzzes the tar parser and hint derivation on arbitrary bytes: never panics, and every entry
//! lies inside the input.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mid = data.len() / 2;
    for e in bru_rsync::tar::entries(data) {
        assert!(e.start <= e.data.start && e.data.start <= e.data.end);
        assert!(e.data.end <= e.end && e.end <= data.len() as u64);
    }
    for h in bru_rsync::tar::hints(&data[..mid], &data[mid..]) {
        assert!(h.basis.end <= mid as u64 && h.target.end <= (data.len() - mid) as u64);
    }
});
