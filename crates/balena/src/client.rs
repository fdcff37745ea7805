//! The HTTP client: pine queries against `apiUrl`, delta requests against `deltaUrl`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bru_core::{
    redact_url, Delta, DeltaService, DeltaTrigger, Error, Image, Release, ReleaseSource,
};
use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use reqwest::{StatusCode, Url};
use serde::de::DeserializeOwned;
use tokio::sync::Semaphore;

use crate::pine::{self, Query};
use crate::wire::{WireDelta, WireImage, WireRelease};
use crate::{Settings, SettingsError, Token};

/// How a running delta row counts as alive: updated within this window (the original's 3
/// minutes, leaving room for clock skew against the server's 5-minute staleness rule).
const RUNNING_WINDOW: chrono::TimeDelta = chrono::TimeDelta::minutes(3);

/// Tunables of [`BalenaClient`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// Per-request timeout (the original's 59 s).
    pub request_timeout: Duration,
    /// Most requests in flight at once.
    pub max_concurrent_requests: usize,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            request_timeout: Duration::from_secs(59),
            max_concurrent_requests: 8,
        }
    }
}

/// A client for the balena API and delta server.
///
/// Pine requests go to `<apiUrl>/v7/…` and follow redirects; delta requests go to
/// `<deltaUrl>/api/v3/delta` and do not. Both carry `Authorization: Bearer <token>` when a
/// token is stored; an expired session token fails every call before anything is sent. The
/// token is never refreshed.
#[derive(Debug, Clone)]
pub struct BalenaClient {
    api: reqwest::Client,
    delta: reqwest::Client,
    api_prefix: Url,
    delta_base: Url,
    /// The token and its ready-made `Authorization` header.
    token: Option<(Token, HeaderValue)>,
    limit: Arc<Semaphore>,
}

impl BalenaClient {
    /// A client for these settings, with the token from `<dataDirectory>/token`.
    pub fn new(settings: &Settings) -> Result<BalenaClient, SettingsError> {
        BalenaClient::with_config(settings, &ClientConfig::default())
    }

    /// Like [`BalenaClient::new`], with explicit tunables.
    pub fn with_config(
        settings: &Settings,
        config: &ClientConfig,
    ) -> Result<BalenaClient, SettingsError> {
        let token = match Token::load(&settings.data_directory)? {
            Some(token) => {
                let mut header = HeaderValue::from_str(&format!("Bearer {}", token.secret()))
                    .map_err(|_| SettingsError::MalformedToken)?;
                header.set_sensitive(true);
                Some((token, header))
            }
            None => None,
        };
        let base = |key: &'static str, value: &str, path: &str| {
            Url::parse(value)
                .and_then(|u| u.join(path))
                .map_err(|_| SettingsError::InvalidUrl {
                    key,
                    value: value.to_owned(),
                })
        };
        let api_prefix = base("apiUrl", &settings.api_url, "/v7/")?;
        let delta_base = base("deltaUrl", &settings.delta_url, "/")?;
        let builder = || {
            reqwest::Client::builder()
                .timeout(config.request_timeout)
                .user_agent(concat!("balena-release-update/", env!("CARGO_PKG_VERSION")))
        };
        let http_error = |e: reqwest::Error| SettingsError::HttpClient(Box::new(e));
        Ok(BalenaClient {
            api: builder().build().map_err(http_error)?,
            delta: builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .map_err(http_error)?,
            api_prefix,
            delta_base,
            token,
            limit: Arc::new(Semaphore::new(config.max_concurrent_requests.max(1))),
        })
    }

    /// The bearer header value, or `TokenExpired` if the session token expired.
    fn authorization(&self) -> Result<Option<HeaderValue>, Error> {
        match &self.token {
            Some((token, _)) if token.is_expired_at(chrono::Utc::now().timestamp()) => {
                Err(Error::TokenExpired)
            }
            Some((_, header)) => Ok(Some(header.clone())),
            None => Ok(None),
        }
    }

    /// Sends a GET and returns the status, headers' retry delay, content type and body.
    async fn get(&self, http: &reqwest::Client, url: Url, pine: bool) -> Result<Response, Error> {
        let auth = self.authorization()?;
        let _permit = self.limit.acquire().await.map_err(|e| Error::Network {
            url: redact_url(url.as_str()).into_owned(),
            source: Box::new(e),
        })?;
        let mut request = http.get(url.clone());
        if let Some(auth) = &auth {
            request = request.header(AUTHORIZATION, auth.clone());
        }
        if pine {
            request = request.header(
                "X-Balena-Client",
                concat!("balena-release-update/", env!("CARGO_PKG_VERSION")),
            );
        }
        tracing::debug!(url = %redact_url(url.as_str()), "GET");
        let transport = |e: reqwest::Error| {
            if e.is_timeout() {
                Error::NetworkTimeout {
                    url: redact_url(url.as_str()).into_owned(),
                }
            } else {
                Error::Network {
                    url: redact_url(url.as_str()).into_owned(),
                    source: Box::new(e.without_url()),
                }
            }
        };
        let response = request.send().await.map_err(transport)?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(bru_core::retry::parse_retry_after);
        let json = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("application/json"));
        let body = response.bytes().await.map_err(transport)?;
        tracing::debug!(url = %redact_url(url.as_str()), %status, bytes = body.len(), "response");
        Ok(Response {
            url,
            status,
            retry_after,
            json,
            body: body.to_vec(),
            sent_token: auth.is_some(),
        })
    }

    /// Runs a pine query and returns the deserialised elements of `d`.
    async fn pine<T: DeserializeOwned>(&self, query: &Query) -> Result<Vec<T>, Error> {
        let url = format!("{}{}", self.api_prefix, query.to_wire());
        let url = Url::parse(&url).map_err(|e| Error::Network {
            url: url.clone(),
            source: Box::new(e),
        })?;
        let response = self.get(&self.api, url, true).await?;
        if response.status == StatusCode::UNAUTHORIZED && !response.sent_token {
            return Err(Error::NotLoggedIn);
        }
        response.check()?;
        let invalid = |reason: String| Error::InvalidResponse {
            url: redact_url(response.url.as_str()).into_owned(),
            reason,
        };
        let value: serde_json::Value = serde_json::from_slice(&response.body)
            .map_err(|e| invalid(format!("invalid JSON in response: {e}")))?;
        let serde_json::Value::Object(mut object) = value else {
            return Err(invalid(format!(
                "Response was not a JSON object: '{}'",
                js_type(&value)
            )));
        };
        let Some(d) = object.remove("d") else {
            return Err(invalid(
                "Invalid response received, the 'd' property is missing.".to_owned(),
            ));
        };
        let serde_json::Value::Array(items) = d else {
            return Err(invalid(
                "Invalid response received, 'd' is not an array.".to_owned(),
            ));
        };
        if query.is_by_id() && items.len() > 1 {
            return Err(invalid(
                "Returned multiple results when only one was expected.".to_owned(),
            ));
        }
        items
            .into_iter()
            .map(|item| {
                serde_json::from_value(item)
                    .map_err(|e| invalid(format!("unexpected response shape: {e}")))
            })
            .collect()
    }

    fn release(&self, wire: WireRelease) -> Result<Release, Error> {
        wire.into_release()
            .map_err(|reason| Error::InvalidResponse {
                url: self.api_prefix.to_string(),
                reason,
            })
    }
}

