//! Issue 10: several `serve` processes on one PostgreSQL database (`--database`) and the
//! real registry. Concurrent devices over many image pairs get every delta built once and
//! every request answered per protocol; `kill -9` of the instance building a delta lets
//! another one complete it; PostgreSQL restarted while devices poll is ridden out with no
//! lost or duplicated records.

#![cfg(unix)]

mod bin_support;

use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

use bru_oci::{tar_of, ImageSpec, OciDir, RegistryOptions};
use bru_test_support::{noise, unique_repo, TestPostgres, TestRegistry};

const BIN: &str = env!("CARGO_BIN_EXE_balena-release-update");

/// A `serve` process, killed when dropped.
struct Instance {
    child: Child,
    addr: String,
}

impl Instance {
    /// Whether the process is still running.
    fn child_alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `serve` on `database` with its own store directory.
fn serve(database: &str, store: &Path, registry: &str, extra: &[&str]) -> Instance {
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--no-auth", "--store"])
        .arg(store)
        .args([
            "--allow-registry",
            registry,
            "--insecure-registry",
            registry,
        ])
        .args(extra)
        // The URL comes from the environment, as in a deployment.
        .env("BRU_DATABASE_URL", database);
    let (child, addr) = bin_support::start_serve(cmd);
    Instance { child, addr }
}

/// Polls like a device: 504 (building) and 503 (retry later) are asked again, anything
/// else is the answer.
fn poll_delta(addr: &str, query: &str) -> (u16, String) {
    for _ in 0..1200 {
        let (status, body) = bin_support::http_get(addr, query, None);
        if status != 504 && status != 503 {
            return (status, body);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("no answer but 504/503 for {query} from {addr}");
}

/// Pushes `n + 1` images (tags v0 … vN, an app binary of `len` bytes changed a little in
/// each) to `registry`; returns their references.
async fn push_images(registry: &str, n: usize, len: usize, dir: &Path) -> Vec<String> {
    let mut opts = RegistryOptions::default();
    opts.insecure = vec![registry.to_string()];
    let layout = OciDir::create(dir).unwrap();
    let repo = unique_repo("scale-out");
    let app = noise(10, len);
    let mut refs = Vec::new();
    for i in 0..=n {
        let mut app = app.clone();
        if i > 0 {
            let at = (i * 7919) % (len - 16);
            app[at..at + 16].copy_from_slice(format!("variant{i:09}").as_bytes());
        }
        let tag = format!("v{i}");
        let spec = ImageSpec::new(vec![tar_of(&[("app/bin", &app)])]);
        layout.write_image(&tag, &spec).unwrap();
        let from: bru_oci::ImageReference = format!("oci:{}:{tag}", dir.display()).parse().unwrap();
        let to = format!("{registry}/{repo}:{tag}");
        let src = bru_oci::open_source(&from, &opts).await.unwrap();
        let sink = bru_oci::open_sink(&to.parse().unwrap(), &opts)
            .await
            .unwrap();
        bru_oci::copy_image(&*src, &*sink).await.unwrap();
        refs.push(to);
    }
    refs
}

fn metric(addr: &str, name: &str) -> u64 {
    let (status, body) = bin_support::http_get(addr, "/metrics", None);
    assert_eq!(status, 200);
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0)
}

/// Three `serve` instances on `database`, each with its own store directory under `dir`.
fn three_instances(database: &str, dir: &Path, registry: &str) -> Vec<Instance> {
    (0..3)
        .map(|i| {
            serve(
                database,
                &dir.join(format!("store-{i}")),
                registry,
                &["--poll-seconds", "1"],
            )
        })
        .collect()
}

/// The delta query of every image after the first, from the first.
fn pair_queries(refs: &[String]) -> Vec<String> {
    refs[1..]
        .iter()
        .map(|dest| format!("/api/v3/delta?src={}&dest={dest}", refs[0]))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_answer_200_devices_and_build_each_pair_once() {
    let registry = TestRegistry::shared();
    let pg = TestPostgres::shared();
    let database = pg.create_database();
    let tmp = tempfile::tempdir().unwrap();
    let refs = push_images(&registry.addr, 10, 300_000, &tmp.path().join("images")).await;
    let instances = three_instances(&database, tmp.path(), &registry.addr);
    let queries = pair_queries(&refs);

    let answers: Vec<(usize, u16, String)> = std::thread::scope(|s| {
        let (instances, queries) = (&instances, &queries);
        let calls: Vec<_> = (0..200)
            .map(|i| {
                let pair = i % queries.len();
                let (addr, query) = (&instances[i % 3].addr, &queries[pair]);
                s.spawn(move || {
                    let (status, body) = poll_delta(addr, query);
                    (pair, status, body)
                })
            })
            .collect();
        calls.into_iter().map(|c| c.join().unwrap()).collect()
    });
    // Every device got its delta; all devices asking for a pair got the same one.
    let mut names = vec![None; queries.len()];
    for (pair, status, body) in &answers {
        assert_eq!(*status, 200, "{body}");
        let name = serde_json::from_str::<serde_json::Value>(body).unwrap()["name"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(name.contains(":delta-"), "{name}");
        let first = names[*pair].get_or_insert_with(|| name.clone());
        assert_eq!(*first, name);
    }
    // Built once per pair, across the three instances.
    let started: u64 = instances
        .iter()
        .map(|i| metric(&i.addr, "bru_delta_builds_started_total"))
        .sum();
    assert_eq!(started, queries.len() as u64);
    let rows = pg
        .psql(
            &database,
            "SELECT count(*) || ' ' || count(*) FILTER (WHERE status = 'success') FROM deltas",
        )
        .unwrap();
    assert_eq!(rows, format!("{0} {0}", queries.len()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_building_instance_lets_another_complete_the_build() {
    let registry = TestRegistry::shared();
    let pg = TestPostgres::shared();
    let database = pg.create_database();
    let tmp = tempfile::tempdir().unwrap();
    let refs = push_images(&registry.addr, 1, 8 << 20, &tmp.path().join("images")).await;
    let query = format!("/api/v3/delta?src={}&dest={}", refs[0], refs[1]);
    let args = ["--poll-seconds", "0", "--stale-seconds", "2"];
    let mut builder = serve(&database, &tmp.path().join("s0"), &registry.addr, &args);
    let other = serve(&database, &tmp.path().join("s1"), &registry.addr, &args);

    let (status, body) = bin_support::http_get(&builder.addr, &query, None);
    assert_eq!(status, 504, "{body}");
    let owner = pg
        .psql(&database, "SELECT owner || ' ' || status FROM deltas")
        .unwrap();
    assert!(owner.ends_with(" running"), "{owner}");
    builder.child.kill().unwrap();
    builder.child.wait().unwrap();

    let (status, body) = poll_delta(&other.addr, &query);
    assert_eq!(status, 200, "{body}");
    let rows = pg
        .psql(&database, "SELECT owner || ' ' || status FROM deltas")
        .unwrap();
    assert!(rows.ends_with(" success"), "{rows}");
    assert_ne!(
        rows.split(' ').next(),
        owner.split(' ').next(),
        "completed by another instance"
    );
    assert_eq!(rows.lines().count(), 1, "{rows}");
    assert_eq!(metric(&other.addr, "bru_delta_builds_started_total"), 1);
}

/// Asks `addr` once for `query` during or after a database outage, checking that the
/// answer is one the protocol allows there: the delta (200, `ready` is its expected name
/// once known), still building (504), or transient trouble (503 with `Retry-After`), never
/// a 500 or a permanent failure. Returns the status, and the delta's name when it is ready.
fn ask_through_outage(addr: &str, query: &str, ready: Option<&str>) -> (u16, Option<String>) {
    let answer = bin_support::http_get_answer(addr, query, None);
    let name = match answer.status {
        200 => {
            let body: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
            let name = body["name"].as_str().unwrap().to_string();
            assert!(name.contains(":delta-"), "{name}");
            if let Some(ready) = ready {
                assert_eq!(name, ready, "{query}: another delta than before");
            }
            Some(name)
        }
        504 => None,
        503 => {
            let after = answer
                .header("retry-after")
                .unwrap_or_else(|| panic!("{query}: 503 without Retry-After: {}", answer.body));
            assert!(after.parse::<u64>().is_ok_and(|s| s >= 1), "{after}");
            None
        }
        other => panic!("{query} on {addr}: {other} {}", answer.body),
    };
    (answer.status, name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_ride_out_a_postgres_restart_with_no_lost_or_duplicated_records() {
    let registry = TestRegistry::shared();
    // A private server: this test stops and starts it.
    let mut pg = TestPostgres::start();
    let database = pg.create_database();
    let tmp = tempfile::tempdir().unwrap();
    let refs = push_images(&registry.addr, 6, 300_000, &tmp.path().join("images")).await;
    let instances = three_instances(&database, tmp.path(), &registry.addr);
    let queries = pair_queries(&refs);
    let addrs: Vec<String> = instances.iter().map(|i| i.addr.clone()).collect();
    let addr = |i: usize| addrs[i % addrs.len()].as_str();

    // Before the outage: the first half of the pairs is built and fetched.
    let before = &queries[..queries.len() / 2];
    let mut names: Vec<Option<String>> = vec![None; queries.len()];
    for (p, query) in before.iter().enumerate() {
        let (status, body) = poll_delta(addr(p), query);
        assert_eq!(status, 200, "{body}");
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        names[p] = Some(body["name"].as_str().unwrap().to_string());
    }

    // PostgreSQL goes away. Devices keep asking every instance for every pair, those
    // already built and those never seen: transient answers only.
    pg = tokio::task::spawn_blocking(move || {
        pg.stop();
        pg
    })
    .await
    .unwrap();
    let mut unavailable = vec![0; queries.len()];
    for round in 0..3 {
        for (p, query) in queries.iter().enumerate() {
            let (status, _) = ask_through_outage(addr(p + round), query, names[p].as_deref());
            if status == 503 {
                unavailable[p] += 1;
            }
        }
    }
    // A pair never recorded cannot be answered without the database: it is not claimed
    // (no build starts) and every ask gets 503.
    assert!(
        unavailable[before.len()..].iter().all(|&n| n == 3),
        "{unavailable:?}"
    );
    let mut instances = instances;
    for i in &mut instances {
        assert!(i.child_alive(), "an instance died in the outage");
    }

    // PostgreSQL is back: devices keep polling, round-robin, until every pair is ready.
    pg = tokio::task::spawn_blocking(move || {
        pg.start_again();
        pg
    })
    .await
    .unwrap();
    let mut round = 0;
    while names.iter().any(Option::is_none) {
        for (p, query) in queries.iter().enumerate() {
            if let (_, Some(name)) = ask_through_outage(addr(p + round), query, names[p].as_deref())
            {
                names[p] = Some(name);
            }
        }
        round += 1;
        assert!(
            round < 300,
            "not every pair was ready after the restart: {names:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Every instance now answers every pair with the same delta.
    for (p, query) in queries.iter().enumerate() {
        for addr in &addrs {
            let (status, body) = bin_support::http_get(addr, query, None);
            assert_eq!(status, 200, "{body}");
            assert!(body.contains(names[p].as_deref().unwrap()), "{body}");
        }
    }

    // Built once per pair across the instances, nothing interrupted, and the records are
    // whole: one successful delta row per pair and no other, each image recorded once.
    let total = |name: &str| -> u64 { instances.iter().map(|i| metric(&i.addr, name)).sum() };
    assert_eq!(
        total("bru_delta_builds_started_total"),
        queries.len() as u64
    );
    assert_eq!(
        total("bru_delta_builds_succeeded_total"),
        queries.len() as u64
    );
    assert_eq!(total("bru_delta_builds_interrupted_total"), 0);
    let rows = pg
        .psql(
            &database,
            "SELECT count(*) || ' ' || count(*) FILTER (WHERE status = 'success') || ' ' \
             || count(DISTINCT (originates_from__image, produces__image)) FROM deltas",
        )
        .unwrap();
    let n = queries.len();
    assert_eq!(rows, format!("{n} {n} {n}"));
    let images = pg
        .psql(
            &database,
            "SELECT count(*) || ' ' || count(DISTINCT location) FROM images",
        )
        .unwrap();
    assert_eq!(images, format!("{0} {0}", refs.len()));
}
