//! The managed Redis as the operator configures it, run by the real `redis-server` (no cluster
//! needed: the StatefulSet's arguments and the Secret's configuration file are what a pod runs).
//!
//! - The password is in the configuration file from the Secret: not among the server's
//!   arguments (which the container runtime records and `ps` shows at start), and clients
//!   without it are refused (so the file, not a flag, set it).
//! - `maxmemory` bounds the history (issue 11, item 4): a flood of publishes to new channels,
//!   written as chat-node writes history (XADD with a MAXLEN, then a TTL renewed by each publish),
//!   8 times `maxmemory`, keeps `used_memory` under the bound. With the default `volatile-ttl`
//!   every publish succeeds and the stalest channels' history is dropped; with `noeviction`
//!   publishes fail with `OOM` once full.

use chat_operator::api::{ChatCluster, ChatClusterSpec, MaxMemoryPolicy, RedisMode, RedisSpec};
use chat_operator::children::redis::{REDIS_CONFIG_KEY, build_config_secret, server_args};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use test_harness::redis::{RedisOptions, RedisServer};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const PASSWORD: &str = "k3Vq9ZpLr2Tx8WmN4bYc6HsJ0dFg1QaE";
const MAX_MEMORY: i64 = 8 * 1024 * 1024;
/// One history entry's payload: 4 KiB, so 16,384 publishes write 64 MiB, 8 × `MAX_MEMORY`.
const PAYLOAD_BYTES: usize = 4096;
const PUBLISHES: usize = 16_384;
const CHANNELS: usize = 1024;
/// What a publish writes: the entry with a length cap, and the history's TTL (24 h, chat-node's
/// default `history-ttl`), renewed on each publish.
const HISTORY_WRITE: &str = "local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', '1000', '*', 'e', ARGV[1]) \
     redis.call('PEXPIRE', KEYS[1], '86400000') return id";

fn cluster(policy: Option<MaxMemoryPolicy>) -> ChatCluster {
    let mut cluster = ChatCluster::new(
        "demo",
        ChatClusterSpec {
            redis: Some(RedisSpec {
                mode: RedisMode::Managed,
                max_memory: Some(Quantity("8Mi".into())),
                max_memory_policy: policy,
                ..RedisSpec::default()
            }),
            ..ChatClusterSpec::default()
        },
    );
    cluster.metadata.namespace = Some("default".into());
    cluster
}

/// `redis-server` started as the StatefulSet starts it: the configuration Secret's `redis.conf` first, then the
/// container's arguments (but `--dir /data`: the harness gives each server a temporary dir).
async fn start_as_the_operator_configures(
    cluster: &ChatCluster,
    dir: &tempfile::TempDir,
) -> RedisServer {
    let secret = build_config_secret(cluster, PASSWORD);
    let config = dir.path().join(REDIS_CONFIG_KEY);
    std::fs::write(&config, &secret.string_data.unwrap()[REDIS_CONFIG_KEY]).unwrap();
    let args = server_args(cluster);
    assert!(
        args[0].ends_with("/redis.conf"),
        "the file comes first: {args:?}"
    );
    let mut options = RedisOptions::default()
        .config_file(&config)
        .password(PASSWORD);
    let mut rest = args[1..].iter();
    while let Some(arg) = rest.next() {
        if arg == "--dir" {
            rest.next();
            continue;
        }
        options = options.arg(arg.clone());
    }
    RedisServer::start_with(options).await
}

/// `INFO memory` and `INFO stats` as `(used_memory, maxmemory, policy, evicted_keys)`.
async fn memory(redis: &RedisServer) -> (i64, i64, String, i64) {
    let mut info = redis.command(&["INFO", "memory"]).await.unwrap();
    info.push_str(&redis.command(&["INFO", "stats"]).await.unwrap());
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .unwrap_or_else(|| panic!("{name} not in INFO"))
            .trim()
            .to_string()
    };
    (
        field("used_memory").parse().unwrap(),
        field("maxmemory").parse().unwrap(),
        field("maxmemory_policy"),
        field("evicted_keys").parse().unwrap(),
    )
}

