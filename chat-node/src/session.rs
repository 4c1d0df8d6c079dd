//! One WebSocket connection, protocol v1.
//!
//! Two halves run in one task: the reader parses client frames and decides (subscribe,
//! publish, heartbeat, token expiry); the writer drains the bounded send queue onto the socket.
//! Anyone may ask the session to close through its [`SessionControl`] (the hub for a slow
//! consumer, the drain, the reader itself); the writer then sends the close frame even when
//! the queue is full.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message as WsMessage, Utf8Bytes, WebSocket};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde_json::value::RawValue;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{Instrument, debug, error, info, warn};

use crate::auth::Identity;
use crate::broker::{BrokerError, PublishRequest, now_us};
use crate::channel;
use crate::fanout::{Outbound, SessionControl, Subscriber};
use crate::limits::ConnectionPermit;
use crate::metrics::reasons;
use crate::offset::Offset;
use crate::protocol::{ErrorCode, Request, ServerFrame, close, parse_client_frame};
use crate::server::AppState;
use crate::telemetry;

/// How long a close frame may take to leave before the socket is dropped (a slow consumer's
/// socket is full; it gets this long to read what is in flight and see its 4001).
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// Queued frames written before one flush.
const WRITE_BATCH: usize = 32;

/// Debug builds only: publishing to this channel panics inside the session, so tests can prove
/// that a session failing internally is closed with 1011 on its own while every other
/// connection carries on. Release builds have no such channel (it is an ordinary name there).
#[cfg(debug_assertions)]
pub const DEBUG_PANIC_CHANNEL: &str = "__chatnode_debug:panic";

/// Subscribes `subscriber` to `channel` on this node: join the live feed first, then read the
/// history, then queue `subscribed` + recovered messages + buffered live ones (no loss, no
/// duplicates). With `subscribed_frame = false` (SSE) only messages are queued.
pub async fn attach(
    app: &AppState,
    channel: &str,
    since: Option<Offset>,
    subscriber: &Subscriber,
    subscribed_frame: bool,
) -> Result<(), BrokerError> {
    app.hub.add_pending(channel, subscriber.clone());
    let history = async {
        app.broker.join(channel).await?;
        app.broker.history(channel, since).await
    }
    .await;
    let mut history = match history {
        Ok(history) => history,
        Err(e) => {
            detach(app, channel, subscriber.id);
            return Err(e);
        }
    };
    if history.gap {
        history.messages.clear();
    }
    let mut head = Vec::with_capacity(history.messages.len() + 1);
    if subscribed_frame {
        let frame = ServerFrame::Subscribed {
            channel,
            offset: history.newest,
            recovered: history.messages.len(),
            gap: history.gap,
        };
        head.push(Outbound::Frame(frame.to_json().into()));
    }
    head.extend(history.messages.iter().map(|m| app.hub.history_item(m)));
    let after = history
        .messages
        .last()
        .map_or(history.newest, |m| m.offset.max(history.newest));
    app.hub.activate(channel, subscriber.id, head, after);
    Ok(())
}

/// Removes a subscription; tells the broker when it was the channel's last on this node.
pub fn detach(app: &AppState, channel: &str, subscriber_id: u64) {
    if app.hub.remove(channel, subscriber_id) {
        app.broker.leave(channel);
    }
}

/// A token bucket: `rate` publishes per second, bursts of `rate`.
struct RateLimiter {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl RateLimiter {
    fn new(rate: u32) -> Self {
        RateLimiter {
            rate: f64::from(rate),
            tokens: f64::from(rate),
            last: Instant::now(),
        }
    }

