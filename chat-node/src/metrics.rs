//! Prometheus metrics. The names are part of the contract (PROTOCOL.md); labels are bounded
//! (status, reason, error code, channel namespace), never per channel or per client.
//!
//! Channel namespaces are chosen by clients (anyone may publish to `x1:a`, `x2:a`, …), so the
//! `channel_namespace` label only takes the namespaces the operator configured
//! (`--metrics-namespaces`), `default` (channels without `:`), and `other` for the rest: a flood
//! of new namespaces adds no series. (The label is not called `namespace`: Prometheus' target
//! label of that name, the Kubernetes namespace, would rename ours to `exported_namespace`.)

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    pub status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    pub code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabel {
    pub phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

/// How a long poll (`GET /poll`) ended (label of `chat_long_polls_total`).
pub mod poll_results {
    /// Answered with messages.
    pub const MESSAGES: &str = "messages";
    /// Answered with a gap (the `since` offset is gone or from another epoch).
    pub const GAP: &str = "gap";
    /// Waited the whole `wait` and answered with no message.
    pub const TIMEOUT: &str = "timeout";
    /// Answered early with no message: the node drains, or the server API ended the session.
    pub const CLOSED: &str = "closed";
    /// Refused by the node's or the client's limit on waiting polls (503 / 429).
    pub const LIMITED: &str = "limited";
    /// Refused before waiting: bad query, auth, rights, broker down.
    pub const REFUSED: &str = "refused";

    pub const ALL: [&str; 6] = [MESSAGES, GAP, TIMEOUT, CLOSED, LIMITED, REFUSED];
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CapLabel {
    pub cap: &'static str,
}

/// Which cap of the embedded broker's history evicted messages (label of
/// `chat_history_evictions_total`).
pub mod caps {
    /// `--max-channels`: the least recently published channel's history made room.
    pub const CHANNELS: &str = "channels";
    /// `--max-history-bytes`: the oldest messages across channels made room.
    pub const BYTES: &str = "bytes";

    pub const ALL: [&str; 2] = [CHANNELS, BYTES];
}

/// Which timeout closed a client-port socket (label of `chat_socket_timeouts_total`).
pub mod phases {
    pub const HEADER: &str = "header";
    pub const IDLE: &str = "idle";
    pub const BODY: &str = "body";

    pub const ALL: [&str; 3] = [HEADER, IDLE, BODY];
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NamespaceLabel {
    pub channel_namespace: String,
}

/// The `channel_namespace` of channels whose namespace is not configured.
pub const OTHER_NAMESPACE: &str = "other";

/// Why a connection ended (label of `websocket_disconnections_total`).
pub mod reasons {
    pub const CLIENT_CLOSE: &str = "client_close";
    pub const CONNECTION_LOST: &str = "connection_lost";
    pub const HEARTBEAT_TIMEOUT: &str = "heartbeat_timeout";
    pub const SLOW_CONSUMER: &str = "slow_consumer";
    pub const DRAINING: &str = "draining";
    pub const TOKEN_EXPIRED: &str = "token_expired";
    pub const MESSAGE_TOO_BIG: &str = "message_too_big";
    pub const INTERNAL: &str = "internal";
    /// Closed with 1002: the client broke the WebSocket protocol.
    pub const PROTOCOL_ERROR: &str = "protocol_error";
    /// Closed with 1007: a text frame that is not UTF-8.
    pub const INVALID_PAYLOAD: &str = "invalid_payload";
    /// Closed by a `disconnect` of the server API (4002, or the code it gave).
    pub const DISCONNECTED: &str = "disconnected";
    /// Closed with 1008: the server API revoked the session's token (or its user's tokens).
    pub const TOKEN_REVOKED: &str = "token_revoked";

    pub const ALL: [&str; 12] = [
        CLIENT_CLOSE,
        CONNECTION_LOST,
        HEARTBEAT_TIMEOUT,
        SLOW_CONSUMER,
        DRAINING,
        TOKEN_EXPIRED,
        MESSAGE_TOO_BIG,
        INTERNAL,
        PROTOCOL_ERROR,
        INVALID_PAYLOAD,
        DISCONNECTED,
        TOKEN_REVOKED,
    ];
}

/// Every metric of the node, cheap to clone (counters share their atomics).
#[derive(Clone)]
pub struct Metrics {
    pub connections: Family<StatusLabel, Counter>,
    pub active_connections: Gauge,
    pub disconnections: Family<ReasonLabel, Counter>,
    pub errors: Family<CodeLabel, Counter>,
    pub message_duration: Histogram,
    pub published: Family<NamespaceLabel, Counter>,
    pub delivered: Family<NamespaceLabel, Counter>,
    pub delivery_latency: Histogram,
    pub slow_consumers: Counter,
    pub redis_up: Gauge,
    pub redis_reconnects: Counter,
    pub redis_subscribe_timeouts: Counter,
    /// On a Redis Cluster: primaries that do not answer (their channels are unavailable).
    pub redis_cluster_shards_down: Gauge,
    pub max_connections: Gauge,
    pub auth_enabled: Gauge,
    pub client_sockets: Gauge,
    pub socket_timeouts: Family<PhaseLabel, Counter>,
    pub history_channels: Gauge,
    pub history_bytes: Gauge,
    pub history_evictions: Family<CapLabel, Counter>,
    pub long_polls: Family<ResultLabel, Counter>,
    pub long_polls_waiting: Gauge,
    pub open_fds: Gauge,
    pub max_fds: Gauge,
    pub resident_memory: Gauge,
    /// Seconds of CPU (user + system), set from `/proc/self/stat` on each scrape.
    pub cpu_seconds: Counter<f64, AtomicU64>,
    /// Namespaces that get their own `channel_namespace` value (`--metrics-namespaces`).
    channel_namespaces: Arc<HashSet<String>>,
}

impl Metrics {
    /// Creates the metrics and registers them in `registry`; `channel_namespaces` are the
    /// namespaces labelled by name (besides `default`; every other one is `other`).
    pub fn register(registry: &mut Registry, channel_namespaces: &[String]) -> Metrics {
        let m = Metrics {
            connections: Family::default(),
            active_connections: Gauge::default(),
            disconnections: Family::default(),
            errors: Family::default(),
            message_duration: Histogram::new(exponential_buckets(0.00005, 2.0, 16)),
            published: Family::default(),
            delivered: Family::default(),
            delivery_latency: Histogram::new(exponential_buckets(0.0001, 2.0, 18)),
            slow_consumers: Counter::default(),
            redis_up: Gauge::default(),
            redis_reconnects: Counter::default(),
            redis_subscribe_timeouts: Counter::default(),
            redis_cluster_shards_down: Gauge::default(),
            max_connections: Gauge::default(),
            auth_enabled: Gauge::default(),
            client_sockets: Gauge::default(),
            socket_timeouts: Family::default(),
            history_channels: Gauge::default(),
            history_bytes: Gauge::default(),
            history_evictions: Family::default(),
            long_polls: Family::default(),
            long_polls_waiting: Gauge::default(),
            open_fds: Gauge::default(),
            max_fds: Gauge::default(),
            resident_memory: Gauge::default(),
            cpu_seconds: Counter::default(),
            channel_namespaces: Arc::new(channel_namespaces.iter().cloned().collect()),
        };
        // Counters are registered without `_total`: the encoder appends it.
        registry.register(
            "websocket_connections",
            "WebSocket upgrade attempts by outcome (connected, rejected, unauthorized)",
            m.connections.clone(),
        );
        registry.register(
            "websocket_active_connections",
            "Open WebSocket connections",
            m.active_connections.clone(),
        );
        registry.register(
            "websocket_disconnections",
            "Closed WebSocket connections by reason",
            m.disconnections.clone(),
        );
        registry.register(
            "websocket_errors",
            "Error frames and refusals by error code",
            m.errors.clone(),
        );
        registry.register(
            "websocket_message_duration_seconds",
            "Time from receiving a client frame to handing it on",
            m.message_duration.clone(),
        );
        registry.register(
            "chat_messages_published",
            "Messages published by channel namespace (configured ones, default, other)",
            m.published.clone(),
        );
        registry.register(
            "chat_messages_delivered",
            "Messages written to subscribers of this node by channel namespace",
            m.delivered.clone(),
        );
        registry.register(
            "chat_delivery_latency_seconds",
            "Publish timestamp to write on the subscriber's socket, across nodes",
            m.delivery_latency.clone(),
        );
        registry.register(
            "chat_slow_consumers",
            "Connections closed because their send queue overflowed",
            m.slow_consumers.clone(),
        );
        registry.register(
            "chat_redis_up",
            "1 when Redis answers, else 0",
            m.redis_up.clone(),
        );
        registry.register(
            "chat_redis_reconnects",
            "Reconnections to Redis after a loss",
            m.redis_reconnects.clone(),
        );
        registry.register(
            "chat_redis_subscribe_timeouts",
            "Subscribe and unsubscribe requests Redis did not answer in time while the live feed kept delivering (only the sessions waiting on them got unavailable)",
            m.redis_subscribe_timeouts.clone(),
        );
        registry.register(
            "chat_redis_cluster_shards_down",
            "Redis Cluster primaries that do not answer this node's health check: their channels are unavailable, the others are served (0 on a single server)",
            m.redis_cluster_shards_down.clone(),
        );
        registry.register(
            "chat_max_connections",
            "Connection limit of this node",
            m.max_connections.clone(),
        );
        registry.register(
            "chat_auth_enabled",
            "1 when clients must present a token (a JWT key is configured), 0 when anyone may connect",
            m.auth_enabled.clone(),
        );
        registry.register(
            "process_open_fds",
            "Open file descriptors",
            m.open_fds.clone(),
        );
        registry.register(
            "chat_client_sockets",
            "Client-port sockets open (counted against chat_max_connections from accept on)",
            m.client_sockets.clone(),
        );
        registry.register(
            "chat_socket_timeouts",
            "Client-port sockets closed by a timeout, by phase (header, idle, body)",
            m.socket_timeouts.clone(),
        );
        registry.register(
            "chat_history_channels",
            "Channels with history held by the embedded broker (0 with Redis)",
            m.history_channels.clone(),
        );
        registry.register(
            "chat_history_bytes",
            "Bytes of history messages held by the embedded broker (0 with Redis)",
            m.history_bytes.clone(),
        );
        registry.register(
            "chat_history_evictions",
            "Messages the embedded broker evicted from history to stay under a cap (channels, bytes)",
            m.history_evictions.clone(),
        );
        registry.register(
            "chat_long_polls",
            "Long polls (GET /poll) by how they ended (messages, gap, timeout, closed, limited, refused)",
            m.long_polls.clone(),
        );
        registry.register(
            "chat_long_polls_waiting",
            "Long polls on this node waiting for live messages now (subscribed, nothing to answer yet)",
            m.long_polls_waiting.clone(),
        );
        registry.register(
            "process_max_fds",
            "Soft limit of open file descriptors",
            m.max_fds.clone(),
        );
        registry.register(
            "process_resident_memory_bytes",
            "Resident memory size",
            m.resident_memory.clone(),
        );
        registry.register(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            m.cpu_seconds.clone(),
        );
        // Families print nothing until a label set exists: create the known ones at zero so
        // every metric name is on /metrics from the start (dashboards and alerts need them).
        for status in ["connected", "rejected", "unauthorized"] {
            let _ = m.connections.get_or_create(&StatusLabel { status });
        }
        for reason in reasons::ALL {
            let _ = m.disconnections.get_or_create(&ReasonLabel { reason });
        }
        for phase in phases::ALL {
            let _ = m.socket_timeouts.get_or_create(&PhaseLabel { phase });
        }
        for result in poll_results::ALL {
            let _ = m.long_polls.get_or_create(&ResultLabel { result });
        }
        for cap in caps::ALL {
            let _ = m.history_evictions.get_or_create(&CapLabel { cap });
        }
        for code in crate::protocol::ErrorCode::ALL {
            let _ = m.errors.get_or_create(&CodeLabel {
                code: code.as_str(),
            });
        }
        let labelled = m.channel_namespaces.iter().map(String::as_str);
        for ns in ["default", OTHER_NAMESPACE].into_iter().chain(labelled) {
            let label = NamespaceLabel {
                channel_namespace: ns.to_owned(),
            };
            let _ = m.published.get_or_create(&label);
            let _ = m.delivered.get_or_create(&label);
        }
        m
    }

    pub fn error(&self, code: crate::protocol::ErrorCode) {
        self.errors
            .get_or_create(&CodeLabel {
                code: code.as_str(),
            })
            .inc();
    }

    pub fn connection(&self, status: &'static str) {
        self.connections
            .get_or_create(&StatusLabel { status })
            .inc();
    }

    pub fn disconnection(&self, reason: &'static str) {
        self.disconnections
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// Counts a long poll that ended with `result` (one of [`poll_results::ALL`]).
    pub fn long_poll(&self, result: &'static str) {
        self.long_polls.get_or_create(&ResultLabel { result }).inc();
    }

    /// Counts a client-port socket closed by a timeout (`phase`: one of [`phases::ALL`]).
    pub fn socket_timeout(&self, phase: &'static str) {
        self.socket_timeouts
            .get_or_create(&PhaseLabel { phase })
            .inc();
    }

    /// The label of a channel: its namespace when configured (or `default`), else `other`.
    pub fn namespace_label(&self, channel: &str) -> NamespaceLabel {
        let ns = crate::channel::namespace(channel);
        let known = ns == "default" || self.channel_namespaces.contains(ns);
        NamespaceLabel {
            channel_namespace: if known { ns } else { OTHER_NAMESPACE }.to_owned(),
        }
    }

    /// Counts a message published under `label` (from [`Metrics::namespace_label`]).
    pub fn published(&self, label: &NamespaceLabel) {
        self.published.get_or_create(label).inc();
    }

    /// The delivered counter of `channel`'s label, cached per channel by the fan-out.
    pub fn delivered_counter(&self, channel: &str) -> Counter {
        self.delivered
            .get_or_create(&self.namespace_label(channel))
            .clone()
    }

    /// Refreshes the process gauges (called on each scrape).
    pub fn refresh_process(&self) {
        let stats = crate::limits::process_stats();
        self.open_fds.set(stats.open_fds as i64);
        self.max_fds.set(stats.max_fds as i64);
        self.resident_memory.set(stats.resident_bytes as i64);
        // The kernel's total, never less than what was reported (two scrapes at once).
        let cpu = stats.cpu_seconds;
        let _ =
            self.cpu_seconds
                .inner()
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                    (cpu > f64::from_bits(old)).then_some(cpu.to_bits())
                });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_configured_namespaces_are_labels() {
        let mut registry = Registry::default();
        let m = Metrics::register(&mut registry, &["chat".into()]);
        let label = |c: &str| m.namespace_label(c).channel_namespace;
        assert_eq!(label("chat:room-1"), "chat");
        assert_eq!(label("lobby"), "default");
        assert_eq!(label("x123:a"), OTHER_NAMESPACE);
    }
}
