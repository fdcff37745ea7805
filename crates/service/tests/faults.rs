//! Faults during delta builds, injected on loopback: a registry killed with SIGKILL and
//! restarted, a registry that refuses or stalls (a misbehaving proxy in front of the real
//! docker-registry), a full work disk, a builder process that died, a build abandoned by
//! its process. Transient trouble is retried or given up, never recorded as a failed delta.

mod support;

use std::sync::Arc;
use std::time::Duration;

use bru_core::retry::RetryPolicy;
use bru_oci::{open_sink, open_source, ImageReference, RegistryOptions};
use bru_service::{
    BuilderConfig, Claim, ClaimPolicy, DeltaBuilder, DeltaRequest, DeltaStatus, Embedded,
    SqliteStore, Store as _, DELTA_VERSION,
};
use bru_test_support::{unique_repo, FaultProxy, ProxyMode, TestRegistry};

/// Copies the two-image layout to `registry` and returns the names of v1 and v2 as seen
/// through `via` (the registry itself or a proxy in front of it).
async fn push_pair(registry: &str, via: &str, dir: &std::path::Path) -> (String, String) {
    let (l1, l2) = support::two_images(dir);
    let repo = unique_repo("faults");
    let opts = registry_opts(&[registry]);
    for (from, tag) in [(l1, "v1"), (l2, "v2")] {
        let from: ImageReference = from.parse().unwrap();
        let to: ImageReference = format!("{registry}/{repo}:{tag}").parse().unwrap();
        let src = open_source(&from, &opts).await.unwrap();
        let sink = open_sink(&to, &opts).await.unwrap();
        bru_oci::copy_image(&*src, &*sink).await.unwrap();
    }
    (format!("{via}/{repo}:v1"), format!("{via}/{repo}:v2"))
}

fn registry_opts(insecure: &[&str]) -> RegistryOptions {
    let mut o = RegistryOptions::default();
    o.insecure = insecure.iter().map(|s| s.to_string()).collect();
    o.docker_config = Some("/nonexistent/config.json".into());
    o.timeouts.read = Duration::from_secs(1);
    o
}

/// A backend whose builds retry `retries` times, `base` apart, and whose interrupted pairs
/// are tried again after `backoff`.
async fn backend(
    tmp: &std::path::Path,
    owner: &str,
    opts: RegistryOptions,
    (retries, base): (u32, Duration),
    backoff: Duration,
) -> Embedded {
    let mut config = BuilderConfig::new(tmp.join("deltas"));
    config.registry = opts;
    config.workdir = Some(tmp.join("work"));
    std::fs::create_dir_all(tmp.join("work")).unwrap();
    config.retry = RetryPolicy {
        base,
        max_delay: base * 2,
        retries,
    };
    config.heartbeat_interval = Duration::from_millis(200);
    let store = SqliteStore::open(tmp.join("store.sqlite")).await.unwrap();
    let policy = ClaimPolicy {
        retry_interrupted: RetryPolicy {
            base: backoff,
            max_delay: backoff,
            retries: u32::MAX,
        },
        ..ClaimPolicy::default()
    };
    Embedded::new(Arc::new(store), DeltaBuilder::new(config), owner, policy)
}

async fn release_pair(backend: &Embedded, v1: &str, v2: &str) -> (u64, u64) {
    releases(backend, v1, v2, ("c0ffee01", "c0ffee02")).await
}

/// Records releases `commits` of v1 and v2 and returns their image ids.
async fn releases(backend: &Embedded, v1: &str, v2: &str, commits: (&str, &str)) -> (u64, u64) {
    let r1 = backend
        .add_release("fleet", commits.0, &[("main".into(), v1.into())])
        .await
        .unwrap();
    let r2 = backend
        .add_release("fleet", commits.1, &[("main".into(), v2.into())])
        .await
        .unwrap();
    (r1.images[0].id, r2.images[0].id)
}

/// Asks until the answer is no longer `Building` (the build runs in the background).
async fn settle(backend: &Embedded, src: u64, dest: u64) -> DeltaRequest {
    backend.wait_for_builds().await;
    backend.request(src, dest).await.unwrap()
}

/// Requests the pair, which starts a build, and expects that build to be interrupted: a
/// retry-later answer and no row recorded. Returns the interruption's error.
async fn interrupted(backend: &Embedded, src: u64, dest: u64) -> String {
    assert_eq!(
        backend.request(src, dest).await.unwrap(),
        DeltaRequest::Building
    );
    let error = match settle(backend, src, dest).await {
        DeltaRequest::RetryLater { error, .. } => error,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        backend
            .store()
            .newest_delta(src, dest, DELTA_VERSION)
            .await
            .unwrap(),
        None
    );
    error
}

