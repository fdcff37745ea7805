//! Bad inputs that are too large: documents over their cap are refused without being read
//! whole, and a sink that is not finished leaves nothing at its path.

use std::fs;
use std::path::Path;

use bru_oci::limits::{MAX_CONFIG_SIZE, MAX_MANIFEST_SIZE};
use bru_oci::{
    media_type, open_sink, open_source, tar_of, Descriptor, ImageReference, ImageSpec, Manifest,
    OciDir, OciError, RegistryOptions,
};

const GIB: u64 = 1 << 30;

fn oci_ref(dir: &Path, tag: &str) -> ImageReference {
    format!("oci:{}:{tag}", dir.display()).parse().unwrap()
}

async fn image_error(r: &ImageReference) -> OciError {
    match open_source(r, &RegistryOptions::default()).await {
        Ok(src) => src.image().await.unwrap_err(),
        Err(e) => e,
    }
}

/// A layout with one image tagged `v1`.
fn layout(dir: &Path) -> (OciDir, bru_oci::WrittenImage) {
    let oci = OciDir::create(dir).unwrap();
    let w = oci
        .write_image("v1", &ImageSpec::new(vec![tar_of(&[("a", b"a")])]))
        .unwrap();
    (oci, w)
}

#[tokio::test]
async fn a_huge_index_json_is_refused_without_reading_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (oci, _) = layout(tmp.path());
    // A sparse 1 GiB file: reading it whole would allocate 1 GiB.
    let index = tmp.path().join("index.json");
    fs::OpenOptions::new()
        .write(true)
        .open(&index)
        .unwrap()
        .set_len(GIB)
        .unwrap();
    let e = oci.index().unwrap_err();
    assert!(
        matches!(
            e,
            OciError::TooLarge {
                what: "index.json",
                limit: MAX_MANIFEST_SIZE
            }
        ),
        "{e:?}"
    );
    let e = image_error(&oci_ref(tmp.path(), "v1")).await;
    assert!(matches!(e, OciError::TooLarge { .. }), "{e:?}");
    // Just over the cap is refused too; at the cap it is parsed (and is not JSON).
    fs::OpenOptions::new()
        .write(true)
        .open(&index)
        .unwrap()
        .set_len(MAX_MANIFEST_SIZE + 1)
        .unwrap();
    assert!(matches!(oci.index(), Err(OciError::TooLarge { .. })));
    fs::OpenOptions::new()
        .write(true)
        .open(&index)
        .unwrap()
        .set_len(MAX_MANIFEST_SIZE)
        .unwrap();
    assert!(matches!(oci.index(), Err(OciError::Malformed { .. })));
}

#[tokio::test]
async fn a_huge_manifest_file_is_refused_without_reading_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (oci, w) = layout(tmp.path());
    // The file behind a small descriptor grows to 1 GiB: at most size + 1 bytes are read.
    let path = oci.blob_path(&w.manifest.digest);
    fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(GIB)
        .unwrap();
    let e = image_error(&oci_ref(tmp.path(), "v1")).await;
    match e {
        OciError::SizeMismatch {
            expected, actual, ..
        } => {
            assert_eq!(expected, w.manifest.size);
            assert_eq!(actual, w.manifest.size + 1);
        }
        other => panic!("{other:?}"),
    }

    // A descriptor that declares a manifest over the cap is refused before anything is read.
    let mut big = w.manifest.clone();
    big.size = GIB;
    oci.tag(&big, "big").unwrap();
    let e = image_error(&oci_ref(tmp.path(), "big")).await;
    assert!(
        matches!(
            e,
            OciError::TooLarge {
                what: "manifest",
                limit: MAX_MANIFEST_SIZE
            }
        ),
        "{e:?}"
    );
    assert!(matches!(
        oci.read_blob(&big),
        Err(OciError::TooLarge { .. })
    ));
}

#[tokio::test]
async fn a_config_over_the_cap_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (oci, w) = layout(tmp.path());
    let mut config = w.config.clone();
    config.size = MAX_CONFIG_SIZE + 1;
    let manifest = Manifest::new(media_type::OCI_MANIFEST, config, w.layers.clone());
    let desc = oci
        .write_blob(media_type::OCI_MANIFEST, &manifest.to_json())
        .unwrap();
    oci.tag(&desc, "big-config").unwrap();
    let e = image_error(&oci_ref(tmp.path(), "big-config")).await;
    assert!(
        matches!(
            e,
            OciError::TooLarge {
                what: "image config",
                limit: MAX_CONFIG_SIZE
            }
        ),
        "{e:?}"
    );
}

#[tokio::test]
async fn a_huge_docker_archive_manifest_json_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("bomb.tar");
    // A tar whose `manifest.json` member declares 1 GiB; the member's data is a hole.
    let mut h = tar::Header::new_ustar();
    h.set_path("manifest.json").unwrap();
    h.set_size(GIB);
    h.set_mode(0o644);
    h.set_cksum();
    fs::write(&path, h.as_bytes()).unwrap();
    let f = fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(512 + GIB + 1024).unwrap();
    let r: ImageReference = format!("docker-archive:{}", path.display())
        .parse()
        .unwrap();
    let e = image_error(&r).await;
    assert!(
        matches!(
            e,
            OciError::TooLarge {
                what: "docker-archive manifest.json",
                limit: MAX_MANIFEST_SIZE
            }
        ),
        "{e:?}"
    );
}

