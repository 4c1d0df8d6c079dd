//! One connected session with Redis, the same shape for a single server and a Redis Cluster:
//! a command connection (history, publish script, ping) and a live feed (Pub/Sub).
//!
//! - Single server: a multiplexed connection plus a dedicated Pub/Sub connection
//!   (`SUBSCRIBE` / `PUBLISH`).
//! - Cluster: one cluster connection (a connection per primary, routed by slot) speaking RESP3;
//!   the live feed is sharded Pub/Sub (`SSUBSCRIBE` / `SPUBLISH`, Redis ≥ 7), so a message is
//!   only carried inside the shard that owns its channel's slot instead of over the whole
//!   cluster bus. The pushes of every node arrive on one channel. When any node's connection
//!   drops, the feed reports the loss and the broker reconnects from scratch, resubscribes and
//!   fills the gaps, exactly as with a single server.
//! - Sentinel: the primary the sentinels name (its `ROLE` checked) is resolved on every
//!   connection attempt, then connected to as a single server.

use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use redis::aio::{ConnectionLike, MultiplexedConnection, PubSubSink, PubSubStream};
use redis::cluster_async::ClusterConnection;
use redis::{
    AsyncConnectionConfig, Cmd, Msg, Pipeline, PushInfo, PushKind, RedisError, RedisFuture, Value,
};
use tokio::sync::mpsc;

use super::target::RedisTarget;

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
        self.request(names, true).await
    }

    /// Unsubscribes every channel of `names` (batched like [`FeedSink::subscribe`]).
    pub async fn unsubscribe(&self, names: &[String]) -> Result<(), RedisError> {
        self.request(names, false).await
    }

    async fn request(&self, names: &[String], subscribe: bool) -> Result<(), RedisError> {
        let requests: Vec<BoxFuture<'_, Result<(), RedisError>>> = match self {
            FeedSink::Single(sink) => names
                .chunks(BATCH)
                .map(|chunk| {
                    let mut sink = sink.clone();
                    async move {
                        if subscribe {
                            sink.subscribe(chunk).await
                        } else {
                            sink.unsubscribe(chunk).await
                        }
                    }
                    .boxed()
                })
                .collect(),
            FeedSink::Cluster(conn) => names
                .iter()
                .map(|name| {
                    let mut conn = conn.clone();
                    async move {
                        if subscribe {
                            conn.ssubscribe(name).await
                        } else {
                            conn.sunsubscribe(name).await
                        }
                    }
                    .boxed()
                })
                .collect(),
        };
        // `try_join_all` polls the requests in order the first time, so they are sent in order.
        tokio::time::timeout(
            RESPONSE_TIMEOUT,
            futures_util::future::try_join_all(requests),
        )
        .await
        .unwrap_or_else(|_| Err(timed_out()))
        .map(|_| ())
    }
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
}

impl FeedStream {
    /// The next live message or dropped subscription; `Err` with the reason once the feed is
    /// lost.
    pub async fn next(&mut self) -> Result<Feed, &'static str> {
        match self {
            FeedStream::Single(stream) => stream
                .next()
                .await
                .map(Feed::Message)
                .ok_or("pub/sub connection closed"),
            FeedStream::Cluster(pushes) => loop {
                let push = pushes.recv().await.ok_or("cluster connection closed")?;
                match push.kind {
                    PushKind::Disconnection => return Err("a cluster node's connection dropped"),
                    PushKind::SMessage | PushKind::Message => {
                        if let Some(msg) = Msg::from_push_info(push) {
                            return Ok(Feed::Message(msg));
                        }
                    }
                    PushKind::SUnsubscribe => {
                        if let Some(Value::BulkString(name)) = push.data.first() {
                            return Ok(Feed::Unsubscribed(
                                String::from_utf8_lossy(name).into_owned(),
                            ));
                        }
                    }
                    // Subscription confirmations and the like.
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
        RedisTarget::Single(client) => single(client, options).await,
        RedisTarget::Sentinel(sentinel) => single(&sentinel.primary().await?, options).await,
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
            })
        }
    }
}

/// The connections of a session with one server (a single one, or the primary Sentinel named).
async fn single(client: &redis::Client, options: LinkOptions) -> Result<Connected, RedisError> {
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
        commands: Commands::Single(conn),
        bulk: Commands::Single(bulk),
        publish: Commands::Single(publish),
        feed: LiveFeed {
            sink: FeedSink::Single(sink),
            stream: FeedStream::Single(stream),
        },
    })
}

/// The periodic health check of a connected session: `PING` (on a cluster, every primary
/// answers it), or with `primary_only` `ROLE`, which must say `master`: a primary that
/// Sentinel demoted may keep its connections, and writes to it would fail with `READONLY`.
pub async fn probe(conn: &mut Commands, primary_only: bool) -> Result<(), &'static str> {
    if !primary_only {
        let pong: Result<Value, RedisError> = redis::cmd("PING").query_async(conn).await;
        return pong.map(|_| ()).map_err(|_| "ping failed");
    }
    match redis::cmd("ROLE").query_async::<redis::Role>(conn).await {
        Ok(redis::Role::Primary { .. }) => Ok(()),
        Ok(_) => Err("the server is no longer the primary"),
        Err(_) => Err("ping failed"),
    }
}
