//! The Redis broker: many nodes share channels through Redis.
//!
//! Layout (the `{…}` hash tag keeps a channel's keys in one Redis Cluster slot):
//! - history: a Stream per channel, key `chatnode:history:{<channel>}`, one field `e` (the
//!   envelope); the stream id is the message's offset; `XADD … MAXLEN ~ <history-size>`, and
//!   the key expires `history-ttl` after the last message; each entry also holds `p`, the id of
//!   the entry before it, so the oldest entry kept tells which ids trimming took (Redis's own
//!   `max-deleted-entry-id` counts only `XDEL`, never a `MAXLEN` trim);
//! - the stream's metadata, `chatnode:meta:{<channel>}` (a hash, same TTL as the stream):
//!   `top`, the newest id, where the publish script finds the `p` of the next entry without
//!   reading the stream, and `epoch`, a random string created (by the publish script or the
//!   first subscribe) when missing: a stream that is lost (restart without persistence, TTL,
//!   `FLUSHALL`) takes its meta hash with it, so its next incarnation gets a new epoch. A meta
//!   hash with a `top` but no stream means the stream alone was lost (evicted): the publish
//!   script starts it again under a new epoch;
//! - live feed: a Pub/Sub channel per chat channel, `chatnode:live:{<channel>}`, payload
//!   `<offset> <envelope>`, or `~<frame>` for a `join`/`leave` frame (no offset, no history);
//! - presence: three keys per channel, see [`super::redis_presence`].
//!
//! Publishing runs one Lua script (XADD + PEXPIRE + PUBLISH), so the append and the publish are
//! one atomic step and every node sees the same offset, in the same order. On a Redis Cluster
//! the same layout holds (both keys of a channel share its hash slot, so the script runs on one
//! shard) and the live feed is sharded Pub/Sub (SPUBLISH / SSUBSCRIBE), see [`super::link`].
//!
//! One supervisor task owns the Pub/Sub connection: it subscribes a channel when a local
//! subscriber joins (every join waits for Redis's confirmation), unsubscribes when the hub says
//! the last one left (checked when the command runs, so a quick leave+join cannot lose the
//! subscription), and reads the live feed while those requests are in flight, batched and
//! never more than one at a time (see [`super::live`]: a slow `SUBSCRIBE` fails only the
//! sessions waiting on it). On a loss of the connection it reconnects with capped exponential
//! backoff and jitter, resubscribes every channel in batches ([`link::BATCH`] channels per
//! `SUBSCRIBE`) and fills the gap of each from the last offset this node handed out, before
//! reading the live feed again (so the gap fill cannot overtake live messages; duplicates are
//! dropped by offset in the hub).
//!
//! On a Redis Cluster health is per shard (see `serve`): a shard that does not answer makes
//! its own channels unavailable and leaves the others alone; only a cluster where no primary
//! answers is a loss of the session.
//!
//! Behind Sentinel (`redis+sentinel://`) every reconnect resolves the current primary first
//! (see [`super::sentinel`]), and the health probe asks `ROLE` instead of `PING`, so a failover
//! is one more connection loss. With [`RedisSettings::replica_ack`] a publish is acknowledged
//! only once `WAIT` says enough replicas hold it (see [`ReplicaAck`]).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use redis::{RedisError, Script};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::link::{
    self, Commands, Feed, FeedSink, Health, LinkOptions, LiveFeed, Prober, RESPONSE_TIMEOUT,
    SlotRange,
};
use super::live::{Request, Subscriptions};
use super::redis_presence::{PresenceScripts, WRITE_BATCH};
use super::target::ReloadingTarget;
use super::{
    Broker, BrokerError, History, HistoryPage, HistoryQuery, HistoryStart, Message, PublishRequest,
    envelope,
};
use crate::fanout::Hub;
use crate::metrics::Metrics;
use crate::namespaces::{HistoryOptions, Namespaces};
use crate::offset::Offset;
use crate::presence::{Entry, LocalPresence, Presence, PresenceStats};

const HISTORY_PREFIX: &str = "chatnode:history:{";
const META_PREFIX: &str = "chatnode:meta:{";
const LIVE_PREFIX: &str = "chatnode:live:{";
const BACKOFF_BASE: Duration = Duration::from_millis(100);
const BACKOFF_CAP: Duration = Duration::from_secs(3);

/// KEYS[1] stream, KEYS[2] meta hash; ARGV:
/// trim mode (`~` or `=`), max length, ttl ms, publish command (`PUBLISH` or `SPUBLISH`),
/// envelope, a fresh epoch (used when the channel has none, or its stream was lost), the live
/// channel. The live channel is no key: declared as one, it would be a key that never exists,
/// and a Redis Cluster answers a script whose declared keys are partly missing with `TRYAGAIN`
/// for as long as the slot is being migrated (`SPUBLISH` in a script is still checked to be
/// in the script's slot, which the shared `{channel}` hash tag makes it).
///
/// Sent with `EVAL`, never `EVALSHA`: a connection's publishes are pipelined, and when Redis
/// has lost its script cache (a restart, `SCRIPT FLUSH`) every `EVALSHA` in flight fails with
/// NOSCRIPT and is retried after a `SCRIPT LOAD`, while publishes sent after that load succeed
/// at once and overtake the retried ones. One `EVAL` per publish cannot fail that way, so the
/// commands run in the order the connection sent them. Its cost is the script's few hundred
/// bytes per publish and a SHA1 of them in Redis (the compiled script stays cached).
///
/// `p` is the previous entry's id: `0-0` for a new stream, '' (unknown) for a stream written
/// before `p` existed.
const PUBLISH_LUA: &str = r"
local meta = redis.call('HMGET', KEYS[2], 'top', 'epoch')
local prev, epoch = meta[1], meta[2]
if redis.call('EXISTS', KEYS[1]) == 0 then
  -- A `top` without its stream: the stream alone was lost (evicted), start a new epoch.
  if prev then epoch = false end
  prev = '0-0'
elseif not prev then
  prev = ''
end
if not epoch then redis.call('HSET', KEYS[2], 'epoch', ARGV[6]) end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[1], ARGV[2], '*', 'e', ARGV[5], 'p', prev)
redis.call('HSET', KEYS[2], 'top', id)
if tonumber(ARGV[3]) > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
end
redis.call(ARGV[4], ARGV[7], id .. ' ' .. ARGV[5])
return id
";

/// Lua that sets `kept`, what a stream still holds, for [`Kept`] (KEYS[1] the stream; all ''
/// and 0 for a missing one): {newest id, max deleted id, first id, first entry's `p`, length,
/// entries ever added}.
macro_rules! kept_lua {
    () => {
        r"
local kept = {'', '', '', '', 0, 0}
if redis.call('EXISTS', KEYS[1]) == 1 then
  local info = redis.call('XINFO', 'STREAM', KEYS[1])
  for i = 1, #info, 2 do
    local k, v = info[i], info[i + 1]
    if k == 'last-generated-id' then kept[1] = v end
    if k == 'max-deleted-entry-id' then kept[2] = v end
    if k == 'length' then kept[5] = v end
    if k == 'entries-added' then kept[6] = v end
    if k == 'first-entry' and v then
      kept[3] = v[1]
      for f = 1, #v[2], 2 do
        if v[2][f] == 'p' then kept[4] = v[2][f + 1] end
      end
    end
  end
end
"
    };
}

