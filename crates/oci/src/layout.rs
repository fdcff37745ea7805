//! OCI image layout directories: [`OciDir`] plus the [`ImageSource`] / [`ImageSink`] over it.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use async_trait::async_trait;

use crate::digest::Hasher;
use crate::types::{media_type, MAX_DOCUMENT_SIZE, REF_NAME_ANNOTATION};
use crate::{
    parse_manifest, BlobReader, Descriptor, Digest, ImageSink, ImageSource, Index, ManifestKind,
    OciError, Platform, PulledImage, PutOutcome,
};

const LAYOUT_FILE: &str = "oci-layout";
const LAYOUT_CONTENT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

/// An OCI image layout directory (`oci-layout`, `index.json`, `blobs/sha256/...`).
///
/// All writes are atomic: blobs and `index.json` are written to a temporary file in the same
/// directory, verified, then renamed into place. This type is synchronous (plain `std::fs`);
/// it is also the API tests use to build small images, see [`OciDir::write_image`].
///
/// ```no_run
/// # fn main() -> Result<(), bru_oci::OciError> {
/// use bru_oci::{media_type, OciDir};
/// let dir = OciDir::create("/tmp/layout")?;
/// let blob = dir.write_blob(media_type::OCI_LAYER_TAR, b"...")?;
/// assert!(dir.blob_path(&blob.digest).exists());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct OciDir {
    root: PathBuf,
}

impl OciDir {
    /// Opens the layout at `path`, creating the directory, `oci-layout`, `blobs/sha256` and an
    /// empty `index.json` where missing.
    pub fn create(path: impl AsRef<Path>) -> Result<Self, OciError> {
        let root = path.as_ref().to_path_buf();
        let blobs = root.join("blobs").join("sha256");
        fs::create_dir_all(&blobs).map_err(|e| OciError::io(&blobs, e))?;
        let dir = OciDir { root };
        let layout = dir.root.join(LAYOUT_FILE);
        if !layout.exists() {
            dir.write_atomic(&layout, LAYOUT_CONTENT)?;
        }
        if !dir.index_path().exists() {
            dir.write_index(&Index::new_oci())?;
        }
        Ok(dir)
    }

