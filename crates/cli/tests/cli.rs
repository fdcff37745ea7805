//! The real binary against the fake balena API, configured through BALENARC_* variables and
//! balenarc.yml files, with HOME and the working directory in temp dirs.

#[path = "../../balena/tests/support/mod.rs"]
mod support;

use std::path::PathBuf;
use std::process::Command;

use serde_json::{json, Value};
use support::*;

struct Env {
    fake: FakeBalena,
    home: tempfile::TempDir,
    cwd: tempfile::TempDir,
    data: PathBuf,
    /// Point the tool at the fake with BALENARC_* variables (else files must do it).
    use_env: bool,
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("{e}: {}", self.stdout))
    }
}

fn env_with(state: State, token: Option<&str>) -> Env {
    let fake = FakeBalena::start(state);
    let home = tempfile::tempdir().unwrap();
    let cwd = tempfile::tempdir().unwrap();
    let data = home.path().join("balena-data");
    std::fs::create_dir(&data).unwrap();
    if let Some(token) = token {
        std::fs::write(data.join("token"), token).unwrap();
    }
    Env {
        fake,
        home,
        cwd,
        data,
        use_env: true,
    }
}

fn env(state: State) -> Env {
    env_with(state, Some(&format!("{TOKEN}\n")))
}

fn run(env: &Env, args: &[&str]) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_balena-release-update"));
    cmd.args(args)
        .env_clear()
        .env("HOME", env.home.path())
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .current_dir(env.cwd.path());
    if env.use_env {
        cmd.env("BALENARC_API_URL", env.fake.url())
            .env("BALENARC_DELTA_URL", env.fake.url())
            .env("BALENARC_DATA_DIRECTORY", &env.data);
    }
    let out = cmd.output().unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

const BY_IDS: [&str; 4] = ["--from-release", "900813", "--to-release", "900814"];

fn with(extra: &[&'static str]) -> Vec<&'static str> {
    [&BY_IDS[..], extra].concat()
}

fn ready_state() -> State {
    let mut state = State::standard();
    state.main_delta("success", json!("484575"));
    state
}

fn location(id: u64) -> String {
    format!("registry2.balena-cloud.com/v2/{id:x}")
}

#[test]
fn report_is_pretty_json_in_the_original_order() {
    let env = env(ready_state());
    let run = run(&env, &BY_IDS);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stderr, "");
    env.fake.assert_no_violations();
    let expected = format!(
        r#"{{
  "originates_from__release": {{
    "id": 900813,
    "commit": "{FROM_COMMIT}"
  }},
  "produces__release": {{
    "id": 900814,
    "commit": "{TO_COMMIT}"
  }},
  "is_produced_by__service_update": [
    {{
      "service_name": "db",
      "status": "ready",
      "originates_from__image": {{
        "id": {DB},
        "is_stored_at__image_location": "{db}",
        "content_hash": "sha256:dddd",
        "image_size": 5000
      }},
      "produces__image": {{
        "id": {DB},
        "is_stored_at__image_location": "{db}",
        "content_hash": "sha256:dddd",
        "image_size": 5000
      }}
    }},
    {{
      "service_name": "main",
      "status": "ready",
      "originates_from__image": {{
        "id": {MAIN_FROM},
        "is_stored_at__image_location": "{main_from}",
        "content_hash": "sha256:aaaa",
        "image_size": 300000000
      }},
      "produces__image": {{
        "id": {MAIN_TO},
        "is_stored_at__image_location": "{main_to}",
        "content_hash": "sha256:bbbb",
        "image_size": 310954877,
        "is_produced_by__delta": {{
          "id": 1510997,
          "version": 3,
          "is_stored_at__location": "registry2.balena-cloud.com/v2/{MAIN_TO:x}:delta-1510997",
          "size": 484575
        }}
      }}
    }},
    {{
      "service_name": "new",
      "status": "ready",
      "produces__image": {{
        "id": {NEW},
        "is_stored_at__image_location": "{new}",
        "content_hash": "sha256:eeee",
        "image_size": 12345
      }}
    }}
  ],
  "overall_status": "ready",
  "estimated_total_payload_size": 496920,
  "removes__service": [
    {{
      "service_name": "old",
      "originates_from__image": {{
        "id": {OLD},
        "is_stored_at__image_location": "{old}",
        "content_hash": null,
        "image_size": 7000
      }}
    }}
  ]
}}
"#,
        db = location(DB),
        main_from = location(MAIN_FROM),
        main_to = location(MAIN_TO),
        new = location(NEW),
        old = location(OLD),
    );
    assert_eq!(run.stdout, expected);
}

