//! Writing images to a registry repository: blobs (monolithic uploads, cross-repository
//! mounts) and manifests.

use std::path::Path;

use async_trait::async_trait;
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, LOCATION};
use reqwest::{Method, Response, StatusCode};

use super::client::{status_error, Client};
use super::{pull_scope, push_scope, RegistryOptions};
use crate::{
    parse_manifest, verify_reader, Descriptor, Digest, ImageReference, ImageSink, OciError,
    PutOutcome, RegistryReference,
};

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
