//! The embedded broker: one node, history in memory. `cargo run -p chat-node` serves a
//! working chat with nothing else installed.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use super::{Broker, BrokerError, HistoryPage, HistoryStart, Message, PublishRequest};
use crate::fanout::Hub;
use crate::offset::Offset;

struct ChannelHistory {
    entries: VecDeque<Message>,
    last_id: Offset,
    /// Newest offset trimmed away (a `since` before it has a gap).
    max_deleted: Option<Offset>,
    touched: Instant,
}

pub struct MemoryBroker {
    hub: Arc<Hub>,
    history_size: usize,
    history_ttl: Duration,
    channels: Mutex<HashMap<String, ChannelHistory>>,
}

impl MemoryBroker {
    /// Creates the broker and its expiry sweeper (stops with `shutdown`).
    pub fn start(
        hub: Arc<Hub>,
        history_size: usize,
        history_ttl: Duration,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let broker = Arc::new(MemoryBroker {
            hub,
            history_size,
            history_ttl,
            channels: Mutex::new(HashMap::new()),
        });
        let weak = Arc::downgrade(&broker);
        let every = history_ttl.clamp(Duration::from_millis(100), Duration::from_secs(60));
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

    fn lock(&self) -> MutexGuard<'_, HashMap<String, ChannelHistory>> {
        self.channels.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn expire(&self) {
        let ttl = self.history_ttl;
        self.lock().retain(|_, h| h.touched.elapsed() < ttl);
    }

    fn append(&self, request: PublishRequest) -> Offset {
        let mut map = self.lock();
        let history = map
            .entry(request.channel.clone())
            .or_insert_with(|| ChannelHistory {
                entries: VecDeque::new(),
                last_id: Offset::ZERO,
                max_deleted: None,
                touched: Instant::now(),
            });
        let offset = history.last_id.next_after(request.ts_us / 1000);
        history.last_id = offset;
        history.touched = Instant::now();
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
        history.entries.push_back(message);
        while history.entries.len() > self.history_size {
            if let Some(old) = history.entries.pop_front() {
                history.max_deleted = Some(old.offset);
            }
        }
        offset
    }
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
        let map = self.lock();
        let start = match map.get(channel) {
            None => HistoryStart::default(),
            Some(h) => {
                let mut start = HistoryStart {
                    newest: h.last_id,
                    ..HistoryStart::default()
                };
                if let Some(since) = since {
                    let count = h.entries.len() - h.entries.partition_point(|m| m.offset <= since);
                    start.gap = h.max_deleted.is_some_and(|d| d > since) || count > limit;
                    start.count = if start.gap { 0 } else { count };
                }
                start
            }
        };
        drop(map);
        async move { Ok(start) }.boxed()
    }

    fn history_page<'a>(
        &'a self,
        channel: &'a str,
        after: Offset,
        max: usize,
    ) -> BoxFuture<'a, Result<HistoryPage, BrokerError>> {
        let map = self.lock();
        let page = match map.get(channel) {
            None => HistoryPage::default(),
            Some(h) => {
                let first = h.entries.partition_point(|m| m.offset <= after);
                HistoryPage {
                    messages: h.entries.range(first..).take(max).map(copy).collect(),
                    trimmed: h.max_deleted.is_some_and(|d| d > after),
                }
            }
        };
        drop(map);
        async move { Ok(page) }.boxed()
    }

    fn is_up(&self) -> bool {
        true
    }
}