    fn allow(&mut self) -> bool {
        if self.rate <= 0.0 {
            return true;
        }
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(self.rate);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

struct Session {
    app: Arc<AppState>,
    client_id: String,
    identity: Identity,
    subscriber: Subscriber,
    channels: HashSet<String>,
    rate: RateLimiter,
}

/// Serves one upgraded connection until it closes.
pub async fn run(
    app: Arc<AppState>,
    socket: WebSocket,
    identity: Identity,
    _permit: ConnectionPermit,
) {
    let client_id = format!("{:032x}", fastrand::u128(..));
    let control = Arc::new(SessionControl::default());
    let _registration = app.sessions.register(control.clone());
    let (tx, rx) = mpsc::channel(app.config.send_queue.max(2));
    app.metrics.connection("connected");
    debug!(details.client = %client_id, "connected");

    let welcome = ServerFrame::Welcome {
        node: &app.node_id,
        client: &client_id,
        heartbeat: app.config.heartbeat_interval.as_secs(),
    };
    let _ = tx.try_send(Outbound::Frame(welcome.to_json().into()));

    let (sink, mut stream) = socket.split();
    let mut session = Session {
        rate: RateLimiter::new(app.config.max_publish_rate),
        subscriber: Subscriber::new(tx, control.clone()),
        channels: HashSet::new(),
        identity,
        client_id,
        app: app.clone(),
    };
    let writer = write_loop(sink, rx, control.clone(), app.clone());
    tokio::join!(session.guarded_read_loop(&mut stream), writer);
    // We closed: wait (briefly) for the client's close reply before dropping the socket, so it
    // reads our close frame instead of a reset (RFC 6455 closing handshake).
    if control
        .closing()
        .is_some_and(|(_, r)| r != reasons::CLIENT_CLOSE && r != reasons::CONNECTION_LOST)
    {
        let _ = tokio::time::timeout(CLOSE_GRACE, async {
            while let Some(Ok(message)) = stream.next().await {
                if matches!(message, WsMessage::Close(_)) {
                    break;
                }
            }
        })
        .await;
    }

    for channel in std::mem::take(&mut session.channels) {
        detach(&app, &channel, session.subscriber.id);
    }
    let (code, reason) = control
        .closing()
        .unwrap_or((close::NORMAL, reasons::CLIENT_CLOSE));
    app.metrics.disconnection(reason);
    match reason {
        reasons::CLIENT_CLOSE | reasons::CONNECTION_LOST | reasons::DRAINING => {
            debug!(details.client = %session.client_id, details.reason = reason, details.close_code = code, "disconnected")
        }
        _ => {
            info!(details.client = %session.client_id, details.reason = reason, details.close_code = code, "disconnected")
        }
    }
}

fn is_capacity_error(error: axum::Error) -> bool {
    matches!(
        error
            .into_inner()
            .downcast::<tungstenite::Error>()
            .map(|e| *e),
        Ok(tungstenite::Error::Capacity(_))
    )
}

impl Session {
    /// The read loop, isolated: a panic while handling this connection's frames (a bug) closes
    /// this connection alone with 1011 (`internal`), logged and counted, instead of dropping
    /// the socket without a word; the writer half still sends the close frame, and `run`
    /// still unsubscribes its channels.
    async fn guarded_read_loop(&mut self, stream: &mut SplitStream<WebSocket>) {
        use futures_util::FutureExt;
        let outcome = std::panic::AssertUnwindSafe(self.read_loop(stream))
            .catch_unwind()
            .await;
        if let Err(panic) = outcome {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_owned());
            error!(details.client = %self.client_id, details.reason = %what, details.close_code = close::INTERNAL, "session failed internally, closing it");
            self.app.metrics.error(ErrorCode::Internal);
            self.subscriber
                .control
                .close(close::INTERNAL, reasons::INTERNAL);
        }
    }

    async fn read_loop(&mut self, stream: &mut SplitStream<WebSocket>) {
        let control = self.subscriber.control.clone();
        let interval = self
            .app
            .config
            .heartbeat_interval
            .max(Duration::from_millis(10));
        // The first ping is jittered so a mass reconnect does not ping in lockstep.
        let mut next_ping = Instant::now() + interval.mul_f64(0.5 + fastrand::f64() * 0.5);
        let mut last_seen = Instant::now();
        let expires_at = self.identity.expires_at.map(|exp| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            Instant::now() + Duration::from_secs(exp.saturating_sub(now))
        });
        loop {
            tokio::select! {
                biased;
                _ = control.closed() => return,
                _ = tokio::time::sleep_until(expires_at.unwrap_or(next_ping)), if expires_at.is_some() => {
                    control.close(close::POLICY, reasons::TOKEN_EXPIRED);
                    return;
                }
                _ = tokio::time::sleep_until(next_ping) => {
                    if last_seen.elapsed() >= interval * 2 {
                        control.close(close::HEARTBEAT_TIMEOUT, reasons::HEARTBEAT_TIMEOUT);
                        return;
                    }
                    self.queue(Outbound::Ping);
                    next_ping += interval;
                }
                frame = stream.next() => {
                    last_seen = Instant::now();
                    match frame {
                        None => {
                            control.close(close::NORMAL, reasons::CONNECTION_LOST);
                            return;
                        }
                        Some(Err(e)) => {
                            if is_capacity_error(e) {
                                self.app.metrics.error(ErrorCode::BadFrame);
                                control.close(close::TOO_BIG, reasons::MESSAGE_TOO_BIG);
                            } else {
                                control.close(close::NORMAL, reasons::CONNECTION_LOST);
                            }
                            return;
                        }
                        Some(Ok(WsMessage::Text(text))) => self.on_text(&text).await,
                        Some(Ok(WsMessage::Binary(_))) => {
                            self.send_error(ErrorCode::BadFrame, "binary frames are not supported; send JSON text", None)
                        }
                        Some(Ok(WsMessage::Close(_))) => {
                            control.close(close::NORMAL, reasons::CLIENT_CLOSE);
                            return;
                        }
                        Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => {}
                    }
                }
            }
        }
    }

