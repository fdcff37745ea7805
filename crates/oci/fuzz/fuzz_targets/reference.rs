//! Image reference parsing: never panics, and whatever parses prints back to itself.
#![no_main]

use bru_oci::ImageReference;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(r) = s.parse::<ImageReference>() {
        let again: ImageReference = r
            .to_string()
            .parse()
            .expect("a displayed reference parses again");
        assert_eq!(again, r);
    }
});
