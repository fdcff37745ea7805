//! The record store: fleets, services, releases, images and delta rows.

use std::fmt::Debug;
use std::time::Duration;

use async_trait::async_trait;
use bru_core::retry::RetryPolicy;
use bru_delta::Bandwidth;
use serde::Serialize;

use crate::ServiceError;

/// Delta format version built by this service (balena-engine v3 deltas).
pub const DELTA_VERSION: u32 = 3;

/// An image of a service, as stored (balena's `image` resource).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageRecord {
    /// Image id.
    pub id: u64,
    /// Name of the service the image is a build of.
    pub service_name: String,
    /// The image reference as given (`oci:…`, `docker-archive:…` or `HOST/REPO…`).
    #[serde(rename = "is_stored_at__image_location")]
    pub location: String,
    /// Manifest digest (`sha256:…`).
    pub content_hash: String,
    /// Bytes a device downloads for a full pull: the config plus the compressed layers.
    pub image_size: u64,
    /// Always `success` for images imported through [`Store::add_release`].
    pub status: String,
}

/// A release with its images, one per service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReleaseRecord {
    /// Release id.
    pub id: u64,
    /// Fleet (application) id.
    pub fleet_id: u64,
    /// Fleet name.
    pub fleet: String,
    /// Full commit hash.
    pub commit: String,
    /// `success` for releases imported through [`Store::add_release`].
    pub status: String,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_at: i64,
    /// The images, sorted by service name.
    pub images: Vec<ImageRecord>,
}

/// An image to record with a new release: resolved facts about one service's image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewImage {
    /// Service name.
    pub service_name: String,
    /// The image reference as given.
    pub location: String,
    /// Manifest digest.
    pub content_hash: String,
    /// Config plus compressed layer bytes.
    pub image_size: u64,
}

pub use bru_core::DeltaStatus;

/// A delta row, shaped like balena's `delta` resource. Times are milliseconds since the
/// Unix epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeltaRecord {
    /// Delta id.
    pub id: u64,
    /// Source image id.
    #[serde(rename = "originates_from__image")]
    pub source_image: u64,
    /// Target image id.
    #[serde(rename = "produces__image")]
    pub target_image: u64,
    /// Delta format version.
    pub version: u32,
    /// Build status.
    pub status: DeltaStatus,
    /// Where the delta image is (`HOST/REPO:delta-…` or `oci:DIR:delta-…`), once built.
    #[serde(rename = "is_stored_at__location")]
    pub location: Option<String>,
    /// Compressed bytes a device downloads for the delta (config plus delta layers).
    pub size: Option<u64>,
    /// Why the build failed.
    pub error_message: Option<String>,
    /// The builder instance that owns (or owned) the row.
    pub owner: String,
    /// When the row was created.
    pub created_at: i64,
    /// Heartbeat: bumped by the owner while running; the last change otherwise.
    pub update_timestamp: i64,
    /// When the build ended.
    pub end_timestamp: Option<i64>,
}

/// Timing rules of [`Store::claim_delta`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimPolicy {
    /// A `running` row whose heartbeat is older than this is taken over (default 5 min).
    pub stale_after: Duration,
    /// A `failed` build is not retried until this long after it ended (default 10 min).
    pub retry_failed_after: Duration,
    /// Back-off between builds of a pair interrupted by transient failures (nothing is
    /// recorded for them): default from 30 s, doubling, at most 10 min apart, with jitter.
    pub retry_interrupted: RetryPolicy,
}

impl Default for ClaimPolicy {
    fn default() -> Self {
        ClaimPolicy {
            stale_after: Duration::from_secs(5 * 60),
            retry_failed_after: Duration::from_secs(10 * 60),
            retry_interrupted: RetryPolicy {
                base: Duration::from_secs(30),
                max_delay: Duration::from_secs(10 * 60),
                retries: u32::MAX,
            },
        }
    }
}

/// The answer of [`Store::claim_delta`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The caller owns this `running` row now and must build, heartbeat and finish it.
    /// `took_over` tells whether a stale row of another builder was taken over.
    Claimed {
        /// The row.
        row: DeltaRecord,
        /// True when a stale `running` row was taken over.
        took_over: bool,
    },
    /// A successful delta exists.
    Ready(DeltaRecord),
    /// Another builder is working on it (its heartbeat is fresh).
    Running(DeltaRecord),
    /// The last build failed less than [`ClaimPolicy::retry_failed_after`] ago.
    Failed(DeltaRecord),
}

/// How a build ended, for [`Store::finish_delta`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The delta image was written.
    Success {
        /// Where it is.
        location: String,
        /// Compressed bytes a device downloads.
        size: u64,
    },
    /// The build failed.
    Failed {
        /// The error, with its causes.
        error: String,
    },
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A duration in milliseconds, saturating.
fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// What a claim does, decided from the newest rows of a pair: the business rule of
/// [`Store::claim_delta`], shared by every backend. Each backend reads the rows under its
/// own lock and carries out the decision in the same transaction.
#[derive(Debug)]
pub(crate) enum ClaimStep {
    /// Answer without writing.
    Answer(Claim),
    /// Take over this stale `running` row.
    TakeOver(DeltaRecord),
    /// Insert a new `running` row.
    Insert,
}

