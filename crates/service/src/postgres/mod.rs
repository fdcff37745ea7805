//! The PostgreSQL implementation of [`Store`], for several server instances sharing one
//! database: a bounded connection pool, a deadline on every call, versioned migrations
//! applied at open under an advisory lock (safe when several instances start together).
//!
//! # Build-once leases
//!
//! The lease of a build is its `running` delta row: its owner, its heartbeat
//! (`update_timestamp`, bumped by [`Store::heartbeat`]) and the partial unique index that
//! allows one `running` row per (source, target, version). A claim is one short
//! transaction: it takes a transaction-scoped advisory lock on the pair
//! (`pg_advisory_xact_lock`), reads the newest rows of the pair and inserts, takes over or
//! answers by the rule SQLite applies as well. The lock serialises claims of one pair only
//! and is released at commit, rollback or connection loss. Times in rows come from the
//! database's clock, so instances on machines with skewed clocks agree on staleness.
//!
//! Not chosen: a session advisory lock held while the build runs lives on one pooled
//! connection and dies with it (a database restart or a dropped connection frees it while
//! the build goes on, and nobody else can see who holds it since when); a row locked
//! `FOR UPDATE` for the build keeps a transaction open for minutes (lost on restart, holds
//! back vacuum), and `SKIP LOCKED` answers "any free job", while a device asks for one
//! given pair.
//!
//! One file a job: [`schema`] (the migrations, applied under an advisory lock), [`rows`]
//! (column lists, mapping rows to records, id and size conversions),
//! [`query`](mod@query) (statements prepared once per connection, the database clock,
//! advisory lock keys), [`failure`] (errors inside a store call and which of them are
//! transient), this module (the store).

mod failure;
mod query;
mod rows;
mod schema;
mod tls;

use std::time::Duration;

use async_trait::async_trait;
use bru_delta::Bandwidth;
use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;

use crate::store::{
    decide_claim, Claim, ClaimPolicy, ClaimStep, DeltaRecord, DeltaStatus, ImageRecord, NewImage,
    Outcome, ReleaseRecord, Store,
};
use crate::ServiceError;
use failure::Failure;
pub(crate) use failure::{pool_is_transient, postgres_is_transient};
use query::{execute, lock_key, query, query_one, query_opt, NOW};
use rows::{
    delta_row, delta_where, id, image_row, key, releases_where, version_key, DELTA_COLUMNS,
    IMAGE_COLUMNS,
};
use schema::migrate;

/// Connection settings of a [`PostgresStore`] that the URL does not carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PostgresOptions {
    /// Connections per instance at most (default 16). Calls beyond wait for a free one
    /// within [`PostgresOptions::query_timeout`].
    pub max_connections: usize,
    /// Deadline of a TCP connect and start-up (default 5 s), unless the URL has
    /// `connect_timeout`.
    pub connect_timeout: Duration,
    /// Deadline of one store call, waiting for a connection included (default 30 s). The
    /// server also cancels statements, lock waits and idle transactions running longer, and
    /// unacknowledged TCP data fails the connection after as long.
    pub query_timeout: Duration,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        PostgresOptions {
            max_connections: 16,
            connect_timeout: Duration::from_secs(5),
            query_timeout: Duration::from_secs(30),
        }
    }
}

/// A store call that ran past [`PostgresOptions::query_timeout`] (transient).
#[derive(Debug, thiserror::Error)]
#[error("no answer from the database within {} s", .after.as_secs())]
pub struct DeadlineExceeded {
    /// The deadline.
    pub after: Duration,
}

