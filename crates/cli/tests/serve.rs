//! `serve` as a process: auth must be chosen explicitly; it serves, and SIGTERM stops it
//! cleanly.

mod bin_support;

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_balena-release-update");

#[test]
fn refuses_to_start_without_an_auth_choice() {
    let store = tempfile::tempdir().unwrap();
    let store = store.path().to_str().unwrap();
    for extra in [
        &[][..],
        &["--no-auth", "--jwt-public-key", "/nonexistent.pem"][..],
    ] {
        let out = Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--store", store])
            .args(extra)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{extra:?}");
        assert!(String::from_utf8_lossy(&out.stderr).starts_with("ERROR: "));
    }
    let key = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(key.path(), "not a key").unwrap();
    let out = Command::new(BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--store",
            store,
            "--jwt-public-key",
        ])
        .arg(key.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unusable public key"));
}

#[test]
fn refuses_malformed_registry_credentials() {
    let store = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--no-auth",
            "--creds",
            "no-colon",
            "--store",
        ])
        .arg(store.path())
        .env_remove("BRU_REGISTRY_CREDS")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("ERROR: ") && stderr.contains("USER:PASSWORD"),
        "{stderr}"
    );
}

#[cfg(unix)]
#[test]
fn serves_and_stops_on_sigterm() {
    let store = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--no-auth", "--store"])
        .arg(store.path())
        .env_remove("RUST_LOG")
        .stderr(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let addr = loop {
        line.clear();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "no serving line");
        if let Some((_, rest)) = line.split_once("addr=") {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    let mut conn = TcpStream::connect(&addr).unwrap();
    conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    conn.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        response.to_ascii_lowercase().contains("x-request-id: "),
        "{response}"
    );

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    assert_eq!(child.wait().unwrap().code(), Some(0));
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).unwrap();
    assert!(rest.contains("stopped"), "{rest}");
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    assert_eq!(stdout, "");
}

/// Starts `serve` and returns it with its address (read from its log on stderr).
fn spawn_server(args: &[&str], store: &std::path::Path) -> (std::process::Child, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--store"])
        .arg(store)
        .args(args);
    bin_support::start_serve(cmd)
}

/// `kill -9` right after a build starts: no partial delta is visible under the delta's
/// tag, and the next server on the store takes the build over and completes it.
#[cfg(unix)]
#[tokio::test]
async fn a_killed_build_leaves_no_partial_delta_and_is_taken_over() {
    use bru_oci::{open_source, tar_of, ImageSpec, OciDir, RegistryOptions};
    use bru_service::{delta_tag, DeltaStatus, SqliteStore, Store as _, DELTA_VERSION};

    let registry = bru_test_support::TestRegistry::shared();
    let mut opts = RegistryOptions::default();
    opts.insecure = vec![registry.addr.clone()];
    let tmp = tempfile::tempdir().unwrap();
    let layout = OciDir::create(tmp.path().join("images")).unwrap();
    use bru_test_support::noise;
    let app1 = noise(7, 1 << 20);
    let mut app2 = app1.clone();
    app2[5000..5010].copy_from_slice(b"0123456789");
    let repo = bru_test_support::unique_repo("v2/killed");
    let mut refs = Vec::new();
    for (tag, app) in [("v1", app1), ("v2", app2)] {
        let spec = ImageSpec::new(vec![tar_of(&[("app/bin", &app)])]);
        layout.write_image(tag, &spec).unwrap();
        let to = format!("{}/{repo}:{tag}", registry.addr);
        bru_test_support::copy_image(
            &format!("oci:{}:{tag}", tmp.path().join("images").display()),
            &to,
            &opts,
        )
        .await;
        refs.push(to);
    }
    let store = tmp.path().join("store");
    let args = [
        "--no-auth",
        "--poll-seconds",
        "0",
        "--stale-seconds",
        "1",
        "--allow-registry",
        &registry.addr,
        "--insecure-registry",
        &registry.addr,
    ];
    let query = format!("/api/v3/delta?src={}&dest={}", refs[0], refs[1]);

    let (mut first, addr) = spawn_server(&args, &store);
    let (status, body) = bin_support::http_get(&addr, &query, None);
    assert_eq!(status, 504, "{body}");
    first.kill().unwrap();
    first.wait().unwrap();

    // Whatever the build had done, the tag shows a complete delta or nothing.
    let db = SqliteStore::open(store.join("state/store.sqlite"))
        .await
        .unwrap();
    // The two images were recorded as images (source first), not as releases.
    assert!(db.list_releases(None).await.unwrap().is_empty());
    let src = &db.image(1).await.unwrap().unwrap();
    let dest = &db.image(2).await.unwrap().unwrap();
    let pinned = format!("{}/{repo}@", registry.addr);
    assert!(src.location.starts_with(&pinned), "{src:?}");
    assert!(dest.location.starts_with(&pinned), "{dest:?}");
    let tag = delta_tag(&src.content_hash, &dest.content_hash);
    let delta_ref = format!("{}/{repo}:{tag}", registry.addr);
    let row = db
        .newest_delta(src.id, dest.id, DELTA_VERSION)
        .await
        .unwrap()
        .unwrap();
    let visible = match open_source(&delta_ref.parse().unwrap(), &opts).await {
        Ok(source) => source.image().await.is_ok(),
        Err(_) => false,
    };
    assert_eq!(visible, row.status == DeltaStatus::Success, "{row:?}");
    drop(db);

    // The next server takes the abandoned build over once its heartbeat is stale.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (mut second, addr) = spawn_server(&args, &store);
    let mut answer = (504, String::new());
    for _ in 0..300 {
        answer = bin_support::http_get(&addr, &query, None);
        if answer.0 != 504 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(answer.0, 200, "{}", answer.1);
    assert!(answer.1.contains(&delta_ref), "{}", answer.1);
    let delta = open_source(&delta_ref.parse().unwrap(), &opts)
        .await
        .unwrap();
    let info = bru_delta::inspect(&*delta).await.unwrap();
    assert!(info.download_bytes < dest.image_size);
    second.kill().unwrap();
    second.wait().unwrap();
}

/// Issue 8: 300 stalled connections under a 256 open-file limit must not lock out
/// `/healthz`. The cap is fitted below the limit and the idlest connection makes room.
#[cfg(target_os = "linux")]
#[test]
fn healthz_answers_with_more_stalled_connections_than_file_descriptors() {
    let store = tempfile::tempdir().unwrap();
    let mut child = Command::new("sh")
        .arg("-c")
        .arg("ulimit -n 256 && exec \"$0\" \"$@\"")
        .arg(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--no-auth", "--store"])
        .arg(store.path())
        // Only the cap can make room: the header timeout is beyond the test.
        .args(["--header-timeout-seconds", "3600"])
        .env_remove("RUST_LOG")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let mut log = String::new();
    let addr = loop {
        line.clear();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "no serving line: {log}"
        );
        log.push_str(&line);
        if let Some((_, rest)) = line.split_once("addr=") {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    // 256 open files less the 64 kept for the store, registries and builds.
    assert!(line.contains("max_connections=192"), "{log}");
    let mut stalled = Vec::new();
    for _ in 0..300 {
        let mut c = TcpStream::connect(&addr).unwrap();
        c.write_all(b"GET /heal").unwrap();
        stalled.push(c);
    }
    for _ in 0..3 {
        let mut conn = TcpStream::connect(&addr).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut response = String::new();
        conn.read_to_string(&mut response).unwrap();
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    }
    drop(stalled);
    let _ = child.kill();
    let _ = child.wait();
}
