//! The API port's HTTP/2 connections (gRPC), each served by hyper here rather than by tonic's
//! `Server`, for two things tonic does not give:
//!
//! - The socket timeouts of the HTTP/1.1 sockets hold for HTTP/2 too: a connection must start
//!   its first request (a `HEADERS` frame) within `--header-timeout` of `accept`, and a
//!   connection without an open stream is closed after `--idle-timeout`. Without this an
//!   attacker opened sockets, sent the preface (or the preface and `SETTINGS`, answering
//!   pings) and nothing more, and held each fd and its permit forever.
//! - `grpc-timeout` (a caller's deadline) answered with `DEADLINE_EXCEEDED` as gRPC servers
//!   do (tonic's own layer answers `CANCELLED`), its work cancelled (the call's future dropped).
//!   The deadline covers a unary call whole, and a streaming call until its response starts;
//!   a stream the caller cancels (`RST_STREAM`) is dropped at once, and with it the session and
//!   the subscriptions it held.

use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, Response};
use futures_util::future::BoxFuture;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tracing::debug;

use crate::accept::Http2Socket;
use crate::request_cycle::{Expiry, Timeouts};

/// Streams one HTTP/2 connection may have open at once.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 64;
/// Largest request head (all header fields of one request) accepted.
const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;
/// Pings on a connection without traffic, and how long its answer may take.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest `grpc-timeout` honoured as such (longer ones are "no deadline": 8 digits of hours).
const MAX_DEADLINE: Duration = Duration::from_secs(100_000_000 * 3600);

/// What one connection's streams are doing, for its timeouts.
struct Activity {
    base: Instant,
    /// Open streams (a request in its handler, or a response body not finished).
    open: AtomicUsize,
    /// A request has started on this connection.
    served: AtomicBool,
    /// Milliseconds after `base` at which the last stream ended.
    idle_since: AtomicU64,
    /// Signalled when the last open stream ends.
    quiet: Notify,
}

impl Activity {
    fn new(base: Instant) -> Self {
        Activity {
            base,
            open: AtomicUsize::new(0),
            served: AtomicBool::new(false),
            idle_since: AtomicU64::new(0),
            quiet: Notify::new(),
        }
    }

    fn begin(self: &Arc<Self>) -> StreamGuard {
        self.served.store(true, Ordering::Relaxed);
        self.open.fetch_add(1, Ordering::AcqRel);
        StreamGuard(self.clone())
    }

    /// When the connection expires as things stand, or `None` while a stream is open.
    fn deadline(&self, timeouts: Timeouts) -> Option<(Instant, Expiry)> {
        if self.open.load(Ordering::Acquire) > 0 {
            return None;
        }
        if !self.served.load(Ordering::Relaxed) {
            return Some((self.base + timeouts.header, Expiry::Header));
        }
        let since = Duration::from_millis(self.idle_since.load(Ordering::Relaxed));
        Some((self.base + since + timeouts.idle, Expiry::Idle))
    }

    /// Resolves when the connection has been without a request for too long.
    async fn expired(&self, timeouts: Timeouts) -> Expiry {
        loop {
            let quiet = self.quiet.notified();
            match self.deadline(timeouts) {
                None => quiet.await,
                Some((at, expiry)) => {
                    if Instant::now() >= at {
                        return expiry;
                    }
                    // Woken early by a stream that ended: its end moved the deadline.
                    let _ = tokio::time::timeout_at(at, quiet).await;
                }
            }
        }
    }
}

/// An open stream; its end (dropped) may start the connection's idle time.
struct StreamGuard(Arc<Activity>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let activity = &self.0;
        let ms = u64::try_from(activity.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        activity.idle_since.fetch_max(ms, Ordering::Relaxed);
        if activity.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            activity.quiet.notify_one();
        }
    }
}

/// A response body that keeps its stream counted as open until it is finished or dropped.
struct Guarded {
    body: Body,
    _guard: StreamGuard,
}

