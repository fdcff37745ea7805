//! `balena-release-update delta create|apply|inspect` as a user runs it: the real
//! binary on OCI layouts, JSON on stdout, `ERROR:` and exit 1 on bad input.

use std::path::Path;

use bru_oci::{tar_of, ImageSpec, OciDir, WrittenImage};

mod bin_support;

use bin_support::{json, run};

struct Images {
    dir: tempfile::TempDir,
    source: WrittenImage,
    target: WrittenImage,
}

fn images() -> Images {
    let dir = tempfile::tempdir().unwrap();
    let oci = OciDir::create(dir.path().join("images")).unwrap();
    let base = tar_of(&[
        ("etc/os-release", b"ID=balena\n"),
        ("bin/tool", &[7u8; 40_000]),
    ]);
    let app = |v: &str| {
        let mut js = b"console.log('hello world');\n".repeat(300);
        js.extend_from_slice(v.as_bytes());
        tar_of(&[("app/index.js", &js)])
    };
    let source = oci
        .write_image("v1", &ImageSpec::new(vec![base.clone(), app("1")]))
        .unwrap();
    let target = oci
        .write_image("v2", &ImageSpec::new(vec![base, app("2")]))
        .unwrap();
    Images {
        dir,
        source,
        target,
    }
}

fn oci(dir: &Path, sub: &str, tag: &str) -> String {
    format!("oci:{}:{tag}", dir.join(sub).display())
}

#[test]
fn create_inspect_apply_round_trip_with_a_stable_json_contract() {
    let im = images();
    let (src, dst) = (
        oci(im.dir.path(), "images", "v1"),
        oci(im.dir.path(), "images", "v2"),
    );
    let delta = oci(im.dir.path(), "delta", "d1");
    let created = json(&run(&[
        "delta", "create", "--source", &src, "--target", &dst, "--output", &delta,
    ]));

    // Field order is part of the contract.
    let keys: Vec<&str> = created
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "manifest_digest",
            "base_image_id",
            "target_image_id",
            "layer_count",
            "common_prefix",
            "layers",
            "config_bytes",
            "total_compressed_bytes",
            "download_bytes"
        ]
    );
    assert_eq!(
        created["base_image_id"],
        im.source.config.digest.to_string()
    );
    assert_eq!(
        created["target_image_id"],
        im.target.config.digest.to_string()
    );
    assert_eq!(created["layer_count"], 2);
    assert_eq!(created["common_prefix"], 1);
    let layers = created["layers"].as_array().unwrap();
    assert_eq!(layers[0]["kind"], "common");
    assert_eq!(layers[1]["kind"], "delta");
    assert!(layers[1]["delta_bytes"].as_u64().unwrap() > 0);
    assert!(
        layers[1]["copied_bytes"].as_u64().unwrap() > 8_000,
        "{created}"
    );
    let keys: Vec<&str> = layers[1]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "index",
            "kind",
            "digest",
            "compressed_bytes",
            "delta_bytes",
            "copied_bytes",
            "literal_bytes",
            "copy_commands",
            "literal_commands"
        ]
    );
    assert!(layers[1]["copy_commands"].as_u64().unwrap() >= 1);
    assert!(layers[1]["literal_commands"].as_u64().is_some());
    let total = created["total_compressed_bytes"].as_u64().unwrap();
    assert_eq!(total, layers[1]["compressed_bytes"].as_u64().unwrap());
    assert_eq!(
        created["download_bytes"].as_u64().unwrap(),
        total + created["config_bytes"].as_u64().unwrap()
    );
    assert!(created["manifest_digest"]
        .as_str()
        .unwrap()
        .starts_with("sha256:"));

    // inspect reads back the same description, minus what only the build knows.
    let inspected = json(&run(&["delta", "inspect", &delta]));
    for key in [
        "manifest_digest",
        "base_image_id",
        "target_image_id",
        "common_prefix",
        "total_compressed_bytes",
    ] {
        assert_eq!(inspected[key], created[key], "{key}");
    }
    assert!(inspected["layers"][1].get("delta_bytes").is_none());

    let out = oci(im.dir.path(), "applied", "v2");
    let applied = json(&run(&[
        "delta", "apply", "--source", &src, "--delta", &delta, "--output", &out,
    ]));
    assert_eq!(applied["image_id"], im.target.config.digest.to_string());
    let diff_ids: Vec<String> = applied["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["diff_id"].as_str().unwrap().to_owned())
        .collect();
    let expected: Vec<String> = im.target.diff_ids.iter().map(ToString::to_string).collect();
    assert_eq!(diff_ids, expected);
    assert_eq!(applied["layers"][0]["from_source"], true);
    assert_eq!(applied["layers"][1]["from_source"], false);
}

