//! The embedded backend: bru-core's [`ReleaseSource`] and [`DeltaService`] over a [`Store`]
//! and a [`DeltaBuilder`], in-process.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bru_core::{Delta, DeltaService, DeltaTrigger, Image, Release, ReleaseSource, ServiceImage};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::builder::{chain, BuilderConfig, DeltaBuilder};
use crate::database::Database;
use crate::import::{absolutize, check_release, resolve_image, FleetFile};
use crate::postgres::PostgresOptions;
use crate::store::{
    decide_claim, now_ms, Claim, ClaimPolicy, ClaimStep, DeltaRecord, DeltaStatus, ImageRecord,
    ReleaseRecord, Store, DELTA_VERSION,
};
use crate::ServiceError;

/// Readers count a `running` row as live when its heartbeat is newer than this, or than
/// [`ClaimPolicy::stale_after`] if shorter (balena's readers use 3 minutes against a
/// 5 minute staleness limit, leaving room for clock skew).
const RUNNING_FRESH: Duration = Duration::from_secs(3 * 60);

/// The answer to a delta request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeltaRequest {
    /// The delta exists.
    Ready(DeltaRecord),
    /// It is being built (here or by another instance); ask again later.
    Building,
    /// The last build failed recently; not retried before the cool-down ends.
    Failed(DeltaRecord),
    /// The last build here was interrupted by a transient failure (registry down, disk
    /// full, …); a new one starts after `after`. Nothing was recorded as failed.
    RetryLater {
        /// How long until the next attempt.
        after: Duration,
        /// The transient error, with its causes.
        error: String,
    },
}

/// A pair whose last build here was interrupted.
#[derive(Debug, Clone)]
struct Interrupted {
    until: Instant,
    failures: u32,
    error: String,
}

/// Store plus builder: answers delta requests, building each delta at most once.
///
/// Within one process, concurrent requests for the same pair start one build (single
/// flight); across processes, [`Store::claim_delta`] decides.
#[derive(Debug)]
pub struct Embedded {
    store: Arc<dyn Store>,
    builder: Arc<DeltaBuilder>,
    owner: String,
    policy: ClaimPolicy,
    label: String,
    inflight: Arc<Mutex<HashSet<(u64, u64)>>>,
    interrupted: Arc<Mutex<HashMap<(u64, u64), Interrupted>>>,
    claim_lock: tokio::sync::Mutex<()>,
    tasks: Mutex<JoinSet<()>>,
    limits: Option<BuildLimits>,
}

/// How many builds one instance runs and holds; see [`Embedded::with_build_limits`].
#[derive(Debug, Clone)]
struct BuildLimits {
    workers: Arc<tokio::sync::Semaphore>,
    /// Builds claimed here at most: running plus queued.
    capacity: usize,
}

impl Embedded {
    /// A backend over `store` and `builder`. `owner` names this instance in delta rows
    /// (make it unique per process).
    pub fn new(
        store: Arc<dyn Store>,
        builder: DeltaBuilder,
        owner: impl Into<String>,
        policy: ClaimPolicy,
    ) -> Self {
        if builder.config().heartbeat_interval >= policy.stale_after {
            tracing::warn!(
                heartbeat = ?builder.config().heartbeat_interval,
                stale_after = ?policy.stale_after,
                "the heartbeat interval is not shorter than the stale limit: live builds may be taken over"
            );
        }
        Embedded {
            label: String::new(),
            store,
            builder: Arc::new(builder),
            owner: owner.into(),
            policy,
            inflight: Arc::default(),
            interrupted: Arc::default(),
            claim_lock: tokio::sync::Mutex::new(()),
            tasks: Mutex::new(JoinSet::new()),
            limits: None,
        }
    }

    /// Opens the store directory `dir`: the database is `dir/state/store.sqlite`, deltas of
    /// non-registry images go to `dir/state/deltas/`, and `dir/fleet.json` (if present) is
    /// imported the first time. `config.delta_dir` is replaced by `dir/state/deltas`.
    pub async fn open(
        dir: &Path,
        config: BuilderConfig,
        policy: ClaimPolicy,
    ) -> Result<Self, ServiceError> {
        Self::open_with(dir, None, config, policy).await
    }

