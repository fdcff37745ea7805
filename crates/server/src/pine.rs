//! The read-only subset of balena's pine API (`/v7/release`, `/v7/image`, `/v7/delta`)
//! that the release-update clients issue, over the store. Only the query shapes those
//! clients send are understood; anything else is 400. The rows are the client's own wire
//! types (`bru_balena::wire`), so the shapes are defined once.

use bru_balena::wire::{WireDelta, WireImage, WireRelease};
use bru_core::ReleaseSource as _;
use serde_json::{json, Value};

use crate::query::percent_decode;
use crate::{ApiError, AppState};

/// Answers `GET /v7/<resource>?<query>` with `{"d": [...]}`.
pub(crate) async fn answer(
    state: &AppState,
    resource: &str,
    query: &str,
) -> Result<Value, ApiError> {
    let query = percent_decode(query).map_err(|m| ApiError::new(400, m))?;
    let backend = &state.backend;
    let fail = |e: bru_core::Error| ApiError::internal(&e);
    let rows: Vec<Value> = match parse_resource(resource)? {
        ("release", Some(id)) => backend
            .release_by_id(id)
            .await
            .map_err(fail)?
            .map(release)
            .into_iter()
            .collect(),
        ("release", None) => {
            let prefix = between(&query, "startswith(commit,'", "')")
                .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric()))
                .ok_or_else(|| unsupported("release"))?;
            backend
                .releases_by_commit(prefix)
                .await
                .map_err(fail)?
                .into_iter()
                .map(release)
                .collect()
        }
        ("image", Some(id)) => backend
            .image(id)
            .await
            .map_err(fail)?
            .map(|i| to_value(WireImage::from(&i)))
            .into_iter()
            .collect(),
        ("delta", None) => {
            let number = |key: &str| {
                between(&query, key, " ")
                    .or_else(|| between(&query, key, ")"))
                    .or_else(|| query.split_once(key).map(|(_, rest)| rest))
                    .and_then(|v| v.parse::<u64>().ok())
                    .ok_or_else(|| unsupported("delta"))
            };
            let version = number("version eq ")?;
            let (src, dest) = (
                number("originates_from__image eq ")?,
                number("produces__image eq ")?,
            );
            let found = backend.latest_delta(src, dest).await.map_err(fail)?;
            found
                .filter(|d| u64::from(d.version) == version)
                .map(|d| to_value(WireDelta::from(&d)))
                .into_iter()
                .collect()
        }
        (other, _) => return Err(ApiError::new(400, format!("unsupported resource {other}"))),
    };
    Ok(json!({ "d": rows }))
}

fn unsupported(resource: &str) -> ApiError {
    ApiError::new(400, format!("unsupported query on {resource}"))
}

/// `name` or `name(ID)`.
fn parse_resource(s: &str) -> Result<(&str, Option<u64>), ApiError> {
    match s.split_once('(') {
        None => Ok((s, None)),
        Some((name, rest)) => rest
            .strip_suffix(')')
            .and_then(|id| id.parse().ok())
            .map(|id| (name, Some(id)))
            .ok_or_else(|| ApiError::new(400, format!("malformed resource {s}"))),
    }
}

/// The text between the first `start` and the next `end` after it.
fn between<'a>(s: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let (_, rest) = s.split_once(start)?;
    rest.split_once(end).map(|(inner, _)| inner)
}

fn release(r: bru_core::Release) -> Value {
    to_value(WireRelease::from(&r))
}

/// A wire shape as JSON (the shapes are plain data: serialising cannot fail).
fn to_value(v: impl serde::Serialize) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_and_filters() {
        assert_eq!(
            parse_resource("release(12)").unwrap(),
            ("release", Some(12))
        );
        assert_eq!(parse_resource("delta").unwrap(), ("delta", None));
        assert!(parse_resource("release(x)").is_err());
        assert!(parse_resource("release(1").is_err());
        let q = "$filter=startswith(commit,'84d3d8f') and status eq 'success'";
        assert_eq!(between(q, "startswith(commit,'", "')"), Some("84d3d8f"));
        assert_eq!(between(q, "nothing", "')"), None);
    }
}