    /// Opens an existing layout; fails if `oci-layout` or `index.json` is missing.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, OciError> {
        let dir = OciDir {
            root: path.as_ref().to_path_buf(),
        };
        for p in [dir.root.join(LAYOUT_FILE), dir.index_path()] {
            if !p.is_file() {
                return Err(OciError::NotFound {
                    what: format!("OCI layout file {}", p.display()),
                });
            }
        }
        Ok(dir)
    }

    /// The layout's root directory.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// Where the blob with this digest lives (whether or not it exists).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs").join("sha256").join(digest.hex())
    }

    /// True when the blob exists.
    pub fn has_blob(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    fn index_path(&self) -> PathBuf {
        self.root.join("index.json")
    }

    fn write_atomic(&self, dest: &Path, bytes: &[u8]) -> Result<(), OciError> {
        let parent = dest.parent().unwrap_or(&self.root);
        let mut tmp =
            tempfile::NamedTempFile::new_in(parent).map_err(|e| OciError::io(parent, e))?;
        tmp.write_all(bytes)
            .and_then(|_| tmp.as_file().sync_all())
            .map_err(|e| OciError::io(tmp.path(), e))?;
        tmp.persist(dest).map_err(|e| OciError::io(dest, e.error))?;
        Ok(())
    }

    /// Stores `bytes` as a blob and returns its descriptor (with `media_type`).
    pub fn write_blob(&self, media_type: &str, bytes: &[u8]) -> Result<Descriptor, OciError> {
        let desc = Descriptor::of_bytes(media_type, bytes);
        if !self.has_blob(&desc.digest) {
            self.write_atomic(&self.blob_path(&desc.digest), bytes)?;
        }
        Ok(desc)
    }

    /// Copies the file at `src` into the layout as the blob `desc`, hashing while copying; the
    /// blob appears only if digest and size match. Returns [`PutOutcome::AlreadyPresent`]
    /// without reading `src` when a blob of that digest and size is already there.
    pub fn import_blob(&self, src: &Path, desc: &Descriptor) -> Result<PutOutcome, OciError> {
        let dest = self.blob_path(&desc.digest);
        if fs::metadata(&dest).is_ok_and(|m| m.len() == desc.size) {
            return Ok(PutOutcome::AlreadyPresent);
        }
        let mut input = fs::File::open(src).map_err(|e| OciError::io(src, e))?;
        let parent = dest.parent().unwrap_or(&self.root);
        let mut tmp =
            tempfile::NamedTempFile::new_in(parent).map_err(|e| OciError::io(parent, e))?;
        let mut hasher = Hasher::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut total = 0u64;
        loop {
            let n = input.read(&mut buf).map_err(|e| OciError::io(src, e))?;
            if n == 0 {
                break;
            }
            let chunk = buf.get(..n).unwrap_or_default();
            hasher.update(chunk);
            total += n as u64;
            tmp.write_all(chunk)
                .map_err(|e| OciError::io(tmp.path(), e))?;
        }
        if total != desc.size {
            return Err(OciError::SizeMismatch {
                digest: desc.digest.clone(),
                expected: desc.size,
                actual: total,
            });
        }
        let actual = hasher.finish();
        if actual != desc.digest {
            return Err(OciError::DigestMismatch {
                expected: desc.digest.clone(),
                actual,
            });
        }
        tmp.as_file()
            .sync_all()
            .map_err(|e| OciError::io(tmp.path(), e))?;
        tmp.persist(&dest)
            .map_err(|e| OciError::io(&dest, e.error))?;
        Ok(PutOutcome::Uploaded)
    }

    /// Reads a whole blob into memory, verifying digest and size (for manifests and configs).
    pub fn read_blob(&self, desc: &Descriptor) -> Result<Vec<u8>, OciError> {
        let path = self.blob_path(&desc.digest);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(OciError::BlobMissing {
                    digest: desc.digest.clone(),
                })
            }
            Err(e) => return Err(OciError::io(&path, e)),
        };
        if bytes.len() as u64 != desc.size {
            return Err(OciError::SizeMismatch {
                digest: desc.digest.clone(),
                expected: desc.size,
                actual: bytes.len() as u64,
            });
        }
        let actual = Digest::of(&bytes);
        if actual != desc.digest {
            return Err(OciError::DigestMismatch {
                expected: desc.digest.clone(),
                actual,
            });
        }
        Ok(bytes)
    }

    /// The parsed `index.json`.
    pub fn index(&self) -> Result<Index, OciError> {
        let path = self.index_path();
        let bytes = fs::read(&path).map_err(|e| OciError::io(&path, e))?;
        match parse_manifest(&bytes, Some(media_type::OCI_INDEX)) {
            Ok(ManifestKind::Index(i)) => Ok(i),
            Ok(ManifestKind::Image(_)) => Err(OciError::malformed("index.json", "not an index")),
            Err(OciError::Malformed { reason, .. }) => {
                Err(OciError::malformed("index.json", reason))
            }
            Err(e) => Err(e),
        }
    }

    fn write_index(&self, index: &Index) -> Result<(), OciError> {
        self.write_atomic(&self.index_path(), &index.to_json())
    }

    /// Adds `desc` to `index.json` under the name `tag` (annotation
    /// `org.opencontainers.image.ref.name`), replacing any entry that had that name.
    pub fn tag(&self, desc: &Descriptor, tag: &str) -> Result<(), OciError> {
        let mut index = self.index()?;
        index
            .manifests
            .retain(|d| d.annotation(REF_NAME_ANNOTATION) != Some(tag));
        let mut entry = desc.clone();
        entry
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(REF_NAME_ANNOTATION.to_string(), tag.to_string());
        index.manifests.push(entry);
        self.write_index(&index)
    }

    /// Finds the `index.json` entry named `tag`; without a tag, the only entry, or else the
    /// one named `latest`.
    pub fn resolve(&self, tag: Option<&str>) -> Result<Descriptor, OciError> {
        let index = self.index()?;
        let found = match tag {
            Some(t) => index
                .manifests
                .iter()
                .find(|d| d.annotation(REF_NAME_ANNOTATION) == Some(t)),
            None if index.manifests.len() == 1 => index.manifests.first(),
            None => index
                .manifests
                .iter()
                .find(|d| d.annotation(REF_NAME_ANNOTATION) == Some("latest")),
        };
        found.cloned().ok_or_else(|| OciError::NotFound {
            what: format!(
                "tag {:?} in OCI layout {}",
                tag.unwrap_or("latest"),
                self.root.display()
            ),
        })
    }
}

