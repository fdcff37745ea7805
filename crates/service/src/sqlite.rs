//! The SQLite implementation of [`Store`]: one file, WAL journal, schema versioned with
//! `PRAGMA user_version`, blocking calls on tokio's blocking threads.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bru_delta::Bandwidth;
use rusqlite::{params, Connection, OptionalExtension, Row, TransactionBehavior};

use crate::store::{
    decide_claim, now_ms, Claim, ClaimPolicy, ClaimStep, DeltaRecord, DeltaStatus, ImageRecord,
    NewImage, Outcome, ReleaseRecord, Store,
};
use crate::ServiceError;

/// Schema migrations; migration `i` brings `user_version` from `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
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

/// A [`Store`] in one SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    path: PathBuf,
    conn: Arc<Mutex<Connection>>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file `path` and migrates its schema.
    pub async fn open(path: impl AsRef<Path>) -> Result<SqliteStore, ServiceError> {
        let path = path.as_ref().to_path_buf();
        let p = path.clone();
        let conn = tokio::task::spawn_blocking(move || open_blocking(&p))
            .await
            .map_err(|e| ServiceError::Task {
                reason: e.to_string(),
            })??;
        Ok(SqliteStore {
            path,
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on the connection on a blocking thread.
    async fn call<T, F>(&self, f: F) -> Result<T, ServiceError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        self.try_call(move |c| f(c).map_err(Failure::Db)).await
    }

    /// Like [`SqliteStore::call`] with errors of this crate as well.
    async fn try_call<T, F>(&self, f: F) -> Result<T, ServiceError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, Failure> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            // A panic while holding the lock cannot leave a transaction open (rusqlite rolls
            // back on drop), so a poisoned lock is safe to reuse.
            let mut guard = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut guard).map_err(|e| match e {
                Failure::Db(e) => ServiceError::db(path)(e),
                Failure::Service(e) => e,
            })
        })
        .await
        .map_err(|e| ServiceError::Task {
            reason: e.to_string(),
        })?
    }
}

/// An error inside a database closure.
enum Failure {
    Db(rusqlite::Error),
    Service(ServiceError),
}

impl From<rusqlite::Error> for Failure {
    fn from(e: rusqlite::Error) -> Self {
        Failure::Db(e)
    }
}

fn open_blocking(path: &Path) -> Result<Connection, ServiceError> {
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

const DELTA_COLUMNS: &str = "id, originates_from__image, produces__image, version, status, \
     is_stored_at__location, size, error_message, owner, created_at, update_timestamp, end_timestamp";

fn delta_row(r: &Row<'_>) -> rusqlite::Result<DeltaRecord> {
    let status: String = r.get(4)?;
    Ok(DeltaRecord {
        id: r.get(0)?,
        source_image: r.get(1)?,
        target_image: r.get(2)?,
        version: r.get(3)?,
        status: status.parse::<DeltaStatus>().map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(4, rusqlite::types::Type::Text, e.into())
        })?,
        location: r.get(5)?,
        size: r.get(6)?,
        error_message: r.get(7)?,
        owner: r.get(8)?,
        created_at: r.get(9)?,
        update_timestamp: r.get(10)?,
        end_timestamp: r.get(11)?,
    })
}

fn delta_by_id(c: &Connection, id: u64) -> rusqlite::Result<DeltaRecord> {
    c.query_row(
        &format!("SELECT {DELTA_COLUMNS} FROM deltas WHERE id = ?1"),
        [id],
        delta_row,
    )
}

/// The newest row of `status` for the pair.
fn newest_with_status(
    c: &Connection,
    src: u64,
    dest: u64,
    version: u32,
    status: Option<DeltaStatus>,
) -> rusqlite::Result<Option<DeltaRecord>> {
    c.query_row(
        &format!(
            "SELECT {DELTA_COLUMNS} FROM deltas
             WHERE originates_from__image = ?1 AND produces__image = ?2 AND version = ?3
               AND (?4 IS NULL OR status = ?4)
             ORDER BY id DESC LIMIT 1"
        ),
        params![src, dest, version, status.map(DeltaStatus::as_str)],
        delta_row,
    )
    .optional()
}

const IMAGE_COLUMNS: &str =
    "images.id, services.service_name, images.location, images.content_hash, images.image_size, images.status";

