//! The JSON report, field for field as `@balena/release-update` prints it.
//!
//! Serialising an [`UpdateInfo`] with `serde_json` gives the original's key names and key
//! order. One key is new: `removes__service`, the services that exist only in the source
//! release. It is appended last so that existing consumers are unaffected.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Readiness of one service update or of the whole update, ordered
/// `pending < preparing < ready`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpdateStatus {
    /// No usable delta exists yet (never requested, failed, or stale).
    Pending,
    /// A delta is being built.
    Preparing,
    /// Everything needed for the update exists.
    Ready,
}

impl fmt::Display for UpdateStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            UpdateStatus::Pending => "pending",
            UpdateStatus::Preparing => "preparing",
            UpdateStatus::Ready => "ready",
        })
    }
}

/// The update from one release to another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateInfo {
    /// The source release.
    #[serde(rename = "originates_from__release")]
    pub from_release: ReleaseInfo,
    /// The target release.
    #[serde(rename = "produces__release")]
    pub to_release: ReleaseInfo,
    /// One entry per service of the target release, sorted by service name.
    #[serde(rename = "is_produced_by__service_update")]
    pub service_updates: Vec<ServiceUpdate>,
    /// The lowest status of all service updates (`ready` when there are none).
    pub overall_status: UpdateStatus,
    /// Bytes a device downloads for the update; present only when `overall_status` is
    /// `ready`. Each service counts its delta size if a delta is used, 0 if the image is
    /// unchanged, and the full target image size otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimated_total_payload_size: Option<u64>,
    /// Services of the source release that the target release no longer has.
    #[serde(rename = "removes__service", default)]
    pub removed_services: Vec<RemovedService>,
}

/// A release, as shown in the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseInfo {
    /// Release id.
    pub id: u64,
    /// Full commit hash.
    pub commit: String,
}

/// The update of one service of the target release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceUpdate {
    /// Service name.
    pub service_name: String,
    /// Readiness of this service.
    pub status: UpdateStatus,
    /// The image of the service in the source release; absent for a new service.
    #[serde(
        rename = "originates_from__image",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub from_image: Option<ImageInfo>,
    /// The image of the service in the target release.
    #[serde(rename = "produces__image")]
    pub to_image: ProducedImage,
}

/// An image, as shown in the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInfo {
    /// Image id.
    pub id: u64,
    /// Registry location.
    #[serde(rename = "is_stored_at__image_location")]
    pub location: String,
    /// Content hash, `null` when unknown.
    pub content_hash: Option<String>,
    /// Size in bytes.
    pub image_size: u64,
}

/// The target image of a service update, with the delta that produces it when one is ready.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducedImage {
    /// Image id.
    pub id: u64,
    /// Registry location.
    #[serde(rename = "is_stored_at__image_location")]
    pub location: String,
    /// Content hash, `null` when unknown.
    pub content_hash: Option<String>,
    /// Size in bytes.
    pub image_size: u64,
    /// The successful delta from the source image; absent unless the delta is ready.
    #[serde(
        rename = "is_produced_by__delta",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub delta: Option<DeltaInfo>,
}

/// A successful delta, as shown in the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeltaInfo {
    /// Delta id.
    pub id: u64,
    /// Delta format version.
    pub version: u32,
    /// Registry location of the delta image, `null` when unknown.
    #[serde(rename = "is_stored_at__location")]
    pub location: Option<String>,
    /// Size in bytes.
    pub size: u64,
}

/// A service that exists only in the source release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemovedService {
    /// Service name.
    pub service_name: String,
    /// The image of the service in the source release.
    #[serde(rename = "originates_from__image")]
    pub from_image: ImageInfo,
}

impl From<crate::Image> for ImageInfo {
    fn from(image: crate::Image) -> Self {
        ImageInfo {
            id: image.id,
            location: image.location,
            content_hash: image.content_hash,
            image_size: image.size,
        }
    }
}

impl From<crate::Delta> for DeltaInfo {
    fn from(delta: crate::Delta) -> Self {
        DeltaInfo {
            id: delta.id,
            version: delta.version,
            location: delta.location,
            size: delta.size,
        }
    }
}
