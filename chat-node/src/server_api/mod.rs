//! The server API: how an application's backend drives the chat (publish system messages,
//! disconnect a banned user, revoke tokens, ask who is online), on its own listener
//! (`--api-listen`, default `0.0.0.0:9092`), which the ChatCluster's Ingress/Gateway never routes.
//!
//! It is on only when an API key is configured (`--api-key-file`): every call carries
//! `Authorization: apikey <key>`; client tokens (JWTs) are never accepted here. The key file is
//! re-read when it changes (see [`key`]), so the key rotates without a restart.
//!
//! HTTP: `POST /api/<method>` with a JSON body; answers 200 with a JSON body, or an error status
//! with `{"code","message"}`. The methods are in [`methods`]; the ones that act on every node
//! (`disconnect`, `unsubscribe`, `revoke`, `info`, `channels`) go through Redis (see
//! [`cluster`]), or stay on this node with the embedded broker.

pub mod cluster;
pub mod commands;
pub mod grpc;
pub mod h2;
pub mod key;
pub mod methods;
pub mod proto;
pub mod revocations;

use std::sync::Arc;

use axum::Router;
use axum::routing::post;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::server::AppState;
use cluster::RedisControl;
use key::ApiKey;

/// Sockets the API port holds at once (backends keep a few connections each).
pub const API_SOCKETS: usize = 256;

/// Where the cross-node methods go.
#[derive(Clone)]
pub enum Reach {
    /// The embedded broker: this node is the whole cluster.
    Local,
    /// Every node, through Redis.
    Cluster(Arc<RedisControl>),
}

/// What the API's handlers share.
pub struct ApiState {
    pub app: Arc<AppState>,
    pub key: ApiKey,
    pub reach: Reach,
    pub metrics: ApiMetrics,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    /// `http` or `grpc`.
    pub transport: &'static str,
    /// One of the methods, or `unknown` (an unknown name, or a call refused before its
    /// method was known).
    pub method: &'static str,
    /// `ok` or the error code of the answer (a fixed set).
    pub code: &'static str,
}

/// `chat_server_api_requests_total{transport,method,code}`: calls of the server API by outcome.
#[derive(Clone, Default)]
pub struct ApiMetrics {
    calls: Family<CallLabels, Counter>,
}

impl ApiMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = ApiMetrics::default();
        registry.register(
            "chat_server_api_requests",
            "Server API calls by transport, method and outcome (ok or the error code)",
            metrics.calls.clone(),
        );
        metrics
    }

    pub fn count(&self, transport: &'static str, method: &str, code: &'static str) {
        let labels = CallLabels {
            transport,
            method: methods::method_label(method),
            code,
        };
        self.calls.get_or_create(&labels).inc();
    }
}

/// The API port's routes.
pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/api/{method}", post(methods::call))
        .fallback(methods::not_found)
        .with_state(state)
}
