//! The SQLite implementation of [`Store`]: one file, WAL journal, schema versioned with
//! `PRAGMA user_version`, blocking calls on tokio's blocking threads.
//!
//! One file a job: [`schema`] (the migrations and opening a connection), [`rows`] (mapping
//! rows to records), this module (the store); tests in `tests.rs`.

mod rows;
mod schema;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bru_delta::Bandwidth;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use crate::store::{
    decide_claim, now_ms, Claim, ClaimPolicy, ClaimStep, DeltaRecord, DeltaStatus, ImageRecord,
    NewImage, Outcome, ReleaseRecord, Store,
};
use crate::ServiceError;
use rows::{
    delta_by_id, delta_row, image_row, newest_with_status, releases_where, DELTA_COLUMNS,
    IMAGE_COLUMNS,
};
use schema::open_blocking;

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
