//! The delta engine against a real registry (Debian's docker-registry): pull the
//! source and target, push the delta into the target's repository, pull it back
//! and apply it, as the delta server and a device do.

mod support;

use std::sync::Arc;

use bru_delta::{ApplyOptions, CreateOptions, DeltaError, NoProgress, Role};
use bru_oci::{open_sink, open_source, ImageReference, RegistryOptions};
use bru_test_support::{unique_repo, TestRegistry};
use support::{layer, noise, Pair};

fn options(addr: &str) -> RegistryOptions {
    let mut opts = RegistryOptions::default();
    opts.insecure = vec![addr.to_owned()];
    opts
}

/// Copies an image between two references.
async fn copy(from: &ImageReference, to: &ImageReference, opts: &RegistryOptions) {
    let src = open_source(from, opts).await.unwrap();
    let sink = open_sink(to, opts).await.unwrap();
    bru_oci::copy_image(&*src, &*sink).await.unwrap();
}

#[tokio::test]
async fn create_pushes_to_the_target_repository_and_apply_pulls_from_it() {
    let registry = TestRegistry::shared();
    let opts = options(&registry.addr);
    let repo = format!("{}/{}", registry.addr, unique_repo("delta"));
    let pair = Pair::new(
        vec![
            layer(&[("bin/app".into(), noise(1, 120_000))]),
            layer(&[("etc/conf".into(), b"v=1\n".to_vec())]),
        ],
        vec![
            layer(&[("bin/app".into(), noise(1, 120_000))]),
            layer(&[("etc/conf".into(), b"v=2\n".to_vec())]),
        ],
    );
    let v1: ImageReference = format!("docker://{repo}:v1").parse().unwrap();
    let v2: ImageReference = format!("docker://{repo}:v2").parse().unwrap();
    copy(&pair.reference("source"), &v1, &opts).await;
    copy(&pair.reference("target"), &v2, &opts).await;

    let delta_ref: ImageReference = format!("docker://{repo}:delta-test").parse().unwrap();
    let s = open_source(&v1, &opts).await.unwrap();
    let t = open_source(&v2, &opts).await.unwrap();
    let sink = open_sink(&delta_ref, &opts).await.unwrap();
    let info = bru_delta::create(
        &*s,
        &*t,
        &*sink,
        &CreateOptions::default(),
        Arc::new(NoProgress),
    )
    .await
    .unwrap();
    assert_eq!(info.common_prefix, 1);

    // What was pushed reads back the same, by tag and by manifest digest.
    let pulled = open_source(&delta_ref, &opts).await.unwrap();
    let inspected = bru_delta::inspect(&*pulled).await.unwrap();
    assert_eq!(inspected.manifest_digest, info.manifest_digest);
    assert_eq!(
        inspected.total_compressed_bytes,
        info.total_compressed_bytes
    );
    assert_eq!(inspected.target_image_id, pair.target.config.digest);
    let by_digest: ImageReference = format!("docker://{repo}@{}", info.manifest_digest)
        .parse()
        .unwrap();
    let pulled = open_source(&by_digest, &opts).await.unwrap();
    assert_eq!(
        pulled.image().await.unwrap().manifest_digest,
        info.manifest_digest
    );

    // A device-like apply: source and delta from the registry, result into a layout.
    let out: ImageReference = format!("oci:{}:rebuilt", pair.dir.path().join("rebuilt").display())
        .parse()
        .unwrap();
    let sink = open_sink(&out, &opts).await.unwrap();
    let applied = bru_delta::apply(
        &*s,
        &*pulled,
        &*sink,
        &ApplyOptions::default(),
        Arc::new(NoProgress),
    )
    .await
    .unwrap();
    assert_eq!(applied.image_id, pair.target.config.digest);
    let ids: Vec<_> = applied.layers.iter().map(|l| l.diff_id.clone()).collect();
    assert_eq!(ids, pair.target.diff_ids);
}

#[tokio::test]
async fn unknown_tag_and_unreachable_registry_are_clear_errors() {
    let registry = TestRegistry::shared();
    let opts = options(&registry.addr);
    let missing: ImageReference =
        format!("docker://{}/{}:nope", registry.addr, unique_repo("missing"))
            .parse()
            .unwrap();
    let pair = Pair::new(
        vec![layer(&[("a".into(), b"1".to_vec())])],
        vec![layer(&[("a".into(), b"2".to_vec())])],
    );
    let s = open_source(&missing, &opts).await.unwrap();
    let t = open_source(&pair.reference("target"), &opts).await.unwrap();
    let sink = open_sink(&pair.out("delta"), &opts).await.unwrap();
    let err = bru_delta::create(
        &*s,
        &*t,
        &*sink,
        &CreateOptions::default(),
        Arc::new(NoProgress),
    )
    .await
    .unwrap_err();
    match &err {
        DeltaError::Image {
            role: Role::Source,
            source,
        } => assert_eq!(source.http_status(), Some(404), "{source:?}"),
        other => panic!("unexpected error: {other:?}"),
    }

    // A port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let down: ImageReference = format!("docker://{closed}/app:v1").parse().unwrap();
    let opts = options(&closed.to_string());
    let s = open_source(&down, &opts).await.unwrap();
    let err = bru_delta::create(
        &*s,
        &*t,
        &*sink,
        &CreateOptions::default(),
        Arc::new(NoProgress),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            DeltaError::Image {
                role: Role::Source,
                ..
            }
        ),
        "{err:?}"
    );
}
