//! The embedded store through the binary: `release add|list`, and the main job with
//! `--store` on a copy of the demo fleet (offline: report, then --wait builds the deltas),
//! or on releases recorded in PostgreSQL (`--database`, or `BRU_DATABASE_URL`).

use std::path::Path;

use bru_oci::{tar_of, ImageSpec, OciDir};
use bru_test_support::{noise, TestPostgres};
use serde_json::Value;

mod bin_support;

use bin_support::{json, run, Run};

fn error(run: &Run) -> String {
    assert_eq!(run.code, 1, "stdout: {} stderr: {}", run.stdout, run.stderr);
    assert!(run.stdout.is_empty(), "{}", run.stdout);
    assert!(run.stderr.starts_with("ERROR: "), "{}", run.stderr);
    run.stderr.clone()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name() == "state" {
            continue;
        }
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn service<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["is_produced_by__service_update"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["service_name"] == name)
        .unwrap_or_else(|| panic!("no service {name} in {report}"))
}

#[test]
fn the_demo_fleet_runs_offline() {
    let tmp = tempfile::tempdir().unwrap();
    let demo = tmp.path().join("demo");
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/demo"),
        &demo,
    );
    let store = demo.to_str().unwrap();
    let base = ["--store", store, "--from-release", "1", "--to-release", "2"];

    let report = json(&run(&base));
    assert_eq!(report["overall_status"], "pending");
    assert!(report.get("estimated_total_payload_size").is_none());
    assert_eq!(service(&report, "api")["status"], "pending");
    assert_eq!(service(&report, "worker")["status"], "ready");
    assert!(service(&report, "worker")
        .get("originates_from__image")
        .is_none());
    assert_eq!(report["removes__service"][0]["service_name"], "legacy");

    let report = json(&run(&[&base[..], &["--wait", "--timeout", "300"]].concat()));
    assert_eq!(report["overall_status"], "ready");
    let mut expected_payload = 0;
    for name in ["api", "frontend"] {
        let s = service(&report, name);
        assert_eq!(s["status"], "ready");
        let image = &s["produces__image"];
        let delta = &image["is_produced_by__delta"];
        assert_eq!(delta["version"], 3);
        let size = delta["size"].as_u64().unwrap();
        let full = image["image_size"].as_u64().unwrap();
        assert!(
            size > 0 && size < full / 2,
            "{name}: delta {size} vs full {full}"
        );
        let location = delta["is_stored_at__location"].as_str().unwrap();
        assert!(location.starts_with("oci:"), "{location}");
        assert!(location.contains("/state/deltas/delta-"), "{location}");
        expected_payload += size;
    }
    expected_payload += service(&report, "worker")["produces__image"]["image_size"]
        .as_u64()
        .unwrap();
    assert_eq!(report["estimated_total_payload_size"], expected_payload);

    // The deltas persist: a plain report is ready at once.
    let again = json(&run(&base));
    assert_eq!(again["overall_status"], "ready");
    assert_eq!(again["estimated_total_payload_size"], expected_payload);

    // --prepare alone builds the deltas before it exits.
    let next = [
        "--store",
        store,
        "--from-release",
        "2",
        "--to-release",
        "3",
        "--prepare",
    ];
    let report = json(&run(&next));
    assert_eq!(report["overall_status"], "ready");
    assert!(service(&report, "worker")["produces__image"]["is_produced_by__delta"].is_object());
}

