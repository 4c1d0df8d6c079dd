//! Presence in Redis (Redis 7.0 has no per-field hash expiry, so expiry is kept beside it).
//!
//! Per channel, all under the channel's hash tag (one Redis Cluster slot):
//! - `chatnode:presence:{<channel>}`, a hash: client id → entry JSON (`client`, `user`,
//!   `conn_info`);
//! - `chatnode:presence-exp:{<channel>}`, a sorted set: client id → the Unix ms (Redis's clock,
//!   `TIME`, so nodes' clocks need not agree) at which the entry expires;
//! - `chatnode:presence-users:{<channel>}`, a hash: user → how many entries the user has, so
//!   `presence_stats` counts distinct users without reading every entry.
//!
//! Each node writes its own clients' entries when they subscribe, rewrites them all every third
//! of the TTL (which also restores them after Redis lost its data), and deletes them when the
//! clients leave. Reads first clean up (at most [`CLEANUP_STEP`] expired entries per read,
//! removing them from all three keys) and then only count entries that have not expired, so a
//! dead node's clients vanish from answers within the TTL whatever was cleaned. Every write
//! also sets the TTL on the three keys: a channel whose nodes are all gone leaves nothing.

use redis::Script;

use super::BrokerError;
use super::link::Commands;
use super::redis::unavailable_or_internal;
use crate::presence::{Entry, Presence, PresenceStats};

/// Expired entries removed per read at most (a dead node's thousands of clients are cleaned up
/// over several reads instead of blocking Redis in one; reads ignore them meanwhile).
const CLEANUP_STEP: usize = 1000;

/// Entries written per script call by the refresh.
pub const WRITE_BATCH: usize = 100;

/// Lua setting `now`, Redis's clock in Unix ms.
macro_rules! now_lua {
    () => {
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"
    };
}

/// Lua removing an entry `client` from KEYS[1]/KEYS[2] and its user's count in KEYS[3].
macro_rules! drop_lua {
    () => {
        r"
local function drop(client)
  local entry = redis.call('HGET', KEYS[1], client)
  if entry then
    redis.call('HDEL', KEYS[1], client)
    local ok, decoded = pcall(cjson.decode, entry)
    local user = ok and type(decoded) == 'table' and decoded.user or nil
    if type(user) == 'string' and redis.call('HINCRBY', KEYS[3], user, -1) <= 0 then
      redis.call('HDEL', KEYS[3], user)
    end
  end
  redis.call('ZREM', KEYS[2], client)
end
"
    };
}

/// KEYS: entries, expiries, users; ARGV[1] ttl ms, then (client, user, entry JSON) triples.
const WRITE_LUA: &str = concat!(
    now_lua!(),
    r"
local ttl = tonumber(ARGV[1])
for i = 2, #ARGV, 3 do
  local client, user, entry = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if redis.call('HSET', KEYS[1], client, entry) == 1 then
    redis.call('HINCRBY', KEYS[3], user, 1)
  end
  redis.call('ZADD', KEYS[2], now + ttl, client)
end
for k = 1, 3 do redis.call('PEXPIRE', KEYS[k], ttl) end
return 1
"
);

/// KEYS: entries, expiries, users; ARGV[1] client.
const REMOVE_LUA: &str = concat!(
    drop_lua!(),
    r"
drop(ARGV[1])
return 1
"
);

/// Lua removing at most ARGV[1] expired entries (needs `now`, `drop`).
macro_rules! cleanup_lua {
    () => {
        r"
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, client in ipairs(expired) do drop(client) end
"
    };
}

