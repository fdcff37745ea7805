//! Delta inputs: a raw stream, a gzip'd stream, or a delta layer blob, told apart by their
//! magic bytes as balena-engine does.

use std::fmt;
use std::io::{self, Cursor, Read};

use flate2::read::MultiGzDecoder;
use serde::{Deserialize, Serialize};

use crate::layer::{checksum_ok, parse_number, BLOCK};

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// What a delta input turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeltaKind {
    /// A librsync delta stream.
    Raw,
    /// A gzip'd librsync delta stream.
    GzipRaw,
    /// A tar whose first member's body is the stream.
    Tar,
    /// A gzip'd tar (a delta layer blob as a registry serves it).
    GzipTar,
}

/// A recognised delta input; the stream is decompressed and unpacked lazily, while it is read
/// (as on a device, where this is part of the apply).
pub struct DeltaStream<'a> {
    /// What the input was.
    pub kind: DeltaKind,
    /// The raw delta stream; `None` for a tar without members (a layer the delta image shares
    /// with the target, which a device skips).
    pub stream: Option<Box<dyn Read + 'a>>,
}

impl fmt::Debug for DeltaStream<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeltaStream")
            .field("kind", &self.kind)
            .field("empty", &self.stream.is_none())
            .finish()
    }
}

/// Recognises a delta input by its first bytes (gzip `1f 8b`, then the stream magic or a tar).
pub fn delta_stream<'a, R: Read + 'a>(r: R) -> io::Result<DeltaStream<'a>> {
    let (head, r) = peek(Box::new(r), 2)?;
    if head == GZIP_MAGIC {
        let (head, r) = peek(Box::new(MultiGzDecoder::new(r)), 4)?;
        if head == bru_rsync::DELTA_MAGIC {
            return Ok(DeltaStream {
                kind: DeltaKind::GzipRaw,
                stream: Some(r),
            });
        }
        return Ok(DeltaStream {
            kind: DeltaKind::GzipTar,
            stream: first_member(r)?,
        });
    }
    let (head, r) = peek(r, 4)?;
    if head == bru_rsync::DELTA_MAGIC {
        return Ok(DeltaStream {
            kind: DeltaKind::Raw,
            stream: Some(r),
        });
    }
    Ok(DeltaStream {
        kind: DeltaKind::Tar,
        stream: first_member(r)?,
    })
}

/// Reads up to `n` bytes and gives them back together with a reader that still yields them.
fn peek<'a>(mut r: Box<dyn Read + 'a>, n: usize) -> io::Result<(Vec<u8>, Box<dyn Read + 'a>)> {
    let mut head = Vec::with_capacity(n);
    (&mut r).take(n as u64).read_to_end(&mut head)?;
    let again = Cursor::new(head.clone()).chain(r);
    Ok((head, Box::new(again)))
}

/// The body of the first member of a tar, skipping PAX and GNU long-name records as Go's tar
/// reader does; `None` for a tar without members.
fn first_member<'a>(mut r: Box<dyn Read + 'a>) -> io::Result<Option<Box<dyn Read + 'a>>> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("delta tar: {what}"));
    loop {
        let mut block = [0u8; BLOCK];
        let mut got = 0;
        while got < BLOCK {
            let n = r.read(&mut block[got..])?;
            if n == 0 {
                break;
            }
            got += n;
        }
        if got == 0 || (got == BLOCK && block.iter().all(|&b| b == 0)) {
            return Ok(None);
        }
        if got < BLOCK {
            return Err(bad("truncated header"));
        }
        if !checksum_ok(&block) {
            return Err(bad("not a tar, a gzip file or a delta stream"));
        }
        let size = parse_number(&block[124..136]).ok_or_else(|| bad("bad size field"))?;
        match block[156] {
            b'x' | b'g' | b'L' | b'K' => {
                let skip = size.div_ceil(BLOCK as u64) * BLOCK as u64;
                let n = io::copy(&mut (&mut r).take(skip), &mut io::sink())?;
                if n < skip {
                    return Err(bad("truncated record"));
                }
            }
            _ => return Ok(Some(Box::new(r.take(size)))),
        }
    }
}