fn image_row(r: &Row<'_>) -> rusqlite::Result<ImageRecord> {
    Ok(ImageRecord {
        id: r.get(0)?,
        service_name: r.get(1)?,
        location: r.get(2)?,
        content_hash: r.get(3)?,
        image_size: r.get(4)?,
        status: r.get(5)?,
    })
}

fn release_images(c: &Connection, release: u64) -> rusqlite::Result<Vec<ImageRecord>> {
    let mut stmt = c.prepare_cached(&format!(
        "SELECT {IMAGE_COLUMNS} FROM release_images
         JOIN images ON images.id = release_images.image
         JOIN services ON services.id = images.service
         WHERE release_images.release = ?1
         ORDER BY services.service_name"
    ))?;
    let rows = stmt.query_map([release], image_row)?;
    rows.collect()
}

/// Releases matching `filter` (an SQL condition on `releases`/`fleets` using `?1`).
fn releases_where(
    c: &Connection,
    filter: &str,
    arg: rusqlite::types::Value,
) -> rusqlite::Result<Vec<ReleaseRecord>> {
    let mut stmt = c.prepare(&format!(
        "SELECT releases.id, releases.fleet, fleets.name, releases.\"commit\", releases.status,
                releases.created_at
         FROM releases JOIN fleets ON fleets.id = releases.fleet
         WHERE {filter} ORDER BY releases.id"
    ))?;
    let heads = stmt
        .query_map([arg], |r| {
            Ok(ReleaseRecord {
                id: r.get(0)?,
                fleet_id: r.get(1)?,
                fleet: r.get(2)?,
                commit: r.get(3)?,
                status: r.get(4)?,
                created_at: r.get(5)?,
                images: Vec::new(),
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    heads
        .into_iter()
        .map(|mut release| {
            release.images = release_images(c, release.id)?;
            Ok(release)
        })
        .collect()
}

#[async_trait]
impl Store for SqliteStore {
    /// Reads a value of the store's key/value metadata.
    async fn meta(&self, key: &str) -> Result<Option<String>, ServiceError> {
        let key = key.to_string();
        self.call(move |c| {
            c.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
                .optional()
        })
        .await
    }

    /// Sets a value of the store's key/value metadata.
    async fn set_meta(&self, key: &str, value: &str) -> Result<(), ServiceError> {
        let (key, value) = (key.to_string(), value.to_string());
        self.call(move |c| {
            c.execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [key, value],
            )
            .map(drop)
        })
        .await
    }

    async fn add_release(
        &self,
        fleet: &str,
        commit: &str,
        images: Vec<NewImage>,
    ) -> Result<ReleaseRecord, ServiceError> {
        let (fleet, commit) = (fleet.to_string(), commit.to_string());
        let id = self
            .try_call(move |c| {
                let now = now_ms();
                let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                tx.execute(
                    "INSERT INTO fleets (name, created_at) VALUES (?1, ?2)
                     ON CONFLICT (name) DO NOTHING",
                    params![fleet, now],
                )?;
                let fleet_id: u64 =
                    tx.query_row("SELECT id FROM fleets WHERE name = ?1", [&fleet], |r| {
                        r.get(0)
                    })?;
                let exists: bool = tx.query_row(
                    "SELECT EXISTS (SELECT 1 FROM releases WHERE fleet = ?1 AND \"commit\" = ?2)",
                    params![fleet_id, commit],
                    |r| r.get(0),
                )?;
                if exists {
                    return Err(Failure::Service(ServiceError::ReleaseExists {
                        fleet: fleet.clone(),
                        commit: commit.clone(),
                    }));
                }
                tx.execute(
                    "INSERT INTO releases (fleet, \"commit\", status, created_at)
                     VALUES (?1, ?2, 'success', ?3)",
                    params![fleet_id, commit, now],
                )?;
                let release_id = tx.last_insert_rowid();
                for image in &images {
                    tx.execute(
                        "INSERT INTO services (fleet, service_name) VALUES (?1, ?2)
                         ON CONFLICT (fleet, service_name) DO NOTHING",
                        params![fleet_id, image.service_name],
                    )?;
                    let service_id: u64 = tx.query_row(
                        "SELECT id FROM services WHERE fleet = ?1 AND service_name = ?2",
                        params![fleet_id, image.service_name],
                        |r| r.get(0),
                    )?;
                    tx.execute(
                        "INSERT INTO images (service, location, content_hash, image_size, status,
                                             created_at)
                         VALUES (?1, ?2, ?3, ?4, 'success', ?5)",
                        params![
                            service_id,
                            image.location,
                            image.content_hash,
                            image.image_size,
                            now
                        ],
                    )?;
                    let image_id = tx.last_insert_rowid();
                    tx.execute(
                        "INSERT INTO release_images (release, image) VALUES (?1, ?2)",
                        params![release_id, image_id],
                    )?;
                }
                tx.commit()?;
                Ok(release_id as u64)
            })
            .await?;
        self.release(id).await?.ok_or(ServiceError::Task {
            reason: format!("release {id} vanished after insert"),
        })
    }

    async fn list_releases(&self, fleet: Option<&str>) -> Result<Vec<ReleaseRecord>, ServiceError> {
        let fleet = fleet.map(str::to_string);
        self.call(move |c| match fleet {
            Some(name) => releases_where(c, "fleets.name = ?1", name.into()),
            None => releases_where(c, "?1 IS NULL", rusqlite::types::Value::Null),
        })
        .await
    }

    async fn release(&self, id: u64) -> Result<Option<ReleaseRecord>, ServiceError> {
        let id = i64::try_from(id).unwrap_or(i64::MAX);
        self.call(move |c| releases_where(c, "releases.id = ?1", id.into()).map(|mut v| v.pop()))
            .await
    }

    async fn releases_by_commit(&self, prefix: &str) -> Result<Vec<ReleaseRecord>, ServiceError> {
        let prefix = prefix.to_string();
        self.call(move |c| {
            // substr() keeps the match case-sensitive and free of LIKE wildcards.
            releases_where(
                c,
                "substr(releases.\"commit\", 1, length(?1)) = ?1",
                prefix.into(),
            )
        })
        .await
    }

    async fn image(&self, id: u64) -> Result<Option<ImageRecord>, ServiceError> {
        let id = i64::try_from(id).unwrap_or(i64::MAX);
        self.call(move |c| {
            c.query_row(
                &format!(
                    "SELECT {IMAGE_COLUMNS} FROM images
                     JOIN services ON services.id = images.service WHERE images.id = ?1"
                ),
                [id],
                image_row,
            )
            .optional()
        })
        .await
    }

    async fn add_image(&self, fleet: &str, image: NewImage) -> Result<ImageRecord, ServiceError> {
        let fleet = fleet.to_string();
        let id = self
            .call(move |c| {
                let now = now_ms();
                let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                // Recorded meanwhile by a concurrent request: that record is the image.
                let found: Option<u64> = tx
                    .query_row(
                        "SELECT id FROM images WHERE location = ?1 AND status = 'success'
                         ORDER BY id LIMIT 1",
                        [&image.location],
                        |r| r.get(0),
                    )
                    .optional()?;
                if let Some(id) = found {
                    return Ok(id);
                }
                tx.execute(
                    "INSERT INTO fleets (name, created_at) VALUES (?1, ?2)
                     ON CONFLICT (name) DO NOTHING",
                    params![fleet, now],
                )?;
                tx.execute(
                    "INSERT INTO services (fleet, service_name)
                     SELECT id, ?2 FROM fleets WHERE name = ?1
                     ON CONFLICT (fleet, service_name) DO NOTHING",
                    params![fleet, image.service_name],
                )?;
                tx.execute(
                    "INSERT INTO images (service, location, content_hash, image_size, status,
                                         created_at)
                     SELECT services.id, ?3, ?4, ?5, 'success', ?6 FROM services
                     JOIN fleets ON fleets.id = services.fleet
                     WHERE fleets.name = ?1 AND services.service_name = ?2",
                    params![
                        fleet,
                        image.service_name,
                        image.location,
                        image.content_hash,
                        image.image_size,
                        now
                    ],
                )?;
                let id = tx.last_insert_rowid() as u64;
                tx.commit()?;
                Ok(id)
            })
            .await?;
        self.image(id)
            .await?
            .ok_or(ServiceError::UnknownImage { id })
    }

    async fn image_by_location(&self, location: &str) -> Result<Option<ImageRecord>, ServiceError> {
        let location = location.to_string();
        self.call(move |c| {
            c.query_row(
                &format!(
                    "SELECT {IMAGE_COLUMNS} FROM images
                     JOIN services ON services.id = images.service
                     WHERE images.location = ?1 AND images.status = 'success'
                     ORDER BY images.id LIMIT 1"
                ),
                [location],
                image_row,
            )
            .optional()
        })
        .await
    }

    async fn deltas_by_content(
        &self,
        src_hash: &str,
        dest_hash: &str,
        version: u32,
    ) -> Result<Vec<DeltaRecord>, ServiceError> {
        let (src_hash, dest_hash) = (src_hash.to_string(), dest_hash.to_string());
        self.call(move |c| {
            let columns = DELTA_COLUMNS
                .split(", ")
                .map(|col| format!("deltas.{col}"))
                .collect::<Vec<_>>()
                .join(", ");
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {columns} FROM deltas
                 JOIN images AS s ON s.id = deltas.originates_from__image
                 JOIN images AS d ON d.id = deltas.produces__image
                 WHERE s.content_hash = ?1 AND d.content_hash = ?2 AND deltas.version = ?3
                   AND deltas.status = 'success'
                 ORDER BY deltas.id DESC LIMIT 16"
            ))?;
            let rows = stmt.query_map(params![src_hash, dest_hash, version], delta_row)?;
            rows.collect()
        })
        .await
    }

    async fn set_fleet_bandwidth(
        &self,
        fleet: &str,
        bandwidth: Option<Bandwidth>,
    ) -> Result<(), ServiceError> {
        let fleet = fleet.to_string();
        let bps = bandwidth.map(|b| i64::try_from(b.bytes_per_second()).unwrap_or(i64::MAX));
        self.call(move |c| {
            c.execute(
                "INSERT INTO fleets (name, created_at, device_bandwidth) VALUES (?1, ?2, ?3)
                 ON CONFLICT (name) DO UPDATE SET device_bandwidth = excluded.device_bandwidth",
                params![fleet, now_ms(), bps],
            )
            .map(|_| ())
        })
        .await
    }

    async fn image_fleet_bandwidth(&self, image: u64) -> Result<Option<Bandwidth>, ServiceError> {
        let id = i64::try_from(image).unwrap_or(i64::MAX);
        let bps: Option<i64> = self
            .call(move |c| {
                c.query_row(
                    "SELECT fleets.device_bandwidth FROM images
                     JOIN services ON services.id = images.service
                     JOIN fleets ON fleets.id = services.fleet WHERE images.id = ?1",
                    [id],
                    |r| r.get(0),
                )
                .optional()
                .map(Option::flatten)
            })
            .await?;
        Ok(bps.and_then(|b| Bandwidth::from_bytes_per_second(u64::try_from(b).ok()?)))
    }

    async fn latest_delta(
        &self,
        src: u64,
        dest: u64,
        version: u32,
        running_since: i64,
    ) -> Result<Option<DeltaRecord>, ServiceError> {
        self.call(move |c| {
            c.query_row(
                &format!(
                    "SELECT {DELTA_COLUMNS} FROM deltas
                     WHERE originates_from__image = ?1 AND produces__image = ?2 AND version = ?3
                       AND (status = 'success'
                            OR (status = 'running' AND update_timestamp > ?4))
                     ORDER BY id DESC LIMIT 1"
                ),
                params![src, dest, version, running_since],
                delta_row,
            )
            .optional()
        })
        .await
    }

    async fn newest_delta(
        &self,
        src: u64,
        dest: u64,
        version: u32,
    ) -> Result<Option<DeltaRecord>, ServiceError> {
        self.call(move |c| newest_with_status(c, src, dest, version, None))
            .await
    }

    async fn claim_delta(
        &self,
        src: u64,
        dest: u64,
        version: u32,
        owner: &str,
        policy: &ClaimPolicy,
    ) -> Result<Claim, ServiceError> {
        let owner = owner.to_string();
        let policy = *policy;
        self.try_call(move |c| {
            let now = now_ms();
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            for id in [src, dest] {
                let known: bool = tx.query_row(
                    "SELECT EXISTS (SELECT 1 FROM images WHERE id = ?1)",
                    [id],
                    |r| r.get(0),
                )?;
                if !known {
                    return Err(Failure::Service(ServiceError::UnknownImage { id }));
                }
            }
            let newest = |status| newest_with_status(&tx, src, dest, version, Some(status));
            let (success, running, failed) = (
                newest(DeltaStatus::Success)?,
                newest(DeltaStatus::Running)?,
                newest(DeltaStatus::Failed)?,
            );
            match decide_claim(now, &policy, success, running, failed) {
                ClaimStep::Answer(claim) => return Ok(claim),
                ClaimStep::TakeOver(row) => {
                    tracing::warn!(
                        delta = row.id,
                        previous_owner = %row.owner,
                        "taking over a stale running delta build"
                    );
                    tx.execute(
                        "UPDATE deltas SET owner = ?1, update_timestamp = ?2
                         WHERE id = ?3 AND status = 'running'",
                        params![owner, now, row.id],
                    )?;
                    let row = delta_by_id(&tx, row.id)?;
                    tx.commit()?;
                    return Ok(Claim::Claimed {
                        row,
                        took_over: true,
                    });
                }
                ClaimStep::Insert => {}
            }
            tx.execute(
                "INSERT INTO deltas (originates_from__image, produces__image, version, status,
                                     owner, created_at, update_timestamp)
                 VALUES (?1, ?2, ?3, 'running', ?4, ?5, ?5)",
                params![src, dest, version, owner, now],
            )?;
            let row = delta_by_id(&tx, tx.last_insert_rowid() as u64)?;
            tx.commit()?;
            Ok(Claim::Claimed {
                row,
                took_over: false,
            })
        })
        .await
    }

    async fn heartbeat(&self, id: u64, owner: &str) -> Result<bool, ServiceError> {
        let owner = owner.to_string();
        self.call(move |c| {
            c.execute(
                "UPDATE deltas SET update_timestamp = ?1
                 WHERE id = ?2 AND owner = ?3 AND status = 'running'",
                params![now_ms(), id, owner],
            )
            .map(|n| n == 1)
        })
        .await
    }

    async fn finish_delta(
        &self,
        id: u64,
        owner: &str,
        outcome: Outcome,
    ) -> Result<DeltaRecord, ServiceError> {
        let owner = owner.to_string();
        self.try_call(move |c| {
            let now = now_ms();
            let (status, location, size, error) = match outcome {
                Outcome::Success { location, size } => {
                    (DeltaStatus::Success, Some(location), Some(size), None)
                }
                Outcome::Failed { error } => (DeltaStatus::Failed, None, None, Some(error)),
            };
            let n = c.execute(
                "UPDATE deltas SET status = ?1, is_stored_at__location = ?2, size = ?3,
                        error_message = ?4, update_timestamp = ?5, end_timestamp = ?5
                 WHERE id = ?6 AND owner = ?7 AND status = 'running'",
                params![status.as_str(), location, size, error, now, id, owner],
            )?;
            if n != 1 {
                return Err(Failure::Service(ServiceError::LostClaim { id }));
            }
            Ok(delta_by_id(c, id)?)
        })
        .await
    }

    async fn abandon_delta(&self, id: u64, owner: &str) -> Result<bool, ServiceError> {
        let owner = owner.to_string();
        self.call(move |c| {
            c.execute(
                "DELETE FROM deltas WHERE id = ?1 AND owner = ?2 AND status = 'running'",
                params![id, owner],
            )
            .map(|n| n == 1)
        })
        .await
    }

    async fn abandon_owned(&self, owner: &str) -> Result<u64, ServiceError> {
        let owner = owner.to_string();
        self.call(move |c| {
            c.execute(
                "DELETE FROM deltas WHERE owner = ?1 AND status = 'running'",
                params![owner],
            )
            .map(|n| n as u64)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(service: &str, n: u8) -> NewImage {
        NewImage {
            service_name: service.into(),
            location: format!("127.0.0.1:5000/{service}:{n}"),
            content_hash: format!("sha256:{}", hex::encode([n; 32])),
            image_size: 1000 + u64::from(n),
        }
    }

    async fn store() -> (tempfile::TempDir, SqliteStore) {
        let tmp = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(tmp.path().join("state/store.sqlite"))
            .await
            .unwrap();
        (tmp, store)
    }

    #[tokio::test]
    async fn a_version_1_store_is_migrated_with_its_data() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("store.sqlite");
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(MIGRATIONS[0]).unwrap();
            c.execute(
                "INSERT INTO fleets (name, created_at) VALUES ('old', 1)",
                [],
            )
            .unwrap();
            c.pragma_update(None, "user_version", 1).unwrap();
        }
        let store = SqliteStore::open(&path).await.unwrap();
        store
            .set_fleet_bandwidth("old", Some("2".parse().unwrap()))
            .await
            .unwrap();
        let c = Connection::open(&path).unwrap();
        let (n, bps): (i64, i64) = c
            .query_row(
                "SELECT count(*), max(device_bandwidth) FROM fleets WHERE name = 'old'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!((n, bps), (1, 2_000_000));
    }

    #[tokio::test]
    async fn version_2_pseudo_releases_of_registry_images_become_images_only() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("store.sqlite");
        let hash = format!("sha256:{}", "ab".repeat(32));
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(MIGRATIONS[0]).unwrap();
            c.execute_batch(MIGRATIONS[1]).unwrap();
            c.execute_batch(&format!(
                r#"
                INSERT INTO fleets (id, name, created_at) VALUES (1, 'reg:5000/team/app', 1), (2, 'real', 1);
                INSERT INTO services (id, fleet, service_name) VALUES (1, 1, 'app'), (2, 2, 'web');
                INSERT INTO releases (id, fleet, "commit", status, created_at)
                    VALUES (1, 1, '{hex}', 'success', 1), (2, 2, 'abc123', 'success', 1);
                INSERT INTO images (id, service, location, content_hash, image_size, status, created_at)
                    VALUES (1, 1, 'reg:5000/team/app@{hash}', '{hash}', 10, 'success', 1),
                           (2, 2, 'reg:5000/team/app@{hash}', '{hash}', 10, 'success', 1);
                INSERT INTO release_images (release, image) VALUES (1, 1), (2, 2);
                "#,
                hex = &hash[7..]
            ))
            .unwrap();
            c.pragma_update(None, "user_version", 2).unwrap();
        }
        let store = SqliteStore::open(&path).await.unwrap();
        // The pseudo-release is gone, its image stays; a real release keeps its image even
        // when that image lives in the same place.
        let releases = store.list_releases(None).await.unwrap();
        assert_eq!(
            releases.iter().map(|r| r.id).collect::<Vec<_>>(),
            vec![2],
            "{releases:?}"
        );
        assert!(store.image(1).await.unwrap().is_some());
        let at = format!("reg:5000/team/app@{hash}");
        assert_eq!(store.image_by_location(&at).await.unwrap().unwrap().id, 1);
    }

    /// Two releases of one fleet; returns (source image, target image) of service `web`.
    async fn pair(store: &SqliteStore) -> (u64, u64) {
        let a = store
            .add_release("f", "aaa111", vec![image("web", 1)])
            .await
            .unwrap();
        let b = store
            .add_release("f", "bbb222", vec![image("web", 2)])
            .await
            .unwrap();
        (a.images[0].id, b.images[0].id)
    }

    #[tokio::test]
    async fn schema_is_versioned_and_newer_schemas_are_refused() {
        let (tmp, store) = store().await;
        let path = store.path().to_path_buf();
        let version: i64 = store
            .call(|c| c.query_row("PRAGMA user_version", [], |r| r.get(0)))
            .await
            .unwrap();
        assert_eq!(version, MIGRATIONS.len() as i64);
        let mode: String = store
            .call(|c| c.query_row("PRAGMA journal_mode", [], |r| r.get(0)))
            .await
            .unwrap();
        assert_eq!(mode, "wal");
        drop(store);
        // Reopening does not migrate again.
        let store = SqliteStore::open(&path).await.unwrap();
        store
            .call(|c| c.pragma_update(None, "user_version", 99))
            .await
            .unwrap();
        drop(store);
        match SqliteStore::open(&path).await {
            Err(ServiceError::SchemaTooNew { found: 99, .. }) => {}
            other => panic!("expected SchemaTooNew, got {other:?}"),
        }
        drop(tmp);
    }

    #[tokio::test]
    async fn the_database_itself_refuses_a_second_running_row() {
        // The behaviour of the store is tested on both backends in tests/store.rs; this
        // is the index underneath.
        let (_tmp, store) = store().await;
        let (src, dest) = pair(&store).await;
        let insert = move |c: &mut Connection| {
            c.execute(
                "INSERT INTO deltas (originates_from__image, produces__image, version, status,
                                     owner, created_at, update_timestamp)
                 VALUES (?1, ?2, 3, 'running', 'x', 0, 0)",
                params![src, dest],
            )
        };
        store.call(insert).await.unwrap();
        let dup = store.call(insert).await;
        assert!(matches!(dup, Err(ServiceError::Database { .. })), "{dup:?}");
    }
}
