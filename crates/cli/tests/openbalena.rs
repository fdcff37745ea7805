//! Issue 11: an openBalena fleet end to end on loopback, with the operator's own
//! credentials. The real client binary talks to a fake openBalena API (open-balena-api's
//! wire format: no `delta` resource, no `is_created_by__user`, sizes as strings, ES256
//! registry tokens from `/auth/v1/token`), the real `serve` binary verifies those tokens
//! with the API's public key, and Debian's docker-registry holds the images and deltas.

mod bin_support;

use std::path::Path;
use std::process::{Child, Command};

use base64::Engine as _;
use bru_oci::{open_sink, open_source, tar_of, ImageSpec, OciDir, RegistryOptions};
use bru_test_support::openbalena::{self, FakeOpenBalena, Flavour, Image, Release, State, User};
use bru_test_support::{noise, unique_repo, TestRegistry};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_balena-release-update");
const APP: u64 = 10;
const ALICE: &str = "aliceAPIKEYaliceAPIKEY0001";
const BOB: &str = "bobAPIKEYbobAPIKEYbob00002";
const DEVICE: &str = "deviceAPIKEYdeviceAPIKEY03";
const FROM_COMMIT: &str = "0a1b2c3d4e5f60718293a4b5c6d7e8f900112233";
const TO_COMMIT: &str = "f0e1d2c3b4a5968778695a4b3c2d1e0f99887766";

/// One image pushed to the registry as openBalena stores it: `HOST/v2/<name>`.
struct Pushed {
    /// `v2/<name>`.
    repository: String,
    /// `HOST/v2/<name>`, the API's `is_stored_at__image_location`.
    location: String,
    /// The manifest digest, the API's `content_hash`.
    digest: String,
    /// The image ID (config digest), what a rebuild must reproduce.
    image_id: String,
    /// Config plus compressed layers.
    size: u64,
}

/// Two releases of service `main`, each image in its own `v2/<name>` repository.
async fn push_fleet(registry: &str, tmp: &Path) -> (Pushed, Pushed) {
    let layout = OciDir::create(tmp.join("images")).unwrap();
    let base = tar_of(&[("lib/base", &noise(1, 40_000))]);
    let app1 = noise(2, 60_000);
    let mut app2 = app1.clone();
    app2[1000..1010].copy_from_slice(b"0123456789");
    let mut opts = RegistryOptions::default();
    opts.insecure = vec![registry.to_owned()];
    let mut pushed = Vec::new();
    for (tag, app) in [("v1", app1), ("v2", app2)] {
        let spec = ImageSpec::new(vec![base.clone(), tar_of(&[("app/bin", &app)])]);
        let written = layout.write_image(tag, &spec).unwrap();
        let repository = format!("v2/{}", unique_repo(tag).replace('/', "-"));
        let location = format!("{registry}/{repository}");
        let from = format!("oci:{}:{tag}", tmp.join("images").display());
        let src = open_source(&from.parse().unwrap(), &opts).await.unwrap();
        let sink = open_sink(&format!("{location}:latest").parse().unwrap(), &opts)
            .await
            .unwrap();
        let digest = bru_oci::copy_image(&*src, &*sink).await.unwrap();
        let size = written.config.size + written.layers.iter().map(|l| l.size).sum::<u64>();
        pushed.push(Pushed {
            repository,
            location,
            digest: digest.to_string(),
            image_id: written.config.digest.to_string(),
            size,
        });
    }
    let to = pushed.pop().unwrap();
    let from = pushed.pop().unwrap();
    (from, to)
}

fn user(id: u64, name: &str, token: &str, pull_denied: Vec<String>) -> User {
    User {
        id,
        username: name.to_owned(),
        token: token.to_owned(),
        apps: vec![APP],
        pull_denied,
    }
}

/// The fleet as an API of `flavour` serves it: releases 1 and 2 of application 10.
fn api_state(flavour: Flavour, registry: &str, from: &Pushed, to: &Pushed) -> State {
    let mut state = State::new(flavour, registry);
    state.users = vec![
        user(1, "alice", ALICE, Vec::new()),
        user(2, "bob", BOB, vec![from.repository.clone()]),
        user(3, "d_0123456789abcdef", DEVICE, Vec::new()),
    ];
    state.releases = vec![
        Release {
            id: 1,
            commit: FROM_COMMIT.to_owned(),
            app: APP,
            status: "success".to_owned(),
            services: vec![("main".to_owned(), 101)],
        },
        Release {
            id: 2,
            commit: TO_COMMIT.to_owned(),
            app: APP,
            status: "success".to_owned(),
            services: vec![("main".to_owned(), 102)],
        },
    ];
    state.images = vec![
        Image {
            id: 101,
            location: from.location.clone(),
            content_hash: Some(from.digest.clone()),
            size: from.size,
        },
        Image {
            id: 102,
            location: to.location.clone(),
            content_hash: Some(to.digest.clone()),
            size: to.size,
        },
    ];
    state
}