/// Decides a claim at `now` (ms since the epoch) from the newest `success`, `running` and
/// `failed` rows of the pair.
pub(crate) fn decide_claim(
    now: i64,
    policy: &ClaimPolicy,
    success: Option<DeltaRecord>,
    running: Option<DeltaRecord>,
    failed: Option<DeltaRecord>,
) -> ClaimStep {
    if let Some(row) = success {
        return ClaimStep::Answer(Claim::Ready(row));
    }
    if let Some(row) = running {
        if row.update_timestamp > now.saturating_sub(ms(policy.stale_after)) {
            return ClaimStep::Answer(Claim::Running(row));
        }
        return ClaimStep::TakeOver(row);
    }
    if let Some(row) = failed {
        let ended = row.end_timestamp.unwrap_or(row.update_timestamp);
        if ended > now.saturating_sub(ms(policy.retry_failed_after)) {
            return ClaimStep::Answer(Claim::Failed(row));
        }
    }
    ClaimStep::Insert
}

/// Persistent records of fleets, releases, images and deltas.
///
/// Implementations must make [`Store::claim_delta`] atomic across processes: at most one
/// `running` and at most one `success` row per (source, target, version).
#[async_trait]
pub trait Store: Send + Sync + Debug {
    /// Reads a value of the store's key/value metadata.
    async fn meta(&self, key: &str) -> Result<Option<String>, ServiceError>;

    /// Sets a value of the store's key/value metadata.
    async fn set_meta(&self, key: &str, value: &str) -> Result<(), ServiceError>;

    /// Records a successful release of `fleet` (created if new) with one image per service.
    async fn add_release(
        &self,
        fleet: &str,
        commit: &str,
        images: Vec<NewImage>,
    ) -> Result<ReleaseRecord, ServiceError>;

    /// All releases, oldest first; only those of `fleet` when given.
    async fn list_releases(&self, fleet: Option<&str>) -> Result<Vec<ReleaseRecord>, ServiceError>;

    /// The release with this id.
    async fn release(&self, id: u64) -> Result<Option<ReleaseRecord>, ServiceError>;

    /// Releases whose commit starts with `prefix` (case-sensitive).
    async fn releases_by_commit(&self, prefix: &str) -> Result<Vec<ReleaseRecord>, ServiceError>;

    /// The image with this id.
    async fn image(&self, id: u64) -> Result<Option<ImageRecord>, ServiceError>;

    /// Records an image that belongs to no release (a registry image first seen in a
    /// device's request), under `fleet` (created if new) and the image's service name.
    /// When an image with the same location exists already, that one is returned.
    async fn add_image(&self, fleet: &str, image: NewImage) -> Result<ImageRecord, ServiceError>;

    /// The oldest successful image recorded at exactly `location`.
    async fn image_by_location(&self, location: &str) -> Result<Option<ImageRecord>, ServiceError>;

    /// Successful deltas (newest first, at most 16) between any two images with these
    /// manifest digests: the same pair of contents under other image ids.
    async fn deltas_by_content(
        &self,
        src_hash: &str,
        dest_hash: &str,
        version: u32,
    ) -> Result<Vec<DeltaRecord>, ServiceError>;

    /// Sets the download bandwidth of a fleet's devices, which deltas of its images are built
    /// for (`None`: the builder's default); creates the fleet if it does not exist yet.
    async fn set_fleet_bandwidth(
        &self,
        fleet: &str,
        bandwidth: Option<Bandwidth>,
    ) -> Result<(), ServiceError>;

    /// The device bandwidth set for the fleet of the image with this id, if any.
    async fn image_fleet_bandwidth(&self, image: u64) -> Result<Option<Bandwidth>, ServiceError>;

    /// The newest row for (src, dest, version) that is `success`, or `running` with a
    /// heartbeat newer than `running_since` (ms since the epoch).
    async fn latest_delta(
        &self,
        src: u64,
        dest: u64,
        version: u32,
        running_since: i64,
    ) -> Result<Option<DeltaRecord>, ServiceError>;

    /// The newest row of any status for (src, dest, version).
    async fn newest_delta(
        &self,
        src: u64,
        dest: u64,
        version: u32,
    ) -> Result<Option<DeltaRecord>, ServiceError>;

    /// Atomically decides who builds the delta (src, dest, version); see [`Claim`].
    async fn claim_delta(
        &self,
        src: u64,
        dest: u64,
        version: u32,
        owner: &str,
        policy: &ClaimPolicy,
    ) -> Result<Claim, ServiceError>;

    /// Bumps the heartbeat of a `running` row owned by `owner`. Returns false when the row
    /// is no longer running under `owner`.
    async fn heartbeat(&self, id: u64, owner: &str) -> Result<bool, ServiceError>;

    /// Ends a `running` row owned by `owner`; [`ServiceError::LostClaim`] if it is not.
    async fn finish_delta(
        &self,
        id: u64,
        owner: &str,
        outcome: Outcome,
    ) -> Result<DeltaRecord, ServiceError>;

    /// Gives up a `running` row owned by `owner` without an outcome (its build failed for a
    /// transient reason, or its process is gone): the row is removed, so that the next
    /// [`Store::claim_delta`] starts a new build at once and nothing is remembered as
    /// failed. Returns false when the row is not running under `owner`.
    async fn abandon_delta(&self, id: u64, owner: &str) -> Result<bool, ServiceError>;

    /// [`Store::abandon_delta`] for every `running` row of `owner` (a process that stops
    /// before its builds end); returns how many.
    async fn abandon_owned(&self, owner: &str) -> Result<u64, ServiceError>;
}
