//! The embedded broker: one node, history in memory. `cargo run -p chat-node` serves a
//! working chat with nothing else installed.
//!
//! Anyone who may publish picks channel names, so history is capped per node, not only per
//! channel: at most `max_channels` channels keep history, and all their messages together
//! take at most `max_history_bytes`. Past a cap the broker evicts, the way Redis does with
//! `maxmemory` and an LRU policy, instead of refusing publishes: refusing would let whoever
//! fills the caps first (one client publishing to 10,000 made-up channels) keep every new
//! channel from working for `history-ttl`, while eviction only costs history that is old or
//! idle, and the protocol already says so (a `since` before it gets `gap`). A new channel past
//! the channel cap evicts the history of the channel published to least recently; bytes past
//! the byte cap evict the oldest messages across all channels. Live delivery never depends on
//! history, so subscribers of an evicted channel keep receiving.
//!
//! What an evicted channel's history looked like is forgotten, so the broker keeps one number
//! instead: the newest offset it ever evicted or expired a whole channel up to. A `since`
//! before it (other than `0-0`, a client without an offset yet), on a channel whose kept
//! history began after it, is a gap (sometimes one that was not: the client reloads, which is
//! safe; never a silent loss).
//!
//! Every history of this broker lives and dies with the process, so one epoch (made at start)
//! names them all: after a restart every channel's epoch changes, and a client's `since` from
//! before is recognised as foreign (a gap) even where the new offsets have passed it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use super::{
    Broker, BrokerError, History, HistoryPage, HistoryQuery, HistoryStart, Message, PublishRequest,
};
use crate::fanout::Hub;
use crate::metrics::{CapLabel, Metrics, caps};
use crate::namespaces::Namespaces;
use crate::offset::Offset;
use crate::presence::{self, LocalPresence, Presence, PresenceStats};

/// Bytes a history entry costs besides its data, sender and channel name: the message's
/// fields, the deque slot and the age index entry (measured order of magnitude, rounded up).
const ENTRY_OVERHEAD: usize = 192;

/// Settings of the embedded broker.
#[derive(Clone, Debug)]
pub struct MemorySettings {
    /// Per namespace: messages kept per channel, and how long after its last message a
    /// channel's history is dropped; a namespace without history stores nothing.
    pub namespaces: Arc<Namespaces>,
    /// Channels that keep history (at least 1).
    pub max_channels: usize,
    /// Bytes of history across all channels (see [`ENTRY_OVERHEAD`]).
    pub max_history_bytes: usize,
}

struct Entry {
    message: Message,
    /// Position in [`Store::by_age`].
    seq: u64,
    cost: usize,
}

struct ChannelHistory {
    name: Arc<str>,
    entries: VecDeque<Entry>,
    last_id: Offset,
    /// Newest offset trimmed away (a `since` before it has a gap).
    max_deleted: Option<Offset>,
    /// [`Store::forgotten_up_to`] when the channel's history began: it may be a channel
    /// forgotten before.
    forgotten: Option<Offset>,
    touched: Instant,
    /// Dropped this long after `touched` (its namespace's history TTL).
    ttl: Duration,
    /// Messages kept (its namespace's history size).
    size: usize,
    /// Position in [`Store::by_touch`].
    touch_seq: u64,
}

#[derive(Default)]
struct Store {
    channels: HashMap<Arc<str>, ChannelHistory>,
    /// Every kept message by when it was appended: the oldest across channels comes first.
    by_age: BTreeMap<u64, Arc<str>>,
    /// Every channel by when it was last published to: the idlest comes first.
    by_touch: BTreeMap<u64, Arc<str>>,
    next_seq: u64,
    bytes: usize,
    /// The newest offset of a channel whose whole history was evicted or expired.
    forgotten_up_to: Option<Offset>,
}

