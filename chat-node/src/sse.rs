//! `GET /sse?channel=a&channel=b`: Server-Sent Events, one way. Each message is an event
//! `message` with `id` = its offset and `data` = the same JSON as the WebSocket `message`
//! frame; `Last-Event-ID` (or `?since=`) resumes every listed channel after that offset.
//!
//! Each listed channel first gets an event `subscribed` (no `id`, so the browser's
//! `Last-Event-ID` stays the last message's) whose `data` is the WebSocket `subscribed` frame:
//! the channel's offset, `recovered`, `gap` and `epoch`. `?epoch=` (repeatable) names the
//! epochs the `since` offset came from: a channel whose epoch is none of them gets a gap.
//!
//! When the server ends a stream (token expired, drain, slow consumer) its last event is
//! `close` with `data` `{"code":<WebSocket close code>,"reason":"…"}` (e.g. 1008
//! `token_expired`), so an SSE client learns what a WebSocket client learns from its close
//! frame.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, stream};

use crate::broker::{BrokerError, MAX_EPOCH_LEN};
use crate::channel;
use crate::fanout::{Outbound, SessionControl, SessionTag, Subscriber};
use crate::handshake::{self, Refusal, admit_traced};
use crate::metrics::reasons;
use crate::offset::Offset;
use crate::presence::{self, Entry};
use crate::protocol::{ErrorCode, close};
use crate::replay::{self, Replay, detach};
use crate::server::{AppState, SessionRegistration};

struct SseQuery {
    channels: Vec<String>,
    since: Option<String>,
    epochs: Vec<String>,
    token: Option<String>,
}

fn parse_query(raw: Option<&str>) -> SseQuery {
    let mut q = SseQuery {
        channels: Vec::new(),
        since: None,
        epochs: Vec::new(),
        token: None,
    };
    for (key, value) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
        match key.as_ref() {
            "channel" => q.channels.push(value.into_owned()),
            "since" => q.since = Some(value.into_owned()),
            "epoch" => q.epochs.push(value.into_owned()),
            "token" => q.token = Some(value.into_owned()),
            _ => {}
        }
    }
    q
}

/// Everything an SSE stream holds; dropping it (client gone or close) unsubscribes.
struct SseState {
    app: Arc<AppState>,
    subscriber: Subscriber,
    channels: Vec<String>,
    /// The channels it joined (presence, `join`/`leave`; filled as each replay goes live):
    /// left again on drop.
    joined: Joined,
    _registration: SessionRegistration,
    _task: tokio_util::task::task_tracker::TaskTrackerToken,
}

impl Drop for SseState {
    fn drop(&mut self) {
        let tag = self.subscriber.control.tag();
        let joined = std::mem::take(&mut *self.joined.lock().unwrap_or_else(|e| e.into_inner()));
        for channel in &joined {
            // One the server API unsubscribed it from has been left already.
            if self.app.hub.is_subscribed(channel, self.subscriber.id) {
                presence::leave(&self.app, channel, || Entry::of_session(tag));
            }
        }
        for channel in &self.channels {
            detach(&self.app, channel, self.subscriber.id);
        }
        let reason = self
            .subscriber
            .control
            .closing()
            .map_or(reasons::CLIENT_CLOSE, |(_, r)| r);
        self.app.metrics.disconnection(reason);
    }
}