#[tokio::test]
async fn a_registry_killed_and_restarted_during_a_build_is_ridden_out() {
    let tmp = tempfile::tempdir().unwrap();
    let mut registry = TestRegistry::start(None);
    let addr = registry.addr.clone();
    let (v1, v2) = push_pair(&addr, &addr, &tmp.path().join("images")).await;
    // Retries 1, 2, 2, 2, 2 s apart (with jitter: at least 0.5, 1, 1, 1, 1): the 3 s
    // outage is inside the window.
    let backend = backend(
        tmp.path(),
        "a",
        registry_opts(&[&addr]),
        (5, Duration::from_secs(1)),
        Duration::from_secs(600),
    )
    .await;
    let (src, dest) = release_pair(&backend, &v1, &v2).await;

    registry.kill_hard();
    let restart = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(3));
        registry.restart();
        registry
    });
    assert_eq!(
        backend.request(src, dest).await.unwrap(),
        DeltaRequest::Building
    );
    let answer = settle(&backend, src, dest).await;
    let _registry = restart.join().unwrap();
    let DeltaRequest::Ready(row) = answer else {
        panic!("not ready after the restart: {answer:?}");
    };
    assert_eq!(row.status, DeltaStatus::Success);
    // One row for the pair, the successful one: nothing was recorded as failed.
    let newest = backend
        .store()
        .newest_delta(src, dest, DELTA_VERSION)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(newest.id, row.id);
}

#[tokio::test]
async fn refused_and_stalled_registries_interrupt_builds_without_recording_a_failure() {
    let tmp = tempfile::tempdir().unwrap();
    let registry = TestRegistry::shared();
    let proxy = FaultProxy::start(&registry.addr);
    let (v1, v2) = push_pair(&registry.addr, &proxy.addr, &tmp.path().join("images")).await;
    let backend = backend(
        tmp.path(),
        "a",
        registry_opts(&[&registry.addr, &proxy.addr]),
        (1, Duration::from_millis(10)),
        Duration::from_millis(300),
    )
    .await;
    let (src, dest) = release_pair(&backend, &v1, &v2).await;

    for fault in [ProxyMode::Refuse, ProxyMode::StallAfter(0)] {
        proxy.set(fault);
        // Past any back-off left by the previous fault.
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(
            backend.request(src, dest).await.unwrap(),
            DeltaRequest::Building,
            "{fault:?}"
        );
        match settle(&backend, src, dest).await {
            DeltaRequest::RetryLater { after, error } => {
                assert!(after <= Duration::from_millis(300), "{after:?}");
                assert!(!error.is_empty());
            }
            other => panic!("{fault:?}: {other:?}"),
        }
        // The client's view (`--store --wait`): a transient error with a retry delay,
        // which its poll loop waits out, not a failure.
        let e = bru_core::DeltaService::request_delta(&backend, src, dest)
            .await
            .unwrap_err();
        assert!(e.is_transient(), "{e:?}");
        assert!(e.retry_after().is_some());
        assert_eq!(
            backend
                .store()
                .newest_delta(src, dest, DELTA_VERSION)
                .await
                .unwrap(),
            None,
            "{fault:?}: an interrupted build leaves no row"
        );
    }

    proxy.set(ProxyMode::Pass);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        backend.request(src, dest).await.unwrap(),
        DeltaRequest::Building
    );
    assert!(matches!(
        settle(&backend, src, dest).await,
        DeltaRequest::Ready(_)
    ));
}

#[tokio::test]
async fn a_stalled_build_stops_its_heartbeat_and_a_deadline_ends_a_slow_one() {
    let tmp = tempfile::tempdir().unwrap();
    let registry = TestRegistry::shared();
    let proxy = FaultProxy::start(&registry.addr);
    let (v1, v2) = push_pair(&registry.addr, &proxy.addr, &tmp.path().join("images")).await;
    // The registry's own read timeout is far away: the build itself must notice.
    let mut opts = registry_opts(&[&registry.addr, &proxy.addr]);
    opts.timeouts.read = Duration::from_secs(120);
    for (stall, deadline, expect) in [
        (
            Duration::from_secs(1),
            Duration::from_secs(600),
            "no progress",
        ),
        (
            Duration::from_secs(600),
            Duration::from_secs(1),
            "did not finish",
        ),
    ] {
        let dir = tempfile::tempdir_in(tmp.path()).unwrap();
        let mut config = BuilderConfig::new(dir.path().join("deltas"));
        config.registry = opts.clone();
        config.heartbeat_interval = Duration::from_millis(100);
        config.stall_timeout = stall;
        config.build_timeout = deadline;
        let store = SqliteStore::open(dir.path().join("store.sqlite"))
            .await
            .unwrap();
        let backend = Embedded::new(
            Arc::new(store),
            DeltaBuilder::new(config),
            "a",
            ClaimPolicy::default(),
        );
        proxy.set(ProxyMode::Pass);
        let (src, dest) = release_pair(&backend, &v1, &v2).await;
        proxy.set(ProxyMode::StallAfter(0));
        let error = interrupted(&backend, src, dest).await;
        assert!(error.contains(expect), "{error}");
    }
}