impl Store {
    fn seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    fn remove_front(&mut self, channel: &str) -> Option<usize> {
        let history = self.channels.get_mut(channel)?;
        let old = history.entries.pop_front()?;
        history.max_deleted = Some(old.message.offset);
        self.by_age.remove(&old.seq);
        self.bytes -= old.cost;
        Some(old.cost)
    }

    /// Drops a channel's whole history; returns how many messages it held.
    fn remove_channel(&mut self, channel: &str) -> usize {
        let Some(history) = self.channels.remove(channel) else {
            return 0;
        };
        self.by_touch.remove(&history.touch_seq);
        for entry in &history.entries {
            self.by_age.remove(&entry.seq);
            self.bytes -= entry.cost;
        }
        if history.last_id != Offset::ZERO {
            self.forgotten_up_to = self.forgotten_up_to.max(Some(history.last_id));
        }
        history.entries.len()
    }
}

pub struct MemoryBroker {
    hub: Arc<Hub>,
    metrics: Metrics,
    settings: MemorySettings,
    store: Mutex<Store>,
    /// The epoch of every channel's history (see the module docs).
    epoch: String,
    presence: LocalPresence,
}

impl MemoryBroker {
    /// Creates the broker and its expiry sweeper (stops with `shutdown`).
    pub fn start(
        hub: Arc<Hub>,
        metrics: Metrics,
        settings: MemorySettings,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let every = settings
            .namespaces
            .min_history_ttl()
            .unwrap_or(Duration::from_secs(60))
            .clamp(Duration::from_millis(100), Duration::from_secs(60));
        let broker = Arc::new(MemoryBroker {
            hub,
            metrics,
            settings,
            store: Mutex::new(Store::default()),
            epoch: super::new_epoch(),
            presence: LocalPresence::default(),
        });
        let weak = Arc::downgrade(&broker);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let Some(broker) = weak.upgrade() else { return };
                broker.expire();
            }
        });
        broker
    }

    fn lock(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn report(&self, store: &Store) {
        self.metrics
            .history_channels
            .set(store.channels.len() as i64);
        self.metrics.history_bytes.set(store.bytes as i64);
    }

    fn evicted(&self, cap: &'static str, messages: usize) {
        if messages > 0 {
            self.metrics
                .history_evictions
                .get_or_create(&CapLabel { cap })
                .inc_by(messages as u64);
        }
    }

    /// Drops the histories idle for their namespace's TTL. The idlest come first in
    /// `by_touch`: past the first one idle for less than the shortest TTL, none is due.
    fn expire(&self) {
        let Some(shortest) = self.settings.namespaces.min_history_ttl() else {
            return;
        };
        let mut store = self.lock();
        let mut due = Vec::new();
        for name in store.by_touch.values() {
            let history = &store.channels[name];
            let idle = history.touched.elapsed();
            if idle < shortest {
                break;
            }
            if idle >= history.ttl {
                due.push(name.clone());
            }
        }
        for name in due {
            store.remove_channel(&name);
        }
        self.report(&store);
    }

    /// A message of a namespace without history: delivered, never stored, no offset.
    fn relay(&self, request: PublishRequest) -> Offset {
        let message = Message {
            channel: request.channel,
            offset: Offset::ZERO,
            from: request.from,
            ts_us: request.ts_us,
            data: request.data,
            trace: request.trace,
        };
        self.hub.deliver(&message);
        Offset::ZERO
    }

    fn append(&self, request: PublishRequest) -> Offset {
        let Some(kept) = self.settings.namespaces.of(&request.channel).history else {
            return self.relay(request);
        };
        let mut guard = self.lock();
        let store = &mut *guard;
        if !store.channels.contains_key(request.channel.as_str()) {
            while store.channels.len() >= self.settings.max_channels.max(1) {
                let Some((_, idlest)) = store.by_touch.first_key_value() else {
                    break;
                };
                let idlest = idlest.clone();
                let dropped = store.remove_channel(&idlest);
                self.evicted(caps::CHANNELS, dropped);
            }
            let name: Arc<str> = Arc::from(request.channel.as_str());
            store.channels.insert(
                name.clone(),
                ChannelHistory {
                    name,
                    entries: VecDeque::new(),
                    last_id: Offset::ZERO,
                    max_deleted: None,
                    forgotten: store.forgotten_up_to,
                    touched: Instant::now(),
                    ttl: kept.ttl,
                    size: kept.size,
                    touch_seq: 0,
                },
            );
        }
        let seq = store.seq();
        let touch_seq = store.seq();
        let history = store
            .channels
            .get_mut(request.channel.as_str())
            .expect("inserted above");
        let name = history.name.clone();
        let offset = history.last_id.next_after(request.ts_us / 1000);
        history.last_id = offset;
        history.touched = Instant::now();
        let old_touch = std::mem::replace(&mut history.touch_seq, touch_seq);
        let cost =
            request.data.get().len() + request.from.len() + request.channel.len() + ENTRY_OVERHEAD;
        let message = Message {
            channel: request.channel,
            offset,
            from: request.from,
            ts_us: request.ts_us,
            data: request.data,
            trace: request.trace,
        };
        // Delivered under the lock, so local delivery order is offset order.
        self.hub.deliver(&message);
        history.entries.push_back(Entry { message, seq, cost });
        let over = history.entries.len().saturating_sub(history.size);
        store.by_touch.remove(&old_touch);
        store.by_touch.insert(touch_seq, name.clone());
        store.by_age.insert(seq, name.clone());
        store.bytes += cost;
        for _ in 0..over {
            store.remove_front(&name);
        }
        let mut dropped = 0;
        while store.bytes > self.settings.max_history_bytes {
            let Some((_, oldest)) = store.by_age.first_key_value() else {
                break;
            };
            let oldest = oldest.clone();
            if store.remove_front(&oldest).is_none() {
                break;
            }
            dropped += 1;
        }
        self.evicted(caps::BYTES, dropped);
        self.report(store);
        offset
    }
}

