//! Issue 10: the deployment files in `deploy/scale-out/` are checked against what they configure.
//!
//! * Schema: every Kubernetes object validates against the official Kubernetes 1.30 JSON schema
//!   of its kind (the standalone-strict variant, derived from the Kubernetes OpenAPI: unknown
//!   fields are errors), and every Compose file against the Compose Specification schema. The
//!   schemas are vendored in `tests/data/schemas/` (see its README), so this runs offline.
//! * Meaning: a Deployment's or StatefulSet's selector matches its pod labels, Services select
//!   pods that exist, and every `serve` flag the files pass is one the built binary accepts,
//!   with the database URL taken from a secret, never written in the file.

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
    parse_documents(&text, file)
}

/// The non-empty documents of a YAML stream.
fn parse_documents(text: &str, what: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap_or_else(|e| panic!("{what}: {e}")))
        .filter(|v: &Value| !v.is_null())
        .collect()
}

/// The Kubernetes version whose API the manifests are checked against.
const KUBERNETES_SCHEMAS: &str = "kubernetes-v1.30.0-standalone-strict";

fn schema_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/schemas")
}

fn compile_schema(file: &Path, draft: jsonschema::Draft) -> jsonschema::Validator {
    let text = std::fs::read_to_string(file).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (vendor the schema, see its README)",
            file.display()
        )
    });
    let schema: serde_json::Value = serde_json::from_str(&text).unwrap();
    jsonschema::options()
        .with_draft(draft)
        .build(&schema)
        .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
}

/// The schema file of a Kubernetes object, named as the schema repositories name them:
/// `<kind>-<group>-<version>.json`, the group cut at its first dot and absent for the core group
/// (`Deployment` `apps/v1` → `deployment-apps-v1.json`, `Service` `v1` → `service-v1.json`).
fn kubernetes_schema_file(api_version: &str, kind: &str) -> std::path::PathBuf {
    let suffix = match api_version.split_once('/') {
        Some((group, version)) => {
            format!("{}-{version}", group.split('.').next().unwrap_or(group))
        }
        None => api_version.to_string(),
    };
    schema_dir()
        .join(KUBERNETES_SCHEMAS)
        .join(format!("{}-{suffix}.json", kind.to_ascii_lowercase()))
}

/// Every way `doc` breaks the strict Kubernetes schema of its kind, one line each.
fn kubernetes_schema_errors(doc: &Value) -> Vec<String> {
    let api_version = str_at(doc, &["apiVersion"]).unwrap_or_default();
    let kind = str_at(doc, &["kind"]).unwrap_or_default();
    // The Kubernetes schemas are written for draft 4 (openapi2jsonschema).
    let validator = compile_schema(
        &kubernetes_schema_file(api_version, kind),
        jsonschema::Draft::Draft4,
    );
    schema_errors(&validator, doc)
}

/// Every way `doc` breaks the Compose Specification, one line each.
fn compose_schema_errors(doc: &Value) -> Vec<String> {
    let validator = compile_schema(
        &schema_dir().join("compose-spec/compose-spec.json"),
        jsonschema::Draft::Draft7,
    );
    schema_errors(&validator, doc)
}

fn schema_errors(validator: &jsonschema::Validator, doc: &Value) -> Vec<String> {
    let json = serde_json::to_value(doc).unwrap();
    validator
        .iter_errors(&json)
        .map(|e| format!("at {}: {e}", e.instance_path()))
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

#[test]
fn kubernetes_manifests_match_the_strict_kubernetes_schemas() {
    let mut checked = BTreeSet::new();
    let mut failures = Vec::new();
    for file in ["postgres.yaml", "registry.yaml", "serve.yaml"] {
        for doc in documents(&format!("kubernetes/{file}")) {
            let kind = str_at(&doc, &["kind"]).unwrap_or_default().to_string();
            let name = str_at(&doc, &["metadata", "name"]).unwrap_or_default();
            for error in kubernetes_schema_errors(&doc) {
                failures.push(format!("{file}: {kind} {name} {error}"));
            }
            checked.insert(kind);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let expected = [
        "Deployment",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "Service",
        "StatefulSet",
    ];
    assert_eq!(checked, expected.map(String::from).into());
}

#[test]
fn compose_files_match_the_compose_specification() {
    for (dir, file) in [
        (deploy_dir(), "compose.yaml"),
        (deploy_dir().join(".."), "docker-compose.delta.yml"),
    ] {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        let docs = parse_documents(&text, file);
        assert_eq!(docs.len(), 1, "{file}");
        let errors = compose_schema_errors(&docs[0]);
        assert!(errors.is_empty(), "{file}:\n{}", errors.join("\n"));
    }
}

/// The validators are not vacuous: a wrong type and an unknown field (the strict schema's
/// point) are each reported where they are, in a Deployment and in a Compose file.
#[test]
fn the_schema_validators_reject_invalid_files() {
    let deployment = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: broken
spec:
  replicas: three
  selector:
    matchLabels: {app: broken}
  template:
    metadata:
      labels: {app: broken}
    spec:
      containers:
        - name: serve
          image: balena-release-update:0.1.0
          imagePullPolicey: Always
"#;
    let errors = kubernetes_schema_errors(&parse_documents(deployment, "deployment")[0]);
    let at = |path: &str| errors.iter().any(|e| e.starts_with(&format!("at {path}:")));
    assert!(at("/spec/replicas"), "{errors:?}");
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("at /spec/template/spec/containers/0:")
                && e.contains("imagePullPolicey")),
        "{errors:?}"
    );
    assert_eq!(errors.len(), 2, "{errors:?}");
    // The same Deployment, fixed, is valid: the errors above are the two mistakes.
    let fixed = deployment
        .replace("replicas: three", "replicas: 3")
        .replace("imagePullPolicey", "imagePullPolicy");
    assert_eq!(
        kubernetes_schema_errors(&parse_documents(&fixed, "fixed")[0]),
        Vec::<String>::new()
    );

    let compose = r#"
services:
  serve:
    image: balena-release-update:0.1.0
    deploy: {replicas: 2.5}
    comand: [serve]
"#;
    let errors = compose_schema_errors(&parse_documents(compose, "compose")[0]);
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("at /services/serve/deploy/replicas:")),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("at /services/serve:") && e.contains("comand")),
        "{errors:?}"
    );
}
