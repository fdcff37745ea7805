//! Test fixtures shared by the workspace's integration tests.
//!
//! [`TestRegistry`] is a real OCI Distribution registry (Debian's
//! `docker-registry`): the one CI starts (`BRU_TEST_REGISTRY=HOST:PORT`), or a
//! private one started on a free loopback port for the test and killed when
//! dropped. A missing binary fails the test with an install hint; it never
//! skips silently. [`TestPostgres`] is a real PostgreSQL server, found or started
//! the same way.

#![deny(missing_docs)]

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Where Debian's `docker-registry` package installs the registry.
pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// A running registry speaking plain HTTP on loopback.
#[derive(Debug)]
pub struct TestRegistry {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    child: Option<Child>,
    config: Option<std::path::PathBuf>,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl TestRegistry {
    /// The shared CI registry (`BRU_TEST_REGISTRY`), or a fresh one started here.
    pub fn shared() -> TestRegistry {
        match std::env::var("BRU_TEST_REGISTRY") {
            Ok(addr) if !addr.is_empty() => TestRegistry {
                addr,
                child: None,
                config: None,
                _dir: None,
            },
            _ => Self::start(None),
        }
    }

    /// Starts a private registry; with `htpasswd = Some((user, password))` it
    /// requires HTTP Basic auth.
    ///
    /// # Panics
    /// When the binary is missing or the registry does not come up: this is
    /// test code, and a test without its registry must fail loudly.
    pub fn start(htpasswd: Option<(&str, &str)>) -> TestRegistry {
        assert!(
            Path::new(REGISTRY_BIN).exists(),
            "{REGISTRY_BIN} is missing: install Debian's docker-registry package (apt-get install docker-registry)"
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let addr = format!("127.0.0.1:{port}");
        let mut auth = String::new();
        if let Some((user, password)) = htpasswd {
            let hash = bcrypt::hash(password, 4).expect("bcrypt");
            let file = dir.path().join("htpasswd");
            std::fs::write(&file, format!("{user}:{hash}\n")).expect("write htpasswd");
            auth = format!(
                "auth:\n  htpasswd:\n    realm: test-realm\n    path: {}\n",
                file.display()
            );
        }
        let config = dir.path().join("config.yml");
        let yaml = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n{auth}",
            dir.path().join("data").display()
        );
        std::fs::write(&config, yaml).expect("write registry config");
        let mut registry = TestRegistry {
            addr,
            child: None,
            config: Some(config),
            _dir: Some(dir),
        };
        registry.restart();
        registry
    }

    /// Kills a registry started by [`TestRegistry::start`] with SIGKILL (its data stays).
    ///
    /// # Panics
    /// For the shared CI registry, which this test does not own.
    pub fn kill_hard(&mut self) {
        let child = self
            .child
            .as_mut()
            .expect("only a private registry can be killed");
        child.kill().expect("kill docker-registry");
        let _ = child.wait();
        self.child = None;
    }

    /// (Re)starts a private registry on its address and data, and waits until it accepts
    /// connections.
    ///
    /// # Panics
    /// For the shared CI registry, or when the registry does not come up.
    pub fn restart(&mut self) {
        let config = self
            .config
            .clone()
            .expect("only a private registry can be restarted");
        if self.child.is_some() {
            self.kill_hard();
        }
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start docker-registry");
        self.child = Some(child);
        for _ in 0..200 {
            if TcpStream::connect(&self.addr).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("docker-registry did not start on {}", self.addr);
    }
}

mod postgres;
mod proxy;
pub use postgres::TestPostgres;
pub use proxy::{FaultProxy, ProxyMode};

/// A repository name unique to this test run, so tests sharing a registry do not collide.
pub fn unique_repo(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("bru-test/{prefix}-{}-{nanos}", std::process::id())
}

/// `len` deterministic, incompressible bytes from `seed` (xorshift64*): layer contents
/// that gzip cannot shrink.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// `len` deterministic bytes from `seed` that alternate 4 KiB of [`noise`] with 4 KiB of a
/// repeated phrase: a compressor meets both stored-like and well-matched stretches.
pub fn half_compressible(seed: u64, len: usize) -> Vec<u8> {
    let mut v = noise(seed, len);
    for (i, b) in v.iter_mut().enumerate() {
        if (i / 4096) % 2 == 1 {
            *b = b"delta layer "[i % 12];
        }
    }
    v
}

/// Copies the image `from` to `to` (any references [`bru_oci::ImageReference`] parses), blob
/// by blob, keeping the manifest bytes.
///
/// # Panics
/// When either side cannot be opened or the copy fails (test code).
pub async fn copy_image(from: &str, to: &str, opts: &bru_oci::RegistryOptions) {
    let (from, to): (bru_oci::ImageReference, bru_oci::ImageReference) = (
        from.parse().expect("source reference"),
        to.parse().expect("destination reference"),
    );
    let src = bru_oci::open_source(&from, opts)
        .await
        .expect("open source");
    let sink = bru_oci::open_sink(&to, opts).await.expect("open sink");
    bru_oci::copy_image(&*src, &*sink)
        .await
        .expect("copy the image");
}

#[cfg(feature = "openbalena")]
pub mod openbalena;
