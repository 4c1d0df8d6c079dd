//! Local fan-out: which sessions on this node listen to which channel.
//!
//! Each message is serialized once per node into a `message` frame (`Utf8Bytes`, a shared
//! `Bytes` buffer) and the same bytes are queued to every local subscriber. Queues are bounded
//! (see [`crate::queue`]); a full queue marks the session a slow consumer (closed with 4001)
//! instead of growing memory or slowing everyone else down.
//!
//! Locks: a std `Mutex` guards the map of channels only long enough to find a channel; each
//! channel has its own `Mutex` over its subscribers, held while a message is queued to them.
//! So a fan-out to a channel with many subscribers holds up that channel alone, never the
//! others. Every section is short and never awaits (queueing is a push onto the subscriber's
//! queue), which is cheaper than an async lock.
//!
//! Recovery (`since`) without loss or duplicates: a new subscription starts *pending* — live
//! messages are buffered for it (bounded like a send queue) while its history is replayed in
//! pages (see [`crate::replay`]) — then [`Hub::go_live`] queues the buffered messages newer
//! than the replay's last offset, under the channel's lock so nothing can slip in between. A
//! buffer that overflowed during a long replay is dropped instead of growing: those messages
//! are in the history too, and the replay reads on until it has caught up.
//!
//! History frames are shared: [`Hub::history_delivery`] keeps a weak reference to each frame
//! it encoded, so subscribers replaying the same messages queue the same bytes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use axum::extract::ws::Utf8Bytes;
use prometheus_client::metrics::counter::Counter;

use crate::broker::Message;
use crate::metrics::{Metrics, reasons};
use crate::offset::Offset;
use crate::protocol::{ServerFrame, close};
use crate::telemetry;

pub use crate::queue::{Delivery, NoRoom, Outbound, QueueFull, SessionControl, SessionTag};

/// A local subscriber: its session's queue and control.
#[derive(Clone, Debug)]
pub struct Subscriber {
    pub id: u64,
    pub control: Arc<SessionControl>,
}

impl Subscriber {
    pub fn new(control: Arc<SessionControl>) -> Self {
        Subscriber {
            id: control.id(),
            control,
        }
    }
}

/// Live messages held for a subscription while its history is replayed.
struct Pending {
    buffer: Vec<Arc<Delivery>>,
    bytes: usize,
    /// The buffer hit its bound and was emptied: the messages it dropped are in the channel's
    /// history, and the replay reads them from there before going live.
    overflowed: bool,
}

enum Mode {
    Pending(Pending),
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

/// One channel's subscribers behind their own lock, so a fan-out to a big channel (or a
/// subscriber joining it) never holds up another channel.
type Slot = Arc<Mutex<ChannelState>>;

fn lock_slot(slot: &Mutex<ChannelState>) -> MutexGuard<'_, ChannelState> {
    // A panic while holding the lock cannot leave the state half-updated in a way that
    // matters more than stopping fan-out for everyone, so keep going.
    slot.lock().unwrap_or_else(|p| p.into_inner())
}

/// A pending subscription could not go live: live messages were dropped from its buffer while
/// it replayed, so it must read history past its cursor first.
#[derive(Debug)]
pub struct CatchUp;

/// Encoded history frames still queued somewhere, by channel and offset: subscribers replaying
/// the same messages share one frame instead of holding a copy each.
#[derive(Default)]
struct HistoryFrames {
    frames: HashMap<String, HashMap<Offset, Weak<Delivery>>>,
    entries: usize,
    /// Entries alive after the last sweep; the next sweep runs when twice as many are held.
    live_after_sweep: usize,
}

impl HistoryFrames {
    fn get(&self, channel: &str, offset: Offset) -> Option<Arc<Delivery>> {
        self.frames.get(channel)?.get(&offset)?.upgrade()
    }

    fn insert(&mut self, channel: &str, delivery: &Arc<Delivery>) {
        let slot = match self.frames.get_mut(channel) {
            Some(slot) => slot,
            None => self.frames.entry(channel.to_owned()).or_default(),
        };
        if slot
            .insert(delivery.offset, Arc::downgrade(delivery))
            .is_none()
        {
            self.entries += 1;
        }
        if self.entries > 2 * self.live_after_sweep + 1024 {
            self.sweep();
        }
    }

