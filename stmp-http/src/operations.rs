//! Health, drain and metrics: what operators and orchestrators call.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::FutureExt;
use serde::Deserialize;
use serde_json::json;

use crate::Shared;
use crate::error::ApiError;

/// `200 {"status":"ok"}` while the server serves, `503 {"status":"draining"}` once its
/// shutdown began: load balancers stop sending clients to a draining node.
pub(crate) async fn health(State(state): State<Shared>) -> Response {
    let connections = state.server.conns().len();
    // `closed()` is ready at once when shutdown has begun.
    if state.server.closed().now_or_never().is_some() {
        let body = json!({ "status": "draining", "connections": connections });
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    } else {
        Json(json!({ "status": "ok", "connections": connections })).into_response()
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DrainBody {
    /// How long in-flight calls may take to finish, in milliseconds.
    deadline_ms: Option<u64>,
}

/// Shuts the stmp server down gracefully and answers when it is done: new connections are
/// refused from the start, in-flight calls finish, clients get `ServerShutdown`.
pub(crate) async fn drain(
    State(state): State<Shared>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let body: DrainBody = crate::admin::optional_json(&body)?;
    let deadline = body
        .deadline_ms
        .map(Duration::from_millis)
        .unwrap_or(state.drain_deadline);
    let connections = state.server.conns().len();
    tracing::info!(?deadline, connections, "draining over HTTP");
    state.server.shutdown(deadline).await;
    Ok(Json(json!({ "drained": true, "connections": connections })))
}

pub(crate) async fn metrics(State(state): State<Shared>) -> Result<Response, ApiError> {
    let metrics = state
        .metrics
        .as_ref()
        .ok_or_else(|| ApiError::not_found("no metrics recorder is installed"))?;
    Ok((
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics.render(),
    )
        .into_response())
}
