//! The fan-out scenario: `channels` x `subscribers_per_channel` subscriber connections
//! spread over the nodes, `publishers` publisher connections spread the same way, and the
//! publish rate stepped up. Each step publishes at a fixed total rate for a fixed time, then
//! waits until every acknowledged message reached every subscriber of its channel (or a
//! deadline), and checks per channel, by offset, that nothing was lost, duplicated or
//! reordered. Latency is publish-to-delivery: the publisher puts its wall-clock send time in
//! the message, the subscriber subtracts it from its own clock on receipt.
//!
//! Offsets: chat-node and the reference assign one per message (a Redis Stream id) and return it
//! in the publisher's `ack`. Centrifugo returns none in its publish reply (and has none with
//! history off), so for it each message carries its sequence number on its channel (`s`), set by
//! the channel's only publisher, and the publish reply confirms it.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

use crate::centrifugo;
use crate::client::{self, ClientFrame, Endpoint, Offset, Payload, Proto, ServerFrame, Ws};
use crate::procstat::{CpuUse, Watched};

/// Settings of the fan-out scenario.
#[derive(Debug, Clone)]
pub struct FanoutConfig {
    pub channels: usize,
    pub subscribers_per_channel: usize,
    pub publishers: usize,
    /// Length of the `text` padding in each message's data.
    pub payload_bytes: usize,
    pub step: Duration,
    pub drain_timeout: Duration,
    pub channel_prefix: String,
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

/// What one rate step measured for one server pair.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StepResult {
    pub rate: u64,
    pub published: u64,
    pub publish_errors: BTreeMap<String, u64>,
    pub achieved_rate: f64,
    pub deliveries: u64,
    pub deliveries_per_s: f64,
    pub latency: Latency,
    pub lost: u64,
    pub duplicated: u64,
    pub reordered: u64,
    pub unexpected: u64,
    pub disconnected: u64,
    pub drained: bool,
    pub drain_s: f64,
    pub server_cpu_s: f64,
    pub server_cpu_us_per_delivery: f64,
    /// The kernel's part of `server_cpu_us_per_delivery`.
    pub server_system_us_per_delivery: f64,
    pub redis_cpu_s: f64,
    pub loadgen_cpu_s: f64,
    pub loadgen_cpu_us_per_delivery: f64,
    /// Server CPU in cores (both nodes together) over the step.
    pub server_cores: f64,
    pub redis_cores: f64,
    pub loadgen_cores: f64,
    pub machine_busy_cores: f64,
}

impl StepResult {
    /// Nothing lost, duplicated, reordered or dropped, and every message delivered in time.
    pub fn clean(&self) -> bool {
        self.drained
            && self.lost == 0
            && self.duplicated == 0
            && self.reordered == 0
            && self.unexpected == 0
            && self.disconnected == 0
            && self.publish_errors.is_empty()
    }
}

#[derive(Default)]
struct Received {
    latencies_us: Vec<u64>,
    offsets: Vec<Offset>,
}

/// Shared between a subscriber task and the coordinator.
struct Subscriber {
    channel: usize,
    received: Mutex<Received>,
    closed: Mutex<Option<String>>,
}

/// What a publisher hands back after a step.
#[derive(Default)]
struct PublisherReport {
    sent: u64,
    send_seconds: f64,
    acked: Vec<(usize, Offset)>,
    errors: BTreeMap<String, u64>,
    unanswered: u64,
}

struct StepOrder {
    rate: f64,
    duration: Duration,
    ack_timeout: Duration,
    reply: oneshot::Sender<PublisherReport>,
}

/// Connections of one fan-out run against one set of nodes.
pub struct Session {
    /// Subscriptions the server confirmed as recoverable from history (Centrifugo only: its
    /// subscribe reply says so; shows that history is on where it should be, and only there).
    pub recoverable_subscriptions: usize,
    pub subscriber_count: usize,
    cfg: FanoutConfig,
    subscribers: Vec<Arc<Subscriber>>,
    publishers: Vec<mpsc::Sender<StepOrder>>,
    delivered: Arc<AtomicU64>,
    tasks: JoinSet<()>,
}

