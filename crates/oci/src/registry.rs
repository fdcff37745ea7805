//! OCI Distribution registry client: manifests, blobs, uploads, cross-repository mounts, and
//! anonymous, Basic and Bearer (Docker token flow) authentication.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use futures::TryStreamExt;
use reqwest::header::{
    HeaderMap, ACCEPT, CONTENT_LENGTH, CONTENT_TYPE, LOCATION, RETRY_AFTER, WWW_AUTHENTICATE,
};
use reqwest::{Method, Response, StatusCode};
use serde::Deserialize;
use tokio::io::AsyncReadExt;

use bru_core::retry::{parse_retry_after, RetryPolicy};

use crate::deadline::{shared_client, MinSpeed, Timeouts};
use crate::types::{media_type, MAX_DOCUMENT_SIZE};
use crate::{
    parse_manifest, verify_reader, BlobReader, Descriptor, Digest, ImageReference, ImageSink,
    ImageSource, ManifestKind, OciError, Platform, PulledImage, PutOutcome, RegistryReference,
};

/// A user name and password (or access token) for a registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User name.
    pub username: String,
    /// Password or token.
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// How to reach registries.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct RegistryOptions {
    /// `HOST:PORT` (or `HOST`) of registries spoken to over plain HTTP, exactly as written in
    /// references. All other registries use HTTPS.
    pub insecure: Vec<String>,
    /// Explicit credentials. When `None`, `auths.<registry>` of the Docker client config
    /// (`$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`) is used if present.
    pub credentials: Option<Credentials>,
    /// The platform an index / manifest list is resolved to (default linux/amd64).
    pub platform: Platform,
    /// Use this Docker client config file instead of the default location.
    pub docker_config: Option<PathBuf>,
    /// Connect, read and slow-transfer limits of every request.
    pub timeouts: Timeouts,
}

const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json";

/// Looks up credentials for `registry` in a Docker client config file.
fn docker_config_credentials(registry: &str, file: Option<&Path>) -> Option<Credentials> {
    let path = match file {
        Some(p) => p.to_path_buf(),
        None => match std::env::var_os("DOCKER_CONFIG") {
            Some(dir) => PathBuf::from(dir).join("config.json"),
            None => PathBuf::from(std::env::var_os("HOME")?)
                .join(".docker")
                .join("config.json"),
        },
    };
    let bytes = std::fs::read(&path).ok()?;
    #[derive(Deserialize)]
    struct Entry {
        auth: Option<String>,
        username: Option<String>,
        password: Option<String>,
    }
    #[derive(Deserialize)]
    struct Config {
        #[serde(default)]
        auths: HashMap<String, Entry>,
    }
    let config: Config = match serde_json::from_slice(&bytes) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "ignoring unreadable docker config");
            return None;
        }
    };
    let host_of = |key: &str| {
        let k = key
            .strip_prefix("https://")
            .or_else(|| key.strip_prefix("http://"))
            .unwrap_or(key);
        k.split('/').next().unwrap_or(k).to_string()
    };
    let entry = config
        .auths
        .iter()
        .find(|(k, _)| host_of(k) == registry)
        .map(|(_, v)| v)?;
    if let (Some(u), Some(p)) = (&entry.username, &entry.password) {
        return Some(Credentials {
            username: u.clone(),
            password: p.clone(),
        });
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(entry.auth.as_deref()?.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (u, p) = text.split_once(':')?;
    Some(Credentials {
        username: u.to_string(),
        password: p.to_string(),
    })
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, PartialEq, Eq)]
struct Challenge {
    scheme: String,
    params: HashMap<String, String>,
}

fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    let mut params = HashMap::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            value = chars.by_ref().take_while(|c| *c != ',').collect();
        }
        params.insert(key.trim().to_ascii_lowercase(), value.trim().to_string());
    }
    Some(Challenge {
        scheme: scheme.to_ascii_lowercase(),
        params,
    })
}

#[derive(Debug, Default)]
struct AuthState {
    /// Bearer tokens by scope set.
    tokens: HashMap<String, String>,
    /// The registry asked for Basic auth.
    basic: bool,
}

