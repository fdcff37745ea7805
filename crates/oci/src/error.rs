//! The error type of this crate.

use std::path::PathBuf;

use crate::Digest;

/// Everything that can go wrong while reading or writing images.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OciError {
    /// An image reference string could not be parsed.
    #[error("invalid image reference {input:?}: {reason}")]
    InvalidReference {
        /// The text that was given.
        input: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A digest string is not `sha256:` followed by 64 lowercase hex digits.
    #[error("invalid digest {input:?}")]
    InvalidDigest {
        /// The text that was given.
        input: String,
    },
    /// Content did not hash to the digest it was announced with.
    #[error("digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        /// The announced digest.
        expected: Digest,
        /// The digest of the bytes actually read.
        actual: Digest,
    },
    /// Content was longer or shorter than announced.
    #[error("size mismatch for {digest}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        /// The digest of the blob.
        digest: Digest,
        /// The announced size.
        expected: u64,
        /// The number of bytes actually read (may stop early when the data is too long).
        actual: u64,
    },
    /// A manifest, index or config document could not be parsed.
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// Which document ("manifest", "image config", "index.json", ...).
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A media type or document kind that this crate does not handle.
    #[error("unsupported {what}: {value}")]
    Unsupported {
        /// What kind of thing is unsupported.
        what: &'static str,
        /// The offending value.
        value: String,
    },
    /// A document (manifest, index, config) is larger than its cap; nothing beyond the cap was
    /// read. Permanent: the same input is refused again. The caps are in [`crate::limits`].
    #[error("{what} is larger than the limit of {limit} bytes")]
    TooLarge {
        /// What was refused ("manifest", "index.json", "image config", ...).
        what: &'static str,
        /// The cap, in bytes.
        limit: u64,
    },
    /// A tag, digest or platform is not present in a local layout or archive.
    #[error("not found: {what}")]
    NotFound {
        /// What was looked for.
        what: String,
    },
    /// A blob is missing from a local layout or archive.
    #[error("blob {digest} is missing")]
    BlobMissing {
        /// The digest of the missing blob.
        digest: Digest,
    },
    /// A registry answered with an error status.
    #[error("registry error {status} at {url}: {}{message}", code.as_deref().map(|c| format!("{c}: ")).unwrap_or_default())]
    Registry {
        /// HTTP status code.
        status: u16,
        /// The first OCI error code from the body (`MANIFEST_UNKNOWN`, `UNAUTHORIZED`, ...), if any.
        code: Option<String>,
        /// The error message from the body, or the HTTP reason phrase.
        message: String,
        /// The URL requested (never includes credentials).
        url: String,
    },
    /// The registry could not be reached, or the connection broke.
    #[error("http request to {url} failed: {reason}")]
    Http {
        /// The URL requested.
        url: String,
        /// A description of the transport failure.
        reason: String,
    },
    /// Authentication against a registry or token service failed.
    #[error("authentication failed for {registry}: {reason}")]
    Auth {
        /// The registry host.
        registry: String,
        /// What went wrong.
        reason: String,
    },
    /// A file-system operation failed.
    #[error("i/o error on {}", path.display())]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Reading a stream failed (network or decompression) outside any single file.
    #[error("stream error")]
    Stream(#[source] std::io::Error),
}

impl OciError {
    /// Whether trying again later may succeed: the registry could not be reached, broke the
    /// connection, was too slow, answered 408, 429 or 5xx, or the local disk is full. A bad,
    /// missing or refused image is permanent.
    pub fn is_transient(&self) -> bool {
        match self {
            OciError::Http { .. } => true,
            OciError::Registry { status, .. } => matches!(status, 408 | 429 | 500..=599),
            OciError::Io { source, .. } => bru_core::retry::io_is_transient(source),
            OciError::Stream(e) => stream_is_transient(e),
            _ => false,
        }
    }

    /// The OCI error code of a registry error (`MANIFEST_UNKNOWN`, `BLOB_UNKNOWN`, ...), if any.
    pub fn registry_code(&self) -> Option<&str> {
        match self {
            OciError::Registry { code, .. } => code.as_deref(),
            _ => None,
        }
    }

    /// The HTTP status of a registry error, if this is one.
    pub fn http_status(&self) -> Option<u16> {
        match self {
            OciError::Registry { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Finds the structured [`OciError`] wrapped inside an [`std::io::Error`] returned by a
    /// [`BlobReader`](crate::BlobReader), e.g. a [`OciError::DigestMismatch`] detected at EOF.
    pub fn from_io(err: &std::io::Error) -> Option<&OciError> {
        err.get_ref().and_then(|e| e.downcast_ref::<OciError>())
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        OciError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn malformed(what: &'static str, reason: impl ToString) -> Self {
        OciError::Malformed {
            what,
            reason: reason.to_string(),
        }
    }

    /// Converts an io error from a stream: unwraps an embedded [`OciError`] when there is one.
    /// Recovers the structured error an io error from a verified blob stream carries
    /// (digest or size mismatch), or wraps the io error as [`OciError::Stream`].
    pub fn from_stream(err: std::io::Error) -> Self {
        if err.get_ref().is_some_and(|e| e.is::<OciError>()) {
            match err.into_inner().map(|e| e.downcast::<OciError>()) {
                Some(Ok(e)) => *e,
                Some(Err(other)) => OciError::Stream(std::io::Error::other(other)),
                None => OciError::Stream(std::io::Error::other("unknown stream error")),
            }
        } else {
            OciError::Stream(err)
        }
    }
}

/// A stream error is transient when the transfer broke (network, timeout, full disk); a
/// decompression error (`InvalidData`) or a wrapped permanent [`OciError`] is not.
fn stream_is_transient(e: &std::io::Error) -> bool {
    if let Some(inner) = OciError::from_io(e) {
        return inner.is_transient();
    }
    bru_core::retry::io_is_transient(e)
}
