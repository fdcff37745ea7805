//! The `serve` side of an openBalena fleet: delta states and requests by image reference,
//! with a registry token from the API's `/auth/v1/token`, as a device asks.
//!
//! * Images are named `<is_stored_at__image_location>@<content_hash>` (the tag dropped), the
//!   form the supervisor sends; without a `sha256:` content hash the location is sent as is.
//! * The registry token is asked for with the user's token (`Authorization: Bearer`), as
//!   `GET <apiUrl>/auth/v1/token?service=<registry>&scope=repository:<dest>:pull&scope=repository:<src>:pull`
//!   (the supervisor's request, open-balena-api `src/features/registry/registry.ts`). The API
//!   answers a denied scope with empty `actions`, so the token's `access` claim is read
//!   (not verified: `serve` does that) and a missing grant is a clear error before `serve`
//!   is asked. A token is reused for 10 minutes (as the supervisor does) or until a minute
//!   before it expires, whichever is sooner.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bru_core::{redact_url, Delta, DeltaTrigger, Error, Image};
use reqwest::header::HeaderValue;
use reqwest::Url;
use serde::Deserialize;

use super::{BalenaClient, Credentials, Response};
use crate::pine;
use crate::wire::WireDeltaStatus;
use crate::wire::WireImage;

/// Images and tokens kept at most (the cache is emptied beyond).
const MAX_CACHED: usize = 4096;
/// The longest a registry token is reused.
const TOKEN_REUSE: Duration = Duration::from_secs(600);
/// A token is not reused in the last minute of its validity.
const TOKEN_MARGIN: i64 = 60;

type ImageCell = Arc<tokio::sync::OnceCell<Option<Image>>>;
/// (registry, destination repository, source repository).
type TokenKey = (String, String, String);
/// A registry token's `Authorization` value and until when it is reused.
type CachedToken = (tokio::time::Instant, HeaderValue);

/// Images by id and registry tokens by (registry, destination, source repository).
#[derive(Debug, Default)]
pub(super) struct Caches {
    images: Mutex<HashMap<u64, ImageCell>>,
    tokens: Mutex<HashMap<TokenKey, CachedToken>>,
}

/// An image as its registry and `serve` name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RegistryImage {
    /// `HOST[:PORT]`.
    registry: String,
    /// The repository path on the registry (`v2/<hash>`).
    repository: String,
    /// What is sent to `serve`: `HOST/REPO@sha256:…`, or the location as stored.
    reference: String,
}

impl RegistryImage {
    /// The registry name of an image, from its location and content hash.
    pub(super) fn of(image: &Image) -> Result<RegistryImage, String> {
        let location = image.location.trim();
        let (registry, rest) = location
            .split_once('/')
            .filter(|(host, rest)| {
                (host.contains('.') || host.contains(':') || *host == "localhost")
                    && !rest.is_empty()
            })
            .ok_or_else(|| {
                format!(
                    "image {} is not stored on a registry (location '{location}')",
                    image.id
                )
            })?;
        let name = rest.split_once('@').map_or(rest, |(name, _)| name);
        let repository = match name.rsplit_once(':') {
            Some((repo, tag)) if !tag.contains('/') => repo,
            _ => name,
        };
        let valid = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-/".contains(c);
        if repository.is_empty() || !repository.chars().all(valid) {
            return Err(format!(
                "image {} has an unusable repository in its location '{location}'",
                image.id
            ));
        }
        let digest = image.content_hash.as_deref().filter(|h| {
            h.strip_prefix("sha256:").is_some_and(|hex| {
                hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
            })
        });
        let reference = match digest {
            Some(digest) => format!("{registry}/{repository}@{digest}"),
            None => location.to_owned(),
        };
        Ok(RegistryImage {
            registry: registry.to_owned(),
            repository: repository.to_owned(),
            reference,
        })
    }
}

/// `{"token": "<JWT>"}` from `/auth/v1/token`.
#[derive(Debug, Deserialize)]
struct TokenAnswer {
    token: String,
}

/// The claims of a registry token the client reads (unverified).
#[derive(Debug, Default, Deserialize)]
struct TokenClaims {
    #[serde(default)]
    exp: Option<i64>,
    #[serde(default)]
    access: Vec<TokenAccess>,
}

