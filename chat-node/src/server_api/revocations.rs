//! Revoked tokens, as every node holds them: by token id (`jti`) until a time, or by user (every
//! token of the user issued at or before the revocation, or without `iat`) until a time.
//!
//! The server API's `revoke` writes a revocation to Redis (so nodes that start later load it)
//! and announces it on the control channel (so running nodes apply it at once and close the
//! matching connections with 1008). Each node keeps the revocations in memory, checked on every
//! connect and HTTP publish without a Redis round trip. Entries are forgotten once their `until`
//! has passed (set it to the longest lifetime of the tokens in question: after that, their `exp`
//! refuses them anyway). The set is bounded ([`MAX_REVOCATIONS`]).

use std::collections::HashMap;
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use serde::{Deserialize, Serialize};

use crate::auth::Identity;
use crate::fanout::SessionTag;

/// Revocations held at once; past it `revoke` is refused until some expire.
pub const MAX_REVOCATIONS: usize = 100_000;
/// Longest `jti` or user name accepted in a revocation.
pub const MAX_NAME_BYTES: usize = 256;
/// How far ahead `until` may lie.
pub const MAX_UNTIL_SECS: u64 = 366 * 24 * 3600;

/// One revocation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Revocation {
    /// The token whose `jti` is `id`.
    Token { id: String, until: u64 },
    /// Every token of `user` issued at or before `at` (Unix seconds), or without `iat`.
    User { user: String, at: u64, until: u64 },
}

impl Revocation {
    pub fn until(&self) -> u64 {
        match self {
            Revocation::Token { until, .. } | Revocation::User { until, .. } => *until,
        }
    }

    /// Whether it covers a token with these claims.
    pub fn covers(
        &self,
        token_id: Option<&str>,
        user: Option<&str>,
        issued_at: Option<u64>,
    ) -> bool {
        match self {
            Revocation::Token { id, .. } => token_id == Some(id.as_str()),
            Revocation::User { user: who, at, .. } => {
                user == Some(who.as_str()) && issued_at.is_none_or(|iat| iat <= *at)
            }
        }
    }

