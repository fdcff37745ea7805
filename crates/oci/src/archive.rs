//! docker-archive: the tarballs `docker save` writes and `docker load` reads.
//!
//! Reading indexes the tar once (file offsets of every member, following symlinks and hard
//! links), picks the image from `manifest.json`, and presents it with a Docker schema 2
//! manifest synthesized from the archive's layer files (an archive stores no registry
//! manifest). Layer digests come from `blobs/sha256/<hex>` member names when the archive has
//! them and are otherwise computed in that one pass; every blob is verified again when read.
//!
//! Writing stages blobs in a temporary directory and writes the tarball in
//! [`ImageSink::finish`]: `manifest.json` (`Config`, `RepoTags`, `Layers`) plus each blob under
//! `blobs/sha256/<hex>`, layers kept as given (gzip layers are decompressed by `docker load`).

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;

use crate::digest::Hasher;
use crate::limits::{
    check_declared, MAX_ARCHIVE_HEADER_BYTES, MAX_ARCHIVE_MEMBERS, MAX_CONFIG_SIZE,
    MAX_MANIFEST_SIZE,
};
use crate::types::media_type;
use crate::{
    parse_manifest, verify_reader, BlobReader, Descriptor, Digest, ImageSink, ImageSource,
    Manifest, ManifestKind, OciDir, OciError, PulledImage, PutOutcome,
};

#[derive(Debug, Serialize, Deserialize)]
struct ManifestEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

/// A member of the tar: a file region or a link to another member.
#[derive(Debug, Clone)]
enum Member {
    File { offset: u64, size: u64 },
    Link(String),
}

fn normalize(p: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    parts.join("/")
}

/// The short form Docker shows for a `REPO:TAG` (skopeo writes `RepoTags` fully qualified,
/// Docker writes them short), so that both spellings select the same image.
fn familiar(repo_tag: &str) -> &str {
    let s = repo_tag.strip_prefix("docker.io/").unwrap_or(repo_tag);
    s.strip_prefix("library/").unwrap_or(s)
}

/// A reader that fails once it has read `left` bytes; seeking is free.
struct ReadBudget<R> {
    inner: R,
    left: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("read budget spent")]
struct BudgetSpent;

impl<R: Read> Read for ReadBudget<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 && !buf.is_empty() {
            return Err(std::io::Error::other(BudgetSpent));
        }
        let max = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..max])?;
        self.left -= n as u64;
        Ok(n)
    }
}

impl<R: Seek> Seek for ReadBudget<R> {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        self.inner.seek(pos)
    }
}

/// Reads a docker-archive.
#[derive(Debug)]
pub(crate) struct ArchiveSource {
    path: PathBuf,
    image: PulledImage,
    blobs: HashMap<Digest, (u64, u64)>,
}

impl ArchiveSource {
    pub(crate) fn open(path: &Path, repo_tag: Option<String>) -> Result<Self, OciError> {
        let io = |e| OciError::io(path, e);
        let mut file = File::open(path).map_err(io)?;
        let mut members: HashMap<String, Member> = HashMap::new();
        {
            // Indexing seeks over member data and reads headers only; the tar parser reads
            // extended headers (PAX, GNU long names) whole, so what it reads is capped.
            let mut budget = ReadBudget {
                inner: &mut file,
                left: MAX_ARCHIVE_HEADER_BYTES,
            };
            let mut ar = tar::Archive::new(&mut budget);
            for entry in ar.entries_with_seek().map_err(io)? {
                let entry = entry.map_err(|e| {
                    if e.get_ref().is_some_and(|e| e.is::<BudgetSpent>()) {
                        OciError::TooLarge {
                            what: "docker-archive headers",
                            limit: MAX_ARCHIVE_HEADER_BYTES,
                        }
                    } else {
                        OciError::malformed("docker-archive", e)
                    }
                })?;
                let name = normalize(&String::from_utf8_lossy(&entry.path_bytes()));
                let kind = entry.header().entry_type();
                let member = if kind.is_symlink() || kind.is_hard_link() {
                    let target = entry
                        .link_name_bytes()
                        .map(|t| String::from_utf8_lossy(&t).into_owned())
                        .unwrap_or_default();
                    let resolved = if kind.is_symlink() && !target.starts_with('/') {
                        let dir = name.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
                        normalize(&format!("{dir}/{target}"))
                    } else {
                        normalize(&target)
                    };
                    Member::Link(resolved)
                } else if kind.is_file() {
                    Member::File {
                        offset: entry.raw_file_position(),
                        size: entry.size(),
                    }
                } else {
                    continue;
                };
                if members.len() as u64 >= MAX_ARCHIVE_MEMBERS && !members.contains_key(&name) {
                    return Err(OciError::Unsupported {
                        what: "docker-archive member count",
                        value: format!("more than {MAX_ARCHIVE_MEMBERS}"),
                    });
                }
                members.insert(name, member);
            }
        }
        let locate = |name: &str| -> Result<(String, u64, u64), OciError> {
            let mut n = normalize(name);
            for _ in 0..16 {
                match members.get(&n) {
                    Some(Member::File { offset, size }) => return Ok((n, *offset, *size)),
                    Some(Member::Link(t)) => n = t.clone(),
                    None => break,
                }
            }
            Err(OciError::NotFound {
                what: format!("{name} in docker-archive {}", path.display()),
            })
        };
        // Members read whole are capped by the size their tar header declares.
        let mut read_member =
            |offset: u64, size: u64, what: &'static str, limit: u64| -> Result<Vec<u8>, OciError> {
                check_declared(what, size, limit)?;
                file.seek(SeekFrom::Start(offset)).map_err(io)?;
                let mut buf = Vec::new();
                (&mut file).take(size).read_to_end(&mut buf).map_err(io)?;
                Ok(buf)
            };

