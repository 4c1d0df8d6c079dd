//! chat-sandbox: the real control plane, chat-operator and the operator's pods as local
//! processes behind nginx. Thin main: flags in, `chat_sandbox::run::run` does the work.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use chat_sandbox::run::{Settings, run};
use clap::Parser;

/// Runs a ChatCluster on this machine: control plane, operator, chat-nodes, Redis, proxy.
#[derive(Parser, Debug)]
#[command(name = "chat-sandbox", version)]
struct Args {
    /// The ChatCluster manifest to apply.
    #[arg(
        long,
        env = "CHAT_SANDBOX_EXAMPLE",
        default_value = "examples/basic.yaml"
    )]
    example: PathBuf,
    /// Loopback port of the demo page (the proxy); 0 picks a free one.
    #[arg(long, env = "CHAT_SANDBOX_PORT", default_value_t = 8000)]
    port: u16,
    /// State directory: logs, pod directories, kubeconfig (wiped at start).
    #[arg(long, env = "CHAT_SANDBOX_DIR", default_value = ".sandbox")]
    dir: PathBuf,
    /// Write {"url","kubeconfig",...} as JSON here once the demo is up (for scripts and tests).
    #[arg(long, env = "CHAT_SANDBOX_READY_FILE")]
    ready_file: Option<PathBuf>,
    /// chat-node binary (default: next to this binary).
    #[arg(long, env = "CHAT_NODE_BIN")]
    chat_node_bin: Option<PathBuf>,
    /// chat-operator binary (default: next to this binary).
    #[arg(long, env = "CHAT_OPERATOR_BIN")]
    operator_bin: Option<PathBuf>,
    /// redis-server binary, for managed Redis.
    #[arg(
        long,
        env = "CHAT_SANDBOX_REDIS_SERVER",
        default_value = "redis-server"
    )]
    redis_server_bin: PathBuf,
    /// nginx binary, the ingress.
    #[arg(long, env = "CHATCLUSTER_NGINX", default_value = "/usr/sbin/nginx")]
    nginx_bin: PathBuf,
    /// How often the node loop syncs pods, readiness and the proxy.
    #[arg(long, env = "CHAT_SANDBOX_SYNC_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    sync_interval: Duration,
    /// Longest wait for chat-nodes to drain on Ctrl-C.
    #[arg(long, env = "CHAT_SANDBOX_STOP_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    stop_grace: Duration,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "chat_sandbox=info".into()),
        )
        .with_target(false)
        .init();
    let args = Args::parse();
    let exe_dir = std::env::current_exe()
        .context("locate the chat-sandbox binary")?
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default();
    let settings = Settings {
        example: args.example,
        port: args.port,
        dir: args.dir,
        ready_file: args.ready_file,
        chat_node_bin: args
            .chat_node_bin
            .unwrap_or_else(|| exe_dir.join("chat-node")),
        operator_bin: args
            .operator_bin
            .unwrap_or_else(|| exe_dir.join("chat-operator")),
        redis_server_bin: args.redis_server_bin,
        nginx_bin: args.nginx_bin,
        sync_interval: args.sync_interval,
        stop_grace: args.stop_grace,
    };
    run(settings, shutdown_signal())
        .await
        .context("sandbox failed")
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
}
