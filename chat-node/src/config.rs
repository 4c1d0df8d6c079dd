//! Command-line flags with `CHAT_*` environment fallbacks. Parsed once in `main` (or built by
//! tests with [`Config::from_args`]) and passed down typed; no module reads the environment.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use axum::http::HeaderName;
use clap::{Parser, ValueEnum};

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Json,
    Text,
}

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (use e.g. 500ms, 30s, 5m, 24h)"))
}

fn header_name(s: &str) -> Result<HeaderName, String> {
    HeaderName::try_from(s.trim()).map_err(|e| format!("{e} (use e.g. X-Forwarded-For)"))
}

fn positive_duration(s: &str) -> Result<Duration, String> {
    match duration(s)? {
        d if d.is_zero() => Err("must be longer than 0".to_owned()),
        d => Ok(d),
    }
}

/// chat-node: the lean WebSocket server of a ChatCluster.
#[derive(Clone, Debug, Parser)]
#[command(name = "chat-node", version, about)]
pub struct Config {
    /// Address of the client port (WebSocket `/ws`, `/sse`, `/api/publish`, demo page).
    #[arg(long, env = "CHAT_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// Address of the admin port (`/metrics`, `/healthz`, `/readyz`).
    #[arg(long, env = "CHAT_ADMIN_LISTEN", default_value = "0.0.0.0:9091")]
    pub admin_listen: SocketAddr,

    /// Address of the server API port (`POST /api/<method>` for application backends). Served
    /// only when `--api-key-file` is set; never route it from outside the cluster.
    #[arg(long, env = "CHAT_API_LISTEN", default_value = "0.0.0.0:9092")]
    pub api_listen: SocketAddr,

    /// File holding the server API key (16-1024 bytes, e.g. `openssl rand -hex 32`); callers send
    /// `Authorization: apikey <key>`. Re-read when it changes (rotation needs no restart).
    /// Unset: the server API is off.
    #[arg(long, env = "CHAT_API_KEY_FILE")]
    pub api_key_file: Option<PathBuf>,

    /// How often a node announces itself in Redis (connections, subscriptions, channels) for
    /// the server API's `info` and `channels`; an announcement counts for three intervals.
    #[arg(long, env = "CHAT_NODE_ANNOUNCE_INTERVAL", default_value = "5s", value_parser = positive_duration)]
    pub node_announce_interval: Duration,

    /// Redis URL: `redis://host:port`, `rediss://` for TLS, a Redis Cluster as
    /// `redis+cluster://host:port[,host:port…]` (`rediss+cluster://` with TLS) or a
    /// comma-separated list of URLs, or a primary followed through Sentinel as
    /// `redis+sentinel://host:port[,host:port…]/<master-name>` (`rediss+sentinel://` with TLS;
    /// the URL's password is the data nodes'). Unset: the embedded in-memory broker (one node,
    /// no Redis). The URL may carry a password: `--help` never shows its value.
    #[arg(long, env = "CHAT_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,

    /// PEM file of the CA that signed the Redis server certificates (`rediss://`); only that CA
    /// is trusted then, read again before each reconnect (rotation needs no restart). Unset: the
    /// system roots (`SSL_CERT_FILE` / `SSL_CERT_DIR` honoured).
    #[arg(long, env = "CHAT_REDIS_CA_FILE")]
    pub redis_ca_file: Option<PathBuf>,

    /// Redis password, inserted into the URL when the URL carries none (with
    /// `redis+sentinel://`: the primary's and replicas' password, not the sentinels').
    #[arg(long, env = "CHAT_REDIS_PASSWORD", hide_env_values = true)]
    pub redis_password: Option<String>,

    /// Password of the Redis Sentinels (`redis+sentinel://`); unset: the sentinels need none.
    #[arg(long, env = "CHAT_REDIS_SENTINEL_PASSWORD", hide_env_values = true)]
    pub redis_sentinel_password: Option<String>,

