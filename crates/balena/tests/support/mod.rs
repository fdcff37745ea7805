//! A fake balena API and delta server on 127.0.0.1 for tests.
//!
//! It serves the response shapes of the wire spec and accepts only the exact request lines
//! of `@balena/release-update` (spec §4–§6, §12): any other line is recorded as a violation
//! and answered 400. The delta query's `update_timestamp` bound must be now − 3 min (±60 s);
//! in the request log it is replaced by `<T>`.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::body::Body;
use axum::http::{Request, Response};
use chrono::{DateTime, Duration, Utc};
use serde_json::{json, Value};

pub const APP: u64 = 1234;
pub const FROM: u64 = 900813;
pub const FROM_COMMIT: &str = "84d3d8f43eddd81b1699552dd39338f8dbf8b11e";
pub const TO: u64 = 900814;
pub const TO_COMMIT: &str = "f00dfeed00112233445566778899aabbccddeeff";
/// main: 1115249 -> 1115290 (delta needed); db: 1115250 in both; old: removed; new: added.
pub const MAIN_FROM: u64 = 1115249;
pub const MAIN_TO: u64 = 1115290;
pub const DB: u64 = 1115250;
pub const OLD: u64 = 1115251;
pub const NEW: u64 = 1115291;
pub const TOKEN: &str = "abcdefAPIKEY0123";

#[derive(Debug, Clone)]
pub struct FakeRelease {
    pub id: u64,
    pub commit: String,
    pub status: &'static str,
    pub app: u64,
    pub services: Vec<(&'static str, u64)>,
}

#[derive(Debug, Clone)]
pub struct FakeDelta {
    pub id: u64,
    pub src: u64,
    pub dest: u64,
    pub status: &'static str,
    pub updated: DateTime<Utc>,
    /// The value of `size` as sent (number or string).
    pub size: Value,
}

/// A canned answer for `times` requests whose path starts with `path_prefix`, after letting
/// `skip` of them through.
#[derive(Debug, Clone)]
pub struct Fault {
    pub path_prefix: &'static str,
    pub skip: usize,
    pub times: usize,
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
    pub retry_after: Option<u32>,
}

/// What a delta trigger does.
#[derive(Debug, Clone)]
pub struct TriggerMode {
    /// Status answered.
    pub status: u16,
    /// Status of the delta row the trigger creates (`None`: no row).
    pub creates: Option<&'static str>,
    /// After this many delta queries following a trigger, the row becomes `success`.
    pub succeed_after_queries: Option<usize>,
}

#[derive(Debug)]
pub struct State {
    pub releases: Vec<FakeRelease>,
    pub images: HashMap<u64, Value>,
    pub deltas: Vec<FakeDelta>,
    /// When set, requests must carry `Bearer <token>`; others get 401 `Unauthorized`.
    pub token: Option<String>,
    pub faults: Vec<Fault>,
    pub trigger: TriggerMode,
    pub delta_queries_since_trigger: usize,
    /// (request line with the delta timestamp replaced by `<T>`, Authorization header)
    pub log: Vec<(String, Option<String>)>,
    pub violations: Vec<String>,
}

impl State {
    /// The fixture: releases FROM and TO of app APP plus a few for error cases.
    pub fn standard() -> State {
        let release =
            |id, commit: &str, status, app, services: &[(&'static str, u64)]| FakeRelease {
                id,
                commit: commit.to_owned(),
                status,
                app,
                services: services.to_vec(),
            };
        let releases = vec![
            release(
                FROM,
                FROM_COMMIT,
                "success",
                APP,
                &[("main", MAIN_FROM), ("db", DB), ("old", OLD)],
            ),
            release(
                TO,
                TO_COMMIT,
                "success",
                APP,
                &[("main", MAIN_TO), ("new", NEW), ("db", DB)],
            ),
            release(900801, "0badbadbad", "failed", APP, &[]),
            release(900816, "cafecafe0123", "success", APP, &[]),
            release(900817, "cafecafe4567", "success", APP, &[]),
            release(
                900900,
                "0ther0ther0ther",
                "success",
                999,
                &[("main", MAIN_TO)],
            ),
        ];
        let image = |id: u64, hash: Value, size: Value| {
            json!({"id": id, "is_stored_at__image_location": format!("registry2.balena-cloud.com/v2/{id:x}"),
                   "content_hash": hash, "image_size": size})
        };
        let images = HashMap::from([
            (
                MAIN_FROM,
                image(MAIN_FROM, json!("sha256:aaaa"), json!(300000000)),
            ),
            (
                MAIN_TO,
                image(MAIN_TO, json!("sha256:bbbb"), json!("310954877")),
            ),
            (DB, image(DB, json!("sha256:dddd"), json!(5000))),
            (OLD, image(OLD, Value::Null, json!("7000"))),
            (NEW, image(NEW, json!("sha256:eeee"), json!(12345))),
        ]);
        State {
            releases,
            images,
            deltas: Vec::new(),
            token: Some(TOKEN.to_owned()),
            faults: Vec::new(),
            trigger: TriggerMode {
                status: 504,
                creates: Some("running"),
                succeed_after_queries: None,
            },
            delta_queries_since_trigger: 0,
            log: Vec::new(),
            violations: Vec::new(),
        }
    }

    /// A delta row for main, updated now.
    pub fn main_delta(&mut self, status: &'static str, size: Value) {
        self.deltas.push(FakeDelta {
            id: 1510997,
            src: MAIN_FROM,
            dest: MAIN_TO,
            status,
            updated: Utc::now(),
            size,
        });
    }
}

#[derive(Debug)]
pub struct FakeBalena {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

impl FakeBalena {
    /// Starts the server on its own thread and runtime, so that both async tests and tests
    /// that run the binary can use it.
    pub fn start(state: State) -> FakeBalena {
        let state = Arc::new(Mutex::new(state));
        let shared = state.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                tx.send(listener.local_addr().unwrap()).unwrap();
                let app = axum::Router::new().fallback(move |req: Request<Body>| {
                    let state = shared.clone();
                    async move { handle(&state, req) }
                });
                axum::serve(listener, app).await.unwrap();
            });
        });
        let addr = rx.recv().unwrap();
        FakeBalena { addr, state }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    /// The request lines received, sorted (concurrent requests arrive in any order).
    pub fn sorted_requests(&self) -> Vec<String> {
        let mut lines: Vec<String> = self.state().log.iter().map(|(l, _)| l.clone()).collect();
        lines.sort();
        lines
    }

