//! The error type of the store, the builder and the embedded backend.

use std::path::PathBuf;

/// Errors of [`crate::Store`] implementations, [`crate::DeltaBuilder`] and [`crate::Embedded`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// The database failed (cannot open, locked for too long, corrupt, full disk, …).
    #[error("database {path} failed")]
    Database {
        /// The database file.
        path: PathBuf,
        /// The database engine's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The database was written by a newer version of this program.
    #[error("database {path} has schema version {found}; this program knows up to {known}")]
    SchemaTooNew {
        /// The database file.
        path: PathBuf,
        /// `PRAGMA user_version` found.
        found: i64,
        /// Newest schema this program knows.
        known: i64,
    },
    /// A file or directory of the store could not be read or written.
    #[error("cannot access {path}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// An image reference could not be parsed.
    #[error("invalid image reference for service {service}")]
    InvalidReference {
        /// The service the reference was given for.
        service: String,
        /// Why it does not parse.
        #[source]
        source: bru_oci::OciError,
    },
    /// An image could not be read (missing, unreachable, corrupt).
    #[error("cannot read image {reference}")]
    Image {
        /// The image reference.
        reference: String,
        /// What went wrong.
        #[source]
        source: bru_oci::OciError,
    },
    /// A release or fleet argument is not acceptable.
    #[error("invalid {what}: {reason}")]
    InvalidInput {
        /// What was given (`commit`, `fleet`, `service`, …).
        what: &'static str,
        /// Why it is refused.
        reason: String,
    },
    /// A release with this commit already exists in the fleet.
    #[error("fleet {fleet} already has a release with commit {commit}")]
    ReleaseExists {
        /// The fleet name.
        fleet: String,
        /// The commit.
        commit: String,
    },
    /// No image with this id.
    #[error("no image with id {id}")]
    UnknownImage {
        /// The image id.
        id: u64,
    },
    /// The delta row is no longer owned by this builder (it was taken over as stale).
    #[error("delta {id} is no longer owned by this builder")]
    LostClaim {
        /// The delta id.
        id: u64,
    },
    /// Building the delta failed.
    #[error("delta build failed")]
    Build(#[source] bru_delta::DeltaError),
    /// The declarative fleet file of a store directory is malformed.
    #[error("malformed fleet file {path}: {reason}")]
    FleetFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A background task panicked or was cancelled.
    #[error("background task failed: {reason}")]
    Task {
        /// The join error's description.
        reason: String,
    },
}

impl ServiceError {
    pub(crate) fn db(path: impl Into<PathBuf>) -> impl FnOnce(rusqlite::Error) -> ServiceError {
        let path = path.into();
        move |e| ServiceError::Database {
            path,
            source: Box::new(e),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> ServiceError {
        let path = path.into();
        move |source| ServiceError::Io { path, source }
    }
}
