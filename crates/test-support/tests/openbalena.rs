//! The fake openBalena API answers as open-balena-api does (shared/specs/openbalena-api.md):
//! these are the wire facts the client's tests rely on.
#![cfg(feature = "openbalena")]

use std::io::{Read as _, Write as _};
use std::net::TcpStream;

use base64::Engine as _;
use bru_test_support::openbalena::{FakeOpenBalena, Flavour, Image, Release, State, User};
use serde_json::Value;

const KEY: &str = "aliceAPIKEY0123456789";
const REGISTRY: &str = "registry2.openbalena.test";

fn fake() -> FakeOpenBalena {
    let mut state = State::new(Flavour::OpenBalena, REGISTRY);
    state.users = vec![User {
        id: 1,
        username: "alice".into(),
        token: KEY.into(),
        apps: vec![10],
        pull_denied: Vec::new(),
    }];
    state.releases = vec![Release {
        id: 1,
        commit: "0a1b2c3d4e".into(),
        app: 10,
        status: "success".into(),
        services: vec![("main".into(), 101)],
    }];
    state.images = vec![
        Image {
            id: 101,
            location: format!("{REGISTRY}/v2/aaaa"),
            content_hash: None,
            size: 310_954_877,
        },
        Image {
            id: 102,
            location: format!("{REGISTRY}/v2/bbbb"),
            content_hash: None,
            size: 1,
        },
    ];
    FakeOpenBalena::start(state)
}

struct Answer {
    status: u16,
    head: String,
    body: String,
}

fn get(fake: &FakeOpenBalena, target: &str, authorization: Option<&str>) -> Answer {
    let mut conn = TcpStream::connect(fake.addr).unwrap();
    let auth = authorization.map_or(String::new(), |a| format!("Authorization: {a}\r\n"));
    write!(
        conn,
        "GET {target} HTTP/1.1\r\nHost: api\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    conn.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    Answer {
        status: head[9..12].parse().unwrap(),
        head: head.to_ascii_lowercase(),
        body: body.to_owned(),
    }
}

const BEARER: &str = "Bearer aliceAPIKEY0123456789";
const EXPAND: &str = "$expand=release_image($expand=image($select=id;$expand=is_a_build_of__service($select=service_name)))";

#[test]
fn pine_answers_like_open_balena_api() {
    let fake = fake();
    // No delta resource: 401 with an empty body, credentials or not.
    for auth in [Some(BEARER), None] {
        let a = get(&fake, "/v7/delta?$select=id&$top=1", auth);
        assert_eq!((a.status, a.body.as_str()), (401, ""));
        assert!(a.head.contains("cache-control: no-cache"), "{}", a.head);
    }
    // No is_created_by__user on release: 500 with an empty body.
    let with_user = format!("/v7/release(1)?{EXPAND},is_created_by__user($select=id,username)&$filter=status%20eq%20%27success%27");
    let a = get(&fake, &with_user, Some(BEARER));
    assert_eq!((a.status, a.body.as_str()), (500, ""));
    // A bad token: 401 with an empty body.
    let release = format!("/v7/release(1)?{EXPAND}&$filter=status%20eq%20%27success%27");
    let a = get(&fake, &release, Some("Bearer nope"));
    assert_eq!((a.status, a.body.as_str()), (401, ""));
    // A list for (id); expansions first; foreign keys as {"__id": N}.
    let a = get(&fake, &release, Some(BEARER));
    assert_eq!(a.status, 200, "{}", a.body);
    let body: Value = serde_json::from_str(&a.body).unwrap();
    let row = &body["d"][0];
    assert_eq!(body["d"].as_array().unwrap().len(), 1);
    assert_eq!(
        row.as_object().unwrap().keys().next().unwrap(),
        "release_image"
    );
    assert_eq!(
        row["belongs_to__application"],
        serde_json::json!({"__id": 10})
    );
    assert!(row.get("is_created_by__user").is_none());
    assert_eq!(
        row["release_image"][0]["image"][0]["is_a_build_of__service"][0]["service_name"],
        "main"
    );
    // image_size is a Big Integer: a JSON string.
    let a = get(
        &fake,
        "/v7/image(101)?$select=id,is_stored_at__image_location,content_hash,image_size&$filter=status%20eq%20%27success%27",
        Some(BEARER),
    );
    let body: Value = serde_json::from_str(&a.body).unwrap();
    assert_eq!(body["d"][0]["image_size"], "310954877");
    // Unknown paths: 404 with an empty body; /ping: OK.
    let a = get(&fake, "/api/v3/delta?src=1&dest=2", Some(BEARER));
    assert_eq!((a.status, a.body.as_str()), (404, ""));
    assert_eq!(get(&fake, "/ping", None).body, "OK");
    // What it saw is on record, and nothing was unexpected.
    assert_eq!(fake.targets().len(), 8);
    fake.assert_no_violations();
}