    pub fn assert_no_violations(&self) {
        let violations = self.state().violations.clone();
        assert!(
            violations.is_empty(),
            "unexpected requests: {violations:#?}"
        );
    }
}

// The golden request lines, written out from the spec.
const EXPAND: &str = "$expand=release_image($expand=image($select=id;$expand=is_a_build_of__service($select=service_name))),is_created_by__user($select=id,username)";

pub fn release_by_id_line(id: u64) -> String {
    format!("/v7/release({id})?{EXPAND}&$filter=status%20eq%20%27success%27")
}

pub fn release_by_commit_line(prefix: &str) -> String {
    format!("/v7/release?$filter=startswith(commit,%27{prefix}%27)%20and%20status%20eq%20%27success%27&{EXPAND}")
}

pub fn image_line(id: u64) -> String {
    format!("/v7/image({id})?$select=id,is_stored_at__image_location,content_hash,image_size&$filter=status%20eq%20%27success%27")
}

pub fn delta_line(src: u64, dest: u64, t: &str) -> String {
    format!("/v7/delta?$top=1&$select=id,status,version,is_stored_at__location,size&$filter=version%20eq%203%20and%20originates_from__image%20eq%20{src}%20and%20produces__image%20eq%20{dest}%20and%20(status%20eq%20%27success%27%20or%20(status%20eq%20%27running%27%20and%20update_timestamp%20gt%20datetime%27{t}%27))&$orderby=id%20desc")
}

pub fn trigger_line(src: u64, dest: u64) -> String {
    format!("/api/v3/delta?src={src}&dest={dest}")
}

fn between<'a>(s: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let from = s.find(start)? + start.len();
    let len = s[from..].find(end)?;
    Some(&s[from..from + len])
}

fn reply(status: u16, content_type: &str, body: String) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Body::from(body))
        .unwrap()
}

fn json_reply(value: Value) -> Response<Body> {
    reply(200, "application/json", value.to_string())
}

