//! One connected session with Redis, the same shape for a single server and a Redis Cluster:
//! a command connection (history, publish script, ping) and a live feed (Pub/Sub).
//!
//! - Single server: a multiplexed connection plus a dedicated Pub/Sub connection
//!   (`SUBSCRIBE` / `PUBLISH`).
//! - Cluster: one cluster connection (a connection per primary, routed by slot) speaking RESP3;
//!   the live feed is sharded Pub/Sub (`SSUBSCRIBE` / `SPUBLISH`, Redis ≥ 7), so a message is
//!   only carried inside the shard that owns its channel's slot instead of over the whole
//!   cluster bus. The pushes of every node arrive on one channel. Health is per shard: a
//!   node's connection that drops is reported ([`Feed::NodeLost`]) and redis-rs reconnects it
//!   and subscribes its channels again ([`Feed::Subscribed`] tells of each); [`probe_shards`]
//!   names the shards whose primary does not answer. Only a cluster where no primary answers
//!   is lost as a whole (the broker then reconnects from scratch, as with a single server).
//! - Sentinel: the primary the sentinels name (its `ROLE` checked) is resolved on every
//!   connection attempt, then connected to as a single server.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use redis::aio::{ConnectionLike, MultiplexedConnection, PubSubSink, PubSubStream};
use redis::cluster_async::ClusterConnection;
use redis::{
    AsyncConnectionConfig, Cmd, Msg, Pipeline, PushInfo, PushKind, RedisError, RedisFuture, Value,
};
use tokio::sync::mpsc;

use super::target::{ClusterSeeds, RedisTarget};

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

/// The command connection (cheap to clone; clones share the underlying connections).
#[derive(Clone)]
pub enum Commands {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Commands {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Commands::Single(c) => c.req_packed_command(cmd),
            Commands::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Commands::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Commands::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Commands::Single(c) => c.get_db(),
            Commands::Cluster(c) => c.get_db(),
        }
    }
}

/// Channels named by one `SUBSCRIBE` / `UNSUBSCRIBE` on a single server: a resync of many
/// channels costs one round trip per this many instead of one per channel.
pub const BATCH: usize = 256;

/// The requesting half of the live feed. Cheap to clone, so a request can be in flight while
/// the feed is read (on a single server requests still reach Redis in the order they are made:
/// they share one connection).
#[derive(Clone)]
pub enum FeedSink {
    Single(PubSubSink),
    Cluster(ClusterConnection),
}

impl FeedSink {
    /// Subscribes every channel of `names`; returns once Redis confirmed them all, or fails
    /// after the response timeout. A single server gets one `SUBSCRIBE` per [`BATCH`] names; a
    /// cluster one `SSUBSCRIBE` per name (a command may only name channels of one slot), all
    /// in flight at once.
    pub async fn subscribe(&self, names: &[String]) -> Result<(), RedisError> {
        first_error(self.request_each(names, true).await)
    }

    /// Unsubscribes every channel of `names` (batched like [`FeedSink::subscribe`]).
    pub async fn unsubscribe(&self, names: &[String]) -> Result<(), RedisError> {
        first_error(self.request_each(names, false).await)
    }

