//! Writes the demo fleet of `examples/demo`: small OCI images of three releases and the
//! `fleet.json` that a store directory imports on first use. Deterministic: running it
//! again rewrites the same bytes.
//!
//! `cargo run -p bru-service --example make-demo -- examples/demo`

use std::collections::BTreeMap;
use std::path::PathBuf;

use bru_oci::{tar_of, ImageSpec, OciDir};
use sha2::{Digest as _, Sha256};

/// `len` pseudo-random bytes derived from `seed` (sha256 in counter mode): stands in for
/// binaries, which do not compress.
fn noise(seed: &str, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 32);
    let mut counter = 0u64;
    while out.len() < len {
        out.extend_from_slice(&Sha256::digest(format!("{seed}/{counter}").as_bytes()));
        counter += 1;
    }
    out.truncate(len);
    out
}

/// `base` with a few bytes changed at `at` and `extra` bytes appended: a new build of the
/// same program.
fn patched(base: &[u8], at: usize, version: &str, extra: usize) -> Vec<u8> {
    let mut out = base.to_vec();
    let stamp = format!("build {version}");
    out[at..at + stamp.len()].copy_from_slice(stamp.as_bytes());
    out.extend(noise(version, extra));
    out
}

fn commit(n: u32) -> String {
    hex::encode(Sha256::digest(format!("demo release {n}").as_bytes()))[..40].to_string()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(std::env::args().nth(1).ok_or("usage: make-demo OUT_DIR")?);
    let images = out.join("images");
    if images.exists() {
        std::fs::remove_dir_all(&images)?;
    }
    let dir = OciDir::create(&images)?;

    // A base layer every service shares (the "OS"), then one application layer.
    let os_release = b"NAME=\"Demo OS\"\nVERSION_ID=1\n";
    let base = tar_of(&[
        ("etc/os-release", os_release),
        ("lib/libdemo.so", &noise("libdemo", 40 * 1024)),
    ]);
    let api1 = noise("api", 24 * 1024);
    let web1 = noise("frontend", 16 * 1024);
    let worker1 = noise("worker", 12 * 1024);
    let legacy = noise("legacy", 8 * 1024);
    let app = |files: &[(&str, &[u8])]| ImageSpec::new(vec![base.clone(), tar_of(files)]);
    let specs: Vec<(&str, ImageSpec)> = vec![
        ("api-1", app(&[("app/api", &api1), ("app/VERSION", b"1\n")])),
        (
            "api-2",
            app(&[
                ("app/api", &patched(&api1, 4096, "2", 512)),
                ("app/VERSION", b"2\n"),
            ]),
        ),
        (
            "api-3",
            app(&[
                ("app/api", &patched(&api1, 8192, "3", 1024)),
                ("app/VERSION", b"3\n"),
            ]),
        ),
        ("frontend-1", app(&[("www/app.js", &web1)])),
        (
            "frontend-2",
            app(&[("www/app.js", &patched(&web1, 100, "2", 256))]),
        ),
        ("legacy-1", app(&[("opt/legacy", &legacy)])),
        ("worker-1", app(&[("app/worker", &worker1)])),
        (
            "worker-2",
            app(&[("app/worker", &patched(&worker1, 2000, "2", 128))]),
        ),
    ];
    for (tag, spec) in &specs {
        dir.write_image(tag, spec)?;
    }

    let release = |n: u32, services: &[(&str, &str)]| {
        let services: BTreeMap<&str, String> = services
            .iter()
            .map(|(s, tag)| (*s, format!("oci:images:{tag}")))
            .collect();
        serde_json::json!({ "commit": commit(n), "services": services })
    };
    let fleet = serde_json::json!({
        "fleet": "demo",
        "releases": [
            release(1, &[("api", "api-1"), ("frontend", "frontend-1"), ("legacy", "legacy-1")]),
            release(2, &[("api", "api-2"), ("frontend", "frontend-2"), ("worker", "worker-1")]),
            release(3, &[("api", "api-3"), ("frontend", "frontend-2"), ("worker", "worker-2")]),
        ],
    });
    let mut json = serde_json::to_string_pretty(&fleet)?;
    json.push('\n');
    std::fs::write(out.join("fleet.json"), json)?;
    std::fs::write(
        out.join(".gitignore"),
        "# Database and built deltas of the embedded store.\n/state/\n",
    )?;
    eprintln!("wrote {}", out.display());
    Ok(())
}
