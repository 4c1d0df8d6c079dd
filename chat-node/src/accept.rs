//! The accept loops of the client and admin ports: every socket counted from `accept`, every
//! socket timed out until it is upgraded, and an fd reserve that keeps the probes answering.
//!
//! axum's `serve` counts nothing and times nothing out: a socket that sent half a request head,
//! never finished a body, or idled on keep-alive held its fd forever, and 300 of them under
//! `ulimit -n 256` left no fd for new clients or for `/readyz` (in Kubernetes: failed probes, a
//! restart, every client dropped). Here:
//!
//! - Every accepted socket takes a permit from its port's [`ConnectionGate`] before it is
//!   served, and holds it until the socket is closed: the permit sits beside the socket (in
//!   its [`Socket`], which the socket's reader keeps), so an HTTP connection, an SSE stream and
//!   an upgraded WebSocket (which takes the socket over) are all counted, once each.
//! - Past the limit the socket is served by the overflow router (503 + `Retry-After`, then
//!   closed) while the overflow gate has room; past that too it gets a canned 503 written at
//!   once and is closed without being read further: a client gets an answer or a closed
//!   socket, never a hang in the listen backlog.
//! - Each socket is watched (`request_cycle.rs`) until it is upgraded or closed: a new socket
//!   has `--header-timeout` to send its first request head; after a response it has
//!   `--idle-timeout` to start the next request and then `--header-timeout` from that first
//!   byte to finish its head. Bodies are timed by the handler that reads them
//!   (`--body-timeout`). While a request is served (an SSE stream, a WebSocket handshake) its
//!   own limits apply.
//! - One spare fd is kept open: when `accept` fails for lack of fds anyway, it is closed to
//!   accept the waiting socket and close it, so the client is not left hanging, then reopened.
//!
//! The fds these need are in the reserve of [`crate::limits::fd_budget`]: the client limit, the
//! overflow sockets, [`crate::limits::ADMIN_SOCKETS`] and the spare fd together stay below the
//! soft limit, so the admin port always finds an fd for a probe.

use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, warn};

use crate::limits::{ConnectionGate, ConnectionPermit};
use crate::metrics::Metrics;
use crate::request_cycle::{Socket, SocketService, Timeouts, Watchdog, Watched};