    /// [`Embedded::open`] with the records in `database` instead of
    /// `dir/state/store.sqlite` (`None`: there). The directory still holds the fleet file
    /// and the deltas of non-registry images; instances sharing a PostgreSQL database each
    /// have their own directory and build deltas into the images' registries.
    pub async fn open_with(
        dir: &Path,
        database: Option<&Database>,
        mut config: BuilderConfig,
        policy: ClaimPolicy,
    ) -> Result<Self, ServiceError> {
        // Image paths from the fleet file and delta locations are recorded absolute, so
        // they stay valid from any working directory.
        let dir = &std::path::absolute(dir).map_err(ServiceError::io(dir))?;
        let state = state_dir(dir);
        let store = match database {
            Some(database) => {
                tracing::info!(%database, "opening the store");
                database.open(PostgresOptions::default()).await?
            }
            None => {
                Database::Sqlite(state.join("store.sqlite"))
                    .open(PostgresOptions::default())
                    .await?
            }
        };
        config.delta_dir = state.join("deltas");
        let fleet_file = dir.join("fleet.json");
        let owner = local_owner();
        // Work directories of builds whose process died (kill -9, crash) are removed.
        let workdir = config.workdir.clone();
        match tokio::task::spawn_blocking(move || {
            bru_delta::clean_dead_workdirs(workdir.as_deref())
        })
        .await
        {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::info!(removed = n, "removed work directories of dead builds"),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot clean work directories of dead builds")
            }
            Err(e) => tracing::warn!(error = %e, "cannot clean work directories of dead builds"),
        }
        let mut this = Embedded::new(Arc::clone(&store), DeltaBuilder::new(config), owner, policy);
        this.label = dir.display().to_string();
        if fleet_file.exists() && store.meta("fleet_file_imported").await?.is_none() {
            let file = FleetFile::read(&fleet_file)?;
            for release in &file.releases {
                let services: Vec<(String, String)> = release
                    .services
                    .iter()
                    .map(|(s, r)| Ok((s.clone(), absolutize(s, r, dir)?)))
                    .collect::<Result<_, ServiceError>>()?;
                // Releases imported by an earlier, interrupted import (or by another
                // process opening the store at the same time) are kept as they are.
                match this
                    .add_release(&file.fleet, &release.commit, &services)
                    .await
                {
                    Ok(_) | Err(ServiceError::ReleaseExists { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            store.set_meta("fleet_file_imported", "1").await?;
            tracing::info!(path = %fleet_file.display(), "imported the fleet file");
        }
        Ok(this)
    }

    /// Runs at most `workers` builds at a time here, and holds at most `queue` more
    /// claimed builds waiting for a worker (their rows keep heartbeating, so nobody takes
    /// them over). Beyond that, requests for pairs that need a build are answered
    /// [`DeltaRequest::Building`] without claiming them: the device asks again (504), and
    /// the pair is built by whichever instance has room then. Nothing is dropped and
    /// nothing built twice. Default: no limits.
    #[must_use]
    pub fn with_build_limits(mut self, workers: usize, queue: usize) -> Self {
        let workers = workers.max(1);
        self.limits = Some(BuildLimits {
            workers: Arc::new(tokio::sync::Semaphore::new(workers)),
            capacity: workers.saturating_add(queue),
        });
        self
    }

    /// Builds claimed by this instance and not ended yet (running or queued).
    pub fn builds_in_flight(&self) -> usize {
        self.inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The builder.
    pub fn builder(&self) -> &DeltaBuilder {
        &self.builder
    }

    /// Resolves each `(service, image reference)` (concurrently) and records a release of
    /// `fleet`. Nothing is recorded unless every image could be read.
    pub async fn add_release(
        &self,
        fleet: &str,
        commit: &str,
        services: &[(String, String)],
    ) -> Result<ReleaseRecord, ServiceError> {
        let names: Vec<&str> = services.iter().map(|(s, _)| s.as_str()).collect();
        check_release(fleet, commit, &names)?;
        let registry = &self.builder.config().registry;
        let images = futures::future::try_join_all(
            services
                .iter()
                .map(|(service, reference)| resolve_image(service, reference, registry)),
        )
        .await?;
        self.store
            .add_release(fleet, &commit.to_ascii_lowercase(), images)
            .await
    }

    /// Asks for the delta from image `src` to image `dest`: ready, being built (a build is
    /// started in the background if nobody is building it), or failed recently.
    pub async fn request(&self, src: u64, dest: u64) -> Result<DeltaRequest, ServiceError> {
        if self.is_inflight(src, dest) {
            return Ok(DeltaRequest::Building);
        }
        // A built delta is final: polls for it skip the claim lock below, which would
        // otherwise put every request of this process in one line.
        if let Some(row) = self
            .store
            .latest_delta(src, dest, DELTA_VERSION, i64::MAX)
            .await?
        {
            return Ok(DeltaRequest::Ready(row));
        }
        // One claim at a time in this process, so that concurrent callers see the in-flight
        // mark of the first instead of racing to the database.
        let _guard = self.claim_lock.lock().await;
        if self.is_inflight(src, dest) {
            return Ok(DeltaRequest::Building);
        }
        if let Some(i) = self.interrupted_until(src, dest) {
            return Ok(DeltaRequest::RetryLater {
                after: i.until.saturating_duration_since(Instant::now()),
                error: i.error,
            });
        }
        if let Some(limits) = &self.limits {
            if self.builds_in_flight() >= limits.capacity {
                return self.answer_without_claim(src, dest).await;
            }
        }
        let mut claim = self
            .store
            .claim_delta(src, dest, DELTA_VERSION, &self.owner, &self.policy)
            .await?;
        if let Claim::Running(row) = &claim {
            // A build whose process is gone from this machine is taken over at once, not
            // after its heartbeat goes stale; so is a row of this instance that no build
            // here runs any more (its build ended without reaching the database).
            let orphan = row.owner == self.owner || owner_is_dead(&row.owner);
            if orphan && self.store.abandon_delta(row.id, &row.owner).await? {
                tracing::info!(delta = row.id, owner = %row.owner, "taking over a build whose process ended");
                claim = self
                    .store
                    .claim_delta(src, dest, DELTA_VERSION, &self.owner, &self.policy)
                    .await?;
            }
        }
        Ok(match claim {
            Claim::Ready(row) => DeltaRequest::Ready(row),
            Claim::Running(_) => DeltaRequest::Building,
            Claim::Failed(row) => DeltaRequest::Failed(row),
            Claim::Claimed { row, took_over } => {
                if took_over {
                    tracing::info!(delta = row.id, "restarting a build abandoned by its owner");
                }
                self.spawn_build(row);
                DeltaRequest::Building
            }
        })
    }

    /// How long requests for (src, dest) are still held back after its build was
    /// interrupted by a transient failure, if they are (read only; for status answers).
    pub fn interrupted_for(&self, src: u64, dest: u64) -> Option<Duration> {
        self.interrupted_until(src, dest)
            .map(|i| i.until.saturating_duration_since(Instant::now()))
    }

    /// The answer for a pair when this instance has no room for another build: what the
    /// records say, and `Building` (ask again) where a claim would start a build.
    async fn answer_without_claim(
        &self,
        src: u64,
        dest: u64,
    ) -> Result<DeltaRequest, ServiceError> {
        let newest = self.store.newest_delta(src, dest, DELTA_VERSION).await?;
        let (mut success, mut running, mut failed) = (None, None, None);
        match newest.as_ref().map(|r| r.status) {
            Some(DeltaStatus::Success) => success = newest,
            Some(DeltaStatus::Running) => running = newest,
            Some(DeltaStatus::Failed) => failed = newest,
            None => {}
        }
        Ok(
            match decide_claim(now_ms(), &self.policy, success, running, failed) {
                ClaimStep::Answer(Claim::Ready(row)) => DeltaRequest::Ready(row),
                ClaimStep::Answer(Claim::Failed(row)) => DeltaRequest::Failed(row),
                _ => {
                    tracing::debug!(src, dest, "no room for another build here; not claimed");
                    DeltaRequest::Building
                }
            },
        )
    }

    /// The back-off of a pair interrupted by a transient failure, while it lasts.
    fn interrupted_until(&self, src: u64, dest: u64) -> Option<Interrupted> {
        let map = self.interrupted.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&(src, dest))
            .filter(|i| i.until > Instant::now())
            .cloned()
    }

    /// Gives up every build this instance still runs (see [`Store::abandon_owned`]), so
    /// that the next run builds them at once instead of waiting for them to go stale.
    /// Call it before the process ends with builds unfinished.
    pub async fn abandon_builds(&self) -> Result<u64, ServiceError> {
        let n = self.store.abandon_owned(&self.owner).await?;
        if n > 0 {
            tracing::info!(builds = n, "gave up unfinished builds");
        }
        Ok(n)
    }

    fn is_inflight(&self, src: u64, dest: u64) -> bool {
        self.inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&(src, dest))
    }

    fn spawn_build(&self, row: DeltaRecord) {
        let key = (row.source_image, row.target_image);
        self.inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key);
        let backoff = self.policy.retry_interrupted;
        let (store, builder, owner, inflight, interrupted) = (
            Arc::clone(&self.store),
            Arc::clone(&self.builder),
            self.owner.clone(),
            Arc::clone(&self.inflight),
            Arc::clone(&self.interrupted),
        );
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        // Reap finished tasks so the set does not grow in a long-running process.
        while tasks.try_join_next().is_some() {}
        let workers = self.limits.as_ref().map(|l| Arc::clone(&l.workers));
        tasks.spawn(async move {
            // Queued: wait for a worker, keeping the claim alive.
            let _permit = match workers {
                Some(workers) => {
                    let acquire = workers.acquire_owned();
                    tokio::pin!(acquire);
                    let mut tick = tokio::time::interval(builder.config().heartbeat_interval);
                    tick.tick().await;
                    loop {
                        tokio::select! {
                            permit = &mut acquire => break permit.ok(),
                            _ = tick.tick() => {
                                if let Ok(false) = store.heartbeat(row.id, &owner).await {
                                    tracing::warn!(delta = row.id, "a queued build lost its claim");
                                    inflight.lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
                                    return;
                                }
                            }
                        }
                    }
                }
                None => None,
            };
            let result = builder.run(&*store, &row, &owner).await;
            let mut interrupted = interrupted.lock().unwrap_or_else(|p| p.into_inner());
            match result {
                Ok(done) => {
                    interrupted.remove(&key);
                    tracing::debug!(delta = done.id, status = ?done.status, "build ended");
                }
                Err(e) if e.is_transient() => {
                    let failures = interrupted.get(&key).map_or(0, |i| i.failures) + 1;
                    let delay = backoff
                        .delay(failures, None)
                        .unwrap_or(backoff.max_delay);
                    tracing::warn!(delta = row.id, error = %chain(&e), ?delay, "build interrupted; will build again");
                    // Pairs nobody asked for again within a longest back-off after theirs
                    // ended are forgotten, so the map holds only pairs still in play.
                    let now = Instant::now();
                    interrupted.retain(|_, i| i.until + backoff.max_delay > now);
                    interrupted.insert(
                        key,
                        Interrupted {
                            until: Instant::now() + delay,
                            failures,
                            error: chain(&e),
                        },
                    );
                }
                Err(e) => tracing::warn!(delta = row.id, error = %chain(&e), "build ended without a record"),
            }
            inflight
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&key);
        });
    }