/// Whether a client resuming after `since` may have missed messages of a channel forgotten
/// up to `forgotten` (never seen, evicted or expired: only the last two lose anything). A
/// `since` of `0-0` is a client without an offset yet: it missed nothing.
fn forgotten_since(forgotten: Option<Offset>, since: Offset) -> bool {
    since != Offset::ZERO && forgotten.is_some_and(|f| f > since)
}

fn copy(m: &Message) -> Message {
    Message {
        channel: m.channel.clone(),
        offset: m.offset,
        from: m.from.clone(),
        ts_us: m.ts_us,
        data: m.data.clone(),
        trace: m.trace.clone(),
    }
}

impl Broker for MemoryBroker {
    fn publish(&self, request: PublishRequest) -> BoxFuture<'_, Result<Offset, BrokerError>> {
        let offset = self.append(request);
        async move { Ok(offset) }.boxed()
    }

    fn join<'a>(&'a self, _channel: &'a str) -> BoxFuture<'a, Result<(), BrokerError>> {
        async { Ok(()) }.boxed()
    }

    fn leave(&self, _channel: &str) {}

    fn history_start<'a>(
        &'a self,
        channel: &'a str,
        since: Option<Offset>,
        limit: usize,
    ) -> BoxFuture<'a, Result<HistoryStart, BrokerError>> {
        let store = self.lock();
        let mut start = HistoryStart {
            epoch: self.epoch.clone(),
            ..HistoryStart::default()
        };
        match store.channels.get(channel) {
            // A `since` past `0-0` here came from a history that is gone (see `forgotten_since`;
            // or one of an earlier run of the process).
            None => start.gap = since.is_some_and(|s| s > Offset::ZERO),
            Some(h) => {
                start.newest = h.last_id;
                if let Some(since) = since {
                    let kept = &h.entries;
                    let at = kept.partition_point(|e| e.message.offset < since);
                    start.since_kept = kept.get(at).is_some_and(|e| e.message.offset == since);
                    let count = kept.len() - kept.partition_point(|e| e.message.offset <= since);
                    start.gap = since > h.last_id
                        || h.max_deleted.is_some_and(|d| d > since)
                        || forgotten_since(h.forgotten, since)
                        || count > limit;
                    start.count = if start.gap { 0 } else { count };
                }
            }
        }
        drop(store);
        async move { Ok(start) }.boxed()
    }

    fn history_page<'a>(
        &'a self,
        channel: &'a str,
        after: Offset,
        max: usize,
    ) -> BoxFuture<'a, Result<HistoryPage, BrokerError>> {
        let store = self.lock();
        let page = match store.channels.get(channel) {
            None => HistoryPage::default(),
            Some(h) => {
                let first = h.entries.partition_point(|e| e.message.offset <= after);
                HistoryPage {
                    messages: h
                        .entries
                        .range(first..)
                        .take(max)
                        .map(|e| copy(&e.message))
                        .collect(),
                    trimmed: h.max_deleted.is_some_and(|d| d > after),
                }
            }
        };
        drop(store);
        async move { Ok(page) }.boxed()
    }

    fn history<'a>(
        &'a self,
        channel: &'a str,
        query: HistoryQuery,
    ) -> BoxFuture<'a, Result<History, BrokerError>> {
        let store = self.lock();
        let mut history = History {
            epoch: self.epoch.clone(),
            ..History::default()
        };
        if let Some(h) = store.channels.get(channel) {
            history.newest = h.last_id;
            if !query.is_empty_range() {
                let entries = &h.entries;
                let low = query
                    .since
                    .map_or(0, |s| entries.partition_point(|e| e.message.offset <= s));
                let high = query.before.map_or(entries.len(), |b| {
                    entries.partition_point(|e| e.message.offset < b)
                });
                if low < high {
                    let range = entries.range(low..high);
                    history.messages = if query.reverse {
                        range
                            .rev()
                            .take(query.limit)
                            .map(|e| copy(&e.message))
                            .collect()
                    } else {
                        range.take(query.limit).map(|e| copy(&e.message)).collect()
                    };
                }
            }
        }
        drop(store);
        async move { Ok(history) }.boxed()
    }

    fn last_start<'a>(
        &'a self,
        channel: &'a str,
        n: usize,
    ) -> BoxFuture<'a, Result<Option<Offset>, BrokerError>> {
        let store = self.lock();
        let start = store.channels.get(channel).and_then(|h| {
            let first = h.entries.len().checked_sub(n.max(1))?;
            Some(h.entries[first].message.offset.just_before())
        });
        let start = start.or_else(|| {
            // Fewer than `n` kept: from the oldest one.
            let h = store.channels.get(channel)?;
            h.entries.front().map(|e| e.message.offset.just_before())
        });
        drop(store);
        async move { Ok(if n == 0 { None } else { start }) }.boxed()
    }

    fn enter<'a>(
        &'a self,
        channel: &'a str,
        entry: Arc<presence::Entry>,
        keep: bool,
        join: Option<String>,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        if keep {
            self.presence.add(channel, entry);
        }
        if let Some(frame) = join {
            self.hub.announce(channel, &frame);
        }
        async { Ok(()) }.boxed()
    }

    fn exit(&self, channel: &str, client: &str, leave: Option<String>) {
        self.presence.remove(channel, client);
        if let Some(frame) = leave {
            self.hub.announce(channel, &frame);
        }
    }

    fn presence<'a>(
        &'a self,
        channel: &'a str,
        max: usize,
    ) -> BoxFuture<'a, Result<Presence, BrokerError>> {
        let presence = self.presence.read(channel, max);
        async move { Ok(presence) }.boxed()
    }

    fn presence_stats<'a>(
        &'a self,
        channel: &'a str,
    ) -> BoxFuture<'a, Result<PresenceStats, BrokerError>> {
        let stats = self.presence.stats(channel);
        async move { Ok(stats) }.boxed()
    }

    fn is_up(&self) -> bool {
        true
    }
}
