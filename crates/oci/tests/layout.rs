//! OCI layout read/write round trips and bad inputs.

use std::fs;

use bru_oci::{
    media_type, open_sink, open_source, tar_of, ImageReference, ImageSpec, ManifestFormat, OciDir,
    OciError, Platform, RegistryOptions,
};
use tokio::io::AsyncReadExt;

fn spec() -> ImageSpec {
    let mut s = ImageSpec::new(vec![
        tar_of(&[("etc/os-release", b"ID=test\n")]),
        tar_of(&[("app/a.txt", &[7u8; 5000][..]), ("app/b.txt", b"b")]),
    ]);
    s.labels.insert("io.balena.app-id".into(), "42".into());
    s
}

async fn read_blob(
    src: &dyn bru_oci::ImageSource,
    d: &bru_oci::Descriptor,
) -> Result<Vec<u8>, OciError> {
    let mut r = src.blob(d).await?;
    let mut v = Vec::new();
    r.read_to_end(&mut v)
        .await
        .map_err(|e| match OciError::from_io(&e) {
            Some(_) => match e.into_inner().map(|b| b.downcast::<OciError>()) {
                Some(Ok(x)) => *x,
                _ => panic!("not an OciError"),
            },
            None => OciError::Stream(e),
        })?;
    Ok(v)
}

#[tokio::test]
async fn layout_round_trip_keeps_raw_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let src_dir = OciDir::create(tmp.path().join("src")).unwrap();
    let written = src_dir.write_image("v1", &spec()).unwrap();

    let opts = RegistryOptions::default();
    let src_ref: ImageReference = format!("oci:{}:v1", tmp.path().join("src").display())
        .parse()
        .unwrap();
    let src = open_source(&src_ref, &opts).await.unwrap();
    let img = src.image().await.unwrap();
    assert_eq!(img.manifest_digest, written.manifest.digest);
    assert_eq!(img.manifest_media_type, media_type::DOCKER_MANIFEST);
    assert_eq!(img.config_bytes, written.config_bytes);
    assert_eq!(img.image_id(), &written.config.digest);
    assert_eq!(img.config.diff_ids, written.diff_ids);
    assert_eq!(
        img.config
            .labels
            .get("io.balena.app-id")
            .map(String::as_str),
        Some("42")
    );
    assert_eq!(img.config.architecture.as_deref(), Some("amd64"));

    // Copy to a second layout through the sink and read it back byte for byte.
    let dst_ref: ImageReference = format!("oci:{}:copy", tmp.path().join("dst").display())
        .parse()
        .unwrap();
    let sink = open_sink(&dst_ref, &opts).await.unwrap();
    for d in img.manifest.layers.iter().chain([&img.manifest.config]) {
        let out = sink
            .put_blob(&src_dir.blob_path(&d.digest), d)
            .await
            .unwrap();
        assert_eq!(out, bru_oci::PutOutcome::Uploaded);
        // A second put is skipped.
        let again = sink
            .put_blob(&src_dir.blob_path(&d.digest), d)
            .await
            .unwrap();
        assert_eq!(again, bru_oci::PutOutcome::AlreadyPresent);
    }
    let digest = sink
        .put_manifest(&img.manifest_bytes, &img.manifest_media_type)
        .await
        .unwrap();
    sink.finish().await.unwrap();
    assert_eq!(digest, img.manifest_digest);

    let dst = open_source(&dst_ref, &opts).await.unwrap();
    let img2 = dst.image().await.unwrap();
    assert_eq!(img2.manifest_bytes, img.manifest_bytes);
    assert_eq!(img2.config_bytes, img.config_bytes);
    for (l, tar) in img2.manifest.layers.iter().zip(spec().layers) {
        let gz = read_blob(dst.as_ref(), l).await.unwrap();
        let mut plain = Vec::new();
        std::io::Read::read_to_end(&mut bru_oci::decompress_read(&gz[..]).unwrap(), &mut plain)
            .unwrap();
        assert_eq!(plain, tar);
    }
    // Without a tag, the only manifest is chosen.
    let only: ImageReference = format!("oci:{}", tmp.path().join("dst").display())
        .parse()
        .unwrap();
    assert_eq!(
        open_source(&only, &opts)
            .await
            .unwrap()
            .image()
            .await
            .unwrap()
            .manifest_digest,
        digest
    );
    // index.json carries the ref.name annotation.
    let idx = OciDir::open(tmp.path().join("dst"))
        .unwrap()
        .index()
        .unwrap();
    assert_eq!(idx.manifests.len(), 1);
    assert_eq!(
        idx.manifests[0].annotation(bru_oci::REF_NAME_ANNOTATION),
        Some("copy")
    );
}

