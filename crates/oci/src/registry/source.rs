//! Reading images from a registry repository.

use async_trait::async_trait;
use futures::TryStreamExt;
use reqwest::header::{ACCEPT, CONTENT_TYPE};
use reqwest::Method;

use super::client::{read_limited, status_error, stream_error, Client};
use super::{pull_scope, RegistryOptions};
use crate::deadline::MinSpeed;
use crate::limits;
use crate::types::media_type;
use crate::{
    parse_manifest, verify_reader, BlobReader, Descriptor, Digest, ImageSource, ManifestKind,
    OciError, Platform, PulledImage, RegistryReference,
};

const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json";

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
        if let Some(declared) = resp.content_length() {
            limits::check_declared("manifest", declared, limits::MAX_MANIFEST_SIZE)?;
        }
        let bytes = read_limited(resp, "manifest", limits::MAX_MANIFEST_SIZE).await?;
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