impl HttpBody for Guarded {
    type Data = axum::body::Bytes;
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

/// The `grpc-timeout` header (1–8 digits and a unit: `H`, `M`, `S`, `m`, `u`, `n`), if valid.
pub fn grpc_timeout(value: &[u8]) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    let timeout = match unit {
        b"H" => Duration::from_secs(n * 3600),
        b"M" => Duration::from_secs(n * 60),
        b"S" => Duration::from_secs(n),
        b"m" => Duration::from_millis(n),
        b"u" => Duration::from_micros(n),
        b"n" => Duration::from_nanos(n),
        _ => return None,
    };
    Some(timeout.min(MAX_DEADLINE))
}

fn deadline_exceeded() -> Response<Body> {
    let status = tonic::Status::deadline_exceeded(
        "deadline_exceeded: the call did not finish within its grpc-timeout",
    );
    status.into_http::<Body>()
}

/// One connection's service: every request counted as an open stream, and cut at its deadline.
#[derive(Clone)]
struct Service {
    router: Router,
    activity: Arc<Activity>,
}

impl hyper::service::Service<Request<Incoming>> for Service {
    type Response = Response<Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<'static, Result<Response<Body>, Self::Error>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let guard = self.activity.begin();
        let deadline = request
            .headers()
            .get("grpc-timeout")
            .and_then(|v| grpc_timeout(v.as_bytes()));
        let call = self.router.clone().oneshot(request.map(Body::new));
        Box::pin(async move {
            let response = match deadline {
                Some(within) => match tokio::time::timeout(within, call).await {
                    Ok(response) => response?,
                    Err(_) => deadline_exceeded(),
                },
                None => call.await?,
            };
            Ok(response.map(|body| {
                Body::new(Guarded {
                    body,
                    _guard: guard,
                })
            }))
        })
    }
}

/// Serves one HTTP/2 socket with `router` until it closes, times out (counted from when it was
/// accepted), or `stop` (then the streams in flight may finish). The permit goes with it.
pub async fn serve_connection(
    (stream, permit, accepted): Http2Socket,
    router: Router,
    timeouts: Timeouts,
    stop: CancellationToken,
) {
    let activity = Arc::new(Activity::new(accepted));
    let service = Service {
        router,
        activity: activity.clone(),
    };
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .max_header_list_size(MAX_HEADER_LIST_BYTES)
        .keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    let mut connection = pin!(connection);
    let mut expired = pin!(activity.expired(timeouts));
    let mut stopping = false;
    loop {
        tokio::select! {
            biased;
            served = connection.as_mut() => {
                if let Err(e) = served {
                    debug!(details.reason = %e, "http/2 connection ended with an error");
                }
                break;
            }
            expiry = expired.as_mut(), if !stopping => {
                debug!(details.reason = expiry.as_str(), "closing an http/2 socket that timed out");
                break;
            }
            _ = stop.cancelled(), if !stopping => {
                stopping = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    }
    drop(permit);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_as_the_spec_writes_them() {
        assert_eq!(grpc_timeout(b"100m"), Some(Duration::from_millis(100)));
        assert_eq!(grpc_timeout(b"1S"), Some(Duration::from_secs(1)));
        assert_eq!(grpc_timeout(b"2M"), Some(Duration::from_secs(120)));
        assert_eq!(grpc_timeout(b"1H"), Some(Duration::from_secs(3600)));
        assert_eq!(grpc_timeout(b"5u"), Some(Duration::from_micros(5)));
        assert_eq!(grpc_timeout(b"7n"), Some(Duration::from_nanos(7)));
        assert_eq!(
            grpc_timeout(b"99999999H"),
            Some(Duration::from_secs(99_999_999 * 3600))
        );
        for bad in [
            &b""[..],
            b"S",
            b"123456789S",
            b"10x",
            b"-1S",
            b"1.5S",
            b"10 S",
        ] {
            assert_eq!(grpc_timeout(bad), None, "{:?}", std::str::from_utf8(bad));
        }
    }
}
