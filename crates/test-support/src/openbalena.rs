//! A fake openBalena API on loopback, following open-balena-api's wire format (read from
//! its source; see `shared/specs/openbalena-api.md`), and recording every request so
//! tests can assert what a client sent.
//!
//! What it answers, in pinejs' order for `/v7/...`:
//!
//! 1. an unknown resource (such as `delta`: openBalena has none): `401`, empty body,
//!    `Cache-Control: no-cache`, with or without credentials;
//! 2. an invalid token: `401`, empty body; no token: guest, which may read nothing here
//!    (`401`, empty body);
//! 3. an unknown navigation (the release's `is_created_by__user`): `500`, empty body;
//! 4. `200 {"d": [...]}`: expansions before the other fields, non-expanded foreign keys as
//!    `{"__id": N}`, a list for `(id)` too, `image_size` as a JSON string (a Big Integer).
//!
//! Only the query shapes balena-release-update sends are understood; any other is recorded
//! as a violation and answered 400, so a test fails loudly instead of passing on a guess.
//!
//! `GET /auth/v1/token` takes the caller as `Bearer <token>` (session token or API key) or
//! Basic `<anything>:<API key>` (a JWT as the Basic password is 401), reads every `scope`,
//! ignores `service`, and answers `{"token": <ES256 JWT>}` whose `access` lists each
//! well-formed requested scope with the intersection of the requested and allowed actions
//! (`[]` when denied). `aud` is [`State::audience`] (openBalena's REGISTRY_TOKEN_AUDIENCE,
//! by default the registry host), the payload is ordered as the API writes it (`jti`,
//! `nbf`, `access`, `iat`, `exp`, `aud`, `iss`, `sub`) and lives 4 hours.
//!
//! Rights: a user may read the applications listed in [`User::apps`], their releases and
//! images, and pull (and push) a `v2/<name>` repository when it reads an application with a
//! release using the image stored there, unless [`User::pull_denied`] withholds it. (Real openBalena's default roles let every user
//! read everything; the membership model here is what lets a test refuse a scope.) Other
//! two-part names are legacy public-read: pull for everyone.
//!
//! [`Flavour::BalenaCloud`] serves the same fleet balenaCloud-shaped instead (for parity
//! tests): releases have `is_created_by__user`, there is a `delta` resource (rows from
//! [`State::deltas`]), and image sizes are JSON numbers. It has no delta endpoint.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::http::{header, Request, Response, StatusCode};
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair as _, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::{json, Value};

/// A test-only EC P-256 key pair: the PKCS#8 private key and the PEM public key.
#[derive(Debug, Clone)]
pub struct TestKey {
    pkcs8: Vec<u8>,
    /// `-----BEGIN PUBLIC KEY-----` (SubjectPublicKeyInfo), what `serve --jwt-public-key`
    /// reads.
    pub public_pem: String,
}

impl TestKey {
    /// A fresh key pair.
    ///
    /// # Panics
    /// If the system random source fails.
    pub fn generate() -> TestKey {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .expect("generate a P-256 key");
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .expect("read the P-256 key");
        // SubjectPublicKeyInfo: id-ecPublicKey, prime256v1, then the uncompressed point.
        let mut spki = vec![
            0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06,
            0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
        ];
        spki.extend_from_slice(pair.public_key().as_ref());
        let b64 = base64::engine::general_purpose::STANDARD.encode(&spki);
        let lines: Vec<&str> = b64
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap_or_default())
            .collect();
        TestKey {
            pkcs8: pkcs8.as_ref().to_vec(),
            public_pem: format!(
                "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
                lines.join("\n")
            ),
        }
    }

    /// An ES256 JWT of `claims` with header `kid: "test"`.
    ///
    /// # Panics
    /// If signing fails.
    pub fn sign(&self, claims: &Value) -> String {
        self.sign_with_kid(claims, "test")
    }

    /// An ES256 JWT of `claims` with this header `kid`.
    ///
    /// # Panics
    /// If signing fails.
    pub fn sign_with_kid(&self, claims: &Value, kid: &str) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(kid.to_owned());
        jsonwebtoken::encode(&header, claims, &EncodingKey::from_ec_der(&self.pkcs8))
            .expect("sign a JWT")
    }
}

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Which API the fake plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    /// open-balena-api: no `delta`, no `is_created_by__user`.
    OpenBalena,
    /// balenaCloud's shape: a `delta` resource, the creating user on releases.
    BalenaCloud,
}

