//! Local fan-out: which sessions on this node listen to which channel.
//!
//! Each message is serialized once per node into a `message` frame (`Utf8Bytes`, a shared
//! `Bytes` buffer) and the same bytes are queued to every local subscriber. Queues are bounded;
//! a full queue marks the session a slow consumer (closed with 4001) instead of growing memory
//! or slowing everyone else down.
//!
//! A session's queue lives in its [`SessionControl`]: a `VecDeque` behind a std `Mutex` plus
//! one `Notify` that wakes the session's single task. An empty queue holds no allocation, so an
//! idle connection pays nothing for it, and a burst wakes the session once (only the push onto
//! an empty queue notifies); the session then writes everything queued in one batch.
//!
//! A std `Mutex` guards the map: every section is short and never awaits (queueing is a push
//! onto the subscriber's queue), which is cheaper than an async lock.
//!
//! Recovery (`since`) without loss or duplicates: a new subscription starts *pending* — live
//! messages are buffered for it while its history is read — then [`Hub::activate`] queues
//! `subscribed`, the history, and the buffered messages newer than its starting offset, all
//! under the lock so nothing can slip in between.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use axum::extract::ws::Utf8Bytes;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::Notify;
use tokio::sync::futures::Notified;

use crate::broker::Message;
use crate::metrics::{Metrics, reasons};
use crate::offset::Offset;
use crate::protocol::{ServerFrame, close};
use crate::telemetry;

/// One message, serialized once, shared by every local subscriber.
#[derive(Debug)]
pub struct Delivery {
    pub offset: Offset,
    pub frame: Utf8Bytes,
    pub ts_us: u64,
    pub delivered: Counter,
    /// Live (observed in the delivery-latency histogram) or recovered from history (not).
    pub live: bool,
}

/// An item in a session's send queue.
#[derive(Debug)]
pub enum Outbound {
    Frame(Utf8Bytes),
    Message(Arc<Delivery>),
    Ping,
}

/// A session as the rest of the node sees it: its bounded send queue, and how it is told to
/// close (by whoever decides it: itself, the fan-out, the drain).
#[derive(Debug)]
pub struct SessionControl {
    closing: OnceLock<(u16, &'static str)>,
    queue: Mutex<VecDeque<Outbound>>,
    capacity: usize,
    /// Wakes the session: something was queued onto an empty queue, or it must close.
    wake: Notify,
}

/// The send queue already holds its `--send-queue` items.
#[derive(Debug)]
pub struct QueueFull;

impl SessionControl {
    /// A session whose queue holds at most `capacity` items (at least 1).
    pub fn new(capacity: usize) -> Self {
        SessionControl {
            closing: OnceLock::new(),
            queue: Mutex::new(VecDeque::new()),
            capacity: capacity.max(1),
            wake: Notify::new(),
        }
    }

    fn lock_queue(&self) -> MutexGuard<'_, VecDeque<Outbound>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks the session to close with `code`; the first request wins. Returns whether this
    /// request was the first.
    pub fn close(&self, code: u16, reason: &'static str) -> bool {
        let first = self.closing.set((code, reason)).is_ok();
        if first {
            self.lock_queue().clear();
        }
        self.wake.notify_one();
        first
    }

    /// The close code and reason, once closing.
    pub fn closing(&self) -> Option<(u16, &'static str)> {
        self.closing.get().copied()
    }

    /// Queues `item` for the session. Items for a closing session are dropped.
    pub fn push(&self, item: Outbound) -> Result<(), QueueFull> {
        if self.closing.get().is_some() {
            return Ok(());
        }
        let mut queue = self.lock_queue();
        if queue.len() >= self.capacity {
            return Err(QueueFull);
        }
        let was_empty = queue.is_empty();
        queue.push_back(item);
        drop(queue);
        if was_empty {
            self.wake.notify_one();
        }
        Ok(())
    }

    /// Moves up to `max` queued items, oldest first, to the end of `into`. An emptied queue
    /// gives its memory back.
    pub fn take(&self, into: &mut VecDeque<Outbound>, max: usize) {
        let mut queue = self.lock_queue();
        if queue.len() <= max && into.is_empty() {
            std::mem::swap(&mut *queue, into);
        } else {
            let n = queue.len().min(max);
            into.extend(queue.drain(..n));
        }
        if queue.is_empty() && queue.capacity() > 0 {
            *queue = VecDeque::new();
        }
    }

