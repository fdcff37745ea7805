//! Delta images built and applied end to end on OCI layouts, every delta layer
//! cross-checked with Debian's `rdiff`.

mod support;

use proptest::prelude::*;
use support::{check_round_trip, layer, noise, File, Pair};

fn base_files() -> Vec<File> {
    vec![
        ("bin/busybox".into(), noise(1, 300_000)),
        ("etc/os-release".into(), b"ID=balena\nVERSION=1\n".to_vec()),
        ("lib/libc.so.6".into(), noise(2, 150_000)),
    ]
}

fn app_files(version: u8) -> Vec<File> {
    let mut main = b"console.log('hello');\n".repeat(400);
    main.extend_from_slice(format!("const VERSION = '{version}';\n").as_bytes());
    vec![
        ("app/main.js".into(), main),
        ("app/data.bin".into(), noise(3, 80_000)),
    ]
}

#[tokio::test]
async fn changed_top_layer_keeps_common_prefix_and_is_small() {
    let pair = Pair::new(
        vec![layer(&base_files()), layer(&app_files(1))],
        vec![layer(&base_files()), layer(&app_files(2))],
    );
    let info = check_round_trip(&pair).await;
    assert_eq!(info.common_prefix, 1);
    assert_eq!(info.layers[0].kind, bru_delta::LayerKind::Common);
    // One character changed in ~90 kB: the delta layer must be tiny.
    assert!(info.total_compressed_bytes < 2_000, "{info:#?}");
}

#[tokio::test]
async fn inserted_bytes_in_a_binary_are_matched_at_any_offset() {
    let mut changed = noise(9, 200_000);
    changed.splice(1_000..1_000, noise(10, 37));
    changed.splice(120_003..120_003, b"xyz".iter().copied());
    let pair = Pair::new(
        vec![layer(&[("usr/bin/agent".into(), noise(9, 200_000))])],
        vec![layer(&[("usr/bin/agent".into(), changed)])],
    );
    let info = check_round_trip(&pair).await;
    assert_eq!(info.common_prefix, 0);
    assert!(info.total_compressed_bytes < 3_000, "{info:#?}");
}

#[tokio::test]
async fn files_moved_between_layers_and_squashed_layers_are_copied() {
    let files = [base_files(), app_files(1)].concat();
    // Source: two layers. Target: the same files squashed into one layer, reordered.
    let mut reordered = files.clone();
    reordered.reverse();
    let pair = Pair::new(
        vec![layer(&base_files()), layer(&app_files(1))],
        vec![layer(&reordered)],
    );
    let info = check_round_trip(&pair).await;
    assert_eq!(info.common_prefix, 0);
    assert!(info.total_compressed_bytes < 2_000, "{info:#?}");
}

#[tokio::test]
async fn identical_images_need_no_delta_layers() {
    let layers = vec![layer(&base_files()), layer(&app_files(1))];
    let pair = Pair::new(layers.clone(), layers);
    let info = check_round_trip(&pair).await;
    assert_eq!(info.common_prefix, 2);
    assert_eq!(info.total_compressed_bytes, 0);
    assert!(info
        .layers
        .iter()
        .all(|l| l.kind == bru_delta::LayerKind::Common));
}

#[tokio::test]
async fn target_with_more_layers_than_source() {
    let pair = Pair::new(
        vec![layer(&base_files())],
        vec![
            layer(&base_files()),
            layer(&app_files(1)),
            layer(&[("etc/extra".into(), b"x".to_vec())]),
        ],
    );
    let info = check_round_trip(&pair).await;
    assert_eq!(info.common_prefix, 1);
    assert_eq!(info.layer_count, 3);
}

#[tokio::test]
async fn base_change_rebuilds_every_layer_above_it() {
    let mut new_base = base_files();
    new_base[1].1 = b"ID=balena\nVERSION=2\n".to_vec();
    let pair = Pair::new(
        vec![layer(&base_files()), layer(&app_files(1))],
        vec![layer(&new_base), layer(&app_files(1))],
    );
    let info = check_round_trip(&pair).await;
    // The app layer is byte-identical, but its ChainID changed: it must be a delta.
    assert_eq!(info.common_prefix, 0);
    assert!(info.total_compressed_bytes < 2_000, "{info:#?}");
    // ... of one COPY of the source's app layer (rebuilt by rdiff and the device
    // emulation above).
    let app = &info.layers[1];
    assert_eq!(
        (app.copy_commands, app.literal_commands, app.copied_bytes),
        (Some(1), Some(0), Some(pair.source_layers[1].len() as u64)),
        "{app:#?}"
    );
    // The build names the source layer it is.
    assert_eq!(app.copies_source_layer, Some(1));
    assert_eq!(info.layers[0].copies_source_layer, None);
}

