//! The delta endpoint against a real registry (Debian's docker-registry): a device-like
//! client with a registry token polls, pulls the delta named in the answer and applies it;
//! concurrent requests build once; refusals get their documented status.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bru_delta::{ApplyOptions, NoProgress};
use bru_oci::{open_sink, open_source, tar_of, ImageReference, ImageSpec, OciDir, RegistryOptions};
use bru_server::{Auth, Server, ServerConfig, Verifier};
use bru_test_support::{copy_image as copy, noise, unique_repo, TestRegistry};
use common::{claims, now, TestKey};

mod common;

/// Two releases of one service pushed to the registry, each in its own repository (as
/// balena stores them). References are pinned by digest, as the supervisor sends them.
struct Images {
    registry: String,
    opts: RegistryOptions,
    src_repo: String,
    dest_repo: String,
    src: String,
    dest: String,
    _tmp: tempfile::TempDir,
}

async fn push_images(registry: &TestRegistry) -> Images {
    let tmp = tempfile::tempdir().unwrap();
    let layout = OciDir::create(tmp.path().join("images")).unwrap();
    let base = tar_of(&[("lib/base", &noise(1, 20_000))]);
    let app1 = noise(2, 30_000);
    let mut app2 = app1.clone();
    app2[1000..1010].copy_from_slice(b"0123456789");
    for (tag, app) in [("v1", app1), ("v2", app2)] {
        let spec = ImageSpec::new(vec![base.clone(), tar_of(&[("app/bin", &app)])]);
        layout.write_image(tag, &spec).unwrap();
    }
    let mut opts = RegistryOptions::default();
    opts.insecure = vec![registry.addr.clone()];
    let (src_repo, dest_repo) = (unique_repo("v2/src"), unique_repo("v2/dest"));
    let mut pinned = Vec::new();
    for (tag, repo) in [("v1", &src_repo), ("v2", &dest_repo)] {
        let to = format!("{}/{repo}:{tag}", registry.addr);
        let from = format!("oci:{}:{tag}", tmp.path().join("images").display());
        copy(&from, &to, &opts).await;
        let image = open_source(&to.parse().unwrap(), &opts)
            .await
            .unwrap()
            .image()
            .await
            .unwrap();
        pinned.push(format!(
            "{}/{repo}@{}",
            registry.addr, image.manifest_digest
        ));
    }
    let dest = pinned.pop().unwrap();
    let src = pinned.pop().unwrap();
    Images {
        registry: registry.addr.clone(),
        opts,
        src_repo,
        dest_repo,
        src,
        dest,
        _tmp: tmp,
    }
}

/// A server on 127.0.0.1:0 over a fresh store, allowed to use the test registry.
async fn start(
    images: &Images,
    auth: Auth,
    poll: Duration,
) -> (SocketAddr, Server, tempfile::TempDir) {
    let store = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::new(store.path(), auth);
    config.registry = images.opts.clone();
    config.allowed_registries = vec![images.registry.clone()];
    config.poll = poll;
    let server = Server::open(config).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(server.clone().serve(listener, std::future::pending()));
    (addr, server, store)
}

