//! Push and pull against a real registry (Debian's docker-registry).

mod common;

use bru_oci::{
    media_type, open_sink, open_source, tar_of, Credentials, ImageReference, ImageSink, ImageSpec,
    Index, OciDir, OciError, Platform, PutOutcome, RegistryOptions, WrittenImage,
};
use common::{read_blob, unique_repo, TestRegistry};

fn opts(addr: &str) -> RegistryOptions {
    let mut o = RegistryOptions::default();
    o.insecure = vec![addr.to_string()];
    o.docker_config = Some("/nonexistent/config.json".into());
    o
}

fn image(dir: &OciDir, tag: &str, arch: &str, payload: &[u8]) -> WrittenImage {
    let mut spec = ImageSpec::new(vec![
        tar_of(&[("etc/base", b"shared base layer")]),
        tar_of(&[("app/payload", payload)]),
    ]);
    spec.architecture = Some(arch.into());
    dir.write_image(tag, &spec).unwrap()
}

async fn push(sink: &dyn ImageSink, dir: &OciDir, w: &WrittenImage) -> Vec<PutOutcome> {
    let mut outcomes = Vec::new();
    for d in std::iter::once(&w.config).chain(&w.layers) {
        outcomes.push(sink.put_blob(&dir.blob_path(&d.digest), d).await.unwrap());
    }
    let bytes = dir.read_blob(&w.manifest).unwrap();
    let digest = sink
        .put_manifest(&bytes, &w.manifest.media_type)
        .await
        .unwrap();
    assert_eq!(digest, w.manifest.digest);
    sink.finish().await.unwrap();
    outcomes
}

fn reference(s: String) -> ImageReference {
    s.parse().unwrap()
}

#[tokio::test]
async fn push_then_pull_by_tag_and_digest() {
    let reg = TestRegistry::shared();
    let tmp = tempfile::tempdir().unwrap();
    let dir = OciDir::create(tmp.path()).unwrap();
    let w = image(&dir, "v1", "amd64", &[9u8; 100_000]);
    let repo = unique_repo("push");
    let o = opts(&reg.addr);

    let sink = open_sink(&reference(format!("docker://{}/{repo}:v1", reg.addr)), &o)
        .await
        .unwrap();
    let first = push(sink.as_ref(), &dir, &w).await;
    assert!(
        first.iter().all(|x| *x == PutOutcome::Uploaded),
        "{first:?}"
    );
    // Pushing again only HEADs the blobs.
    let second = push(sink.as_ref(), &dir, &w).await;
    assert!(
        second.iter().all(|x| *x == PutOutcome::AlreadyPresent),
        "{second:?}"
    );

    for r in [
        format!("docker://{}/{repo}:v1", reg.addr),
        format!("{}/{repo}@{}", reg.addr, w.manifest.digest),
    ] {
        let src = open_source(&reference(r), &o).await.unwrap();
        let img = src.image().await.unwrap();
        assert_eq!(img.manifest_bytes, dir.read_blob(&w.manifest).unwrap());
        assert_eq!(img.manifest_digest, w.manifest.digest);
        assert_eq!(img.manifest_media_type, media_type::DOCKER_MANIFEST);
        assert_eq!(img.config_bytes, w.config_bytes);
        assert_eq!(img.config.diff_ids, w.diff_ids);
        for l in &img.manifest.layers {
            assert_eq!(
                read_blob(src.as_ref(), l).await.unwrap(),
                std::fs::read(dir.blob_path(&l.digest)).unwrap()
            );
        }
    }
}

