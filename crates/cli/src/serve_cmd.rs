//! `serve`: the delta server devices ask for v3 deltas (see the bru-server crate).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _};
use bru_server::{open_file_limit, Auth, Limits, Server, ServerConfig, Verifier, MAX_POLL};
use bru_service::{Bandwidth, Database};
use clap::Args;

/// Status codes of /api/v3/delta, for `serve --help`.
pub const STATUS_CODES: &str = "\
Endpoints:
  GET /api/v3/delta?src=REF&dest=REF   REF: HOST[:PORT]/REPO[:TAG][@sha256:...] (unencoded) or a store image id
  GET /api/v3/delta/status?src=REF&dest=REF
                                        the delta's state without building it, under the same checks:
                                        {\"status\":\"ready\",\"id\":N,\"version\":3,\"name\":\"HOST/REPO:delta-...\",\"download_bytes\":N},
                                        or \"building\", \"failed\" or \"interrupted\" (with retry_after_seconds), or \"none\"
  GET /v7/release, /v7/image, /v7/delta the pine read subset the release-update clients use (--no-auth only)
  GET /healthz                          200 ok
  GET /metrics                          Prometheus counters

Status codes of /api/v3/delta:
  200  {\"name\":\"HOST/REPO:delta-...\"}: the delta is ready (in the destination repository)
  400  src/dest missing, repeated or malformed; not a registry reference or image id
  401  token missing, malformed, badly signed, expired or not yet valid; aud does not name both registries
  403  registry not on --allow-registry; the token's access claim lacks pull on src or dest repository;
       with a token, an image id it does not grant (unknown ids alike)
  404  without auth, an unknown image id; the registry does not have the image
  422  the build failed (remembered; not retried until the cool-down ends), or the image cannot be used
  503  the registry is unreachable or answers 5xx while the images are resolved; the database
       is unreachable, restarting or out of connections (Retry-After)
  504  the delta is still being built (the build continues), or waits for a server with a
       free --workers slot; ask again
  500  the store failed
Error bodies: {\"error\": short message, \"request_id\": id}; details are in the log under that id.

Limits:
  request target (path and query) at most 4 KiB           414
  request head at most 16 KiB and 64 header fields       431, connection closed
  a request body (every endpoint is a GET)                413
  head not complete within --header-timeout-seconds      connection closed
  more than --max-connections open, all busy             503 Retry-After: 1, connection closed";

/// The environment variable that may carry `--database` (its value is never shown).
pub const DATABASE_ENV: &str = "BRU_DATABASE_URL";

/// Serve the supervisor's delta endpoint (GET /api/v3/delta) over an embedded store.
///
/// Deltas are built once per image pair, in the background, into the destination
/// repository on the destination's registry. A request waits for its delta up to the
/// long-poll budget, then answers 504 (devices ask again). Logs (one request id per
/// request) go to stderr. SIGINT or SIGTERM stop accepting, let open requests finish and
/// exit; unfinished builds are given up so that the next start builds them at once.
#[derive(Debug, Args)]
#[command(after_help = STATUS_CODES)]
pub struct ServeArgs {
    /// Address to listen on, e.g. 0.0.0.0:8080.
    #[arg(long, value_name = "ADDR")]
    listen: String,
    /// The store directory (database in DIR/state/, created if missing).
    #[arg(long, value_name = "DIR")]
    store: PathBuf,
    /// Keep the records in this database instead of DIR/state/store.sqlite:
    /// postgres://USER:PASSWORD@HOST[:PORT]/DB, shared by any number of servers (each with
    /// its own --store), or sqlite:PATH. Migrated at start.
    #[arg(long, value_name = "URL", env = DATABASE_ENV, hide_env_values = true)]
    database: Option<Database>,
    #[command(flatten)]
    registry: crate::registry_args::RegistryArgs,
    /// A registry images may be read from and deltas written to (HOST:PORT exactly, or HOST
    /// on any port); repeatable. Requests naming any other registry get 403.
    #[arg(long = "allow-registry", value_name = "HOST[:PORT]")]
    allow: Vec<String>,
    /// PEM public key that signs device tokens (EC P-256 → ES256, RSA → RS256).
    #[arg(long, value_name = "FILE", conflicts_with = "no_auth")]
    jwt_public_key: Option<PathBuf>,
    /// Accept requests without a token (for a trusted network only).
    #[arg(long)]
    no_auth: bool,
    /// Seconds a request waits for a running build before answering 504 (at most 24).
    #[arg(long, value_name = "SECONDS", default_value_t = 20)]
    poll_seconds: u64,
    /// A build whose heartbeat is older than this is taken over (its server died).
    #[arg(long, value_name = "SECONDS", default_value_t = 300)]
    stale_seconds: u64,
    /// Build deltas for devices downloading this many MB/s (fewest bytes when slow, cheapest
    /// apply when fast), unless the fleet has its own (`release set-bandwidth`).
    #[arg(long, value_name = "MBPS", default_value = "1")]
    device_bandwidth: Bandwidth,
    /// Reuse a tag's resolution to an image for this long before asking the registry again
    /// (0: ask on every request). A moved tag is seen at most this late.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    tag_cache_seconds: u64,
    /// Open connections at most; at the cap a new connection closes the one waiting longest
    /// for a request (503 when all are busy). Lowered at start to the open-file limit less 64.
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_connections)]
    max_connections: usize,
    /// A request head (request line and headers) must arrive within this time, counted from
    /// accept or from its first byte on a kept-alive connection.
    #[arg(long, value_name = "SECONDS", default_value_t = Limits::default().header_read_timeout.as_secs())]
    header_timeout_seconds: u64,
    /// A kept-alive connection silent for this long between requests is closed.
    #[arg(long, value_name = "SECONDS", default_value_t = Limits::default().idle_timeout.as_secs())]
    idle_timeout_seconds: u64,
    /// The longest one delta build may take, retries of transient failures included; past
    /// it the build is given up (not recorded as failed) and tried again later.
    #[arg(long, value_name = "SECONDS", default_value_t = 7200)]
    build_timeout_seconds: u64,
    /// A build that shows no progress for this long stops its heartbeat (so another server
    /// takes it over) and is given up here.
    #[arg(long, value_name = "SECONDS", default_value_t = 600)]
    stall_timeout_seconds: u64,
    /// Delta builds this server runs at a time [default: the number of CPUs].
    #[arg(long, value_name = "N")]
    workers: Option<usize>,
    /// Claimed builds held waiting for a worker. Beyond them, requests for deltas that need
    /// a build get 504 without a claim (another server, or this one later, builds them).
    #[arg(long, value_name = "N", default_value_t = 16)]
    build_queue: usize,
    /// A registry that sends nothing for this long (headers or body) fails the request
    /// (retried, then the build is retried later).
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    registry_read_timeout_seconds: u64,
}

/// Runs the server on its own multi-threaded runtime until SIGINT or SIGTERM.
pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let auth = match (&args.jwt_public_key, args.no_auth) {
        (Some(path), false) => {
            let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            Auth::Jwt(Verifier::from_pem(&pem).with_context(|| format!("key {}", path.display()))?)
        }
        (None, true) => Auth::None,
        _ => bail!("give --jwt-public-key FILE, or --no-auth to accept requests without a token"),
    };
    let registry = args.registry.options()?;
    let poll = Duration::from_secs(args.poll_seconds);
    if poll > MAX_POLL {
        bail!("--poll-seconds must be at most {}", MAX_POLL.as_secs());
    }
    if args.allow.is_empty() {
        tracing::warn!("no --allow-registry: only store image ids can be requested");
    }
    let mut config = ServerConfig::new(&args.store, auth);
    config.database = args.database.clone();
    config.registry = registry;
    config.allowed_registries = args.allow;
    config.poll = poll;
    if args.stale_seconds == 0 {
        bail!("--stale-seconds must be at least 1");
    }
    config.policy.stale_after = Duration::from_secs(args.stale_seconds);
    config.device_bandwidth = Some(args.device_bandwidth);
    config.tag_ttl = Duration::from_secs(args.tag_cache_seconds);
    if args.max_connections == 0
        || args.header_timeout_seconds == 0
        || args.idle_timeout_seconds == 0
    {
        bail!("--max-connections, --header-timeout-seconds and --idle-timeout-seconds must be at least 1");
    }
    if args.build_timeout_seconds == 0
        || args.stall_timeout_seconds == 0
        || args.registry_read_timeout_seconds == 0
    {
        bail!("--build-timeout-seconds, --stall-timeout-seconds and --registry-read-timeout-seconds must be at least 1");
    }
    let workers = match args.workers {
        Some(0) => bail!("--workers must be at least 1"),
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    config.build_limits = Some((workers, args.build_queue));
    config.build_timeout = Duration::from_secs(args.build_timeout_seconds);
    config.stall_timeout = Duration::from_secs(args.stall_timeout_seconds);
    config.registry.timeouts.read = Duration::from_secs(args.registry_read_timeout_seconds);
    config.limits.max_connections = args.max_connections;
    config.limits.header_read_timeout = Duration::from_secs(args.header_timeout_seconds);
    config.limits.idle_timeout = Duration::from_secs(args.idle_timeout_seconds);
    let max_connections = config.limits.connection_cap(open_file_limit());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let server = Server::open(config)
            .await
            .with_context(|| match &args.database {
                Some(database) => format!("opening store {} on {database}", args.store.display()),
                None => format!("opening store {}", args.store.display()),
            })?;
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .with_context(|| format!("listening on {}", args.listen))?;
        let addr = listener
            .local_addr()
            .context("reading the listen address")?;
        let database = args.database.as_ref().map(ToString::to_string);
        tracing::warn!(%addr, max_connections, database, "serving");
        server.serve(listener, shutdown_signal()).await?;
        tracing::warn!("stopped");
        Ok(ExitCode::SUCCESS)
    })
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    tracing::warn!("shutting down");
}
