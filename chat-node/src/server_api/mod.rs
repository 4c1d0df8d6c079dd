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
pub mod key;
pub mod methods;
pub mod proto;
pub mod revocations;

use std::sync::Arc;

use axum::Router;
use axum::routing::post;

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
}

/// The API port's routes.
pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/api/{method}", post(methods::call))
        .fallback(methods::not_found)
        .with_state(state)
}