    /// Acknowledge a publish only once this many replicas confirmed it (`WAIT`), within
    /// `--redis-replica-ack-timeout`; else it is answered `unavailable`. 0 = acknowledge once the
    /// primary has it (replication is asynchronous: a failover may lose the newest messages).
    /// On a Redis Cluster, replicas of the shard that owns the channel.
    #[arg(long, env = "CHAT_REDIS_MIN_REPLICAS_ACK", default_value_t = 0)]
    pub redis_min_replicas_ack: u32,

    /// How long a publish waits for `--redis-min-replicas-ack` replicas to confirm it.
    #[arg(long, env = "CHAT_REDIS_REPLICA_ACK_TIMEOUT", default_value = "500ms", value_parser = positive_duration)]
    pub redis_replica_ack_timeout: Duration,

    /// Name of this node in `welcome` frames and logs (default: the hostname).
    #[arg(long, env = "CHAT_NODE_ID")]
    pub node_id: Option<String>,

    /// Length of the client port's listen backlog: connections the kernel completes while the
    /// accept loop catches up. A mass reconnect (a drained node's clients arriving at once)
    /// overflows a short one, and each SYN dropped then waits a 1 s retransmit. The kernel caps
    /// it at `net.core.somaxconn` (4096 by default).
    #[arg(long, env = "CHAT_LISTEN_BACKLOG", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..))]
    pub listen_backlog: u32,

    /// WebSocket and SSE sessions one user (a token's `sub`) may hold open on this node at
    /// once; past it a handshake gets HTTP 429 `too_many_connections`. 0 = no limit. Clients
    /// without a user are not counted.
    #[arg(long, env = "CHAT_MAX_CONNECTIONS_PER_USER", default_value_t = 0)]
    pub max_connections_per_user: usize,

    /// Connection limit (default: derived from RLIMIT_NOFILE minus a reserve).
    #[arg(long, env = "CHAT_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,

    /// Time a client has to send a whole request head (request line and headers) on the
    /// client and admin ports, from its first byte (from `accept` on a new connection); a
    /// socket that has not sent one by then is closed.
    #[arg(long, env = "CHAT_HEADER_TIMEOUT", default_value = "10s", value_parser = positive_duration)]
    pub header_timeout: Duration,

    /// Time a client has to send a request body (`POST /api/publish`) once its head arrived;
    /// then it gets 408 and the socket is closed.
    #[arg(long, env = "CHAT_BODY_TIMEOUT", default_value = "10s", value_parser = positive_duration)]
    pub body_timeout: Duration,

    /// A keep-alive socket with no request in progress is closed after this long (keep it
    /// above the idle timeout of the proxy in front: Traefik 90s, nginx 60s).
    #[arg(long, env = "CHAT_IDLE_TIMEOUT", default_value = "120s", value_parser = positive_duration)]
    pub idle_timeout: Duration,

    /// Interval between server Pings; no answer within two intervals closes with 4000.
    #[arg(long, env = "CHAT_HEARTBEAT_INTERVAL", default_value = "30s", value_parser = duration)]
    pub heartbeat_interval: Duration,

    /// Window over which connections are closed (1001) on SIGTERM.
    #[arg(long, env = "CHAT_DRAIN_TIMEOUT", default_value = "20s", value_parser = duration)]
    pub drain_timeout: Duration,

    /// Messages of history kept per channel (0 = none).
    #[arg(long, env = "CHAT_HISTORY_SIZE", default_value_t = 1000)]
    pub history_size: usize,

    /// How long a channel's history lives after its last message.
    #[arg(long, env = "CHAT_HISTORY_TTL", default_value = "24h", value_parser = duration)]
    pub history_ttl: Duration,

    /// Channels whose history the embedded broker keeps (no `--redis-url`); a new channel past
    /// it evicts the history of the channel published to least recently. With Redis, bound
    /// Redis itself (`maxmemory`, an eviction policy).
    #[arg(long, env = "CHAT_MAX_CHANNELS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_channels: u64,

