//! A real PostgreSQL server for tests: the one CI starts (`BRU_TEST_POSTGRES`), or a
//! private throwaway cluster on a free loopback port.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

/// Where Debian's `postgresql` package installs the server binaries (any version).
pub const POSTGRES_LIB: &str = "/usr/lib/postgresql";

/// A running PostgreSQL server on loopback, trusting local connections.
///
/// [`TestPostgres::shared`] uses the server CI starts (`BRU_TEST_POSTGRES=postgres://…`,
/// an administrator URL) or starts a private one; [`TestPostgres::start`] always starts a
/// private cluster (initdb into a temporary directory, run as the `postgres` user when
/// the tests run as root), which can be stopped and restarted and is removed when dropped.
/// Each test takes a database of its own with [`TestPostgres::create_database`].
#[derive(Debug)]
pub struct TestPostgres {
    /// Administrator URL (`postgres://postgres@127.0.0.1:PORT/postgres`).
    pub admin_url: String,
    private: Option<Private>,
}

#[derive(Debug)]
struct Private {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    running: bool,
    /// Server options besides the port and socket directory (TLS files).
    options: String,
    dir: tempfile::TempDir,
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        if let Some(p) = &self.private {
            if p.running {
                let _ = pg_ctl(p, &["-m", "immediate", "stop"]);
            }
        }
    }
}

static DATABASES: AtomicU32 = AtomicU32::new(0);

impl TestPostgres {
    /// The CI server (`BRU_TEST_POSTGRES`), or a private one started here.
    pub fn shared() -> TestPostgres {
        match std::env::var("BRU_TEST_POSTGRES") {
            Ok(url) if !url.is_empty() => TestPostgres {
                admin_url: url,
                private: None,
            },
            _ => Self::start(),
        }
    }

    /// Starts a private cluster.
    ///
    /// # Panics
    /// When the PostgreSQL binaries are missing or the server does not come up: this is
    /// test code, and a test without its database must fail loudly.
    pub fn start() -> TestPostgres {
        Self::start_with(false).0
    }

    /// Starts a private cluster that also accepts TLS, with a server certificate for
    /// `127.0.0.1` issued by a throwaway CA made with Debian's `openssl`; returns the server
    /// and the CA certificate (PEM) a client must trust.
    ///
    /// # Panics
    /// As [`TestPostgres::start`], and when `openssl` is missing.
    pub fn start_tls() -> (TestPostgres, PathBuf) {
        let (server, ca) = Self::start_with(true);
        (server, ca.expect("CA certificate"))
    }

    fn start_with(tls: bool) -> (TestPostgres, Option<PathBuf>) {
        let bin = server_bin();
        let dir = tempfile::tempdir().expect("temp dir");
        let data = dir.path().join("data");
        if is_root() {
            // The server refuses to run as root: the cluster belongs to `postgres`.
            run(Command::new("chown").arg("postgres:").arg(dir.path()));
        }
        run(as_postgres(&bin.join("initdb"))
            .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"])
            .arg("--locale=C")
            .arg("-D")
            .arg(&data));
        let (options, ca) = if tls {
            let (cert, key, ca) = make_certificates(dir.path());
            (
                format!(
                    "-c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
                    cert.display(),
                    key.display()
                ),
                Some(ca),
            )
        } else {
            (String::new(), None)
        };
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let mut private = Private {
            bin,
            data,
            port,
            running: false,
            options,
            dir,
        };
        start_server(&mut private);
        (
            TestPostgres {
                admin_url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
                private: Some(private),
            },
            ca,
        )
    }

    /// Creates an empty database and returns its URL.
    pub fn create_database(&self) -> String {
        let n = DATABASES.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let name = format!("bru_test_{}_{n}_{nanos}", std::process::id());
        self.psql(&self.admin_url, &format!("CREATE DATABASE {name}"))
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
        let base = self.admin_url.split('?').next().unwrap_or(&self.admin_url);
        let server = base.rsplit_once('/').map_or(base, |(server, _)| server);
        format!("{server}/{name}")
    }

