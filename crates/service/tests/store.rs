//! The store's behaviour: the same cases run against SQLite and against a real PostgreSQL
//! (`BRU_TEST_POSTGRES`, or a private cluster started by bru-test-support).

use std::sync::Arc;
use std::time::Duration;

use bru_service::{
    Bandwidth, Claim, ClaimPolicy, DeltaStatus, NewImage, Outcome, PostgresOptions, PostgresStore,
    ServiceError, SqliteStore, Store,
};
use bru_test_support::TestPostgres;

/// An open store and what keeps its database alive (dropped after the store).
struct Opened {
    store: Arc<dyn Store>,
    _guard: Box<dyn std::any::Any + Send>,
}

async fn sqlite() -> Opened {
    let tmp = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(tmp.path().join("state/store.sqlite"))
        .await
        .unwrap();
    Opened {
        store: Arc::new(store),
        _guard: Box::new(tmp),
    }
}

async fn postgres() -> Opened {
    let pg = TestPostgres::shared();
    let url = pg.create_database();
    let store = PostgresStore::connect(&url, PostgresOptions::default())
        .await
        .unwrap();
    Opened {
        store: Arc::new(store),
        _guard: Box::new(pg),
    }
}

/// Each case as a test on each backend.
macro_rules! suite {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let opened = super::sqlite().await;
                    super::$case(Arc::clone(&opened.store)).await;
                }
            )*
            use std::sync::Arc;
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let opened = super::postgres().await;
                    super::$case(Arc::clone(&opened.store)).await;
                }
            )*
            use std::sync::Arc;
        }
    };
}

suite!(
    releases_round_trip_with_their_images,
    concurrent_releases_with_one_commit_record_one,
    images_of_no_release_are_recorded_once_per_location,
    fleet_bandwidth_is_set_read_and_cleared,
    metadata_round_trips,
    one_running_then_one_success_row_per_pair,
    stale_rows_are_taken_over_and_failures_wait_for_the_cool_down,
    concurrent_claims_make_one_builder,
    abandoned_rows_go_for_their_owner_only,
    deltas_of_the_same_contents_are_found_under_other_ids,
);

fn image(service: &str, n: u8) -> NewImage {
    NewImage {
        service_name: service.into(),
        location: format!("127.0.0.1:5000/{service}:{n}"),
        content_hash: format!("sha256:{}", hex::encode([n; 32])),
        image_size: 1000 + u64::from(n),
    }
}

/// Two releases of one fleet; returns (source image, target image) of service `web`.
async fn pair(store: &dyn Store) -> (u64, u64) {
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

async fn releases_round_trip_with_their_images(store: Arc<dyn Store>) {
    let r1 = store
        .add_release("demo", "84d3d8f4", vec![image("web", 1), image("api", 1)])
        .await
        .unwrap();
    assert_eq!(
        (r1.id, r1.fleet.as_str(), r1.status.as_str()),
        (1, "demo", "success")
    );
    let names: Vec<_> = r1.images.iter().map(|i| i.service_name.as_str()).collect();
    assert_eq!(names, ["api", "web"]);
    assert_eq!(r1.images[1].image_size, 1001);
    let r2 = store
        .add_release("demo", "84d3aaaa", vec![image("web", 2)])
        .await
        .unwrap();
    let other = store
        .add_release("other", "84d3d8f4", vec![image("web", 3)])
        .await
        .unwrap();
    assert_ne!(other.fleet_id, r1.fleet_id);

    assert_eq!(store.release(r2.id).await.unwrap(), Some(r2.clone()));
    assert_eq!(store.release(99).await.unwrap(), None);
    assert_eq!(store.releases_by_commit("84d3").await.unwrap().len(), 3);
    assert_eq!(
        store.releases_by_commit("84d3a").await.unwrap(),
        vec![r2.clone()]
    );
    // Case-sensitive, and LIKE wildcards are plain characters.
    assert!(store.releases_by_commit("84D3").await.unwrap().is_empty());
    assert!(store.releases_by_commit("84%").await.unwrap().is_empty());
    assert!(store.releases_by_commit("84_3").await.unwrap().is_empty());
    assert_eq!(
        store.list_releases(Some("demo")).await.unwrap(),
        vec![r1.clone(), r2]
    );
    assert_eq!(store.list_releases(None).await.unwrap().len(), 3);
    assert!(store.list_releases(Some("none")).await.unwrap().is_empty());
    assert_eq!(
        store.image(r1.images[0].id).await.unwrap(),
        Some(r1.images[0].clone())
    );
    assert_eq!(store.image(9999).await.unwrap(), None);

    match store
        .add_release("demo", "84d3d8f4", vec![image("web", 9)])
        .await
    {
        Err(ServiceError::ReleaseExists { fleet, commit }) => {
            assert_eq!((fleet.as_str(), commit.as_str()), ("demo", "84d3d8f4"));
        }
        other => panic!("expected ReleaseExists, got {other:?}"),
    }
    assert_eq!(store.list_releases(None).await.unwrap().len(), 3);
}

async fn concurrent_releases_with_one_commit_record_one(store: Arc<dyn Store>) {
    let calls: Vec<_> = (0..8)
        .map(|i| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                store
                    .add_release("race", "cafe0001", vec![image("web", i)])
                    .await
            })
        })
        .collect();
    let mut recorded = 0;
    for call in calls {
        match call.await.unwrap() {
            Ok(_) => recorded += 1,
            Err(ServiceError::ReleaseExists { .. }) => {}
            Err(e) => panic!("{e:?}"),
        }
    }
    assert_eq!(recorded, 1);
    let releases = store.list_releases(Some("race")).await.unwrap();
    assert_eq!(releases.len(), 1);
    assert_eq!(releases[0].images.len(), 1, "no images of the losers");
}