    /// Waits until every build started by this instance has ended.
    pub async fn wait_for_builds(&self) {
        loop {
            let mut set =
                std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
            if set.is_empty() {
                return;
            }
            while let Some(result) = set.join_next().await {
                if let Err(e) = result {
                    tracing::warn!(error = %e, "a build task failed");
                }
            }
        }
    }

    fn core_error(&self, e: ServiceError) -> bru_core::Error {
        let service = format!("embedded store {}", self.label)
            .trim_end()
            .to_string();
        match e {
            ServiceError::UnknownImage { id } => bru_core::Error::ImageNotFound { id },
            e if e.is_transient() => bru_core::Error::Unavailable {
                service,
                retry_after: None,
                source: Box::new(e),
            },
            e => bru_core::Error::Backend {
                service,
                source: Box::new(e),
            },
        }
    }
}

fn release(r: ReleaseRecord) -> Release {
    Release {
        id: r.id,
        commit: r.commit,
        application_id: r.fleet_id,
        images: r
            .images
            .into_iter()
            .map(|i| ServiceImage {
                service_name: i.service_name,
                image_id: i.id,
            })
            .collect(),
    }
}

fn image(i: ImageRecord) -> Image {
    Image {
        id: i.id,
        location: i.location,
        content_hash: Some(i.content_hash),
        size: i.image_size,
    }
}

