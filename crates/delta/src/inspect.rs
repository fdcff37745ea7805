//! Describing a delta image without applying it.

use bru_oci::{Digest, ImageSource};

use crate::config::delta_labels;
use crate::create::{DeltaInfo, LayerInfo, LayerKind};
use crate::error::{DeltaError, Role};
use crate::layer::EMPTY_TAR_DIFF_ID;

/// Reads a delta image's manifest and config and describes its layers.
///
/// A layer whose DiffID (from the delta config) is the empty tar's counts as
/// `common`. Fails if the image is not a balena delta or its layer count does
/// not match the target it rebuilds.
pub async fn inspect(delta: &dyn ImageSource) -> Result<DeltaInfo, DeltaError> {
    let d = delta.image().await.map_err(|source| DeltaError::Image {
        role: Role::Delta,
        source,
    })?;
    let labels = delta_labels(&d.config.labels)?;
    let target_image_id = Digest::of(&labels.target_config);
    let target =
        bru_oci::ImageConfig::parse(&labels.target_config).map_err(|source| DeltaError::Image {
            role: Role::Target,
            source,
        })?;
    if target.diff_ids.len() != d.manifest.layers.len() {
        return Err(DeltaError::LayerCount {
            role: Role::Delta,
            layers: d.manifest.layers.len(),
            diff_ids: target.diff_ids.len(),
        });
    }
    let layers = d
        .manifest
        .layers
        .iter()
        .enumerate()
        .map(|(index, desc)| {
            let empty = d
                .config
                .diff_ids
                .get(index)
                .is_some_and(|id| id.to_string() == EMPTY_TAR_DIFF_ID);
            let kind = if empty {
                LayerKind::Common
            } else {
                LayerKind::Delta
            };
            LayerInfo::without_stats(index, kind, desc)
        })
        .collect();
    Ok(DeltaInfo::new(
        d.manifest_digest.clone(),
        labels.base,
        target_image_id,
        d.manifest.config.size,
        layers,
    ))
}
