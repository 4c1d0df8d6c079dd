//! Test harness: starts real components on free loopback ports and stops them on drop.
//!
//! - [`redis::RedisServer`] — a real `redis-server` (no persistence) per test; with
//!   [`redis::RedisOptions::tls`] it serves TLS with a certificate from a fresh private CA
//!   ([`redis::tls::TestCa`]).
//! - [`redis::cluster::RedisCluster`] — a real Redis Cluster of N primaries (slots assigned,
//!   nodes met, `cluster_state:ok` awaited); nodes can be killed and restarted.
//! - [`kube::ControlPlane`] — a real etcd + kube-apiserver + kube-controller-manager (and
//!   optionally kube-scheduler) of Kubernetes v1.36.3, Go-built by
//!   `hack/setup.d/20-controlplane.sh`; `ControlPlane::shared().await` gives one per test
//!   process. Use `k8s-openapi` with the `v1_36` feature against it.
//! - [`tools`] — paths of kubectl 1.36, helm, otelcol, promtool, amtool, prometheus and
//!   alertmanager, as built/installed by `hack/setup.d/*.sh`.
//! - [`free_port`] — a free TCP port on 127.0.0.1.
//! - [`process::ManagedProcess`] — how every server is run: own process group, log file, and
//!   a watchdog that kills it when the test process dies (even on panic or `SIGKILL`).
//!   Use it for any other server a test starts (e.g. Prometheus, Alertmanager modules).
//!
//! Every server binds 127.0.0.1 only. Nothing started here outlives the test process.
//!
//! Differences from the one-line contract in INTERFACES.md, for users of the crate:
//! - `RedisServer::start()` and `ControlPlane::shared()` are `async` and panic with the
//!   component's log when they cannot start; `try_start()` / `ControlPlane::start(..)` return
//!   `Result` instead.
//! - `ControlPlane::client()` builds a new `kube::Client` on each call (cheap), so a client
//!   never outlives the tokio runtime of the test that made it.
//! - `install_crds(&[paths])` and `with_temp_ns(prefix, |client, ns| async {..})` are `async`.

pub mod alertmanager;
pub mod helm;
pub mod image;
pub mod kube;
pub mod kubectl;
pub mod metrics;
pub mod node;
pub mod operator;
pub mod process;
pub mod prometheus;
pub mod redis;
pub mod tools;
pub mod wait;

use std::net::{Ipv4Addr, TcpListener};
use std::time::Duration;

/// Errors from starting or talking to a harness-managed component.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A program could not be started (usually: not installed).
    #[error("cannot start {program}: {source} (run `hack/setup.sh` to install the test tools)")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    /// A process exited while it should be running.
    #[error("{name} exited unexpectedly; last log lines:\n{log_tail}")]
    Exited { name: String, log_tail: String },
    /// A component did not become ready in time.
    #[error("{what} not ready after {waited:?}: {last_error}")]
    NotReady {
        what: String,
        waited: Duration,
        last_error: String,
    },
    /// A filesystem or socket operation failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// A required tool is not installed where the harness looks for it.
    #[error(
        "{tool} not found ({looked}); run `hack/setup.sh` (or `make test`) to build/install it"
    )]
    ToolMissing { tool: String, looked: String },
    /// Anything else, described.
    #[error("{0}")]
    Other(String),
}

/// The repository root (the harness lives in `tests/harness`).
pub fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root exists")
}

/// A TCP port on 127.0.0.1 that was free a moment ago: a random one that a listener could bind
/// (closed again before returning). Another process can take it in between; the harness
/// retries a start on a fresh port when the server fails to bind.
///
/// The port is below both the kernel's ephemeral range and the NodePort range (30000-32767):
/// a port the kernel handed out for `bind(:0)` is an ephemeral one, and any outgoing connection
/// of the machine may take it between our check and the server's bind (a bench smoke run in
/// CI failed that way), while a NodePort may be claimed by kube-proxy's rules on the test node.
pub fn free_port() -> u16 {
    free_port_on(Ipv4Addr::LOCALHOST)
}

/// The lowest port [`free_port`] picks.
pub const LOWEST_FREE_PORT: u16 = 10_000;

/// [`free_port`] on another local address (e.g. the test node's bridge address).
pub fn free_port_on(address: Ipv4Addr) -> u16 {
    let high = ephemeral_low().unwrap_or(32_768).min(30_000);
    let mut last = None;
    for _ in 0..256 {
        let port = fastrand::u16(LOWEST_FREE_PORT..high);
        match TcpListener::bind((address, port)) {
            Ok(listener) => {
                return listener
                    .local_addr()
                    .expect("local address of the listener")
                    .port();
            }
            Err(e) => last = Some(e),
        }
    }
    panic!("no free port on {address} in {LOWEST_FREE_PORT}..{high}: {last:?}")
}

/// The first port of the kernel's ephemeral range (`ip_local_port_range`).
fn ephemeral_low() -> Option<u16> {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_below_the_ephemeral_and_nodeport_ranges_and_bindable() {
        let high = ephemeral_low().unwrap_or(32_768).min(30_000);
        for _ in 0..50 {
            let port = free_port();
            assert!((LOWEST_FREE_PORT..high).contains(&port), "{port}");
            TcpListener::bind((Ipv4Addr::LOCALHOST, port)).expect("the port is free");
        }
    }
}
