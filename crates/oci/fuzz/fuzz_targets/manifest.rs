//! Manifest, index and image-config parsing of untrusted bytes: never panics.
#![no_main]

use bru_oci::{media_type, parse_manifest, ImageConfig};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = parse_manifest(data, None);
    let _ = parse_manifest(data, Some(media_type::OCI_INDEX));
    let _ = parse_manifest(data, Some(media_type::DOCKER_MANIFEST));
    let _ = ImageConfig::parse(data);
});
