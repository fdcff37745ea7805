//! `GET /api/v3/delta/status?src=REF&dest=REF`: what `/api/v3/delta` would answer, without
//! starting a build.
//!
//! The request is checked exactly as a delta request is (query 400, token 401, allow list
//! 403, the token's `aud` and `access` for both references, then the images), so a client
//! holding a device's registry token learns no more than the device could. Reading the
//! images may record a registry image in the store on first sight (as a delta request
//! does), but no delta row is created, claimed or taken over.
//!
//! The answer is `200` with
//!
//! ```json
//! {"status": "ready", "id": 7, "version": 3,
//!  "name": "HOST/REPO:delta-0123456789abcdef", "download_bytes": 484575}
//! ```
//!
//! | `status` | meaning | other fields |
//! |---|---|---|
//! | `ready` | the delta exists | `id`, `version`, `name` (what `/api/v3/delta` answers), `download_bytes` (config plus delta layers, compressed: what a device downloads) |
//! | `building` | a build is running (its heartbeat is fresh) | `id`, `version` |
//! | `failed` | the last build failed and is not retried before `retry_after_seconds` | `id`, `version`, `retry_after_seconds` |
//! | `interrupted` | the last build was interrupted by a transient failure (its row was given up); a delta request answers 503 until `retry_after_seconds` | `retry_after_seconds` |
//! | `none` | no delta, or a stale or cooled-down row: a delta request would start a build | — |

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bru_balena::wire::WireDeltaStatus;
use bru_service::{DeltaRecord, DeltaStatus, DELTA_VERSION};

use crate::{ApiError, AppState};

pub(crate) async fn delta_status(
    State(state): State<Arc<AppState>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let response = match answer(&state, query.as_deref().unwrap_or(""), &headers).await {
        Ok(body) => (StatusCode::OK, Json(body)).into_response(),
        Err(e) => e.into_response(),
    };
    state.metrics.request(response.status().as_u16());
    response
}

async fn answer(
    state: &AppState,
    query: &str,
    headers: &HeaderMap,
) -> Result<WireDeltaStatus, ApiError> {
    let started = tokio::time::Instant::now();
    let (src, dest) = crate::authorize::authorize(state, query, headers, started).await?;
    let row = state
        .backend
        .store()
        .newest_delta(src.image.id, dest.image.id, DELTA_VERSION)
        .await
        .map_err(|e| ApiError::service(&e))?;
    let held_back = state.backend.interrupted_for(src.image.id, dest.image.id);
    Ok(with_interruption(
        state_of(row, &state.config.policy, now_ms()),
        held_back,
    ))
}