/// JavaScript `typeof` of a JSON value.
fn js_type(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null | serde_json::Value::Array(_) | serde_json::Value::Object(_) => {
            "object"
        }
        serde_json::Value::Bool(_) => "boolean",
        serde_json::Value::Number(_) => "number",
        serde_json::Value::String(_) => "string",
    }
}

#[derive(Debug)]
struct Response {
    url: Url,
    status: StatusCode,
    retry_after: Option<Duration>,
    json: bool,
    body: Vec<u8>,
    sent_token: bool,
}

impl Response {
    /// `Err(Request)` for a status of 400 or more, with balena-request's message rules.
    fn check(&self) -> Result<(), Error> {
        if self.status.as_u16() < 400 {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&self.body).into_owned();
        let from_json = self
            .json
            .then(|| serde_json::from_slice::<serde_json::Value>(&self.body).ok())
            .flatten()
            .and_then(|v| {
                let text_of =
                    |v: Option<&serde_json::Value>| v.and_then(|v| v.as_str()).map(str::to_owned);
                text_of(v.pointer("/error/text"))
                    .or_else(|| text_of(v.get("message")))
                    .or_else(|| text_of(v.get("error")))
            });
        let message = from_json.unwrap_or(if text.is_empty() {
            "The request was unsuccessful".to_owned()
        } else {
            text
        });
        Err(Error::Request {
            status: self.status.as_u16(),
            message,
            retry_after: self.retry_after,
        })
    }
}

#[async_trait]
impl ReleaseSource for BalenaClient {
    async fn release_by_id(&self, id: u64) -> Result<Option<Release>, Error> {
        let found: Vec<WireRelease> = self.pine(&pine::release_by_id(id)).await?;
        found
            .into_iter()
            .next()
            .map(|w| self.release(w))
            .transpose()
    }

    async fn releases_by_commit(&self, prefix: &str) -> Result<Vec<Release>, Error> {
        let found: Vec<WireRelease> = self.pine(&pine::releases_by_commit(prefix)).await?;
        found.into_iter().map(|w| self.release(w)).collect()
    }

    async fn image(&self, id: u64) -> Result<Option<Image>, Error> {
        let found: Vec<WireImage> = self.pine(&pine::image(id)).await?;
        Ok(found.into_iter().next().map(Image::from))
    }

    async fn latest_delta(&self, src: u64, dest: u64) -> Result<Option<Delta>, Error> {
        let since = chrono::Utc::now() - RUNNING_WINDOW;
        let found: Vec<WireDelta> = self.pine(&pine::latest_delta(src, dest, since)).await?;
        Ok(found.into_iter().next().map(Delta::from))
    }
}

#[async_trait]
impl DeltaService for BalenaClient {
    /// `GET {deltaUrl}/api/v3/delta?src=ID&dest=ID`: 200 means the delta exists; 502, 504,
    /// a client timeout and other non-error statuses mean it is being built.
    async fn request_delta(&self, src: u64, dest: u64) -> Result<DeltaTrigger, Error> {
        let url = self
            .delta_base
            .join(&format!("/api/v3/delta?src={src}&dest={dest}"))
            .map_err(|e| Error::Network {
                url: self.delta_base.to_string(),
                source: Box::new(e),
            })?;
        let response = match self.get(&self.delta, url, false).await {
            Ok(response) => response,
            Err(Error::NetworkTimeout { url }) => {
                tracing::debug!(url = %redact_url(&url), "delta request timed out; assuming it is being built");
                return Ok(DeltaTrigger::Building);
            }
            Err(e) => return Err(e),
        };
        match response.status.as_u16() {
            200 => Ok(DeltaTrigger::Ready),
            502 | 504 => Ok(DeltaTrigger::Building),
            _ => response.check().map(|()| DeltaTrigger::Building),
        }
    }
}