    /// Subscribes (or unsubscribes) every channel of `names`, each answered on its own: the
    /// outcome of each name, in order. On a single server the names of one batch share its
    /// outcome; on a cluster each name has its own (one shard down fails only its channels).
    /// Each request fails on its own after the response timeout.
    pub async fn request_each(
        &self,
        names: &[String],
        subscribe: bool,
    ) -> Vec<Result<(), RedisError>> {
        let timed = |request: BoxFuture<'static, Result<(), RedisError>>| {
            tokio::time::timeout(RESPONSE_TIMEOUT, request)
                .map(|answer| answer.unwrap_or_else(|_| Err(timed_out())))
        };
        match self {
            FeedSink::Single(sink) => {
                let batches = names.chunks(BATCH).map(|chunk| {
                    let (mut sink, chunk) = (sink.clone(), chunk.to_vec());
                    let len = chunk.len();
                    let request = async move {
                        if subscribe {
                            sink.subscribe(chunk).await
                        } else {
                            sink.unsubscribe(chunk).await
                        }
                    };
                    timed(request.boxed()).map(move |answer| (answer, len))
                });
                // `join_all` polls the requests in order the first time, so they are sent in
                // order.
                let mut outcomes = Vec::with_capacity(names.len());
                for (answer, len) in futures_util::future::join_all(batches).await {
                    outcomes.extend((0..len).map(|_| answer.clone()));
                }
                outcomes
            }
            FeedSink::Cluster(conn) => {
                let requests = names.iter().map(|name| {
                    let (mut conn, name) = (conn.clone(), name.clone());
                    let request = async move {
                        if subscribe {
                            conn.ssubscribe(name).await
                        } else {
                            conn.sunsubscribe(name).await
                        }
                    };
                    timed(request.boxed())
                });
                futures_util::future::join_all(requests).await
            }
        }
    }
}

fn first_error(outcomes: Vec<Result<(), RedisError>>) -> Result<(), RedisError> {
    outcomes.into_iter().find(Result::is_err).unwrap_or(Ok(()))
}

/// The receiving half of the live feed.
pub enum FeedStream {
    Single(PubSubStream),
    Cluster(mpsc::UnboundedReceiver<PushInfo>),
}

/// What the live feed delivers.
pub enum Feed {
    /// A message on a subscribed channel.
    Message(Msg),
    /// Redis says a channel is not subscribed any more (its Pub/Sub name): the answer to an
    /// `SUNSUBSCRIBE` of ours, or, on a cluster, a node that no longer serves the channel's
    /// slot dropping its subscribers (the slot was migrated to another primary).
    Unsubscribed(String),
    /// A cluster: a channel is subscribed (its Pub/Sub name): the answer to an `SSUBSCRIBE` of
    /// ours, or redis-rs subscribing it again on a node it reconnected to (after
    /// [`Feed::NodeLost`]), which may have missed messages meanwhile.
    Subscribed(String),
    /// A cluster: one node's connection dropped. redis-rs reconnects it (following the slot map
    /// when a replica took over) and subscribes its channels again; the other nodes' channels
    /// are not affected.
    NodeLost,
}

impl FeedStream {
    /// The next live message or change of a subscription; `Err` with the reason once the feed
    /// is lost.
    pub async fn next(&mut self) -> Result<Feed, &'static str> {
        match self {
            FeedStream::Single(stream) => stream
                .next()
                .await
                .map(Feed::Message)
                .ok_or("pub/sub connection closed"),
            FeedStream::Cluster(pushes) => loop {
                let push = pushes.recv().await.ok_or("cluster connection closed")?;
                let name = |push: &PushInfo| match push.data.first() {
                    Some(Value::BulkString(name)) => {
                        Some(String::from_utf8_lossy(name).into_owned())
                    }
                    _ => None,
                };
                match push.kind {
                    PushKind::Disconnection => return Ok(Feed::NodeLost),
                    PushKind::SMessage | PushKind::Message => {
                        if let Some(msg) = Msg::from_push_info(push) {
                            return Ok(Feed::Message(msg));
                        }
                    }
                    PushKind::SUnsubscribe => {
                        if let Some(name) = name(&push) {
                            return Ok(Feed::Unsubscribed(name));
                        }
                    }
                    PushKind::SSubscribe => {
                        if let Some(name) = name(&push) {
                            return Ok(Feed::Subscribed(name));
                        }
                    }
                    _ => {}
                }
            },
        }
    }
}

/// The live feed of one connected session.
pub struct LiveFeed {
    pub sink: FeedSink,
    pub stream: FeedStream,
}

fn timed_out() -> RedisError {
    RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut))
}

