//! The delta server of balena-release-update: the endpoint balena's supervisor asks for
//! v3 deltas, over the embedded store and build-once builds of `bru-service`.
//!
//! # Endpoints
//!
//! * `GET /api/v3/delta?src=REF&dest=REF`: the supervisor protocol (balena-delta-v3 §3).
//!   `REF` is a registry reference `HOST[:PORT]/REPO[:TAG][@sha256:…]`, sent unencoded
//!   (`%XX` escapes are decoded too), or a numeric image id of the store, as the
//!   release-update client's trigger sends them. Registry images are recorded in the
//!   store the first time they are seen (see the `images` module notes in the source).
//!   The answer comes within the long-poll budget (20 s by default, never more than 24 s;
//!   devices time out after 30 s or 59 s).
//! * `GET /api/v3/delta/status?src=REF&dest=REF`: the state of that delta (`ready` with its
//!   name and download bytes, `building`, `failed` or `none`) under the same checks, without
//!   starting a build (see the `status` module notes in the source).
//! * `GET /v7/release(ID)`, `/v7/release?$filter=startswith(commit,'…')…`, `/v7/image(ID)`,
//!   `/v7/delta?$filter=version eq 3 and originates_from__image eq A and produces__image eq B…`:
//!   the subset of balena's pine API the release-update clients read (`{"d": [...]}`), so
//!   they can use this server as their API. Served with `--no-auth` only (401 otherwise);
//!   other query shapes are 400.
//! * `GET /healthz`: 200 `ok`.
//! * `GET /metrics`: Prometheus counters: answers by status, builds started, succeeded and
//!   failed, build seconds, and bytes saved against full pulls.
//!
//! # Status codes of `/api/v3/delta`
//!
//! Checks run in this order: the query (400), the token's signature and times (401), the
//! allow list (403), then for each registry reference the token's audience (401) and access
//! (403), all before the store is read or the network touched. Image ids come next: without
//! auth an unknown id is 404; with a token an id answers 403 alike whether it is unknown, not
//! on a registry, or on a registry or repository the token does not grant, so ids cannot be
//! enumerated. Then reading the images (404, 422, 503) and the build (200, 422, 504). Store
//! image ids are not subject to the allow list: their locations were recorded by the
//! operator.
//!
//! Error bodies are `{"error": MESSAGE, "request_id": ID}`: a short message that names
//! nothing but what the client sent, and the request id under which the log has the details
//! (registry errors, build errors, store errors). Server paths, registry URLs and internal
//! error text never reach a body. Logged request targets and URLs have their credentials
//! masked (`access_token=***`, `user:***@`); the `Authorization` header is never logged.
//!
//! | status | when | device reaction |
//! |---|---|---|
//! | 200 `{"name":"HOST/REPO:delta-…"}` | the delta is ready; it lives in the destination repository | pulls it with the same token |
//! | 400 | `src`/`dest` missing, repeated or malformed; a non-registry reference | falls back to a regular pull |
//! | 401 | token missing, malformed, badly signed, expired, not yet valid, or its `aud` does not name the registry of a reference (either side) | retries later |
//! | 403 | a registry not on the allow list; the token's `access` lacks `pull` on either repository; with a token, any image id it does not grant (unknown ids included) | falls back |
//! | 404 | without auth, an image id unknown to the store; an image the registry does not have | falls back |
//! | 422 | the build failed permanently (bad image, unusable format, refused access: the error is remembered and the pair is not retried until the cool-down ends), the image cannot be used, or it is not on a registry | falls back |
//! | 503 + `Retry-After` | transient trouble: the registry is unreachable, too slow, answers 5xx or 429, or does not answer within the budget while the images are resolved; the last build of the pair was interrupted by such trouble or a full disk (nothing is remembered as failed; the pair is built again after a back-off of 30 s doubling to 10 min, with jitter); the store is busy or out of disk | retries later |
//! | 504 | the delta is still being built (the build continues) | retries soon, no back-off |
//! | 500 | the store failed permanently (corrupt database, schema too new) | retries later |
//!
//! # Deadlines of builds
//!
//! Every registry request has a connect timeout (30 s), a read timeout (60 s of silence,
//! headers or body) and a slow-transfer limit (16 KiB in every 30 s), see
//! [`bru_oci::Timeouts`]; idempotent requests are retried on 429, 5xx and transport errors
//! ([`bru_core::retry::RetryPolicy::REQUEST`], honouring `Retry-After`). A build retries its
//! transient failures ([`bru_core::retry::RetryPolicy::BUILD`]) within an overall deadline
//! (`--build-timeout-seconds`, 2 h). Its heartbeat runs only while the build reports
//! progress: after 10 minutes without any, the build is given up here and its row stops
//! being refreshed, so another instance takes it over when it goes stale. A build whose
//! process died on this machine is taken over by the next request at once; work
//! directories of dead builds are removed when the store is opened.
//!
//! # Limits
//!
//! Every connection and request is bounded ([`Limits`], defaults in brackets):
//!
//! | limit | default | beyond it |
//! |---|---|---|
//! | open connections (`--max-connections`), fitted to the open-file limit less [`FD_RESERVE`] | 512 | the connection waiting longest for a request is closed to make room; when every connection is answering a request, `503` with `Retry-After: 1` and close |
//! | request head arrival (`--header-timeout-seconds`), from accept or from the first byte on a kept-alive connection | 10 s | the connection is closed without an answer |
//! | silence of a kept-alive connection between requests (`--idle-timeout-seconds`) | 60 s | the connection is closed |
//! | request head (request line and headers) | 16 KiB | `431`, connection closed |
//! | header fields | 64 | `431`, connection closed |
//! | request target (path and query) | 4 KiB | `414` |
//! | request body | none (every endpoint is a `GET`) | `413`, connection closed |
//!
//! A request being answered is bounded by its handler (the long-poll budget), not by these
//! timeouts. `accept` failures such as running out of file descriptors are retried after
//! 100 ms; the server keeps answering on the connections it has.
//!
//! # Tokens
//!
//! With a [`Verifier`], requests need `Authorization: Bearer <JWT>`: a Docker token-auth
//! token as balena's API issues to devices (ES256 or RS256, following the key type). `exp`
//! is required, `nbf` is checked when present (10 s leeway), `aud` is required and must name
//! the registry of both images (a token for one allowed registry cannot read images of
//! another), and `access` must grant `pull` on both repositories
//! (`{"type":"repository","name":"<repo path without host>","actions":["pull"]}`).
//!
//! # Running next to openBalena
//!
//! * Devices: set `deltaEndpoint` in `config.json` to this server's URL, and the fleet
//!   configuration variables `BALENA_SUPERVISOR_DELTA=1` and
//!   `BALENA_SUPERVISOR_DELTA_VERSION=3`.
//! * Tokens: give `--jwt-public-key` the public half of the key the API signs registry
//!   tokens with (the key the registry verifies them with); devices send those tokens.
//! * Registry: `--allow-registry` names the openBalena registry. The server reads both
//!   images and pushes the delta into the destination repository, so it needs pull and push
//!   credentials there (`auths` of the Docker client config, as for every registry access of
//!   this program).
//!
//! # Standalone
//!
//! With `--no-auth` on a trusted network, `release add --store DIR` records releases and
//! `GET /api/v3/delta?src=<image id>&dest=<image id>` builds deltas between store images on
//! registries. Store images that are not on a registry (OCI layouts, docker-archives) are
//! refused with 422: their delta would be written where no device can pull it; the embedded
//! client (`--store DIR`) builds those.
#![deny(missing_docs)]

