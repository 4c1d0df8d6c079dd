//! The per-user connection limit (`--max-connections-per-user`): how many WebSocket and SSE
//! sessions one user (a token's `sub`) may hold open on this node at once.
//!
//! A slot is taken before the upgrade, so the refusal is a plain HTTP 429 that no connection
//! was opened for, and concurrent handshakes of one user cannot all slip past the count. The
//! slot rides in the session's registry tag and is given back when the session is gone.
//! Clients without a user are not counted (they are limited by the node's connection limit
//! and the per-address publish rate). The count is per node: with N nodes a user may hold up
//! to N times the limit, which a sticky-session load balancer keeps close to the limit itself.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::auth::Identity;

/// The open sessions of each user on this node.
#[derive(Debug, Default)]
pub struct UserConnections {
    /// 0: no limit.
    max: usize,
    counts: Mutex<HashMap<String, usize>>,
}

/// One session's place in its user's count; given back on drop.
#[derive(Debug)]
pub struct UserSlot {
    owner: Arc<UserConnections>,
    user: String,
}

/// The user already holds the most sessions allowed.
#[derive(Debug, PartialEq, Eq)]
pub struct TooManyConnections {
    pub max: usize,
}

impl UserConnections {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(UserConnections {
            max,
            counts: Mutex::default(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, usize>> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a slot for the identity's user; `None` when nothing is counted (no limit, or no
    /// user).
    pub fn take(
        self: &Arc<Self>,
        identity: &Identity,
    ) -> Result<Option<UserSlot>, TooManyConnections> {
        let Some(user) = identity.subject.as_deref().filter(|_| self.max > 0) else {
            return Ok(None);
        };
        let mut counts = self.lock();
        let count = counts.entry(user.to_owned()).or_default();
        if *count >= self.max {
            return Err(TooManyConnections { max: self.max });
        }
        *count += 1;
        Ok(Some(UserSlot {
            owner: self.clone(),
            user: user.to_owned(),
        }))
    }

    /// Sessions the user holds now.
    pub fn count(&self, user: &str) -> usize {
        self.lock().get(user).copied().unwrap_or(0)
    }

    /// Users with sessions now (the map never keeps a user at 0).
    pub fn users(&self) -> usize {
        self.lock().len()
    }
}

impl Drop for UserSlot {
    fn drop(&mut self) {
        let mut counts = self.owner.lock();
        if let Some(count) = counts.get_mut(&self.user) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(sub: &str) -> Identity {
        let mut identity = Identity::anonymous();
        identity.subject = Some(sub.to_owned());
        identity
    }

    #[test]
    fn counts_per_user_and_gives_back_on_drop() {
        let limit = UserConnections::new(2);
        let a1 = limit.take(&user("a")).unwrap().unwrap();
        let _a2 = limit.take(&user("a")).unwrap().unwrap();
        assert_eq!(
            limit.take(&user("a")).unwrap_err(),
            TooManyConnections { max: 2 }
        );
        let _b = limit.take(&user("b")).unwrap().unwrap();
        assert!(limit.take(&Identity::anonymous()).unwrap().is_none());
        drop(a1);
        assert_eq!(limit.count("a"), 1);
        let _a3 = limit.take(&user("a")).unwrap().unwrap();
        drop((_a2, _a3, _b));
        assert_eq!(limit.users(), 0, "no user kept at 0");
        assert!(UserConnections::new(0).take(&user("a")).unwrap().is_none());
    }
}
