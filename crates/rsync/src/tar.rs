//! Tar-aware hints: a target file's old version at the same path in the basis.
//!
//! The parser walks 512-byte blocks of one tar archive or of several archives concatenated (a
//! basis is all source layer tars back to back). It understands ustar (with `prefix`), PAX
//! extended headers (`path`) and GNU long names (`L`). Blocks that are not valid headers (bad
//! checksum, zero padding between archives, garbage) are skipped, so any input is accepted and
//! yields the entries it can recognise.

use std::collections::HashMap;
use std::ops::Range;

use crate::matcher::Hint;

const BLOCK: usize = 512;

/// One member of a tar stream, located in the stream's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TarEntry {
    /// Path as stored (PAX `path`, GNU long name, or ustar prefix + name), without a leading `./`
    /// or `/`.
    pub path: Vec<u8>,
    /// Type flag of the member (`b'0'` regular file, `b'5'` directory, ...).
    pub typeflag: u8,
    /// Offset of the member's first header block (including PAX / GNU long-name blocks).
    pub start: u64,
    /// The member's data (file contents).
    pub data: Range<u64>,
    /// Offset just after the member's data padding (start of the next header).
    pub end: u64,
}

/// Parses the members of the tar stream(s) in `bytes`; never fails (unrecognised blocks are
/// skipped, a member whose data runs past the end is clipped).
pub fn entries(bytes: &[u8]) -> Vec<TarEntry> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    let mut pending_start: Option<usize> = None;
    let mut pending_path: Option<Vec<u8>> = None;
    while let Some(block) = bytes.get(pos..pos + BLOCK) {
        let Some(size) = valid_header(block) else {
            pending_start = None;
            pending_path = None;
            pos += BLOCK;
            continue;
        };
        let data_start = pos + BLOCK;
        let data_end = data_start.saturating_add(size).min(bytes.len());
        let next = data_start.saturating_add(size.div_ceil(BLOCK).saturating_mul(BLOCK));
        let data = bytes.get(data_start..data_end).unwrap_or_default();
        let typeflag = block[156];
        match typeflag {
            b'x' => {
                pending_start.get_or_insert(pos);
                if let Some(p) = pax_path(data) {
                    pending_path = Some(p);
                }
            }
            b'L' => {
                pending_start.get_or_insert(pos);
                pending_path = Some(until_nul(data).to_vec());
            }
            b'g' | b'K' => {
                pending_start.get_or_insert(pos);
            }
            _ => {
                let path = pending_path.take().unwrap_or_else(|| ustar_path(block));
                out.push(TarEntry {
                    path: clean_path(&path).to_vec(),
                    typeflag,
                    start: pending_start.take().unwrap_or(pos) as u64,
                    data: data_start as u64..data_end as u64,
                    end: next.min(bytes.len()) as u64,
                });
            }
        }
        pos = next;
    }
    out
}

/// Size field of a header block whose checksum is valid; `None` for anything else.
fn valid_header(block: &[u8]) -> Option<usize> {
    if block.iter().all(|&b| b == 0) {
        return None;
    }
    let stored = parse_number(&block[148..156])?;
    let unsigned: u64 = block
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u64::from(b)
            }
        })
        .sum();
    let signed: i64 = block
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                i64::from(b as i8)
            }
        })
        .sum();
    if stored != unsigned && i64::try_from(stored).ok() != Some(signed) {
        return None;
    }
    usize::try_from(parse_number(&block[124..136])?).ok()
}

