//! Image manifests written by the engine (delta images and rebuilt targets).

use bru_oci::{media_type, Descriptor};
use serde::Serialize;

/// Which manifest flavour to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// Docker schema 2 (what balena-engine pushes and every balenaOS engine pulls).
    #[default]
    Docker,
    /// OCI image manifest (also accepted by balena-engine's pull path).
    Oci,
}

impl Format {
    /// Media type of the manifest.
    pub fn manifest_type(self) -> &'static str {
        match self {
            Format::Docker => media_type::DOCKER_MANIFEST,
            Format::Oci => media_type::OCI_MANIFEST,
        }
    }

    /// Media type of the config blob.
    pub fn config_type(self) -> &'static str {
        match self {
            Format::Docker => media_type::DOCKER_CONFIG,
            Format::Oci => media_type::OCI_CONFIG,
        }
    }

    /// Media type of a gzip-compressed layer.
    pub fn gzip_layer_type(self) -> &'static str {
        match self {
            Format::Docker => media_type::DOCKER_LAYER_GZIP,
            Format::Oci => media_type::OCI_LAYER_GZIP,
        }
    }

    /// Media type of an uncompressed layer.
    pub fn tar_layer_type(self) -> &'static str {
        match self {
            Format::Docker => media_type::DOCKER_LAYER_TAR,
            Format::Oci => media_type::OCI_LAYER_TAR,
        }
    }

    /// The equivalent of a layer media type from another flavour.
    pub(crate) fn layer_type_like(self, original: &str) -> String {
        if original.ends_with("gzip") {
            self.gzip_layer_type().to_owned()
        } else if original.ends_with(".tar") {
            self.tar_layer_type().to_owned()
        } else {
            original.to_owned()
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ManifestOut<'a> {
    schema_version: u32,
    media_type: &'a str,
    config: &'a Descriptor,
    layers: &'a [Descriptor],
}

/// Serializes a manifest; returns its bytes and media type.
pub(crate) fn manifest_bytes(
    format: Format,
    config: &Descriptor,
    layers: &[Descriptor],
) -> (Vec<u8>, &'static str) {
    let out = ManifestOut {
        schema_version: 2,
        media_type: format.manifest_type(),
        config,
        layers,
    };
    // A struct of strings and integers always serializes.
    let bytes = serde_json::to_vec_pretty(&out).unwrap_or_default();
    (bytes, format.manifest_type())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_parses_back_with_the_same_layers() {
        let config = Descriptor::of_bytes(Format::Docker.config_type(), b"{}");
        let layers = vec![
            Descriptor::of_bytes(Format::Docker.gzip_layer_type(), b"a"),
            Descriptor::of_bytes(Format::Docker.gzip_layer_type(), b"b"),
        ];
        for format in [Format::Docker, Format::Oci] {
            let (bytes, mt) = manifest_bytes(format, &config, &layers);
            let parsed = bru_oci::parse_manifest(&bytes, Some(mt)).unwrap();
            let text = String::from_utf8(bytes).unwrap();
            assert!(text.contains("\"schemaVersion\": 2"), "{text}");
            match parsed {
                bru_oci::ManifestKind::Image(m) => {
                    assert_eq!(m.layers, layers);
                    assert_eq!(m.config, config);
                }
                other => panic!("not a manifest: {other:?}"),
            }
        }
    }

    #[test]
    fn layer_types_translate_between_flavours() {
        assert_eq!(
            Format::Oci.layer_type_like(media_type::DOCKER_LAYER_GZIP),
            media_type::OCI_LAYER_GZIP
        );
        assert_eq!(
            Format::Docker.layer_type_like(media_type::OCI_LAYER_TAR),
            media_type::DOCKER_LAYER_TAR
        );
        assert_eq!(
            Format::Docker.layer_type_like(media_type::OCI_LAYER_ZSTD),
            media_type::OCI_LAYER_ZSTD
        );
    }
}
