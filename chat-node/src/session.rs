//! One WebSocket connection, protocol v1.
//!
//! One task per connection: it parses client frames and decides (subscribe, publish,
//! heartbeat, token expiry), and its [`Socket`] writes the bounded send queue onto the socket
//! in batches meanwhile. Anyone may ask the session to close through its [`SessionControl`]
//! (the hub for a slow consumer, the drain, the session itself); the session then drops what
//! is still queued and sends the close frame.

use std::collections::HashSet;
use std::future::Future;
use std::hash::{BuildHasherDefault, DefaultHasher};
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message as WsMessage, Utf8Bytes, WebSocket};
use futures_util::FutureExt;
use serde_json::value::RawValue;
use tokio::time::Instant;
use tokio_util::task::task_tracker::TaskTrackerToken;
use tracing::{Instrument, Span, debug, error, info, warn};

use crate::auth::{Identity, SubscriptionTokenError, expiry};
use crate::broker::{BrokerError, HistoryQuery, PublishRequest, now_us};
use crate::channel::ChannelPatterns;
use crate::fanout::{NoRoom, Outbound, SessionControl, SessionTag, Subscriber};
use crate::history;
use crate::metrics::reasons;
use crate::offset::Offset;
use crate::per_user::UserSlot;
use crate::presence::{self, Entry};
use crate::protocol::{ErrorCode, Request, ServerFrame, close, parse_client_frame};
use crate::rates::RateKey;
use crate::replay::{self, detach};
use crate::server::AppState;
use crate::socket::{Event, Socket};
use crate::telemetry;

/// How long a close frame may take to leave before the socket is dropped (a slow consumer's
/// socket is full; it gets this long to read what is in flight and see its 4001).
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Debug builds only: publishing to this channel panics inside the session, so tests can prove
/// that a session failing internally is closed with 1011 on its own while every other
/// connection carries on. Release builds have no such channel (it is an ordinary name there).
#[cfg(debug_assertions)]
pub const DEBUG_PANIC_CHANNEL: &str = "__chatnode_debug:panic";

/// The `forbidden` message for a publish to a namespace whose clients may not publish.
pub const NO_CLIENT_PUBLISH: &str =
    "clients may not publish to this channel's namespace (only the server API may)";

/// The `forbidden` message for an anonymous client in a namespace that wants a user.
pub const NO_ANONYMOUS: &str =
    "this channel's namespace needs a user: connect with a token that has a `sub`";

/// The `forbidden` message in a private namespace without a subscription token.
pub const NEEDS_TOKEN: &str =
    "this channel's namespace is private: subscribe with a subscription token (`token`) for it";

/// Where a subscription starts, as the `subscribe` frame asked.
struct Start {
    since: Option<Offset>,
    epoch: Option<String>,
    last: Option<u64>,
    token: Option<Box<str>>,
}

/// What a connection keeps while it waits: everything else about it is in its control's
/// [`SessionTag`] (who it is) or allocated only while a frame is handled.
struct Session {
    app: Arc<AppState>,
    subscriber: Subscriber,
    /// Its subscriptions. Hashed with fixed keys: a random-keyed hasher would keep 16 bytes
    /// in every idle connection, and a client can put at most `--max-subscriptions` (128 by
    /// default) names here, too few for colliding names to cost anything.
    channels: HashSet<String, BuildHasherDefault<DefaultHasher>>,
    /// The channels the token lets it subscribe to and publish to (all when auth is off).
    subscribe: ChannelPatterns,
    publish: ChannelPatterns,
    /// The token's `exp` (Unix seconds).
    expires_at: Option<u64>,
    /// Whose publish budget this connection spends (shared with the identity's other
    /// connections and its HTTP publishes).
    rate_key: RateKey,
}

/// A connection's random id, shown to its client (`welcome`) and in logs as 32 hex digits;
/// kept as a number, so a connection holds no string for it.
#[derive(Clone, Copy)]
struct ClientId(u128);

impl std::fmt::Display for ClientId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// What an accepted `/ws` handshake hands to its connection's task (boxed while the upgrade
/// completes, so the closure axum keeps for the connection's whole life is one pointer).
pub struct Accepted {
    pub app: Arc<AppState>,
    pub identity: Identity,
    pub rate_key: RateKey,
    /// Keeps the node's drain waiting for this connection.
    pub task: TaskTrackerToken,
    /// Its place in its user's connection count (kept in the registry tag).
    pub user_slot: Option<UserSlot>,
}

