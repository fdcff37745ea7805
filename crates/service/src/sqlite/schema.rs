//! The schema of the SQLite store: versioned migrations (`PRAGMA user_version`) and opening
//! a connection (WAL journal, busy timeout, foreign keys).

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, TransactionBehavior};

use crate::ServiceError;

/// Schema migrations; migration `i` brings `user_version` from `i` to `i + 1`.
pub(super) const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE fleets (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    name       TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL
);
CREATE TABLE services (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    fleet        INTEGER NOT NULL REFERENCES fleets(id),
    service_name TEXT NOT NULL,
    UNIQUE (fleet, service_name)
);
CREATE TABLE releases (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    fleet      INTEGER NOT NULL REFERENCES fleets(id),
    "commit"   TEXT NOT NULL,
    status     TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    UNIQUE (fleet, "commit")
);
CREATE TABLE images (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    service      INTEGER NOT NULL REFERENCES services(id),
    location     TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    image_size   INTEGER NOT NULL,
    status       TEXT NOT NULL,
    created_at   INTEGER NOT NULL
);
CREATE TABLE release_images (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    release INTEGER NOT NULL REFERENCES releases(id),
    image   INTEGER NOT NULL REFERENCES images(id),
    UNIQUE (release, image)
);
CREATE TABLE deltas (
    id                     INTEGER PRIMARY KEY AUTOINCREMENT,
    originates_from__image INTEGER NOT NULL REFERENCES images(id),
    produces__image        INTEGER NOT NULL REFERENCES images(id),
    version                INTEGER NOT NULL,
    status                 TEXT NOT NULL CHECK (status IN ('running', 'success', 'failed')),
    is_stored_at__location TEXT,
    size                   INTEGER,
    error_message          TEXT,
    owner                  TEXT NOT NULL,
    created_at             INTEGER NOT NULL,
    update_timestamp       INTEGER NOT NULL,
    end_timestamp          INTEGER
);
-- Build once: at most one running and one successful row per pair and version.
CREATE UNIQUE INDEX deltas_one_running
    ON deltas (originates_from__image, produces__image, version) WHERE status = 'running';
CREATE UNIQUE INDEX deltas_one_success
    ON deltas (originates_from__image, produces__image, version) WHERE status = 'success';
CREATE INDEX deltas_by_pair ON deltas (originates_from__image, produces__image, version, id);
"#,
    r#"
-- Download bandwidth of the fleet's devices in bytes per second (NULL: the builder's default).
ALTER TABLE fleets ADD COLUMN device_bandwidth INTEGER;
"#,
    r#"
-- Registry images are found by their pinned location (HOST/REPO@sha256:...).
CREATE INDEX images_by_location ON images (location);
-- Images first seen by the delta endpoint used to be recorded as one-image releases of a
-- fleet named after their repository, commit = the digest's hex; they are images only.
CREATE TEMP TABLE registry_pseudo_releases AS
    SELECT releases.id AS id FROM releases
    JOIN fleets ON fleets.id = releases.fleet
    JOIN release_images ON release_images.release = releases.id
    JOIN images ON images.id = release_images.image
    WHERE images.location = fleets.name || '@' || images.content_hash
      AND releases."commit" = substr(images.content_hash, 8);
DELETE FROM release_images WHERE release IN (SELECT id FROM registry_pseudo_releases);
DELETE FROM releases WHERE id IN (SELECT id FROM registry_pseudo_releases);
DROP TABLE registry_pseudo_releases;
"#,
];

pub(super) fn open_blocking(path: &Path) -> Result<Connection, ServiceError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(ServiceError::io(parent))?;
    }
    let db = ServiceError::db;
    let mut conn = Connection::open(path).map_err(db(path))?;
    conn.busy_timeout(Duration::from_secs(10))
        .map_err(db(path))?;
    conn.pragma_update(None, "foreign_keys", "ON")
        .map_err(db(path))?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(db(path))?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(path = %path.display(), mode, "the database is not in WAL mode");
    }
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(db(path))?;
    migrate(&mut conn, path)?;
    Ok(conn)
}

fn migrate(conn: &mut Connection, path: &Path) -> Result<(), ServiceError> {
    let db = ServiceError::db;
    let known = MIGRATIONS.len() as i64;
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db(path))?;
    let found: i64 = tx
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(db(path))?;
    if found > known {
        return Err(ServiceError::SchemaTooNew {
            path: path.to_path_buf(),
            found,
            known,
        });
    }
    for (version, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        tracing::info!(path = %path.display(), to = version + 1, "migrating the store schema");
        tx.execute_batch(sql).map_err(db(path))?;
    }
    if found < known {
        tx.pragma_update(None, "user_version", known)
            .map_err(db(path))?;
    }
    tx.commit().map_err(db(path))
}
