//! Issue 11: what an operator copies from `deploy/` is checked against the binary: every
//! flag the compose service and the systemd unit pass exists in `serve --help`, the paths
//! and ports agree with the volumes, healthcheck, Dockerfile and haproxy snippet, and
//! `serve` starts with the compose command.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_yaml_ng::Value;

const BIN: &str = env!("CARGO_BIN_EXE_balena-release-update");

fn deploy(file: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy")
        .join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn serve_help() -> String {
    let out = Command::new(BIN)
        .args(["serve", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

/// `--name=value` or `--name` → (`--name`, value).
fn split_flag(arg: &str) -> (&str, Option<&str>) {
    match arg.split_once('=') {
        Some((flag, value)) => (flag, Some(value)),
        None => (arg, None),
    }
}

fn value_of<'a>(args: &'a [String], flag: &str) -> &'a str {
    args.iter()
        .find_map(|a| match split_flag(a) {
            (f, Some(v)) if f == flag => Some(v),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{flag} missing from {args:?}"))
}

fn assert_flags_exist(args: &[String], help: &str) {
    for arg in args.iter().filter(|a| a.starts_with("--")) {
        let (flag, _) = split_flag(arg);
        assert!(
            help.contains(&format!("{flag} ")) || help.contains(&format!("{flag}\n")),
            "{flag} is not a flag of serve:\n{help}"
        );
    }
}

fn compose() -> Value {
    serde_yaml_ng::from_str(&deploy("docker-compose.delta.yml")).unwrap()
}

fn compose_command(compose: &Value) -> Vec<String> {
    compose["services"]["delta"]["command"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn the_compose_service_matches_the_binary() {
    let compose = compose();
    let service = &compose["services"]["delta"];
    let command = compose_command(&compose);
    assert_eq!(command[0], "serve");
    let help = serve_help();
    assert_flags_exist(&command[1..], &help);

    // The store and the key are mounted where the command reads them.
    let volumes: Vec<&str> = service["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let mounted = |target: &str| volumes.iter().any(|v| v.split(':').nth(1) == Some(target));
    assert!(mounted(value_of(&command, "--store")), "{volumes:?}");
    assert!(
        mounted(value_of(&command, "--jwt-public-key")),
        "{volumes:?}"
    );
    let store_volume = volumes
        .iter()
        .find(|v| v.split(':').nth(1) == Some(value_of(&command, "--store")))
        .unwrap()
        .split(':')
        .next()
        .unwrap();
    assert!(
        compose["volumes"].get(store_volume).is_some(),
        "the store is on a named volume"
    );

    // Credentials come from the variable serve reads; the healthcheck asks the port it
    // listens on.
    assert!(help.contains("BRU_REGISTRY_CREDS"), "{help}");
    assert!(service["environment"].get("BRU_REGISTRY_CREDS").is_some());
    let port = value_of(&command, "--listen").rsplit(':').next().unwrap();
    let test: Vec<&str> = service["healthcheck"]["test"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(test[0], "CMD");
    assert!(
        test.contains(&&*format!("http://127.0.0.1:{port}/healthz")),
        "{test:?}"
    );

    // The image it builds installs curl, runs the binary, exposes the port.
    assert_eq!(service["build"]["dockerfile"], "deploy/Dockerfile");
    let dockerfile = deploy("Dockerfile");
    assert!(dockerfile.contains("curl"), "the healthcheck needs curl");
    assert!(dockerfile.contains(&format!("EXPOSE {port}\n")));
    assert!(dockerfile.contains("ENTRYPOINT [\"balena-release-update\"]"));
    assert!(dockerfile.contains("-p balena-release-update"));

    // haproxy sends delta.* to this service and port.
    let haproxy = deploy("haproxy-delta.cfg");
    assert!(
        haproxy.contains(&format!("server balena_delta_1 delta:{port}")),
        "{haproxy}"
    );
    assert!(haproxy.contains("hdr_beg(host) -i \"delta.\""));
}

/// The compose command, with its paths and variables pointed at a temp dir, starts serve.
#[test]
fn serve_starts_with_the_compose_command() {
    let command = compose_command(&compose());
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key.pem");
    // A P-256 public key (SubjectPublicKeyInfo), as the API's TOKEN_AUTH_CERT_PUB holds.
    std::fs::write(
        &key,
        bru_test_support::openbalena::TestKey::generate().public_pem,
    )
    .unwrap();
    let args: Vec<String> = command
        .iter()
        .map(|a| match split_flag(a) {
            ("--listen", _) => "--listen=127.0.0.1:0".to_owned(),
            ("--store", _) => format!("--store={}", dir.path().join("store").display()),
            ("--jwt-public-key", _) => format!("--jwt-public-key={}", key.display()),
            _ => a.replace("${DNS_TLD}", "openbalena.test"),
        })
        .collect();
    let mut child = Command::new(BIN)
        .args(&args)
        .env("BRU_REGISTRY_CREDS", "admin:key")
        .env_remove("RUST_LOG")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut log = String::new();
    let started = loop {
        let mut line = String::new();
        if stderr.read_line(&mut line).unwrap() == 0 {
            break false;
        }
        log.push_str(&line);
        if line.contains("addr=") {
            break true;
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(started, "serve did not start with {args:?}:\n{log}");
}

/// `ExecStart` of the unit, continuation lines joined, split into words.
fn exec_start(unit: &str) -> Vec<String> {
    let joined = unit.replace("\\\n", " ");
    let line = joined
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .unwrap();
    line.split_whitespace().map(str::to_owned).collect()
}

#[test]
fn the_systemd_unit_matches_the_binary() {
    let unit = deploy("balena-release-update-delta.service");
    let exec = exec_start(&unit);
    assert_eq!(
        PathBuf::from(&exec[0]).file_name().unwrap(),
        "balena-release-update"
    );
    assert_eq!(exec[1], "serve");
    assert_flags_exist(&exec[2..], &serve_help());
    // The store is the unit's state directory; the credentials variable is in its env file.
    let state = unit
        .lines()
        .find_map(|l| l.strip_prefix("StateDirectory="))
        .unwrap();
    assert_eq!(value_of(&exec, "--store"), format!("/var/lib/{state}"));
    assert!(unit.contains("EnvironmentFile=/etc/balena-release-update/env"));
    assert!(unit.contains("BRU_REGISTRY_CREDS=USER:API_KEY"));
    // Stopping waits for open requests (the long-poll budget, 24 s, and 5 s more).
    let stop: u64 = unit
        .lines()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .unwrap()
        .parse()
        .unwrap();
    assert!(stop > 29, "{stop}");
}