    /// Bytes of history the embedded broker keeps across all channels (message data, sender and
    /// channel name plus about 192 bytes per message); past it the oldest messages go first.
    #[arg(long, env = "CHAT_MAX_HISTORY_BYTES", default_value_t = 64 << 20)]
    pub max_history_bytes: usize,

    /// Largest accepted WebSocket frame / publish body, in bytes (bigger closes with 1009).
    #[arg(long, env = "CHAT_MAX_MESSAGE_BYTES", default_value_t = 65536)]
    pub max_message_bytes: usize,

    /// Deepest nesting of arrays and objects accepted in a publish's `data` (WebSocket and
    /// `POST /api/publish`); deeper is refused with `bad_request`, never stored or relayed.
    #[arg(long, env = "CHAT_MAX_JSON_DEPTH", default_value_t = 32)]
    pub max_json_depth: usize,

    /// Subscriptions allowed per connection.
    #[arg(long, env = "CHAT_MAX_SUBSCRIPTIONS", default_value_t = 128)]
    pub max_subscriptions: usize,

    /// Frames queued per connection before it counts as a slow consumer (closed with 4001).
    #[arg(long, env = "CHAT_SEND_QUEUE", default_value_t = 1024)]
    pub send_queue: usize,

    /// Bytes of frames queued per connection before it counts as a slow consumer (closed with
    /// 4001); a history replay waits for room instead of overflowing it.
    #[arg(long, env = "CHAT_SEND_QUEUE_BYTES", default_value_t = 1 << 20)]
    pub send_queue_bytes: usize,

    /// How long a connection may accept nothing from its full send queue while a history replay
    /// waits for room, before it is closed as a slow consumer (4001).
    #[arg(long, env = "CHAT_SEND_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub send_timeout: Duration,

    /// Messages one subscribe may replay from history (`since`); past it the reply is a gap
    /// (`"recovered":0,"gap":true`) and only live messages follow.
    #[arg(long, env = "CHAT_MAX_REPLAY", default_value_t = 1000)]
    pub max_replay: usize,

    /// Most messages one history page holds (the `history` frame, `GET /api/history`, and
    /// `last` on subscribe); a bigger `limit` is clamped to it, and no `limit` means it.
    #[arg(long, env = "CHAT_MAX_HISTORY_PAGE", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub max_history_page: u64,

    /// Long polls (`GET /poll`) waiting at once on this node; past it a poll gets HTTP 503
    /// `at_capacity` with `Retry-After` (each one also holds a client socket, counted against
    /// `--max-connections`).
    #[arg(long, env = "CHAT_MAX_POLLS", default_value_t = 4096, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_polls: u64,

    /// Long polls waiting at once per client (a token's `sub`, else the client's address, as
    /// for `--max-publish-rate`); past it a poll gets HTTP 429 `rate_limited`.
    #[arg(long, env = "CHAT_MAX_POLLS_PER_CLIENT", default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub max_polls_per_client: u64,

    /// Longest a long poll waits for messages (`wait` is capped to it; no `wait` = it). Keep it
    /// below the read timeout of the proxies in front (nginx `proxy_read_timeout`: 60s).
    #[arg(long, env = "CHAT_MAX_POLL_WAIT", default_value = "25s", value_parser = positive_duration)]
    pub max_poll_wait: Duration,

    /// Publishes per second allowed per identity (a token's `sub`, else the client's address),
    /// shared by all its WebSocket connections and `POST /api/publish`; bursts of the same size.
    /// 0 = unlimited.
    #[arg(long, env = "CHAT_MAX_PUBLISH_RATE", default_value_t = 50)]
    pub max_publish_rate: u32,

    /// Header in which the proxy in front of the node puts the client's address (e.g.
    /// `X-Forwarded-For`, `X-Real-IP`); its last entry is taken. Unset: the TCP peer address.
    /// Set it only when clients cannot reach the node except through that proxy.
    #[arg(long, env = "CHAT_CLIENT_ADDRESS_HEADER", value_parser = header_name)]
    pub client_address_header: Option<HeaderName>,

