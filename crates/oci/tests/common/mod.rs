//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bru_oci::{Descriptor, ImageSource, OciError};
use tokio::io::AsyncReadExt;

/// Reads a whole blob, returning the structured error when verification fails.
pub async fn read_blob(src: &dyn ImageSource, d: &Descriptor) -> Result<Vec<u8>, OciError> {
    let mut r = src.blob(d).await?;
    let mut v = Vec::new();
    match r.read_to_end(&mut v).await {
        Ok(_) => Ok(v),
        Err(e) => match e.into_inner().map(|b| b.downcast::<OciError>()) {
            Some(Ok(x)) => Err(*x),
            other => panic!("blob read failed without an OciError: {other:?}"),
        },
    }
}

/// A Debian `docker-registry` process on a free loopback port, killed on drop.
pub struct TestRegistry {
    pub addr: String,
    child: Option<Child>,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

impl TestRegistry {
    /// The shared CI registry (`BRU_TEST_REGISTRY`), or a fresh one started here.
    pub fn shared() -> TestRegistry {
        match std::env::var("BRU_TEST_REGISTRY") {
            Ok(addr) if !addr.is_empty() => TestRegistry {
                addr,
                child: None,
                _dir: None,
            },
            _ => Self::start(None),
        }
    }

    /// Starts a registry; with `htpasswd = Some((user, password))` it requires Basic auth.
    pub fn start(htpasswd: Option<(&str, &str)>) -> TestRegistry {
        assert!(
            Path::new(REGISTRY_BIN).exists(),
            "{REGISTRY_BIN} is missing: install Debian's docker-registry package (apt-get install docker-registry)"
        );
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let mut auth = String::new();
        if let Some((user, pass)) = htpasswd {
            let hash = bcrypt::hash(pass, 4).unwrap();
            let file = dir.path().join("htpasswd");
            std::fs::write(&file, format!("{user}:{hash}\n")).unwrap();
            auth = format!(
                "auth:\n  htpasswd:\n    realm: test-realm\n    path: {}\n",
                file.display()
            );
        }
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n{auth}",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start docker-registry");
        let reg = TestRegistry {
            addr,
            child: Some(child),
            _dir: Some(dir),
        };
        for _ in 0..100 {
            if std::net::TcpStream::connect(&reg.addr).is_ok() {
                return reg;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("docker-registry did not start on {}", reg.addr);
    }
}

/// A unique repository name per test run, so tests sharing a registry do not collide.
pub fn unique_repo(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("bru-oci-test/{prefix}-{}-{nanos}", std::process::id())
}