    /// Queues a frame; a full queue closes the session as a slow consumer.
    fn queue(&self, item: Outbound) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.subscriber.tx.try_send(item)
            && self
                .subscriber
                .control
                .close(close::SLOW_CONSUMER, reasons::SLOW_CONSUMER)
        {
            self.app.metrics.slow_consumers.inc();
        }
    }

    fn send_frame(&self, frame: ServerFrame<'_>) {
        self.queue(Outbound::Frame(Utf8Bytes::from(frame.to_json())));
    }

    fn send_error(&self, code: ErrorCode, message: &str, reference: Option<&str>) {
        self.app.metrics.error(code);
        telemetry::received(code.as_str());
        debug!(details.client = %self.client_id, details.error_code = code.as_str(), "refused client frame");
        self.send_frame(ServerFrame::Error {
            code: code.as_str(),
            message,
            reference,
        });
    }

    async fn on_text(&mut self, text: &str) {
        let started = Instant::now();
        match parse_client_frame(text) {
            Err(e) => self.send_error(e.code, &e.message, e.reference.as_deref()),
            Ok(frame) => {
                let reference = frame.reference.as_deref();
                match frame.request {
                    Request::Subscribe { channel, since } => {
                        self.subscribe(channel, since, reference).await
                    }
                    Request::Unsubscribe { channel } => self.unsubscribe(&channel, reference),
                    Request::Publish { channel, data } => {
                        let span = telemetry::receive_span("ws", Some(&channel), None);
                        self.publish(channel, data, reference)
                            .instrument(span)
                            .await
                    }
                }
            }
        }
        self.app
            .metrics
            .message_duration
            .observe(started.elapsed().as_secs_f64());
    }

    async fn subscribe(&mut self, channel: String, since: Option<Offset>, reference: Option<&str>) {
        if !self.identity.channels.allows(&channel) {
            return self.send_error(
                ErrorCode::Forbidden,
                "your token does not allow this channel",
                reference,
            );
        }
        if self.channels.contains(&channel) {
            return self.send_error(
                ErrorCode::BadRequest,
                "already subscribed to this channel",
                reference,
            );
        }
        if self.channels.len() >= self.app.config.max_subscriptions {
            return self.send_error(
                ErrorCode::TooManySubscriptions,
                "subscription limit reached",
                reference,
            );
        }
        match attach(&self.app, &channel, since, &self.subscriber, true).await {
            Ok(()) => {
                debug!(details.client = %self.client_id, details.channel = %channel, "subscribed");
                self.channels.insert(channel);
            }
            Err(BrokerError::Unavailable) => self.send_error(
                ErrorCode::Unavailable,
                "message broker unavailable, retry later",
                reference,
            ),
            Err(BrokerError::Internal(e)) => {
                warn!(details.client = %self.client_id, details.channel = %channel, details.reason = %e, "subscribe failed");
                self.send_error(ErrorCode::Internal, "subscribe failed", reference)
            }
        }
    }

    fn unsubscribe(&mut self, channel: &str, reference: Option<&str>) {
        if !self.channels.remove(channel) {
            return self.send_error(
                ErrorCode::BadRequest,
                "not subscribed to this channel",
                reference,
            );
        }
        detach(&self.app, channel, self.subscriber.id);
        self.send_frame(ServerFrame::Unsubscribed { channel });
    }