mod auth;
mod authorize;
mod config;
mod conn;
mod error;
mod images;
mod metrics;
mod pine;
mod query;
mod status;
mod tags;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use bru_service::{BuilderConfig, DeltaRequest, Embedded, ImageRecord};
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::trace::TraceLayer;

pub use auth::Verifier;
pub use config::{Auth, ServerConfig, ServerError};
pub use conn::{open_file_limit, Limits, FD_RESERVE};
pub use query::{parse_query, Requested};

use error::{error_body, ApiError, TRANSIENT_RETRY_AFTER};
use metrics::{BuildHook, Metrics};
use tags::TagCache;

/// The longest a delta request is held open: below the 25 s every supervisor tolerates.
pub const MAX_POLL: Duration = Duration::from_secs(24);

#[derive(Debug)]
struct AppState {
    backend: Embedded,
    config: ServerConfig,
    metrics: Arc<Metrics>,
    tags: TagCache,
}

/// A delta server over one store.
#[derive(Debug, Clone)]
pub struct Server {
    state: Arc<AppState>,
}

impl Server {
    /// Opens the store and prepares the builder.
    pub async fn open(config: ServerConfig) -> Result<Self, ServerError> {
        let metrics = Arc::new(Metrics::default());
        let mut builder = BuilderConfig::new(config.store_dir.join("state").join("deltas"));
        builder.registry = config.registry.clone();
        builder.device_bandwidth = config.device_bandwidth;
        builder.progress = Some(Arc::new(BuildHook(Arc::clone(&metrics))));
        builder.build_timeout = config.build_timeout;
        builder.stall_timeout = config.stall_timeout;
        builder.retry = config.build_retry;
        // Heartbeat well within the stale limit, so live builds are never taken over.
        builder.heartbeat_interval = (config.policy.stale_after / 3)
            .clamp(Duration::from_millis(100), Duration::from_secs(30));
        let backend = Embedded::open_with(
            &config.store_dir,
            config.database.as_ref(),
            builder,
            config.policy,
        )
        .await
        .map_err(ServerError::Store)?;
        let backend = match config.build_limits {
            Some((workers, queue)) => backend.with_build_limits(workers, queue),
            None => backend,
        };
        Ok(Server {
            state: Arc::new(AppState {
                backend,
                tags: TagCache::new(config.tag_ttl),
                config,
                metrics,
            }),
        })
    }