/// Binds a listener on `addr` with a listen backlog of `backlog` (tokio's `bind` uses 1024,
/// which a burst of reconnects overflows: see `--listen-backlog`).
pub fn bind(addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // as std's and tokio's `bind` do: a restarted node can rebind while old sockets linger
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// What a port does with the sockets it accepts.
pub struct Port {
    pub router: Router,
    pub gate: Arc<ConnectionGate>,
    /// Past the gate: a router that refuses everything, and the gate of the sockets it may
    /// hold at once. `None`: past the gate a socket is closed at once.
    pub overflow: Option<(Router, Arc<ConnectionGate>)>,
    pub timeouts: Timeouts,
    /// Counts refusals and timeouts (the client port); `None` counts nothing (admin).
    pub metrics: Option<Metrics>,
    /// Where sockets that open with the HTTP/2 preface go (gRPC on the server API port), with
    /// their permit and when they were accepted; `None`: every socket is HTTP/1.1.
    pub http2: Option<mpsc::Sender<Http2Socket>>,
}

/// An accepted socket that speaks HTTP/2, its permit, and when it was accepted (its timeouts
/// count from then).
pub type Http2Socket = (TcpStream, ConnectionPermit, tokio::time::Instant);

/// The client preface of HTTP/2 with prior knowledge (RFC 9113, 3.4), what gRPC clients send.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether a socket speaks HTTP/2 (`Some(true)`), HTTP/1 (`Some(false)`), or sent nothing
/// telling within `within` (`None`: it is closed). Only peeks: nothing is consumed.
async fn speaks_http2(stream: &TcpStream, within: Duration) -> Option<bool> {
    let mut buf = [0u8; H2_PREFACE.len()];
    tokio::time::timeout(within, async {
        loop {
            let n = stream.peek(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            if buf[..n] != H2_PREFACE[..n] {
                return Some(false);
            }
            if n == H2_PREFACE.len() {
                return Some(true);
            }
            // Part of the preface so far: wait for more bytes.
            stream.readable().await.ok()?;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .ok()
    .flatten()
}

/// Accepts and serves sockets until `stop`; then lets the open HTTP connections finish their
/// request in flight (idle ones close at once) and returns when every one is closed (upgraded
/// WebSockets live on in their own tasks).
pub async fn serve(listener: TcpListener, port: Port, stop: CancellationToken) {
    let port = Arc::new(port);
    let connections = TaskTracker::new();
    let mut spare = SpareFd::open();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.cancelled() => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                on_accept_error(e, &listener, &mut spare, &port).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (router, permit) = match port.gate.try_acquire() {
            Some(permit) => (port.router.clone(), permit),
            None => {
                if let Some(metrics) = &port.metrics {
                    metrics.connection("rejected");
                }
                match &port.overflow {
                    Some((router, gate)) => match gate.try_acquire() {
                        Some(permit) => (router.clone(), permit),
                        None => {
                            refuse_at_once(stream);
                            continue;
                        }
                    },
                    None => continue, // dropped: closed at once
                }
            }
        };
        let port = port.clone();
        let stop = stop.clone();
        connections.spawn(async move {
            if let Some(http2) = &port.http2 {
                let accepted = tokio::time::Instant::now();
                match speaks_http2(&stream, port.timeouts.header).await {
                    Some(true) => {
                        let _ = http2.send((stream, permit, accepted)).await;
                        return;
                    }
                    Some(false) => {}
                    None => return,
                }
            }
            serve_socket(stream, peer, router, permit, &port, stop).await;
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// Out of fds (`EMFILE`/`ENFILE`): close the spare fd, accept the waiting socket and close it
/// (its client sees the connection closed instead of waiting in the backlog), reopen the spare.
/// Other errors: a client that went away before `accept` is ignored; anything else waits a
/// little so the loop does not spin.
async fn on_accept_error(e: io::Error, listener: &TcpListener, spare: &mut SpareFd, port: &Port) {
    let out_of_fds = matches!(
        rustix::io::Errno::from_io_error(&e),
        Some(rustix::io::Errno::MFILE | rustix::io::Errno::NFILE)
    );
    if out_of_fds {
        warn!(details.reason = %e, "out of file descriptors: closing a new socket unserved");
        spare.release();
        if let Ok(Ok((stream, _))) =
            tokio::time::timeout(Duration::from_millis(10), listener.accept()).await
        {
            drop(stream);
            if let Some(metrics) = &port.metrics {
                metrics.connection("rejected");
            }
        }
        *spare = SpareFd::open();
        tokio::time::sleep(Duration::from_millis(10)).await;
        return;
    }
    if matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
    ) {
        return;
    }
    error!(details.reason = %e, "accept failed");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// The answer of a socket past the limit and past the overflow (the same JSON as every 503).
const CANNED_503: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: application/json\r\n\
retry-after: 2\r\n\
connection: close\r\n\
content-length: 66\r\n\
\r\n\
{\"code\":\"at_capacity\",\"message\":\"node is at its connection limit\"}";

/// Writes [`CANNED_503`] without waiting and closes the socket. What the client has sent by
/// now is read first (a few KiB at most): closing with unread input resets the connection,
/// which can make the client lose the answer.
fn refuse_at_once(stream: TcpStream) {
    let mut buf = [0u8; 2048];
    for _ in 0..4 {
        match stream.try_read(&mut buf) {
            Ok(n) if n > 0 => continue,
            _ => break,
        }
    }
    let _ = stream.try_write(CANNED_503);
}

/// An fd held open for the moment the process runs out of them.
struct SpareFd(Option<std::fs::File>);

impl SpareFd {
    fn open() -> Self {
        SpareFd(std::fs::File::open("/dev/null").ok())
    }

    fn release(&mut self) {
        self.0 = None;
    }
}

/// Serves one socket over HTTP/1.1 (with upgrades) until it closes, is upgraded, times out, or
/// the port stops (then it finishes the request in flight).
async fn serve_socket(
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    permit: ConnectionPermit,
    port: &Port,
    stop: CancellationToken,
) {
    let socket = Arc::new(Socket::new(permit));
    let io = TokioIo::new(Watched::new(stream, socket.clone()));
    let service = SocketService::new(router, socket.clone(), peer);
    let connection = hyper::server::conn::http1::Builder::new()
        .serve_connection(io, service)
        .with_upgrades();
    let mut connection = pin!(connection);
    let mut watchdog = pin!(Watchdog::new(&socket, port.timeouts));
    let mut stopping = false;
    loop {
        tokio::select! {
            // Biased: the connection first, so the watchdog always sees the state its poll left.
            biased;
            served = connection.as_mut() => {
                if let Err(e) = served {
                    debug!(details.reason = %e, "http connection ended with an error");
                }
                return;
            }
            expiry = watchdog.as_mut() => {
                debug!(details.reason = expiry.as_str(), "closing a socket that timed out");
                if let Some(metrics) = &port.metrics {
                    metrics.socket_timeout(expiry.as_str());
                }
                return;
            }
            _ = stop.cancelled(), if !stopping => {
                stopping = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_canned_503_is_well_formed_http() {
        let text = std::str::from_utf8(CANNED_503).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503 "));
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(length, body.len());
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["code"], "at_capacity");
        assert!(head.contains("\r\nretry-after: ") && head.contains("\r\nconnection: close"));
    }
}
