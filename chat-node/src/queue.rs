//! A session's send queue, bounded in frames (`--send-queue`) and in bytes
//! (`--send-queue-bytes`).
//!
//! The queue is a `VecDeque` behind a std `Mutex` in the session's [`SessionControl`], shared
//! with the hub, the drain and the history replay. An empty queue holds no allocation, so an
//! idle connection pays nothing for it, and a burst wakes the session once (only the push onto
//! an empty queue notifies); the session then writes everything queued in one batch.
//!
//! Why bytes as well as frames: a frame count alone lets a client that never reads pin
//! `send-queue` × `max-message-bytes` (64 MiB by default) of one connection's memory. The byte
//! bound caps what any connection holds; live fan-out that would pass it closes the session as
//! a slow consumer (4001). The history replay never overflows it: it waits for room (see
//! [`SessionControl::wait_for_room`]) and only a connection that accepts nothing for
//! `--send-timeout` while the replay waits is closed, with the same 4001.
//!
//! A queued message is an `Arc` of one encoded frame, shared by every subscriber it is queued
//! to; the byte count charges each queue the whole frame anyway, so the bound holds whether
//! frames are shared or not.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::Notify;
use tokio::sync::futures::Notified;

use crate::offset::Offset;
use crate::per_user::UserSlot;

/// One message, serialized once, shared by every local subscriber (live) or by every
/// subscriber replaying it (history).
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

impl Outbound {
    /// What the item counts against `--send-queue-bytes`: the frame's payload length.
    pub fn queued_bytes(&self) -> usize {
        match self {
            Outbound::Frame(text) => text.len(),
            Outbound::Message(delivery) => delivery.frame.len(),
            Outbound::Ping => 0,
        }
    }
}

/// The send queue already holds its `--send-queue` frames or `--send-queue-bytes` bytes.
#[derive(Debug)]
pub struct QueueFull;

/// Why waiting for room in the queue ended without room.
#[derive(Debug, PartialEq, Eq)]
pub enum NoRoom {
    /// The session is closing.
    Closing,
    /// Nothing left the queue for the whole send timeout: the client does not read.
    Stalled,
}

#[derive(Debug, Default)]
struct Queue {
    items: VecDeque<Outbound>,
    bytes: usize,
}

impl Queue {
    fn release_if_empty(&mut self) {
        if self.items.is_empty() && self.items.capacity() > 0 {
            self.items = VecDeque::new();
        }
    }
}

/// Who a session is, for the server API (`disconnect`, `unsubscribe`, `revoke`) and presence.
///
/// Kept inline in the session's [`SessionControl`] (one allocation per session, not two) and as
/// small as it can be: an idle connection without a token holds only empty `Option`s here.
#[derive(Debug, Default)]
pub struct SessionTag {
    /// The client id (the `welcome` frame's `client`, 32 hex digits; a gRPC stream's
    /// `chat-client`), kept as a number; 0 = none (long-polls; ids are never 0).
    pub client: u128,
    /// The token's `sub` (none when auth is off).
    pub user: Option<Box<str>>,
    /// The token's `jti`, for revocations.
    pub token_id: Option<Box<str>>,
    /// The token's `info` claim as JSON (presence, `join`/`leave`).
    pub info: Option<Box<str>>,
    /// The token's `iat` (Unix seconds), for revocations of its user; 0 = none.
    pub issued_at: u64,
    /// Its place in its user's connection count (`--max-connections-per-user`), given back
    /// when the session's control is dropped, i.e. when the session is gone.
    pub user_slot: Option<UserSlot>,
}

impl SessionTag {
    /// A random client id, never 0 (which means "none").
    pub fn new_client_id() -> u128 {
        fastrand::u128(1..)
    }

    /// The client id as shown to clients (32 hex digits), if the session has one.
    pub fn client_hex(&self) -> Option<String> {
        (self.client != 0).then(|| format!("{:032x}", self.client))
    }
}

static NEXT_SESSION: AtomicU64 = AtomicU64::new(1);