#[tokio::test]
async fn a_new_layout_appears_only_when_the_sink_finishes() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, w) = layout(&tmp.path().join("src"));
    let dest = tmp.path().join("out");
    let sink = open_sink(&oci_ref(&dest, "t"), &RegistryOptions::default())
        .await
        .unwrap();
    for d in w.layers.iter().chain([&w.config]) {
        sink.put_blob(&src.blob_path(&d.digest), d).await.unwrap();
    }
    let manifest = src.read_blob(&w.manifest).unwrap();
    sink.put_manifest(&manifest, &w.manifest.media_type)
        .await
        .unwrap();
    assert!(!dest.exists(), "the layout appeared before finish()");
    sink.finish().await.unwrap();
    let out = OciDir::open(&dest).unwrap();
    assert_eq!(out.resolve(Some("t")).unwrap().digest, w.manifest.digest);
    let mode = std::os::unix::fs::PermissionsExt::mode(&fs::metadata(&dest).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o755);
    assert_eq!(names(tmp.path()), ["out", "src"]);

    // Abandoned before finish: nothing at the path, no staging directory left.
    let abandoned = tmp.path().join("abandoned");
    let sink = open_sink(&oci_ref(&abandoned, "t"), &RegistryOptions::default())
        .await
        .unwrap();
    sink.put_blob(&src.blob_path(&w.config.digest), &w.config)
        .await
        .unwrap();
    drop(sink);
    assert_eq!(names(tmp.path()), ["out", "src"]);

    // An existing layout is written in place (and finish() does not move it).
    let sink = open_sink(&oci_ref(&dest, "again"), &RegistryOptions::default())
        .await
        .unwrap();
    sink.put_manifest(&manifest, &w.manifest.media_type)
        .await
        .unwrap();
    assert!(out.resolve(Some("again")).is_ok());
    sink.finish().await.unwrap();
    assert!(out.resolve(Some("t")).is_ok());
}

#[tokio::test]
async fn finishing_refuses_a_layout_created_meanwhile() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("out");
    let sink = open_sink(&oci_ref(&dest, "t"), &RegistryOptions::default())
        .await
        .unwrap();
    let (_, w) = layout(&dest);
    let e = sink.finish().await.unwrap_err();
    assert!(matches!(e, OciError::Io { .. }), "{e:?}");
    // The other layout is untouched and no staging directory is left.
    assert_eq!(
        OciDir::open(&dest).unwrap().resolve(Some("v1")).unwrap(),
        w.manifest_with_tag("v1")
    );
    assert_eq!(names(tmp.path()), ["out"]);
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

trait Tagged {
    fn manifest_with_tag(&self, tag: &str) -> Descriptor;
}

impl Tagged for bru_oci::WrittenImage {
    fn manifest_with_tag(&self, tag: &str) -> Descriptor {
        let mut d = self.manifest.clone();
        d.annotations
            .get_or_insert_with(Default::default)
            .insert(bru_oci::REF_NAME_ANNOTATION.into(), tag.into());
        d
    }
}

#[tokio::test]
async fn a_docker_archive_with_too_many_members_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("many.tar");
    let mut b = tar::Builder::new(std::io::BufWriter::new(fs::File::create(&path).unwrap()));
    for i in 0..=bru_oci::limits::MAX_ARCHIVE_MEMBERS {
        let mut h = tar::Header::new_ustar();
        h.set_size(0);
        h.set_mode(0o644);
        b.append_data(&mut h, format!("f{i}"), &[][..]).unwrap();
    }
    b.into_inner().unwrap();
    let r: ImageReference = format!("docker-archive:{}", path.display())
        .parse()
        .unwrap();
    let e = image_error(&r).await;
    assert!(
        matches!(
            e,
            OciError::Unsupported {
                what: "docker-archive member count",
                ..
            }
        ),
        "{e:?}"
    );
}

#[tokio::test]
async fn a_huge_extended_tar_header_in_a_docker_archive_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("pax.tar");
    // A PAX extended header of 1 GiB, which the tar parser would read whole; the data is a hole.
    let mut h = tar::Header::new_ustar();
    h.set_path("PaxHeaders/x").unwrap();
    h.set_entry_type(tar::EntryType::XHeader);
    h.set_size(GIB);
    h.set_mode(0o644);
    h.set_cksum();
    fs::write(&path, h.as_bytes()).unwrap();
    let f = fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(512 + GIB + 1024).unwrap();
    let r: ImageReference = format!("docker-archive:{}", path.display())
        .parse()
        .unwrap();
    let e = image_error(&r).await;
    assert!(
        matches!(
            e,
            OciError::TooLarge {
                what: "docker-archive headers",
                limit: bru_oci::limits::MAX_ARCHIVE_HEADER_BYTES
            }
        ),
        "{e:?}"
    );
}