/// A user and the credential it logs in with.
#[derive(Debug, Clone)]
pub struct User {
    /// User id.
    pub id: u64,
    /// Username, the token's `sub`.
    pub username: String,
    /// A session token or API key: `Bearer` to the API, or the Basic password.
    pub token: String,
    /// Applications the user may read.
    pub apps: Vec<u64>,
    /// Repositories withheld from this user's registry tokens although it reads their
    /// releases: a narrower role than openBalena's defaults, so a test can have one scope
    /// refused.
    pub pull_denied: Vec<String>,
}

/// A release of an application.
#[derive(Debug, Clone)]
pub struct Release {
    /// Release id.
    pub id: u64,
    /// Full commit.
    pub commit: String,
    /// Application id.
    pub app: u64,
    /// `success`, `failed`, `running`.
    pub status: String,
    /// (service name, image id), one per service.
    pub services: Vec<(String, u64)>,
}

/// An image of a release.
#[derive(Debug, Clone)]
pub struct Image {
    /// Image id.
    pub id: u64,
    /// `is_stored_at__image_location`: `HOST/v2/<name>`.
    pub location: String,
    /// `content_hash`: the manifest digest.
    pub content_hash: Option<String>,
    /// `image_size` in bytes (sent as a JSON string by openBalena).
    pub size: u64,
}

/// A balenaCloud-shaped `delta` row ([`Flavour::BalenaCloud`] only).
#[derive(Debug, Clone)]
pub struct DeltaRow {
    /// Delta id.
    pub id: u64,
    /// Source image id.
    pub src: u64,
    /// Target image id.
    pub dest: u64,
    /// `success` or `running`.
    pub status: String,
    /// `is_stored_at__location`.
    pub location: Option<String>,
    /// `size` in bytes.
    pub size: u64,
}

/// One request received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    /// The request target as received (path and query, percent-escapes kept).
    pub target: String,
    /// The `Authorization` header.
    pub authorization: Option<String>,
    /// The status answered.
    pub status: u16,
}

/// The fake's data and what it saw.
#[derive(Debug)]
pub struct State {
    /// Which API it plays.
    pub flavour: Flavour,
    /// `aud` of registry tokens.
    pub audience: String,
    /// `iss` of registry tokens.
    pub issuer: String,
    /// Users.
    pub users: Vec<User>,
    /// Releases.
    pub releases: Vec<Release>,
    /// Images.
    pub images: Vec<Image>,
    /// Delta rows ([`Flavour::BalenaCloud`]).
    pub deltas: Vec<DeltaRow>,
    /// When set, `/auth/v1/token` answers this status and body instead (a misbehaving or
    /// misconfigured API, for refusal tests).
    pub token_fault: Option<(u16, String)>,
    /// Every request, in order.
    pub log: Vec<Logged>,
    /// Requests the fake did not expect.
    pub violations: Vec<String>,
}

impl State {
    /// An empty API playing `flavour`, issuing tokens for `audience`.
    pub fn new(flavour: Flavour, audience: &str) -> State {
        State {
            flavour,
            audience: audience.to_owned(),
            issuer: "api.openbalena.test".to_owned(),
            users: Vec::new(),
            releases: Vec::new(),
            images: Vec::new(),
            deltas: Vec::new(),
            token_fault: None,
            log: Vec::new(),
            violations: Vec::new(),
        }
    }
}

/// The fake API, serving on its own thread until the process ends.
#[derive(Debug)]
pub struct FakeOpenBalena {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The key registry tokens are signed with.
    pub key: TestKey,
    state: Arc<Mutex<State>>,
}

impl FakeOpenBalena {
    /// Starts the fake with a fresh signing key.
    ///
    /// # Panics
    /// If it cannot listen on loopback.
    pub fn start(state: State) -> FakeOpenBalena {
        let key = TestKey::generate();
        let state = Arc::new(Mutex::new(state));
        let (shared, signing) = (Arc::clone(&state), key.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind");
                tx.send(listener.local_addr().expect("address"))
                    .expect("send the address");
                let app = axum::Router::new().fallback(move |req: Request<Body>| {
                    let (state, key) = (Arc::clone(&shared), signing.clone());
                    async move { handle(&state, &key, &req) }
                });
                axum::serve(listener, app).await.expect("serve");
            });
        });
        let addr = rx.recv().expect("the fake's address");
        FakeOpenBalena { addr, key, state }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The state, for inspection or changes.
    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The request targets received so far, in order.
    pub fn targets(&self) -> Vec<String> {
        self.state().log.iter().map(|l| l.target.clone()).collect()
    }

    /// Forgets the requests received so far.
    pub fn clear_log(&self) {
        self.state().log.clear();
    }

    /// # Panics
    /// If the fake received a request it does not understand.
    pub fn assert_no_violations(&self) {
        let state = self.state();
        assert!(
            state.violations.is_empty(),
            "unexpected requests: {:#?}",
            state.violations
        );
    }
}