/// `GET /api/v3/delta` with the references written into the URL unencoded.
async fn ask(
    addr: SocketAddr,
    src: &str,
    dest: &str,
    token: Option<&str>,
) -> (u16, serde_json::Value) {
    let mut req =
        reqwest::Client::new().get(format!("http://{addr}/api/v3/delta?src={src}&dest={dest}"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.json().await.unwrap_or(serde_json::Value::Null);
    (status, body)
}

async fn get_text(addr: SocketAddr, path: &str) -> (u16, String) {
    let resp = reqwest::get(format!("http://{addr}{path}")).await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

/// Asks until the answer is not 504, checking that nothing else comes before.
async fn poll_until_ready(
    addr: SocketAddr,
    src: &str,
    dest: &str,
    token: Option<&str>,
) -> (u16, serde_json::Value, usize) {
    for asked in 1..=600 {
        let (status, body) = ask(addr, src, dest, token).await;
        if status != 504 {
            return (status, body, asked);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the delta was not ready after 600 requests");
}

#[tokio::test]
async fn a_device_polls_pulls_and_applies_the_delta() {
    let registry = TestRegistry::shared();
    let images = push_images(&registry).await;
    let key = TestKey::generate();
    let verifier = Verifier::from_pem(key.public_pem.as_bytes()).unwrap();
    // No long-poll: the first answer is 504 while the build starts.
    let (addr, server, _store) = start(&images, Auth::Jwt(verifier), Duration::ZERO).await;
    let token = key.sign(&claims(
        &images.registry,
        &[&images.dest_repo, &images.src_repo],
        now() + 600,
    ));

    let (status, _) = ask(addr, &images.src, &images.dest, Some(&token)).await;
    assert_eq!(status, 504);
    let (status, body, _) = poll_until_ready(addr, &images.src, &images.dest, Some(&token)).await;
    assert_eq!(status, 200, "{body}");
    let name = body["name"].as_str().unwrap();
    let prefix = format!("{}/{}:delta-", images.registry, images.dest_repo);
    let suffix = name
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("{name}"));
    assert!(
        suffix.len() == 16 && suffix.bytes().all(|b| b.is_ascii_hexdigit()),
        "{name}"
    );

    // The device pulls `name` and applies it on top of its current image.
    let opts = &images.opts;
    let source = open_source(&images.src.parse().unwrap(), opts)
        .await
        .unwrap();
    let delta = open_source(&name.parse().unwrap(), opts).await.unwrap();
    let target = open_source(&images.dest.parse().unwrap(), opts)
        .await
        .unwrap();
    let target = target.image().await.unwrap();
    let out_dir = tempfile::tempdir().unwrap();
    let out: ImageReference = format!("oci:{}:rebuilt", out_dir.path().display())
        .parse()
        .unwrap();
    let sink = open_sink(&out, opts).await.unwrap();
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
    let diff_ids: Vec<_> = applied.layers.iter().map(|l| l.diff_id.clone()).collect();
    assert_eq!(diff_ids, target.config.diff_ids);

    // Asked again: ready at once, same name, still one build.
    let (status, again) = ask(addr, &images.src, &images.dest, Some(&token)).await;
    assert_eq!((status, again["name"].as_str()), (200, Some(name)));
    assert_eq!(server.backend().builder().builds_started(), 1);
    let (status, metrics) = get_text(addr, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("bru_delta_builds_started_total 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("bru_delta_builds_succeeded_total 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("bru_delta_builds_failed_total 0\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("bru_delta_requests_total{status=\"200\"} 2\n"),
        "{metrics}"
    );
    let saved: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("bru_delta_bytes_saved_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(saved > 0, "{metrics}");
}

#[tokio::test]
async fn concurrent_requests_build_once_and_ids_work_without_auth() {
    let registry = TestRegistry::shared();
    let images = push_images(&registry).await;
    let (addr, server, _store) = start(&images, Auth::None, Duration::from_secs(5)).await;
    let answers = futures_join(addr, &images.src, &images.dest, 50).await;
    for (status, body) in &answers {
        assert!(*status == 200 || *status == 504, "{status} {body}");
    }
    let (status, body, _) = poll_until_ready(addr, &images.src, &images.dest, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(server.backend().builder().builds_started(), 1);
    let (_, metrics) = get_text(addr, "/metrics").await;
    assert!(
        metrics.contains("bru_delta_builds_started_total 1\n"),
        "{metrics}"
    );

    // The two images were recorded once each, as images of no release (the original npm
    // tool must not list them as releases); their store ids name the same delta.
    let store = server.backend().store();
    let releases = store.list_releases(None).await.unwrap();
    assert!(releases.is_empty(), "{releases:?}");
    let src_id = store
        .image_by_location(&images.src)
        .await
        .unwrap()
        .unwrap()
        .id;
    let dest_id = store
        .image_by_location(&images.dest)
        .await
        .unwrap()
        .unwrap()
        .id;
    assert_ne!(src_id, dest_id);
    let (status, by_id) = ask(addr, &src_id.to_string(), &dest_id.to_string(), None).await;
    assert_eq!((status, &by_id), (200, &body));
    let (status, _) = ask(addr, "999999", &dest_id.to_string(), None).await;
    assert_eq!(status, 404);
    assert_eq!(server.backend().builder().builds_started(), 1);

    let (status, text) = get_text(addr, "/healthz").await;
    assert_eq!((status, text.trim()), (200, "ok"));
}

async fn futures_join(
    addr: SocketAddr,
    src: &str,
    dest: &str,
    n: usize,
) -> Vec<(u16, serde_json::Value)> {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        let (src, dest) = (src.to_string(), dest.to_string());
        set.spawn(async move { ask(addr, &src, &dest, None).await });
    }
    let mut out = Vec::new();
    while let Some(r) = set.join_next().await {
        out.push(r.unwrap());
    }
    out
}

#[tokio::test]
async fn refusals_get_their_documented_status() {
    let registry = TestRegistry::shared();
    let images = push_images(&registry).await;
    let key = TestKey::generate();
    let other_key = TestKey::generate();
    let verifier = Verifier::from_pem(key.public_pem.as_bytes()).unwrap();
    let (addr, server, _store) = start(&images, Auth::Jwt(verifier), Duration::ZERO).await;
    let both = [images.src_repo.as_str(), images.dest_repo.as_str()];
    let good = key.sign(&claims(&images.registry, &both, now() + 600));

    // A registry that is not allowed is never contacted.
    let trap = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    trap.set_nonblocking(true).unwrap();
    let trap_ref = format!("{}/v2/evil:latest", trap.local_addr().unwrap());
    let (status, body) = ask(addr, &images.src, &trap_ref, Some(&good)).await;
    assert_eq!(status, 403, "{body}");
    let (status, _) = ask(addr, &trap_ref, &images.dest, Some(&good)).await;
    assert_eq!(status, 403);
    assert!(trap
        .accept()
        .is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock));

    for (src, dest) in [
        ("", images.dest.as_str()),
        (images.src.as_str(), "reg.example/UPPER:x"),
        (images.src.as_str(), "oci:/etc:x"),
        (images.src.as_str(), "reg.example/app@sha256:short"),
    ] {
        let (status, body) = ask(addr, src, dest, Some(&good)).await;
        assert_eq!(status, 400, "{src} {dest} {body}");
    }

    let expired = key.sign(&claims(&images.registry, &both, now() - 3600));
    let forged = other_key.sign(&claims(&images.registry, &both, now() + 600));
    let wrong_aud = key.sign(&claims("other.registry:5000", &both, now() + 600));
    let mut not_yet = claims(&images.registry, &both, now() + 600);
    not_yet["nbf"] = serde_json::json!(now() + 3600);
    let not_yet = key.sign(&not_yet);
    for token in [
        None,
        Some("not-a-jwt"),
        Some(&*expired),
        Some(&*forged),
        Some(&*wrong_aud),
        Some(&*not_yet),
    ] {
        let (status, body) = ask(addr, &images.src, &images.dest, token).await;
        assert_eq!(status, 401, "{token:?} {body}");
    }

    // Signed and current, but no pull on the source repository (balena's API issues such
    // tokens with empty actions for denied scopes).
    let mut no_src = claims(&images.registry, &[&images.dest_repo], now() + 600);
    no_src["access"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"type": "repository", "name": images.src_repo, "actions": []}));
    let (status, body) = ask(addr, &images.src, &images.dest, Some(&key.sign(&no_src))).await;
    assert_eq!(status, 403, "{body}");

    // Nothing was built or recorded for any refused request.
    assert_eq!(server.backend().builder().builds_started(), 0);
    assert!(server
        .backend()
        .store()
        .list_releases(None)
        .await
        .unwrap()
        .is_empty());
    let (_, metrics) = get_text(addr, "/metrics").await;
    assert!(
        metrics.contains("bru_delta_requests_total{status=\"401\"} 6\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("bru_delta_requests_total{status=\"403\"} 3\n"),
        "{metrics}"
    );
}

#[tokio::test]
async fn an_unreachable_registry_is_503_and_a_missing_image_404() {
    let registry = TestRegistry::shared();
    let mut images = push_images(&registry).await;
    let (addr, _server, _store) = start(&images, Auth::None, Duration::ZERO).await;
    let missing = format!("{}/{}:no-such-tag", images.registry, images.dest_repo);
    let (status, body) = ask(addr, &images.src, &missing, None).await;
    assert_eq!(status, 404, "{body}");

    // An allowed registry that is down.
    let down = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let down_addr = down.local_addr().unwrap().to_string();
    drop(down);
    images.opts.insecure.push(down_addr.clone());
    images.registry = down_addr.clone();
    let (addr, _server, _store) = start(&images, Auth::None, Duration::ZERO).await;
    let (status, body) = ask(
        addr,
        &format!("{down_addr}/v2/a:1"),
        &format!("{down_addr}/v2/b:2"),
        None,
    )
    .await;
    assert_eq!(status, 503, "{body}");
}

#[tokio::test]
async fn an_interrupted_build_is_503_with_retry_after_and_not_remembered() {
    let registry = TestRegistry::shared();
    let images = push_images(&registry).await;
    let proxy = bru_test_support::FaultProxy::start(&registry.addr);
    let store = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::new(store.path(), Auth::None);
    config.registry = images.opts.clone();
    config.registry.insecure.push(proxy.addr.clone());
    config.allowed_registries = vec![proxy.addr.clone()];
    config.poll = Duration::ZERO;
    config.build_retry = bru_core::retry::RetryPolicy {
        base: Duration::from_millis(10),
        max_delay: Duration::from_millis(10),
        retries: 1,
    };
    config.policy.retry_interrupted = bru_core::retry::RetryPolicy {
        base: Duration::from_millis(500),
        max_delay: Duration::from_millis(500),
        retries: u32::MAX,
    };
    let server = Server::open(config).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(server.clone().serve(listener, std::future::pending()));
    // The images as the device names them: through the proxy.
    let via = |r: &str| r.replacen(&images.registry, &proxy.addr, 1);
    let (src, dest) = (via(&images.src), via(&images.dest));
    let mut ids = Vec::new();
    for (commit, reference) in [("bbbb01", &src), ("bbbb02", &dest)] {
        let release = server
            .backend()
            .add_release("fleet", commit, &[("main".into(), reference.clone())])
            .await
            .unwrap();
        ids.push(release.images[0].id.to_string());
    }

    // The registry goes down: the build is interrupted, and devices are told to come back.
    proxy.set(bru_test_support::ProxyMode::Refuse);
    let url = format!("http://{addr}/api/v3/delta?src={}&dest={}", ids[0], ids[1]);
    let mut answer = None;
    for _ in 0..600 {
        let resp = reqwest::get(&url).await.unwrap();
        if resp.status().as_u16() != 504 {
            answer = Some(resp);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let resp = answer.expect("the build never ended");
    assert_eq!(resp.status().as_u16(), 503);
    let retry_after: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(retry_after, 1, "500 ms rounds up to one second");
    let body: serde_json::Value = resp.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("interrupted"),
        "{body}"
    );
    assert!(!body.to_string().contains(&proxy.addr), "{body}");
    let (_, metrics) = get_text(addr, "/metrics").await;
    assert!(
        metrics.contains("bru_delta_builds_failed_total 0\n"),
        "{metrics}"
    );

    // The registry is back: after the back-off the pair is built, not refused with 422.
    proxy.set(bru_test_support::ProxyMode::Pass);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (status, body, _) = poll_until_ready(addr, &ids[0], &ids[1], None).await;
    assert_eq!(status, 200, "{body}");
    // Two attempts in the interrupted run (one retry), one after the back-off.
    assert_eq!(server.backend().builder().builds_started(), 3);
}

/// Pushes an image whose config lists a wrong DiffID for its layer: the registry stores
/// it, and every build from or to it fails for good.
async fn push_bad_image(images: &Images, repo: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let layer = bru_oci::gzip_bytes(&tar_of(&[("f", b"content")]));
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [bru_oci::Digest::of(b"not the layer")]}
    }))
    .unwrap();
    let layer_desc = bru_oci::Descriptor::of_bytes(bru_oci::media_type::DOCKER_LAYER_GZIP, &layer);
    let config_desc = bru_oci::Descriptor::of_bytes(bru_oci::media_type::DOCKER_CONFIG, &config);
    let manifest = bru_oci::Manifest::new(
        bru_oci::media_type::DOCKER_MANIFEST,
        config_desc.clone(),
        vec![layer_desc.clone()],
    )
    .to_json();
    let reference = format!("{}/{repo}:bad", images.registry);
    let sink = open_sink(&reference.parse().unwrap(), &images.opts)
        .await
        .unwrap();
    for (bytes, desc) in [(&layer, &layer_desc), (&config, &config_desc)] {
        let path = dir.path().join(desc.digest.hex());
        std::fs::write(&path, bytes).unwrap();
        sink.put_blob(&path, desc).await.unwrap();
    }
    sink.put_manifest(&manifest, bru_oci::media_type::DOCKER_MANIFEST)
        .await
        .unwrap();
    sink.finish().await.unwrap();
    reference
}

#[tokio::test]
async fn a_failed_build_is_422_and_remembered() {
    let registry = TestRegistry::shared();
    let images = push_images(&registry).await;
    let (addr, server, _store) = start(&images, Auth::None, Duration::ZERO).await;
    // A good source and a target whose layer does not match its config: a permanent failure.
    let bad = push_bad_image(&images, &images.dest_repo).await;
    let mut ids = Vec::new();
    for (commit, reference) in [("aaaa01", images.src.clone()), ("aaaa02", bad)] {
        let release = server
            .backend()
            .add_release("bad", commit, &[("main".into(), reference)])
            .await
            .unwrap();
        ids.push(release.images[0].id.to_string());
    }
    let layout_path = images.registry.clone();

    let (status, body, _) = poll_until_ready(addr, &ids[0], &ids[1], None).await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("build failed"),
        "{body}"
    );
    // The build error names the registry and the digests: that goes to the log, not to
    // the device.
    let text = body.to_string();
    assert!(
        !text.contains(&layout_path) && !text.contains("sha256:"),
        "{text}"
    );
    assert!(
        body["request_id"]
            .as_str()
            .is_some_and(|id| id.starts_with("req-")),
        "{body}"
    );
    // Asked again: the failure is remembered, not rebuilt.
    let (status, _) = ask(addr, &ids[0], &ids[1], None).await;
    assert_eq!(status, 422);
    assert_eq!(server.backend().builder().builds_started(), 1);
    // The build's finish hook runs just after its row is recorded: allow it that moment.
    let mut metrics = String::new();
    for _ in 0..100 {
        metrics = get_text(addr, "/metrics").await.1;
        if metrics.contains("bru_delta_builds_failed_total 1\n") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        metrics.contains("bru_delta_builds_failed_total 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("bru_delta_builds_succeeded_total 0\n"),
        "{metrics}"
    );
}

#[tokio::test]
async fn store_images_not_on_a_registry_are_422_for_devices() {
    let registry = TestRegistry::shared();
    let images = push_images(&registry).await;
    let (addr, server, _store) = start(&images, Auth::None, Duration::ZERO).await;
    let layout_dir = tempfile::tempdir().unwrap();
    let layout = OciDir::create(layout_dir.path()).unwrap();
    let mut ids = Vec::new();
    for (commit, tag, byte) in [("cccc01", "v1", 1u8), ("cccc02", "v2", 2u8)] {
        let spec = ImageSpec::new(vec![tar_of(&[("f", &[byte; 100])])]);
        layout.write_image(tag, &spec).unwrap();
        let reference = format!("oci:{}:{tag}", layout_dir.path().display());
        let release = server
            .backend()
            .add_release("local", commit, &[("main".into(), reference)])
            .await
            .unwrap();
        ids.push(release.images[0].id.to_string());
    }
    let (status, body) = ask(addr, &ids[0], &ids[1], None).await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("not on a registry"),
        "{body}"
    );
    assert!(!body.to_string().contains("oci:"), "{body}");
    // Nothing was built for a delta no device could pull.
    assert_eq!(server.backend().builder().builds_started(), 0);
}

#[tokio::test]
async fn shutdown_stops_the_server() {
    let store = tempfile::tempdir().unwrap();
    let server = Server::open(ServerConfig::new(store.path(), Auth::None))
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve(listener, async {
        let _ = stopped.await;
    }));
    assert_eq!(get_text(addr, "/healthz").await.0, 200);
    stop.send(()).unwrap();
    serving.await.unwrap().unwrap();
    assert!(reqwest::get(format!("http://{addr}/healthz"))
        .await
        .is_err());
}

