//! OCI Distribution registry client.

use std::fmt;

use crate::{OciError, Platform, RegistryReference};

/// A user name and password (or identity token) for a registry.
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
    /// `HOST:PORT` (or `HOST`) of registries spoken to over plain HTTP. All others use HTTPS.
    pub insecure: Vec<String>,
    /// Explicit credentials; when `None`, `~/.docker/config.json` is consulted.
    pub credentials: Option<Credentials>,
    /// The platform an index / manifest list is resolved to (default linux/amd64).
    pub platform: Platform,
}

#[derive(Debug)]
pub(crate) struct RegistrySource;
#[derive(Debug)]
pub(crate) struct RegistrySink;

impl RegistrySource {
    pub(crate) fn new(_r: &RegistryReference, _o: &RegistryOptions) -> Result<Self, OciError> {
        Err(OciError::Unsupported {
            what: "transport",
            value: "registry (in progress)".into(),
        })
    }
}
impl RegistrySink {
    pub(crate) fn new(_r: &RegistryReference, _o: &RegistryOptions) -> Result<Self, OciError> {
        Err(OciError::Unsupported {
            what: "transport",
            value: "registry (in progress)".into(),
        })
    }
}
#[async_trait::async_trait]
impl crate::ImageSource for RegistrySource {
    async fn image(&self) -> Result<crate::PulledImage, OciError> {
        unreachable!()
    }
    async fn blob(&self, _d: &crate::Descriptor) -> Result<crate::BlobReader, OciError> {
        unreachable!()
    }
}
#[async_trait::async_trait]
impl crate::ImageSink for RegistrySink {
    async fn put_blob(
        &self,
        _p: &std::path::Path,
        _d: &crate::Descriptor,
    ) -> Result<crate::PutOutcome, OciError> {
        unreachable!()
    }
    async fn put_manifest(&self, _b: &[u8], _m: &str) -> Result<crate::Digest, OciError> {
        unreachable!()
    }
    async fn finish(&self) -> Result<(), OciError> {
        unreachable!()
    }
}
