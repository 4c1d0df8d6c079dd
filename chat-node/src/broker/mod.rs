//! The brokers behind one small trait: [`memory::MemoryBroker`] (one node, no Redis) and
//! [`redis::RedisBroker`] (many nodes through Redis Pub/Sub + Streams). A broker appends
//! messages to a channel's history, carries them to every node, and hands the ones for local
//! subscribers to the [`crate::fanout::Hub`].

pub mod envelope;
pub mod link;
pub mod live;
pub mod memory;
pub mod redis;
pub mod redis_presence;
pub mod sentinel;
pub mod target;

use std::sync::Arc;

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::offset::Offset;
use crate::presence::{Entry, Presence, PresenceStats};

/// W3C trace context carried with a message so publish on one node and delivery on another
/// can join one trace (reserved now; filled once tracing export lands).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceContext {
    pub traceparent: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<String>,
}

/// A message as it travels between nodes.
#[derive(Debug)]
pub struct Message {
    pub channel: String,
    pub offset: Offset,
    pub from: String,
    /// Publish time, Unix microseconds (the client sees milliseconds).
    pub ts_us: u64,
    pub data: Box<RawValue>,
    pub trace: Option<TraceContext>,
}

/// What a publisher hands to the broker.
#[derive(Debug)]
pub struct PublishRequest {
    pub channel: String,
    pub from: String,
    pub ts_us: u64,
    pub data: Box<RawValue>,
    pub trace: Option<TraceContext>,
}

/// Where a subscription's history replay starts.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct HistoryStart {
    /// The channel's newest offset (`0-0` for a channel without messages).
    pub newest: Offset,
    /// Messages after the requested offset up to `newest` (what `recovered` promises); 0 with
    /// a gap.
    pub count: usize,
    /// The client missed messages: some after the requested offset were already trimmed, more
    /// of them are left than one subscribe may replay, or the offset is past the newest one
    /// (it came from a history that was lost since).
    pub gap: bool,
    /// The epoch of the channel's history (see [`new_epoch`]).
    pub epoch: String,
    /// The requested offset is the offset of a message this history still holds: the client
    /// has seen this history, whatever epoch it names (e.g. it stayed subscribed while the
    /// history was lost and started anew, and never saw the new epoch).
    pub since_kept: bool,
}

/// Characters of an epoch.
const EPOCH_ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
/// Length of an epoch: 36^12 ≈ 4.7e18 values, so two histories of one channel never share one.
const EPOCH_LEN: usize = 12;
/// Longest `epoch` a client may send back (anything longer cannot be one of ours).
pub const MAX_EPOCH_LEN: usize = 64;

/// A fresh epoch: a short random string naming one incarnation of a channel's history. A
/// history that is lost (Redis restarted without persistence, its keys expired or were
/// flushed, the embedded broker restarted) comes back under a new epoch, so an offset a client
/// kept from the old one is recognised as foreign even when the new history has passed it.
pub fn new_epoch() -> String {
    (0..EPOCH_LEN)
        .map(|_| char::from(EPOCH_ALPHABET[fastrand::usize(..EPOCH_ALPHABET.len())]))
        .collect()
}

/// A page of a channel's history.
#[derive(Debug, Default)]
pub struct HistoryPage {
    /// Messages after the requested offset, oldest first.
    pub messages: Vec<Message>,
    /// Some message after the requested offset was already trimmed (or the history expired).
    pub trimmed: bool,
}

/// What a `history` request asks for: at most `limit` messages with offsets above `since` and
/// below `before` (both exclusive), oldest first, or newest first with `reverse`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HistoryQuery {
    pub limit: usize,
    pub since: Option<Offset>,
    pub before: Option<Offset>,
    pub reverse: bool,
}

impl HistoryQuery {
    /// Whether no offset can lie between the bounds (the brokers answer without reading).
    pub fn is_empty_range(&self) -> bool {
        self.limit == 0
            || self.before == Some(Offset::ZERO)
            || self.since == Some(Offset::new(u64::MAX, u64::MAX))
            || matches!((self.since, self.before), (Some(s), Some(b)) if s >= b)
    }
}

/// One page of a channel's history, as a `history` request answers it.
#[derive(Debug, Default)]
pub struct History {
    /// In the order asked for.
    pub messages: Vec<Message>,
    /// The channel's newest offset (`0-0` without messages).
    pub newest: Offset,
    /// The epoch of the channel's history.
    pub epoch: String,
}

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("broker unavailable")]
    Unavailable,
    #[error("broker failed: {0}")]
    Internal(String),
}