pub async fn events(
    State(app): State<Arc<AppState>>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response, Refusal> {
    let query = parse_query(raw.as_deref());
    let bad = |code: ErrorCode, message: &str| {
        app.metrics.error(code);
        Refusal::from_error(StatusCode::BAD_REQUEST, code, message)
    };
    if query.channels.is_empty() {
        return Err(bad(ErrorCode::BadRequest, "give at least one ?channel="));
    }
    if query.channels.len() > app.config.max_subscriptions {
        return Err(bad(ErrorCode::TooManySubscriptions, "too many channels"));
    }
    if query.epochs.len() > app.config.max_subscriptions
        || query.epochs.iter().any(|e| e.len() > MAX_EPOCH_LEN)
    {
        return Err(bad(ErrorCode::BadRequest, "too many or too long ?epoch="));
    }
    if let Some(c) = query.channels.iter().find(|c| !channel::is_valid(c)) {
        return Err(bad(
            ErrorCode::BadChannel,
            &format!("bad channel name {c:?}"),
        ));
    }
    let since_text = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or(query.since);
    let since = match since_text
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        None => None,
        Some(s) => Some(
            s.parse::<Offset>()
                .map_err(|e| bad(ErrorCode::BadRequest, &e.to_string()))?,
        ),
    };
    let (identity, _) = admit_traced(&app, &headers, query.token.as_deref(), "sse")?;
    handshake::may_stream(&app, &identity, query.channels.iter().map(String::as_str))?;

    let user_slot = handshake::user_slot(&app, &identity)?;
    let tag = SessionTag {
        client: SessionTag::new_client_id(),
        user: identity.subject.as_deref().map(Box::from),
        token_id: identity.token_id.as_deref().map(Box::from),
        info: identity.info.clone(),
        issued_at: identity.issued_at.unwrap_or(0),
        user_slot,
    };
    let control = Arc::new(SessionControl::tagged(
        app.config.send_queue.max(2),
        app.config.send_queue_bytes,
        tag,
    ));
    let subscriber = Subscriber::new(control.clone());
    let mut state = SseState {
        _registration: app.sessions.register(control.clone()),
        _task: app.tracker.token(),
        app: app.clone(),
        subscriber,
        channels: Vec::new(),
        joined: Joined::default(),
    };
    let mut channels = query.channels;
    channels.sort();
    channels.dedup();
    let mut replays = Vec::with_capacity(channels.len());
    for name in channels {
        // Listed before the subscribe starts: a client that goes away while it waits on the
        // broker drops this future, and `state`'s drop must then undo the half-made
        // subscription too (hub entry and broker subscription).
        state.channels.push(name.clone());
        match replay::begin(&app, &name, since, &query.epochs, &state.subscriber).await {
            Ok((replay, start)) => {
                let subscribed = replay::subscribed(&app, &name, &start);
                // Queued before any message of the channel: its live ones wait in the
                // pending buffer until the replay is done.
                let _ = state
                    .subscriber
                    .control
                    .push(Outbound::Frame(subscribed.to_json().into()));
                replays.push(replay);
            }
            Err(e) => {
                let code = match e {
                    BrokerError::Unavailable => ErrorCode::Unavailable,
                    BrokerError::Internal(_) => ErrorCode::Internal,
                };
                app.metrics.error(code);
                return Err(Refusal::from_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    code,
                    e.to_string(),
                ));
            }
        }
    }
    app.metrics.connection("connected");

    let keep_alive = KeepAlive::new().interval(app.config.heartbeat_interval);
    let expiry = identity.expiry();
    // The replays run inside the stream, paced by the client reading its events.
    let replaying = Some(run_replays(app.clone(), replays, state.joined.clone()));
    let events = stream::unfold(Some((state, replaying)), move |open| async move {
        let (state, mut replaying) = open?;
        let control = state.subscriber.control.clone();
        loop {
            let expired = async {
                match expiry {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let next = tokio::select! {
                biased;
                next = control.next() => next,
                () = expired => {
                    control.close(close::POLICY, reasons::TOKEN_EXPIRED);
                    None
                }
                () = async { replaying.as_mut().expect("guarded").await }, if replaying.is_some() => {
                    replaying = None;
                    continue;
                }
            };
            match next {
                Some(Outbound::Message(delivery)) => {
                    let mut event = Event::default().event("message");
                    // A message without history has no offset: no `id`, so the browser's
                    // `Last-Event-ID` stays the last real offset.
                    if !delivery.offset.is_zero() {
                        event = event.id(delivery.offset.to_string());
                    }
                    let event = event.data(delivery.frame.as_str());
                    delivery.delivered.inc();
                    return Some((Ok::<Event, Infallible>(event), Some((state, replaying))));
                }
                // `subscribed`, `join`, `leave` and `unsubscribed` (the server API's): the
                // event is named after the frame's type.
                Some(Outbound::Frame(frame)) => {
                    let event = Event::default()
                        .event(frame_type(&frame))
                        .data(frame.as_str());
                    return Some((Ok(event), Some((state, replaying))));
                }
                Some(Outbound::Ping) => continue,
                // Closing: one last `close` event says why (the WebSocket close code and
                // reason), then the stream ends; `state` is dropped right here, unsubscribing.
                None => {
                    let (code, reason) = control.closing()?;
                    let event = Event::default()
                        .event("close")
                        .data(serde_json::json!({"code": code, "reason": reason}).to_string());
                    return Some((Ok(event), None));
                }
            }
        }
    });
    Ok(Sse::new(events).keep_alive(keep_alive).into_response())
}

/// The `type` of a frame chat-node queued (its own JSON, so it parses).
fn frame_type(frame: &str) -> &'static str {
    #[derive(serde::Deserialize)]
    struct Typed<'a> {
        #[serde(borrow, rename = "type")]
        kind: &'a str,
    }
    match serde_json::from_str::<Typed>(frame).map(|t| t.kind) {
        Ok("join") => "join",
        Ok("leave") => "leave",
        Ok("unsubscribed") => "unsubscribed",
        _ => "subscribed",
    }
}

/// Replays each channel's history in turn (closing the stream when one fails); once a
/// channel's replay is done its subscription is live, and the stream joins the channel
/// (presence, `join`), as a WebSocket subscription does after its `subscribed`.
fn run_replays(app: Arc<AppState>, replays: Vec<Replay>, joined: Joined) -> BoxFuture<'static, ()> {
    async move {
        for replay in replays {
            let subscriber = replay.subscriber().clone();
            let channel = replay.channel().to_owned();
            if let Err(e) = replay.run(&app).await {
                replay::close_after(&app, &subscriber, &e, &channel);
                return;
            }
            // Listed first: the stream may end while the join is written.
            joined
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(channel.clone());
            presence::join(&app, &channel, || {
                Entry::of_session(subscriber.control.tag())
            })
            .await;
        }
    }
    .boxed()
}

/// The channels an SSE stream joined, shared by its replays and its state.
type Joined = Arc<std::sync::Mutex<Vec<String>>>;