        let (_, off, size) = locate("manifest.json")?;
        let entries: Vec<ManifestEntry> = serde_json::from_slice(&read_member(
            off,
            size,
            "docker-archive manifest.json",
            MAX_MANIFEST_SIZE,
        )?)
        .map_err(|e| OciError::malformed("docker-archive manifest.json", e))?;
        let entry = match &repo_tag {
            Some(rt) => entries.iter().find(|e| {
                e.repo_tags
                    .as_ref()
                    .is_some_and(|t| t.iter().any(|x| familiar(x) == familiar(rt)))
            }),
            None if entries.len() == 1 => entries.first(),
            None => {
                return Err(OciError::NotFound {
                    what: format!(
                    "a single image in docker-archive {} ({} images; name one as PATH:REPO:TAG)",
                    path.display(),
                    entries.len()
                ),
                })
            }
        }
        .ok_or_else(|| OciError::NotFound {
            what: format!(
                "image {} in docker-archive {}",
                repo_tag.as_deref().unwrap_or("(any)"),
                path.display()
            ),
        })?;

        let (_, off, size) = locate(&entry.config)?;
        let config_bytes = read_member(off, size, "image config", MAX_CONFIG_SIZE)?;
        let config_desc = Descriptor::of_bytes(media_type::DOCKER_CONFIG, &config_bytes);
        let mut blobs = HashMap::new();
        let mut layers = Vec::new();
        for layer in &entry.layers {
            let (name, off, size) = locate(layer)?;
            file.seek(SeekFrom::Start(off)).map_err(io)?;
            let mut head = Vec::new();
            (&mut file).take(4).read_to_end(&mut head).map_err(io)?;
            let by_name = name
                .strip_prefix("blobs/sha256/")
                .and_then(|h| format!("sha256:{h}").parse::<Digest>().ok());
            let digest = match by_name {
                Some(d) => d,
                None => {
                    file.seek(SeekFrom::Start(off)).map_err(io)?;
                    let mut h = Hasher::new();
                    std::io::copy(&mut (&mut file).take(size), &mut h).map_err(io)?;
                    h.finish()
                }
            };
            let mt = match crate::Compression::detect(&head) {
                crate::Compression::Gzip => media_type::DOCKER_LAYER_GZIP,
                _ => media_type::DOCKER_LAYER_TAR,
            };
            blobs.insert(digest.clone(), (off, size));
            layers.push(Descriptor {
                media_type: mt.to_string(),
                digest,
                size,
                annotations: None,
                platform: None,
            });
        }
        let manifest = Manifest::new(media_type::DOCKER_MANIFEST, config_desc, layers);
        let image = PulledImage::from_parts(
            manifest.to_json(),
            media_type::DOCKER_MANIFEST.to_string(),
            manifest,
            config_bytes,
        )?;
        Ok(ArchiveSource {
            path: path.to_path_buf(),
            image,
            blobs,
        })
    }
}

#[async_trait]
impl ImageSource for ArchiveSource {
    async fn image(&self) -> Result<PulledImage, OciError> {
        Ok(self.image.clone())
    }

    async fn blob(&self, desc: &Descriptor) -> Result<BlobReader, OciError> {
        if desc.digest == self.image.config_digest {
            let bytes = self.image.config_bytes.clone();
            return Ok(verify_reader(
                std::io::Cursor::new(bytes),
                desc.digest.clone(),
                desc.size,
            ));
        }
        let (offset, size) = *self.blobs.get(&desc.digest).ok_or(OciError::BlobMissing {
            digest: desc.digest.clone(),
        })?;
        let mut f = tokio::fs::File::open(&self.path)
            .await
            .map_err(|e| OciError::io(&self.path, e))?;
        tokio::io::AsyncSeekExt::seek(&mut f, SeekFrom::Start(offset))
            .await
            .map_err(|e| OciError::io(&self.path, e))?;
        Ok(verify_reader(f.take(size), desc.digest.clone(), desc.size))
    }
}

