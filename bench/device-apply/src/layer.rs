//! Source layers as a device holds them: files extracted to a directory, plus a tar-split-like
//! index (header and padding bytes kept in memory, file bodies referred to by path).

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

pub(crate) const BLOCK: usize = 512;
/// Largest PAX / GNU long-name record body we accept (they hold a few paths and numbers).
const MAX_META: u64 = 1 << 20;

/// One piece of a layer tar, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// Bytes kept in memory: headers, padding, PAX / GNU long-name records, the end-of-archive
    /// blocks and anything after them.
    Bytes(Vec<u8>),
    /// The body of a regular file (without its padding), read from the extracted file.
    File {
        /// Full path of the extracted file (opened by this path on every read).
        path: PathBuf,
        /// Length of the body.
        size: u64,
    },
}

impl Segment {
    /// Length of the segment's bytes in the tar.
    pub fn len(&self) -> u64 {
        match self {
            Segment::Bytes(b) => b.len() as u64,
            Segment::File { size, .. } => *size,
        }
    }

    /// True for an empty segment (never produced by [`LayerIndex`]).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The index of one extracted layer: its segments and where each starts in the layer tar.
#[derive(Debug, Clone)]
pub struct LayerIndex {
    dir: PathBuf,
    segments: Vec<Segment>,
    /// `starts[i]` is the tar offset of `segments[i]`; one more entry holds the total length.
    starts: Vec<u64>,
    files: u64,
}

impl LayerIndex {
    /// Directory the layer's regular files were extracted to.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The segments, in tar order.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// Length of the layer tar.
    pub fn len(&self) -> u64 {
        self.starts.last().copied().unwrap_or(0)
    }

    /// True for a layer tar of 0 bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of regular files with a non-empty body (the [`Segment::File`]s).
    pub fn file_count(&self) -> u64 {
        self.files
    }

    /// Index of the segment holding layer offset `off` (`off < len()`).
    pub(crate) fn segment_at(&self, off: u64) -> usize {
        self.starts.partition_point(|&s| s <= off) - 1
    }

    /// Tar offset where segment `i` starts.
    pub(crate) fn start_of(&self, i: usize) -> u64 {
        self.starts[i]
    }

