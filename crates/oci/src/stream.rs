//! Streaming helpers: digest/size verification while reading, and decompression by magic bytes.

use std::io::{BufRead, Read};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, BufReader, ReadBuf};

use crate::digest::Hasher;
use crate::{Digest, OciError};

/// A blob being read: verified against its digest and size while streaming.
pub type BlobReader = Box<dyn AsyncRead + Send + Unpin>;

/// Wraps `inner` so that its bytes are hashed and counted while they pass through.
///
/// Reading more than `expected_size` bytes fails at once with an io error wrapping
/// [`OciError::SizeMismatch`]; at EOF a short read gives [`OciError::SizeMismatch`] and a wrong
/// hash gives [`OciError::DigestMismatch`] (use [`OciError::from_io`] to get it back). The final
/// bytes are only released once verification passed, so a consumer that reads to EOF never takes
/// bad data as complete.
pub fn verify_reader<R: AsyncRead + Send + Unpin + 'static>(
    inner: R,
    expected: Digest,
    expected_size: u64,
) -> BlobReader {
    Box::new(VerifyingReader {
        inner,
        hasher: Some(Hasher::new()),
        expected,
        expected_size,
        seen: 0,
    })
}

struct VerifyingReader<R> {
    inner: R,
    hasher: Option<Hasher>,
    expected: Digest,
    expected_size: u64,
    seen: u64,
}

fn to_io(e: OciError) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, e)
}

impl<R: AsyncRead + Unpin> AsyncRead for VerifyingReader<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let Some(hasher) = this.hasher.as_mut() else {
            return Poll::Ready(Ok(())); // already verified, at EOF
        };
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Ready(Ok(())) => {
                let new = &buf.filled()[before..];
                if new.is_empty() {
                    let actual_hash = this.hasher.take().map(Hasher::finish);
                    if this.seen != this.expected_size {
                        return Poll::Ready(Err(to_io(OciError::SizeMismatch {
                            digest: this.expected.clone(),
                            expected: this.expected_size,
                            actual: this.seen,
                        })));
                    }
                    if let Some(actual) = actual_hash.filter(|a| *a != this.expected) {
                        return Poll::Ready(Err(to_io(OciError::DigestMismatch {
                            expected: this.expected.clone(),
                            actual,
                        })));
                    }
                    return Poll::Ready(Ok(()));
                }
                this.seen += new.len() as u64;
                if this.seen > this.expected_size {
                    this.hasher = None;
                    buf.set_filled(before);
                    return Poll::Ready(Err(to_io(OciError::SizeMismatch {
                        digest: this.expected.clone(),
                        expected: this.expected_size,
                        actual: this.seen,
                    })));
                }
                hasher.update(new);
                if this.seen == this.expected_size {
                    // Verify now so the last bytes are never handed out unverified.
                    let actual = hasher.clone().finish();
                    if actual != this.expected {
                        this.hasher = None;
                        buf.set_filled(before);
                        return Poll::Ready(Err(to_io(OciError::DigestMismatch {
                            expected: this.expected.clone(),
                            actual,
                        })));
                    }
                }
                Poll::Ready(Ok(()))
            }
        }
    }
}

/// A compression format recognised by its magic bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Compression {
    /// No compression (anything that is not recognised).
    None,
    /// gzip (`1f 8b`).
    Gzip,
    /// zstd (`28 b5 2f fd`), recognised but not decompressed.
    Zstd,
}

impl Compression {
    /// Detects the compression from the first bytes of a stream.
    pub fn detect(head: &[u8]) -> Self {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// Wraps a buffered synchronous reader so that gzip input is decompressed and anything else
/// passes through unchanged (concatenated gzip members are all decoded).
pub fn decompress_read<'a, R: BufRead + 'a>(mut r: R) -> Result<Box<dyn Read + 'a>, OciError> {
    let head = r.fill_buf().map_err(OciError::Stream)?;
    match Compression::detect(head) {
        Compression::Gzip => Ok(Box::new(flate2::bufread::MultiGzDecoder::new(r))),
        Compression::None => Ok(Box::new(r)),
        Compression::Zstd => Err(OciError::Unsupported {
            what: "layer compression",
            value: "zstd".into(),
        }),
    }
}

/// Asynchronous counterpart of [`decompress_read`].
pub async fn decompress_async<R: AsyncRead + Send + Unpin + 'static>(
    r: R,
) -> Result<Box<dyn AsyncRead + Send + Unpin>, OciError> {
    use tokio::io::AsyncBufReadExt;
    let mut r = BufReader::new(r);
    let head = r.fill_buf().await.map_err(OciError::from_stream)?;
    match Compression::detect(head) {
        Compression::Gzip => {
            let mut d = async_compression::tokio::bufread::GzipDecoder::new(r);
            d.multiple_members(true);
            Ok(Box::new(d))
        }
        Compression::None => Ok(Box::new(r) as Box<dyn AsyncRead + Send + Unpin>),
        Compression::Zstd => Err(OciError::Unsupported {
            what: "layer compression",
            value: "zstd".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use tokio::io::AsyncReadExt;

    async fn read_all(mut r: BlobReader) -> Result<Vec<u8>, std::io::Error> {
        let mut v = Vec::new();
        r.read_to_end(&mut v).await.map(|_| v)
    }

    #[tokio::test]
    async fn verifies_while_streaming() {
        let data = b"hello world".to_vec();
        let d = Digest::of(&data);
        let ok = read_all(verify_reader(
            std::io::Cursor::new(data.clone()),
            d.clone(),
            11,
        ))
        .await;
        assert_eq!(ok.unwrap(), data);

        let e = read_all(verify_reader(
            std::io::Cursor::new(data.clone()),
            d.clone(),
            12,
        ))
        .await
        .unwrap_err();
        assert!(matches!(
            OciError::from_io(&e),
            Some(OciError::SizeMismatch {
                expected: 12,
                actual: 11,
                ..
            })
        ));

        let e = read_all(verify_reader(
            std::io::Cursor::new(data.clone()),
            d.clone(),
            5,
        ))
        .await
        .unwrap_err();
        assert!(matches!(
            OciError::from_io(&e),
            Some(OciError::SizeMismatch { expected: 5, .. })
        ));

        let mut bad = data.clone();
        bad[0] ^= 1;
        let e = read_all(verify_reader(std::io::Cursor::new(bad), d.clone(), 11))
            .await
            .unwrap_err();
        match OciError::from_stream(e) {
            OciError::DigestMismatch { expected, .. } => assert_eq!(expected, d),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn decompresses_by_magic() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(b"layer bytes").unwrap();
        let gz = gz.finish().unwrap();
        let mut out = String::new();
        decompress_read(&gz[..])
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        assert_eq!(out, "layer bytes");
        let mut out = Vec::new();
        decompress_async(std::io::Cursor::new(gz))
            .await
            .unwrap()
            .read_to_end(&mut out)
            .await
            .unwrap();
        assert_eq!(out, b"layer bytes");
        let mut out = Vec::new();
        decompress_async(std::io::Cursor::new(b"plain".to_vec()))
            .await
            .unwrap()
            .read_to_end(&mut out)
            .await
            .unwrap();
        assert_eq!(out, b"plain");
        assert!(decompress_read(&[0x28u8, 0xb5, 0x2f, 0xfd][..]).is_err());
    }
}