    /// The embedded backend (store and builder).
    pub fn backend(&self) -> &Embedded {
        &self.state.backend
    }

    /// The HTTP routes with request ids (`x-request-id`, generated unless the client sent
    /// one) and a tracing span per request.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/api/v3/delta", get(delta))
            .route("/api/v3/delta/status", get(status::delta_status))
            .route("/v7/{resource}", get(pine_read))
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/metrics", get(metrics_text))
            .with_state(Arc::clone(&self.state))
            .layer(axum::middleware::from_fn_with_state(
                self.state.config.limits.max_uri_bytes,
                request_limits,
            ))
            .layer(axum::middleware::from_fn(error_body))
            .layer(PropagateRequestIdLayer::x_request_id())
            .layer(
                TraceLayer::new_for_http().make_span_with(|req: &Request<_>| {
                    let id = req
                        .headers()
                        .get("x-request-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-");
                    let target = req.uri().to_string();
                    let uri = bru_core::redact_url(&target);
                    tracing::info_span!("request", id, method = %req.method(), %uri)
                }),
            )
            .layer(SetRequestIdLayer::x_request_id(Counter::default()))
    }

    /// Serves on `listener` until `shutdown` completes, then closes idle connections and
    /// lets open requests finish (at most [`MAX_POLL`] and 5 s longer). Builds still running
    /// are given up ([`Embedded::abandon_builds`]): the next server on the store builds them
    /// at once. Connections are held to [`ServerConfig::limits`]; failing `accept`s (such
    /// as running out of file descriptors) are retried after 100 ms, so the error is
    /// only returned if the listener cannot be used at all.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        listener.local_addr().map_err(ServerError::Serve)?;
        let limits = self.state.config.limits;
        conn::serve(
            listener,
            self.router(),
            limits,
            shutdown,
            MAX_POLL + Duration::from_secs(5),
        )
        .await;
        // Builds still running are given up, so that the next server builds them at once.
        if let Err(e) = self.state.backend.abandon_builds().await {
            tracing::warn!(error = %e, "cannot give up unfinished builds");
        }
        Ok(())
    }
}