#[tokio::test]
async fn index_resolves_to_platform() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = OciDir::create(tmp.path()).unwrap();
    let mut arm = spec();
    arm.architecture = Some("arm".into());
    arm.format = ManifestFormat::Oci;
    let a = dir.write_image("arm", &arm).unwrap();
    let b = dir.write_image("amd", &spec()).unwrap();
    let mut idx = bru_oci::Index::new_oci();
    let mut ea = a.manifest.clone();
    ea.platform = Some(Platform {
        architecture: "arm".into(),
        os: "linux".into(),
        variant: Some("v7".into()),
    });
    let mut eb = b.manifest.clone();
    eb.platform = Some(Platform::default());
    idx.manifests = vec![ea, eb];
    let idesc = dir
        .write_blob(media_type::OCI_INDEX, &idx.to_json())
        .unwrap();
    dir.tag(&idesc, "multi").unwrap();

    let r: ImageReference = format!("oci:{}:multi", tmp.path().display())
        .parse()
        .unwrap();
    let img = open_source(&r, &RegistryOptions::default())
        .await
        .unwrap()
        .image()
        .await
        .unwrap();
    assert_eq!(img.manifest_digest, b.manifest.digest);

    let mut opts = RegistryOptions::default();
    opts.platform = Platform {
        architecture: "arm".into(),
        os: "linux".into(),
        variant: Some("v7".into()),
    };
    let img = open_source(&r, &opts).await.unwrap().image().await.unwrap();
    assert_eq!(img.manifest_digest, a.manifest.digest);
    assert_eq!(img.manifest_media_type, media_type::OCI_MANIFEST);

    opts.platform.architecture = "riscv64".into();
    let err = open_source(&r, &opts)
        .await
        .unwrap()
        .image()
        .await
        .unwrap_err();
    assert!(matches!(err, OciError::NotFound { .. }), "{err:?}");
}

#[tokio::test]
async fn corrupt_and_missing_blobs_give_structured_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = OciDir::create(tmp.path()).unwrap();
    let w = dir.write_image("v1", &spec()).unwrap();
    let r: ImageReference = format!("oci:{}:v1", tmp.path().display()).parse().unwrap();
    let src = open_source(&r, &RegistryOptions::default()).await.unwrap();

    // Same size, one byte flipped: digest mismatch at the end of the stream.
    let p = dir.blob_path(&w.layers[1].digest);
    let mut bytes = fs::read(&p).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    fs::write(&p, &bytes).unwrap();
    match read_blob(src.as_ref(), &w.layers[1]).await {
        Err(OciError::DigestMismatch { expected, .. }) => assert_eq!(expected, w.layers[1].digest),
        other => panic!("{other:?}"),
    }
    // Truncated: size mismatch.
    fs::write(&p, &bytes[..mid]).unwrap();
    assert!(matches!(
        read_blob(src.as_ref(), &w.layers[1]).await,
        Err(OciError::SizeMismatch { actual, .. }) if actual == mid as u64
    ));
    // Wrong size in the descriptor.
    let mut d = w.layers[0].clone();
    d.size += 1;
    assert!(matches!(
        read_blob(src.as_ref(), &d).await,
        Err(OciError::SizeMismatch { .. })
    ));
    // Missing blob.
    fs::remove_file(dir.blob_path(&w.layers[0].digest)).unwrap();
    assert!(matches!(
        src.blob(&w.layers[0]).await,
        Err(OciError::BlobMissing { .. })
    ));
    // Corrupt config: image() fails.
    let cp = dir.blob_path(&w.config.digest);
    let mut c = fs::read(&cp).unwrap();
    c[0] = b'[';
    fs::write(&cp, &c).unwrap();
    assert!(matches!(
        src.image().await,
        Err(OciError::DigestMismatch { .. })
    ));
    // Unknown tag.
    let r: ImageReference = format!("oci:{}:nope", tmp.path().display())
        .parse()
        .unwrap();
    let e = open_source(&r, &RegistryOptions::default())
        .await
        .unwrap()
        .image()
        .await
        .unwrap_err();
    assert!(matches!(e, OciError::NotFound { .. }), "{e:?}");
}

#[tokio::test]
async fn malformed_manifest_and_index_are_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = OciDir::create(tmp.path()).unwrap();
    let bad = dir
        .write_blob(
            media_type::OCI_MANIFEST,
            b"{\"schemaVersion\":2,\"layers\":[",
        )
        .unwrap();
    dir.tag(&bad, "bad").unwrap();
    let r: ImageReference = format!("oci:{}:bad", tmp.path().display()).parse().unwrap();
    let e = open_source(&r, &RegistryOptions::default())
        .await
        .unwrap()
        .image()
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            OciError::Malformed {
                what: "manifest",
                ..
            }
        ),
        "{e:?}"
    );

    fs::write(tmp.path().join("index.json"), b"{not json").unwrap();
    let e = open_source(&r, &RegistryOptions::default())
        .await
        .unwrap()
        .image()
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            OciError::Malformed {
                what: "index.json",
                ..
            }
        ),
        "{e:?}"
    );

    let missing: ImageReference = format!("oci:{}", tmp.path().join("none").display())
        .parse()
        .unwrap();
    assert!(matches!(
        open_source(&missing, &RegistryOptions::default()).await,
        Err(OciError::NotFound { .. })
    ));
}

