//! Registry images named in requests, recorded in the store on first sight.
//!
//! The store keeps images as parts of releases, so an image first seen in a request is
//! recorded as a one-image release: fleet `HOST/REPO` (the image's own repository),
//! service named after the repository's last path component, commit = the hex digits of
//! the manifest digest. The same image in the same repository is therefore recorded once,
//! and it is found again by its digest without asking the registry.

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
    let fleet = fleet_of(r);
    if let Some(d) = &r.digest {
        if let Some(found) = find(store, &fleet, &d.hex()).await? {
            return Ok(found);
        }
    }
    let service = service_of(r);
    let mut image = resolve_image(&service, &r.to_string(), registry)
        .await
        .map_err(read_error)?;
    let commit = image
        .content_hash
        .strip_prefix("sha256:")
        .unwrap_or(&image.content_hash)
        .to_string();
    if let Some(found) = find(store, &fleet, &commit).await? {
        return Ok(found);
    }
    // Pin the digest: a tag may move, the recorded image must not.
    let pinned = RegistryReference {
        tag: None,
        digest: Some(
            image
                .content_hash
                .parse()
                .map_err(|e: OciError| ApiError::internal(&e))?,
        ),
        ..r.clone()
    };
    image.location = pinned.to_string();
    match store.add_release(&fleet, &commit, vec![image]).await {
        Ok(mut release) if release.images.len() == 1 => {
            tracing::info!(location = %pinned, "recorded a new image");
            Ok(release.images.remove(0))
        }
        Ok(_) => Err(ApiError::internal(&"unexpected release shape")),
        // Recorded meanwhile by a concurrent request.
        Err(ServiceError::ReleaseExists { .. }) => find(store, &fleet, &commit)
            .await?
            .ok_or_else(|| ApiError::internal(&"a recorded image vanished")),
        Err(e) => Err(ApiError::service(&e)),
    }
}

async fn find(
    store: &dyn Store,
    fleet: &str,
    commit: &str,
) -> Result<Option<ImageRecord>, ApiError> {
    let releases = store
        .releases_by_commit(commit)
        .await
        .map_err(|e| ApiError::service(&e))?;
    Ok(releases
        .into_iter()
        .find(|rel| rel.fleet == fleet && rel.commit == commit)
        .and_then(|mut rel| rel.images.pop()))
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
