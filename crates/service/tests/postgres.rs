//! Several instances on one real PostgreSQL database: migrations when they start together,
//! build once across instances, stale builds taken over, a database restart ridden out;
//! and which database failures are transient.

mod support;

use std::sync::Arc;
use std::time::Duration;

use bru_core::retry::RetryPolicy;
use bru_service::{
    BuilderConfig, Claim, ClaimPolicy, DeltaBuilder, DeltaRequest, DeltaStatus, Embedded,
    PostgresOptions, PostgresStore, ServiceError, Store as _, DELTA_VERSION,
};
use bru_test_support::TestPostgres;

async fn connect(url: &str) -> PostgresStore {
    PostgresStore::connect(url, PostgresOptions::default())
        .await
        .unwrap()
}

/// An instance of the service on the database at `url`, with its own connection pool.
async fn instance(
    url: &str,
    deltas: &std::path::Path,
    owner: &str,
    policy: ClaimPolicy,
) -> Embedded {
    let mut config = BuilderConfig::new(deltas);
    config.heartbeat_interval = Duration::from_millis(200);
    Embedded::new(
        Arc::new(connect(url).await),
        DeltaBuilder::new(config),
        owner,
        policy,
    )
}

/// Records release `i` (commit `000…i`) of image `images[i]`; returns the image ids.
async fn import(backend: &Embedded, images: &[String]) -> Vec<u64> {
    let mut ids = Vec::new();
    for (i, image) in images.iter().enumerate() {
        let release = backend
            .add_release(
                "fleet",
                &format!("{i:08x}"),
                &[("app".into(), image.clone())],
            )
            .await
            .unwrap();
        ids.push(release.images[0].id);
    }
    ids
}

fn count(pg: &TestPostgres, url: &str, sql: &str) -> u64 {
    pg.psql(url, sql).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn instances_starting_together_migrate_once_and_newer_schemas_are_refused() {
    let pg = TestPostgres::shared();
    let url = pg.create_database();
    let starts: Vec<_> = (0..6)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(
                async move { PostgresStore::connect(&url, PostgresOptions::default()).await },
            )
        })
        .collect();
    for start in starts {
        let store = start.await.unwrap().unwrap();
        assert_eq!(store.schema_version().await.unwrap(), 1);
    }
    assert_eq!(
        count(&pg, &url, "SELECT count(*) FROM bru_schema_migrations"),
        1
    );
    // Opening again migrates nothing and keeps the data.
    let store = connect(&url).await;
    store.set_meta("kept", "yes").await.unwrap();
    drop(store);
    let store = connect(&url).await;
    assert_eq!(store.meta("kept").await.unwrap().as_deref(), Some("yes"));
    drop(store);

    pg.psql(
        &url,
        "INSERT INTO bru_schema_migrations (version) VALUES (99)",
    )
    .unwrap();
    match PostgresStore::connect(&url, PostgresOptions::default()).await {
        Err(ServiceError::SchemaTooNew {
            found: 99,
            known: 1,
            ..
        }) => {}
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
}

#[tokio::test]
async fn the_database_itself_refuses_a_second_running_or_success_row() {
    let pg = TestPostgres::shared();
    let url = pg.create_database();
    let store = connect(&url).await;
    let mut ids = Vec::new();
    for (i, commit) in ["aaa111", "bbb222"].into_iter().enumerate() {
        let image = bru_service::NewImage {
            service_name: "web".into(),
            location: format!("reg/web:{i}"),
            content_hash: format!("sha256:{i}"),
            image_size: 1,
        };
        let r = store.add_release("f", commit, vec![image]).await.unwrap();
        ids.push(r.images[0].id);
    }
    for status in ["running", "success"] {
        let insert = format!(
            "INSERT INTO deltas (originates_from__image, produces__image, version, status, owner,
                                 created_at, update_timestamp)
             VALUES ({}, {}, 3, '{status}', 'x', 0, 0)",
            ids[0], ids[1]
        );
        pg.psql(&url, &insert).unwrap();
        let dup = pg.psql(&url, &insert).unwrap_err();
        assert!(dup.contains("duplicate key"), "{dup}");
    }
}

