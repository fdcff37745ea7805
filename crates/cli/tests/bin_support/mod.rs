//! Running the real binary from integration tests.
#![allow(dead_code)]

use std::process::Command;

use serde_json::Value;

/// What one run of the binary did.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `balena-release-update ARGS` (without `RUST_LOG` from the environment).
pub fn run(args: &[&str]) -> Run {
    run_with_env(args, &[])
}

/// [`run`] with environment variables set (`Some`) or removed (`None`).
pub fn run_with_env(args: &[&str], env: &[(&str, Option<&str>)]) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_balena-release-update"));
    cmd.args(args).env_remove("RUST_LOG");
    for (name, value) in env {
        match value {
            Some(value) => cmd.env(name, value),
            None => cmd.env_remove(name),
        };
    }
    let out = cmd.output().expect("run the binary");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The JSON a successful run printed.
pub fn json(run: &Run) -> Value {
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {}", run.stdout))
}

/// Starts a prepared `serve` command (stderr piped here, stdout discarded, no `RUST_LOG`)
/// and returns it with the address it serves on, read from its log. The log keeps being
/// drained so the server never blocks on a full pipe.
pub fn start_serve(mut cmd: Command) -> (std::process::Child, String) {
    use std::io::BufRead as _;
    let mut child = cmd
        .env_remove("RUST_LOG")
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start serve");
    let mut stderr = std::io::BufReader::new(child.stderr.take().expect("piped stderr"));
    let mut line = String::new();
    let mut log = String::new();
    let addr = loop {
        line.clear();
        assert!(
            stderr.read_line(&mut line).expect("read the log") > 0,
            "no serving line: {log}"
        );
        log.push_str(&line);
        if let Some((_, rest)) = line.split_once("addr=") {
            break rest
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string();
        }
    };
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    (child, addr)
}

/// A plain HTTP/1.1 GET with an optional `Authorization` header: the status and the body.
pub fn http_get(addr: &str, path: &str, authorization: Option<&str>) -> (u16, String) {
    let answer = http_get_answer(addr, path, authorization);
    (answer.status, answer.body)
}

/// What a server answered: the status, the header lines and the body.
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    /// The value of the header `name` (case-insensitive), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// [`http_get`], with the answer's headers.
pub fn http_get_answer(addr: &str, path: &str, authorization: Option<&str>) -> Answer {
    use std::io::{Read as _, Write as _};
    let mut conn = std::net::TcpStream::connect(addr).expect("connect");
    let auth = authorization.map_or(String::new(), |a| format!("Authorization: {a}\r\n"));
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n"
    )
    .expect("send the request");
    let mut response = String::new();
    conn.read_to_string(&mut response).expect("read the answer");
    let status = response
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let headers = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    Answer {
        status,
        headers,
        body: body.to_string(),
    }
}
