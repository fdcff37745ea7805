//! Build once, in-process and across instances sharing one database; stale builds taken
//! over; failed builds remembered.

mod support;

use std::sync::Arc;
use std::time::Duration;

use bru_core::{prepare_update, DeltaService, PrepareOptions, ReleaseRef, UpdateStatus};
use bru_service::{ClaimPolicy, DeltaRequest, DeltaStatus, Embedded, DELTA_VERSION};
use support::{backend, rebuilt_binary, two_images};

/// Imports releases 1 (v1) and 2 (v2) of one service; returns (src image, dest image).
async fn import(backend: &Embedded, v1: &str, v2: &str) -> (u64, u64) {
    let r1 = backend
        .add_release("fleet", "aaaa1111", &[("app".into(), v1.into())])
        .await
        .unwrap();
    let r2 = backend
        .add_release("fleet", "bbbb2222", &[("app".into(), v2.into())])
        .await
        .unwrap();
    (r1.images[0].id, r2.images[0].id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_requests_build_once_across_two_instances() {
    let tmp = tempfile::tempdir().unwrap();
    let (v1, v2) = two_images(&tmp.path().join("images"));
    let db = tmp.path().join("store.sqlite");
    let deltas = tmp.path().join("deltas");
    let a = Arc::new(backend(&db, &deltas, "a", ClaimPolicy::default()).await);
    let b = Arc::new(backend(&db, &deltas, "b", ClaimPolicy::default()).await);
    let (src, dest) = import(&a, &v1, &v2).await;

    let calls: Vec<_> = (0..50)
        .map(|i| {
            let backend = Arc::clone(if i % 2 == 0 { &a } else { &b });
            tokio::spawn(async move { backend.request(src, dest).await.unwrap() })
        })
        .collect();
    for call in calls {
        // Nothing is ready before the first build ends.
        assert_eq!(call.await.unwrap(), DeltaRequest::Building);
    }
    a.wait_for_builds().await;
    b.wait_for_builds().await;
    assert_eq!(
        a.builder().builds_started() + b.builder().builds_started(),
        1
    );

    let row = a
        .store()
        .newest_delta(src, dest, DELTA_VERSION)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.id, 1, "a single delta row");
    assert_eq!(row.status, DeltaStatus::Success);
    let size = row.size.unwrap();
    let dest_size = a.store().image(dest).await.unwrap().unwrap().image_size;
    assert!(size > 0 && size < dest_size, "{size} vs {dest_size}");
    let location = row.location.clone().unwrap();
    assert!(
        location.starts_with(&format!("oci:{}/delta-", deltas.display())),
        "{location}"
    );

    // The delta image is where the row says and rebuilds the target.
    let delta: bru_oci::ImageReference = location.parse().unwrap();
    let opts = bru_oci::RegistryOptions::default();
    let delta = bru_oci::open_source(&delta, &opts).await.unwrap();
    let info = bru_delta::inspect(&*delta).await.unwrap();
    assert_eq!(info.download_bytes, size);
    let target = bru_oci::open_source(&v2.parse().unwrap(), &opts)
        .await
        .unwrap();
    assert_eq!(
        info.target_image_id,
        target.image().await.unwrap().config_digest
    );

    // Later requests reuse the success row, from either instance.
    for backend in [&a, &b] {
        assert_eq!(
            backend.request(src, dest).await.unwrap(),
            DeltaRequest::Ready(row.clone())
        );
    }
    assert_eq!(
        a.builder().builds_started() + b.builder().builds_started(),
        1
    );
}

#[tokio::test]
async fn a_stale_running_build_is_taken_over_and_a_fresh_one_is_not() {
    let tmp = tempfile::tempdir().unwrap();
    let (v1, v2) = two_images(&tmp.path().join("images"));
    let db = tmp.path().join("store.sqlite");
    let deltas = tmp.path().join("deltas");
    let patient = backend(&db, &deltas, "patient", ClaimPolicy::default()).await;
    let (src, dest) = import(&patient, &v1, &v2).await;
    // An instance claims the build and dies without a heartbeat.
    let crashed = patient
        .store()
        .claim_delta(src, dest, DELTA_VERSION, "crashed", &ClaimPolicy::default())
        .await
        .unwrap();
    assert!(matches!(
        crashed,
        bru_service::Claim::Claimed {
            took_over: false,
            ..
        }
    ));

    // With the production threshold the row is still fresh: nobody else builds.
    assert_eq!(
        patient.request(src, dest).await.unwrap(),
        DeltaRequest::Building
    );
    patient.wait_for_builds().await;
    assert_eq!(patient.builder().builds_started(), 0);

    // Once it is stale, the next instance takes it over and finishes the same row.
    let eager = backend(
        &db,
        &deltas,
        "eager",
        ClaimPolicy {
            stale_after: Duration::ZERO,
            ..ClaimPolicy::default()
        },
    )
    .await;
    assert_eq!(
        eager.request(src, dest).await.unwrap(),
        DeltaRequest::Building
    );
    eager.wait_for_builds().await;
    assert_eq!(eager.builder().builds_started(), 1);
    let row = eager
        .store()
        .newest_delta(src, dest, DELTA_VERSION)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (row.id, row.status, row.owner.as_str()),
        (1, DeltaStatus::Success, "eager")
    );
    // The crashed owner can no longer record anything on it.
    assert!(!eager.store().heartbeat(row.id, "crashed").await.unwrap());
}