/// Serves one upgraded connection until it closes.
///
/// The set-up runs before the future is built, and the future captures each piece of
/// per-connection state once: its size is what every idle connection keeps (an `async fn`
/// would keep its arguments besides the values made from them, e.g. the WebSocket twice).
pub fn run(socket: WebSocket, accepted: Accepted) -> impl Future<Output = ()> + Send + 'static {
    let Accepted {
        app,
        identity,
        rate_key,
        task,
        user_slot,
    } = accepted;
    let Identity {
        subject,
        subscribe,
        publish,
        expires_at,
        info,
        token_id,
        issued_at,
    } = identity;
    let client_id = ClientId(SessionTag::new_client_id());
    let tag = SessionTag {
        client: client_id.0,
        user: subject.map(String::into_boxed_str),
        token_id: token_id.map(String::into_boxed_str),
        info,
        issued_at: issued_at.unwrap_or(0),
        user_slot,
    };
    let control = Arc::new(SessionControl::tagged(
        app.config.send_queue.max(2),
        app.config.send_queue_bytes,
        tag,
    ));
    let subscriber = Subscriber::new(control.clone());
    let registration = app.sessions.register(control.clone());
    app.metrics.connection("connected");
    debug!(details.client = %client_id, "connected");

    let client = client_id.to_string();
    let welcome = ServerFrame::Welcome {
        node: &app.node_id,
        client: &client,
        heartbeat: app.config.heartbeat_interval.as_secs(),
        heartbeat_ms: u64::try_from(app.config.heartbeat_interval.as_millis()).unwrap_or(u64::MAX),
    };
    let _ = control.push(Outbound::Frame(welcome.to_json().into()));

    let mut socket = Socket::new(socket, control.clone(), app.clone());
    let mut session = Session {
        rate_key,
        subscriber,
        channels: HashSet::default(),
        subscribe,
        publish,
        expires_at,
        app,
    };
    async move {
        session.guarded_serve(&mut socket).await;
        // Boxed: the closing steps are rare, and would otherwise make every idle session bigger.
        Box::pin(close_handshake(socket, &control)).await;
        session.finish(&control);
        drop((registration, task));
    }
}

/// Lets the publishes in flight finish, sends the close frame (unless the connection is gone),
/// and waits briefly for the client's reply when we were the side that closed.
async fn close_handshake(mut socket: Socket, control: &SessionControl) {
    // Publishes read before the end still reach the broker (their acks only if still open).
    let _ = tokio::time::timeout(CLOSE_GRACE, socket.finish_publishes()).await;
    if let Some((code, reason)) = control.closing()
        && reason != reasons::CONNECTION_LOST
    {
        let frame = CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        };
        let _ = tokio::time::timeout(CLOSE_GRACE, socket.send(WsMessage::Close(Some(frame)))).await;
    }
    let _ = tokio::time::timeout(CLOSE_GRACE, socket.close()).await;
    // We closed: wait (briefly) for the client's close reply before dropping the socket, so it
    // reads our close frame instead of a reset (RFC 6455 closing handshake). Not after a
    // protocol violation: RFC 6455 says to fail such a connection, and what the client sends
    // next cannot be trusted to be a close frame.
    if control.closing().is_some_and(|(_, r)| {
        r != reasons::CLIENT_CLOSE
            && r != reasons::CONNECTION_LOST
            && r != reasons::PROTOCOL_ERROR
            && r != reasons::INVALID_PAYLOAD
    }) {
        let _ = tokio::time::timeout(CLOSE_GRACE, async {
            while let Some(Ok(message)) = socket.next_frame().await {
                if matches!(message, WsMessage::Close(_)) {
                    break;
                }
            }
        })
        .await;
    }
}

