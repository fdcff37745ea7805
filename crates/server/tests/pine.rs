//! The pine read API as the project's balena client (`bru-balena`) uses it: releases,
//! images and deltas of the store, through the same code that talks to balenaCloud.

use std::time::Duration;

use bru_balena::{BalenaClient, Settings};
use bru_core::{DeltaService as _, DeltaTrigger, ReleaseSource as _};
use bru_oci::{tar_of, ImageSpec, OciDir};
use bru_server::{Auth, Server, ServerConfig};

async fn start(auth: Auth) -> (std::net::SocketAddr, Server, tempfile::TempDir) {
    start_with(auth, bru_oci::RegistryOptions::default()).await
}

async fn start_with(
    auth: Auth,
    registry: bru_oci::RegistryOptions,
) -> (std::net::SocketAddr, Server, tempfile::TempDir) {
    let store = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::new(store.path(), auth);
    config.poll = Duration::ZERO;
    config.registry = registry;
    let server = Server::open(config).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(server.clone().serve(listener, std::future::pending()));
    (addr, server, store)
}

#[tokio::test]
async fn the_balena_client_reads_releases_images_and_deltas() {
    // The images live on a registry, as a fleet's do: a delta of images that are not on a
    // registry is refused (422), since no device could pull it.
    let registry = bru_test_support::TestRegistry::shared();
    let mut opts = bru_oci::RegistryOptions::default();
    opts.insecure = vec![registry.addr.clone()];
    let (addr, server, store) = start_with(Auth::None, opts.clone()).await;
    let layout = store.path().join("images");
    let oci = OciDir::create(&layout).unwrap();
    let repo = bru_test_support::unique_repo("pine");
    for (tag, byte) in [("v1", 1u8), ("v2", 2u8)] {
        let spec = ImageSpec::new(vec![tar_of(&[("f", &[byte; 4000])])]);
        oci.write_image(tag, &spec).unwrap();
        let from = format!("oci:{}:{tag}", layout.display()).parse().unwrap();
        let to = format!("{}/{repo}:{tag}", registry.addr).parse().unwrap();
        let src = bru_oci::open_source(&from, &opts).await.unwrap();
        let sink = bru_oci::open_sink(&to, &opts).await.unwrap();
        bru_oci::copy_image(&*src, &*sink).await.unwrap();
    }
    let mut releases = Vec::new();
    for (commit, tag) in [("84d3d8f0aa", "v1"), ("84d3d8f0bb", "v2")] {
        let reference = format!("{}/{repo}:{tag}", registry.addr);
        releases.push(
            server
                .backend()
                .add_release("demo", commit, &[("main".into(), reference)])
                .await
                .unwrap(),
        );
    }
    let data = tempfile::tempdir().unwrap();
    let url = format!("http://{addr}");
    let settings = Settings {
        balena_url: "unused.example".into(),
        api_url: url.clone(),
        delta_url: url,
        data_directory: data.path().to_path_buf(),
        delta_api: bru_balena::DeltaApi::Pine,
    };
    let client = BalenaClient::new(&settings).unwrap();

    let r1 = client.release_by_id(releases[0].id).await.unwrap().unwrap();
    assert_eq!(r1.commit, "84d3d8f0aa");
    assert_eq!(r1.application_id, releases[0].fleet_id);
    assert_eq!(r1.images.len(), 1);
    assert_eq!(r1.images[0].service_name, "main");
    assert_eq!(r1.images[0].image_id, releases[0].images[0].id);
    assert!(client.release_by_id(9999).await.unwrap().is_none());
    let found = client.releases_by_commit("84d3d8f").await.unwrap();
    assert_eq!(found.len(), 2);
    assert!(client.releases_by_commit("ffff").await.unwrap().is_empty());

    let (src, dest) = (releases[0].images[0].id, releases[1].images[0].id);
    let image = client.image(dest).await.unwrap().unwrap();
    assert_eq!(image.location, releases[1].images[0].location);
    assert_eq!(
        image.content_hash.as_deref(),
        Some(releases[1].images[0].content_hash.as_str())
    );
    assert_eq!(image.size, releases[1].images[0].image_size);

    assert!(client.latest_delta(src, dest).await.unwrap().is_none());
    assert_eq!(
        client.request_delta(src, dest).await.unwrap(),
        DeltaTrigger::Building
    );
    let mut ready = false;
    for _ in 0..300 {
        if client.request_delta(src, dest).await.unwrap() == DeltaTrigger::Ready {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready);
    let delta = client.latest_delta(src, dest).await.unwrap().unwrap();
    assert_eq!(delta.status, bru_core::DeltaStatus::Success);
    assert_eq!(delta.version, 3);
    assert!(delta.size > 0 && delta.location.is_some());
    assert!(client.latest_delta(dest, src).await.unwrap().is_none());
}

#[tokio::test]
async fn unsupported_queries_and_auth_mode() {
    let (addr, _server, _store) = start(Auth::None).await;
    for path in [
        "/v7/release",
        "/v7/release(x)",
        "/v7/application",
        "/v7/delta?$filter=id%20eq%201",
    ] {
        let status = reqwest::get(format!("http://{addr}{path}"))
            .await
            .unwrap()
            .status();
        assert_eq!(status, 400, "{path}");
    }
    let key = include_bytes!("keys/rsa-test-public.pem");
    let verifier = bru_server::Verifier::from_pem(key).unwrap();
    let (addr, _server, _store) = start(Auth::Jwt(verifier)).await;
    let status = reqwest::get(format!("http://{addr}/v7/release(1)"))
        .await
        .unwrap()
        .status();
    assert_eq!(status, 401);
}