#[tokio::test]
async fn a_failed_build_is_remembered_until_the_cool_down_ends() {
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("images");
    let (v1, v2) = two_images(&images);
    let db = tmp.path().join("store.sqlite");
    let deltas = tmp.path().join("deltas");
    let backend1 = backend(&db, &deltas, "one", ClaimPolicy::default()).await;
    let (src, dest) = import(&backend1, &v1, &v2).await;
    // The target's app layer disappears after import: the build cannot read it.
    let target = bru_oci::open_source(&v2.parse().unwrap(), &Default::default())
        .await
        .unwrap()
        .image()
        .await
        .unwrap();
    let layout = bru_oci::OciDir::open(&images).unwrap();
    let lost = target.manifest.layers.last().unwrap();
    std::fs::remove_file(layout.blob_path(&lost.digest)).unwrap();

    assert_eq!(
        backend1.request(src, dest).await.unwrap(),
        DeltaRequest::Building
    );
    backend1.wait_for_builds().await;
    let failed = match backend1.request(src, dest).await.unwrap() {
        DeltaRequest::Failed(row) => row,
        other => panic!("expected the failure, got {other:?}"),
    };
    assert_eq!(failed.status, DeltaStatus::Failed);
    let message = failed.error_message.clone().unwrap();
    assert!(
        message.contains(&lost.digest.hex()[..12]) || message.contains("blob"),
        "{message}"
    );
    assert!(failed.end_timestamp.is_some() && failed.location.is_none());
    // Through bru-core: a permanent error with the stored message, not a new build.
    let err = backend1.request_delta(src, dest).await.unwrap_err();
    assert!(!err.is_transient());
    assert!(err.to_string().contains("failed"), "{err}");
    assert_eq!(backend1.builder().builds_started(), 1);

    // After the cool-down the pair is tried again, in a new row; the failure stays on record.
    let backend2 = backend(
        &db,
        &deltas,
        "two",
        ClaimPolicy {
            retry_failed_after: Duration::ZERO,
            ..ClaimPolicy::default()
        },
    )
    .await;
    assert_eq!(
        backend2.request(src, dest).await.unwrap(),
        DeltaRequest::Building
    );
    backend2.wait_for_builds().await;
    assert_eq!(backend2.builder().builds_started(), 1);
    let retried = backend2
        .store()
        .newest_delta(src, dest, DELTA_VERSION)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(retried.id, failed.id + 1);
    assert_eq!(retried.status, DeltaStatus::Failed);
}

