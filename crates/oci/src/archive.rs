//! docker-archive (`docker save` tarballs).
use crate::OciError;
use std::path::Path;
#[derive(Debug)]
pub(crate) struct ArchiveSource;
#[derive(Debug)]
pub(crate) struct ArchiveSink;
impl ArchiveSource {
    pub(crate) fn open(_p: &Path, _t: Option<String>) -> Result<Self, OciError> {
        Err(OciError::Unsupported {
            what: "transport",
            value: "docker-archive (in progress)".into(),
        })
    }
}
impl ArchiveSink {
    pub(crate) fn new(_p: &Path, _t: Option<String>) -> Result<Self, OciError> {
        Err(OciError::Unsupported {
            what: "transport",
            value: "docker-archive (in progress)".into(),
        })
    }
}
#[async_trait::async_trait]
impl crate::ImageSource for ArchiveSource {
    async fn image(&self) -> Result<crate::PulledImage, OciError> {
        unreachable!()
    }
    async fn blob(&self, _d: &crate::Descriptor) -> Result<crate::BlobReader, OciError> {
        unreachable!()
    }
}
#[async_trait::async_trait]
impl crate::ImageSink for ArchiveSink {
    async fn put_blob(
        &self,
        _p: &Path,
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
