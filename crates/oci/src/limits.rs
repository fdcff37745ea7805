//! Size caps on the documents this crate reads whole into memory, and the helpers that
//! enforce them while reading.
//!
//! Manifests, indexes (including an OCI layout's `index.json` and a docker-archive's
//! `manifest.json`) and image configs are parsed from memory, so each is refused, with
//! [`OciError::TooLarge`], before more than its cap plus one byte is read. Layer blobs are
//! never read whole; they are streamed and verified against their descriptor's size.
//!
//! The manifest cap follows containerd, whose Docker resolver rejects manifests larger than
//! `MaxManifestSize` (4 × 1048 × 1048 bytes, about 4 MiB) in `remotes/docker/resolver.go`:
//! an image manifest of 128 layers is about 32 KiB, so 4 MiB leaves room for large
//! annotations. Configs carry the build history and can be larger; they get 8 MiB.

use std::io::Read;
use std::path::Path;

use tokio::io::{AsyncRead, AsyncReadExt};

use crate::OciError;

/// Largest manifest or index accepted: 4 MiB. Also the cap of an OCI layout's `index.json`
/// and a docker-archive's `manifest.json`.
pub const MAX_MANIFEST_SIZE: u64 = 4 * 1024 * 1024;

/// Largest image config accepted: 8 MiB.
pub const MAX_CONFIG_SIZE: u64 = 8 * 1024 * 1024;

/// Largest number of members indexed in a docker-archive (a `docker save` tarball has a few
/// per layer).
pub const MAX_ARCHIVE_MEMBERS: u64 = 1 << 16;

/// Most bytes of tar headers (including PAX and GNU long-name extensions, which the tar
/// parser reads whole) read while indexing a docker-archive: 64 MiB, room for every member
/// the member cap allows.
pub const MAX_ARCHIVE_HEADER_BYTES: u64 = 64 * 1024 * 1024;

/// Fails with [`OciError::TooLarge`] when a declared `size` is above `limit`, before anything
/// is read.
pub fn check_declared(what: &'static str, size: u64, limit: u64) -> Result<(), OciError> {
    if size > limit {
        return Err(OciError::TooLarge { what, limit });
    }
    Ok(())
}

/// Reads `reader` to its end into memory, reading at most `limit + 1` bytes: more than `limit`
/// bytes is [`OciError::TooLarge`]. I/O errors are passed to `io_error`.
pub fn read_capped<R: Read>(
    reader: R,
    what: &'static str,
    limit: u64,
    io_error: impl FnOnce(std::io::Error) -> OciError,
) -> Result<Vec<u8>, OciError> {
    let mut out = Vec::new();
    reader
        .take(limit.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(io_error)?;
    if out.len() as u64 > limit {
        return Err(OciError::TooLarge { what, limit });
    }
    Ok(out)
}

/// Reads the file at `path` with [`read_capped`]; a missing file is [`OciError::Io`] with
/// [`std::io::ErrorKind::NotFound`].
pub fn read_file_capped(path: &Path, what: &'static str, limit: u64) -> Result<Vec<u8>, OciError> {
    let file = std::fs::File::open(path).map_err(|e| OciError::io(path, e))?;
    read_capped(file, what, limit, |e| OciError::io(path, e))
}

/// Asynchronous [`read_capped`], for response bodies and blob streams. I/O errors are
/// recovered with [`OciError::from_stream`] (a digest or size mismatch stays one).
///
/// The registry client reads manifests with its own bounded reader; this is the helper to
/// give it the same [`OciError::TooLarge`] error.
pub async fn read_capped_async<R: AsyncRead + Unpin>(
    reader: R,
    what: &'static str,
    limit: u64,
) -> Result<Vec<u8>, OciError> {
    let mut out = Vec::new();
    reader
        .take(limit.saturating_add(1))
        .read_to_end(&mut out)
        .await
        .map_err(OciError::from_stream)?;
    if out.len() as u64 > limit {
        return Err(OciError::TooLarge { what, limit });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that yields zeros forever and counts what it handed out.
    struct Endless<'a>(&'a mut u64);

    impl Read for Endless<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            buf.fill(0);
            *self.0 += buf.len() as u64;
            Ok(buf.len())
        }
    }

    #[test]
    fn reads_up_to_the_cap_and_refuses_one_more_byte() {
        let io = |e| OciError::Stream(e);
        assert_eq!(read_capped(&b"abcd"[..], "doc", 4, io).unwrap(), b"abcd");
        let e = read_capped(&b"abcde"[..], "doc", 4, io).unwrap_err();
        assert!(
            matches!(
                e,
                OciError::TooLarge {
                    what: "doc",
                    limit: 4
                }
            ),
            "{e:?}"
        );
        assert_eq!(e.to_string(), "doc is larger than the limit of 4 bytes");
        assert!(read_capped(&b""[..], "doc", 0, io).unwrap().is_empty());
    }

    #[test]
    fn an_endless_stream_is_read_only_to_the_cap() {
        let mut handed_out = 0;
        let e = read_capped(Endless(&mut handed_out), "doc", 1000, OciError::Stream).unwrap_err();
        assert!(matches!(e, OciError::TooLarge { limit: 1000, .. }));
        // `take` asks for at most the cap plus one byte, whatever the buffer size.
        assert!(handed_out <= 1001, "{handed_out} bytes were read");
    }

    #[test]
    fn declared_sizes_are_checked_before_reading() {
        assert!(check_declared("manifest", MAX_MANIFEST_SIZE, MAX_MANIFEST_SIZE).is_ok());
        assert!(matches!(
            check_declared("manifest", MAX_MANIFEST_SIZE + 1, MAX_MANIFEST_SIZE),
            Err(OciError::TooLarge {
                what: "manifest",
                limit: MAX_MANIFEST_SIZE
            })
        ));
    }

    #[tokio::test]
    async fn async_reads_are_capped_too() {
        let ok = read_capped_async(&b"abc"[..], "doc", 3).await.unwrap();
        assert_eq!(ok, b"abc");
        let e = read_capped_async(&b"abcd"[..], "doc", 3).await.unwrap_err();
        assert!(matches!(e, OciError::TooLarge { limit: 3, .. }));
    }
}
