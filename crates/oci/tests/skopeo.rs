//! Interoperability with skopeo (containers/image), an independent implementation of the OCI
//! layout, docker-archive and registry transports. Needs Debian's `skopeo` (CI installs it).

mod common;

use std::path::Path;
use std::process::Command;

use bru_oci::{
    open_sink, open_source, tar_of, ImageReference, ImageSpec, ManifestFormat, OciDir,
    RegistryOptions,
};
use common::{read_blob, unique_repo, TestRegistry};

const SKOPEO: &str = "/usr/bin/skopeo";

fn skopeo(args: &[&str]) {
    let out = Command::new(SKOPEO)
        .arg("--insecure-policy")
        .args(args)
        .output()
        .expect("run skopeo");
    assert!(
        out.status.success(),
        "skopeo {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn require_skopeo() {
    assert!(
        Path::new(SKOPEO).exists(),
        "{SKOPEO} is missing: install Debian's skopeo package (apt-get install skopeo)"
    );
}

fn r(s: String) -> ImageReference {
    s.parse().unwrap()
}

#[tokio::test]
async fn skopeo_reads_what_we_write_and_we_read_what_it_writes() {
    require_skopeo();
    let tmp = tempfile::tempdir().unwrap();
    let t = |n: &str| tmp.path().join(n).display().to_string();
    let dir = OciDir::create(t("ours")).unwrap();
    // skopeo 1.9 only looks at index.json entries with OCI media types.
    let mut spec = ImageSpec::new(vec![
        tar_of(&[("etc/issue", b"test\n")]),
        tar_of(&[("usr/app", &[3u8; 20_000][..])]),
    ]);
    spec.format = ManifestFormat::Oci;
    let w = dir.write_image("v1", &spec).unwrap();
    let o = RegistryOptions::default();

    // Our docker-archive, read by skopeo, copied to an OCI layout and read back by us.
    let src = open_source(&r(format!("oci:{}:v1", t("ours"))), &o)
        .await
        .unwrap();
    let img = src.image().await.unwrap();
    let sink = open_sink(&r(format!("docker-archive:{}:app:v1", t("ours.tar"))), &o)
        .await
        .unwrap();
    for d in std::iter::once(&w.config).chain(&w.layers) {
        sink.put_blob(&dir.blob_path(&d.digest), d).await.unwrap();
    }
    sink.put_manifest(&img.manifest_bytes, &img.manifest_media_type)
        .await
        .unwrap();
    sink.finish().await.unwrap();
    skopeo(&[
        "copy",
        "-q",
        &format!("docker-archive:{}", t("ours.tar")),
        &format!("oci:{}:x", t("sko")),
    ]);
    let back = open_source(&r(format!("oci:{}:x", t("sko"))), &o)
        .await
        .unwrap();
    let back_img = back.image().await.unwrap();
    assert_eq!(back_img.config.diff_ids, w.diff_ids);
    for l in &back_img.manifest.layers {
        read_blob(back.as_ref(), l).await.unwrap();
    }

    // skopeo's docker-archive, read by us.
    skopeo(&[
        "copy",
        "-q",
        &format!("oci:{}:v1", t("ours")),
        &format!("docker-archive:{}:app:v2", t("sko.tar")),
    ]);
    let a = open_source(&r(format!("docker-archive:{}:app:v2", t("sko.tar"))), &o)
        .await
        .unwrap();
    let a_img = a.image().await.unwrap();
    assert_eq!(a_img.config.diff_ids, w.diff_ids);
    for l in &a_img.manifest.layers {
        read_blob(a.as_ref(), l).await.unwrap();
    }

    // skopeo pushes our layout to the registry; we pull it with identical manifest bytes.
    let reg = TestRegistry::shared();
    let repo = unique_repo("skopeo");
    skopeo(&[
        "copy",
        "-q",
        "--dest-tls-verify=false",
        "--preserve-digests",
        &format!("oci:{}:v1", t("ours")),
        &format!("docker://{}/{repo}:v1", reg.addr),
    ]);
    let mut ro = RegistryOptions::default();
    ro.insecure = vec![reg.addr.clone()];
    let pulled = open_source(&r(format!("docker://{}/{repo}:v1", reg.addr)), &ro)
        .await
        .unwrap()
        .image()
        .await
        .unwrap();
    assert_eq!(pulled.manifest_digest, w.manifest.digest);
    assert_eq!(pulled.config_bytes, w.config_bytes);
}
