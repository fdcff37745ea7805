//! A delta layer's blob, compressed while its delta is still being encoded.
//!
//! A delta layer is a tar whose first 512 bytes, the header of its `delta` entry, hold the
//! delta's length: known only once the last window is matched. Compressing the tar in order
//! therefore had to wait for the whole delta, and the last layer's gzip ran alone after the
//! matcher, one core idle. Deflate allows better: after a *full flush* the compressed stream
//! is byte-aligned and nothing after it refers back past it. So the body (the delta, then the
//! tar's padding and end-of-archive blocks) is deflated as a raw stream of its own, in
//! blocks on several threads ([`crate::blockdeflate`]), as the encoder produces it; at the end the header is deflated and closed with a
//! full flush, and the blob is
//!
//! `gzip header ‖ deflate(tar header, full flush) ‖ deflate(body, final block) ‖ CRC-32 ‖ length`
//!
//! one ordinary gzip member (RFC 1952) that any inflater reads (Go's `compress/gzip` on the
//! device, zlib, `gzip -d`). The only cost: the body's first bytes cannot refer back to the
//! 512 header bytes (a few bytes of output).

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::Receiver;
use std::sync::Arc;

use bru_oci::Digest;
use flate2::read::GzDecoder;
use flate2::{Compress, Compression, Crc, FlushCompress, Status};

use crate::blockdeflate::BlockDeflater;
use crate::hashio::HashWriter;
use crate::layer::delta_tar_frame;

/// The body of a delta layer, written by [`deflate_body`].
#[derive(Debug)]
pub(crate) struct Body {
    /// The file holding the body: raw deflate (level ≥ 1) or plain bytes (level 0).
    path: PathBuf,
    /// Delta bytes received (the tar entry's length).
    delta_len: u64,
    /// CRC-32 and length of everything after the tar header (delta, padding, end blocks).
    crc: Crc,
}

/// Writes the delta bytes received on `chunks`, then the tar's padding and end-of-archive
/// blocks, to a new file at `path`: a raw deflate stream at `level`, or the plain bytes at
/// level 0 (an uncompressed layer). Returns when the sending side is dropped.
pub(crate) fn deflate_body(
    chunks: Receiver<Arc<[u8]>>,
    level: u32,
    path: &Path,
) -> io::Result<Body> {
    let file = BufWriter::with_capacity(1 << 20, File::create(path)?);
    let (delta_len, crc) = if level == 0 {
        let mut out = file;
        let written = write_body(&mut out, chunks)?;
        out.flush()?;
        written
    } else {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get().min(4));
        let mut out = BlockDeflater::new(file, level, threads)?;
        let written = write_body(&mut out, chunks)?;
        out.finish()?.flush()?;
        written
    };
    Ok(Body {
        path: path.to_path_buf(),
        delta_len,
        crc,
    })
}

/// Writes the chunks and the tar's tail to `out`; returns the delta length and the CRC of
/// all that was written.
fn write_body(out: &mut impl Write, chunks: Receiver<Arc<[u8]>>) -> io::Result<(u64, Crc)> {
    let mut crc = Crc::new();
    let mut delta_len = 0u64;
    for chunk in chunks {
        out.write_all(&chunk)?;
        crc.update(&chunk);
        delta_len += chunk.len() as u64;
    }
    let (_, tail) = delta_tar_frame(delta_len)?;
    out.write_all(&tail)?;
    crc.update(&tail);
    Ok((delta_len, crc))
}

/// What [`assemble`] wrote.
#[derive(Debug)]
pub(crate) struct Blob {
    /// Digest of the blob (what the manifest names).
    pub digest: Digest,
    /// Size of the blob.
    pub size: u64,
    /// DiffID: sha256 of the uncompressed tar.
    pub diff_id: Digest,
    /// Length of the delta stream inside.
    pub delta_len: u64,
}

/// Writes the layer blob at `path` from the `body` written by [`deflate_body`] at the same
/// `level` and the `delta` file holding the same delta bytes, then checks the blob (see
/// [`inflated_diff_id`]). Removes the body file.
pub(crate) fn assemble(path: &Path, level: u32, body: Body, delta: &Path) -> io::Result<Blob> {
    let (header, tail) = delta_tar_frame(body.delta_len)?;
    let mut blob = HashWriter::new(BufWriter::with_capacity(1 << 20, File::create(path)?));
    if level == 0 {
        blob.write_all(&header)?;
    } else {
        blob.write_all(&gzip_header(level))?;
        blob.write_all(&deflate_flushed(&header, level)?)?;
    }
    io::copy(&mut File::open(&body.path)?, &mut blob)?;
    if level > 0 {
        let mut crc = Crc::new();
        crc.update(&header);
        crc.combine(&body.crc);
        blob.write_all(&crc.sum().to_le_bytes())?;
        blob.write_all(&crc.amount().to_le_bytes())?;
    }
    let (mut file, digest, size) = blob.finish();
    // A work file: the sink verifies it and writes it durably where it belongs.
    file.flush()?;
    let _ = std::fs::remove_file(&body.path);

    let diff_id = if level == 0 {
        digest.clone()
    } else {
        inflated_diff_id(path, &header, (delta, body.delta_len), &tail)?
    };
    Ok(Blob {
        digest,
        size,
        diff_id,
        delta_len: body.delta_len,
    })
}