/// Without a row that decides, a pair held back after an interrupted build is
/// `interrupted` (a request would answer 503 until then).
fn with_interruption(
    state: WireDeltaStatus,
    held_back: Option<std::time::Duration>,
) -> WireDeltaStatus {
    match (state, held_back) {
        (WireDeltaStatus::None, Some(left)) => WireDeltaStatus::Interrupted {
            retry_after_seconds: left.as_secs() + u64::from(left.subsec_nanos() > 0),
        },
        (known, _) => known,
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The public state of the newest row, judged by the rules `claim_delta` applies.
fn state_of(
    row: Option<DeltaRecord>,
    policy: &bru_service::ClaimPolicy,
    now: i64,
) -> WireDeltaStatus {
    let Some(row) = row else {
        return WireDeltaStatus::None;
    };
    let ms = |d: std::time::Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    match row.status {
        DeltaStatus::Success => match (row.location, row.size) {
            (Some(name), Some(download_bytes)) => WireDeltaStatus::Ready {
                id: row.id,
                version: row.version,
                name,
                download_bytes,
            },
            // A success row always has both; without them a request would rebuild.
            _ => WireDeltaStatus::None,
        },
        DeltaStatus::Running
            if now.saturating_sub(row.update_timestamp) < ms(policy.stale_after) =>
        {
            WireDeltaStatus::Building {
                id: row.id,
                version: row.version,
            }
        }
        DeltaStatus::Running => WireDeltaStatus::None,
        DeltaStatus::Failed => {
            let ended = row.end_timestamp.unwrap_or(row.update_timestamp);
            let left = ended
                .saturating_add(ms(policy.retry_failed_after))
                .saturating_sub(now);
            if left > 0 {
                WireDeltaStatus::Failed {
                    id: row.id,
                    version: row.version,
                    retry_after_seconds: u64::try_from(left.saturating_add(999) / 1000)
                        .unwrap_or(0),
                }
            } else {
                WireDeltaStatus::None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bru_service::ClaimPolicy;

    fn row(status: DeltaStatus, updated: i64, ended: Option<i64>) -> DeltaRecord {
        DeltaRecord {
            id: 7,
            source_image: 1,
            target_image: 2,
            version: 3,
            status,
            location: (status == DeltaStatus::Success).then(|| "r/v2/a:delta-1".to_string()),
            size: (status == DeltaStatus::Success).then_some(1234),
            error_message: None,
            owner: "x".into(),
            created_at: 0,
            update_timestamp: updated,
            end_timestamp: ended,
        }
    }

    #[test]
    fn rows_map_to_the_answer_a_request_would_give() {
        let policy = ClaimPolicy::default(); // stale after 300 s, retry failed after 600 s
        let now = 1_000_000_000;
        assert_eq!(state_of(None, &policy, now), WireDeltaStatus::None);
        assert_eq!(
            state_of(Some(row(DeltaStatus::Success, 0, Some(0))), &policy, now),
            WireDeltaStatus::Ready {
                id: 7,
                version: 3,
                name: "r/v2/a:delta-1".into(),
                download_bytes: 1234
            }
        );
        let fresh = row(DeltaStatus::Running, now - 299_000, None);
        assert!(matches!(
            state_of(Some(fresh), &policy, now),
            WireDeltaStatus::Building { id: 7, .. }
        ));
        let stale = row(DeltaStatus::Running, now - 300_000, None);
        assert_eq!(state_of(Some(stale), &policy, now), WireDeltaStatus::None);
        let failed = row(DeltaStatus::Failed, 0, Some(now - 599_500));
        assert_eq!(
            state_of(Some(failed), &policy, now),
            WireDeltaStatus::Failed {
                id: 7,
                version: 3,
                retry_after_seconds: 1
            }
        );
        let cooled = row(DeltaStatus::Failed, 0, Some(now - 600_000));
        assert_eq!(state_of(Some(cooled), &policy, now), WireDeltaStatus::None);
    }

    #[test]
    fn a_held_back_pair_without_a_row_is_interrupted() {
        let left = Some(std::time::Duration::from_millis(1500));
        assert_eq!(
            with_interruption(WireDeltaStatus::None, left),
            WireDeltaStatus::Interrupted {
                retry_after_seconds: 2
            }
        );
        assert_eq!(
            with_interruption(WireDeltaStatus::None, None),
            WireDeltaStatus::None
        );
        let building = WireDeltaStatus::Building { id: 1, version: 3 };
        assert_eq!(with_interruption(building.clone(), left), building);
        assert_eq!(
            serde_json::to_value(WireDeltaStatus::Interrupted {
                retry_after_seconds: 2
            })
            .unwrap(),
            serde_json::json!({"status": "interrupted", "retry_after_seconds": 2})
        );
    }

    #[test]
    fn answers_serialise_with_a_status_tag() {
        let ready = WireDeltaStatus::Ready {
            id: 7,
            version: 3,
            name: "r/v2/a:delta-1".into(),
            download_bytes: 1234,
        };
        assert_eq!(
            serde_json::to_value(&ready).unwrap(),
            serde_json::json!({"status": "ready", "id": 7, "version": 3,
                               "name": "r/v2/a:delta-1", "download_bytes": 1234})
        );
        assert_eq!(
            serde_json::to_value(WireDeltaStatus::None).unwrap(),
            serde_json::json!({"status": "none"})
        );
    }
}