/// A device polling by tag does not make the server ask the registry on every poll: within the
/// tag TTL a moved tag still names the image it named before (same delta, no new build); with
/// a zero TTL the registry is asked every time and the move is seen at once.
#[tokio::test]
async fn tags_are_resolved_once_per_ttl() {
    let registry = TestRegistry::shared();
    let images = push_images(&registry).await;
    let src_tag = format!("{}/{}:v1", images.registry, images.src_repo);
    let dest_tag = format!("{}/{}:v2", images.registry, images.dest_repo);
    let open = |ttl: Duration| {
        let images = &images;
        async move {
            let store = tempfile::tempdir().unwrap();
            let mut config = ServerConfig::new(store.path(), Auth::None);
            config.registry = images.opts.clone();
            config.allowed_registries = vec![images.registry.clone()];
            config.poll = Duration::from_secs(5);
            config.tag_ttl = ttl;
            let server = Server::open(config).await.unwrap();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(server.clone().serve(listener, std::future::pending()));
            (addr, server, store)
        }
    };
    let (cached, cached_server, _s1) = open(Duration::from_secs(3600)).await;
    let (uncached, uncached_server, _s2) = open(Duration::ZERO).await;
    for addr in [cached, uncached] {
        let (status, body, _) = poll_until_ready(addr, &src_tag, &dest_tag, None).await;
        assert_eq!(status, 200, "{body}");
    }
    let (_, before) = ask(cached, &src_tag, &dest_tag, None).await;

    // Move the source tag to the destination's content: a different source image.
    let layout = images._tmp.path().join("images");
    copy(
        &format!("oci:{}:v2", layout.display()),
        &src_tag,
        &images.opts,
    )
    .await;

    let (status, after) = ask(cached, &src_tag, &dest_tag, None).await;
    assert_eq!((status, &after), (200, &before));
    assert_eq!(cached_server.backend().builder().builds_started(), 1);
    let (status, body) = ask(uncached, &src_tag, &dest_tag, None).await;
    assert!(status != 200 || body != before, "{status} {body}");
    assert_eq!(uncached_server.backend().builder().builds_started(), 2);
}

