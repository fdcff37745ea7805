//! The client against the fake balena API: exact request lines, response parsing, errors.

mod support;

use std::time::Duration;

use bru_balena::{BalenaClient, Settings};
use bru_core::{get_update_info, prepare_update, Error, PrepareOptions, ReleaseRef, UpdateStatus};
use serde_json::json;
use support::*;

struct Setup {
    fake: FakeBalena,
    client: BalenaClient,
    _dir: tempfile::TempDir,
}

fn setup_with(state: State, token: Option<&str>, api_suffix: &str) -> Setup {
    let fake = FakeBalena::start(state);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    if let Some(token) = token {
        std::fs::write(data.join("token"), format!("{token}\n")).unwrap();
    }
    let env = [
        ("BALENARC_API_URL", format!("{}{api_suffix}", fake.url())),
        ("BALENARC_DELTA_URL", fake.url()),
        ("BALENARC_DATA_DIRECTORY", data.display().to_string()),
    ];
    let settings = Settings::resolve(dir.path(), dir.path(), env).unwrap();
    let client = BalenaClient::new(&settings).unwrap();
    Setup {
        fake,
        client,
        _dir: dir,
    }
}

fn setup(state: State) -> Setup {
    setup_with(state, Some(TOKEN), "")
}

const FROM_ID: ReleaseRef = ReleaseRef::Id(FROM);
const TO_ID: ReleaseRef = ReleaseRef::Id(TO);

fn sorted(mut lines: Vec<String>) -> Vec<String> {
    lines.sort();
    lines
}

/// The requests of one `get_update_info(FROM, TO)` with ids.
fn report_lines() -> Vec<String> {
    vec![
        release_by_id_line(FROM),
        release_by_id_line(TO),
        image_line(DB),
        image_line(MAIN_TO),
        image_line(MAIN_FROM),
        delta_line(MAIN_FROM, MAIN_TO, "<T>"),
        image_line(NEW),
        image_line(OLD),
    ]
}

#[tokio::test]
async fn report_by_ids_sends_the_golden_requests() {
    let mut state = State::standard();
    state.main_delta("success", json!("484575"));
    let s = setup(state);
    let info = get_update_info(&FROM_ID, &TO_ID, &s.client).await.unwrap();
    s.fake.assert_no_violations();
    assert_eq!(s.fake.sorted_requests(), sorted(report_lines()));
    let state = s.fake.state();
    assert!(state
        .log
        .iter()
        .all(|(_, auth)| auth.as_deref() == Some(&*format!("Bearer {TOKEN}"))));
    drop(state);

    assert_eq!(info.from_release.commit, FROM_COMMIT);
    assert_eq!(info.to_release.commit, TO_COMMIT);
    let names: Vec<_> = info
        .service_updates
        .iter()
        .map(|u| u.service_name.as_str())
        .collect();
    assert_eq!(names, ["db", "main", "new"]);
    let main = &info.service_updates[1];
    assert_eq!(main.status, UpdateStatus::Ready);
    assert_eq!(main.from_image.as_ref().unwrap().image_size, 300_000_000);
    // Sizes sent as JSON strings.
    assert_eq!(main.to_image.image_size, 310_954_877);
    let delta = main.to_image.delta.as_ref().unwrap();
    assert_eq!((delta.id, delta.version, delta.size), (1510997, 3, 484_575));
    assert_eq!(info.overall_status, UpdateStatus::Ready);
    // db is unchanged (0 bytes), main costs its delta, new its full image.
    assert_eq!(info.estimated_total_payload_size, Some(484_575 + 12_345));
    assert_eq!(info.removed_services.len(), 1);
    assert_eq!(info.removed_services[0].service_name, "old");
    assert_eq!(info.removed_services[0].from_image.image_size, 7000);
    assert_eq!(info.removed_services[0].from_image.content_hash, None);
}

#[tokio::test]
async fn report_by_commit_prefixes() {
    let s = setup(State::standard());
    let from = ReleaseRef::Commit("84d3d8f".into());
    let to = ReleaseRef::Commit(TO_COMMIT.into());
    let info = get_update_info(&from, &to, &s.client).await.unwrap();
    s.fake.assert_no_violations();
    assert_eq!((info.from_release.id, info.to_release.id), (FROM, TO));
    let mut expected = report_lines();
    expected[0] = release_by_commit_line("84d3d8f");
    expected[1] = release_by_commit_line(TO_COMMIT);
    assert_eq!(s.fake.sorted_requests(), sorted(expected));
}

#[tokio::test]
async fn api_url_path_is_replaced_by_v7() {
    let s = setup_with(State::standard(), Some(TOKEN), "/ignored/path");
    get_update_info(&FROM_ID, &TO_ID, &s.client).await.unwrap();
    s.fake.assert_no_violations();
}

