//! Where an accepted socket is in its request cycle, and the deadline that follows from it.
//!
//! A socket is *new* (its first request head is due within the header timeout of `accept`),
//! *busy* (a request is being served: no socket deadline, the handler has its own), *idle*
//! (after a response: the next request must start within the idle timeout) or *in a head*
//! (bytes of the next request arrived: the head is due within the header timeout of its first
//! byte). Three wrappers keep that state: the reader ([`Watched`]) notes arriving bytes, the
//! service ([`SocketService`]) marks a request busy when hyper hands it over, and the response
//! body ([`TrackedBody`]) marks the socket idle when hyper drops it after writing it. The
//! [`Watchdog`] turns the state into one `Sleep`, re-armed on every poll.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::response::Response;
use futures_util::future::BoxFuture;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::service::Service;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use crate::limits::ConnectionPermit;
use crate::metrics::phases;

/// How long a socket may take for each step of a request.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// A whole request head, from its first byte (from `accept` on a new socket).
    pub header: Duration,
    /// Between a response and the next request's first byte.
    pub idle: Duration,
}

/// Which timeout closed a socket (label of `chat_socket_timeouts_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expiry {
    Header,
    Idle,
}

impl Expiry {
    pub fn as_str(self) -> &'static str {
        match self {
            Expiry::Header => phases::HEADER,
            Expiry::Idle => phases::IDLE,
        }
    }
}

/// What one accepted socket holds beside its fd: its permit, and where it is in its request
/// cycle (for the timeouts). Kept by the socket's reader, so it lives exactly as long as the
/// socket (an upgraded WebSocket included, where it costs 64 bytes).
pub struct Socket {
    _permit: ConnectionPermit,
    /// The time base of the fields below (milliseconds since it).
    base: Instant,
    /// A request is being served (HTTP/1.1 serves one at a time).
    busy: AtomicBool,
    /// At least one response has been sent (a new socket has only the header timeout).
    served: AtomicBool,
    /// When the socket last became idle.
    idle_since: AtomicU64,
    /// When the first byte of the next request arrived ([`NOT_YET`] while none did).
    head_since: AtomicU64,
}

const NOT_YET: u64 = u64::MAX;

impl Socket {
    pub fn new(permit: ConnectionPermit) -> Self {
        Socket {
            _permit: permit,
            base: Instant::now(),
            busy: AtomicBool::new(false),
            served: AtomicBool::new(false),
            idle_since: AtomicU64::new(0),
            head_since: AtomicU64::new(NOT_YET),
        }
    }

    fn now(&self) -> u64 {
        self.base.elapsed().as_millis() as u64
    }

    /// Bytes arrived: the first ones while idle start the next request's head.
    fn bytes_read(&self) {
        if self.head_since.load(Ordering::Relaxed) == NOT_YET && !self.busy.load(Ordering::Relaxed)
        {
            self.head_since.store(self.now(), Ordering::Relaxed);
        }
    }

    fn request_started(&self) {
        self.busy.store(true, Ordering::Relaxed);
        self.head_since.store(NOT_YET, Ordering::Relaxed);
    }

    fn request_finished(&self) {
        self.idle_since.store(self.now(), Ordering::Relaxed);
        self.head_since.store(NOT_YET, Ordering::Relaxed);
        self.served.store(true, Ordering::Relaxed);
        self.busy.store(false, Ordering::Relaxed);
    }

    /// When the socket must be closed unless something happens first, and why.
    fn deadline(&self, timeouts: Timeouts) -> Option<(Instant, Expiry)> {
        if self.busy.load(Ordering::Relaxed) {
            return None;
        }
        let at = |ms: u64, after: Duration| self.base + Duration::from_millis(ms) + after;
        if !self.served.load(Ordering::Relaxed) {
            return Some((at(0, timeouts.header), Expiry::Header));
        }
        match self.head_since.load(Ordering::Relaxed) {
            NOT_YET => Some((
                at(self.idle_since.load(Ordering::Relaxed), timeouts.idle),
                Expiry::Idle,
            )),
            since => Some((at(since, timeouts.header), Expiry::Header)),
        }
    }
}

/// Resolves when the socket's current deadline passes; re-reads the deadline on every poll
/// (the connection is polled first in the same task, so every change is seen).
pub struct Watchdog<'a> {
    socket: &'a Socket,
    timeouts: Timeouts,
    sleep: Pin<Box<Sleep>>,
}

impl<'a> Watchdog<'a> {
    pub fn new(socket: &'a Socket, timeouts: Timeouts) -> Self {
        Watchdog {
            socket,
            timeouts,
            sleep: Box::pin(tokio::time::sleep(timeouts.header)),
        }
    }
}

impl std::future::Future for Watchdog<'_> {
    type Output = Expiry;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Expiry> {
        let Some((at, expiry)) = self.socket.deadline(self.timeouts) else {
            // Busy: the end of the request is seen in a later poll of the connection.
            return Poll::Pending;
        };
        if Instant::now() >= at {
            return Poll::Ready(expiry);
        }
        if self.sleep.deadline() != at {
            self.sleep.as_mut().reset(at);
        }
        match self.sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(expiry),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// The socket as hyper reads it: notes when bytes arrive.
pub struct Watched {
    io: TcpStream,
    socket: Arc<Socket>,
}

impl Watched {
    pub fn new(io: TcpStream, socket: Arc<Socket>) -> Self {
        Watched { io, socket }
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let read = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.socket.bytes_read();
        }
        read
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The router, with each request marked on its socket: busy from its head until its response
/// body is done (an SSE stream stays busy while it streams).
/// Each request also carries the socket's peer address as axum's `ConnectInfo` (what
/// `into_make_service_with_connect_info` gave it under `axum::serve`).
#[derive(Clone)]
pub struct SocketService {
    router: TowerToHyperService<Router>,
    socket: Arc<Socket>,
    peer: SocketAddr,
}

impl SocketService {
    pub fn new(router: Router, socket: Arc<Socket>, peer: SocketAddr) -> Self {
        SocketService {
            router: TowerToHyperService::new(router),
            socket,
            peer,
        }
    }
}

impl Service<hyper::Request<Incoming>> for SocketService {
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response, Infallible>>;

    fn call(&self, mut request: hyper::Request<Incoming>) -> Self::Future {
        self.socket.request_started();
        request.extensions_mut().insert(ConnectInfo(self.peer));
        let served = self.router.call(request);
        let done = RequestDone(self.socket.clone());
        Box::pin(async move {
            let response = served.await?;
            Ok(response.map(|body| Body::new(TrackedBody { body, _done: done })))
        })
    }
}

/// Marks the socket idle when the response body is done (dropped by hyper after writing it).
struct RequestDone(Arc<Socket>);

impl Drop for RequestDone {
    fn drop(&mut self) {
        self.0.request_finished();
    }
}

pub struct TrackedBody {
    body: Body,
    _done: RequestDone,
}

impl hyper::body::Body for TrackedBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