/// A connection to one registry host.
struct Client {
    http: reqwest::Client,
    min_speed: (u64, Duration),
    registry: String,
    base: String,
    credentials: Option<Credentials>,
    state: Mutex<AuthState>,
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
async fn status_error(resp: Response) -> OciError {
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
    let body = read_limited(resp, 64 * 1024).await.unwrap_or_default();
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
fn stream_error(e: reqwest::Error) -> std::io::Error {
    let kind = if e.is_timeout() {
        std::io::ErrorKind::TimedOut
    } else {
        std::io::ErrorKind::ConnectionAborted
    };
    std::io::Error::new(kind, e)
}

/// Reads a response body of at most `limit` bytes.
async fn read_limited(resp: Response, limit: u64) -> Result<Vec<u8>, OciError> {
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
        return Err(OciError::Unsupported {
            what: "document size",
            value: format!("more than {limit} bytes"),
        });
    }
    Ok(out)
}

/// Turns a transport error into an [`OciError`], recovering a digest or size mismatch raised by
/// a verifying upload body.
fn transport_error(url: &str, err: reqwest::Error) -> OciError {
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
    fn new(registry: &str, opts: &RegistryOptions) -> Result<Self, OciError> {
        let insecure = opts.insecure.iter().any(|h| h == registry);
        let scheme = if insecure { "http" } else { "https" };
        let http = shared_client(insecure, &opts.timeouts).map_err(|e| OciError::Http {
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

    fn url(&self, path: &str) -> String {
        format!("{}/v2/{}", self.base, path)
    }

    fn authorize(&self, req: reqwest::RequestBuilder, scope_key: &str) -> reqwest::RequestBuilder {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = state.tokens.get(scope_key) {
            req.bearer_auth(t)
        } else if let (true, Some(c)) = (state.basic, &self.credentials) {
            req.basic_auth(&c.username, Some(&c.password))
        } else {
            req
        }
    }

    /// Handles a 401 challenge. Returns false when there is no way to authenticate.
    async fn authenticate(&self, headers: &HeaderMap, scopes: &[String]) -> Result<bool, OciError> {
        let Some(challenge) = headers
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_challenge)
        else {
            return Ok(false);
        };
        let key = scopes.join(" ");
        match challenge.scheme.as_str() {
            "basic" => {
                let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
                if state.basic || self.credentials.is_none() {
                    return Ok(false); // credentials already tried, or none to try
                }
                state.basic = true;
                Ok(true)
            }
            "bearer" => {
                let token = self.fetch_token(&challenge, scopes).await?;
                let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
                state.tokens.insert(key, token);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn fetch_token(&self, ch: &Challenge, scopes: &[String]) -> Result<String, OciError> {
        let auth_err = |reason: String| OciError::Auth {
            registry: self.registry.clone(),
            reason,
        };
        let realm = ch
            .params
            .get("realm")
            .ok_or_else(|| auth_err("bearer challenge without realm".into()))?;
        let mut url = url::Url::parse(realm)
            .map_err(|e| auth_err(format!("invalid token realm {realm:?}: {e}")))?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = ch.params.get("service") {
                q.append_pair("service", s);
            }
            if scopes.is_empty() {
                if let Some(s) = ch.params.get("scope") {
                    q.append_pair("scope", s);
                }
            }
            for s in scopes {
                q.append_pair("scope", s);
            }
        }
        let mut req = self.http.get(url.clone());
        if let Some(c) = &self.credentials {
            req = req.basic_auth(&c.username, Some(&c.password));
        }
        let resp = req
            .send()
            .await
            .map_err(|e| transport_error(url.as_str(), e))?;
        let status = resp.status();
        if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
            // The token service is down or busy: transient, unlike a refusal.
            let mut err = status_error(resp).await;
            if let OciError::Registry { url, .. } = &mut err {
                *url = bru_core::redact_url(url).to_string();
            }
            return Err(err);
        }
        if !status.is_success() {
            return Err(auth_err(format!(
                "token service answered {}",
                status.as_u16()
            )));
        }
        #[derive(Deserialize)]
        struct Token {
            token: Option<String>,
            access_token: Option<String>,
        }
        let body = read_limited(resp, 1024 * 1024).await?;
        let t: Token = serde_json::from_slice(&body)
            .map_err(|e| auth_err(format!("malformed token response: {e}")))?;
        t.token
            .or(t.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| auth_err("token response without token".into()))
    }

    /// Sends a request built by `build`, authenticating on a 401 challenge and retrying
    /// idempotent requests on 429/5xx and on transport failures, as [`RetryPolicy::REQUEST`]
    /// says (honouring `Retry-After`). The response is returned whatever its status.
    async fn send(
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

fn pull_scope(repo: &str) -> String {
    format!("repository:{repo}:pull")
}

fn push_scope(repo: &str) -> String {
    format!("repository:{repo}:pull,push")
}

/// Reads images from a registry repository.
#[derive(Debug)]
pub(crate) struct RegistrySource {
    client: Client,
    reference: RegistryReference,
    platform: Platform,
}

impl RegistrySource {
    pub(crate) fn new(r: &RegistryReference, opts: &RegistryOptions) -> Result<Self, OciError> {
        Ok(RegistrySource {
            client: Client::new(&r.registry, opts)?,
            reference: r.clone(),
            platform: opts.platform.clone(),
        })
    }

    /// GETs a manifest; returns its bytes and content type, checking `expected` when given.
    async fn get_manifest(
        &self,
        reference: &str,
        expected: Option<&Digest>,
    ) -> Result<(Vec<u8>, Option<String>), OciError> {
        let repo = &self.reference.repository;
        let url = self.client.url(&format!("{repo}/manifests/{reference}"));
        let resp = self
            .client
            .send(Method::GET, &url, &[pull_scope(repo)], &|r| {
                Ok(r.header(ACCEPT, MANIFEST_ACCEPT))
            })
            .await?;
        if !resp.status().is_success() {
            return Err(status_error(resp).await);
        }
        let content_type = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let bytes = read_limited(resp, MAX_DOCUMENT_SIZE).await?;
        if let Some(expected) = expected {
            let actual = Digest::of(&bytes);
            if actual != *expected {
                return Err(OciError::DigestMismatch {
                    expected: expected.clone(),
                    actual,
                });
            }
        }
        Ok((bytes, content_type))
    }
}

#[async_trait]
impl ImageSource for RegistrySource {
    async fn image(&self) -> Result<PulledImage, OciError> {
        let r = &self.reference;
        let (mut bytes, mut ct) = self
            .get_manifest(&r.manifest_reference(), r.digest.as_ref())
            .await?;
        for _ in 0..2 {
            match parse_manifest(&bytes, ct.as_deref())? {
                ManifestKind::Image(m) => {
                    let mt = m
                        .media_type
                        .clone()
                        .or(ct.filter(|c| media_type::is_manifest(c)))
                        .unwrap_or_else(|| media_type::OCI_MANIFEST.to_string());
                    return crate::finish_image(self, bytes, mt, m).await;
                }
                ManifestKind::Index(idx) => {
                    let entry =
                        idx.find_platform(&self.platform)
                            .ok_or_else(|| OciError::NotFound {
                                what: format!("platform {} in index of {r}", self.platform),
                            })?;
                    let d = entry.digest.clone();
                    (bytes, ct) = self.get_manifest(&d.to_string(), Some(&d)).await?;
                    if bytes.len() as u64 != entry.size {
                        return Err(OciError::SizeMismatch {
                            digest: d,
                            expected: entry.size,
                            actual: bytes.len() as u64,
                        });
                    }
                }
            }
        }
        Err(OciError::Unsupported {
            what: "nested index",
            value: r.to_string(),
        })
    }

    async fn blob(&self, desc: &Descriptor) -> Result<BlobReader, OciError> {
        let repo = &self.reference.repository;
        let url = self.client.url(&format!("{repo}/blobs/{}", desc.digest));
        let resp = self
            .client
            .send(Method::GET, &url, &[pull_scope(repo)], &|r| Ok(r))
            .await?;
        if !resp.status().is_success() {
            return Err(status_error(resp).await);
        }
        let stream = MinSpeed::new(
            resp.bytes_stream().map_err(stream_error),
            self.client.min_speed,
        );
        Ok(verify_reader(
            tokio_util::io::StreamReader::new(stream),
            desc.digest.clone(),
            desc.size,
        ))
    }
}

/// Writes images to a registry repository.
#[derive(Debug)]
pub(crate) struct RegistrySink {
    client: Client,
    reference: RegistryReference,
}

impl RegistrySink {
    pub(crate) fn new(r: &RegistryReference, opts: &RegistryOptions) -> Result<Self, OciError> {
        Ok(RegistrySink {
            client: Client::new(&r.registry, opts)?,
            reference: r.clone(),
        })
    }

    fn scopes(&self) -> Vec<String> {
        vec![push_scope(&self.reference.repository)]
    }

    async fn exists(&self, desc: &Descriptor) -> Result<bool, OciError> {
        let repo = &self.reference.repository;
        let url = self.client.url(&format!("{repo}/blobs/{}", desc.digest));
        let resp = self
            .client
            .send(Method::HEAD, &url, &self.scopes(), &|r| Ok(r))
            .await?;
        match resp.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(status_error(resp).await),
        }
    }

    /// Resolves an upload `Location` header against the registry base URL.
    fn location(&self, resp: &Response) -> Result<url::Url, OciError> {
        let loc = resp
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| OciError::Http {
                url: resp.url().to_string(),
                reason: "upload response without Location".into(),
            })?;
        resp.url().join(loc).map_err(|e| OciError::Http {
            url: resp.url().to_string(),
            reason: format!("invalid upload location: {e}"),
        })
    }

    async fn put_manifest_at(
        &self,
        reference: &str,
        bytes: &[u8],
        mt: &str,
    ) -> Result<Digest, OciError> {
        parse_manifest(bytes, Some(mt))?;
        let digest = Digest::of(bytes);
        let repo = &self.reference.repository;
        let url = self.client.url(&format!("{repo}/manifests/{reference}"));
        let body = bytes.to_vec();
        let resp = self
            .client
            .send(Method::PUT, &url, &self.scopes(), &|r| {
                Ok(r.header(CONTENT_TYPE, mt).body(body.clone()))
            })
            .await?;
        if !resp.status().is_success() {
            return Err(status_error(resp).await);
        }
        if let Some(d) = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<Digest>().ok())
        {
            if d != digest {
                return Err(OciError::DigestMismatch {
                    expected: digest,
                    actual: d,
                });
            }
        }
        Ok(digest)
    }
}

#[async_trait]
impl ImageSink for RegistrySink {
    async fn put_blob(&self, path: &Path, desc: &Descriptor) -> Result<PutOutcome, OciError> {
        let len = tokio::fs::metadata(path)
            .await
            .map_err(|e| OciError::io(path, e))?
            .len();
        if len != desc.size {
            return Err(OciError::SizeMismatch {
                digest: desc.digest.clone(),
                expected: desc.size,
                actual: len,
            });
        }
        if self.exists(desc).await? {
            tracing::debug!(digest = %desc.digest, "blob already present");
            return Ok(PutOutcome::AlreadyPresent);
        }
        let repo = &self.reference.repository;
        let start = self.client.url(&format!("{repo}/blobs/uploads/"));
        let resp = self
            .client
            .send(Method::POST, &start, &self.scopes(), &|r| {
                Ok(r.header(CONTENT_LENGTH, "0"))
            })
            .await?;
        if resp.status() != StatusCode::ACCEPTED {
            return Err(status_error(resp).await);
        }
        let mut put_url = self.location(&resp)?;
        put_url
            .query_pairs_mut()
            .append_pair("digest", &desc.digest.to_string());
        let put_url = put_url.to_string();
        let (path, digest, size) = (path.to_path_buf(), desc.digest.clone(), desc.size);
        let resp = self
            .client
            .send(Method::PUT, &put_url, &self.scopes(), &|r| {
                let file = std::fs::File::open(&path).map_err(|e| OciError::io(&path, e))?;
                let reader = verify_reader(tokio::fs::File::from_std(file), digest.clone(), size);
                let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(reader));
                Ok(r.header(CONTENT_TYPE, "application/octet-stream")
                    .header(CONTENT_LENGTH, size)
                    .body(body))
            })
            .await?;
        if !resp.status().is_success() {
            return Err(status_error(resp).await);
        }
        Ok(PutOutcome::Uploaded)
    }

    async fn mount_blob(&self, desc: &Descriptor, from: &ImageReference) -> Result<bool, OciError> {
        let ImageReference::Registry(from) = from else {
            return Ok(false);
        };
        let repo = &self.reference.repository;
        if from.registry != self.reference.registry || from.repository == *repo {
            return Ok(false);
        }
        let mut url = url::Url::parse(&self.client.url(&format!("{repo}/blobs/uploads/")))
            .map_err(|e| OciError::Http {
                url: repo.clone(),
                reason: e.to_string(),
            })?;
        url.query_pairs_mut()
            .append_pair("mount", &desc.digest.to_string())
            .append_pair("from", &from.repository);
        let scopes = [push_scope(repo), pull_scope(&from.repository)];
        let resp = self
            .client
            .send(Method::POST, url.as_str(), &scopes, &|r| {
                Ok(r.header(CONTENT_LENGTH, "0"))
            })
            .await?;
        match resp.status() {
            StatusCode::CREATED => Ok(true),
            StatusCode::ACCEPTED => {
                // The registry opened an ordinary upload instead; abandon it.
                if let Ok(loc) = self.location(&resp) {
                    let _ = self
                        .client
                        .send(Method::DELETE, loc.as_str(), &scopes, &|r| Ok(r))
                        .await;
                }
                Ok(false)
            }
            _ => Err(status_error(resp).await),
        }
    }

    async fn put_manifest(&self, bytes: &[u8], media_type: &str) -> Result<Digest, OciError> {
        let r = &self.reference;
        if let Some(d) = &r.digest {
            let actual = Digest::of(bytes);
            if actual != *d {
                return Err(OciError::DigestMismatch {
                    expected: d.clone(),
                    actual,
                });
            }
        }
        let target = r.tag.clone().unwrap_or_else(|| r.manifest_reference());
        self.put_manifest_at(&target, bytes, media_type).await
    }

    async fn put_child_manifest(&self, bytes: &[u8], media_type: &str) -> Result<Digest, OciError> {
        self.put_manifest_at(&Digest::of(bytes).to_string(), bytes, media_type)
            .await
    }

    async fn finish(&self) -> Result<(), OciError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_challenges() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        )
        .unwrap();
        assert_eq!(c.scheme, "bearer");
        assert_eq!(c.params["realm"], "https://auth.example/token");
        assert_eq!(c.params["service"], "registry.example");
        assert_eq!(c.params["scope"], "repository:a/b:pull,push");
        let c = parse_challenge(r#"Basic realm="Registry Realm""#).unwrap();
        assert_eq!(c.scheme, "basic");
        assert_eq!(c.params["realm"], "Registry Realm");
        let c = parse_challenge("Bearer").unwrap();
        assert!(c.params.is_empty());
        for junk in ["", "=", "Bearer ,,,=\"", "Bearer a=\"\\", "Basic x"] {
            let _ = parse_challenge(junk);
        }
    }

    #[test]
    fn reads_docker_config_and_redacts() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.json");
        let auth = base64::engine::general_purpose::STANDARD.encode("bob:s3cr:et");
        std::fs::write(
            &p,
            format!(
                r#"{{"auths":{{"https://reg.example:5000/v1/":{{"auth":"{auth}"}},"other.example":{{"username":"u","password":"p"}}}}}}"#
            ),
        )
        .unwrap();
        let c = docker_config_credentials("reg.example:5000", Some(&p)).unwrap();
        assert_eq!(c.username, "bob");
        assert_eq!(c.password, "s3cr:et");
        assert!(!format!("{c:?}").contains("s3cr"));
        let c = docker_config_credentials("other.example", Some(&p)).unwrap();
        assert_eq!((c.username.as_str(), c.password.as_str()), ("u", "p"));
        assert_eq!(docker_config_credentials("reg.example", Some(&p)), None);
        std::fs::write(&p, "{broken").unwrap();
        assert_eq!(docker_config_credentials("other.example", Some(&p)), None);

        let client = Client::new(
            "reg.example:5000",
            &RegistryOptions {
                credentials: Some(Credentials {
                    username: "x".into(),
                    password: "hunter2".into(),
                }),
                ..Default::default()
            },
        )
        .unwrap();
        assert!(!format!("{client:?}").contains("hunter2"));
        let opts = RegistryOptions {
            credentials: Some(Credentials {
                username: "x".into(),
                password: "hunter2".into(),
            }),
            ..Default::default()
        };
        assert!(!format!("{opts:?}").contains("hunter2"));
        assert!(client.base.starts_with("https://"));
    }
}