    /// Removes the oldest queued item.
    pub fn pop(&self) -> Option<Outbound> {
        let mut queue = self.lock_queue();
        let item = queue.pop_front();
        if queue.is_empty() && queue.capacity() > 0 {
            *queue = VecDeque::new();
        }
        item
    }

    /// A future that resolves once the session was woken ([`SessionControl::push`] onto an
    /// empty queue, or [`SessionControl::close`]) after it was created, or right away when a
    /// wake-up is pending. Create it *before* looking at the queue, so no wake-up is missed.
    pub fn woken(&self) -> Notified<'_> {
        self.wake.notified()
    }

    /// The next queued item, waiting for one; `None` once closing.
    pub async fn next(&self) -> Option<Outbound> {
        loop {
            let woken = self.woken();
            if self.closing().is_some() {
                return None;
            }
            if let Some(item) = self.pop() {
                return Some(item);
            }
            woken.await;
        }
    }
}

/// A local subscriber: its session's queue and control.
#[derive(Clone, Debug)]
pub struct Subscriber {
    pub id: u64,
    pub control: Arc<SessionControl>,
}

static NEXT_SUBSCRIBER: AtomicU64 = AtomicU64::new(1);

impl Subscriber {
    pub fn new(control: Arc<SessionControl>) -> Self {
        Subscriber {
            id: NEXT_SUBSCRIBER.fetch_add(1, Ordering::Relaxed),
            control,
        }
    }
}

enum Mode {
    Pending(Vec<Arc<Delivery>>),
    Live,
}

struct Subscription {
    subscriber: Subscriber,
    mode: Mode,
    /// Only messages after this offset are for this subscription.
    after: Offset,
}

struct ChannelState {
    subs: HashMap<u64, Subscription>,
    /// Newest offset handed out on this node: drops duplicates (gap fill vs. live feed) and is
    /// where the gap fill starts after a broker reconnect.
    last: Option<Offset>,
    /// Where the first subscription started, for a gap fill before any message arrived.
    floor: Option<Offset>,
    delivered: Counter,
}

/// Channel -> local subscribers.
pub struct Hub {
    channels: Mutex<HashMap<String, ChannelState>>,
    metrics: Metrics,
    /// Messages buffered for a pending subscription before it counts as a slow consumer.
    pending_cap: usize,
}

