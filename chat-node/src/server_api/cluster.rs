//! The server API across nodes, through Redis:
//!
//! - a control channel, `chatnode:{api}:control`, on which a node announces a [`Command`] to
//!   every node (itself included); each node carries it out and answers on the asking node's
//!   reply channel, `chatnode:{api}:reply:<node>`, with how many sessions it touched. `PUBLISH`
//!   tells how many nodes listen, so the asking node knows how many answers to wait for (never
//!   longer than [`REPLY_TIMEOUT`]). On a Redis Cluster the channels are sharded Pub/Sub like
//!   the live feed (all share the `{api}` slot);
//! - node announcements: every `--node-announce-interval` each node writes its connections and
//!   subscriptions into the hash `chatnode:{api}:nodes` (field = node id, with an expiry time
//!   three intervals ahead) and its channels with subscriber counts into
//!   `chatnode:{api}:channels:<node>` (a hash with the same TTL); `info` and `channels` read
//!   them, skipping (and removing) nodes whose announcement expired. A node that stops cleanly
//!   removes its own entries at once;
//! - revocations: the sorted set `chatnode:{api}:revoked` (member `t:<jti>` or
//!   `u:<at>:<user>`, score = `until`), loaded whenever the control channel (re)connects, so a
//!   node misses nothing announced while it was away.
//!
//! One task owns the control channel: it reconnects with capped backoff like the broker, and
//! while it is down the cross-node methods answer `unavailable`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use redis::RedisError;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::commands::{Command, apply};
use super::revocations::{MAX_REVOCATIONS, Revocation, now_secs};
use crate::broker::BrokerError;
use crate::broker::link::{self, Commands, Feed};
use crate::broker::target::ReloadingTarget;
use crate::server::AppState;

const CONTROL: &str = "chatnode:{api}:control";
const REPLY_PREFIX: &str = "chatnode:{api}:reply:";
const NODES: &str = "chatnode:{api}:nodes";
const CHANNELS_PREFIX: &str = "chatnode:{api}:channels:";
const REVOKED: &str = "chatnode:{api}:revoked";

/// The longest a command waits for the other nodes' answers.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(2);
/// Channels one node announces (the ones with the most subscribers first).
pub const MAX_ANNOUNCED_CHANNELS: usize = 10_000;
/// Nodes `info` and `channels` read at most.
pub const MAX_NODES: usize = 1_000;
const BACKOFF_CAP: Duration = Duration::from_secs(3);

fn reply_channel(node: &str) -> String {
    format!("{REPLY_PREFIX}{node}")
}

fn channels_key(node: &str) -> String {
    format!("{CHANNELS_PREFIX}{node}")
}

/// A command on the control channel.
#[derive(Serialize, Deserialize)]
struct Envelope {
    id: u64,
    from: String,
    command: Command,
}

/// An answer on a reply channel.
#[derive(Serialize, Deserialize)]
struct Reply {
    id: u64,
    count: u64,
}

/// One node as it announces itself.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeInfo {
    pub node: String,
    pub connections: u64,
    pub subscriptions: u64,
    /// Unix milliseconds after which the announcement no longer counts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<u64>,
}

/// What a command achieved across nodes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Sessions touched, summed over the nodes that answered.
    pub count: u64,
    /// Nodes that answered.
    pub nodes: u64,
}

pub struct RedisControl {
    node: String,
    up: AtomicBool,
    conn: RwLock<Option<Commands>>,
    publish_command: &'static str,
    pending: Mutex<HashMap<u64, mpsc::UnboundedSender<u64>>>,
    next_id: AtomicU64,
    announce_every: Duration,
}

fn unavailable(e: RedisError) -> BrokerError {
    if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() {
        BrokerError::Unavailable
    } else {
        BrokerError::Internal(e.to_string())
    }
}

fn now_ms() -> u64 {
    crate::broker::now_us() / 1000
}

impl RedisControl {
    /// Starts the control task; it connects in the background.
    pub fn start(
        target: ReloadingTarget,
        app: Arc<AppState>,
        announce_every: Duration,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let control = Arc::new(RedisControl {
            node: app.node_id.clone(),
            up: AtomicBool::new(false),
            conn: RwLock::new(None),
            publish_command: if target.is_cluster() {
                "SPUBLISH"
            } else {
                "PUBLISH"
            },
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(fastrand::u64(..)),
            announce_every: announce_every.max(Duration::from_millis(10)),
        });
        tokio::spawn(supervise(control.clone(), target, app, shutdown));
        control
    }