fn handle(state: &Mutex<State>, key: &TestKey, req: &Request<Body>) -> Response<Body> {
    let target = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.uri().path().to_owned(), |p| p.as_str().to_owned());
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
    let response = answer(&mut state, key, &target, authorization.as_deref());
    state.log.push(Logged {
        target,
        authorization,
        status: response.status().as_u16(),
    });
    response
}

fn empty(status: u16) -> Response<Body> {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    response
}

fn json_response(status: u16, value: &Value) -> Response<Body> {
    let mut response = Response::new(Body::from(value.to_string()));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json; charset=utf-8"),
    );
    response
}

/// Who is asking.
enum Caller {
    Guest,
    User(User),
    Invalid,
}

fn bearer_caller(state: &State, authorization: Option<&str>) -> Caller {
    let Some(value) = authorization else {
        return Caller::Guest;
    };
    let Some(token) = value.strip_prefix("Bearer ") else {
        return Caller::Invalid;
    };
    state
        .users
        .iter()
        .find(|u| u.token == token)
        .map_or(Caller::Invalid, |u| Caller::User(u.clone()))
}

fn answer(
    state: &mut State,
    key: &TestKey,
    target: &str,
    authorization: Option<&str>,
) -> Response<Body> {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if path == "/ping" {
        return Response::new(Body::from("OK"));
    }
    if path == "/auth/v1/token" {
        if let Some((status, body)) = &state.token_fault {
            let mut response = Response::new(Body::from(body.clone()));
            *response.status_mut() =
                StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_REQUEST);
            return response;
        }
        return registry_token(state, key, query, authorization);
    }
    if let Some(resource) = path.strip_prefix("/v7/") {
        return pine(state, resource, query, authorization);
    }
    empty(404)
}

/// `%XX` decoding (pinejs-client's queries come WHATWG-encoded: spaces and quotes); a `%`
/// not followed by two hex digits stays as it is.
fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