/// The close code and reason for a failed read: a frame over the size limit (1009), a text
/// frame that is not UTF-8 (1007), any other break of RFC 6455 by the client (1002), or the
/// connection gone (no close frame can reach it).
fn read_failure(error: axum::Error) -> (u16, &'static str) {
    use tungstenite::error::ProtocolError;
    let Ok(error) = error.into_inner().downcast::<tungstenite::Error>() else {
        return (close::NORMAL, reasons::CONNECTION_LOST);
    };
    match *error {
        tungstenite::Error::Capacity(_) => (close::TOO_BIG, reasons::MESSAGE_TOO_BIG),
        tungstenite::Error::Utf8(_) => (close::INVALID_PAYLOAD, reasons::INVALID_PAYLOAD),
        // The peer vanished, or sent something after the closing handshake: nobody to tell.
        tungstenite::Error::Protocol(
            ProtocolError::ResetWithoutClosingHandshake
            | ProtocolError::ReceivedAfterClosing
            | ProtocolError::SendAfterClosing,
        ) => (close::NORMAL, reasons::CONNECTION_LOST),
        tungstenite::Error::Protocol(_) | tungstenite::Error::AttackAttempt => {
            (close::PROTOCOL_ERROR, reasons::PROTOCOL_ERROR)
        }
        _ => (close::NORMAL, reasons::CONNECTION_LOST),
    }
}

impl Session {
    fn client_id(&self) -> ClientId {
        ClientId(self.subscriber.control.tag().client)
    }

    /// Unsubscribes everything and counts and logs how the session ended.
    fn finish(&mut self, control: &SessionControl) {
        for channel in std::mem::take(&mut self.channels) {
            // One the server API unsubscribed it from has been left already.
            if self.app.hub.is_subscribed(&channel, self.subscriber.id) {
                detach(&self.app, &channel, self.subscriber.id);
                self.left(&channel);
            }
        }
        let (code, reason) = control
            .closing()
            .unwrap_or((close::NORMAL, reasons::CLIENT_CLOSE));
        self.app.metrics.disconnection(reason);
        match reason {
            reasons::CLIENT_CLOSE | reasons::CONNECTION_LOST | reasons::DRAINING => {
                debug!(details.client = %self.client_id(), details.reason = reason, details.close_code = code, "disconnected")
            }
            _ => {
                info!(details.client = %self.client_id(), details.reason = reason, details.close_code = code, "disconnected")
            }
        }
    }