fn token_of(answer: &Answer) -> (Value, Value) {
    assert_eq!(answer.status, 200, "{}", answer.body);
    let body: Value = serde_json::from_str(&answer.body).unwrap();
    assert_eq!(body.as_object().unwrap().len(), 1, "only `token`: {body}");
    let jwt = body["token"].as_str().unwrap();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let part = |n: usize| -> Value {
        serde_json::from_slice(&b64.decode(jwt.split('.').nth(n).unwrap()).unwrap()).unwrap()
    };
    (part(0), part(1))
}

#[test]
fn registry_tokens_grant_what_the_caller_may_pull() {
    let fake = fake();
    let target = "/auth/v1/token?service=ignored.example&scope=repository%3Av2%2Faaaa%3Apull%2Cpush&scope=repository:v2/bbbb:pull&scope=registry:catalog:*&scope=repository:library/debian:pull";
    let (header, claims) = token_of(&get(&fake, target, Some(BEARER)));
    assert_eq!(header["alg"], "ES256");
    assert!(header["kid"].is_string());
    let keys: Vec<&str> = claims
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        ["jti", "nbf", "access", "iat", "exp", "aud", "iss", "sub"]
    );
    assert_eq!(
        claims["aud"], REGISTRY,
        "aud from the configuration, not `service`"
    );
    assert_eq!(claims["sub"], "alice");
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        14400
    );
    // Malformed scopes are dropped; a denied scope has empty actions; other two-part
    // names are public-read.
    assert_eq!(
        claims["access"],
        serde_json::json!([
            {"type": "repository", "name": "v2/aaaa", "actions": ["pull", "push"]},
            {"type": "repository", "name": "v2/bbbb", "actions": []},
            {"type": "repository", "name": "library/debian", "actions": ["pull"]},
        ])
    );
    // The signature verifies with the public key serve is given.
    let jwt: Value = serde_json::from_str(&get(&fake, target, Some(BEARER)).body).unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    validation.validate_aud = false;
    let key = jsonwebtoken::DecodingKey::from_ec_pem(fake.key.public_pem.as_bytes()).unwrap();
    jsonwebtoken::decode::<Value>(jwt["token"].as_str().unwrap(), &key, &validation).unwrap();

    // Basic with the API key as password works; a JWT as the password, or an unknown
    // credential, is 401 with an empty body; no credentials at all is a guest.
    let basic = |user: &str, password: &str| {
        let b64 = base64::engine::general_purpose::STANDARD;
        format!("Basic {}", b64.encode(format!("{user}:{password}")))
    };
    let (_, claims) = token_of(&get(&fake, target, Some(&basic("alice", KEY))));
    assert_eq!(
        claims["access"][0]["actions"],
        serde_json::json!(["pull", "push"])
    );
    for auth in [
        basic("alice", "a.b.c"),
        basic("alice", "unknown"),
        "Bearer unknown".into(),
    ] {
        let a = get(&fake, target, Some(&auth));
        assert_eq!((a.status, a.body.as_str()), (401, ""), "{auth}");
    }
    let (_, guest) = token_of(&get(&fake, target, None));
    assert_eq!(guest["sub"], "");
    assert_eq!(guest["access"][0]["actions"], serde_json::json!([]));
}
