//! `spec.node`: the chat-node settings of PROTOCOL.md that a chat service operator tunes.

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// chat-node's log format.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line (default).
    Json,
    /// Human-readable lines.
    Text,
}

impl LogFormat {
    /// The value chat-node expects in `CHAT_LOG_FORMAT`.
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Json => "json",
            LogFormat::Text => "text",
        }
    }
}

/// chat-node settings. Every field is optional; unset fields keep chat-node's own defaults
/// (PROTOCOL.md), except `drainTimeout` (always passed, the pod's grace period follows it) and
/// `maxConnections` (derived from the memory limit when unset, see docs/api.md).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeSpec {
    /// Most WebSocket/SSE connections one node accepts. Unset: derived from the container's
    /// memory limit, or left to chat-node (its file-descriptor limit) when there is none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10_000_000))]
    pub max_connections: Option<i64>,

    /// Ping interval; a client silent for two intervals is closed (default `30s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    #[x_kube(validation = Rule::new("self.matches('^[0-9]{1,9}(ms|s|m|h)$') && duration(self) >= duration('1s') && duration(self) <= duration('10m')")
        .message("heartbeatInterval must be a duration between 1s and 10m, such as 30s"))]
    pub heartbeat_interval: Option<String>,

    /// How long a draining node spreads its closes over on shutdown (default `20s`). The pod's
    /// `terminationGracePeriodSeconds` is set longer than this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    #[x_kube(validation = Rule::new("self.matches('^[0-9]{1,9}(ms|s|m|h)$') && duration(self) <= duration('1h')")
        .message("drainTimeout must be a duration between 0s and 1h, such as 20s"))]
    pub drain_timeout: Option<String>,

    /// Messages kept per channel for `since` recovery (default 1000; 0 disables history).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1_000_000))]
    pub history_size: Option<i64>,

    /// How long channel history is kept (default `24h`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    #[x_kube(validation = Rule::new("self.matches('^[0-9]{1,9}(ms|s|m|h)$') && duration(self) >= duration('1s')")
        .message("historyTtl must be a duration of at least 1s, such as 24h"))]
    pub history_ttl: Option<String>,

    /// Largest accepted client frame in bytes (default 65536).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 64, max = 16_777_216))]
    pub max_message_bytes: Option<i64>,

    /// Most channels one connection may subscribe to (default 128).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100_000))]
    pub max_subscriptions: Option<i64>,

    /// Frames queued per connection before it counts as a slow consumer (default 1024).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub send_queue: Option<i64>,

    /// Origins allowed to open a WebSocket (unset: any).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 253)))]
    pub allowed_origins: Option<Vec<String>>,

    /// `json` (default) or `text`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_format: Option<LogFormat>,

    /// Log filter passed as `RUST_LOG` (for example `info` or `chat_node=debug,info`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub log_filter: Option<String>,
}

/// chat-node's drain timeout when `spec.node.drainTimeout` is unset.
pub const DEFAULT_DRAIN_TIMEOUT: &str = "20s";

impl NodeSpec {
    /// The drain timeout as written (defaulted), for `CHAT_DRAIN_TIMEOUT`.
    pub fn drain_timeout(&self) -> &str {
        self.drain_timeout
            .as_deref()
            .unwrap_or(DEFAULT_DRAIN_TIMEOUT)
    }

    /// The drain timeout in whole seconds, rounded up. The API server has already checked the
    /// format; an unparsable value (only possible when validation was bypassed) counts as the
    /// default so the grace period stays sane.
    pub fn drain_timeout_seconds(&self) -> i64 {
        let parsed = humantime::parse_duration(self.drain_timeout())
            .or_else(|_| humantime::parse_duration(DEFAULT_DRAIN_TIMEOUT))
            .unwrap_or_default();
        let millis = parsed.as_millis() as i64;
        (millis + 999) / 1000
    }

    /// The log format, defaulted to JSON.
    pub fn log_format(&self) -> LogFormat {
        self.log_format.unwrap_or(LogFormat::Json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drain_timeout_defaults_and_rounds_up() {
        assert_eq!(NodeSpec::default().drain_timeout_seconds(), 20);
        let spec = NodeSpec {
            drain_timeout: Some("1500ms".into()),
            ..NodeSpec::default()
        };
        assert_eq!(spec.drain_timeout_seconds(), 2);
        let spec = NodeSpec {
            drain_timeout: Some("5m".into()),
            ..NodeSpec::default()
        };
        assert_eq!(spec.drain_timeout_seconds(), 300);
    }

    #[test]
    fn unparsable_drain_timeout_falls_back_to_default() {
        let spec = NodeSpec {
            drain_timeout: Some("soon".into()),
            ..NodeSpec::default()
        };
        assert_eq!(spec.drain_timeout_seconds(), 20);
    }
}
