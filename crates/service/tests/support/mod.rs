//! Small images and an embedded backend over a temporary store.

#![allow(dead_code)] // each test binary uses a part

use std::path::Path;
use std::sync::Arc;

use bru_oci::{tar_of, ImageSpec, OciDir};
use bru_service::{BuilderConfig, ClaimPolicy, DeltaBuilder, Embedded, SqliteStore};

pub use bru_test_support::noise;

/// Writes a two-image layout (tags `v1`, `v2`: a shared base layer, an app layer that
/// changes a little) and returns the two references.
pub fn two_images(dir: &Path) -> (String, String) {
    let layout = OciDir::create(dir).unwrap();
    let base = tar_of(&[("lib/base", &noise(1, 20_000))]);
    let app1 = noise(2, 30_000);
    let mut app2 = app1.clone();
    app2[1000..1010].copy_from_slice(b"0123456789");
    for (tag, app) in [("v1", app1), ("v2", app2)] {
        let spec = ImageSpec::new(vec![base.clone(), tar_of(&[("app/bin", &app)])]);
        layout.write_image(tag, &spec).unwrap();
    }
    (
        format!("oci:{}:v1", dir.display()),
        format!("oci:{}:v2", dir.display()),
    )
}

/// Like [`two_images`], but the app binary is "rebuilt": a byte changed every ~100 bytes,
/// so deltas for slow and fast device links differ.
pub fn rebuilt_binary(dir: &Path) -> (String, String) {
    let layout = OciDir::create(dir).unwrap();
    let app1 = noise(3, 200_000);
    let mut app2 = app1.clone();
    for i in (500..app2.len()).step_by(97) {
        app2[i] = app2[i].wrapping_add(1);
    }
    for (tag, app) in [("v1", app1), ("v2", app2)] {
        let spec = ImageSpec::new(vec![tar_of(&[("app/bin", &app)])]);
        layout.write_image(tag, &spec).unwrap();
    }
    (
        format!("oci:{}:v1", dir.display()),
        format!("oci:{}:v2", dir.display()),
    )
}

/// A backend over the database `db` with deltas under `deltas`.
pub async fn backend(db: &Path, deltas: &Path, owner: &str, policy: ClaimPolicy) -> Embedded {
    let store = SqliteStore::open(db).await.unwrap();
    Embedded::new(
        Arc::new(store),
        DeltaBuilder::new(BuilderConfig::new(deltas)),
        owner,
        policy,
    )
}

/// Writes `n + 1` images of one service into a layout (tags `v0` … `vN`: a shared base
/// layer, an app binary of `app_len` bytes changed a little in each) and returns their
/// references: `n` image pairs (`v0` → `vI`), each its own delta.
pub fn variants(dir: &Path, n: usize, app_len: usize) -> Vec<String> {
    let layout = OciDir::create(dir).unwrap();
    let base = tar_of(&[("lib/base", &noise(1, 20_000))]);
    let app = noise(2, app_len);
    (0..=n)
        .map(|i| {
            let mut app = app.clone();
            if i > 0 {
                let at = (i * 997) % (app_len - 16);
                app[at..at + 16].copy_from_slice(format!("variant{i:09}").as_bytes());
            }
            let tag = format!("v{i}");
            let spec = ImageSpec::new(vec![base.clone(), tar_of(&[("app/bin", &app)])]);
            layout.write_image(&tag, &spec).unwrap();
            format!("oci:{}:{tag}", dir.display())
        })
        .collect()
}
