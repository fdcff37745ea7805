//! The backend traits the update logic runs on.

use async_trait::async_trait;

use crate::{Delta, DeltaTrigger, Error, Image, Release};

/// Where releases, images and delta rows come from (balenaCloud, an embedded store, …).
///
/// Only *successful* releases and images are visible through this trait.
#[async_trait]
pub trait ReleaseSource: Send + Sync {
    /// The successful release with this id, or `None`.
    async fn release_by_id(&self, id: u64) -> Result<Option<Release>, Error>;

    /// All successful releases whose commit starts with `prefix`.
    async fn releases_by_commit(&self, prefix: &str) -> Result<Vec<Release>, Error>;

    /// The successful image with this id, or `None`.
    async fn image(&self, id: u64) -> Result<Option<Image>, Error>;

    /// The newest version-3 delta from image `src` to image `dest` that is either
    /// successful or still running (recently updated), or `None`.
    async fn latest_delta(&self, src: u64, dest: u64) -> Result<Option<Delta>, Error>;
}

/// Something that builds deltas on request.
#[async_trait]
pub trait DeltaService: Send + Sync {
    /// Ask for the delta from image `src` to image `dest`.
    async fn request_delta(&self, src: u64, dest: u64) -> Result<DeltaTrigger, Error>;
}