fn pine(
    state: &mut State,
    resource: &str,
    raw_query: &str,
    authorization: Option<&str>,
) -> Response<Body> {
    let (name, id) = match resource.split_once('(') {
        Some((name, rest)) => match rest.strip_suffix(')').and_then(|i| i.parse::<u64>().ok()) {
            Some(id) => (name, Some(id)),
            None => {
                state
                    .violations
                    .push(format!("malformed resource {resource}"));
                return json_response(400, &json!(format!("Malformed url: '/v7/{resource}'")));
            }
        },
        None => (resource, None),
    };
    let known: &[&str] = match state.flavour {
        Flavour::OpenBalena => &[
            "application",
            "release",
            "image",
            "release_image",
            "service",
        ],
        Flavour::BalenaCloud => &[
            "application",
            "release",
            "image",
            "release_image",
            "service",
            "delta",
        ],
    };
    if !known.contains(&name) {
        let mut response = empty(401);
        response.headers_mut().insert(
            header::CACHE_CONTROL,
            header::HeaderValue::from_static("no-cache"),
        );
        return response;
    }
    let user = match bearer_caller(state, authorization) {
        Caller::User(user) => user,
        Caller::Guest | Caller::Invalid => return empty(401),
    };
    let query = percent_decode(raw_query);
    let readable = |app: u64| user.apps.contains(&app);
    let rows: Vec<Value> = match (name, id) {
        ("release", _) => {
            let expand = option(&query, "$expand").unwrap_or_default();
            if expand.contains("is_created_by__user") && state.flavour == Flavour::OpenBalena {
                return empty(500);
            }
            let expected_expand = "release_image($expand=image($select=id;$expand=is_a_build_of__service($select=service_name)))";
            let user_expand = ",is_created_by__user($select=id,username)";
            if expand != expected_expand && expand != format!("{expected_expand}{user_expand}") {
                state.violations.push(format!("release expand: {expand}"));
                return empty(400);
            }
            let filter = option(&query, "$filter").unwrap_or_default();
            let prefix = match id {
                Some(_) if filter == "status eq 'success'" => None,
                None => match filter
                    .strip_prefix("startswith(commit,'")
                    .and_then(|r| r.strip_suffix("') and status eq 'success'"))
                {
                    Some(p) => Some(p.to_owned()),
                    None => {
                        state.violations.push(format!("release filter: {filter}"));
                        return empty(400);
                    }
                },
                Some(_) => {
                    state.violations.push(format!("release filter: {filter}"));
                    return empty(400);
                }
            };
            state
                .releases
                .iter()
                .filter(|r| id.is_none_or(|id| r.id == id))
                .filter(|r| prefix.as_deref().is_none_or(|p| r.commit.starts_with(p)))
                .filter(|r| r.status == "success" && readable(r.app))
                .map(|r| release_row(state, r, expand.contains("is_created_by__user")))
                .collect()
        }
        ("image", Some(id)) => {
            let select = option(&query, "$select").unwrap_or_default();
            let filter = option(&query, "$filter").unwrap_or_default();
            if select != "id,is_stored_at__image_location,content_hash,image_size"
                || filter != "status eq 'success'"
            {
                state.violations.push(format!("image query: {query}"));
                return empty(400);
            }
            let visible = state
                .releases
                .iter()
                .any(|r| readable(r.app) && r.services.iter().any(|(_, image)| *image == id));
            state
                .images
                .iter()
                .filter(|i| i.id == id && visible)
                .map(|i| image_row(state.flavour, i))
                .collect()
        }
        ("delta", None) => {
            // balenaCloud only (openBalena answered 401 above).
            let filter = option(&query, "$filter").unwrap_or_default();
            let number = |key: &str| {
                filter
                    .split_once(key)
                    .and_then(|(_, rest)| rest.split(' ').next())
                    .and_then(|n| n.parse::<u64>().ok())
            };
            match (
                number("originates_from__image eq "),
                number("produces__image eq "),
            ) {
                (Some(src), Some(dest)) => state
                    .deltas
                    .iter()
                    .filter(|d| d.src == src && d.dest == dest)
                    .map(|d| {
                        json!({"id": d.id, "status": d.status, "version": 3,
                               "is_stored_at__location": d.location, "size": d.size.to_string()})
                    })
                    .collect(),
                _ => {
                    state.violations.push(format!("delta query: {query}"));
                    return empty(400);
                }
            }
        }
        _ => {
            state.violations.push(format!("pine query: {name} {query}"));
            return empty(400);
        }
    };
    json_response(200, &json!({ "d": rows }))
}

/// The value of `key=` among the top-level `&`-separated options.
fn option(query: &str, key: &str) -> Option<String> {
    let prefix = format!("{key}=");
    // Options are split at `&` outside parentheses.
    let mut depth = 0i32;
    let mut start = 0;
    let mut parts = Vec::new();
    for (i, c) in query.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            '&' if depth == 0 => {
                parts.push(&query[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&query[start..]);
    parts
        .into_iter()
        .find_map(|p| p.strip_prefix(&prefix).map(str::to_owned))
}

fn release_row(state: &State, r: &Release, with_user: bool) -> Value {
    let images: Vec<Value> = r
        .services
        .iter()
        .enumerate()
        .map(|(n, (service, image))| {
            // Expansions first, then the release_image's own fields.
            json!({"image": [{"is_a_build_of__service": [{"service_name": service}], "id": image}],
                   "created_at": "2026-01-01T00:00:00.000Z", "modified_at": "2026-01-01T00:00:00.000Z",
                   "id": r.id * 100 + n as u64, "is_part_of__release": {"__id": r.id}})
        })
        .collect();
    let mut row = serde_json::Map::new();
    row.insert("release_image".into(), Value::Array(images));
    if with_user {
        let user = state
            .users
            .first()
            .map_or(json!([]), |u| json!([{"id": u.id, "username": u.username}]));
        row.insert("is_created_by__user".into(), user);
    }
    for (k, v) in [
        ("created_at", json!("2026-01-01T00:00:00.000Z")),
        ("modified_at", json!("2026-01-01T00:00:00.000Z")),
        ("id", json!(r.id)),
        ("belongs_to__application", json!({"__id": r.app})),
        ("commit", json!(r.commit)),
        ("composition", json!({})),
        ("status", json!(r.status)),
        ("source", json!("local")),
        ("build_log", Value::Null),
        ("is_invalidated", json!(false)),
        ("start_timestamp", json!("2026-01-01T00:00:00.000Z")),
        ("update_timestamp", json!("2026-01-01T00:00:00.000Z")),
        ("end_timestamp", json!("2026-01-01T00:00:00.000Z")),
        ("phase", Value::Null),
        ("semver", json!("0.0.0")),
        ("is_final", json!(true)),
        ("release_version", Value::Null),
        ("contract", Value::Null),
        ("is_passing_tests", json!(true)),
    ] {
        row.insert(k.into(), v);
    }
    Value::Object(row)
}

fn image_row(flavour: Flavour, i: &Image) -> Value {
    // A Big Integer: a string from openBalena's pinejs.
    let size = match flavour {
        Flavour::OpenBalena => json!(i.size.to_string()),
        Flavour::BalenaCloud => json!(i.size),
    };
    json!({"id": i.id, "is_stored_at__image_location": i.location,
           "content_hash": i.content_hash, "image_size": size})
}

/// The repository name part of a scope: lower-case path components.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.split('/').all(|c| {
            !c.is_empty()
                && c.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        })
}

