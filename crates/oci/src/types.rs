//! Manifest, index and config documents, and the media types that name them.
//!
//! Only the fields this project needs are parsed; the raw bytes are always kept next to the
//! parsed form, and nothing is ever re-serialized from it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{Digest, OciError};

/// Media type constants.
pub mod media_type {
    /// Docker image manifest, schema 2.
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    /// Docker manifest list.
    pub const DOCKER_MANIFEST_LIST: &str =
        "application/vnd.docker.distribution.manifest.list.v2+json";
    /// Docker image config.
    pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
    /// Docker gzip-compressed layer.
    pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
    /// Docker uncompressed layer (used for layers read from `docker save` archives).
    pub const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";
    /// Docker schema 1 manifest (recognised only to reject it).
    pub const DOCKER_MANIFEST_V1: &str = "application/vnd.docker.distribution.manifest.v1+json";
    /// Signed Docker schema 1 manifest (recognised only to reject it).
    pub const DOCKER_MANIFEST_V1_SIGNED: &str =
        "application/vnd.docker.distribution.manifest.v1+prettyjws";
    /// OCI image manifest.
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    /// OCI image index.
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    /// OCI image config.
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    /// OCI uncompressed layer.
    pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
    /// OCI gzip-compressed layer.
    pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    /// OCI zstd-compressed layer.
    pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

    /// True for an image manifest media type (Docker schema 2 or OCI).
    pub fn is_manifest(mt: &str) -> bool {
        mt == DOCKER_MANIFEST || mt == OCI_MANIFEST
    }

    /// True for an index / manifest list media type.
    pub fn is_index(mt: &str) -> bool {
        mt == DOCKER_MANIFEST_LIST || mt == OCI_INDEX
    }
}

/// The annotation that names a manifest in an OCI layout's `index.json`.
pub const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";

/// A content descriptor: media type, digest and size of a blob or manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// The media type of the referenced content.
    pub media_type: String,
    /// The digest of the referenced content.
    pub digest: Digest,
    /// The size in bytes of the referenced content.
    pub size: u64,
    /// Optional annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    /// The platform (only in index entries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

impl Descriptor {
    /// A descriptor of `bytes` with the given media type.
    pub fn of_bytes(media_type: &str, bytes: &[u8]) -> Self {
        Descriptor {
            media_type: media_type.to_string(),
            digest: Digest::of(bytes),
            size: bytes.len() as u64,
            annotations: None,
            platform: None,
        }
    }

    /// The value of an annotation, if present.
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.as_ref()?.get(key).map(String::as_str)
    }
}

/// A platform: operating system, CPU architecture and optional variant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    /// CPU architecture, e.g. `amd64`, `arm64`, `arm`.
    pub architecture: String,
    /// Operating system, e.g. `linux`.
    pub os: String,
    /// CPU variant, e.g. `v7` for `arm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Default for Platform {
    /// `linux/amd64`.
    fn default() -> Self {
        Platform {
            architecture: "amd64".into(),
            os: "linux".into(),
            variant: None,
        }
    }
}