/// Lua that sets `epoch`, the channel's epoch (KEYS[2] the meta hash; ARGV[1] a fresh epoch,
/// ARGV[2] ttl ms), created when missing: a reader of a channel without messages learns the
/// epoch its first message will carry; the meta hash then expires like a stream, `ttl` after
/// it was made.
macro_rules! epoch_lua {
    () => {
        r"
local epoch = redis.call('HGET', KEYS[2], 'epoch')
if not epoch then
  epoch = ARGV[1]
  redis.call('HSET', KEYS[2], 'epoch', epoch)
  if tonumber(ARGV[2]) > 0 and redis.call('PTTL', KEYS[2]) == -1 then
    redis.call('PEXPIRE', KEYS[2], ARGV[2])
  end
end
"
    };
}

/// KEYS[1] stream, KEYS[2] meta hash; ARGV[1] a fresh epoch, ARGV[2] ttl ms, ARGV[3] the
/// requested offset or ''. Returns {`kept`, `epoch`, 1 if the stream holds an entry with the
/// requested offset else 0}.
const START_LUA: &str = concat!(
    kept_lua!(),
    epoch_lua!(),
    r"
local seen = 0
if ARGV[3] ~= '' and #redis.call('XRANGE', KEYS[1], ARGV[3], ARGV[3]) > 0 then seen = 1 end
return {kept, epoch, seen}
"
);

/// KEYS[1] stream, KEYS[2] meta hash; ARGV[1] a fresh epoch, ARGV[2] ttl ms, ARGV[3] `XRANGE`
/// or `XREVRANGE`, ARGV[4] and ARGV[5] its two bounds, ARGV[6] count (at least 1). Returns
/// {newest id or '', `epoch`, entries}: one bounded read, never the whole stream.
const HISTORY_LUA: &str = concat!(
    epoch_lua!(),
    r"
local newest, entries = '', {}
if redis.call('EXISTS', KEYS[1]) == 1 then
  local info = redis.call('XINFO', 'STREAM', KEYS[1])
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then newest = info[i + 1] end
  end
  entries = redis.call(ARGV[3], KEYS[1], ARGV[4], ARGV[5], 'COUNT', ARGV[6])
end
return {newest, epoch, entries}
"
);

/// KEYS[1] stream; ARGV[1] n. Returns the id of the `n`-th newest entry (or of the oldest, if
/// fewer), '' for none: only an id leaves Redis.
const LAST_LUA: &str = r"
local page = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', ARGV[1])
if #page == 0 then return '' end
return page[#page][1]
";

/// KEYS[1] stream; ARGV[1] exclusive start id, ARGV[2] inclusive end id, ARGV[3] count.
/// Returns {entries counted, last id counted}: only ids leave Redis, never messages.
const COUNT_LUA: &str = r"
local page = redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], ARGV[2], 'COUNT', ARGV[3])
if #page == 0 then return {0, ''} end
return {#page, page[#page][1]}
";

/// KEYS[1] stream; ARGV[1] exclusive start id, ARGV[2] count. Returns {`kept`, entries}.
const PAGE_LUA: &str = concat!(
    kept_lua!(),
    r"
return {kept, redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], '+', 'COUNT', ARGV[2])}
"
);

/// Entries counted per script call while a subscribe counts its `since` backlog: each call
/// copies at most this many entries inside Redis, so a long count never blocks Redis for more
/// than a moment (other clients' commands run between the calls).
const COUNT_STEP: usize = 16;

/// Entries read per page when a broker reconnect fills the gap of a channel.
const GAP_FILL_PAGE: usize = 64;

pub fn history_key(channel: &str) -> String {
    format!("{HISTORY_PREFIX}{channel}}}")
}

pub fn meta_key(channel: &str) -> String {
    format!("{META_PREFIX}{channel}}}")
}

/// What a channel's stream still holds, as the `kept_lua` snippet reports it.
type KeptReply = (String, String, String, String, usize, u64);

#[derive(Debug, Default, PartialEq, Eq)]
struct Kept {
    newest: Offset,
    /// Newest id removed by `XDEL` (never by trimming).
    deleted: Option<Offset>,
    /// The oldest entry still kept.
    first: Option<Offset>,
    /// The id before `first` (`Some(0-0)`: the stream began with it), `None` when unknown.
    first_prev: Option<Offset>,
    length: usize,
    added: u64,
}

impl Kept {
    fn from_reply((newest, deleted, first, first_prev, length, added): KeptReply) -> Kept {
        Kept {
            newest: newest.parse().unwrap_or(Offset::ZERO),
            deleted: deleted.parse().ok().filter(|d| *d != Offset::ZERO),
            first: first.parse().ok(),
            first_prev: first_prev.parse().ok(),
            length,
            added,
        }
    }

    /// Whether some message after `after` is gone (trimmed, deleted, or the stream started
    /// anew after it).
    fn lost_after(&self, after: Offset) -> bool {
        if self.deleted.is_some_and(|d| d > after) {
            return true;
        }
        let Some(first) = self.first else {
            // Nothing kept: whatever came after `after` is gone.
            return self.newest > after;
        };
        if after >= first {
            return false;
        }
        match self.first_prev {
            // `0-0`: the stream still holds its first entry, nothing was trimmed.
            Some(prev) => prev > after,
            // Written before entries carried `p`: any trimming may have taken some.
            None => self.added > self.length as u64,
        }
    }
}

/// Stream entries as Redis returns them: id, then the fields as name/value pairs.
type Entries = Vec<(String, Vec<Vec<u8>>)>;

/// The messages of `entries` (`e` is the second field), unreadable ones skipped and logged.
fn decode_entries(channel: &str, entries: Entries) -> Vec<Message> {
    let mut messages = Vec::with_capacity(entries.len());
    for (id, fields) in entries {
        let (Ok(offset), Some(bytes)) = (id.parse::<Offset>(), fields.get(1)) else {
            continue;
        };
        match envelope::decode(channel, offset, bytes) {
            Ok(m) => messages.push(m),
            Err(e) => {
                warn!(details.channel = channel, details.reason = %e, "skipping unreadable history entry")
            }
        }
    }
    messages
}

pub fn live_channel(channel: &str) -> String {
    format!("{LIVE_PREFIX}{channel}}}")
}

fn channel_of_live(name: &str) -> Option<&str> {
    name.strip_prefix(LIVE_PREFIX)?.strip_suffix('}')
}

