//! Presence: who is subscribed to a channel, for the namespaces listed in
//! `--presence-namespaces`.
//!
//! Each node keeps the entries of its own subscribed WebSocket and SSE clients in a [`LocalPresence`]
//! (client id, user, the token's `info`). The embedded broker answers from it directly; the
//! Redis broker writes each entry to Redis when the client subscribes, rewrites all of them
//! every third of `--presence-ttl` (so a node that dies stops refreshing and its clients expire
//! within the TTL), and deletes an entry when its client leaves (see [`crate::broker::redis`]).
//!
//! `join` and `leave` frames (`--join-leave-namespaces`) travel on the channel's live feed,
//! beside its messages but without an offset: they are never stored in history nor replayed.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;
use serde_json::value::RawValue;
use tracing::debug;

use crate::fanout::SessionTag;
use crate::protocol::ServerFrame;
use crate::server::AppState;

/// A subscription of this node's client (WebSocket or SSE) to `channel` is live: where the
/// channel's namespace keeps presence or announces joins, its entry enters presence and then
/// the `join` goes out (whoever sees the `join` finds the client in presence). The joining
/// client receives its own `join` too. `entry` is only built when needed.
pub async fn join(app: &AppState, channel: &str, entry: impl FnOnce() -> Entry) {
    let Some((keep, join_leave)) = kept_or_announced(app, channel) else {
        return;
    };
    let entry = Arc::new(entry());
    let frame = join_leave
        .then(|| RawValue::from_string(entry.json.clone()).ok())
        .flatten()
        .map(|info| {
            ServerFrame::Join {
                channel,
                info: &info,
            }
            .to_json()
        });
    let client = entry.client.clone();
    if let Err(e) = app.broker.enter(channel, entry, keep, frame).await {
        // Kept locally: the next refresh writes it.
        debug!(details.client = %client, details.channel = %channel, details.reason = %e, "presence write deferred");
    }
}

/// The subscription [`join`] announced ended: the entry leaves presence, then the `leave`
/// goes out, where the namespace has them.
pub fn leave(app: &AppState, channel: &str, entry: impl FnOnce() -> Entry) {
    let Some((_, join_leave)) = kept_or_announced(app, channel) else {
        return;
    };
    let entry = entry();
    let frame = join_leave
        .then(|| RawValue::from_string(entry.json).ok())
        .flatten()
        .map(|info| {
            ServerFrame::Leave {
                channel,
                info: &info,
            }
            .to_json()
        });
    app.broker.exit(channel, &entry.client, frame);
}

/// Whether the channel's namespace keeps presence and whether it announces joins and leaves;
/// `None` when it does neither.
fn kept_or_announced(app: &AppState, channel: &str) -> Option<(bool, bool)> {
    let options = app.namespaces.of(channel);
    (options.presence || options.join_leave).then_some((options.presence, options.join_leave))
}

/// One subscribed client as presence shows it.
#[derive(Debug, PartialEq, Eq)]
pub struct Entry {
    pub client: String,
    /// The token's `sub`; without one, the client id (as `from` in messages).
    pub user: String,
    /// Its JSON, `{"client":…,"user":…,"conn_info":…}`: what `presence` lists and what
    /// `join`/`leave` carry as `info`.
    pub json: String,
}

#[derive(Serialize)]
struct EntryOut<'a> {
    client: &'a str,
    user: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    conn_info: Option<&'a RawValue>,
}

impl Entry {
    /// The entry of a session with a client id (its token's `sub`, else the client id; its
    /// token's `info`).
    pub fn of_session(tag: &SessionTag) -> Entry {
        let client = tag.client_hex().unwrap_or_default();
        let user = tag
            .user
            .as_deref()
            .map_or_else(|| client.clone(), str::to_owned);
        Entry::new(client, user, tag.info.as_deref())
    }

    /// `conn_info` is the token's `info` claim, compact JSON (anything else is left out).
    pub fn new(client: String, user: String, conn_info: Option<&str>) -> Entry {
        let conn_info = conn_info.and_then(|i| serde_json::from_str::<&RawValue>(i).ok());
        let json = serde_json::to_string(&EntryOut {
            client: &client,
            user: &user,
            conn_info,
        })
        .unwrap_or_default();
        Entry { client, user, json }
    }
}