/// Request ids: a per-process sequence number.
#[derive(Debug, Clone, Default)]
struct Counter(Arc<AtomicU64>);

impl MakeRequestId for Counter {
    fn make_request_id<B>(&mut self, _: &Request<B>) -> Option<RequestId> {
        let n = self.0.fetch_add(1, Ordering::Relaxed) + 1;
        HeaderValue::from_str(&format!("req-{n}"))
            .ok()
            .map(RequestId::new)
    }
}

/// Refuses request targets longer than the limit (414) and requests with a body (413):
/// every endpoint is a `GET`.
async fn request_limits(
    State(max_uri): State<usize>,
    req: Request<axum::body::Body>,
    next: axum::middleware::Next,
) -> Response {
    let target = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if target > max_uri {
        return ApiError::new(414, "the request target is too long").into_response();
    }
    let has_body = req.headers().contains_key(header::TRANSFER_ENCODING)
        || req
            .headers()
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");
    if has_body {
        let mut response = ApiError::new(413, "requests carry no body").into_response();
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return response;
    }
    next.run(req).await
}

async fn metrics_text(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

async fn pine_read(
    State(state): State<Arc<AppState>>,
    axum::extract::Path(resource): axum::extract::Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    if let Auth::Jwt(_) = state.config.auth {
        // Registry tokens are for devices; the read API is for a trusted network.
        return ApiError::new(401, "the pine read API is served with --no-auth only")
            .into_response();
    }
    match pine::answer(&state, &resource, query.as_deref().unwrap_or("")).await {
        Ok(body) => Json(body).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn delta(
    State(state): State<Arc<AppState>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let started = tokio::time::Instant::now();
    let response = match answer(&state, query.as_deref().unwrap_or(""), &headers, started).await {
        Ok(name) => (StatusCode::OK, Json(serde_json::json!({ "name": name }))).into_response(),
        Err(e) => e.into_response(),
    };
    state.metrics.request(response.status().as_u16());
    response
}

async fn answer(
    state: &AppState,
    query: &str,
    headers: &HeaderMap,
    started: tokio::time::Instant,
) -> Result<String, ApiError> {
    let (src, dest) = authorize::authorize(state, query, headers, started).await?;
    let deadline = started + state.config.poll.min(MAX_POLL);
    wait_for_delta(state, &src.image, &dest.image, deadline).await
}

/// Asks for the delta and long-polls it until `deadline`.
async fn wait_for_delta(
    state: &AppState,
    src: &ImageRecord,
    dest: &ImageRecord,
    deadline: tokio::time::Instant,
) -> Result<String, ApiError> {
    loop {
        match state.backend.request(src.id, dest.id).await {
            Ok(DeltaRequest::Ready(row)) => {
                return row
                    .location
                    .ok_or_else(|| ApiError::internal(&"a successful delta has no location"));
            }
            Ok(DeltaRequest::Failed(row)) => {
                return Err(ApiError::new(422, "the delta build failed")
                    .detail(row.error_message.as_deref().unwrap_or("unknown error")));
            }
            Ok(DeltaRequest::Building) => {}
            Ok(DeltaRequest::RetryLater { after, error }) => {
                return Err(
                    ApiError::new(503, "the delta build was interrupted; ask again later")
                        .retry_after(after)
                        .detail(error),
                );
            }
            Err(e) => return Err(ApiError::service(&e)),
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Err(ApiError::new(504, "the delta is being built; ask again"));
        }
        tokio::time::sleep((deadline - now).min(Duration::from_millis(200))).await;
    }
}