#[tokio::test]
async fn prepare_and_wait_in_process_reports_the_delta_size() {
    let tmp = tempfile::tempdir().unwrap();
    let (v1, v2) = two_images(&tmp.path().join("images"));
    let backend = backend(
        &tmp.path().join("store.sqlite"),
        &tmp.path().join("deltas"),
        "me",
        ClaimPolicy::default(),
    )
    .await;
    let (_, dest) = import(&backend, &v1, &v2).await;
    let options = PrepareOptions {
        wait: true,
        timeout: Some(Duration::from_secs(120)),
        poll_interval: Duration::from_millis(20),
        retrigger_interval: Duration::from_millis(20),
    };
    let info = prepare_update(
        &ReleaseRef::Id(1),
        &ReleaseRef::Commit("bbbb".into()),
        &backend,
        &options,
    )
    .await
    .unwrap();
    assert_eq!(info.overall_status, UpdateStatus::Ready);
    let update = &info.service_updates[0];
    let delta = update.to_image.delta.as_ref().unwrap();
    let row = backend
        .store()
        .newest_delta(1, dest, DELTA_VERSION)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(delta.size, row.size.unwrap());
    assert_eq!(info.estimated_total_payload_size, Some(delta.size));
}

#[tokio::test]
async fn a_builder_that_does_not_own_the_row_records_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (v1, v2) = two_images(&tmp.path().join("images"));
    let backend = backend(
        &tmp.path().join("store.sqlite"),
        &tmp.path().join("deltas"),
        "me",
        ClaimPolicy::default(),
    )
    .await;
    let (src, dest) = import(&backend, &v1, &v2).await;
    let bru_service::Claim::Claimed { row, .. } = backend
        .store()
        .claim_delta(src, dest, DELTA_VERSION, "other", &ClaimPolicy::default())
        .await
        .unwrap()
    else {
        panic!("not claimed")
    };
    let err = backend
        .builder()
        .run(&**backend.store(), &row, "me")
        .await
        .unwrap_err();
    assert!(
        matches!(err, bru_service::ServiceError::LostClaim { id } if id == row.id),
        "{err:?}"
    );
    let now = backend
        .store()
        .newest_delta(src, dest, DELTA_VERSION)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (now.status, now.owner.as_str()),
        (DeltaStatus::Running, "other")
    );
    assert_eq!(now.location, None);
}

#[tokio::test]
async fn a_fleet_file_is_imported_once_and_a_malformed_one_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    support::two_images(&dir.join("images"));
    let fleet = r#"{"fleet": "f", "releases": [
        {"commit": "aaa111", "services": {"app": "oci:images:v1"}},
        {"commit": "bbb222", "services": {"app": "oci:images:v2", "side": "oci:images:v1"}}]}"#;
    std::fs::write(dir.join("fleet.json"), fleet).unwrap();
    let config = || bru_service::BuilderConfig::new("ignored");
    for _ in 0..2 {
        let backend = Embedded::open(&dir, config(), ClaimPolicy::default())
            .await
            .unwrap();
        let releases = backend.store().list_releases(Some("f")).await.unwrap();
        let shape: Vec<_> = releases
            .iter()
            .map(|r| (r.id, r.commit.as_str(), r.images.len()))
            .collect();
        assert_eq!(shape, [(1, "aaa111", 1), (2, "bbb222", 2)]);
        let location = &releases[0].images[0].location;
        assert_eq!(
            *location,
            format!("oci:{}:v1", dir.join("images").display())
        );
    }

    let bad = tmp.path().join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(bad.join("fleet.json"), r#"{"fleet": "f", "releasez": []}"#).unwrap();
    let err = Embedded::open(&bad, config(), ClaimPolicy::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, bru_service::ServiceError::FleetFile { reason, .. } if reason.contains("releasez")),
        "{err:?}"
    );
}

