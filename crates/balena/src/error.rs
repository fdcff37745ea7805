//! Errors raised while setting the client up.

use std::path::PathBuf;

/// Errors of [`crate::Settings`], [`crate::Token`] and [`crate::BalenaClient::new`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SettingsError {
    /// A balenarc/resinrc file is not a YAML mapping.
    #[error("Error parsing config file {}: Invalid YAML: {reason}", .path.display())]
    ConfigFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A settings or token file exists but cannot be read.
    #[error("cannot read {}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The token file holds a number or a JSON value that is not a string.
    #[error("Malformed token")]
    MalformedToken,
    /// A URL setting is not an absolute URL.
    #[error("invalid {key} setting: '{value}'")]
    InvalidUrl {
        /// The setting name (`apiUrl`, `deltaUrl`).
        key: &'static str,
        /// Its value.
        value: String,
    },
    /// The HTTP client could not be created (TLS set-up).
    #[error("cannot create the HTTP client")]
    HttpClient(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The `deltaApi` setting has a value other than `auto`, `pine` or `serve`.
    #[error("invalid deltaApi setting: '{value}' (expected auto, pine or serve)")]
    InvalidDeltaApi {
        /// The value found.
        value: String,
    },
}