fn handle(state: &Mutex<State>, req: Request<Body>) -> Response<Body> {
    let mut state = state.lock().unwrap();
    let line = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let auth = req
        .headers()
        .get("authorization")
        .map(|v| v.to_str().unwrap_or("<non-ascii>").to_owned());
    let time = between(&line, "datetime%27", "%27").map(str::to_owned);
    let logged = match &time {
        Some(t) => line.replace(t.as_str(), "<T>"),
        None => line.clone(),
    };
    state.log.push((logged, auth.clone()));

    if req.method() != "GET" {
        state.violations.push(format!("{} {line}", req.method()));
        return reply(405, "text/plain", "method".into());
    }
    if let Some(token) = &state.token {
        if auth.as_deref() != Some(&format!("Bearer {token}")) {
            return reply(401, "text/plain", "Unauthorized".into());
        }
    }
    let fault = state
        .faults
        .iter_mut()
        .find(|f| f.times > 0 && line.starts_with(f.path_prefix));
    if let Some(fault) = fault {
        if fault.skip > 0 {
            fault.skip -= 1;
        } else {
            fault.times -= 1;
            let mut response = reply(fault.status, fault.content_type, fault.body.clone());
            if let Some(secs) = fault.retry_after {
                response.headers_mut().insert("retry-after", secs.into());
            }
            return response;
        }
    }

    let violation = |state: &mut State, expected: String| {
        state
            .violations
            .push(format!("got {line}\nexpected {expected}"));
        reply(400, "text/plain", "unexpected request".into())
    };

    if let Some(id) = between(&line, "/v7/release(", ")").and_then(|s| s.parse::<u64>().ok()) {
        let expected = release_by_id_line(id);
        if line != expected {
            return violation(&mut state, expected);
        }
        let found: Vec<Value> = state
            .releases
            .iter()
            .filter(|r| r.id == id && r.status == "success")
            .map(release_json)
            .collect();
        return json_reply(json!({ "d": found }));
    }
    if let Some(prefix) = between(&line, "/v7/release?$filter=startswith(commit,%27", "%27)") {
        let expected = release_by_commit_line(prefix);
        if line != expected {
            return violation(&mut state, expected);
        }
        let found: Vec<Value> = state
            .releases
            .iter()
            .filter(|r| r.commit.starts_with(prefix) && r.status == "success")
            .map(release_json)
            .collect();
        return json_reply(json!({ "d": found }));
    }
    if let Some(id) = between(&line, "/v7/image(", ")").and_then(|s| s.parse::<u64>().ok()) {
        let expected = image_line(id);
        if line != expected {
            return violation(&mut state, expected);
        }
        let found: Vec<Value> = state.images.get(&id).cloned().into_iter().collect();
        return json_reply(json!({ "d": found }));
    }
    if line.starts_with("/v7/delta?") {
        let num = |key: &str| between(&line, key, "%20").and_then(|s| s.parse::<u64>().ok());
        let (Some(src), Some(dest), Some(t)) = (
            num("originates_from__image%20eq%20"),
            num("produces__image%20eq%20"),
            time.clone(),
        ) else {
            return violation(&mut state, delta_line(0, 0, "<T>"));
        };
        let expected = delta_line(src, dest, &t);
        if line != expected {
            return violation(&mut state, expected);
        }
        let since = match DateTime::parse_from_rfc3339(&t) {
            Ok(since) if t.len() == 24 && t.ends_with('Z') => since.with_timezone(&Utc),
            _ => {
                return violation(
                    &mut state,
                    format!("a timestamp like 2021-09-01T10:00:00.000Z, not {t}"),
                )
            }
        };
        let skew = (Utc::now() - Duration::minutes(3) - since)
            .num_seconds()
            .abs();
        if skew > 60 {
            return violation(
                &mut state,
                format!("update_timestamp bound of now - 3 min, not {t}"),
            );
        }
        state.delta_queries_since_trigger += 1;
        let queries = state.delta_queries_since_trigger;
        if let Some(n) = state.trigger.succeed_after_queries {
            if queries >= n {
                for d in state
                    .deltas
                    .iter_mut()
                    .filter(|d| d.src == src && d.dest == dest)
                {
                    d.status = "success";
                }
            }
        }
        let mut rows: Vec<&FakeDelta> = state
            .deltas
            .iter()
            .filter(|d| d.src == src && d.dest == dest)
            .filter(|d| d.status == "success" || (d.status == "running" && d.updated > since))
            .collect();
        rows.sort_by_key(|d| std::cmp::Reverse(d.id));
        let found: Vec<Value> = rows
            .first()
            .map(|d| {
                json!({"id": d.id, "status": d.status, "version": 3,
                       "is_stored_at__location": format!("registry2.balena-cloud.com/v2/{:x}:delta-{}", d.dest, d.id),
                       "size": d.size})
            })
            .into_iter()
            .collect();
        return json_reply(json!({ "d": found }));
    }
    if line.starts_with("/api/v3/delta?") {
        let num =
            |key: &str| between(&format!("{line}&"), key, "&").and_then(|s| s.parse::<u64>().ok());
        let (Some(src), Some(dest)) = (num("src="), num("dest=")) else {
            return violation(&mut state, trigger_line(0, 0));
        };
        let expected = trigger_line(src, dest);
        if line != expected {
            return violation(&mut state, expected);
        }
        state.delta_queries_since_trigger = 0;
        let mode = state.trigger.clone();
        if let Some(status) = mode.creates {
            let id = 1510997 + state.deltas.len() as u64;
            state.deltas.push(FakeDelta {
                id,
                src,
                dest,
                status,
                updated: Utc::now(),
                size: json!("484575"),
            });
        }
        let body = if mode.status == 200 {
            json!({"name": "registry2.balena-cloud.com/v2/delta"}).to_string()
        } else {
            String::new()
        };
        return reply(mode.status, "application/json", body);
    }
    state.violations.push(format!("unknown request {line}"));
    reply(404, "text/plain", "Not Found".into())
}

fn release_json(r: &FakeRelease) -> Value {
    let release_image: Vec<Value> = r
        .services
        .iter()
        .enumerate()
        .map(|(i, (name, image))| {
            json!({"id": 70 + i, "created_at": "2021-09-01T10:00:00.000Z", "is_part_of__release": {"__id": r.id},
                   "image": [{"id": image, "is_a_build_of__service": [{"service_name": name}]}]})
        })
        .collect();
    json!({
        "id": r.id, "commit": r.commit, "status": r.status,
        "belongs_to__application": {"__id": r.app},
        "created_at": "2021-09-01T10:00:00.000Z", "composition": {"services": {}}, "source": "cloud",
        "build_log": "…", "is_invalidated": false, "contract": null, "semver": "0.0.0",
        "raw_version": "0.0.0+rev0", "version": {"raw": "0.0.0+rev0", "major": 0},
        "release_image": release_image,
        "is_created_by__user": [],
    })
}
