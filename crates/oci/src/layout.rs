//! OCI image layout directories: [`OciDir`] plus the [`ImageSource`] / [`ImageSink`] over it.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use async_trait::async_trait;

use crate::digest::Hasher;
use crate::limits::{
    check_declared, read_capped, read_file_capped, MAX_CONFIG_SIZE, MAX_MANIFEST_SIZE,
};
use crate::types::{media_type, REF_NAME_ANNOTATION};
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
    ///
    /// A descriptor larger than [`MAX_CONFIG_SIZE`] is refused with [`OciError::TooLarge`]
    /// before anything is read, and at most `desc.size + 1` bytes are read: a file longer than
    /// its descriptor says is a [`OciError::SizeMismatch`] without being read whole.
    pub fn read_blob(&self, desc: &Descriptor) -> Result<Vec<u8>, OciError> {
        check_declared("blob read into memory", desc.size, MAX_CONFIG_SIZE)?;
        let path = self.blob_path(&desc.digest);
        let file = match fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(OciError::BlobMissing {
                    digest: desc.digest.clone(),
                })
            }
            Err(e) => return Err(OciError::io(&path, e)),
        };
        let bytes = match read_capped(file, "blob", desc.size, |e| OciError::io(&path, e)) {
            Err(OciError::TooLarge { .. }) => {
                return Err(OciError::SizeMismatch {
                    digest: desc.digest.clone(),
                    expected: desc.size,
                    actual: desc.size + 1,
                })
            }
            other => other?,
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

    /// The parsed `index.json`; one larger than [`MAX_MANIFEST_SIZE`] is refused with
    /// [`OciError::TooLarge`] after reading at most one byte more than the cap.
    pub fn index(&self) -> Result<Index, OciError> {
        let bytes = read_file_capped(&self.index_path(), "index.json", MAX_MANIFEST_SIZE)?;
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
                check_declared("manifest", desc.size, MAX_MANIFEST_SIZE)?;
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
///
/// A layout that does not exist yet is staged: it is written to a hidden
/// `.NAME.partial-XXXXXX` directory beside it and renamed into place by
/// [`ImageSink::finish`], so a failed or abandoned write leaves nothing under the name (the
/// staging directory is removed when the sink is dropped). An existing layout is written in
/// place: blobs first, each atomically, then `index.json` atomically; a failure can leave
/// unreferenced blobs, never a tag pointing at an incomplete image.
#[derive(Debug)]
pub(crate) struct LayoutSink {
    pub(crate) dir: OciDir,
    pub(crate) tag: String,
    /// For a new layout: the staging directory and where it goes on `finish`.
    staged: std::sync::Mutex<Option<(tempfile::TempDir, PathBuf)>>,
}

impl LayoutSink {
    pub(crate) fn open(path: &Path, tag: String) -> Result<Self, OciError> {
        if fs::symlink_metadata(path).is_ok() {
            return Ok(LayoutSink {
                dir: OciDir::create(path)?,
                tag,
                staged: std::sync::Mutex::new(None),
            });
        }
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        fs::create_dir_all(&parent).map_err(|e| OciError::io(&parent, e))?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "layout".into());
        let staging = tempfile::Builder::new()
            .prefix(&format!(".{name}.partial-"))
            .tempdir_in(&parent)
            .map_err(|e| OciError::io(&parent, e))?;
        // Temporary directories are private (0700); the layout gets the usual mode.
        let mode = std::os::unix::fs::PermissionsExt::from_mode(0o755);
        fs::set_permissions(staging.path(), mode).map_err(|e| OciError::io(staging.path(), e))?;
        Ok(LayoutSink {
            dir: OciDir::create(staging.path())?,
            tag,
            staged: std::sync::Mutex::new(Some((staging, path.to_path_buf()))),
        })
    }
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
        let staged = self.staged.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some((staging, dest)) = staged {
            if fs::symlink_metadata(&dest).is_ok() {
                // Created by someone else meanwhile: never merge into or replace it.
                return Err(OciError::io(
                    &dest,
                    std::io::Error::from(std::io::ErrorKind::AlreadyExists),
                ));
            }
            let staging = staging.keep();
            if let Err(e) = fs::rename(&staging, &dest) {
                let _ = fs::remove_dir_all(&staging);
                return Err(OciError::io(&dest, e));
            }
        }
        Ok(())
    }
}
