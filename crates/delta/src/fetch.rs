//! Bringing layers from an [`ImageSource`] to local files: decompressed, with
//! the blob digest verified while streaming and the DiffID checked at the end.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::Path;

use bru_oci::{decompress_read, Descriptor, Digest, ImageSource, OciError, PulledImage};
use tokio::runtime::Handle;
use tokio_util::io::SyncIoBridge;

use crate::error::{blocking, DeltaError, Role};
use crate::hashio::HashWriter;
use crate::limits::{Bound, CappedReader};

const BUF: usize = 256 * 1024;

/// Turns an io error from a verified blob stream back into the structured
/// [`OciError`] it carries (digest or size mismatch), or wraps it.
pub(crate) fn stream_error(role: Role, index: usize, e: io::Error) -> DeltaError {
    DeltaError::Layer {
        role,
        index,
        source: OciError::from_stream(e),
    }
}

/// Copies `r` to `w`, telling read failures (the blob) from write failures (our file).
pub(crate) fn copy_checked(
    mut r: impl Read,
    mut w: impl Write,
    role: Role,
    index: usize,
    path: &Path,
) -> Result<u64, DeltaError> {
    let mut buf = vec![0u8; BUF];
    let mut total = 0u64;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(stream_error(role, index, e)),
        };
        w.write_all(&buf[..n]).map_err(DeltaError::io(path))?;
        total += n as u64;
    }
    w.flush().map_err(DeltaError::io(path))?;
    Ok(total)
}

/// Like [`copy_checked`], with reading (and decompressing) on this thread and
/// writing (and hashing, when `w` hashes) on another, so that the two overlap.
/// Buffers of [`BUF`] bytes pass in order through a bounded channel and are
/// recycled. Returns the writer and the number of bytes copied.
///
/// With `tee`, the writing thread then passes every buffer there (to a basis
/// indexer), which returns it to this copy's pool when done with it; a
/// closed receiver is ignored.
pub(crate) fn copy_pipelined<W: Write + Send>(
    mut r: impl Read,
    mut w: W,
    tee: Option<&Tee>,
    (role, index): (Role, usize),
    path: &Path,
) -> Result<(W, u64), DeltaError> {
    const DEPTH: usize = 4;
    let (full_tx, full_rx) = std::sync::mpsc::sync_channel::<(Vec<u8>, usize)>(DEPTH);
    let (empty_tx, empty_rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(DEPTH + 2);
    std::thread::scope(|s| {
        let writer = s.spawn(move || -> io::Result<W> {
            for (buf, n) in full_rx {
                w.write_all(&buf[..n])?;
                match tee {
                    Some(tee) => {
                        let _ = tee.send(TeeChunk {
                            buf,
                            len: n,
                            recycle: empty_tx.clone(),
                        });
                    }
                    // The reader may be gone (error or end): then the buffer is dropped.
                    None => {
                        let _ = empty_tx.try_send(buf);
                    }
                }
            }
            w.flush()?;
            Ok(w)
        });
        let mut total = 0u64;
        let mut read_error = None;
        loop {
            let mut buf = empty_rx.try_recv().unwrap_or_else(|_| vec![0u8; BUF]);
            let n = match r.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    read_error = Some(e);
                    break;
                }
            };
            total += n as u64;
            if full_tx.send((buf, n)).is_err() {
                // The writer failed; its error is reported below.
                break;
            }
        }
        drop(full_tx);
        let written = writer
            .join()
            .map_err(|_| DeltaError::Task("layer writer panicked".into()))?;
        if let Some(e) = read_error {
            return Err(stream_error(role, index, e));
        }
        let w = written.map_err(DeltaError::io(path))?;
        Ok((w, total))
    })
}

/// Where a fetch sends the decompressed bytes, in order.
pub(crate) type Tee = std::sync::mpsc::SyncSender<TeeChunk>;

/// Decompressed bytes lent to a [`Tee`]'s receiver: dropping the chunk gives
/// its buffer back to the fetch that filled it (if that still wants it).
pub(crate) struct TeeChunk {
    buf: Vec<u8>,
    len: usize,
    recycle: std::sync::mpsc::SyncSender<Vec<u8>>,
}

impl TeeChunk {
    /// The bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Drop for TeeChunk {
    fn drop(&mut self) {
        let _ = self.recycle.try_send(std::mem::take(&mut self.buf));
    }
}

/// Streams layer `index` of `src`, decompresses it and appends the tar to
/// `out`, checking that it hashes to `diff_id`. Returns the file and the
/// number of bytes appended.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn fetch_layer(
    src: &dyn ImageSource,
    role: Role,
    index: usize,
    desc: &Descriptor,
    diff_id: &Digest,
    out: File,
    out_path: &Path,
    tee: Option<Tee>,
) -> Result<(File, u64), DeltaError> {
    fetch_layer_capped(
        src,
        (role, index),
        desc,
        diff_id,
        (out, out_path),
        tee,
        None,
    )
    .await
}

/// [`fetch_layer`] that stops with [`DeltaError::TooLarge`]
/// ([`Bound::InflatedSource`]) after `cap` decompressed bytes, when given.
pub(crate) async fn fetch_layer_capped(
    src: &dyn ImageSource,
    (role, index): (Role, usize),
    desc: &Descriptor,
    diff_id: &Digest,
    (out, out_path): (File, &Path),
    tee: Option<Tee>,
    cap: Option<u64>,
) -> Result<(File, u64), DeltaError> {
    let reader = src.blob(desc).await.map_err(|source| DeltaError::Layer {
        role,
        index,
        source,
    })?;
    let handle = Handle::current();
    let expected = diff_id.clone();
    let path = out_path.to_path_buf();
    blocking(move || {
        let bridge = SyncIoBridge::new_with_handle(reader, handle);
        inflate_checked(bridge, (role, index), &expected, (out, &path), tee, cap)
    })
    .await
}