#[async_trait]
impl ReleaseSource for Embedded {
    async fn release_by_id(&self, id: u64) -> Result<Option<Release>, bru_core::Error> {
        let found = self
            .store
            .release(id)
            .await
            .map_err(|e| self.core_error(e))?;
        Ok(found.filter(|r| r.status == "success").map(release))
    }

    async fn releases_by_commit(&self, prefix: &str) -> Result<Vec<Release>, bru_core::Error> {
        let found = self
            .store
            .releases_by_commit(prefix)
            .await
            .map_err(|e| self.core_error(e))?;
        Ok(found
            .into_iter()
            .filter(|r| r.status == "success")
            .map(release)
            .collect())
    }

    async fn image(&self, id: u64) -> Result<Option<Image>, bru_core::Error> {
        let found = self.store.image(id).await.map_err(|e| self.core_error(e))?;
        Ok(found.filter(|i| i.status == "success").map(image))
    }

    async fn latest_delta(&self, src: u64, dest: u64) -> Result<Option<Delta>, bru_core::Error> {
        let fresh = RUNNING_FRESH.min(self.policy.stale_after);
        let since = now_ms().saturating_sub(fresh.as_millis() as i64);
        let found = self
            .store
            .latest_delta(src, dest, DELTA_VERSION, since)
            .await
            .map_err(|e| self.core_error(e))?;
        Ok(found.map(|d| Delta {
            id: d.id,
            status: d.status,
            version: d.version,
            location: d.location,
            size: d.size.unwrap_or(0),
        }))
    }
}