/// A `presence` answer: at most the requested number of entries (JSON objects), and how many
/// clients the channel has in all.
#[derive(Debug, Default)]
pub struct Presence {
    pub entries: Vec<String>,
    pub total: usize,
}

/// A `presence_stats` answer.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PresenceStats {
    pub clients: usize,
    /// Distinct users among the clients.
    pub users: usize,
}

/// The presence entries of this node's own clients, by channel and client id.
#[derive(Default)]
pub struct LocalPresence {
    channels: Mutex<HashMap<String, HashMap<String, Arc<Entry>>>>,
}

impl LocalPresence {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, HashMap<String, Arc<Entry>>>> {
        self.channels.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn add(&self, channel: &str, entry: Arc<Entry>) {
        self.lock()
            .entry(channel.to_owned())
            .or_default()
            .insert(entry.client.clone(), entry);
    }

    /// Removes a client's entry; returns it if it was there.
    pub fn remove(&self, channel: &str, client: &str) -> Option<Arc<Entry>> {
        let mut channels = self.lock();
        let entries = channels.get_mut(channel)?;
        let entry = entries.remove(client);
        if entries.is_empty() {
            channels.remove(channel);
        }
        entry
    }

    pub fn contains(&self, channel: &str, client: &str) -> bool {
        self.lock()
            .get(channel)
            .is_some_and(|entries| entries.contains_key(client))
    }

    /// At most `max` entries of the channel and its number of clients.
    pub fn read(&self, channel: &str, max: usize) -> Presence {
        let channels = self.lock();
        let Some(entries) = channels.get(channel) else {
            return Presence::default();
        };
        Presence {
            entries: entries.values().take(max).map(|e| e.json.clone()).collect(),
            total: entries.len(),
        }
    }

    pub fn stats(&self, channel: &str) -> PresenceStats {
        let channels = self.lock();
        let Some(entries) = channels.get(channel) else {
            return PresenceStats::default();
        };
        let users: HashSet<&str> = entries.values().map(|e| e.user.as_str()).collect();
        PresenceStats {
            clients: entries.len(),
            users: users.len(),
        }
    }

    /// Every channel with entries and its entries (for the refresh, outside the lock).
    pub fn snapshot(&self) -> Vec<(String, Vec<Arc<Entry>>)> {
        self.lock()
            .iter()
            .map(|(channel, entries)| (channel.clone(), entries.values().cloned().collect()))
            .collect()
    }
}

/// The `clients` array of a `presence` answer from its entries' JSON.
pub fn clients_json(entries: &[String]) -> String {
    let mut out = String::with_capacity(2 + entries.iter().map(|e| e.len() + 1).sum::<usize>());
    out.push('[');
    for (i, entry) in entries.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(entry);
    }
    out.push(']');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_and_stats() {
        let local = LocalPresence::default();
        let e = |c: &str, u: &str| Arc::new(Entry::new(c.into(), u.into(), None));
        local.add("chat:a", e("c1", "alice"));
        local.add("chat:a", e("c2", "alice"));
        local.add("chat:a", e("c3", "bob"));
        assert_eq!(
            local.stats("chat:a"),
            PresenceStats {
                clients: 3,
                users: 2
            }
        );
        let p = local.read("chat:a", 2);
        assert_eq!((p.entries.len(), p.total), (2, 3));
        assert!(local.remove("chat:a", "c1").is_some());
        assert!(local.remove("chat:a", "c1").is_none());
        local.remove("chat:a", "c2");
        local.remove("chat:a", "c3");
        assert!(local.snapshot().is_empty(), "empty channels are forgotten");
    }

    #[test]
    fn entry_json() {
        let e = Entry::new("c1".into(), "u1".into(), Some(r#"{"name":"Ann"}"#));
        assert_eq!(
            e.json,
            r#"{"client":"c1","user":"u1","conn_info":{"name":"Ann"}}"#
        );
        let e = Entry::new("c1".into(), "u1".into(), None);
        assert_eq!(e.json, r#"{"client":"c1","user":"u1"}"#);
        assert_eq!(
            clients_json(&["{}".into(), "[]".into()]),
            "[{},[]]".to_owned()
        );
    }
}