    /// Runs `sql` with `psql` on the database at `url`; its output, or its error output.
    pub fn psql(&self, url: &str, sql: &str) -> Result<String, String> {
        let psql = self
            .private
            .as_ref()
            .map_or_else(server_bin, |p| p.bin.clone())
            .join("psql");
        let out = Command::new(psql)
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .arg("-d")
            .arg(url)
            .arg("-c")
            .arg(sql)
            .output()
            .expect("run psql");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Stops a private server (`pg_ctl stop -m fast`: clients are disconnected).
    ///
    /// # Panics
    /// For the shared CI server, which this test does not own.
    pub fn stop(&mut self) {
        let p = self
            .private
            .as_mut()
            .expect("only a private server can be stopped");
        let out = pg_ctl(p, &["-m", "fast", "-w", "stop"]);
        assert!(out.status.success(), "pg_ctl stop: {out:?}");
        p.running = false;
    }

    /// Starts a stopped private server again on its port and data.
    ///
    /// # Panics
    /// For the shared CI server, or when the server does not come up.
    pub fn start_again(&mut self) {
        let p = self
            .private
            .as_mut()
            .expect("only a private server can be started");
        start_server(p);
    }
}

fn start_server(p: &mut Private) {
    let log = p.dir.path().join("server.log");
    let options = format!(
        "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300 {}",
        p.port,
        p.dir.path().display(),
        p.options
    );
    let out = pg_ctl(
        p,
        &[
            "-w",
            "-t",
            "60",
            "-l",
            &log.display().to_string(),
            "-o",
            &options,
            "start",
        ],
    );
    let addr = format!("127.0.0.1:{}", p.port);
    assert!(
        out.status.success() && TcpStream::connect(&addr).is_ok(),
        "PostgreSQL did not start on {addr}: {out:?}\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    p.running = true;
}

/// A CA and a server certificate for `127.0.0.1` it issued, in `dir`: (server certificate,
/// server key, CA certificate). The key belongs to the server's user, mode 0600.
fn make_certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let (ca_key, ca) = (dir.join("ca.key"), dir.join("ca.crt"));
    let (key, csr, cert) = (
        dir.join("server.key"),
        dir.join("server.csr"),
        dir.join("server.crt"),
    );
    let ext = dir.join("server.ext");
    std::fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .expect("write the certificate extensions");
    let openssl = |args: &[&str]| {
        let mut c = Command::new("openssl");
        c.args(args).current_dir(dir);
        match c.output() {
            Ok(out) => assert!(out.status.success(), "openssl {args:?} failed: {out:?}"),
            Err(e) => panic!("run openssl (install Debian's openssl package): {e}"),
        }
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-days",
                "2",
                "-subj",
                "/CN=bru-test-ca",
            ],
        ]
        .concat(),
    );
    openssl(
        &[
            &["req"][..],
            &ec,
            &[
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=127.0.0.1",
            ],
        ]
        .concat(),
    );
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "server.ext",
    ]);
    let _ = (std::fs::remove_file(&ca_key), std::fs::remove_file(&csr));
    run(Command::new("chmod").arg("600").arg(&key));
    if is_root() {
        run(Command::new("chown").arg("postgres:").arg(&key).arg(&cert));
    }
    (cert, key, ca)
}

fn pg_ctl(p: &Private, args: &[&str]) -> Output {
    as_postgres(&p.bin.join("pg_ctl"))
        .arg("-D")
        .arg(&p.data)
        .args(args)
        .output()
        .expect("run pg_ctl")
}

/// The server binaries: `BRU_POSTGRES_BIN`, or the newest `/usr/lib/postgresql/*/bin`.
fn server_bin() -> PathBuf {
    if let Some(dir) = std::env::var_os("BRU_POSTGRES_BIN") {
        return PathBuf::from(dir);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(POSTGRES_LIB)
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .filter(|bin| bin.join("initdb").exists())
                .collect()
        })
        .unwrap_or_default();
    found.sort_by_key(|p| {
        p.parent()
            .and_then(Path::file_name)
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
    });
    found.pop().unwrap_or_else(|| {
        panic!(
            "no PostgreSQL server under {POSTGRES_LIB}/*/bin: install Debian's postgresql package \
             (apt-get install postgresql), or set BRU_TEST_POSTGRES to a server's admin URL"
        )
    })
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// `program` run as the `postgres` user when we are root, as ourselves otherwise.
fn as_postgres(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn run(c: &mut Command) {
    let out = c.output().unwrap_or_else(|e| panic!("run {c:?}: {e}"));
    assert!(out.status.success(), "{c:?} failed: {out:?}");
}