#[test]
fn releases_are_added_and_listed() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("images");
    let oci = OciDir::create(&layout).unwrap();
    let spec = ImageSpec::new(vec![tar_of(&[("app/run", b"#!/bin/sh\necho hi\n")])]);
    let written = oci.write_image("v1", &spec).unwrap();
    let store = tmp.path().join("store");
    let store = store.to_str().unwrap();
    let image = format!("oci:{}:v1", layout.display());

    let added = json(&run(&[
        "release",
        "add",
        "--store",
        store,
        "--fleet",
        "f",
        "--commit",
        "ABC123",
        "--service",
        &format!("main={image}"),
    ]));
    assert_eq!(added["id"], 1);
    assert_eq!(added["commit"], "abc123");
    assert_eq!(added["status"], "success");
    let img = &added["images"][0];
    assert_eq!(img["service_name"], "main");
    assert_eq!(img["is_stored_at__image_location"], image);
    assert_eq!(img["content_hash"], written.manifest.digest.to_string());
    let full = written.config.size + written.layers.iter().map(|l| l.size).sum::<u64>();
    assert_eq!(img["image_size"], full);

    let listed = json(&run(&["release", "list", "--store", store]));
    assert_eq!(listed, Value::Array(vec![added.clone()]));

    // Bad inputs: a clear error, exit 1, nothing recorded.
    let add = |service: &str| {
        run(&[
            "release",
            "add",
            "--store",
            store,
            "--fleet",
            "f",
            "--commit",
            "def456",
            "--service",
            service,
        ])
    };
    let e = error(&add("main=not-a-reference"));
    assert!(e.contains("invalid image reference"), "{e}");
    let e = error(&add("main"));
    assert!(e.contains("NAME=IMAGE"), "{e}");
    let e = error(&add("main=127.0.0.1:9/none/here:v1"));
    assert!(
        e.contains("cannot read image 127.0.0.1:9/none/here:v1"),
        "{e}"
    );
    let e = error(&add(&format!(
        "main=oci:{}:v1",
        tmp.path().join("missing").display()
    )));
    assert!(e.contains("cannot read image"), "{e}");
    let e = error(&run(&[
        "release",
        "add",
        "--store",
        store,
        "--fleet",
        "f",
        "--commit",
        "abc123",
        "--service",
        &format!("main={image}"),
    ]));
    assert!(
        e.contains("already has a release with commit abc123"),
        "{e}"
    );
    let listed = json(&run(&["release", "list", "--store", store]));
    assert_eq!(listed.as_array().unwrap().len(), 1);

    let e = error(&run(&[
        "--store",
        store,
        "--from-release",
        "1",
        "--to-release",
        "7",
    ]));
    assert_eq!(e, "ERROR: Release not found: 7\n");
}

#[test]
fn fleet_bandwidth_is_set_cleared_and_bad_values_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let store = store.to_str().unwrap();
    let set = |extra: &[&str]| {
        let mut args = vec!["release", "set-bandwidth", "--store", store, "--fleet", "f"];
        args.extend_from_slice(extra);
        run(&args)
    };
    let done = set(&["--device-bandwidth", "0.5"]);
    assert_eq!(
        json(&done),
        serde_json::json!({"fleet": "f", "device_bandwidth": 500_000})
    );
    // Field order is part of the contract.
    assert!(done.stdout.find("\"fleet\"") < done.stdout.find("\"device_bandwidth\""));
    assert_eq!(
        json(&set(&["--default"])),
        serde_json::json!({"fleet": "f", "device_bandwidth": null})
    );
    for bad in ["0", "abc", "-1", "1e3", "200000"] {
        let e = error(&set(&[&format!("--device-bandwidth={bad}")]));
        assert!(e.contains("bad device bandwidth"), "{bad}: {e}");
    }
    // One of the two is required, and not both.
    assert!(error(&set(&[])).contains("--device-bandwidth"));
    error(&set(&["--device-bandwidth", "1", "--default"]));
    // delta create and serve parse the same values.
    let e = error(&run(&[
        "delta",
        "create",
        "--source",
        "oci:/nonexistent:a",
        "--target",
        "oci:/nonexistent:b",
        "--output",
        "oci:/nonexistent:c",
        "--device-bandwidth",
        "fast",
    ]));
    assert!(e.contains("bad device bandwidth"), "{e}");
    let e = error(&run(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--store",
        store,
        "--no-auth",
        "--device-bandwidth",
        "0.0000001",
    ]));
    assert!(e.contains("bad device bandwidth"), "{e}");
}

/// Runs the binary with `BRU_DATABASE_URL` set to `database` (`None`: unset).
fn run_with_database_env(args: &[&str], database: Option<&str>) -> Run {
    bin_support::run_with_env(args, &[("BRU_DATABASE_URL", database)])
}