    /// Writes the layer tar, rebuilt from the segments and the extracted files, to `out`.
    pub fn reassemble<W: Write>(&self, mut out: W) -> io::Result<u64> {
        for s in &self.segments {
            match s {
                Segment::Bytes(b) => out.write_all(b)?,
                Segment::File { path, size } => {
                    let n = io::copy(&mut fs::File::open(path)?.take(*size), &mut out)?;
                    if n != *size {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                }
            }
        }
        Ok(self.len())
    }
}

/// Reads one uncompressed layer tar from `r`, extracts its regular files under `dir` and
/// returns its index. `layer` only labels errors.
pub(crate) fn extract_layer<R: Read>(layer: usize, r: R, dir: &Path) -> Result<LayerIndex> {
    fs::create_dir_all(dir).map_err(|source| Error::Extract {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut x = Extractor {
        layer,
        r,
        pos: 0,
        dir: dir.to_path_buf(),
        pending: Vec::new(),
        index: LayerIndex {
            dir: dir.to_path_buf(),
            segments: Vec::new(),
            starts: vec![0],
            files: 0,
        },
        seen: HashSet::new(),
    };
    x.run()?;
    x.flush();
    Ok(x.index)
}

/// Walks a layer tar block by block, the way Go's archive/tar (under tar-split) reads it.
struct Extractor<R> {
    layer: usize,
    r: R,
    /// Tar offset of the next unread byte.
    pos: u64,
    dir: PathBuf,
    /// Bytes of the current [`Segment::Bytes`] run.
    pending: Vec<u8>,
    index: LayerIndex,
    seen: HashSet<Vec<u8>>,
}

/// Name and size overrides from PAX or GNU long-name records, for the next member.
#[derive(Default)]
struct Overrides {
    path: Option<Vec<u8>>,
    size: Option<u64>,
}

impl<R: Read> Extractor<R> {
    fn run(&mut self) -> Result<()> {
        let mut ov = Overrides::default();
        loop {
            let mut block = [0u8; BLOCK];
            let n = self.read_full(&mut block)?;
            if n == 0 {
                // No end-of-archive blocks: Go's tar reader stops here without an error.
                return Ok(());
            }
            if n < BLOCK {
                return Err(self.truncated());
            }
            if block.iter().all(|&b| b == 0) {
                // End of archive: keep it and whatever follows as bytes, as tar-split does.
                self.pending.extend_from_slice(&block);
                self.read_rest()?;
                return Ok(());
            }
            let header_at = self.pos - BLOCK as u64;
            let layer = self.layer;
            let bad = || Error::BadHeader {
                layer,
                offset: header_at,
            };
            if !checksum_ok(&block) {
                return Err(bad());
            }
            let size = parse_number(&block[124..136]).ok_or_else(bad)?;
            let typeflag = block[156];
            self.pending.extend_from_slice(&block);
            match typeflag {
                b'x' | b'g' | b'L' | b'K' => {
                    if size > MAX_META {
                        return Err(bad());
                    }
                    let body = self.read_meta(size)?;
                    match typeflag {
                        b'x' => parse_pax(&body, &mut ov).ok_or_else(bad)?,
                        b'L' => ov.path = Some(until_nul(&body).to_vec()),
                        _ => {}
                    }
                }
                _ => {
                    let raw = ov.path.take().unwrap_or_else(|| ustar_path(&block));
                    let size = ov.size.take().unwrap_or(size);
                    let clean = clean_path(&raw).ok_or_else(|| Error::PathEscape {
                        layer: self.layer,
                        path: String::from_utf8_lossy(&raw).into_owned(),
                    })?;
                    if !self.seen.insert(clean.clone()) {
                        return Err(Error::DuplicatePath {
                            layer: self.layer,
                            path: String::from_utf8_lossy(&clean).into_owned(),
                        });
                    }
                    match typeflag {
                        b'0' | 0 | b'7' => self.regular_file(&clean, size)?,
                        b'5' => self.directory(&clean)?,
                        // Hard links, symlinks, devices, FIFOs: Go's tar reader treats them as
                        // header-only whatever their size field says.
                        b'1'..=b'6' => {}
                        _ if size == 0 => {}
                        other => {
                            return Err(Error::UnsupportedMember {
                                layer: self.layer,
                                typeflag: char::from(other),
                                path: String::from_utf8_lossy(&clean).into_owned(),
                            })
                        }
                    }
                }
            }
        }
    }

    /// Extracts a regular file and records its body as a [`Segment::File`].
    fn regular_file(&mut self, clean: &[u8], size: u64) -> Result<()> {
        let path = self.dir.join(OsStr::from_bytes(clean));
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(|source| Error::Extract {
                path: parent.to_path_buf(),
                source,
            })?;
        }
        let extract_err = |source| Error::Extract {
            path: path.clone(),
            source,
        };
        let mut f = fs::File::create(&path).map_err(extract_err)?;
        if size == 0 {
            return Ok(());
        }
        let mut buf = vec![0u8; 64 * 1024];
        let mut left = size;
        while left > 0 {
            let want = left.min(buf.len() as u64) as usize;
            let n = self.read_full(&mut buf[..want])?;
            if n == 0 {
                return Err(self.truncated());
            }
            f.write_all(&buf[..n]).map_err(extract_err)?;
            left -= n as u64;
        }
        self.flush();
        self.push(Segment::File { path, size });
        self.index.files += 1;
        let pad = padding(size);
        let mut buf = [0u8; BLOCK];
        let n = self.read_full(&mut buf[..pad])?;
        self.pending.extend_from_slice(&buf[..n]);
        if n < pad {
            return Err(self.truncated());
        }
        Ok(())
    }

    fn directory(&mut self, clean: &[u8]) -> Result<()> {
        let path = self.dir.join(OsStr::from_bytes(clean));
        fs::create_dir_all(&path).map_err(|source| Error::Extract { path, source })
    }

    /// Reads a metadata body and its padding into the pending bytes; returns the body.
    fn read_meta(&mut self, size: u64) -> Result<Vec<u8>> {
        let total = size as usize + padding(size);
        let mut buf = vec![0u8; total];
        let n = self.read_full(&mut buf)?;
        self.pending.extend_from_slice(&buf[..n]);
        if n < total {
            return Err(self.truncated());
        }
        buf.truncate(size as usize);
        Ok(buf)
    }

    fn read_rest(&mut self) -> Result<()> {
        let start = self.pos;
        let n = self
            .r
            .read_to_end(&mut self.pending)
            .map_err(|source| Error::ReadLayer {
                layer: self.layer,
                offset: start,
                source,
            })?;
        self.pos += n as u64;
        Ok(())
    }

    /// Reads until `buf` is full or the tar ends; returns the bytes read.
    fn read_full(&mut self, buf: &mut [u8]) -> Result<usize> {
        let (n, result) = read_full(&mut self.r, buf);
        self.pos += n as u64;
        result.map_err(|source| Error::ReadLayer {
            layer: self.layer,
            offset: self.pos,
            source,
        })?;
        Ok(n)
    }

    fn truncated(&self) -> Error {
        Error::TruncatedLayer {
            layer: self.layer,
            offset: self.pos,
        }
    }

    fn push(&mut self, s: Segment) {
        let end = self.index.len() + s.len();
        self.index.segments.push(s);
        self.index.starts.push(end);
    }

    /// Moves the pending bytes into a [`Segment::Bytes`].
    fn flush(&mut self) {
        if !self.pending.is_empty() {
            let b = std::mem::take(&mut self.pending);
            self.push(Segment::Bytes(b));
        }
    }
}

fn padding(size: u64) -> usize {
    ((BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64) as usize
}

/// The header checksum, computed with unsigned or (as some old tars do) signed bytes.
pub(crate) fn checksum_ok(block: &[u8; BLOCK]) -> bool {
    let Some(stored) = parse_number(&block[148..156]) else {
        return false;
    };
    let field = 148..156;
    let (mut unsigned, mut signed) = (0u64, 0i64);
    for (i, &b) in block.iter().enumerate() {
        let (u, s) = if field.contains(&i) {
            (32, 32)
        } else {
            (u64::from(b), i64::from(b as i8))
        };
        unsigned += u;
        signed += s;
    }
    stored == unsigned || i64::try_from(stored).ok() == Some(signed)
}

/// Octal (NUL/space padded) or GNU base-256 number.
pub(crate) fn parse_number(field: &[u8]) -> Option<u64> {
    if let Some((&first, rest)) = field.split_first() {
        if first & 0x80 != 0 {
            if first != 0x80 || rest.len() > 8 && rest[..rest.len() - 8].iter().any(|&b| b != 0) {
                return None;
            }
            let tail = &rest[rest.len().saturating_sub(8)..];
            return Some(tail.iter().fold(0u64, |v, &b| v << 8 | u64::from(b)));
        }
    }
    let digits = field
        .iter()
        .skip_while(|&&b| b == b' ' || b == 0)
        .take_while(|&&b| b != b' ' && b != 0);
    let mut v = 0u64;
    for &b in digits {
        if !(b'0'..=b'7').contains(&b) {
            return None;
        }
        v = v.checked_mul(8)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(v)
}

fn until_nul(b: &[u8]) -> &[u8] {
    b.iter().position(|&c| c == 0).map_or(b, |n| &b[..n])
}

/// Name, with the ustar prefix when the header is POSIX ustar (GNU headers use those bytes
/// for other fields).
fn ustar_path(block: &[u8; BLOCK]) -> Vec<u8> {
    let name = until_nul(&block[0..100]);
    let prefix = if &block[257..263] == b"ustar\0" {
        until_nul(&block[345..500])
    } else {
        &[]
    };
    if prefix.is_empty() {
        name.to_vec()
    } else {
        [prefix, b"/", name].concat()
    }
}

/// Lexically cleaned relative path (`.`, empty components and a leading `/` dropped, `..`
/// resolved); `None` if `..` climbs above the root.
fn clean_path(p: &[u8]) -> Option<Vec<u8>> {
    let mut parts: Vec<&[u8]> = Vec::new();
    for c in p.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                parts.pop()?;
            }
            c => parts.push(c),
        }
    }
    Some(parts.join(&b'/'))
}

/// Applies the `path` and `size` records of a PAX extended header; `None` if malformed.
fn parse_pax(mut data: &[u8], ov: &mut Overrides) -> Option<()> {
    while !data.is_empty() {
        if data.iter().all(|&b| b == 0) {
            break;
        }
        let sp = data.iter().position(|&b| b == b' ')?;
        let len: usize = std::str::from_utf8(&data[..sp]).ok()?.parse().ok()?;
        if len <= sp + 1 || len > data.len() || data[len - 1] != b'\n' {
            return None;
        }
        let record = &data[sp + 1..len - 1];
        let eq = record.iter().position(|&b| b == b'=')?;
        let (key, value) = (&record[..eq], &record[eq + 1..]);
        match key {
            b"path" => ov.path = Some(value.to_vec()),
            b"size" => ov.size = Some(std::str::from_utf8(value).ok()?.parse().ok()?),
            _ => {}
        }
        data = &data[len..];
    }
    Some(())
}

/// Reads until `buf` is full or `r` ends, retrying interrupted reads; returns the bytes read,
/// and the error that stopped it early, if any.
pub(crate) fn read_full(r: &mut impl Read, buf: &mut [u8]) -> (usize, io::Result<()>) {
    let mut done = 0;
    while done < buf.len() {
        match r.read(&mut buf[done..]) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (done, Err(e)),
        }
    }
    (done, Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleans_paths() {
        assert_eq!(clean_path(b"./a//b/./c/").unwrap(), b"a/b/c");
        assert_eq!(clean_path(b"/etc/x").unwrap(), b"etc/x");
        assert_eq!(clean_path(b"a/../b").unwrap(), b"b");
        assert_eq!(clean_path(b"./").unwrap(), b"");
        assert!(clean_path(b"../x").is_none());
        assert!(clean_path(b"a/../../x").is_none());
    }

    #[test]
    fn numbers_and_pax() {
        assert_eq!(parse_number(b"0000644\0"), Some(0o644));
        assert_eq!(parse_number(b"\x80\0\0\0\0\0\0\0\0\0\x01\x00"), Some(256));
        assert_eq!(parse_number(b"0009"), None);
        let mut ov = Overrides::default();
        parse_pax(b"12 path=abc\n13 size=1234\n", &mut ov).unwrap();
        assert_eq!(
            (ov.path.as_deref(), ov.size),
            (Some(&b"abc"[..]), Some(1234))
        );
        assert!(parse_pax(b"99 path=x\n", &mut ov).is_none());
        assert!(parse_pax(b"12 size=abc\n", &mut ov).is_none());
    }
}
