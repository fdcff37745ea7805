//! The basis of an apply: the source image's layer tars, one file each, read as their
//! concatenation by offset (what the delta's COPY commands address).

use std::fs::File;
use std::path::PathBuf;

use crate::error::DeltaError;

/// The basis as the concatenation of several files (the source layer tars),
/// read by offset.
#[derive(Debug)]
pub(crate) struct LayeredBasis {
    /// Each file with the basis offset it starts at.
    files: Vec<(File, u64)>,
    len: u64,
}

impl LayeredBasis {
    pub(crate) fn open(parts: &[(PathBuf, u64)]) -> Result<Self, DeltaError> {
        let mut files = Vec::with_capacity(parts.len());
        let mut len = 0;
        for (path, part_len) in parts {
            files.push((File::open(path).map_err(DeltaError::io(path))?, len));
            len += part_len;
        }
        Ok(LayeredBasis { files, len })
    }
}

impl bru_rsync::ReadAt for LayeredBasis {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_exact_at(&self, mut buf: &mut [u8], mut offset: u64) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        if buf.is_empty() {
            return if offset <= self.len {
                Ok(())
            } else {
                Err(std::io::ErrorKind::UnexpectedEof.into())
            };
        }
        if offset
            .checked_add(buf.len() as u64)
            .is_none_or(|end| end > self.len)
        {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "read past the end of the basis",
            ));
        }
        // The file holding `offset`: the last one starting at or before it.
        let mut k = self.files.partition_point(|(_, start)| *start <= offset) - 1;
        while !buf.is_empty() {
            let (file, start) = &self.files[k];
            let end = self.files.get(k + 1).map_or(self.len, |(_, s)| *s);
            let n = buf.len().min((end - offset) as usize);
            let (head, rest) = std::mem::take(&mut buf).split_at_mut(n);
            FileExt::read_exact_at(file, head, offset - start)?;
            buf = rest;
            offset += n as u64;
            k += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bru_rsync::ReadAt;

    #[test]
    fn layered_basis_reads_across_files() {
        let dir = tempfile::tempdir().unwrap();
        let parts_data: [&[u8]; 4] = [b"abc", b"", b"defgh", b"ij"];
        let mut parts = Vec::new();
        for (i, data) in parts_data.iter().enumerate() {
            let path = dir.path().join(format!("p{i}"));
            std::fs::write(&path, data).unwrap();
            let len = std::fs::metadata(&path).unwrap().len();
            parts.push((path, len));
        }
        let basis = LayeredBasis::open(&parts).unwrap();
        let all = parts_data.concat();
        assert_eq!(basis.len(), all.len() as u64);
        for start in 0..=all.len() {
            for end in start..=all.len() {
                let mut buf = vec![0; end - start];
                basis.read_exact_at(&mut buf, start as u64).unwrap();
                assert_eq!(buf, &all[start..end]);
            }
            let mut past = vec![0; all.len() - start + 1];
            assert!(basis.read_exact_at(&mut past, start as u64).is_err());
        }
        assert!(basis.read_exact_at(&mut [], 11).is_err());
        let empty = LayeredBasis::open(&[]).unwrap();
        assert!(empty.read_exact_at(&mut [], 0).is_ok());
        assert!(empty.read_exact_at(&mut [0], 0).is_err());
    }
}