/// The connections of one connected session.
pub struct Connected {
    /// Publishes, pings, the short history queries of a subscribe.
    pub commands: Commands,
    /// History pages (replays, gap fills): their large replies never queue ahead of a
    /// publish's answer on a single server. On a cluster the same connection (one per shard).
    pub bulk: Commands,
    /// Publishes: `commands` itself, or a connection of their own with
    /// [`LinkOptions::publish_wait`] (a `WAIT` blocks the connection it runs on in Redis, so it
    /// must not hold pings and history queries back).
    pub publish: Commands,
    pub feed: LiveFeed,
    /// The session's health check.
    pub prober: Prober,
}

/// How a connected session is opened, beyond where it connects.
#[derive(Clone, Copy, Debug, Default)]
pub struct LinkOptions {
    /// Publishes wait up to this long for `WAIT` besides Redis's answer: they get a connection
    /// of their own, whose response timeout is longer by this much.
    pub publish_wait: Option<Duration>,
}

/// Opens the command connections and the live feed.
pub async fn connect(target: &RedisTarget) -> Result<Connected, RedisError> {
    connect_with(target, LinkOptions::default()).await
}

/// [`connect`] with options.
pub async fn connect_with(
    target: &RedisTarget,
    options: LinkOptions,
) -> Result<Connected, RedisError> {
    match target {
        RedisTarget::Single(client) => single(client, options, false).await,
        RedisTarget::Sentinel(sentinel) => single(&sentinel.primary().await?, options, true).await,
        RedisTarget::Cluster(seeds) => {
            let (tx, pushes) = mpsc::unbounded_channel();
            let client = seeds.client(tx)?;
            let conn = tokio::time::timeout(CONNECT_TIMEOUT * 2, client.get_async_connection())
                .await
                .map_err(|_| timed_out())??;
            // With `WAIT` the publishes get connections of their own: a `WAIT` holds the
            // shard's connection in Redis. The pipeline of the publish script and its `WAIT` is
            // routed by the script's key, so the `WAIT` runs on that shard's connection (it has
            // no key; redis-rs routes a pipeline by its first keyed command).
            let publish = match options.publish_wait {
                Some(wait) => {
                    let client = seeds.publish_client(wait)?;
                    tokio::time::timeout(CONNECT_TIMEOUT * 2, client.get_async_connection())
                        .await
                        .map_err(|_| timed_out())??
                }
                None => conn.clone(),
            };
            Ok(Connected {
                commands: Commands::Cluster(conn.clone()),
                bulk: Commands::Cluster(conn.clone()),
                publish: Commands::Cluster(publish),
                feed: LiveFeed {
                    sink: FeedSink::Cluster(conn),
                    stream: FeedStream::Cluster(pushes),
                },
                prober: Prober::Shards(ShardProbe::new(seeds.clone())),
            })
        }
    }
}

/// The connections of a session with one server (a single one, or the primary Sentinel named:
/// `primary_only`).
async fn single(
    client: &redis::Client,
    options: LinkOptions,
    primary_only: bool,
) -> Result<Connected, RedisError> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT));
    let conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    let bulk = client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    let publish = match options.publish_wait {
        Some(wait) => {
            let config = config.set_response_timeout(Some(RESPONSE_TIMEOUT + wait));
            client
                .get_multiplexed_async_connection_with_config(&config)
                .await?
        }
        None => conn.clone(),
    };
    let pubsub = tokio::time::timeout(CONNECT_TIMEOUT, client.get_async_pubsub())
        .await
        .map_err(|_| timed_out())??;
    let (sink, stream) = pubsub.split();
    Ok(Connected {
        prober: Prober::Server {
            conn: Commands::Single(conn.clone()),
            primary_only,
        },
        commands: Commands::Single(conn),
        bulk: Commands::Single(bulk),
        publish: Commands::Single(publish),
        feed: LiveFeed {
            sink: FeedSink::Single(sink),
            stream: FeedStream::Single(stream),
        },
    })
}