/// Settings of the Redis broker.
#[derive(Clone, Debug)]
pub struct RedisSettings {
    /// Per namespace: the history's size and TTL, or none (see [`RedisBroker::publish`]).
    pub namespaces: Arc<Namespaces>,
    /// How often the command connection is pinged to notice a silent loss.
    pub ping_interval: Duration,
    /// How long presence entries live without a refresh (refreshed every third of it).
    pub presence_ttl: Duration,
    /// Acknowledge a publish only once this many replicas hold it.
    pub replica_ack: Option<ReplicaAck>,
}

/// `--redis-min-replicas-ack`: after its script, a publish runs `WAIT <replicas> <timeout>` on
/// the same connection (`WAIT` counts the replicas that acknowledged that connection's writes)
/// and is answered `unavailable` when fewer confirmed in time. Redis replicates asynchronously:
/// without it, a publish acknowledged just before the primary dies may be missing on the
/// replica Sentinel promotes. With it, an acknowledged publish is on that many replicas (in
/// their memory: not a guarantee against every replica losing it too). `unavailable` then
/// means "not confirmed", not "not stored": the message may be in history and delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplicaAck {
    pub replicas: u32,
    pub timeout: Duration,
}

struct Shared {
    hub: Arc<Hub>,
    metrics: Metrics,
    settings: RedisSettings,
    conn: RwLock<Option<Commands>>,
    /// The connection for history pages (see [`link::Connected::bulk`]).
    bulk: RwLock<Option<Commands>>,
    /// The connection for publishes (see [`link::Connected::publish`]).
    publish: RwLock<Option<Commands>>,
    /// A Redis Cluster: health is per shard (see `serve`).
    cluster: bool,
    /// On a cluster, the slots whose primary did not answer the last health check: their
    /// channels are answered `unavailable` at once.
    slots_down: RwLock<Vec<SlotRange>>,
    /// Whether `slots_down` holds any (read on every publish, so one atomic load when none).
    any_down: AtomicBool,
    /// When a replica-ack shortfall was last logged (Unix seconds), to log it once a second.
    ack_warned: std::sync::atomic::AtomicU64,
    /// `SPUBLISH` on a Redis Cluster (sharded Pub/Sub), `PUBLISH` on a single server.
    publish_command: &'static str,
    up: AtomicBool,
    commands: mpsc::UnboundedSender<Request>,
    start_script: Script,
    count_script: Script,
    page_script: Script,
    history_script: Script,
    last_script: Script,
    /// This node's clients in presence, rewritten to Redis every third of the TTL.
    presence: LocalPresence,
    presence_scripts: PresenceScripts,
    /// Exits (removal, then `leave`) still being sent, by channel and client: a new `enter` of
    /// the same client waits for its exit first.
    exits: std::sync::Mutex<Exits>,
}

/// Exits being sent, by (channel, client): the exit's id and its task.
type Exits = HashMap<(String, String), (u64, tokio::task::JoinHandle<()>)>;

/// Presence refresh scripts in flight at once (see [`refresh_presence`]).
const REFRESH_CONCURRENCY: usize = 16;

/// Marks a live-feed payload that is a frame without offset (`join`/`leave`), not a message
/// (`<offset> <envelope>` starts with a digit). Nodes of older versions drop it unread.
const ANNOUNCE_MARK: u8 = b'~';

pub struct RedisBroker {
    shared: Arc<Shared>,
}

/// Errors a server answers while it cannot take writes for now: a primary demoted to replica
/// (`READONLY`), one refusing writes under `min-replicas-to-write` (`NOREPLICAS`), a replica
/// without its primary (`MASTERDOWN`), a server loading its data (`LOADING`).
/// On a Redis Cluster also a cluster that refuses commands until a failed shard is
/// replaced (`CLUSTERDOWN`) and a slot whose keys are halfway through a migration (`TRYAGAIN`).
const NOT_WRITABLE_NOW: [&str; 6] = [
    "READONLY",
    "NOREPLICAS",
    "MASTERDOWN",
    "LOADING",
    "CLUSTERDOWN",
    "TRYAGAIN",
];

pub(super) fn unavailable_or_internal(e: RedisError) -> BrokerError {
    if e.is_io_error()
        || e.is_connection_dropped()
        || e.is_timeout()
        || e.is_unrecoverable_error()
        || e.code()
            .is_some_and(|code| NOT_WRITABLE_NOW.contains(&code))
    {
        BrokerError::Unavailable
    } else {
        BrokerError::Internal(e.to_string())
    }
}