/// A session as the rest of the node sees it: its id (also its subscriber id in the hub), who
/// it is, its bounded send queue, and how it is told to close (by whoever decides it: itself,
/// the fan-out, the drain).
#[derive(Debug)]
pub struct SessionControl {
    tag: SessionTag,
    id: u64,
    closing: OnceLock<(u16, &'static str)>,
    queue: Mutex<Queue>,
    capacity: usize,
    max_bytes: usize,
    /// Wakes the session: something was queued onto an empty queue, or it must close.
    wake: Notify,
    /// Wakes a replay waiting for room: something left the queue, or the session must close.
    drained: Notify,
}

impl SessionControl {
    /// A session whose queue holds at most `capacity` items (at least 1) and `max_bytes` bytes
    /// (one item always fits into an empty queue, however big).
    pub fn new(capacity: usize, max_bytes: usize) -> Self {
        Self::tagged(capacity, max_bytes, SessionTag::default())
    }

    /// [`SessionControl::new`] for a session the server API can address.
    pub fn tagged(capacity: usize, max_bytes: usize, tag: SessionTag) -> Self {
        SessionControl {
            tag,
            id: NEXT_SESSION.fetch_add(1, Ordering::Relaxed),
            closing: OnceLock::new(),
            queue: Mutex::new(Queue::default()),
            capacity: capacity.max(1),
            max_bytes: max_bytes.max(1),
            wake: Notify::new(),
            drained: Notify::new(),
        }
    }

    /// The session's id, unique in this process; also its subscriber id in the hub.
    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn tag(&self) -> &SessionTag {
        &self.tag
    }

    fn lock_queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The byte bound of the queue.
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// Bytes queued now.
    pub fn queued_bytes(&self) -> usize {
        self.lock_queue().bytes
    }

    /// Asks the session to close with `code`; the first request wins. Returns whether this
    /// request was the first.
    pub fn close(&self, code: u16, reason: &'static str) -> bool {
        let first = self.closing.set((code, reason)).is_ok();
        if first {
            let mut queue = self.lock_queue();
            queue.items.clear();
            queue.bytes = 0;
            queue.release_if_empty();
        }
        self.wake.notify_one();
        self.drained.notify_one();
        first
    }

    /// The close code and reason, once closing.
    pub fn closing(&self) -> Option<(u16, &'static str)> {
        self.closing.get().copied()
    }

    fn fits(&self, queue: &Queue, bytes: usize) -> bool {
        queue.items.is_empty()
            || (queue.items.len() < self.capacity && queue.bytes + bytes <= self.max_bytes)
    }

    /// Queues `item` for the session. Items for a closing session are dropped.
    pub fn push(&self, item: Outbound) -> Result<(), QueueFull> {
        if self.closing.get().is_some() {
            return Ok(());
        }
        let bytes = item.queued_bytes();
        let mut queue = self.lock_queue();
        if !self.fits(&queue, bytes) {
            return Err(QueueFull);
        }
        let was_empty = queue.items.is_empty();
        queue.items.push_back(item);
        queue.bytes += bytes;
        drop(queue);
        if was_empty {
            self.wake.notify_one();
        }
        Ok(())
    }

    /// Moves queued items, oldest first, to the end of `into`: up to `max` items and, past the
    /// first, up to `max_bytes` bytes. An emptied queue gives its memory back.
    pub fn take(&self, into: &mut VecDeque<Outbound>, max: usize, max_bytes: usize) {
        let mut queue = self.lock_queue();
        let before = queue.bytes;
        let mut taken_bytes = 0;
        let mut n = 0;
        while n < max {
            let Some(next) = queue.items.get(n) else {
                break;
            };
            let bytes = next.queued_bytes();
            if n > 0 && taken_bytes + bytes > max_bytes {
                break;
            }
            taken_bytes += bytes;
            n += 1;
        }
        if n == queue.items.len() && into.is_empty() {
            std::mem::swap(&mut queue.items, into);
        } else {
            into.extend(queue.items.drain(..n));
        }
        queue.bytes -= taken_bytes;
        queue.release_if_empty();
        let progressed = queue.bytes < before || n > 0;
        drop(queue);
        if progressed {
            self.drained.notify_one();
        }
    }