#[async_trait]
impl DeltaService for Embedded {
    /// Ready or building; a recent failure is an error with status 422 (permanent for this
    /// pair until the cool-down ends), as a delta server would answer it.
    async fn request_delta(&self, src: u64, dest: u64) -> Result<DeltaTrigger, bru_core::Error> {
        match self
            .request(src, dest)
            .await
            .map_err(|e| self.core_error(e))?
        {
            DeltaRequest::Ready(_) => Ok(DeltaTrigger::Ready),
            DeltaRequest::Building => Ok(DeltaTrigger::Building),
            DeltaRequest::RetryLater { after, error } => Err(bru_core::Error::Unavailable {
                service: format!("the delta from image {src} to image {dest}"),
                retry_after: Some(after),
                source: error.into(),
            }),
            DeltaRequest::Failed(row) => Err(bru_core::Error::Request {
                status: 422,
                message: format!(
                    "the delta from image {src} to image {dest} failed: {}",
                    row.error_message.as_deref().unwrap_or("unknown error")
                ),
                retry_after: None,
            }),
        }
    }
}

/// The owner name of builds of this process: `embedded-<host>-<pid>-<start>`.
fn local_owner() -> String {
    format!(
        "embedded-{}-{}",
        bru_core::process::host_name(),
        bru_core::process::ProcessStamp::current()
    )
}

/// Whether `owner` names a process of this machine that has ended.
fn owner_is_dead(owner: &str) -> bool {
    let Some(rest) = owner.strip_prefix("embedded-") else {
        return false;
    };
    // `<host>-<pid>-<start>`: the host may contain dashes, the stamp does not.
    let mut parts = rest.rsplitn(3, '-');
    let (Some(start), Some(pid), Some(host)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    host == bru_core::process::host_name()
        && format!("{pid}-{start}")
            .parse::<bru_core::process::ProcessStamp>()
            .is_ok_and(|p| p.is_dead())
}

/// The state directory of a store directory (database and built deltas).
pub fn state_dir(store_dir: &Path) -> PathBuf {
    store_dir.join("state")
}
