//! The basis as balena-engine serves it: the source layers' tars rebuilt on demand from their
//! indexes and extracted files, chained into one seekable stream.

use std::fs;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::layer::{extract_layer, LayerIndex, Segment};

/// Go's `bytes.MinRead`: the headroom `bytes.Buffer.ReadFrom` makes before every read.
const GO_MIN_READ: usize = 512;

/// How a read on the chained basis reaches the per-layer readers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReadModel {
    /// As balena-engine's concatenating reader (`pkg/ioutils.MultiReadSeeker`) does it: every
    /// read fills a fresh Go `bytes.Buffer` with `io.CopyN` from the layer readers, so one
    /// 32 KiB read reaches the layer reader as reads of 512, 512, 1 Ki, 2 Ki, 4 Ki, 8 Ki and
    /// 16 Ki bytes (the buffer's growth: Go ≥ 1.20), each doing its own search and file opens,
    /// plus a 0-byte read at the end of every layer it leaves.
    #[default]
    GoBuffer,
    /// One layer read per layer a basis read touches (the simplest reading of the engine).
    Direct,
}

/// Counters of the basis side of an apply.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BasisCounters {
    /// `read` calls on the chained basis (by the COPY loops).
    pub basis_reads: u64,
    /// Bytes those reads returned.
    pub basis_bytes_read: u64,
    /// Reads that reached a per-layer reader (each one searches the segment list).
    pub layer_reads: u64,
    /// Files opened (and closed) to serve reads.
    pub file_opens: u64,
    /// Bytes read from opened files.
    pub file_bytes_read: u64,
    /// `seek` calls on the chained basis.
    pub seeks: u64,
}

/// The source layers of a device: files extracted per layer, plus their indexes.
#[derive(Debug, Clone)]
pub struct DeviceBasis {
    layers: Vec<LayerIndex>,
    /// `starts[i]` is the basis offset of layer `i`; one more entry holds the total length.
    starts: Vec<u64>,
    extract_seconds: f64,
}

impl DeviceBasis {
    /// Extracts uncompressed layer tars (bottom layer first) into `workdir/layer-<i>/` and
    /// indexes them. `workdir` is created if needed; existing layer directories must be empty.
    pub fn extract<R: Read>(
        layers: impl IntoIterator<Item = R>,
        workdir: &Path,
    ) -> Result<DeviceBasis> {
        let t = Instant::now();
        let mut idx = Vec::new();
        for (i, r) in layers.into_iter().enumerate() {
            idx.push(extract_layer(i, r, &workdir.join(format!("layer-{i}")))?);
        }
        let mut b = DeviceBasis::from_layers(idx);
        b.extract_seconds = t.elapsed().as_secs_f64();
        Ok(b)
    }

    /// [`DeviceBasis::extract`] from layer tar files (plain tars; decompress first).
    pub fn extract_files<P: AsRef<Path>>(layer_tars: &[P], workdir: &Path) -> Result<DeviceBasis> {
        let mut readers = Vec::new();
        for p in layer_tars {
            let path = p.as_ref();
            let f = fs::File::open(path).map_err(|source| Error::Extract {
                path: path.to_path_buf(),
                source,
            })?;
            readers.push(io::BufReader::with_capacity(256 * 1024, f));
        }
        DeviceBasis::extract(readers, workdir)
    }

    fn from_layers(layers: Vec<LayerIndex>) -> DeviceBasis {
        let mut starts = vec![0u64];
        for l in &layers {
            starts.push(starts.last().copied().unwrap_or(0) + l.len());
        }
        DeviceBasis {
            layers,
            starts,
            extract_seconds: 0.0,
        }
    }

    /// The layers' indexes, bottom layer first.
    pub fn layers(&self) -> &[LayerIndex] {
        &self.layers
    }

    /// Length of the basis (all layer tars back to back).
    pub fn len(&self) -> u64 {
        self.starts.last().copied().unwrap_or(0)
    }

    /// True when the basis has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Wall-clock seconds the extraction took.
    pub fn extract_seconds(&self) -> f64 {
        self.extract_seconds
    }

    /// A fresh reader over the chained basis, at offset 0.
    pub fn reader(&self, model: ReadModel) -> BasisReader<'_> {
        BasisReader {
            basis: self,
            model,
            pos: 0,
            layer: 0,
            counters: BasisCounters::default(),
            failure: None,
        }
    }
}

/// The chained basis stream (`Read + Seek`), counting what each read costs.
///
/// Nothing is cached between reads: every layer read binary-searches the layer's segment list
/// and opens, seeks, reads and closes every file it touches, by its full path.
#[derive(Debug)]
pub struct BasisReader<'a> {
    basis: &'a DeviceBasis,
    model: ReadModel,
    pos: u64,
    /// The layer the engine's concatenating reader considers current.
    layer: usize,
    counters: BasisCounters,
    /// The structured error behind the last failed read (the `io::Error` only carries text).
    failure: Option<Error>,
}