/// Octal (NUL/space padded) or GNU base-256 number.
fn parse_number(field: &[u8]) -> Option<u64> {
    if let Some((&first, rest)) = field.split_first() {
        if first & 0x80 != 0 {
            if first != 0x80 || rest.len() > 8 && rest[..rest.len() - 8].iter().any(|&b| b != 0) {
                return None;
            }
            let tail = &rest[rest.len().saturating_sub(8)..];
            return Some(tail.iter().fold(0u64, |v, &b| v << 8 | u64::from(b)));
        }
    }
    let s = field
        .iter()
        .skip_while(|&&b| b == b' ' || b == 0)
        .take_while(|&&b| b != b' ' && b != 0);
    let mut v = 0u64;
    let mut any = false;
    for &b in s {
        if !(b'0'..=b'7').contains(&b) {
            return None;
        }
        v = v.checked_mul(8)?.checked_add(u64::from(b - b'0'))?;
        any = true;
    }
    any.then_some(v)
}

fn until_nul(b: &[u8]) -> &[u8] {
    b.iter().position(|&c| c == 0).map_or(b, |n| &b[..n])
}

fn ustar_path(block: &[u8]) -> Vec<u8> {
    let name = until_nul(&block[0..100]);
    let prefix = if &block[257..262] == b"ustar" {
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

fn clean_path(mut p: &[u8]) -> &[u8] {
    loop {
        if let Some(r) = p.strip_prefix(b"./") {
            p = r;
        } else if let Some(r) = p.strip_prefix(b"/") {
            p = r;
        } else {
            return p;
        }
    }
}

/// The `path` record of a PAX extended header (records `"<len> path=<value>\n"`).
fn pax_path(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut found = None;
    while !data.is_empty() {
        let sp = data.iter().position(|&b| b == b' ')?;
        let len: usize = std::str::from_utf8(&data[..sp]).ok()?.parse().ok()?;
        if len <= sp || len > data.len() {
            return found;
        }
        let record = &data[sp + 1..len];
        let record = record.strip_suffix(b"\n").unwrap_or(record);
        if let Some(v) = record.strip_prefix(b"path=") {
            found = Some(v.to_vec());
        }
        data = &data[len..];
    }
    found
}

/// Path with every run of ASCII digits replaced by `#`, so versioned names pair up
/// (`requests-2.31.0.dist-info/RECORD` and `requests-2.32.3.dist-info/RECORD`).
fn fuzzy_key(path: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(path.len());
    for &b in path {
        if b.is_ascii_digit() {
            if k.last() != Some(&b'#') {
                k.push(b'#');
            }
        } else {
            k.push(b);
        }
    }
    k
}

/// Hints from tar structure: each target member points at the basis member with the same path
/// (the last one, as upper layers shadow lower ones), or failing that at one whose path differs
/// only in its digits. Covers headers and data, so header fields (mtime, checksum) are matched
/// against the old header too.
pub fn hints(basis: &[u8], target: &[u8]) -> Vec<Hint> {
    hints_from_entries(&entries(basis), &entries(target))
}

/// [`hints`] from already parsed members (`old` from the basis, `new` from the target), so a
/// caller can parse each side and release its memory before the next.
pub fn hints_from_entries(old: &[TarEntry], new: &[TarEntry]) -> Vec<Hint> {
    let mut by_path: HashMap<&[u8], &TarEntry> = HashMap::with_capacity(old.len());
    let mut by_key: HashMap<Vec<u8>, &TarEntry> = HashMap::with_capacity(old.len());
    for e in old {
        by_path.insert(&e.path, e);
        by_key.insert(fuzzy_key(&e.path), e);
    }
    new.iter()
        .filter_map(|e| {
            let o = by_path
                .get(e.path.as_slice())
                .or_else(|| by_key.get(&fuzzy_key(&e.path)))?;
            Some(Hint {
                target: e.start..e.end,
                basis: o.start..o.end,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ustar header block with a valid checksum.
    fn header(name: &[u8], size: usize, typeflag: u8, prefix: &[u8]) -> Vec<u8> {
        let mut h = vec![0u8; BLOCK];
        h[..name.len()].copy_from_slice(name);
        h[100..108].copy_from_slice(b"0000644\0");
        h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
        h[136..148].copy_from_slice(b"14712345670\0");
        h[156] = typeflag;
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[345..345 + prefix.len()].copy_from_slice(prefix);
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        h
    }

    fn member(name: &[u8], data: &[u8], typeflag: u8) -> Vec<u8> {
        let mut m = header(name, data.len(), typeflag, b"");
        m.extend_from_slice(data);
        m.resize(m.len().div_ceil(BLOCK) * BLOCK, 0);
        m
    }

    #[test]
    fn parses_ustar_pax_gnu_and_concatenated_archives() {
        let pax_rec = b"29 path=./very/long/name.txt\n";
        let mut t = member(b"./a.txt", b"hello", b'0');
        t.extend(member(b"PaxHeaders/x", pax_rec, b'x'));
        t.extend(member(b"short", b"pax data", b'0'));
        t.extend(vec![0u8; 2 * BLOCK]); // end of the first archive
        t.extend(member(b"././@LongLink", b"gnu/long/name\0", b'L'));
        t.extend(member(b"gnu/lo", b"x", b'0'));
        let mut h = header(b"file", 3, b'0', b"some/prefix");
        h.extend_from_slice(b"abc");
        h.resize(2 * BLOCK, 0);
        t.extend(h);
        t.extend(vec![7u8; BLOCK]); // garbage block: skipped
        t.extend(member(b"/dir/", b"", b'5'));
        let e = entries(&t);
        let names: Vec<&[u8]> = e.iter().map(|e| e.path.as_slice()).collect();
        assert_eq!(
            names,
            [
                &b"a.txt"[..],
                b"very/long/name.txt",
                b"gnu/long/name",
                b"some/prefix/file",
                b"dir/"
            ]
        );
        assert_eq!(
            (e[0].start, e[0].data.clone(), e[0].end),
            (0, 512..517, 1024)
        );
        assert_eq!((e[1].start, e[1].data.clone()), (1024, 2560..2568));
        assert_eq!(&t[e[3].data.start as usize..e[3].data.end as usize], b"abc");
        assert_eq!(e[4].typeflag, b'5');
    }

    #[test]
    fn garbage_and_truncation_never_panic() {
        let mut t = member(b"big", &[1u8; 2000], b'0');
        t.truncate(1000);
        let e = entries(&t);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].data, 512..1000);
        assert_eq!(e[0].end, 1000);
        // Huge size, base-256 size, bad octal: handled.
        let mut h = header(b"x", 0, b'0', b"");
        h[124..136].copy_from_slice(b"77777777777\0");
        let sum: u32 = h
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    u32::from(b)
                }
            })
            .sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        assert_eq!(entries(&h).len(), 1);
        for n in 0..1500 {
            let junk: Vec<u8> = (0..n).map(|i| (i * 31 % 256) as u8).collect();
            entries(&junk);
        }
        assert_eq!(parse_number(b"\x80\0\0\0\0\0\0\0\0\0\x01\x00"), Some(256));
        assert_eq!(parse_number(b"0009"), None);
        assert_eq!(pax_path(b"99 path=x\n"), None);
        assert_eq!(pax_path(b"10 path=x\n"), Some(b"x".to_vec()));
    }

    #[test]
    fn hints_pair_same_and_versioned_paths() {
        let basis = [
            member(b"./lib/a.so", &[1u8; 700], b'0'),
            member(b"./pkg-2.31.0.dist-info/RECORD", b"old", b'0'),
            member(b"./lib/a.so", &[2u8; 100], b'0'), // an upper layer shadows the first one
        ]
        .concat();
        let target = [
            member(b"./new", b"n", b'0'),
            member(b"./pkg-2.32.3.dist-info/RECORD", b"new", b'0'),
            member(b"./lib/a.so", &[2u8; 101], b'0'),
        ]
        .concat();
        let h = hints(&basis, &target);
        assert_eq!(
            h,
            [
                Hint {
                    target: 1024..2048,
                    basis: 1536..2560
                },
                Hint {
                    target: 2048..3072,
                    basis: 2560..3584
                }
            ]
        );
    }
}
