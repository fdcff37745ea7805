//! Building small images from uncompressed layer tars: for tests of this crate and of the
//! crates that use it.
//!
//! ```
//! # fn main() -> Result<(), bru_oci::OciError> {
//! use bru_oci::{tar_of, ImageSpec, OciDir};
//! let tmp = tempfile::tempdir().unwrap();
//! let dir = OciDir::create(tmp.path())?;
//! let spec = ImageSpec::new(vec![
//!     tar_of(&[("etc/hostname", b"device\n")]),
//!     tar_of(&[("app/main.js", b"console.log(1)\n")]),
//! ]);
//! let written = dir.write_image("v1", &spec)?;
//! assert_eq!(written.layers.len(), 2);
//! assert_eq!(dir.resolve(Some("v1"))?.digest, written.manifest.digest);
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::io::Write;

use crate::{media_type, Descriptor, Digest, Manifest, OciDir, OciError};

/// The manifest and media-type flavour of an image built by [`OciDir::write_image`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ManifestFormat {
    /// Docker schema 2 manifest, Docker config and gzip layer media types (what balena pushes).
    #[default]
    Docker,
    /// OCI manifest, config and layer media types.
    Oci,
}

/// Description of an image to build: uncompressed layer tars (bottom first) and config fields.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    /// Uncompressed layer tars, bottom first. Each is gzipped into a layer blob; its sha256 is
    /// the diff_id.
    pub layers: Vec<Vec<u8>>,
    /// `config.Labels`.
    pub labels: BTreeMap<String, String>,
    /// `architecture` (omitted from the config when `None`).
    pub architecture: Option<String>,
    /// `os` (omitted from the config when `None`).
    pub os: Option<String>,
    /// Docker or OCI media types.
    pub format: ManifestFormat,
}

impl ImageSpec {
    /// A linux/amd64 Docker-format image with these layers and no labels.
    pub fn new(layers: Vec<Vec<u8>>) -> Self {
        ImageSpec {
            layers,
            labels: BTreeMap::new(),
            architecture: Some("amd64".into()),
            os: Some("linux".into()),
            format: ManifestFormat::Docker,
        }
    }
}

/// What [`OciDir::write_image`] wrote.
#[derive(Debug, Clone)]
pub struct WrittenImage {
    /// The manifest's descriptor (as listed in `index.json`, without annotations).
    pub manifest: Descriptor,
    /// The config blob's descriptor; its digest is the image ID.
    pub config: Descriptor,
    /// The gzip layer blobs, bottom first.
    pub layers: Vec<Descriptor>,
    /// sha256 of each uncompressed layer tar.
    pub diff_ids: Vec<Digest>,
    /// The exact config bytes.
    pub config_bytes: Vec<u8>,
}

/// gzip-compresses `data` (deterministic: no file name, zero mtime).
pub fn gzip_bytes(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    // Writing into a Vec cannot fail.
    let _ = enc.write_all(data);
    enc.finish().unwrap_or_default()
}

/// A deterministic uncompressed tar of regular files (mode 0644, uid/gid 0, mtime 0), in the
/// given order. Paths longer than 100 bytes use GNU long-name entries. An entry whose path a
/// tar cannot hold (absolute, or containing `..`) is left out with a warning in the log.
pub fn tar_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        h.set_entry_type(tar::EntryType::Regular);
        // Writing into a Vec only fails for paths a tar cannot hold.
        if let Err(e) = b.append_data(&mut h, path, *data) {
            tracing::warn!(path, error = %e, "tar_of: entry left out");
        }
    }
    b.into_inner().unwrap_or_default()
}

impl OciDir {
    /// Builds an image from `spec` (gzipping each layer, computing diff_ids, writing config and
    /// manifest) and tags it `tag` in `index.json`.
    pub fn write_image(&self, tag: &str, spec: &ImageSpec) -> Result<WrittenImage, OciError> {
        let (manifest_mt, config_mt, layer_mt) = match spec.format {
            ManifestFormat::Docker => (
                media_type::DOCKER_MANIFEST,
                media_type::DOCKER_CONFIG,
                media_type::DOCKER_LAYER_GZIP,
            ),
            ManifestFormat::Oci => (
                media_type::OCI_MANIFEST,
                media_type::OCI_CONFIG,
                media_type::OCI_LAYER_GZIP,
            ),
        };
        let mut layers = Vec::new();
        let mut diff_ids = Vec::new();
        for tar in &spec.layers {
            diff_ids.push(Digest::of(tar));
            layers.push(self.write_blob(layer_mt, &gzip_bytes(tar))?);
        }
        let mut config = serde_json::Map::new();
        if let Some(a) = &spec.architecture {
            config.insert("architecture".into(), a.as_str().into());
        }
        config.insert(
            "config".into(),
            serde_json::json!({ "Labels": spec.labels }),
        );
        config.insert("created".into(), "1970-01-01T00:00:00Z".into());
        if let Some(o) = &spec.os {
            config.insert("os".into(), o.as_str().into());
        }
        config.insert(
            "rootfs".into(),
            serde_json::json!({ "type": "layers", "diff_ids": diff_ids }),
        );
        let config_bytes =
            serde_json::to_vec(&config).map_err(|e| OciError::malformed("image config", e))?;
        let config = self.write_blob(config_mt, &config_bytes)?;
        let manifest = Manifest::new(manifest_mt, config.clone(), layers.clone());
        let manifest = self.write_blob(manifest_mt, &manifest.to_json())?;
        self.tag(&manifest, tag)?;
        Ok(WrittenImage {
            manifest,
            config,
            layers,
            diff_ids,
            config_bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Golden bytes: tests in other crates rely on fixture images being stable.
    #[test]
    fn config_and_manifest_bytes_are_stable() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = OciDir::create(tmp.path()).unwrap();
        let mut spec = ImageSpec::new(vec![tar_of(&[("a", b"1")])]);
        spec.labels.insert("x".into(), "y".into());
        let w = dir.write_image("t", &spec).unwrap();
        assert_eq!(
            String::from_utf8(w.config_bytes.clone()).unwrap(),
            format!(
                r#"{{"architecture":"amd64","config":{{"Labels":{{"x":"y"}}}},"created":"1970-01-01T00:00:00Z","os":"linux","rootfs":{{"type":"layers","diff_ids":["{}"]}}}}"#,
                w.diff_ids[0]
            )
        );
        let manifest = String::from_utf8(dir.read_blob(&w.manifest).unwrap()).unwrap();
        assert_eq!(
            manifest,
            format!(
                r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"{}","digest":"{}","size":{}}},"layers":[{{"mediaType":"{}","digest":"{}","size":{}}}]}}"#,
                media_type::DOCKER_MANIFEST,
                media_type::DOCKER_CONFIG,
                w.config.digest,
                w.config.size,
                media_type::DOCKER_LAYER_GZIP,
                w.layers[0].digest,
                w.layers[0].size
            )
        );
        // The tar and gzip encodings themselves are deterministic.
        assert_eq!(tar_of(&[("a", b"1")]), tar_of(&[("a", b"1")]));
        assert_eq!(
            w.layers[0].digest,
            Digest::of(&gzip_bytes(&tar_of(&[("a", b"1")])))
        );
        assert_eq!(tar_of(&[("a", b"1")]).len(), 2048);
    }
}