/// Slots of a Redis Cluster, `start..=end`.
pub type SlotRange = (u16, u16);

/// What the periodic health check found: on a cluster, the slots whose primary did not
/// answer (empty when all did, and always on a single server).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Health {
    /// Primaries that did not answer.
    pub shards_down: usize,
    /// Their slots.
    pub slots_down: Vec<SlotRange>,
}

/// The periodic health check of a connected session, run apart from its connections'
/// requests (see `serve` in [`super::redis`]).
pub enum Prober {
    /// `PING` on the command connection, or with `primary_only` `ROLE`, which must say
    /// `master`: a primary that Sentinel demoted may keep its connections, and writes to it
    /// would fail with `READONLY`.
    Server { conn: Commands, primary_only: bool },
    /// A Redis Cluster: see [`ShardProbe`].
    Shards(ShardProbe),
}

impl Prober {
    /// Runs one check; gives the prober back with what it found (`Err`: the session is lost).
    pub async fn run(self) -> (Prober, Result<Health, &'static str>) {
        match self {
            Prober::Server {
                mut conn,
                primary_only,
            } => {
                let found = if primary_only {
                    match redis::cmd("ROLE")
                        .query_async::<redis::Role>(&mut conn)
                        .await
                    {
                        Ok(redis::Role::Primary { .. }) => Ok(Health::default()),
                        Ok(_) => Err("the server is no longer the primary"),
                        Err(_) => Err("ping failed"),
                    }
                } else {
                    let pong: Result<Value, RedisError> =
                        redis::cmd("PING").query_async(&mut conn).await;
                    pong.map(|_| Health::default()).map_err(|_| "ping failed")
                };
                (Prober::Server { conn, primary_only }, found)
            }
            Prober::Shards(mut shards) => {
                let found = shards.run().await;
                (Prober::Shards(shards), found)
            }
        }
    }
}

/// The health check of a Redis Cluster, shard by shard, on connections of its own (one per
/// primary, kept between checks): the cluster connection's routing would answer a `PING` for
/// a dead primary's slots from another node, and its failed requests make it rebuild its slot
/// map and resubscribe everything.
pub struct ShardProbe {
    seeds: ClusterSeeds,
    nodes: HashMap<(String, u16), MultiplexedConnection>,
}

impl ShardProbe {
    pub fn new(seeds: ClusterSeeds) -> Self {
        ShardProbe {
            seeds,
            nodes: HashMap::new(),
        }
    }

    /// Reads the slot map (`CLUSTER SLOTS`) from a node that answers (a primary checked
    /// before, else a seed), then pings every primary at once. `Err` when no primary answers.
    pub async fn run(&mut self) -> Result<Health, &'static str> {
        let mut candidates: Vec<(String, u16)> = self.nodes.keys().cloned().collect();
        candidates.extend(self.seeds.addresses());
        let mut map = None;
        for node in candidates {
            let Ok(mut conn) = self.connection(&node).await else {
                continue;
            };
            match redis::cmd("CLUSTER")
                .arg("SLOTS")
                .query_async::<Value>(&mut conn)
                .await
            {
                Ok(slots) => {
                    map = Some(primaries(&slots));
                    break;
                }
                Err(_) => {
                    self.nodes.remove(&node);
                }
            }
        }
        let map = map.ok_or("no cluster node answers")?;
        let pings = map.iter().map(|(node, _)| {
            let cached = self.nodes.get(node).cloned();
            let client = self.seeds.node_client(&node.0, node.1);
            async move {
                let mut conn = match cached {
                    Some(conn) => conn,
                    None => connect_node(client?).await?,
                };
                redis::cmd("PING").query_async::<()>(&mut conn).await?;
                Ok::<_, RedisError>(conn)
            }
        });
        let answers = futures_util::future::join_all(pings).await;
        self.nodes.clear();
        let mut health = Health::default();
        let mut answered = 0;
        for ((node, ranges), answer) in map.into_iter().zip(answers) {
            match answer {
                Ok(conn) => {
                    answered += 1;
                    self.nodes.insert(node, conn);
                }
                Err(_) => {
                    health.shards_down += 1;
                    health.slots_down.extend(ranges);
                }
            }
        }
        if answered == 0 {
            return Err("no cluster primary answers");
        }
        Ok(health)
    }

    async fn connection(
        &mut self,
        node: &(String, u16),
    ) -> Result<MultiplexedConnection, RedisError> {
        if let Some(conn) = self.nodes.get(node) {
            return Ok(conn.clone());
        }
        let conn = connect_node(self.seeds.node_client(&node.0, node.1)?).await?;
        self.nodes.insert(node.clone(), conn.clone());
        Ok(conn)
    }
}

