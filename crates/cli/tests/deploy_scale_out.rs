//! Issue 10: the deployment files in `deploy/scale-out/` are checked against what they configure:
//! every document is a well-formed Kubernetes object (apiVersion, kind, metadata.name; a
//! Deployment's or StatefulSet's selector matches its pod labels; Services select pods that
//! exist), and every `serve` flag they pass is one the built binary accepts, with the
//! database URL taken from a secret, never written in the file.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use serde_yaml_ng::Value;

const BIN: &str = env!("CARGO_BIN_EXE_balena-release-update");

fn deploy_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/scale-out")
}

/// The long flags `serve --help` lists.
fn serve_flags() -> BTreeSet<String> {
    let out = Command::new(BIN)
        .args(["serve", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter(|w| w.starts_with("--"))
        .map(|w| {
            w.trim_end_matches(|c: char| !c.is_ascii_alphanumeric())
                .to_string()
        })
        .collect()
}

fn documents(file: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(deploy_dir().join(file)).unwrap();
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap_or_else(|e| panic!("{file}: {e}")))
        .filter(|v: &Value| !v.is_null())
        .collect()
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(v, |v, k| v.get(*k))?.as_str()
}

/// Checks the `serve` arguments of a container or compose service.
fn check_serve_args(args: &Value, flags: &BTreeSet<String>, what: &str) {
    let args: Vec<&str> = args
        .as_sequence()
        .unwrap_or_else(|| panic!("{what}: args"))
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(args.first(), Some(&"serve"), "{what}");
    for arg in &args[1..] {
        let flag = arg.split('=').next().unwrap();
        assert!(flags.contains(flag), "{what}: serve does not accept {flag}");
        assert!(
            !arg.contains("postgres://"),
            "{what}: a database URL in the file"
        );
    }
}

#[test]
fn kubernetes_manifests_are_well_formed_and_use_real_serve_flags() {
    let flags = serve_flags();
    assert!(flags.contains("--database") && flags.contains("--workers"));
    let mut kinds = BTreeSet::new();
    let mut pod_labels = Vec::new();
    let mut selectors = Vec::new();
    let kustomization = documents("kubernetes/kustomization.yaml");
    let files: Vec<String> = kustomization[0]["resources"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|r| format!("kubernetes/{}", r.as_str().unwrap()))
        .collect();
    assert_eq!(files.len(), 3);
    let mut serve_checked = false;
    for file in &files {
        for doc in documents(file) {
            let kind = str_at(&doc, &["kind"]).unwrap_or_else(|| panic!("{file}: kind"));
            let name = str_at(&doc, &["metadata", "name"])
                .unwrap_or_else(|| panic!("{file}: {kind} without metadata.name"));
            let api = str_at(&doc, &["apiVersion"]).unwrap();
            let expected_api = match kind {
                "Deployment" | "StatefulSet" => "apps/v1",
                "Service" => "v1",
                "PodDisruptionBudget" => "policy/v1",
                "HorizontalPodAutoscaler" => "autoscaling/v2",
                other => panic!("{file}: unexpected kind {other}"),
            };
            assert_eq!(api, expected_api, "{file}: {kind} {name}");
            kinds.insert(kind.to_string());
            match kind {
                "Deployment" | "StatefulSet" => {
                    let selector = &doc["spec"]["selector"]["matchLabels"];
                    let labels = &doc["spec"]["template"]["metadata"]["labels"];
                    assert!(selector.is_mapping(), "{file}: {name} selector");
                    assert_eq!(selector, labels, "{file}: {name} selector vs pod labels");
                    pod_labels.push(labels.clone());
                    for c in doc["spec"]["template"]["spec"]["containers"]
                        .as_sequence()
                        .unwrap()
                    {
                        assert!(str_at(c, &["image"]).is_some(), "{file}: {name} image");
                        if name == "bru-serve" {
                            check_serve_args(&c["args"], &flags, file);
                            let env = c["env"].as_sequence().unwrap();
                            let db = env
                                .iter()
                                .find(|e| str_at(e, &["name"]) == Some("BRU_DATABASE_URL"))
                                .expect("BRU_DATABASE_URL");
                            assert!(
                                db["valueFrom"]["secretKeyRef"].is_mapping(),
                                "the database URL comes from a secret"
                            );
                            serve_checked = true;
                        }
                    }
                }
                "Service" | "PodDisruptionBudget" => {
                    let selector = match kind {
                        "Service" => doc["spec"]["selector"].clone(),
                        _ => doc["spec"]["selector"]["matchLabels"].clone(),
                    };
                    selectors.push((format!("{file}: {kind} {name}"), selector));
                }
                _ => {}
            }
        }
    }
    assert!(serve_checked);
    for (what, selector) in selectors {
        let selector = selector.as_mapping().unwrap();
        assert!(
            pod_labels
                .iter()
                .any(|labels| selector.iter().all(|(k, v)| labels.get(k) == Some(v))),
            "{what} selects no pods"
        );
    }
    assert!(kinds.contains("Deployment") && kinds.contains("StatefulSet"));
}

#[test]
fn the_compose_file_runs_serve_with_real_flags_on_postgres_and_s3() {
    let flags = serve_flags();
    let compose = &documents("compose.yaml")[0];
    let services = compose["services"].as_mapping().unwrap();
    let serve = &compose["services"]["serve"];
    check_serve_args(&serve["command"], &flags, "compose serve");
    let url = str_at(serve, &["environment", "BRU_DATABASE_URL"]).unwrap();
    assert!(
        url.starts_with("postgres://") && url.contains("${POSTGRES_PASSWORD}"),
        "{url}"
    );
    assert!(serve["deploy"]["replicas"].as_u64().unwrap() >= 2);
    assert_eq!(
        str_at(
            compose,
            &["services", "registry", "environment", "REGISTRY_STORAGE"]
        ),
        Some("s3")
    );
    for dep in ["postgres", "registry"] {
        assert!(services.contains_key(dep), "{dep}");
        assert!(
            serve["depends_on"].get(dep).is_some(),
            "serve depends on {dep}"
        );
    }
}
