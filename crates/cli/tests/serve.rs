//! `serve` as a process: auth must be chosen explicitly; it serves, and SIGTERM stops it
//! cleanly.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::process::{Command, Stdio};

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