#[test]
fn bad_inputs_print_error_and_exit_1_with_nothing_on_stdout() {
    let im = images();
    let (src, dst) = (
        oci(im.dir.path(), "images", "v1"),
        oci(im.dir.path(), "images", "v2"),
    );
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "delta".into(),
                "create".into(),
                "--source".into(),
                "oci:/nonexistent/layout".into(),
                "--target".into(),
                dst.clone(),
                "--output".into(),
                oci(im.dir.path(), "o", "x"),
            ],
            "not found",
        ),
        (
            vec![
                "delta".into(),
                "create".into(),
                "--source".into(),
                "ftp://x/y".into(),
                "--target".into(),
                dst.clone(),
                "--output".into(),
                oci(im.dir.path(), "o", "x"),
            ],
            "invalid image reference",
        ),
        (
            vec![
                "delta".into(),
                "apply".into(),
                "--source".into(),
                src.clone(),
                "--delta".into(),
                dst.clone(),
                "--output".into(),
                oci(im.dir.path(), "o", "y"),
            ],
            "not a balena delta",
        ),
        (
            vec![
                "delta".into(),
                "inspect".into(),
                oci(im.dir.path(), "images", "nope"),
            ],
            "nope",
        ),
        (
            vec![
                "delta".into(),
                "create".into(),
                "--source".into(),
                src.clone(),
                "--target".into(),
                dst.clone(),
                "--output".into(),
                oci(im.dir.path(), "o", "z"),
                "--platform".into(),
                "linux".into(),
            ],
            "--platform",
        ),
    ];
    for (args, needle) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let r = run(&args);
        assert_eq!(r.code, 1, "{args:?}: {}", r.stderr);
        assert!(r.stdout.is_empty(), "{args:?}: stdout {}", r.stdout);
        assert!(r.stderr.starts_with("ERROR: "), "{args:?}: {}", r.stderr);
        assert!(
            r.stderr.contains(needle),
            "{args:?}: {needle:?} not in {}",
            r.stderr
        );
    }
}

#[test]
fn apply_max_output_bytes_bounds_the_rebuilt_bytes() {
    let im = images();
    let (src, dst) = (
        oci(im.dir.path(), "images", "v1"),
        oci(im.dir.path(), "images", "v2"),
    );
    let delta = oci(im.dir.path(), "delta", "d1");
    json(&run(&[
        "delta", "create", "--source", &src, "--target", &dst, "--output", &delta,
    ]));
    let apply = |out: &str, limit: &str| {
        run(&[
            "delta",
            "apply",
            "--source",
            &src,
            "--delta",
            &delta,
            "--output",
            out,
            "--max-output-bytes",
            limit,
        ])
    };

    // Below the rebuilt layer's size: refused, and no output appears.
    let small = oci(im.dir.path(), "small", "v2");
    let r = apply(&small, "1KiB");
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stdout.is_empty(), "{}", r.stdout);
    assert!(r.stderr.starts_with("ERROR: "), "{}", r.stderr);
    assert!(
        r.stderr
            .contains("the rebuilt layer exceeds the limit of 1024 bytes"),
        "{}",
        r.stderr
    );
    assert!(!im.dir.path().join("small").exists());

    // Room enough: the same apply succeeds.
    let out = oci(im.dir.path(), "applied", "v2");
    let applied = json(&apply(&out, "1MiB"));
    assert_eq!(applied["image_id"], im.target.config.digest.to_string());

    // A size that does not parse is a usage error.
    let r = apply(&oci(im.dir.path(), "bad", "v2"), "12 parsecs");
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.starts_with("ERROR: "), "{}", r.stderr);
    assert!(r.stderr.contains("unknown unit"), "{}", r.stderr);
    assert!(!im.dir.path().join("bad").exists());
}

#[test]
fn a_moved_layer_names_the_source_layer_it_copies() {
    // The target puts the source's base layer on top of a new one.
    let dir = tempfile::tempdir().unwrap();
    let oci_dir = OciDir::create(dir.path().join("images")).unwrap();
    let base = tar_of(&[
        ("etc/os-release", b"ID=balena\n"),
        ("bin/tool", &[7u8; 40_000]),
    ]);
    let app = tar_of(&[("app/index.js", b"console.log(1);\n")]);
    let fresh = tar_of(&[("etc/new", b"a new bottom layer\n")]);
    oci_dir
        .write_image("v1", &ImageSpec::new(vec![base.clone(), app]))
        .unwrap();
    oci_dir
        .write_image("v2", &ImageSpec::new(vec![fresh, base]))
        .unwrap();
    let created = json(&run(&[
        "delta",
        "create",
        "--source",
        &oci(dir.path(), "images", "v1"),
        "--target",
        &oci(dir.path(), "images", "v2"),
        "--output",
        &oci(dir.path(), "delta", "d"),
    ]));
    let layers = created["layers"].as_array().unwrap();
    assert!(layers[0].get("copies_source_layer").is_none(), "{created}");
    let moved = layers[1].as_object().unwrap();
    assert_eq!(moved["copies_source_layer"], 0, "{created}");
    assert_eq!(moved["copy_commands"], 1);
    assert_eq!(moved["literal_commands"], 0);
    // The field comes last: the order of the others is unchanged.
    assert_eq!(
        moved.keys().next_back().map(String::as_str),
        Some("copies_source_layer")
    );
}
