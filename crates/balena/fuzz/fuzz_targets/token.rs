//! The token file is read from disk and may hold anything: parsing must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(Some(token)) = bru_balena::Token::parse(&text) {
        let _ = token.is_expired_at(0);
        assert!(!token.secret().is_empty());
    }
});