    /// Forgets frames no queue holds any more (amortized: runs after the map doubled).
    fn sweep(&mut self) {
        self.frames.retain(|_, frames| {
            frames.retain(|_, weak| weak.strong_count() > 0);
            !frames.is_empty()
        });
        self.entries = self.frames.values().map(HashMap::len).sum();
        self.live_after_sweep = self.entries;
    }
}

/// Channel -> local subscribers.
pub struct Hub {
    channels: Mutex<HashMap<String, Slot>>,
    history_frames: Mutex<HistoryFrames>,
    metrics: Metrics,
    /// Live messages buffered for a pending subscription, in frames and bytes.
    pending_cap: usize,
    pending_bytes: usize,
}

impl Hub {
    pub fn new(metrics: Metrics, pending_cap: usize, pending_bytes: usize) -> Arc<Self> {
        Arc::new(Hub {
            channels: Mutex::new(HashMap::new()),
            history_frames: Mutex::new(HistoryFrames::default()),
            metrics,
            pending_cap: pending_cap.max(1),
            pending_bytes: pending_bytes.max(1),
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Slot>> {
        self.channels
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn slot(&self, channel: &str) -> Option<Slot> {
        self.lock().get(channel).cloned()
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

    /// Registers a pending subscription (live messages are buffered until [`Hub::go_live`]).
    pub fn add_pending(&self, channel: &str, subscriber: Subscriber) {
        // The map's lock is held while the subscription goes in, so `remove` cannot drop the
        // channel's slot in between.
        let mut map = self.lock();
        let slot = map.entry(channel.to_owned()).or_insert_with(|| {
            Arc::new(Mutex::new(ChannelState {
                subs: HashMap::new(),
                last: None,
                floor: None,
                delivered: self.metrics.delivered_counter(channel),
            }))
        });
        lock_slot(slot).subs.insert(
            subscriber.id,
            Subscription {
                subscriber,
                mode: Mode::Pending(Pending {
                    buffer: Vec::new(),
                    bytes: 0,
                    overflowed: false,
                }),
                after: Offset::ZERO,
            },
        );
    }

    /// Turns a pending subscription live once its replay reached `after`: queues the buffered
    /// live messages after `after`, atomically with the switch. When the buffer overflowed
    /// meanwhile it starts buffering afresh and answers [`CatchUp`]: the replay reads history
    /// after `after` again, then retries.
    pub fn go_live(&self, channel: &str, subscriber_id: u64, after: Offset) -> Result<(), CatchUp> {
        let Some(slot) = self.slot(channel) else {
            return Ok(());
        };
        let mut state = lock_slot(&slot);
        if state.last.is_none() {
            state.floor = Some(state.floor.map_or(after, |f| f.min(after)));
        }
        let Some(sub) = state.subs.get_mut(&subscriber_id) else {
            return Ok(());
        };
        if let Mode::Pending(pending) = &mut sub.mode
            && pending.overflowed
        {
            *pending = Pending {
                buffer: Vec::new(),
                bytes: 0,
                overflowed: false,
            };
            return Err(CatchUp);
        }
        sub.after = after;
        let buffered = match std::mem::replace(&mut sub.mode, Mode::Live) {
            Mode::Pending(pending) => pending.buffer,
            Mode::Live => Vec::new(),
        };
        let subscriber = sub.subscriber.clone();
        for delivery in buffered
            .into_iter()
            .filter(|d| d.offset.is_zero() || d.offset > after)
        {
            self.offer(&subscriber, Outbound::Message(delivery));
        }
        Ok(())
    }

    /// Removes a subscription; returns true when it was the channel's last local one.
    pub fn remove(&self, channel: &str, subscriber_id: u64) -> bool {
        let mut map = self.lock();
        let Some(slot) = map.get(channel) else {
            return false;
        };
        let mut state = lock_slot(slot);
        if state.subs.remove(&subscriber_id).is_none() {
            return false;
        }
        if state.subs.is_empty() {
            drop(state);
            map.remove(channel);
            return true;
        }
        false
    }

    /// Whether `subscriber_id` is (still) subscribed to `channel` here: the server API may have
    /// removed it behind its session's back.
    pub fn is_subscribed(&self, channel: &str, subscriber_id: u64) -> bool {
        self.slot(channel)
            .is_some_and(|slot| lock_slot(&slot).subs.contains_key(&subscriber_id))
    }

    /// Every channel with local subscribers and how many subscriptions it has on this node.
    pub fn subscriber_counts(&self) -> Vec<(String, usize)> {
        let slots: Vec<(String, Slot)> = self
            .lock()
            .iter()
            .map(|(name, slot)| (name.clone(), slot.clone()))
            .collect();
        slots
            .into_iter()
            .map(|(name, slot)| {
                let count = lock_slot(&slot).subs.len();
                (name, count)
            })
            .collect()
    }

    pub fn has_subscribers(&self, channel: &str) -> bool {
        self.lock().contains_key(channel)
    }

    /// The offset a gap fill of `channel` must start after (as [`Hub::channels`] gives it);
    /// `None` without local subscribers or anything to start after.
    pub fn gap_start(&self, channel: &str) -> Option<Offset> {
        let slot = self.slot(channel)?;
        let state = lock_slot(&slot);
        state.last.or(state.floor)
    }

    /// Every channel with local subscribers and the offset a gap fill must start after.
    pub fn channels(&self) -> Vec<(String, Option<Offset>)> {
        let slots: Vec<(String, Slot)> = self
            .lock()
            .iter()
            .map(|(name, slot)| (name.clone(), slot.clone()))
            .collect();
        slots
            .into_iter()
            .map(|(name, slot)| {
                let state = lock_slot(&slot);
                (name, state.last.or(state.floor))
            })
            .collect()
    }

    /// Hands a message to the local subscribers of its channel (in offset order per channel;
    /// offsets already handed out are dropped), inside one `chat.deliver` span per message when
    /// tracing is on (never one per subscriber).
    pub fn deliver(&self, message: &Message) {
        telemetry::deliver(message, || self.fan_out(message));
    }

    /// [`Hub::deliver`] without the span; returns how many local subscriptions got the message.
    /// Only this channel's lock is held while its subscribers' queues are filled.
    fn fan_out(&self, message: &Message) -> usize {
        let Some(slot) = self.slot(&message.channel) else {
            return 0;
        };
        let mut state = lock_slot(&slot);
        // `0-0`: a message of a namespace without history. It has no place in the channel's
        // order, is never replayed nor gap-filled, so it cannot be a duplicate: always on.
        let unordered = message.offset.is_zero();
        if !unordered {
            if state.last.is_some_and(|last| message.offset <= last) {
                return 0;
            }
            state.last = Some(message.offset);
        }
        let delivery = Arc::new(Delivery {
            offset: message.offset,
            frame: encode(message),
            ts_us: message.ts_us,
            delivered: state.delivered.clone(),
            live: true,
        });
        let bytes = delivery.frame.len();
        let mut slow = Vec::new();
        let mut recipients = 0;
        for sub in state.subs.values_mut() {
            if !unordered && message.offset <= sub.after {
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
                Mode::Pending(pending) => {
                    if pending.buffer.len() < self.pending_cap
                        && pending.bytes + bytes <= self.pending_bytes
                    {
                        recipients += 1;
                        pending.bytes += bytes;
                        pending.buffer.push(delivery.clone());
                    } else {
                        // Dropped here, read from history by the replay instead.
                        pending.buffer = Vec::new();
                        pending.bytes = 0;
                        pending.overflowed = true;
                    }
                }
            }
        }
        drop(state);
        for subscriber in slow {
            self.slow_consumer(&subscriber);
        }
        recipients
    }

    /// Queues `frame` (a `join` or `leave`) to the channel's live local subscribers; pending
    /// ones (still replaying history) skip it: it is not part of the channel's history.
    pub fn announce(&self, channel: &str, frame: &str) {
        let Some(slot) = self.slot(channel) else {
            return;
        };
        let frame = Utf8Bytes::from(frame);
        let state = lock_slot(&slot);
        let mut slow = Vec::new();
        for sub in state.subs.values() {
            if matches!(sub.mode, Mode::Live)
                && sub
                    .subscriber
                    .control
                    .push(Outbound::Frame(frame.clone()))
                    .is_err()
            {
                slow.push(sub.subscriber.clone());
            }
        }
        drop(state);
        for subscriber in slow {
            self.slow_consumer(&subscriber);
        }
    }

    /// The `message` frame of a history message, shared with every other subscriber replaying
    /// it while any of them still has it queued (encoded once, not once per subscriber).
    pub fn history_delivery(&self, message: &Message) -> Arc<Delivery> {
        let mut frames = self
            .history_frames
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(delivery) = frames.get(&message.channel, message.offset) {
            return delivery;
        }
        let delivery = Arc::new(Delivery {
            offset: message.offset,
            frame: encode(message),
            ts_us: message.ts_us,
            delivered: self.metrics.delivered_counter(&message.channel),
            live: false,
        });
        frames.insert(&message.channel, &delivery);
        delivery
    }
}

/// A message's `message` frame.
fn encode(message: &Message) -> Utf8Bytes {
    let frame = ServerFrame::Message {
        channel: &message.channel,
        offset: message.offset,
        from: &message.from,
        ts: message.ts_us / 1000,
        data: &message.data,
    }
    .to_json();
    Utf8Bytes::from(frame)
}

#[cfg(test)]
mod tests {
    //! The per-channel lock, measured: a huge fan-out or a long replay on one channel does not
    //! hold up deliveries on another (issue 11, item 8).

    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    use prometheus_client::registry::Registry;
    use serde_json::value::RawValue;

    use super::*;

    /// Never-reading clients on the huge channel: their queues hold every message of the test.
    const HUGE_SUBSCRIBERS: usize = 20_000;
    const SAMPLES: usize = 2_000;

    fn hub() -> Arc<Hub> {
        Hub::new(
            Metrics::register(&mut Registry::default(), &[]),
            1_000,
            1 << 20,
        )
    }

    fn message(channel: &str, seq: u64) -> Message {
        Message {
            channel: channel.into(),
            offset: Offset::new(1, seq),
            from: "c1".into(),
            ts_us: 1,
            data: RawValue::from_string(format!("{{\"n\":{seq}}}")).unwrap(),
            trace: None,
        }
    }

    /// A live subscriber of `channel` whose queue holds `capacity` items.
    fn subscribe(hub: &Hub, channel: &str, capacity: usize) -> Subscriber {
        let subscriber = Subscriber::new(Arc::new(SessionControl::new(capacity, usize::MAX)));
        hub.add_pending(channel, subscriber.clone());
        hub.go_live(channel, subscriber.id, Offset::ZERO).unwrap();
        subscriber
    }

    /// Publish→queued time of `SAMPLES` messages to the one reader of `quiet`, which reads
    /// each; sorted.
    fn quiet_latencies(hub: &Hub, reader: &Subscriber, first_seq: u64) -> Vec<Duration> {
        let mut out = Vec::with_capacity(SAMPLES);
        for i in 0..SAMPLES as u64 {
            let m = message("quiet", first_seq + i);
            let start = Instant::now();
            hub.deliver(&m);
            out.push(start.elapsed());
            assert!(
                matches!(reader.control.pop(), Some(Outbound::Message(d)) if d.offset == m.offset),
                "message {i} not delivered"
            );
            // Spread the samples over many fan-outs of the other channel.
            std::thread::sleep(Duration::from_micros(100));
        }
        out.sort();
        out
    }

    fn p99(sorted: &[Duration]) -> Duration {
        sorted[sorted.len() * 99 / 100]
    }

    #[test]
    fn a_huge_fan_out_or_a_long_replay_does_not_stall_another_channel() {
        let hub = hub();
        let huge: Vec<Subscriber> = (0..HUGE_SUBSCRIBERS)
            .map(|_| subscribe(&hub, "huge", 100_000))
            .collect();
        let reader = subscribe(&hub, "quiet", 16);

        // Baseline: the quiet channel alone.
        let baseline = quiet_latencies(&hub, &reader, 1);

        // One fan-out to the huge channel: what a global lock would make the quiet channel
        // wait for.
        let mut fan_out_times: Vec<Duration> = (1..=5)
            .map(|seq| {
                let start = Instant::now();
                assert_eq!(hub.fan_out(&message("huge", seq)), HUGE_SUBSCRIBERS);
                start.elapsed()
            })
            .collect();
        fan_out_times.sort();
        let fan_out = fan_out_times[fan_out_times.len() / 2];

        // Load: fan-outs to the huge channel back to back, and replays on a third channel (a
        // subscriber joining with 2,000 buffered live messages and as many history frames,
        // then going live under that channel's lock), while the quiet channel is measured.
        let stop = Arc::new(AtomicBool::new(false));
        let fan_outs = std::thread::spawn({
            let (hub, stop) = (hub.clone(), stop.clone());
            move || {
                let mut seq = 100;
                while !stop.load(Ordering::Relaxed) {
                    assert_eq!(hub.fan_out(&message("huge", seq)), HUGE_SUBSCRIBERS);
                    seq += 1;
                }
                seq - 100
            }
        });
        let replays = std::thread::spawn({
            let (hub, stop) = (hub.clone(), stop.clone());
            move || {
                let mut rounds = 0;
                let mut seq = 1;
                let keeper = subscribe(&hub, "replayed", 1);
                while !stop.load(Ordering::Relaxed) {
                    let joining =
                        Subscriber::new(Arc::new(SessionControl::new(10_000, usize::MAX)));
                    hub.add_pending("replayed", joining.clone());
                    let after = Offset::new(1, seq);
                    for _ in 0..1_000 {
                        let delivery = hub.history_delivery(&message("replayed", seq));
                        joining.control.push(Outbound::Message(delivery)).unwrap();
                        seq += 1;
                        hub.deliver(&message("replayed", seq));
                        seq += 1;
                    }
                    hub.go_live("replayed", joining.id, after).unwrap();
                    assert!(joining.control.queued_bytes() > 0);
                    hub.remove("replayed", joining.id);
                    rounds += 1;
                }
                hub.remove("replayed", keeper.id);
                rounds
            }
        });
        let loaded = quiet_latencies(&hub, &reader, 10_000);
        stop.store(true, Ordering::Relaxed);
        let fan_outs = fan_outs.join().unwrap();
        let replays = replays.join().unwrap();

        let (base, under_load) = (p99(&baseline), p99(&loaded));
        eprintln!(
            "quiet channel publish→queued p99: {base:?} alone, {under_load:?} during {fan_outs} fan-outs to {HUGE_SUBSCRIBERS} subscribers ({fan_out:?} each) and {replays} replays of 2,000 messages; max {:?}",
            loaded.last().unwrap()
        );
        assert!(
            fan_outs >= 10 && replays >= 2,
            "the load ran: {fan_outs} fan-outs, {replays} replays"
        );
        // Behind a lock shared with the huge channel, a delivery would wait for the fan-out in
        // progress: p99 about one whole fan-out.
        assert!(
            under_load < fan_out / 4,
            "p99 {under_load:?} under load vs one huge fan-out {fan_out:?}"
        );
        assert!(
            under_load <= (base * 20).max(Duration::from_millis(1)),
            "p99 {under_load:?} under load vs {base:?} alone"
        );
        // The never-reading clients hold every fan-out (none closed as slow consumers).
        assert!(huge.iter().all(|s| s.control.closing().is_none()));
    }

    /// While one channel's lock is held (any fan-out, subscriber joining or replay going live
    /// in progress), another channel still delivers, and this one waits.
    #[test]
    fn a_held_channel_lock_holds_up_that_channel_only() {
        let hub = hub();
        let _a = subscribe(&hub, "a", 16);
        let b = subscribe(&hub, "b", 16);
        let slot = hub.slot("a").unwrap();
        let held = lock_slot(&slot);
        let (done, finished) = mpsc::channel();
        for channel in ["a", "b"] {
            let (hub, done) = (hub.clone(), done.clone());
            std::thread::spawn(move || {
                hub.deliver(&message(channel, 1));
                done.send(channel).unwrap();
            });
        }
        assert_eq!(finished.recv_timeout(Duration::from_secs(10)), Ok("b"));
        assert!(matches!(b.control.pop(), Some(Outbound::Message(_))));
        // `a` is still waiting for its lock (nothing else can have finished).
        assert!(finished.try_recv().is_err());
        drop(held);
        assert_eq!(finished.recv_timeout(Duration::from_secs(10)), Ok("a"));
    }
}
