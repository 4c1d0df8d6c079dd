//! The fan-out scenario: `channels` x `subscribers_per_channel` subscriber connections
//! spread over the nodes, `publishers` publisher connections spread the same way, and the
//! publish rate stepped up. Each step publishes at a fixed total rate for a fixed time, then
//! waits until every acknowledged message reached every subscriber of its channel (or a
//! deadline), and checks per channel, by offset, that nothing was lost, duplicated or
//! reordered. Latency is publish-to-delivery: the publisher puts its wall-clock send time in
//! the message, the subscriber subtracts it from its own clock on receipt.

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

use crate::client::{self, ClientFrame, Endpoint, Offset, Payload, ServerFrame, Ws};
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
        let mut pending = JoinSet::new();
        for c in 0..cfg.channels {
            for j in 0..cfg.subscribers_per_channel {
                let node = nodes[j % nodes.len()].clone();
                let name = channel_name(&cfg, c);
                let limit = limit.clone();
                pending.spawn(async move {
                    let _permit = limit.acquire_owned().await;
                    let mut ws = client::connect(&node, None).await.map_err(|source| {
                        SetupError::Connect {
                            channel: name.clone(),
                            source,
                        }
                    })?;
                    subscribe(&mut ws, &name).await?;
                    Ok::<_, SetupError>((c, ws))
                });
            }
        }
        let mut subscribers = Vec::new();
        while let Some(joined) = pending.join_next().await {
            let (c, ws) = joined.expect("subscriber setup task panicked")?;
            let sub = Arc::new(Subscriber {
                channel: c,
                received: Mutex::new(Received::default()),
                closed: Mutex::new(None),
            });
            subscribers.push(sub.clone());
            tasks.spawn(read_deliveries(ws, sub, delivered.clone()));
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
            tasks.spawn(publisher(ws, owned, cfg.clone(), rx));
        }
        Ok(Session {
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

async fn subscribe(ws: &mut Ws, channel: &str) -> Result<(), SetupError> {
    let frame = serde_json::to_string(&ClientFrame::Subscribe { channel }).expect("serializable");
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
            if let Message::Text(text) = msg {
                let f: ServerFrame<'_> =
                    serde_json::from_str(text.as_str()).map_err(|e| fail(e.to_string()))?;
                match f.kind {
                    "subscribed" if f.channel == Some(channel) => return Ok(()),
                    "error" => return Err(fail(format!("error {:?}", f.code))),
                    _ => {}
                }
            }
        }
        Err(fail("connection closed".to_owned()))
    };
    tokio::time::timeout(Duration::from_secs(30), confirm)
        .await
        .map_err(|_| fail("timed out".to_owned()))?
}

async fn read_deliveries(mut ws: Ws, sub: Arc<Subscriber>, delivered: Arc<AtomicU64>) {
    let reason = loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => {
                let now = client::now_micros();
                let Ok(f) = serde_json::from_str::<ServerFrame<'_>>(text.as_str()) else {
                    continue;
                };
                if f.kind != "message" {
                    continue;
                }
                let (Some(offset), Some(data)) = (f.offset.and_then(Offset::parse), f.data) else {
                    continue;
                };
                {
                    let mut r = sub.received.lock().expect("poisoned");
                    r.offsets.push(offset);
                    r.latencies_us.push(now.saturating_sub(data.t));
                }
                delivered.fetch_add(1, Ordering::Relaxed);
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

async fn publisher(
    ws: Ws,
    owned: Vec<usize>,
    cfg: FanoutConfig,
    mut orders: mpsc::Receiver<StepOrder>,
) {
    let (mut sink, stream) = ws.split();
    let acks = Arc::new(Mutex::new(Acks::default()));
    let answered = Arc::new(AtomicU64::new(0));
    let reader = tokio::spawn(read_acks(stream, acks.clone(), answered.clone()));
    let names: Vec<String> = owned.iter().map(|c| channel_name(&cfg, *c)).collect();
    let refs: Vec<String> = (0..owned.len()).map(|i| i.to_string()).collect();
    let text = "x".repeat(cfg.payload_bytes);
    let mut total_sent = 0u64;
    while let Some(order) = orders.recv().await {
        let answered_before = answered.load(Ordering::Relaxed);
        let (sent, send_seconds) = paced_publish(
            &mut sink,
            &names,
            &refs,
            &text,
            order.rate,
            order.duration,
            total_sent,
        )
        .await;
        total_sent += sent;
        let deadline = Instant::now() + order.ack_timeout;
        while answered.load(Ordering::Relaxed) - answered_before < sent && Instant::now() < deadline
        {
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

/// Sends `rate * duration` publishes, paced on a 1 ms tick, round-robin over the channels.
/// Returns how many were sent and how long sending took.
async fn paced_publish(
    sink: &mut SplitSink<Ws, Message>,
    names: &[String],
    refs: &[String],
    text: &str,
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
        let due = ((start.elapsed().as_secs_f64() * rate) as u64 + 1).min(total);
        while sent < due {
            let i = ((offset + sent) % names.len() as u64) as usize;
            let data = Payload {
                t: client::now_micros(),
                text,
            };
            let frame = serde_json::to_string(&ClientFrame::Publish {
                channel: &names[i],
                data: &data,
                reference: &refs[i],
            })
            .expect("serializable");
            if sink.feed(Message::text(frame)).await.is_err() {
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

async fn read_acks(mut stream: SplitStream<Ws>, acks: Arc<Mutex<Acks>>, answered: Arc<AtomicU64>) {
    while let Some(Ok(msg)) = stream.next().await {
        let Message::Text(text) = msg else { continue };
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
            "error" => {
                let code = f.code.unwrap_or("unknown").to_owned();
                *acks
                    .lock()
                    .expect("poisoned")
                    .errors
                    .entry(code)
                    .or_default() += 1;
            }
            _ => continue,
        }
        answered.fetch_add(1, Ordering::Relaxed);
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
