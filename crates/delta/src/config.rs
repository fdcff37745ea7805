//! The configuration blob of a delta image and its two labels.
//!
//! balena-engine recognises a delta image by two labels in `config.Labels`:
//! `io.resin.delta.base` (the source image ID, i.e. the digest of the source
//! config blob) and `io.resin.delta.config` (the verbatim target config JSON as
//! a string). The device discards the rest of the delta config.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Label naming the source image ID the delta applies to.
pub const LABEL_BASE: &str = "io.resin.delta.base";
/// Label holding the target image's config bytes.
pub const LABEL_CONFIG: &str = "io.resin.delta.config";

/// Errors reading or building a delta config.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The blob is not JSON of the expected shape.
    #[error("{what} is not a valid image config")]
    Malformed {
        /// Which config (source, target, delta).
        what: &'static str,
        /// The parser's complaint.
        #[source]
        source: serde_json::Error,
    },
    /// A required delta label is absent.
    #[error("image is not a balena delta: label {label} is missing")]
    MissingLabel {
        /// The label name.
        label: &'static str,
    },
    /// The target config is not UTF-8 and cannot travel as a JSON string label.
    #[error("target image config is not valid UTF-8")]
    TargetNotUtf8,
}

#[derive(Deserialize)]
struct PlatformFields {
    architecture: Option<String>,
    os: Option<String>,
    variant: Option<String>,
    created: Option<String>,
}

// Field order below is alphabetical, as balena-engine writes its configs.
#[derive(Serialize)]
struct DeltaConfigOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    architecture: Option<&'a str>,
    config: LabelsOut<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    created: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    os: Option<&'a str>,
    rootfs: RootFsOut<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    variant: Option<&'a str>,
}

#[derive(Serialize)]
struct LabelsOut<'a> {
    #[serde(rename = "Labels")]
    labels: BTreeMap<&'static str, &'a str>,
}

#[derive(Serialize)]
struct RootFsOut<'a> {
    diff_ids: &'a [String],
    #[serde(rename = "type")]
    kind: &'static str,
}

/// Builds the config blob of a delta image.
///
/// `source_image_id` is the digest of the source config blob; `target_config`
/// the target's raw config bytes (copied verbatim into the label);
/// `delta_diff_ids` the DiffIDs of the delta image's own layer tars. Platform
/// fields and `created` are copied from the target so the output is
/// reproducible and tools that insist on a platform are satisfied.
pub fn delta_config(
    source_image_id: &str,
    target_config: &[u8],
    delta_diff_ids: &[String],
) -> Result<Vec<u8>, ConfigError> {
    let target_text = std::str::from_utf8(target_config).map_err(|_| ConfigError::TargetNotUtf8)?;
    let target: PlatformFields =
        serde_json::from_slice(target_config).map_err(|source| ConfigError::Malformed {
            what: "target config",
            source,
        })?;
    let out = DeltaConfigOut {
        architecture: target.architecture.as_deref(),
        config: LabelsOut {
            labels: BTreeMap::from([(LABEL_BASE, source_image_id), (LABEL_CONFIG, target_text)]),
        },
        created: target.created.as_deref(),
        os: target.os.as_deref(),
        rootfs: RootFsOut {
            diff_ids: delta_diff_ids,
            kind: "layers",
        },
        variant: target.variant.as_deref(),
    };
    // Serializing plain structs of strings cannot fail.
    serde_json::to_vec(&out).map_err(|source| ConfigError::Malformed {
        what: "delta config",
        source,
    })
}

/// The labels of a delta image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeltaLabels {
    /// `io.resin.delta.base`: the source image ID (`sha256:<hex>`).
    pub base: String,
    /// `io.resin.delta.config`: the target config bytes.
    pub target_config: Vec<u8>,
}

/// Reads the delta labels from an image's `config.Labels`.
pub fn delta_labels(labels: &BTreeMap<String, String>) -> Result<DeltaLabels, ConfigError> {
    let base = labels
        .get(LABEL_BASE)
        .ok_or(ConfigError::MissingLabel { label: LABEL_BASE })?;
    let target = labels.get(LABEL_CONFIG).ok_or(ConfigError::MissingLabel {
        label: LABEL_CONFIG,
    })?;
    Ok(DeltaLabels {
        base: base.clone(),
        target_config: target.clone().into_bytes(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TARGET: &[u8] = br#"{"architecture":"arm64","os":"linux","created":"2024-01-02T03:04:05Z","config":{"Env":["A=\"b\""]},"rootfs":{"type":"layers","diff_ids":["sha256:11","sha256:22"]}}"#;

    #[test]
    fn delta_config_carries_labels_verbatim_and_sorted_keys() {
        let ids = vec!["sha256:aa".to_owned(), "sha256:bb".to_owned()];
        let raw = delta_config("sha256:base", TARGET, &ids).unwrap();
        let text = String::from_utf8(raw.clone()).unwrap();
        assert!(text.starts_with(r#"{"architecture":"arm64","config":{"Labels":{"io.resin.delta.base":"sha256:base","io.resin.delta.config":"#), "{text}");
        assert!(text.ends_with(r#""created":"2024-01-02T03:04:05Z","os":"linux","rootfs":{"diff_ids":["sha256:aa","sha256:bb"],"type":"layers"}}"#), "{text}");
        let labels = delta_labels(&labels_of(&raw)).unwrap();
        assert_eq!(labels.base, "sha256:base");
        assert_eq!(
            labels.target_config, TARGET,
            "target config must survive byte for byte"
        );
    }

    fn labels_of(raw: &[u8]) -> BTreeMap<String, String> {
        let v: serde_json::Value = serde_json::from_slice(raw).unwrap();
        serde_json::from_value(v["config"]["Labels"].clone()).unwrap_or_default()
    }

    #[test]
    fn non_delta_configs_are_rejected_with_the_missing_label() {
        let err = delta_labels(&labels_of(TARGET)).unwrap_err();
        assert!(
            matches!(err, ConfigError::MissingLabel { label: LABEL_BASE }),
            "{err}"
        );
        let only_base = br#"{"config":{"Labels":{"io.resin.delta.base":"sha256:x"}}}"#;
        let err = delta_labels(&labels_of(only_base)).unwrap_err();
        assert!(
            matches!(
                err,
                ConfigError::MissingLabel {
                    label: LABEL_CONFIG
                }
            ),
            "{err}"
        );
        assert!(matches!(
            delta_config("sha256:x", b"\xff\xfe", &[]),
            Err(ConfigError::TargetNotUtf8)
        ));
        assert!(matches!(
            delta_config("sha256:x", b"nope", &[]),
            Err(ConfigError::Malformed { .. })
        ));
    }
}