fn channel_name(cfg: &FanoutConfig, c: usize) -> String {
    format!("{}{c}", cfg.channel_prefix)
}

/// Errors setting up the session's connections.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("subscriber of channel {channel} failed to connect: {source}")]
    Connect {
        channel: String,
        #[source]
        source: client::ConnectError,
    },
    #[error("subscribe to {channel} was not confirmed: {detail}")]
    Subscribe { channel: String, detail: String },
}

impl Session {
    /// Connects every subscriber and publisher; returns once every subscription is confirmed.
    pub async fn connect(nodes: &[Endpoint], cfg: FanoutConfig) -> Result<Session, SetupError> {
        let delivered = Arc::new(AtomicU64::new(0));
        let mut tasks = JoinSet::new();
        let limit = Arc::new(Semaphore::new(64));
        let proto = nodes.first().map_or(Proto::ChatV1, |n| n.proto.clone());
        let mut pending = JoinSet::new();
        for c in 0..cfg.channels {
            for j in 0..cfg.subscribers_per_channel {
                let node = nodes[j % nodes.len()].clone();
                let name = channel_name(&cfg, c);
                let limit = limit.clone();
                let proto = proto.clone();
                pending.spawn(async move {
                    let _permit = limit.acquire_owned().await;
                    let mut ws = client::connect(&node, None).await.map_err(|source| {
                        SetupError::Connect {
                            channel: name.clone(),
                            source,
                        }
                    })?;
                    let recoverable = subscribe(&mut ws, &name, &proto).await?;
                    Ok::<_, SetupError>((c, ws, recoverable))
                });
            }
        }
        let mut subscribers = Vec::new();
        let mut recoverable_subscriptions = 0;
        while let Some(joined) = pending.join_next().await {
            let (c, ws, recoverable) = joined.expect("subscriber setup task panicked")?;
            recoverable_subscriptions += usize::from(recoverable);
            let sub = Arc::new(Subscriber {
                channel: c,
                received: Mutex::new(Received::default()),
                closed: Mutex::new(None),
            });
            subscribers.push(sub.clone());
            tasks.spawn(read_deliveries(ws, sub, delivered.clone(), proto.clone()));
        }
        let mut publishers = Vec::new();
        for p in 0..cfg.publishers {
            let node = &nodes[p % nodes.len()];
            let ws = client::connect(node, None)
                .await
                .map_err(|source| SetupError::Connect {
                    channel: format!("(publisher {p})"),
                    source,
                })?;
            let owned: Vec<usize> = (0..cfg.channels)
                .filter(|c| c % cfg.publishers == p)
                .collect();
            let (tx, rx) = mpsc::channel(1);
            publishers.push(tx);
            tasks.spawn(publisher(ws, owned, cfg.clone(), proto.clone(), rx));
        }
        Ok(Session {
            recoverable_subscriptions,
            subscriber_count: subscribers.len(),
            cfg,
            subscribers,
            publishers,
            delivered,
            tasks,
        })
    }