/// A [`Store`] in a PostgreSQL database shared by any number of instances.
#[derive(Clone)]
pub struct PostgresStore {
    /// The URL without its password, for errors and logs.
    label: String,
    pool: Pool,
    options: PostgresOptions,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("database", &self.label)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Connects to the database at `url` (`postgres://USER[:PASSWORD]@HOST[:PORT]/DB[?…]`)
    /// and migrates its schema. Instances starting together migrate one after the other.
    /// `sslmode=require` in the URL: TLS, with the server's certificate verified against the
    /// public roots and the CA certificates of `sslrootcert=FILE` (PEM) if given; otherwise
    /// plain connections (libpq's unverified `prefer` is not offered).
    pub async fn connect(
        url: &str,
        options: PostgresOptions,
    ) -> Result<PostgresStore, ServiceError> {
        let label = bru_core::redact_url(url).into_owned();
        let (url, root_cert) = tls::take_root_cert(url);
        // The parser's message may quote the URL, password included: it is not kept.
        let mut config: tokio_postgres::Config =
            url.parse().map_err(|_| ServiceError::InvalidInput {
                what: "database URL",
                reason: format!("{label} is not a PostgreSQL connection URL"),
            })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(options.connect_timeout);
        }
        if config.get_application_name().is_none() {
            config.application_name("balena-release-update");
        }
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(30));
        config.tcp_user_timeout(options.query_timeout);
        let deadline = options.query_timeout.as_millis();
        let server_options = format!(
            "{} -c statement_timeout={deadline} -c lock_timeout={deadline} \
             -c idle_in_transaction_session_timeout={deadline}",
            config.get_options().unwrap_or_default()
        );
        config.options(server_options.trim_start());
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match tls::connector(config.get_ssl_mode(), root_cert.as_deref())? {
            Some(tls) => Manager::from_config(config, tls, manager_config),
            None => Manager::from_config(config, NoTls, manager_config),
        };
        let pool = Pool::builder(manager)
            .max_size(options.max_connections.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(options.query_timeout))
            .create_timeout(Some(options.connect_timeout))
            .recycle_timeout(Some(options.connect_timeout))
            .build()
            .map_err(|e| ServiceError::InvalidInput {
                what: "database pool",
                reason: e.to_string(),
            })?;
        let store = PostgresStore {
            label,
            pool,
            options,
        };
        store
            .timed(async {
                let mut client = store.pool.get().await?;
                migrate(&mut client, &store.label).await
            })
            .await?;
        Ok(store)
    }

    /// The database URL without its password.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The schema version of the database.
    pub async fn schema_version(&self) -> Result<i64, ServiceError> {
        self.timed(async {
            let c = self.pool.get().await?;
            let row = query_one(
                &c,
                "SELECT coalesce(max(version), 0)::bigint FROM bru_schema_migrations",
                &[],
            )
            .await?;
            Ok(row.try_get(0)?)
        })
        .await
    }

    /// Runs one store call under the call deadline.
    async fn timed<T>(
        &self,
        work: impl std::future::Future<Output = Result<T, Failure>>,
    ) -> Result<T, ServiceError> {
        let after = self.options.query_timeout;
        match tokio::time::timeout(after, work).await {
            Ok(result) => result.map_err(|e| e.into_service(&self.label)),
            Err(_) => Err(Failure::TimedOut(after).into_service(&self.label)),
        }
    }
}

#[async_trait]
impl Store for PostgresStore {
    async fn meta(&self, key: &str) -> Result<Option<String>, ServiceError> {
        self.timed(async {
            let c = self.pool.get().await?;
            let row = query_opt(&c, "SELECT value FROM meta WHERE key = $1", &[&key]).await?;
            Ok(row.map(|r| r.try_get(0)).transpose()?)
        })
        .await
    }

    async fn set_meta(&self, key: &str, value: &str) -> Result<(), ServiceError> {
        self.timed(async {
            let c = self.pool.get().await?;
            execute(
                &c,
                "INSERT INTO meta (key, value) VALUES ($1, $2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                &[&key, &value],
            )
            .await?;
            Ok(())
        })
        .await
    }