#[derive(Debug, Deserialize)]
struct TokenAccess {
    #[serde(rename = "type")]
    kind: String,
    name: String,
    #[serde(default)]
    actions: Vec<String>,
}

impl TokenClaims {
    /// The payload of a JWT, if it can be read.
    fn of(jwt: &str) -> Option<TokenClaims> {
        let payload = jwt.split('.').nth(1)?;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload.trim_end_matches('='))
            .ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    fn grants_pull(&self, repository: &str) -> bool {
        self.access.iter().any(|a| {
            a.kind == "repository"
                && a.name == repository
                && a.actions.iter().any(|x| x == "pull" || x == "*")
        })
    }
}

impl BalenaClient {
    /// The image with this id, read from the API once per client.
    pub(super) async fn cached_image(&self, id: u64) -> Result<Option<Image>, Error> {
        let cell = {
            let mut images = self.serve.images.lock().unwrap_or_else(|e| e.into_inner());
            if images.len() >= MAX_CACHED && !images.contains_key(&id) {
                images.clear();
            }
            Arc::clone(images.entry(id).or_default())
        };
        cell.get_or_try_init(|| async {
            let found: Vec<WireImage> = self.pine(&pine::image(id)).await?;
            Ok::<_, Error>(found.into_iter().next().map(Image::from))
        })
        .await
        .cloned()
    }

    /// Both images by registry name, and a registry token for them.
    async fn pair(
        &self,
        src: u64,
        dest: u64,
    ) -> Result<(RegistryImage, RegistryImage, HeaderValue), Error> {
        let (from, to) = tokio::join!(self.cached_image(src), self.cached_image(dest));
        let name = |id: u64, image: Option<Image>| {
            let image = image.ok_or(Error::ImageNotFound { id })?;
            RegistryImage::of(&image).map_err(|reason| Error::InvalidResponse {
                url: self.api_prefix.to_string(),
                reason,
            })
        };
        let (from, to) = (name(src, from?)?, name(dest, to?)?);
        if from.registry != to.registry {
            return Err(Error::InvalidResponse {
                url: self.api_prefix.to_string(),
                reason: format!(
                    "images {src} and {dest} are on different registries ({} and {}); a registry token covers one",
                    from.registry, to.registry
                ),
            });
        }
        let token = self.registry_token(&from, &to).await?;
        Ok((from, to, token))
    }

    /// A registry token granting pull on both repositories.
    async fn registry_token(
        &self,
        src: &RegistryImage,
        dest: &RegistryImage,
    ) -> Result<HeaderValue, Error> {
        let key = (
            dest.registry.clone(),
            dest.repository.clone(),
            src.repository.clone(),
        );
        let now = tokio::time::Instant::now();
        {
            let tokens = self.serve.tokens.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((until, header)) = tokens.get(&key) {
                if now < *until {
                    return Ok(header.clone());
                }
            }
        }
        let mut url = self.auth_url.clone();
        url.query_pairs_mut()
            .append_pair("service", &dest.registry)
            .append_pair("scope", &format!("repository:{}:pull", dest.repository))
            .append_pair("scope", &format!("repository:{}:pull", src.repository));
        let response = self.get(&self.api, url.clone(), false).await?;
        if response.status.as_u16() == 401 {
            return Err(if response.sent_token {
                Error::Request {
                    status: 401,
                    message: format!(
                        "the API refused the stored token when asked for a registry token ({}); log in again",
                        redact_url(url.as_str())
                    ),
                    retry_after: None,
                }
            } else {
                Error::NotLoggedIn
            });
        }
        response.check()?;
        let invalid = |reason: String| Error::InvalidResponse {
            url: redact_url(url.as_str()).into_owned(),
            reason,
        };
        let answer: TokenAnswer = serde_json::from_slice(&response.body)
            .map_err(|e| invalid(format!("unexpected registry token answer: {e}")))?;
        let claims = TokenClaims::of(&answer.token)
            .ok_or_else(|| invalid("the registry token is not a readable JWT".to_owned()))?;
        for image in [dest, src] {
            if !claims.grants_pull(&image.repository) {
                return Err(Error::Request {
                    status: 403,
                    message: format!(
                        "no pull access to repository {} on {}: the API's registry token does not grant it to this user, so the delta server would refuse",
                        image.repository, image.registry
                    ),
                    retry_after: None,
                });
            }
        }
        let mut header = HeaderValue::from_str(&format!("Bearer {}", answer.token))
            .map_err(|_| invalid("the registry token is not a valid header value".to_owned()))?;
        header.set_sensitive(true);
        let reuse = match claims.exp {
            Some(exp) => {
                let left = exp - chrono::Utc::now().timestamp() - TOKEN_MARGIN;
                Duration::from_secs(u64::try_from(left).unwrap_or(0)).min(TOKEN_REUSE)
            }
            None => TOKEN_REUSE,
        };
        let mut tokens = self.serve.tokens.lock().unwrap_or_else(|e| e.into_inner());
        if tokens.len() >= MAX_CACHED {
            tokens.clear();
        }
        tokens.insert(key, (now + reuse, header.clone()));
        Ok(header)
    }

