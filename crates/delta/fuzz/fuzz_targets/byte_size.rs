//! Fuzzes the size parser behind `--max-output-bytes`: any text gives a size or a structured
//! error, never a panic, and a parsed size prints as text that parses back to it.
#![no_main]

use bru_delta::ByteSize;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(size) = text.parse::<ByteSize>() {
        assert_eq!(size.to_string().parse::<ByteSize>(), Ok(size));
    }
});