async fn images_of_no_release_are_recorded_once_per_location(store: Arc<dyn Store>) {
    let mut new = image("app", 7);
    new.location = "reg:5000/team/app@sha256:77".into();
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let (store, new) = (Arc::clone(&store), new.clone());
            tokio::spawn(async move { store.add_image("reg:5000/team/app", new).await })
        })
        .collect();
    let mut found = Vec::new();
    for call in calls {
        found.push(call.await.unwrap().unwrap());
    }
    let a = found[0].clone();
    assert!(found.iter().all(|i| *i == a), "{found:?}");
    assert_eq!(a.service_name, "app");
    assert_eq!(a.location, new.location);
    assert_eq!(a.content_hash, new.content_hash);
    assert!(store.list_releases(None).await.unwrap().is_empty());
    assert_eq!(
        store.image_by_location(&new.location).await.unwrap(),
        Some(a)
    );
    assert_eq!(store.image_by_location("elsewhere").await.unwrap(), None);
}

async fn fleet_bandwidth_is_set_read_and_cleared(store: Arc<dyn Store>) {
    let (_, b) = pair(&*store).await;
    assert_eq!(store.image_fleet_bandwidth(b).await.unwrap(), None);
    let half: Bandwidth = "0.5".parse().unwrap();
    store.set_fleet_bandwidth("f", Some(half)).await.unwrap();
    assert_eq!(store.image_fleet_bandwidth(b).await.unwrap(), Some(half));
    // Another fleet's setting does not leak; a new fleet is created by the setting.
    store
        .set_fleet_bandwidth("other", Some("10".parse().unwrap()))
        .await
        .unwrap();
    assert_eq!(store.image_fleet_bandwidth(b).await.unwrap(), Some(half));
    let r = store
        .add_release("other", "ccc333", vec![image("api", 3)])
        .await
        .unwrap();
    assert_eq!(
        store.image_fleet_bandwidth(r.images[0].id).await.unwrap(),
        Some("10".parse().unwrap())
    );
    store.set_fleet_bandwidth("f", None).await.unwrap();
    assert_eq!(store.image_fleet_bandwidth(b).await.unwrap(), None);
    assert_eq!(store.image_fleet_bandwidth(9999).await.unwrap(), None);
}

async fn metadata_round_trips(store: Arc<dyn Store>) {
    assert_eq!(store.meta("k").await.unwrap(), None);
    store.set_meta("k", "1").await.unwrap();
    store.set_meta("k", "2").await.unwrap();
    assert_eq!(store.meta("k").await.unwrap().as_deref(), Some("2"));
}

