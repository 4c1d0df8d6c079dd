//! Wiring: client, admin server, leader election and the controller under one shutdown signal.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use kube::Client;
use kube_lease_manager::LeaseManagerBuilder;
use rand::distr::{Alphanumeric, SampleString};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::admin::{self, AdminState};
use crate::cli::{RunArgs, Switch};
use crate::controller;
use crate::error::with_timeout;
use crate::metrics::Metrics;
use crate::reconcile::{Context, Settings};

/// Why the operator stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// No kubeconfig / in-cluster config, or it is invalid.
    #[error("failed to create the Kubernetes client: {0}")]
    Client(#[source] kube::Error),
    /// The API server did not answer at start.
    #[error("the API server does not answer: {0}")]
    ApiServer(#[source] crate::error::ApiError),
    /// The admin address could not be bound.
    #[error("failed to bind the admin server to {addr}: {source}")]
    BindAdmin {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The admin server failed.
    #[error("the admin server failed: {0}")]
    Admin(#[source] std::io::Error),
    /// The SIGTERM/SIGINT handlers could not be installed.
    #[error("failed to install the SIGTERM/SIGINT handlers: {0}")]
    Signals(#[source] std::io::Error),
    /// Leader election could not start or its task ended.
    #[error("leader election failed: {0}")]
    LeaderElection(String),
}

/// A started operator.
pub struct Running {
    /// The address the admin server listens on.
    pub admin_addr: SocketAddr,
    /// Cancel to stop everything.
    pub shutdown: CancellationToken,
    /// The operator's metrics (also on the admin server).
    pub metrics: Arc<Metrics>,
    task: JoinHandle<Result<(), RunError>>,
}

impl Running {
    /// Waits until the operator has stopped.
    pub async fn wait(self) -> Result<(), RunError> {
        self.task.await.unwrap_or_else(|e| {
            Err(RunError::LeaderElection(format!(
                "operator task panicked: {e}"
            )))
        })
    }

    /// Signals shutdown and waits for it.
    pub async fn stop(self) -> Result<(), RunError> {
        self.shutdown.cancel();
        self.wait().await
    }
}

/// Runs until SIGINT or SIGTERM (uses KUBECONFIG, else the in-cluster config).
pub async fn run_until_signal(args: RunArgs) -> Result<(), RunError> {
    // Installed first: a SIGTERM while the operator starts must stop it cleanly (releasing its
    // lease), not kill it with the signal's default action.
    let signalled = shutdown_signal().map_err(RunError::Signals)?;
    let client = Client::try_default().await.map_err(RunError::Client)?;
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        signalled.await;
        info!("shutdown signal received");
        signal.cancel();
    });
    start(args, client, shutdown).await?.wait().await
}

/// Resolves on the first SIGTERM or SIGINT; the handlers are installed by this call, not when
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

/// Starts the admin server and the controller (behind leader election when on). Everything
/// stops when `shutdown` is cancelled, or when one part fails.
pub async fn start(
    args: RunArgs,
    client: Client,
    shutdown: CancellationToken,
) -> Result<Running, RunError> {
    let listener = TcpListener::bind(args.admin_listen)
        .await
        .map_err(|source| RunError::BindAdmin {
            addr: args.admin_listen,
            source,
        })?;
    let admin_addr = listener
        .local_addr()
        .map_err(|source| RunError::BindAdmin {
            addr: args.admin_listen,
            source,
        })?;
    info!(addr = %admin_addr, "admin server listening (/metrics, /healthz, /readyz)");

    let metrics = Arc::new(Metrics::new());
    let ready = Arc::new(AtomicBool::new(false));
    let admin_state = Arc::new(AdminState {
        metrics: metrics.clone(),
        ready: ready.clone(),
    });
    let admin_task = tokio::spawn(admin::serve(listener, admin_state, shutdown.clone()));

    let identity = args.identity.clone().unwrap_or_else(|| {
        format!(
            "chat-operator-{}",
            Alphanumeric
                .sample_string(&mut rand::rng(), 8)
                .to_lowercase()
        )
    });
    let settings = Settings {
        api_timeout: args.api_timeout,
        resync_interval: args.resync_interval,
        backoff_base: args.backoff_base,
        backoff_max: args.backoff_max,
        default_node_image: args.default_node_image.clone(),
        allowed_images: args.allowed_image_prefixes.clone(),
        tenant_policy: crate::admission::tenant::TenantPolicy {
            denied_ingress_annotations: args.denied_ingress_annotations.clone(),
            allowed_ingress_hosts: args.allowed_ingress_hosts.clone(),
            denied_priority_classes: args.denied_priority_classes.clone(),
            denied_toleration_keys: args.denied_toleration_keys.clone(),
        },
        monitoring: crate::children::observability::MonitoringDefaults {
            labels: args.monitoring_labels.clone(),
            runbook_base_url: args.runbook_base_url.clone(),
        },
        operands: crate::children::operands::OperandDefaults {
            image_pull_secrets: args.image_pull_secrets.0.clone(),
            redis_image: args.default_redis_image.clone(),
            collector_image: args.default_collector_image.clone(),
            redis_storage: crate::reconcile::redis_storage::DefaultRedisStorage {
                size: args.default_redis_storage_size.0.clone(),
                storage_class: args.default_redis_storage_class.clone(),
            },
        },
        ..Settings::default()
    };
    let ctx = Arc::new(Context::new(
        client.clone(),
        settings,
        metrics.clone(),
        &identity,
    ));
    let metrics_handle = metrics.clone();
    let stop = shutdown.clone();
    let task = tokio::spawn(async move {
        let result = operate(args, client, ctx, identity, ready, stop.clone()).await;
        if let Err(error) = &result {
            warn!(%error, "operator stopping");
        }
        stop.cancel(); // one part down: everything down
        let admin = admin_task.await;
        result?;
        match admin {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(RunError::Admin(e)),
            Err(e) => Err(RunError::Admin(std::io::Error::other(e))),
        }
    });
    Ok(Running {
        admin_addr,
        shutdown,
        metrics: metrics_handle,
        task,
    })
}

async fn operate(
    args: RunArgs,
    client: Client,
    ctx: Arc<Context>,
    identity: String,
    ready: Arc<AtomicBool>,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let version = with_timeout(args.api_timeout, client.apiserver_version())
        .await
        .map_err(RunError::ApiServer)?;
    let namespaces = watched_namespaces(&args.namespace);
    let watching = if namespaces.is_empty() {
        "<all>".to_owned()
    } else {
        namespaces.join(",")
    };
    info!(version = %version.git_version, namespace = %watching, %identity, "connected to the API server");
    ready.store(true, Ordering::Release);

    if args.leader_election == Switch::Off {
        ctx.metrics.leader.set(1);
        let stop = shutdown.clone();
        controller::run(
            client,
            namespaces,
            ctx,
            async move { stop.cancelled().await },
        )
        .await;
        return Ok(());
    }

    let seconds = |d: Duration| d.as_secs().max(1);
    let manager = LeaseManagerBuilder::new(client.clone(), &args.lease_name)
        .with_namespace(&args.lease_namespace)
        .with_identity(&identity)
        .with_duration(seconds(args.lease_duration))
        .with_grace(seconds(args.lease_renew_before))
        .build()
        .await
        .map_err(|e| RunError::LeaderElection(e.to_string()))?;
    let (mut leading, lease_task) = manager.watch().await;
    info!(lease = %format!("{}/{}", args.lease_namespace, args.lease_name), "waiting for leadership");

    'election: loop {
        while !*leading.borrow_and_update() {
            tokio::select! {
                _ = shutdown.cancelled() => break 'election,
                changed = leading.changed() => if changed.is_err() {
                    return Err(RunError::LeaderElection("the Lease task ended".into()));
                },
            }
        }
        info!("became leader: reconciling");
        ctx.metrics.leader.set(1);
        let stop = CancellationToken::new();
        let stop_signal = stop.clone();
        let run = controller::run(
            client.clone(),
            namespaces.clone(),
            ctx.clone(),
            async move { stop_signal.cancelled().await },
        );
        tokio::pin!(run);
        let lost = tokio::select! {
            _ = &mut run => false,
            _ = shutdown.cancelled() => { stop.cancel(); (&mut run).await; false }
            _ = lost_leadership(&mut leading) => { stop.cancel(); (&mut run).await; true }
        };
        ctx.metrics.leader.set(0);
        if shutdown.is_cancelled() {
            break;
        }
        if lost {
            warn!("lost leadership: stopped reconciling");
        }
    }
    drop(leading); // the Lease task releases the Lease and ends
    match tokio::time::timeout(args.api_timeout, lease_task).await {
        Ok(Ok(Ok(_))) => info!("released the Lease"),
        Ok(Ok(Err(e))) => warn!(error = %e, "could not release the Lease"),
        Ok(Err(e)) => warn!(error = %e, "the Lease task failed"),
        Err(_) => warn!("releasing the Lease timed out"),
    }
    Ok(())
}

async fn lost_leadership(leading: &mut watch::Receiver<bool>) {
    loop {
        if leading.changed().await.is_err() || !*leading.borrow_and_update() {
            return;
        }
    }
}

/// The namespaces to watch: the entries of `--namespace`, trimmed, without empty ones and
/// duplicates (empty: all namespaces).
pub fn watched_namespaces(given: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for ns in given.iter().map(|n| n.trim()).filter(|n| !n.is_empty()) {
        if !out.iter().any(|o| o == ns) {
            out.push(ns.to_owned());
        }
    }
    out
}

#[cfg(test)]
mod watched_namespaces_tests {
    use super::watched_namespaces;

    #[test]
    fn a_list_is_trimmed_and_deduplicated_and_empty_means_all() {
        let given = ["team-a", " team-b ", "", "team-a"].map(String::from);
        assert_eq!(watched_namespaces(&given), ["team-a", "team-b"]);
        assert!(watched_namespaces(&[]).is_empty());
        assert!(watched_namespaces(&[String::new()]).is_empty());
    }
}