#[tokio::test]
async fn a_full_work_disk_interrupts_the_build_without_recording_a_failure() {
    let tmp = tempfile::tempdir().unwrap();
    let small = tmp.path().join("small");
    std::fs::create_dir_all(&small).unwrap();
    // A 64 KiB file system: the basis of the pair (about 50 KB) and its work files do not fit.
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
        .arg(&small)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("SKIPPED: mounting a small tmpfs needs root (CI runs as root)");
        return;
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(small.clone());
    let (v1, v2) = support::two_images(&tmp.path().join("images"));
    let mut config = BuilderConfig::new(tmp.path().join("deltas"));
    config.workdir = Some(small.clone());
    config.retry = RetryPolicy {
        base: Duration::from_millis(10),
        max_delay: Duration::from_millis(10),
        retries: 1,
    };
    let store = SqliteStore::open(tmp.path().join("store.sqlite"))
        .await
        .unwrap();
    let backend = Embedded::new(
        Arc::new(store),
        DeltaBuilder::new(config),
        "a",
        ClaimPolicy::default(),
    );
    let (src, dest) = release_pair(&backend, &v1, &v2).await;
    let error = interrupted(&backend, src, dest).await;
    assert!(error.to_lowercase().contains("no space"), "{error}");
    // The failed build cleaned its work directory up.
    assert_eq!(std::fs::read_dir(&small).unwrap().count(), 0);
}

#[tokio::test]
async fn builds_of_dead_or_departed_processes_are_taken_over_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let (v1, v2) = support::two_images(&tmp.path().join("images"));
    let db = tmp.path().join("store.sqlite");
    let store = SqliteStore::open(&db).await.unwrap();
    let open = |owner: &'static str| {
        let db = db.clone();
        let deltas = tmp.path().join("deltas");
        async move { support::backend(&db, &deltas, owner, ClaimPolicy::default()).await }
    };
    let first = open("first").await;
    let (src, dest) = release_pair(&first, &v1, &v2).await;

    // A row claimed by a process of this machine that has ended (its heartbeat is fresh).
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let host = bru_core::process::host_name();
    let owner = format!("embedded-{host}-{dead}-1");
    let claim = store
        .claim_delta(src, dest, DELTA_VERSION, &owner, &ClaimPolicy::default())
        .await
        .unwrap();
    assert!(matches!(claim, Claim::Claimed { .. }));
    // ... is taken over by the next request, which builds it.
    let other = open("other").await;
    assert_eq!(
        other.request(src, dest).await.unwrap(),
        DeltaRequest::Building
    );
    other.wait_for_builds().await;
    assert_eq!(other.builder().builds_started(), 1);
    assert!(matches!(
        other.request(src, dest).await.unwrap(),
        DeltaRequest::Ready(_)
    ));

    // A row of a live process (this one) is left to it: no build starts.
    let (v5, v6) = support::rebuilt_binary(&tmp.path().join("images3"));
    let (s3, d3) = releases(&other, &v5, &v6, ("c0ffee05", "c0ffee06")).await;
    let alive = format!(
        "embedded-{host}-{}",
        bru_core::process::ProcessStamp::current()
    );
    store
        .claim_delta(s3, d3, DELTA_VERSION, &alive, &ClaimPolicy::default())
        .await
        .unwrap();
    assert_eq!(other.request(s3, d3).await.unwrap(), DeltaRequest::Building);
    other.wait_for_builds().await;
    assert_eq!(other.builder().builds_started(), 1);
    drop((first, other));

    // A process that gives its builds up before it ends: the next one builds at once.
    let (v3, v4) = support::two_images(&tmp.path().join("images2"));
    let leaving = open("leaving").await;
    let (s2, d2) = releases(&leaving, &v3, &v4, ("c0ffee03", "c0ffee04")).await;
    let claim = store
        .claim_delta(s2, d2, DELTA_VERSION, "leaving", &ClaimPolicy::default())
        .await
        .unwrap();
    assert!(matches!(claim, Claim::Claimed { .. }));
    assert_eq!(leaving.abandon_builds().await.unwrap(), 1);
    let next = open("next").await;
    let claim = store
        .claim_delta(s2, d2, DELTA_VERSION, "next", &ClaimPolicy::default())
        .await
        .unwrap();
    assert!(
        matches!(
            claim,
            Claim::Claimed {
                took_over: false,
                ..
            }
        ),
        "{claim:?}"
    );
    drop(next);
}