/// Starts `serve` with the API's public key and returns it with its address.
fn spawn_serve(key_pem: &str, registry: &str, dir: &Path) -> (Child, String) {
    std::fs::create_dir_all(dir).unwrap();
    let key = dir.join("registry-token.pub.pem");
    std::fs::write(&key, key_pem).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--poll-seconds", "0"])
        .arg("--store")
        .arg(dir.join("store"))
        .arg("--jwt-public-key")
        .arg(&key)
        .args([
            "--allow-registry",
            registry,
            "--insecure-registry",
            registry,
        ])
        .env_remove("BRU_REGISTRY_CREDS");
    bin_support::start_serve(cmd)
}

/// The client as a user: token file, API and delta URLs from the environment, a home
/// without balenarc files.
struct Client {
    home: tempfile::TempDir,
    api: String,
    delta: String,
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Client {
    fn new(api: &str, delta: &str, token: &str) -> Client {
        let home = tempfile::tempdir().unwrap();
        std::fs::create_dir(home.path().join(".balena")).unwrap();
        std::fs::write(home.path().join(".balena/token"), token).unwrap();
        Client {
            home,
            api: api.to_owned(),
            delta: delta.to_owned(),
        }
    }

    fn run(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let out = Command::new(BIN)
            .args(args)
            .current_dir(self.home.path())
            .env("HOME", self.home.path())
            .env("BALENARC_API_URL", &self.api)
            .env("BALENARC_DELTA_URL", &self.delta)
            .env_remove("BALENARC_DELTA_API")
            .env_remove("RUST_LOG")
            .envs(env.iter().copied())
            .output()
            .unwrap();
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

fn report(run: &Run) -> Value {
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {}", run.stdout))
}

/// `bru_delta_builds_started_total` of `serve`.
fn builds_started(serve: &str) -> u64 {
    let (status, text) = bin_support::http_get(serve, "/metrics", None);
    assert_eq!(status, 200);
    text.lines()
        .find_map(|l| l.strip_prefix("bru_delta_builds_started_total "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// The claims of a JWT (not verified: the test reads what the fake issued).
fn claims_of(jwt: &str) -> Value {
    let payload = jwt.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

fn percent(s: &str) -> String {
    s.replace(':', "%3A").replace('/', "%2F")
}

#[tokio::test(flavor = "multi_thread")]
async fn openbalena_fleet_report_prepare_wait_device_pull_and_refusal() {
    let registry = TestRegistry::shared();
    let tmp = tempfile::tempdir().unwrap();
    let (from, to) = push_fleet(&registry.addr, tmp.path()).await;
    let api = FakeOpenBalena::start(api_state(Flavour::OpenBalena, &registry.addr, &from, &to));
    let (mut serve, serve_addr) = spawn_serve(&api.key.public_pem, &registry.addr, tmp.path());
    let delta_url = format!("http://{serve_addr}");
    let alice = Client::new(&api.url(), &delta_url, ALICE);
    let pair = ["--from-release", "1", "--to-release", &TO_COMMIT[..10]];

    // 1. The report: detected as openBalena, sizes from strings, the delta pending.
    let pending = report(&alice.run(&pair, &[]));
    let main = &pending["is_produced_by__service_update"][0];
    assert_eq!(pending["overall_status"], "pending", "{pending:#}");
    assert_eq!(main["status"], "pending");
    assert_eq!(main["originates_from__image"]["image_size"], from.size);
    assert_eq!(main["produces__image"]["image_size"], to.size);
    assert_eq!(main["produces__image"]["content_hash"], to.digest.as_str());
    assert!(main["produces__image"]
        .get("is_produced_by__delta")
        .is_none());
    assert!(pending.get("estimated_total_payload_size").is_none());
    api.assert_no_violations();
    let token_target = format!(
        "/auth/v1/token?service={}&scope={}&scope={}",
        percent(&registry.addr),
        percent(&format!("repository:{}:pull", to.repository)),
        percent(&format!("repository:{}:pull", from.repository)),
    );
    {
        let state = api.state();
        let targets: Vec<&str> = state.log.iter().map(|l| l.target.as_str()).collect();
        // balenaCloud's release query first (500: no is_created_by__user), the probe for
        // `delta` (401, empty), then openBalena's release queries.
        let cloud_by_id = "/v7/release(1)?$expand=release_image($expand=image($select=id;$expand=is_a_build_of__service($select=service_name))),is_created_by__user($select=id,username)&$filter=status%20eq%20%27success%27".to_owned();
        let cloud_by_commit = format!("/v7/release?$filter=startswith(commit,%27{}%27)%20and%20status%20eq%20%27success%27&$expand=release_image($expand=image($select=id;$expand=is_a_build_of__service($select=service_name))),is_created_by__user($select=id,username)", &TO_COMMIT[..10]);
        let open = "/v7/release(1)?$expand=release_image($expand=image($select=id;$expand=is_a_build_of__service($select=service_name)))&$filter=status%20eq%20%27success%27";
        let by_commit = format!("/v7/release?$filter=startswith(commit,%27{}%27)%20and%20status%20eq%20%27success%27&$expand=release_image($expand=image($select=id;$expand=is_a_build_of__service($select=service_name)))", &TO_COMMIT[..10]);
        let image = |id: u64| {
            format!("/v7/image({id})?$select=id,is_stored_at__image_location,content_hash,image_size&$filter=status%20eq%20%27success%27")
        };
        // Both release queries are sent at once, so the second may or may not go out in
        // balenaCloud's form before the first answer is understood; each at most once,
        // each answered 500.
        let cloud: Vec<&openbalena::Logged> = state
            .log
            .iter()
            .filter(|l| l.target == cloud_by_id || l.target == cloud_by_commit)
            .collect();
        assert!(
            cloud.iter().any(|l| l.target == cloud_by_id),
            "{targets:#?}"
        );
        assert!(cloud.iter().all(|l| l.status == 500), "{targets:#?}");
        assert!(cloud.len() <= 2, "{targets:#?}");
        let probes: Vec<u16> = state
            .log
            .iter()
            .filter(|l| l.target == "/v7/delta?$select=id&$top=1")
            .map(|l| l.status)
            .collect();
        assert_eq!(probes, [401], "{targets:#?}");
        for expected in [open, &by_commit, &image(101), &image(102), &token_target] {
            let hits = targets.iter().filter(|t| **t == expected).count();
            assert_eq!(hits, 1, "{expected} in {targets:#?}");
        }
        // Nothing else: the release queries, one probe, two images, one token.
        assert_eq!(targets.len(), cloud.len() + 6, "{targets:#?}");
        assert!(
            state
                .log
                .iter()
                .all(|l| l.authorization.as_deref() == Some(&*format!("Bearer {ALICE}"))),
            "every request carries the user's token"
        );
    }
    assert_eq!(builds_started(&serve_addr), 0, "a report builds nothing");
    // Parity: the same fleet from a balenaCloud-shaped API without delta rows.
    let cloud = FakeOpenBalena::start(api_state(Flavour::BalenaCloud, &registry.addr, &from, &to));
    let cloud_alice = Client::new(&cloud.url(), &cloud.url(), ALICE);
    assert_eq!(report(&cloud_alice.run(&pair, &[])), pending);

    // 2. --prepare asks serve for the delta with the registry token: serve has claimed a
    // build (its row is running or done; the metrics count it once its task runs).
    let prepared = report(&alice.run(&[&pair[..], &["--prepare"]].concat(), &[]));
    let status = prepared["is_produced_by__service_update"][0]["status"].clone();
    assert!(status == "preparing" || status == "ready", "{prepared:#}");

    // 3. --wait until ready: the delta serve built, and the payload is its size. However
    // often it polls, one process asks the API for each image and a registry token once.
    api.clear_log();
    let ready = report(
        &alice.run(
            &[
                &pair[..],
                &["--wait", "--poll-interval", "0.2", "--timeout", "300"],
            ]
            .concat(),
            &[],
        ),
    );
    assert_eq!(ready["overall_status"], "ready", "{ready:#}");
    let targets = api.targets();
    let count = |prefix: &str| targets.iter().filter(|t| t.starts_with(prefix)).count();
    assert_eq!(count("/auth/v1/token"), 1, "{targets:#?}");
    assert_eq!(count("/v7/image("), 2, "{targets:#?}");
    let delta = ready["is_produced_by__service_update"][0]["produces__image"]
        ["is_produced_by__delta"]
        .clone();
    let name = delta["is_stored_at__location"].as_str().unwrap().to_owned();
    assert!(
        name.starts_with(&format!("{}:delta-", to.location)),
        "{name}"
    );
    assert_eq!(delta["version"], 3);
    let size = delta["size"].as_u64().unwrap();
    assert_eq!(ready["estimated_total_payload_size"], size);
    assert!(size < to.size, "{size} >= {}", to.size);
    let inspect = Command::new(BIN)
        .args(["delta", "inspect", &format!("docker://{name}")])
        .args(["--insecure-registry", &registry.addr])
        .output()
        .unwrap();
    assert!(inspect.status.success(), "{inspect:?}");
    let inspected: Value = serde_json::from_slice(&inspect.stdout).unwrap();
    assert_eq!(
        inspected["download_bytes"], size,
        "the estimate is what a device downloads"
    );
    assert_eq!(builds_started(&serve_addr), 1, "built once");

    // 4. A device: its own registry token (Basic with its API key), the delta by the name
    // serve returns, applied to the source: the target's image ID.
    let basic =
        base64::engine::general_purpose::STANDARD.encode(format!("d_0123456789abcdef:{DEVICE}"));
    let (status, body) = bin_support::http_get(
        &api.addr.to_string(),
        &token_target,
        Some(&format!("Basic {basic}")),
    );
    assert_eq!(status, 200, "{body}");
    let device_token = serde_json::from_str::<Value>(&body).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let claims = claims_of(&device_token);
    assert_eq!(claims["aud"], registry.addr.as_str());
    assert_eq!(claims["sub"], "d_0123456789abcdef");
    let src_ref = format!("{}@{}", from.location, from.digest);
    let dest_ref = format!("{}@{}", to.location, to.digest);
    let (status, body) = bin_support::http_get(
        &serve_addr,
        &format!("/api/v3/delta?src={src_ref}&dest={dest_ref}"),
        Some(&format!("Bearer {device_token}")),
    );
    assert_eq!(status, 200, "{body}");
    let answered: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answered["name"], name.as_str());
    let rebuilt = tmp.path().join("rebuilt");
    let apply = Command::new(BIN)
        .args(["delta", "apply", "--source", &format!("docker://{src_ref}")])
        .args(["--delta", &format!("docker://{name}")])
        .arg("--output")
        .arg(format!("oci:{}:v2", rebuilt.display()))
        .args(["--insecure-registry", &registry.addr])
        .output()
        .unwrap();
    assert!(apply.status.success(), "{apply:?}");
    let applied: Value = serde_json::from_slice(&apply.stdout).unwrap();
    assert_eq!(applied["image_id"], to.image_id.as_str());

    // 5. Refusals: bob reads the releases but may not pull the source repository. The
    // client says so and nothing is built; serve refuses bob's token on its own too.
    api.clear_log();
    let bob = Client::new(&api.url(), &delta_url, BOB);
    let refused = bob.run(&[&pair[..], &["--prepare"]].concat(), &[]);
    assert_eq!(refused.code, 1, "{}", refused.stdout);
    assert_eq!(
        refused.stderr,
        format!(
            "ERROR: Request error: no pull access to repository {} on {}: the API's registry \
             token does not grant it to this user, so the delta server would refuse\n",
            from.repository, registry.addr
        )
    );
    assert_eq!(refused.stdout, "");
    let (status, body) = bin_support::http_get(
        &api.addr.to_string(),
        &token_target,
        Some(&format!("Bearer {BOB}")),
    );
    assert_eq!(status, 200, "{body}");
    let bob_token = serde_json::from_str::<Value>(&body).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let access = &claims_of(&bob_token)["access"];
    assert_eq!(access[1]["name"], from.repository.as_str());
    assert_eq!(
        access[1]["actions"],
        serde_json::json!([]),
        "a denied scope has no actions"
    );
    for path in ["/api/v3/delta", "/api/v3/delta/status"] {
        let (status, body) = bin_support::http_get(
            &serve_addr,
            &format!("{path}?src={src_ref}&dest={dest_ref}"),
            Some(&format!("Bearer {bob_token}")),
        );
        assert_eq!(status, 403, "{path}: {body}");
    }
    assert_eq!(
        builds_started(&serve_addr),
        1,
        "no build for a refused user"
    );
    api.assert_no_violations();

    // 6. The setting instead of detection: no balenaCloud query, no probe.
    api.clear_log();
    let set = report(&alice.run(&pair, &[("BALENARC_DELTA_API", "serve")]));
    assert_eq!(set, ready, "same report with the setting");
    let targets = api.targets();
    assert!(
        targets
            .iter()
            .all(|t| !t.contains("is_created_by__user") && !t.starts_with("/v7/delta")),
        "{targets:#?}"
    );

    // 7. Parity: the balenaCloud-shaped API with the delta row serve keeps (its id, name
    // and size) gives the same report, through its `delta` resource.
    cloud.state().deltas.push(openbalena::DeltaRow {
        id: delta["id"].as_u64().unwrap(),
        src: 101,
        dest: 102,
        status: "success".to_owned(),
        location: Some(name.clone()),
        size,
    });
    cloud.clear_log();
    assert_eq!(report(&cloud_alice.run(&pair, &[])), ready);
    cloud.assert_no_violations();
    let targets = cloud.targets();
    assert!(
        targets.iter().any(|t| t.contains("is_created_by__user"))
            && targets.iter().any(|t| t.starts_with("/v7/delta?$top=1"))
            && !targets.iter().any(|t| t.starts_with("/auth/v1/token")),
        "balenaCloud's requests: {targets:#?}"
    );

    serve.kill().unwrap();
    serve.wait().unwrap();
}

/// Issue 11: refusals are clear errors, and none reaches a build. No registry is needed:
/// every refusal happens before an image is read.
#[test]
fn openbalena_refusals_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let registry = "registry2.openbalena.test";
    let image = |tag: &str, byte: char| Pushed {
        repository: format!("v2/{tag}"),
        location: format!("{registry}/v2/{tag}"),
        digest: format!("sha256:{}", byte.to_string().repeat(64)),
        image_id: String::new(),
        size: 1000,
    };
    let (from, to) = (image("aaaa", 'a'), image("bbbb", 'b'));
    // The API's tokens name another registry than the images' (a misconfigured
    // REGISTRY_TOKEN_AUDIENCE): serve refuses them.
    let mut state = api_state(Flavour::OpenBalena, "elsewhere.test", &from, &to);
    state.images.push(Image {
        id: 103,
        location: "not-a-registry-location".to_owned(),
        content_hash: None,
        size: 5,
    });
    state.releases.push(Release {
        id: 3,
        commit: "c0c0c0c0c0c0c0c0c0c0".to_owned(),
        app: APP,
        status: "success".to_owned(),
        services: vec![("main".to_owned(), 103)],
    });
    let api = FakeOpenBalena::start(state);
    let (mut serve, serve_addr) = spawn_serve(&api.key.public_pem, registry, tmp.path());
    let delta_url = format!("http://{serve_addr}");
    let error_of = |token: Option<&str>, args: &[&str]| {
        let client = Client::new(&api.url(), &delta_url, token.unwrap_or(""));
        let run = client.run(args, &[]);
        assert_eq!(run.code, 1, "{args:?}: {}", run.stdout);
        assert_eq!(run.stdout, "");
        assert!(run.stderr.starts_with("ERROR: "), "{}", run.stderr);
        run.stderr
    };
    let pair = ["--from-release", "1", "--to-release", "2"];

    let e = error_of(Some(ALICE), &pair);
    assert!(
        e.contains("delta server") && e.contains(&format!("not for registry {registry}")),
        "{e}"
    );
    let e = error_of(Some("an-api-key-openbalena-does-not-know"), &pair);
    assert_eq!(e.trim_end(), "ERROR: Request error: Unauthorized");
    let e = error_of(None, &pair);
    assert_eq!(e.trim_end(), "ERROR: You have to log in");
    let e = error_of(Some(ALICE), &["--from-release", "1", "--to-release", "3"]);
    assert!(e.contains("image 103 is not stored on a registry"), "{e}");
    // The token endpoint refuses the user's token, or answers something that is no JWT.
    api.state().token_fault = Some((401, String::new()));
    let e = error_of(Some(ALICE), &pair);
    assert!(
        e.starts_with("ERROR: Request error: the API refused the stored token when asked for a registry token (")
            && e.trim_end().ends_with("); log in again"),
        "{e}"
    );
    api.state().token_fault = Some((200, r#"{"token":"not-a-jwt"}"#.to_owned()));
    let e = error_of(Some(ALICE), &pair);
    assert_eq!(
        e.trim_end(),
        "ERROR: the registry token is not a readable JWT"
    );
    api.state().token_fault = None;
    assert_eq!(builds_started(&serve_addr), 0);
    api.assert_no_violations();

    // With the right audience serve reads the images, and an unreachable registry is its
    // error, passed on.
    let api = FakeOpenBalena::start(api_state(Flavour::OpenBalena, registry, &from, &to));
    let (mut serve2, serve2_addr) =
        spawn_serve(&api.key.public_pem, registry, &tmp.path().join("2"));
    let client = Client::new(&api.url(), &format!("http://{serve2_addr}"), ALICE);
    let run = client.run(&pair, &[]);
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert_eq!(
        run.stderr,
        "ERROR: Request error: delta server: the registry is unavailable\n"
    );
    assert_eq!(builds_started(&serve2_addr), 0);
    for child in [&mut serve, &mut serve2] {
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