impl Hub {
    pub fn new(metrics: Metrics, pending_cap: usize) -> Arc<Self> {
        Arc::new(Hub {
            channels: Mutex::new(HashMap::new()),
            metrics,
            pending_cap: pending_cap.max(1),
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, ChannelState>> {
        // A panic while holding the lock cannot leave the map half-updated in a way that
        // matters more than stopping fan-out for everyone, so keep going.
        self.channels
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues `item` for `subscriber`; a full queue closes it as a slow consumer.
    fn offer(&self, subscriber: &Subscriber, item: Outbound) {
        if subscriber.control.push(item).is_err() {
            self.slow_consumer(subscriber);
        }
    }

    fn slow_consumer(&self, subscriber: &Subscriber) {
        if subscriber
            .control
            .close(close::SLOW_CONSUMER, reasons::SLOW_CONSUMER)
        {
            self.metrics.slow_consumers.inc();
        }
    }

    /// Registers a pending subscription (live messages are buffered until [`Hub::activate`]).
    pub fn add_pending(&self, channel: &str, subscriber: Subscriber) {
        let mut map = self.lock();
        let state = map
            .entry(channel.to_owned())
            .or_insert_with(|| ChannelState {
                subs: HashMap::new(),
                last: None,
                floor: None,
                delivered: self.metrics.delivered_counter(channel),
            });
        state.subs.insert(
            subscriber.id,
            Subscription {
                subscriber,
                mode: Mode::Pending(Vec::new()),
                after: Offset::ZERO,
            },
        );
    }

    /// Turns a pending subscription live: queues `head` (the `subscribed` frame and recovered
    /// history), then the buffered live messages after `after`, atomically.
    pub fn activate(&self, channel: &str, subscriber_id: u64, head: Vec<Outbound>, after: Offset) {
        let mut map = self.lock();
        let Some(state) = map.get_mut(channel) else {
            return;
        };
        if state.last.is_none() {
            state.floor = Some(state.floor.map_or(after, |f| f.min(after)));
        }
        let Some(sub) = state.subs.get_mut(&subscriber_id) else {
            return;
        };
        sub.after = after;
        let buffered = match std::mem::replace(&mut sub.mode, Mode::Live) {
            Mode::Pending(buffered) => buffered,
            Mode::Live => Vec::new(),
        };
        let subscriber = sub.subscriber.clone();
        for item in head {
            self.offer(&subscriber, item);
        }
        for delivery in buffered.into_iter().filter(|d| d.offset > after) {
            self.offer(&subscriber, Outbound::Message(delivery));
        }
    }

    /// Removes a subscription; returns true when it was the channel's last local one.
    pub fn remove(&self, channel: &str, subscriber_id: u64) -> bool {
        let mut map = self.lock();
        let Some(state) = map.get_mut(channel) else {
            return false;
        };
        if state.subs.remove(&subscriber_id).is_none() {
            return false;
        }
        if state.subs.is_empty() {
            map.remove(channel);
            return true;
        }
        false
    }

    pub fn has_subscribers(&self, channel: &str) -> bool {
        self.lock().contains_key(channel)
    }

    /// Every channel with local subscribers and the offset a gap fill must start after.
    pub fn channels(&self) -> Vec<(String, Option<Offset>)> {
        self.lock()
            .iter()
            .map(|(name, s)| (name.clone(), s.last.or(s.floor)))
            .collect()
    }

    /// Hands a message to the local subscribers of its channel (in offset order per channel;
    /// offsets already handed out are dropped), inside one `chat.deliver` span per message when
    /// tracing is on (never one per subscriber).
    pub fn deliver(&self, message: &Message) {
        telemetry::deliver(message, || self.fan_out(message));
    }

    /// [`Hub::deliver`] without the span; returns how many local subscriptions got the message.
    fn fan_out(&self, message: &Message) -> usize {
        let mut map = self.lock();
        let Some(state) = map.get_mut(&message.channel) else {
            return 0;
        };
        if state.last.is_some_and(|last| message.offset <= last) {
            return 0;
        }
        state.last = Some(message.offset);
        let frame = ServerFrame::Message {
            channel: &message.channel,
            offset: message.offset,
            from: &message.from,
            ts: message.ts_us / 1000,
            data: &message.data,
        }
        .to_json();
        let delivery = Arc::new(Delivery {
            offset: message.offset,
            frame: Utf8Bytes::from(frame),
            ts_us: message.ts_us,
            delivered: state.delivered.clone(),
            live: true,
        });
        let mut slow = Vec::new();
        let mut recipients = 0;
        for sub in state.subs.values_mut() {
            if message.offset <= sub.after {
                continue;
            }
            match &mut sub.mode {
                Mode::Live => {
                    let item = Outbound::Message(delivery.clone());
                    if sub.subscriber.control.push(item).is_ok() {
                        recipients += 1;
                    } else {
                        slow.push(sub.subscriber.clone());
                    }
                }
                Mode::Pending(buffer) if buffer.len() < self.pending_cap => {
                    recipients += 1;
                    buffer.push(delivery.clone())
                }
                Mode::Pending(_) => slow.push(sub.subscriber.clone()),
            }
        }
        drop(map);
        for subscriber in slow {
            self.slow_consumer(&subscriber);
        }
        recipients
    }

    /// Serializes a history message for one subscriber (recovery), sharing nothing.
    pub fn history_item(&self, message: &Message) -> Outbound {
        let frame = ServerFrame::Message {
            channel: &message.channel,
            offset: message.offset,
            from: &message.from,
            ts: message.ts_us / 1000,
            data: &message.data,
        }
        .to_json();
        Outbound::Message(Arc::new(Delivery {
            offset: message.offset,
            frame: Utf8Bytes::from(frame),
            ts_us: message.ts_us,
            delivered: self.metrics.delivered_counter(&message.channel),
            live: false,
        }))
    }
}
