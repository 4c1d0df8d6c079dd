//! `GET /poll`: long-polling, for networks where neither a WebSocket nor a streaming response
//! gets through (proxies that buffer whole responses). One request per round: it answers at
//! once when messages after the client's offset are in history, else it waits up to `wait`
//! for the next live ones, then answers with what it has and where to continue.
//!
//! A poll is a short-lived subscription built from the same parts as an SSE stream: it
//! subscribes *pending* with [`replay::begin`] (so the `since`/`epoch` rules, gaps included,
//! are those of a subscribe), reads the history after the offset as one bounded page, and
//! only when there is none turns live and waits. Subscribing before reading means a message
//! published in between is either in the page or in the live buffer, never in neither; the
//! hub's `after` offset drops it from the live side when the page had it.
//!
//! Bounds: `--max-polls` waiting on the node (503) and `--max-polls-per-client` per token
//! subject or client address (429), taken before anything is subscribed; `wait` capped at
//! `--max-poll-wait`; a query of at most [`MAX_QUERY_BYTES`] with at most
//! `--max-subscriptions` channels; an answer of at most `--max-history-page` messages and
//! about `--send-queue-bytes` bytes (always at least one message, so a client makes progress).
//! A poll holds its client socket, so the node's connection limit counts it too.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use prometheus_client::metrics::gauge::Gauge;
use serde::{Deserialize, Serialize};

use crate::broker::{BrokerError, MAX_EPOCH_LEN};
use crate::channel;
use crate::fanout::{Delivery, Outbound, SessionControl, SessionTag, Subscriber};
use crate::handshake::{self, ClientAddress, Refusal, admit_traced};
use crate::metrics::poll_results;
use crate::offset::Offset;
use crate::protocol::ErrorCode;
use crate::rates::RateKey;
use crate::replay::{self, detach};
use crate::server::{AppState, SessionRegistration};

/// Longest query string accepted (a full `--max-subscriptions` list of channels with their
/// offsets and epochs fits); longer is refused with 400 before it is parsed.
pub const MAX_QUERY_BYTES: usize = 32 * 1024;

/// Long polls waiting now: on the node and per client.
pub struct PollSlots {
    max: usize,
    per_client: usize,
    waiting: Mutex<Waiting>,
}

#[derive(Default)]
struct Waiting {
    total: usize,
    /// Only clients with a waiting poll have an entry (at most `max` entries).
    by_client: HashMap<RateKey, usize>,
}

/// Which limit refused a poll.
#[derive(Debug, PartialEq, Eq)]
pub enum SlotRefusal {
    /// `--max-polls`.
    Node,
    /// `--max-polls-per-client`.
    Client,
}

/// A waiting poll's place; dropping it frees the place.
pub struct PollSlot {
    slots: Arc<PollSlots>,
    key: RateKey,
}

impl PollSlots {
    pub fn new(max: usize, per_client: usize) -> Arc<Self> {
        Arc::new(PollSlots {
            max: max.max(1),
            per_client: per_client.max(1),
            waiting: Mutex::new(Waiting::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a place for a poll of `key`, unless the node or the client is at its limit.
    pub fn try_take(self: &Arc<Self>, key: RateKey) -> Result<PollSlot, SlotRefusal> {
        let mut waiting = self.lock();
        if waiting.total >= self.max {
            return Err(SlotRefusal::Node);
        }
        let mine = waiting.by_client.get(&key).copied().unwrap_or(0);
        if mine >= self.per_client {
            return Err(SlotRefusal::Client);
        }
        waiting.total += 1;
        waiting.by_client.insert(key.clone(), mine + 1);
        drop(waiting);
        Ok(PollSlot {
            slots: self.clone(),
            key,
        })
    }

    /// Polls holding a place now.
    pub fn waiting(&self) -> usize {
        self.lock().total
    }
}

impl Drop for PollSlot {
    fn drop(&mut self) {
        let mut waiting = self.slots.lock();
        waiting.total -= 1;
        if let Some(n) = waiting.by_client.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                waiting.by_client.remove(&self.key);
            }
        }
    }
}

/// What a poll asks for.
#[derive(Debug, Default, PartialEq)]
struct PollQuery {
    /// Each channel with its own offset (`channel=name@offset`), if it gave one.
    channels: Vec<(String, Option<Offset>)>,
    /// The offset for channels without their own.
    since: Option<Offset>,
    epochs: Vec<String>,
    wait: Option<Duration>,
    token: Option<String>,
}

/// A `wait`: whole seconds (`25`) or a duration (`500ms`, `25s`).
fn parse_wait(text: &str) -> Result<Duration, String> {
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text
            .parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|_| "`wait` is too long".to_owned());
    }
    humantime::parse_duration(text)
        .map_err(|_| "`wait` must be seconds (25) or a duration (500ms, 25s)".to_owned())
}

