//! Wiring: the shared state, the routers, and `run` — serve until `shutdown`, then drain.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::HeaderValue;
use axum::http::header::CONNECTION;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::accept::{self, Port};
use crate::auth::{AuthSetupError, Authenticator, TokenRules};
use crate::broker::Broker;
use crate::broker::memory::{MemoryBroker, MemorySettings};
use crate::broker::redis::{RedisBroker, RedisSettings, ReplicaAck};
use crate::broker::target::{ReloadingTarget, TargetError};
use crate::config::Config;
use crate::fanout::{Hub, SessionControl, SessionTag};
use crate::limits::{self, ConnectionGate};
use crate::metrics::{Metrics, reasons};
use crate::namespaces::{Namespaces, NamespacesError};
use crate::origin::OriginPolicy;
use crate::per_user::UserConnections;
use crate::poll::PollSlots;
use crate::protocol::close;
use crate::rates::PublishRates;
use crate::request_cycle::Timeouts;
use crate::server_api::cluster::RedisControl;
use crate::server_api::key::{ApiKey, KeyError};
use crate::server_api::revocations::Revocations;
use crate::server_api::{self, ApiState, Reach};
use crate::{admin, assets, handshake, history, poll, publish, sse};

/// Time left for the last connections to finish their close handshake after the drain window.
const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// Open sessions (WebSocket, SSE, gRPC streams) by id, so the drain can close them one by one
/// and the server API can find them by user, client id or token (their [`SessionTag`]).
#[derive(Clone, Default)]
pub struct SessionRegistry {
    inner: Arc<Mutex<HashMap<u64, Arc<SessionControl>>>>,
}

/// Removes its session from the registry when dropped.
pub struct SessionRegistration {
    registry: SessionRegistry,
    id: u64,
}

impl Drop for SessionRegistration {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
    }
}

impl SessionRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<SessionControl>>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a session (under its id) until the registration is dropped.
    pub fn register(&self, control: Arc<SessionControl>) -> SessionRegistration {
        let id = control.id();
        self.lock().insert(id, control);
        SessionRegistration {
            registry: self.clone(),
            id,
        }
    }

    pub fn snapshot(&self) -> Vec<Arc<SessionControl>> {
        self.lock().values().cloned().collect()
    }

    /// The sessions whose tag `wanted` holds for (the lock is held only while they are picked,
    /// never while anything is done to them).
    pub fn find(&self, wanted: impl Fn(&SessionTag) -> bool) -> Vec<Arc<SessionControl>> {
        self.lock()
            .values()
            .filter(|control| wanted(control.tag()))
            .cloned()
            .collect()
    }

    /// Open sessions.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Everything the handlers share, built once by [`run`].
pub struct AppState {
    pub config: Config,
    pub node_id: String,
    pub hub: Arc<Hub>,
    pub broker: Arc<dyn Broker>,
    /// What each channel namespace does (history, presence, who may publish and subscribe).
    pub namespaces: Arc<Namespaces>,
    pub auth: Option<Authenticator>,
    /// Which browser pages may use `/ws`, `/sse` and `/api/publish`.
    pub origins: OriginPolicy,
    /// Publish budgets per identity, shared by every transport.
    pub rates: PublishRates,
    pub metrics: Metrics,
    pub registry: Registry,
    /// Client-port sockets, counted from `accept` (see `accept.rs`).
    pub gate: Arc<ConnectionGate>,
    pub draining: AtomicBool,
    pub sessions: SessionRegistry,
    pub tracker: TaskTracker,
    /// Tokens revoked through the server API, checked on connect and HTTP publish.
    pub revocations: Revocations,
    /// Long polls waiting now (`--max-polls`, `--max-polls-per-client`).
    pub polls: Arc<PollSlots>,
    /// Sessions per user on this node (`--max-connections-per-user`).
    pub user_connections: Arc<UserConnections>,
}