    /// `<deltaUrl>/api/v3/delta<path>?src=REF&dest=REF`, references unencoded as the
    /// supervisor sends them.
    fn serve_url(
        &self,
        path: &str,
        src: &RegistryImage,
        dest: &RegistryImage,
    ) -> Result<Url, Error> {
        let tail = format!(
            "/api/v3/delta{path}?src={}&dest={}",
            src.reference, dest.reference
        );
        self.delta_base.join(&tail).map_err(|e| Error::Network {
            url: self.delta_base.to_string(),
            source: Box::new(e),
        })
    }

    /// The delta state `serve` reports: `ready` is a successful delta, `building` a running
    /// one; a failed, interrupted or missing delta is none (it is requested again).
    pub(super) async fn serve_status(&self, src: u64, dest: u64) -> Result<Option<Delta>, Error> {
        let (from, to, token) = self.pair(src, dest).await?;
        let url = self.serve_url("/status", &from, &to)?;
        let response = self
            .get_as(&self.delta, url, false, Credentials::Registry(token))
            .await?;
        if response.status.as_u16() != 200 {
            return Err(serve_error(&response));
        }
        let answer: WireDeltaStatus =
            serde_json::from_slice(&response.body).map_err(|e| Error::InvalidResponse {
                url: redact_url(response.url.as_str()).into_owned(),
                reason: format!("unexpected delta status answer: {e}"),
            })?;
        Ok(match answer {
            WireDeltaStatus::Ready {
                id,
                version,
                name,
                download_bytes,
            } => Some(Delta {
                id,
                status: bru_core::DeltaStatus::Success,
                version,
                location: Some(name),
                size: download_bytes,
            }),
            WireDeltaStatus::Building { id, version } => Some(Delta {
                id,
                status: bru_core::DeltaStatus::Running,
                version,
                location: None,
                size: 0,
            }),
            WireDeltaStatus::Failed { .. }
            | WireDeltaStatus::Interrupted { .. }
            | WireDeltaStatus::None => None,
        })
    }

    /// Asks `serve` for the delta, as a device does.
    pub(super) async fn serve_request(&self, src: u64, dest: u64) -> Result<DeltaTrigger, Error> {
        let (from, to, token) = self.pair(src, dest).await?;
        let url = self.serve_url("", &from, &to)?;
        match self
            .get_as(&self.delta, url, false, Credentials::Registry(token))
            .await
        {
            Ok(response)
                if response.status.as_u16() >= 400
                    && !matches!(response.status.as_u16(), 502 | 504) =>
            {
                Err(serve_error(&response))
            }
            Ok(response) => super::trigger_answer(&response),
            Err(Error::NetworkTimeout { url }) => {
                tracing::debug!(url = %redact_url(&url), "delta request timed out; assuming it is being built");
                Ok(DeltaTrigger::Building)
            }
            Err(e) => Err(e),
        }
    }
}