fn parse_offset(text: &str, name: &str) -> Result<Option<Offset>, String> {
    match text.trim() {
        "" => Ok(None),
        t => t
            .parse::<Offset>()
            .map(Some)
            .map_err(|e| format!("bad `{name}`: {e}")),
    }
}

fn parse_query(raw: &str, max_channels: usize) -> Result<PollQuery, (ErrorCode, String)> {
    let bad = |m: String| (ErrorCode::BadRequest, m);
    if raw.len() > MAX_QUERY_BYTES {
        return Err(bad(format!("query longer than {MAX_QUERY_BYTES} bytes")));
    }
    let mut q = PollQuery::default();
    for (key, value) in form_urlencoded::parse(raw.as_bytes()) {
        match key.as_ref() {
            "channel" => {
                // `@` is not a channel character, so it cannot be part of the name.
                let (name, offset) = match value.split_once('@') {
                    Some((name, offset)) => {
                        (name, parse_offset(offset, "channel@offset").map_err(bad)?)
                    }
                    None => (value.as_ref(), None),
                };
                if !channel::is_valid(name) {
                    return Err((
                        ErrorCode::BadChannel,
                        "channel must be 1-128 characters of A-Z a-z 0-9 _ - . : /".to_owned(),
                    ));
                }
                if q.channels.iter().any(|(c, _)| c == name) {
                    continue;
                }
                if q.channels.len() >= max_channels {
                    return Err((
                        ErrorCode::TooManySubscriptions,
                        format!("at most {max_channels} channels per poll"),
                    ));
                }
                q.channels.push((name.to_owned(), offset));
            }
            "since" => q.since = parse_offset(&value, "since").map_err(bad)?,
            "epoch" => {
                if value.len() > MAX_EPOCH_LEN || q.epochs.len() >= max_channels {
                    return Err(bad("too many or too long `epoch`".to_owned()));
                }
                q.epochs.push(value.into_owned());
            }
            "wait" => q.wait = Some(parse_wait(&value).map_err(bad)?),
            "token" => q.token = Some(value.into_owned()),
            _ => {}
        }
    }
    if q.channels.is_empty() {
        return Err(bad("give at least one ?channel=".to_owned()));
    }
    Ok(q)
}

/// Where a channel's next poll continues.
#[derive(Serialize)]
struct Cursor {
    offset: Offset,
    epoch: String,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    gap: bool,
}

/// The answer's fields besides `messages`.
#[derive(Serialize)]
struct Tail<'a> {
    offset: Offset,
    #[serde(skip_serializing_if = "Option::is_none")]
    epoch: Option<&'a str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    gap: bool,
    channels: &'a BTreeMap<String, Cursor>,
}

/// The messages of one answer, bounded in count and bytes.
struct Batch {
    frames: Vec<Arc<Delivery>>,
    bytes: usize,
    max_messages: usize,
    max_bytes: usize,
    /// The newest offset in the batch.
    newest: Option<Offset>,
}

impl Batch {
    fn is_full(&self) -> bool {
        self.frames.len() >= self.max_messages || self.bytes >= self.max_bytes
    }

    /// Adds a message unless it would pass the byte bound (the first always fits).
    fn add(&mut self, delivery: Arc<Delivery>) -> bool {
        let size = delivery.frame.len();
        if !self.frames.is_empty() && self.bytes + size > self.max_bytes {
            return false;
        }
        self.bytes += size;
        self.newest = Some(
            self.newest
                .map_or(delivery.offset, |n| n.max(delivery.offset)),
        );
        self.frames.push(delivery);
        true
    }
}