    /// Whether it covers the token of a live session.
    pub fn covers_session(&self, tag: &SessionTag) -> bool {
        let issued_at = (tag.issued_at != 0).then_some(tag.issued_at);
        self.covers(tag.token_id.as_deref(), tag.user.as_deref(), issued_at)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{MAX_REVOCATIONS} revocations are held already")]
pub struct Full;

#[derive(Default)]
struct Held {
    /// jti -> until.
    tokens: HashMap<String, u64>,
    /// user -> (newest `at`, latest `until`).
    users: HashMap<String, (u64, u64)>,
}

impl Held {
    fn len(&self) -> usize {
        self.tokens.len() + self.users.len()
    }

    fn prune(&mut self, now: u64) {
        self.tokens.retain(|_, until| *until > now);
        self.users.retain(|_, (_, until)| *until > now);
    }
}

/// The revocations this node knows of.
#[derive(Default)]
pub struct Revocations {
    held: RwLock<Held>,
    /// How many are held: the connect path skips the lock while it is 0.
    count: AtomicUsize,
    /// Whether the revocations were loaded (from Redis) at least once: until then the node is
    /// not ready, so it takes no connections a revocation might have refused.
    loaded: AtomicBool,
}

impl Revocations {
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Held> {
        self.held.write().unwrap_or_else(|p| p.into_inner())
    }

    fn publish_count(&self, held: &Held) {
        self.count.store(held.len(), Ordering::Release);
    }

    /// Adds one (two revocations of one user merge: the newer `at`, the later `until`).
    pub fn insert(&self, revocation: &Revocation, now: u64) -> Result<(), Full> {
        let mut held = self.write();
        if held.len() >= MAX_REVOCATIONS {
            held.prune(now);
        }
        let known = match revocation {
            Revocation::Token { id, .. } => held.tokens.contains_key(id),
            Revocation::User { user, .. } => held.users.contains_key(user),
        };
        if !known && held.len() >= MAX_REVOCATIONS {
            return Err(Full);
        }
        match revocation {
            Revocation::Token { id, until } => {
                let entry = held.tokens.entry(id.clone()).or_default();
                *entry = (*entry).max(*until);
            }
            Revocation::User { user, at, until } => {
                let entry = held.users.entry(user.clone()).or_default();
                *entry = (entry.0.max(*at), entry.1.max(*until));
            }
        }
        self.publish_count(&held);
        Ok(())
    }

    /// Replaces everything with what Redis holds (after a (re)connect: nothing announced while
    /// the control channel was down is missed).
    pub fn replace_all(&self, revocations: &[Revocation], now: u64) {
        let mut fresh = Held::default();
        for revocation in revocations.iter().filter(|r| r.until() > now) {
            if fresh.len() >= MAX_REVOCATIONS {
                break;
            }
            match revocation {
                Revocation::Token { id, until } => {
                    let entry = fresh.tokens.entry(id.clone()).or_default();
                    *entry = (*entry).max(*until);
                }
                Revocation::User { user, at, until } => {
                    let entry = fresh.users.entry(user.clone()).or_default();
                    *entry = (entry.0.max(*at), entry.1.max(*until));
                }
            }
        }
        let mut held = self.write();
        *held = fresh;
        self.publish_count(&held);
        self.mark_loaded();
    }

    /// Marks the set complete (the embedded broker has nothing to load).
    pub fn mark_loaded(&self) {
        self.loaded.store(true, Ordering::Release);
    }

    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    /// Forgets revocations whose `until` has passed.
    pub fn prune(&self, now: u64) {
        let mut held = self.write();
        held.prune(now);
        self.publish_count(&held);
    }

    pub fn len(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the token behind `identity` is revoked at `now`.
    pub fn revokes(&self, identity: &Identity, now: u64) -> bool {
        if self.is_empty() {
            return false;
        }
        let held = self.held.read().unwrap_or_else(|p| p.into_inner());
        if let Some(id) = &identity.token_id
            && held.tokens.get(id).is_some_and(|until| *until > now)
        {
            return true;
        }
        let Some(user) = &identity.subject else {
            return false;
        };
        held.users.get(user).is_some_and(|(at, until)| {
            *until > now && identity.issued_at.is_none_or(|iat| iat <= *at)
        })
    }
}

/// The current Unix time in seconds.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(user: &str, jti: Option<&str>, iat: Option<u64>) -> Identity {
        let mut identity = Identity::anonymous();
        identity.subject = Some(user.to_owned());
        identity.token_id = jti.map(str::to_owned);
        identity.issued_at = iat;
        identity
    }

    #[test]
    fn by_token_id_until_a_time() {
        let r = Revocations::default();
        let revocation = Revocation::Token {
            id: "t-1".into(),
            until: 200,
        };
        r.insert(&revocation, 100).unwrap();
        assert!(r.revokes(&identity("u", Some("t-1"), None), 150));
        assert!(!r.revokes(&identity("u", Some("t-2"), None), 150));
        assert!(
            !r.revokes(&identity("u", Some("t-1"), None), 200),
            "over at `until`"
        );
        r.prune(200);
        assert!(r.is_empty());
    }

    #[test]
    fn by_user_covers_tokens_issued_before() {
        let r = Revocations::default();
        r.insert(
            &Revocation::User {
                user: "bob".into(),
                at: 100,
                until: 500,
            },
            100,
        )
        .unwrap();
        assert!(r.revokes(&identity("bob", None, Some(90)), 120));
        assert!(
            r.revokes(&identity("bob", None, None), 120),
            "no iat: covered"
        );
        assert!(r.revokes(&identity("bob", None, Some(100)), 120));
        assert!(
            !r.revokes(&identity("bob", None, Some(101)), 120),
            "issued after"
        );
        assert!(!r.revokes(&identity("alice", None, Some(90)), 120));
    }

    #[test]
    fn bounded() {
        let r = Revocations::default();
        for i in 0..MAX_REVOCATIONS {
            let revocation = Revocation::Token {
                id: format!("t-{i}"),
                until: 200 + (i % 2) as u64,
            };
            r.insert(&revocation, 100).unwrap();
        }
        let one_more = Revocation::Token {
            id: "t-last".into(),
            until: 300,
        };
        assert_eq!(r.insert(&one_more, 100), Err(Full));
        assert_eq!(r.len(), MAX_REVOCATIONS);
        // A known one may still be extended; expired ones make room.
        let again = Revocation::Token {
            id: "t-0".into(),
            until: 400,
        };
        r.insert(&again, 100).unwrap();
        r.insert(&one_more, 200).unwrap();
        assert_eq!(r.len(), MAX_REVOCATIONS / 2 + 2);
    }
}
