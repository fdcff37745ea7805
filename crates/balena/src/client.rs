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
use crate::{DeltaApi, Settings, SettingsError, Token};

mod openbalena;

/// The most bytes read from one response: far above any pine answer this client asks for.
const MAX_RESPONSE_BYTES: usize = 16 << 20;

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
    /// `<apiUrl>/auth/v1/token`, where registry tokens come from.
    auth_url: Url,
    /// The token and its ready-made `Authorization` header.
    token: Option<(Token, HeaderValue)>,
    limit: Arc<Semaphore>,
    /// The `deltaApi` setting.
    delta_api: DeltaApi,
    /// The API's kind once known (set, or detected from its answers).
    flavour: Arc<tokio::sync::OnceCell<Flavour>>,
    /// Images and registry tokens of the `serve` protocol.
    serve: Arc<openbalena::Caches>,
}

/// Which kind of API the client talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flavour {
    /// balenaCloud: a `delta` resource and a delta server taking image ids.
    BalenaCloud,
    /// openBalena: no `delta` resource; deltas from `serve`.
    OpenBalena,
}

/// Which credentials a request carries.
#[derive(Debug, Clone)]
enum Credentials {
    /// The user's token, if one is stored.
    User,
    /// A registry token for the delta server.
    Registry(HeaderValue),
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
        let auth_url = base("apiUrl", &settings.api_url, "/auth/v1/token")?;
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
            auth_url,
            token,
            limit: Arc::new(Semaphore::new(config.max_concurrent_requests.max(1))),
            delta_api: settings.delta_api,
            flavour: Arc::new(match settings.delta_api {
                DeltaApi::Auto => tokio::sync::OnceCell::new(),
                DeltaApi::Pine => tokio::sync::OnceCell::new_with(Some(Flavour::BalenaCloud)),
                DeltaApi::Serve => tokio::sync::OnceCell::new_with(Some(Flavour::OpenBalena)),
            }),
            serve: Arc::default(),
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
        self.get_as(http, url, pine, Credentials::User).await
    }

    /// [`BalenaClient::get`] with the given credentials. The body is read up to
    /// [`MAX_RESPONSE_BYTES`]; a longer one is an error.
    async fn get_as(
        &self,
        http: &reqwest::Client,
        url: Url,
        pine: bool,
        credentials: Credentials,
    ) -> Result<Response, Error> {
        let (auth, user_token) = match credentials {
            Credentials::User => (self.authorization()?, true),
            Credentials::Registry(header) => (Some(header), false),
        };
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
        let mut response = request.send().await.map_err(transport)?;
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
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(transport)? {
            if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(Error::InvalidResponse {
                    url: redact_url(url.as_str()).into_owned(),
                    reason: format!("the response is larger than {MAX_RESPONSE_BYTES} bytes"),
                });
            }
            body.extend_from_slice(&chunk);
        }
        tracing::debug!(url = %redact_url(url.as_str()), %status, bytes = body.len(), "response");
        Ok(Response {
            url,
            status,
            retry_after,
            json,
            body,
            sent_token: auth.is_some() && user_token,
        })
    }

    /// Runs a pine query and returns the deserialised elements of `d`.
    async fn pine<T: DeserializeOwned>(&self, query: &Query) -> Result<Vec<T>, Error> {
        let response = self.pine_response(query).await?;
        Self::decode(query, &response)
    }

    /// Sends a pine query; a 401 to a request without a token is [`Error::NotLoggedIn`].
    async fn pine_response(&self, query: &Query) -> Result<Response, Error> {
        let url = format!("{}{}", self.api_prefix, query.to_wire());
        let url = Url::parse(&url).map_err(|e| Error::Network {
            url: url.clone(),
            source: Box::new(e),
        })?;
        let response = self.get(&self.api, url, true).await?;
        if response.status == StatusCode::UNAUTHORIZED && !response.sent_token {
            return Err(Error::NotLoggedIn);
        }
        Ok(response)
    }

    /// The elements of `d` in a pine answer, or the answer's error.
    fn decode<T: DeserializeOwned>(query: &Query, response: &Response) -> Result<Vec<T>, Error> {
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
        let message = from_json.unwrap_or(if text.is_empty() && self.status.as_u16() == 401 {
            // openBalena (pinejs) refuses a token with an empty body; balenaCloud says this.
            "Unauthorized".to_owned()
        } else if text.is_empty() {
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

impl BalenaClient {
    /// The API's kind: set by the `deltaApi` setting, or detected once (see [`DeltaApi::Auto`]).
    async fn flavour(&self) -> Result<Flavour, Error> {
        self.flavour
            .get_or_try_init(|| self.detect())
            .await
            .copied()
    }

    /// Asks the API whether it has a `delta` resource.
    async fn detect(&self) -> Result<Flavour, Error> {
        let response = self.pine_response(&pine::delta_probe()).await?;
        let flavour = match response.status.as_u16() {
            200..=299 => Flavour::BalenaCloud,
            401 | 404 if response.body.is_empty() && response.sent_token => Flavour::OpenBalena,
            _ => {
                response.check()?;
                return Err(Error::InvalidResponse {
                    url: redact_url(response.url.as_str()).into_owned(),
                    reason: format!("unexpected status {} to the delta probe", response.status),
                });
            }
        };
        tracing::info!(?flavour, "detected the API's kind");
        Ok(flavour)
    }

    /// A release query: balenaCloud's, unless the API is (or turns out to be) openBalena's,
    /// whose release has no `is_created_by__user` (500 with an empty body).
    async fn releases(&self, cloud: Query, open: Query) -> Result<Vec<WireRelease>, Error> {
        if self.flavour.get() == Some(&Flavour::OpenBalena) {
            return self.pine(&open).await;
        }
        let response = self.pine_response(&cloud).await?;
        if response.status.is_success() {
            // Only balenaCloud's API knows the creating user.
            let _ = self.flavour.set(Flavour::BalenaCloud);
        } else if response.status == StatusCode::INTERNAL_SERVER_ERROR
            && response.body.is_empty()
            && self.delta_api == DeltaApi::Auto
        {
            // Undecided probes are not remembered: the next such answer probes again.
            match self.flavour().await {
                Ok(Flavour::OpenBalena) => return self.pine(&open).await,
                Ok(Flavour::BalenaCloud) => {}
                Err(e) => tracing::debug!(error = %e, "could not tell the API's kind"),
            }
        }
        Self::decode(&cloud, &response)
    }
}

#[async_trait]
impl ReleaseSource for BalenaClient {
    async fn release_by_id(&self, id: u64) -> Result<Option<Release>, Error> {
        let found = self
            .releases(pine::release_by_id(id), pine::openbalena_release_by_id(id))
            .await?;
        found
            .into_iter()
            .next()
            .map(|w| self.release(w))
            .transpose()
    }

    async fn releases_by_commit(&self, prefix: &str) -> Result<Vec<Release>, Error> {
        let found = self
            .releases(
                pine::releases_by_commit(prefix),
                pine::openbalena_releases_by_commit(prefix),
            )
            .await?;
        found.into_iter().map(|w| self.release(w)).collect()
    }

    async fn image(&self, id: u64) -> Result<Option<Image>, Error> {
        if self.flavour.get() == Some(&Flavour::OpenBalena) {
            // Kept: the delta state of a pair is asked for by the images' references.
            return self.cached_image(id).await;
        }
        let found: Vec<WireImage> = self.pine(&pine::image(id)).await?;
        Ok(found.into_iter().next().map(Image::from))
    }

    /// balenaCloud: the newest successful or recently running row of the API's `delta`
    /// resource. openBalena: the state `serve` reports for the images' references.
    async fn latest_delta(&self, src: u64, dest: u64) -> Result<Option<Delta>, Error> {
        if self.flavour().await? == Flavour::OpenBalena {
            return self.serve_status(src, dest).await;
        }
        let since = chrono::Utc::now() - RUNNING_WINDOW;
        let found: Vec<WireDelta> = self.pine(&pine::latest_delta(src, dest, since)).await?;
        Ok(found.into_iter().next().map(Delta::from))
    }
}

#[async_trait]
impl DeltaService for BalenaClient {
    /// balenaCloud: `GET {deltaUrl}/api/v3/delta?src=ID&dest=ID` with the user's token.
    /// openBalena: `GET {deltaUrl}/api/v3/delta?src=REF&dest=REF` with a registry token, as
    /// a device asks. 200 means the delta exists; 502, 504, a client timeout and other
    /// non-error statuses mean it is being built.
    async fn request_delta(&self, src: u64, dest: u64) -> Result<DeltaTrigger, Error> {
        if self.flavour().await? == Flavour::OpenBalena {
            return self.serve_request(src, dest).await;
        }
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
        trigger_answer(&response)
    }
}

/// What a delta request's answer means: 200 ready; 502 and 504 being built; an error
/// status an error; anything else being built.
fn trigger_answer(response: &Response) -> Result<DeltaTrigger, Error> {
    match response.status.as_u16() {
        200 => Ok(DeltaTrigger::Ready),
        502 | 504 => Ok(DeltaTrigger::Building),
        _ => response.check().map(|()| DeltaTrigger::Building),
    }
}