/// KEYS: entries, expiries, users; ARGV[1] cleanup step, ARGV[2] max entries. Returns
/// {clients not expired, their entries (at most max)}.
const READ_LUA: &str = concat!(
    now_lua!(),
    drop_lua!(),
    cleanup_lua!(),
    r"
local live = '(' .. now
local total = redis.call('ZCOUNT', KEYS[2], live, '+inf')
local clients = redis.call('ZRANGEBYSCORE', KEYS[2], live, '+inf', 'LIMIT', 0, tonumber(ARGV[2]))
local entries = {}
-- HMGET in chunks: `unpack` of a long list would overflow Lua's C stack.
for i = 1, #clients, 500 do
  local got = redis.call('HMGET', KEYS[1], unpack(clients, i, math.min(i + 499, #clients)))
  for _, entry in ipairs(got) do
    if entry then entries[#entries + 1] = entry end
  end
end
return {total, entries}
"
);

/// KEYS: entries, expiries, users; ARGV[1] cleanup step. Returns {clients not expired, users}.
const STATS_LUA: &str = concat!(
    now_lua!(),
    drop_lua!(),
    cleanup_lua!(),
    r"
return {redis.call('ZCOUNT', KEYS[2], '(' .. now, '+inf'), redis.call('HLEN', KEYS[3])}
"
);

fn keys(channel: &str) -> [String; 3] {
    [
        format!("chatnode:presence:{{{channel}}}"),
        format!("chatnode:presence-exp:{{{channel}}}"),
        format!("chatnode:presence-users:{{{channel}}}"),
    ]
}

/// The presence scripts (loaded once per broker).
pub struct PresenceScripts {
    write: Script,
    remove: Script,
    read: Script,
    stats: Script,
}

impl Default for PresenceScripts {
    fn default() -> Self {
        PresenceScripts {
            write: Script::new(WRITE_LUA),
            remove: Script::new(REMOVE_LUA),
            read: Script::new(READ_LUA),
            stats: Script::new(STATS_LUA),
        }
    }
}

impl PresenceScripts {
    /// Writes (or refreshes) `entries` of one channel, expiring `ttl_ms` from now.
    pub async fn write(
        &self,
        conn: &mut Commands,
        channel: &str,
        entries: &[&Entry],
        ttl_ms: u64,
    ) -> Result<(), BrokerError> {
        let mut invocation = self.write.prepare_invoke();
        for key in keys(channel) {
            invocation.key(key);
        }
        invocation.arg(ttl_ms.max(1));
        for entry in entries {
            invocation
                .arg(&entry.client)
                .arg(&entry.user)
                .arg(&entry.json);
        }
        let _: i64 = invocation
            .invoke_async(conn)
            .await
            .map_err(unavailable_or_internal)?;
        Ok(())
    }

    pub async fn remove(
        &self,
        conn: &mut Commands,
        channel: &str,
        client: &str,
    ) -> Result<(), BrokerError> {
        let [a, b, c] = keys(channel);
        let _: i64 = self
            .remove
            .key(a)
            .key(b)
            .key(c)
            .arg(client)
            .invoke_async(conn)
            .await
            .map_err(unavailable_or_internal)?;
        Ok(())
    }

    pub async fn read(
        &self,
        conn: &mut Commands,
        channel: &str,
        max: usize,
    ) -> Result<Presence, BrokerError> {
        let [a, b, c] = keys(channel);
        let (total, entries): (usize, Vec<String>) = self
            .read
            .key(a)
            .key(b)
            .key(c)
            .arg(CLEANUP_STEP)
            .arg(max)
            .invoke_async(conn)
            .await
            .map_err(unavailable_or_internal)?;
        Ok(Presence { entries, total })
    }

    pub async fn stats(
        &self,
        conn: &mut Commands,
        channel: &str,
    ) -> Result<PresenceStats, BrokerError> {
        let [a, b, c] = keys(channel);
        let (clients, users): (usize, usize) = self
            .stats
            .key(a)
            .key(b)
            .key(c)
            .arg(CLEANUP_STEP)
            .invoke_async(conn)
            .await
            .map_err(unavailable_or_internal)?;
        Ok(PresenceStats {
            clients,
            users: users.min(clients),
        })
    }
}