/// Publishes `PUBLISHES` entries round-robin over `CHANNELS` channels on one authenticated
/// connection; returns how many failed and the first error.
async fn flood(redis: &RedisServer) -> (usize, Option<String>) {
    let stream = TcpStream::connect(("127.0.0.1", redis.port()))
        .await
        .unwrap();
    let mut stream = BufReader::new(stream);
    let payload = "x".repeat(PAYLOAD_BYTES);
    let mut send = async |parts: &[&str]| {
        let mut request = format!("*{}\r\n", parts.len());
        for part in parts {
            request.push_str(&format!("${}\r\n{part}\r\n", part.len()));
        }
        stream
            .get_mut()
            .write_all(request.as_bytes())
            .await
            .unwrap();
        let mut line = String::new();
        stream.read_line(&mut line).await.unwrap();
        if let Some(len) = line.strip_prefix('$') {
            // A bulk reply (the entry id): skip its body.
            let len: usize = len.trim().parse().unwrap();
            let mut body = vec![0; len + 2];
            tokio::io::AsyncReadExt::read_exact(&mut stream, &mut body)
                .await
                .unwrap();
        }
        line
    };
    assert_eq!(send(&["AUTH", PASSWORD]).await, "+OK\r\n");
    let mut failed = 0;
    let mut first_error = None;
    for i in 0..PUBLISHES {
        let key = format!("chatnode:history:{{room-{}}}", i % CHANNELS);
        let reply = send(&["EVAL", HISTORY_WRITE, "1", &key, &payload]).await;
        if reply.starts_with('-') {
            failed += 1;
            first_error.get_or_insert(reply.trim().to_string());
        }
    }
    (failed, first_error)
}

#[tokio::test]
async fn the_password_is_read_from_the_secrets_file_not_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(None);
    // What the container runtime records and `ps` shows at start: no password.
    let args = server_args(&cluster);
    assert!(!args.iter().any(|a| a.contains(PASSWORD)), "{args:?}");
    let redis = start_as_the_operator_configures(&cluster, &dir).await;
    // Without the password: refused.
    let mut stream = BufReader::new(
        TcpStream::connect(("127.0.0.1", redis.port()))
            .await
            .unwrap(),
    );
    stream
        .get_mut()
        .write_all(b"*1\r\n$4\r\nPING\r\n")
        .await
        .unwrap();
    let mut reply = String::new();
    stream.read_line(&mut reply).await.unwrap();
    assert!(reply.starts_with("-NOAUTH"), "{reply}");
    // With it (the harness authenticates): answered.
    assert_eq!(redis.command(&["PING"]).await.unwrap(), "PONG");
}

#[tokio::test]
async fn maxmemory_bounds_the_history_and_volatile_ttl_keeps_publishing() {
    let dir = tempfile::tempdir().unwrap();
    let redis = start_as_the_operator_configures(&cluster(None), &dir).await;
    let (_, max, policy, _) = memory(&redis).await;
    assert_eq!((max, policy.as_str()), (MAX_MEMORY, "volatile-ttl"));

    let (failed, first_error) = flood(&redis).await;
    let (used, _, _, evicted) = memory(&redis).await;
    let written = (PUBLISHES * PAYLOAD_BYTES) as i64;
    eprintln!(
        "volatile-ttl: wrote {} MiB in {PUBLISHES} publishes to {CHANNELS} channels; used_memory {:.2} MiB of maxmemory {} MiB; {evicted} histories dropped; {failed} publishes failed",
        written >> 20,
        used as f64 / (1 << 20) as f64,
        MAX_MEMORY >> 20
    );
    assert_eq!(failed, 0, "publishes failed: {first_error:?}");
    assert!(
        used <= MAX_MEMORY,
        "used_memory {used} > maxmemory {MAX_MEMORY}"
    );
    assert!(
        evicted > 0,
        "nothing was evicted, so the flood proved nothing"
    );
    // The newest channel's history is still there: the stalest went first.
    let newest = format!("chatnode:history:{{room-{}}}", (PUBLISHES - 1) % CHANNELS);
    assert_ne!(redis.command(&["XLEN", &newest]).await.unwrap(), "0");
}

#[tokio::test]
async fn with_noeviction_the_bound_holds_and_publishes_fail_once_full() {
    let dir = tempfile::tempdir().unwrap();
    let redis =
        start_as_the_operator_configures(&cluster(Some(MaxMemoryPolicy::Noeviction)), &dir).await;
    let (failed, first_error) = flood(&redis).await;
    let (used, max, policy, evicted) = memory(&redis).await;
    eprintln!(
        "noeviction: used_memory {:.2} MiB of {} MiB; {failed} of {PUBLISHES} publishes failed ({first_error:?}); {evicted} evicted",
        used as f64 / (1 << 20) as f64,
        max >> 20
    );
    assert_eq!(policy, "noeviction");
    assert_eq!(evicted, 0);
    // Redis may end one write past the bound (it checks before each command).
    assert!(
        used <= MAX_MEMORY + (PAYLOAD_BYTES as i64) * 4,
        "used_memory {used}"
    );
    assert!(
        failed > PUBLISHES / 2,
        "only {failed} publishes refused past the bound"
    );
    assert!(first_error.unwrap().starts_with("-OOM"));
}
