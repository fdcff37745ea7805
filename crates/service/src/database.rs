//! Which database holds the records: [`Database`], parsed from `sqlite:PATH` or a
//! PostgreSQL URL.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use crate::postgres::{PostgresOptions, PostgresStore};
use crate::sqlite::SqliteStore;
use crate::store::Store;
use crate::ServiceError;

/// Where the records are. `Display` and `Debug` hide a PostgreSQL password.
#[derive(Clone, PartialEq, Eq)]
pub enum Database {
    /// `sqlite:PATH`: one SQLite file (for one machine).
    Sqlite(PathBuf),
    /// `postgres://…` or `postgresql://…`: a PostgreSQL database that any number of
    /// instances share. The URL may carry a password.
    Postgres(String),
}

impl Database {
    /// Opens the store (creating and migrating its schema as needed).
    pub async fn open(&self, options: PostgresOptions) -> Result<Arc<dyn Store>, ServiceError> {
        Ok(match self {
            Database::Sqlite(path) => Arc::new(SqliteStore::open(path).await?),
            Database::Postgres(url) => Arc::new(PostgresStore::connect(url, options).await?),
        })
    }
}

/// A malformed `--database` value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected sqlite:PATH, postgres://… or postgresql://…")]
pub struct DatabaseParseError;

impl FromStr for Database {
    type Err = DatabaseParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            return Ok(Database::Postgres(s.to_string()));
        }
        match s.strip_prefix("sqlite:") {
            Some(path) if !path.is_empty() => Ok(Database::Sqlite(PathBuf::from(path))),
            _ => Err(DatabaseParseError),
        }
    }
}

impl fmt::Display for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Database::Sqlite(path) => write!(f, "sqlite:{}", path.display()),
            Database::Postgres(url) => f.write_str(&bru_core::redact_url(url)),
        }
    }
}

impl fmt::Debug for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Database({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_passwords_never_print() {
        let pg: Database = "postgres://bru:s3cret@db.internal:5432/bru?sslmode=disable"
            .parse()
            .unwrap();
        assert!(matches!(&pg, Database::Postgres(u) if u.contains("s3cret")));
        assert_eq!(
            pg.to_string(),
            "postgres://bru:***@db.internal:5432/bru?sslmode=disable"
        );
        assert!(!format!("{pg:?}").contains("s3cret"));
        assert!(matches!(
            "postgresql://h/db".parse::<Database>(),
            Ok(Database::Postgres(_))
        ));
        assert_eq!(
            "sqlite:/var/lib/bru/store.sqlite".parse::<Database>(),
            Ok(Database::Sqlite("/var/lib/bru/store.sqlite".into()))
        );
        for bad in ["", "sqlite:", "mysql://h/db", "/some/path"] {
            assert_eq!(bad.parse::<Database>(), Err(DatabaseParseError), "{bad}");
        }
    }
}