/// The seam between sessions and the transport between nodes.
pub trait Broker: Send + Sync + 'static {
    /// Appends to the channel's history and publishes to every node, as one atomic step, so
    /// every node sees the same offset.
    ///
    /// Publishes whose futures are first polled in some order are applied in that order (a
    /// session pipelines its publishes and starts them in the order it read them): the future
    /// hands its command over on that first poll, before anything it could wait for.
    fn publish(&self, request: PublishRequest) -> BoxFuture<'_, Result<Offset, BrokerError>>;

    /// Makes sure this node receives the channel's live messages (returns once it does).
    /// Called for every local subscription; the hub counts references.
    fn join<'a>(&'a self, channel: &'a str) -> BoxFuture<'a, Result<(), BrokerError>>;

    /// The last local subscriber left: stop receiving the channel (unless one came back).
    fn leave(&self, channel: &str);

    /// The channel's newest offset and epoch and, with `since`, how many messages after it are
    /// still in history, counted up to `limit` (past it: a gap; a `since` past the newest
    /// offset is a gap too). Never reads the messages themselves. May create the channel's
    /// epoch (a channel that never had one gets it on first use, by reader or publisher).
    fn history_start<'a>(
        &'a self,
        channel: &'a str,
        since: Option<Offset>,
        limit: usize,
    ) -> BoxFuture<'a, Result<HistoryStart, BrokerError>>;

    /// At most `max` messages after `after`, oldest first: one page of a replay.
    fn history_page<'a>(
        &'a self,
        channel: &'a str,
        after: Offset,
        max: usize,
    ) -> BoxFuture<'a, Result<HistoryPage, BrokerError>>;

    /// A page of the channel's history with its newest offset and epoch (creating the epoch
    /// like [`Broker::history_start`]). Reads at most `query.limit` messages.
    fn history<'a>(
        &'a self,
        channel: &'a str,
        query: HistoryQuery,
    ) -> BoxFuture<'a, Result<History, BrokerError>>;

    /// The exclusive start offset from which the newest `n` messages of the channel follow
    /// (just before the `n`-th newest one, or the oldest kept); `None` without messages.
    fn last_start<'a>(
        &'a self,
        channel: &'a str,
        n: usize,
    ) -> BoxFuture<'a, Result<Option<Offset>, BrokerError>>;

    /// A client of this node subscribed to the channel: with `keep`, its `entry` enters the
    /// channel's presence until [`Broker::exit`] (with Redis: written at once, then refreshed
    /// by the node); then `join` (a `join` frame: no offset, no history) is pushed to the
    /// channel's live subscribers on every node, so whoever sees it finds the client in
    /// presence. Runs after the client's earlier [`Broker::exit`] of the channel is done (a
    /// quick unsubscribe + subscribe never ends with the old `leave` or removal last). An error
    /// means the entry is kept locally but not written yet.
    fn enter<'a>(
        &'a self,
        channel: &'a str,
        entry: Arc<Entry>,
        keep: bool,
        join: Option<String>,
    ) -> BoxFuture<'a, Result<(), BrokerError>>;

    /// The client's subscription to the channel ended: its entry (if it had one) leaves
    /// presence, then the `leave` frame, if given, is pushed like a `join`. In the background
    /// with Redis.
    fn exit(&self, channel: &str, client: &str, leave: Option<String>);

    /// At most `max` of the channel's presence entries, across nodes, and how many there are.
    fn presence<'a>(
        &'a self,
        channel: &'a str,
        max: usize,
    ) -> BoxFuture<'a, Result<Presence, BrokerError>>;

    /// The channel's numbers of present clients and distinct users, across nodes.
    fn presence_stats<'a>(
        &'a self,
        channel: &'a str,
    ) -> BoxFuture<'a, Result<PresenceStats, BrokerError>>;

    /// Whether the broker can serve (Redis reachable).
    fn is_up(&self) -> bool;
}

/// Current time in Unix microseconds.
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_ranges() {
        let q = |since: Option<Offset>, before: Option<Offset>| HistoryQuery {
            limit: 5,
            since,
            before,
            reverse: false,
        };
        let o = |ms| Some(Offset::new(ms, 0));
        assert!(!q(None, None).is_empty_range());
        assert!(!q(o(1), o(3)).is_empty_range());
        assert!(q(o(3), o(3)).is_empty_range());
        assert!(q(None, Some(Offset::ZERO)).is_empty_range());
        assert!(
            HistoryQuery {
                limit: 0,
                ..q(None, None)
            }
            .is_empty_range()
        );
    }

    #[test]
    fn epochs_are_short_random_strings() {
        let a = new_epoch();
        assert_eq!(a.len(), EPOCH_LEN);
        assert!(a.bytes().all(|b| EPOCH_ALPHABET.contains(&b)), "{a}");
        assert_ne!(a, new_epoch());
    }
}
