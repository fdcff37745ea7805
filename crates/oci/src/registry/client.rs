//! A connection to one registry host: URLs, requests with authentication and retries, and
//! the errors of answers and transports.

use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use futures::TryStreamExt;
use reqwest::header::RETRY_AFTER;
use reqwest::{Method, Response, StatusCode};
use serde::Deserialize;
use tokio::io::AsyncReadExt;

use bru_core::retry::{parse_retry_after, RetryPolicy};

use super::auth::{docker_config_credentials, AuthState};
use super::{Credentials, RegistryOptions};
use crate::OciError;

/// A connection to one registry host.
pub(super) struct Client {
    pub(super) http: reqwest::Client,
    pub(super) min_speed: (u64, Duration),
    pub(super) registry: String,
    pub(super) base: String,
    pub(super) credentials: Option<Credentials>,
    pub(super) state: Mutex<AuthState>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .field("credentials", &self.credentials)
            .finish_non_exhaustive()
    }
}

/// Reads a registry error body into a structured error.
pub(super) async fn status_error(resp: Response) -> OciError {
    #[derive(Deserialize)]
    struct Item {
        code: Option<String>,
        message: Option<String>,
    }
    #[derive(Deserialize)]
    struct Body {
        errors: Vec<Item>,
    }
    let status = resp.status();
    let mut url = resp.url().clone();
    url.set_query(None);
    let body = read_limited(resp, "error body", 64 * 1024)
        .await
        .unwrap_or_default();
    let first = serde_json::from_slice::<Body>(&body)
        .ok()
        .and_then(|b| b.errors.into_iter().next());
    let (code, message) = match first {
        Some(i) => (i.code, i.message.unwrap_or_default()),
        None => (None, String::new()),
    };
    OciError::Registry {
        status: status.as_u16(),
        code,
        message: if message.is_empty() {
            status
                .canonical_reason()
                .unwrap_or("error")
                .to_ascii_lowercase()
        } else {
            message
        },
        url: url.to_string(),
    }
}

/// A body read error as an I/O error whose kind says whether it timed out (transient
/// either way, see [`OciError::is_transient`]).
pub(super) fn stream_error(e: reqwest::Error) -> std::io::Error {
    let kind = if e.is_timeout() {
        std::io::ErrorKind::TimedOut
    } else {
        std::io::ErrorKind::ConnectionAborted
    };
    std::io::Error::new(kind, e)
}

/// Reads a response body of at most `limit` bytes ([`OciError::TooLarge`] beyond).
pub(super) async fn read_limited(
    resp: Response,
    what: &'static str,
    limit: u64,
) -> Result<Vec<u8>, OciError> {
    let url = resp.url().to_string();
    let stream = resp.bytes_stream().map_err(stream_error);
    let mut out = Vec::new();
    tokio_util::io::StreamReader::new(stream)
        .take(limit + 1)
        .read_to_end(&mut out)
        .await
        .map_err(|e| OciError::Http {
            url,
            reason: e.to_string(),
        })?;
    if out.len() as u64 > limit {
        return Err(OciError::TooLarge { what, limit });
    }
    Ok(out)
}

/// Turns a transport error into an [`OciError`], recovering a digest or size mismatch raised by
/// a verifying upload body.
pub(super) fn transport_error(url: &str, err: reqwest::Error) -> OciError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&err);
    while let Some(e) = source {
        let oci = e.downcast_ref::<OciError>().or_else(|| {
            e.downcast_ref::<std::io::Error>()
                .and_then(OciError::from_io)
        });
        match oci {
            Some(OciError::DigestMismatch { expected, actual }) => {
                return OciError::DigestMismatch {
                    expected: expected.clone(),
                    actual: actual.clone(),
                }
            }
            Some(OciError::SizeMismatch {
                digest,
                expected,
                actual,
            }) => {
                return OciError::SizeMismatch {
                    digest: digest.clone(),
                    expected: *expected,
                    actual: *actual,
                }
            }
            _ => source = e.source(),
        }
    }
    let mut reason = err.to_string();
    let mut s = std::error::Error::source(&err);
    while let Some(e) = s {
        reason.push_str(": ");
        reason.push_str(&e.to_string());
        s = e.source();
    }
    OciError::Http {
        url: url.to_string(),
        reason,
    }
}

impl Client {
    pub(super) fn new(registry: &str, opts: &RegistryOptions) -> Result<Self, OciError> {
        let insecure = opts.insecure.iter().any(|h| h == registry);
        let scheme = if insecure { "http" } else { "https" };
        let http = opts
            .clients
            .get(insecure, &opts.timeouts)
            .map_err(|e| OciError::Http {
                url: registry.to_string(),
                reason: e.to_string(),
            })?;
        let credentials = opts
            .credentials
            .clone()
            .or_else(|| docker_config_credentials(registry, opts.docker_config.as_deref()));
        Ok(Client {
            http,
            min_speed: opts.timeouts.min_speed,
            registry: registry.to_string(),
            base: format!("{scheme}://{registry}"),
            credentials,
            state: Mutex::new(AuthState::default()),
        })
    }

    pub(super) fn url(&self, path: &str) -> String {
        format!("{}/v2/{}", self.base, path)
    }

    /// Sends a request built by `build`, authenticating on a 401 challenge and retrying
    /// idempotent requests on 429/5xx and on transport failures, as [`RetryPolicy::REQUEST`]
    /// says (honouring `Retry-After`). The response is returned whatever its status.
    pub(super) async fn send(
        &self,
        method: Method,
        url: &str,
        scopes: &[String],
        build: &(dyn Fn(reqwest::RequestBuilder) -> Result<reqwest::RequestBuilder, OciError>
              + Send
              + Sync),
    ) -> Result<Response, OciError> {
        let key = scopes.join(" ");
        let idempotent = method == Method::GET || method == Method::HEAD;
        let mut authenticated = false;
        let policy = RetryPolicy::REQUEST;
        let mut retry = 0;
        loop {
            let req = self.authorize(self.http.request(method.clone(), url), &key);
            let resp = match build(req)?.send().await {
                Ok(resp) => resp,
                Err(e) => {
                    let err = transport_error(url, e);
                    retry += 1;
                    match policy.delay(retry, None).filter(|_| idempotent) {
                        Some(delay) if err.is_transient() => {
                            tracing::debug!(url = %bru_core::redact_url(url), error = %err, retry, ?delay, "retrying");
                            tokio::time::sleep(delay).await;
                            continue;
                        }
                        _ => return Err(err),
                    }
                }
            };
            let status = resp.status();
            if status == StatusCode::UNAUTHORIZED && !authenticated {
                authenticated = true;
                if self.authenticate(resp.headers(), scopes).await? {
                    continue;
                }
            } else if idempotent
                && (status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error())
            {
                let retry_after = resp
                    .headers()
                    .get(RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_retry_after);
                retry += 1;
                if let Some(delay) = policy.delay(retry, retry_after) {
                    tracing::debug!(url = %bru_core::redact_url(url), status = status.as_u16(), retry, ?delay, "retrying");
                    tokio::time::sleep(delay).await;
                    continue;
                }
            }
            return Ok(resp);
        }
    }
}
