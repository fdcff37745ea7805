//! Registry behaviour that a stock docker-registry cannot show: the Docker bearer-token flow,
//! 5xx/429 answers, and registries that send bad bytes. The fake follows the distribution
//! spec's wire format and asserts the requests it receives.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use bru_oci::{
    media_type, open_source, Descriptor, Digest, ImageReference, Manifest, OciError,
    RegistryOptions,
};
use common::read_blob;

/// Query parameters of one request, by name.
type Params = HashMap<String, Vec<String>>;

#[derive(Default)]
struct Fake {
    /// path -> (status, content type, body)
    routes: HashMap<String, (u16, String, Vec<u8>)>,
    /// When set, every /v2 request must carry `Authorization: Bearer <token>`.
    token: Option<String>,
    realm: String,
    /// Every request seen: (path, authorization header).
    log: Vec<(String, Option<String>)>,
    /// Token requests seen: (query, authorization header).
    token_log: Vec<(Params, Option<String>)>,
    /// Answer the first request for this path with 503 and `Retry-After: <seconds>`.
    busy_once: Option<(String, u64)>,
    /// When each request arrived.
    times: Vec<std::time::Instant>,
}

type Shared = Arc<Mutex<Fake>>;

async fn registry(
    State(s): State<Shared>,
    method: axum::http::Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let mut f = s.lock().unwrap();
    let auth = headers
        .get("authorization")
        .map(|v| v.to_str().unwrap().to_string());
    let full = uri
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    f.log.push((format!("{method} {full}"), auth.clone()));
    f.times.push(std::time::Instant::now());
    if let Some((path, secs)) = f.busy_once.take() {
        if path == uri.path() {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                [("retry-after", secs.to_string())],
                "",
            )
                .into_response();
        }
        f.busy_once = Some((path, secs));
    }
    if let Some(t) = &f.token {
        if auth.as_deref() != Some(&format!("Bearer {t}")) {
            let challenge = format!(
                r#"Bearer realm="{}",service="fake.registry",scope="repository:team/app:pull""#,
                f.realm
            );
            return (
                StatusCode::UNAUTHORIZED,
                [
                    ("www-authenticate", challenge),
                    ("content-type", "application/json".into()),
                ],
                r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#,
            )
                .into_response();
        }
    }
    match f.routes.get(uri.path()) {
        // A CDN-style answer that labels a gzip blob with Content-Encoding: gzip.
        Some((status, ct, body)) if ct == "encoded" => (
            StatusCode::from_u16(*status).unwrap(),
            [("content-type", "application/octet-stream"), ("content-encoding", "gzip")],
            body.clone(),
        )
            .into_response(),
        Some((status, ct, body)) => (
            StatusCode::from_u16(*status).unwrap(),
            [("content-type", ct.clone())],
            body.clone(),
        )
            .into_response(),
        None => (
            StatusCode::NOT_FOUND,
            r#"{"errors":[{"code":"NAME_UNKNOWN","message":"repository name not known to registry"}]}"#,
        )
            .into_response(),
    }
}

