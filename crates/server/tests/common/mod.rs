//! Test helpers shared by the server's integration tests: signing keys and claims.
#![allow(dead_code)]

use std::time::{SystemTime, UNIX_EPOCH};

pub use bru_test_support::openbalena::TestKey;

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Claims as balena's API issues them: pull on each of `repos`.
pub fn claims(aud: &str, repos: &[&str], exp: i64) -> serde_json::Value {
    let access: Vec<_> = repos
        .iter()
        .map(|r| serde_json::json!({"type": "repository", "name": r, "actions": ["pull"]}))
        .collect();
    serde_json::json!({"iss": "api.test", "sub": "d_device", "aud": aud, "jti": "1",
                       "exp": exp, "nbf": now() - 10, "access": access})
}