    async fn add_release(
        &self,
        fleet: &str,
        commit: &str,
        images: Vec<NewImage>,
    ) -> Result<ReleaseRecord, ServiceError> {
        let release = self
            .timed(async {
                let mut c = self.pool.get().await?;
                let tx = c.transaction().await?;
                let fleet_id = fleet_id(&tx, fleet).await?;
                let release_id: i64 = match query_one(
                    &tx,
                    &format!(
                        "INSERT INTO releases (fleet, \"commit\", status, created_at)
                             VALUES ($1, $2, 'success', {NOW}) RETURNING id"
                    ),
                    &[&fleet_id, &commit],
                )
                .await
                {
                    Ok(row) => row.try_get(0)?,
                    Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                        return Err(Failure::Service(ServiceError::ReleaseExists {
                            fleet: fleet.to_string(),
                            commit: commit.to_string(),
                        }))
                    }
                    Err(e) => return Err(e.into()),
                };
                for image in &images {
                    let image_id = insert_image(&tx, fleet_id, image).await?;
                    execute(
                        &tx,
                        "INSERT INTO release_images (release, image) VALUES ($1, $2)",
                        &[&release_id, &image_id],
                    )
                    .await?;
                }
                tx.commit().await?;
                Ok(id(release_id))
            })
            .await?;
        self.release(release).await?.ok_or(ServiceError::Task {
            reason: format!("release {release} vanished after insert"),
        })
    }

    async fn list_releases(&self, fleet: Option<&str>) -> Result<Vec<ReleaseRecord>, ServiceError> {
        self.timed(async {
            let c = self.pool.get().await?;
            match fleet {
                Some(name) => releases_where(&c, "fleets.name = $1", &[&name]).await,
                None => releases_where(&c, "TRUE", &[]).await,
            }
        })
        .await
    }

    async fn release(&self, release: u64) -> Result<Option<ReleaseRecord>, ServiceError> {
        self.timed(async {
            let c = self.pool.get().await?;
            let mut found = releases_where(&c, "releases.id = $1", &[&key(release)]).await?;
            Ok(found.pop())
        })
        .await
    }

    async fn releases_by_commit(&self, prefix: &str) -> Result<Vec<ReleaseRecord>, ServiceError> {
        self.timed(async {
            let c = self.pool.get().await?;
            // starts_with() keeps the match case-sensitive and free of LIKE wildcards.
            releases_where(&c, "starts_with(releases.\"commit\", $1)", &[&prefix]).await
        })
        .await
    }

    async fn image(&self, image: u64) -> Result<Option<ImageRecord>, ServiceError> {
        self.timed(async {
            let c = self.pool.get().await?;
            query_opt(
                &c,
                &format!(
                    "SELECT {IMAGE_COLUMNS} FROM images
                     JOIN services ON services.id = images.service WHERE images.id = $1"
                ),
                &[&key(image)],
            )
            .await?
            .map(|r| image_row(&r, 0))
            .transpose()
        })
        .await
    }

    async fn add_image(&self, fleet: &str, image: NewImage) -> Result<ImageRecord, ServiceError> {
        let image_id = self
            .timed(async {
                let mut c = self.pool.get().await?;
                let tx = c.transaction().await?;
                // One record per location: concurrent requests for it wait for the first.
                execute(
                    &tx,
                    "SELECT pg_advisory_xact_lock($1)",
                    &[&lock_key(&format!("bru-image {}", image.location))],
                )
                .await?;
                let found = query_opt(
                    &tx,
                    "SELECT id FROM images WHERE location = $1 AND status = 'success'
                         ORDER BY id LIMIT 1",
                    &[&image.location],
                )
                .await?;
                if let Some(row) = found {
                    return Ok(row.try_get::<_, i64>(0)?);
                }
                let fleet_id = fleet_id(&tx, fleet).await?;
                let new_id = insert_image(&tx, fleet_id, &image).await?;
                tx.commit().await?;
                Ok(new_id)
            })
            .await?;
        let image_id = id(image_id);
        self.image(image_id)
            .await?
            .ok_or(ServiceError::UnknownImage { id: image_id })
    }

    async fn image_by_location(&self, location: &str) -> Result<Option<ImageRecord>, ServiceError> {
        self.timed(async {
            let c = self.pool.get().await?;
            query_opt(
                &c,
                &format!(
                    "SELECT {IMAGE_COLUMNS} FROM images
                     JOIN services ON services.id = images.service
                     WHERE images.location = $1 AND images.status = 'success'
                     ORDER BY images.id LIMIT 1"
                ),
                &[&location],
            )
            .await?
            .map(|r| image_row(&r, 0))
            .transpose()
        })
        .await
    }

    async fn deltas_by_content(
        &self,
        src_hash: &str,
        dest_hash: &str,
        version: u32,
    ) -> Result<Vec<DeltaRecord>, ServiceError> {
        self.timed(async {
            let c = self.pool.get().await?;
            query(
                &c,
                &format!(
                    "SELECT {DELTA_COLUMNS} FROM deltas
                     JOIN images AS s ON s.id = deltas.originates_from__image
                     JOIN images AS d ON d.id = deltas.produces__image
                     WHERE s.content_hash = $1 AND d.content_hash = $2 AND deltas.version = $3
                       AND deltas.status = 'success'
                     ORDER BY deltas.id DESC LIMIT 16"
                ),
                &[&src_hash, &dest_hash, &version_key(version)],
            )
            .await?
            .iter()
            .map(delta_row)
            .collect()
        })
        .await
    }

    async fn set_fleet_bandwidth(
        &self,
        fleet: &str,
        bandwidth: Option<Bandwidth>,
    ) -> Result<(), ServiceError> {
        let bps = bandwidth.map(|b| i64::try_from(b.bytes_per_second()).unwrap_or(i64::MAX));
        self.timed(async {
            let c = self.pool.get().await?;
            execute(
                &c,
                &format!(
                    "INSERT INTO fleets (name, created_at, device_bandwidth) VALUES ($1, {NOW}, $2)
                     ON CONFLICT (name) DO UPDATE SET device_bandwidth = excluded.device_bandwidth"
                ),
                &[&fleet, &bps],
            )
            .await?;
            Ok(())
        })
        .await
    }

    async fn image_fleet_bandwidth(&self, image: u64) -> Result<Option<Bandwidth>, ServiceError> {
        let bps: Option<i64> = self
            .timed(async {
                let c = self.pool.get().await?;
                let row = query_opt(
                    &c,
                    "SELECT fleets.device_bandwidth FROM images
                         JOIN services ON services.id = images.service
                         JOIN fleets ON fleets.id = services.fleet WHERE images.id = $1",
                    &[&key(image)],
                )
                .await?;
                Ok(match row {
                    Some(r) => r.try_get::<_, Option<i64>>(0)?,
                    None => None,
                })
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
        self.timed(async {
            let c = self.pool.get().await?;
            delta_where(
                &c,
                "originates_from__image = $1 AND produces__image = $2 AND version = $3
                 AND (status = 'success' OR (status = 'running' AND update_timestamp > $4))",
                &[&key(src), &key(dest), &version_key(version), &running_since],
            )
            .await
        })
        .await
    }

    async fn newest_delta(
        &self,
        src: u64,
        dest: u64,
        version: u32,
    ) -> Result<Option<DeltaRecord>, ServiceError> {
        self.timed(async {
            let c = self.pool.get().await?;
            delta_where(
                &c,
                "originates_from__image = $1 AND produces__image = $2 AND version = $3",
                &[&key(src), &key(dest), &version_key(version)],
            )
            .await
        })
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
        self.timed(async {
            let mut c = self.pool.get().await?;
            // A successful delta is final (nothing changes it), so it needs no lock: the
            // path of every poll once the delta is built is this one query.
            let done = delta_where(
                &c,
                "originates_from__image = $1 AND produces__image = $2 AND version = $3
                 AND status = 'success'",
                &[&key(src), &key(dest), &version_key(version)],
            )
            .await?;
            if let Some(row) = done {
                return Ok(Claim::Ready(row));
            }
            let tx = c.transaction().await?;
            // Claims of one pair, from any instance, one after the other.
            execute(
                &tx,
                "SELECT pg_advisory_xact_lock($1)",
                &[&lock_key(&format!("bru-delta {src} {dest} {version}"))],
            )
            .await?;
            let now: i64 = query_one(&tx, &format!("SELECT {NOW}"), &[])
                .await?
                .try_get(0)?;
            for image in [src, dest] {
                let known =
                    query_opt(&tx, "SELECT 1 FROM images WHERE id = $1", &[&key(image)]).await?;
                if known.is_none() {
                    return Err(Failure::Service(ServiceError::UnknownImage { id: image }));
                }
            }
            // The newest row of each status.
            let rows = query(
                &tx,
                &format!(
                    "SELECT DISTINCT ON (deltas.status) {DELTA_COLUMNS} FROM deltas
                         WHERE originates_from__image = $1 AND produces__image = $2
                           AND version = $3
                         ORDER BY deltas.status, deltas.id DESC"
                ),
                &[&key(src), &key(dest), &version_key(version)],
            )
            .await?;
            let (mut success, mut running, mut failed) = (None, None, None);
            for r in &rows {
                let row = delta_row(r)?;
                match row.status {
                    DeltaStatus::Success => success = Some(row),
                    DeltaStatus::Running => running = Some(row),
                    DeltaStatus::Failed => failed = Some(row),
                }
            }
            let claim = match decide_claim(now, policy, success, running, failed) {
                ClaimStep::Answer(claim) => claim,
                ClaimStep::TakeOver(row) => {
                    tracing::warn!(
                        delta = row.id,
                        previous_owner = %row.owner,
                        "taking over a stale running delta build"
                    );
                    let r = query_one(
                        &tx,
                        &format!(
                            "UPDATE deltas SET owner = $1, update_timestamp = $2
                                 WHERE id = $3 AND status = 'running'
                                 RETURNING {DELTA_COLUMNS}"
                        ),
                        &[&owner, &now, &key(row.id)],
                    )
                    .await?;
                    Claim::Claimed {
                        row: delta_row(&r)?,
                        took_over: true,
                    }
                }
                ClaimStep::Insert => {
                    let r = query_one(
                        &tx,
                        &format!(
                            "INSERT INTO deltas (originates_from__image, produces__image,
                                                     version, status, owner, created_at,
                                                     update_timestamp)
                                 VALUES ($1, $2, $3, 'running', $4, $5, $5)
                                 RETURNING {DELTA_COLUMNS}"
                        ),
                        &[&key(src), &key(dest), &version_key(version), &owner, &now],
                    )
                    .await?;
                    Claim::Claimed {
                        row: delta_row(&r)?,
                        took_over: false,
                    }
                }
            };
            tx.commit().await?;
            Ok(claim)
        })
        .await
    }

    async fn heartbeat(&self, delta: u64, owner: &str) -> Result<bool, ServiceError> {
        self.timed(async {
            let c = self.pool.get().await?;
            let n = execute(
                &c,
                &format!(
                    "UPDATE deltas SET update_timestamp = {NOW}
                         WHERE id = $1 AND owner = $2 AND status = 'running'"
                ),
                &[&key(delta), &owner],
            )
            .await?;
            Ok(n == 1)
        })
        .await
    }

    async fn finish_delta(
        &self,
        delta: u64,
        owner: &str,
        outcome: Outcome,
    ) -> Result<DeltaRecord, ServiceError> {
        let (status, location, size, error) = match outcome {
            Outcome::Success { location, size } => {
                (DeltaStatus::Success, Some(location), Some(key(size)), None)
            }
            Outcome::Failed { error } => (DeltaStatus::Failed, None, None, Some(error)),
        };
        self.timed(async {
            let c = self.pool.get().await?;
            let row = query_opt(
                &c,
                &format!(
                    "UPDATE deltas SET status = $1, is_stored_at__location = $2, size = $3,
                                error_message = $4, update_timestamp = {NOW},
                                end_timestamp = {NOW}
                         WHERE id = $5 AND owner = $6 AND status = 'running'
                         RETURNING {DELTA_COLUMNS}"
                ),
                &[
                    &status.as_str(),
                    &location,
                    &size,
                    &error,
                    &key(delta),
                    &owner,
                ],
            )
            .await?;
            match row {
                Some(r) => delta_row(&r),
                None => Err(Failure::Service(ServiceError::LostClaim { id: delta })),
            }
        })
        .await
    }

    async fn abandon_delta(&self, delta: u64, owner: &str) -> Result<bool, ServiceError> {
        self.timed(async {
            let c = self.pool.get().await?;
            let n = execute(
                &c,
                "DELETE FROM deltas WHERE id = $1 AND owner = $2 AND status = 'running'",
                &[&key(delta), &owner],
            )
            .await?;
            Ok(n == 1)
        })
        .await
    }

    async fn abandon_owned(&self, owner: &str) -> Result<u64, ServiceError> {
        self.timed(async {
            let c = self.pool.get().await?;
            Ok(execute(
                &c,
                "DELETE FROM deltas WHERE owner = $1 AND status = 'running'",
                &[&owner],
            )
            .await?)
        })
        .await
    }
}