async fn token(
    State(s): State<Shared>,
    Query(q): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Response {
    let mut f = s.lock().unwrap();
    let mut query: Params = HashMap::new();
    for (k, v) in q {
        query.entry(k).or_default().push(v);
    }
    let auth = headers
        .get("authorization")
        .map(|v| v.to_str().unwrap().to_string());
    f.token_log.push((query, auth.clone()));
    // alice:pw
    if auth.as_deref() != Some("Basic YWxpY2U6cHc=") {
        return (StatusCode::UNAUTHORIZED, "bad credentials").into_response();
    }
    let t = f.token.clone().unwrap_or_default();
    (
        [("content-type", "application/json")],
        format!(r#"{{"access_token":"{t}","expires_in":300}}"#),
    )
        .into_response()
}

async fn serve(f: Fake) -> (String, Shared) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let shared: Shared = Arc::new(Mutex::new(f));
    if shared.lock().unwrap().realm.is_empty() {
        shared.lock().unwrap().realm = format!("http://{addr}/token");
    }
    let app = Router::new()
        .route("/token", axum::routing::get(token))
        .fallback(registry)
        .with_state(shared.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, shared)
}

struct Img {
    manifest: Vec<u8>,
    config: Vec<u8>,
    layer: Vec<u8>,
    layer_desc: Descriptor,
}

fn img() -> Img {
    let layer = bru_oci::gzip_bytes(&bru_oci::tar_of(&[("f", b"content")]));
    let config = serde_json::to_vec(&serde_json::json!({
        "rootfs": {"type": "layers", "diff_ids": [Digest::of(&bru_oci::tar_of(&[("f", b"content")]))]}
    }))
    .unwrap();
    let layer_desc = Descriptor::of_bytes(media_type::DOCKER_LAYER_GZIP, &layer);
    let m = Manifest::new(
        media_type::DOCKER_MANIFEST,
        Descriptor::of_bytes(media_type::DOCKER_CONFIG, &config),
        vec![layer_desc.clone()],
    );
    Img {
        manifest: m.to_json(),
        config,
        layer,
        layer_desc,
    }
}

fn routes(i: &Img, layer_body: Vec<u8>) -> HashMap<String, (u16, String, Vec<u8>)> {
    let mut r = HashMap::new();
    r.insert(
        "/v2/team/app/manifests/v1".into(),
        (200, media_type::DOCKER_MANIFEST.into(), i.manifest.clone()),
    );
    r.insert(
        format!("/v2/team/app/blobs/{}", Digest::of(&i.config)),
        (200, "application/octet-stream".into(), i.config.clone()),
    );
    r.insert(
        format!("/v2/team/app/blobs/{}", i.layer_desc.digest),
        (200, "application/octet-stream".into(), layer_body),
    );
    r
}

fn options(addr: &str, creds: Option<(&str, &str)>) -> RegistryOptions {
    let mut o = RegistryOptions::default();
    o.insecure = vec![addr.to_string()];
    o.docker_config = Some("/nonexistent".into());
    o.credentials = creds.map(|(u, p)| bru_oci::Credentials {
        username: u.into(),
        password: p.into(),
    });
    o
}

fn reference(addr: &str, tail: &str) -> ImageReference {
    format!("docker://{addr}/team/app{tail}").parse().unwrap()
}

#[tokio::test]
async fn bearer_token_flow_with_scope_and_cache() {
    let i = img();
    let (addr, state) = serve(Fake {
        routes: routes(&i, i.layer.clone()),
        token: Some("tok-123".into()),
        ..Default::default()
    })
    .await;
    let src = open_source(
        &reference(&addr, ":v1"),
        &options(&addr, Some(("alice", "pw"))),
    )
    .await
    .unwrap();
    let pulled = src.image().await.unwrap();
    assert_eq!(pulled.manifest_bytes, i.manifest);
    assert_eq!(pulled.config_bytes, i.config);
    assert_eq!(
        read_blob(src.as_ref(), &i.layer_desc).await.unwrap(),
        i.layer
    );

    let f = state.lock().unwrap();
    assert_eq!(f.token_log.len(), 1, "the token is fetched once and cached");
    let (q, auth) = &f.token_log[0];
    assert_eq!(q["service"], vec!["fake.registry".to_string()]);
    assert_eq!(q["scope"], vec!["repository:team/app:pull".to_string()]);
    assert_eq!(auth.as_deref(), Some("Basic YWxpY2U6cHc="));
    // One anonymous probe, then only bearer-authenticated requests.
    assert_eq!(f.log[0].1, None);
    assert!(
        f.log[1..]
            .iter()
            .all(|(_, a)| a.as_deref() == Some("Bearer tok-123")),
        "{:?}",
        f.log
    );
    assert_eq!(f.log.len(), 4); // manifest (401), manifest, config, layer
}

#[tokio::test]
async fn bearer_token_with_wrong_credentials_fails_clearly() {
    let i = img();
    let (addr, _state) = serve(Fake {
        routes: routes(&i, i.layer.clone()),
        token: Some("tok".into()),
        ..Default::default()
    })
    .await;
    let src = open_source(
        &reference(&addr, ":v1"),
        &options(&addr, Some(("alice", "nope"))),
    )
    .await
    .unwrap();
    let e = src.image().await.unwrap_err();
    assert!(matches!(e, OciError::Auth { .. }), "{e:?}");
    assert!(!e.to_string().contains("nope"));
}

#[tokio::test]
async fn server_errors_keep_status_and_code_after_retries() {
    let i = img();
    let mut r = routes(&i, i.layer.clone());
    let body = br#"{"errors":[{"code":"UNAVAILABLE","message":"backend down"}]}"#.to_vec();
    r.insert(
        "/v2/team/app/manifests/v1".into(),
        (503, "application/json".into(), body),
    );
    r.insert(
        "/v2/team/app/manifests/busy".into(),
        (
            429,
            "application/json".into(),
            br#"{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}"#.to_vec(),
        ),
    );
    r.insert(
        "/v2/team/app/manifests/bare".into(),
        (
            502,
            "text/html".into(),
            b"<html>bad gateway</html>".to_vec(),
        ),
    );
    let (addr, state) = serve(Fake {
        routes: r,
        ..Default::default()
    })
    .await;
    let o = options(&addr, None);

    let e = open_source(&reference(&addr, ":v1"), &o)
        .await
        .unwrap()
        .image()
        .await
        .unwrap_err();
    match &e {
        OciError::Registry {
            status,
            code,
            message,
            ..
        } => {
            assert_eq!(
                (*status, code.as_deref(), message.as_str()),
                (503, Some("UNAVAILABLE"), "backend down")
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        state.lock().unwrap().log.len() as u32,
        1 + bru_core::retry::RetryPolicy::REQUEST.retries,
        "one try and the policy's retries"
    );

    let e = open_source(&reference(&addr, ":busy"), &o)
        .await
        .unwrap()
        .image()
        .await
        .unwrap_err();
    assert_eq!(
        (e.http_status(), e.registry_code()),
        (Some(429), Some("TOOMANYREQUESTS"))
    );
    let e = open_source(&reference(&addr, ":bare"), &o)
        .await
        .unwrap()
        .image()
        .await
        .unwrap_err();
    assert_eq!((e.http_status(), e.registry_code()), (Some(502), None));
    let e = open_source(&reference(&addr, ":nope"), &o)
        .await
        .unwrap()
        .image()
        .await
        .unwrap_err();
    assert_eq!(
        (e.http_status(), e.registry_code()),
        (Some(404), Some("NAME_UNKNOWN"))
    );
}

#[tokio::test]
async fn bad_bytes_from_registry_are_caught() {
    let i = img();
    // Truncated layer.
    let half = i.layer[..i.layer.len() / 2].to_vec();
    let (addr, _s) = serve(Fake {
        routes: routes(&i, half),
        ..Default::default()
    })
    .await;
    let src = open_source(&reference(&addr, ":v1"), &options(&addr, None))
        .await
        .unwrap();
    let e = read_blob(src.as_ref(), &i.layer_desc).await.unwrap_err();
    assert!(matches!(e, OciError::SizeMismatch { .. }), "{e:?}");

    // Same length, different bytes.
    let mut flipped = i.layer.clone();
    flipped[20] ^= 0x40;
    let (addr, _s) = serve(Fake {
        routes: routes(&i, flipped),
        ..Default::default()
    })
    .await;
    let src = open_source(&reference(&addr, ":v1"), &options(&addr, None))
        .await
        .unwrap();
    let e = read_blob(src.as_ref(), &i.layer_desc).await.unwrap_err();
    assert!(matches!(e, OciError::DigestMismatch { .. }), "{e:?}");

    // Malformed manifest JSON, and a manifest that does not match the digest asked for.
    let mut r = routes(&i, i.layer.clone());
    r.insert(
        "/v2/team/app/manifests/v1".into(),
        (
            200,
            media_type::OCI_MANIFEST.into(),
            b"{\"schemaVersion\":2,".to_vec(),
        ),
    );
    let wanted = Digest::of(b"something else");
    r.insert(
        format!("/v2/team/app/manifests/{wanted}"),
        (200, media_type::DOCKER_MANIFEST.into(), i.manifest.clone()),
    );
    let (addr, _s) = serve(Fake {
        routes: r,
        ..Default::default()
    })
    .await;
    let o = options(&addr, None);
    let e = open_source(&reference(&addr, ":v1"), &o)
        .await
        .unwrap()
        .image()
        .await
        .unwrap_err();
    assert!(matches!(e, OciError::Malformed { .. }), "{e:?}");
    let e = open_source(&reference(&addr, &format!("@{wanted}")), &o)
        .await
        .unwrap()
        .image()
        .await
        .unwrap_err();
    assert!(matches!(e, OciError::DigestMismatch { .. }), "{e:?}");
}

#[tokio::test]
async fn push_and_mount_request_the_right_scopes() {
    let i = img();
    let mut r = routes(&i, i.layer.clone());
    r.insert(
        "/v2/team/app/blobs/uploads/".into(),
        (201, "text/plain".into(), Vec::new()),
    );
    let (addr, state) = serve(Fake {
        routes: r,
        token: Some("tok-push".into()),
        ..Default::default()
    })
    .await;
    let o = options(&addr, Some(("alice", "pw")));
    let sink = bru_oci::open_sink(&reference(&addr, ":v1"), &o)
        .await
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("layer");
    std::fs::write(&f, &i.layer).unwrap();
    // The fake has the blob: HEAD finds it and nothing is uploaded.
    assert_eq!(
        sink.put_blob(&f, &i.layer_desc).await.unwrap(),
        bru_oci::PutOutcome::AlreadyPresent
    );
    let from = reference(&addr, "-base:v1");
    let other_registry: ImageReference = "docker://other.example:5000/team/app-base:v1"
        .parse()
        .unwrap();
    assert!(!sink
        .mount_blob(&i.layer_desc, &other_registry)
        .await
        .unwrap());
    assert!(sink.mount_blob(&i.layer_desc, &from).await.unwrap());
    sink.put_manifest(&i.manifest, media_type::DOCKER_MANIFEST)
        .await
        .unwrap();

    let f = state.lock().unwrap();
    let scopes: Vec<&Vec<String>> = f.token_log.iter().map(|(q, _)| &q["scope"]).collect();
    assert_eq!(
        scopes,
        vec![
            &vec!["repository:team/app:pull,push".to_string()],
            &vec![
                "repository:team/app:pull,push".to_string(),
                "repository:team/app-base:pull".to_string()
            ],
        ]
    );
    let mount = f
        .log
        .iter()
        .find(|(p, a)| p.starts_with("POST") && a.is_some())
        .unwrap();
    assert_eq!(
        mount.0,
        format!(
            "POST /v2/team/app/blobs/uploads/?mount={}&from=team%2Fapp-base",
            i.layer_desc.digest
        )
        .replace(':', "%3A")
    );
    assert!(f
        .log
        .iter()
        .any(|(p, a)| p == "PUT /v2/team/app/manifests/v1"
            && a.as_deref() == Some("Bearer tok-push")));
    assert!(
        !f.log
            .iter()
            .any(|(p, _)| p.starts_with("PATCH") || p.contains("digest=")),
        "no upload happened"
    );
}

#[tokio::test]
async fn content_encoding_does_not_alter_blobs() {
    let i = img();
    let mut r = routes(&i, i.layer.clone());
    r.insert(
        format!("/v2/team/app/blobs/{}", i.layer_desc.digest),
        (200, "encoded".into(), i.layer.clone()),
    );
    let (addr, _s) = serve(Fake {
        routes: r,
        ..Default::default()
    })
    .await;
    let src = open_source(&reference(&addr, ":v1"), &options(&addr, None))
        .await
        .unwrap();
    assert_eq!(
        read_blob(src.as_ref(), &i.layer_desc).await.unwrap(),
        i.layer
    );
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let i = img();
    let (addr, state) = serve(Fake {
        routes: routes(&i, i.layer.clone()),
        busy_once: Some(("/v2/team/app/manifests/v1".into(), 2)),
        ..Default::default()
    })
    .await;
    let image = open_source(&reference(&addr, ":v1"), &options(&addr, None))
        .await
        .unwrap()
        .image()
        .await
        .unwrap();
    assert_eq!(image.config.diff_ids.len(), 1);
    let f = state.lock().unwrap();
    assert!(f.log[0].0.ends_with("/manifests/v1") && f.log[1].0.ends_with("/manifests/v1"));
    // The retry waited for the 2 s the registry asked for, not the policy's 100-200 ms.
    let waited = f.times[1] - f.times[0];
    assert!(waited >= std::time::Duration::from_secs(2), "{waited:?}");
}

#[tokio::test]
async fn an_oversized_manifest_is_refused_before_it_is_read_whole() {
    let i = img();
    let mut r = routes(&i, i.layer.clone());
    // 5 MiB of JSON whitespace: a valid document, above the 4 MiB cap.
    let mut huge = i.manifest.clone();
    huge.splice(1..1, std::iter::repeat_n(b' ', 5 * 1024 * 1024));
    r.insert(
        "/v2/team/app/manifests/huge".into(),
        (200, media_type::DOCKER_MANIFEST.into(), huge),
    );
    let (addr, _state) = serve(Fake {
        routes: r,
        ..Default::default()
    })
    .await;
    let e = open_source(&reference(&addr, ":huge"), &options(&addr, None))
        .await
        .unwrap()
        .image()
        .await
        .unwrap_err();
    assert!(
        matches!(e, OciError::TooLarge { what: "manifest", limit } if limit == bru_oci::limits::MAX_MANIFEST_SIZE),
        "{e:?}"
    );
    assert!(!e.is_transient());
}