/// A release engineer asks about releases that `release add` recorded in PostgreSQL (where
/// the `serve` instances keep them), from a store directory of their own: the report comes
/// from the database, `--wait` builds the delta and records it there, once.
#[test]
fn the_main_command_reads_and_prepares_releases_recorded_in_postgres() {
    let pg = TestPostgres::shared();
    let database = pg.create_database();
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("images");
    let oci = OciDir::create(&layout).unwrap();
    let app = noise(3, 200_000);
    let mut changed = app.clone();
    changed[1000..1016].copy_from_slice(b"release-two-here");
    for (tag, bytes) in [("v1", &app), ("v2", &changed)] {
        let spec = ImageSpec::new(vec![tar_of(&[("app/bin", bytes)])]);
        oci.write_image(tag, &spec).unwrap();
    }
    // Recorded through one store directory, with the URL on the command line ...
    let recorder = tmp.path().join("recorder");
    let recorder = recorder.to_str().unwrap();
    for (commit, tag) in [("aaaa1111", "v1"), ("bbbb2222", "v2")] {
        let added = json(&run_with_database_env(
            &[
                "release",
                "add",
                "--store",
                recorder,
                "--database",
                &database,
                "--fleet",
                "fleet",
                "--commit",
                commit,
                "--service",
                &format!("main=oci:{}:{tag}", layout.display()),
            ],
            None,
        ));
        assert_eq!(added["commit"], commit);
    }

    // ... and asked about from another one, with the URL from the environment.
    let engineer = tmp.path().join("engineer");
    let engineer = engineer.to_str().unwrap();
    let base = [
        "--store",
        engineer,
        "--from-release",
        "aaaa1111",
        "--to-release",
        "bbbb2222",
    ];
    let report = json(&run_with_database_env(&base, Some(&database)));
    assert_eq!(report["originates_from__release"]["commit"], "aaaa1111");
    assert_eq!(report["produces__release"]["commit"], "bbbb2222");
    assert_eq!(report["overall_status"], "pending");
    // The flag does the same, and wins over the environment.
    let with_flag = [&base[..], &["--database", &database]].concat();
    let same = json(&run_with_database_env(
        &with_flag,
        Some("sqlite:/nonexistent/x"),
    ));
    assert_eq!(same, report);

    let prepared = [&base[..], &["--wait", "--timeout", "300"]].concat();
    let report = json(&run_with_database_env(&prepared, Some(&database)));
    assert_eq!(report["overall_status"], "ready");
    let delta = &service(&report, "main")["produces__image"]["is_produced_by__delta"];
    let size = delta["size"].as_u64().unwrap();
    assert!(size > 0 && size < 100_000, "{delta}");
    assert_eq!(
        pg.psql(
            &database,
            "SELECT count(*) || ' ' || count(*) FILTER (WHERE status = 'success') FROM deltas"
        )
        .unwrap(),
        "1 1"
    );
    // A second run finds the delta in the database: ready at once, nothing built again.
    let again = json(&run_with_database_env(&with_flag, None));
    assert_eq!(again, report);
    assert_eq!(
        pg.psql(&database, "SELECT count(*) FROM deltas").unwrap(),
        "1"
    );

    // Without the database the engineer's store directory has no such release: the report
    // above came from PostgreSQL.
    let e = error(&run_with_database_env(&base, None));
    assert_eq!(e, "ERROR: Release not found: aaaa1111\n");
}

#[test]
fn bad_database_values_are_refused_with_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let store = store.to_str().unwrap();
    let base = ["--from-release", "1", "--to-release", "2"];
    let with_store = [&base[..], &["--store", store]].concat();

    let e = error(&run_with_database_env(
        &[&with_store[..], &["--database", "mysql://u:secret@db/x"]].concat(),
        None,
    ));
    assert!(e.contains("--database"), "{e}");
    assert!(e.contains("expected sqlite:PATH, postgres://"), "{e}");
    // From the environment: named, and its value (which may hold a password) not shown.
    let e = error(&run_with_database_env(
        &with_store,
        Some("mysql://u:secret@db/x"),
    ));
    assert!(
        e.starts_with("ERROR: Invalid value for BRU_DATABASE_URL: expected"),
        "{e}"
    );
    assert!(!e.contains("secret"), "{e}");
    // The flag only means something with --store.
    let e = error(&run_with_database_env(
        &[&base[..], &["--database", "sqlite:/tmp/x.sqlite"]].concat(),
        None,
    ));
    assert_eq!(e, "ERROR: --database needs --store\n");
    // A well-formed URL where no PostgreSQL listens: an error that names it, password hidden.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let e = error(&run_with_database_env(
        &[
            &with_store[..],
            &[
                "--database",
                &format!("postgres://bru:hunter2@127.0.0.1:{port}/bru"),
            ],
        ]
        .concat(),
        None,
    ));
    assert!(e.contains(&format!("bru:***@127.0.0.1:{port}")), "{e}");
    assert!(!e.contains("hunter2"), "{e}");
    // Nothing was written where the records would otherwise have gone.
    assert!(!Path::new(store).join("state/store.sqlite").exists());
}
