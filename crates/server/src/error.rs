//! Error answers: a status, a short public message, details for the log only.

use std::time::Duration;

use axum::http::{header, HeaderValue, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bru_service::ServiceError;

/// `Retry-After` of a `503` for a transient store failure (database busy, disk full).
pub(crate) const TRANSIENT_RETRY_AFTER: Duration = Duration::from_secs(5);

/// An error answer: a status, a short public message, and details for the log only.
///
/// Bodies are `{"error": MESSAGE, "request_id": ID}`. Messages never carry server paths,
/// registry URLs or the text of internal errors; those go to the log as `detail`, in the
/// request's span (which has the same request id).
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    pub(crate) message: String,
    detail: Option<String>,
    retry_after: Option<Duration>,
}

/// The public message of an error answer, for [`error_body`].
#[derive(Debug, Clone)]
struct PublicError(String);

impl ApiError {
    /// `message` is sent to the client: it may only say what the client sent or a fixed text.
    pub(crate) fn new(status: u16, message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            message: message.into(),
            detail: None,
            retry_after: None,
        }
    }

    /// Adds a `Retry-After` header (whole seconds, at least 1).
    pub(crate) fn retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    /// A store or build failure: transient ones (database busy, disk full, registry down)
    /// are `503` with `Retry-After`, the rest `500`. Details go to the log only.
    pub(crate) fn service(e: &ServiceError) -> Self {
        if e.is_transient() {
            ApiError::new(503, "temporarily unavailable; ask again")
                .retry_after(TRANSIENT_RETRY_AFTER)
                .detail(e)
        } else {
            ApiError::internal(e)
        }
    }

    /// Adds details for the log (URLs in them are redacted).
    pub(crate) fn detail(mut self, detail: impl std::fmt::Display) -> Self {
        self.detail = Some(bru_core::redact_text(&detail.to_string()).into_owned());
        self
    }

    pub(crate) fn internal(e: &dyn std::fmt::Display) -> Self {
        ApiError::new(500, "internal error").detail(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let detail = self.detail.as_deref().unwrap_or("");
        if self.status.is_server_error() && self.status != StatusCode::GATEWAY_TIMEOUT {
            tracing::warn!(status = %self.status, error = %self.message, detail, "request failed");
        } else {
            tracing::info!(status = %self.status, reason = %self.message, detail, "request refused");
        }
        let mut response = Json(serde_json::json!({ "error": self.message })).into_response();
        *response.status_mut() = self.status;
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(after) = self.retry_after {
            let secs = (after.as_secs() + u64::from(after.subsec_nanos() > 0)).max(1);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response.extensions_mut().insert(PublicError(self.message));
        response
    }
}

/// Puts the request id into the body of error answers.
pub(crate) async fn error_body(
    req: Request<axum::body::Body>,
    next: axum::middleware::Next,
) -> Response {
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut response = next.run(req).await;
    let Some(PublicError(message)) = response.extensions_mut().remove::<PublicError>() else {
        return response;
    };
    let (mut parts, _) = response.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    let body = serde_json::json!({ "error": message, "request_id": id }).to_string();
    Response::from_parts(parts, axum::body::Body::from(body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use axum::Router;
    use tower::ServiceExt as _;

    #[tokio::test]
    async fn error_bodies_carry_the_request_id_and_no_details() {
        async fn failing() -> ApiError {
            ApiError::internal(
                &"open /var/lib/bru/state/store.sqlite via https://u:pw@reg/v2?token=x",
            )
        }
        let router = Router::new()
            .route("/", get(failing))
            .layer(axum::middleware::from_fn(error_body));
        let request = Request::builder()
            .uri("/")
            .header("x-request-id", "req-7")
            .body(axum::body::Body::empty())
            .unwrap();
        let response = router.oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"error": "internal error", "request_id": "req-7"})
        );
        let detail = ApiError::internal(&"fetch https://u:pw@reg/v2?token=x").detail;
        assert_eq!(
            detail.as_deref(),
            Some("fetch https://u:***@reg/v2?token=***")
        );
    }
}
