//! The raw query string of `/api/v3/delta` comes from the network: parsing it must never
//! panic, and an accepted registry reference must print back to a parseable reference.
#![no_main]

use bru_server::{parse_query, Requested};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok((src, dest)) = parse_query(raw) {
        for side in [src, dest] {
            if let Requested::Registry(r) = side {
                let again = format!("src={r}&dest=1");
                assert!(parse_query(&again).is_ok(), "{again}");
            }
        }
    }
});
