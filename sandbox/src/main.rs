//! chat-sandbox: a real node with the operator installed by its chart and an example
//! ChatCluster in real pods, behind Traefik. Thin main: flags in, `chat_sandbox::run::run` does
//! the work.

use std::path::PathBuf;

use anyhow::Context;
use chat_sandbox::run::{Settings, run};
use clap::Parser;

/// Runs a ChatCluster on this machine in real pods: control plane, node, operator (Helm chart),
/// chat-nodes, Redis, Traefik.
#[derive(Parser, Debug)]
#[command(name = "chat-sandbox", version)]
struct Args {
    /// The ChatCluster manifest to apply (into the `default` namespace unless it names one).
    #[arg(
        long,
        env = "CHAT_SANDBOX_EXAMPLE",
        default_value = "examples/basic.yaml"
    )]
    example: PathBuf,
    /// Loopback port of the ingress (Traefik), where the demo page is; 0 picks a free one.
    /// With 80 the endpoint the ChatCluster shows (`ws://127.0.0.1/ws`) is exactly right.
    #[arg(long, env = "CHAT_SANDBOX_PORT", default_value_t = 80)]
    port: u16,
    /// State directory: the kubeconfig and a copy of the logs (wiped at start).
    #[arg(long, env = "CHAT_SANDBOX_DIR", default_value = ".sandbox")]
    dir: PathBuf,
    /// Write {"url","endpoint","kubeconfig",...} as JSON here once the demo is up (for scripts
    /// and tests).
    #[arg(long, env = "CHAT_SANDBOX_READY_FILE")]
    ready_file: Option<PathBuf>,
    /// The Helm chart that installs the operator.
    #[arg(
        long,
        env = "CHAT_SANDBOX_CHART",
        default_value = "charts/chat-operator"
    )]
    chart: PathBuf,
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
    let settings = Settings {
        example: args.example,
        port: args.port,
        dir: args.dir,
        ready_file: args.ready_file,
        chart: args.chart,
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