impl Platform {
    /// True when `candidate` (from an index entry) satisfies this wanted platform. A wanted
    /// variant must match exactly; without one, any variant is accepted.
    pub fn matches(&self, candidate: &Platform) -> bool {
        self.os == candidate.os
            && self.architecture == candidate.architecture
            && (self.variant.is_none() || self.variant == candidate.variant)
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// An image manifest (Docker schema 2 or OCI): one config and the layers, bottom first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Always 2.
    pub schema_version: u32,
    /// The manifest's own media type, when it states one (OCI makes it optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The config blob.
    pub config: Descriptor,
    /// The layer blobs, bottom layer first.
    pub layers: Vec<Descriptor>,
    /// Optional annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

impl Manifest {
    /// A new manifest document with the given media type (Docker schema 2 or OCI).
    pub fn new(media_type: &str, config: Descriptor, layers: Vec<Descriptor>) -> Self {
        Manifest {
            schema_version: 2,
            media_type: Some(media_type.to_string()),
            config,
            layers,
            annotations: None,
        }
    }

    /// Serializes a newly built manifest to JSON bytes.
    pub fn to_json(&self) -> Vec<u8> {
        // Serializing these plain structs cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// An OCI image index or Docker manifest list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    /// Always 2.
    pub schema_version: u32,
    /// The index's own media type, when it states one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The entries.
    pub manifests: Vec<Descriptor>,
    /// Optional annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

impl Index {
    /// An empty OCI index.
    pub fn new_oci() -> Self {
        Index {
            schema_version: 2,
            media_type: Some(media_type::OCI_INDEX.to_string()),
            manifests: Vec::new(),
            annotations: None,
        }
    }

    /// Serializes a newly built index to JSON bytes.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The entry for `platform`, if there is one.
    pub fn find_platform(&self, platform: &Platform) -> Option<&Descriptor> {
        self.manifests
            .iter()
            .find(|d| d.platform.as_ref().is_some_and(|p| platform.matches(p)))
    }
}

/// A parsed manifest-like document: either an image manifest or an index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManifestKind {
    /// An image manifest.
    Image(Manifest),
    /// An index or manifest list.
    Index(Index),
}

/// Parses manifest bytes, deciding the kind from the `Content-Type` (if known), else from the
/// document's `mediaType`, else from its shape. Schema 1 manifests are rejected.
pub fn parse_manifest(bytes: &[u8], content_type: Option<&str>) -> Result<ManifestKind, OciError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        schema_version: Option<serde_json::Value>,
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
    }
    let probe: Probe =
        serde_json::from_slice(bytes).map_err(|e| OciError::malformed("manifest", e))?;
    let content_type = content_type
        .map(|c| c.split(';').next().unwrap_or(c).trim())
        .filter(|c| media_type::is_manifest(c) || media_type::is_index(c));
    let mt = content_type
        .or(probe.media_type.as_deref())
        .map(str::to_string);
    if probe.schema_version != Some(serde_json::Value::from(2)) {
        return Err(OciError::Unsupported {
            what: "manifest schema version",
            value: probe
                .schema_version
                .map(|v| v.to_string())
                .unwrap_or_else(|| "missing".into()),
        });
    }
    let is_index = match mt.as_deref() {
        Some(m) if media_type::is_index(m) => true,
        Some(m) if media_type::is_manifest(m) => false,
        Some(m) => {
            return Err(OciError::Unsupported {
                what: "manifest media type",
                value: m.to_string(),
            })
        }
        None => probe.manifests.is_some(),
    };
    if is_index {
        serde_json::from_slice(bytes)
            .map(ManifestKind::Index)
            .map_err(|e| OciError::malformed("index", e))
    } else {
        serde_json::from_slice(bytes)
            .map(ManifestKind::Image)
            .map_err(|e| OciError::malformed("manifest", e))
    }
}

/// The fields of an image config this project needs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ImageConfig {
    /// `rootfs.diff_ids`: digests of the uncompressed layer tars, bottom first.
    pub diff_ids: Vec<Digest>,
    /// `architecture`, if present (delta images omit it).
    pub architecture: Option<String>,
    /// `os`, if present (delta images omit it).
    pub os: Option<String>,
    /// `config.Labels` (empty when absent or null).
    pub labels: BTreeMap<String, String>,
}

impl ImageConfig {
    /// Parses the fields of an image config JSON document.
    pub fn parse(bytes: &[u8]) -> Result<Self, OciError> {
        #[derive(Deserialize)]
        struct RootFs {
            #[serde(default)]
            diff_ids: Vec<Digest>,
        }
        #[derive(Deserialize)]
        struct Inner {
            #[serde(rename = "Labels", default)]
            labels: Option<BTreeMap<String, String>>,
        }
        #[derive(Deserialize)]
        struct Raw {
            rootfs: RootFs,
            #[serde(default)]
            architecture: Option<String>,
            #[serde(default)]
            os: Option<String>,
            #[serde(default)]
            config: Option<Inner>,
        }
        let raw: Raw =
            serde_json::from_slice(bytes).map_err(|e| OciError::malformed("image config", e))?;
        Ok(ImageConfig {
            diff_ids: raw.rootfs.diff_ids,
            architecture: raw.architecture,
            os: raw.os,
            labels: raw.config.and_then(|c| c.labels).unwrap_or_default(),
        })
    }
}