/// Inflates the blob at `path` as a device will, checks that it is one gzip member holding
/// exactly the delta tar (`header`, the `delta` file's first `len` bytes, `tail`; its CRC-32
/// and length are checked by the inflater), and returns the tar's sha256: the DiffID. The
/// matcher's output is self-checked against the target elsewhere; this checks the
/// compression of it, so that a blob a device cannot inflate to this layer is never
/// published. It costs one inflate of the layer (a few % of a build).
fn inflated_diff_id(
    path: &Path,
    header: &[u8],
    (delta, len): (&Path, u64),
    tail: &[u8],
) -> io::Result<Digest> {
    let differs = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
    let mut expected = io::BufReader::with_capacity(
        1 << 16,
        header.chain(File::open(delta)?.take(len)).chain(tail),
    );
    let mut inflater = GzDecoder::new(io::BufReader::with_capacity(1 << 16, File::open(path)?));
    let mut diff = HashWriter::new(io::sink());
    let (mut got, mut want) = (vec![0u8; 1 << 16], Vec::with_capacity(1 << 16));
    let mut at = 0u64;
    loop {
        let n = inflater.read(&mut got)?;
        if n == 0 {
            break;
        }
        want.clear();
        (&mut expected).take(n as u64).read_to_end(&mut want)?;
        if got[..n] != want[..] {
            let same = got.iter().zip(&want).take_while(|(a, b)| a == b).count();
            return Err(differs(format!(
                "the compressed layer does not inflate to its delta tar \
                 (first difference at byte {})",
                at + same as u64
            )));
        }
        diff.write_all(&got[..n])?;
        at += n as u64;
    }
    want.clear();
    if (&mut expected).take(1).read_to_end(&mut want)? != 0 {
        return Err(differs(format!(
            "the compressed layer inflates to {at} bytes, its delta tar is longer"
        )));
    }
    let mut rest = inflater.into_inner();
    if rest.read(&mut got[..1])? != 0 {
        return Err(differs(
            "bytes after the compressed layer's gzip member".into(),
        ));
    }
    Ok(diff.finish().1)
}

/// A gzip member header without name, comment or timestamp.
fn gzip_header(level: u32) -> [u8; 10] {
    // XFL: 2 = best compression, 4 = fastest (RFC 1952 §2.3.1); OS 255 = unknown.
    let xfl = match level {
        9.. => 2,
        1 => 4,
        _ => 0,
    };
    [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, xfl, 0xff]
}

