//! Domain model, JSON report types and update logic of balena-release-update.
//!
//! The report logic ([`get_update_info`], [`prepare_update`]) is generic over two backend
//! traits, [`ReleaseSource`] (releases, images and delta rows) and [`DeltaService`] (asking for
//! a delta to be built). `bru-balena` implements both against balenaCloud / openBalena; other
//! backends (an embedded store, a delta server) plug in the same way.
//!
//! ```no_run
//! # async fn demo<B: bru_core::ReleaseSource + bru_core::DeltaService>(backend: &B) -> Result<(), bru_core::Error> {
//! use bru_core::{get_update_info, prepare_update, PrepareOptions, ReleaseRef};
//! use std::time::Duration;
//!
//! let from = ReleaseRef::Id(900813);
//! let to = ReleaseRef::Commit("84d3d8f".into());
//! let info = get_update_info(&from, &to, backend).await?;
//! println!("{:?}", info.overall_status);
//!
//! let options = PrepareOptions { wait: true, timeout: Some(Duration::from_secs(600)), ..Default::default() };
//! let ready = prepare_update(&from, &to, backend, &options).await?;
//! println!("{:?}", ready.estimated_total_payload_size);
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

mod backend;
mod error;
mod model;
pub mod process;
mod redact;
mod report;
pub mod retry;
mod update;

pub use backend::{DeltaService, ReleaseSource};
pub use error::Error;
pub use model::{
    BadReleaseRef, Delta, DeltaStatus, DeltaTrigger, Image, Release, ReleaseRef, ServiceImage,
    UnknownDeltaStatus,
};
pub use redact::{redact_text, redact_url};
pub use report::{
    DeltaInfo, ImageInfo, ProducedImage, ReleaseInfo, RemovedService, ServiceUpdate, UpdateInfo,
    UpdateStatus,
};
pub use update::{get_update_info, prepare_update, PrepareOptions};