fn keys(v: &Value) -> Vec<&str> {
    v.as_object().unwrap().keys().map(String::as_str).collect()
}

#[test]
fn field_top_level_keys_and_order() {
    let env = env(ready_state());
    let json = run(&env, &BY_IDS).json();
    assert_eq!(
        keys(&json),
        [
            "originates_from__release",
            "produces__release",
            "is_produced_by__service_update",
            "overall_status",
            "estimated_total_payload_size",
            "removes__service"
        ]
    );
}

#[test]
fn field_releases_have_integer_id_and_commit() {
    let env = env(ready_state());
    let json = run(&env, &BY_IDS).json();
    for (key, id, commit) in [
        ("originates_from__release", FROM, FROM_COMMIT),
        ("produces__release", TO, TO_COMMIT),
    ] {
        assert_eq!(keys(&json[key]), ["id", "commit"]);
        assert_eq!(json[key]["id"].as_u64(), Some(id));
        assert_eq!(json[key]["commit"].as_str(), Some(commit));
    }
}

#[test]
fn field_service_update_keys_and_status_strings() {
    let env = env(ready_state());
    let json = run(&env, &BY_IDS).json();
    let updates = json["is_produced_by__service_update"].as_array().unwrap();
    assert_eq!(
        keys(&updates[1]),
        [
            "service_name",
            "status",
            "originates_from__image",
            "produces__image"
        ]
    );
    // A new service has no source image.
    assert_eq!(
        keys(&updates[2]),
        ["service_name", "status", "produces__image"]
    );
    assert!(updates.iter().all(|u| u["status"] == "ready"));
}

#[test]
fn field_images_have_integer_sizes_even_when_sent_as_strings() {
    let env = env(ready_state());
    let json = run(&env, &BY_IDS).json();
    let main = &json["is_produced_by__service_update"][1];
    let from = &main["originates_from__image"];
    assert_eq!(
        keys(from),
        [
            "id",
            "is_stored_at__image_location",
            "content_hash",
            "image_size"
        ]
    );
    assert!(from["image_size"].is_u64());
    let to = &main["produces__image"];
    assert_eq!(
        keys(to),
        [
            "id",
            "is_stored_at__image_location",
            "content_hash",
            "image_size",
            "is_produced_by__delta"
        ]
    );
    // The fake sends this size as the string "310954877".
    assert_eq!(to["image_size"], json!(310954877));
}

#[test]
fn field_delta_has_integer_size() {
    let env = env(ready_state());
    let json = run(&env, &BY_IDS).json();
    let delta =
        &json["is_produced_by__service_update"][1]["produces__image"]["is_produced_by__delta"];
    assert_eq!(
        keys(delta),
        ["id", "version", "is_stored_at__location", "size"]
    );
    assert_eq!(delta["version"], json!(3));
    assert_eq!(delta["size"], json!(484575));
}

#[test]
fn field_estimated_size_only_when_ready() {
    let env = env(State::standard());
    let run = run(&env, &BY_IDS);
    assert_eq!(run.code, 0);
    let json = run.json();
    assert_eq!(json["overall_status"], "pending");
    assert!(json.get("estimated_total_payload_size").is_none());
    assert!(json["is_produced_by__service_update"][1]["produces__image"]
        .get("is_produced_by__delta")
        .is_none());
}

#[test]
fn field_removed_services_list_their_source_image() {
    let env = env(ready_state());
    let json = run(&env, &BY_IDS).json();
    let removed = json["removes__service"].as_array().unwrap();
    assert_eq!(removed.len(), 1);
    assert_eq!(
        keys(&removed[0]),
        ["service_name", "originates_from__image"]
    );
    assert_eq!(removed[0]["originates_from__image"]["id"], json!(OLD));
    assert_eq!(
        removed[0]["originates_from__image"]["image_size"],
        json!(7000)
    );
}