    fn connection(&self) -> Result<Commands, BrokerError> {
        if !self.up.load(Ordering::Acquire) {
            return Err(BrokerError::Unavailable);
        }
        self.conn
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or(BrokerError::Unavailable)
    }

    fn set_conn(&self, conn: Option<Commands>) {
        self.up.store(conn.is_some(), Ordering::Release);
        *self.conn.write().unwrap_or_else(|p| p.into_inner()) = conn;
    }

    /// Announces `command` to every node and sums their answers.
    pub async fn execute(&self, command: Command) -> Result<Outcome, BrokerError> {
        let mut conn = self.connection()?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = mpsc::unbounded_channel();
        self.lock_pending().insert(id, tx);
        let _forget = Forget { control: self, id };
        let envelope = Envelope {
            id,
            from: self.node.clone(),
            command,
        };
        let payload =
            serde_json::to_string(&envelope).map_err(|e| BrokerError::Internal(e.to_string()))?;
        let receivers: u64 = redis::cmd(self.publish_command)
            .arg(CONTROL)
            .arg(payload)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let mut outcome = Outcome::default();
        let deadline = tokio::time::Instant::now() + REPLY_TIMEOUT;
        while outcome.nodes < receivers {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(count)) => {
                    outcome.count += count;
                    outcome.nodes += 1;
                }
                _ => {
                    warn!(
                        details.answered = outcome.nodes,
                        details.listening = receivers,
                        "not every node answered a server API command in time"
                    );
                    break;
                }
            }
        }
        Ok(outcome)
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, HashMap<u64, mpsc::UnboundedSender<u64>>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores a revocation in Redis (refused past [`MAX_REVOCATIONS`]), then announces it.
    pub async fn revoke(
        &self,
        revocation: Revocation,
    ) -> Result<Result<Outcome, Full>, BrokerError> {
        let mut conn = self.connection()?;
        let now = now_secs();
        let (held,): (u64,) = redis::pipe()
            .cmd("ZREMRANGEBYSCORE")
            .arg(REVOKED)
            .arg("-inf")
            .arg(now)
            .ignore()
            .cmd("ZCARD")
            .arg(REVOKED)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let member = member_of(&revocation);
        if held >= MAX_REVOCATIONS as u64 {
            let known: Option<f64> = redis::cmd("ZSCORE")
                .arg(REVOKED)
                .arg(&member)
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?;
            if known.is_none() {
                return Ok(Err(Full));
            }
        }
        // GT: a second revocation of the same token never shortens the first.
        let _: () = redis::cmd("ZADD")
            .arg(REVOKED)
            .arg("GT")
            .arg(revocation.until())
            .arg(&member)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        self.execute(Command::Revoke { revocation }).await.map(Ok)
    }

    /// Every node whose announcement has not expired, by name.
    pub async fn nodes(&self) -> Result<Vec<NodeInfo>, BrokerError> {
        let mut conn = self.connection()?;
        let all: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(NODES)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let now = now_ms();
        let mut nodes = Vec::new();
        let mut expired = Vec::new();
        for (name, json) in all {
            match serde_json::from_str::<NodeInfo>(&json) {
                Ok(info) if info.expires_ms.is_some_and(|e| e > now) => nodes.push(info),
                _ => expired.push(name),
            }
        }
        if !expired.is_empty() {
            let _: Result<(), RedisError> = redis::cmd("HDEL")
                .arg(NODES)
                .arg(&expired)
                .query_async(&mut conn)
                .await;
        }
        nodes.sort_by(|a, b| a.node.cmp(&b.node));
        nodes.truncate(MAX_NODES);
        for node in &mut nodes {
            node.expires_ms = None;
        }
        Ok(nodes)
    }

    /// Channels with their subscriber counts summed over the live nodes.
    pub async fn channels(&self) -> Result<HashMap<String, u64>, BrokerError> {
        let nodes = self.nodes().await?;
        let mut conn = self.connection()?;
        let mut pipe = redis::pipe();
        for node in &nodes {
            pipe.cmd("HGETALL").arg(channels_key(&node.node));
        }
        let per_node: Vec<HashMap<String, u64>> =
            pipe.query_async(&mut conn).await.map_err(unavailable)?;
        let mut total: HashMap<String, u64> = HashMap::new();
        for counts in per_node {
            for (channel, count) in counts {
                *total.entry(channel).or_default() += count;
            }
        }
        Ok(total)
    }
}