impl Shared {
    fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Release);
        self.metrics.redis_up.set(i64::from(up));
        if !up {
            *self.conn.write().unwrap_or_else(|p| p.into_inner()) = None;
            *self.bulk.write().unwrap_or_else(|p| p.into_inner()) = None;
            *self.publish.write().unwrap_or_else(|p| p.into_inner()) = None;
            self.store_health(&Health::default());
        }
    }

    /// Takes what a health check found: on a cluster, the shards that are down (logged when
    /// that changes).
    fn set_health(&self, health: &Health) {
        if *self.slots_down.read().unwrap_or_else(|p| p.into_inner()) == health.slots_down {
            return;
        }
        if health.slots_down.is_empty() {
            info!("every redis cluster shard answers again");
        } else {
            let slots: Vec<String> = health
                .slots_down
                .iter()
                .map(|(start, end)| format!("{start}-{end}"))
                .collect();
            warn!(
                details.shards_down = health.shards_down,
                details.slots = %slots.join(","),
                "redis cluster shards do not answer: their channels are unavailable, the others are served"
            );
        }
        self.store_health(health);
    }

    fn store_health(&self, health: &Health) {
        let mut down = self.slots_down.write().unwrap_or_else(|p| p.into_inner());
        down.clone_from(&health.slots_down);
        self.any_down
            .store(!health.slots_down.is_empty(), Ordering::Release);
        self.metrics
            .redis_cluster_shards_down
            .set(health.shards_down as i64);
    }

    /// Whether the channel's cluster shard did not answer the last health check.
    fn shard_down(&self, channel: &str) -> bool {
        if !self.any_down.load(Ordering::Acquire) {
            return false;
        }
        let slot = link::slot_of(channel);
        self.slots_down
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|(start, end)| (*start..=*end).contains(&slot))
    }

    /// `unavailable` for a channel whose cluster shard is down.
    fn check_shard(&self, channel: &str) -> Result<(), BrokerError> {
        if self.shard_down(channel) {
            return Err(BrokerError::Unavailable);
        }
        Ok(())
    }

    fn publish_connection(&self) -> Result<Commands, BrokerError> {
        self.pick(&self.publish)
    }

    /// Logs, at most once a second, that replicas did not confirm a publish in time.
    fn warn_unconfirmed(&self, confirmed: u32, ack: ReplicaAck) {
        let now = super::now_us() / 1_000_000;
        if self.ack_warned.swap(now, Ordering::Relaxed) != now {
            warn!(
                details.confirmed = confirmed,
                details.required = ack.replicas,
                details.timeout_ms = ack.timeout.as_millis() as u64,
                "publish not confirmed by enough replicas in time: answered unavailable"
            );
        }
    }

    /// The channel's history options; `None` for a namespace without history, whose channels
    /// have no keys in Redis at all (nothing is read or written for them).
    fn history_of(&self, channel: &str) -> Option<HistoryOptions> {
        self.settings.namespaces.of(channel).history
    }

    /// The TTL of the channel's history keys, in ms (0: none).
    fn ttl_ms(&self, channel: &str) -> u64 {
        self.history_of(channel)
            .map_or(0, |h| h.ttl.as_millis() as u64)
    }

    fn connection(&self) -> Result<Commands, BrokerError> {
        self.pick(&self.conn)
    }

    fn bulk_connection(&self) -> Result<Commands, BrokerError> {
        self.pick(&self.bulk)
    }

    fn pick(&self, conn: &RwLock<Option<Commands>>) -> Result<Commands, BrokerError> {
        if !self.up.load(Ordering::Acquire) {
            return Err(BrokerError::Unavailable);
        }
        conn.read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or(BrokerError::Unavailable)
    }

    async fn read_start(
        &self,
        conn: &mut Commands,
        channel: &str,
        since: Option<Offset>,
        limit: usize,
    ) -> Result<HistoryStart, BrokerError> {
        let key = history_key(channel);
        let (kept, epoch, seen): (KeptReply, String, u8) = self
            .start_script
            .key(&key)
            .key(meta_key(channel))
            .arg(super::new_epoch())
            .arg(self.ttl_ms(channel))
            .arg(since.map(|s| s.to_string()).unwrap_or_default())
            .invoke_async(conn)
            .await
            .map_err(unavailable_or_internal)?;
        let kept = Kept::from_reply(kept);
        let newest = kept.newest;
        let mut start = HistoryStart {
            newest,
            epoch,
            since_kept: seen == 1,
            ..HistoryStart::default()
        };
        let Some(since) = since else {
            return Ok(start);
        };
        // Past the newest offset: an offset of a history that was lost since.
        if since > newest || kept.lost_after(since) {
            start.gap = true;
            return Ok(start);
        }
        // Every message kept is after `since`: no need to count them one by one.
        let (mut cursor, mut count) = match kept.first {
            Some(first) if first > since => (newest, kept.length),
            _ => (since, 0usize),
        };
        // Else count (since, newest] in steps, stopping once past the limit.
        while cursor < newest && count <= limit {
            let (n, last): (usize, String) = self
                .count_script
                .key(&key)
                .arg(cursor.to_string())
                .arg(newest.to_string())
                .arg(COUNT_STEP)
                .invoke_async(conn)
                .await
                .map_err(unavailable_or_internal)?;
            count += n;
            match last.parse::<Offset>() {
                Ok(last) if n == COUNT_STEP => cursor = last,
                _ => break,
            }
        }
        if count > limit {
            start.gap = true;
        } else {
            start.count = count;
        }
        Ok(start)
    }

    async fn read_page(
        &self,
        conn: &mut Commands,
        channel: &str,
        after: Offset,
        max: usize,
    ) -> Result<HistoryPage, BrokerError> {
        let (kept, entries): (KeptReply, Entries) = self
            .page_script
            .key(history_key(channel))
            .arg(after.to_string())
            .arg(max.max(1))
            .invoke_async(conn)
            .await
            .map_err(unavailable_or_internal)?;
        let trimmed = Kept::from_reply(kept).lost_after(after);
        let messages = decode_entries(channel, entries);
        Ok(HistoryPage { messages, trimmed })
    }

    async fn read_history(
        &self,
        conn: &mut Commands,
        channel: &str,
        query: HistoryQuery,
    ) -> Result<History, BrokerError> {
        // An empty range (e.g. before `0-0`, which Redis refuses as an exclusive end) still
        // reads the newest offset and epoch: any valid range, its entry dropped.
        let empty = query.is_empty_range();
        let bound = |offset: Option<Offset>, open: &str| match offset {
            Some(o) if !empty => format!("({o}"),
            _ => open.to_owned(),
        };
        let (low, high) = (bound(query.since, "-"), bound(query.before, "+"));
        let (command, first, second) = if query.reverse {
            ("XREVRANGE", high, low)
        } else {
            ("XRANGE", low, high)
        };
        let (newest, epoch, entries): (String, String, Entries) = self
            .history_script
            .key(history_key(channel))
            .key(meta_key(channel))
            .arg(super::new_epoch())
            .arg(self.ttl_ms(channel))
            .arg(command)
            .arg(first)
            .arg(second)
            // At least one: `COUNT 0` is not "none" on every Redis version.
            .arg(query.limit.max(1))
            .invoke_async(conn)
            .await
            .map_err(unavailable_or_internal)?;
        let mut messages = if empty {
            Vec::new()
        } else {
            decode_entries(channel, entries)
        };
        messages.truncate(query.limit);
        Ok(History {
            messages,
            newest: newest.parse().unwrap_or(Offset::ZERO),
            epoch,
        })
    }

    fn exits(&self) -> std::sync::MutexGuard<'_, Exits> {
        self.exits.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes a `join`/`leave` frame on the channel's live feed (best effort).
    async fn announce(&self, conn: &mut Commands, channel: &str, frame: &str) {
        let mut payload = Vec::with_capacity(frame.len() + 1);
        payload.push(ANNOUNCE_MARK);
        payload.extend_from_slice(frame.as_bytes());
        let published = redis::cmd(self.publish_command)
            .arg(live_channel(channel))
            .arg(payload)
            .query_async::<()>(conn)
            .await;
        if let Err(e) = published {
            warn!(details.channel = %channel, details.reason = %e, "join/leave announcement failed");
        }
    }

    fn on_live_message(&self, msg: &redis::Msg) {
        let Some(channel) = channel_of_live(msg.get_channel_name()) else {
            return;
        };
        let payload = msg.get_payload_bytes();
        if let Some(frame) = payload.strip_prefix(&[ANNOUNCE_MARK]) {
            if let Ok(frame) = std::str::from_utf8(frame) {
                self.hub.announce(channel, frame);
            }
            return;
        }
        let Some(space) = payload.iter().position(|b| *b == b' ') else {
            return;
        };
        let offset = std::str::from_utf8(&payload[..space])
            .ok()
            .and_then(|s| s.parse::<Offset>().ok());
        let Some(offset) = offset else { return };
        match envelope::decode(channel, offset, &payload[space + 1..]) {
            Ok(message) => self.hub.deliver(&message),
            Err(e) => {
                warn!(details.channel = channel, details.reason = %e, "dropping unreadable live message")
            }
        }
    }
}

