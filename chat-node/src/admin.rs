//! The admin port: `/metrics`, `/healthz`, `/readyz`.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;

use crate::server::AppState;

pub fn router(app: Arc<AppState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(app)
}

async fn metrics(State(app): State<Arc<AppState>>) -> impl IntoResponse {
    app.metrics.refresh_process();
    app.metrics
        .active_connections
        .set(app.sessions.len() as i64);
    app.metrics.client_sockets.set(app.gate.active() as i64);
    let mut body = String::with_capacity(8 * 1024);
    if prometheus_client::encoding::text::encode(&mut body, &app.registry).is_err() {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(CONTENT_TYPE, "text/plain")],
            String::from("encode failed\n"),
        );
    }
    (
        StatusCode::OK,
        [(
            CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
}

/// Why the node is not ready, if it is not.
pub fn not_ready_reason(app: &AppState) -> Option<&'static str> {
    if app.draining.load(Ordering::Acquire) {
        Some("draining")
    } else if !app.broker.is_up() {
        Some("redis unavailable")
    } else if !app.revocations.is_loaded() {
        Some("revoked tokens not loaded yet")
    } else if app.gate.at_limit() {
        Some("at connection limit")
    } else {
        None
    }
}

async fn readyz(State(app): State<Arc<AppState>>) -> impl IntoResponse {
    match not_ready_reason(&app) {
        None => (StatusCode::OK, String::from("ready\n")),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        ),
    }
}