/// An error answer of `serve`, its message marked as the delta server's.
fn serve_error(response: &Response) -> Error {
    match response.check() {
        Err(Error::Request {
            status,
            message,
            retry_after,
        }) => Error::Request {
            status,
            message: format!("delta server: {message}"),
            retry_after,
        },
        Err(e) => e,
        Ok(()) => Error::InvalidResponse {
            url: redact_url(response.url.as_str()).into_owned(),
            reason: format!(
                "unexpected status {} from the delta server",
                response.status
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(location: &str, hash: Option<&str>) -> Image {
        Image {
            id: 5,
            location: location.to_owned(),
            content_hash: hash.map(str::to_owned),
            size: 1,
        }
    }

    const HASH: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn images_are_named_by_registry_repository_and_digest() {
        let r = RegistryImage::of(&image("registry.ob.example/v2/abc123", Some(HASH))).unwrap();
        assert_eq!(r.registry, "registry.ob.example");
        assert_eq!(r.repository, "v2/abc123");
        assert_eq!(r.reference, format!("registry.ob.example/v2/abc123@{HASH}"));
        let tagged = RegistryImage::of(&image("127.0.0.1:5055/v2/abc:latest", Some(HASH))).unwrap();
        assert_eq!(tagged.repository, "v2/abc");
        assert_eq!(tagged.reference, format!("127.0.0.1:5055/v2/abc@{HASH}"));
        // Without a digest the location is sent as stored.
        let plain = RegistryImage::of(&image("127.0.0.1:5055/v2/abc:latest", None)).unwrap();
        assert_eq!(plain.reference, "127.0.0.1:5055/v2/abc:latest");
        let weird = RegistryImage::of(&image("127.0.0.1:5055/v2/abc", Some("sha256:zz"))).unwrap();
        assert_eq!(weird.reference, "127.0.0.1:5055/v2/abc");
    }

    #[test]
    fn locations_off_a_registry_are_refused() {
        for bad in [
            "",
            "abc",
            "library/abc",
            "reg.example/",
            "reg.example/V2/ABC",
            "reg.example/a b",
        ] {
            let err = RegistryImage::of(&image(bad, Some(HASH))).unwrap_err();
            assert!(err.contains("image 5"), "{bad}: {err}");
        }
    }

    #[test]
    fn every_status_serve_answers_is_understood() {
        let parse = |json: &str| serde_json::from_str::<WireDeltaStatus>(json).unwrap();
        assert!(matches!(
            parse(
                r#"{"status":"ready","id":7,"version":3,"name":"r/v2/a:delta-1","download_bytes":12}"#
            ),
            WireDeltaStatus::Ready {
                id: 7,
                version: 3,
                download_bytes: 12,
                ..
            }
        ));
        assert!(matches!(
            parse(r#"{"status":"building","id":7,"version":3}"#),
            WireDeltaStatus::Building { id: 7, version: 3 }
        ));
        assert!(matches!(
            parse(r#"{"status":"failed","id":7,"version":3,"retry_after_seconds":5}"#),
            WireDeltaStatus::Failed { id: 7, .. }
        ));
        assert!(matches!(
            parse(r#"{"status":"interrupted","retry_after_seconds":5}"#),
            WireDeltaStatus::Interrupted {
                retry_after_seconds: 5
            }
        ));
        assert!(matches!(
            parse(r#"{"status":"none"}"#),
            WireDeltaStatus::None
        ));
        assert!(serde_json::from_str::<WireDeltaStatus>(r#"{"status":"later"}"#).is_err());
        assert!(serde_json::from_str::<WireDeltaStatus>(r#"{"status":"ready","id":7}"#).is_err());
    }

    #[test]
    fn token_claims_tell_denied_scopes() {
        let payload = serde_json::json!({"exp": 1, "access": [
            {"type": "repository", "name": "v2/a", "actions": ["pull"]},
            {"type": "repository", "name": "v2/b", "actions": []}]});
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let jwt = format!("e30.{}.sig", b64.encode(payload.to_string()));
        let claims = TokenClaims::of(&jwt).unwrap();
        assert!(claims.grants_pull("v2/a"));
        assert!(!claims.grants_pull("v2/b"));
        assert!(!claims.grants_pull("v2/c"));
        assert_eq!(claims.exp, Some(1));
        assert!(TokenClaims::of("not a jwt").is_none());
        assert!(TokenClaims::of("a.!!!.c").is_none());
    }
}