    /// Publishes at `rate` messages/s (all publishers together) for the configured step time,
    /// waits for the deliveries, and measures.
    pub async fn step(&mut self, rate: u64, watched: &Watched) -> anyhow::Result<StepResult> {
        let mark = watched.mark()?;
        let delivered_before = self.delivered.load(Ordering::Relaxed);
        let per_publisher = rate as f64 / self.publishers.len().max(1) as f64;
        let mut replies = Vec::new();
        for p in &self.publishers {
            let (reply, rx) = oneshot::channel();
            p.send(StepOrder {
                rate: per_publisher,
                duration: self.cfg.step,
                ack_timeout: self.cfg.drain_timeout,
                reply,
            })
            .await
            .map_err(|_| anyhow::anyhow!("a publisher task ended"))?;
            replies.push(rx);
        }
        let mut expected: BTreeMap<usize, Vec<Offset>> = BTreeMap::new();
        let mut result = StepResult {
            rate,
            ..Default::default()
        };
        let mut send_seconds: f64 = 0.0;
        for rx in replies {
            let report = rx.await?;
            result.published += report.sent;
            send_seconds = send_seconds.max(report.send_seconds);
            for (k, v) in report.errors {
                *result.publish_errors.entry(k).or_default() += v;
            }
            if report.unanswered > 0 {
                *result
                    .publish_errors
                    .entry("unanswered".to_owned())
                    .or_default() += report.unanswered;
            }
            for (c, o) in report.acked {
                expected.entry(c).or_default().push(o);
            }
        }
        let publish_done = Instant::now();
        let want: u64 = self
            .subscribers
            .iter()
            .map(|s| expected.get(&s.channel).map_or(0, Vec::len) as u64)
            .sum();
        let deadline = publish_done + self.cfg.drain_timeout;
        result.drained = loop {
            let got = self.delivered.load(Ordering::Relaxed) - delivered_before;
            if got >= want {
                break true;
            }
            if Instant::now() > deadline || self.disconnected() == self.subscribers.len() as u64 {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        result.drain_s = publish_done.elapsed().as_secs_f64();
        let cpu = watched.since(&mark)?;
        self.account(&mut result, &expected);
        fill_rates(&mut result, cpu, send_seconds, self.cfg.step);
        Ok(result)
    }

    fn disconnected(&self) -> u64 {
        self.subscribers
            .iter()
            .filter(|s| s.closed.lock().expect("poisoned").is_some())
            .count() as u64
    }

    /// Counts lost, duplicated, reordered and unexpected deliveries per subscriber and
    /// channel, and merges the latencies.
    fn account(&self, result: &mut StepResult, expected: &BTreeMap<usize, Vec<Offset>>) {
        let mut hist = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).expect("bounds");
        let empty = Vec::new();
        for sub in &self.subscribers {
            let received = std::mem::take(&mut *sub.received.lock().expect("poisoned"));
            let want: HashSet<Offset> = expected
                .get(&sub.channel)
                .unwrap_or(&empty)
                .iter()
                .copied()
                .collect();
            let counts = Counts::of(&received.offsets, &want);
            result.duplicated += counts.duplicated;
            result.reordered += counts.reordered;
            result.unexpected += counts.unexpected;
            result.lost += counts.lost;
            result.deliveries += received.offsets.len() as u64;
            for l in received.latencies_us {
                hist.saturating_record(l.max(1));
            }
        }
        result.disconnected = self.disconnected();
        let ms = |us: u64| us as f64 / 1000.0;
        result.latency = Latency {
            p50_ms: ms(hist.value_at_quantile(0.5)),
            p99_ms: ms(hist.value_at_quantile(0.99)),
            p999_ms: ms(hist.value_at_quantile(0.999)),
            max_ms: ms(hist.max()),
        };
    }

    /// Closes every connection.
    pub async fn close(mut self) {
        self.publishers.clear();
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Delivery faults of one subscriber on one channel.
#[derive(Debug, Default, PartialEq, Eq)]
struct Counts {
    lost: u64,
    duplicated: u64,
    reordered: u64,
    unexpected: u64,
}

impl Counts {
    /// Compares what a subscriber received, in arrival order, with the acknowledged offsets
    /// of its channel: lost = acked but never received; duplicated = an offset received again;
    /// reordered = an offset lower than one received before it; unexpected = never acked.
    fn of(received: &[Offset], expected: &HashSet<Offset>) -> Counts {
        let mut c = Counts::default();
        let mut seen = HashSet::with_capacity(received.len());
        let mut newest: Option<Offset> = None;
        for o in received {
            if !seen.insert(*o) {
                c.duplicated += 1;
                continue;
            }
            if newest.is_some_and(|n| *o < n) {
                c.reordered += 1;
            }
            newest = newest.max(Some(*o));
            if !expected.contains(o) {
                c.unexpected += 1;
            }
        }
        c.lost = expected.iter().filter(|o| !seen.contains(o)).count() as u64;
        c
    }
}

fn fill_rates(result: &mut StepResult, cpu: CpuUse, send_seconds: f64, step: Duration) {
    let step_s = step.as_secs_f64();
    result.achieved_rate = result.published as f64 / send_seconds.max(step_s);
    result.deliveries_per_s = result.deliveries as f64 / step_s;
    result.server_cpu_s = cpu.server_s;
    result.redis_cpu_s = cpu.redis_s;
    result.loadgen_cpu_s = cpu.loadgen_s;
    result.machine_busy_cores = cpu.machine_busy_cores;
    result.server_cores = cpu.server_s / cpu.wall_s.max(1e-9);
    result.loadgen_cores = cpu.loadgen_s / cpu.wall_s.max(1e-9);
    result.redis_cores = cpu.redis_s / cpu.wall_s.max(1e-9);
    if result.deliveries > 0 {
        let d = result.deliveries as f64;
        result.server_cpu_us_per_delivery = cpu.server_s * 1e6 / d;
        result.server_system_us_per_delivery = cpu.server_system_s * 1e6 / d;
        result.loadgen_cpu_us_per_delivery = cpu.loadgen_s * 1e6 / d;
    }
}

/// Subscribes; true when the server says the subscription is recoverable (Centrifugo).
async fn subscribe(ws: &mut Ws, channel: &str, proto: &Proto) -> Result<bool, SetupError> {
    let frame = match proto {
        Proto::ChatV1 => {
            serde_json::to_string(&ClientFrame::Subscribe { channel }).expect("serializable")
        }
        // Id 1 was the connect command.
        Proto::Centrifugo(_) => centrifugo::subscribe_command(2, channel),
    };
    let fail = |detail: String| SetupError::Subscribe {
        channel: channel.to_owned(),
        detail,
    };
    ws.send(Message::text(frame))
        .await
        .map_err(|e| fail(e.to_string()))?;
    let confirm = async {
        while let Some(msg) = ws.next().await {
            let msg = msg.map_err(|e| fail(e.to_string()))?;
            let Message::Text(text) = msg else { continue };
            match proto {
                Proto::ChatV1 => {
                    let f: ServerFrame<'_> =
                        serde_json::from_str(text.as_str()).map_err(|e| fail(e.to_string()))?;
                    match f.kind {
                        "subscribed" if f.channel == Some(channel) => return Ok(false),
                        "error" => return Err(fail(format!("error {:?}", f.code))),
                        _ => {}
                    }
                }
                Proto::Centrifugo(_) => {
                    for r in centrifugo::replies(text.as_str()) {
                        if r.is_ping() {
                            ws.send(Message::text(centrifugo::PONG))
                                .await
                                .map_err(|e| fail(e.to_string()))?;
                        } else if r.id == Some(2) {
                            if let Some(e) = r.error {
                                return Err(fail(format!("error {} {}", e.code, e.message)));
                            }
                            return Ok(r.subscribe.is_some_and(|s| s.recoverable));
                        }
                    }
                }
            }
        }
        Err(fail("connection closed".to_owned()))
    };
    tokio::time::timeout(Duration::from_secs(30), confirm)
        .await
        .map_err(|_| fail("timed out".to_owned()))?
}

/// A delivery read from a subscriber's frame: its offset and publish time.
fn delivery_v1(text: &str) -> Option<(Offset, u64)> {
    let f = serde_json::from_str::<ServerFrame<'_>>(text).ok()?;
    if f.kind != "message" {
        return None;
    }
    Some((f.offset.and_then(Offset::parse)?, f.data?.t))
}

fn record(sub: &Subscriber, delivered: &AtomicU64, offset: Offset, now: u64, sent: u64) {
    {
        let mut r = sub.received.lock().expect("poisoned");
        r.offsets.push(offset);
        r.latencies_us.push(now.saturating_sub(sent));
    }
    delivered.fetch_add(1, Ordering::Relaxed);
}

async fn read_deliveries(
    mut ws: Ws,
    sub: Arc<Subscriber>,
    delivered: Arc<AtomicU64>,
    proto: Proto,
) {
    let reason = loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => {
                let now = client::now_micros();
                match proto {
                    Proto::ChatV1 => {
                        if let Some((offset, t)) = delivery_v1(text.as_str()) {
                            record(&sub, &delivered, offset, now, t);
                        }
                    }
                    Proto::Centrifugo(_) => {
                        let mut ping = false;
                        for r in centrifugo::replies(text.as_str()) {
                            ping |= r.is_ping();
                            let data = r.push.and_then(|p| p.publication).map(|p| p.data);
                            if let Some(Payload { t, s: Some(s), .. }) = data {
                                record(&sub, &delivered, Offset(s, 0), now, t);
                            }
                        }
                        if ping && ws.send(Message::text(centrifugo::PONG)).await.is_err() {
                            break "failed to answer a ping".to_owned();
                        }
                    }
                }
            }
            Some(Ok(Message::Close(frame))) => {
                break format!("closed by server: {frame:?}");
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => break format!("error: {e}"),
            None => break "connection ended".to_owned(),
        }
    };
    *sub.closed.lock().expect("poisoned") = Some(reason);
}

#[derive(Default)]
struct Acks {
    acked: Vec<(usize, Offset)>,
    errors: BTreeMap<String, u64>,
}

impl Acks {
    fn error(&mut self, code: &str) {
        *self.errors.entry(code.to_owned()).or_default() += 1;
    }
}

async fn publisher(
    ws: Ws,
    owned: Vec<usize>,
    cfg: FanoutConfig,
    proto: Proto,
    mut orders: mpsc::Receiver<StepOrder>,
) {
    let (mut sink, stream) = ws.split();
    let acks = Arc::new(Mutex::new(Acks::default()));
    let answered = Arc::new(AtomicU64::new(0));
    // Centrifugo's pings arrive on the reader; the answer goes out here, on the sink.
    let (ping_tx, mut pings) = mpsc::unbounded_channel();
    let reader = tokio::spawn(read_acks(
        stream,
        acks.clone(),
        answered.clone(),
        proto.clone(),
        owned.len(),
        ping_tx,
    ));
    let names: Vec<String> = owned.iter().map(|c| channel_name(&cfg, *c)).collect();
    let refs: Vec<String> = (0..owned.len()).map(|i| i.to_string()).collect();
    let text = "x".repeat(cfg.payload_bytes);
    let mut total_sent = 0u64;
    loop {
        let order = tokio::select! {
            order = orders.recv() => match order {
                Some(order) => order,
                None => break,
            },
            Some(()) = pings.recv() => {
                if sink.send(Message::text(centrifugo::PONG)).await.is_err() {
                    break;
                }
                continue;
            }
        };
        let answered_before = answered.load(Ordering::Relaxed);
        let frames = Frames {
            proto: &proto,
            names: &names,
            refs: &refs,
            text: &text,
        };
        let (sent, send_seconds) = paced_publish(
            &mut sink,
            &mut pings,
            &frames,
            order.rate,
            order.duration,
            total_sent,
        )
        .await;
        total_sent += sent;
        let deadline = Instant::now() + order.ack_timeout;
        while answered.load(Ordering::Relaxed) - answered_before < sent && Instant::now() < deadline
        {
            answer_pings(&mut sink, &mut pings).await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let got = std::mem::take(&mut *acks.lock().expect("poisoned"));
        let answered_now = answered.load(Ordering::Relaxed) - answered_before;
        let report = PublisherReport {
            sent,
            send_seconds,
            acked: got.acked.into_iter().map(|(i, o)| (owned[i], o)).collect(),
            errors: got.errors,
            unanswered: sent.saturating_sub(answered_now),
        };
        let _ = order.reply.send(report);
    }
    reader.abort();
}

/// Answers the pings the reader has seen since the last call.
async fn answer_pings(sink: &mut SplitSink<Ws, Message>, pings: &mut mpsc::UnboundedReceiver<()>) {
    let mut any = false;
    while pings.try_recv().is_ok() {
        any = true;
        let _ = sink.feed(Message::text(centrifugo::PONG)).await;
    }
    if any {
        let _ = sink.flush().await;
    }
}

/// What a publisher sends: its channels, in its protocol.
struct Frames<'a> {
    proto: &'a Proto,
    names: &'a [String],
    /// chat-node's `ref` of each channel: its index in `names`.
    refs: &'a [String],
    text: &'a str,
}

impl Frames<'_> {
    /// The publisher's `k`-th publish (counted over all steps): channel `k mod n`, and for
    /// Centrifugo command id `k + 2` (1 was connect) and sequence number `k div n` on the
    /// channel, from which [`read_acks`] recovers both.
    fn publish(&self, k: u64) -> String {
        let n = self.names.len() as u64;
        let i = (k % n) as usize;
        let t = client::now_micros();
        match self.proto {
            Proto::ChatV1 => serde_json::to_string(&ClientFrame::Publish {
                channel: &self.names[i],
                data: &Payload {
                    t,
                    text: self.text,
                    s: None,
                },
                reference: &self.refs[i],
            })
            .expect("serializable"),
            Proto::Centrifugo(_) => centrifugo::publish_command(
                (k + 2) as u32,
                &self.names[i],
                &Payload {
                    t,
                    text: self.text,
                    s: Some(k / n),
                },
            ),
        }
    }
}

/// Sends `rate * duration` publishes, paced on a 1 ms tick, round-robin over the channels.
/// Returns how many were sent and how long sending took.
async fn paced_publish(
    sink: &mut SplitSink<Ws, Message>,
    pings: &mut mpsc::UnboundedReceiver<()>,
    frames: &Frames<'_>,
    rate: f64,
    duration: Duration,
    offset: u64,
) -> (u64, f64) {
    let total = (rate * duration.as_secs_f64()).round() as u64;
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut sent = 0u64;
    while sent < total {
        tick.tick().await;
        answer_pings(sink, pings).await;
        let due = ((start.elapsed().as_secs_f64() * rate) as u64 + 1).min(total);
        while sent < due {
            if sink
                .feed(Message::text(frames.publish(offset + sent)))
                .await
                .is_err()
            {
                return (sent, start.elapsed().as_secs_f64());
            }
            sent += 1;
        }
        if sink.flush().await.is_err() {
            break;
        }
    }
    (sent, start.elapsed().as_secs_f64())
}

async fn read_acks(
    mut stream: SplitStream<Ws>,
    acks: Arc<Mutex<Acks>>,
    answered: Arc<AtomicU64>,
    proto: Proto,
    channels: usize,
    pings: mpsc::UnboundedSender<()>,
) {
    while let Some(Ok(msg)) = stream.next().await {
        let Message::Text(text) = msg else { continue };
        match proto {
            Proto::ChatV1 => {
                let Ok(f) = serde_json::from_str::<ServerFrame<'_>>(text.as_str()) else {
                    continue;
                };
                // `ref` is the index of the channel in this publisher's list.
                let index = f.reference.and_then(|r| r.parse::<usize>().ok());
                match f.kind {
                    "ack" => {
                        if let (Some(i), Some(o)) = (index, f.offset.and_then(Offset::parse)) {
                            acks.lock().expect("poisoned").acked.push((i, o));
                        }
                    }
                    "error" => acks
                        .lock()
                        .expect("poisoned")
                        .error(f.code.unwrap_or("unknown")),
                    _ => continue,
                }
                answered.fetch_add(1, Ordering::Relaxed);
            }
            Proto::Centrifugo(_) => {
                for r in centrifugo::replies(text.as_str()) {
                    if r.is_ping() {
                        let _ = pings.send(());
                        continue;
                    }
                    // See Frames::publish for how an id maps to a channel and sequence number.
                    let Some(k) = r.id.and_then(|id| u64::from(id).checked_sub(2)) else {
                        continue;
                    };
                    let n = channels.max(1) as u64;
                    if let Some(e) = r.error {
                        acks.lock().expect("poisoned").error(&e.code.to_string());
                    } else if r.publish.is_some() {
                        let ack = ((k % n) as usize, Offset(k / n, 0));
                        acks.lock().expect("poisoned").acked.push(ack);
                    } else {
                        continue;
                    }
                    answered.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offsets(v: &[u64]) -> Vec<Offset> {
        v.iter().map(|n| Offset(*n, 0)).collect()
    }

    #[test]
    fn counts_faults_by_offset() {
        let expected: HashSet<Offset> = offsets(&[1, 2, 3, 4, 5]).into_iter().collect();
        assert_eq!(
            Counts::of(&offsets(&[1, 2, 3, 4, 5]), &expected),
            Counts::default()
        );
        assert_eq!(
            Counts::of(&offsets(&[1, 3, 2, 3, 9]), &expected),
            Counts {
                lost: 2,
                duplicated: 1,
                reordered: 1,
                unexpected: 1
            }
        );
    }
}