/// The revocations set is full.
pub use super::revocations::Full;

/// Forgets a command's pending answers when its call ends (answered, timed out or dropped).
struct Forget<'a> {
    control: &'a RedisControl,
    id: u64,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.control.lock_pending().remove(&self.id);
    }
}

fn member_of(revocation: &Revocation) -> String {
    match revocation {
        Revocation::Token { id, .. } => format!("t:{id}"),
        Revocation::User { user, at, .. } => format!("u:{at}:{user}"),
    }
}

fn revocation_of(member: &str, until: u64) -> Option<Revocation> {
    if let Some(id) = member.strip_prefix("t:") {
        return Some(Revocation::Token {
            id: id.to_owned(),
            until,
        });
    }
    let (at, user) = member.strip_prefix("u:")?.split_once(':')?;
    Some(Revocation::User {
        user: user.to_owned(),
        at: at.parse().ok()?,
        until,
    })
}

async fn load_revocations(conn: &mut Commands) -> Result<Vec<Revocation>, RedisError> {
    let now = now_secs();
    let held: Vec<(String, f64)> = redis::cmd("ZRANGEBYSCORE")
        .arg(REVOKED)
        .arg(format!("({now}"))
        .arg("+inf")
        .arg("WITHSCORES")
        .arg("LIMIT")
        .arg(0)
        .arg(MAX_REVOCATIONS)
        .query_async(conn)
        .await?;
    Ok(held
        .into_iter()
        .filter_map(|(member, until)| revocation_of(&member, until as u64))
        .collect())
}

/// Writes this node's announcement: its counts, and its channels with subscriber counts.
async fn announce(app: &AppState, conn: &mut Commands, every: Duration) -> Result<(), RedisError> {
    let mut channels = app.hub.subscriber_counts();
    let subscriptions: usize = channels.iter().map(|(_, n)| n).sum();
    let ttl = every * 3;
    let info = NodeInfo {
        node: app.node_id.clone(),
        connections: app.sessions.len() as u64,
        subscriptions: subscriptions as u64,
        expires_ms: Some(now_ms() + ttl.as_millis() as u64),
    };
    if channels.len() > MAX_ANNOUNCED_CHANNELS {
        channels.sort_unstable_by_key(|c| std::cmp::Reverse(c.1));
        channels.truncate(MAX_ANNOUNCED_CHANNELS);
    }
    let key = channels_key(&app.node_id);
    let mut pipe = redis::pipe();
    pipe.atomic()
        .cmd("HSET")
        .arg(NODES)
        .arg(&app.node_id)
        .arg(serde_json::to_string(&info).unwrap_or_default())
        .ignore()
        .cmd("DEL")
        .arg(&key)
        .ignore();
    for chunk in channels.chunks(512) {
        let cmd = pipe.cmd("HSET").arg(&key);
        for (channel, count) in chunk {
            cmd.arg(channel).arg(*count);
        }
        cmd.ignore();
    }
    pipe.cmd("PEXPIRE")
        .arg(&key)
        .arg(ttl.as_millis() as u64)
        .ignore();
    pipe.query_async::<()>(conn).await
}

/// Removes this node's announcement (a clean stop).
async fn withdraw(node: &str, conn: &mut Commands) {
    let _: Result<(), RedisError> = redis::pipe()
        .cmd("HDEL")
        .arg(NODES)
        .arg(node)
        .ignore()
        .cmd("DEL")
        .arg(channels_key(node))
        .ignore()
        .query_async(conn)
        .await;
}

