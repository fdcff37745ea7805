//! A delta build against a real registry (Debian's docker-registry): the delta goes into
//! the destination repository, tagged from the pair, and a device-like apply pulled from
//! there rebuilds the target.

mod support;

use std::sync::Arc;

use bru_delta::{ApplyOptions, NoProgress};
use bru_oci::{open_sink, open_source, ImageReference, RegistryOptions};
use bru_service::{
    delta_tag, BuilderConfig, ClaimPolicy, DeltaBuilder, DeltaRequest, DeltaStatus, Embedded,
    ServiceError, SqliteStore, DELTA_VERSION,
};
use bru_test_support::{copy_image as copy, unique_repo, TestRegistry};

#[tokio::test]
async fn registry_deltas_go_to_the_destination_repository() {
    let registry = TestRegistry::shared();
    let mut opts = RegistryOptions::default();
    opts.insecure = vec![registry.addr.clone()];
    let tmp = tempfile::tempdir().unwrap();
    let (l1, l2) = support::two_images(&tmp.path().join("images"));
    let src_repo = format!("{}/{}", registry.addr, unique_repo("svc-src"));
    let dest_repo = format!("{}/{}", registry.addr, unique_repo("svc-dest"));
    let (v1, v2) = (format!("{src_repo}:v1"), format!("{dest_repo}:v2"));
    copy(&l1, &v1, &opts).await;
    copy(&l2, &v2, &opts).await;

    let mut config = BuilderConfig::new(tmp.path().join("unused"));
    config.registry = opts.clone();
    let store = SqliteStore::open(tmp.path().join("store.sqlite"))
        .await
        .unwrap();
    let backend = Embedded::new(
        Arc::new(store),
        DeltaBuilder::new(config),
        "test",
        ClaimPolicy::default(),
    );
    let r1 = backend
        .add_release("fleet", "c0ffee01", &[("main".into(), v1.clone())])
        .await
        .unwrap();
    let r2 = backend
        .add_release("fleet", "c0ffee02", &[("main".into(), v2.clone())])
        .await
        .unwrap();
    let (src, dest) = (&r1.images[0], &r2.images[0]);
    assert_eq!(src.location, v1);
    assert!(src.content_hash.starts_with("sha256:"));

    assert_eq!(
        backend.request(src.id, dest.id).await.unwrap(),
        DeltaRequest::Building
    );
    backend.wait_for_builds().await;
    let row = match backend.request(src.id, dest.id).await.unwrap() {
        DeltaRequest::Ready(row) => row,
        other => panic!("not ready: {other:?}"),
    };
    assert_eq!(row.status, DeltaStatus::Success);
    assert_eq!(row.version, DELTA_VERSION);
    let tag = delta_tag(&src.content_hash, &dest.content_hash);
    assert_eq!(
        row.location.as_deref(),
        Some(format!("{dest_repo}:{tag}").as_str())
    );

    // What a device pulls: the delta from the destination repository.
    let delta_ref: ImageReference = row.location.clone().unwrap().parse().unwrap();
    let delta = open_source(&delta_ref, &opts).await.unwrap();
    let info = bru_delta::inspect(&*delta).await.unwrap();
    assert_eq!(Some(info.download_bytes), row.size);
    assert!(info.download_bytes < dest.image_size);

    let source = open_source(&v1.parse().unwrap(), &opts).await.unwrap();
    let target = open_source(&v2.parse().unwrap(), &opts).await.unwrap();
    let target = target.image().await.unwrap();
    let out: ImageReference = format!("oci:{}:rebuilt", tmp.path().join("rebuilt").display())
        .parse()
        .unwrap();
    let sink = open_sink(&out, &opts).await.unwrap();
    let applied = bru_delta::apply(
        &*source,
        &*delta,
        &*sink,
        &ApplyOptions::default(),
        Arc::new(NoProgress),
    )
    .await
    .unwrap();
    assert_eq!(applied.image_id, target.config_digest);
    let ids: Vec<_> = applied.layers.iter().map(|l| l.diff_id.clone()).collect();
    assert_eq!(ids, target.config.diff_ids);
}

#[tokio::test]
async fn images_that_cannot_be_read_are_not_recorded() {
    let tmp = tempfile::tempdir().unwrap();
    let backend = support::backend(
        &tmp.path().join("store.sqlite"),
        &tmp.path().join("deltas"),
        "test",
        ClaimPolicy::default(),
    )
    .await;
    let (v1, _) = support::two_images(&tmp.path().join("images"));
    // Port 9 (discard) on loopback: nothing listens there.
    let unreachable = "127.0.0.1:9/nothing/here:v1".to_string();
    let err = backend
        .add_release(
            "fleet",
            "abc123",
            &[
                ("ok".into(), v1.clone()),
                ("gone".into(), unreachable.clone()),
            ],
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ServiceError::Image { reference, .. } if *reference == unreachable),
        "{err:?}"
    );
    let err = backend
        .add_release(
            "fleet",
            "abc123",
            &[("bad".into(), "no/such:thing:".into())],
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, ServiceError::InvalidReference { .. }),
        "{err:?}"
    );
    assert!(backend
        .store()
        .list_releases(None)
        .await
        .unwrap()
        .is_empty());
}