#[test]
fn commit_prefixes_and_settings_from_balenarc_files() {
    let mut env = env(ready_state());
    env.use_env = false;
    // Data directory from ~/.balenarc.yml, URLs from ./balenarc.yml (which wins).
    std::fs::write(
        env.home.path().join(".balenarc.yml"),
        format!(
            "dataDirectory: {}\napiUrl: http://127.0.0.1:9\n",
            env.data.display()
        ),
    )
    .unwrap();
    std::fs::write(
        env.cwd.path().join("balenarc.yml"),
        format!("apiUrl: {0}\ndeltaUrl: {0}\n", env.fake.url()),
    )
    .unwrap();
    let run = run(
        &env,
        &["--from-release", "84d3d8f", "--to-release", "f00dfeed0011"],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.json()["produces__release"]["id"], json!(TO));
    env.fake.assert_no_violations();
    let lines = env.fake.sorted_requests();
    assert!(lines.contains(&release_by_commit_line("84d3d8f")));
    assert!(lines.contains(&release_by_commit_line("f00dfeed0011")));
}

#[test]
fn prepare_triggers_and_reports_the_new_state() {
    let env = env(State::standard());
    let run = run(&env, &with(&["--prepare"]));
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.json()["overall_status"], "preparing");
    let triggers: Vec<_> = env
        .fake
        .state()
        .log
        .iter()
        .filter(|(l, _)| l.starts_with("/api/v3/delta"))
        .cloned()
        .collect();
    assert_eq!(
        triggers,
        [(
            trigger_line(MAIN_FROM, MAIN_TO),
            Some(format!("Bearer {TOKEN}"))
        )]
    );
    env.fake.assert_no_violations();
}

#[test]
fn wait_polls_until_ready() {
    let mut state = State::standard();
    state.trigger.succeed_after_queries = Some(3);
    let env = env(state);
    let run = run(&env, &with(&["--wait", "--poll-interval", "0.05"]));
    assert_eq!(run.code, 0, "{}", run.stderr);
    let json = run.json();
    assert_eq!(json["overall_status"], "ready");
    assert_eq!(json["estimated_total_payload_size"], json!(484575 + 12345));
    env.fake.assert_no_violations();
}

#[test]
fn timeout_prints_the_last_state_and_exits_124() {
    let mut state = State::standard();
    state.trigger.creates = None;
    let env = env(state);
    let run = run(&env, &with(&["--timeout", "1", "--poll-interval", "0.05"]));
    assert_eq!(run.code, 124, "{}", run.stderr);
    assert_eq!(run.json()["overall_status"], "pending");
    assert!(run.stderr.starts_with("ERROR: timed out"), "{}", run.stderr);
    env.fake.assert_no_violations();
}

fn assert_error(run: &Run, message: &str) {
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert_eq!(run.stdout, "");
    assert_eq!(run.stderr, format!("ERROR: {message}\n"));
}

#[test]
fn api_errors_print_the_original_messages() {
    let env = env(State::standard());
    assert_error(
        &run(
            &env,
            &["--from-release", "900801", "--to-release", "900814"],
        ),
        "Release not found: 900801",
    );
    assert_error(
        &run(
            &env,
            &["--from-release", "900813", "--to-release", "cafecafe"],
        ),
        "Release is ambiguous: There are multiple releases matching the release hash 'cafecafe'",
    );
    assert_error(
        &run(
            &env,
            &["--from-release", "900813", "--to-release", "900900"],
        ),
        "Source and target release must be from the same application",
    );
    env.fake.state().faults = vec![Fault {
        path_prefix: "/v7/image(",
        skip: 0,
        times: usize::MAX, // persistent: a late request of the previous run cannot use it up
        status: 500,
        content_type: "text/plain",
        body: "Internal Server Error".into(),
        retry_after: None,
    }];
    assert_error(&run(&env, &BY_IDS), "Request error: Internal Server Error");
    env.fake.state().faults = vec![Fault {
        path_prefix: "/v7/delta",
        skip: 0,
        times: usize::MAX, // persistent: a late request of the previous run cannot use it up
        status: 200,
        content_type: "application/json",
        body: r#"{"results":[]}"#.into(),
        retry_after: None,
    }];
    assert_error(
        &run(&env, &BY_IDS),
        "Invalid response received, the 'd' property is missing.",
    );
    env.fake.assert_no_violations();
}