/// A poll's subscriptions; dropping it (answered, or the client went away) unsubscribes.
struct PollState {
    app: Arc<AppState>,
    subscriber: Subscriber,
    channels: Vec<String>,
    _registration: SessionRegistration,
    _task: tokio_util::task::task_tracker::TaskTrackerToken,
}

impl Drop for PollState {
    fn drop(&mut self) {
        for channel in &self.channels {
            detach(&self.app, channel, self.subscriber.id);
        }
    }
}

/// `chat_long_polls_waiting` counts a poll while this lives.
struct LiveGauge<'a>(&'a Gauge);

impl<'a> LiveGauge<'a> {
    fn enter(gauge: &'a Gauge) -> Self {
        gauge.inc();
        LiveGauge(gauge)
    }
}

impl Drop for LiveGauge<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[derive(Deserialize)]
struct FrameHead<'a> {
    #[serde(borrow)]
    channel: &'a str,
}

/// `GET /poll?channel=a&channel=b@<offset>&since=<offset>&epoch=…&wait=25s`.
pub async fn poll(
    State(app): State<Arc<AppState>>,
    RawQuery(raw): RawQuery,
    ClientAddress(address): ClientAddress,
    headers: HeaderMap,
) -> Result<Response, Refusal> {
    let refused = |refusal: Refusal| {
        app.metrics.long_poll(poll_results::REFUSED);
        refusal
    };
    let query = parse_query(raw.as_deref().unwrap_or(""), app.config.max_subscriptions).map_err(
        |(code, message)| {
            app.metrics.error(code);
            refused(Refusal::from_error(StatusCode::BAD_REQUEST, code, message))
        },
    )?;
    let (identity, _) =
        admit_traced(&app, &headers, query.token.as_deref(), "poll").map_err(refused)?;
    handshake::may_stream(
        &app,
        &identity,
        query.channels.iter().map(|(c, _)| c.as_str()),
    )
    .map_err(refused)?;
    let _slot = app
        .polls
        .try_take(RateKey::of(&identity, address))
        .map_err(|limit| {
            app.metrics.long_poll(poll_results::LIMITED);
            match limit {
                SlotRefusal::Node => Refusal::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "at_capacity",
                    "node is at its long-poll limit (--max-polls), retry later",
                ),
                SlotRefusal::Client => {
                    app.metrics.error(ErrorCode::RateLimited);
                    Refusal::from_error(
                        StatusCode::TOO_MANY_REQUESTS,
                        ErrorCode::RateLimited,
                        "too many long polls of this client at once (--max-polls-per-client)",
                    )
                }
            }
        })?;
    let wait = query.wait.map_or(app.config.max_poll_wait, |w| {
        w.min(app.config.max_poll_wait)
    });
    // A poll ends by its token's expiry, like a WebSocket or an SSE stream: the next one is
    // then refused and the client fetches a fresh token.
    let wait = identity.expiry().map_or(wait, |at| {
        wait.min(at.saturating_duration_since(tokio::time::Instant::now()))
    });

    let tag = SessionTag {
        client: 0,
        user: identity.subject.as_deref().map(Box::from),
        token_id: identity.token_id.as_deref().map(Box::from),
        info: None,
        issued_at: identity.issued_at.unwrap_or(0),
        user_slot: None,
    };
    let control = Arc::new(SessionControl::tagged(
        app.config.send_queue.max(2),
        app.config.send_queue_bytes,
        tag,
    ));
    let subscriber = Subscriber::new(control.clone());
    let mut state = PollState {
        _registration: app.sessions.register(control.clone()),
        _task: app.tracker.token(),
        app: app.clone(),
        subscriber,
        channels: Vec::new(),
    };
    let mut batch = Batch {
        frames: Vec::new(),
        bytes: 0,
        max_messages: usize::try_from(app.config.max_history_page).unwrap_or(usize::MAX),
        max_bytes: app.config.send_queue_bytes.max(1),
        newest: None,
    };
    let mut cursors = BTreeMap::new();
    let mut gap = false;
    for (name, own_since) in &query.channels {
        let since = own_since.or(query.since);
        // Listed first: a client that goes away while this waits on the broker drops the
        // future, and `state`'s drop undoes the half-made subscription.
        state.channels.push(name.clone());
        let (_, start) = replay::begin(&app, name, since, &query.epochs, &state.subscriber)
            .await
            .map_err(|e| {
                let code = match e {
                    BrokerError::Unavailable => ErrorCode::Unavailable,
                    BrokerError::Internal(_) => ErrorCode::Internal,
                };
                app.metrics.error(code);
                refused(Refusal::from_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    code,
                    e.to_string(),
                ))
            })?;
        let mut cursor = Cursor {
            offset: start.newest,
            epoch: start.epoch,
            gap: start.gap,
        };
        gap |= start.gap;
        if let (Some(since), true) = (since, start.count > 0) {
            // What follows `since` is in history: it is this poll's answer (as much as fits;
            // the rest comes with the next poll, which then answers at once too).
            cursor.offset = since;
            let room = batch.max_messages.saturating_sub(batch.frames.len());
            if room > 0 && !batch.is_full() {
                let page = app
                    .broker
                    .history_page(name, since, room.min(start.count))
                    .await
                    .map_err(|e| {
                        let (code, status, message) = crate::history::broker_failure(&e, name);
                        refused(Refusal::from_error(status, code, message))
                    })?;
                if page.trimmed {
                    // Trimmed between counting and reading: the same gap a subscribe reports.
                    cursor = Cursor {
                        gap: true,
                        ..cursor
                    };
                    cursor.offset = start.newest;
                    gap = true;
                } else {
                    for message in &page.messages {
                        if !batch.add(app.hub.history_delivery(message)) {
                            break;
                        }
                        cursor.offset = message.offset;
                    }
                }
            }
        }
        cursors.insert(name.clone(), cursor);
    }

    let result = if !batch.frames.is_empty() {
        poll_results::MESSAGES
    } else if gap {
        poll_results::GAP
    } else {
        wait_live(&app, &state, &mut cursors, &mut batch, wait).await
    };
    drop(state);
    app.metrics.long_poll(result);
    for delivery in &batch.frames {
        delivery.delivered.inc();
        if delivery.live {
            let latency_us = crate::broker::now_us().saturating_sub(delivery.ts_us);
            app.metrics
                .delivery_latency
                .observe(latency_us as f64 / 1e6);
        }
    }
    let offset = batch
        .newest
        .or(query.since)
        .or_else(|| cursors.values().map(|c| c.offset).max())
        .unwrap_or(Offset::ZERO);
    let single_epoch = match query.channels.as_slice() {
        [(only, _)] => cursors.get(only).map(|c| c.epoch.as_str()),
        _ => None,
    };
    let tail = Tail {
        offset,
        epoch: single_epoch,
        gap,
        channels: &cursors,
    };
    let tail = serde_json::to_string(&tail).unwrap_or_else(|_| String::from("{}"));
    let mut body = String::with_capacity(batch.bytes + batch.frames.len() + tail.len() + 16);
    body.push_str("{\"messages\":[");
    for (i, delivery) in batch.frames.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(delivery.frame.as_str());
    }
    body.push_str("],");
    body.push_str(tail.strip_prefix('{').unwrap_or("}"));
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// Turns the poll's subscriptions live and waits up to `wait` for messages; returns how the
/// poll ended. Once one message is there, whatever else is already queued joins it (up to the
/// batch's bounds; the rest stays in history for the next poll).
async fn wait_live(
    app: &AppState,
    state: &PollState,
    cursors: &mut BTreeMap<String, Cursor>,
    batch: &mut Batch,
    wait: Duration,
) -> &'static str {
    let id = state.subscriber.id;
    for (name, cursor) in cursors.iter() {
        if app.hub.go_live(name, id, cursor.offset).is_err() {
            // Live messages overflowed the buffer while subscribing: they are in history,
            // where the next poll (answered at once) reads them.
            return poll_results::CLOSED;
        }
    }
    // Counted from here: a poll on the gauge receives every message published from now on.
    let _live = LiveGauge::enter(&app.metrics.long_polls_waiting);
    let control = &state.subscriber.control;
    let mut take = |delivery: Arc<Delivery>, batch: &mut Batch| {
        let Ok(head) = serde_json::from_str::<FrameHead<'_>>(delivery.frame.as_str()) else {
            return;
        };
        let Some(cursor) = cursors.get_mut(head.channel) else {
            return;
        };
        if delivery.offset <= cursor.offset {
            return;
        }
        let offset = delivery.offset;
        if batch.add(delivery) {
            cursor.offset = offset;
        }
    };
    let deadline = tokio::time::sleep(wait);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            next = control.next() => match next {
                Some(Outbound::Message(delivery)) => {
                    take(delivery, batch);
                    if !batch.frames.is_empty() {
                        break;
                    }
                }
                // `join`/`leave` frames and pings are not for polls.
                Some(Outbound::Frame(_) | Outbound::Ping) => {}
                None => return poll_results::CLOSED,
            },
            () = &mut deadline => return poll_results::TIMEOUT,
        }
    }
    while !batch.is_full() {
        match control.pop() {
            Some(Outbound::Message(delivery)) => take(delivery, batch),
            Some(_) => {}
            None => break,
        }
    }
    poll_results::MESSAGES
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    #[test]
    fn queries() {
        let q = parse_query(
            "channel=a&channel=chat:b@5-1&since=3-0&epoch=e1&wait=2&token=t&x=y",
            8,
        )
        .unwrap();
        assert_eq!(
            q.channels,
            vec![
                ("a".into(), None),
                ("chat:b".into(), Some(Offset::new(5, 1)))
            ]
        );
        assert_eq!(q.since, Some(Offset::new(3, 0)));
        assert_eq!(q.epochs, vec!["e1".to_owned()]);
        assert_eq!(q.wait, Some(Duration::from_secs(2)));
        assert_eq!(q.token.as_deref(), Some("t"));
        assert_eq!(
            parse_query("channel=a&wait=500ms", 8).unwrap().wait,
            Some(Duration::from_millis(500))
        );
        let code = |raw: &str| parse_query(raw, 2).unwrap_err().0;
        assert_eq!(code(""), ErrorCode::BadRequest);
        assert_eq!(code("channel=a&wait=forever"), ErrorCode::BadRequest);
        assert_eq!(
            code("channel=a&wait=99999999999999999999999"),
            ErrorCode::BadRequest
        );
        assert_eq!(code("channel=a&since=garbage"), ErrorCode::BadRequest);
        assert_eq!(code("channel=a@x-y"), ErrorCode::BadRequest);
        assert_eq!(code("channel=a%20b"), ErrorCode::BadChannel);
        assert_eq!(
            code("channel=a&channel=b&channel=c"),
            ErrorCode::TooManySubscriptions
        );
        assert_eq!(
            code(&format!("channel=a&epoch={}", "e".repeat(65))),
            ErrorCode::BadRequest
        );
        let long = format!("channel=a&pad={}", "x".repeat(MAX_QUERY_BYTES));
        assert_eq!(code(&long), ErrorCode::BadRequest);
        // A channel named twice is polled once.
        assert_eq!(
            parse_query("channel=a&channel=a", 1)
                .unwrap()
                .channels
                .len(),
            1
        );
    }

    #[test]
    fn slots_are_bounded_per_node_and_per_client() {
        let slots = PollSlots::new(3, 2);
        let client = |n: u8| RateKey::Address(IpAddr::V4(Ipv4Addr::new(10, 0, 0, n)));
        let a1 = slots.try_take(client(1)).unwrap();
        let _a2 = slots.try_take(client(1)).unwrap();
        assert_eq!(slots.try_take(client(1)).err(), Some(SlotRefusal::Client));
        let _b1 = slots.try_take(client(2)).unwrap();
        assert_eq!(slots.try_take(client(3)).err(), Some(SlotRefusal::Node));
        assert_eq!(slots.waiting(), 3);
        drop(a1);
        let _c1 = slots.try_take(client(3)).unwrap();
        assert_eq!(slots.lock().by_client.len(), 3);
        drop(_a2);
        assert_eq!(
            slots.lock().by_client.len(),
            2,
            "an emptied client is forgotten"
        );
    }
}