#[tokio::test]
async fn a_layer_the_source_has_is_copied_without_fetching_it() {
    // The target moves the source's bottom layer to the top, over a new base.
    let moved = layer(&base_files());
    let pair = Pair::new(
        vec![moved.clone(), layer(&app_files(1))],
        vec![layer(&app_files(2)), moved.clone()],
    );
    let opts = bru_oci::RegistryOptions::default();
    let open = |tag: &'static str| {
        let pair = &pair;
        let opts = &opts;
        async move {
            bru_oci::open_source(&pair.reference(tag), opts)
                .await
                .unwrap()
        }
    };
    let target = Counting {
        inner: open("target").await,
        asked: Default::default(),
    };
    let delta = pair.out("delta");
    let sink = bru_oci::open_sink(&delta, &opts).await.unwrap();
    let info = bru_delta::create(
        &*open("source").await,
        &target,
        &*sink,
        &bru_delta::CreateOptions::default(),
        std::sync::Arc::new(bru_delta::NoProgress),
    )
    .await
    .unwrap();
    let asked = target.asked.lock().unwrap().clone();
    assert_eq!(asked.get(&pair.target.layers[0].digest), Some(&1));
    assert_eq!(asked.get(&pair.target.layers[1].digest), None, "{asked:?}");
    let top = &info.layers[1];
    assert_eq!(
        (top.copy_commands, top.literal_commands, top.copied_bytes),
        (Some(1), Some(0), Some(moved.len() as u64)),
        "{top:#?}"
    );
    assert_eq!(top.copies_source_layer, Some(0), "{top:#?}");
    assert_eq!(info.layers[0].copies_source_layer, None);
    // The COPY is of the source's first layer: offset 0 of the basis.
    let streams = support::delta_streams(&delta).await;
    let stream = streams[1].as_deref().unwrap();
    let rebuilt = support::rdiff_patch(pair.dir.path(), &pair.basis(), stream);
    assert_eq!(rebuilt, moved);
    // And the whole delta applies.
    check_round_trip(&pair).await;
}

/// A realistic edit of a file set.
#[derive(Debug, Clone)]
enum Edit {
    Rewrite {
        file: usize,
        at: usize,
        len: usize,
        seed: u64,
    },
    Insert {
        file: usize,
        at: usize,
        len: usize,
        seed: u64,
    },
    Delete {
        file: usize,
        at: usize,
        len: usize,
    },
    AddFile {
        seed: u64,
        len: usize,
    },
    RemoveFile {
        file: usize,
    },
    MoveToOtherLayer {
        file: usize,
    },
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (0usize..8, 0usize..50_000, 1usize..2_000, any::<u64>()).prop_map(
            |(file, at, len, seed)| Edit::Rewrite {
                file,
                at,
                len,
                seed
            }
        ),
        (0usize..8, 0usize..50_000, 1usize..2_000, any::<u64>()).prop_map(
            |(file, at, len, seed)| Edit::Insert {
                file,
                at,
                len,
                seed
            }
        ),
        (0usize..8, 0usize..50_000, 1usize..5_000).prop_map(|(file, at, len)| Edit::Delete {
            file,
            at,
            len
        }),
        (any::<u64>(), 0usize..20_000).prop_map(|(seed, len)| Edit::AddFile { seed, len }),
        (0usize..8).prop_map(|file| Edit::RemoveFile { file }),
        (0usize..8).prop_map(|file| Edit::MoveToOtherLayer { file }),
    ]
}

