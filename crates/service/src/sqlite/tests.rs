//! Tests of the SQLite store's schema and migrations (the behaviour shared with PostgreSQL
//! is tested on both in `tests/store.rs`).

use super::schema::MIGRATIONS;
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