#[tokio::test]
async fn manifest_list_resolves_to_platform() {
    let reg = TestRegistry::shared();
    let tmp = tempfile::tempdir().unwrap();
    let dir = OciDir::create(tmp.path()).unwrap();
    let amd = image(&dir, "amd", "amd64", b"amd64 build");
    let arm = image(&dir, "arm", "arm", b"armv7 build");
    let repo = unique_repo("list");
    let o = opts(&reg.addr);
    let sink = open_sink(
        &reference(format!("docker://{}/{repo}:multi", reg.addr)),
        &o,
    )
    .await
    .unwrap();
    let mut idx = Index::new_oci();
    idx.media_type = Some(media_type::DOCKER_MANIFEST_LIST.into());
    for (w, p) in [
        (&amd, Platform::default()),
        (
            &arm,
            Platform {
                architecture: "arm".into(),
                os: "linux".into(),
                variant: Some("v7".into()),
            },
        ),
    ] {
        for d in std::iter::once(&w.config).chain(&w.layers) {
            sink.put_blob(&dir.blob_path(&d.digest), d).await.unwrap();
        }
        let digest = sink
            .put_child_manifest(&dir.read_blob(&w.manifest).unwrap(), &w.manifest.media_type)
            .await
            .unwrap();
        let mut e = w.manifest.clone();
        assert_eq!(digest, e.digest);
        e.platform = Some(p);
        idx.manifests.push(e);
    }
    sink.put_manifest(&idx.to_json(), media_type::DOCKER_MANIFEST_LIST)
        .await
        .unwrap();

    let r = reference(format!("docker://{}/{repo}:multi", reg.addr));
    let img = open_source(&r, &o).await.unwrap().image().await.unwrap();
    assert_eq!(img.manifest_digest, amd.manifest.digest);
    let mut arm_opts = o.clone();
    arm_opts.platform = Platform {
        architecture: "arm".into(),
        os: "linux".into(),
        variant: Some("v7".into()),
    };
    let img = open_source(&r, &arm_opts)
        .await
        .unwrap()
        .image()
        .await
        .unwrap();
    assert_eq!(img.manifest_digest, arm.manifest.digest);
    assert_eq!(img.config.architecture.as_deref(), Some("arm"));
    arm_opts.platform.variant = Some("v6".into());
    let e = open_source(&r, &arm_opts)
        .await
        .unwrap()
        .image()
        .await
        .unwrap_err();
    assert!(matches!(e, OciError::NotFound { .. }), "{e:?}");
}

#[tokio::test]
async fn cross_repository_mount() {
    let reg = TestRegistry::shared();
    let tmp = tempfile::tempdir().unwrap();
    let dir = OciDir::create(tmp.path()).unwrap();
    let w = image(&dir, "v1", "amd64", b"mount me");
    let (a, b) = (unique_repo("mount-a"), unique_repo("mount-b"));
    let o = opts(&reg.addr);
    let from = reference(format!("docker://{}/{a}:v1", reg.addr));
    push(open_sink(&from, &o).await.unwrap().as_ref(), &dir, &w).await;

    let sink = open_sink(&reference(format!("docker://{}/{b}:v1", reg.addr)), &o)
        .await
        .unwrap();
    for d in std::iter::once(&w.config).chain(&w.layers) {
        assert!(
            sink.mount_blob(d, &from).await.unwrap(),
            "mount of {}",
            d.digest
        );
    }
    // Everything is there now: a push transfers nothing.
    let outcomes = push(sink.as_ref(), &dir, &w).await;
    assert!(
        outcomes.iter().all(|x| *x == PutOutcome::AlreadyPresent),
        "{outcomes:?}"
    );
    // A blob the source repository does not have is not mounted.
    let other = dir
        .write_blob(media_type::OCI_LAYER_TAR, b"not in a")
        .unwrap();
    assert!(!sink.mount_blob(&other, &from).await.unwrap());
    let img = open_source(&reference(format!("docker://{}/{b}:v1", reg.addr)), &o)
        .await
        .unwrap()
        .image()
        .await
        .unwrap();
    assert_eq!(img.config_bytes, w.config_bytes);
}