fn apply_edits(layers: &mut [Vec<File>], edits: &[Edit]) {
    for (n, e) in edits.iter().enumerate() {
        let all: Vec<(usize, usize)> = layers
            .iter()
            .enumerate()
            .flat_map(|(l, files)| (0..files.len()).map(move |f| (l, f)))
            .collect();
        let pick = |file: usize| all.get(file % all.len().max(1)).copied();
        match *e {
            Edit::Rewrite {
                file,
                at,
                len,
                seed,
            }
            | Edit::Insert {
                file,
                at,
                len,
                seed,
            } => {
                if let Some((l, f)) = pick(file) {
                    let data = &mut layers[l][f].1;
                    let at = at.min(data.len());
                    let bytes = noise(seed, len);
                    let end = if matches!(e, Edit::Rewrite { .. }) {
                        (at + len).min(data.len())
                    } else {
                        at
                    };
                    data.splice(at..end, bytes);
                }
            }
            Edit::Delete { file, at, len } => {
                if let Some((l, f)) = pick(file) {
                    let data = &mut layers[l][f].1;
                    let at = at.min(data.len());
                    let end = (at + len).min(data.len());
                    data.drain(at..end);
                }
            }
            Edit::AddFile { seed, len } => {
                let last = layers.len() - 1;
                layers[last].push((format!("new/file-{n}"), noise(seed, len)));
            }
            Edit::RemoveFile { file } => {
                if let Some((l, f)) = pick(file) {
                    layers[l].remove(f);
                }
            }
            Edit::MoveToOtherLayer { file } => {
                if let Some((l, f)) = pick(file) {
                    let moved = layers[l].remove(f);
                    let to = (l + 1) % layers.len();
                    layers[to].push(moved);
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    /// apply(create(A, B), A) == B, and rdiff agrees, for random images and edits.
    #[test]
    fn round_trip_random_images(
        sizes in prop::collection::vec(prop::collection::vec(0usize..40_000, 1..4), 1..4),
        seed in any::<u64>(),
        edits in prop::collection::vec(edit(), 0..6),
        squash in any::<bool>(),
    ) {
        let mut files: Vec<Vec<File>> = sizes
            .iter()
            .enumerate()
            .map(|(l, sizes)| sizes.iter().enumerate()
                .map(|(f, &len)| (format!("layer{l}/file{f}"), noise(seed ^ ((l * 31 + f) as u64), len)))
                .collect())
            .collect();
        let source: Vec<Vec<u8>> = files.iter().map(|f| layer(f)).collect();
        apply_edits(&mut files, &edits);
        let target: Vec<Vec<u8>> = if squash {
            vec![layer(&files.concat())]
        } else {
            files.iter().map(|f| layer(f)).collect()
        };
        let pair = Pair::new(source, target);
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(check_round_trip(&pair));
    }
}

#[tokio::test]
async fn apply_can_write_uncompressed_layers_like_a_device_stores_them() {
    use bru_oci::{open_sink, open_source, RegistryOptions};
    let pair = Pair::new(
        vec![layer(&base_files()), layer(&app_files(1))],
        vec![layer(&base_files()), layer(&app_files(2))],
    );
    support::create(
        &pair.reference("source"),
        &pair.reference("target"),
        &pair.out("delta"),
    )
    .await
    .unwrap();
    let opts = RegistryOptions::default();
    let s = open_source(&pair.reference("source"), &opts).await.unwrap();
    let d = open_source(&pair.out("delta"), &opts).await.unwrap();
    let sink = open_sink(&pair.out("plain"), &opts).await.unwrap();
    let apply_opts = bru_delta::ApplyOptions {
        gzip_level: 0,
        format: bru_delta::Format::Oci,
        ..Default::default()
    };
    let info = bru_delta::apply(
        &*s,
        &*d,
        &*sink,
        &apply_opts,
        std::sync::Arc::new(bru_delta::NoProgress),
    )
    .await
    .unwrap();
    assert_eq!(info.image_id, pair.target.config.digest);
    let out = open_source(&pair.out("plain"), &opts).await.unwrap();
    let image = out.image().await.unwrap();
    assert_eq!(image.manifest_media_type, bru_oci::media_type::OCI_MANIFEST);
    // The rebuilt (non-common) layer is an uncompressed tar whose digest is its DiffID.
    let rebuilt = &image.manifest.layers[1];
    assert_eq!(rebuilt.media_type, bru_oci::media_type::OCI_LAYER_TAR);
    assert_eq!(rebuilt.digest, pair.target.diff_ids[1]);
    assert_eq!(rebuilt.size, pair.target_layers[1].len() as u64);
    // The common layer is the source's own gzip blob, relabelled for the OCI manifest.
    assert_eq!(
        image.manifest.layers[0].digest,
        pair.source.layers[0].digest
    );
    assert_eq!(
        image.manifest.layers[0].media_type,
        bru_oci::media_type::OCI_LAYER_GZIP
    );
}

/// skopeo (containers/image, an independent implementation) reads the rebuilt
/// image from a docker-archive and an OCI layout and sees the target's config.
#[tokio::test]
async fn skopeo_reads_the_rebuilt_image() {
    let skopeo = std::path::Path::new("/usr/bin/skopeo");
    assert!(
        skopeo.exists(),
        "/usr/bin/skopeo is missing: apt-get install skopeo"
    );
    let pair = Pair::new(
        vec![layer(&base_files()), layer(&app_files(1))],
        vec![layer(&base_files()), layer(&app_files(2))],
    );
    support::create(
        &pair.reference("source"),
        &pair.reference("target"),
        &pair.out("delta"),
    )
    .await
    .unwrap();
    let archive = pair.dir.path().join("rebuilt.tar");
    let outputs: Vec<(bru_oci::ImageReference, bru_delta::Format, String)> = vec![
        (
            format!("docker-archive:{}:rebuilt:v2", archive.display())
                .parse()
                .unwrap(),
            bru_delta::Format::Docker,
            format!("docker-archive:{}", archive.display()),
        ),
        (
            pair.out("layout"),
            bru_delta::Format::Oci,
            format!("oci:{}:layout", pair.dir.path().join("layout").display()),
        ),
    ];
    for (out, format, skopeo_ref) in outputs {
        let opts = bru_oci::RegistryOptions::default();
        let s = bru_oci::open_source(&pair.reference("source"), &opts)
            .await
            .unwrap();
        let d = bru_oci::open_source(&pair.out("delta"), &opts)
            .await
            .unwrap();
        let sink = bru_oci::open_sink(&out, &opts).await.unwrap();
        let apply_opts = bru_delta::ApplyOptions {
            format,
            ..Default::default()
        };
        bru_delta::apply(
            &*s,
            &*d,
            &*sink,
            &apply_opts,
            std::sync::Arc::new(bru_delta::NoProgress),
        )
        .await
        .unwrap();
        let config = std::process::Command::new(skopeo)
            .args(["--insecure-policy", "inspect", "--raw", "--config"])
            .arg(&skopeo_ref)
            .output()
            .unwrap();
        assert!(
            config.status.success(),
            "skopeo: {}",
            String::from_utf8_lossy(&config.stderr)
        );
        assert_eq!(
            config.stdout, pair.target.config_bytes,
            "skopeo sees other config bytes for {skopeo_ref}"
        );
    }
}

/// An image source that counts the blobs asked of it.
#[derive(Debug)]
struct Counting {
    inner: Box<dyn bru_oci::ImageSource>,
    asked: std::sync::Mutex<std::collections::HashMap<bru_oci::Digest, usize>>,
}

#[async_trait::async_trait]
impl bru_oci::ImageSource for Counting {
    async fn image(&self) -> Result<bru_oci::PulledImage, bru_oci::OciError> {
        self.inner.image().await
    }

    async fn blob(
        &self,
        desc: &bru_oci::Descriptor,
    ) -> Result<bru_oci::BlobReader, bru_oci::OciError> {
        *self
            .asked
            .lock()
            .unwrap()
            .entry(desc.digest.clone())
            .or_default() += 1;
        self.inner.blob(desc).await
    }
}

#[tokio::test]
async fn apply_downloads_each_source_layer_once() {
    let base = layer(&[("lib/base".into(), noise(1, 40_000))]);
    let mid = layer(&[("lib/mid".into(), noise(2, 30_000))]);
    let app1 = noise(3, 50_000);
    let mut app2 = app1.clone();
    app2[100..110].copy_from_slice(b"0123456789");
    let pair = Pair::new(
        vec![
            base.clone(),
            mid.clone(),
            layer(&[("app/bin".into(), app1)]),
        ],
        vec![base, mid, layer(&[("app/bin".into(), app2)])],
    );
    let delta = pair.out("delta");
    support::create(&pair.reference("source"), &pair.reference("target"), &delta)
        .await
        .unwrap();

    let opts = bru_oci::RegistryOptions::default();
    let source = Counting {
        inner: bru_oci::open_source(&pair.reference("source"), &opts)
            .await
            .unwrap(),
        asked: Default::default(),
    };
    let d = bru_oci::open_source(&delta, &opts).await.unwrap();
    let out = pair.out("rebuilt");
    let sink = bru_oci::open_sink(&out, &opts).await.unwrap();
    let info = bru_delta::apply(
        &source,
        &*d,
        &*sink,
        &bru_delta::ApplyOptions::default(),
        std::sync::Arc::new(bru_delta::NoProgress),
    )
    .await
    .unwrap();
    assert_eq!(
        info.layers
            .iter()
            .map(|l| l.from_source)
            .collect::<Vec<_>>(),
        vec![true, true, false]
    );
    assert_eq!(info.image_id, pair.target.config.digest);
    let asked = source.asked.lock().unwrap();
    for l in &pair.source.layers {
        assert_eq!(asked.get(&l.digest), Some(&1), "layer {}", l.digest);
    }
    assert_eq!(asked.len(), pair.source.layers.len());
}