#[tokio::test]
async fn unreachable_and_restarting_databases_fail_transiently_wrong_ones_do_not() {
    // Nothing listens: refused, transient; the password is in no message.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let down = format!("postgres://bru:hunter2@127.0.0.1:{port}/bru");
    let e = PostgresStore::connect(&down, PostgresOptions::default())
        .await
        .unwrap_err();
    assert!(e.is_transient(), "{e:?}");
    let mut chain = format!("{e} {e:?}");
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        chain.push_str(&format!(" {s} {s:?}"));
        source = s.source();
    }
    assert!(!chain.contains("hunter2"), "{chain}");
    assert!(chain.contains("bru:***@127.0.0.1"), "{chain}");

    let mut pg = TestPostgres::start();
    // A database that does not exist is a configuration error, not an outage.
    let missing = pg.admin_url.replace("/postgres", "/no_such_database");
    let e = PostgresStore::connect(&missing, PostgresOptions::default())
        .await
        .unwrap_err();
    assert!(!e.is_transient(), "{e:?}");

    let url = pg.create_database();
    let store = connect(&url).await;
    store.set_meta("k", "v").await.unwrap();
    pg.stop();
    let e = store.meta("k").await.unwrap_err();
    assert!(e.is_transient(), "{e:?}");
    assert!(matches!(e, ServiceError::Database { .. }), "{e:?}");
    pg.start_again();
    // The pool replaces its broken connections; at most a few calls fail meanwhile, all
    // transiently.
    let mut failures = 0;
    let value = loop {
        match store.meta("k").await {
            Ok(v) => break v,
            Err(e) => {
                assert!(e.is_transient(), "{e:?}");
                failures += 1;
                assert!(failures < 20, "no recovery: {e:?}");
            }
        }
    };
    assert_eq!(value.as_deref(), Some("v"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_instances_build_each_pair_once() {
    let pg = TestPostgres::shared();
    let url = pg.create_database();
    let tmp = tempfile::tempdir().unwrap();
    let images = support::variants(&tmp.path().join("images"), 5, 60_000);
    let mut instances = Vec::new();
    for name in ["a", "b", "c"] {
        let deltas = tmp.path().join(format!("deltas-{name}"));
        instances.push(Arc::new(
            instance(&url, &deltas, name, ClaimPolicy::default()).await,
        ));
    }
    let ids = import(&instances[0], &images).await;
    let pairs: Vec<(u64, u64)> = ids[1..].iter().map(|&dest| (ids[0], dest)).collect();

    let calls: Vec<_> = (0..90)
        .map(|i| {
            let backend = Arc::clone(&instances[i % 3]);
            let (src, dest) = pairs[i % pairs.len()];
            tokio::spawn(async move { backend.request(src, dest).await })
        })
        .collect();
    for call in calls {
        match call.await.unwrap().unwrap() {
            DeltaRequest::Building | DeltaRequest::Ready(_) => {}
            other => panic!("{other:?}"),
        }
    }
    for i in &instances {
        i.wait_for_builds().await;
    }
    let built: u64 = instances.iter().map(|i| i.builder().builds_started()).sum();
    assert_eq!(built, pairs.len() as u64, "each pair built exactly once");
    assert_eq!(
        count(&pg, &url, "SELECT count(*) FROM deltas"),
        pairs.len() as u64
    );
    for &(src, dest) in &pairs {
        let row = instances[0]
            .store()
            .newest_delta(src, dest, DELTA_VERSION)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row.status, DeltaStatus::Success, "{row:?}");
        // Any instance answers any poll from the shared records.
        for i in &instances {
            assert_eq!(
                i.request(src, dest).await.unwrap(),
                DeltaRequest::Ready(row.clone())
            );
        }
    }
    assert_eq!(built, pairs.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_whose_owner_stopped_heartbeating_is_taken_over_by_another_instance() {
    let pg = TestPostgres::shared();
    let url = pg.create_database();
    let tmp = tempfile::tempdir().unwrap();
    let images = support::variants(&tmp.path().join("images"), 1, 30_000);
    let patient = instance(
        &url,
        &tmp.path().join("d1"),
        "patient",
        ClaimPolicy::default(),
    )
    .await;
    let ids = import(&patient, &images).await;
    let (src, dest) = (ids[0], ids[1]);
    // An instance on another machine claimed the build and went silent.
    let Claim::Claimed { row: gone, .. } = patient
        .store()
        .claim_delta(
            src,
            dest,
            DELTA_VERSION,
            "other-host-1",
            &ClaimPolicy::default(),
        )
        .await
        .unwrap()
    else {
        panic!("not claimed")
    };
    // Its heartbeat is fresh under the production limit: nobody else builds.
    assert_eq!(
        patient.request(src, dest).await.unwrap(),
        DeltaRequest::Building
    );
    patient.wait_for_builds().await;
    assert_eq!(patient.builder().builds_started(), 0);

    // Past the limit (zero here), another instance takes the row over and builds it.
    let eager = ClaimPolicy {
        stale_after: Duration::ZERO,
        ..ClaimPolicy::default()
    };
    let taker = instance(&url, &tmp.path().join("d2"), "taker", eager).await;
    assert_eq!(
        taker.request(src, dest).await.unwrap(),
        DeltaRequest::Building
    );
    taker.wait_for_builds().await;
    assert_eq!(taker.builder().builds_started(), 1);
    let row = taker
        .store()
        .newest_delta(src, dest, DELTA_VERSION)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (row.id, row.owner.as_str(), row.status),
        (gone.id, "taker", DeltaStatus::Success)
    );
    // The silent owner cannot record anything any more.
    assert!(!patient
        .store()
        .heartbeat(gone.id, "other-host-1")
        .await
        .unwrap());
    assert_eq!(count(&pg, &url, "SELECT count(*) FROM deltas"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn instances_ride_out_a_database_restart_without_lost_or_duplicated_records() {
    let mut pg = TestPostgres::start();
    let url = pg.create_database();
    let tmp = tempfile::tempdir().unwrap();
    let images = support::variants(&tmp.path().join("images"), 5, 1_000_000);
    let policy = ClaimPolicy {
        stale_after: Duration::from_secs(5),
        retry_interrupted: RetryPolicy {
            base: Duration::from_millis(100),
            max_delay: Duration::from_millis(400),
            retries: u32::MAX,
        },
        ..ClaimPolicy::default()
    };
    let mut instances = Vec::new();
    for name in ["a", "b", "c"] {
        let deltas = tmp.path().join(format!("deltas-{name}"));
        instances.push(Arc::new(instance(&url, &deltas, name, policy).await));
    }
    let ids = import(&instances[0], &images).await;
    let pairs: Vec<(u64, u64)> = ids[1..].iter().map(|&dest| (ids[0], dest)).collect();

    // Builds start on every instance; the database goes away while they run.
    for (i, &(src, dest)) in pairs.iter().enumerate() {
        let answer = instances[i % 3].request(src, dest).await.unwrap();
        assert_eq!(answer, DeltaRequest::Building);
    }
    pg = tokio::task::spawn_blocking(move || {
        pg.stop();
        pg
    })
    .await
    .unwrap();
    let mut transient = 0;
    for (i, &(src, dest)) in pairs.iter().enumerate() {
        match instances[(i + 1) % 3].request(src, dest).await {
            Ok(DeltaRequest::Building | DeltaRequest::RetryLater { .. }) => {}
            Err(e) => {
                assert!(e.is_transient(), "{e:?}");
                transient += 1;
            }
            Ok(other) => panic!("{other:?}"),
        }
    }
    assert!(
        transient > 0,
        "the database was down: some request must have failed"
    );
    pg = tokio::task::spawn_blocking(move || {
        pg.start_again();
        pg
    })
    .await
    .unwrap();

    // Devices keep polling any instance until every delta is ready.
    let mut round = 0;
    loop {
        let mut ready = 0;
        for (i, &(src, dest)) in pairs.iter().enumerate() {
            match instances[(i + round) % 3].request(src, dest).await {
                Ok(DeltaRequest::Ready(row)) => {
                    assert_eq!(row.status, DeltaStatus::Success);
                    ready += 1;
                }
                Ok(DeltaRequest::Building | DeltaRequest::RetryLater { .. }) => {}
                Ok(other) => panic!("{other:?}"),
                Err(e) => assert!(e.is_transient(), "{e:?}"),
            }
        }
        if ready == pairs.len() {
            break;
        }
        round += 1;
        assert!(
            round < 600,
            "the deltas were not all built after the restart"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for i in &instances {
        i.wait_for_builds().await;
    }
    // Nothing lost, nothing twice: the releases, one success row per pair, no leftovers.
    assert_eq!(
        instances[1]
            .store()
            .list_releases(None)
            .await
            .unwrap()
            .len(),
        images.len()
    );
    assert_eq!(
        count(
            &pg,
            &url,
            "SELECT count(*) FROM deltas WHERE status = 'success'"
        ),
        pairs.len() as u64
    );
    assert_eq!(
        count(
            &pg,
            &url,
            "SELECT count(*) FROM deltas WHERE status <> 'success'"
        ),
        0
    );
    assert_eq!(
        count(
            &pg,
            &url,
            "SELECT count(DISTINCT (originates_from__image, produces__image)) FROM deltas"
        ),
        pairs.len() as u64
    );
    let built: u64 = instances.iter().map(|i| i.builder().builds_started()).sum();
    eprintln!(
        "builds started across the restart: {built} for {} pairs",
        pairs.len()
    );
}

/// A store whose heartbeats (or image reads) wait for a gate: builds hang at their start
/// until it opens.
#[derive(Debug)]
struct Gated {
    inner: PostgresStore,
    gate: Arc<tokio::sync::Semaphore>,
    /// Gate image reads instead of heartbeats (builds hang, their heartbeats go on).
    images: bool,
}

#[async_trait::async_trait]
impl bru_service::Store for Gated {
    async fn meta(&self, key: &str) -> Result<Option<String>, ServiceError> {
        self.inner.meta(key).await
    }
    async fn set_meta(&self, key: &str, value: &str) -> Result<(), ServiceError> {
        self.inner.set_meta(key, value).await
    }
    async fn add_release(
        &self,
        fleet: &str,
        commit: &str,
        images: Vec<bru_service::NewImage>,
    ) -> Result<bru_service::ReleaseRecord, ServiceError> {
        self.inner.add_release(fleet, commit, images).await
    }
    async fn list_releases(
        &self,
        fleet: Option<&str>,
    ) -> Result<Vec<bru_service::ReleaseRecord>, ServiceError> {
        self.inner.list_releases(fleet).await
    }
    async fn release(&self, id: u64) -> Result<Option<bru_service::ReleaseRecord>, ServiceError> {
        self.inner.release(id).await
    }
    async fn releases_by_commit(
        &self,
        prefix: &str,
    ) -> Result<Vec<bru_service::ReleaseRecord>, ServiceError> {
        self.inner.releases_by_commit(prefix).await
    }
    async fn image(&self, id: u64) -> Result<Option<bru_service::ImageRecord>, ServiceError> {
        if self.images {
            drop(self.gate.acquire().await.unwrap());
        }
        self.inner.image(id).await
    }
    async fn add_image(
        &self,
        fleet: &str,
        image: bru_service::NewImage,
    ) -> Result<bru_service::ImageRecord, ServiceError> {
        self.inner.add_image(fleet, image).await
    }
    async fn image_by_location(
        &self,
        location: &str,
    ) -> Result<Option<bru_service::ImageRecord>, ServiceError> {
        self.inner.image_by_location(location).await
    }
    async fn deltas_by_content(
        &self,
        src_hash: &str,
        dest_hash: &str,
        version: u32,
    ) -> Result<Vec<bru_service::DeltaRecord>, ServiceError> {
        self.inner
            .deltas_by_content(src_hash, dest_hash, version)
            .await
    }
    async fn set_fleet_bandwidth(
        &self,
        fleet: &str,
        bandwidth: Option<bru_service::Bandwidth>,
    ) -> Result<(), ServiceError> {
        self.inner.set_fleet_bandwidth(fleet, bandwidth).await
    }
    async fn image_fleet_bandwidth(
        &self,
        image: u64,
    ) -> Result<Option<bru_service::Bandwidth>, ServiceError> {
        self.inner.image_fleet_bandwidth(image).await
    }
    async fn latest_delta(
        &self,
        src: u64,
        dest: u64,
        version: u32,
        running_since: i64,
    ) -> Result<Option<bru_service::DeltaRecord>, ServiceError> {
        self.inner
            .latest_delta(src, dest, version, running_since)
            .await
    }
    async fn newest_delta(
        &self,
        src: u64,
        dest: u64,
        version: u32,
    ) -> Result<Option<bru_service::DeltaRecord>, ServiceError> {
        self.inner.newest_delta(src, dest, version).await
    }
    async fn claim_delta(
        &self,
        src: u64,
        dest: u64,
        version: u32,
        owner: &str,
        policy: &ClaimPolicy,
    ) -> Result<Claim, ServiceError> {
        self.inner
            .claim_delta(src, dest, version, owner, policy)
            .await
    }
    async fn heartbeat(&self, id: u64, owner: &str) -> Result<bool, ServiceError> {
        if !self.images {
            drop(self.gate.acquire().await.unwrap());
        }
        self.inner.heartbeat(id, owner).await
    }
    async fn finish_delta(
        &self,
        id: u64,
        owner: &str,
        outcome: bru_service::Outcome,
    ) -> Result<bru_service::DeltaRecord, ServiceError> {
        self.inner.finish_delta(id, owner, outcome).await
    }
    async fn abandon_delta(&self, id: u64, owner: &str) -> Result<bool, ServiceError> {
        self.inner.abandon_delta(id, owner).await
    }
    async fn abandon_owned(&self, owner: &str) -> Result<u64, ServiceError> {
        self.inner.abandon_owned(owner).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_instance_leaves_new_builds_to_instances_with_room() {
    let pg = TestPostgres::shared();
    let url = pg.create_database();
    let tmp = tempfile::tempdir().unwrap();
    let images = support::variants(&tmp.path().join("images"), 4, 60_000);
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let store = Gated {
        inner: connect(&url).await,
        gate: Arc::clone(&gate),
        images: false,
    };
    // One worker and one queued build at most; its builds hang until the gate opens.
    let full = Embedded::new(
        Arc::new(store),
        DeltaBuilder::new(BuilderConfig::new(tmp.path().join("d1"))),
        "full",
        ClaimPolicy::default(),
    )
    .with_build_limits(1, 1);
    let ids = import(&full, &images).await;
    let pairs: Vec<(u64, u64)> = ids[1..].iter().map(|&dest| (ids[0], dest)).collect();
    for &(src, dest) in &pairs {
        assert_eq!(
            full.request(src, dest).await.unwrap(),
            DeltaRequest::Building
        );
    }
    // Two claimed (running and queued), two left for others: the devices ask again.
    assert_eq!(full.builds_in_flight(), 2);
    assert_eq!(count(&pg, &url, "SELECT count(*) FROM deltas"), 2);

    let roomy = instance(
        &url,
        &tmp.path().join("d2"),
        "roomy",
        ClaimPolicy::default(),
    )
    .await;
    for &(src, dest) in &pairs {
        assert_eq!(
            roomy.request(src, dest).await.unwrap(),
            DeltaRequest::Building
        );
    }
    roomy.wait_for_builds().await;
    assert_eq!(
        roomy.builder().builds_started(),
        2,
        "only the unclaimed pairs"
    );
    // The full instance answers from the records what others built.
    let (src, dest) = pairs[3];
    assert!(matches!(
        full.request(src, dest).await.unwrap(),
        DeltaRequest::Ready(row) if row.owner == "roomy"
    ));

    gate.add_permits(1 << 20);
    full.wait_for_builds().await;
    assert_eq!(full.builder().builds_started(), 2);
    assert_eq!(
        count(
            &pg,
            &url,
            "SELECT count(*) FROM deltas WHERE status = 'success'"
        ),
        4
    );
    assert_eq!(count(&pg, &url, "SELECT count(*) FROM deltas"), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queued_builds_keep_their_claim_alive() {
    let pg = TestPostgres::shared();
    let url = pg.create_database();
    let tmp = tempfile::tempdir().unwrap();
    let images = support::variants(&tmp.path().join("images"), 2, 30_000);
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let store = Gated {
        inner: connect(&url).await,
        gate: Arc::clone(&gate),
        images: true,
    };
    let stale = ClaimPolicy {
        stale_after: Duration::from_millis(500),
        ..ClaimPolicy::default()
    };
    let mut config = BuilderConfig::new(tmp.path().join("d1"));
    config.heartbeat_interval = Duration::from_millis(100);
    // One worker: the first build runs (hanging on its image reads), the second waits.
    let busy = Embedded::new(Arc::new(store), DeltaBuilder::new(config), "busy", stale)
        .with_build_limits(1, 1);
    let plain = instance(&url, &tmp.path().join("d2"), "other", stale).await;
    let ids = import(&plain, &images).await;
    let pairs = [(ids[0], ids[1]), (ids[0], ids[2])];
    for &(src, dest) in &pairs {
        assert_eq!(
            busy.request(src, dest).await.unwrap(),
            DeltaRequest::Building
        );
    }
    assert_eq!(busy.builds_in_flight(), 2);
    // Well past the stale limit, neither claim, running or queued, is taken over.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for &(src, dest) in &pairs {
        assert_eq!(
            plain.request(src, dest).await.unwrap(),
            DeltaRequest::Building
        );
    }
    plain.wait_for_builds().await;
    assert_eq!(plain.builder().builds_started(), 0);
    gate.add_permits(1 << 20);
    busy.wait_for_builds().await;
    assert_eq!(busy.builder().builds_started(), 2);
    assert_eq!(
        count(
            &pg,
            &url,
            "SELECT count(*) FROM deltas WHERE status = 'success' AND owner = 'busy'"
        ),
        2
    );
}

/// How many connections named `app` the server sees, and how many of them use TLS.
fn our_connections(pg: &TestPostgres, app: &str) -> (u64, u64) {
    let row = pg
        .psql(
            &pg.admin_url,
            &format!(
                "SELECT count(*) || ',' || count(*) FILTER (WHERE s.ssl) FROM pg_stat_activity a \
                 JOIN pg_stat_ssl s USING (pid) WHERE a.application_name = '{app}'"
            ),
        )
        .unwrap();
    let (all, tls) = row.split_once(',').unwrap();
    (all.parse().unwrap(), tls.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslmode_require_gives_verified_tls_and_an_unknown_server_is_refused_for_good() {
    let (pg, ca) = TestPostgres::start_tls();
    let db = pg.create_database();

    // Trusting the test CA: TLS, and the store works over it.
    let url = format!(
        "{db}?sslmode=require&sslrootcert={}&application_name=bru-tls",
        ca.display()
    );
    let store = connect(&url).await;
    assert!(store.schema_version().await.unwrap() > 0);
    assert!(store.list_releases(None).await.unwrap().is_empty());
    let (all, tls) = our_connections(&pg, "bru-tls");
    assert!(all >= 1 && tls == all, "{tls} of {all} connections use TLS");
    drop(store);

    // The public roots alone do not know the test CA: refused, and not worth retrying.
    let err = PostgresStore::connect(&format!("{db}?sslmode=require"), PostgresOptions::default())
        .await
        .unwrap_err();
    assert!(!err.is_transient(), "{err}");
    assert!(format!("{err:#}").contains("127.0.0.1"), "{err:#}");

    // A server without TLS cannot satisfy sslmode=require.
    let plain = TestPostgres::start();
    let plain_db = plain.create_database();
    let url = format!("{plain_db}?sslmode=require&sslrootcert={}", ca.display());
    let err = PostgresStore::connect(&url, PostgresOptions::default())
        .await
        .unwrap_err();
    assert!(!err.is_transient(), "{err}");

    // Without sslmode the connection stays plain, as before.
    let store = connect(&format!("{db}?application_name=bru-plain")).await;
    assert!(store.schema_version().await.unwrap() > 0);
    let (all, tls) = our_connections(&pg, "bru-plain");
    assert!(all >= 1 && tls == 0, "{tls} of {all} connections use TLS");
}