/// The id of fleet `name`, recorded first if it is new.
async fn fleet_id(c: &impl GenericClient, name: &str) -> Result<i64, tokio_postgres::Error> {
    execute(
        c,
        &format!(
            "INSERT INTO fleets (name, created_at) VALUES ($1, {NOW})
             ON CONFLICT (name) DO NOTHING"
        ),
        &[&name],
    )
    .await?;
    query_one(c, "SELECT id FROM fleets WHERE name = $1", &[&name])
        .await?
        .try_get(0)
}

/// Records `image` as a successful image of its service in fleet `fleet_id` (the service
/// is recorded first if it is new); returns the image's id.
async fn insert_image(
    c: &impl GenericClient,
    fleet_id: i64,
    image: &NewImage,
) -> Result<i64, tokio_postgres::Error> {
    execute(
        c,
        "INSERT INTO services (fleet, service_name) VALUES ($1, $2)
         ON CONFLICT (fleet, service_name) DO NOTHING",
        &[&fleet_id, &image.service_name],
    )
    .await?;
    let service_id: i64 = query_one(
        c,
        "SELECT id FROM services WHERE fleet = $1 AND service_name = $2",
        &[&fleet_id, &image.service_name],
    )
    .await?
    .try_get(0)?;
    query_one(
        c,
        &format!(
            "INSERT INTO images (service, location, content_hash, image_size, status, created_at)
             VALUES ($1, $2, $3, $4, 'success', {NOW}) RETURNING id"
        ),
        &[
            &service_id,
            &image.location,
            &image.content_hash,
            &key(image.image_size),
        ],
    )
    .await?
    .try_get(0)
}