#[tokio::test]
async fn registry_errors_are_structured() {
    let reg = TestRegistry::shared();
    let tmp = tempfile::tempdir().unwrap();
    let dir = OciDir::create(tmp.path()).unwrap();
    let w = image(&dir, "v1", "amd64", b"errors");
    let repo = unique_repo("errors");
    let o = opts(&reg.addr);
    let r = reference(format!("docker://{}/{repo}:v1", reg.addr));
    let sink = open_sink(&r, &o).await.unwrap();

    // A file whose bytes do not match the descriptor is refused and never lands.
    let liar = tmp.path().join("liar");
    let mut bytes = std::fs::read(dir.blob_path(&w.layers[1].digest)).unwrap();
    bytes[10] ^= 1;
    std::fs::write(&liar, &bytes).unwrap();
    let e = sink.put_blob(&liar, &w.layers[1]).await.unwrap_err();
    assert!(matches!(e, OciError::DigestMismatch { .. }), "{e:?}");
    let src = open_source(&r, &o).await.unwrap();
    let e = read_blob(src.as_ref(), &w.layers[1]).await.unwrap_err();
    assert_eq!(
        (e.http_status(), e.registry_code()),
        (Some(404), Some("BLOB_UNKNOWN")),
        "{e:?}"
    );

    // Unknown tag.
    let e = src.image().await.unwrap_err();
    assert_eq!(
        (e.http_status(), e.registry_code()),
        (Some(404), Some("MANIFEST_UNKNOWN")),
        "{e:?}"
    );

    // A manifest whose blobs are missing is refused by the registry.
    let e = sink
        .put_manifest(&dir.read_blob(&w.manifest).unwrap(), &w.manifest.media_type)
        .await
        .unwrap_err();
    assert_eq!(e.http_status(), Some(400), "{e:?}");
    assert_eq!(e.registry_code(), Some("MANIFEST_BLOB_UNKNOWN"), "{e:?}");

    // Without the insecure entry, plain HTTP is never used.
    let strict = open_source(&r, &RegistryOptions::default()).await.unwrap();
    let e = strict.image().await.unwrap_err();
    assert!(matches!(e, OciError::Http { .. }), "{e:?}");
}

#[tokio::test]
async fn basic_auth_against_htpasswd_registry() {
    let reg = TestRegistry::start(Some(("alice", "correct horse")));
    let tmp = tempfile::tempdir().unwrap();
    let dir = OciDir::create(tmp.path()).unwrap();
    let w = image(&dir, "v1", "amd64", b"auth");
    let r = reference(format!("docker://{}/private/app:v1", reg.addr));

    let mut good = opts(&reg.addr);
    good.credentials = Some(Credentials {
        username: "alice".into(),
        password: "correct horse".into(),
    });
    push(open_sink(&r, &good).await.unwrap().as_ref(), &dir, &w).await;
    let img = open_source(&r, &good).await.unwrap().image().await.unwrap();
    assert_eq!(img.config_bytes, w.config_bytes);

    // Credentials from a Docker client config file.
    let cfg = tmp.path().join("config.json");
    let auth = base64_encode("alice:correct horse");
    std::fs::write(
        &cfg,
        format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, reg.addr),
    )
    .unwrap();
    let mut from_file = opts(&reg.addr);
    from_file.docker_config = Some(cfg);
    assert_eq!(
        open_source(&r, &from_file)
            .await
            .unwrap()
            .image()
            .await
            .unwrap()
            .config_bytes,
        w.config_bytes
    );

    let mut bad = opts(&reg.addr);
    bad.credentials = Some(Credentials {
        username: "alice".into(),
        password: "wrong".into(),
    });
    let e = open_source(&r, &bad)
        .await
        .unwrap()
        .image()
        .await
        .unwrap_err();
    assert_eq!(
        (e.http_status(), e.registry_code()),
        (Some(401), Some("UNAUTHORIZED")),
        "{e:?}"
    );
    assert!(!format!("{e:?} {e}").contains("wrong"));

    let e = open_source(&r, &opts(&reg.addr))
        .await
        .unwrap()
        .image()
        .await
        .unwrap_err();
    assert_eq!(e.http_status(), Some(401), "{e:?}");
}

fn base64_encode(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}
