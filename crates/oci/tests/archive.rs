//! docker-archive read/write: round trips, `docker save` layouts, bad archives.

mod common;

use std::io::Read;

use bru_oci::{
    media_type, open_sink, open_source, tar_of, Digest, ImageReference, ImageSpec, OciDir,
    OciError, RegistryOptions,
};
use common::read_blob;

fn r(s: String) -> ImageReference {
    s.parse().unwrap()
}

fn tar_members(path: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut ar = tar::Archive::new(std::fs::File::open(path).unwrap());
    ar.entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let name = e.path().unwrap().display().to_string();
            let mut body = Vec::new();
            e.read_to_end(&mut body).unwrap();
            (name, body)
        })
        .collect()
}

#[tokio::test]
async fn layout_to_archive_and_back() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = OciDir::create(tmp.path().join("lay")).unwrap();
    let mut spec = ImageSpec::new(vec![
        tar_of(&[("bin/sh", &[1u8; 3000][..])]),
        tar_of(&[("app/x", b"x")]),
    ]);
    spec.labels.insert("k".into(), "v".into());
    let w = dir.write_image("v1", &spec).unwrap();
    let o = RegistryOptions::default();
    let src = open_source(&r(format!("oci:{}:v1", dir.path().display())), &o)
        .await
        .unwrap();
    let img = src.image().await.unwrap();

    let out = tmp.path().join("out.tar");
    let dst = r(format!(
        "docker-archive:{}:localhost:5000/app:v1",
        out.display()
    ));
    let sink = open_sink(&dst, &o).await.unwrap();
    for d in std::iter::once(&img.manifest.config).chain(&img.manifest.layers) {
        sink.put_blob(&dir.blob_path(&d.digest), d).await.unwrap();
    }
    sink.put_manifest(&img.manifest_bytes, &img.manifest_media_type)
        .await
        .unwrap();
    assert!(!out.exists(), "the archive is written by finish()");
    sink.finish().await.unwrap();

    // What docker load reads: manifest.json with Config, RepoTags and Layers, and the blobs.
    let members = tar_members(&out);
    let manifest_json = &members
        .iter()
        .find(|(n, _)| n == "manifest.json")
        .unwrap()
        .1;
    let m: serde_json::Value = serde_json::from_slice(manifest_json).unwrap();
    assert_eq!(m[0]["RepoTags"][0], "localhost:5000/app:v1");
    assert_eq!(
        m[0]["Config"],
        format!("blobs/sha256/{}", w.config.digest.hex())
    );
    assert_eq!(m[0]["Layers"].as_array().unwrap().len(), 2);
    for (name, body) in &members {
        if let Some(hex) = name.strip_prefix("blobs/sha256/") {
            assert_eq!(Digest::of(body).hex(), hex);
        }
    }

    // Read it back, with and without the tag.
    for rr in [
        format!("docker-archive:{}", out.display()),
        format!("docker-archive:{}:localhost:5000/app:v1", out.display()),
    ] {
        let back = open_source(&r(rr), &o).await.unwrap();
        let img2 = back.image().await.unwrap();
        assert_eq!(img2.config_bytes, w.config_bytes);
        assert_eq!(img2.config_digest, w.config.digest);
        assert_eq!(img2.config.diff_ids, w.diff_ids);
        assert_eq!(img2.config.labels["k"], "v");
        for (l, orig) in img2.manifest.layers.iter().zip(&w.layers) {
            assert_eq!(l.digest, orig.digest);
            assert_eq!(l.media_type, media_type::DOCKER_LAYER_GZIP);
            assert_eq!(
                read_blob(back.as_ref(), l).await.unwrap(),
                std::fs::read(dir.blob_path(&l.digest)).unwrap()
            );
        }
        let cfg = read_blob(back.as_ref(), &img2.manifest.config)
            .await
            .unwrap();
        assert_eq!(cfg, w.config_bytes);
    }
    let e = open_source(&r(format!("docker-archive:{}:other:v1", out.display())), &o)
        .await
        .unwrap_err();
    assert!(matches!(e, OciError::NotFound { .. }), "{e:?}");

    // An index cannot go into a docker-archive.
    let sink = open_sink(
        &r(format!(
            "docker-archive:{}",
            tmp.path().join("idx.tar").display()
        )),
        &o,
    )
    .await
    .unwrap();
    let idx = bru_oci::Index::new_oci().to_json();
    assert!(matches!(
        sink.put_manifest(&idx, media_type::OCI_INDEX).await,
        Err(OciError::Unsupported { .. })
    ));
    // finish() without a manifest is an error, and a manifest whose blobs were never put too.
    assert!(sink.finish().await.is_err());
    sink.put_manifest(&img.manifest_bytes, &img.manifest_media_type)
        .await
        .unwrap();
    assert!(matches!(
        sink.finish().await,
        Err(OciError::BlobMissing { .. })
    ));
    assert!(!tmp.path().join("idx.tar").exists());
}