/// Like [`fetch_layer_capped`] for a layer blob already on disk at `blob` (fetched and
/// verified before): decompresses it into `out` without asking the source again.
pub(crate) async fn inflate_local_layer(
    blob: &Path,
    (role, index): (Role, usize),
    diff_id: &Digest,
    (out, out_path): (File, &Path),
    cap: Option<u64>,
) -> Result<(File, u64), DeltaError> {
    let (blob, expected, path) = (blob.to_path_buf(), diff_id.clone(), out_path.to_path_buf());
    blocking(move || {
        let compressed = File::open(&blob).map_err(DeltaError::io(&blob))?;
        inflate_checked(
            compressed,
            (role, index),
            &expected,
            (out, &path),
            None,
            cap,
        )
    })
    .await
}

/// Decompresses `compressed` (gzip, zstd or plain) into `out` on two threads, stopping
/// after `cap` bytes, and checks that the result hashes to `expected`. Blocking.
fn inflate_checked(
    compressed: impl Read,
    (role, index): (Role, usize),
    expected: &Digest,
    (out, path): (File, &Path),
    tee: Option<Tee>,
    cap: Option<u64>,
) -> Result<(File, u64), DeltaError> {
    let plain = decompress_read(BufReader::with_capacity(BUF, compressed)).map_err(|source| {
        DeltaError::Layer {
            role,
            index,
            source,
        }
    })?;
    let tripped = std::cell::Cell::new(None);
    let limit = cap.unwrap_or(u64::MAX);
    let plain = CappedReader::new(plain, limit, Bound::InflatedSource, &tripped);
    let w = HashWriter::new(BufWriter::with_capacity(BUF, out));
    let copied = copy_pipelined(plain, w, tee.as_ref(), (role, index), path);
    if let Some(bound) = tripped.get() {
        return Err(DeltaError::TooLarge {
            index,
            bound,
            limit,
        });
    }
    let (w, _) = copied?;
    let (buffered, actual, len) = w.finish();
    if actual != *expected {
        return Err(DeltaError::DiffIdMismatch {
            role,
            index,
            expected: expected.clone(),
            actual,
        });
    }
    let file = buffered.into_inner().map_err(|e| DeltaError::Io {
        path: path.to_path_buf(),
        source: e.into_error(),
    })?;
    Ok((file, len))
}

/// Streams a blob unchanged (still compressed) into a new file at `path`,
/// verifying its digest and size on the way.
pub(crate) async fn fetch_blob(
    src: &dyn ImageSource,
    role: Role,
    index: usize,
    desc: &Descriptor,
    path: &Path,
) -> Result<(), DeltaError> {
    let reader = src.blob(desc).await.map_err(|source| DeltaError::Layer {
        role,
        index,
        source,
    })?;
    let handle = Handle::current();
    let path = path.to_path_buf();
    blocking(move || {
        let file = File::create(&path).map_err(DeltaError::io(&path))?;
        let bridge = SyncIoBridge::new_with_handle(reader, handle);
        copy_checked(
            bridge,
            BufWriter::with_capacity(BUF, file),
            role,
            index,
            &path,
        )?;
        Ok(())
    })
    .await
}

/// Reads an image's manifest and config, naming its role on failure.
async fn read_image(src: &dyn ImageSource, role: Role) -> Result<PulledImage, DeltaError> {
    src.image()
        .await
        .map_err(|source| DeltaError::Image { role, source })
}

/// Reads two images' manifests and configs concurrently.
pub(crate) async fn two_images(
    (a, a_role): (&dyn ImageSource, Role),
    (b, b_role): (&dyn ImageSource, Role),
) -> Result<(PulledImage, PulledImage), DeltaError> {
    tokio::try_join!(read_image(a, a_role), read_image(b, b_role))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lent_chunk_shows_its_bytes_and_returns_its_buffer_when_dropped() {
        let (recycle, pool) = std::sync::mpsc::sync_channel(1);
        let chunk = TeeChunk {
            buf: b"abcdef".to_vec(),
            len: 4,
            recycle,
        };
        assert_eq!(chunk.bytes(), b"abcd");
        assert!(pool.try_recv().is_err(), "returned before it was dropped");
        drop(chunk);
        assert_eq!(pool.try_recv().unwrap(), b"abcdef");
    }

    #[test]
    fn a_chunk_outliving_its_fetch_is_simply_freed() {
        let (recycle, pool) = std::sync::mpsc::sync_channel(1);
        drop(pool);
        drop(TeeChunk {
            buf: vec![0; 16],
            len: 16,
            recycle,
        });
    }

    #[test]
    fn the_indexer_gets_every_byte_in_order_and_the_file_too() {
        let data = bru_test_support::noise(5, 3 * BUF + 1234);
        let (tee, chunks) = std::sync::mpsc::sync_channel::<TeeChunk>(64);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        let (file, n) = copy_pipelined(
            &data[..],
            std::fs::File::create(&path).unwrap(),
            Some(&tee),
            (Role::Source, 0),
            &path,
        )
        .unwrap();
        drop((file, tee));
        assert_eq!(n, data.len() as u64);
        let teed: Vec<u8> = chunks.iter().flat_map(|c| c.bytes().to_vec()).collect();
        assert!(teed == data, "the indexer saw other bytes");
        assert!(
            std::fs::read(&path).unwrap() == data,
            "the file holds other bytes"
        );
    }
}