async fn one_running_then_one_success_row_per_pair(store: Arc<dyn Store>) {
    let (src, dest) = pair(&*store).await;
    let policy = ClaimPolicy::default();
    let row = match store.claim_delta(src, dest, 3, "a", &policy).await.unwrap() {
        Claim::Claimed {
            row,
            took_over: false,
        } => row,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        (row.status, row.owner.as_str(), row.version),
        (DeltaStatus::Running, "a", 3)
    );
    assert_eq!((row.source_image, row.target_image), (src, dest));
    assert!(matches!(
        store.claim_delta(src, dest, 3, "b", &policy).await.unwrap(),
        Claim::Running(r) if r.id == row.id
    ));
    // Another version is another delta.
    assert!(matches!(
        store.claim_delta(src, dest, 2, "b", &policy).await.unwrap(),
        Claim::Claimed { .. }
    ));

    assert!(store.heartbeat(row.id, "a").await.unwrap());
    assert!(!store.heartbeat(row.id, "b").await.unwrap());
    let since = row.update_timestamp - 1;
    assert_eq!(
        store
            .latest_delta(src, dest, 3, since)
            .await
            .unwrap()
            .map(|d| d.id),
        Some(row.id)
    );
    // A running row with an old heartbeat is invisible to readers.
    assert_eq!(
        store.latest_delta(src, dest, 3, i64::MAX).await.unwrap(),
        None
    );

    let done = store
        .finish_delta(
            row.id,
            "a",
            Outcome::Success {
                location: "127.0.0.1:5000/web:delta-0123456789abcdef".into(),
                size: 42,
            },
        )
        .await
        .unwrap();
    assert_eq!((done.status, done.size), (DeltaStatus::Success, Some(42)));
    assert!(done.end_timestamp.is_some());
    assert!(matches!(
        store.claim_delta(src, dest, 3, "b", &policy).await.unwrap(),
        Claim::Ready(r) if r == done
    ));
    assert_eq!(
        store.latest_delta(src, dest, 3, i64::MAX).await.unwrap(),
        Some(done.clone())
    );
    assert_eq!(store.newest_delta(src, dest, 3).await.unwrap(), Some(done));
    // Finishing twice is refused.
    assert!(matches!(
        store
            .finish_delta(row.id, "a", Outcome::Failed { error: "x".into() })
            .await,
        Err(ServiceError::LostClaim { .. })
    ));
    assert!(matches!(
        store.claim_delta(src, 999, 3, "a", &policy).await,
        Err(ServiceError::UnknownImage { id: 999 })
    ));
}