impl RedisBroker {
    /// Creates the broker and starts its supervisor; it connects in the background (a node
    /// starts even when Redis is down).
    pub fn start(
        target: ReloadingTarget,
        hub: Arc<Hub>,
        metrics: Metrics,
        settings: RedisSettings,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let (commands, command_rx) = mpsc::unbounded_channel();
        metrics.redis_up.set(0);
        let shared = Arc::new(Shared {
            hub,
            metrics,
            settings,
            conn: RwLock::new(None),
            bulk: RwLock::new(None),
            publish: RwLock::new(None),
            cluster: target.is_cluster(),
            slots_down: RwLock::new(Vec::new()),
            any_down: AtomicBool::new(false),
            ack_warned: std::sync::atomic::AtomicU64::new(0),
            publish_command: if target.is_cluster() {
                "SPUBLISH"
            } else {
                "PUBLISH"
            },
            up: AtomicBool::new(false),
            commands,
            start_script: Script::new(START_LUA),
            count_script: Script::new(COUNT_LUA),
            page_script: Script::new(PAGE_LUA),
            history_script: Script::new(HISTORY_LUA),
            last_script: Script::new(LAST_LUA),
            presence: LocalPresence::default(),
            presence_scripts: PresenceScripts::default(),
            exits: std::sync::Mutex::default(),
        });
        tokio::spawn(refresh_presence(shared.clone(), shutdown.clone()));
        tokio::spawn(supervise(shared.clone(), target, command_rx, shutdown));
        Arc::new(RedisBroker { shared })
    }
}

impl Broker for RedisBroker {
    fn publish(&self, request: PublishRequest) -> BoxFuture<'_, Result<Offset, BrokerError>> {
        let publish = async move {
            let mut conn = self.shared.publish_connection()?;
            self.shared.check_shard(&request.channel)?;
            let settings = &self.shared.settings;
            let body = envelope::encode(
                &request.from,
                request.ts_us,
                &request.data,
                request.trace.as_ref(),
            );
            let Some(history) = self.shared.history_of(&request.channel) else {
                // No history: only the live feed, with no offset (`0-0`), and no key written.
                // Same connection as every publish, so one client's order holds here too.
                let mut payload = Vec::with_capacity(body.len() + 4);
                payload.extend_from_slice(b"0-0 ");
                payload.extend_from_slice(body.as_bytes());
                redis::cmd(self.shared.publish_command)
                    .arg(live_channel(&request.channel))
                    .arg(payload)
                    .query_async::<()>(&mut conn)
                    .await
                    .map_err(unavailable_or_internal)?;
                return Ok(Offset::ZERO);
            };
            let (mode, max_len) = if history.size == 0 {
                ("=", 0)
            } else {
                ("~", history.size)
            };
            // EVAL, not EVALSHA: see `PUBLISH_LUA`.
            let mut script = redis::cmd("EVAL");
            script
                .arg(PUBLISH_LUA)
                .arg(2)
                .arg(history_key(&request.channel))
                .arg(meta_key(&request.channel))
                .arg(mode)
                .arg(max_len)
                .arg(history.ttl.as_millis() as u64)
                .arg(self.shared.publish_command)
                .arg(body)
                .arg(super::new_epoch())
                .arg(live_channel(&request.channel));
            let id: String = match settings.replica_ack {
                None => script.query_async(&mut conn).await,
                Some(ack) => {
                    // One pipeline: the WAIT follows its own publish on the connection.
                    let (id, confirmed): (String, u32) = redis::pipe()
                        .add_command(script)
                        .cmd("WAIT")
                        .arg(ack.replicas)
                        .arg(ack.timeout.as_millis() as u64)
                        .query_async(&mut conn)
                        .await
                        .map_err(unavailable_or_internal)?;
                    if confirmed < ack.replicas {
                        self.shared.warn_unconfirmed(confirmed, ack);
                        return Err(BrokerError::Unavailable);
                    }
                    Ok(id)
                }
            }
            .map_err(unavailable_or_internal)?;
            id.parse().map_err(|_| {
                BrokerError::Internal(format!("redis returned a bad stream id {id:?}"))
            })
        };
        // The command is handed to the connection on the future's first poll, with nothing to
        // wait for before it (no cooperative budget either: see `Broker::publish`).
        tokio::task::unconstrained(publish).boxed()
    }

    fn join<'a>(&'a self, channel: &'a str) -> BoxFuture<'a, Result<(), BrokerError>> {
        async move {
            if !self.shared.up.load(Ordering::Acquire) {
                return Err(BrokerError::Unavailable);
            }
            self.shared.check_shard(channel)?;
            let (tx, rx) = oneshot::channel();
            self.shared
                .commands
                .send(Request::Join(channel.to_owned(), tx))
                .map_err(|_| BrokerError::Unavailable)?;
            match tokio::time::timeout(RESPONSE_TIMEOUT * 2, rx).await {
                Ok(Ok(result)) => result,
                _ => Err(BrokerError::Unavailable),
            }
        }
        .boxed()
    }

    fn leave(&self, channel: &str) {
        let _ = self
            .shared
            .commands
            .send(Request::Leave(channel.to_owned()));
    }

    fn history_start<'a>(
        &'a self,
        channel: &'a str,
        since: Option<Offset>,
        limit: usize,
    ) -> BoxFuture<'a, Result<HistoryStart, BrokerError>> {
        async move {
            if self.shared.history_of(channel).is_none() {
                return Ok(HistoryStart::default());
            }
            self.shared.check_shard(channel)?;
            let mut conn = self.shared.connection()?;
            self.shared
                .read_start(&mut conn, channel, since, limit)
                .await
        }
        .boxed()
    }

    fn history_page<'a>(
        &'a self,
        channel: &'a str,
        after: Offset,
        max: usize,
    ) -> BoxFuture<'a, Result<HistoryPage, BrokerError>> {
        async move {
            if self.shared.history_of(channel).is_none() {
                return Ok(HistoryPage::default());
            }
            self.shared.check_shard(channel)?;
            let mut conn = self.shared.bulk_connection()?;
            self.shared.read_page(&mut conn, channel, after, max).await
        }
        .boxed()
    }

    fn history<'a>(
        &'a self,
        channel: &'a str,
        query: HistoryQuery,
    ) -> BoxFuture<'a, Result<History, BrokerError>> {
        async move {
            if self.shared.history_of(channel).is_none() {
                return Ok(History::default());
            }
            self.shared.check_shard(channel)?;
            let mut conn = self.shared.bulk_connection()?;
            self.shared.read_history(&mut conn, channel, query).await
        }
        .boxed()
    }

    fn last_start<'a>(
        &'a self,
        channel: &'a str,
        n: usize,
    ) -> BoxFuture<'a, Result<Option<Offset>, BrokerError>> {
        async move {
            if n == 0 || self.shared.history_of(channel).is_none() {
                return Ok(None);
            }
            self.shared.check_shard(channel)?;
            let mut conn = self.shared.connection()?;
            let id: String = self
                .shared
                .last_script
                .key(history_key(channel))
                .arg(n)
                .invoke_async(&mut conn)
                .await
                .map_err(unavailable_or_internal)?;
            Ok(id.parse::<Offset>().ok().map(Offset::just_before))
        }
        .boxed()
    }

    fn enter<'a>(
        &'a self,
        channel: &'a str,
        entry: Arc<Entry>,
        keep: bool,
        join: Option<String>,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        async move {
            let key = (channel.to_owned(), entry.client.clone());
            let exiting = self.shared.exits().remove(&key);
            if let Some((_, exit)) = exiting {
                let _ = exit.await;
            }
            if keep {
                self.shared.presence.add(channel, entry.clone());
            }
            // Not written now (Redis or the channel's shard down): the refresh writes it once
            // Redis is back.
            self.shared.check_shard(channel)?;
            let mut conn = self.shared.connection()?;
            if keep {
                let ttl = self.shared.settings.presence_ttl.as_millis() as u64;
                self.shared
                    .presence_scripts
                    .write(&mut conn, channel, &[&entry], ttl)
                    .await?;
            }
            if let Some(frame) = join {
                self.shared.announce(&mut conn, channel, &frame).await;
            }
            Ok(())
        }
        .boxed()
    }

    fn exit(&self, channel: &str, client: &str, leave: Option<String>) {
        let was_present = self.shared.presence.remove(channel, client).is_some();
        let Ok(mut conn) = self.shared.connection() else {
            // Redis down: the entry expires there within the TTL.
            return;
        };
        let shared = self.shared.clone();
        let key = (channel.to_owned(), client.to_owned());
        let id = fastrand::u64(..);
        // Registered before the task can finish (the task unregisters under the same lock).
        let mut exits = self.shared.exits();
        let task_key = key.clone();
        let task = tokio::spawn(async move {
            let (channel, client) = &task_key;
            if was_present
                && let Err(e) = shared
                    .presence_scripts
                    .remove(&mut conn, channel, client)
                    .await
            {
                warn!(details.channel = %channel, details.reason = %e, "presence removal failed, the entry expires with the TTL");
            }
            if let Some(frame) = leave {
                shared.announce(&mut conn, channel, &frame).await;
            }
            let mut exits = shared.exits();
            if exits.get(&task_key).is_some_and(|(mine, _)| *mine == id) {
                exits.remove(&task_key);
            }
        });
        exits.insert(key, (id, task));
    }

    fn presence<'a>(
        &'a self,
        channel: &'a str,
        max: usize,
    ) -> BoxFuture<'a, Result<Presence, BrokerError>> {
        async move {
            self.shared.check_shard(channel)?;
            let mut conn = self.shared.connection()?;
            self.shared
                .presence_scripts
                .read(&mut conn, channel, max)
                .await
        }
        .boxed()
    }

    fn presence_stats<'a>(
        &'a self,
        channel: &'a str,
    ) -> BoxFuture<'a, Result<PresenceStats, BrokerError>> {
        async move {
            self.shared.check_shard(channel)?;
            let mut conn = self.shared.connection()?;
            self.shared.presence_scripts.stats(&mut conn, channel).await
        }
        .boxed()
    }

    fn is_up(&self) -> bool {
        self.shared.up.load(Ordering::Acquire)
    }
}