async fn supervise(
    control: Arc<RedisControl>,
    mut target: ReloadingTarget,
    app: Arc<AppState>,
    shutdown: CancellationToken,
) {
    let mut failures: u32 = 0;
    loop {
        let why = match link::connect(target.current()).await {
            Ok(connected) => serve(&control, &app, connected, &shutdown, &mut failures).await,
            Err(e) => e.to_string(),
        };
        control.set_conn(None);
        if shutdown.is_cancelled() {
            return;
        }
        if failures == 0 || failures.is_multiple_of(20) {
            warn!(details.reason = %why, "server API control channel down, retrying");
        }
        failures = failures.saturating_add(1);
        let step = Duration::from_millis(100)
            .saturating_mul(1u32 << failures.min(8))
            .min(BACKOFF_CAP);
        tokio::select! {
            _ = tokio::time::sleep(step.mul_f64(0.5 + fastrand::f64() * 0.5)) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// Runs one connected session of the control channel; returns why it ended.
async fn serve(
    control: &RedisControl,
    app: &Arc<AppState>,
    connected: link::Connected,
    shutdown: &CancellationToken,
    failures: &mut u32,
) -> String {
    let link::Connected {
        commands: mut conn,
        feed,
        ..
    } = connected;
    let reply_name = reply_channel(&control.node);
    if let Err(e) = feed
        .sink
        .subscribe(&[CONTROL.to_owned(), reply_name.clone()])
        .await
    {
        return e.to_string();
    }
    match load_revocations(&mut conn).await {
        Ok(held) => app.revocations.replace_all(&held, now_secs()),
        Err(e) => return e.to_string(),
    }
    control.set_conn(Some(conn.clone()));
    *failures = 0;
    info!("server API control channel connected");
    let mut stream = feed.stream;
    let mut tick = tokio::time::interval(control.announce_every);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                withdraw(&control.node, &mut conn).await;
                return "shutdown".to_owned();
            }
            message = stream.next() => match message {
                Err(why) => return why.to_owned(),
                // Never unsubscribed here: Redis dropped a channel (its cluster slot moved to
                // another primary). Connecting again subscribes it where it is now.
                Ok(Feed::Unsubscribed(name)) => {
                    return format!("redis dropped the subscription of {name} (its cluster slot moved)");
                }
                // A cluster node's connection dropped: connecting again from the seeds finds
                // the control channels' shards wherever they are now (commands sent while
                // disconnected are answered by the caller's timeout, as before).
                Ok(Feed::NodeLost) => return "a cluster node's connection dropped".to_owned(),
                Ok(Feed::Subscribed(_)) => {}
                Ok(Feed::Message(message)) => {
                    let name = message.get_channel_name();
                    let payload = message.get_payload_bytes();
                    if name == CONTROL {
                        on_command(control, app, &conn, payload);
                    } else if name == reply_name {
                        on_reply(control, payload);
                    }
                }
            },
            _ = tick.tick() => {
                app.revocations.prune(now_secs());
                if let Err(e) = announce(app, &mut conn, control.announce_every).await {
                    return e.to_string();
                }
            }
        }
    }
}

fn on_command(control: &RedisControl, app: &AppState, conn: &Commands, payload: &[u8]) {
    let envelope: Envelope = match serde_json::from_slice(payload) {
        Ok(envelope) => envelope,
        Err(e) => {
            warn!(details.reason = %e, "dropping an unreadable server API command");
            return;
        }
    };
    let count = apply(app, &envelope.command);
    let reply = Reply {
        id: envelope.id,
        count,
    };
    let mut conn = conn.clone();
    let command = control.publish_command;
    tokio::spawn(async move {
        let _: Result<(), RedisError> = redis::cmd(command)
            .arg(reply_channel(&envelope.from))
            .arg(serde_json::to_string(&reply).unwrap_or_default())
            .query_async(&mut conn)
            .await;
    });
}

fn on_reply(control: &RedisControl, payload: &[u8]) {
    let Ok(reply) = serde_json::from_slice::<Reply>(payload) else {
        return;
    };
    if let Some(tx) = control.lock_pending().get(&reply.id) {
        let _ = tx.send(reply.count);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revocation_members_round_trip() {
        for revocation in [
            Revocation::Token {
                id: "a:b".into(),
                until: 10,
            },
            Revocation::User {
                user: "user:with:colons".into(),
                at: 5,
                until: 10,
            },
        ] {
            assert_eq!(revocation_of(&member_of(&revocation), 10), Some(revocation));
        }
        assert_eq!(revocation_of("x:1", 10), None);
        assert_eq!(revocation_of("u:notanumber:bob", 10), None);
    }
}