async fn connect_node(client: redis::Client) -> Result<MultiplexedConnection, RedisError> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

/// The primaries of a `CLUSTER SLOTS` reply (each entry: start, end, then the primary as
/// host, port, id), with their slot ranges, in the order they first appear.
fn primaries(reply: &Value) -> Vec<((String, u16), Vec<SlotRange>)> {
    let mut out: Vec<((String, u16), Vec<SlotRange>)> = Vec::new();
    let Value::Array(entries) = reply else {
        return out;
    };
    for entry in entries {
        let Value::Array(fields) = entry else {
            continue;
        };
        let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(node))) =
            (fields.first(), fields.get(1), fields.get(2))
        else {
            continue;
        };
        let address = match (node.first(), node.get(1)) {
            (Some(Value::BulkString(host)), Some(Value::Int(port))) if !host.is_empty() => {
                (String::from_utf8_lossy(host).into_owned(), *port as u16)
            }
            _ => continue,
        };
        let range = (*start as u16, *end as u16);
        match out.iter_mut().find(|(a, _)| *a == address) {
            Some((_, ranges)) => ranges.push(range),
            None => out.push((address, vec![range])),
        }
    }
    out
}

/// The cluster slot of a chat channel's keys (all carry the `{channel}` hash tag; channel
/// names hold no braces): CRC16 (XMODEM) of the channel name, modulo 16384.
pub fn slot_of(channel: &str) -> u16 {
    crc16::State::<crc16::XMODEM>::calculate(channel.as_bytes()) % 16384
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_the_cluster_spec() {
        // The examples of the Redis Cluster specification and `CLUSTER KEYSLOT`.
        // CRC16/XMODEM of "123456789" is 0x31C3, the spec's check value.
        assert_eq!(slot_of("123456789"), 0x31C3);
        assert_eq!(slot_of("somekey"), 11058);
        assert_eq!(slot_of("foo"), 12182);
        assert_eq!(slot_of("bar"), 5061);
    }

    #[test]
    fn primaries_group_their_ranges() {
        let node = |host: &str, port: i64| {
            Value::Array(vec![
                Value::BulkString(host.into()),
                Value::Int(port),
                Value::BulkString(b"id".to_vec()),
            ])
        };
        let entry = |start, end, primary: Value| {
            Value::Array(vec![Value::Int(start), Value::Int(end), primary])
        };
        let reply = Value::Array(vec![
            entry(0, 99, node("10.0.0.1", 6379)),
            entry(100, 199, node("10.0.0.2", 6379)),
            entry(200, 16383, node("10.0.0.1", 6379)),
            Value::Int(3),
        ]);
        assert_eq!(
            primaries(&reply),
            vec![
                (("10.0.0.1".to_owned(), 6379), vec![(0, 99), (200, 16383)]),
                (("10.0.0.2".to_owned(), 6379), vec![(100, 199)]),
            ]
        );
        assert!(primaries(&Value::Nil).is_empty());
    }
}