impl BasisReader<'_> {
    /// What the reads so far have cost.
    pub fn counters(&self) -> BasisCounters {
        self.counters
    }

    /// Takes the structured error of the last failed read, if any.
    pub(crate) fn take_failure(&mut self) -> Option<Error> {
        self.failure.take()
    }

    /// One read on layer `li` at layer offset `off`: fills `out` as far as the layer goes.
    fn layer_read(&mut self, li: usize, off: u64, out: &mut [u8]) -> Result<usize> {
        self.counters.layer_reads += 1;
        let layer = &self.basis.layers[li];
        if off >= layer.len() || out.is_empty() {
            return Ok(0);
        }
        let want = (out.len() as u64).min(layer.len() - off) as usize;
        let mut done = 0;
        let mut si = layer.segment_at(off);
        while done < want {
            let seg_start = layer.start_of(si);
            let inner = off + done as u64 - seg_start;
            let seg = &layer.segments()[si];
            let n = ((seg.len() - inner) as usize).min(want - done);
            let dst = &mut out[done..done + n];
            match seg {
                Segment::Bytes(b) => dst.copy_from_slice(&b[inner as usize..inner as usize + n]),
                Segment::File { path, .. } => {
                    self.counters.file_opens += 1;
                    read_file_range(path, inner, dst)?;
                    self.counters.file_bytes_read += n as u64;
                }
            }
            done += n;
            si += 1;
        }
        Ok(done)
    }

    /// A basis read as [`ReadModel::Direct`]: one layer read per layer touched.
    fn read_direct(&mut self, out: &mut [u8]) -> Result<usize> {
        let mut done = 0;
        let last = self.basis.layers.len().saturating_sub(1);
        while done < out.len() && self.layer < self.basis.layers.len() {
            let li = self.layer;
            if self.pos >= self.basis.starts[li + 1] {
                if li == last {
                    break;
                }
                self.layer += 1;
                continue;
            }
            let off = self.pos - self.basis.starts[li];
            let n = self.layer_read(li, off, &mut out[done..])?;
            done += n;
            self.pos += n as u64;
        }
        Ok(done)
    }

    /// A basis read as [`ReadModel::GoBuffer`]: for each layer from the current one,
    /// `io.CopyN(buf, layer, remaining)` into one growing `bytes.Buffer`, then a copy to `out`.
    fn read_go_buffer(&mut self, out: &mut [u8]) -> Result<usize> {
        let mut buf: Vec<u8> = Vec::new();
        let mut len = 0usize;
        let mut remaining = out.len();
        let mut li = self.layer;
        while li < self.basis.layers.len() {
            let mut limit = remaining;
            // bytes.Buffer.ReadFrom through an io.LimitedReader: stops at the limit without a
            // further read, or at the layer's end after a read that returns 0 bytes.
            while limit > 0 {
                if buf.len() - len < GO_MIN_READ {
                    let cap = if buf.is_empty() {
                        GO_MIN_READ
                    } else {
                        (len + GO_MIN_READ).max(2 * buf.len())
                    };
                    let mut grown = vec![0u8; cap];
                    grown[..len].copy_from_slice(&buf[..len]);
                    buf = grown;
                }
                let want = (buf.len() - len).min(limit);
                let off = self.pos - self.basis.starts[li];
                let n = self.layer_read(li, off, &mut buf[len..len + want])?;
                if n == 0 {
                    break;
                }
                len += n;
                limit -= n;
                self.pos += n as u64;
            }
            remaining = limit;
            if remaining == 0 || li + 1 == self.basis.layers.len() {
                break;
            }
            li += 1;
        }
        self.layer = li;
        out[..len].copy_from_slice(&buf[..len]);
        Ok(len)
    }
}

/// Opens `path`, seeks to `off` if it is not 0, fills `dst`, closes.
fn read_file_range(path: &Path, off: u64, dst: &mut [u8]) -> Result<()> {
    let err = |source| Error::ReadBasisFile {
        path: PathBuf::from(path),
        offset: off,
        source,
    };
    let mut f = fs::File::open(path).map_err(err)?;
    if off > 0 {
        f.seek(SeekFrom::Start(off)).map_err(err)?;
    }
    f.read_exact(dst).map_err(err)
}

impl Read for BasisReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        self.counters.basis_reads += 1;
        let r = match self.model {
            ReadModel::Direct => self.read_direct(out),
            ReadModel::GoBuffer => self.read_go_buffer(out),
        };
        match r {
            Ok(n) => {
                self.counters.basis_bytes_read += n as u64;
                Ok(n)
            }
            Err(e) => {
                let io = io::Error::other(e.to_string());
                self.failure = Some(e);
                Err(io)
            }
        }
    }
}

impl Seek for BasisReader<'_> {
    /// Seeks like the engine's concatenating reader: the current layer becomes the first one
    /// whose range holds the offset (empty layers are skipped). Past the end, reads return 0.
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        self.counters.seeks += 1;
        let len = self.basis.len();
        let target = match to {
            SeekFrom::Start(o) => Some(o),
            SeekFrom::End(d) => len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        }
        .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        self.pos = target;
        let n = self.basis.layers.len();
        // First layer whose end is past the target; the last layer if none is.
        self.layer = self.basis.starts[1..]
            .partition_point(|&end| end <= target)
            .min(n.saturating_sub(1));
        Ok(target)
    }
}