/// An image as read from any transport: raw manifest and config bytes plus their parsed form.
#[derive(Debug, Clone)]
pub struct PulledImage {
    /// The manifest exactly as stored (never re-serialized).
    pub manifest_bytes: Vec<u8>,
    /// The manifest media type (Docker schema 2 or OCI).
    pub manifest_media_type: String,
    /// sha256 of `manifest_bytes`.
    pub manifest_digest: Digest,
    /// The parsed manifest.
    pub manifest: Manifest,
    /// The config blob exactly as stored.
    pub config_bytes: Vec<u8>,
    /// sha256 of `config_bytes`: the image ID.
    pub config_digest: Digest,
    /// The parsed config fields.
    pub config: ImageConfig,
}

impl PulledImage {
    /// Builds a pulled image from raw, already digest-checked manifest and config bytes.
    /// Checks that the config bytes match the manifest's config descriptor and that the
    /// layer count equals the number of diff_ids.
    pub(crate) fn from_parts(
        manifest_bytes: Vec<u8>,
        manifest_media_type: String,
        manifest: Manifest,
        config_bytes: Vec<u8>,
    ) -> Result<Self, OciError> {
        let config_digest = Digest::of(&config_bytes);
        if config_digest != manifest.config.digest {
            return Err(OciError::DigestMismatch {
                expected: manifest.config.digest.clone(),
                actual: config_digest,
            });
        }
        if config_bytes.len() as u64 != manifest.config.size {
            return Err(OciError::SizeMismatch {
                digest: config_digest,
                expected: manifest.config.size,
                actual: config_bytes.len() as u64,
            });
        }
        let config = ImageConfig::parse(&config_bytes)?;
        if config.diff_ids.len() != manifest.layers.len() {
            return Err(OciError::malformed(
                "image",
                format!(
                    "manifest has {} layers but config has {} diff_ids",
                    manifest.layers.len(),
                    config.diff_ids.len()
                ),
            ));
        }
        Ok(PulledImage {
            manifest_digest: Digest::of(&manifest_bytes),
            manifest_bytes,
            manifest_media_type,
            manifest,
            config_bytes,
            config_digest,
            config,
        })
    }

    /// The image ID (the config digest).
    pub fn image_id(&self) -> &Digest {
        &self.config_digest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: &str = r#"{"architecture":"arm","os":"linux","config":{"Labels":{"a":"b"}},"rootfs":{"type":"layers","diff_ids":["sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"]}}"#;

    #[test]
    fn parses_config_fields() {
        let c = ImageConfig::parse(CFG.as_bytes()).unwrap();
        assert_eq!(c.architecture.as_deref(), Some("arm"));
        assert_eq!(c.labels.get("a").map(String::as_str), Some("b"));
        assert_eq!(c.diff_ids, vec![Digest::of(b"")]);
        let c = ImageConfig::parse(
            br#"{"config":{"Labels":null},"rootfs":{"type":"layers","diff_ids":[]}}"#,
        )
        .unwrap();
        assert!(c.labels.is_empty() && c.os.is_none());
    }

    #[test]
    fn detects_manifest_kinds() {
        let d = Descriptor::of_bytes(media_type::DOCKER_CONFIG, CFG.as_bytes());
        let m = Manifest::new(media_type::DOCKER_MANIFEST, d.clone(), vec![]);
        assert_eq!(
            parse_manifest(&m.to_json(), None).unwrap(),
            ManifestKind::Image(m.clone())
        );
        let mut idx = Index::new_oci();
        idx.media_type = None;
        idx.manifests.push(d);
        assert!(matches!(
            parse_manifest(&idx.to_json(), None).unwrap(),
            ManifestKind::Index(_)
        ));
        assert!(matches!(
            parse_manifest(&idx.to_json(), Some(media_type::OCI_INDEX)).unwrap(),
            ManifestKind::Index(_)
        ));
    }

    #[test]
    fn rejects_bad_manifests() {
        let cases: &[&[u8]] = &[
            b"",
            b"{",
            b"[]",
            br#"{"schemaVersion":1,"fsLayers":[]}"#,
            br#"{"schemaVersion":2}"#,
            br#"{"schemaVersion":2,"config":{"mediaType":"x","digest":"sha256:00","size":1},"layers":[]}"#,
            br#"{"schemaVersion":2,"config":{"mediaType":"x","digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","size":-1},"layers":[]}"#,
            br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v1+json"}"#,
        ];
        for c in cases {
            let r = parse_manifest(c, None);
            assert!(
                matches!(
                    r,
                    Err(OciError::Malformed { .. } | OciError::Unsupported { .. })
                ),
                "{:?} gave {r:?}",
                String::from_utf8_lossy(c)
            );
        }
    }
}