#[tokio::test]
async fn running_delta_is_preparing_and_hidden_stale_or_absent_is_pending() {
    let mut state = State::standard();
    state.main_delta("running", json!(1));
    let s = setup(state);
    let info = get_update_info(&FROM_ID, &TO_ID, &s.client).await.unwrap();
    assert_eq!(info.service_updates[1].status, UpdateStatus::Preparing);
    assert!(info.service_updates[1].to_image.delta.is_none());
    assert_eq!(info.overall_status, UpdateStatus::Preparing);
    assert_eq!(info.estimated_total_payload_size, None);

    // Last updated 10 minutes ago: outside the 3-minute window.
    s.fake.state().deltas[0].updated = chrono::Utc::now() - chrono::Duration::minutes(10);
    let info = get_update_info(&FROM_ID, &TO_ID, &s.client).await.unwrap();
    assert_eq!(info.service_updates[1].status, UpdateStatus::Pending);
    assert_eq!(info.overall_status, UpdateStatus::Pending);

    s.fake.state().deltas.clear();
    let info = get_update_info(&FROM_ID, &TO_ID, &s.client).await.unwrap();
    assert_eq!(info.overall_status, UpdateStatus::Pending);
    s.fake.assert_no_violations();
}

async fn error_of(s: &Setup, from: ReleaseRef, to: ReleaseRef) -> Error {
    get_update_info(&from, &to, &s.client).await.unwrap_err()
}

#[tokio::test]
async fn lookup_errors_have_the_original_messages() {
    let s = setup(State::standard());
    let e = error_of(&s, ReleaseRef::Id(900801), TO_ID).await;
    assert_eq!(e.to_string(), "Release not found: 900801");
    let e = error_of(&s, FROM_ID, ReleaseRef::Commit("cafecafe".into())).await;
    assert_eq!(
        e.to_string(),
        "Release is ambiguous: There are multiple releases matching the release hash 'cafecafe'"
    );
    let e = error_of(&s, FROM_ID, ReleaseRef::Commit("deadbeef".into())).await;
    assert_eq!(e.to_string(), "Release not found: deadbeef");
    let e = error_of(&s, FROM_ID, ReleaseRef::Id(900900)).await;
    assert_eq!(
        e.to_string(),
        "Source and target release must be from the same application"
    );
    s.fake.state().images.remove(&NEW);
    let e = error_of(&s, FROM_ID, TO_ID).await;
    assert_eq!(e.to_string(), format!("Image not found: {NEW}"));
    s.fake.assert_no_violations();
}

fn fault(path_prefix: &'static str, status: u16, content_type: &'static str, body: &str) -> Fault {
    Fault {
        path_prefix,
        skip: 0,
        times: 1,
        status,
        content_type,
        body: body.to_owned(),
        retry_after: None,
    }
}

#[tokio::test]
async fn http_errors_become_request_errors() {
    let s = setup(State::standard());
    let cases = [
        (
            fault("/v7/image(", 404, "text/plain", "Not Found"),
            "Request error: Not Found",
            404,
        ),
        (
            fault(
                "/v7/release(",
                500,
                "application/json",
                r#"{"error":{"text":"boom"}}"#,
            ),
            "Request error: boom",
            500,
        ),
        (
            fault(
                "/v7/delta",
                504,
                "application/json",
                r#"{"message":"Gateway Timeout"}"#,
            ),
            "Request error: Gateway Timeout",
            504,
        ),
        (
            fault("/v7/image(", 503, "text/plain", ""),
            "Request error: The request was unsuccessful",
            503,
        ),
    ];
    for (f, message, status) in cases {
        // Persistent, so requests of the previous case still in flight cannot use it up.
        s.fake.state().faults = vec![Fault {
            times: usize::MAX,
            ..f
        }];
        let e = error_of(&s, FROM_ID, TO_ID).await;
        assert_eq!(e.to_string(), message);
        assert!(matches!(e, Error::Request { status: st, .. } if st == status));
        assert!(e.is_transient() == (status >= 500));
    }
}

