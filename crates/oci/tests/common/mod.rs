//! Helpers shared by the integration tests.
#![allow(dead_code)]

use bru_oci::{Descriptor, ImageSource, OciError};
use tokio::io::AsyncReadExt;

/// Reads a whole blob, returning the structured error (a verification failure, or the
/// stream's own error) as the library recovers it.
pub async fn read_blob(src: &dyn ImageSource, d: &Descriptor) -> Result<Vec<u8>, OciError> {
    let mut r = src.blob(d).await?;
    let mut v = Vec::new();
    match r.read_to_end(&mut v).await {
        Ok(_) => Ok(v),
        Err(e) => Err(OciError::from_stream(e)),
    }
}

#[allow(unused_imports)] // not every test binary uses the registry
pub use bru_test_support::{unique_repo, TestRegistry};
