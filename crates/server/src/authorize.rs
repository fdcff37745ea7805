//! Who may ask for which pair, and which images a request names: one `authorize` for the
//! delta endpoint and the status endpoint.
//!
//! Checks run in this order, all before the store is read or the network touched where they
//! can be: the query (400), the token's signature and times (401), the allow list (403),
//! then for each registry reference the token's audience (401) and access (403). Image ids
//! come next: without auth an unknown id is 404; with a token an id answers 403 alike
//! whether it is unknown, not on a registry, or not granted, so ids cannot be enumerated.
//! Then the images are resolved (404, 422, 503 within the request budget), and a pair is
//! refused with 422 when either image is not on a registry or both are the same image.

use axum::http::{header, HeaderMap};
use bru_oci::{ImageReference, RegistryReference};
use bru_service::ImageRecord;

use crate::auth::{self, Verifier};
use crate::query::{self, Requested};
use crate::{images, ApiError, AppState, Auth, MAX_POLL, TRANSIENT_RETRY_AFTER};

/// One side of a request once known: its store record and registry location.
pub(crate) struct Side {
    pub(crate) image: ImageRecord,
    pub(crate) registry: Option<RegistryReference>,
}

/// Parses the query, checks the token and the allow list, and resolves both sides to store
/// images on a registry (see the module docs for the order and the answers), within
/// [`MAX_POLL`] of `started`.
pub(crate) async fn authorize(
    state: &AppState,
    query: &str,
    headers: &HeaderMap,
    started: tokio::time::Instant,
) -> Result<(Side, Side), ApiError> {
    let (src, dest) = query::parse_query(query).map_err(|m| ApiError::new(400, m))?;
    let claims = match &state.config.auth {
        Auth::None => None,
        Auth::Jwt(verifier) => Some(authenticate(verifier, headers)?),
    };
    for side in [&src, &dest] {
        if let Requested::Registry(r) = side {
            if !registry_allowed(&state.config.allowed_registries, &r.registry) {
                return Err(ApiError::new(
                    403,
                    format!("registry {} is not on the allow list", r.registry),
                ));
            }
        }
    }
    // References name their registry and repository, so they are checked as given.
    if let Some(claims) = &claims {
        for side in [&src, &dest] {
            if let Requested::Registry(r) = side {
                check_token(claims, &r.registry, &r.repository)?;
            }
        }
    }
    let src_known = known(state, &src, claims.as_ref()).await?;
    let dest_known = known(state, &dest, claims.as_ref()).await?;
    // A slow registry must not hold the device past the budget either.
    let sides = async {
        let src = resolve(state, &src, src_known).await?;
        let dest = resolve(state, &dest, dest_known).await?;
        Ok::<_, ApiError>((src, dest))
    };
    let (src, dest) = tokio::time::timeout_at(started + MAX_POLL, sides)
        .await
        .map_err(|_| {
            ApiError::new(503, "the registry did not answer in time")
                .retry_after(TRANSIENT_RETRY_AFTER)
        })??;
    // A delta of images that are not on a registry (OCI layouts, archives of the store)
    // would be written where no device can pull it.
    for side in [&src, &dest] {
        if side.registry.is_none() {
            return Err(ApiError::new(
                422,
                "the image is not on a registry; devices cannot pull its delta",
            )
            .detail(format!("image {}", side.image.id)));
        }
    }
    if src.image.id == dest.image.id {
        return Err(ApiError::new(
            422,
            "source and destination are the same image",
        ));
    }
    Ok((src, dest))
}

pub(crate) fn authenticate(
    verifier: &Verifier,
    headers: &HeaderMap,
) -> Result<auth::Claims, ApiError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| ApiError::new(401, "a bearer token is required"))?;
    let token = value
        .to_str()
        .ok()
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .ok_or_else(|| ApiError::new(401, "expected Authorization: Bearer <token>"))?;
    verifier
        .verify(token)
        .map_err(|reason| ApiError::new(401, "invalid token").detail(reason))
}

/// The token must be for `registry` (`aud`) and grant `pull` on `repository` (`access`).
pub(crate) fn check_token(
    claims: &auth::Claims,
    registry: &str,
    repository: &str,
) -> Result<(), ApiError> {
    if !claims.audience_allows(registry) {
        return Err(ApiError::new(
            401,
            format!("the token is not for registry {registry}"),
        ));
    }
    if !claims.grants_pull(repository) {
        return Err(ApiError::new(
            403,
            format!("the token does not grant pull on {repository}"),
        ));
    }
    Ok(())
}

pub(crate) fn registry_allowed(allowed: &[String], registry: &str) -> bool {
    let host = registry.rsplit_once(':').map_or(registry, |(h, _)| h);
    allowed
        .iter()
        .any(|a| a == registry || (!a.contains(':') && a == host))
}

/// Image ids are looked up in the store (and, with a token, checked against it); registry
/// references are resolved later.
async fn known(
    state: &AppState,
    side: &Requested,
    claims: Option<&auth::Claims>,
) -> Result<Option<Side>, ApiError> {
    let Requested::Id(id) = side else {
        return Ok(None);
    };
    let found = state
        .backend
        .store()
        .image(*id)
        .await
        .map_err(|e| ApiError::service(&e))?
        .filter(|i| i.status == "success");
    let side = found.map(|image| {
        let registry = match image.location.parse::<ImageReference>() {
            Ok(ImageReference::Registry(r)) => Some(r),
            _ => None,
        };
        Side { image, registry }
    });
    let Some(claims) = claims else {
        return side
            .map(Some)
            .ok_or_else(|| ApiError::new(404, format!("no image with id {id}")));
    };
    let granted = match &side {
        Some(Side {
            registry: Some(r), ..
        }) => check_token(claims, &r.registry, &r.repository).map_err(|e| e.message),
        Some(_) => Err("the image is not on a registry".to_string()),
        None => Err("no such image".to_string()),
    };
    match granted {
        Ok(()) => Ok(side),
        Err(why) => Err(
            ApiError::new(403, format!("the token does not grant pull on image {id}")).detail(why),
        ),
    }
}

async fn resolve(
    state: &AppState,
    side: &Requested,
    known: Option<Side>,
) -> Result<Side, ApiError> {
    match (side, known) {
        (_, Some(side)) => Ok(side),
        (Requested::Registry(r), None) => {
            let image = match state.tags.get(r) {
                Some(image) => image,
                None => {
                    let image =
                        images::registry_image(&**state.backend.store(), &state.config.registry, r)
                            .await?;
                    state.tags.put(r, &image);
                    image
                }
            };
            Ok(Side {
                image,
                registry: Some(r.clone()),
            })
        }
        (Requested::Id(id), None) => Err(ApiError::new(404, format!("no image with id {id}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_list_matches_host_or_host_and_port() {
        let allowed = vec!["127.0.0.1:5055".to_string(), "reg.example".to_string()];
        assert!(registry_allowed(&allowed, "127.0.0.1:5055"));
        assert!(!registry_allowed(&allowed, "127.0.0.1:5056"));
        assert!(!registry_allowed(&allowed, "127.0.0.1"));
        assert!(registry_allowed(&allowed, "reg.example"));
        assert!(registry_allowed(&allowed, "reg.example:443"));
        assert!(!registry_allowed(&allowed, "reg.example.evil"));
        assert!(!registry_allowed(&[], "reg.example"));
    }
}