    /// File holding the HS256 secret (at least 32 bytes). With no JWT key configured, auth is off
    /// (the node warns at start and `chat_auth_enabled` is 0).
    #[arg(long, env = "CHAT_JWT_SECRET_FILE")]
    pub jwt_secret_file: Option<PathBuf>,

    /// The HS256 secret itself, at least 32 bytes (prefer the file form).
    #[arg(long, env = "CHAT_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// PEM public key for RS256 / ES256 tokens.
    #[arg(long, env = "CHAT_JWT_PUBLIC_KEY_FILE")]
    pub jwt_public_key_file: Option<PathBuf>,

    /// Comma-separated accepted token issuers (`iss`); set = `iss` required and checked.
    #[arg(long, env = "CHAT_JWT_ISSUER", value_delimiter = ',')]
    pub jwt_issuer: Vec<String>,

    /// Comma-separated accepted token audiences (`aud`, any one matches); set = `aud` required
    /// and checked. Unset: `aud` is not checked.
    #[arg(long, env = "CHAT_JWT_AUDIENCE", value_delimiter = ',')]
    pub jwt_audience: Vec<String>,

    /// Comma-separated Origins (`https://app.example.com`) whose pages may use `/ws`, `/sse` and
    /// `POST /api/publish` from a browser, besides the node's own origin (Origin host = Host).
    /// Unset: the node's own origin only; `*`: any site (not recommended). Requests without an
    /// Origin header (programs, not browsers) are not affected.
    #[arg(long, env = "CHAT_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,

    /// Comma-separated channel namespaces (the part of a channel name before `:`) that get their
    /// own `channel_namespace` label on the message metrics; every other namespace is counted
    /// as `other` (clients choose channel names: labelling each would let them add series).
    #[arg(long, env = "CHAT_METRICS_NAMESPACES", value_delimiter = ',')]
    pub metrics_namespaces: Vec<String>,

    /// JSON file of per-namespace channel options (history size/TTL or none, presence,
    /// join/leave, client publishing, anonymous subscribing) and the defaults for every other
    /// namespace; see docs/chat-node.md. Options it leaves out come from the flags. Unset: every
    /// namespace as the flags say.
    #[arg(long, env = "CHAT_NAMESPACES_FILE")]
    pub namespaces_file: Option<PathBuf>,

    /// The same options as `--namespaces-file`, as inline JSON (what the operator renders from
    /// a ChatCluster's `spec.channels`). Not with `--namespaces-file`.
    #[arg(long, env = "CHAT_NAMESPACES")]
    pub namespaces: Option<String>,

    /// Comma-separated channel namespaces (the part before `:`, `default` for names without
    /// one, `*` for every channel) whose subscribers are kept in presence (shorthand for
    /// `"presence": true` in `--namespaces-file`, which must not turn it off for them): `presence` and
    /// `presence_stats` requests answer who is subscribed. Unset: presence is off everywhere.
    #[arg(long, env = "CHAT_PRESENCE_NAMESPACES", value_delimiter = ',')]
    pub presence_namespaces: Vec<String>,

    /// Comma-separated channel namespaces (as `--presence-namespaces`) whose subscribers get
    /// `join` and `leave` frames when a client subscribes or unsubscribes (or disconnects);
    /// shorthand for `"joinLeave": true` in `--namespaces-file`.
    #[arg(long, env = "CHAT_JOIN_LEAVE_NAMESPACES", value_delimiter = ',')]
    pub join_leave_namespaces: Vec<String>,

    /// How long a node's presence entries live in Redis without a refresh; each node refreshes
    /// its own every third of it, so a dead node's clients disappear within it.
    #[arg(long, env = "CHAT_PRESENCE_TTL", default_value = "60s", value_parser = positive_duration)]
    pub presence_ttl: Duration,

