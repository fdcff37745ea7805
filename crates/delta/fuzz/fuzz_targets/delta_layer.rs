//! Fuzzes what a device-side apply does with a downloaded delta layer blob: detect the
//! compression, read the first tar entry, patch it against a basis. Arbitrary bytes must give
//! Ok or a structured error, never a panic; the input is tried raw and wrapped in a delta tar.
#![no_main]

use std::io::{BufReader, Read};

use libfuzzer_sys::fuzz_target;

fn apply(blob: &[u8], basis: &[u8]) {
    let Ok(plain) = bru_oci::decompress_read(BufReader::new(blob)) else {
        return;
    };
    let _ = bru_delta::layer::with_first_entry(plain, |entry: &mut dyn Read| {
        let mut out = Vec::new();
        if let Ok(written) = bru_rsync::patch(basis, entry, &mut out) {
            assert_eq!(written, out.len() as u64);
        }
    });
}

fuzz_target!(|data: &[u8]| {
    let basis: Vec<u8> = (0..4096u32).map(|i| (i * 31 % 251) as u8).collect();
    apply(data, &basis);
    let stream = [&bru_rsync::DELTA_MAGIC[..], data].concat();
    let mut tar = Vec::new();
    if bru_delta::layer::write_delta_tar(&stream[..], stream.len() as u64, &mut tar).is_ok() {
        apply(&tar, &basis);
    }
});