/// Rewrites this node's presence entries to Redis every third of the TTL (see
/// [`super::redis_presence`]), until shutdown. Up to [`REFRESH_CONCURRENCY`] scripts are in
/// flight at once, so a node with many channels finishes a round well within the TTL.
async fn refresh_presence(shared: Arc<Shared>, shutdown: CancellationToken) {
    let ttl = shared.settings.presence_ttl;
    let every = (ttl / 3).max(Duration::from_millis(10));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Ok(conn) = shared.connection() else {
            continue;
        };
        let mut batches: Vec<(Arc<str>, Vec<Arc<Entry>>)> = Vec::new();
        for (channel, entries) in shared.presence.snapshot() {
            let channel: Arc<str> = channel.into();
            for batch in entries.chunks(WRITE_BATCH) {
                batches.push((channel.clone(), batch.to_vec()));
            }
        }
        let failed = std::sync::atomic::AtomicUsize::new(0);
        let last_error = std::sync::Mutex::new(None);
        let round = futures_util::stream::iter(batches).for_each_concurrent(
            REFRESH_CONCURRENCY,
            |(channel, batch)| {
                let (shared, mut conn) = (&shared, conn.clone());
                let (failed, last_error) = (&failed, &last_error);
                async move {
                    let entries: Vec<&Entry> = batch.iter().map(|e| e.as_ref()).collect();
                    let written = shared
                        .presence_scripts
                        .write(&mut conn, &channel, &entries, ttl.as_millis() as u64)
                        .await;
                    if let Err(e) = written {
                        failed.fetch_add(1, Ordering::Relaxed);
                        *last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                        return;
                    }
                    // A client that left while its entry was being rewritten: its removal may
                    // have run before the rewrite, so remove it again (after the rewrite).
                    for entry in entries {
                        if !shared.presence.contains(&channel, &entry.client) {
                            let _ = shared
                                .presence_scripts
                                .remove(&mut conn, &channel, &entry.client)
                                .await;
                        }
                    }
                }
            },
        );
        tokio::select! {
            _ = shutdown.cancelled() => return,
            () = round => {}
        }
        let failed = failed.into_inner();
        if failed > 0 {
            let error = last_error.into_inner().unwrap_or_else(|p| p.into_inner());
            warn!(details.batches = failed, details.reason = ?error, "presence refresh failed");
        }
    }
}

/// Capped exponential backoff with jitter (50–100 % of the step).
fn backoff(failures: u32) -> Duration {
    let step = BACKOFF_BASE
        .saturating_mul(1u32 << failures.min(16))
        .min(BACKOFF_CAP);
    step.mul_f64(0.5 + fastrand::f64() * 0.5)
}

/// What a resync subscribed.
#[derive(Default)]
struct Resynced {
    /// Channels subscribed, their gaps filled.
    subscribed: HashSet<String>,
    /// On a cluster: channels whose shard took neither (subscribed again once the health
    /// check finds their shard answering).
    stale: HashSet<String>,
}

