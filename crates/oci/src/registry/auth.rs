//! Registry authentication: `WWW-Authenticate` challenges, the Docker token flow (Bearer),
//! Basic credentials, and credentials from a Docker client config file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use reqwest::header::{HeaderMap, WWW_AUTHENTICATE};
use reqwest::StatusCode;
use serde::Deserialize;

use super::client::{read_limited, status_error, transport_error, Client};
use super::Credentials;
use crate::OciError;

/// Looks up credentials for `registry` in a Docker client config file.
pub(super) fn docker_config_credentials(
    registry: &str,
    file: Option<&Path>,
) -> Option<Credentials> {
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
pub(super) struct Challenge {
    scheme: String,
    params: HashMap<String, String>,
}

pub(super) fn parse_challenge(header: &str) -> Option<Challenge> {
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
pub(super) struct AuthState {
    /// Bearer tokens by scope set.
    tokens: HashMap<String, String>,
    /// The registry asked for Basic auth.
    basic: bool,
}

impl Client {
    pub(super) fn authorize(
        &self,
        req: reqwest::RequestBuilder,
        scope_key: &str,
    ) -> reqwest::RequestBuilder {
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
    pub(super) async fn authenticate(
        &self,
        headers: &HeaderMap,
        scopes: &[String],
    ) -> Result<bool, OciError> {
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
        let body = read_limited(resp, "token response", 1024 * 1024).await?;
        let t: Token = serde_json::from_slice(&body)
            .map_err(|e| auth_err(format!("malformed token response: {e}")))?;
        t.token
            .or(t.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| auth_err("token response without token".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RegistryOptions;

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