/// Each fleet's deltas are built for its devices' bandwidth: the same image pair costs a fleet
/// on a slow link fewer bytes than a fleet on a fast one (which gets fewer commands instead).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deltas_follow_the_fleet_bandwidth() {
    let tmp = tempfile::tempdir().unwrap();
    let (v1, v2) = rebuilt_binary(&tmp.path().join("images"));
    let b = backend(
        &tmp.path().join("store.sqlite"),
        &tmp.path().join("deltas"),
        "a",
        ClaimPolicy::default(),
    )
    .await;
    let mut sizes = Vec::new();
    for (fleet, mbps) in [("slow", "0.001"), ("fast", "100000")] {
        b.store()
            .set_fleet_bandwidth(fleet, Some(mbps.parse().unwrap()))
            .await
            .unwrap();
        let r1 = b
            .add_release(fleet, "aaaa1111", &[("app".into(), v1.clone())])
            .await
            .unwrap();
        let r2 = b
            .add_release(fleet, "bbbb2222", &[("app".into(), v2.clone())])
            .await
            .unwrap();
        let (src, dest) = (r1.images[0].id, r2.images[0].id);
        b.request(src, dest).await.unwrap();
        b.wait_for_builds().await;
        let row = b
            .store()
            .newest_delta(src, dest, DELTA_VERSION)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row.status, DeltaStatus::Success, "{row:?}");
        sizes.push(row.size.unwrap());
    }
    assert!(
        sizes[0] < sizes[1],
        "slow {} vs fast {}",
        sizes[0],
        sizes[1]
    );
}

#[tokio::test]
async fn the_same_contents_under_new_image_ids_reuse_the_delta() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("store.sqlite");
    let deltas = tmp.path().join("deltas");
    let backend = backend(&db, &deltas, "a", ClaimPolicy::default()).await;
    let (v1, v2) = two_images(&tmp.path().join("images"));
    let (src, dest) = import(&backend, &v1, &v2).await;
    assert_eq!(
        backend.request(src, dest).await.unwrap(),
        DeltaRequest::Building
    );
    backend.wait_for_builds().await;
    let DeltaRequest::Ready(first) = backend.request(src, dest).await.unwrap() else {
        panic!("not built");
    };

    // The same two images re-imported (another copy of the layout, new releases, new ids).
    let (w1, w2) = two_images(&tmp.path().join("copy"));
    let r3 = backend
        .add_release("fleet", "cccc3333", &[("app".into(), w1)])
        .await
        .unwrap();
    let r4 = backend
        .add_release("fleet", "dddd4444", &[("app".into(), w2)])
        .await
        .unwrap();
    let (src2, dest2) = (r3.images[0].id, r4.images[0].id);
    assert_ne!((src2, dest2), (src, dest));
    assert_eq!(
        backend.request(src2, dest2).await.unwrap(),
        DeltaRequest::Building
    );
    backend.wait_for_builds().await;
    let DeltaRequest::Ready(second) = backend.request(src2, dest2).await.unwrap() else {
        panic!("not reused");
    };
    assert_ne!(second.id, first.id);
    assert_eq!(
        (&second.location, second.size),
        (&first.location, first.size)
    );
    assert_eq!(
        backend.builder().builds_started(),
        1,
        "the delta was reused, not built again"
    );

    // Different contents are built.
    let (x1, x2) = rebuilt_binary(&tmp.path().join("other"));
    let (src3, dest3) = {
        let a = backend
            .add_release("fleet", "eeee5555", &[("app".into(), x1)])
            .await
            .unwrap();
        let b = backend
            .add_release("fleet", "ffff6666", &[("app".into(), x2)])
            .await
            .unwrap();
        (a.images[0].id, b.images[0].id)
    };
    backend.request(src3, dest3).await.unwrap();
    backend.wait_for_builds().await;
    assert_eq!(backend.builder().builds_started(), 2);
}
