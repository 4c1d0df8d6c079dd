//! The chat-node binary: parse flags, install logging and tracing, bind, serve until
//! SIGTERM/Ctrl-C, drain, flush the last spans and logs.
use anyhow::Context;
use clap::Parser;
use tokio::net::TcpListener;

/// musl's own allocator is slow under many threads and small allocations (the delivery
/// path); the static release build uses mimalloc (see Cargo.toml).
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = chat_node::Config::parse();
    let telemetry =
        chat_node::telemetry::Telemetry::from_env(&chat_node::server::node_id(&config))?;
    chat_node::logging::init(
        config.log_format,
        telemetry.tracer(),
        telemetry.logger_provider(),
    )?;
    telemetry.activate();
    // Before the ports open: from then on a SIGTERM (a kubelet may send one at any time) must
    // drain the node, not kill it with the signal's default action.
    let shutdown = shutdown_signal().context("failed to install the SIGTERM/SIGINT handlers")?;
    let listener = chat_node::accept::bind(config.listen, config.listen_backlog)
        .with_context(|| format!("failed to listen on {}", config.listen))?;
    let admin = TcpListener::bind(config.admin_listen)
        .await
        .with_context(|| format!("failed to listen on {}", config.admin_listen))?;
    // The server API listens only when it has a key to check callers against.
    let api = match config.api_key_file {
        Some(_) => Some(
            TcpListener::bind(config.api_listen)
                .await
                .with_context(|| format!("failed to listen on {}", config.api_listen))?,
        ),
        None => None,
    };
    let served = chat_node::run_with_api(listener, admin, api, config, shutdown).await;
    telemetry.shutdown().await;
    served?;
    Ok(())
}

/// Resolves on the first SIGTERM or SIGINT. The handlers are installed by this call, not when
/// the future is first polled.
fn shutdown_signal() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
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