/// Writes a multi-image archive in the classic `docker save` shape: `<id>/layer.tar`
/// (uncompressed), `<config hex>.json`, a symlinked shared layer, and manifest.json.
fn classic_archive(path: &std::path::Path) -> (Vec<u8>, Vec<Vec<u8>>) {
    let l1 = tar_of(&[("etc/a", b"a")]);
    let l2 = tar_of(&[("etc/b", b"bb")]);
    let l3 = tar_of(&[("etc/c", b"ccc")]);
    let cfg = |layers: &[&Vec<u8>]| {
        let ids: Vec<String> = layers.iter().map(|l| Digest::of(l).to_string()).collect();
        serde_json::to_vec(&serde_json::json!({"architecture":"arm64","os":"linux","rootfs":{"type":"layers","diff_ids":ids}})).unwrap()
    };
    let (ca, cb) = (cfg(&[&l1, &l2]), cfg(&[&l1, &l3]));
    let (ha, hb) = (Digest::of(&ca).hex(), Digest::of(&cb).hex());
    let manifest = serde_json::json!([
        {"Config": format!("{ha}.json"), "RepoTags": ["app:a"], "Layers": ["l1/layer.tar", "l2/layer.tar"]},
        {"Config": format!("{hb}.json"), "RepoTags": ["localhost:5000/app:b"], "Layers": ["l1b/layer.tar", "l3/layer.tar"]},
    ]);
    let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, name, data).unwrap();
    };
    add("l1/layer.tar", &l1);
    add("l2/layer.tar", &l2);
    add("l3/layer.tar", &l3);
    add(&format!("{ha}.json"), &ca);
    add(&format!("{hb}.json"), &cb);
    add("manifest.json", &serde_json::to_vec(&manifest).unwrap());
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    b.append_link(&mut h, "l1b/layer.tar", "../l1/layer.tar")
        .unwrap();
    b.finish().unwrap();
    (cb, vec![l1, l3])
}

#[tokio::test]
async fn reads_classic_docker_save_archives() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("saved.tar");
    let (cfg_b, layers_b) = classic_archive(&path);
    let o = RegistryOptions::default();

    let e = open_source(&r(format!("docker-archive:{}", path.display())), &o)
        .await
        .unwrap_err();
    assert!(matches!(e, OciError::NotFound { .. }), "{e:?}");

    let src = open_source(
        &r(format!(
            "docker-archive:{}:localhost:5000/app:b",
            path.display()
        )),
        &o,
    )
    .await
    .unwrap();
    let img = src.image().await.unwrap();
    assert_eq!(img.config_bytes, cfg_b);
    assert_eq!(img.config.architecture.as_deref(), Some("arm64"));
    assert_eq!(img.manifest_media_type, media_type::DOCKER_MANIFEST);
    for (l, tar) in img.manifest.layers.iter().zip(&layers_b) {
        assert_eq!(l.media_type, media_type::DOCKER_LAYER_TAR);
        assert_eq!(l.digest, Digest::of(tar));
        assert_eq!(&read_blob(src.as_ref(), l).await.unwrap(), tar);
    }
    let a = open_source(&r(format!("docker-archive:{}:app:a", path.display())), &o)
        .await
        .unwrap();
    assert_eq!(a.image().await.unwrap().manifest.layers.len(), 2);
    // A layer of the other image is not served by this source.
    let foreign = &a.image().await.unwrap().manifest.layers[1];
    assert!(matches!(
        src.blob(foreign).await,
        Err(OciError::BlobMissing { .. })
    ));
}

#[tokio::test]
async fn bad_archives_give_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let o = RegistryOptions::default();
    let open = |p: &std::path::Path| {
        let rr = r(format!("docker-archive:{}", p.display()));
        let o = o.clone();
        async move { open_source(&rr, &o).await }
    };

    let p = tmp.path().join("missing.tar");
    assert!(matches!(open(&p).await, Err(OciError::Io { .. })));

    std::fs::write(&p, vec![0x55u8; 4096]).unwrap();
    let e = open(&p).await.unwrap_err();
    assert!(
        matches!(e, OciError::Malformed { .. } | OciError::NotFound { .. }),
        "{e:?}"
    );

    // manifest.json that is not JSON.
    std::fs::write(&p, tar_of(&[("manifest.json", b"{[")])).unwrap();
    assert!(matches!(open(&p).await, Err(OciError::Malformed { .. })));

    // A layer listed but absent.
    let m = br#"[{"Config":"c.json","RepoTags":null,"Layers":["nope/layer.tar"]}]"#;
    let cfg = br#"{"rootfs":{"type":"layers","diff_ids":[]}}"#;
    std::fs::write(&p, tar_of(&[("manifest.json", m), ("c.json", cfg)])).unwrap();
    assert!(matches!(open(&p).await, Err(OciError::NotFound { .. })));

    // Truncated in the middle of a layer.
    let full = tmp.path().join("full.tar");
    classic_archive(&full);
    let bytes = std::fs::read(&full).unwrap();
    std::fs::write(&p, &bytes[..1500]).unwrap();
    assert!(open(&p).await.is_err());
}