fn registry_token(
    state: &mut State,
    key: &TestKey,
    query: &str,
    authorization: Option<&str>,
) -> Response<Body> {
    let caller = match authorization {
        None => None,
        Some(value) => {
            let user = if let Some(token) = value.strip_prefix("Bearer ") {
                state.users.iter().find(|u| u.token == token)
            } else if let Some(basic) = value.strip_prefix("Basic ") {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(basic.trim())
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok());
                let password = decoded
                    .as_deref()
                    .and_then(|d| d.split_once(':'))
                    .map(|(_, p)| p.to_owned());
                // A JWT as the Basic password is refused: only API keys go there.
                password
                    .filter(|p| p.matches('.').count() != 2)
                    .and_then(|p| state.users.iter().find(|u| u.token == p))
            } else {
                None
            };
            match user {
                Some(user) => Some(user.clone()),
                None => return empty(401),
            }
        }
    };
    let scopes: Vec<String> = url::form_urlencoded::parse(query.as_bytes())
        .filter(|(k, _)| k == "scope" || k.starts_with("scope["))
        .map(|(_, v)| v.into_owned())
        .collect();
    let mut access = Vec::new();
    for scope in scopes {
        let mut parts = scope.split(':');
        let (Some("repository"), Some(name), Some(actions), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let requested: Vec<&str> = actions.split(',').collect();
        if !valid_name(name)
            || requested
                .iter()
                .any(|a| !matches!(*a, "pull" | "push" | "*"))
        {
            continue;
        }
        let allowed: &[&str] = match name.split_once('/') {
            Some(("v2", image)) => {
                let stored = state
                    .images
                    .iter()
                    .find(|i| i.location.ends_with(&format!("/v2/{image}")));
                let withheld = caller
                    .as_ref()
                    .is_some_and(|u| u.pull_denied.iter().any(|d| d == name));
                let readable = !withheld
                    && stored.is_some_and(|i| {
                        state.releases.iter().any(|r| {
                            r.services.iter().any(|(_, id)| *id == i.id)
                                && caller.as_ref().is_some_and(|u| u.apps.contains(&r.app))
                        })
                    });
                if readable {
                    &["pull", "push"]
                } else {
                    &[]
                }
            }
            Some(_) if name.matches('/').count() == 1 => &["pull"],
            _ => &[],
        };
        let actions: Vec<&str> = requested
            .into_iter()
            .filter(|a| allowed.contains(a))
            .collect();
        access.push(json!({"type": "repository", "name": name, "actions": actions}));
    }
    let now = now();
    let claims = json!({
        "jti": format!("jti-{}", state.log.len()),
        "nbf": now - 10,
        "access": access,
        "iat": now,
        "exp": now + 14400,
        "aud": state.audience,
        "iss": state.issuer,
        "sub": caller.map_or(String::new(), |u| u.username),
    });
    let token = key.sign_with_kid(&claims, "TEST:KEYI:DXXX:TEST");
    json_response(200, &json!({ "token": token }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_split_outside_parentheses() {
        let q = "$expand=a($select=x;$expand=b),c&$filter=status eq 'success'";
        assert_eq!(
            option(q, "$expand").as_deref(),
            Some("a($select=x;$expand=b),c")
        );
        assert_eq!(option(q, "$filter").as_deref(), Some("status eq 'success'"));
        assert_eq!(option(q, "$select"), None);
    }

    #[test]
    fn scope_names_follow_the_registry_grammar() {
        assert!(valid_name("v2/abc123"));
        assert!(!valid_name("v2/ABC"));
        assert!(!valid_name("v2//a"));
        assert!(!valid_name(""));
    }
}