/// Reads one image from an OCI layout.
#[derive(Debug)]
pub(crate) struct LayoutSource {
    pub(crate) dir: OciDir,
    pub(crate) tag: Option<String>,
    pub(crate) platform: Platform,
}

#[async_trait]
impl ImageSource for LayoutSource {
    async fn image(&self) -> Result<PulledImage, OciError> {
        let dir = self.dir.clone();
        let tag = self.tag.clone();
        let platform = self.platform.clone();
        let load = move || -> Result<(Vec<u8>, String, crate::Manifest), OciError> {
            let mut desc = dir.resolve(tag.as_deref())?;
            // Follow at most one level of index, as registries do.
            for _ in 0..2 {
                if desc.size > MAX_DOCUMENT_SIZE {
                    return Err(OciError::Unsupported {
                        what: "document size",
                        value: desc.size.to_string(),
                    });
                }
                let bytes = dir.read_blob(&desc)?;
                match parse_manifest(&bytes, Some(&desc.media_type))? {
                    ManifestKind::Image(m) => {
                        let mt = m.media_type.clone().unwrap_or(desc.media_type.clone());
                        return Ok((bytes, mt, m));
                    }
                    ManifestKind::Index(idx) => {
                        desc = idx.find_platform(&platform).cloned().ok_or_else(|| {
                            OciError::NotFound {
                                what: format!("platform {platform} in index {}", desc.digest),
                            }
                        })?;
                    }
                }
            }
            Err(OciError::Unsupported {
                what: "nested index",
                value: desc.digest.to_string(),
            })
        };
        let (bytes, mt, manifest) = tokio::task::spawn_blocking(load)
            .await
            .map_err(|e| OciError::Stream(std::io::Error::other(e)))??;
        crate::finish_image(self, bytes, mt, manifest).await
    }

    async fn blob(&self, desc: &Descriptor) -> Result<BlobReader, OciError> {
        let path = self.dir.blob_path(&desc.digest);
        match tokio::fs::File::open(&path).await {
            Ok(f) => Ok(crate::verify_reader(f, desc.digest.clone(), desc.size)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(OciError::BlobMissing {
                digest: desc.digest.clone(),
            }),
            Err(e) => Err(OciError::io(path, e)),
        }
    }
}

/// Writes one image into an OCI layout.
#[derive(Debug)]
pub(crate) struct LayoutSink {
    pub(crate) dir: OciDir,
    pub(crate) tag: String,
}

#[async_trait]
impl ImageSink for LayoutSink {
    async fn put_blob(&self, path: &Path, desc: &Descriptor) -> Result<PutOutcome, OciError> {
        let dir = self.dir.clone();
        let (path, desc) = (path.to_path_buf(), desc.clone());
        tokio::task::spawn_blocking(move || dir.import_blob(&path, &desc))
            .await
            .map_err(|e| OciError::Stream(std::io::Error::other(e)))?
    }

    async fn put_manifest(&self, bytes: &[u8], media_type: &str) -> Result<Digest, OciError> {
        parse_manifest(bytes, Some(media_type))?;
        let desc = self.dir.write_blob(media_type, bytes)?;
        self.dir.tag(&desc, &self.tag)?;
        Ok(desc.digest)
    }

    async fn put_child_manifest(&self, bytes: &[u8], media_type: &str) -> Result<Digest, OciError> {
        parse_manifest(bytes, Some(media_type))?;
        Ok(self.dir.write_blob(media_type, bytes)?.digest)
    }

    async fn finish(&self) -> Result<(), OciError> {
        Ok(())
    }
}