/// Resubscribes every channel with local subscribers (in batches) and fills each one's gap
/// from history. On a single server any failure fails the resync; on a cluster a channel whose
/// shard fails it is only left for later.
async fn resync(
    shared: &Shared,
    feed: &LiveFeed,
    conn: &mut Commands,
) -> Result<Resynced, BrokerError> {
    let channels = shared.hub.channels();
    let names: Vec<String> = channels.iter().map(|(c, _)| live_channel(c)).collect();
    let outcomes = feed.sink.request_each(&names, true).await;
    let mut resynced = Resynced::default();
    for ((channel, after), outcome) in channels.into_iter().zip(outcomes) {
        let done = match (outcome, after) {
            (Err(e), _) => Err(unavailable_or_internal(e)),
            (Ok(()), Some(after)) => fill_gap(shared, conn, &channel, after).await,
            (Ok(()), None) => Ok(()),
        };
        match done {
            Ok(()) => {
                resynced.subscribed.insert(channel);
            }
            Err(e) if shared.cluster => {
                warn!(details.channel = %channel, details.reason = %e, "channel not resubscribed: its redis cluster shard does not answer");
                resynced.stale.insert(channel);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(resynced)
}

/// Hands the local subscribers of `channel` what its history holds after `after` (nothing
/// for a namespace without history). In pages: a long gap is never read into memory at once.
async fn fill_gap(
    shared: &Shared,
    conn: &mut Commands,
    channel: &str,
    mut after: Offset,
) -> Result<(), BrokerError> {
    if shared.history_of(channel).is_none() {
        return Ok(());
    }
    loop {
        let page = shared
            .read_page(conn, channel, after, GAP_FILL_PAGE)
            .await?;
        if page.trimmed {
            warn!(details.channel = %channel, details.reason = "history trimmed", "gap fill incomplete");
        }
        for message in &page.messages {
            shared.hub.deliver(message);
        }
        match page.messages.last() {
            Some(last) if page.messages.len() == GAP_FILL_PAGE => after = last.offset,
            _ => return Ok(()),
        }
    }
}

/// Makes sure a channel whose subscription was in doubt is subscribed (with `sink`: subscribes
/// it again; without: redis-rs already did) and fills its gap from history. Its live messages
/// wait in `serve` until this is done, so its subscribers get every message once and in order.
async fn rejoin(
    shared: &Shared,
    sink: Option<FeedSink>,
    channel: String,
) -> (String, Result<(), BrokerError>) {
    let result = async {
        if let Some(sink) = sink {
            sink.subscribe(&[live_channel(&channel)])
                .await
                .map_err(unavailable_or_internal)?;
        }
        if let Some(after) = shared.hub.gap_start(&channel) {
            let mut conn = shared.bulk_connection()?;
            fill_gap(shared, &mut conn, &channel, after).await?;
        }
        Ok(())
    }
    .await;
    (channel, result)
}

/// Channels whose subscription is in doubt during one connected session, and the live messages
/// each got meanwhile (delivered once its gap is filled, so nothing overtakes the gap fill).
///
/// - Redis dropped it (a cluster slot moved: a `sunsubscribe` push): subscribed again where
///   it is now, then its gap filled.
/// - A cluster node's connection dropped: redis-rs reconnects it and subscribes its channels
///   again; every channel confirmed then is *suspect* until that `ssubscribe` push arrives,
///   and a suspect channel that gets one has its gap filled (it may have missed messages).
/// - Its cluster shard does not answer the health check: *stale* until the shard answers
///   again, then subscribed again (on whichever node serves it now) and its gap filled.
#[derive(Default)]
struct Doubts {
    held: HashMap<String, Vec<redis::Msg>>,
    stale: HashSet<String>,
    suspect: HashSet<String>,
    /// Channels whose unsubscribe their shard could not take: sent again once it answers.
    leave_later: HashSet<String>,
}

impl Doubts {
    /// Holds the live message of a channel in doubt; gives it back otherwise.
    fn hold(&mut self, message: redis::Msg) -> Option<redis::Msg> {
        let channel = channel_of_live(message.get_channel_name());
        match channel.and_then(|c| self.held.get_mut(c)) {
            Some(waiting) => {
                waiting.push(message);
                None
            }
            None => Some(message),
        }
    }

    fn doubt(&mut self, channel: &str) {
        self.suspect.remove(channel);
        self.held.entry(channel.to_owned()).or_default();
    }
}

/// Runs one connected session; returns why it ended.
///
/// A health check runs every `ping_interval` (on a cluster at once, and again whenever a node's
/// connection drops), beside the feed, which is read all the while. On a single server its
/// failure ends the session; on a cluster only a cluster where no primary answers does: the
/// channels of a shard that does not answer are answered `unavailable` (see
/// [`Shared::check_shard`]) until it answers again, the others are served as if nothing
/// happened (see [`Doubts`]).
#[allow(clippy::too_many_arguments)]
async fn serve(
    shared: &Shared,
    feed: LiveFeed,
    resynced: Resynced,
    prober: Prober,
    commands: &mut mpsc::UnboundedReceiver<Request>,
    shutdown: &CancellationToken,
) -> &'static str {
    let every = shared.settings.ping_interval;
    let first = if shared.cluster {
        tokio::time::Instant::now()
    } else {
        tokio::time::Instant::now() + every
    };
    let mut ping = tokio::time::interval_at(first, every);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let LiveFeed { sink, mut stream } = feed;
    let mut subscriptions = Subscriptions::new(resynced.subscribed);
    let mut last_heard = tokio::time::Instant::now();
    let mut doubts = Doubts::default();
    for channel in resynced.stale {
        doubts.doubt(&channel);
        doubts.stale.insert(channel);
    }
    let mut rejoins = FuturesUnordered::new();
    let mut last_rejoin_warning: Option<tokio::time::Instant> = None;
    // The prober while idle, or its check in flight.
    let mut prober = Some(prober);
    let mut probing: Option<BoxFuture<'static, (Prober, Result<Health, &'static str>)>> = None;
    let probe_now = |prober: &mut Option<Prober>, probing: &mut Option<_>| {
        if let Some(idle) = prober.take() {
            *probing = Some(idle.run().boxed());
        }
    };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return "shutdown",
            message = stream.next() => match message {
                Ok(Feed::Message(message)) => {
                    last_heard = tokio::time::Instant::now();
                    if let Some(message) = doubts.hold(message) {
                        shared.on_live_message(&message);
                    }
                }
                Ok(Feed::Unsubscribed(name)) => {
                    last_heard = tokio::time::Instant::now();
                    if let Some(channel) = channel_of_live(&name)
                        && subscriptions.dropped(channel)
                    {
                        info!(details.channel = %channel, "redis dropped a channel's subscription (its cluster slot moved): subscribing again and filling the gap");
                        doubts.doubt(channel);
                        rejoins.push(rejoin(shared, Some(sink.clone()), channel.to_owned()));
                    }
                }
                Ok(Feed::Subscribed(name)) => {
                    last_heard = tokio::time::Instant::now();
                    if let Some(channel) = channel_of_live(&name)
                        && doubts.suspect.remove(channel)
                        && subscriptions.dropped(channel)
                    {
                        info!(details.channel = %channel, "redis subscribed a channel again after a cluster node's connection dropped: filling the gap");
                        doubts.doubt(channel);
                        rejoins.push(rejoin(shared, None, channel.to_owned()));
                    }
                }
                Ok(Feed::NodeLost) => {
                    warn!("a redis cluster node's connection dropped: checking the shards");
                    doubts.suspect = subscriptions.confirmed_where(|_| true).into_iter().collect();
                    probe_now(&mut prober, &mut probing);
                }
                Err(why) => return why,
            },
            Some((channel, result)) = rejoins.next(), if !rejoins.is_empty() => {
                match result {
                    Ok(()) => {
                        for message in doubts.held.remove(&channel).unwrap_or_default() {
                            shared.on_live_message(&message);
                        }
                        subscriptions.rejoined(channel, &shared.hub);
                    }
                    // Its shard went away meanwhile, or does not serve yet: again once the
                    // health check finds it answering (logged once a second at most: a shard
                    // holds many channels).
                    Err(e) => {
                        if last_rejoin_warning.is_none_or(|at| at.elapsed() >= every) {
                            last_rejoin_warning = Some(tokio::time::Instant::now());
                            warn!(details.channel = %channel, details.reason = %e, details.waiting = doubts.stale.len() + 1, "subscribing channels again failed: retrying once their shard answers");
                        }
                        doubts.stale.insert(channel);
                    }
                }
            },
            (idle, found) = async { probing.as_mut().expect("guarded").await }, if probing.is_some() => {
                probing = None;
                prober = Some(idle);
                let health = match found {
                    Ok(health) => health,
                    Err(why) => return why,
                };
                shared.set_health(&health);
                for channel in subscriptions.confirmed_where(|c| shared.shard_down(c)) {
                    subscriptions.dropped(&channel);
                    doubts.doubt(&channel);
                    doubts.stale.insert(channel);
                }
                // Channels of shards that answer (again).
                for channel in doubts.stale.extract_if(|c| !shared.shard_down(c)) {
                    rejoins.push(rejoin(shared, Some(sink.clone()), channel));
                }
                for channel in doubts.leave_later.extract_if(|c| !shared.shard_down(c)) {
                    subscriptions.push(Request::Leave(channel));
                }
            },
            command = commands.recv() => match command {
                None => return "shutdown",
                // A shard that does not answer could not take it: sent once it answers.
                Some(Request::Leave(channel)) if shared.shard_down(&channel) => {
                    doubts.suspect.remove(&channel);
                    doubts.leave_later.insert(channel);
                }
                Some(request) => {
                    if let Request::Leave(channel) = &request {
                        doubts.suspect.remove(channel);
                    }
                    subscriptions.push(request)
                }
            },
            answer = subscriptions.answered() => {
                let timed_out = || {
                    shared.metrics.redis_subscribe_timeouts.inc();
                    warn!("redis did not answer a subscribe request in time; its subscribers were told");
                };
                match subscriptions.settle(answer, last_heard, timed_out, shared.cluster) {
                    Ok(failed_leaves) => doubts.leave_later.extend(failed_leaves),
                    Err(lost) => return lost.reason(),
                }
            },
            _ = ping.tick() => probe_now(&mut prober, &mut probing),
        }
        subscriptions.send_next(&sink, &shared.hub);
    }
}

