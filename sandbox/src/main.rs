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
    // Installed before anything starts: a SIGTERM while the sandbox starts its control plane
    // must still stop (and clean up) what it started, not kill it with the default action.
    let shutdown = shutdown_signal().context("failed to install the SIGTERM/SIGINT handlers")?;
    run(settings, shutdown).await.context("sandbox failed")
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM; the handlers are installed by this call.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = interrupt.recv() => {}
        }
    })
}