/// Writes a docker-archive.
#[derive(Debug)]
pub(crate) struct ArchiveSink {
    dest: PathBuf,
    repo_tag: Option<String>,
    /// Keeps the staging directory alive (it is removed on drop).
    _staging: tempfile::TempDir,
    blobs: OciDir,
    manifest: Mutex<Option<Manifest>>,
}

impl ArchiveSink {
    pub(crate) fn new(dest: &Path, repo_tag: Option<String>) -> Result<Self, OciError> {
        let parent = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let staging = tempfile::Builder::new()
            .prefix(".docker-archive-")
            .tempdir_in(&parent)
            .map_err(|e| OciError::io(&parent, e))?;
        let blobs = OciDir::create(staging.path())?;
        Ok(ArchiveSink {
            dest: dest.to_path_buf(),
            repo_tag,
            _staging: staging,
            blobs,
            manifest: Mutex::new(None),
        })
    }
}

/// Writes the tarball for `manifest` with blobs from `blobs` atomically to `dest`.
fn write_archive(
    blobs: &OciDir,
    dest: &Path,
    repo_tag: Option<&str>,
    manifest: &Manifest,
) -> Result<(), OciError> {
    let blob_name = |d: &Digest| format!("blobs/sha256/{}", d.hex());
    let entry = ManifestEntry {
        config: blob_name(&manifest.config.digest),
        repo_tags: Some(repo_tag.iter().map(|t| t.to_string()).collect()),
        layers: manifest
            .layers
            .iter()
            .map(|l| blob_name(&l.digest))
            .collect(),
    };
    let manifest_json = serde_json::to_vec(&[entry])
        .map_err(|e| OciError::malformed("docker-archive manifest.json", e))?;
    let parent = blobs.path().parent().unwrap_or(Path::new("."));
    let tmp = tempfile::NamedTempFile::new_in(parent).map_err(|e| OciError::io(parent, e))?;
    let io = |e| OciError::io(tmp.path(), e);
    let mut builder = tar::Builder::new(std::io::BufWriter::new(tmp.as_file()));
    let header = |size: u64| {
        let mut h = tar::Header::new_ustar();
        h.set_size(size);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        h
    };
    let mut seen = std::collections::HashSet::new();
    for d in std::iter::once(&manifest.config).chain(&manifest.layers) {
        if !seen.insert(d.digest.clone()) {
            continue;
        }
        let p = blobs.blob_path(&d.digest);
        let f = File::open(&p).map_err(|_| OciError::BlobMissing {
            digest: d.digest.clone(),
        })?;
        let len = f.metadata().map_err(|e| OciError::io(&p, e))?.len();
        builder
            .append_data(&mut header(len), blob_name(&d.digest), f)
            .map_err(io)?;
    }
    builder
        .append_data(
            &mut header(manifest_json.len() as u64),
            "manifest.json",
            &manifest_json[..],
        )
        .map_err(io)?;
    builder
        .into_inner()
        .and_then(|mut w| std::io::Write::flush(&mut w))
        .map_err(io)?;
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist(dest).map_err(|e| OciError::io(dest, e.error))?;
    Ok(())
}

#[async_trait]
impl ImageSink for ArchiveSink {
    async fn put_blob(&self, path: &Path, desc: &Descriptor) -> Result<PutOutcome, OciError> {
        let dir = self.blobs.clone();
        let (path, desc) = (path.to_path_buf(), desc.clone());
        tokio::task::spawn_blocking(move || dir.import_blob(&path, &desc))
            .await
            .map_err(|e| OciError::Stream(std::io::Error::other(e)))?
    }

    async fn put_manifest(&self, bytes: &[u8], media_type: &str) -> Result<Digest, OciError> {
        match parse_manifest(bytes, Some(media_type))? {
            ManifestKind::Image(m) => {
                *self.manifest.lock().unwrap_or_else(|p| p.into_inner()) = Some(m);
                Ok(Digest::of(bytes))
            }
            ManifestKind::Index(_) => Err(OciError::Unsupported {
                what: "docker-archive content",
                value: "image index".into(),
            }),
        }
    }

    async fn finish(&self) -> Result<(), OciError> {
        let manifest = self
            .manifest
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| OciError::NotFound {
                what: "manifest (put_manifest was not called)".into(),
            })?;
        let (blobs, dest, tag) = (self.blobs.clone(), self.dest.clone(), self.repo_tag.clone());
        tokio::task::spawn_blocking(move || write_archive(&blobs, &dest, tag.as_deref(), &manifest))
            .await
            .map_err(|e| OciError::Stream(std::io::Error::other(e)))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_member_paths_and_repo_tags() {
        assert_eq!(normalize("./a//b/../c"), "a/c");
        assert_eq!(normalize("../../x"), "x");
        assert_eq!(normalize("/blobs/sha256/ab"), "blobs/sha256/ab");
        assert_eq!(familiar("docker.io/library/app:v1"), "app:v1");
        assert_eq!(familiar("docker.io/team/app:v1"), "team/app:v1");
        assert_eq!(familiar("localhost:5000/app:v1"), "localhost:5000/app:v1");
    }
}