async fn stale_rows_are_taken_over_and_failures_wait_for_the_cool_down(store: Arc<dyn Store>) {
    let (src, dest) = pair(&*store).await;
    let eager = ClaimPolicy {
        stale_after: Duration::ZERO,
        retry_failed_after: Duration::ZERO,
        ..ClaimPolicy::default()
    };
    let Claim::Claimed { row, .. } = store
        .claim_delta(src, dest, 3, "dead", &ClaimPolicy::default())
        .await
        .unwrap()
    else {
        panic!("not claimed")
    };
    let taken = match store
        .claim_delta(src, dest, 3, "alive", &eager)
        .await
        .unwrap()
    {
        Claim::Claimed {
            row,
            took_over: true,
        } => row,
        other => panic!("{other:?}"),
    };
    assert_eq!((taken.id, taken.owner.as_str()), (row.id, "alive"));
    assert!(!store.heartbeat(row.id, "dead").await.unwrap());
    assert!(matches!(
        store
            .finish_delta(
                row.id,
                "dead",
                Outcome::Failed {
                    error: "late".into()
                }
            )
            .await,
        Err(ServiceError::LostClaim { .. })
    ));
    let failed = store
        .finish_delta(
            row.id,
            "alive",
            Outcome::Failed {
                error: "boom".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(failed.error_message.as_deref(), Some("boom"));
    assert_eq!(failed.status, DeltaStatus::Failed);
    assert_eq!(store.latest_delta(src, dest, 3, 0).await.unwrap(), None);

    assert!(matches!(
        store.claim_delta(src, dest, 3, "b", &ClaimPolicy::default()).await.unwrap(),
        Claim::Failed(r) if r == failed
    ));
    let retry = match store.claim_delta(src, dest, 3, "b", &eager).await.unwrap() {
        Claim::Claimed {
            row,
            took_over: false,
        } => row,
        other => panic!("{other:?}"),
    };
    assert_ne!(retry.id, failed.id);
    assert_eq!(store.newest_delta(src, dest, 3).await.unwrap(), Some(retry));
}

async fn concurrent_claims_make_one_builder(store: Arc<dyn Store>) {
    let (src, dest) = pair(&*store).await;
    let calls: Vec<_> = (0..32)
        .map(|i| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                store
                    .claim_delta(src, dest, 3, &format!("owner-{i}"), &ClaimPolicy::default())
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut claimed = Vec::new();
    let mut running = Vec::new();
    for call in calls {
        match call.await.unwrap() {
            Claim::Claimed { row, took_over } => {
                assert!(!took_over);
                claimed.push(row);
            }
            Claim::Running(row) => running.push(row),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(claimed.len(), 1, "{claimed:?}");
    assert_eq!(running.len(), 31);
    assert!(running.iter().all(|r| r.id == claimed[0].id));
    assert_eq!(
        store.newest_delta(src, dest, 3).await.unwrap(),
        Some(claimed[0].clone())
    );
}

async fn abandoned_rows_go_for_their_owner_only(store: Arc<dyn Store>) {
    let (src, dest) = pair(&*store).await;
    let policy = ClaimPolicy::default();
    let mine = |v| {
        let store = Arc::clone(&store);
        async move {
            match store
                .claim_delta(src, dest, v, "me", &policy)
                .await
                .unwrap()
            {
                Claim::Claimed { row, .. } => row,
                other => panic!("{other:?}"),
            }
        }
    };
    let (a, _b) = (mine(1).await, mine(2).await);
    let Claim::Claimed { row: theirs, .. } = store
        .claim_delta(src, dest, 3, "them", &policy)
        .await
        .unwrap()
    else {
        panic!("not claimed")
    };
    assert!(!store.abandon_delta(a.id, "them").await.unwrap());
    assert!(store.abandon_delta(a.id, "me").await.unwrap());
    assert!(!store.abandon_delta(a.id, "me").await.unwrap());
    assert_eq!(store.newest_delta(src, dest, 1).await.unwrap(), None);
    assert_eq!(store.abandon_owned("me").await.unwrap(), 1);
    assert_eq!(store.newest_delta(src, dest, 2).await.unwrap(), None);
    assert_eq!(
        store
            .newest_delta(src, dest, 3)
            .await
            .unwrap()
            .map(|r| r.id),
        Some(theirs.id)
    );
    // A finished row is not abandoned.
    store
        .finish_delta(
            theirs.id,
            "them",
            Outcome::Success {
                location: "x".into(),
                size: 1,
            },
        )
        .await
        .unwrap();
    assert_eq!(store.abandon_owned("them").await.unwrap(), 0);
    assert!(!store.abandon_delta(theirs.id, "them").await.unwrap());
}

async fn deltas_of_the_same_contents_are_found_under_other_ids(store: Arc<dyn Store>) {
    let (src, dest) = pair(&*store).await;
    // The same two contents recorded again under other ids (another fleet).
    let a = store
        .add_release("copy", "ccc111", vec![image("web", 1)])
        .await
        .unwrap();
    let b = store
        .add_release("copy", "ddd222", vec![image("web", 2)])
        .await
        .unwrap();
    let Claim::Claimed { row, .. } = store
        .claim_delta(src, dest, 3, "a", &ClaimPolicy::default())
        .await
        .unwrap()
    else {
        panic!("not claimed")
    };
    let (h1, h2) = (&a.images[0].content_hash, &b.images[0].content_hash);
    assert!(store.deltas_by_content(h1, h2, 3).await.unwrap().is_empty());
    let done = store
        .finish_delta(
            row.id,
            "a",
            Outcome::Success {
                location: "loc".into(),
                size: 7,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        store.deltas_by_content(h1, h2, 3).await.unwrap(),
        vec![done]
    );
    assert!(store.deltas_by_content(h2, h1, 3).await.unwrap().is_empty());
    assert!(store.deltas_by_content(h1, h2, 2).await.unwrap().is_empty());
}