/// `GET /api/v3/delta/status` with the references unencoded.
async fn status_of(
    addr: SocketAddr,
    src: &str,
    dest: &str,
    token: Option<&str>,
) -> (u16, serde_json::Value) {
    let mut req = reqwest::Client::new().get(format!(
        "http://{addr}/api/v3/delta/status?src={src}&dest={dest}"
    ));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.json().await.unwrap_or(serde_json::Value::Null);
    (status, body)
}

/// Issue 11: the status endpoint reads, never builds; it reports what a device downloads.
#[tokio::test]
async fn status_reports_without_building_under_the_same_token_rules() {
    let registry = TestRegistry::shared();
    let images = push_images(&registry).await;
    let key = TestKey::generate();
    let verifier = Verifier::from_pem(key.public_pem.as_bytes()).unwrap();
    let (addr, server, _store) = start(&images, Auth::Jwt(verifier), Duration::ZERO).await;
    let both = [images.dest_repo.as_str(), images.src_repo.as_str()];
    let token = key.sign(&claims(&images.registry, &both, now() + 600));

    // Asked twice before any delta request: none, and nothing is built.
    for _ in 0..2 {
        let (status, body) = status_of(addr, &images.src, &images.dest, Some(&token)).await;
        assert_eq!(
            (status, &body),
            (200, &serde_json::json!({"status": "none"}))
        );
    }
    assert_eq!(server.backend().builder().builds_started(), 0);

    // The refusals of /api/v3/delta, before anything is read.
    let src_only = key.sign(&claims(&images.registry, &[&images.src_repo], now() + 600));
    let wrong_aud = key.sign(&claims("other.example", &both, now() + 600));
    let expired = key.sign(&claims(&images.registry, &both, now() - 600));
    let other = TestKey::generate().sign(&claims(&images.registry, &both, now() + 600));
    for (token, expected) in [
        (None, 401),
        (Some(&*other), 401),
        (Some(&*expired), 401),
        (Some(&*wrong_aud), 401),
        (Some(&*src_only), 403),
    ] {
        let (status, body) = status_of(addr, &images.src, &images.dest, token).await;
        assert_eq!(status, expected, "{body}");
        assert!(body["error"].is_string(), "{body}");
    }
    let (status, _) = status_of(addr, &images.src, "127.0.0.1:1/v2/x:latest", Some(&token)).await;
    assert_eq!(status, 403, "a registry off the allow list");
    let (status, _) = status_of(addr, &images.src, "not a reference", Some(&token)).await;
    assert_eq!(status, 400);
    let (status, _) = status_of(addr, &images.src, &images.src, Some(&token)).await;
    assert_eq!(status, 422);
    assert_eq!(server.backend().builder().builds_started(), 0);

    // A delta request starts the build; status follows it to ready without a second one.
    let (status, _) = ask(addr, &images.src, &images.dest, Some(&token)).await;
    assert_eq!(status, 504);
    let mut ready = serde_json::Value::Null;
    for _ in 0..600 {
        let (status, body) = status_of(addr, &images.src, &images.dest, Some(&token)).await;
        assert_eq!(status, 200, "{body}");
        match body["status"].as_str() {
            Some("ready") => {
                ready = body;
                break;
            }
            Some("building") => assert_eq!(body["version"], 3, "{body}"),
            other => panic!("unexpected status {other:?}: {body}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ready["version"], 3, "{ready}");
    let (status, answer) = ask(addr, &images.src, &images.dest, Some(&token)).await;
    assert_eq!(status, 200);
    assert_eq!(ready["name"], answer["name"], "the name a device is given");
    let name = ready["name"].as_str().unwrap();
    let delta = open_source(&name.parse().unwrap(), &images.opts)
        .await
        .unwrap();
    let inspected = bru_delta::inspect(&*delta).await.unwrap();
    assert_eq!(ready["download_bytes"], inspected.download_bytes);
    let store = server.backend().store();
    let id_of = |location: &str| {
        let location = location.to_owned();
        async move {
            store
                .image_by_location(&location)
                .await
                .unwrap()
                .unwrap()
                .id
        }
    };
    let (src_id, dest_id) = (id_of(&images.src).await, id_of(&images.dest).await);
    let row = store
        .newest_delta(src_id, dest_id, 3)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ready["id"], row.id);
    assert_eq!(server.backend().builder().builds_started(), 1);
}