    async fn publish(&mut self, channel: String, data: Box<RawValue>, reference: Option<&str>) {
        #[cfg(debug_assertions)]
        if channel == DEBUG_PANIC_CHANNEL {
            panic!("fault injected through {DEBUG_PANIC_CHANNEL}");
        }
        if !self.identity.channels.allows(&channel) {
            return self.send_error(
                ErrorCode::Forbidden,
                "your token does not allow this channel",
                reference,
            );
        }
        if !self.rate.allow() {
            return self.send_error(
                ErrorCode::RateLimited,
                "publishing too fast, slow down",
                reference,
            );
        }
        let namespace = channel::namespace(&channel).to_owned();
        let from = self
            .identity
            .subject
            .clone()
            .unwrap_or_else(|| self.client_id.clone());
        let span = telemetry::publish_span(&channel);
        let request = PublishRequest {
            channel,
            from,
            ts_us: now_us(),
            data,
            trace: telemetry::trace_context(&span),
        };
        let published = self
            .app
            .broker
            .publish(request)
            .instrument(span.clone())
            .await;
        telemetry::published(&span, published.as_ref().ok().copied());
        match published {
            Ok(offset) => {
                self.app.metrics.published(&namespace);
                telemetry::received("published");
                debug!(details.client = %self.client_id, details.offset = %offset, "published");
                self.send_frame(ServerFrame::Ack { reference, offset });
            }
            Err(BrokerError::Unavailable) => self.send_error(
                ErrorCode::Unavailable,
                "message broker unavailable, not published",
                reference,
            ),
            Err(BrokerError::Internal(e)) => {
                warn!(details.client = %self.client_id, details.reason = %e, "publish failed");
                self.send_error(ErrorCode::Internal, "publish failed", reference)
            }
        }
    }
}

fn to_ws(item: &Outbound) -> WsMessage {
    match item {
        Outbound::Frame(text) => WsMessage::Text(text.clone()),
        Outbound::Message(delivery) => WsMessage::Text(delivery.frame.clone()),
        Outbound::Ping => WsMessage::Ping(bytes::Bytes::new()),
    }
}

fn written(app: &AppState, item: &Outbound) {
    if let Outbound::Message(delivery) = item {
        delivery.delivered.inc();
        if delivery.live {
            let latency_us = now_us().saturating_sub(delivery.ts_us);
            app.metrics
                .delivery_latency
                .observe(latency_us as f64 / 1e6);
        }
    }
}

async fn write_batch(
    sink: &mut SplitSink<WebSocket, WsMessage>,
    rx: &mut mpsc::Receiver<Outbound>,
    first: Outbound,
    app: &AppState,
) -> Result<(), axum::Error> {
    let mut batch = Vec::with_capacity(4);
    batch.push(first);
    while batch.len() < WRITE_BATCH {
        match rx.try_recv() {
            Ok(item) => batch.push(item),
            Err(_) => break,
        }
    }
    for item in &batch {
        sink.feed(to_ws(item)).await?;
    }
    sink.flush().await?;
    for item in &batch {
        written(app, item);
    }
    Ok(())
}

async fn write_loop(
    mut sink: SplitSink<WebSocket, WsMessage>,
    mut rx: mpsc::Receiver<Outbound>,
    control: Arc<SessionControl>,
    app: Arc<AppState>,
) {
    loop {
        let item = tokio::select! {
            biased;
            _ = control.closed() => break,
            item = rx.recv() => item,
        };
        let Some(item) = item else { break };
        let result = tokio::select! {
            biased;
            _ = control.closed() => break,
            result = write_batch(&mut sink, &mut rx, item, &app) => result,
        };
        if result.is_err() {
            control.close(close::NORMAL, reasons::CONNECTION_LOST);
            break;
        }
    }
    if let Some((code, reason)) = control.closing()
        && reason != reasons::CONNECTION_LOST
    {
        let frame = CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        };
        let _ = tokio::time::timeout(CLOSE_GRACE, sink.send(WsMessage::Close(Some(frame)))).await;
    }
    let _ = tokio::time::timeout(CLOSE_GRACE, sink.close()).await;
}
