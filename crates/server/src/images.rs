//! Registry images named in requests, recorded in the store on first sight.
//!
//! They are recorded as *images*, not releases: under a fleet named after the image's own
//! repository (`HOST/REPO`) and a service named after its last path component, pinned to
//! the manifest digest (`HOST/REPO@sha256:…`), and belonging to no release, so that release
//! listings (and the original npm tool reading them) never show them. The same image in
//! the same repository is recorded once, and a request by digest finds it again without
//! asking the registry.

use bru_oci::{OciError, RegistryOptions, RegistryReference};
use bru_service::{resolve_image, ImageRecord, ServiceError, Store};

use crate::ApiError;

/// The store record of the registry image `r`, reading its manifest from the registry only
/// when the store does not know it yet.
pub(crate) async fn registry_image(
    store: &dyn Store,
    registry: &RegistryOptions,
    r: &RegistryReference,
) -> Result<ImageRecord, ApiError> {
    if let Some(d) = &r.digest {
        if let Some(found) = by_location(store, &pinned(r, d.clone())).await? {
            return Ok(found);
        }
    }
    let mut image = resolve_image(&service_of(r), &r.to_string(), registry)
        .await
        .map_err(read_error)?;
    let digest = image
        .content_hash
        .parse()
        .map_err(|e: OciError| ApiError::internal(&e))?;
    // Pin the digest: a tag may move, the recorded image must not.
    image.location = pinned(r, digest);
    if let Some(found) = by_location(store, &image.location).await? {
        return Ok(found);
    }
    let location = image.location.clone();
    let recorded = store
        .add_image(&fleet_of(r), image)
        .await
        .map_err(|e| ApiError::service(&e))?;
    tracing::info!(%location, id = recorded.id, "recorded a new image");
    Ok(recorded)
}

/// `HOST/REPO@DIGEST`.
fn pinned(r: &RegistryReference, digest: bru_oci::Digest) -> String {
    RegistryReference {
        tag: None,
        digest: Some(digest),
        ..r.clone()
    }
    .to_string()
}

async fn by_location(store: &dyn Store, location: &str) -> Result<Option<ImageRecord>, ApiError> {
    store
        .image_by_location(location)
        .await
        .map_err(|e| ApiError::service(&e))
}

/// `HOST/REPO`, shortened to the store's 128-character fleet names.
fn fleet_of(r: &RegistryReference) -> String {
    let full = format!("{}/{}", r.registry, r.repository);
    if full.len() <= 128 {
        return full;
    }
    let tail: String = full
        .chars()
        .rev()
        .take(100)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("…{tail}")
}

/// The last repository component, in the store's service-name alphabet.
fn service_of(r: &RegistryReference) -> String {
    let last = r.repository.rsplit('/').next().unwrap_or("image");
    let name: String = last
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        .take(63)
        .collect();
    if name.is_empty() {
        "image".to_string()
    } else {
        name
    }
}

/// Transient trouble reading the image (the registry unreachable, too slow, answering
/// 5xx or 429, see [`OciError::is_transient`]) is `503` with `Retry-After`; a missing image
/// is 404; anything else about the image (unsupported, malformed, refused credentials) is a
/// permanent 422. The answer names no URL: the registry's error goes to the log.
fn read_error(e: ServiceError) -> ApiError {
    let ServiceError::Image { source, .. } = &e else {
        return ApiError::service(&e);
    };
    let detail = format!("{e}: {source}");
    if source.is_transient() {
        return ApiError::new(503, "the registry is unavailable")
            .retry_after(crate::TRANSIENT_RETRY_AFTER)
            .detail(detail);
    }
    match source {
        OciError::NotFound { .. } | OciError::Registry { status: 404, .. } => {
            ApiError::new(404, "the registry does not have the image").detail(detail)
        }
        _ => ApiError::new(422, "the image cannot be used").detail(detail),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(s: &str) -> RegistryReference {
        match s.parse() {
            Ok(bru_oci::ImageReference::Registry(r)) => r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn names_fit_the_store() {
        let r = reference("reg.example:5000/v2/abc_def:v1");
        assert_eq!(fleet_of(&r), "reg.example:5000/v2/abc_def");
        assert_eq!(service_of(&r), "abc_def");
        let long = reference(&format!("reg.example/{}", "a".repeat(200)));
        assert!(fleet_of(&long).chars().count() <= 128);
        assert_eq!(service_of(&long).len(), 63);
    }
}