async fn supervise(
    shared: Arc<Shared>,
    mut target: ReloadingTarget,
    mut commands: mpsc::UnboundedReceiver<Request>,
    shutdown: CancellationToken,
) {
    let mut failures: u32 = 0;
    let mut ever_up = false;
    let options = LinkOptions {
        publish_wait: shared.settings.replica_ack.map(|ack| ack.timeout),
    };
    loop {
        match link::connect_with(target.current(), options).await {
            Ok(link::Connected {
                commands: conn,
                bulk: mut bulk_conn,
                publish,
                feed,
                prober,
            }) => {
                *shared.conn.write().unwrap_or_else(|p| p.into_inner()) = Some(conn.clone());
                *shared.bulk.write().unwrap_or_else(|p| p.into_inner()) = Some(bulk_conn.clone());
                *shared.publish.write().unwrap_or_else(|p| p.into_inner()) = Some(publish);
                match resync(&shared, &feed, &mut bulk_conn).await {
                    Ok(resynced) => {
                        shared.set_up(true);
                        if ever_up {
                            shared.metrics.redis_reconnects.inc();
                        }
                        ever_up = true;
                        failures = 0;
                        info!("redis connected");
                        let why =
                            serve(&shared, feed, resynced, prober, &mut commands, &shutdown).await;
                        shared.set_up(false);
                        if shutdown.is_cancelled() {
                            return;
                        }
                        warn!(details.reason = why, "redis connection lost, reconnecting");
                    }
                    Err(e) => {
                        shared.set_up(false);
                        warn!(details.reason = %e, "redis resubscribe failed");
                    }
                }
            }
            Err(e) => {
                shared.set_up(false);
                if failures == 0 || failures.is_multiple_of(20) {
                    warn!(details.reason = %e, "redis unreachable, retrying");
                }
            }
        }
        failures = failures.saturating_add(1);
        let sleep = tokio::time::sleep(backoff(failures));
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => break,
                _ = shutdown.cancelled() => return,
                command = commands.recv() => match command {
                    Some(Request::Join(_, reply)) => { let _ = reply.send(Err(BrokerError::Unavailable)); }
                    Some(Request::Leave(_)) => {}
                    None => return,
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_layout() {
        assert_eq!(history_key("chat:a"), "chatnode:history:{chat:a}");
        assert_eq!(meta_key("chat:a"), "chatnode:meta:{chat:a}");
        assert_eq!(live_channel("chat:a"), "chatnode:live:{chat:a}");
        assert_eq!(channel_of_live("chatnode:live:{chat:a}"), Some("chat:a"));
    }

    #[test]
    fn lost_after_knows_what_trimming_took() {
        let o = |ms: u64| Offset::new(ms, 0);
        // Entries 1..=10 added, 6..=10 kept: entry 6 says 5 came before it.
        let trimmed = Kept {
            newest: o(10),
            first: Some(o(6)),
            first_prev: Some(o(5)),
            length: 5,
            added: 10,
            ..Kept::default()
        };
        assert!(trimmed.lost_after(Offset::ZERO));
        assert!(trimmed.lost_after(o(4)));
        assert!(
            !trimmed.lost_after(o(5)),
            "just before the oldest kept: nothing lost"
        );
        assert!(!trimmed.lost_after(o(8)));
        // A stream that still holds its first entry lost nothing.
        let whole = Kept {
            first_prev: Some(Offset::ZERO),
            added: 5,
            ..trimmed
        };
        assert!(!whole.lost_after(o(2)));
        assert!(!whole.lost_after(Offset::ZERO));
        // Entries without `p`: trimmed at all means a possible loss before the first.
        let legacy = Kept {
            first_prev: None,
            ..trimmed
        };
        assert!(legacy.lost_after(o(5)));
        assert!(!legacy.lost_after(o(6)));
        assert!(!Kept { added: 5, ..legacy }.lost_after(o(5)));
        // Nothing kept (history size 0): everything after `since` is gone.
        let empty = Kept {
            newest: o(10),
            added: 10,
            ..Kept::default()
        };
        assert!(empty.lost_after(o(9)));
        assert!(!empty.lost_after(o(10)));
        assert!(
            !Kept::default().lost_after(o(3)),
            "no stream, nothing known lost"
        );
        // XDEL'd after `since`.
        let deleted = Kept {
            deleted: Some(o(8)),
            ..trimmed
        };
        assert!(deleted.lost_after(o(7)));
    }

    #[test]
    fn backoff_is_capped() {
        for n in 0..40 {
            assert!(backoff(n) <= BACKOFF_CAP);
        }
        assert!(backoff(1) >= BACKOFF_BASE);
    }
}