#[test]
fn not_logged_in() {
    let env = env_with(State::standard(), None);
    assert_error(&run(&env, &BY_IDS), "You have to log in");
}

#[test]
fn bad_tokens_send_nothing() {
    use base64::Engine as _;
    let enc = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let expired = format!(
        "{}.{}.sig\n",
        enc(r#"{"alg":"HS256"}"#),
        enc(r#"{"exp":1600000000}"#)
    );
    let env = env_with(State::standard(), Some(&expired));
    assert_error(&run(&env, &BY_IDS), "The token expired");
    let env2 = env_with(State::standard(), Some("12345"));
    assert_error(&run(&env2, &BY_IDS), "Malformed token");
    assert!(env.fake.state().log.is_empty());
    assert!(env2.fake.state().log.is_empty());
}

#[test]
fn argument_errors_send_nothing() {
    let env = env(State::standard());
    assert_error(
        &run(&env, &["--from-release", "1"]),
        "Must specify both a source and a target release",
    );
    assert_error(
        &run(&env, &["--from-release", "abc", "--to-release", "2"]),
        "Invalid value for --from-release option: abc",
    );
    assert_error(
        &run(&env, &with(&["--timeout", "soon"])),
        "Invalid value for --timeout option: soon",
    );
    assert_error(&run(&env, &with(&["--bogus"])), "invalid option: --bogus");
    assert!(env.fake.state().log.is_empty());
}

#[test]
fn help_documents_exit_codes_and_version_flag() {
    let env = env(State::standard());
    for flag in ["--help", "-h"] {
        let run = run(&env, &[flag]);
        assert_eq!(run.code, 0);
        assert!(run.stdout.contains("--poll-interval"));
        assert!(run.stdout.contains("124"), "{}", run.stdout);
    }
    for flag in ["--version", "-v"] {
        let run = run(&env, &[flag]);
        assert_eq!(run.code, 0);
        assert_eq!(
            run.stdout,
            format!("balena-release-update {}\n", env!("CARGO_PKG_VERSION"))
        );
    }
}

#[test]
fn token_from_the_default_data_directory_under_home() {
    let env = env_with(ready_state(), None);
    let default_data = env.home.path().join(".balena");
    std::fs::create_dir(&default_data).unwrap();
    std::fs::write(default_data.join("token"), TOKEN).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_balena-release-update"));
    let out = cmd
        .args(BY_IDS)
        .env_clear()
        .env("HOME", env.home.path())
        .env("RESINRC_API_URL", env.fake.url())
        .env("BALENARC_DELTA_URL", env.fake.url())
        .current_dir(env.cwd.path())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let state = env.fake.state();
    assert!(!state.log.is_empty());
    assert!(state
        .log
        .iter()
        .all(|(_, auth)| auth.as_deref() == Some(&*format!("Bearer {TOKEN}"))));
}

#[test]
fn verbose_logs_go_to_stderr_only() {
    let env = env(State::standard());
    let run = run(&env, &with(&["--prepare", "--verbose"]));
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.json()["overall_status"], "preparing");
    assert!(
        run.stderr.contains(&format!(
            "triggering delta between images {MAIN_FROM} and {MAIN_TO}"
        )),
        "{}",
        run.stderr
    );
}

#[test]
fn registry_flags_of_the_store_mode_need_a_store() {
    let env = env(State::standard());
    for extra in [
        &["--insecure-registry", "127.0.0.1:5000"][..],
        &["--platform", "linux/arm64"][..],
    ] {
        let mut args = vec!["--from-release", "900813", "--to-release", "900814"];
        args.extend_from_slice(extra);
        assert_error(
            &run(&env, &args),
            "--insecure-registry and --platform need --store",
        );
    }
    // A malformed platform is refused before anything is asked.
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().display().to_string();
    let mut args = vec![
        "--store",
        store.as_str(),
        "--from-release",
        "1",
        "--to-release",
        "2",
    ];
    args.extend_from_slice(&["--platform", "linux"]);
    assert_error(
        &run(&env, &args),
        "--platform: invalid platform \"linux\": expected OS/ARCH[/VARIANT]",
    );
}
