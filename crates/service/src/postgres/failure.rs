//! Errors inside a PostgreSQL store call, how they become [`ServiceError`]s, and which of
//! them are transient (worth retrying).

use std::path::PathBuf;
use std::time::Duration;

use deadpool_postgres::PoolError;

use super::DeadlineExceeded;
use crate::ServiceError;

/// An error inside a store call.
pub(super) enum Failure {
    /// The database or the connection failed.
    Pg(tokio_postgres::Error),
    /// No connection from the pool.
    Pool(PoolError),
    /// An answer of the store's own (unknown image, lost claim, …).
    Service(ServiceError),
    /// The call ran past its deadline.
    TimedOut(Duration),
    /// A row the store cannot read.
    Corrupt(String),
}

impl From<tokio_postgres::Error> for Failure {
    fn from(e: tokio_postgres::Error) -> Self {
        Failure::Pg(e)
    }
}

impl From<PoolError> for Failure {
    fn from(e: PoolError) -> Self {
        Failure::Pool(e)
    }
}

impl Failure {
    /// The error as the store's callers see it, naming the database by `label`.
    pub(super) fn into_service(self, label: &str) -> ServiceError {
        let source: Box<dyn std::error::Error + Send + Sync> = match self {
            Failure::Service(e) => return e,
            Failure::Pg(e) => Box::new(e),
            Failure::Pool(e) => Box::new(e),
            Failure::TimedOut(after) => Box::new(DeadlineExceeded { after }),
            Failure::Corrupt(m) => m.into(),
        };
        ServiceError::Database {
            path: PathBuf::from(label),
            source,
        }
    }
}

/// Whether a PostgreSQL error is worth retrying: the connection failed or was closed
/// (SQLSTATE class 08, or no SQLSTATE at all with an I/O cause), the server is shutting
/// down or starting (57P01–57P03), out of resources (class 53: too many connections, disk
/// full, out of memory), a serialization failure or deadlock (40001, 40P01), or a
/// statement, lock or idle-transaction deadline ran out (57014, 55P03, 25P03). Constraint
/// violations, syntax errors, unknown databases and refused logins are permanent.
pub(crate) fn postgres_is_transient(e: &tokio_postgres::Error) -> bool {
    if let Some(code) = e.code() {
        let code = code.code();
        return code.starts_with("08")
            || code.starts_with("53")
            || matches!(
                code,
                "40001" | "40P01" | "57P01" | "57P02" | "57P03" | "57014" | "55P03" | "25P03"
            );
    }
    if e.is_closed() {
        return true;
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return bru_core::retry::io_is_transient(io);
        }
        source = s.source();
    }
    // tokio-postgres's own connect deadline ("timeout waiting for server") has no cause.
    e.to_string().contains("timeout")
}

/// [`postgres_is_transient`] for errors of the connection pool.
pub(crate) fn pool_is_transient(e: &PoolError) -> bool {
    match e {
        PoolError::Timeout(_) => true,
        PoolError::Backend(e) => postgres_is_transient(e),
        _ => false,
    }
}