    /// Removes the oldest queued item.
    pub fn pop(&self) -> Option<Outbound> {
        let mut queue = self.lock_queue();
        let item = queue.items.pop_front();
        if let Some(item) = &item {
            queue.bytes -= item.queued_bytes();
        }
        queue.release_if_empty();
        drop(queue);
        if item.is_some() {
            self.drained.notify_one();
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

    /// Waits until `ready` holds for the queue's (frames, bytes), while the client keeps
    /// reading: each time something leaves the queue the `timeout` starts again; a whole
    /// `timeout` without progress is [`NoRoom::Stalled`].
    async fn wait_until(
        &self,
        timeout: Duration,
        ready: impl Fn(&Queue) -> bool,
    ) -> Result<(), NoRoom> {
        loop {
            let drained = self.drained.notified();
            if self.closing().is_some() {
                return Err(NoRoom::Closing);
            }
            if ready(&self.lock_queue()) {
                return Ok(());
            }
            if tokio::time::timeout(timeout, drained).await.is_err() {
                return Err(NoRoom::Stalled);
            }
        }
    }

    /// Waits until an item of `bytes` fits into half of the queue (frames and bytes), the share
    /// a history replay may fill: the other half stays free for live messages of the
    /// session's other channels (see [`SessionControl::wait_until`]).
    pub async fn wait_for_share(&self, bytes: usize, timeout: Duration) -> Result<(), NoRoom> {
        let (items, max_bytes) = ((self.capacity / 2).max(1), (self.max_bytes / 2).max(1));
        self.wait_until(timeout, |queue| {
            queue.items.is_empty()
                || (queue.items.len() < items && queue.bytes + bytes <= max_bytes)
        })
        .await
    }

    /// Waits until at most `bytes` are queued (see [`SessionControl::wait_until`]).
    pub async fn wait_below(&self, bytes: usize, timeout: Duration) -> Result<(), NoRoom> {
        self.wait_until(timeout, |queue| queue.bytes <= bytes).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(n: usize) -> Outbound {
        Outbound::Frame(Utf8Bytes::from("x".repeat(n)))
    }

    #[test]
    fn bounded_in_frames_and_bytes() {
        let q = SessionControl::new(3, 100);
        q.push(frame(60)).unwrap();
        assert!(q.push(frame(50)).is_err(), "60 + 50 > 100 bytes");
        q.push(frame(40)).unwrap();
        assert_eq!(q.queued_bytes(), 100);
        let mut into = VecDeque::new();
        q.take(&mut into, 32, 50);
        assert_eq!(into.len(), 1, "the first item always, then up to 50 bytes");
        assert_eq!(q.queued_bytes(), 40);
        q.push(Outbound::Ping).unwrap();
        q.push(Outbound::Ping).unwrap();
        assert!(q.push(Outbound::Ping).is_err(), "3 frames");
        q.take(&mut into, 32, 1 << 20);
        assert_eq!(q.queued_bytes(), 0);
        // One item always fits into an empty queue.
        q.push(frame(1000)).unwrap();
    }

    #[tokio::test]
    async fn waiting_for_room_ends_when_the_client_stops_reading() {
        let q = Arc::new(SessionControl::new(8, 100));
        q.push(frame(100)).unwrap();
        let timeout = Duration::from_millis(50);
        assert_eq!(q.wait_for_share(10, timeout).await, Err(NoRoom::Stalled));
        let reader = q.clone();
        let read = tokio::spawn(async move {
            let mut into = VecDeque::new();
            reader.take(&mut into, 1, 100);
        });
        q.wait_for_share(10, Duration::from_secs(10)).await.unwrap();
        read.await.unwrap();
        q.close(4001, "slow_consumer");
        assert_eq!(q.wait_below(0, timeout).await, Err(NoRoom::Closing));
    }
}
