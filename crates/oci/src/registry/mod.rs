//! OCI Distribution registry client: manifests, blobs, uploads, cross-repository mounts, and
//! anonymous, Basic and Bearer (Docker token flow) authentication.
//!
//! One file a job: [`auth`] (challenges, tokens, Docker config credentials), [`client`] (one
//! registry host: requests, retries, error bodies), [`source`] (reading images) and
//! [`sink`] (writing images).

mod auth;
mod client;
mod sink;
mod source;

use std::fmt;
use std::path::PathBuf;

use crate::deadline::{HttpClients, Timeouts};
use crate::Platform;

pub(crate) use sink::RegistrySink;
pub(crate) use source::RegistrySource;

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

/// Credentials that are not `USER:PASSWORD`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("registry credentials must be USER:PASSWORD with a non-empty user")]
pub struct BadCredentials;

impl std::str::FromStr for Credentials {
    type Err = BadCredentials;

    /// `USER:PASSWORD`; the password may contain `:` (split at the first one) and may be
    /// empty, the user may not.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once(':') {
            Some((user, password)) if !user.is_empty() => Ok(Credentials {
                username: user.to_string(),
                password: password.to_string(),
            }),
            _ => Err(BadCredentials),
        }
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
    /// The HTTP clients shared by everything using these options (and their clones).
    pub clients: HttpClients,
}

pub(super) fn pull_scope(repo: &str) -> String {
    format!("repository:{repo}:pull")
}

pub(super) fn push_scope(repo: &str) -> String {
    format!("repository:{repo}:pull,push")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_parse_at_the_first_colon_and_need_a_user() {
        let c: Credentials = "alice:pa:ss".parse().unwrap();
        assert_eq!(
            (c.username.as_str(), c.password.as_str()),
            ("alice", "pa:ss")
        );
        let c: Credentials = "bob:".parse().unwrap();
        assert_eq!(c.password, "");
        assert_eq!("nocolon".parse::<Credentials>(), Err(BadCredentials));
        assert_eq!(":pw".parse::<Credentials>(), Err(BadCredentials));
        // The password never shows in Debug.
        assert!(!format!("{c:?}").contains("pa:ss"));
    }
}