    /// [`Session::serve`], isolated: a panic while handling this connection's frames (a bug)
    /// closes this connection alone with 1011 (`internal`), logged and counted, instead of
    /// dropping the socket without a word; `run` still sends the close frame and unsubscribes
    /// its channels.
    async fn guarded_serve(&mut self, socket: &mut Socket) {
        let outcome = std::panic::AssertUnwindSafe(self.serve(socket))
            .catch_unwind()
            .await;
        if let Err(panic) = outcome {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_owned());
            error!(details.client = %self.client_id(), details.reason = %what, details.close_code = close::INTERNAL, "session failed internally, closing it");
            self.app.metrics.error(ErrorCode::Internal);
            self.subscriber
                .control
                .close(close::INTERNAL, reasons::INTERNAL);
        }
    }

    /// Reads and answers client frames, pings, and writes queued frames, until the session
    /// must close (the reason is then in its control).
    async fn serve(&mut self, socket: &mut Socket) {
        let control = self.subscriber.control.clone();
        let interval = self
            .app
            .config
            .heartbeat_interval
            .max(Duration::from_millis(10));
        // The first ping is jittered so a mass reconnect does not ping in lockstep.
        let mut next_ping = Instant::now() + interval.mul_f64(0.5 + fastrand::f64() * 0.5);
        let mut last_seen = Instant::now();
        let expires_at = expiry(self.expires_at);
        let deadline = |next_ping: Instant| expires_at.map_or(next_ping, |e| e.min(next_ping));
        let mut timer = pin!(tokio::time::sleep_until(deadline(next_ping)));
        loop {
            match socket.next_event(timer.as_mut()).await {
                Event::Closing => return,
                Event::WriteFailed => {
                    control.close(close::NORMAL, reasons::CONNECTION_LOST);
                    return;
                }
                Event::Timer => {
                    let now = Instant::now();
                    if expires_at.is_some_and(|e| now >= e) {
                        control.close(close::POLICY, reasons::TOKEN_EXPIRED);
                        return;
                    }
                    if now >= next_ping {
                        if last_seen.elapsed() >= interval * 2 {
                            control.close(close::HEARTBEAT_TIMEOUT, reasons::HEARTBEAT_TIMEOUT);
                            return;
                        }
                        self.queue(Outbound::Ping);
                        next_ping += interval;
                    }
                    timer.as_mut().reset(deadline(next_ping));
                }
                Event::Frame(frame) => {
                    last_seen = Instant::now();
                    match frame {
                        None => {
                            control.close(close::NORMAL, reasons::CONNECTION_LOST);
                            return;
                        }
                        Some(Err(e)) => {
                            let (code, reason) = read_failure(e);
                            if reason != reasons::CONNECTION_LOST {
                                self.app.metrics.error(ErrorCode::BadFrame);
                            }
                            control.close(code, reason);
                            return;
                        }
                        // Boxed: handling a frame needs far more state than waiting for one,
                        // and idle sessions should not carry it.
                        Some(Ok(WsMessage::Text(text))) => {
                            Box::pin(self.on_text(&text, socket)).await;
                            // A replay paced by the client's reading may take long; the client
                            // was reading all along.
                            last_seen = Instant::now();
                        }
                        Some(Ok(WsMessage::Binary(_))) => self.send_error(
                            ErrorCode::BadFrame,
                            "binary frames are not supported; send JSON text",
                            None,
                        ),
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
        if self.subscriber.control.push(item).is_err()
            && self
                .subscriber
                .control
                .close(close::SLOW_CONSUMER, reasons::SLOW_CONSUMER)
        {
            self.app.metrics.slow_consumers.inc();
        }
    }

    /// Queues an answer that may be large (a history page, a presence list): it waits for its
    /// share of the send queue, and a client that takes nothing for `--send-timeout` meanwhile
    /// is closed as a slow consumer.
    async fn queue_large(&self, frame: String) {
        let control = &self.subscriber.control;
        match control
            .wait_for_share(frame.len(), self.app.config.send_timeout)
            .await
        {
            Ok(()) => self.queue(Outbound::Frame(Utf8Bytes::from(frame))),
            Err(NoRoom::Closing) => {}
            Err(NoRoom::Stalled) => {
                if control.close(close::SLOW_CONSUMER, reasons::SLOW_CONSUMER) {
                    self.app.metrics.slow_consumers.inc();
                }
            }
        }
    }

    fn send_frame(&self, frame: ServerFrame<'_>) {
        self.queue(Outbound::Frame(Utf8Bytes::from(frame.to_json())));
    }

    fn send_error(&self, code: ErrorCode, message: &str, reference: Option<&str>) {
        self.app.metrics.error(code);
        telemetry::received(code.as_str());
        debug!(details.client = %self.client_id(), details.error_code = code.as_str(), "refused client frame");
        self.send_frame(ServerFrame::Error {
            code: code.as_str(),
            message,
            reference,
        });
    }

    /// Handles one client text frame. Consecutive publishes are pipelined: each goes to the
    /// broker as soon as it is read, and the acks follow in request order (see
    /// [`Socket::start_publish`]). Any other frame first waits for the publishes in flight, so
    /// every answer still comes in the order of the requests.
    async fn on_text(&mut self, text: &str, socket: &mut Socket) {
        let started = Instant::now();
        let frame = match parse_client_frame(text, self.app.config.max_json_depth) {
            Ok(frame) => frame,
            Err(e) => {
                socket.finish_publishes().await;
                self.send_error(e.code, &e.message, e.reference.as_deref());
                self.observe(started);
                return;
            }
        };
        let reference = frame.reference;
        match frame.request {
            Request::Publish { channel, data } => {
                let span = telemetry::receive_span("ws", Some(&channel), None);
                match span.in_scope(|| self.publish_request(channel, data)) {
                    Ok((request, publish_span)) => {
                        let reply = publish_reply(
                            self.app.clone(),
                            request,
                            reference,
                            self.client_id(),
                            started,
                            publish_span,
                        );
                        socket.start_publish(reply.instrument(span).boxed());
                        return;
                    }
                    Err((code, message)) => {
                        socket.finish_publishes().await;
                        span.in_scope(|| self.send_error(code, message, reference.as_deref()));
                    }
                }
            }
            Request::Subscribe {
                channel,
                since,
                epoch,
                last,
                token,
            } => {
                socket.finish_publishes().await;
                // Boxed: a rare, large future (history read) that idle sessions need not carry.
                let subscribe = Box::pin(self.subscribe(
                    channel,
                    Start {
                        since,
                        epoch,
                        last,
                        token,
                    },
                    reference.as_deref(),
                ));
                socket.write_while(subscribe).await;
            }
            Request::History {
                channel,
                limit,
                since,
                before,
                reverse,
            } => {
                socket.finish_publishes().await;
                let query = HistoryQuery {
                    limit: history::page_limit(&self.app, limit),
                    since,
                    before,
                    reverse,
                };
                let read = Box::pin(self.history(channel, query, reference.as_deref()));
                socket.write_while(read).await;
            }
            Request::Unsubscribe { channel } => {
                socket.finish_publishes().await;
                self.unsubscribe(&channel, reference.as_deref());
            }
            Request::Presence { channel } => {
                socket.finish_publishes().await;
                let read = Box::pin(self.presence(channel, false, reference.as_deref()));
                socket.write_while(read).await;
            }
            Request::PresenceStats { channel } => {
                socket.finish_publishes().await;
                let read = Box::pin(self.presence(channel, true, reference.as_deref()));
                socket.write_while(read).await;
            }
            // After the publishes in flight, like every answer: a pong proves the connection
            // works in both directions and that the session is handling frames. Not charged to
            // the publish budget (anonymous clients behind one proxy share it, and their pings
            // would starve their publishes): one small frame in, one no bigger out, like a
            // refused frame; a client that does not read its pongs fills its send queue and is
            // closed as a slow consumer.
            Request::Ping => {
                socket.finish_publishes().await;
                self.send_frame(ServerFrame::Pong {
                    reference: reference.as_deref(),
                });
            }
        }
        self.observe(started);
    }

    fn observe(&self, started: Instant) {
        self.app
            .metrics
            .message_duration
            .observe(started.elapsed().as_secs_f64());
    }

    /// Answers a `history` request: one bounded page, queued once it fits in half the send
    /// queue (waiting for the client to read, up to `--send-timeout`).
    async fn history(&mut self, channel: String, query: HistoryQuery, reference: Option<&str>) {
        if let Err((code, message)) = self.may_read(&channel) {
            return self.send_error(code, message, reference);
        }
        if self.app.namespaces.of(&channel).history.is_none() {
            return self.send_error(ErrorCode::NotAvailable, history::NOT_KEPT, reference);
        }
        let page = match self.app.broker.history(&channel, query).await {
            Ok(page) => page,
            Err(e) => {
                let (code, _, message) = history::broker_failure(&e, &channel);
                return self.send_error(code, message, reference);
            }
        };
        let max_bytes = history::page_bytes(&self.app);
        let frame = history::render(&channel, &page, reference, true, max_bytes);
        drop(page);
        self.queue_large(frame).await;
    }

    async fn subscribe(&mut self, channel: String, start: Start, reference: Option<&str>) {
        let Start {
            mut since,
            mut epoch,
            last,
            token,
        } = start;
        // A subscription token is a grant of its own (for this channel and user); without
        // one, a private namespace refuses and any other asks the connection's rights.
        match token.as_deref() {
            Some(token) => {
                let verified = match &self.app.auth {
                    Some(auth) => auth.verify_subscription(
                        token,
                        &channel,
                        self.subscriber.control.tag().user.as_deref(),
                    ),
                    None => Err(SubscriptionTokenError::AuthOff),
                };
                if let Err(e) = verified {
                    return self.send_error(ErrorCode::Forbidden, &e.to_string(), reference);
                }
            }
            None if self.app.namespaces.of(&channel).private => {
                return self.send_error(ErrorCode::Forbidden, NEEDS_TOKEN, reference);
            }
            None => {
                if let Err((code, message)) = self.may_read(&channel) {
                    return self.send_error(code, message, reference);
                }
            }
        }
        // The server API may have unsubscribed this session from some channels (`unsubscribe`):
        // those no longer count, and may be subscribed again.
        let (hub, id) = (&self.app.hub, self.subscriber.id);
        self.channels.retain(|c| hub.is_subscribed(c, id));
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
        if let Some(last) = last {
            // The newest `last` messages are those after the offset just before the oldest of
            // them: a `since` (without an epoch, it is this history's own offset).
            let last = history::page_limit(&self.app, Some(last)).min(self.app.config.max_replay);
            epoch = None;
            since = match self.app.broker.last_start(&channel, last).await {
                Ok(start) => start,
                Err(e) => {
                    let (code, _, message) = history::broker_failure(&e, &channel);
                    return self.send_error(code, message, reference);
                }
            };
        }
        let (replay, start) = match replay::begin(
            &self.app,
            &channel,
            since,
            epoch.as_slice(),
            &self.subscriber,
        )
        .await
        {
            Ok(begun) => begun,
            Err(BrokerError::Unavailable) => {
                return self.send_error(
                    ErrorCode::Unavailable,
                    "message broker unavailable, retry later",
                    reference,
                );
            }
            Err(BrokerError::Internal(e)) => {
                warn!(details.client = %self.client_id(), details.channel = %channel, details.reason = %e, "subscribe failed");
                return self.send_error(ErrorCode::Internal, "subscribe failed", reference);
            }
        };
        self.send_frame(replay::subscribed(&self.app, &channel, &start));
        debug!(details.client = %self.client_id(), details.channel = %channel, details.recovered = start.count, "subscribed");
        self.channels.insert(channel.clone());
        if let Err(e) = replay.run(&self.app).await {
            replay::close_after(&self.app, &self.subscriber, &e, &channel);
            return;
        }
        self.joined(&channel).await;
    }

    /// Whether the token lets this connection subscribe to `channel` (see
    /// [`crate::auth::may_subscribe`]: a personal channel is its user's alone).
    fn may_subscribe(&self, channel: &str) -> bool {
        crate::auth::may_subscribe(
            &self.subscribe,
            self.subscriber.control.tag().user.as_deref(),
            channel,
        )
    }

    /// Whether this connection may subscribe to the channel, or read its history or presence:
    /// its token allows the channel, and it has a user where the namespace wants one.
    fn may_read(&self, channel: &str) -> Result<(), (ErrorCode, &'static str)> {
        if self.app.namespaces.of(channel).private {
            // Only through a subscription, which needed a token.
            let subscribed = self.channels.contains(channel)
                && self.app.hub.is_subscribed(channel, self.subscriber.id);
            return match subscribed {
                true => Ok(()),
                false => Err((ErrorCode::Forbidden, NEEDS_TOKEN)),
            };
        }
        if !self.may_subscribe(channel) {
            return Err((
                ErrorCode::Forbidden,
                "your token does not allow this channel",
            ));
        }
        if !self
            .app
            .namespaces
            .of(channel)
            .may_subscribe(self.subscriber.control.tag().user.is_some())
        {
            return Err((ErrorCode::Forbidden, NO_ANONYMOUS));
        }
        Ok(())
    }

    /// This connection's presence entry.
    fn presence_entry(&self) -> Entry {
        Entry::of_session(self.subscriber.control.tag())
    }

    /// The subscription to `channel` is live: enter its presence and announce the join.
    async fn joined(&self, channel: &str) {
        presence::join(&self.app, channel, || self.presence_entry()).await;
    }

    /// The subscription to `channel` ended: leave its presence and announce the leave.
    fn left(&self, channel: &str) {
        presence::leave(&self.app, channel, || self.presence_entry());
    }

    /// Answers `presence` (or, with `stats`, `presence_stats`): needs the right to subscribe
    /// to the channel and presence in its namespace. The list is cut at `--max-presence`
    /// entries and at half the send queue's bytes (`truncated`).
    async fn presence(&mut self, channel: String, stats: bool, reference: Option<&str>) {
        if let Err((code, message)) = self.may_read(&channel) {
            return self.send_error(code, message, reference);
        }
        if !self.app.namespaces.of(&channel).presence {
            return self.send_error(
                ErrorCode::NotAvailable,
                "presence is not enabled for this channel's namespace",
                reference,
            );
        }
        let failed = |e: BrokerError| match e {
            BrokerError::Unavailable => (
                ErrorCode::Unavailable,
                "message broker unavailable, retry later",
            ),
            BrokerError::Internal(e) => {
                warn!(details.channel = %channel, details.reason = %e, "presence read failed");
                (ErrorCode::Internal, "presence read failed")
            }
        };
        if stats {
            match self.app.broker.presence_stats(&channel).await {
                Ok(stats) => self.send_frame(ServerFrame::PresenceStats {
                    channel: &channel,
                    reference,
                    clients: stats.clients,
                    users: stats.users,
                }),
                Err(e) => {
                    let (code, message) = failed(e);
                    self.send_error(code, message, reference);
                }
            }
            return;
        }
        let max = usize::try_from(self.app.config.max_presence).unwrap_or(usize::MAX);
        let mut answer = match self.app.broker.presence(&channel, max).await {
            Ok(answer) => answer,
            Err(e) => {
                let (code, message) = failed(e);
                return self.send_error(code, message, reference);
            }
        };
        let budget = history::page_bytes(&self.app).saturating_sub(256 + channel.len());
        let mut bytes = 0;
        let fits = answer
            .entries
            .iter()
            .take_while(|e| {
                bytes += e.len() + 1;
                bytes <= budget
            })
            .count();
        answer.entries.truncate(fits);
        let Ok(clients) = RawValue::from_string(presence::clients_json(&answer.entries)) else {
            warn!(details.channel = %channel, "unreadable presence entry");
            return self.send_error(ErrorCode::Internal, "presence read failed", reference);
        };
        let frame = ServerFrame::Presence {
            channel: &channel,
            reference,
            clients: &clients,
            total: answer.total,
            truncated: answer.entries.len() < answer.total,
        }
        .to_json();
        self.queue_large(frame).await;
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
        self.left(channel);
        self.send_frame(ServerFrame::Unsubscribed { channel });
    }

    /// Checks a publish (token, rate) and builds the broker request and its `chat.publish` span.
    fn publish_request(
        &mut self,
        channel: String,
        data: Box<RawValue>,
    ) -> Result<(PublishRequest, Span), (ErrorCode, &'static str)> {
        #[cfg(debug_assertions)]
        if channel == DEBUG_PANIC_CHANNEL {
            panic!("fault injected through {DEBUG_PANIC_CHANNEL}");
        }
        if !self.publish.allows(&channel) {
            return Err((
                ErrorCode::Forbidden,
                "your token does not allow this channel",
            ));
        }
        if !self.app.namespaces.of(&channel).client_publish {
            return Err((ErrorCode::Forbidden, NO_CLIENT_PUBLISH));
        }
        if !self.app.rates.allow(&self.rate_key) {
            return Err((ErrorCode::RateLimited, "publishing too fast, slow down"));
        }
        let from = self
            .subscriber
            .control
            .tag()
            .user
            .as_deref()
            .map_or_else(|| self.client_id().to_string(), str::to_owned);
        let span = telemetry::publish_span(&channel);
        let request = PublishRequest {
            channel,
            from,
            ts_us: now_us(),
            data,
            trace: telemetry::trace_context(&span),
        };
        Ok((request, span))
    }
}

/// Publishes `request` (inside `span`, its `chat.publish`) and yields the answer for the
/// client: `ack`, or an `error` frame. Runs inside the frame's `chat.receive` span.
async fn publish_reply(
    app: Arc<AppState>,
    request: PublishRequest,
    reference: Option<String>,
    client_id: ClientId,
    started: Instant,
    span: Span,
) -> Outbound {
    let label = app.metrics.namespace_label(&request.channel);
    let reference = reference.as_deref();
    let error = |code: ErrorCode, message: &str| {
        app.metrics.error(code);
        telemetry::received(code.as_str());
        debug!(details.client = %client_id, details.error_code = code.as_str(), "refused client frame");
        ServerFrame::Error {
            code: code.as_str(),
            message,
            reference,
        }
        .to_json()
    };
    let published = app.broker.publish(request).instrument(span.clone()).await;
    telemetry::published(&span, published.as_ref().ok().copied());
    let frame = match published {
        Ok(offset) => {
            app.metrics.published(&label);
            telemetry::received("published");
            debug!(details.client = %client_id, details.offset = %offset, "published");
            ServerFrame::Ack { reference, offset }.to_json()
        }
        Err(BrokerError::Unavailable) => error(
            ErrorCode::Unavailable,
            "message broker unavailable, not published",
        ),
        Err(BrokerError::Internal(e)) => {
            warn!(details.client = %client_id, details.reason = %e, "publish failed");
            error(ErrorCode::Internal, "publish failed")
        }
    };
    app.metrics
        .message_duration
        .observe(started.elapsed().as_secs_f64());
    Outbound::Frame(Utf8Bytes::from(frame))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output_size<A, B, F>(_: fn(A, B) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Every idle connection keeps this future (in its tokio task, beside axum's upgrade
    /// state); it was 1696 bytes when `run` was an `async fn`; the server API and presence
    /// took it from 1120 to 1184 (issue 15's bisect), and keeping who the session is in its
    /// control's [`SessionTag`] brought it to 1056 in test builds. A failure here means
    /// per-connection memory grew: box what is rarely needed instead.
    #[test]
    fn the_connection_future_stays_small() {
        let size = output_size(run);
        assert!(size <= 1088, "a connection's future is {size} bytes");
    }
}