/// Start-up failed.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("failed to load the JWT key")]
    Auth(#[from] AuthSetupError),
    #[error("bad redis settings")]
    Redis(#[from] TargetError),
    #[error("failed to read the listener address")]
    Address(#[source] std::io::Error),
    #[error("failed to load the server API key")]
    ApiKey(#[from] KeyError),
    #[error("bad channel namespace options")]
    Namespaces(#[from] NamespacesError),
    #[error("a server API listener was given but no --api-key-file")]
    ApiWithoutKey,
}

/// The client-facing routes.
pub fn app_router(app: Arc<AppState>) -> Router {
    let body_limit = app
        .config
        .max_message_bytes
        .saturating_mul(2)
        .max(16 * 1024);
    Router::new()
        .route("/ws", get(handshake::websocket))
        .route("/sse", get(sse::events))
        .route("/api/publish", post(publish::publish))
        .route("/api/history", get(history::http))
        .route("/poll", get(poll::poll))
        .route("/", get(assets::index))
        .route("/assets/{*path}", get(assets::demo_asset))
        .route("/client/{*path}", get(assets::client_asset))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(app)
}

/// What a socket accepted past the connection limit gets for any request: 503 + `Retry-After`,
/// then the socket is closed.
fn overflow_router() -> Router {
    Router::new().fallback(|| async {
        let mut response = handshake::at_capacity().into_response();
        response
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
        response
    })
}

fn hostname() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

/// The node's name: `--node-id`, else the hostname (the pod name in Kubernetes).
pub fn node_id(config: &Config) -> String {
    config.node_id.clone().unwrap_or_else(hostname)
}

/// Builds the node and serves on the given listeners until `shutdown` resolves; then turns
/// `/readyz` to 503, stops accepting, closes every connection with 1001 spread evenly over
/// `drain-timeout`, and returns.
pub async fn run(
    listener: TcpListener,
    admin_listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    run_with_api(listener, admin_listener, None, config, shutdown).await
}

/// [`run`] with the server API served on `api_listener` (needs `--api-key-file`).
pub async fn run_with_api(
    listener: TcpListener,
    admin_listener: TcpListener,
    api_listener: Option<TcpListener>,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let api_key = match (&api_listener, config.api_key_file.as_deref()) {
        (None, _) => None,
        (Some(_), None) => return Err(ServeError::ApiWithoutKey),
        (Some(_), Some(path)) => Some(ApiKey::load(path)?),
    };
    let api_listen = match &api_listener {
        Some(l) => Some(l.local_addr().map_err(ServeError::Address)?),
        None => None,
    };
    let fd = limits::raise_nofile_limit();
    let budget = limits::fd_budget(fd.soft, limits::open_fds());
    // Never above what the fds allow: past it the fd reserve (admin port, Redis) is not kept.
    let max_connections = match config.max_connections {
        Some(wanted) if wanted > budget.max_connections => {
            warn!(
                details.max_connections = wanted,
                details.fd_soft_limit = fd.soft,
                details.allowed = budget.max_connections,
                "--max-connections is above what RLIMIT_NOFILE allows; using the lower limit"
            );
            budget.max_connections
        }
        Some(wanted) => wanted,
        None => budget.max_connections,
    };
    let namespaces = Arc::new(Namespaces::from_config(&config)?);
    let node_id = node_id(&config);
    let listen = listener.local_addr().map_err(ServeError::Address)?;
    let admin_listen = admin_listener.local_addr().map_err(ServeError::Address)?;

    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry, &config.metrics_namespaces);
    let api_metrics = server_api::ApiMetrics::register(&mut registry);
    let hub = Hub::new(metrics.clone(), config.send_queue, config.send_queue_bytes);
    let background = CancellationToken::new();
    // redis-rs's rustls client takes the process-wide crypto provider: pin ring, the one the
    // rest of the workspace uses (an error only means one is installed already).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut broker_kind = "embedded";
    let broker: Arc<dyn Broker> = match config.redis_url.as_deref() {
        Some(url) => {
            let target = ReloadingTarget::new(
                url,
                config.redis_password.as_deref(),
                config.redis_sentinel_password.as_deref(),
                config.redis_ca_file.as_deref(),
            )?;
            broker_kind = if target.is_cluster() {
                "redis-cluster"
            } else if target.is_sentinel() {
                "redis-sentinel"
            } else {
                "redis"
            };
            let replica_ack = (config.redis_min_replicas_ack > 0).then_some(ReplicaAck {
                replicas: config.redis_min_replicas_ack,
                timeout: config.redis_replica_ack_timeout,
            });
            let settings = RedisSettings {
                namespaces: namespaces.clone(),
                ping_interval: Duration::from_secs(1),
                presence_ttl: config.presence_ttl,
                replica_ack,
            };
            RedisBroker::start(
                target,
                hub.clone(),
                metrics.clone(),
                settings,
                background.clone(),
            )
        }
        None => {
            metrics.redis_up.set(1);
            let settings = MemorySettings {
                namespaces: namespaces.clone(),
                max_channels: usize::try_from(config.max_channels).unwrap_or(usize::MAX),
                max_history_bytes: config.max_history_bytes,
            };
            MemoryBroker::start(hub.clone(), metrics.clone(), settings, background.clone())
        }
    };
    let auth = Authenticator::from_settings(
        config.jwt_secret.as_deref(),
        config.jwt_secret_file.as_deref(),
        config.jwt_public_key_file.as_deref(),
        &TokenRules {
            issuers: config.jwt_issuer.clone(),
            audiences: config.jwt_audience.clone(),
        },
    )?;
    let origins = OriginPolicy::new(&config.allowed_origins);
    metrics.auth_enabled.set(i64::from(auth.is_some()));
    if auth.is_none() {
        warn!(
            details.auth = false,
            "AUTH IS OFF: no JWT key is configured (--jwt-secret-file, --jwt-public-key-file), so \
             anyone who reaches the client port may subscribe and publish to every channel; \
             chat_auth_enabled is 0 on /metrics"
        );
    }
    if origins.allows_any() {
        warn!(
            "--allowed-origins has `*`: pages of any site may use this node from their \
             visitors' browsers"
        );
    }
    info!(
        details.node = %node_id,
        details.listen = %listen,
        details.admin_listen = %admin_listen,
        details.api_listen = api_listen.map(|a| a.to_string()),
        details.broker = broker_kind,
        details.auth = auth.is_some(),
        details.fd_soft_limit = fd.soft,
        details.fd_hard_limit = fd.hard,
        details.fd_reserve = budget.reserve,
        details.max_connections = max_connections,
        details.overflow_sockets = budget.overflow,
        details.admin_sockets = limits::ADMIN_SOCKETS,
        "chat-node listening"
    );
    metrics.max_connections.set(max_connections as i64);
    let app = Arc::new(AppState {
        rates: PublishRates::new(config.max_publish_rate),
        user_connections: UserConnections::new(config.max_connections_per_user),
        gate: ConnectionGate::new(max_connections),
        polls: PollSlots::new(
            usize::try_from(config.max_polls).unwrap_or(usize::MAX),
            usize::try_from(config.max_polls_per_client).unwrap_or(usize::MAX),
        ),
        config,
        node_id,
        hub,
        broker,
        namespaces,
        auth,
        origins,
        metrics,
        registry,
        draining: AtomicBool::new(false),
        sessions: SessionRegistry::default(),
        tracker: TaskTracker::new(),
        revocations: Revocations::default(),
    });

    // Every node with Redis follows the control channel (a `disconnect` issued on another node
    // must reach its sessions), whether or not it serves the API itself.
    let reach = match app.config.redis_url.as_deref() {
        Some(url) => {
            let target = ReloadingTarget::new(
                url,
                app.config.redis_password.as_deref(),
                app.config.redis_sentinel_password.as_deref(),
                app.config.redis_ca_file.as_deref(),
            )?;
            Reach::Cluster(RedisControl::start(
                target,
                app.clone(),
                app.config.node_announce_interval,
                background.clone(),
            ))
        }
        None => {
            app.revocations.mark_loaded();
            Reach::Local
        }
    };

    tokio::spawn(forget_idle_rates(app.clone(), background.clone()));

    let timeouts = Timeouts {
        header: app.config.header_timeout,
        idle: app.config.idle_timeout,
    };
    let admin_stop = CancellationToken::new();
    let admin_port = Port {
        router: admin::router(app.clone()),
        gate: ConnectionGate::new(limits::ADMIN_SOCKETS),
        overflow: None,
        timeouts,
        metrics: None,
        http2: None,
    };
    let admin_server = tokio::spawn(accept::serve(
        admin_listener,
        admin_port,
        admin_stop.clone(),
    ));
    let stop_accepting = CancellationToken::new();
    let client_port = Port {
        router: app_router(app.clone()),
        gate: app.gate.clone(),
        overflow: Some((overflow_router(), ConnectionGate::new(budget.overflow))),
        timeouts,
        metrics: Some(app.metrics.clone()),
        http2: None,
    };
    let main_server = tokio::spawn(accept::serve(listener, client_port, stop_accepting.clone()));
    let api_server = match (api_listener, api_key) {
        (Some(api_listener), Some(key)) => {
            let state = Arc::new(ApiState {
                app: app.clone(),
                key,
                reach,
                metrics: api_metrics,
            });
            // gRPC shares the port: sockets that open with the HTTP/2 preface go to tonic.
            let (http2, sockets) = tokio::sync::mpsc::channel(server_api::API_SOCKETS);
            tokio::spawn(server_api::grpc::serve(
                state.clone(),
                sockets,
                timeouts,
                admin_stop.clone(),
            ));
            let api_port = Port {
                router: server_api::router(state),
                gate: ConnectionGate::new(server_api::API_SOCKETS),
                overflow: None,
                timeouts,
                metrics: None,
                http2: Some(http2),
            };
            Some(tokio::spawn(accept::serve(
                api_listener,
                api_port,
                admin_stop.clone(),
            )))
        }
        _ => None,
    };

    shutdown.await;
    app.draining.store(true, Ordering::Release);
    stop_accepting.cancel();
    drain(&app).await;
    app.tracker.close();
    if tokio::time::timeout(DRAIN_GRACE, app.tracker.wait())
        .await
        .is_err()
    {
        warn!("connections still open after the drain window; exiting anyway");
    }
    let _ = tokio::time::timeout(DRAIN_GRACE, main_server).await;
    background.cancel();
    admin_stop.cancel();
    let _ = tokio::time::timeout(DRAIN_GRACE, admin_server).await;
    if let Some(api_server) = api_server {
        let _ = tokio::time::timeout(DRAIN_GRACE, api_server).await;
    }
    info!("chat-node stopped");
    Ok(())
}

/// How often identities whose publish budget is full again are forgotten.
const RATES_SWEEP: Duration = Duration::from_secs(10);

/// Keeps the publish budgets to the identities that published recently.
async fn forget_idle_rates(app: Arc<AppState>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(RATES_SWEEP);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => app.rates.forget_idle(),
        }
    }
}

/// Closes every open session with 1001, spread evenly over the drain window, so clients do not
/// all reconnect at the same moment.
async fn drain(app: &AppState) {
    let sessions = app.sessions.snapshot();
    let window = app.config.drain_timeout;
    info!(
        details.connections = sessions.len(),
        details.drain_timeout_ms = window.as_millis() as u64,
        "draining"
    );
    let start = tokio::time::Instant::now();
    let count = sessions.len().max(1) as f64;
    for (i, control) in sessions.iter().enumerate() {
        tokio::time::sleep_until(start + window.mul_f64(i as f64 / count)).await;
        control.close(close::GOING_AWAY, reasons::DRAINING);
    }
    // Anything that slipped in while the drain started.
    for control in app.sessions.snapshot() {
        control.close(close::GOING_AWAY, reasons::DRAINING);
    }
}
