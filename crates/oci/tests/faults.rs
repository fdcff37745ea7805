//! Registry faults injected on loopback between the client and a real registry (Debian's
//! docker-registry): a registry that is down, one that stops sending a blob, one that
//! trickles it. Each ends in a *transient* error, within the configured deadlines.

mod common;

use std::time::Duration;

use bru_oci::{
    open_sink, open_source, tar_of, ImageReference, ImageSpec, OciDir, OciError, RegistryOptions,
};
use bru_test_support::{noise, unique_repo, FaultProxy, ProxyMode, TestRegistry};
use common::read_blob;

fn opts(addr: &str) -> RegistryOptions {
    let mut o = RegistryOptions::default();
    o.insecure = vec![addr.to_string()];
    o.docker_config = Some("/nonexistent/config.json".into());
    o.timeouts.read = Duration::from_secs(1);
    o.timeouts.min_speed = (256 * 1024, Duration::from_secs(1));
    o
}

/// Pushes a one-layer image with a 2 MB incompressible file and returns its name on the
/// proxy.
async fn pushed_image(registry: &TestRegistry, proxy: &FaultProxy) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let dir = OciDir::create(tmp.path()).unwrap();
    let spec = ImageSpec::new(vec![tar_of(&[("big", &noise(7, 2_000_000))])]);
    dir.write_image("v1", &spec).unwrap();
    let repo = unique_repo("faults");
    let from: ImageReference = format!("oci:{}:v1", tmp.path().display()).parse().unwrap();
    let to: ImageReference = format!("{}/{repo}:v1", registry.addr).parse().unwrap();
    let o = opts(&registry.addr);
    let src = open_source(&from, &o).await.unwrap();
    let sink = open_sink(&to, &o).await.unwrap();
    bru_oci::copy_image(&*src, &*sink).await.unwrap();
    format!("{}/{repo}:v1", proxy.addr)
}

fn assert_timed_out(e: &OciError) {
    assert!(e.is_transient(), "not transient: {e:?}");
    let text = format!("{e:?}").to_lowercase();
    assert!(
        text.contains("timedout") || text.contains("timed out") || text.contains("less than"),
        "not a timeout: {e:?}"
    );
}

#[tokio::test]
async fn a_blob_that_stops_arriving_fails_transiently_at_the_read_timeout() {
    let registry = TestRegistry::shared();
    let proxy = FaultProxy::start(&registry.addr);
    let name = pushed_image(&registry, &proxy).await;
    let o = opts(&proxy.addr);
    let src = open_source(&name.parse().unwrap(), &o).await.unwrap();
    let image = src.image().await.unwrap();
    // The answer's headers and 64 KiB of the blob pass, then nothing.
    proxy.set(ProxyMode::StallAfter(64 * 1024));
    let e = read_blob(&*src, &image.manifest.layers[0])
        .await
        .unwrap_err();
    assert_timed_out(&e);
    // Once the registry answers again, the same source reads the blob.
    proxy.set(ProxyMode::Pass);
    let bytes = read_blob(&*src, &image.manifest.layers[0]).await.unwrap();
    assert_eq!(bytes.len() as u64, image.manifest.layers[0].size);
}

#[tokio::test]
async fn a_trickling_blob_fails_transiently_at_the_minimum_speed() {
    let registry = TestRegistry::shared();
    let proxy = FaultProxy::start(&registry.addr);
    let name = pushed_image(&registry, &proxy).await;
    let o = opts(&proxy.addr);
    let src = open_source(&name.parse().unwrap(), &o).await.unwrap();
    let image = src.image().await.unwrap();
    // One byte every 2 ms (500 B/s) never trips the 1 s read timeout, but is far below
    // the 256 KiB/s required.
    proxy.set(ProxyMode::Trickle(Duration::from_millis(2)));
    let e = read_blob(&*src, &image.manifest.layers[0])
        .await
        .unwrap_err();
    assert_timed_out(&e);
}

#[tokio::test]
async fn a_registry_that_is_down_is_retried_then_reported_as_transient() {
    let registry = TestRegistry::shared();
    let proxy = FaultProxy::start(&registry.addr);
    let name = pushed_image(&registry, &proxy).await;
    proxy.set(ProxyMode::Refuse);
    let o = opts(&proxy.addr);
    let e = open_source(&name.parse().unwrap(), &o)
        .await
        .unwrap()
        .image()
        .await
        .unwrap_err();
    assert!(matches!(e, OciError::Http { .. }), "{e:?}");
    assert!(e.is_transient());
    assert_eq!(
        proxy.connections(),
        u64::from(1 + bru_core::retry::RetryPolicy::REQUEST.retries),
        "one try and the policy's retries"
    );
}
