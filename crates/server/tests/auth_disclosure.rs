//! Tokens, store ids and what error answers and logs disclose. Nothing here needs a
//! registry: the allowed registries are loopback ports with nothing listening, so a request
//! that gets past the checks answers 503 and one refused by them never reaches the network.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bru_server::{Auth, Server, ServerConfig, Verifier};
use bru_service::NewImage;
use common::{claims, now, TestKey};

mod common;

const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// Log lines of every test in this binary (the subscriber is process-wide).
fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    Arc::clone(LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&logs);
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || Capture(Arc::clone(&sink)))
            .finish();
        tracing::subscriber::set_global_default(subscriber).unwrap();
        logs
    }))
}

struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A loopback address where nothing listens.
fn dead_port() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

struct Setup {
    addr: SocketAddr,
    server: Server,
    key: TestKey,
    registries: [String; 2],
    _store: tempfile::TempDir,
}

/// A server with a token key that allows two (dead) registries.
async fn start() -> Setup {
    captured_logs();
    let key = TestKey::generate();
    let registries = [dead_port(), dead_port()];
    let store = tempfile::tempdir().unwrap();
    let verifier = Verifier::from_pem(key.public_pem.as_bytes()).unwrap();
    let mut config = ServerConfig::new(store.path(), Auth::Jwt(verifier));
    config.registry.insecure = registries.to_vec();
    config.allowed_registries = registries.to_vec();
    config.poll = Duration::ZERO;
    let server = Server::open(config).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(server.clone().serve(listener, std::future::pending()));
    Setup {
        addr,
        server,
        key,
        registries,
        _store: store,
    }
}

/// Status, body, and the `x-request-id` header of `GET target`.
async fn get(
    addr: SocketAddr,
    target: &str,
    token: Option<&str>,
) -> (u16, serde_json::Value, String) {
    let mut req = reqwest::Client::new().get(format!("http://{addr}{target}"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let id = resp
        .headers()
        .get("x-request-id")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let body = resp.json().await.unwrap_or(serde_json::Value::Null);
    (status, body, id)
}

fn delta(src: &str, dest: &str) -> String {
    format!("/api/v3/delta?src={src}&dest={dest}")
}

#[tokio::test]
async fn a_token_for_one_registry_reads_nothing_of_the_other() {
    let s = start().await;
    let [one, two] = &s.registries;
    let src = format!("{one}/v2/src@{DIGEST}");
    let dest = format!("{two}/v2/dest@{DIGEST}");
    let repos = ["v2/src", "v2/dest"];
    for aud in [one, two] {
        let token = s.key.sign(&claims(aud, &repos, now() + 600));
        let (status, body, _) = get(s.addr, &delta(&src, &dest), Some(&token)).await;
        assert_eq!(status, 401, "aud {aud}: {body}");
        // Either direction.
        let (status, body, _) = get(s.addr, &delta(&dest, &src), Some(&token)).await;
        assert_eq!(status, 401, "aud {aud}: {body}");
    }
    // Without aud, a token is for no registry.
    let mut no_aud = claims(one, &repos, now() + 600);
    no_aud.as_object_mut().unwrap().remove("aud");
    let (status, _, _) = get(s.addr, &delta(&src, &dest), Some(&s.key.sign(&no_aud))).await;
    assert_eq!(status, 401);

    // A token for both passes the checks and reaches the (dead) registries: 503, and the
    // answer names no registry address or URL.
    let mut both = claims(one, &repos, now() + 600);
    both["aud"] = serde_json::json!([one, two]);
    let (status, body, id) = get(s.addr, &delta(&src, &dest), Some(&s.key.sign(&both))).await;
    assert_eq!(status, 503, "{body}");
    let text = body.to_string();
    for leak in [
        one.as_str(),
        two.as_str(),
        "http",
        "/v2/",
        "error sending",
        "connect",
    ] {
        assert!(!text.contains(leak), "{leak} in {text}");
    }
    assert_eq!(body["request_id"], id.as_str(), "{body}");
    // The details are in the log, under the same request id.
    let logs = String::from_utf8(captured_logs().lock().unwrap().clone()).unwrap();
    assert!(
        logs.lines()
            .any(|l| l.contains(&id) && l.contains("detail=") && l.contains(one.as_str())),
        "{logs}"
    );
    assert_eq!(s.server.backend().builder().builds_started(), 0);
}

#[tokio::test]
async fn store_ids_cannot_be_enumerated_with_a_token() {
    let s = start().await;
    let [one, two] = &s.registries;
    let store = s.server.backend().store();
    let mut ids = Vec::new();
    for (commit, location) in [
        ("aaaa01", format!("{one}/v2/granted@{DIGEST}")),
        ("aaaa02", format!("{one}/v2/secret@{DIGEST}")),
        ("aaaa03", format!("{two}/v2/granted@{DIGEST}")),
        ("aaaa04", "oci:/var/lib/images:v1".to_string()),
    ] {
        let image = NewImage {
            service_name: "main".into(),
            location,
            content_hash: DIGEST.into(),
            image_size: 1,
        };
        let release = store
            .add_release("fleet", commit, vec![image])
            .await
            .unwrap();
        ids.push(release.images[0].id);
    }
    let token = s.key.sign(&claims(one, &["v2/granted"], now() + 600));
    let granted = ids[0];
    // Not granted (repository), on the other registry, not on a registry, unknown: the
    // same answer, whichever side it is on.
    for other in [ids[1], ids[2], ids[3], 999_999] {
        for (src, dest) in [(other, granted), (granted, other)] {
            let (status, body, _) = get(
                s.addr,
                &delta(&src.to_string(), &dest.to_string()),
                Some(&token),
            )
            .await;
            assert_eq!(status, 403, "{src} {dest}: {body}");
            assert_eq!(
                body["error"],
                format!("the token does not grant pull on image {other}"),
                "{body}"
            );
        }
    }
    // Without a token: refused before the store is read.
    let (status, _, _) = get(s.addr, &delta("999999", &granted.to_string()), None).await;
    assert_eq!(status, 401);
    assert_eq!(s.server.backend().builder().builds_started(), 0);
}

#[tokio::test]
async fn secrets_in_request_targets_are_masked_in_the_log() {
    let s = start().await;
    let token = s
        .key
        .sign(&claims(&s.registries[0], &["v2/a"], now() + 600));
    let secret = "s3cr3t-query-token";
    let (status, _, id) = get(
        s.addr,
        &format!("/healthz?access_token={secret}&x=1"),
        Some(&token),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _, id2) = get(
        s.addr,
        &format!("{}&access_token={secret}", delta("1", "2")),
        Some(&token),
    )
    .await;
    assert_eq!(status, 403);
    let logs = String::from_utf8(captured_logs().lock().unwrap().clone()).unwrap();
    for id in [&id, &id2] {
        assert!(
            logs.lines()
                .any(|l| l.contains(id.as_str()) && l.contains("access_token=***")),
            "{id}: {logs}"
        );
    }
    assert!(!logs.contains(secret), "{logs}");
    // The bearer token is never logged either.
    let signature = token.rsplit('.').next().unwrap();
    assert!(!logs.contains(signature), "{logs}");
}
