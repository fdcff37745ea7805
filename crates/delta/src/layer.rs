//! The tar containers of a v3 delta image's layers.
//!
//! * A common layer travels as the **empty tar**: 1024 zero bytes, the DiffID
//!   balena-engine and Docker use for empty layers.
//! * Every other layer is a tar holding exactly one regular file named `delta`
//!   (mode 0600) whose body is a librsync delta stream. The device reads only the
//!   body of the first entry.

use std::io::{self, Read, Write};

/// Size of a tar block.
const BLOCK: u64 = 512;

/// The empty tar: two zero blocks (end-of-archive marker only).
pub const EMPTY_TAR: [u8; 1024] = [0; 1024];

/// DiffID of [`EMPTY_TAR`].
pub const EMPTY_TAR_DIFF_ID: &str =
    "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef";

/// Name of the single entry in a delta layer tar.
pub const DELTA_ENTRY: &str = "delta";

/// Writes a tar with one `delta` entry holding `len` bytes read from `body`,
/// followed by the standard end-of-archive blocks. Returns the tar's length.
pub fn write_delta_tar<R: Read, W: Write>(mut body: R, len: u64, out: W) -> io::Result<u64> {
    let header = delta_header(len)?;
    let mut builder = tar::Builder::new(out);
    let mut counted = Counted {
        inner: (&mut body).take(len),
        n: 0,
    };
    builder.append(&header, &mut counted)?;
    if counted.n != len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("delta body ended after {} of {len} bytes", counted.n),
        ));
    }
    builder.into_inner()?.flush()?;
    Ok(delta_tar_len(len))
}

struct Counted<R> {
    inner: R,
    n: u64,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.n += n as u64;
        Ok(n)
    }
}

/// The tar header of the `delta` entry of a body of `len` bytes.
fn delta_header(len: u64) -> io::Result<tar::Header> {
    let mut header = tar::Header::new_ustar();
    header.set_path(DELTA_ENTRY)?;
    header.set_mode(0o600);
    header.set_size(len);
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    Ok(header)
}

/// The two pieces of the tar [`write_delta_tar`] writes around a body of `len` bytes: the
/// 512-byte header before it, and the padding plus end-of-archive blocks after it.
pub(crate) fn delta_tar_frame(len: u64) -> io::Result<([u8; 512], Vec<u8>)> {
    let header = *delta_header(len)?.as_bytes();
    let tail = (delta_tar_len(len) - BLOCK - len) as usize;
    Ok((header, vec![0; tail]))
}

/// Length of the tar [`write_delta_tar`] writes for a body of `len` bytes.
pub fn delta_tar_len(len: u64) -> u64 {
    BLOCK + len.div_ceil(BLOCK) * BLOCK + 2 * BLOCK
}

/// Errors reading a delta layer's tar.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LayerTarError {
    /// The tar has no entry at all (an empty tar where a delta was expected).
    #[error("delta layer tar has no entry (an empty layer where a delta was expected)")]
    NoEntry,
    /// The first entry is not a regular file.
    #[error("first entry of the delta layer tar is not a regular file")]
    NotAFile,
    /// The tar itself could not be read.
    #[error("cannot read delta layer tar")]
    Io(#[source] io::Error),
}

/// Streams the body of the first entry of a delta layer tar into `visit`.
///
/// Like balena-engine, only the first entry is used; its name is not checked.
pub fn with_first_entry<R: Read, T>(
    tar_stream: R,
    visit: impl FnOnce(&mut dyn Read) -> T,
) -> Result<T, LayerTarError> {
    let mut archive = tar::Archive::new(tar_stream);
    let mut entries = archive.entries().map_err(LayerTarError::Io)?;
    let mut entry = match entries.next() {
        None => return Err(LayerTarError::NoEntry),
        Some(entry) => entry.map_err(LayerTarError::Io)?,
    };
    if !entry.header().entry_type().is_file() {
        return Err(LayerTarError::NotAFile);
    }
    Ok(visit(&mut entry))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest as _, Sha256};

    #[test]
    fn empty_tar_diff_id_is_the_well_known_one() {
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(EMPTY_TAR)));
        assert_eq!(digest, EMPTY_TAR_DIFF_ID);
    }

    #[test]
    fn delta_tar_round_trips_and_has_the_expected_header() {
        for len in [0usize, 1, 511, 512, 513, 5000] {
            let body: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            let mut tar_bytes = Vec::new();
            let n = write_delta_tar(&body[..], len as u64, &mut tar_bytes).unwrap();
            assert_eq!(n, tar_bytes.len() as u64);
            assert_eq!(n, delta_tar_len(len as u64));
            assert_eq!(&tar_bytes[..5], b"delta");
            assert!(tar_bytes[tar_bytes.len() - 1024..].iter().all(|&b| b == 0));

            let mut archive = tar::Archive::new(&tar_bytes[..]);
            let entries: Vec<_> = archive
                .entries()
                .unwrap()
                .map(|e| e.unwrap().header().clone())
                .collect();
            assert_eq!(entries.len(), 1);
            assert_eq!(entries[0].mode().unwrap(), 0o600);
            assert_eq!(entries[0].size().unwrap(), len as u64);

            let got = with_first_entry(&tar_bytes[..], |r| {
                let mut v = Vec::new();
                r.read_to_end(&mut v).map(|_| v)
            })
            .unwrap()
            .unwrap();
            assert_eq!(got, body);
        }
    }

    #[test]
    fn short_body_is_an_error() {
        let err = write_delta_tar(&b"abc"[..], 10, Vec::new());
        assert!(err.is_err());
    }

    #[test]
    fn empty_tar_has_no_delta_entry() {
        let err = with_first_entry(&EMPTY_TAR[..], |_| ()).unwrap_err();
        assert!(matches!(err, LayerTarError::NoEntry), "{err:?}");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let junk = vec![0xffu8; 700];
        assert!(with_first_entry(&junk[..], |_| ()).is_err());
        assert!(with_first_entry(&junk[..10], |_| ()).is_err());
    }
}
