//! The server's configuration and its start-up errors.

use std::path::PathBuf;
use std::time::Duration;

use bru_core::retry::RetryPolicy;
use bru_oci::RegistryOptions;
use bru_service::{Bandwidth, ClaimPolicy, Database};

use crate::{Limits, Verifier};

/// Errors starting the server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The token verification key is not usable.
    #[error("unusable public key: {reason}")]
    Key {
        /// Why.
        reason: String,
    },
    /// The store could not be opened.
    #[error("cannot open the store")]
    Store(#[source] bru_service::ServiceError),
    /// Serving failed (the listener broke).
    #[error("serving failed")]
    Serve(#[source] std::io::Error),
}

/// Who may ask for deltas.
#[derive(Debug, Clone)]
pub enum Auth {
    /// Anyone (explicit `--no-auth`).
    None,
    /// Holders of a registry token signed by this key.
    Jwt(Verifier),
}

/// How the server runs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The store directory (database and local deltas under `state/`).
    pub store_dir: PathBuf,
    /// Where the records are instead of `store_dir/state/store.sqlite`: a PostgreSQL
    /// database shared by several servers (default `None`: the SQLite file).
    pub database: Option<Database>,
    /// How registries are reached (plain-HTTP hosts, credentials).
    pub registry: RegistryOptions,
    /// Registries images may be read from: `HOST:PORT` matches exactly, a bare `HOST`
    /// matches that host on any port. Requests naming any other registry get 403.
    pub allowed_registries: Vec<String>,
    /// Token checking.
    pub auth: Auth,
    /// How long a request waits for a build before answering 504 (capped at [`MAX_POLL`](crate::MAX_POLL)).
    pub poll: Duration,
    /// Build-once rules (stale builds, failure cool-down).
    pub policy: ClaimPolicy,
    /// Download bandwidth of the devices deltas are built for, unless their fleet in the
    /// store has its own; `None` builds the fewest bytes.
    pub device_bandwidth: Option<Bandwidth>,
    /// Connection and request limits.
    pub limits: Limits,
    /// How long a tag's resolution to an image is reused before the registry is asked
    /// again (see the `tags` module; zero asks every time). Default 30 s.
    pub tag_ttl: Duration,
    /// The longest one build may take, retries included (default 2 h).
    pub build_timeout: Duration,
    /// A build without progress for this long is given up (default 10 min).
    pub stall_timeout: Duration,
    /// How a build retries its transient failures before it is given up (default
    /// [`RetryPolicy::BUILD`]).
    pub build_retry: RetryPolicy,
    /// Builds run at a time by this server, and claimed builds held waiting for one
    /// (`Some((workers, queue))`; see [`bru_service::Embedded::with_build_limits`]).
    /// Default `None`: no limits.
    pub build_limits: Option<(usize, usize)>,
}

impl ServerConfig {
    /// Defaults: 20 s long-poll, default claim policy and limits, no registries allowed,
    /// deltas for devices at 1 MB/s.
    pub fn new(store_dir: impl Into<PathBuf>, auth: Auth) -> Self {
        ServerConfig {
            store_dir: store_dir.into(),
            database: None,
            registry: RegistryOptions::default(),
            allowed_registries: Vec::new(),
            auth,
            poll: Duration::from_secs(20),
            policy: ClaimPolicy::default(),
            device_bandwidth: Some(Bandwidth::default()),
            limits: Limits::default(),
            tag_ttl: Duration::from_secs(30),
            build_timeout: Duration::from_secs(2 * 60 * 60),
            stall_timeout: Duration::from_secs(10 * 60),
            build_retry: RetryPolicy::BUILD,
            build_limits: None,
        }
    }
}
