//! Fuzzes the delta decoder: the first input byte picks a basis length, the rest is the delta.
//! `patch` must return Ok or a structured error, never panic, and report the bytes it wrote.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let basis: Vec<u8> = (0..u16::from(n) * 4).map(|i| i as u8).collect();
    // Prefix the magic half of the time so the fuzzer reaches the commands quickly.
    let delta = if n & 1 == 0 {
        [&bru_rsync::DELTA_MAGIC[..], rest].concat()
    } else {
        rest.to_vec()
    };
    let mut out = Vec::new();
    if let Ok(written) = bru_rsync::patch(&basis, &delta[..], &mut out) {
        assert_eq!(written, out.len() as u64);
    }
});
