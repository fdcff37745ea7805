//! The delta service core of balena-release-update: an embedded record store of fleets,
//! releases, images and deltas, and build-once delta builds.
//!
//! * [`Store`] is the record store, shaped like balena's pine resources (`release`,
//!   `image`, `delta`); [`SqliteStore`] implements it in one SQLite file (WAL journal,
//!   schema versioned with `PRAGMA user_version`); [`PostgresStore`] implements it in a
//!   PostgreSQL database shared by several server instances (see [`Database`]). Both apply
//!   the same claim rule; each keeps [`Store::claim_delta`] atomic its own way.
//! * Build once: [`Store::claim_delta`] allows at most one `running` and one `success` row
//!   per (source image, target image, version), enforced by partial unique indexes. A
//!   `running` row whose heartbeat is older than [`ClaimPolicy::stale_after`] is taken over
//!   (the owner crashed); a `failed` row is remembered with its error and the pair is not
//!   retried before [`ClaimPolicy::retry_failed_after`].
//! * [`DeltaBuilder`] builds one claimed delta with `bru-delta`, heartbeating the row, and
//!   writes the delta image into the destination repository on the destination's registry
//!   (tag [`delta_tag`]), or into an OCI layout for images that are not on a registry.
//! * [`Embedded`] puts both behind bru-core's `ReleaseSource` and `DeltaService`, so the
//!   report, `prepare` and `wait` run in-process and offline; in one process, concurrent
//!   requests for one pair start a single build.
//!
//! # Schema (SQLite, `PRAGMA user_version` 1)
//!
//! | table | columns |
//! |---|---|
//! | `fleets` | id, name (unique), created_at |
//! | `services` | id, fleet, service_name (unique per fleet) |
//! | `releases` | id, fleet, commit (unique per fleet), status, created_at |
//! | `images` | id, service, location (the reference as given), content_hash (manifest digest), image_size (config + compressed layers), status, created_at |
//! | `release_images` | id, release, image |
//! | `deltas` | id, originates_from__image, produces__image, version, status (`running`/`success`/`failed`), is_stored_at__location, size (bytes a device downloads), error_message, owner, created_at, update_timestamp (heartbeat), end_timestamp |
//! | `meta` | key, value |
//!
//! Times are milliseconds since the Unix epoch. [`PostgresStore`] has the same tables
//! (`BIGINT` identity ids, the same partial unique indexes), versioned in
//! `bru_schema_migrations` and migrated under an advisory lock; its row times come from the
//! database's clock. A delta server maps [`DeltaRequest`] to the
//! supervisor protocol: `Ready` → 200 with the location, `Building` → 504, `Failed` → a 4xx
//! other than 401 so devices fall back to a regular pull.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use bru_core::{prepare_update, PrepareOptions, ReleaseRef};
//! use bru_service::{BuilderConfig, ClaimPolicy, Embedded};
//!
//! let dir = std::path::Path::new("examples/demo");
//! let backend = Embedded::open(dir, BuilderConfig::new("unused"), ClaimPolicy::default()).await?;
//! let options = PrepareOptions { wait: true, ..Default::default() };
//! let info = prepare_update(&ReleaseRef::Id(1), &ReleaseRef::Id(2), &backend, &options).await?;
//! println!("{:?}", info.estimated_total_payload_size);
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

mod builder;
mod database;
mod embedded;
mod error;
mod import;
mod postgres;
mod sqlite;
mod store;

pub use bru_delta::Bandwidth;
pub use builder::{delta_tag, delta_tag_for, BuildEnd, BuildProgress, BuilderConfig, DeltaBuilder};
pub use database::{Database, DatabaseParseError};
pub use embedded::{state_dir, DeltaRequest, Embedded};
pub use error::ServiceError;
pub use import::{absolutize, check_release, resolve_image, FleetFile, FleetRelease, ServiceSpec};
pub use postgres::{DeadlineExceeded, PostgresOptions, PostgresStore};
pub use sqlite::SqliteStore;
pub use store::{
    Claim, ClaimPolicy, DeltaRecord, DeltaStatus, ImageRecord, NewImage, Outcome, ReleaseRecord,
    Store, DELTA_VERSION,
};
