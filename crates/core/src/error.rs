//! The error type of the update logic and its backends.

use std::time::Duration;

use crate::UpdateInfo;

/// Errors of [`crate::get_update_info`], [`crate::prepare_update`] and the backends.
///
/// The messages are those of `@balena/release-update` where it has one.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No successful release matches.
    #[error("Release not found: {release}")]
    ReleaseNotFound {
        /// The id or commit prefix that was looked up.
        release: String,
    },
    /// More than one successful release matches a commit prefix.
    #[error(
        "Release is ambiguous: There are multiple releases matching the release hash '{prefix}'"
    )]
    AmbiguousRelease {
        /// The commit prefix that was looked up.
        prefix: String,
    },
    /// No successful image with this id.
    #[error("Image not found: {id}")]
    ImageNotFound {
        /// The image id.
        id: u64,
    },
    /// The two releases belong to different applications.
    #[error("Source and target release must be from the same application")]
    DifferentApplications {
        /// Application of the source release.
        from: u64,
        /// Application of the target release.
        to: u64,
    },
    /// The API answered 401 to a request sent without a token.
    #[error("You have to log in")]
    NotLoggedIn,
    /// The stored session token has expired; nothing was sent.
    #[error("The token expired")]
    TokenExpired,
    /// The server answered with an HTTP error status.
    #[error("Request error: {message}")]
    Request {
        /// HTTP status code.
        status: u16,
        /// Message taken from the response body.
        message: String,
        /// Delay asked for by a `Retry-After` header.
        retry_after: Option<Duration>,
    },
    /// No response headers within the per-request timeout.
    #[error("network timeout")]
    NetworkTimeout {
        /// The URL that timed out.
        url: String,
    },
    /// The request could not be sent or the response could not be read.
    #[error("request to {url} failed")]
    Network {
        /// The URL of the request.
        url: String,
        /// The underlying transport error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A backend (the embedded store, its database, a build) is unavailable for now: busy,
    /// restarting, out of disk, or its registry is. Retrying later may succeed.
    #[error("{service} is temporarily unavailable")]
    Unavailable {
        /// What is unavailable (`embedded store DIR`, …).
        service: String,
        /// Delay after which a retry makes sense, if known.
        retry_after: Option<Duration>,
        /// What went wrong.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A backend failed in a way that retrying will not fix (corrupt database, schema too
    /// new, an image that cannot be used).
    #[error("{service} failed")]
    Backend {
        /// The backend that failed.
        service: String,
        /// What went wrong.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The response did not have the expected shape.
    #[error("{reason}")]
    InvalidResponse {
        /// The URL of the request.
        url: String,
        /// What is wrong with the response.
        reason: String,
    },
    /// Waiting for the update timed out; carries the last state observed.
    #[error("timed out after {} s waiting for the update to become ready (last status: {})", .waited.as_secs(), .last.overall_status)]
    Timeout {
        /// How long the call waited in total.
        waited: Duration,
        /// The last report observed before the timeout.
        last: Box<UpdateInfo>,
    },
}

impl Error {
    /// Whether retrying the same request later may succeed: network errors, timeouts,
    /// HTTP 429 and 5xx, an unavailable backend.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Network { .. } | Error::NetworkTimeout { .. } | Error::Unavailable { .. } => {
                true
            }
            Error::Request { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }

    /// The delay the server asked for with `Retry-After`, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::Request { retry_after, .. } | Error::Unavailable { retry_after, .. } => {
                *retry_after
            }
            _ => None,
        }
    }
}
