//! The error type of the store, the builder and the embedded backend.

use std::path::PathBuf;

/// Errors of [`crate::Store`] implementations, [`crate::DeltaBuilder`] and [`crate::Embedded`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// The database failed (cannot open or connect, locked for too long, restarting,
    /// corrupt, full disk, …).
    #[error("database {path} failed")]
    Database {
        /// The database file, or the URL of a PostgreSQL database without its password.
        path: PathBuf,
        /// The database engine's error (rusqlite, tokio-postgres, the connection pool, or
        /// a deadline).
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The database was written by a newer version of this program.
    #[error("database {path} has schema version {found}; this program knows up to {known}")]
    SchemaTooNew {
        /// The database file or URL (without password).
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
    /// The build ran past its deadline ([`crate::BuilderConfig::build_timeout`]).
    #[error("the build did not finish within {} s", .after.as_secs())]
    BuildTimedOut {
        /// The deadline.
        after: std::time::Duration,
    },
    /// The build made no progress for too long ([`crate::BuilderConfig::stall_timeout`]).
    #[error("the build made no progress for {} s", .idle.as_secs())]
    Stalled {
        /// How long nothing moved.
        idle: std::time::Duration,
    },
    /// A background task panicked or was cancelled.
    #[error("background task failed: {reason}")]
    Task {
        /// The join error's description.
        reason: String,
    },
}

impl ServiceError {
    /// Whether trying again later may succeed: the database is busy, locked, out of disk,
    /// failed an I/O, unreachable, restarting or out of connections; the disk is full; an image could not be read or written for a
    /// transient reason; the build timed out or stalled (its registry, most likely). Such
    /// failures are retried and never recorded as a failed delta. Everything else (a bad
    /// image, a delta that cannot be built, a corrupt or newer database) is permanent.
    pub fn is_transient(&self) -> bool {
        match self {
            ServiceError::Database { source, .. } => database_is_transient(&**source),
            ServiceError::Io { source, .. } => bru_core::retry::io_is_transient(source),
            ServiceError::Image { source, .. } => source.is_transient(),
            ServiceError::Build(e) => e.is_transient(),
            ServiceError::BuildTimedOut { .. }
            | ServiceError::Stalled { .. }
            | ServiceError::Task { .. } => true,
            _ => false,
        }
    }

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

/// Whether a database engine's error is worth retrying, whichever the engine.
fn database_is_transient(e: &(dyn std::error::Error + Send + Sync + 'static)) -> bool {
    use rusqlite::ErrorCode as C;
    if let Some(e) = e.downcast_ref::<rusqlite::Error>() {
        return match e {
            rusqlite::Error::SqliteFailure(f, _) => matches!(
                f.code,
                C::DatabaseBusy
                    | C::DatabaseLocked
                    | C::DiskFull
                    | C::SystemIoFailure
                    | C::OutOfMemory
            ),
            _ => false,
        };
    }
    if let Some(e) = e.downcast_ref::<tokio_postgres::Error>() {
        return crate::postgres::postgres_is_transient(e);
    }
    if let Some(e) = e.downcast_ref::<deadpool_postgres::PoolError>() {
        return crate::postgres::pool_is_transient(e);
    }
    e.is::<crate::postgres::DeadlineExceeded>()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sqlite(code: i32) -> ServiceError {
        ServiceError::Database {
            path: "db".into(),
            source: Box::new(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(code),
                None,
            )),
        }
    }

    #[test]
    fn busy_and_full_databases_are_transient_corrupt_ones_are_not() {
        assert!(sqlite(rusqlite::ffi::SQLITE_BUSY).is_transient());
        assert!(sqlite(rusqlite::ffi::SQLITE_FULL).is_transient());
        assert!(!sqlite(rusqlite::ffi::SQLITE_CORRUPT).is_transient());
        assert!(!sqlite(rusqlite::ffi::SQLITE_CONSTRAINT).is_transient());
    }

    #[test]
    fn full_disks_and_unreachable_registries_are_transient_bad_images_are_not() {
        let full = ServiceError::Io {
            path: "x".into(),
            source: std::io::Error::from_raw_os_error(28),
        };
        assert!(full.is_transient());
        let down = ServiceError::Image {
            reference: "r".into(),
            source: bru_oci::OciError::Http {
                url: "u".into(),
                reason: "connection refused".into(),
            },
        };
        assert!(down.is_transient());
        let unknown = ServiceError::Image {
            reference: "r".into(),
            source: bru_oci::OciError::Registry {
                status: 404,
                code: Some("MANIFEST_UNKNOWN".into()),
                message: "m".into(),
                url: "u".into(),
            },
        };
        assert!(!unknown.is_transient());
        let bad = ServiceError::Build(bru_delta::DeltaError::RebuiltMismatch {
            index: 0,
            expected: bru_oci::Digest::of(b"a"),
            actual: bru_oci::Digest::of(b"b"),
        });
        assert!(!bad.is_transient());
        assert!(ServiceError::Stalled {
            idle: std::time::Duration::from_secs(1)
        }
        .is_transient());
    }
}