/// `data` as non-final raw deflate blocks ending with a full flush: byte-aligned, and
/// nothing that follows may refer back into it.
fn deflate_flushed(data: &[u8], level: u32) -> io::Result<Vec<u8>> {
    let mut deflate = Compress::new(Compression::new(level.min(9)), false);
    let mut out = Vec::with_capacity(data.len() + 64);
    loop {
        let consumed = deflate.total_in() as usize;
        let status = deflate
            .compress_vec(&data[consumed..], &mut out, FlushCompress::Full)
            .map_err(io::Error::other)?;
        let done = deflate.total_in() as usize == data.len() && out.len() < out.capacity();
        if done || status == Status::StreamEnd {
            return Ok(out);
        }
        out.reserve(64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::write_delta_tar;
    use std::sync::mpsc::sync_channel;

    fn noise(len: usize, seed: u64) -> Vec<u8> {
        bru_test_support::half_compressible(seed, len)
    }

    /// The blob of `delta` sent in pieces of `piece` bytes, at `level`.
    fn blob_of(delta: &[u8], piece: usize, level: u32) -> (Vec<u8>, Blob) {
        let dir = tempfile::tempdir().unwrap();
        let delta_path = dir.path().join("delta");
        std::fs::write(&delta_path, delta).unwrap();
        let (tx, rx) = sync_channel(2);
        let body_path = dir.path().join("body");
        let body = std::thread::scope(|s| {
            let h = s.spawn(|| deflate_body(rx, level, &body_path));
            for p in delta.chunks(piece.max(1)) {
                tx.send(Arc::from(p)).unwrap();
            }
            drop(tx);
            h.join().unwrap().unwrap()
        });
        let blob_path = dir.path().join("blob");
        let blob = assemble(&blob_path, level, body, &delta_path).unwrap();
        assert!(!dir.path().join("body").exists(), "body file left behind");
        (std::fs::read(blob_path).unwrap(), blob)
    }

    fn tar_of(delta: &[u8]) -> Vec<u8> {
        let mut tar = Vec::new();
        write_delta_tar(delta, delta.len() as u64, &mut tar).unwrap();
        tar
    }

    fn sha(bytes: &[u8]) -> Digest {
        let mut h = HashWriter::new(io::sink());
        h.write_all(bytes).unwrap();
        h.finish().1
    }

    #[test]
    fn the_blob_is_one_gzip_member_holding_the_delta_tar() {
        for len in [0usize, 1, 511, 512, 513, 70_000, 3 << 20] {
            let delta = noise(len, len as u64 + 7);
            let (bytes, blob) = blob_of(&delta, 100_003, 9);
            let mut plain = Vec::new();
            let mut gz = GzDecoder::new(&bytes[..]);
            gz.read_to_end(&mut plain).unwrap();
            let tar = tar_of(&delta);
            assert!(
                plain == tar,
                "len {len}: the member does not hold the delta tar"
            );
            // Exactly one member: nothing after its trailer.
            assert_eq!(
                gz.into_inner().len(),
                0,
                "len {len}: bytes after the member"
            );
            assert_eq!(blob.size, bytes.len() as u64);
            assert_eq!(blob.delta_len, len as u64);
            assert_eq!(blob.digest, sha(&bytes));
            assert_eq!(blob.diff_id, sha(&tar), "len {len}: DiffID");
        }
    }

    #[test]
    fn an_independent_gzip_reads_the_blob() {
        // Several of the compressor's blocks (see `blockdeflate`), each cut a sync flush.
        let delta = noise(3 << 20, 3);
        let (bytes, _) = blob_of(&delta, 4096, 6);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("layer.gz");
        std::fs::write(&path, &bytes).unwrap();
        let out = match std::process::Command::new("gzip")
            .arg("-dc")
            .arg(&path)
            .output()
        {
            Ok(out) => out,
            // gzip is an essential Debian package; without it there is nothing to compare.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return,
            Err(e) => panic!("gzip: {e}"),
        };
        assert!(out.status.success(), "gzip -d failed: {out:?}");
        assert!(out.stdout == tar_of(&delta), "gzip -d gave other bytes");
    }

    #[test]
    fn pieces_do_not_change_the_bytes() {
        let delta = noise(300_000, 11);
        let (a, _) = blob_of(&delta, 1, 9);
        let (b, _) = blob_of(&delta, 65_536, 9);
        let (c, _) = blob_of(&delta, 1 << 20, 9);
        assert!(a == b && b == c);
    }

    #[test]
    fn level_zero_writes_the_plain_tar() {
        let delta = noise(5000, 5);
        let (bytes, blob) = blob_of(&delta, 777, 0);
        assert!(bytes == tar_of(&delta));
        assert_eq!(blob.diff_id, blob.digest);
    }

    #[test]
    fn a_delta_file_shorter_than_the_stream_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, rx) = sync_channel(1);
        tx.send(Arc::from(&b"0123456789"[..])).unwrap();
        drop(tx);
        let body = deflate_body(rx, 6, &dir.path().join("body")).unwrap();
        std::fs::write(dir.path().join("delta"), b"01234").unwrap();
        let err =
            assemble(&dir.path().join("blob"), 6, body, &dir.path().join("delta")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    }

    #[test]
    fn a_body_that_does_not_inflate_to_the_delta_is_refused() {
        let delta = noise(200_000, 21);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("delta"), &delta).unwrap();
        for flip in [0usize, 1000, 50_000] {
            let (tx, rx) = sync_channel(1);
            tx.send(Arc::from(&delta[..])).unwrap();
            drop(tx);
            let body_path = dir.path().join("body");
            let body = deflate_body(rx, 6, &body_path).unwrap();
            let mut bytes = std::fs::read(&body_path).unwrap();
            let at = flip.min(bytes.len() - 1);
            bytes[at] ^= 0x10;
            std::fs::write(&body_path, bytes).unwrap();
            let blob = dir.path().join("blob");
            let err = assemble(&blob, 6, body, &dir.path().join("delta"))
                .expect_err("a corrupt body was published");
            assert!(
                matches!(
                    err.kind(),
                    io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput
                ),
                "byte {at}: {err}"
            );
        }
    }

    #[test]
    fn a_delta_file_with_other_bytes_is_refused() {
        let delta = noise(100_000, 23);
        let dir = tempfile::tempdir().unwrap();
        let (tx, rx) = sync_channel(1);
        tx.send(Arc::from(&delta[..])).unwrap();
        drop(tx);
        let body = deflate_body(rx, 6, &dir.path().join("body")).unwrap();
        let mut other = delta.clone();
        other[77_777] ^= 1;
        std::fs::write(dir.path().join("delta"), other).unwrap();
        let err =
            assemble(&dir.path().join("blob"), 6, body, &dir.path().join("delta")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(
            err.to_string().contains(&format!("byte {}", 512 + 77_777)),
            "{err}"
        );
    }
}