#[tokio::test]
async fn sink_rejects_bad_blob_without_leaving_it() {
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("blob");
    fs::write(&f, b"abc").unwrap();
    // An existing directory is written in place (a new one would be staged elsewhere).
    fs::create_dir(tmp.path().join("out")).unwrap();
    let r: ImageReference = format!("oci:{}:t", tmp.path().join("out").display())
        .parse()
        .unwrap();
    let sink = open_sink(&r, &RegistryOptions::default()).await.unwrap();
    let mut d = bru_oci::Descriptor::of_bytes(media_type::OCI_LAYER_TAR, b"abd");
    assert!(matches!(
        sink.put_blob(&f, &d).await,
        Err(OciError::DigestMismatch { .. })
    ));
    d = bru_oci::Descriptor::of_bytes(media_type::OCI_LAYER_TAR, b"abcd");
    assert!(matches!(
        sink.put_blob(&f, &d).await,
        Err(OciError::SizeMismatch { .. })
    ));
    let blobs: Vec<_> = fs::read_dir(tmp.path().join("out/blobs/sha256"))
        .unwrap()
        .collect();
    assert!(
        blobs.is_empty(),
        "no blob or temp file may remain: {blobs:?}"
    );
    assert!(matches!(
        sink.put_manifest(b"{}", media_type::OCI_MANIFEST).await,
        Err(OciError::Unsupported { .. } | OciError::Malformed { .. })
    ));
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(12))]
    /// Any set of layers written by the fixture builder reads back with matching diff_ids and
    /// byte-identical, verified blobs.
    #[test]
    fn written_images_read_back(
        layers in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 0..3000), 0..4),
        oci in proptest::bool::ANY,
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let tmp = tempfile::tempdir().unwrap();
            let dir = OciDir::create(tmp.path()).unwrap();
            let tars: Vec<Vec<u8>> = layers.iter().map(|b| tar_of(&[("f", &b[..])])).collect();
            let mut spec = ImageSpec::new(tars.clone());
            if oci {
                spec.format = ManifestFormat::Oci;
            }
            let w = dir.write_image("p", &spec).unwrap();
            let r: ImageReference = format!("oci:{}:p", tmp.path().display()).parse().unwrap();
            let src = open_source(&r, &RegistryOptions::default()).await.unwrap();
            let img = src.image().await.unwrap();
            assert_eq!(&img.config.diff_ids, &w.diff_ids);
            for (l, tar) in img.manifest.layers.iter().zip(&tars) {
                let gz = read_blob(src.as_ref(), l).await.unwrap();
                let mut plain = Vec::new();
                std::io::Read::read_to_end(&mut bru_oci::decompress_read(&gz[..]).unwrap(), &mut plain).unwrap();
                assert_eq!(&plain, tar);
            }
        });
    }
}

#[tokio::test]
async fn copy_image_keeps_manifest_bytes_and_refuses_corrupt_blobs() {
    use bru_oci::{copy_image, open_sink, open_source, ImageReference, RegistryOptions};
    let tmp = tempfile::tempdir().unwrap();
    let from = OciDir::create(tmp.path().join("from")).unwrap();
    let written = from
        .write_image(
            "v1",
            &ImageSpec::new(vec![tar_of(&[("a", b"1")]), tar_of(&[("b", b"2")])]),
        )
        .unwrap();
    let opts = RegistryOptions::default();
    let src_ref: ImageReference = format!("oci:{}:v1", tmp.path().join("from").display())
        .parse()
        .unwrap();
    let dst_ref: ImageReference = format!("oci:{}:v1", tmp.path().join("to").display())
        .parse()
        .unwrap();
    let src = open_source(&src_ref, &opts).await.unwrap();
    let digest = copy_image(&*src, &*open_sink(&dst_ref, &opts).await.unwrap())
        .await
        .unwrap();
    assert_eq!(digest, written.manifest.digest);
    let copied = open_source(&dst_ref, &opts)
        .await
        .unwrap()
        .image()
        .await
        .unwrap();
    assert_eq!(copied.manifest_digest, written.manifest.digest);
    assert_eq!(copied.config_bytes, written.config_bytes);

    // A corrupt layer stops the copy before any manifest is written.
    let blob = from.blob_path(&written.layers[1].digest);
    let mut bytes = std::fs::read(&blob).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&blob, bytes).unwrap();
    let bad_ref: ImageReference = format!("oci:{}:v1", tmp.path().join("bad").display())
        .parse()
        .unwrap();
    let err = copy_image(&*src, &*open_sink(&bad_ref, &opts).await.unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(err, bru_oci::OciError::DigestMismatch { .. }),
        "{err:?}"
    );
    // The new layout was staged and never finished: nothing is left at its path.
    assert!(!tmp.path().join("bad").exists());
}