    /// Most clients one `presence` answer lists (past it the answer says `truncated`).
    #[arg(long, env = "CHAT_MAX_PRESENCE", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub max_presence: u64,

    /// Log format; the filter comes from `RUST_LOG` (default `info`).
    #[arg(long, env = "CHAT_LOG_FORMAT", value_enum, default_value = "json")]
    pub log_format: LogFormat,
}

impl Config {
    /// Builds a config from arguments (after the program name), with env fallbacks.
    pub fn from_args<I, S>(args: I) -> Result<Config, clap::Error>
    where
        I: IntoIterator<Item = S>,
        S: Into<std::ffi::OsString> + Clone,
    {
        Config::try_parse_from(
            std::iter::once("chat-node".into()).chain(args.into_iter().map(Into::into)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_defaults() {
        let c =
            Config::from_args(["--heartbeat-interval", "500ms", "--history-ttl", "5m"]).unwrap();
        assert_eq!(c.heartbeat_interval, Duration::from_millis(500));
        assert_eq!(c.history_ttl, Duration::from_secs(300));
        assert_eq!(c.drain_timeout, Duration::from_secs(20));
        assert_eq!(c.max_message_bytes, 65536);
        assert_eq!(c.max_json_depth, 32);
        assert_eq!(c.max_publish_rate, 50, "rate limit on by default");
        assert!(c.client_address_header.is_none());
        let c = Config::from_args(["--client-address-header", "X-Forwarded-For"]).unwrap();
        assert_eq!(c.client_address_header.unwrap(), "x-forwarded-for");
        assert!(Config::from_args(["--client-address-header", "bad header"]).is_err());
        assert_eq!(c.send_queue_bytes, 1 << 20);
        assert_eq!(c.send_timeout, Duration::from_secs(10));
        assert_eq!(c.max_replay, 1000);
        assert_eq!(c.max_history_page, 100);
        assert!(Config::from_args(["--max-history-page", "0"]).is_err());
        assert_eq!(c.api_listen.port(), 9092);
        assert!(c.api_key_file.is_none(), "server API off by default");
        assert_eq!(c.node_announce_interval, Duration::from_secs(5));
        assert_eq!(c.max_channels, 10_000);
        assert_eq!(c.max_history_bytes, 64 << 20);
        assert!(Config::from_args(["--max-channels", "0"]).is_err());
        assert!(Config::from_args(["--drain-timeout", "soon"]).is_err());
        assert_eq!(c.header_timeout, Duration::from_secs(10));
        assert_eq!(c.body_timeout, Duration::from_secs(10));
        assert_eq!(c.idle_timeout, Duration::from_secs(120));
        assert!(Config::from_args(["--header-timeout", "0s"]).is_err());
        assert!(c.presence_namespaces.is_empty() && c.join_leave_namespaces.is_empty());
        assert_eq!(c.presence_ttl, Duration::from_secs(60));
        assert_eq!(c.max_presence, 1000);
        assert_eq!(
            (c.max_polls, c.max_polls_per_client, c.max_poll_wait),
            (4096, 8, Duration::from_secs(25))
        );
        assert!(Config::from_args(["--max-poll-wait", "0s"]).is_err());
        assert!(Config::from_args(["--max-polls", "0"]).is_err());
        assert!(Config::from_args(["--presence-ttl", "0s"]).is_err());
        assert!(Config::from_args(["--max-presence", "0"]).is_err());
        let c = Config::from_args(["--presence-namespaces", "chat,default"]).unwrap();
        assert_eq!(c.presence_namespaces, vec!["chat", "default"]);
        assert_eq!(c.redis_min_replicas_ack, 0, "no replica ack by default");
        assert_eq!(c.redis_replica_ack_timeout, Duration::from_millis(500));
        assert!(Config::from_args(["--redis-replica-ack-timeout", "0s"]).is_err());
        let c = Config::from_args(["--allowed-origins", "http://a,http://b"]).unwrap();
        assert_eq!(c.allowed_origins, vec!["http://a", "http://b"]);
    }
}