#[tokio::test]
async fn malformed_responses_are_reported() {
    let s = setup(State::standard());
    let cases = [
        ("{not json", "invalid JSON in response"),
        (
            r#"{"x":[]}"#,
            "Invalid response received, the 'd' property is missing.",
        ),
        (r#""text""#, "Response was not a JSON object: 'string'"),
        (r#"{"d":[{"id":"x"}]}"#, "unexpected response shape"),
    ];
    // Every image request gets the bad body: requests of the previous case that were still in
    // flight when it failed must not use up this case's fault.
    let always = |body: &str| Fault {
        times: usize::MAX,
        ..fault("/v7/image(", 200, "application/json", body)
    };
    for (body, message) in cases {
        s.fake.state().faults = vec![always(body)];
        let e = error_of(&s, FROM_ID, TO_ID).await;
        assert!(matches!(e, Error::InvalidResponse { .. }), "{e:?}");
        assert!(e.to_string().starts_with(message), "{e}");
    }
    let two = format!(
        r#"{{"d":[{0},{0}]}}"#,
        json!({"id":1,"is_stored_at__image_location":"x","content_hash":null,"image_size":1})
    );
    s.fake.state().faults = vec![always(&two)];
    let e = error_of(&s, FROM_ID, TO_ID).await;
    assert_eq!(
        e.to_string(),
        "Returned multiple results when only one was expected."
    );
}

#[tokio::test]
async fn unauthorized_without_and_with_a_token() {
    let s = setup_with(State::standard(), None, "");
    let e = error_of(&s, FROM_ID, TO_ID).await;
    assert_eq!(e.to_string(), "You have to log in");
    assert!(s.fake.state().log.iter().all(|(_, auth)| auth.is_none()));

    let s = setup_with(State::standard(), Some("wrongtoken"), "");
    let e = error_of(&s, FROM_ID, TO_ID).await;
    assert_eq!(e.to_string(), "Request error: Unauthorized");
}

#[tokio::test]
async fn expired_session_token_sends_nothing() {
    use base64::Engine as _;
    let enc = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let jwt = format!(
        "{}.{}.sig",
        enc(r#"{"alg":"HS256","typ":"JWT"}"#),
        enc(r#"{"id":1,"exp":1600000000}"#)
    );
    let s = setup_with(State::standard(), Some(&jwt), "");
    let e = error_of(&s, FROM_ID, TO_ID).await;
    assert_eq!(e.to_string(), "The token expired");
    let e = prepare_update(&FROM_ID, &TO_ID, &s.client, &PrepareOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(e, Error::TokenExpired));
    assert!(s.fake.state().log.is_empty());
}

#[tokio::test]
async fn prepare_without_wait_triggers_and_rereads() {
    let s = setup(State::standard());
    let info = prepare_update(&FROM_ID, &TO_ID, &s.client, &PrepareOptions::default())
        .await
        .unwrap();
    s.fake.assert_no_violations();
    // The trigger answered 504 and started a delta: the re-read shows it running.
    assert_eq!(info.overall_status, UpdateStatus::Preparing);
    let mut expected = report_lines();
    expected.extend(report_lines());
    expected.push(trigger_line(MAIN_FROM, MAIN_TO));
    assert_eq!(s.fake.sorted_requests(), sorted(expected));
    let state = s.fake.state();
    let trigger = state
        .log
        .iter()
        .find(|(l, _)| l.starts_with("/api/"))
        .unwrap();
    assert_eq!(trigger.1.as_deref(), Some(&*format!("Bearer {TOKEN}")));
}

#[tokio::test]
async fn trigger_answers() {
    // 200: the delta exists already.
    let mut state = State::standard();
    state.trigger = TriggerMode {
        status: 200,
        creates: Some("success"),
        succeed_after_queries: None,
    };
    let s = setup(state);
    let info = prepare_update(&FROM_ID, &TO_ID, &s.client, &PrepareOptions::default())
        .await
        .unwrap();
    assert_eq!(info.overall_status, UpdateStatus::Ready);
    assert_eq!(info.estimated_total_payload_size, Some(484_575 + 12_345));

    // 502 and 302 are "being built"; the redirect is not followed.
    for status in [502, 302] {
        let mut state = State::standard();
        state.trigger = TriggerMode {
            status,
            creates: None,
            succeed_after_queries: None,
        };
        let s = setup(state);
        let info = prepare_update(&FROM_ID, &TO_ID, &s.client, &PrepareOptions::default())
            .await
            .unwrap();
        assert_eq!(info.overall_status, UpdateStatus::Pending);
        s.fake.assert_no_violations();
    }

    // 500 fails a prepare without wait.
    let mut state = State::standard();
    state.trigger = TriggerMode {
        status: 500,
        creates: None,
        succeed_after_queries: None,
    };
    let s = setup(state);
    s.fake.state().faults = vec![fault("/api/v3/delta", 500, "text/plain", "x")];
    let e = prepare_update(&FROM_ID, &TO_ID, &s.client, &PrepareOptions::default())
        .await
        .unwrap_err();
    assert_eq!(e.to_string(), "Request error: x");
}

fn waiting(timeout: Option<Duration>) -> PrepareOptions {
    PrepareOptions {
        wait: true,
        timeout,
        poll_interval: Duration::from_millis(20),
        retrigger_interval: Duration::from_millis(40),
    }
}

#[tokio::test]
async fn wait_until_ready_through_transient_errors() {
    let mut state = State::standard();
    state.trigger.succeed_after_queries = Some(3);
    // The first report reads each release once and the delta once; the faults hit the
    // reads made while waiting.
    state.faults = vec![
        Fault {
            skip: 1,
            times: 2,
            retry_after: Some(0),
            ..fault("/v7/delta", 429, "text/plain", "Too Many Requests")
        },
        Fault {
            skip: 2,
            ..fault("/v7/release(", 503, "text/plain", "Service Unavailable")
        },
        Fault {
            skip: 5,
            ..fault(
                "/v7/image(",
                500,
                "application/json",
                r#"{"error":"db down"}"#,
            )
        },
    ];
    let s = setup(state);
    let info = tokio::time::timeout(
        Duration::from_secs(30),
        prepare_update(&FROM_ID, &TO_ID, &s.client, &waiting(None)),
    )
    .await
    .expect("the wait finished")
    .unwrap();
    assert_eq!(info.overall_status, UpdateStatus::Ready);
    assert!(info.service_updates[1].to_image.delta.is_some());
    assert!(
        s.fake.state().faults.iter().all(|f| f.times == 0),
        "all faults were served"
    );
    s.fake.assert_no_violations();
}

#[tokio::test]
async fn wait_stops_on_a_permanent_error() {
    let mut state = State::standard();
    state.faults = vec![Fault {
        skip: 2,
        ..fault("/v7/release(", 404, "text/plain", "gone")
    }];
    let s = setup(state);
    let e = prepare_update(&FROM_ID, &TO_ID, &s.client, &waiting(None))
        .await
        .unwrap_err();
    assert_eq!(e.to_string(), "Request error: gone");
}

#[tokio::test]
async fn wait_timeout_carries_the_last_state_and_retriggers() {
    let mut state = State::standard();
    state.trigger.creates = None;
    let s = setup(state);
    let e = prepare_update(
        &FROM_ID,
        &TO_ID,
        &s.client,
        &waiting(Some(Duration::from_millis(400))),
    )
    .await
    .unwrap_err();
    let Error::Timeout { last, .. } = e else {
        panic!("expected a timeout: {e:?}")
    };
    assert_eq!(last.overall_status, UpdateStatus::Pending);
    assert_eq!(last.to_release.id, TO);
    let triggers = s
        .fake
        .state()
        .log
        .iter()
        .filter(|(l, _)| *l == trigger_line(MAIN_FROM, MAIN_TO))
        .count();
    assert!(
        triggers >= 2,
        "pending deltas are requested again while waiting ({triggers})"
    );
    s.fake.assert_no_violations();
}

#[tokio::test]
async fn connection_refused_is_a_transient_network_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let closed = format!("http://127.0.0.1:{port}");
    let env = [
        ("BALENARC_API_URL", closed.clone()),
        ("BALENARC_DELTA_URL", closed.clone()),
        ("BALENARC_DATA_DIRECTORY", dir.path().display().to_string()),
    ];
    let settings = Settings::resolve(dir.path(), dir.path(), env).unwrap();
    let client = BalenaClient::new(&settings).unwrap();
    let e = get_update_info(&FROM_ID, &TO_ID, &client)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Network { .. }), "{e:?}");
    assert!(e.is_transient());
    assert!(
        e.to_string()
            .starts_with(&format!("request to {closed}/v7/release(")),
        "{e}"
    );
    let source = std::error::Error::source(&e).unwrap().to_string();
    assert!(
        !source.contains(&closed),
        "the cause does not repeat the URL: {source}"
    );
}

#[test]
fn url_settings_must_be_absolute() {
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("BALENARC_API_URL", "api.example.com"),
        ("BALENARC_DATA_DIRECTORY", "/nonexistent"),
    ];
    let settings = Settings::resolve(dir.path(), dir.path(), env).unwrap();
    let e = BalenaClient::new(&settings).unwrap_err();
    assert_eq!(e.to_string(), "invalid apiUrl setting: 'api.example.com'");
}

#[test]
fn token_with_control_characters_is_malformed() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), "abc\u{1}def").unwrap();
    let data = dir.path().display().to_string();
    let settings =
        Settings::resolve(dir.path(), dir.path(), [("BALENARC_DATA_DIRECTORY", data)]).unwrap();
    let e = BalenaClient::new(&settings).unwrap_err();
    assert_eq!(e.to_string(), "Malformed token");
}
